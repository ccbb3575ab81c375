//! Ferry firmware for the LM3S6965 under `qemu-system-arm -machine lm3s6965evb`.
//!
//! UART0 speaks the Ferry device protocol (`firmware/wire/PROTOCOL.md`); the portable device core
//! (`ferry-firmware`) does everything else. UART1 carries a text report of samples taken and acked
//! (`report.rs`) for end-to-end tests (QEMU's second `-serial`).
//! Timebase: SysTick at 1 kHz from the 12.5 MHz core clock.
//! Sensors: the synthetic set (temperature, humidity, counter; the emulated board has none).
//! Identify and opaque commands are reported to the host console via semihosting; opaque payloads
//! are echoed back as the result data. Reboot resets the core (QEMU restarts the image).
#![no_std]
#![no_main]

mod host;
mod report;
mod uart;

use core::cell::Cell;

use cortex_m::interrupt::Mutex;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::hprintln;
use ferry_firmware::runner::{self, Board};
use ferry_firmware::sensors::synthetic::Synthetic;
use ferry_firmware::{Device, DeviceConfig};
use ferry_wire::{CommandStatus, MAX_OPAQUE_LEN};
use panic_semihosting as _;
use report::Report;

/// Unacked ring capacity: ~1.8 s of the default 140 samples/s.
const RING: usize = 256;
const CORE_HZ: u32 = 12_500_000;

static MILLIS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

#[exception]
fn SysTick() {
    cortex_m::interrupt::free(|cs| {
        let ms = MILLIS.borrow(cs);
        ms.set(ms.get() + 1);
    });
}

struct Lm3s {
    report: Report,
}

impl Board for Lm3s {
    fn now_ms(&mut self) -> u64 {
        cortex_m::interrupt::free(|cs| MILLIS.borrow(cs).get())
    }

    fn identify(&mut self, duration_ms: u32) {
        hprintln!("ferry: identify for {} ms", duration_ms);
    }

    fn reboot(&mut self) -> ! {
        hprintln!("ferry: rebooting");
        cortex_m::peripheral::SCB::sys_reset()
    }

    fn opaque(&mut self, data: &[u8], reply: &mut [u8; MAX_OPAQUE_LEN]) -> (CommandStatus, usize) {
        reply[..data.len()].copy_from_slice(data);
        (CommandStatus::Ok, data.len())
    }

    /// Sleeps until the next interrupt (SysTick, at most 1 ms): the loop then runs once per
    /// millisecond instead of spinning, so QEMU idles the vCPU instead of burning a host core.
    /// Received bytes wait in the UART FIFO (QEMU holds the rest in its backend meanwhile).
    fn idle(&mut self, _now_ms: u64) {
        cortex_m::asm::wfi();
    }

    fn observe<const N: usize>(&mut self, _now_ms: u64, device: &Device<N>) {
        self.report.observe(device);
    }
}

#[entry]
fn main() -> ! {
    let cp = cortex_m::Peripherals::take().unwrap();
    let mut syst = cp.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(CORE_HZ / 1000 - 1);
    syst.clear_current();
    syst.enable_counter();
    syst.enable_interrupt();

    let mut port = uart::Uart::init(0);
    let mut id_buf = [0u8; 128];
    let device_id = host::device_id(&mut id_buf);
    let boot_id = host::boot_id();
    hprintln!("ferry: {} boot {:08x}", device_id, boot_id);

    let mut sensors = Synthetic::new();
    let cfg = DeviceConfig::new(
        device_id,
        concat!("lm3s6965-", env!("CARGO_PKG_VERSION")),
        boot_id,
    );
    let mut board = Lm3s {
        report: Report::new(uart::Uart::init(1), boot_id),
    };
    let now = board.now_ms();
    let device: &'static mut Device<RING> =
        cortex_m::singleton!(: Device<RING> = Device::new(cfg, &sensors, now)).unwrap();
    runner::run(device, &mut port, &mut sensors, &mut board)
}

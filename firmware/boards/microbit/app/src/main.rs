//! Ferry firmware for the BBC micro:bit v1 (nRF51822 QFAA, Cortex-M0, 256 KiB flash, 16 KiB RAM),
//! updatable over its link; also runs under `qemu-system-arm -machine microbit`.
//!
//! UART0 speaks the Ferry device protocol (`firmware/wire/PROTOCOL.md`); the portable device core
//! (`ferry-firmware`) does everything else, including firmware updates (section 9) through
//! [`Updater`] over the flash partitions of `ferry_microbit_nrf51::layout`. The bootloader
//! (`ferry-bootloader-microbit`, embassy-boot) swaps a verified new image into ACTIVE and swaps
//! it back unless the new image confirms itself once the gateway has welcomed it.
//!
//! Timebase: TIMER0 at 1 MHz (`clock.rs`). Sensors: the synthetic set (temperature, humidity,
//! counter; the board's own sensors are not used). Identify is not supported; an opaque command
//! `stack` answers the stack's high-water mark (`stack.rs`: used and available bytes) and the
//! longest pass of the device loop so far in µs (three little-endian u32), any other payload is
//! echoed. Reboot resets the core through AIRCR.
//!
//! Build-time inputs (checked by `build.rs`): `FERRY_FW_VERSION` (the version this image reports
//! in its Hello and checks updates against; default 1.0.0), `FERRY_UPDATE_KEY` (the vendor's
//! public key), `FERRY_FW_NEVER_CONFIRM=1` (an image that never confirms itself and asks for a reset
//! 5 s after it booted on trial, so the bootloader rolls it back: for rollback tests).
//!
//! Invariants:
//! - No interrupt handler ever runs: the vector table in use is the bootloader's (Cortex-M0 has
//!   no VTOR), so interrupts stay masked and the firmware polls; wake-ups from `wfi` are the only
//!   use of interrupt lines (`clock.rs`).
//! - The application only reads ACTIVE (the flash it runs from); it writes DFU, STATE and RECORD
//!   through the updater, and nothing else.
//! - The loop's stack is all the RAM the static data leaves (12,064 B) and its deepest path needs
//!   11,612 B: `main` keeps nothing on its own frame (the parts live in a static filled by
//!   `start`, whose frame is gone before the loop starts).
#![no_std]
#![no_main]

mod clock;
mod ident;
mod stack;
mod uart;

use cortex_m_rt::entry;
use ferry_firmware::runner::{self, Board};
use ferry_firmware::sensors::synthetic::Synthetic;
#[cfg(not(feature = "no-updater"))]
use ferry_firmware::update::{Slots, Updater, UpdaterConfig};
use ferry_firmware::{Device, DeviceConfig};
#[cfg(not(feature = "no-updater"))]
use ferry_microbit_nrf51::{layout, nvmc::Partition};
use ferry_wire::{CommandStatus, MAX_OPAQUE_LEN};
use panic_halt as _;

use clock::Clock;

#[cfg_attr(feature = "no-updater", allow(dead_code))]
mod build_config {
    include!(concat!(env!("OUT_DIR"), "/build_config.rs"));
}

/// Unacked ring capacity: 64 samples (1 KiB), ~0.45 s of the default 140 samples/s. Small on
/// purpose: the device loop checking a signature needs 11.6 KB of the 16 KiB of RAM as stack
/// (README.md, "Stack"); 452 B are left.
const RING: usize = 64;
/// The board name update images must be signed for.
pub const BOARD: &str = "microbit";
/// This image's version.
pub const VERSION: &str = match option_env!("FERRY_FW_VERSION") {
    Some(v) => v,
    None => "1.0.0",
};
/// How long an image built with `FERRY_FW_NEVER_CONFIRM=1` runs on trial before it asks for the
/// reset that rolls it back (a normal image waits `UpdaterConfig`'s default, 60 s, to be welcomed).
#[cfg(not(feature = "no-updater"))]
const NEVER_CONFIRM_TRIAL_MS: u32 = 5_000;
/// Longest sleep between two passes of the device loop.
const IDLE_US: u32 = 1000;

struct Microbit {
    clock: Clock,
    /// When the last sleep ended (µs).
    woke_us: u64,
    /// The longest time between two sleeps this boot (µs): how long the loop was ever busy,
    /// e.g. verifying a signature.
    longest_pass_us: u64,
}

impl Board for Microbit {
    fn now_ms(&mut self) -> u64 {
        self.clock.now_ms()
    }

    fn reboot(&mut self) -> ! {
        cortex_m::peripheral::SCB::sys_reset()
    }

    fn opaque(&mut self, data: &[u8], reply: &mut [u8; MAX_OPAQUE_LEN]) -> (CommandStatus, usize) {
        if data == b"stack" {
            let (used, size) = stack::high_water();
            let longest = u32::try_from(self.longest_pass_us).unwrap_or(u32::MAX);
            reply[..4].copy_from_slice(&used.to_le_bytes());
            reply[4..8].copy_from_slice(&size.to_le_bytes());
            reply[8..12].copy_from_slice(&longest.to_le_bytes());
            return (CommandStatus::Ok, 12);
        }
        reply[..data.len()].copy_from_slice(data);
        (CommandStatus::Ok, data.len())
    }

    /// Sleeps up to 1 ms (or until a byte arrives): the loop then runs about once per
    /// millisecond instead of spinning, which saves power on the board and a host core in QEMU.
    fn idle(&mut self, _now_ms: u64) {
        let busy = self.clock.now_us() - self.woke_us;
        self.longest_pass_us = self.longest_pass_us.max(busy);
        self.clock.sleep(IDLE_US, uart::rx_pending);
        self.woke_us = self.clock.now_us();
    }
}

/// The firmware updater over the flash partitions (or nothing, in the `no-updater` build).
#[cfg(not(feature = "no-updater"))]
type Updates = Updater<Partition, Partition, Partition, Partition>;
#[cfg(feature = "no-updater")]
type Updates = ferry_firmware::update::NoUpdates;

/// What the device loop runs on.
struct Parts {
    device: &'static mut Device<RING>,
    port: uart::Uart,
    sensors: Synthetic,
    board: Microbit,
    updates: Updates,
}

#[entry]
fn main() -> ! {
    stack::paint();
    // The parts live in a static that `start` fills; its frame (everything only needed to
    // start) is gone before the loop runs: the loop's deepest path (verifying a signature) needs
    // all the stack there is, so main's own frame stays nearly empty.
    let parts = start();
    let Parts {
        device,
        port,
        sensors,
        board,
        updates,
    } = parts;
    #[cfg(feature = "no-updater")]
    {
        let _ = updates;
        runner::run(device, port, sensors, board)
    }
    #[cfg(not(feature = "no-updater"))]
    runner::run_with_updates(device, port, sensors, board, updates)
}

#[inline(never)]
fn start() -> &'static mut Parts {
    let mut port = uart::Uart::init();
    let mut clock = Clock::start();
    port.wake_on_rx();
    let boot_id = ident::boot_id(&mut clock);
    let mut id_buf = [0u8; 25];
    let device_id = ident::device_id(&mut id_buf);

    let sensors = Synthetic::new();
    let mut cfg = DeviceConfig::new(device_id, VERSION, boot_id);
    cfg.identify = false;
    let mut board = Microbit {
        clock,
        woke_us: 0,
        longest_pass_us: 0,
    };
    let now = board.now_ms();
    let device: &'static mut Device<RING> =
        cortex_m::singleton!(: Device<RING> = Device::new(cfg, &sensors, now)).unwrap();

    #[cfg(feature = "no-updater")]
    let updates = ferry_firmware::update::NoUpdates;
    #[cfg(not(feature = "no-updater"))]
    let updates = {
        let mut ucfg = UpdaterConfig::new(build_config::UPDATE_KEY, BOARD, VERSION);
        ucfg.confirm = build_config::CONFIRM;
        if !ucfg.confirm {
            // An image that never confirms exists to be rolled back: no need to wait a minute.
            ucfg.trial_timeout_ms = NEVER_CONFIRM_TRIAL_MS;
        }
        // SAFETY: one partition per area, used only by the updater; ACTIVE is only read.
        let slots = unsafe {
            Slots {
                active: Partition::new(layout::ACTIVE),
                dfu: Partition::new(layout::DFU),
                state: Partition::new(layout::STATE),
                record: Partition::new(layout::RECORD),
            }
        };
        Updater::new(slots, ucfg, now)
    };
    let parts = Parts {
        device,
        port,
        sensors,
        board,
        updates,
    };
    cortex_m::singleton!(: Parts = parts).unwrap()
}

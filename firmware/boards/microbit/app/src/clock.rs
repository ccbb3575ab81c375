//! Time and sleep on the nRF51822 without interrupt handlers: TIMER0 counts microseconds, a
//! compare channel ends a `wfi` one millisecond later.
//!
//! TIMER0 (base 0x4000_8000): TASKS_START +0x000, TASKS_STOP +0x004, TASKS_CLEAR +0x00C,
//! TASKS_CAPTURE[n] +0x040 + 4n, EVENTS_COMPARE[n] +0x140 + 4n, INTENSET +0x304, MODE +0x504,
//! BITMODE +0x508, PRESCALER +0x510, CC[n] +0x540 + 4n. Running from the 16 MHz HFCLK with
//! prescaler 4 it counts at 1 MHz; QEMU's TIMER0 follows host real time (its RTC is not
//! emulated, which is why the RTC is not used).
//!
//! Invariants:
//! - [`Clock::now_ms`] is monotonic and never wraps: the 32-bit counter (71 minutes around) is
//!   extended in software by adding the wrapping difference of successive captures, so it must be
//!   read at least once every 71 minutes (the device loop reads it on every pass).
//! - Interrupts stay masked (PRIMASK) for the whole life of the firmware: the bootloader's
//!   vector table is the one in use (Cortex-M0 has no VTOR) and has no handlers for us. With
//!   PRIMASK set, an enabled interrupt that becomes pending still ends a `wfi` without running
//!   any handler; [`Clock::sleep`] clears what it left pending.
//! - A sleep ends within its time even when the CPU stalls (an emulator's thread descheduled):
//!   it only waits for a compare that was set ahead of the counter, checked by reading the
//!   counter again after writing CC1; a received byte ends it at once (the UART line is pending
//!   again from the moment the byte arrives, even between the last check and the `wfi`).

use core::ptr::{read_volatile, write_volatile};

const TIMER0: usize = 0x4000_8000;
const TASKS_START: usize = 0x000;
const TASKS_STOP: usize = 0x004;
const TASKS_CLEAR: usize = 0x00C;
const TASKS_CAPTURE0: usize = 0x040;
const EVENTS_COMPARE1: usize = 0x144;
const INTENSET: usize = 0x304;
const MODE: usize = 0x504;
const BITMODE: usize = 0x508;
const PRESCALER: usize = 0x510;
const CC0: usize = 0x540;
const CC1: usize = 0x544;
const INTEN_COMPARE1: u32 = 1 << 17;

/// CLOCK: start the 16 MHz crystal (the UART's baud rate needs it; the RC oscillator is only
/// good to a few percent).
const CLOCK: usize = 0x4000_0000;
const TASKS_HFCLKSTART: usize = 0x000;
const EVENTS_HFCLKSTARTED: usize = 0x100;

/// NVIC lines of the nRF51822.
const IRQ_UART0: u32 = 2;
const IRQ_TIMER0: u32 = 8;

const NVIC_ISER: usize = 0xE000_E100;
const NVIC_ICPR: usize = 0xE000_E280;

fn reg(offset: usize) -> *mut u32 {
    (TIMER0 + offset) as *mut u32
}

/// Microseconds since [`Clock::start`], from TIMER0.
pub struct Clock {
    last: u32,
    total_us: u64,
}

impl Clock {
    /// Starts the crystal and TIMER0 at 1 MHz, and enables the wake-up lines (TIMER0, UART0) in
    /// the NVIC with interrupts masked. Call once, after the UART was started: in QEMU, a timer
    /// running after STARTRX is also what lets the first received byte through at once (without
    /// it the first byte after a reset waits about a second).
    pub fn start() -> Clock {
        cortex_m::interrupt::disable();
        // SAFETY: fixed MMIO registers of this chip, configured once before use.
        unsafe {
            write_volatile((CLOCK + EVENTS_HFCLKSTARTED) as *mut u32, 0);
            write_volatile((CLOCK + TASKS_HFCLKSTART) as *mut u32, 1);
            // The crystal starts within about 1 ms; never wait forever for it (an emulator may
            // not model the event).
            for _ in 0..100_000 {
                if read_volatile((CLOCK + EVENTS_HFCLKSTARTED) as *const u32) != 0 {
                    break;
                }
            }
            write_volatile(reg(TASKS_STOP), 1);
            write_volatile(reg(MODE), 0);
            write_volatile(reg(BITMODE), 3); // 32 bits
            write_volatile(reg(PRESCALER), 4); // 16 MHz / 2^4
            write_volatile(reg(TASKS_CLEAR), 1);
            write_volatile(reg(INTENSET), INTEN_COMPARE1);
            write_volatile(reg(TASKS_START), 1);
            write_volatile(NVIC_ISER as *mut u32, (1 << IRQ_UART0) | (1 << IRQ_TIMER0));
        }
        Clock {
            last: 0,
            total_us: 0,
        }
    }

    fn capture() -> u32 {
        // SAFETY: TIMER0's capture task and register.
        unsafe {
            write_volatile(reg(TASKS_CAPTURE0), 1);
            read_volatile(reg(CC0))
        }
    }

    /// Microseconds since start.
    pub fn now_us(&mut self) -> u64 {
        let now = Self::capture();
        self.total_us += u64::from(now.wrapping_sub(self.last));
        self.last = now;
        self.total_us
    }

    /// Milliseconds since start.
    pub fn now_ms(&mut self) -> u64 {
        self.now_us() / 1000
    }

    /// Sleeps (`wfi`) until a byte is received or `us` microseconds passed, whichever is first;
    /// returns at once if `rx_pending` says a byte already waits.
    pub fn sleep(&mut self, us: u32, rx_pending: impl Fn() -> bool) {
        // SAFETY: TIMER0's compare channel 1 and the NVIC's pending register; no handler runs
        // (PRIMASK is set, see the module's invariants).
        unsafe {
            write_volatile(reg(EVENTS_COMPARE1), 0);
            let armed_at = Self::capture();
            write_volatile(reg(CC1), armed_at.wrapping_add(us));
            // The compare only fires if the counter was still below CC1 when CC1 was written;
            // under an emulator the thread can stall between two instructions for longer than
            // `us`, and a compare set behind the counter would fire 71 minutes later. If the
            // counter may already be past it, do not sleep.
            let late = Self::capture().wrapping_sub(armed_at) >= us;
            // Clears the lines' pending state; a byte arriving from here on pends UART0 again,
            // so it cannot be missed between the check below and the wfi.
            write_volatile(NVIC_ICPR as *mut u32, (1 << IRQ_UART0) | (1 << IRQ_TIMER0));
            if !late && !rx_pending() {
                cortex_m::asm::wfi();
            }
            write_volatile(reg(EVENTS_COMPARE1), 0);
        }
    }
}

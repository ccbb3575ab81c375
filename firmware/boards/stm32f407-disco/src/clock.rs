//! The 1 kHz millisecond timebase: SysTick interrupts once per millisecond and bumps a 64-bit counter.
//!
//! Invariants: [`now_ms`] is monotonic and never wraps (2^64 ms is ~585 million years). The counter
//! lives behind a critical section because Cortex-M4 has no 64-bit atomics; a read costs a few
//! cycles with interrupts masked, far shorter than the 1 ms tick, so no tick is ever missed.

use core::cell::Cell;

use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::exception;
use critical_section::Mutex;

static MILLIS: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

/// Starts SysTick at 1 kHz from the core clock `hclk_hz` (HCLK; 168 MHz on this board).
pub fn start(mut syst: SYST, hclk_hz: u32) {
    syst.set_clock_source(SystClkSource::Core);
    // The reload value is 24 bits wide: fine for any HCLK up to 16.7 GHz at 1 kHz.
    syst.set_reload(hclk_hz / 1000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Milliseconds since [`start`].
pub fn now_ms() -> u64 {
    critical_section::with(|cs| MILLIS.borrow(cs).get())
}

/// Busy-waits at least `ms` whole milliseconds (boot-time only: the device loop never blocks on it).
pub fn delay_ms(ms: u64) {
    // +1: the current tick may be about to end.
    let until = now_ms() + ms + 1;
    while now_ms() < until {
        core::hint::spin_loop();
    }
}

#[exception]
fn SysTick() {
    critical_section::with(|cs| {
        let millis = MILLIS.borrow(cs);
        millis.set(millis.get() + 1);
    });
}

//! [`Board`] for the STM32F4DISCOVERY: clock, identify LED, reset and watchdog.
//!
//! - `identify` blinks the green LED (PD12) at 4 Hz for the requested time; the blinking is driven
//!   from `idle`, so it never blocks the device loop.
//! - `reboot` is a system reset through the SCB (AIRCR.SYSRESETREQ).
//! - `idle` also feeds the independent watchdog: a main loop that stops turning for
//!   [`WATCHDOG_MS`] (a wedged bus, a stuck peripheral) resets the chip into a new boot.

use cortex_m::peripheral::SCB;
use ferry_firmware::runner::Board;
use stm32f4xx_hal::{
    gpio::{Output, Pin, PushPull},
    pac::{DBGMCU, IWDG},
    prelude::*,
    watchdog::IndependentWatchdog,
};

use crate::clock;

/// Watchdog period. The longest legitimate loop iteration is a full ring replay at 115200 baud
/// (about a second for the ring size in `main.rs`), plus, in an image with the updater, the erase
/// of a 128 KiB flash sector for an update chunk (1–2 s, during which the core stalls), so this
/// leaves margin.
pub const WATCHDOG_MS: u32 = 4000;
/// Identify blink half-period.
const BLINK_HALF_PERIOD_MS: u64 = 125;

/// The green user LED LD4.
pub type GreenLed = Pin<'D', 12, Output<PushPull>>;

/// Board services for the device runner.
pub struct Disco {
    led: GreenLed,
    identify_until_ms: u64,
    watchdog: IndependentWatchdog,
}

impl Disco {
    /// Takes the LED and starts the watchdog (frozen while a debugger halts the core).
    pub fn new(led: GreenLed, iwdg: IWDG, dbgmcu: &DBGMCU) -> Self {
        let mut watchdog = IndependentWatchdog::new(iwdg);
        watchdog.stop_on_debug(dbgmcu, true);
        watchdog.start(WATCHDOG_MS.millis());
        Disco {
            led,
            identify_until_ms: 0,
            watchdog,
        }
    }
}

impl Board for Disco {
    fn now_ms(&mut self) -> u64 {
        clock::now_ms()
    }

    fn identify(&mut self, duration_ms: u32) {
        self.identify_until_ms = clock::now_ms().saturating_add(u64::from(duration_ms));
    }

    fn reboot(&mut self) -> ! {
        SCB::sys_reset()
    }

    fn idle(&mut self, now_ms: u64) {
        self.watchdog.feed();
        let on = now_ms < self.identify_until_ms && (now_ms / BLINK_HALF_PERIOD_MS) % 2 == 0;
        if on {
            self.led.set_high();
        } else {
            self.led.set_low();
        }
    }
}

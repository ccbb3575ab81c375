//! Ferry firmware for the STM32F4DISCOVERY board (STM32F407VG, Cortex-M4F).
//!
//! The image runs from the ACTIVE slot (`0x0802_0000`), started by the bootloader in `bootloader/`
//! (the flash layout: `flash/src/layout.rs`).
//!
//! Boot sequence: clocks (8 MHz HSE → PLL → 168 MHz SYSCLK, 48 MHz for the RNG), 1 kHz SysTick,
//! LEDs, identity (device id from the unique ID, boot id from the RNG), USART2 link with
//! interrupt-fed reception, sensors (SHT3x on I2C1, or synthetic data if it does not answer), the
//! firmware updater (only in an image built with `FERRY_UPDATE_KEY`: see build.rs), then the
//! portable device loop of `ferry-firmware`, which never returns.
//!
//! LEDs: green (PD12) blinks on an Identify command; red (PD14) stays lit when no SHT3x answered at
//! boot and the board is sending synthetic data.
//!
//! Invariants: everything is set up before the device loop starts; peripherals are only touched
//! from `main` except USART2 reception (its interrupt) and the millisecond counter (SysTick).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod board;
mod clock;
mod identity;
mod sensors;
mod serial;
#[cfg(ferry_updater)]
mod update;

/// What build.rs made of `FERRY_FW_VERSION` and `FERRY_UPDATE_KEY`.
mod config {
    include!(concat!(env!("OUT_DIR"), "/build_config.rs"));
}

use cortex_m_rt::entry;
use ferry_firmware::{runner, Device, DeviceConfig};
use panic_halt as _;
use stm32f4xx_hal::{pac, prelude::*, rcc::Config};

/// Unacknowledged samples held in RAM (16 bytes each: 16 KiB). Replaying a full ring takes about a
/// second at 115200 baud, well inside the watchdog period.
const RING: usize = 1024;
// The firmware string sent in Hello fits (build.rs checks it too).
const _: () = assert!(config::FIRMWARE.len() <= ferry_wire::MAX_FIRMWARE_LEN);

#[entry]
fn main() -> ! {
    // Both `take`s succeed: this is the only place that calls them, once.
    let (Some(dp), Some(cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        halt()
    };

    let mut rcc = dp
        .RCC
        .freeze(Config::hse(8.MHz()).sysclk(168.MHz()).require_pll48clk());
    clock::start(cp.SYST, rcc.clocks.hclk().raw());

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let gpiod = dp.GPIOD.split(&mut rcc);
    let green = gpiod.pd12.into_push_pull_output();
    let mut red = gpiod.pd14.into_push_pull_output();

    let uid = identity::unique_id();
    let device_id = identity::device_id(&uid);
    let boot_id = identity::boot_id(dp.RNG, &mut rcc, &uid);

    let Some(mut port) = serial::init(dp.USART2, gpioa.pa2, gpioa.pa3, &mut rcc) else {
        halt()
    };
    // Takes `rcc` for good: every other peripheral is clocked by now.
    let mut sensors = sensors::init(dp.I2C1, gpiob.pb6, gpiob.pb9, rcc);
    if sensors.is_synthetic() {
        red.set_high();
    }

    let device_config = DeviceConfig::new(&device_id, config::FIRMWARE, boot_id);
    let Some(device) = cortex_m::singleton!(
        : Device<RING> = Device::new(device_config, &sensors, clock::now_ms())
    ) else {
        halt()
    };

    // Before the watchdog starts: settling the record after a reset may erase a sector.
    #[cfg(ferry_updater)]
    let flash = core::cell::RefCell::new(ferry_stm32f407_flash::driver::Flash::new(dp.FLASH));
    #[cfg(ferry_updater)]
    let mut updater = update::init(&flash, clock::now_ms());

    let mut board = board::Disco::new(green, dp.IWDG, &dp.DBGMCU);

    #[cfg(ferry_updater)]
    runner::run_with_updates(device, &mut port, &mut sensors, &mut board, &mut updater);
    #[cfg(not(ferry_updater))]
    runner::run(device, &mut port, &mut sensors, &mut board);
}

/// Unreachable set-up failure: stop here (the watchdog is not running yet) for a debugger to see.
fn halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

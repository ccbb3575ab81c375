//! The bootloader of Ferry on the STM32F4DISCOVERY (STM32F407VG): embassy-boot's
//! `BootLoader::prepare_boot` over the layout's ACTIVE, DFU and STATE partitions
//! (`../flash/src/layout.rs`), then a jump to the application in ACTIVE.
//!
//! `prepare_boot` does what STATE says: nothing (boot), swap DFU into ACTIVE page by page (an
//! update the application verified and marked), or swap the old image back (a new image that
//! reset on trial before it confirmed itself). The application does everything else: it takes the
//! image into DFU, checks its SHA-256 and signature, marks it, and confirms itself once it runs.
//!
//! Invariants:
//! - It writes only ACTIVE, DFU and STATE, through the driver's partitions; never its own sectors
//!   or the application's RECORD.
//! - Every step of a swap is recorded in STATE before the next one starts (embassy-boot), so a
//!   reset or power cut at any point is finished by the next boot. Nothing is kept in RAM across
//!   resets.
//! - It runs in the core-coupled RAM only (`memory.x`): the main SRAM, where the application keeps
//!   a counter across resets, is never touched.
//! - It hands the chip over as reset left it, except the flash controller (locked, caches reset,
//!   as after reset: off) and VTOR (the application's vector table): no clock is changed (it runs
//!   on the 16 MHz HSI, flash at zero wait states), no peripheral or interrupt is enabled.
//! - A flash error (or a panic) resets the chip: the next boot resumes the swap from STATE, rather
//!   than start a half-swapped image. An ACTIVE slot that does not start with a stack pointer in
//!   RAM and a reset vector in ACTIVE (nothing flashed there) is not jumped to: the core waits
//!   for a debugger.
//!
//! Not run on hardware: built and checked against embassy-boot's rules at compile time only.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use core::cell::RefCell;
use core::panic::PanicInfo;
use core::ptr::read_volatile;

use cortex_m::peripheral::SCB;
use cortex_m_rt::entry;
use embassy_boot::{BootLoader, BootLoaderConfig};
use ferry_stm32f407_flash::driver::Flash;
use ferry_stm32f407_flash::layout::{ACTIVE, PAGE, WRITE_SIZE};
use stm32f4::stm32f407::Peripherals;

/// Bytes moved at a time while swapping (embassy-boot's "aligned buffer"): it divides the page
/// and is a whole number of flash words. On the stack, in the 64 KiB core-coupled RAM.
const COPY_CHUNK: usize = 4096;
const _: () = assert!(PAGE as usize % COPY_CHUNK == 0 && COPY_CHUNK % WRITE_SIZE as usize == 0);

/// Main SRAM (112 + 16 KiB) and core-coupled RAM: where an application's initial stack pointer
/// may be (the end address included: a full descending stack starts there).
const RAM: [(u32, u32); 2] = [(0x2000_0000, 0x2002_0000), (0x1000_0000, 0x1001_0000)];

#[entry]
fn main() -> ! {
    // The only `take`: it succeeds.
    let Some(dp) = Peripherals::take() else {
        wait_for_debugger()
    };
    let flash = RefCell::new(Flash::new(dp.FLASH));
    {
        let partitions = Flash::partitions(&flash);
        let mut loader = BootLoader::new(BootLoaderConfig {
            active: partitions.active,
            dfu: partitions.dfu,
            state: partitions.state,
        });
        let mut chunk = [0u8; COPY_CHUNK];
        if loader.prepare_boot(&mut chunk).is_err() {
            SCB::sys_reset();
        }
    }
    start_active()
}

/// Jumps to the application in ACTIVE if it looks like a vector table.
fn start_active() -> ! {
    let table = ACTIVE.start() as *const u32;
    // SAFETY: ACTIVE is mapped flash, always readable; the first two words of a vector table are
    // the initial stack pointer and the reset vector.
    let (sp, reset) = unsafe { (read_volatile(table), read_volatile(table.add(1))) };
    let sp_ok = RAM
        .iter()
        .any(|&(lo, hi)| lo < sp && sp <= hi && sp % 8 == 0);
    let reset_ok = reset & 1 == 1 && ACTIVE.contains(reset & !1);
    if !(sp_ok && reset_ok) {
        wait_for_debugger();
    }
    // SAFETY: the bootloader holds no peripheral and no RAM the application relies on. VTOR takes
    // ACTIVE's start (the layout checks its alignment). `bootload` sets MSP to the table's stack
    // pointer and jumps to its reset vector, both checked above; nothing of this stack is used
    // after that.
    unsafe {
        (*SCB::PTR).vtor.write(ACTIVE.start());
        cortex_m::asm::dsb();
        cortex_m::asm::isb();
        cortex_m::asm::bootload(table)
    }
}

/// Nothing to start: stay here, where a debugger finds the core.
fn wait_for_debugger() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}

/// A panic (an embassy-boot assertion on a layout the compile-time checks rule out) resets the
/// chip: the next boot tries again from STATE.
#[panic_handler]
fn panic(_: &PanicInfo<'_>) -> ! {
    SCB::sys_reset()
}

//! The micro:bit v1 bootloader (at 0x0): embassy-boot's `BootLoader::prepare_boot` over the nRF51
//! NVMC, then a jump to the application in ACTIVE.
//!
//! On every reset: when STATE says SWAP, embassy-boot swaps the image in DFU into ACTIVE (the old
//! one goes to DFU); when it says SWAP again on the next reset (the new image did not confirm
//! itself with `mark_booted`), it swaps back and records REVERT. Its progress is kept in STATE, so
//! a swap cut by a reset or a power loss goes on where it stopped. The application's updater
//! (`ferry_firmware::update`) is the only writer of DFU and of the SWAP mark, and writes the mark
//! only after the image in DFU verified (SHA-256 and the vendor's ed25519 signature).
//!
//! With the `qemu-provision` feature (tests under QEMU only), an ACTIVE that holds no image is
//! first filled with the image QEMU loaded at FACTORY: QEMU restores loaded images on each reset,
//! so the first application cannot be loaded into ACTIVE itself (see `layout.rs`).
//!
//! Invariants:
//! - The bootloader never writes BOOT, RECORD or FACTORY; it writes ACTIVE, DFU and STATE only
//!   through embassy-boot (and ACTIVE through the provisioning copy when that feature is on and
//!   ACTIVE holds no image).
//! - It jumps only to an image whose initial stack pointer lies in RAM and whose reset vector
//!   lies in ACTIVE; otherwise it waits (nothing runnable is better than running garbage).
//! - A flash error during `prepare_boot` resets the chip to try again: booting ACTIVE after a
//!   swap that did not finish could run half of two images.
//! - It enables no interrupt and leaves every peripheral it did not use at its reset state, so
//!   the application starts as from a reset (the NVMC ends read-only).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use embassy_boot::{BootLoader, BootLoaderConfig};
use ferry_microbit_nrf51::layout::{self, ACTIVE, DFU, STATE};
use ferry_microbit_nrf51::nvmc::{self, Partition};
use panic_halt as _;

/// Whether the vector table at `base` starts an image linked for ACTIVE.
fn runnable(base: u32) -> bool {
    let sp = nvmc::read_word(base);
    let reset = nvmc::read_word(base + 4);
    let ram = layout::RAM_START..=layout::RAM_START + layout::RAM_SIZE;
    ram.contains(&sp) && sp % 4 == 0 && ACTIVE.contains(reset & !1) && reset & 1 == 1
}

/// Tests only: copies FACTORY into ACTIVE when ACTIVE holds no image and FACTORY does.
#[cfg(feature = "qemu-provision")]
fn provision() {
    use ferry_microbit_nrf51::layout::{FACTORY, PAGE};
    if runnable(ACTIVE.start) || !runnable(FACTORY.start) {
        return;
    }
    let mut at = 0;
    while at < ACTIVE.size {
        // SAFETY: pages of ACTIVE, which holds no image, and nothing else runs.
        unsafe {
            nvmc::erase_page(ACTIVE.start + at);
            let src = FACTORY.start + at;
            nvmc::write_words(
                ACTIVE.start + at,
                (0..PAGE).step_by(4).map(|o| nvmc::read_word(src + o)),
            );
        }
        at += PAGE;
    }
}

#[entry]
fn main() -> ! {
    #[cfg(feature = "qemu-provision")]
    provision();

    // SAFETY: one partition per area; the bootloader runs from BOOT, which none of them covers.
    let config = unsafe {
        BootLoaderConfig {
            active: Partition::new(ACTIVE),
            dfu: Partition::new(DFU),
            state: Partition::new(STATE),
        }
    };
    let mut loader = BootLoader::new(config);
    let mut page = [0u8; layout::PAGE as usize];
    if loader.prepare_boot(&mut page).is_err() {
        cortex_m::peripheral::SCB::sys_reset();
    }
    if !runnable(ACTIVE.start) {
        loop {
            cortex_m::asm::wfi();
        }
    }
    // SAFETY: ACTIVE starts with a vector table of an image linked there (checked above); its
    // stack pointer and reset handler take over the chip.
    unsafe { cortex_m::asm::bootload(ACTIVE.start as *const u32) }
}

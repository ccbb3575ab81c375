//! The nRF51 flash through its NVMC (non-volatile memory controller), as `embedded-storage` NOR
//! flash partitions: one [`Partition`] per area of the [`layout`](crate::layout).
//!
//! Registers (nRF51 reference manual, section NVMC; QEMU `hw/nvram/nrf51_nvm.c`): READY +0x400
//! (bit 0: ready for the next operation), CONFIG +0x504 (0 read only, 1 write enabled, 2 erase
//! enabled), ERASEPAGE +0x508 (write a page address to erase that page).
//!
//! Invariants:
//! - A partition only ever touches its own address range: every operation is checked against
//!   its capacity and the flash's alignment rules first (`check_read/write/erase`), offsets are
//!   relative to the partition's start.
//! - Flash is programmed only in whole, aligned 32-bit words (a byte or halfword store to the
//!   flash faults in QEMU and is not allowed on the chip); a write can only clear bits.
//! - CONFIG is back to read-only (0) after every operation, and each operation waits for READY
//!   before and after, so the controller is idle whenever a method returns.
//! - The NVMC is used from thread mode only, one operation at a time (the firmware has no
//!   interrupt handlers that touch flash), so partitions need no lock between them.
//! - Reads are volatile pointer reads: a read after a write sees the new contents.

use core::ptr::{read_volatile, write_volatile};

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash,
};

use crate::layout::{self, Area};

const NVMC: usize = 0x4001_E000;
const READY: usize = NVMC + 0x400;
const CONFIG: usize = NVMC + 0x504;
const ERASEPAGE: usize = NVMC + 0x508;
const CONFIG_REN: u32 = 0;
const CONFIG_WEN: u32 = 1;
const CONFIG_EEN: u32 = 2;

fn wait_ready() {
    // SAFETY: read of an NVMC register.
    while unsafe { read_volatile(READY as *const u32) } & 1 == 0 {}
}

fn set_config(mode: u32) {
    wait_ready();
    // SAFETY: the NVMC's CONFIG register; the controller is ready.
    unsafe { write_volatile(CONFIG as *mut u32, mode) };
    wait_ready();
}

/// Erases the page at `addr` (page-aligned, inside the flash).
///
/// # Safety
/// The page must not hold code or data the caller still needs (in particular not the running
/// code), and no other flash operation may run at the same time.
pub unsafe fn erase_page(addr: u32) {
    debug_assert!(addr % layout::PAGE == 0 && addr < layout::FLASH_SIZE);
    set_config(CONFIG_EEN);
    write_volatile(ERASEPAGE as *mut u32, addr);
    wait_ready();
    set_config(CONFIG_REN);
}

/// Programs `words` at `addr` (word-aligned, inside the flash), one word at a time: each flash
/// bit ends as the AND of its old and new value.
///
/// # Safety
/// As for [`erase_page`].
pub unsafe fn write_words(addr: u32, words: impl Iterator<Item = u32>) {
    debug_assert!(addr % 4 == 0);
    set_config(CONFIG_WEN);
    let mut at = addr as usize;
    for w in words {
        write_volatile(at as *mut u32, w);
        wait_ready();
        at += 4;
    }
    set_config(CONFIG_REN);
}

/// Reads the word at `addr` of the flash.
pub fn read_word(addr: u32) -> u32 {
    debug_assert!(addr % 4 == 0 && addr < layout::FLASH_SIZE);
    // SAFETY: an aligned address inside the memory-mapped flash.
    unsafe { read_volatile(addr as *const u32) }
}

/// One area of the flash as NOR flash (READ_SIZE 1, WRITE_SIZE 4, ERASE_SIZE 1024).
#[derive(Debug)]
pub struct Partition {
    area: Area,
}

impl Partition {
    /// The partition over `area` (one of [`layout`]'s).
    ///
    /// # Safety
    /// At most one `Partition` per area may be used at a time, and the area must not hold the
    /// code that runs (ACTIVE may be read, never written, by the application that runs from it).
    pub const unsafe fn new(area: Area) -> Partition {
        Partition { area }
    }

    /// The area it covers.
    pub fn area(&self) -> Area {
        self.area
    }
}

impl ErrorType for Partition {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for Partition {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check_read(self, offset, bytes.len())?;
        let base = (self.area.start + offset) as usize;
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: inside this partition's area of the memory-mapped flash (checked above).
            *b = unsafe { read_volatile((base + i) as *const u8) };
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.area.size as usize
    }
}

impl NorFlash for Partition {
    const WRITE_SIZE: usize = layout::WRITE_SIZE as usize;
    const ERASE_SIZE: usize = layout::PAGE as usize;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to)?;
        let mut page = self.area.start + from;
        while page < self.area.start + to {
            // SAFETY: a whole page of this partition (checked above); see `Partition::new`.
            unsafe { erase_page(page) };
            page += layout::PAGE;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len())?;
        let words = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        // SAFETY: whole words inside this partition (checked above); see `Partition::new`.
        unsafe { write_words(self.area.start + offset, words) };
        Ok(())
    }
}

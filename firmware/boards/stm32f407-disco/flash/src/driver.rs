//! A NOR-flash driver for the STM32F4 flash controller (RM0090 section 3), as `embedded-storage`
//! partitions over the regions of [`crate::layout`]: [`SmallPartition`] (16 KiB erase sectors:
//! STATE, RECORD) and [`LargePartition`] (128 KiB sectors: ACTIVE, DFU), and [`ReadOnly`] for a
//! partition that must never be written (the application's view of its own ACTIVE slot).
//!
//! Why not `stm32f4xx-hal`'s `flash` module (0.23): its `NorFlash` reports one `ERASE_SIZE` of
//! 128 KiB for the whole flash, so a 16 KiB STATE sector cannot be described (and erasing "one
//! page" from sector 2 would erase sectors 2 to 5); it programs and erases one byte at a time
//! (parallelism x8, four times slower, up to 4 s per 128 KiB sector); it never clears the
//! controller's sticky error flags, so one error fails every later operation.
//!
//! Invariants:
//! - A partition reaches its own sectors and nothing else: every offset is checked against its
//!   size, every erase range against its sector size (embedded-storage's `check_*` helpers); the
//!   partitions are made only from the layout's regions, none of which is the bootloader.
//! - The controller is unlocked for one erase or program and locked again right after, on errors
//!   too. Every operation waits for the controller to be idle and clears its error flags first,
//!   so an earlier failure never fails a later operation, and reports any flag the operation set.
//! - Every write is read back and compared: a word that did not take (say, one written twice, as
//!   NOR flash only clears bits) is an error, never silently wrong data.
//! - The ART accelerator's caches are reset after every erase and program (the data cache is off
//!   while the operation runs), so a later read never returns bytes cached before it.
//! - Erase and program use parallelism x32 (word writes), which needs a supply of 2.7–3.6 V
//!   (RM0090 table 7); the STM32F4DISCOVERY runs the chip at 3 V.
//!
//! While an erase or a program runs, any read of the flash, instruction fetches and interrupt
//! vectors included, stalls the bus: the core (and every interrupt handler in flash) waits. A
//! 128 KiB sector erase takes 1–2 s at x32 (datasheet DS8626, table 40).

use core::cell::RefCell;
use core::ptr::{read_volatile, write_volatile};

use embedded_storage::nor_flash::{
    check_erase, check_read, check_write, ErrorType, NorFlash, NorFlashError, NorFlashErrorKind,
    ReadNorFlash,
};
use stm32f4::stm32f407::FLASH;

use crate::layout::{self, Region, LARGE_SECTOR, SMALL_SECTOR, WRITE_SIZE};

const KEY1: u32 = 0x4567_0123;
const KEY2: u32 = 0xCDEF_89AB;

/// A failed flash operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Outside the partition.
    OutOfBounds,
    /// An offset or length not a multiple of the write or erase size.
    NotAligned,
    /// The controller stayed locked after the unlock sequence.
    Locked,
    /// The controller is in use by another partition (a call from within a flash operation).
    Busy,
    /// PGSERR: programming sequence error.
    Sequence,
    /// PGPERR: programming parallelism error.
    Parallelism,
    /// PGAERR: programming alignment error.
    Alignment,
    /// WRPERR: the sector is write protected (option bytes).
    WriteProtected,
    /// OPERR: operation error.
    Operation,
    /// A written word read back different.
    Verify,
}

impl NorFlashError for Error {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            Error::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            Error::NotAligned | Error::Alignment => NorFlashErrorKind::NotAligned,
            _ => NorFlashErrorKind::Other,
        }
    }
}

impl From<NorFlashErrorKind> for Error {
    fn from(kind: NorFlashErrorKind) -> Self {
        match kind {
            NorFlashErrorKind::NotAligned => Error::NotAligned,
            _ => Error::OutOfBounds,
        }
    }
}

/// The flash controller. Shared by the partitions through a `RefCell`: each operation borrows it
/// for its duration only.
pub struct Flash {
    regs: FLASH,
}

impl Flash {
    /// Takes the controller.
    pub fn new(regs: FLASH) -> Self {
        Flash { regs }
    }

    /// The four partitions of the layout, over `flash`.
    pub fn partitions(flash: &RefCell<Flash>) -> Partitions<'_> {
        Partitions {
            active: Partition::new(flash, layout::ACTIVE),
            dfu: Partition::new(flash, layout::DFU),
            state: Partition::new(flash, layout::STATE),
            record: Partition::new(flash, layout::RECORD),
        }
    }

    fn wait_idle(&self) {
        while self.regs.sr().read().bsy().bit_is_set() {
            core::hint::spin_loop();
        }
    }

    /// Waits for the controller, clears its error flags, turns the data cache off and unlocks.
    /// Returns whether the data cache was on.
    fn begin(&mut self) -> Result<bool, Error> {
        self.wait_idle();
        self.regs.sr().write(|w| {
            w.eop().clear();
            w.operr().clear();
            w.wrperr().clear();
            w.pgaerr().clear();
            w.pgperr().clear();
            w.pgserr().clear()
        });
        let dcache = self.regs.acr().read().dcen().bit_is_set();
        self.regs.acr().modify(|_, w| w.dcen().clear_bit());
        if self.regs.cr().read().lock().bit_is_set() {
            // SAFETY: KEYR takes any value; these two, in this order, are the unlock sequence
            // (RM0090 section 3.5.1). The controller was locked, so this is not a second sequence
            // (which would lock it until the next reset).
            self.regs.keyr().write(|w| unsafe { w.key().bits(KEY1) });
            self.regs.keyr().write(|w| unsafe { w.key().bits(KEY2) });
        }
        if self.regs.cr().read().lock().bit_is_set() {
            self.end(dcache);
            return Err(Error::Locked);
        }
        Ok(dcache)
    }

    /// Ends an operation: clears the operation bits, locks, and resets both caches (the
    /// instruction cache is turned off for its reset, as RM0090 requires), turning the data cache
    /// back on if it was.
    fn end(&mut self, dcache: bool) {
        self.regs.cr().modify(|_, w| {
            w.pg().clear_bit();
            w.ser().clear_bit();
            w.lock().set_bit()
        });
        let icache = self.regs.acr().read().icen().bit_is_set();
        self.regs
            .acr()
            .modify(|_, w| w.icen().clear_bit().dcen().clear_bit());
        self.regs
            .acr()
            .modify(|_, w| w.icrst().set_bit().dcrst().set_bit());
        self.regs
            .acr()
            .modify(|_, w| w.icrst().clear_bit().dcrst().clear_bit());
        self.regs
            .acr()
            .modify(|_, w| w.icen().bit(icache).dcen().bit(dcache));
    }

    /// The error flag the last operation set, if any.
    fn status(&self) -> Result<(), Error> {
        let sr = self.regs.sr().read();
        if sr.pgserr().bit_is_set() {
            Err(Error::Sequence)
        } else if sr.pgperr().bit_is_set() {
            Err(Error::Parallelism)
        } else if sr.pgaerr().bit_is_set() {
            Err(Error::Alignment)
        } else if sr.wrperr().bit_is_set() {
            Err(Error::WriteProtected)
        } else if sr.operr().bit_is_set() {
            Err(Error::Operation)
        } else {
            Ok(())
        }
    }

    /// Erases sector `sector` (0..=11).
    fn erase_sector(&mut self, sector: u8) -> Result<(), Error> {
        let dcache = self.begin()?;
        // SAFETY: SNB takes 0..=11 on this single-bank part; `sector` comes from a layout region,
        // whose sector numbers the layout checks at compile time.
        self.regs.cr().modify(|_, w| unsafe {
            w.psize().psize32();
            w.ser().set_bit();
            w.snb().bits(sector)
        });
        self.regs.cr().modify(|_, w| w.strt().set_bit());
        self.wait_idle();
        let result = self.status();
        self.end(dcache);
        result
    }

    /// Programs `bytes` (whole words) at `address` (word aligned), then reads them back.
    fn program(&mut self, address: u32, bytes: &[u8]) -> Result<(), Error> {
        let dcache = self.begin()?;
        self.regs.cr().modify(|_, w| {
            w.psize().psize32();
            w.pg().set_bit()
        });
        let mut result = Ok(());
        for (i, word) in bytes.chunks_exact(WRITE_SIZE as usize).enumerate() {
            let at = (address as usize + i * WRITE_SIZE as usize) as *mut u32;
            let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            // SAFETY: `at` is a word-aligned flash address inside the calling partition (its
            // bounds and alignment were checked); with PG set, a word write to the flash is a
            // program operation, not a memory write the compiler knows about.
            unsafe { write_volatile(at, value) };
            self.wait_idle();
            result = self.status();
            if result.is_err() {
                break;
            }
        }
        self.end(dcache);
        result?;
        for (i, &expected) in bytes.iter().enumerate() {
            // SAFETY: as above; the flash is always readable.
            let got = unsafe { read_volatile((address as usize + i) as *const u8) };
            if got != expected {
                return Err(Error::Verify);
            }
        }
        Ok(())
    }
}

/// One region of the flash as an `embedded-storage` NOR flash whose erase size is `ERASE`, the
/// size of every sector of the region.
pub struct Partition<'a, const ERASE: usize> {
    flash: &'a RefCell<Flash>,
    region: Region,
}

/// A partition in 16 KiB sectors.
pub type SmallPartition<'a> = Partition<'a, { SMALL_SECTOR as usize }>;
/// A partition in 128 KiB sectors.
pub type LargePartition<'a> = Partition<'a, { LARGE_SECTOR as usize }>;

/// The layout's partitions.
pub struct Partitions<'a> {
    /// The running application (embassy-boot's ACTIVE).
    pub active: LargePartition<'a>,
    /// The update slot (embassy-boot's DFU).
    pub dfu: LargePartition<'a>,
    /// embassy-boot's STATE.
    pub state: SmallPartition<'a>,
    /// The updater's RECORD.
    pub record: SmallPartition<'a>,
}

// Each partition's sectors have the size its type gives as ERASE_SIZE (the layout checks the same).
const _: () = {
    assert!(matches!(layout::ACTIVE.erase_size(), Some(LARGE_SECTOR)));
    assert!(matches!(layout::DFU.erase_size(), Some(LARGE_SECTOR)));
    assert!(matches!(layout::STATE.erase_size(), Some(SMALL_SECTOR)));
    assert!(matches!(layout::RECORD.erase_size(), Some(SMALL_SECTOR)));
};

impl<'a, const ERASE: usize> Partition<'a, ERASE> {
    /// Private: only [`Flash::partitions`] makes partitions, from regions checked above.
    fn new(flash: &'a RefCell<Flash>, region: Region) -> Self {
        Partition { flash, region }
    }

    /// The region it covers.
    pub fn region(&self) -> Region {
        self.region
    }

    fn with_flash<T>(&self, f: impl FnOnce(&mut Flash) -> Result<T, Error>) -> Result<T, Error> {
        let mut flash = self.flash.try_borrow_mut().map_err(|_| Error::Busy)?;
        f(&mut flash)
    }
}

impl<const ERASE: usize> ErrorType for Partition<'_, ERASE> {
    type Error = Error;
}

impl<const ERASE: usize> ReadNorFlash for Partition<'_, ERASE> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Error> {
        check_read(self, offset, bytes.len())?;
        let start = (self.region.start() + offset) as usize;
        for (i, b) in bytes.iter_mut().enumerate() {
            // SAFETY: inside the region (checked above), which is mapped flash, always readable.
            *b = unsafe { read_volatile((start + i) as *const u8) };
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.region.size() as usize
    }
}

impl<const ERASE: usize> NorFlash for Partition<'_, ERASE> {
    const WRITE_SIZE: usize = WRITE_SIZE as usize;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Error> {
        check_erase(self, from, to)?;
        let first = self.region.first as u32 + from / ERASE as u32;
        let last = self.region.first as u32 + to / ERASE as u32;
        for sector in first..last {
            self.with_flash(|f| f.erase_sector(sector as u8))?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Error> {
        check_write(self, offset, bytes.len())?;
        if bytes.is_empty() {
            return Ok(());
        }
        let address = self.region.start() + offset;
        self.with_flash(|f| f.program(address, bytes))
    }
}

/// A partition that can only be read: the application's view of ACTIVE, the image it runs from.
pub struct ReadOnly<P>(pub P);

impl<P: ErrorType> ErrorType for ReadOnly<P> {
    type Error = P::Error;
}

impl<P: ReadNorFlash> ReadNorFlash for ReadOnly<P> {
    const READ_SIZE: usize = P::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

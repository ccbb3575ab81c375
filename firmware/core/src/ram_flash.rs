//! NOR flash in host memory, with power cuts: the simulator's update slots and the test bench of
//! the updater and the bootloader's swap.
//!
//! It behaves like the NOR flash of a microcontroller such as the nRF51's: erase sets a page to
//! `0xFF`, a write can only clear bits (writing a unit again ANDs the new value in), misaligned or
//! out-of-range operations are errors. A [`RamFlash::strict`] chip also refuses to write a unit
//! that is not erased, like flash with ECC. A power cut can be armed at the n-th write
//! or erase ([`RamFlash::cut_at`]): that operation is done only in part ([`Cut`]), and every
//! operation after it fails until [`RamFlash::power_on`], as if the chip had lost power. Reads of
//! a flash without power fail too.
//!
//! [`Region`]s are partitions of one shared chip (`Arc<Mutex<_>>`), so one operation counter runs
//! across ACTIVE, DFU, STATE and RECORD, the way one power supply does.

use std::sync::{Arc, Mutex};
use std::vec;
use std::vec::Vec;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// How much of the operation a power cut lets happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing of it.
    Before,
    /// The first half of its write units, or of the erased bytes.
    Half,
}

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamFlashError {
    /// Offset or length not a multiple of the write or erase size.
    NotAligned,
    /// Past the end.
    OutOfBounds,
    /// A strict chip was asked to write a unit that is not erased.
    NotErased,
    /// The power is off (a cut happened).
    PowerLost,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            _ => NorFlashErrorKind::Other,
        }
    }
}

/// One chip of `W`-byte write units and `E`-byte erase pages.
#[derive(Debug, Clone)]
pub struct RamFlash<const W: usize, const E: usize> {
    mem: Vec<u8>,
    ops: u64,
    cut: Option<(u64, Cut)>,
    dead: bool,
    strict: bool,
}

impl<const W: usize, const E: usize> RamFlash<W, E> {
    /// An erased chip of `size` bytes (a multiple of `E`).
    pub fn new(size: usize) -> Self {
        assert!(size % E == 0 && E % W == 0);
        RamFlash {
            mem: vec![0xFF; size],
            ops: 0,
            cut: None,
            dead: false,
            strict: false,
        }
    }

    /// The same chip refusing to write a unit that is not erased.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Wraps it for sharing between [`Region`]s.
    pub fn shared(self) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(self))
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }

    /// The contents, for loading an image as a programmer would.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem
    }

    /// Writes and erases done (or attempted) since creation.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Cuts the power at operation number `op` (counted from 0 like [`RamFlash::ops`]).
    pub fn cut_at(&mut self, op: u64, how: Cut) {
        self.cut = Some((op, how));
    }

    /// True once a cut happened (until [`RamFlash::power_on`]).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Power back: operations work again, no cut armed.
    pub fn power_on(&mut self) {
        self.dead = false;
        self.cut = None;
    }

    /// Whether this operation is the one cut (and how); counts it.
    fn begin_op(&mut self) -> Result<Option<Cut>, RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerLost);
        }
        let n = self.ops;
        self.ops += 1;
        match self.cut {
            Some((at, how)) if at == n => {
                self.dead = true;
                Ok(Some(how))
            }
            _ => Ok(None),
        }
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), RamFlashError> {
        if self.dead {
            return Err(RamFlashError::PowerLost);
        }
        let end = offset
            .checked_add(out.len())
            .ok_or(RamFlashError::OutOfBounds)?;
        out.copy_from_slice(
            self.mem
                .get(offset..end)
                .ok_or(RamFlashError::OutOfBounds)?,
        );
        Ok(())
    }

    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), RamFlashError> {
        if offset % W != 0 || data.len() % W != 0 {
            return Err(RamFlashError::NotAligned);
        }
        if offset + data.len() > self.mem.len() {
            return Err(RamFlashError::OutOfBounds);
        }
        if self.strict {
            let target = &self.mem[offset..offset + data.len()];
            if target.iter().any(|b| *b != 0xFF) {
                return Err(RamFlashError::NotErased);
            }
        }
        let cut = self.begin_op()?;
        let units = data.len() / W;
        let done = match cut {
            None => units,
            Some(Cut::Before) => 0,
            Some(Cut::Half) => units / 2,
        };
        for (m, d) in self.mem[offset..offset + done * W].iter_mut().zip(data) {
            *m &= *d; // NOR: a write only clears bits
        }
        if cut.is_some() {
            Err(RamFlashError::PowerLost)
        } else {
            Ok(())
        }
    }

    fn erase(&mut self, from: usize, to: usize) -> Result<(), RamFlashError> {
        if from % E != 0 || to % E != 0 || from > to {
            return Err(RamFlashError::NotAligned);
        }
        if to > self.mem.len() {
            return Err(RamFlashError::OutOfBounds);
        }
        let cut = self.begin_op()?;
        let end = match cut {
            None => to,
            Some(Cut::Before) => from,
            Some(Cut::Half) => from + (to - from) / 2,
        };
        self.mem[from..end].fill(0xFF);
        if cut.is_some() {
            Err(RamFlashError::PowerLost)
        } else {
            Ok(())
        }
    }
}

/// A partition `start .. start + len` of a shared [`RamFlash`].
#[derive(Debug, Clone)]
pub struct Region<const W: usize, const E: usize> {
    chip: Arc<Mutex<RamFlash<W, E>>>,
    start: usize,
    len: usize,
}

impl<const W: usize, const E: usize> Region<W, E> {
    /// The partition; `start` and `len` are multiples of `E`.
    pub fn new(chip: &Arc<Mutex<RamFlash<W, E>>>, start: usize, len: usize) -> Self {
        assert!(start % E == 0 && len % E == 0);
        Region {
            chip: Arc::clone(chip),
            start,
            len,
        }
    }

    fn check(&self, offset: u32, len: usize) -> Result<usize, RamFlashError> {
        let offset = offset as usize;
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(self.start + offset)
    }

    fn chip(&self) -> std::sync::MutexGuard<'_, RamFlash<W, E>> {
        self.chip.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<const W: usize, const E: usize> ErrorType for Region<W, E> {
    type Error = RamFlashError;
}

impl<const W: usize, const E: usize> ReadNorFlash for Region<W, E> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let at = self.check(offset, bytes.len())?;
        self.chip().read(at, bytes)
    }

    fn capacity(&self) -> usize {
        self.len
    }
}

impl<const W: usize, const E: usize> NorFlash for Region<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        if to < from {
            return Err(RamFlashError::NotAligned);
        }
        let at = self.check(from, (to - from) as usize)?;
        self.chip().erase(at, at + (to - from) as usize)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = self.check(offset, bytes.len())?;
        self.chip().write(at, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nor_rules_and_a_cut_that_leaves_half() {
        let chip = RamFlash::<4, 64>::new(256).strict().shared();
        let mut r = Region::new(&chip, 64, 128);
        r.write(0, &[0x0F; 8]).unwrap();
        assert_eq!(r.write(0, &[0; 4]), Err(RamFlashError::NotErased));
        assert_eq!(r.write(2, &[0; 4]), Err(RamFlashError::NotAligned));
        assert_eq!(r.write(128, &[0; 4]), Err(RamFlashError::OutOfBounds));
        chip.lock().unwrap().cut_at(1, Cut::Half);
        assert_eq!(r.write(8, &[0; 16]), Err(RamFlashError::PowerLost));
        let mut out = [0u8; 24];
        assert_eq!(r.read(0, &mut out), Err(RamFlashError::PowerLost));
        chip.lock().unwrap().power_on();
        r.read(0, &mut out).unwrap();
        assert_eq!(out[..8], [0x0F; 8]);
        assert_eq!(
            out[8..16],
            [0; 8],
            "two of four units written before the cut"
        );
        assert_eq!(out[16..], [0xFF; 8]);
        r.erase(0, 64).unwrap();
        r.read(0, &mut out).unwrap();
        assert_eq!(out, [0xFF; 24]);
        assert_eq!(
            chip.lock().unwrap().bytes()[..64],
            [0xFF; 64],
            "outside the region"
        );
    }
}

/// The flash of a device with the swap layout on one chip: ACTIVE, DFU (one page larger), the
/// bootloader's STATE and the update RECORD, in that order, as on a board after its bootloader.
#[derive(Debug, Clone)]
pub struct DeviceFlash<const W: usize, const E: usize> {
    chip: Arc<Mutex<RamFlash<W, E>>>,
    active_pages: usize,
    state_pages: usize,
}

/// The partitions of a [`DeviceFlash`], as the updater takes them.
pub type RamSlots<const W: usize, const E: usize> =
    crate::update::Slots<Region<W, E>, Region<W, E>, Region<W, E>, Region<W, E>>;

impl<const W: usize, const E: usize> DeviceFlash<W, E> {
    /// An erased chip with an ACTIVE slot of `active_pages` pages.
    pub fn new(active_pages: usize) -> Self {
        // embassy-boot keeps 2 + 4 words per ACTIVE page in STATE.
        let state_pages = ((2 + 4 * active_pages) * W).div_ceil(E);
        let pages = active_pages + (active_pages + 1) + state_pages + 1;
        DeviceFlash {
            chip: RamFlash::new(pages * E).shared(),
            active_pages,
            state_pages,
        }
    }

    /// The chip (for power cuts and counters).
    pub fn chip(&self) -> &Arc<Mutex<RamFlash<W, E>>> {
        &self.chip
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RamFlash<W, E>> {
        self.chip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the ACTIVE slot.
    pub fn active_len(&self) -> usize {
        self.active_pages * E
    }

    fn region(&self, first_page: usize, pages: usize) -> Region<W, E> {
        Region::new(&self.chip, first_page * E, pages * E)
    }

    /// ACTIVE, DFU, STATE and RECORD.
    pub fn slots(&self) -> RamSlots<W, E> {
        let a = self.active_pages;
        crate::update::Slots {
            active: self.region(0, a),
            dfu: self.region(a, a + 1),
            state: self.region(2 * a + 1, self.state_pages),
            record: self.region(2 * a + 1 + self.state_pages, 1),
        }
    }

    /// Programs `image` into ACTIVE as a debug probe would (no power cut applies).
    pub fn install(&self, image: &[u8]) {
        assert!(image.len() <= self.active_len(), "image larger than ACTIVE");
        let mut chip = self.lock();
        chip.bytes_mut()[..self.active_len()].fill(0xFF);
        chip.bytes_mut()[..image.len()].copy_from_slice(image);
    }

    /// The first `len` bytes of ACTIVE.
    pub fn active(&self, len: usize) -> Vec<u8> {
        self.lock().bytes()[..len].to_vec()
    }

    /// Runs the bootloader's part of a reset: embassy-boot's `prepare_boot` swaps or reverts as
    /// STATE says. Returns the state it found.
    pub fn boot(&self) -> Result<embassy_boot::State, embassy_boot::BootError> {
        let s = self.slots();
        let mut loader = embassy_boot::BootLoader::new(embassy_boot::BootLoaderConfig {
            active: s.active,
            dfu: s.dfu,
            state: s.state,
        });
        let mut page = vec![0u8; E];
        loader.prepare_boot(&mut page)
    }
}

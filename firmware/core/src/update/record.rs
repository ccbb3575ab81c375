//! The update record: what a device keeps in flash about its transfer, so it survives resets.
//!
//! It lives in the first erase page of its own partition (RECORD), never in the slots or in the
//! bootloader's STATE. Layout (offsets in bytes; `W` = the flash's write size, at most 16):
//!
//! ```text
//!   0  header, HEADER_LEN bytes, written once after the page is erased:
//!      "FUR1" id:u32 length:u32 force:u8 len(version):u8 len(board):u8 0
//!      version[32] board[24] sha256[32] signature[64] crc32:u32      (all integers little-endian)
//! 192  MARKED     one write unit, programmed (zeroes) once the image was verified and handed to
//!                 the bootloader
//! 208  TRIED      programmed when the new image first runs (on trial)
//! 224  CONFIRMED  programmed once the new image confirmed itself
//! 240  ROLLED_BACK programmed once the bootloader restored the old image
//! 256  progress marks: mark i (at 256 + i·W) is programmed once image bytes
//!      [0, (i + 1)·unit) are written, `unit` being a whole number of DFU erase pages
//! ```
//!
//! Invariants:
//! - Every field is written at most once between two erases, so any flash that clears bits on
//!   write (NOR) can hold it, and a write cut by a power loss damages at most the unit it wrote.
//! - A header whose CRC does not match is no record at all (an erase or a header write was cut).
//! - Marks are only programmed after the bytes they cover were written: the resume offset
//!   read back after a reset is never past what is in the slot. A mark cut half-way reads as
//!   unwritten (only an all-zero unit counts), so it costs one unit to write again, nothing more.

use embedded_storage::nor_flash::NorFlash;
use ferry_wire::update::{MAX_BOARD_LEN, MAX_VERSION_LEN, SHA256_LEN, SIGNATURE_LEN};
use heapless::String;

const MAGIC: &[u8; 4] = b"FUR1";
/// Bytes of the header, CRC included.
pub const HEADER_LEN: usize =
    4 + 4 + 4 + 4 + MAX_VERSION_LEN + MAX_BOARD_LEN + SHA256_LEN + SIGNATURE_LEN + 4;
const MARKED_AT: u32 = 192;
const TRIED_AT: u32 = 208;
const CONFIRMED_AT: u32 = 224;
const ROLLED_BACK_AT: u32 = 240;
const MARKS_AT: u32 = 256;
/// The largest write size the layout has room for.
pub const MAX_WRITE_SIZE: usize = 16;

const _: () = assert!(HEADER_LEN <= MARKED_AT as usize);

/// The signed description of an image, as announced by `UpdateBegin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Transfer id.
    pub id: u32,
    /// Image length in bytes.
    pub length: u32,
    /// Install even if not newer.
    pub force: bool,
    /// Image version.
    pub version: String<MAX_VERSION_LEN>,
    /// Board the image is for.
    pub board: String<MAX_BOARD_LEN>,
    /// SHA-256 of the image.
    pub sha256: [u8; SHA256_LEN],
    /// ed25519 signature of the signed message.
    pub signature: [u8; SIGNATURE_LEN],
}

/// What a record page holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The transfer.
    pub manifest: Manifest,
    /// Progress marks programmed, counted from the first (a gap ends the count).
    pub marks: u32,
    /// The image was verified and marked for the bootloader.
    pub marked: bool,
    /// The new image ran (on trial) at least once.
    pub tried: bool,
    /// The new image confirmed itself.
    pub confirmed: bool,
    /// The bootloader restored the old image.
    pub rolled_back: bool,
}

fn crc32(bytes: &[u8]) -> u32 {
    ferry_wire::crc32(bytes)
}

fn encode(m: &Manifest) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&m.id.to_le_bytes());
    h[8..12].copy_from_slice(&m.length.to_le_bytes());
    h[12] = u8::from(m.force);
    h[13] = m.version.len() as u8;
    h[14] = m.board.len() as u8;
    let mut at = 16;
    h[at..at + m.version.len()].copy_from_slice(m.version.as_bytes());
    at += MAX_VERSION_LEN;
    h[at..at + m.board.len()].copy_from_slice(m.board.as_bytes());
    at += MAX_BOARD_LEN;
    h[at..at + SHA256_LEN].copy_from_slice(&m.sha256);
    at += SHA256_LEN;
    h[at..at + SIGNATURE_LEN].copy_from_slice(&m.signature);
    at += SIGNATURE_LEN;
    let crc = crc32(&h[..at]);
    h[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

fn decode(h: &[u8; HEADER_LEN]) -> Option<Manifest> {
    let body = HEADER_LEN - 4;
    let crc = u32::from_le_bytes(h[body..].try_into().ok()?);
    if &h[0..4] != MAGIC || crc32(&h[..body]) != crc {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    let (vlen, blen) = (usize::from(h[13]), usize::from(h[14]));
    if vlen > MAX_VERSION_LEN || blen > MAX_BOARD_LEN {
        return None;
    }
    let text = |at: usize, len: usize| core::str::from_utf8(&h[at..at + len]).ok();
    let mut at = 16;
    let version = String::try_from(text(at, vlen)?).ok()?;
    at += MAX_VERSION_LEN;
    let board = String::try_from(text(at, blen)?).ok()?;
    at += MAX_BOARD_LEN;
    let sha256 = h[at..at + SHA256_LEN].try_into().ok()?;
    at += SHA256_LEN;
    let signature = h[at..at + SIGNATURE_LEN].try_into().ok()?;
    Some(Manifest {
        id: word(4),
        length: word(8),
        force: h[12] != 0,
        version,
        board,
        sha256,
        signature,
    })
}

/// The record partition. `R` is any NOR flash whose write size is at most [`MAX_WRITE_SIZE`]
/// and whose first erase page has room for the header and at least one mark.
pub struct Record<R> {
    flash: R,
}

impl<R: NorFlash> Record<R> {
    const STRIDE: u32 = if R::WRITE_SIZE < 4 {
        4
    } else {
        R::WRITE_SIZE as u32
    };
    const PAGE: u32 = R::ERASE_SIZE as u32;

    /// Wraps the partition.
    pub fn new(flash: R) -> Self {
        const {
            assert!(R::WRITE_SIZE <= MAX_WRITE_SIZE);
            assert!(R::ERASE_SIZE >= MARKS_AT as usize + MAX_WRITE_SIZE);
        }
        Record { flash }
    }

    /// How many progress marks fit.
    pub fn mark_capacity(&self) -> u32 {
        let page = Self::PAGE.min(self.flash.capacity() as u32);
        (page - MARKS_AT) / Self::STRIDE
    }

    /// Reads the record; `Ok(None)` when there is none (erased, or a cut header write).
    pub fn load(&mut self) -> Result<Option<Stored>, R::Error> {
        let mut h = [0u8; HEADER_LEN];
        self.flash.read(0, &mut h)?;
        let Some(manifest) = decode(&h) else {
            return Ok(None);
        };
        let mut marks = 0;
        while marks < self.mark_capacity() && self.is_programmed(MARKS_AT + marks * Self::STRIDE)? {
            marks += 1;
        }
        Ok(Some(Stored {
            manifest,
            marks,
            marked: self.is_programmed(MARKED_AT)?,
            tried: self.is_programmed(TRIED_AT)?,
            confirmed: self.is_programmed(CONFIRMED_AT)?,
            rolled_back: self.is_programmed(ROLLED_BACK_AT)?,
        }))
    }

    fn is_programmed(&mut self, at: u32) -> Result<bool, R::Error> {
        let mut unit = [0xFFu8; MAX_WRITE_SIZE];
        let unit = &mut unit[..Self::STRIDE as usize];
        self.flash.read(at, unit)?;
        Ok(unit.iter().all(|b| *b == 0))
    }

    /// Programs one unit; a unit already programmed is left alone (each is written once).
    fn program(&mut self, at: u32) -> Result<(), R::Error> {
        if self.is_programmed(at)? {
            return Ok(());
        }
        let zeros = [0u8; MAX_WRITE_SIZE];
        self.flash.write(at, &zeros[..Self::STRIDE as usize])
    }

    /// The partition back.
    pub fn into_inner(self) -> R {
        self.flash
    }

    /// Erases the record: no transfer.
    pub fn clear(&mut self) -> Result<(), R::Error> {
        self.flash.erase(0, Self::PAGE)
    }

    /// Erases the page and writes a new header.
    pub fn start(&mut self, m: &Manifest) -> Result<(), R::Error> {
        self.clear()?;
        let h = encode(m);
        // The header is written in whole write units: pad with the erased value.
        let mut buf = [0xFFu8; MARKED_AT as usize];
        buf[..HEADER_LEN].copy_from_slice(&h);
        let len = HEADER_LEN.div_ceil(Self::STRIDE as usize) * Self::STRIDE as usize;
        self.flash.write(0, &buf[..len])
    }

    /// Programs progress mark `i`.
    pub fn mark(&mut self, i: u32) -> Result<(), R::Error> {
        debug_assert!(i < self.mark_capacity());
        self.program(MARKS_AT + i * Self::STRIDE)
    }

    /// Programs MARKED.
    pub fn set_marked(&mut self) -> Result<(), R::Error> {
        self.program(MARKED_AT)
    }

    /// Programs TRIED.
    pub fn set_tried(&mut self) -> Result<(), R::Error> {
        self.program(TRIED_AT)
    }

    /// Programs CONFIRMED.
    pub fn set_confirmed(&mut self) -> Result<(), R::Error> {
        self.program(CONFIRMED_AT)
    }

    /// Programs ROLLED_BACK.
    pub fn set_rolled_back(&mut self) -> Result<(), R::Error> {
        self.program(ROLLED_BACK_AT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_a_damaged_one_is_no_record() {
        let m = Manifest {
            id: 7,
            length: 65_536,
            force: true,
            version: String::try_from("1.2.3").unwrap(),
            board: String::try_from("microbit").unwrap(),
            sha256: [3; 32],
            signature: [9; 64],
        };
        let h = encode(&m);
        assert_eq!(decode(&h), Some(m));
        for i in 0..HEADER_LEN {
            let mut bad = h;
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(decode(&[0xFF; HEADER_LEN]), None, "erased");
    }
}

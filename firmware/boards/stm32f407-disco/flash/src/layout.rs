//! Where everything lives in the STM32F407VG's 1 MiB of flash: one bank of twelve sectors, four
//! of 16 KiB, one of 64 KiB and seven of 128 KiB (RM0090 section 3.3, table 5). The bootloader,
//! the application and both build scripts (which check each `memory.x` against it) read this one
//! definition.
//!
//! | sectors | address       | size        | region                                          |
//! |---------|---------------|-------------|-------------------------------------------------|
//! | 0–1     | `0x0800_0000` | 2 × 16 KiB  | [`BOOTLOADER`]: embassy-boot, runs at reset      |
//! | 2       | `0x0800_8000` | 16 KiB      | [`STATE`]: embassy-boot's swap state             |
//! | 3       | `0x0800_C000` | 16 KiB      | [`RECORD`]: the updater's transfer record        |
//! | 4       | `0x0801_0000` | 64 KiB      | [`SPARE`]: unused (no partition type fits it)    |
//! | 5–7     | `0x0802_0000` | 3 × 128 KiB | [`ACTIVE`]: the running application              |
//! | 8–11    | `0x0808_0000` | 4 × 128 KiB | [`DFU`]: the update slot (ACTIVE + one page)     |
//!
//! Invariants, each checked by a compile-time assertion at the end of this file (a layout that
//! breaks one does not build):
//! - Regions are whole sectors, in address order, without overlap, inside the flash; the
//!   bootloader holds the reset address `0x0800_0000`.
//! - Each partition lies in sectors of a single size, which is its erase size: STATE and RECORD
//!   in 16 KiB sectors, ACTIVE and DFU in 128 KiB sectors. (embedded-storage's `NorFlash` has one
//!   `ERASE_SIZE` per type: a partition across sectors of two sizes could not be described.)
//! - embassy-boot's rules for its page, the larger erase size of ACTIVE and DFU ([`PAGE`],
//!   128 KiB): ACTIVE and DFU are whole pages; DFU is at least ACTIVE plus one page; STATE holds
//!   2 + 4 × (ACTIVE's pages) words of [`WRITE_SIZE`] bytes and is one whole erase sector (it is
//!   erased as a whole).
//! - RECORD's erase page holds `ferry-firmware`'s update record: 256 bytes of header and flags,
//!   then progress marks of up to 16 bytes each (`firmware/core/src/update/record.rs`).
//! - ACTIVE, where the application's vector table is, starts on a boundary the vector table offset
//!   register accepts: the table's size (16 + 82 vectors) rounded up to a power of two, 512 bytes.

/// Where the flash is mapped.
pub const FLASH_BASE: u32 = 0x0800_0000;
/// Flash of the STM32F407VG (the `G` in the part number).
pub const FLASH_SIZE: u32 = 1024 * 1024;
/// Sizes of sectors 0..=11, in address order.
pub const SECTOR_SIZES: [u32; 12] = [
    16 * 1024,
    16 * 1024,
    16 * 1024,
    16 * 1024,
    64 * 1024,
    128 * 1024,
    128 * 1024,
    128 * 1024,
    128 * 1024,
    128 * 1024,
    128 * 1024,
    128 * 1024,
];
/// The erase size of STATE and RECORD.
pub const SMALL_SECTOR: u32 = 16 * 1024;
/// The erase size of ACTIVE and DFU.
pub const LARGE_SECTOR: u32 = 128 * 1024;
/// Bytes the driver programs at once (one 32-bit word: parallelism x32), the `WRITE_SIZE` of
/// every partition.
pub const WRITE_SIZE: u32 = 4;
/// Alignment the vector table offset register needs for this chip's vector table.
pub const VECTOR_TABLE_ALIGN: u32 = 512;
/// What `ferry-firmware`'s update record needs of RECORD's erase page: 256 bytes before the first
/// progress mark and one mark of the largest write size it supports.
pub const RECORD_MIN_PAGE: u32 = 256 + 16;

/// The address of the first byte of sector `n` (`n` = 12: the end of the flash).
pub const fn sector_start(n: u8) -> u32 {
    let mut at = FLASH_BASE;
    let mut i = 0;
    while i < n as usize {
        at += SECTOR_SIZES[i];
        i += 1;
    }
    at
}

/// A run of whole sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The first sector.
    pub first: u8,
    /// The last sector (inclusive).
    pub last: u8,
}

impl Region {
    /// The address of the first byte.
    pub const fn start(self) -> u32 {
        sector_start(self.first)
    }

    /// The address just past the last byte.
    pub const fn end(self) -> u32 {
        sector_start(self.last + 1)
    }

    /// Bytes.
    pub const fn size(self) -> u32 {
        self.end() - self.start()
    }

    /// The size of its sectors if they all have the same size (its erase size as one partition),
    /// `None` if they differ.
    pub const fn erase_size(self) -> Option<u32> {
        let size = SECTOR_SIZES[self.first as usize];
        let mut i = self.first as usize;
        while i <= self.last as usize {
            if SECTOR_SIZES[i] != size {
                return None;
            }
            i += 1;
        }
        Some(size)
    }

    /// Whether `address` is inside.
    pub const fn contains(self, address: u32) -> bool {
        self.start() <= address && address < self.end()
    }

    /// Whether the two share no byte.
    pub const fn disjoint(self, other: Region) -> bool {
        self.end() <= other.start() || other.end() <= self.start()
    }
}

/// The bootloader's code (it runs at reset).
pub const BOOTLOADER: Region = Region { first: 0, last: 1 };
/// embassy-boot's state: what the bootloader must do at the next reset, and its swap progress.
pub const STATE: Region = Region { first: 2, last: 2 };
/// The updater's record of the transfer in progress (`ferry-firmware`'s `update::record`).
pub const RECORD: Region = Region { first: 3, last: 3 };
/// The 64 KiB sector: unused, as no partition of 16 or 128 KiB erase pages can include it.
pub const SPARE: Region = Region { first: 4, last: 4 };
/// The running application.
pub const ACTIVE: Region = Region { first: 5, last: 7 };
/// The update slot, one page larger than ACTIVE (embassy-boot swaps through the extra page).
pub const DFU: Region = Region { first: 8, last: 11 };

/// Every region, in address order.
pub const ALL: [Region; 6] = [BOOTLOADER, STATE, RECORD, SPARE, ACTIVE, DFU];

const fn erase_size_of(region: Region) -> u32 {
    match region.erase_size() {
        Some(size) => size,
        None => panic!("a partition spans sectors of different sizes"),
    }
}

/// embassy-boot's page: the larger erase size of ACTIVE and DFU.
pub const PAGE: u32 = {
    let (a, d) = (erase_size_of(ACTIVE), erase_size_of(DFU));
    if a > d {
        a
    } else {
        d
    }
};

/// Bytes of STATE embassy-boot uses: a magic word, a progress-validity word and two progress
/// words per ACTIVE page for the swap and two more for a revert.
pub const STATE_USED: u32 = (2 + 4 * (ACTIVE.size() / PAGE)) * WRITE_SIZE;

/// The largest image an update can install: ACTIVE (the updater also keeps one page of DFU free).
pub const MAX_IMAGE: u32 = ACTIVE.size();

// The invariants of the module header.
const _: () = {
    // Whole sectors, in order, disjoint, inside the flash; the bootloader at the reset address.
    let mut i = 0;
    while i < ALL.len() {
        assert!(ALL[i].first <= ALL[i].last);
        assert!((ALL[i].last as usize) < SECTOR_SIZES.len());
        if i > 0 {
            assert!(ALL[i - 1].end() <= ALL[i].start());
            assert!(ALL[i - 1].disjoint(ALL[i]));
        }
        i += 1;
    }
    assert!(sector_start(12) == FLASH_BASE + FLASH_SIZE);
    assert!(BOOTLOADER.start() == FLASH_BASE);

    // One sector size per partition, the one the driver's partition types expect.
    assert!(erase_size_of(STATE) == SMALL_SECTOR);
    assert!(erase_size_of(RECORD) == SMALL_SECTOR);
    assert!(erase_size_of(ACTIVE) == LARGE_SECTOR);
    assert!(erase_size_of(DFU) == LARGE_SECTOR);

    // embassy-boot (`BootLoader::prepare_boot`'s `assert_partitions` and const checks).
    assert!(PAGE % WRITE_SIZE == 0);
    assert!(ACTIVE.size() % PAGE == 0 && ACTIVE.start() % PAGE == 0);
    assert!(DFU.size() % PAGE == 0 && DFU.start() % PAGE == 0);
    assert!(DFU.size() >= ACTIVE.size() + PAGE);
    assert!(STATE_USED <= STATE.size());
    assert!(STATE.size() == erase_size_of(STATE));

    // The update record, and the application's vector table.
    assert!(RECORD.size() == erase_size_of(RECORD));
    assert!(erase_size_of(RECORD) >= RECORD_MIN_PAGE);
    assert!(ACTIVE.start() % VECTOR_TABLE_ALIGN == 0);
};

/// The `ORIGIN` and `LENGTH` of the `FLASH` line of a linker script's `MEMORY` block, such as
/// `FLASH : ORIGIN = 0x08020000, LENGTH = 384K` (numbers in hex with `0x`, or decimal with an
/// optional `K` or `M`). The build scripts compare them with the region their binary belongs in.
pub fn memory_x_flash(text: &str) -> Result<(u32, u32), &'static str> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("FLASH") && l.contains("ORIGIN") && l.contains("LENGTH"))
        .ok_or("no `FLASH : ORIGIN = …, LENGTH = …` line")?;
    let origin = value_after(line, "ORIGIN").ok_or("FLASH's ORIGIN is not a number")?;
    let length = value_after(line, "LENGTH").ok_or("FLASH's LENGTH is not a number")?;
    Ok((origin, length))
}

fn value_after(line: &str, key: &str) -> Option<u32> {
    let (_, rest) = line.split_once(key)?;
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let token = rest.split(|c: char| c == ',' || c.is_whitespace()).next()?;
    parse_number(token)
}

fn parse_number(token: &str) -> Option<u32> {
    if let Some(hex) = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
    {
        return u32::from_str_radix(hex, 16).ok();
    }
    let (digits, scale) = match token.as_bytes().last()? {
        b'K' | b'k' => (&token[..token.len() - 1], 1024),
        b'M' | b'm' => (&token[..token.len() - 1], 1024 * 1024),
        _ => (token, 1),
    };
    digits.parse::<u32>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_follow_the_reference_manual() {
        assert_eq!(sector_start(4), 0x0801_0000);
        assert_eq!(sector_start(5), 0x0802_0000);
        assert_eq!(sector_start(8), 0x0808_0000);
        assert_eq!(sector_start(12), 0x0810_0000);
    }

    #[test]
    fn the_layout() {
        assert_eq!(
            (BOOTLOADER.start(), BOOTLOADER.size()),
            (0x0800_0000, 32 * 1024)
        );
        assert_eq!((STATE.start(), STATE.size()), (0x0800_8000, 16 * 1024));
        assert_eq!((RECORD.start(), RECORD.size()), (0x0800_C000, 16 * 1024));
        assert_eq!((ACTIVE.start(), ACTIVE.size()), (0x0802_0000, 384 * 1024));
        assert_eq!((DFU.start(), DFU.size()), (0x0808_0000, 512 * 1024));
        assert_eq!(PAGE, 128 * 1024);
        assert_eq!(STATE_USED, 56);
    }

    #[test]
    fn mixed_sectors_have_no_erase_size() {
        assert_eq!(Region { first: 3, last: 5 }.erase_size(), None);
        assert_eq!(SPARE.erase_size(), Some(64 * 1024));
        assert!(ACTIVE.contains(0x0802_0000) && !ACTIVE.contains(DFU.start()));
    }

    #[test]
    fn memory_x_lines_are_read() {
        let text = "/* FLASH is here */\nMEMORY\n{\n  FLASH : ORIGIN = 0x08020000, LENGTH = 384K\n  RAM : ORIGIN = 0x20000000, LENGTH = 128K\n}\n";
        assert_eq!(memory_x_flash(text), Ok((0x0802_0000, 384 * 1024)));
        let text = "FLASH (rx) : ORIGIN = 134217728, LENGTH = 1M";
        assert_eq!(memory_x_flash(text), Ok((0x0800_0000, 1024 * 1024)));
        assert!(memory_x_flash("RAM : ORIGIN = 0x20000000, LENGTH = 128K").is_err());
        assert!(memory_x_flash("FLASH : ORIGIN = 0x0802_0000, LENGTH = 384K").is_err());
    }

    #[test]
    fn the_boards_memory_x_files_match_the_layout() {
        let app = memory_x_flash(include_str!("../../memory.x"));
        assert_eq!(app, Ok((ACTIVE.start(), ACTIVE.size())));
        let boot = memory_x_flash(include_str!("../../bootloader/memory.x"));
        assert_eq!(boot, Ok((BOOTLOADER.start(), BOOTLOADER.size())));
    }
}

//! The flash map of the micro:bit v1 (nRF51822 QFAA: 256 KiB of flash in 1 KiB pages, 16 KiB of
//! RAM): the one definition the bootloader, the application and their `memory.x` checks use.
//!
//! ```text
//! 0x0000_0000  BOOT      8 KiB  the bootloader (ferry-bootloader-microbit); never rewritten
//! 0x0000_2000  STATE     2 KiB  embassy-boot's state (swap magic and progress)
//! 0x0000_2800  RECORD    1 KiB  the updater's record (ferry_firmware::update::record)
//! 0x0000_2C00  (spare)   1 KiB
//! 0x0000_3000  ACTIVE   80 KiB  the running application, linked here
//! 0x0001_7000  DFU      81 KiB  the update slot: ACTIVE + one page (embassy-boot swaps through it)
//! 0x0002_B400  FACTORY  80 KiB  tests only: QEMU loads the first application here (see below)
//! 0x0003_F400  (spare)   3 KiB
//! ```
//!
//! Invariants (checked at compile time below):
//! - Every area starts and ends on a page boundary, the areas are in this order and do not
//!   overlap, and all of them fit in the flash.
//! - embassy-boot's rules: DFU is at least ACTIVE + one page; STATE holds
//!   `2 + 4 × (ACTIVE pages)` words of the flash's write size.
//! - RECORD is one whole erase page (the record needs at least 272 bytes of it).
//! - FACTORY can hold a whole ACTIVE image.
//!
//! Why FACTORY exists: QEMU writes every image it loaded back into flash on every guest reset.
//! An image loaded into ACTIVE would undo each update at the next reset, so QEMU loads the first
//! application into FACTORY, and a bootloader built with the `qemu-provision` feature copies it
//! into ACTIVE when ACTIVE holds no image. On a real board the first image is flashed straight
//! into ACTIVE and FACTORY stays unused.

/// Size of an NVMC erase page.
pub const PAGE: u32 = 1024;
/// Size of a flash write (the NVMC programs whole 32-bit words).
pub const WRITE_SIZE: u32 = 4;
/// Bytes of flash.
pub const FLASH_SIZE: u32 = 256 * 1024;
/// Start of RAM.
pub const RAM_START: u32 = 0x2000_0000;
/// Bytes of RAM.
pub const RAM_SIZE: u32 = 16 * 1024;

/// The bootloader.
pub const BOOT: Area = Area::new(0x0000_0000, 8 * 1024);
/// embassy-boot's state.
pub const STATE: Area = Area::new(0x0000_2000, 2 * 1024);
/// The update record.
pub const RECORD: Area = Area::new(0x0000_2800, PAGE);
/// The running application.
pub const ACTIVE: Area = Area::new(0x0000_3000, 80 * 1024);
/// The update slot.
pub const DFU: Area = Area::new(ACTIVE.end(), ACTIVE.size + PAGE);
/// Tests only: where QEMU loads the first application.
pub const FACTORY: Area = Area::new(DFU.end(), ACTIVE.size);

/// A flash area: `size` bytes from address `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First address.
    pub start: u32,
    /// Bytes.
    pub size: u32,
}

impl Area {
    /// The area of `size` bytes at `start`.
    pub const fn new(start: u32, size: u32) -> Area {
        Area { start, size }
    }

    /// One past the last address.
    pub const fn end(&self) -> u32 {
        self.start + self.size
    }

    /// Whole pages.
    pub const fn pages(&self) -> u32 {
        self.size / PAGE
    }

    /// Whether `addr` lies in the area.
    pub const fn contains(&self, addr: u32) -> bool {
        addr >= self.start && addr < self.end()
    }
}

/// The areas in address order (for the checks and the README's table).
pub const AREAS: [(&str, Area); 6] = [
    ("BOOT", BOOT),
    ("STATE", STATE),
    ("RECORD", RECORD),
    ("ACTIVE", ACTIVE),
    ("DFU", DFU),
    ("FACTORY", FACTORY),
];

const _: () = {
    let mut i = 0;
    while i < AREAS.len() {
        let a = AREAS[i].1;
        assert!(
            a.start % PAGE == 0 && a.size % PAGE == 0,
            "areas are whole pages"
        );
        assert!(a.size > 0, "no empty area");
        if i > 0 {
            assert!(
                AREAS[i - 1].1.end() <= a.start,
                "areas in order, no overlap"
            );
        }
        i += 1;
    }
    assert!(
        BOOT.start == 0,
        "the bootloader holds the vector table at 0"
    );
    assert!(FACTORY.end() <= FLASH_SIZE, "everything fits in the flash");
    // embassy-boot (BootLoader::prepare_boot's partition checks).
    assert!(DFU.size >= ACTIVE.size + PAGE, "DFU is ACTIVE + one page");
    assert!(
        2 + 4 * ACTIVE.pages() <= STATE.size / WRITE_SIZE,
        "STATE holds the swap and revert progress of every ACTIVE page"
    );
    // ferry_firmware::update::record: the header, four flags and at least one progress mark.
    assert!(
        RECORD.size == PAGE && PAGE >= 272,
        "RECORD is one page of at least 272 bytes"
    );
    assert!(FACTORY.size >= ACTIVE.size, "FACTORY holds a whole image");
    // The host-side test helpers (tests/src/microbit.rs) and README.md name these addresses:
    // change them there too.
    assert!(ACTIVE.start == 0x0000_3000 && FACTORY.start == 0x0002_B400);
};

/// Checks a linker script's `MEMORY` block (the `FLASH` and `RAM` lines of a `memory.x`) against
/// `flash` and the chip's RAM: build scripts call it, so an image is never linked for an area the
/// layout does not give it. Numbers may be hex (`0x3000`) or decimal with an optional `K`.
pub fn check_memory_x(memory_x: &str, flash: Area) -> Result<(), &'static str> {
    let (mut seen_flash, mut seen_ram) = (false, false);
    for line in memory_x.lines() {
        let line = line.trim();
        let (want, seen) = if line.starts_with("FLASH") {
            (flash, &mut seen_flash)
        } else if line.starts_with("RAM") {
            (Area::new(RAM_START, RAM_SIZE), &mut seen_ram)
        } else {
            continue;
        };
        let origin = field(line, "ORIGIN").ok_or("a MEMORY line without a readable ORIGIN")?;
        let length = field(line, "LENGTH").ok_or("a MEMORY line without a readable LENGTH")?;
        if Area::new(origin, length) != want {
            return Err(if line.starts_with("FLASH") {
                "FLASH in memory.x is not this binary's area of layout.rs"
            } else {
                "RAM in memory.x is not the chip's RAM"
            });
        }
        *seen = true;
    }
    match (seen_flash, seen_ram) {
        (true, true) => Ok(()),
        _ => Err("memory.x needs a FLASH and a RAM line"),
    }
}

/// The number after `name =` in a `MEMORY` line.
fn field(line: &str, name: &str) -> Option<u32> {
    let rest = line[line.find(name)? + name.len()..].trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let token = rest.split([',', ' ']).next()?.trim();
    if let Some(hex) = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
    {
        return u32::from_str_radix(hex, 16).ok();
    }
    match token.strip_suffix('K') {
        Some(k) => k.parse::<u32>().ok()?.checked_mul(1024),
        None => token.parse().ok(),
    }
}

//! The firmware updater over this board's flash (built only with `FERRY_UPDATE_KEY`, cfg
//! `ferry_updater`): `ferry-firmware`'s [`Updater`] over the layout's four partitions
//! (`flash/src/layout.rs`), with the vendor key, board name and version from build.rs.
//!
//! Invariants:
//! - The application never erases or writes the image it runs from: it holds ACTIVE only as
//!   [`ReadOnly`] (the updater reads it to settle one case after a power cut). Only the
//!   bootloader writes ACTIVE, when it swaps. No partition covers the bootloader's sectors.
//! - The updater is made before the watchdog starts: settling after a reset may erase a 16 KiB
//!   sector (STATE or RECORD, up to 0.5 s) and hash ACTIVE.
//!
//! Every flash erase stalls the core (see the driver's module header): a 128 KiB DFU sector,
//! erased when the first chunk of it arrives, holds the main loop, SysTick and the USART2
//! interrupt for 1–2 s (inside the watchdog's period; received bytes are lost meanwhile, and the
//! protocol's retransmission recovers them).

use core::cell::RefCell;

use ferry_firmware::update::{Slots, Updater, UpdaterConfig};
use ferry_stm32f407_flash::driver::{Flash, LargePartition, ReadOnly, SmallPartition};

use crate::config;

/// The updater as this board builds it.
pub type BoardUpdater<'a> = Updater<
    ReadOnly<LargePartition<'a>>,
    LargePartition<'a>,
    SmallPartition<'a>,
    SmallPartition<'a>,
>;

/// Reads the update record and embassy-boot's state after a boot at `now_ms`, and settles them
/// (see `Updater::new`).
pub fn init(flash: &RefCell<Flash>, now_ms: u64) -> BoardUpdater<'_> {
    let partitions = Flash::partitions(flash);
    let slots = Slots {
        active: ReadOnly(partitions.active),
        dfu: partitions.dfu,
        state: partitions.state,
        record: partitions.record,
    };
    let config = UpdaterConfig::new(config::UPDATE_KEY, config::BOARD, config::VERSION);
    Updater::new(slots, config, now_ms)
}

//! What the micro:bit application (`ferry-board-microbit`) and its bootloader
//! (`ferry-bootloader-microbit`) must agree on: the flash [`layout`] and the [`nvmc`] driver both
//! use for it, so the bootloader's swap and the updater's writes address the same bytes.
//!
//! The crate also builds for the host: the binaries' build scripts check their `memory.x`
//! against [`layout`].
#![no_std]

pub mod layout;
pub mod nvmc;

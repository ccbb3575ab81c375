//! The STM32F407VG's flash as the STM32F4DISCOVERY's firmware-update layout: one definition of
//! where the bootloader, embassy-boot's STATE, the updater's RECORD and the two image slots
//! (ACTIVE, DFU) are ([`layout`]), and the driver both binaries erase and program them with
//! ([`driver`], feature `driver`).
//!
//! Invariant: the bootloader and the application agree on the layout because neither has its
//! own; each one's build script also checks its `memory.x` against it.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "driver")]
pub mod driver;
pub mod layout;

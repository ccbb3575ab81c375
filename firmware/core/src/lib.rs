//! Portable Ferry device logic: the part of the firmware that is the same on every board.
//!
//! Everything here is `#![no_std]`, allocation-free and sans-IO: [`Device`] is a state machine that is
//! told the time and fed received bytes, and hands back frames to transmit. Boards (and the host
//! simulator `ferry-sim`) own the UART/socket and the clock and drive it, for example through
//! [`runner::run`] over any `embedded-io` port.
//!
//! Invariants (see `firmware/wire/PROTOCOL.md` for the protocol rules they implement):
//! - A sample leaves RAM only when the gateway acks it or when the ring overflows; each overflow drop
//!   increments [`DeviceStats::dropped`], reported in every Heartbeat.
//! - Samples are numbered consecutively per boot and transmitted in that order; retransmission is
//!   go-back-N from the oldest held sample. No sample gets a sequence number above
//!   `ferry_wire::LAST_SEQ`: a boot that has used it asks its owner for a reset
//!   ([`Action::Reboot`]) instead of wrapping.
//! - Sensor drivers are generic over `embedded-hal` traits; no chip is named outside `firmware/boards`.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

#[cfg(all(feature = "ram-flash", not(test)))]
extern crate std;

mod device;
#[cfg(feature = "ram-flash")]
pub mod ram_flash;
mod ring;
mod rtt;
pub mod runner;
mod schedule;
pub mod sensors;
pub mod update;

pub use device::{Action, Device, DeviceConfig, DeviceStats, LinkState, REBOOT_DRAIN_MS};
pub use ring::SampleRing;
pub use sensors::{ReadError, SensorSpec, Sensors, MAX_INTERVAL_MS};

/// Default capacity of the unacked-sample ring.
pub const DEFAULT_RING: usize = 128;
/// Device ticks are milliseconds.
pub const TICK_HZ: u32 = 1000;

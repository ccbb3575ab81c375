//! Device ingest: byte streams from serial ports and TCP connections become committed samples.
//!
//! Path of a byte: [`serial`] or [`tcp`] opens the stream → [`link::serve`] decodes frames
//! (`ferry_wire::Decoder`) and feeds them to the link's [`protocol::LinkProtocol`] (the gateway side
//! of the session, sans-IO: handshake, the [`session::Session`] clock, samples to store operations,
//! acks, the link budget, commands), carrying out what it returns → `store::writer` commits them
//! and publishes the committed position → the link acks the device. A link never acks anything
//! itself: acks only follow commits.

pub mod link;
pub mod protocol;
pub mod serial;
pub mod session;
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::writer::StoreHandle;

/// What every link task needs.
#[derive(Clone)]
pub struct LinkCtx {
    /// The store writer.
    pub store: StoreHandle,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// Silence after which a device is marked offline.
    pub offline_after: Duration,
    /// `store.ack_budget` (a link's budget and its devices' ring check follow from it).
    pub ack_budget: Duration,
    /// Device commands (sent to the device once its Hello is registered).
    pub commands: crate::commands::CommandsHandle,
    /// Firmware updates (a device's update status goes there; update messages come back).
    pub firmware: crate::firmware::FirmwareHandle,
}

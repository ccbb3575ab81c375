//! Device ingest: byte streams from serial ports and TCP connections become committed samples.
//!
//! Path of a byte: [`serial`] or [`tcp`] opens the stream → [`link::serve`] decodes frames
//! (`ferry_wire::Decoder`), keeps the link's [`session::Session`] and turns messages into store
//! operations → `store::writer` commits them and publishes the committed position → the link acks
//! the device. A link never acks anything itself: acks only follow commits.

pub mod link;
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
    /// Device commands (sent to the device once its Hello is registered).
    pub commands: crate::commands::CommandsHandle,
}

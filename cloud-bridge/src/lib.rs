//! Both ends of Ferry's MQTT link.
//!
//! - [`contract`]: topics and payloads, shared by both ends (documented in `asyncapi.yaml`).
//! - `uplink`: the store-and-forward publisher the agent runs (reads the agent's store through
//!   the `EventSource` trait, so this crate never depends on the agent).
//! - `bridge`: `ferry-bridge`, the cloud-side service that lands batches in PostgreSQL.
//! - `broker`: a small in-process MQTT broker so `ferry demo` and tests need nothing installed.
#![warn(missing_docs)]

pub mod bridge;
pub mod broker;
pub mod contract;
pub mod uplink;

//! `ferry-bridge`, the cloud side of Ferry: an MQTT 5 shared subscription → validated batches →
//! PostgreSQL, exactly once (see [`bridge`]). The topics and payloads it reads are defined in
//! `ferry-contract` (`cloud-bridge/contract`); the agent's uplink that publishes them lives in the
//! agent (`agent/src/uplink/`).
#![warn(missing_docs)]

pub mod bridge;

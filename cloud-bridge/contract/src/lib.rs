//! The MQTT contract between gateways and the cloud: topic names, payloads and their codecs,
//! commands and outcomes, firmware updates. This crate is the only place they are defined (no tokio, no I/O);
//! `cloud-bridge/asyncapi.yaml` documents the same, and a test checks real payloads against it.
//!
//! Invariants:
//! - An event's identity is `(gateway, device, boot, seq)`. `boot` is the gateway's boot number for
//!   the device (1, 2, 3 ... in the order the gateway saw them); `seq` restarts at 0 every boot. The
//!   cloud table's unique key is exactly this tuple, so any message may be delivered twice.
//! - Within one [`EventBatch`] the events belong to one boot of one device and `seq` strictly
//!   increases. Batches of a device are published in store order; a backlog drained alongside live
//!   data (the agent's uplink, `agent/src/uplink/`) may arrive after newer live batches, so
//!   consumers order by `(boot, seq)`.
//! - Payload encoding is self-describing: JSON starts with `{`; the compact binary form starts with
//!   [`BINARY_MAGIC`]; a deflate-compressed payload starts with [`DEFLATE_MAGIC`] and inflates to
//!   one of the other two. A consumer needs no out-of-band content type (MQTT 3.1.1 has none).
//! - Every encoding carries every `f64` exactly: JSON numbers are written shortest-round-trip and
//!   parsed correctly rounded (serde_json's `float_roundtrip`), and a non-finite value is the
//!   JSON string `"NaN"`, `"Infinity"` or `"-Infinity"` ([`reading`]); binary carries the IEEE
//!   bits. So a value decodes to the same bits it was encoded from (any NaN decodes from JSON as
//!   the canonical quiet NaN).
//! - One batch has one binary encoding: a binary payload must be postcard's canonical form
//!   (shortest varints) with nothing after it, and a deflate stream must end where the payload
//!   ends. Anything else is malformed.
//! - Ids and times are bounded the same way everywhere (decisions D2, D3 of issue 13):
//!   [`check_gateway_id`], [`check_device_id`], [`check_sensor_name`], [`check_ts_ms`]. A batch
//!   that passes [`EventBatch::validate`] is storable as is (PostgreSQL text cannot hold NUL, and
//!   `timestamptz` holds every time in range).
#![warn(missing_docs)]

mod addr;
mod batch;
mod commands;
mod error;
mod firmware;
mod limits;
pub mod reading;
mod status;
mod topics;

pub use addr::parse_host_port;
pub use batch::{
    Compression, Encoding, Event, EventBatch, BINARY_MAGIC, DEFLATE_MAGIC, MAX_EVENTS_PER_BATCH,
    MAX_INFLATED_LEN,
};
pub use commands::{
    decode_hex, encode_hex, CommandOutcome, CommandRequest, CommandSpec, OutcomeStatus,
    DEFAULT_COMMAND_TTL_S, MAX_COMMAND_ID_LEN, MAX_OPAQUE_LEN,
};
pub use error::ContractError;
pub use firmware::{
    BundleManifest, BundleResult, BundleStatus, JobResult, UpdateRequest, UpdateResult,
    UpdateResultStatus, BUNDLE_MAGIC, MAX_UPDATE_ID_LEN,
};
pub use limits::{
    check_device_id, check_gateway_id, check_sensor_name, check_ts_ms, MAX_DEVICE_ID_LEN,
    MAX_GATEWAY_ID_LEN, MAX_NAME_LEN, MAX_TS_MS, MIN_TS_MS,
};
pub use status::{LinkState, Status};
pub use topics::{
    command_result_topic, commands_filter, commands_topic, events_topic, firmware_bundle_topic,
    firmware_result_topic, firmware_update_topic, parse_topic, segment, status_topic,
    try_parse_topic, unsegment, FirmwareTopic, Topic, EVENTS_SHARED_FILTER,
};

/// Version of every payload in this module (`"v"` in JSON).
pub const SCHEMA_VERSION: u32 = 1;

//! The MQTT contract between gateways and the cloud: topic names, payloads and their codecs,
//! commands and outcomes. This crate is the only place they are defined (no tokio, no I/O);
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

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

pub use addr::parse_host_port;

/// Version of every payload in this module (`"v"` in JSON).
pub const SCHEMA_VERSION: u32 = 1;

/// First byte of a binary (postcard) payload.
pub const BINARY_MAGIC: u8 = 0xFE;
/// First byte of a deflate-compressed payload.
pub const DEFLATE_MAGIC: u8 = 0xFD;

/// Most events in one batch a consumer accepts.
pub const MAX_EVENTS_PER_BATCH: usize = 100_000;
/// Longest sensor name, bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// Longest gateway id, bytes of UTF-8 (the agent's `[gateway] id`).
pub const MAX_GATEWAY_ID_LEN: usize = 64;
/// Longest device id, bytes of UTF-8: the device link's limit (`ferry_wire::MAX_DEVICE_ID_LEN`).
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// Earliest `ts_ms` (and `at_ms`): 0001-01-01T00:00:00.000Z.
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// Latest `ts_ms` (and `at_ms`): 9999-12-31T23:59:59.999Z.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;
/// Largest inflated payload a consumer accepts (a compressed payload is a zip bomb otherwise).
pub const MAX_INFLATED_LEN: usize = 64 << 20;

/// Shared subscription the cloud-side bridges use, so replicas split the load.
pub const EVENTS_SHARED_FILTER: &str = "$share/ferry-bridge/ferry/v1/+/+/events";

/// `ferry/v1/{gateway}/{device}/events`
pub fn events_topic(gateway: &str, device: &str) -> String {
    format!("ferry/v1/{}/{}/events", segment(gateway), segment(device))
}

/// `ferry/v1/{gateway}/status` (retained birth message and last will)
pub fn status_topic(gateway: &str) -> String {
    format!("ferry/v1/{}/status", segment(gateway))
}

/// `ferry/v1/{gateway}/{device}/commands`
pub fn commands_topic(gateway: &str, device: &str) -> String {
    format!("ferry/v1/{}/{}/commands", segment(gateway), segment(device))
}

/// The filter a gateway subscribes to for its downlink: `ferry/v1/{gateway}/+/commands`.
pub fn commands_filter(gateway: &str) -> String {
    format!("ferry/v1/{}/+/commands", segment(gateway))
}

/// `ferry/v1/{gateway}/{device}/commands/result`
pub fn command_result_topic(gateway: &str, device: &str) -> String {
    format!(
        "ferry/v1/{}/{}/commands/result",
        segment(gateway),
        segment(device)
    )
}

/// What a `ferry/v1/...` topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `ferry/v1/{gateway}/{device}/events`
    Events {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/{device}/commands`
    Commands {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/{device}/commands/result`
    CommandResult {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/status`
    Status {
        /// Gateway id (decoded).
        gateway: String,
    },
}

/// Parses a topic of this contract; `None` for anything else ([`try_parse_topic`] says why).
pub fn parse_topic(topic: &str) -> Option<Topic> {
    try_parse_topic(topic).ok()
}

/// Parses a topic of this contract, or says what is wrong with it: not one of the four shapes,
/// or an id level that is empty or holds a `%` sequence other than the five escapes.
pub fn try_parse_topic(topic: &str) -> Result<Topic, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    let s = |i: usize| {
        unsegment(parts[i]).ok_or_else(|| {
            format!(
                "topic level {} ({:?}) is not a percent-encoded id",
                i + 1,
                parts[i]
            )
        })
    };
    match parts.as_slice() {
        ["ferry", "v1", _, "status"] => Ok(Topic::Status { gateway: s(2)? }),
        ["ferry", "v1", _, _, "events"] => Ok(Topic::Events {
            gateway: s(2)?,
            device: s(3)?,
        }),
        ["ferry", "v1", _, _, "commands"] => Ok(Topic::Commands {
            gateway: s(2)?,
            device: s(3)?,
        }),
        ["ferry", "v1", _, _, "commands", "result"] => Ok(Topic::CommandResult {
            gateway: s(2)?,
            device: s(3)?,
        }),
        _ => Err("not a ferry/v1 topic of this contract".into()),
    }
}

/// A topic level for an id: `%`, `/`, `+`, `#` and NUL are percent-encoded so any id stays one
/// level and never a wildcard. Ids without them (the usual case) are unchanged.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`segment`]; `None` for an empty level or a bad escape.
pub fn unsegment(level: &str) -> Option<String> {
    if level.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "2B" => '+',
            "23" => '#',
            "00" => '\0',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// One message on `.../events`: consecutive events of one boot of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Gateway id (as in the topic).
    pub gateway: String,
    /// Device id (as in the topic).
    pub device: String,
    /// The gateway's boot number for this device: 1, 2, 3 ... in order.
    pub boot: u32,
    /// The device's random id for this boot.
    pub boot_id: u32,
    /// The events, `seq` strictly increasing.
    pub events: Vec<Event>,
}

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Sequence number within the boot.
    pub seq: u32,
    /// Sensor name from the device's Hello.
    pub sensor: String,
    /// When it was sampled, UTC milliseconds since the Unix epoch ([`MIN_TS_MS`]..=[`MAX_TS_MS`]).
    pub ts_ms: i64,
    /// The reading, in the sensor's unit; NaN and ±infinity included (see [`reading`]).
    #[serde(with = "reading")]
    pub value: f64,
}

/// A reading's `f64` in payloads (decision D1 of issue 13). JSON (any human-readable format)
/// writes a finite value as a number and NaN, +infinity and -infinity as the strings `"NaN"`,
/// `"Infinity"` and `"-Infinity"` (protobuf's JSON mapping; JSON has no such numbers), and reads
/// both. Binary formats carry the IEEE bits. Use with `#[serde(with = "reading")]`.
pub mod reading {
    use serde::{de, Deserializer, Serializer};

    /// The JSON string for a non-finite value; `None` for a finite one.
    pub fn non_finite_name(v: f64) -> Option<&'static str> {
        if v.is_nan() {
            Some("NaN")
        } else if v == f64::INFINITY {
            Some("Infinity")
        } else if v == f64::NEG_INFINITY {
            Some("-Infinity")
        } else {
            None
        }
    }

    /// Writes `v`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match non_finite_name(*v) {
            Some(name) if s.is_human_readable() => s.serialize_str(name),
            _ => s.serialize_f64(*v),
        }
    }

    /// Reads a value written by [`serialize`] (in JSON: any number, or one of the three strings).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(Reading)
        } else {
            d.deserialize_f64(Reading)
        }
    }

    struct Reading;

    impl de::Visitor<'_> for Reading {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(r#"a number, "NaN", "Infinity" or "-Infinity""#)
        }

        fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        // JSON integers: `as` rounds to the nearest f64, which is what the decimal means.
        fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
}

/// How an [`EventBatch`] is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Readable JSON (the default).
    #[default]
    Json,
    /// Compact binary: [`BINARY_MAGIC`] then the batch in postcard.
    Binary,
}

/// Optional payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Uncompressed (the default).
    #[default]
    None,
    /// [`DEFLATE_MAGIC`] then raw deflate of the encoded payload.
    Deflate,
}

/// Why a payload was refused. The `Display` text is what dead-letter rows and quarantine rows
/// record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// Not JSON, not binary, or not the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A `v` this build does not understand.
    #[error("unsupported schema version {0} (this build reads {SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
    /// A well-formed event batch that breaks a rule of the contract.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// A well-formed command request that breaks a rule of the contract; names the field.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The topic's gateway or device differs from the payload's.
    #[error("topic names {topic} but the payload says {payload}")]
    TopicMismatch {
        /// From the topic.
        topic: String,
        /// From the payload.
        payload: String,
    },
    /// Inflating the payload failed or exceeded [`MAX_INFLATED_LEN`].
    #[error("bad compression: {0}")]
    Compression(String),
}

impl EventBatch {
    /// Encodes for the wire.
    pub fn encode(&self, encoding: Encoding, compression: Compression) -> Vec<u8> {
        let plain = match encoding {
            Encoding::Json => serde_json::to_vec(self).expect("batch serializes"),
            Encoding::Binary => {
                let mut out = vec![BINARY_MAGIC];
                out.extend(postcard::to_stdvec(self).expect("batch serializes"));
                out
            }
        };
        compress(plain, compression)
    }

    /// Decodes any encoding and compression, then [`validate`](Self::validate)s.
    pub fn decode(payload: &[u8]) -> Result<EventBatch, ContractError> {
        let plain = inflate(payload)?;
        let batch: EventBatch = match plain.first() {
            Some(b'{') => serde_json::from_slice(&plain).map_err(|e| {
                // A wrong version is more useful to report than the shape error it causes.
                match serde_json::from_slice::<VersionOnly>(&plain) {
                    Ok(v) if v.v != SCHEMA_VERSION => ContractError::UnsupportedVersion(v.v),
                    _ => ContractError::Malformed(e.to_string()),
                }
            })?,
            Some(&BINARY_MAGIC) => decode_binary(&plain)?,
            Some(b) => {
                return Err(ContractError::Malformed(format!(
                    "unknown first byte 0x{b:02x}"
                )))
            }
            None => return Err(ContractError::Malformed("empty payload".into())),
        };
        batch.validate()?;
        Ok(batch)
    }

    /// Checks the contract's rules.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.v != SCHEMA_VERSION {
            return Err(ContractError::UnsupportedVersion(self.v));
        }
        let bad = |m: String| Err(ContractError::Invalid(m));
        if let Err(m) = check_gateway_id(&self.gateway) {
            return bad(format!("gateway {m}"));
        }
        if let Err(m) = check_device_id(&self.device) {
            return bad(format!("device {m}"));
        }
        if self.boot == 0 {
            return bad("boot starts at 1".into());
        }
        if self.events.is_empty() || self.events.len() > MAX_EVENTS_PER_BATCH {
            return bad(format!(
                "a batch holds 1..={MAX_EVENTS_PER_BATCH} events, this one {}",
                self.events.len()
            ));
        }
        let mut prev: Option<u32> = None;
        for (i, e) in self.events.iter().enumerate() {
            if prev.is_some_and(|p| e.seq <= p) {
                return bad(format!("events[{i}].seq {} does not increase", e.seq));
            }
            prev = Some(e.seq);
            if let Err(m) = check_sensor_name(&e.sensor) {
                return bad(format!("events[{i}].sensor {m}"));
            }
            if let Err(m) = check_ts_ms(e.ts_ms) {
                return bad(format!("events[{i}].ts_ms {m}"));
            }
        }
        Ok(())
    }

    /// Checks that the topic a batch arrived on names the same gateway and device.
    pub fn check_topic(&self, gateway: &str, device: &str) -> Result<(), ContractError> {
        if self.gateway != gateway || self.device != device {
            return Err(ContractError::TopicMismatch {
                topic: format!("{gateway}/{device}"),
                payload: format!("{}/{}", self.gateway, self.device),
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

fn compress(plain: Vec<u8>, compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => plain,
        Compression::Deflate => {
            let mut out = vec![DEFLATE_MAGIC];
            let mut z = flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::fast());
            z.write_all(&plain).expect("in-memory write");
            z.finish().expect("in-memory write");
            out
        }
    }
}

/// The binary form: [`BINARY_MAGIC`], then the batch in postcard's canonical form and nothing
/// else. Offsets in errors count from the magic byte.
fn decode_binary(plain: &[u8]) -> Result<EventBatch, ContractError> {
    let body = &plain[1..];
    let (batch, rest): (EventBatch, &[u8]) = postcard::take_from_bytes(body)
        .map_err(|e| ContractError::Malformed(format!("binary: {e}")))?;
    if !rest.is_empty() {
        return Err(ContractError::Malformed(format!(
            "binary: {} byte(s) after the batch, from offset {}",
            rest.len(),
            plain.len() - rest.len()
        )));
    }
    // Re-encoding gives the canonical form; any other form of the same batch differs from it.
    let canonical = postcard::to_stdvec(&batch).expect("batch serializes");
    if canonical != body {
        let at = canonical
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(body.len()));
        return Err(ContractError::Malformed(format!(
            "binary: not canonical at offset {} (every varint must be in its shortest form)",
            1 + at
        )));
    }
    Ok(batch)
}

fn inflate(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ContractError> {
    let Some((&DEFLATE_MAGIC, stream)) = payload.split_first() else {
        return Ok(payload.into());
    };
    let mut out = Vec::new();
    // `bufread` consumes exactly the deflate stream from the slice: what is left is trailing.
    let mut z = flate2::bufread::DeflateDecoder::new(stream);
    (&mut z)
        .take(MAX_INFLATED_LEN as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ContractError::Compression(e.to_string()))?;
    if out.len() > MAX_INFLATED_LEN {
        return Err(ContractError::Compression(format!(
            "inflates to more than {MAX_INFLATED_LEN} bytes"
        )));
    }
    let rest = z.get_ref().len();
    if rest > 0 {
        return Err(ContractError::Compression(format!(
            "{rest} byte(s) after the end of the deflate stream, from offset {}",
            payload.len() - rest
        )));
    }
    if out.first() == Some(&DEFLATE_MAGIC) {
        return Err(ContractError::Compression("nested compression".into()));
    }
    Ok(out.into())
}

/// Checks a gateway id (D3): 1..=[`MAX_GATEWAY_ID_LEN`] bytes without `/`, `+`, `#` (it is an
/// MQTT topic level) or NUL. The error completes a sentence that starts with what was checked.
pub fn check_gateway_id(id: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_GATEWAY_ID_LEN} bytes without '/', '+', '#' or NUL");
    if id.is_empty() || id.len() > MAX_GATEWAY_ID_LEN {
        return Err(format!("is {} bytes; it {rule}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| matches!(c, '/' | '+' | '#' | '\0')) {
        return Err(format!("{id:?} contains {c:?}; it {rule}"));
    }
    Ok(())
}

/// Checks a device id (D3): 1..=[`MAX_DEVICE_ID_LEN`] bytes (the device link's limit) without
/// NUL. The error completes a sentence that starts with what was checked.
pub fn check_device_id(id: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_DEVICE_ID_LEN} bytes without NUL");
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("is {} bytes; it {rule}", id.len()));
    }
    if id.contains('\0') {
        return Err(format!("{id:?} contains NUL; it {rule}"));
    }
    Ok(())
}

/// Checks a sensor name: 1..=[`MAX_NAME_LEN`] bytes without NUL.
pub fn check_sensor_name(name: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_NAME_LEN} bytes without NUL");
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("is {} bytes; it {rule}", name.len()));
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains NUL; it {rule}"));
    }
    Ok(())
}

/// Checks a time (D2): [`MIN_TS_MS`]..=[`MAX_TS_MS`], years 1 to 9999 UTC.
pub fn check_ts_ms(ms: i64) -> Result<(), String> {
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ms) {
        return Ok(());
    }
    Err(format!(
        "{ms} is outside {MIN_TS_MS}..={MAX_TS_MS} \
         (0001-01-01T00:00:00.000Z..=9999-12-31T23:59:59.999Z)"
    ))
}

/// Retained on `ferry/v1/{gateway}/status`: the birth message on connect, and the last will the
/// broker publishes if the gateway vanishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Gateway id.
    pub gateway: String,
    /// Whether the gateway is connected.
    pub state: LinkState,
    /// When the gateway published this (for the last will: when it connected), UTC ms.
    pub at_ms: i64,
    /// Agent version.
    pub agent: String,
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Connected (birth message).
    Online,
    /// Disconnected (last will, or a clean shutdown).
    Offline,
}

/// A downlink command on `ferry/v1/{gateway}/{device}/commands` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Chosen by the sender, echoed in the result; 1..=64 bytes. A repeated id is executed once.
    pub id: String,
    /// What the device should do.
    pub command: CommandSpec,
    /// Seconds the gateway keeps the command while the device is offline (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u32>,
}

/// The device commands of the link protocol, in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandSpec {
    /// Change one sensor's sampling interval (0 disables the sensor).
    SetInterval {
        /// Sensor index from the device's Hello.
        sensor: u8,
        /// New interval in milliseconds.
        interval_ms: u32,
    },
    /// Make the device visible (blink an LED) for a while.
    Identify {
        /// How long, in milliseconds.
        duration_ms: u32,
    },
    /// Reset the device.
    Reboot,
    /// Application-defined bytes (hex, up to 128 bytes).
    Opaque {
        /// The bytes, as lowercase or uppercase hex.
        hex: String,
    },
}

/// Longest command id.
pub const MAX_COMMAND_ID_LEN: usize = 64;
/// Longest opaque command payload in bytes.
pub const MAX_OPAQUE_LEN: usize = 128;
/// Default command time to live.
pub const DEFAULT_COMMAND_TTL_S: u32 = 300;

impl CommandRequest {
    /// Parses and validates a downlink payload.
    pub fn decode(payload: &[u8]) -> Result<CommandRequest, ContractError> {
        let r: CommandRequest =
            serde_json::from_slice(payload).map_err(|e| ContractError::Malformed(e.to_string()))?;
        if r.v != SCHEMA_VERSION {
            return Err(ContractError::UnsupportedVersion(r.v));
        }
        if r.id.is_empty() || r.id.len() > MAX_COMMAND_ID_LEN {
            return Err(ContractError::InvalidCommand(format!(
                "id is {} bytes; it must be 1..={MAX_COMMAND_ID_LEN} bytes",
                r.id.len()
            )));
        }
        if let CommandSpec::Opaque { hex } = &r.command {
            let bytes = decode_hex(hex).ok_or_else(|| {
                ContractError::InvalidCommand("command.opaque.hex is not hex".into())
            })?;
            if bytes.len() > MAX_OPAQUE_LEN {
                return Err(ContractError::InvalidCommand(format!(
                    "command.opaque.hex is {} bytes; it must be at most {MAX_OPAQUE_LEN}",
                    bytes.len()
                )));
            }
        }
        Ok(r)
    }
}

/// Outcome of a command, on `.../commands/result` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutcome {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The request's id (empty if the request was too malformed to have one).
    pub id: String,
    /// Gateway id.
    pub gateway: String,
    /// Device id, as in the request's topic (for `rejected`, possibly one the contract refuses).
    pub device: String,
    /// Outcome.
    pub status: OutcomeStatus,
    /// Human-readable detail for anything but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Result bytes from the device, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hex: Option<String>,
    /// When the gateway learned the outcome, UTC ms.
    pub at_ms: i64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The device did it (for `reboot`: took it, and resets right after answering).
    Ok,
    /// The device has no such sensor.
    UnknownSensor,
    /// The device refused an argument as out of range.
    InvalidArgument,
    /// The device does not implement the command.
    Unsupported,
    /// The device tried and failed.
    Failed,
    /// No answer from the device before the command's TTL (it was offline, or had the command
    /// and did not answer in time).
    Expired,
    /// The gateway refused the request (malformed, or breaking a rule of the contract, such as a
    /// device id the device link cannot carry); `detail` names the field.
    Rejected,
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex (either case); `None` if malformed.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // Checked up front: `u8::from_str_radix` alone would take a sign (`"+f"`).
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> EventBatch {
        EventBatch {
            v: SCHEMA_VERSION,
            gateway: "gw-1".into(),
            device: "dev/7".into(),
            boot: 2,
            boot_id: 0xdead_beef,
            events: (0..50)
                .map(|i| Event {
                    seq: 100 + i,
                    sensor: if i % 2 == 0 {
                        "temperature"
                    } else {
                        "humidity"
                    }
                    .into(),
                    ts_ms: 1_790_000_000_000 + i64::from(i) * 10,
                    value: f64::from(i) * 0.5,
                })
                .collect(),
        }
    }

    #[test]
    fn every_encoding_round_trips() {
        let b = batch();
        for enc in [Encoding::Json, Encoding::Binary] {
            for comp in [Compression::None, Compression::Deflate] {
                let wire = b.encode(enc, comp);
                assert_eq!(EventBatch::decode(&wire).unwrap(), b, "{enc:?} {comp:?}");
            }
        }
        let json = b.encode(Encoding::Json, Compression::None);
        assert_eq!(json[0], b'{');
        assert!(b.encode(Encoding::Binary, Compression::None).len() < json.len() / 2);
        assert!(b.encode(Encoding::Json, Compression::Deflate).len() < json.len() / 3);
    }

    #[test]
    fn rule_breaks_are_named() {
        let mut b = batch();
        b.events[3].seq = b.events[2].seq;
        let e = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap_err();
        assert!(e.to_string().contains("events[3].seq"), "{e}");
        let mut b = batch();
        b.v = 9;
        let e = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap_err();
        assert_eq!(e, ContractError::UnsupportedVersion(9));
        let mut b = batch();
        b.events.clear();
        assert!(matches!(b.validate(), Err(ContractError::Invalid(_))));
        assert!(matches!(
            EventBatch::decode(b"{\"v\":1}"),
            Err(ContractError::Malformed(_))
        ));
        assert!(matches!(
            EventBatch::decode(&[DEFLATE_MAGIC, 1, 2, 3]),
            Err(ContractError::Compression(_))
        ));
        assert!(batch().check_topic("gw-1", "dev/8").is_err());
    }

    #[test]
    fn json_uses_the_documented_field_names() {
        let v: serde_json::Value =
            serde_json::from_slice(&batch().encode(Encoding::Json, Compression::None)).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["boot"], 2);
        assert_eq!(v["events"][0]["sensor"], "temperature");
        assert_eq!(v["events"][0]["ts_ms"], 1_790_000_000_000_i64);
    }

    #[test]
    fn topics_escape_ids_and_parse_back() {
        let t = events_topic("gw", "a/b+c#d%e");
        assert_eq!(t, "ferry/v1/gw/a%2Fb%2Bc%23d%25e/events");
        assert_eq!(
            parse_topic(&t),
            Some(Topic::Events {
                gateway: "gw".into(),
                device: "a/b+c#d%e".into()
            })
        );
        assert_eq!(
            parse_topic(&command_result_topic("g", "d")),
            Some(Topic::CommandResult {
                gateway: "g".into(),
                device: "d".into()
            })
        );
        assert_eq!(
            parse_topic(&status_topic("g")),
            Some(Topic::Status {
                gateway: "g".into()
            })
        );
        assert_eq!(parse_topic("ferry/v1/g/d/other"), None);
        assert_eq!(parse_topic("ferry/v1/g/%zz/events"), None);
        assert_eq!(commands_filter("g"), "ferry/v1/g/+/commands");
    }

    #[test]
    fn commands_parse_and_validate() {
        let r = CommandRequest::decode(
            br#"{"v":1,"id":"c1","command":{"set_interval":{"sensor":0,"interval_ms":100}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.command,
            CommandSpec::SetInterval {
                sensor: 0,
                interval_ms: 100
            }
        );
        assert!(CommandRequest::decode(br#"{"v":1,"id":"c1","command":"reboot"}"#).is_ok());
        assert!(CommandRequest::decode(br#"{"v":1,"id":"","command":"reboot"}"#).is_err());
        assert!(
            CommandRequest::decode(br#"{"v":1,"id":"x","command":{"opaque":{"hex":"zz"}}}"#)
                .is_err()
        );
        assert!(CommandRequest::decode(br#"{"v":1,"id":"x","command":"explode"}"#).is_err());
        assert_eq!(decode_hex(&encode_hex(&[0, 1, 255])), Some(vec![0, 1, 255]));
        assert_eq!(decode_hex("0A0b"), Some(vec![10, 11]));
        assert_eq!(decode_hex("+f+f"), None);
    }

    #[test]
    fn command_errors_name_the_field() {
        let long = format!(r#"{{"v":1,"id":"{}","command":"reboot"}}"#, "i".repeat(65));
        let e = CommandRequest::decode(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid command: id is 65 bytes; it must be 1..=64 bytes"
        );
        let e = CommandRequest::decode(br#"{"v":1,"id":"x","command":{"opaque":{"hex":"zz"}}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid command: command.opaque.hex is not hex");
    }

    #[test]
    fn ids_names_and_times_are_bounded_with_the_reason() {
        assert!(check_gateway_id(&"g".repeat(MAX_GATEWAY_ID_LEN)).is_ok());
        assert!(check_gateway_id("gw%1 é").is_ok());
        assert_eq!(
            check_gateway_id(&"g".repeat(65)).unwrap_err(),
            "is 65 bytes; it must be 1..=64 bytes without '/', '+', '#' or NUL"
        );
        assert_eq!(
            check_gateway_id("a+b").unwrap_err(),
            "\"a+b\" contains '+'; it must be 1..=64 bytes without '/', '+', '#' or NUL"
        );
        for bad in ["", "a/b", "a#", "a\0b"] {
            assert!(check_gateway_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_device_id(&"d".repeat(MAX_DEVICE_ID_LEN)).is_ok());
        assert!(check_device_id("a/b+c#d%e").is_ok());
        assert_eq!(
            check_device_id(&"d".repeat(33)).unwrap_err(),
            "is 33 bytes; it must be 1..=32 bytes without NUL"
        );
        assert_eq!(
            check_device_id("d\0").unwrap_err(),
            "\"d\\0\" contains NUL; it must be 1..=32 bytes without NUL"
        );
        assert!(check_device_id("").is_err());
        assert!(check_sensor_name(&"s".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_sensor_name(&"s".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_sensor_name("t\0").is_err());
        assert!(check_ts_ms(MIN_TS_MS).is_ok() && check_ts_ms(MAX_TS_MS).is_ok());
        assert_eq!(
            check_ts_ms(MAX_TS_MS + 1).unwrap_err(),
            "253402300800000 is outside -62135596800000..=253402300799999 \
             (0001-01-01T00:00:00.000Z..=9999-12-31T23:59:59.999Z)"
        );
        assert!(check_ts_ms(MIN_TS_MS - 1).is_err());
        // Each check is what validate applies, named by field.
        let mut b = batch();
        b.events[7].ts_ms = i64::MIN;
        let e = b.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid batch: events[7].ts_ms -9223372036854775808 is outside"),
            "{e}"
        );
        let mut b = batch();
        b.device = "d".repeat(33);
        let e = b.validate().unwrap_err().to_string();
        assert!(e.starts_with("invalid batch: device is 33 bytes"), "{e}");
    }

    #[test]
    fn invalid_topics_say_why() {
        assert_eq!(
            try_parse_topic("ferry/v1/gw/%2f/commands"),
            Err("topic level 4 (\"%2f\") is not a percent-encoded id".into())
        );
        assert_eq!(
            try_parse_topic("ferry/v1//status"),
            Err("topic level 3 (\"\") is not a percent-encoded id".into())
        );
        assert_eq!(
            try_parse_topic("ferry/v2/g/d/events"),
            Err("not a ferry/v1 topic of this contract".into())
        );
        assert!(try_parse_topic("ferry/v1/g/d%00/commands").is_ok());
    }

    #[test]
    fn readings_are_json_numbers_or_the_three_strings() {
        let mut b = batch();
        b.events.truncate(4);
        b.events[0].value = f64::NAN;
        b.events[1].value = f64::INFINITY;
        b.events[2].value = f64::NEG_INFINITY;
        b.events[3].value = -0.0;
        let json: serde_json::Value =
            serde_json::from_slice(&b.encode(Encoding::Json, Compression::None)).unwrap();
        let values: Vec<serde_json::Value> =
            (0..4).map(|i| json["events"][i]["value"].clone()).collect();
        assert_eq!(
            values,
            serde_json::json!(["NaN", "Infinity", "-Infinity", -0.0])
                .as_array()
                .unwrap()[..]
        );
        let back = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap();
        assert_eq!(back.events[0].value.to_bits(), f64::NAN.to_bits());
        assert_eq!(back.events[1].value, f64::INFINITY);
        assert_eq!(back.events[2].value, f64::NEG_INFINITY);
        assert_eq!(back.events[3].value.to_bits(), (-0.0f64).to_bits());
        // Binary carries the bits, a NaN's payload included.
        b.events[0].value = f64::from_bits(0xfff0_0000_dead_beef);
        let back = EventBatch::decode(&b.encode(Encoding::Binary, Compression::None)).unwrap();
        assert_eq!(back.events[0].value.to_bits(), 0xfff0_0000_dead_beef);
        // Only those three strings, and no null.
        let text = String::from_utf8(b.encode(Encoding::Json, Compression::None)).unwrap();
        for bad in ["\"nan\"", "\"inf\"", "\"+Infinity\"", "null", "\"1.5\""] {
            let t = text.replacen("\"Infinity\"", bad, 1);
            let e = EventBatch::decode(t.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with("malformed payload:") && e.contains(" column "),
                "{bad}: {e}"
            );
        }
    }
}

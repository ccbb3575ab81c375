//! What the bridge makes of one PUBLISH, without I/O: a batch to store, or a dead letter with
//! the reason it was refused.
//!
//! Besides the contract's rules ([`EventBatch::decode`], [`EventBatch::check_topic`]) a batch
//! must be storable: PostgreSQL text cannot hold NUL, and `timestamptz` cannot hold every `i64`
//! of milliseconds. A batch that breaks either becomes a dead letter here, before it can fail a
//! whole transaction of other gateways' events.
use std::time::SystemTime;

use crate::contract::{parse_topic, ContractError, EventBatch, Topic};

/// Earliest `ts_ms` stored: 0001-01-01T00:00:00Z.
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// Latest `ts_ms` stored: 9999-12-31T23:59:59.999Z.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Identifies a PUBLISH for its acknowledgement: the packet id is only meaningful on the
/// connection it arrived on, which `epoch` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    /// Connection number the message arrived on (the bridge counts reconnects).
    pub epoch: u64,
    /// MQTT packet id (0 for QoS 0, which needs no ack).
    pub pkid: u16,
    /// Whether the broker waits for a PUBACK.
    pub needs_ack: bool,
}

/// One received message on its way to the sink.
#[derive(Debug)]
pub struct Inbound {
    /// How to acknowledge it once durable.
    pub ack: AckToken,
    /// When the bridge received it.
    pub received_at: SystemTime,
    /// A batch, or why not.
    pub content: Content,
}

/// The verdict on a payload.
#[derive(Debug)]
pub enum Content {
    /// A valid, storable batch.
    Batch(EventBatch),
    /// Refused: stored as a dead letter.
    Dead(DeadLetter),
}

/// A refused message, as the dead-letter table stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The topic it arrived on.
    pub topic: String,
    /// Why it was refused (the error's `Display` text).
    pub reason: String,
    /// Low-cardinality class of the reason, for metrics.
    pub class: ReasonClass,
    /// The payload as received.
    pub payload: Vec<u8>,
}

/// Dead-letter reasons grouped for a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonClass {
    /// Not a `ferry/v1/{gateway}/{device}/events` topic.
    Topic,
    /// Not JSON/binary, or the wrong shape.
    Malformed,
    /// Unknown schema version.
    Version,
    /// Breaks a contract rule.
    Invalid,
    /// Topic and payload name different gateways or devices.
    TopicMismatch,
    /// Compression error.
    Compression,
    /// Valid but not storable (NUL in text, timestamp out of range).
    Unstorable,
    /// The database refused it on its own (it was retried alone first).
    Database,
}

impl ReasonClass {
    /// Every class, in label order.
    pub const ALL: [ReasonClass; 8] = [
        ReasonClass::Topic,
        ReasonClass::Malformed,
        ReasonClass::Version,
        ReasonClass::Invalid,
        ReasonClass::TopicMismatch,
        ReasonClass::Compression,
        ReasonClass::Unstorable,
        ReasonClass::Database,
    ];

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            ReasonClass::Topic => "topic",
            ReasonClass::Malformed => "malformed",
            ReasonClass::Version => "version",
            ReasonClass::Invalid => "invalid",
            ReasonClass::TopicMismatch => "topic_mismatch",
            ReasonClass::Compression => "compression",
            ReasonClass::Unstorable => "unstorable",
            ReasonClass::Database => "database",
        }
    }

    fn of(e: &ContractError) -> ReasonClass {
        match e {
            ContractError::Malformed(_) => ReasonClass::Malformed,
            ContractError::UnsupportedVersion(_) => ReasonClass::Version,
            ContractError::TopicMismatch { .. } => ReasonClass::TopicMismatch,
            ContractError::Compression(_) => ReasonClass::Compression,
            _ => ReasonClass::Invalid,
        }
    }
}

impl DeadLetter {
    /// A dead letter; NUL in the reason (it may quote ids) is escaped so PostgreSQL takes it.
    pub fn new(topic: &str, reason: &str, class: ReasonClass, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            topic: topic.replace('\0', "\\0"),
            reason: reason.replace('\0', "\\0"),
            class,
            payload: payload.to_vec(),
        }
    }
}

/// Decides what a PUBLISH on `topic` with `payload` is.
pub fn classify(topic: &str, payload: &[u8]) -> Content {
    let dead = |reason: &str, class| Content::Dead(DeadLetter::new(topic, reason, class, payload));
    let Some(Topic::Events { gateway, device }) = parse_topic(topic) else {
        return dead(
            "topic is not ferry/v1/{gateway}/{device}/events",
            ReasonClass::Topic,
        );
    };
    let batch = match EventBatch::decode(payload) {
        Ok(b) => b,
        Err(e) => return dead(&e.to_string(), ReasonClass::of(&e)),
    };
    if let Err(e) = batch.check_topic(&gateway, &device) {
        return dead(&e.to_string(), ReasonClass::of(&e));
    }
    if let Err(reason) = check_storable(&batch) {
        return dead(&reason, ReasonClass::Unstorable);
    }
    Content::Batch(batch)
}

/// Checks what PostgreSQL needs beyond the contract.
pub fn check_storable(b: &EventBatch) -> Result<(), String> {
    let nul = |what: &str| Err(format!("unstorable: {what} contains NUL"));
    if b.gateway.contains('\0') {
        return nul("gateway");
    }
    if b.device.contains('\0') {
        return nul("device");
    }
    for (i, e) in b.events.iter().enumerate() {
        if e.sensor.contains('\0') {
            return nul(&format!("events[{i}].sensor"));
        }
        if !(MIN_TS_MS..=MAX_TS_MS).contains(&e.ts_ms) {
            return Err(format!(
                "unstorable: events[{i}].ts_ms {} is outside years 1..=9999",
                e.ts_ms
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{events_topic, Compression, Encoding, Event, SCHEMA_VERSION};

    fn batch(gateway: &str, device: &str) -> EventBatch {
        EventBatch {
            v: SCHEMA_VERSION,
            gateway: gateway.into(),
            device: device.into(),
            boot: 1,
            boot_id: 7,
            events: (0..3)
                .map(|i| Event {
                    seq: i,
                    sensor: "t".into(),
                    ts_ms: 1_700_000_000_000 + i64::from(i),
                    value: 1.5,
                })
                .collect(),
        }
    }

    fn dead(c: Content) -> DeadLetter {
        match c {
            Content::Dead(d) => d,
            Content::Batch(b) => panic!("accepted {b:?}"),
        }
    }

    #[test]
    fn valid_batches_pass_in_every_encoding() {
        let b = batch("gw", "d/1");
        let topic = events_topic("gw", "d/1");
        for enc in [Encoding::Json, Encoding::Binary] {
            for comp in [Compression::None, Compression::Deflate] {
                match classify(&topic, &b.encode(enc, comp)) {
                    Content::Batch(got) => assert_eq!(got, b),
                    Content::Dead(d) => panic!("{enc:?} {comp:?}: {}", d.reason),
                }
            }
        }
    }

    #[test]
    fn refusals_carry_the_reason_and_class() {
        let json = |b: &EventBatch| b.encode(Encoding::Json, Compression::None);
        let d = dead(classify("ferry/v1/gw/d/status", b"{}"));
        assert_eq!(d.class, ReasonClass::Topic);
        let d = dead(classify(&events_topic("gw", "d"), b"{nope"));
        assert_eq!(d.class, ReasonClass::Malformed);
        assert!(d.reason.starts_with("malformed payload"), "{}", d.reason);
        assert_eq!(d.payload, b"{nope");
        let mut b = batch("gw", "d");
        b.v = 2;
        let d = dead(classify(&events_topic("gw", "d"), &json(&b)));
        assert_eq!(d.class, ReasonClass::Version);
        let d = dead(classify(
            &events_topic("gw", "other"),
            &json(&batch("gw", "d")),
        ));
        assert_eq!(d.class, ReasonClass::TopicMismatch);
        assert_eq!(d.reason, "topic names gw/other but the payload says gw/d");
        let mut b = batch("gw", "d");
        b.events[2].seq = 1;
        let d = dead(classify(&events_topic("gw", "d"), &json(&b)));
        assert_eq!(d.class, ReasonClass::Invalid);
        assert!(d.reason.contains("events[2].seq 1 does not increase"));
    }

    #[test]
    fn unstorable_batches_are_refused_before_the_database() {
        let mut b = batch("gw", "d");
        b.events[1].ts_ms = i64::MAX;
        let d = dead(classify(
            &events_topic("gw", "d"),
            &b.encode(Encoding::Json, Compression::None),
        ));
        assert_eq!(d.class, ReasonClass::Unstorable);
        assert!(d.reason.contains("events[1].ts_ms"), "{}", d.reason);
        let b = batch("g\0w", "d");
        let d = dead(classify(
            &events_topic("g\0w", "d"),
            &b.encode(Encoding::Binary, Compression::None),
        ));
        assert_eq!(d.class, ReasonClass::Unstorable);
        assert!(!d.topic.contains('\0') && !d.reason.contains('\0'));
        let mut b = batch("gw", "d");
        b.events[0].ts_ms = MIN_TS_MS;
        b.events[2].ts_ms = MAX_TS_MS;
        assert!(check_storable(&b).is_ok());
    }
}

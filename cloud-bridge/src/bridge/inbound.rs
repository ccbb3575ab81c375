//! What the bridge makes of one PUBLISH, without I/O: a batch to store, or a dead letter with
//! the reason it was refused.
//!
//! The contract's rules ([`EventBatch::decode`], [`EventBatch::check_topic`]) are all a batch
//! must pass: they bound ids and times exactly as PostgreSQL needs (no NUL in text, `ts_ms` in
//! years 1..=9999, which `timestamptz` holds), so a batch that could fail a whole transaction of
//! other gateways' events never gets past this point. Every reading is storable: `double
//! precision` holds NaN and ±infinity.
//!
//! A message on a topic that is not a valid `ferry/v1/{gateway}/{device}/events` (an empty level,
//! a bad percent escape) is refused like any other: a dead letter of class `topic`, acked.
use std::time::SystemTime;

use ferry_contract::{try_parse_topic, ContractError, EventBatch, Topic};

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
    /// The database refused it on its own (it was retried alone first).
    Database,
}

impl ReasonClass {
    /// Every class, in label order.
    pub const ALL: [ReasonClass; 7] = [
        ReasonClass::Topic,
        ReasonClass::Malformed,
        ReasonClass::Version,
        ReasonClass::Invalid,
        ReasonClass::TopicMismatch,
        ReasonClass::Compression,
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
            ReasonClass::Database => "database",
        }
    }

    fn of(e: &ContractError) -> ReasonClass {
        match e {
            ContractError::Malformed(_) => ReasonClass::Malformed,
            ContractError::UnsupportedVersion(_) => ReasonClass::Version,
            ContractError::TopicMismatch { .. } => ReasonClass::TopicMismatch,
            ContractError::Compression(_) => ReasonClass::Compression,
            ContractError::Invalid(_) | ContractError::InvalidCommand(_) => ReasonClass::Invalid,
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
    let (gateway, device) = match try_parse_topic(topic) {
        Ok(Topic::Events { gateway, device }) => (gateway, device),
        Ok(_) => {
            return dead(
                "topic is not ferry/v1/{gateway}/{device}/events",
                ReasonClass::Topic,
            )
        }
        Err(why) => return dead(&format!("invalid topic: {why}"), ReasonClass::Topic),
    };
    let batch = match EventBatch::decode(payload) {
        Ok(b) => b,
        Err(e) => return dead(&e.to_string(), ReasonClass::of(&e)),
    };
    if let Err(e) = batch.check_topic(&gateway, &device) {
        return dead(&e.to_string(), ReasonClass::of(&e));
    }
    Content::Batch(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_contract::{events_topic, Compression, Encoding, Event, SCHEMA_VERSION};

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
    fn batches_the_database_could_not_take_are_invalid() {
        let refused = |b: &EventBatch, enc| {
            dead(classify(
                &events_topic(&b.gateway, &b.device),
                &b.encode(enc, Compression::None),
            ))
        };
        let mut b = batch("gw", "d");
        b.events[1].ts_ms = i64::MAX;
        let d = refused(&b, Encoding::Json);
        assert_eq!(d.class, ReasonClass::Invalid);
        assert!(d.reason.contains("events[1].ts_ms"), "{}", d.reason);
        let d = refused(&batch("g\0w", "d"), Encoding::Binary);
        assert_eq!(d.class, ReasonClass::Invalid);
        assert!(
            d.reason.starts_with("invalid batch: gateway"),
            "{}",
            d.reason
        );
        assert!(!d.topic.contains('\0') && !d.reason.contains('\0'));
        let mut b = batch("gw", "d");
        b.events[2].sensor = "t\0".into();
        assert_eq!(refused(&b, Encoding::Json).class, ReasonClass::Invalid);
        let mut b = batch("gw", "d");
        b.events[0].ts_ms = ferry_contract::MIN_TS_MS;
        b.events[2].ts_ms = ferry_contract::MAX_TS_MS;
        b.events[1].value = f64::NAN;
        assert!(matches!(
            classify(
                &events_topic("gw", "d"),
                &b.encode(Encoding::Json, Compression::None)
            ),
            Content::Batch(_)
        ));
    }

    #[test]
    fn invalid_topics_are_dead_letters_that_say_why() {
        let b = batch("gw", "d").encode(Encoding::Json, Compression::None);
        let d = dead(classify("ferry/v1/gw/%zz/events", &b));
        assert_eq!(d.class, ReasonClass::Topic);
        assert_eq!(
            d.reason,
            "invalid topic: topic level 4 (\"%zz\") is not a percent-encoded id"
        );
        let d = dead(classify("ferry/v1//d/events", &b));
        assert_eq!(d.class, ReasonClass::Topic);
        assert!(d.reason.contains("topic level 3"), "{}", d.reason);
    }
}

//! The bridge's inbound messages: a PUBLISH on `ferry/v1/{gateway}/{device}/events` (or any other
//! topic the bridge's subscription could deliver), through the batch decoder to the rows it writes.
//!
//! Input: the topic (UTF-8, as MQTT requires), a newline, then the payload (JSON, binary or
//! deflate around either; the first byte decides).
//!
//! Checked, on the bridge's own code (`classify`, `CommitRows`, `jsonl`):
//! - nothing panics, and a zip bomb is refused instead of inflated (libFuzzer's memory limit);
//! - a refused message becomes a dead letter with its payload as received, its topic, and a reason,
//!   both free of NUL (PostgreSQL's text refuses it: NUL is stored as the two characters `\0`);
//! - an accepted batch passes the contract's rules and names the topic's gateway and device, holds
//!   nothing PostgreSQL would refuse (NUL in text, a time outside `timestamptz`), turns into one
//!   event row per event, one JSON line per event, and survives every encoding and compression
//!   (values by their bits; JSON carries any NaN as the canonical NaN).
#![no_main]

mod common;

use std::time::SystemTime;

use ferry_cloud_bridge::bridge::inbound::{classify, AckToken, Content, Inbound};
use ferry_cloud_bridge::bridge::rows::{jsonl, CommitRows};
use ferry_contract::{parse_topic, Compression, Encoding, EventBatch, Topic, MAX_TS_MS, MIN_TS_MS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((topic, payload)) = common::publish(data) else {
        return;
    };
    let content = classify(topic, payload);
    match &content {
        Content::Dead(d) => {
            // Text columns: PostgreSQL refuses NUL (and the whole commit with it), so the bridge
            // stores NUL as the two characters `\0`.
            assert_eq!(d.topic, topic.replace('\0', "\\0"));
            assert!(!d.topic.contains('\0'));
            assert_eq!(d.payload, payload);
            assert!(!d.reason.trim().is_empty(), "a dead letter says why");
            assert!(!d.reason.contains('\0'), "NUL in the reason {:?}", d.reason);
        }
        Content::Batch(b) => check_batch(topic, b),
    }
    let msgs = [Inbound {
        ack: AckToken {
            epoch: 1,
            pkid: 1,
            needs_ack: true,
        },
        received_at: SystemTime::now(),
        content,
    }];
    let rows = CommitRows::build(&msgs);
    match &msgs[0].content {
        Content::Batch(b) => {
            assert_eq!(rows.offered, b.events.len());
            assert_eq!(rows.events.len(), b.events.len(), "seqs are distinct");
            assert!(rows.dead.topic.is_empty());
            assert_eq!(rows.gateways.len(), 1);
        }
        Content::Dead(_) => {
            assert!(rows.events.is_empty());
            assert_eq!(rows.dead.topic.len(), 1);
        }
    }
});

fn check_batch(topic: &str, b: &EventBatch) {
    b.validate().expect("a decoded batch is valid");
    match parse_topic(topic) {
        Some(Topic::Events { gateway, device }) => {
            assert_eq!(
                (gateway.as_str(), device.as_str()),
                (b.gateway.as_str(), b.device.as_str())
            )
        }
        other => panic!("a batch accepted on {topic:?} ({other:?})"),
    }
    for text in [&b.gateway, &b.device] {
        assert!(!text.contains('\0'), "NUL in {text:?}");
    }
    for e in &b.events {
        assert!(!e.sensor.contains('\0'), "NUL in sensor {:?}", e.sensor);
        assert!(
            (MIN_TS_MS..=MAX_TS_MS).contains(&e.ts_ms),
            "ts_ms {}",
            e.ts_ms
        );
    }
    let mut lines = Vec::new();
    jsonl(b, &mut lines);
    let parsed = lines
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("a JSON line"))
        .count();
    assert_eq!(parsed, b.events.len(), "one JSON line per event");
    for encoding in [Encoding::Json, Encoding::Binary] {
        for compression in [Compression::None, Compression::Deflate] {
            let bytes = b.encode(encoding, compression);
            let again = EventBatch::decode(&bytes)
                .unwrap_or_else(|e| panic!("{encoding:?}/{compression:?} does not decode: {e}"));
            assert_same(b, &again, encoding);
        }
    }
}

fn assert_same(a: &EventBatch, b: &EventBatch, encoding: Encoding) {
    assert_eq!(
        (
            a.v,
            &a.gateway,
            &a.device,
            a.boot,
            a.boot_id,
            a.events.len()
        ),
        (
            b.v,
            &b.gateway,
            &b.device,
            b.boot,
            b.boot_id,
            b.events.len()
        )
    );
    for (x, y) in a.events.iter().zip(&b.events) {
        assert_eq!((x.seq, &x.sensor, x.ts_ms), (y.seq, &y.sensor, y.ts_ms));
        let same = if x.value.is_nan() && encoding == Encoding::Json {
            y.value.is_nan()
        } else {
            x.value.to_bits() == y.value.to_bits()
        };
        assert!(
            same,
            "{encoding:?}: value {:e} came back as {:e}",
            x.value, y.value
        );
    }
}

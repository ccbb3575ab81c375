//! Rows from batches, without I/O: the column arrays of one bulk insert, the per-gateway
//! progress of one commit, and the `--sink jsonl` lines.
//!
//! Columns borrow from the batches (no per-row string allocation); the caller keeps the batches
//! alive until the statement has run.
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::inbound::{Content, DeadLetter, Inbound};
use ferry_contract::{Event, EventBatch};

/// `ts_ms` as a point in time (in range: the contract bounds it, see `contract::check_ts_ms`).
pub fn ts_from_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// Milliseconds since the Unix epoch (negative before it).
pub fn ms_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The columns of `ferry_events`, one entry per event, in insert order.
#[derive(Debug, Default)]
pub struct EventColumns<'a> {
    /// Gateway id.
    pub gateway: Vec<&'a str>,
    /// Device id.
    pub device: Vec<&'a str>,
    /// Boot number.
    pub boot: Vec<i64>,
    /// Sequence number within the boot.
    pub seq: Vec<i64>,
    /// The device's random id for the boot.
    pub boot_id: Vec<i64>,
    /// Sensor name.
    pub sensor: Vec<&'a str>,
    /// Sample time.
    pub ts: Vec<SystemTime>,
    /// Reading.
    pub value: Vec<f64>,
    /// When the bridge received the message.
    pub received_at: Vec<SystemTime>,
}

impl<'a> EventColumns<'a> {
    /// Appends every event of `b`.
    pub fn push_batch(&mut self, b: &'a EventBatch, received_at: SystemTime) {
        let n = b.events.len();
        self.gateway
            .extend(std::iter::repeat_n(b.gateway.as_str(), n));
        self.device
            .extend(std::iter::repeat_n(b.device.as_str(), n));
        self.boot.extend(std::iter::repeat_n(i64::from(b.boot), n));
        self.boot_id
            .extend(std::iter::repeat_n(i64::from(b.boot_id), n));
        self.received_at.extend(std::iter::repeat_n(received_at, n));
        for e in &b.events {
            self.seq.push(i64::from(e.seq));
            self.sensor.push(&e.sensor);
            self.ts.push(ts_from_ms(e.ts_ms));
            self.value.push(e.value);
        }
    }

    /// Appends one event of `b`.
    pub fn push_event(&mut self, b: &'a EventBatch, e: &'a Event, received_at: SystemTime) {
        self.gateway.push(&b.gateway);
        self.device.push(&b.device);
        self.boot.push(i64::from(b.boot));
        self.boot_id.push(i64::from(b.boot_id));
        self.received_at.push(received_at);
        self.seq.push(i64::from(e.seq));
        self.sensor.push(&e.sensor);
        self.ts.push(ts_from_ms(e.ts_ms));
        self.value.push(e.value);
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// No event held.
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }
}

/// The columns of `ferry_dead_letters`.
#[derive(Debug, Default)]
pub struct DeadColumns<'a> {
    /// Topic.
    pub topic: Vec<&'a str>,
    /// Reason text.
    pub reason: Vec<&'a str>,
    /// Raw payload.
    pub payload: Vec<&'a [u8]>,
    /// When received.
    pub received_at: Vec<SystemTime>,
}

impl<'a> DeadColumns<'a> {
    /// Appends one dead letter.
    pub fn push(&mut self, d: &'a DeadLetter, received_at: SystemTime) {
        self.topic.push(&d.topic);
        self.reason.push(&d.reason);
        self.payload.push(&d.payload);
        self.received_at.push(received_at);
    }
}

/// A gateway's progress as of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayProgress {
    /// Newest sample time among its events, ms since the epoch.
    pub newest_event_ms: i64,
    /// Latest receive time among its messages.
    pub last_received_at: SystemTime,
}

/// Everything one commit writes, borrowed from its messages.
#[derive(Debug, Default)]
pub struct CommitRows<'a> {
    /// Event rows.
    pub events: EventColumns<'a>,
    /// Dead-letter rows.
    pub dead: DeadColumns<'a>,
    /// Progress per gateway, sorted by gateway (a fixed lock order for concurrent replicas).
    pub gateways: BTreeMap<&'a str, GatewayProgress>,
    /// Events in the messages, counting the duplicates left out of `events`.
    pub offered: usize,
    /// Identities already in `events`: a batch holds each at most once, so a plain insert
    /// (no ON CONFLICT) can only conflict with rows committed by someone else.
    seen: HashSet<(&'a str, &'a str, u32, u32)>,
}

impl<'a> CommitRows<'a> {
    /// The rows of `msgs`.
    pub fn build(msgs: &'a [Inbound]) -> CommitRows<'a> {
        let mut rows = CommitRows::default();
        for m in msgs {
            rows.push(m);
        }
        rows
    }

    /// Adds one message.
    pub fn push(&mut self, m: &'a Inbound) {
        match &m.content {
            Content::Batch(b) => {
                self.offered += b.events.len();
                for e in &b.events {
                    if self.seen.insert((&b.gateway, &b.device, b.boot, e.seq)) {
                        self.events.push_event(b, e, m.received_at);
                    }
                }
                let newest = b.events.iter().map(|e| e.ts_ms).max().unwrap_or(i64::MIN);
                let p = self
                    .gateways
                    .entry(b.gateway.as_str())
                    .or_insert(GatewayProgress {
                        newest_event_ms: newest,
                        last_received_at: m.received_at,
                    });
                p.newest_event_ms = p.newest_event_ms.max(newest);
                p.last_received_at = p.last_received_at.max(m.received_at);
            }
            Content::Dead(d) => self.dead.push(d, m.received_at),
        }
    }

    /// Gateway columns for the `ferry_gateways` upsert: (gateway, newest event, last received).
    #[allow(clippy::type_complexity)]
    pub fn gateway_columns(&self) -> (Vec<&'a str>, Vec<SystemTime>, Vec<SystemTime>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for (g, p) in &self.gateways {
            out.0.push(*g);
            out.1.push(ts_from_ms(p.newest_event_ms));
            out.2.push(p.last_received_at);
        }
        out
    }
}

/// Appends one JSON line per event of `b` (fields gateway, device, boot, boot_id, seq, sensor,
/// ts_ms, value; a non-finite value is `"NaN"`, `"Infinity"` or `"-Infinity"`, as in payloads).
pub fn jsonl(b: &EventBatch, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        gateway: &'a str,
        device: &'a str,
        boot: u32,
        boot_id: u32,
        seq: u32,
        sensor: &'a str,
        ts_ms: i64,
        #[serde(serialize_with = "ferry_contract::reading::serialize")]
        value: f64,
    }
    for e in &b.events {
        let line = Line {
            gateway: &b.gateway,
            device: &b.device,
            boot: b.boot,
            boot_id: b.boot_id,
            seq: e.seq,
            sensor: &e.sensor,
            ts_ms: e.ts_ms,
            value: e.value,
        };
        serde_json::to_writer(&mut *out, &line).expect("in-memory write");
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::inbound::{AckToken, ReasonClass};
    use ferry_contract::{Event, SCHEMA_VERSION};

    fn msg(gateway: &str, boot: u32, seqs: &[u32], ts0: i64, at_s: u64) -> Inbound {
        Inbound {
            ack: AckToken {
                epoch: 0,
                pkid: 1,
                needs_ack: true,
            },
            received_at: UNIX_EPOCH + Duration::from_secs(at_s),
            content: Content::Batch(EventBatch {
                v: SCHEMA_VERSION,
                gateway: gateway.into(),
                device: "d".into(),
                boot,
                boot_id: u32::MAX,
                events: seqs
                    .iter()
                    .map(|&seq| Event {
                        seq,
                        sensor: format!("s{seq}"),
                        ts_ms: ts0 + i64::from(seq),
                        value: f64::from(seq) / 2.0,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn columns_line_up_per_event() {
        let dead = Inbound {
            ack: AckToken {
                epoch: 0,
                pkid: 2,
                needs_ack: true,
            },
            received_at: UNIX_EPOCH,
            content: Content::Dead(DeadLetter::new("t", "why", ReasonClass::Malformed, b"x")),
        };
        let msgs = vec![
            msg("gw-b", 1, &[0, 1, 2], 1_000, 10),
            dead,
            msg("gw-a", 2, &[5], 5_000, 11),
            msg("gw-b", 1, &[1, 2, 3], 500, 12), // 1 and 2 again: left out
        ];
        let rows = CommitRows::build(&msgs);
        let e = &rows.events;
        assert_eq!(e.len(), 5);
        assert_eq!(rows.offered, 7);
        assert_eq!(e.gateway, ["gw-b", "gw-b", "gw-b", "gw-a", "gw-b"]);
        assert_eq!(e.seq, [0, 1, 2, 5, 3]);
        assert_eq!(e.boot, [1, 1, 1, 2, 1]);
        assert_eq!(e.boot_id, [i64::from(u32::MAX); 5]);
        assert_eq!(e.sensor, ["s0", "s1", "s2", "s5", "s3"]);
        assert_eq!(e.value, [0.0, 0.5, 1.0, 2.5, 1.5]);
        assert_eq!(e.ts[3], UNIX_EPOCH + Duration::from_millis(5_005));
        assert_eq!(e.received_at[4], UNIX_EPOCH + Duration::from_secs(12));
        assert_eq!(rows.dead.reason, ["why"]);
        assert_eq!(rows.dead.payload, [b"x".as_slice()]);
        // gw-b: newest sample is seq 2 at 1_002 (the later message is older data).
        let (g, newest, recv) = rows.gateway_columns();
        assert_eq!(g, ["gw-a", "gw-b"]);
        assert_eq!(newest[1], UNIX_EPOCH + Duration::from_millis(1_002));
        assert_eq!(recv[1], UNIX_EPOCH + Duration::from_secs(12));
    }

    #[test]
    fn times_convert_both_sides_of_the_epoch() {
        for ms in [-62_135_596_800_000, -1, 0, 1, 1_700_000_000_123] {
            assert_eq!(ms_since_epoch(ts_from_ms(ms)), ms);
        }
    }

    #[test]
    fn jsonl_has_one_object_per_event() {
        let m = msg("gw", 3, &[7, 8], 100, 0);
        let Content::Batch(b) = &m.content else {
            unreachable!()
        };
        let mut out = Vec::new();
        jsonl(b, &mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            serde_json::json!({"gateway":"gw","device":"d","boot":3,"boot_id":u32::MAX,
                "seq":8,"sensor":"s8","ts_ms":108,"value":4.0})
        );
        let mut b = b.clone();
        b.events[0].value = f64::NEG_INFINITY;
        let mut out = Vec::new();
        jsonl(&b, &mut out);
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(first["value"], "-Infinity");
    }
}

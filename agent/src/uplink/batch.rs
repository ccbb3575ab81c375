//! Turning a read of stored events into MQTT messages (sans-IO).
//!
//! A read returns events in store order, across devices. They are grouped per `(device, boot)`
//! keeping store order inside each group, and each group is cut into messages of at most
//! `max_events` events and about `max_bytes` of encoded payload. Messages of one device come out
//! in store order, so the broker sees each device's batches in order.
//!
//! Events the contract would refuse (a time outside years 1..=9999, a device id or sensor name
//! out of bounds, see `contract::check_*`) are cut out of their group into a message of their
//! own marked [`Outgoing::refused`], for the quarantine: published, they would make a consumer
//! refuse the whole batch around them.
use super::StoredEvent;
use ferry_contract::{self as contract, Compression, Encoding, EventBatch};

/// Limits for one message.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most events per message.
    pub max_events: usize,
    /// Target payload size; a message is cut before its estimated size passes this.
    pub max_bytes: usize,
    /// Payload encoding.
    pub encoding: Encoding,
    /// Payload compression.
    pub compression: Compression,
}

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `ferry/v1/{gateway}/{device}/events`
    pub topic: String,
    /// Encoded [`EventBatch`].
    pub payload: Vec<u8>,
    /// Events in it.
    pub events: usize,
    /// Why a consumer would refuse these events: quarantine the message instead of publishing.
    pub refused: Option<String>,
}

/// Why the contract refuses `e` in a batch of `device`, if it does.
fn refusal(device: &str, e: &StoredEvent) -> Option<String> {
    let r = contract::check_device_id(device)
        .map_err(|m| format!("device {m}"))
        .and_then(|()| contract::check_sensor_name(&e.sensor).map_err(|m| format!("sensor {m}")))
        .and_then(|()| contract::check_ts_ms(e.ts_ms).map_err(|m| format!("ts_ms {m}")));
    r.err()
}

/// Upper estimate of one event's JSON size beyond its sensor name (field names, digits).
const EVENT_OVERHEAD: usize = 80;

/// Groups `events` into messages. See the module docs.
pub fn batches(gateway: &str, events: &[StoredEvent], limits: &BatchLimits) -> Vec<Outgoing> {
    // Group keys in order of first appearance, so the output order is deterministic.
    let mut order: Vec<(&str, u32)> = Vec::new();
    let mut groups: std::collections::HashMap<(&str, u32), Vec<&StoredEvent>> =
        std::collections::HashMap::new();
    for e in events {
        let key = (e.device.as_str(), e.boot);
        groups
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(e);
    }
    let mut out = Vec::new();
    for key in order {
        let (good, bad): (Vec<&StoredEvent>, Vec<&StoredEvent>) = groups[&key]
            .iter()
            .partition(|e| refusal(key.0, e).is_none());
        if let Some(first) = bad.first() {
            let reason = refusal(key.0, first).expect("partitioned");
            let mut m = encode(gateway, &bad, limits);
            m.refused = Some(format!(
                "the contract refuses {} stored event(s), e.g. seq {}: {reason}",
                bad.len(),
                first.seq
            ));
            out.push(m);
        }
        let group = &good;
        let mut start = 0;
        while start < group.len() {
            let mut end = start;
            let mut bytes = 160 + gateway.len() + key.0.len();
            while end < group.len() && end - start < limits.max_events.max(1) {
                let add = EVENT_OVERHEAD + group[end].sensor.len();
                if end > start && bytes + add > limits.max_bytes {
                    break;
                }
                bytes += add;
                end += 1;
            }
            out.push(encode(gateway, &group[start..end], limits));
            start = end;
        }
    }
    out
}

/// One message holding `events` (one device and boot, in store order).
fn encode(gateway: &str, events: &[&StoredEvent], limits: &BatchLimits) -> Outgoing {
    let first = events[0];
    let batch = EventBatch {
        v: contract::SCHEMA_VERSION,
        gateway: gateway.to_owned(),
        device: first.device.clone(),
        boot: first.boot,
        boot_id: first.boot_id,
        events: events
            .iter()
            .map(|e| contract::Event {
                seq: e.seq,
                sensor: e.sensor.clone(),
                ts_ms: e.ts_ms,
                value: e.value,
            })
            .collect(),
    };
    Outgoing {
        topic: contract::events_topic(gateway, &first.device),
        payload: batch.encode(limits.encoding, limits.compression),
        events: events.len(),
        refused: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: i64, device: &str, boot: u32, seq: u32) -> StoredEvent {
        StoredEvent {
            id,
            device: device.into(),
            boot,
            boot_id: boot * 7,
            seq,
            sensor: "temperature".into(),
            ts_ms: 1_000 + id,
            value: id as f64,
        }
    }

    fn limits(max_events: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_events,
            max_bytes,
            encoding: Encoding::Json,
            compression: Compression::None,
        }
    }

    #[test]
    fn groups_per_device_and_boot_in_store_order() {
        let events = vec![
            ev(1, "a", 1, 0),
            ev(2, "b", 1, 0),
            ev(3, "a", 1, 1),
            ev(4, "a", 2, 0),
            ev(5, "b", 1, 1),
        ];
        let out = batches("gw", &events, &limits(100, 1 << 20));
        let decoded: Vec<EventBatch> = out
            .iter()
            .map(|o| EventBatch::decode(&o.payload).unwrap())
            .collect();
        let keys: Vec<(String, u32, Vec<u32>)> = decoded
            .iter()
            .map(|b| {
                (
                    b.device.clone(),
                    b.boot,
                    b.events.iter().map(|e| e.seq).collect(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a".into(), 1, vec![0, 1]),
                ("b".into(), 1, vec![0, 1]),
                ("a".into(), 2, vec![0]),
            ]
        );
        assert_eq!(out[0].topic, "ferry/v1/gw/a/events");
        assert_eq!(decoded[2].boot_id, 14);
    }

    #[test]
    fn cuts_by_count_and_by_bytes() {
        let events: Vec<StoredEvent> = (0..1000).map(|i| ev(i, "a", 1, i as u32)).collect();
        let by_count = batches("gw", &events, &limits(300, 1 << 20));
        assert_eq!(
            by_count.iter().map(|o| o.events).collect::<Vec<_>>(),
            vec![300, 300, 300, 100]
        );
        let by_bytes = batches("gw", &events, &limits(100_000, 8_192));
        assert!(by_bytes.len() > 5);
        for o in &by_bytes {
            assert!(o.payload.len() <= 8_192, "{} bytes", o.payload.len());
        }
        assert_eq!(by_bytes.iter().map(|o| o.events).sum::<usize>(), 1000);
    }

    #[test]
    fn events_the_contract_refuses_are_split_off_for_the_quarantine() {
        let mut events: Vec<StoredEvent> = (0..6).map(|i| ev(i, "a", 1, i as u32)).collect();
        events[1].ts_ms = contract::MIN_TS_MS - 1;
        events[4].sensor = "t\0".into();
        events.push(ev(6, &"x".repeat(33), 1, 0));
        for enc in [Encoding::Json, Encoding::Binary] {
            let out = batches(
                "gw",
                &events,
                &BatchLimits {
                    encoding: enc,
                    ..limits(100, 1 << 20)
                },
            );
            let summary: Vec<(usize, bool)> = out
                .iter()
                .map(|o| (o.events, o.refused.is_some()))
                .collect();
            assert_eq!(summary, [(2, true), (4, false), (1, true)], "{enc:?}");
            let reason = out[0].refused.as_deref().unwrap();
            assert!(
                reason.contains("2 stored event(s), e.g. seq 1: ts_ms"),
                "{reason}"
            );
            assert!(out[2]
                .refused
                .as_deref()
                .unwrap()
                .contains("device is 33 bytes"));
            let ok = EventBatch::decode(&out[1].payload).unwrap();
            assert_eq!(
                ok.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                [0, 2, 3, 5]
            );
        }
    }
}

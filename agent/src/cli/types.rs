//! The local API's JSON shapes as the CLI reads them (`agent/API.md`), independent of the server's
//! own types.
//!
//! Tolerant by design: unknown fields are ignored, and every field the CLI can do without has a
//! default (missing or `null` reads as empty), so a newer agent does not break an older `ferry`.
//! JSON output does not go through these types: it passes the agent's objects on unchanged.
use serde::{Deserialize, Deserializer};

/// `null` reads as the type's default (serde's `default` only covers a missing field).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A reading's value: a JSON number, or `"NaN"`, `"Infinity"`, `"-Infinity"` for the non-finite
/// ones (D1); `null` or missing reads as `None`. Any other string is an error naming it.
fn reading<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Text(String),
    }
    Ok(match Option::<Wire>::deserialize(d)? {
        None => None,
        Some(Wire::Number(v)) => Some(v),
        Some(Wire::Text(t)) => Some(match t.as_str() {
            "NaN" => f64::NAN,
            "Infinity" => f64::INFINITY,
            "-Infinity" => f64::NEG_INFINITY,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "value {t:?} is neither a number nor \"NaN\", \"Infinity\" or \"-Infinity\""
                )))
            }
        }),
    })
}

/// The body of every 4xx answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiErrorBody {
    /// Kind: `bad_request`, `unauthorized`, `not_found`, `method_not_allowed`, `too_many_streams`,
    /// `unavailable`, `internal`.
    #[serde(default, deserialize_with = "null_default")]
    pub error: String,
    /// What is wrong, naming the parameter.
    #[serde(default, deserialize_with = "null_default")]
    pub detail: String,
}

/// `GET /api/v1/devices`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeviceList {
    /// Every device.
    #[serde(default, deserialize_with = "null_default")]
    pub devices: Vec<Device>,
}

/// One device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Device {
    /// Device id.
    #[serde(deserialize_with = "null_default")]
    pub id: String,
    /// Connected now.
    #[serde(deserialize_with = "null_default")]
    pub online: bool,
    /// Last frame (RFC 3339 UTC).
    pub last_seen: Option<String>,
    /// Last frame, Unix ms.
    pub last_seen_ms: Option<i64>,
    /// Firmware version.
    #[serde(deserialize_with = "null_default")]
    pub firmware: String,
    /// Current boot id.
    pub boot_id: Option<u64>,
    /// Boots seen.
    pub boots: Option<u64>,
    /// Link it is (or was last) on.
    #[serde(deserialize_with = "null_default")]
    pub link: String,
    /// Sensor channels.
    #[serde(deserialize_with = "null_default")]
    pub sensors: Vec<SensorInfo>,
    /// Counters.
    #[serde(deserialize_with = "null_default")]
    pub counters: DeviceCounters,
    /// Forwarding position.
    #[serde(deserialize_with = "null_default")]
    pub forwarding: Forwarding,
}

/// One sensor channel of a device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SensorInfo {
    /// Channel index.
    pub index: Option<u32>,
    /// Name.
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    /// Unit.
    #[serde(deserialize_with = "null_default")]
    pub unit: String,
    /// Sampling interval.
    pub interval_ms: Option<u64>,
}

/// A device's counters.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeviceCounters {
    /// Events ever stored.
    pub events: Option<u64>,
    /// Samples the device dropped from its ring.
    pub dropped_by_device: Option<u64>,
    /// Samples held unacked at the device.
    pub ring_depth: Option<u64>,
    /// Read errors on its link.
    pub read_errors: Option<u64>,
}

/// A device's forwarding position.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Forwarding {
    /// Events not yet forwarded.
    pub unforwarded: Option<u64>,
    /// The oldest of them (RFC 3339), `None` when nothing waits.
    pub oldest_unforwarded: Option<String>,
    /// Its age.
    pub lag_ms: Option<i64>,
}

/// `GET /api/v1/devices/{id}/latest` (and one entry of `GET /api/v1/latest`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DeviceLatest {
    /// Device id.
    #[serde(deserialize_with = "null_default")]
    pub device: String,
    /// One entry per sensor.
    #[serde(deserialize_with = "null_default")]
    pub sensors: Vec<LatestValue>,
}

/// `GET /api/v1/latest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AllLatest {
    /// Every device.
    #[serde(deserialize_with = "null_default")]
    pub devices: Vec<DeviceLatest>,
}

/// The latest value of one sensor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LatestValue {
    /// Sensor name.
    #[serde(deserialize_with = "null_default")]
    pub sensor: String,
    /// Unit.
    #[serde(deserialize_with = "null_default")]
    pub unit: String,
    /// Value (non-finite ones arrive as strings, D1).
    #[serde(deserialize_with = "reading")]
    pub value: Option<f64>,
    /// Time (RFC 3339).
    pub ts: Option<String>,
    /// Time, Unix ms.
    pub ts_ms: Option<i64>,
    /// The event it came from.
    pub event_id: Option<u64>,
}

/// One stored event (`GET /api/v1/events`, and the `data` of a stream message).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Store id (increasing in store order; the stream's message id).
    pub id: Option<u64>,
    /// Device id.
    #[serde(deserialize_with = "null_default")]
    pub device: String,
    /// Boot id.
    pub boot_id: Option<u64>,
    /// Sequence number within the boot.
    pub seq: Option<u64>,
    /// Sensor name.
    #[serde(deserialize_with = "null_default")]
    pub sensor: String,
    /// Unit.
    #[serde(deserialize_with = "null_default")]
    pub unit: String,
    /// Value (non-finite ones arrive as strings, D1).
    #[serde(deserialize_with = "reading")]
    pub value: Option<f64>,
    /// Time (RFC 3339).
    pub ts: Option<String>,
    /// Time, Unix ms.
    pub ts_ms: Option<i64>,
}

/// `GET /api/v1/events`: one page. Events stay raw JSON so `--format json` passes them on as is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventsPage {
    /// The page's events.
    #[serde(deserialize_with = "null_default")]
    pub events: Vec<serde_json::Value>,
    /// Set when more rows may follow.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/series`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Series {
    /// Device id.
    #[serde(deserialize_with = "null_default")]
    pub device: String,
    /// Sensor name.
    #[serde(deserialize_with = "null_default")]
    pub sensor: String,
    /// Unit.
    #[serde(deserialize_with = "null_default")]
    pub unit: String,
    /// Aggregate.
    #[serde(deserialize_with = "null_default")]
    pub agg: String,
    /// Bucket width.
    pub bucket_ms: Option<u64>,
    /// Start of the range (RFC 3339).
    pub since: Option<String>,
    /// End of the range (RFC 3339).
    pub until: Option<String>,
    /// Non-empty buckets in time order.
    #[serde(deserialize_with = "null_default")]
    pub points: Vec<SeriesPoint>,
}

/// One bucket.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SeriesPoint {
    /// Bucket start (RFC 3339).
    pub ts: Option<String>,
    /// Bucket start, Unix ms.
    pub ts_ms: Option<i64>,
    /// The aggregate (non-finite ones arrive as strings, D1).
    #[serde(deserialize_with = "reading")]
    pub value: Option<f64>,
    /// Events in the bucket.
    pub count: Option<u64>,
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Gateway id.
    #[serde(deserialize_with = "null_default")]
    pub gateway: String,
    /// Agent version.
    #[serde(deserialize_with = "null_default")]
    pub version: String,
    /// Seconds since start.
    pub uptime_s: Option<f64>,
    /// Device intake.
    #[serde(deserialize_with = "null_default")]
    pub ingest: StatusIngest,
    /// Everything dropped.
    #[serde(deserialize_with = "null_default")]
    pub drops: StatusDrops,
    /// Forwarding.
    #[serde(deserialize_with = "null_default")]
    pub uplink: StatusUplink,
    /// Store health.
    #[serde(deserialize_with = "null_default")]
    pub store: StatusStore,
    /// Disk use.
    #[serde(deserialize_with = "null_default")]
    pub disk: StatusDisk,
}

/// `status.ingest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusIngest {
    /// Committed samples per second (last 5 s).
    pub samples_per_s: Option<f64>,
    /// Samples committed.
    pub samples_committed: Option<u64>,
    /// Samples received.
    pub samples_received: Option<u64>,
    /// Duplicates discarded.
    pub duplicates: Option<u64>,
    /// Acks sent.
    pub acks_sent: Option<u64>,
    /// Store commits.
    pub commits: Option<u64>,
    /// Device links open.
    pub links_open: Option<u64>,
    /// Devices known.
    pub devices: Option<u64>,
    /// Devices online.
    pub devices_online: Option<u64>,
    /// Frames rejected.
    pub frames_rejected: Option<u64>,
    /// Byte runs quarantined.
    pub quarantined: Option<u64>,
}

/// `status.drops`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusDrops {
    /// Dropped by devices (full rings).
    pub by_device: Option<u64>,
    /// Refused by the store.
    pub refused: Option<u64>,
    /// Dropped oldest-first at the size limit.
    pub dropped_oldest: Option<u64>,
    /// Pruned after forwarding.
    pub pruned_forwarded: Option<u64>,
}

/// `status.uplink`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusUplink {
    /// `connected`, `disconnected` or `off`.
    #[serde(deserialize_with = "null_default")]
    pub state: String,
    /// Forwarded events per second.
    pub events_per_s: Option<f64>,
    /// Events acked by the broker.
    pub events_acked: Option<u64>,
    /// Events waiting.
    pub backlog_events: Option<u64>,
    /// The oldest waiting (RFC 3339).
    pub oldest_unforwarded: Option<String>,
    /// Its age.
    pub oldest_unforwarded_age_s: Option<f64>,
}

/// `status.store`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusStore {
    /// The writer accepts samples.
    pub writable: Option<bool>,
    /// The disk is full.
    pub disk_full: Option<bool>,
    /// Intake is slowed.
    pub backpressure: Option<bool>,
}

/// `status.disk`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusDisk {
    /// Database size.
    pub db_used_bytes: Option<u64>,
    /// Configured limit.
    pub max_db_size: Option<u64>,
    /// Free bytes on the file system.
    pub fs_free_bytes: Option<u64>,
    /// Bytes the store can still grow.
    pub headroom_bytes: Option<u64>,
    /// Bytes written to storage since the agent started.
    pub written_bytes: Option<u64>,
    /// A day at the recent write rate.
    pub written_bytes_per_day: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_device_and_ignores_unknown_fields() {
        let d: Device = serde_json::from_str(
            r#"{"id": "sim-0001", "online": true,
                "last_seen": "2026-11-24T10:00:00.123Z", "last_seen_ms": 1764000000123,
                "firmware": "ferry-sim 0.1.0", "boot_id": 305419896, "boots": 2,
                "link": "tcp:127.0.0.1:50514",
                "sensors": [{"index": 0, "name": "temperature", "unit": "C", "interval_ms": 100}],
                "counters": {"events": 123456, "dropped_by_device": 0, "ring_depth": 3, "read_errors": 0},
                "forwarding": {"unforwarded": 12, "oldest_unforwarded": null, "lag_ms": null},
                "new_field": {"x": 1}}"#,
        )
        .unwrap();
        assert_eq!(d.id, "sim-0001");
        assert_eq!(d.boot_id, Some(0x1234_5678));
        assert_eq!(d.counters.events, Some(123_456));
        assert_eq!(d.forwarding.lag_ms, None);
        assert_eq!(d.sensors[0].name, "temperature");
    }

    #[test]
    fn nulls_and_missing_fields_read_as_empty() {
        let d: Device =
            serde_json::from_str(r#"{"id": "a", "firmware": null, "counters": null}"#).unwrap();
        assert_eq!(d.firmware, "");
        assert_eq!(d.counters.events, None);
        let p: EventsPage = serde_json::from_str(r#"{"events": [], "next_cursor": null}"#).unwrap();
        assert!(p.events.is_empty() && p.next_cursor.is_none());
        let e: ApiErrorBody = serde_json::from_str(r#"{"error": "bad_request"}"#).unwrap();
        assert_eq!(e.detail, "");
    }
}

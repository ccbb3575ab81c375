//! The JSON documents the API answers with (their schemas go into the OpenAPI document).
//!
//! A reading's `value` (events, latest values, series points, SSE data) is a JSON number when
//! finite and one of the strings `"NaN"`, `"Infinity"`, `"-Infinity"` otherwise (D1, protobuf's
//! JSON mapping): JSON has no non-finite numbers, and `null` would make the three
//! indistinguishable ([`value`]).

use serde::Serialize;
use utoipa::ToSchema;

use super::time::format_ms;
use crate::store::query::{DeviceInfo, EventRow, LatestValue};

/// Readings in JSON (D1).
pub mod value {
    use serde::Serializer;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
    use utoipa::openapi::{KnownFormat, RefOr};

    /// The JSON strings of the non-finite values.
    pub const NON_FINITE: [&str; 3] = ["NaN", "Infinity", "-Infinity"];

    /// `v` as JSON: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match non_finite(*v) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_f64(*v),
        }
    }

    /// The string for a non-finite value; `None` for a finite one.
    pub fn non_finite(v: f64) -> Option<&'static str> {
        if v.is_nan() {
            Some(NON_FINITE[0])
        } else if v == f64::INFINITY {
            Some(NON_FINITE[1])
        } else if v == f64::NEG_INFINITY {
            Some(NON_FINITE[2])
        } else {
            None
        }
    }

    /// The schema: a number, or one of the three strings.
    pub fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(NON_FINITE)),
            )
            .description(Some(
                "A number when finite; \"NaN\", \"Infinity\" or \"-Infinity\" otherwise.",
            ))
            .into()
    }
}

/// A device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceDoc {
    /// Device id.
    pub id: String,
    /// Online now (a frame within `devices.offline_after`, link open).
    pub online: bool,
    /// Last frame, RFC 3339.
    pub last_seen: String,
    /// Last frame, Unix ms.
    pub last_seen_ms: i64,
    /// Firmware version from the Hello.
    pub firmware: String,
    /// Current boot id.
    pub boot_id: Option<u32>,
    /// Boots seen.
    pub boots: i64,
    /// The link it is (or was last) on.
    pub link: String,
    /// Sensors from the Hello.
    pub sensors: Vec<SensorDoc>,
    /// Counters.
    pub counters: CountersDoc,
    /// Forwarding to the cloud; `null` when forwarding is off.
    pub forwarding: Option<ForwardingDoc>,
}

/// A sensor.
#[derive(Debug, Serialize, ToSchema)]
pub struct SensorDoc {
    /// Index in the Hello (used by commands).
    pub index: u8,
    /// Name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Sampling interval.
    pub interval_ms: i64,
}

/// A device's counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountersDoc {
    /// Events ever stored (retention does not lower it).
    pub events: i64,
    /// Samples the device dropped from its full ring (this boot).
    pub dropped_by_device: i64,
    /// Samples waiting in the device's ring (last heartbeat).
    pub ring_depth: i64,
    /// Sensor read errors (this boot).
    pub read_errors: i64,
}

/// How far the cloud is behind for a device.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForwardingDoc {
    /// Events not yet acked by the broker; `null` while the whole backlog is too large to count
    /// per device (see `/api/v1/status`).
    pub unforwarded: Option<i64>,
    /// Time of the oldest of them.
    pub oldest_unforwarded: Option<String>,
    /// Now minus that time.
    pub lag_ms: Option<i64>,
}

impl DeviceDoc {
    /// From a store row.
    pub fn new(d: DeviceInfo, forwarding_on: bool, now_ms: i64) -> DeviceDoc {
        let forwarding = forwarding_on.then(|| match d.unforwarded {
            Some((n, oldest)) => ForwardingDoc {
                unforwarded: Some(n),
                oldest_unforwarded: oldest.map(format_ms),
                lag_ms: oldest.map(|t| (now_ms - t).max(0)),
            },
            None => ForwardingDoc {
                unforwarded: None,
                oldest_unforwarded: None,
                lag_ms: None,
            },
        });
        DeviceDoc {
            last_seen: format_ms(d.last_seen_ms),
            last_seen_ms: d.last_seen_ms,
            online: d.online,
            firmware: d.firmware,
            boot_id: d.boot_id,
            boots: d.boots,
            link: d.link,
            sensors: d
                .sensors
                .into_iter()
                .map(|s| SensorDoc {
                    index: s.index,
                    name: s.name,
                    unit: s.unit,
                    interval_ms: s.interval_ms,
                })
                .collect(),
            counters: CountersDoc {
                events: d.events,
                dropped_by_device: d.dropped_by_device,
                ring_depth: d.ring_depth,
                read_errors: d.read_errors,
            },
            forwarding,
            id: d.id,
        }
    }
}

/// `GET /api/v1/devices`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevicesDoc {
    /// Devices, by id.
    pub devices: Vec<DeviceDoc>,
}

/// The newest value of a sensor.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatestValueDoc {
    /// Sensor name.
    pub sensor: String,
    /// Unit.
    pub unit: String,
    /// Value: a number, or "NaN", "Infinity", "-Infinity".
    #[serde(serialize_with = "value::serialize")]
    #[schema(schema_with = value::schema)]
    pub value: f64,
    /// RFC 3339.
    pub ts: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// The event's id.
    pub event_id: i64,
}

/// Latest values of one device.
#[derive(Debug, Serialize, ToSchema)]
pub struct LatestDoc {
    /// Device id.
    pub device: String,
    /// One entry per sensor that reported.
    pub sensors: Vec<LatestValueDoc>,
}

impl LatestDoc {
    /// From store rows.
    pub fn new(device: String, values: Vec<LatestValue>) -> LatestDoc {
        LatestDoc {
            device,
            sensors: values
                .into_iter()
                .map(|v| LatestValueDoc {
                    ts: format_ms(v.ts_ms),
                    sensor: v.sensor,
                    unit: v.unit,
                    value: v.value,
                    ts_ms: v.ts_ms,
                    event_id: v.event_id,
                })
                .collect(),
        }
    }
}

/// `GET /api/v1/latest`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllLatestDoc {
    /// Per device, by id.
    pub devices: Vec<LatestDoc>,
}

/// A stored event (also the `data` of an SSE `sample` message).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDoc {
    /// Store order id (the SSE message id).
    pub id: i64,
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot_id: u32,
    /// Sequence number within the boot.
    pub seq: u32,
    /// Sensor name.
    pub sensor: String,
    /// Unit.
    pub unit: String,
    /// Value: a number, or "NaN", "Infinity", "-Infinity".
    #[serde(serialize_with = "value::serialize")]
    #[schema(schema_with = value::schema)]
    pub value: f64,
    /// RFC 3339.
    pub ts: String,
    /// Unix ms.
    pub ts_ms: i64,
}

impl From<EventRow> for EventDoc {
    fn from(e: EventRow) -> Self {
        EventDoc {
            ts: format_ms(e.ts_ms),
            id: e.id,
            device: e.device,
            boot_id: e.boot_id,
            seq: e.seq,
            sensor: e.sensor,
            unit: e.unit,
            value: e.value,
            ts_ms: e.ts_ms,
        }
    }
}

/// `GET /api/v1/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The page.
    pub events: Vec<EventDoc>,
    /// Pass as `cursor` (same filters) for the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// A series point.
#[derive(Debug, Serialize, ToSchema)]
pub struct PointDoc {
    /// Bucket start, RFC 3339.
    pub ts: String,
    /// Bucket start, Unix ms.
    pub ts_ms: i64,
    /// The aggregate: a number, or "NaN", "Infinity", "-Infinity".
    #[serde(serialize_with = "value::serialize")]
    #[schema(schema_with = value::schema)]
    pub value: f64,
    /// Events in the bucket.
    pub count: i64,
}

/// `GET /api/v1/series`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesDoc {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Unit.
    pub unit: String,
    /// `avg`, `min`, `max`, `count` or `last`.
    pub agg: String,
    /// Bucket width.
    pub bucket_ms: i64,
    /// Start (inclusive), RFC 3339.
    pub since: String,
    /// End (exclusive), RFC 3339.
    pub until: String,
    /// Non-empty buckets in time order.
    pub points: Vec<PointDoc>,
}

/// `POST /api/v1/devices/{id}/commands` answer: the command is stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAccepted {
    /// Device id.
    pub device: String,
    /// The request id.
    pub id: String,
    /// `accepted`.
    pub status: String,
    /// Where to read its outcome.
    pub location: String,
}

/// A command's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandStateDoc {
    /// Device id.
    pub device: String,
    /// The request id.
    pub id: String,
    /// `pending` or `done`.
    pub status: String,
    /// The outcome (as published on `.../commands/result`) once done.
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<serde_json::Value>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDoc {
    /// `ok`.
    pub status: String,
}

/// The store's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreStateDoc {
    /// The writer runs and accepts samples.
    pub writable: bool,
    /// The disk refused a write recently.
    pub disk_full: bool,
    /// `max_db_size` reached with `when_full = "backpressure"`.
    pub backpressure: bool,
}

/// The uplink's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct UplinkDoc {
    /// `connected`, `disconnected` or `off`.
    pub state: String,
    /// Events acked by the broker per second (last 5 s).
    pub events_per_s: f64,
    /// Events acked by the broker since start.
    pub events_acked: u64,
    /// Events not yet forwarded (estimate).
    pub backlog_events: i64,
    /// Time of the oldest unforwarded event.
    pub oldest_unforwarded: Option<String>,
    /// Its age in seconds.
    pub oldest_unforwarded_age_s: Option<f64>,
}

/// Disk use.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiskDoc {
    /// Bytes the database uses.
    pub db_used_bytes: u64,
    /// `store.max_db_size`; `null` = no cap.
    pub max_db_size: Option<u64>,
    /// Free bytes on the database's filesystem.
    pub fs_free_bytes: Option<u64>,
    /// Room left before the cap or the filesystem is full, whichever is nearer.
    pub headroom_bytes: Option<u64>,
    /// Bytes the agent has written to storage since it started (the kernel's `write_bytes` for
    /// the process: database, WAL and sample log); `null` where the system does not count them.
    pub written_bytes: Option<u64>,
    /// What a day at the write rate of the last 5 minutes (less just after start) would write:
    /// the figure to hold against an SD card's endurance; `null` until two samples a second apart.
    pub written_bytes_per_day: Option<f64>,
}

/// Whether the API can read the store.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadsDoc {
    /// A read connection was free within 2 s and answered a query.
    pub ok: bool,
    /// Read connections in the pool.
    pub connections: u32,
    /// Of those, in use by other requests when `/readyz` asked.
    pub in_use: u32,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyDoc {
    /// The store accepts samples and the API can read it.
    pub ready: bool,
    /// Why not ready, one sentence each (`store: ...`, `reads: ...`); empty when ready.
    pub reasons: Vec<String>,
    /// Reads.
    pub reads: ReadsDoc,
    /// Store.
    pub store: StoreStateDoc,
    /// Uplink.
    pub uplink: UplinkDoc,
    /// Disk.
    pub disk: DiskDoc,
}

/// Ingest figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct IngestDoc {
    /// Samples committed per second (last 5 s).
    pub samples_per_s: f64,
    /// Samples committed since start.
    pub samples_committed: u64,
    /// Samples received since start (before dedup).
    pub samples_received: u64,
    /// Retransmitted samples already stored.
    pub duplicates: u64,
    /// Acks sent to devices.
    pub acks_sent: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Device links open.
    pub links_open: u64,
    /// Devices known.
    pub devices: u64,
    /// Devices online.
    pub devices_online: u64,
    /// Frames rejected (all reasons).
    pub frames_rejected: u64,
    /// Rows written to quarantine.
    pub quarantined: u64,
}

/// Everything dropped, by where.
#[derive(Debug, Serialize, ToSchema)]
pub struct DropsDoc {
    /// Samples devices dropped from their full rings.
    pub by_device: u64,
    /// Samples refused (full disk or backpressure; devices keep them).
    pub refused: u64,
    /// Unforwarded events deleted by `when_full = "drop_oldest"`.
    pub dropped_oldest: u64,
    /// Forwarded events deleted by retention.
    pub pruned_forwarded: u64,
}

/// `GET /api/v1/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusDoc {
    /// Gateway id.
    pub gateway: String,
    /// Agent version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// Ingest.
    pub ingest: IngestDoc,
    /// Drops.
    pub drops: DropsDoc,
    /// Uplink.
    pub uplink: UplinkDoc,
    /// Store.
    pub store: StoreStateDoc,
    /// Disk.
    pub disk: DiskDoc,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_are_strings_and_finite_ones_numbers() {
        let doc = |v: f64| {
            serde_json::to_value(PointDoc {
                ts: String::new(),
                ts_ms: 0,
                value: v,
                count: 1,
            })
            .unwrap()["value"]
                .clone()
        };
        assert_eq!(doc(f64::NAN), "NaN");
        assert_eq!(doc(-f64::NAN), "NaN");
        assert_eq!(doc(f64::INFINITY), "Infinity");
        assert_eq!(doc(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(doc(21.5), serde_json::json!(21.5));
        assert_eq!(doc(f64::MAX), serde_json::json!(f64::MAX));
        // f32 readings widened to f64 keep their exact value in the text.
        let x = f64::from(15.066_667_f32);
        assert_eq!(doc(x).as_f64().unwrap().to_bits(), x.to_bits());
    }
}

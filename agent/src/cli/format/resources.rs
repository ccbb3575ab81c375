//! Each resource the CLI prints, as one list of fields from which its table and its CSV derive.
//!
//! Invariants: a field in both formats sits at the same place among each format's columns; the
//! CSV shows every field of a row as the agent sent it (RFC 3339 and Unix ms for times, decimal
//! ids, empty for absent), the table what a person needs (UTC times, ages, `-` for absent).

use serde_json::Value;

use super::cells::{clean, fmt_age, fmt_bytes, fmt_value, opt, or_dash, time_cell};
use super::Align::{Left, Right};
use super::{
    csv_head, csv_of, csv_record, csv_row, json_line, table_head, table_of, table_row, Field,
    Format, StreamTable,
};
use crate::cli::types::{Device, DeviceLatest, Event, LatestValue, Series, SeriesPoint, Status};

// ---------------------------------------------------------------------------------------------
// Devices

type D = Field<Device>;

/// `ferry devices`: every CSV column in order; the table shows nine of them.
const DEVICE: [D; 16] = [
    D::csv("id", |d| d.id.clone()).shown_as_is("device", Left),
    D::csv("online", |d| d.online.to_string()).and_table("state", Left, |d| {
        if d.online { "online" } else { "offline" }.into()
    }),
    D::csv("last_seen", |d| d.last_seen.clone().unwrap_or_default()).and_table(
        "last seen (UTC)",
        Left,
        |d| time_cell(d.last_seen_ms, d.last_seen.as_deref(), false),
    ),
    D::csv("last_seen_ms", |d| opt(d.last_seen_ms)),
    D::csv("firmware", |d| d.firmware.clone()).shown_or_dash("firmware", Left),
    D::csv("boot_id", |d| opt(d.boot_id)).and_table("boot", Left, |d| {
        d.boot_id
            .map(|b| format!("{b:08x}"))
            .unwrap_or_else(|| "-".into())
    }),
    D::csv("boots", |d| opt(d.boots)).shown_or_dash("boots", Right),
    D::csv("events", |d| opt(d.counters.events)).shown_or_dash("events", Right),
    D::csv("dropped_by_device", |d| opt(d.counters.dropped_by_device)),
    D::csv("ring_depth", |d| opt(d.counters.ring_depth)),
    D::csv("read_errors", |d| opt(d.counters.read_errors)),
    D::csv("unforwarded", |d| opt(d.forwarding.unforwarded)).and_table(
        "unforwarded/lag",
        Right,
        backlog_cell,
    ),
    D::csv("oldest_unforwarded", |d| {
        d.forwarding.oldest_unforwarded.clone().unwrap_or_default()
    }),
    D::csv("lag_ms", |d| opt(d.forwarding.lag_ms)),
    D::csv("link", |d| d.link.clone()).shown_or_dash("link", Left),
    D::csv("sensors", |d| {
        let names: Vec<&str> = d.sensors.iter().map(|s| s.name.as_str()).collect();
        names.join(";")
    }),
];

fn backlog_cell(d: &Device) -> String {
    match (d.forwarding.unforwarded, d.forwarding.lag_ms) {
        (None, _) => "-".into(),
        (Some(0), _) | (Some(_), None) => opt(d.forwarding.unforwarded),
        (Some(n), Some(lag)) => format!("{n} / {}", fmt_age(lag)),
    }
}

/// `ferry devices` as a table.
pub fn devices_table(devices: &[Device]) -> String {
    table_of(&DEVICE, devices, str::to_owned)
}

/// `ferry devices --format csv`.
pub fn devices_csv(devices: &[Device]) -> String {
    csv_of(&DEVICE, devices)
}

// ---------------------------------------------------------------------------------------------
// Latest values

/// One sensor's latest value, with its device and the time its age is measured at.
struct LatestRow<'a> {
    device: &'a str,
    v: &'a LatestValue,
    now_ms: i64,
}

type L<'a> = Field<LatestRow<'a>>;

/// `ferry latest`: the device first (the table leaves it out for one device), then the value.
fn latest_fields<'a>() -> [L<'a>; 8] {
    [
        L::csv("device", |r| r.device.to_owned()).shown_as_is("device", Left),
        L::csv("sensor", |r| r.v.sensor.clone()).shown_as_is("sensor", Left),
        L::csv("value", |r| fmt_value(r.v.value)).shown_or_dash("value", Right),
        L::csv("unit", |r| r.v.unit.clone()).shown_as_is("unit", Left),
        L::csv("ts", |r| r.v.ts.clone().unwrap_or_default()).and_table("time (UTC)", Left, |r| {
            time_cell(r.v.ts_ms, r.v.ts.as_deref(), true)
        }),
        L::table("age", Right, |r| {
            r.v.ts_ms
                .map(|t| fmt_age(r.now_ms - t))
                .unwrap_or_else(|| "-".into())
        }),
        L::csv("ts_ms", |r| opt(r.v.ts_ms)),
        L::csv("event_id", |r| opt(r.v.event_id)),
    ]
}

fn latest_rows(latest: &[DeviceLatest], now_ms: i64) -> Vec<LatestRow<'_>> {
    latest
        .iter()
        .flat_map(|d| {
            d.sensors.iter().map(move |v| LatestRow {
                device: &d.device,
                v,
                now_ms,
            })
        })
        .collect()
}

/// `ferry latest` as a table; with `with_device`, a first column names the device (all devices).
pub fn latest_table(latest: &[DeviceLatest], with_device: bool, now_ms: i64) -> String {
    let fields = latest_fields();
    // The device is the first field.
    let shown = if with_device {
        &fields[..]
    } else {
        &fields[1..]
    };
    table_of(shown, &latest_rows(latest, now_ms), str::to_owned)
}

/// `ferry latest --format csv`.
pub fn latest_csv(latest: &[DeviceLatest]) -> String {
    csv_of(&latest_fields(), &latest_rows(latest, 0))
}

// ---------------------------------------------------------------------------------------------
// Events (streamed: query events, tail)

type E = Field<Event>;

/// An event: the table puts its time second, the CSV its two time columns last.
const EVENT: [E; 10] = [
    E::csv("id", |e| opt(e.id))
        .shown_as_is("id", Right)
        .min_width(8),
    E::table("time (UTC)", Left, |e| {
        time_cell(e.ts_ms, e.ts.as_deref(), true)
    })
    .min_width(23),
    E::csv("device", |e| e.device.clone())
        .shown_as_is("device", Left)
        .min_width(12),
    E::csv("boot_id", |e| opt(e.boot_id)),
    E::csv("seq", |e| opt(e.seq)),
    E::csv("sensor", |e| e.sensor.clone())
        .shown_as_is("sensor", Left)
        .min_width(12),
    E::csv("value", |e| fmt_value(e.value))
        .shown_or_dash("value", Right)
        .min_width(10),
    E::csv("unit", |e| e.unit.clone()).shown_as_is("unit", Left),
    E::csv("ts", |e| e.ts.clone().unwrap_or_default()),
    E::csv("ts_ms", |e| opt(e.ts_ms)),
];

/// Writes a stream of events in one format, item by item.
#[derive(Debug, Clone)]
pub struct EventWriter {
    format: Format,
    table: StreamTable,
}

impl EventWriter {
    /// A writer for `format`.
    pub fn new(format: Format) -> EventWriter {
        EventWriter {
            format,
            table: StreamTable::with_widths(&table_head(&EVENT)),
        }
    }

    /// What goes before the first event (a header row; nothing for JSON Lines).
    pub fn header(&self) -> String {
        match self.format {
            Format::Table => self.table.header(),
            Format::Csv => csv_record(&csv_head(&EVENT)),
            Format::Json => String::new(),
        }
    }

    /// One event: `raw` is the agent's object, `e` the same read as an [`Event`].
    pub fn event(&mut self, raw: &Value, e: &Event) -> String {
        match self.format {
            Format::Json => json_line(raw),
            Format::Csv => csv_record(&csv_row(&EVENT, e)),
            Format::Table => self.table.row(&table_row(&EVENT, e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Series

/// One bucket of a series.
struct SeriesRow<'a> {
    s: &'a Series,
    p: &'a SeriesPoint,
}

type S<'a> = Field<SeriesRow<'a>>;

/// `ferry query series`: the series' identity on every CSV row, then the bucket.
fn series_fields<'a>() -> [S<'a>; 8] {
    [
        S::csv("device", |r| r.s.device.clone()),
        S::csv("sensor", |r| r.s.sensor.clone()),
        S::csv("agg", |r| r.s.agg.clone()),
        S::csv("unit", |r| r.s.unit.clone()),
        S::csv("ts", |r| r.p.ts.clone().unwrap_or_default()).and_table(
            "bucket start (UTC)",
            Left,
            |r| time_cell(r.p.ts_ms, r.p.ts.as_deref(), false),
        ),
        S::csv("ts_ms", |r| opt(r.p.ts_ms)),
        // The table names this column after the aggregate (see `series_table`).
        S::csv("value", |r| fmt_value(r.p.value)).shown_or_dash("value", Right),
        S::csv("count", |r| opt(r.p.count)).shown_or_dash("count", Right),
    ]
}

fn series_rows(s: &Series) -> Vec<SeriesRow<'_>> {
    s.points.iter().map(|p| SeriesRow { s, p }).collect()
}

/// `ferry query series` as a table.
pub fn series_table(s: &Series) -> String {
    let value_col = match (s.agg.as_str(), s.unit.as_str()) {
        ("", _) => "value".to_owned(),
        ("count", _) | (_, "") => s.agg.clone(),
        (agg, unit) => format!("{agg} ({unit})"),
    };
    table_of(&series_fields(), &series_rows(s), |h| {
        if h == "value" {
            value_col.clone()
        } else {
            h.to_owned()
        }
    })
}

/// `ferry query series --format csv`.
pub fn series_csv(s: &Series) -> String {
    csv_of(&series_fields(), &series_rows(s))
}

// ---------------------------------------------------------------------------------------------
// Status (a summary for people, every field for programs: no shared row)

fn count(v: Option<u64>) -> String {
    or_dash(opt(v))
}

fn rate(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}/s")).unwrap_or_else(|| "-".into())
}

fn bytes(v: Option<u64>) -> String {
    v.map(fmt_bytes).unwrap_or_else(|| "-".into())
}

fn flag(v: Option<bool>, yes: &str, no: &str) -> String {
    match v {
        Some(true) => yes.into(),
        Some(false) => no.into(),
        None => "?".into(),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| fmt_age((s * 1000.0).round() as i64))
        .unwrap_or_else(|| "-".into())
}

/// `ferry status` for people: one line per area, the figure that matters first.
pub fn status_table(s: &Status) -> String {
    let i = &s.ingest;
    let u = &s.uplink;
    let d = &s.disk;
    let dr = &s.drops;
    let st = &s.store;
    let backlog = match (u.backlog_events, u.oldest_unforwarded_age_s) {
        (Some(n), Some(age)) if n > 0 => format!("{n} events (oldest {})", secs(Some(age))),
        (n, _) => format!("{} events", count(n)),
    };
    let store_state = if st.writable == Some(false) {
        "NOT WRITABLE"
    } else if st.disk_full == Some(true) {
        "DISK FULL"
    } else if st.backpressure == Some(true) {
        "backpressure"
    } else if st.writable == Some(true) {
        "ok"
    } else {
        "?"
    };
    let limit = match d.max_db_size {
        Some(m) => format!(" of {} max", fmt_bytes(m)),
        None => " (no size limit)".into(),
    };
    let lines: Vec<(&str, String)> = vec![
        (
            "gateway",
            format!(
                "{} (ferry {}, up {})",
                or_dash(clean(&s.gateway)),
                or_dash(clean(&s.version)),
                secs(s.uptime_s)
            ),
        ),
        (
            "ingest",
            format!(
                "{}; {} committed, {} received, {} duplicates, {} commits",
                rate(i.samples_per_s),
                count(i.samples_committed),
                count(i.samples_received),
                count(i.duplicates),
                count(i.commits)
            ),
        ),
        (
            "devices",
            format!(
                "{} online of {}; {} links open",
                count(i.devices_online),
                count(i.devices),
                count(i.links_open)
            ),
        ),
        (
            "uplink",
            format!(
                "{}; {} forwarded, {} acked",
                or_dash(clean(&u.state)),
                rate(u.events_per_s),
                count(u.events_acked)
            ),
        ),
        ("backlog", backlog),
        (
            "store",
            format!(
                "{store_state} (writable {}, disk full {}, backpressure {})",
                flag(st.writable, "yes", "no"),
                flag(st.disk_full, "yes", "no"),
                flag(st.backpressure, "yes", "no")
            ),
        ),
        (
            "disk",
            format!(
                "headroom {}; db {}{limit}; fs free {}",
                bytes(d.headroom_bytes),
                bytes(d.db_used_bytes),
                bytes(d.fs_free_bytes)
            ),
        ),
        (
            "writes",
            format!(
                "{}/day at the last 5 minutes' rate; {} since start",
                bytes(d.written_bytes_per_day.map(|b| b.max(0.0).round() as u64)),
                bytes(d.written_bytes)
            ),
        ),
        (
            "drops",
            format!(
                "by device {}, refused {}, dropped oldest {}, pruned forwarded {}",
                count(dr.by_device),
                count(dr.refused),
                count(dr.dropped_oldest),
                count(dr.pruned_forwarded)
            ),
        ),
        (
            "rejected",
            format!(
                "{} frames, {} quarantined",
                count(i.frames_rejected),
                count(i.quarantined)
            ),
        ),
    ];
    lines
        .into_iter()
        .map(|(k, v)| format!("{k:<9} {v}\n"))
        .collect()
}

/// Every leaf of a JSON object as `(dotted.key, text)`, keys sorted; arrays index by
/// position (`a.0.b`), `null` is empty, strings are unquoted.
pub fn flatten(v: &Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(&key(k), v, out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&key(&i.to_string()), v, out)),
            Value::Null => out.push((prefix.to_owned(), String::new())),
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// `ferry status --format csv`: `key,value` rows of the flattened answer.
pub fn status_csv(raw: &Value) -> String {
    const FIELDS: [Field<(String, String)>; 2] = [
        Field::csv("key", |kv| kv.0.clone()),
        Field::csv("value", |kv| kv.1.clone()),
    ];
    csv_of(&FIELDS, &flatten(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::types::*;

    #[test]
    fn non_finite_values_read_from_their_strings_and_print_as_such() {
        let l: DeviceLatest = serde_json::from_str(
            r#"{"device": "d", "sensors": [
                {"sensor": "a", "unit": "", "value": "NaN", "ts_ms": 0},
                {"sensor": "b", "unit": "", "value": "Infinity", "ts_ms": 0},
                {"sensor": "c", "unit": "", "value": "-Infinity", "ts_ms": 0},
                {"sensor": "d", "unit": "", "value": -0.5, "ts_ms": 0}]}"#,
        )
        .unwrap();
        let values: Vec<String> = l.sensors.iter().map(|s| fmt_value(s.value)).collect();
        assert_eq!(values, ["NaN", "Infinity", "-Infinity", "-0.5"]);
        assert!(latest_csv(&[l]).contains("d,b,Infinity,"));
        let e = serde_json::from_str::<Event>(r#"{"value": "nan"}"#).unwrap_err();
        assert!(e.to_string().contains("\"nan\" is neither a number"), "{e}");
        let p: Series =
            serde_json::from_str(r#"{"points": [{"ts_ms": 0, "value": "-Infinity", "count": 2}]}"#)
                .unwrap();
        assert_eq!(p.points[0].value, Some(f64::NEG_INFINITY));
    }

    fn device() -> Device {
        serde_json::from_str(
            r#"{"id": "sim-0001", "online": true, "last_seen": "2025-11-24T16:00:00.123Z",
                "last_seen_ms": 1764000000123, "firmware": "ferry-sim 0.1.0", "boot_id": 305419896,
                "boots": 2, "link": "tcp:127.0.0.1:50514",
                "sensors": [{"index": 0, "name": "temperature", "unit": "C", "interval_ms": 100},
                            {"index": 1, "name": "humidity", "unit": "%", "interval_ms": 100}],
                "counters": {"events": 123456, "dropped_by_device": 0, "ring_depth": 3, "read_errors": 0},
                "forwarding": {"unforwarded": 12, "oldest_unforwarded": "2025-11-24T15:59:59.900Z", "lag_ms": 223}}"#,
        )
        .unwrap()
    }

    #[test]
    fn devices_as_table_and_csv() {
        let off = Device {
            id: "sim-0002".into(),
            last_seen_ms: Some(1_764_000_000_000),
            forwarding: Forwarding {
                unforwarded: Some(0),
                ..Forwarding::default()
            },
            ..Device::default()
        };
        assert_eq!(
            devices_table(&[device(), off]),
            "device    state    last seen (UTC)      firmware         boot      boots  events  unforwarded/lag  link\n\
             sim-0001  online   2025-11-24 16:00:00  ferry-sim 0.1.0  12345678      2  123456       12 / 223ms  tcp:127.0.0.1:50514\n\
             sim-0002  offline  2025-11-24 16:00:00  -                -             -       -                0  -\n"
        );
        assert_eq!(
            devices_csv(&[device()]),
            "id,online,last_seen,last_seen_ms,firmware,boot_id,boots,events,dropped_by_device,ring_depth,read_errors,unforwarded,oldest_unforwarded,lag_ms,link,sensors\n\
             sim-0001,true,2025-11-24T16:00:00.123Z,1764000000123,ferry-sim 0.1.0,305419896,2,123456,0,3,0,12,2025-11-24T15:59:59.900Z,223,tcp:127.0.0.1:50514,temperature;humidity\n"
        );
    }

    #[test]
    fn latest_with_ages() {
        let l: DeviceLatest = serde_json::from_str(
            r#"{"device": "sim-0001", "sensors": [
                {"sensor": "temperature", "unit": "C", "value": 21.5, "ts": "2025-11-24T16:00:00.123Z", "ts_ms": 1764000000123, "event_id": 991},
                {"sensor": "note, with comma", "unit": "", "value": null}]}"#,
        )
        .unwrap();
        let now = 1_764_000_004_323;
        assert_eq!(
            latest_table(std::slice::from_ref(&l), false, now),
            "sensor            value  unit  time (UTC)                age\n\
             temperature        21.5  C     2025-11-24 16:00:00.123  4.2s\n\
             note, with comma      -        -                           -\n"
        );
        assert!(latest_table(std::slice::from_ref(&l), true, now).starts_with("device    sensor"));
        assert_eq!(
            latest_csv(&[l]),
            "device,sensor,value,unit,ts,ts_ms,event_id\n\
             sim-0001,temperature,21.5,C,2025-11-24T16:00:00.123Z,1764000000123,991\n\
             sim-0001,\"note, with comma\",,,,,\n"
        );
    }

    #[test]
    fn events_in_every_format() {
        let raw: Value = serde_json::from_str(
            r#"{"id": 991, "device": "sim-0001", "boot_id": 305419896, "seq": 4711, "sensor": "temperature",
                "unit": "C", "value": 21.5, "ts": "2025-11-24T16:00:00.123Z", "ts_ms": 1764000000123, "extra": [1]}"#,
        )
        .unwrap();
        let e = Event::deserialize(&raw).unwrap();
        let mut w = EventWriter::new(Format::Json);
        assert_eq!(w.header(), "");
        let line = w.event(&raw, &e);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            raw,
            "passed on unchanged"
        );
        let mut w = EventWriter::new(Format::Csv);
        assert_eq!(
            w.header(),
            "id,device,boot_id,seq,sensor,value,unit,ts,ts_ms\n"
        );
        assert_eq!(
            w.event(&raw, &e),
            "991,sim-0001,305419896,4711,temperature,21.5,C,2025-11-24T16:00:00.123Z,1764000000123\n"
        );
        let mut w = EventWriter::new(Format::Table);
        assert_eq!(
            w.header(),
            "      id  time (UTC)               device        sensor             value  unit\n"
        );
        assert_eq!(
            w.event(&raw, &e),
            "     991  2025-11-24 16:00:00.123  sim-0001      temperature         21.5  C\n"
        );
    }

    use serde::Deserialize;

    #[test]
    fn series_as_table_and_csv() {
        let s: Series = serde_json::from_str(
            r#"{"device": "sim-0001", "sensor": "temperature", "unit": "C", "agg": "avg", "bucket_ms": 60000,
                "since": "x", "until": "y",
                "points": [{"ts": "2025-11-24T16:00:00.000Z", "ts_ms": 1764000000000, "value": 21.4, "count": 600}]}"#,
        )
        .unwrap();
        assert_eq!(
            series_table(&s),
            "bucket start (UTC)   avg (C)  count\n\
             2025-11-24 16:00:00     21.4    600\n"
        );
        assert_eq!(
            series_csv(&s),
            "device,sensor,agg,unit,ts,ts_ms,value,count\n\
             sim-0001,temperature,avg,C,2025-11-24T16:00:00.000Z,1764000000000,21.4,600\n"
        );
    }

    const STATUS: &str = r#"{"gateway": "gw-01", "version": "0.1.0", "uptime_s": 12.5,
        "ingest": {"samples_per_s": 10012.0, "samples_committed": 125000, "samples_received": 125010,
                   "duplicates": 10, "acks_sent": 1250, "commits": 900, "links_open": 50,
                   "devices": 50, "devices_online": 49, "frames_rejected": 0, "quarantined": 0},
        "drops": {"by_device": 0, "refused": 0, "dropped_oldest": 0, "pruned_forwarded": 0},
        "uplink": {"state": "connected", "events_per_s": 10000.0, "events_acked": 124000,
                   "backlog_events": 1000, "oldest_unforwarded": "2025-11-24T16:00:00.000Z",
                   "oldest_unforwarded_age_s": 0.1},
        "store": {"writable": true, "disk_full": false, "backpressure": false},
        "disk": {"db_used_bytes": 1048576, "max_db_size": 1073741824, "fs_free_bytes": 123456789,
                 "headroom_bytes": 1072693248, "written_bytes": 52428800,
                 "written_bytes_per_day": 2147483648.0}}"#;

    #[test]
    fn status_at_a_glance() {
        let s: Status = serde_json::from_str(STATUS).unwrap();
        assert_eq!(
            status_table(&s),
            "gateway   gw-01 (ferry 0.1.0, up 12.5s)\n\
             ingest    10012.0/s; 125000 committed, 125010 received, 10 duplicates, 900 commits\n\
             devices   49 online of 50; 50 links open\n\
             uplink    connected; 10000.0/s forwarded, 124000 acked\n\
             backlog   1000 events (oldest 100ms)\n\
             store     ok (writable yes, disk full no, backpressure no)\n\
             disk      headroom 1023.0 MiB; db 1.0 MiB of 1.0 GiB max; fs free 117.7 MiB\n\
             writes    2.0 GiB/day at the last 5 minutes' rate; 50.0 MiB since start\n\
             drops     by device 0, refused 0, dropped oldest 0, pruned forwarded 0\n\
             rejected  0 frames, 0 quarantined\n"
        );
        // An empty answer still renders (every figure unknown), never panics.
        let empty = status_table(&Status::default());
        assert!(empty.contains("store     ? (writable ?"), "{empty}");
    }

    #[test]
    fn status_csv_flattens_every_field() {
        let raw: Value = serde_json::from_str(STATUS).unwrap();
        let csv = status_csv(&raw);
        assert!(
            csv.starts_with("key,value\ndisk.db_used_bytes,1048576\n"),
            "{csv}"
        );
        assert!(csv.contains("\ngateway,gw-01\n"));
        assert!(csv.contains("\nuplink.oldest_unforwarded,2025-11-24T16:00:00.000Z\n"));
        assert!(csv.contains("\ndisk.max_db_size,1073741824\n"));
        assert_eq!(
            flatten(&serde_json::json!({"a": [1, {"b": null}]})),
            [("a.0".into(), "1".into()), ("a.1.b".into(), String::new())]
        );
    }
}

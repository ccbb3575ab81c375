//! Output text for the CLI's three formats; pure functions of the API's answers (and of "now" for
//! ages), so every shape is unit-tested without a socket.
//!
//! - `table`: for people. Columns separated by two spaces, numbers right-aligned, times in UTC,
//!   control characters in names escaped so one cell stays on one line. Streamed tables (`query
//!   events`, `tail`) print their header once and widen a column when a longer cell arrives.
//! - `json`: for programs. A single answer is the agent's JSON, pretty-printed, passed on
//!   unchanged (fields the CLI does not know included); `devices` is the array of device objects.
//!   Streams of events (`query events`, `tail`) are JSON Lines: one compact event object per line,
//!   written as it arrives, so `jq -c`, `while read` loops and line-based tools work on them.
//! - `csv`: a header row, then one row per item; RFC 4180 quoting (a field with a comma, a double
//!   quote, CR or LF is quoted, quotes doubled); lines end in LF; a missing value is an empty
//!   field; times as both RFC 3339 (`ts`) and Unix ms (`ts_ms`).
use serde_json::Value;

use super::types::{Device, DeviceLatest, Event, Series, Status};

/// Output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The agent's JSON (JSON Lines for streams of events).
    Json,
    /// Comma-separated values with a header row (RFC 4180 quoting).
    Csv,
}

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

use Align::{Left, Right};

// ---------------------------------------------------------------------------------------------
// Scalars

/// `YYYY-MM-DD HH:MM:SS` (with `.mmm` when `millis`) for Unix milliseconds, UTC.
pub fn fmt_utc(ms: i64, millis: bool) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::api::time::civil_from_days(days);
    let hms = format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    if millis {
        format!("{y:04}-{m:02}-{d:02} {hms}.{:03}", ms.rem_euclid(1000))
    } else {
        format!("{y:04}-{m:02}-{d:02} {hms}")
    }
}

/// A time cell: from Unix ms when the agent gave them, else its RFC 3339 text, else `-`.
fn time_cell(ms: Option<i64>, text: Option<&str>, millis: bool) -> String {
    match (ms, text) {
        (Some(ms), _) => fmt_utc(ms, millis),
        (None, Some(t)) => clean(t),
        (None, None) => "-".into(),
    }
}

/// A short human duration: `850ms`, `4.2s`, `3m07s`, `2h05m`, `3d04h`; negative with a `-`.
pub fn fmt_age(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", fmt_age(ms.saturating_neg()));
    }
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `117.7 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A sample value as the shortest text that reads back to the same `f64`, or `NaN`, `Infinity`,
/// `-Infinity` (the API's words, D1); empty when absent.
pub fn fmt_value(v: Option<f64>) -> String {
    v.map(|v| {
        crate::api::model::value::non_finite(v)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    })
    .unwrap_or_default()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Escapes control characters so a cell stays on one line of a table.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Tables and CSV

/// A whole table: widths fit the widest cell of each column; no trailing spaces.
pub fn table(cols: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut t = StreamTable::new(cols);
    for r in rows {
        t.widen(r);
    }
    let mut out = t.header();
    for r in rows {
        out.push_str(&t.row(r));
    }
    out
}

/// A table printed row by row: the header once, and a column widens (from then on) when a
/// longer cell arrives.
#[derive(Debug, Clone)]
pub struct StreamTable {
    cols: Vec<(String, Align, usize)>,
}

impl StreamTable {
    /// Columns with their header widths.
    pub fn new(cols: &[(&str, Align)]) -> StreamTable {
        StreamTable {
            cols: cols
                .iter()
                .map(|&(h, a)| (h.to_owned(), a, h.chars().count()))
                .collect(),
        }
    }

    /// Columns with at least these widths.
    pub fn with_widths(cols: &[(&str, Align, usize)]) -> StreamTable {
        StreamTable {
            cols: cols
                .iter()
                .map(|&(h, a, w)| (h.to_owned(), a, w.max(h.chars().count())))
                .collect(),
        }
    }

    fn widen(&mut self, cells: &[String]) {
        for ((_, _, w), c) in self.cols.iter_mut().zip(cells) {
            *w = (*w).max(clean(c).chars().count());
        }
    }

    /// The header line.
    pub fn header(&self) -> String {
        let names: Vec<String> = self.cols.iter().map(|c| c.0.clone()).collect();
        self.line(&names)
    }

    /// One row (cells are escaped; missing cells are blank).
    pub fn row(&mut self, cells: &[String]) -> String {
        self.widen(cells);
        self.line(cells)
    }

    fn line(&self, cells: &[String]) -> String {
        let mut out = String::new();
        for (i, (_, align, w)) in self.cols.iter().enumerate() {
            let cell = clean(cells.get(i).map(String::as_str).unwrap_or(""));
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            match align {
                Right => {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(&cell);
                }
                Left => {
                    out.push_str(&cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        out
    }
}

/// One CSV field, quoted when RFC 4180 requires it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One CSV record, ending in LF.
pub fn csv_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}

/// Pretty JSON (an answer, or `devices`' array), ending in LF.
pub fn json_pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// One JSON Lines line.
pub fn json_line(v: &Value) -> String {
    let mut s = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------------------------
// Devices

const DEVICE_COLS: &[(&str, Align)] = &[
    ("device", Left),
    ("state", Left),
    ("last seen (UTC)", Left),
    ("firmware", Left),
    ("boot", Left),
    ("boots", Right),
    ("events", Right),
    ("unforwarded/lag", Right),
    ("link", Left),
];

const DEVICE_CSV: &[&str] = &[
    "id",
    "online",
    "last_seen",
    "last_seen_ms",
    "firmware",
    "boot_id",
    "boots",
    "events",
    "dropped_by_device",
    "ring_depth",
    "read_errors",
    "unforwarded",
    "oldest_unforwarded",
    "lag_ms",
    "link",
    "sensors",
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
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                if d.online { "online" } else { "offline" }.into(),
                time_cell(d.last_seen_ms, d.last_seen.as_deref(), false),
                or_dash(d.firmware.clone()),
                d.boot_id
                    .map(|b| format!("{b:08x}"))
                    .unwrap_or_else(|| "-".into()),
                or_dash(opt(d.boots)),
                or_dash(opt(d.counters.events)),
                backlog_cell(d),
                or_dash(d.link.clone()),
            ]
        })
        .collect();
    table(DEVICE_COLS, &rows)
}

/// `ferry devices --format csv`.
pub fn devices_csv(devices: &[Device]) -> String {
    let mut out = csv_record(DEVICE_CSV);
    for d in devices {
        let sensors: Vec<&str> = d.sensors.iter().map(|s| s.name.as_str()).collect();
        out.push_str(&csv_record(&[
            d.id.clone(),
            d.online.to_string(),
            d.last_seen.clone().unwrap_or_default(),
            opt(d.last_seen_ms),
            d.firmware.clone(),
            opt(d.boot_id),
            opt(d.boots),
            opt(d.counters.events),
            opt(d.counters.dropped_by_device),
            opt(d.counters.ring_depth),
            opt(d.counters.read_errors),
            opt(d.forwarding.unforwarded),
            d.forwarding.oldest_unforwarded.clone().unwrap_or_default(),
            opt(d.forwarding.lag_ms),
            d.link.clone(),
            sensors.join(";"),
        ]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Latest values

/// `ferry latest` as a table; with `with_device`, a first column names the device (all devices).
pub fn latest_table(latest: &[DeviceLatest], with_device: bool, now_ms: i64) -> String {
    let mut cols = vec![
        ("sensor", Left),
        ("value", Right),
        ("unit", Left),
        ("time (UTC)", Left),
        ("age", Right),
    ];
    if with_device {
        cols.insert(0, ("device", Left));
    }
    let mut rows = Vec::new();
    for d in latest {
        for s in &d.sensors {
            let mut r = vec![
                s.sensor.clone(),
                or_dash(fmt_value(s.value)),
                s.unit.clone(),
                time_cell(s.ts_ms, s.ts.as_deref(), true),
                s.ts_ms
                    .map(|t| fmt_age(now_ms - t))
                    .unwrap_or_else(|| "-".into()),
            ];
            if with_device {
                r.insert(0, d.device.clone());
            }
            rows.push(r);
        }
    }
    table(&cols, &rows)
}

/// `ferry latest --format csv`.
pub fn latest_csv(latest: &[DeviceLatest]) -> String {
    let mut out = csv_record(&[
        "device", "sensor", "value", "unit", "ts", "ts_ms", "event_id",
    ]);
    for d in latest {
        for s in &d.sensors {
            out.push_str(&csv_record(&[
                d.device.clone(),
                s.sensor.clone(),
                fmt_value(s.value),
                s.unit.clone(),
                s.ts.clone().unwrap_or_default(),
                opt(s.ts_ms),
                opt(s.event_id),
            ]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Events (streamed: query events, tail)

/// Writes a stream of events in one format, item by item.
#[derive(Debug, Clone)]
pub struct EventWriter {
    format: Format,
    table: StreamTable,
}

const EVENT_CSV: &[&str] = &[
    "id", "device", "boot_id", "seq", "sensor", "value", "unit", "ts", "ts_ms",
];

impl EventWriter {
    /// A writer for `format`.
    pub fn new(format: Format) -> EventWriter {
        EventWriter {
            format,
            table: StreamTable::with_widths(&[
                ("id", Right, 8),
                ("time (UTC)", Left, 23),
                ("device", Left, 12),
                ("sensor", Left, 12),
                ("value", Right, 10),
                ("unit", Left, 0),
            ]),
        }
    }

    /// What goes before the first event (a header row; nothing for JSON Lines).
    pub fn header(&self) -> String {
        match self.format {
            Format::Table => self.table.header(),
            Format::Csv => csv_record(EVENT_CSV),
            Format::Json => String::new(),
        }
    }

    /// One event: `raw` is the agent's object, `e` the same read as an [`Event`].
    pub fn event(&mut self, raw: &Value, e: &Event) -> String {
        match self.format {
            Format::Json => json_line(raw),
            Format::Csv => csv_record(&[
                opt(e.id),
                e.device.clone(),
                opt(e.boot_id),
                opt(e.seq),
                e.sensor.clone(),
                fmt_value(e.value),
                e.unit.clone(),
                e.ts.clone().unwrap_or_default(),
                opt(e.ts_ms),
            ]),
            Format::Table => self.table.row(&[
                opt(e.id),
                time_cell(e.ts_ms, e.ts.as_deref(), true),
                e.device.clone(),
                e.sensor.clone(),
                or_dash(fmt_value(e.value)),
                e.unit.clone(),
            ]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Series

/// `ferry query series` as a table.
pub fn series_table(s: &Series) -> String {
    let value_col = match (s.agg.as_str(), s.unit.as_str()) {
        ("", _) => "value".to_owned(),
        ("count", _) | (_, "") => s.agg.clone(),
        (agg, unit) => format!("{agg} ({unit})"),
    };
    let rows: Vec<Vec<String>> = s
        .points
        .iter()
        .map(|p| {
            vec![
                time_cell(p.ts_ms, p.ts.as_deref(), false),
                or_dash(fmt_value(p.value)),
                or_dash(opt(p.count)),
            ]
        })
        .collect();
    table(
        &[
            ("bucket start (UTC)", Left),
            (value_col.as_str(), Right),
            ("count", Right),
        ],
        &rows,
    )
}

/// `ferry query series --format csv`.
pub fn series_csv(s: &Series) -> String {
    let mut out = csv_record(&[
        "device", "sensor", "agg", "unit", "ts", "ts_ms", "value", "count",
    ]);
    for p in &s.points {
        out.push_str(&csv_record(&[
            s.device.clone(),
            s.sensor.clone(),
            s.agg.clone(),
            s.unit.clone(),
            p.ts.clone().unwrap_or_default(),
            opt(p.ts_ms),
            fmt_value(p.value),
            opt(p.count),
        ]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Status

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
    let mut out = csv_record(&["key", "value"]);
    for (k, v) in flatten(raw) {
        out.push_str(&csv_record(&[k, v]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::types::*;

    #[test]
    fn utc_times() {
        assert_eq!(fmt_utc(0, false), "1970-01-01 00:00:00");
        assert_eq!(fmt_utc(1_764_000_000_123, true), "2025-11-24 16:00:00.123");
        assert_eq!(fmt_utc(951_782_400_000, false), "2000-02-29 00:00:00");
        assert_eq!(fmt_utc(-1, true), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(fmt_age(850), "850ms");
        assert_eq!(fmt_age(4_240), "4.2s");
        assert_eq!(fmt_age(187_000), "3m07s");
        assert_eq!(fmt_age(7_500_000), "2h05m");
        assert_eq!(fmt_age(273_600_000), "3d04h");
        assert_eq!(fmt_age(-1_500), "-1.5s");
        assert_eq!(fmt_age(i64::MIN), format!("-{}", fmt_age(i64::MAX)));
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(1_073_741_824), "1.0 GiB");
        assert_eq!(fmt_value(Some(21.5)), "21.5");
        assert_eq!(fmt_value(Some(600.0)), "600");
        assert_eq!(fmt_value(Some(0.1)), "0.1");
        assert_eq!(fmt_value(None), "");
        assert_eq!(fmt_value(Some(f64::NAN)), "NaN");
        assert_eq!(fmt_value(Some(f64::INFINITY)), "Infinity");
        assert_eq!(fmt_value(Some(f64::NEG_INFINITY)), "-Infinity");
    }

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

    #[test]
    fn csv_quotes_as_rfc_4180_says() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_record(&["a", "b,c", ""]), "a,\"b,c\",\n");
    }

    #[test]
    fn tables_align_and_escape() {
        let t = table(
            &[("name", Left), ("n", Right), ("note", Left)],
            &[
                vec!["a".into(), "1".into(), "x".into()],
                vec!["long\nname".into(), "1234".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "name           n  note\n\
             a              1  x\n\
             long\\nname  1234\n"
        );
    }

    #[test]
    fn stream_tables_widen_from_the_row_that_needs_it() {
        let mut t = StreamTable::with_widths(&[("a", Left, 3), ("b", Right, 2)]);
        assert_eq!(t.header(), "a     b\n");
        assert_eq!(t.row(&["x".into(), "1".into()]), "x     1\n");
        assert_eq!(t.row(&["wider".into(), "1".into()]), "wider   1\n");
        assert_eq!(t.row(&["x".into(), "1".into()]), "x       1\n");
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
                 "headroom_bytes": 1072693248}}"#;

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

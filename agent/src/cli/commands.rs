//! One function per command: ask the agent, write the answer to `out` in the chosen format.
//!
//! These are the only functions that write data; they flush after each page (`query events`) and
//! each sample (`tail`), so a pipe sees rows as they arrive. Notes about reconnects go to stderr.
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{describe, ApiClient, CliError};
use super::format::{self, EventWriter, Format};
use super::sse::{SseMessage, SseParser};
use super::types::{AllLatest, DeviceLatest, DeviceList, Event, EventsPage, Series, Status};

/// The most rows one `/api/v1/events` request may ask for.
pub const MAX_PAGE: u64 = 1000;
/// `tail`'s first reconnect delay; doubles per failed attempt.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// `tail`'s longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A stream silent this long is dead (the agent sends a keep-alive every 15 s).
const STREAM_IDLE: Duration = Duration::from_secs(45);

/// Filters of `ferry query events`.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Device id.
    pub device: Option<String>,
    /// Sensor name.
    pub sensor: Option<String>,
    /// Inclusive start (any time form the API takes).
    pub since: Option<String>,
    /// Exclusive end.
    pub until: Option<String>,
    /// Print at most this many rows (all when `None`).
    pub limit: Option<u64>,
}

/// Parameters of `ferry query series`.
#[derive(Debug, Clone, Default)]
pub struct SeriesQuery {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Start (the API defaults to `-1h`).
    pub since: Option<String>,
    /// End (the API defaults to `now`).
    pub until: Option<String>,
    /// Bucket width (the API defaults to `1m`).
    pub bucket: Option<String>,
    /// Aggregate (the API defaults to `avg`).
    pub agg: Option<String>,
}

/// Options of `ferry tail`.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// Device id.
    pub device: Option<String>,
    /// Sensor name.
    pub sensor: Option<String>,
    /// Stop after this many samples.
    pub count: Option<u64>,
    /// Replay stored events after this id first (`Last-Event-ID` of the first request).
    pub after: Option<u64>,
}

/// Prints a failure (`ferry: ...` on stderr, nothing for a closed stdout) and returns the exit
/// code.
pub fn finish(result: Result<(), CliError>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            if !e.is_quiet() {
                let _ = writeln!(std::io::stderr(), "ferry: {e}");
            }
            e.exit_code()
        }
    }
}

fn note(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "ferry: {msg}");
}

fn read<'a, T: Deserialize<'a>>(v: &'a Value, what: &str) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| CliError::BadAnswer {
        url: what.to_owned(),
        reason: e.to_string(),
    })
}

fn write_str(out: &mut impl Write, s: &str) -> Result<(), CliError> {
    out.write_all(s.as_bytes())?;
    Ok(())
}

/// Writes a devices answer (`{"devices": [...]}`, from the API or the offline store).
fn write_devices(raw: &Value, format: Format, out: &mut impl Write) -> Result<(), CliError> {
    let list: DeviceList = read(raw, "/api/v1/devices")?;
    let text = match format {
        Format::Json => format::json_pretty(raw.get("devices").unwrap_or(&json!([]))),
        Format::Table => format::devices_table(&list.devices),
        Format::Csv => format::devices_csv(&list.devices),
    };
    write_str(out, &text)?;
    out.flush()?;
    Ok(())
}

/// `ferry devices`.
pub async fn devices(
    client: &ApiClient,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let raw = client.get_value(&["api", "v1", "devices"], &[]).await?;
    write_devices(&raw, format, out)
}

/// `ferry devices --db FILE`: the same listing read straight from a store file, for when the
/// agent is not running. Only what the store holds: no forwarding figures, no sensors.
pub fn devices_offline(db: &Path, format: Format, out: &mut impl Write) -> Result<(), CliError> {
    let rows = crate::store::open_reader(db)
        .and_then(|c| crate::store::read::devices(&c))
        .map_err(|e| CliError::Usage(format!("reading the store {}: {e}", db.display())))?;
    let devices: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.device_id,
                "online": r.online,
                "last_seen": crate::time::format_ms(r.last_seen_ms),
                "last_seen_ms": r.last_seen_ms,
                "firmware": r.firmware,
                "boot_id": r.boot_id,
                "boots": r.boots,
                "link": r.link,
                "counters": {"events": r.events, "dropped_by_device": r.dropped, "ring_depth": r.ring_depth},
            })
        })
        .collect();
    write_devices(&json!({ "devices": devices }), format, out)
}

/// `ferry latest [DEVICE]`: one device's sensors, or every device's.
pub async fn latest(
    client: &ApiClient,
    device: Option<&str>,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (raw, all) = match device {
        Some(d) => {
            let raw = client
                .get_value(&["api", "v1", "devices", d, "latest"], &[])
                .await?;
            let one: DeviceLatest = read(&raw, "/api/v1/devices/{id}/latest")?;
            (raw, vec![one])
        }
        None => {
            let raw = client.get_value(&["api", "v1", "latest"], &[]).await?;
            let all: AllLatest = read(&raw, "/api/v1/latest")?;
            (raw, all.devices)
        }
    };
    let text = match format {
        Format::Json => format::json_pretty(&raw),
        Format::Table => format::latest_table(&all, device.is_none(), crate::utc_now_ms()),
        Format::Csv => format::latest_csv(&all),
    };
    write_str(out, &text)?;
    out.flush()?;
    Ok(())
}

/// `ferry query events`: follows `next_cursor` page by page, printing each page before asking
/// for the next, until `limit` rows are printed or no page follows.
pub async fn query_events(
    client: &ApiClient,
    q: &EventsQuery,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut writer = EventWriter::new(format);
    let mut header = Some(writer.header()); // once the first page is in: no header before an error
    let mut remaining = q.limit;
    let mut cursor: Option<String> = None;
    loop {
        let page_size = remaining.map_or(MAX_PAGE, |r| r.min(MAX_PAGE));
        if page_size == 0 {
            break;
        }
        let params = [
            ("device", q.device.clone()),
            ("sensor", q.sensor.clone()),
            ("since", q.since.clone()),
            ("until", q.until.clone()),
            ("limit", Some(page_size.to_string())),
            ("cursor", cursor.clone()),
        ];
        let page: EventsPage = client.get(&["api", "v1", "events"], &params).await?;
        let take = page.events.len().min(page_size as usize);
        let mut text = header.take().unwrap_or_default();
        for raw in &page.events[..take] {
            let e: Event = read(raw, "/api/v1/events")?;
            text.push_str(&writer.event(raw, &e));
        }
        write_str(out, &text)?;
        out.flush()?;
        if let Some(r) = &mut remaining {
            *r -= take as u64;
        }
        match page.next_cursor {
            Some(next) if cursor.as_deref() == Some(next.as_str()) && page.events.is_empty() => {
                return Err(CliError::BadAnswer {
                    url: "/api/v1/events".into(),
                    reason: "the same cursor came back with an empty page".into(),
                })
            }
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(())
}

/// `ferry query series`.
pub async fn query_series(
    client: &ApiClient,
    q: &SeriesQuery,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let params = [
        ("device", Some(q.device.clone())),
        ("sensor", Some(q.sensor.clone())),
        ("since", q.since.clone()),
        ("until", q.until.clone()),
        ("bucket", q.bucket.clone()),
        ("agg", q.agg.clone()),
    ];
    let raw = client.get_value(&["api", "v1", "series"], &params).await?;
    let series: Series = read(&raw, "/api/v1/series")?;
    let text = match format {
        Format::Json => format::json_pretty(&raw),
        Format::Table => format::series_table(&series),
        Format::Csv => format::series_csv(&series),
    };
    write_str(out, &text)?;
    out.flush()?;
    Ok(())
}

/// `ferry status`.
pub async fn status(
    client: &ApiClient,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let raw = client.get_value(&["api", "v1", "status"], &[]).await?;
    let s: Status = read(&raw, "/api/v1/status")?;
    let text = match format {
        Format::Json => format::json_pretty(&raw),
        Format::Table => format::status_table(&s),
        Format::Csv => format::status_csv(&raw),
    };
    write_str(out, &text)?;
    out.flush()?;
    Ok(())
}

/// What `tail` has printed: the resume point and the guard against repeats.
#[derive(Debug, Default)]
struct TailState {
    /// `Last-Event-ID` for the next connection.
    resume: Option<String>,
    /// The highest numeric id printed; events at or below it are repeats.
    last_printed: Option<u64>,
    printed: u64,
}

/// What `tail` does with one stream message.
#[derive(Debug)]
enum Admit {
    /// Print it (already counted as printed).
    Print(Value, Event),
    /// Not a sample, or one printed before a reconnect.
    Skip,
    /// A sample whose data is not JSON.
    Bad(String),
}

impl TailState {
    fn admit(&mut self, msg: SseMessage) -> Admit {
        if msg.event != "sample" {
            return Admit::Skip;
        }
        let raw: Value = match serde_json::from_str(&msg.data) {
            Ok(v) => v,
            Err(e) => return Admit::Bad(e.to_string()),
        };
        let e = Event::deserialize(&raw).unwrap_or_default();
        let id = msg
            .id
            .as_deref()
            .and_then(|i| i.trim().parse::<u64>().ok())
            .or(e.id);
        if let (Some(id), Some(last)) = (id, self.last_printed) {
            if id <= last {
                return Admit::Skip;
            }
        }
        self.printed += 1;
        match (id, msg.id) {
            (Some(id), _) => {
                self.last_printed = Some(id);
                self.resume = Some(id.to_string());
            }
            (None, Some(sse_id)) => self.resume = Some(sse_id),
            (None, None) => {}
        }
        Admit::Print(raw, e)
    }
}

/// `ferry tail`: follows `/api/v1/stream`, printing each sample as it arrives. On a dropped
/// connection it reconnects (250 ms doubling to at most 5 s between attempts) with
/// `Last-Event-ID` set to the last id printed, and drops anything at or below it, so nothing is
/// skipped or repeated. Fails only when the first connection fails, or the agent refuses (4xx).
pub async fn tail(
    client: &ApiClient,
    opts: &TailOptions,
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let params = [
        ("device", opts.device.clone()),
        ("sensor", opts.sensor.clone()),
    ];
    let mut writer = EventWriter::new(format);
    let mut st = TailState {
        resume: opts.after.map(|a| a.to_string()),
        last_printed: opts.after,
        printed: 0,
    };
    if opts.count == Some(0) {
        return Ok(());
    }
    let mut connected_once = false;
    let mut backoff = BACKOFF_START;
    loop {
        let mut resp = match client.stream(&params, st.resume.as_deref()).await {
            Ok(r) => r,
            Err(e @ CliError::Rejected { .. }) => return Err(e),
            Err(e) if !connected_once => return Err(e),
            Err(e) => {
                let e = match e {
                    CliError::Unreachable { reason, .. } => format!("agent unreachable ({reason})"),
                    e => e.to_string(),
                };
                note(format_args!(
                    "{e}; retrying in {}",
                    format::fmt_age(backoff.as_millis() as i64)
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if !connected_once {
            write_str(out, &writer.header())?;
            out.flush()?;
        } else {
            note(format_args!(
                "reconnected to {}; resuming after event {}",
                client.endpoint().display(),
                st.resume.as_deref().unwrap_or("(none: live from now)")
            ));
        }
        connected_once = true;
        let mut parser = SseParser::new();
        let why = loop {
            let chunk = match tokio::time::timeout(STREAM_IDLE, resp.chunk()).await {
                Err(_) => break format!("no data for {}s", STREAM_IDLE.as_secs()),
                Ok(Err(e)) => break describe(&e),
                Ok(Ok(None)) => break "the agent closed the stream".to_owned(),
                Ok(Ok(Some(c))) => c,
            };
            backoff = BACKOFF_START;
            let msgs = parser.feed(&chunk);
            if st.resume.is_none() {
                // The agent opens each stream with an id-only block (its position): a reconnect
                // before the first sample resumes from there, not from "now".
                st.resume = parser.last_event_id().map(str::to_owned);
            }
            for msg in msgs {
                match st.admit(msg) {
                    Admit::Skip => {}
                    Admit::Bad(e) => note(format_args!("skipping a sample that is not JSON: {e}")),
                    Admit::Print(raw, e) => {
                        write_str(out, &writer.event(&raw, &e))?;
                        out.flush()?;
                        if opts.count.is_some_and(|c| st.printed >= c) {
                            return Ok(());
                        }
                    }
                }
            }
        };
        note(format_args!(
            "stream lost ({why}); reconnecting in {}",
            format::fmt_age(backoff.as_millis() as i64)
        ));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sse_id: Option<&str>, data: &str) -> SseMessage {
        SseMessage {
            event: "sample".into(),
            data: data.into(),
            id: sse_id.map(Into::into),
        }
    }

    fn printed(a: Admit) -> Option<u64> {
        match a {
            Admit::Print(_, e) => e.id,
            _ => None,
        }
    }

    #[test]
    fn tail_prints_each_sample_once_and_resumes_after_the_last() {
        let mut st = TailState::default();
        assert_eq!(printed(st.admit(sample(Some("5"), r#"{"id":5}"#))), Some(5));
        assert_eq!(st.resume.as_deref(), Some("5"));
        assert_eq!(printed(st.admit(sample(Some("6"), r#"{"id":6}"#))), Some(6));
        // After a reconnect the agent replays from 6: an overlap is dropped, not printed twice.
        assert!(matches!(
            st.admit(sample(Some("6"), r#"{"id":6}"#)),
            Admit::Skip
        ));
        assert!(matches!(
            st.admit(sample(Some("4"), r#"{"id":4}"#)),
            Admit::Skip
        ));
        // Other message types and broken data are not samples.
        let other = SseMessage {
            event: "message".into(),
            data: "{}".into(),
            id: Some("99".into()),
        };
        assert!(matches!(st.admit(other), Admit::Skip));
        assert!(matches!(
            st.admit(sample(Some("7"), "{not json")),
            Admit::Bad(_)
        ));
        assert_eq!(
            st.resume.as_deref(),
            Some("6"),
            "only printed ids move the resume point"
        );
        // Without an SSE id, the event's own id counts.
        assert_eq!(printed(st.admit(sample(None, r#"{"id":8}"#))), Some(8));
        assert_eq!(st.resume.as_deref(), Some("8"));
        assert_eq!(st.printed, 3);
    }

    #[test]
    fn tail_after_an_id_skips_up_to_it() {
        let mut st = TailState {
            resume: Some("10".into()),
            last_printed: Some(10),
            printed: 0,
        };
        assert!(matches!(
            st.admit(sample(Some("10"), r#"{"id":10}"#)),
            Admit::Skip
        ));
        assert_eq!(
            printed(st.admit(sample(Some("11"), r#"{"id":11}"#))),
            Some(11)
        );
    }
}

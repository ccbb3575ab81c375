//! Replaying a stored range to the cloud again, for a cloud that lost data
//! (`POST /api/v1/replays`, `ferry replay`).
//!
//! Invariants:
//! - **What.** Events with `since <= ts_ms < until` (the devices' clock, as in `events` queries)
//!   of one device, or of every device one after another in device order; each device's events
//!   in pages of `read_limit` in `(ts_ms, id)` order, each page published in store order (so
//!   `seq` rises within every batch even where a device's clock went back). They are read from the database after a `Sync`, so every sample
//!   acked before the replay started is in it; samples stored later are the live uplink's.
//! - **How.** As ordinary event batches on the events topics ([`batch::batches`] with the
//!   uplink's encoding and limits), published by the uplink task ([`super::ledger::Ledger::push`]
//!   with their event count): a message counts once the broker acked it (PUBACK), is held and
//!   published again while no subscriber takes it (`require_subscriber`), and is republished
//!   after a reconnect. The cloud deduplicates on `(gateway, device, boot, seq)`, so what it
//!   already has changes nothing there.
//! - **Never the position.** A replay neither reads nor moves the forwarding position. Retention
//!   may have deleted forwarded events older than `keep_forwarded_for`; `events_total` counts
//!   what is still stored when the replay starts.
//! - **Bounded.** At most [`WINDOW`] messages of a replay wait for their PUBACK, so live
//!   forwarding keeps the rest of the in-flight window; one replay runs at a time.
//! - **Skips, not stops.** Events the contract refuses (quarantined when first forwarded) are
//!   counted in `events_skipped`, not sent. A message the broker refuses, or the agent stopping,
//!   ends the replay `failed` with the reason.
//! - **In memory.** A replay lives as long as the agent: after a restart it is gone (run it
//!   again; the cloud deduplicates). The last [`KEEP`] replays can be looked up.
//!
//! [`Book`] (which replays exist, the one-at-a-time rule, their figures) and [`Window`] (which
//! messages wait for a PUBACK) are sans-IO; [`Replays`] and the replay thread do the I/O.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use super::batch::{self, BatchLimits};
use super::source::{event_row, EventRow, Names};
use super::UplinkSettings;
use crate::firmware::OutgoingMessage;
use crate::store::writer::StoreHandle;
use crate::time::{format_ms, parse_instant};

/// Most messages of a replay waiting for their PUBACK.
pub const WINDOW: usize = 8;
/// Replays kept for lookup (the newest).
pub const KEEP: usize = 20;

/// An instant in a request: Unix milliseconds, or text (RFC 3339, Unix milliseconds, `now`, or
/// relative to now such as `-2h`).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum InstantArg {
    /// Unix milliseconds.
    Ms(i64),
    /// RFC 3339, Unix milliseconds, `now`, or e.g. `-2h`.
    Text(String),
}

/// `POST /api/v1/replays`: what to send again.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// First instant, inclusive (device time).
    pub since: InstantArg,
    /// End, exclusive (device time); default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<InstantArg>,
    /// Only this device; default every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A replay's range, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySpec {
    /// First instant, inclusive (Unix ms).
    pub since_ms: i64,
    /// End, exclusive (Unix ms).
    pub until_ms: i64,
    /// Only this device.
    pub device: Option<String>,
}

impl ReplaySpec {
    /// Checks `req` at `now_ms`; the error names the field.
    pub fn resolve(req: &ReplayRequest, now_ms: i64) -> Result<ReplaySpec, String> {
        let instant = |name: &str, v: &InstantArg| -> Result<i64, String> {
            let r = match v {
                InstantArg::Ms(ms) => parse_instant(&ms.to_string(), now_ms),
                InstantArg::Text(t) => parse_instant(t, now_ms),
            };
            r.map_err(|e| format!("{name}: {e}"))
        };
        let since_ms = instant("since", &req.since)?;
        let until_ms = match &req.until {
            Some(u) => instant("until", u)?,
            None => now_ms,
        };
        if until_ms <= since_ms {
            return Err(format!(
                "until: {} is not after since ({}); the range is since <= time < until",
                format_ms(until_ms),
                format_ms(since_ms)
            ));
        }
        let device = match &req.device {
            Some(d) if d.is_empty() => return Err("device: is empty".into()),
            Some(d) => {
                crate::commands::check_device_id(d).map_err(|e| format!("device: {e}"))?;
                Some(d.clone())
            }
            None => None,
        };
        Ok(ReplaySpec {
            since_ms,
            until_ms,
            device,
        })
    }
}

/// Where a replay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayState {
    /// Reading and publishing.
    Running,
    /// Every event of the range was acked by the broker (or skipped).
    Done,
    /// Stopped early; `error` says why.
    Failed,
}

/// A replay and its figures (`GET /api/v1/replays/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayView {
    /// Id (1, 2, ... since the agent started).
    pub id: u64,
    /// `running`, `done` or `failed`.
    pub state: ReplayState,
    /// First instant, inclusive (RFC 3339).
    pub since: String,
    /// End, exclusive (RFC 3339).
    pub until: String,
    /// `since` in Unix ms.
    pub since_ms: i64,
    /// `until` in Unix ms.
    pub until_ms: i64,
    /// The one device replayed, or `null` for every device.
    pub device: Option<String>,
    /// Stored events in the range when the replay started.
    pub events_total: u64,
    /// Events handed to the uplink so far.
    pub events_sent: u64,
    /// Events in messages the broker acked.
    pub events_acked: u64,
    /// Events not sent because the contract refuses them (they are in the quarantine).
    pub events_skipped: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a replay did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A bad field.
    #[error("{0}")]
    BadRequest(String),
    /// No such device.
    #[error("no device {0:?}")]
    UnknownDevice(String),
    /// Another replay runs.
    #[error("replay {0} is running; one replay runs at a time (GET /api/v1/replays/{0} shows its progress)")]
    Busy(u64),
    /// The store cannot be read or synced.
    #[error("{0}")]
    Store(String),
}

/// The replays of this agent run, sans-IO: ids, the one-at-a-time rule, figures.
#[derive(Debug, Default)]
pub struct Book {
    next: u64,
    views: VecDeque<ReplayView>,
}

impl Book {
    /// The running replay, if any.
    pub fn running(&self) -> Option<u64> {
        self.views
            .iter()
            .find(|v| v.state == ReplayState::Running)
            .map(|v| v.id)
    }

    /// Registers a running replay of `spec` with `total` events at `now_ms`.
    pub fn begin(&mut self, spec: &ReplaySpec, total: u64, now_ms: i64) -> ReplayView {
        self.next += 1;
        let v = ReplayView {
            id: self.next,
            state: ReplayState::Running,
            since: format_ms(spec.since_ms),
            until: format_ms(spec.until_ms),
            since_ms: spec.since_ms,
            until_ms: spec.until_ms,
            device: spec.device.clone(),
            events_total: total,
            events_sent: 0,
            events_acked: 0,
            events_skipped: 0,
            started_at: format_ms(now_ms),
            finished_at: None,
            error: None,
        };
        self.views.push_back(v.clone());
        while self.views.len() > KEEP {
            self.views.pop_front();
        }
        v
    }

    /// Replay `id`, to update.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut ReplayView> {
        self.views.iter_mut().find(|v| v.id == id)
    }

    /// Ends replay `id` at `now_ms`: done, or failed with `error`.
    pub fn end(&mut self, id: u64, error: Option<String>, now_ms: i64) {
        if let Some(v) = self.get_mut(id) {
            v.state = match error {
                None => ReplayState::Done,
                Some(_) => ReplayState::Failed,
            };
            v.error = error;
            v.finished_at = Some(format_ms(now_ms));
        }
    }

    /// Replay `id`.
    pub fn get(&self, id: u64) -> Option<ReplayView> {
        self.views.iter().find(|v| v.id == id).cloned()
    }

    /// The kept replays, newest first.
    pub fn list(&self) -> Vec<ReplayView> {
        self.views.iter().rev().cloned().collect()
    }
}

/// Messages of one replay waiting for their PUBACK, oldest first, sans-IO over the waiter `W`.
#[derive(Debug)]
pub struct Window<W> {
    waiting: VecDeque<(W, u64)>,
}

impl<W> Default for Window<W> {
    fn default() -> Self {
        Window {
            waiting: VecDeque::new(),
        }
    }
}

impl<W> Window<W> {
    /// Whether another message may go out.
    pub fn has_room(&self) -> bool {
        self.waiting.len() < WINDOW
    }

    /// A message of `events` went out; `waiter` resolves on its PUBACK.
    pub fn sent(&mut self, waiter: W, events: u64) {
        self.waiting.push_back((waiter, events));
    }

    /// Whether a message still waits.
    pub fn oldest_pending(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The oldest waiting message, to wait for.
    pub fn oldest(&mut self) -> Option<(W, u64)> {
        self.waiting.pop_front()
    }
}

/// What a replay needs from the agent.
struct Ctx {
    db: PathBuf,
    store: StoreHandle,
    out: mpsc::Sender<OutgoingMessage>,
    gateway: String,
    limits: BatchLimits,
    read_limit: usize,
}

/// The agent's replays: start one, look them up.
#[derive(Clone)]
pub struct Replays {
    book: Arc<Mutex<Book>>,
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for Replays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replays").finish_non_exhaustive()
    }
}

/// Events of `device` (key) with `(ts_ms, id)` after `after` and `ts_ms < until`, oldest first.
fn page(
    c: &Connection,
    device: i64,
    after: (i64, i64),
    until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<EventRow>> {
    c.prepare_cached(
        "SELECT id, device, boot_no, seq, sensor, ts_ms, value FROM events
         WHERE device = ?1 AND (ts_ms, id) > (?2, ?3) AND ts_ms < ?4 ORDER BY ts_ms, id LIMIT ?5",
    )?
    .query_map(
        params![device, after.0, after.1, until, limit as i64],
        event_row,
    )?
    .collect()
}

/// The devices (key, id) a replay of `spec` reads, with the events in its range.
fn plan(c: &Connection, spec: &ReplaySpec) -> Result<(Vec<i64>, u64), StartError> {
    let store = |e: rusqlite::Error| StartError::Store(e.to_string());
    let keys: Vec<i64> = match &spec.device {
        Some(d) => {
            let k = crate::store::query::device_key(c, d)
                .map_err(|e| StartError::Store(e.to_string()))?;
            vec![k.ok_or_else(|| StartError::UnknownDevice(d.clone()))?]
        }
        None => c
            .prepare("SELECT id FROM devices ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(store)?,
    };
    let mut total = 0u64;
    for k in &keys {
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM events WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3",
                params![k, spec.since_ms, spec.until_ms],
                |r| r.get(0),
            )
            .map_err(store)?;
        total += n as u64;
    }
    Ok((keys, total))
}

impl Replays {
    /// Replays through the uplink that publishes what `out` carries, with its settings.
    pub fn new(
        db: PathBuf,
        store: StoreHandle,
        out: mpsc::Sender<OutgoingMessage>,
        settings: &UplinkSettings,
    ) -> Replays {
        Replays {
            book: Arc::default(),
            ctx: Arc::new(Ctx {
                db,
                store,
                out,
                gateway: settings.gateway.clone(),
                limits: settings.limits,
                read_limit: settings.read_limit.max(1),
            }),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replay `id`.
    pub fn get(&self, id: u64) -> Option<ReplayView> {
        self.book().get(id)
    }

    /// The kept replays, newest first.
    pub fn list(&self) -> Vec<ReplayView> {
        self.book().list()
    }

    /// Checks `req`, writes acked samples to the database, counts the range and starts the
    /// replay; returns it as it starts.
    pub async fn start(&self, req: &ReplayRequest) -> Result<ReplayView, StartError> {
        let spec = ReplaySpec::resolve(req, crate::utc_now_ms()).map_err(StartError::BadRequest)?;
        if let Some(id) = self.book().running() {
            return Err(StartError::Busy(id));
        }
        self.ctx.store.sync().await.map_err(|e| {
            StartError::Store(format!("writing acked samples to the database: {e}"))
        })?;
        let ctx = self.ctx.clone();
        let book = self.book.clone();
        let rt = tokio::runtime::Handle::current();
        let (started_tx, started) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let opened = crate::store::open_reader(&ctx.db)
                .map_err(|e| StartError::Store(e.to_string()))
                .and_then(|c| plan(&c, &spec).map(|p| (c, p)));
            let (conn, (keys, total)) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let view = {
                let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(id) = b.running() {
                    let _ = started_tx.send(Err(StartError::Busy(id)));
                    return;
                }
                b.begin(&spec, total, crate::utc_now_ms())
            };
            let id = view.id;
            tracing::info!(
                replay = id,
                since = %view.since,
                until = %view.until,
                device = ?spec.device,
                events = total,
                "Replay started."
            );
            let _ = started_tx.send(Ok(view));
            let result = run(&ctx, &rt, &conn, &spec, &keys, |f| {
                if let Some(v) = book.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
                    f(v);
                }
            });
            let mut b = book.lock().unwrap_or_else(|p| p.into_inner());
            match &result {
                Ok(()) => {
                    let v = b.get(id);
                    tracing::info!(
                        replay = id,
                        acked = v.as_ref().map_or(0, |v| v.events_acked),
                        skipped = v.as_ref().map_or(0, |v| v.events_skipped),
                        "Replay done."
                    );
                }
                Err(e) => tracing::warn!(replay = id, error = %e, "Replay failed."),
            }
            b.end(id, result.err(), crate::utc_now_ms());
        });
        started
            .await
            .map_err(|_| StartError::Store("the replay thread stopped".into()))?
    }
}

/// The replay itself, on a blocking thread: read a page, publish its messages within the window,
/// account for PUBACKs. `update` applies a change to the replay's figures.
fn run(
    ctx: &Ctx,
    rt: &tokio::runtime::Handle,
    conn: &Connection,
    spec: &ReplaySpec,
    keys: &[i64],
    update: impl Fn(&dyn Fn(&mut ReplayView)),
) -> Result<(), String> {
    let mut names = Names::default();
    let mut window: Window<oneshot::Receiver<()>> = Window::default();
    let wait_oldest = |window: &mut Window<oneshot::Receiver<()>>| -> Result<(), String> {
        if let Some((rx, events)) = window.oldest() {
            rt.block_on(rx).map_err(|_| {
                "a replayed message was not delivered: the broker refused it or it is larger \
                 than the broker's maximum packet size (see the quarantine), or the agent is \
                 stopping"
                    .to_owned()
            })?;
            update(&|v| v.events_acked += events);
        }
        Ok(())
    };
    for &key in keys {
        let mut after = (spec.since_ms, 0);
        loop {
            let rows = page(conn, key, after, spec.until_ms, ctx.read_limit)
                .map_err(|e| format!("reading the store: {e}"))?;
            let Some(last) = rows.last() else { break };
            after = (last.5, last.0);
            let full = rows.len() == ctx.read_limit;
            // Batches want store order (`seq` rising within a boot); a device's clock may not.
            let mut rows = rows;
            rows.sort_unstable_by_key(|r| r.0);
            let events = names
                .events(conn, rows)
                .map_err(|e| format!("reading the store: {e}"))?;
            for m in batch::batches(&ctx.gateway, &events, &ctx.limits) {
                let n = m.events as u64;
                if m.refused.is_some() {
                    update(&|v| v.events_skipped += n);
                    continue;
                }
                while !window.has_room() {
                    wait_oldest(&mut window)?;
                }
                let (tx, rx) = oneshot::channel();
                rt.block_on(ctx.out.send(OutgoingMessage {
                    topic: m.topic,
                    payload: m.payload,
                    events: m.events,
                    delivered: Some(tx),
                }))
                .map_err(|_| "the uplink stopped (the agent is stopping)".to_owned())?;
                window.sent(rx, n);
                update(&|v| v.events_sent += n);
            }
            if !full {
                break;
            }
        }
    }
    while window.oldest_pending() {
        wait_oldest(&mut window)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(since: &str, until: Option<&str>, device: Option<&str>) -> ReplayRequest {
        ReplayRequest {
            since: InstantArg::Text(since.into()),
            until: until.map(|u| InstantArg::Text(u.into())),
            device: device.map(str::to_owned),
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn ranges_resolve_against_now_and_name_the_bad_field() {
        let s = ReplaySpec::resolve(&req("-1h", None, None), NOW).unwrap();
        assert_eq!((s.since_ms, s.until_ms), (NOW - 3_600_000, NOW));
        let s = ReplaySpec::resolve(
            &ReplayRequest {
                since: InstantArg::Ms(1000),
                until: Some(InstantArg::Text("2000".into())),
                device: Some("pump-1".into()),
            },
            NOW,
        )
        .unwrap();
        assert_eq!((s.since_ms, s.until_ms), (1000, 2000));
        assert_eq!(s.device.as_deref(), Some("pump-1"));
        let e = ReplaySpec::resolve(&req("yesterday", None, None), NOW).unwrap_err();
        assert!(e.starts_with("since: "), "{e}");
        let e = ReplaySpec::resolve(&req("-1h", Some("-2h"), None), NOW).unwrap_err();
        assert!(
            e.starts_with("until: ") && e.contains("not after since"),
            "{e}"
        );
        let e = ReplaySpec::resolve(&req("-1h", Some("-1h"), None), NOW).unwrap_err();
        assert!(e.contains("not after since"), "an empty range: {e}");
        let e = ReplaySpec::resolve(&req("-1h", None, Some("")), NOW).unwrap_err();
        assert_eq!(e, "device: is empty");
        let long = "d".repeat(300);
        let e = ReplaySpec::resolve(&req("-1h", None, Some(&long)), NOW).unwrap_err();
        assert!(e.starts_with("device: "), "{e}");
    }

    #[test]
    fn requests_take_text_or_milliseconds_and_refuse_unknown_fields() {
        let r: ReplayRequest =
            serde_json::from_str(r#"{"since":1000,"until":"2026-12-07T00:00:00Z"}"#).unwrap();
        assert!(matches!(r.since, InstantArg::Ms(1000)));
        let e = serde_json::from_str::<ReplayRequest>(r#"{"since":"-1h","from":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `from`"), "{e}");
        assert!(serde_json::from_str::<ReplayRequest>(r#"{"until":"now"}"#).is_err());
    }

    #[test]
    fn one_replay_runs_at_a_time_and_the_newest_are_kept() {
        let spec = ReplaySpec {
            since_ms: 0,
            until_ms: 10,
            device: None,
        };
        let mut b = Book::default();
        let v = b.begin(&spec, 5, NOW);
        assert_eq!(
            (v.id, v.state, v.events_total),
            (1, ReplayState::Running, 5)
        );
        assert_eq!(b.running(), Some(1));
        b.get_mut(1).unwrap().events_acked = 5;
        b.end(1, None, NOW + 1);
        assert_eq!(b.running(), None);
        assert_eq!(b.get(1).unwrap().state, ReplayState::Done);
        b.begin(&spec, 0, NOW);
        b.end(2, Some("broker refused".into()), NOW);
        let v = b.get(2).unwrap();
        assert_eq!(
            (v.state, v.error.as_deref()),
            (ReplayState::Failed, Some("broker refused"))
        );
        for _ in 0..KEEP {
            let id = b.begin(&spec, 0, NOW).id;
            b.end(id, None, NOW);
        }
        let all = b.list();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].id, 2 + KEEP as u64, "newest first");
        assert!(b.get(1).is_none(), "the oldest are dropped");
    }

    #[test]
    fn the_window_holds_at_most_window_messages_oldest_first() {
        let mut w: Window<u32> = Window::default();
        for i in 0..WINDOW as u32 {
            assert!(w.has_room());
            w.sent(i, u64::from(i));
        }
        assert!(!w.has_room());
        assert_eq!(w.oldest(), Some((0, 0)));
        assert!(w.has_room());
        while w.oldest_pending() {
            w.oldest();
        }
        assert_eq!(w.oldest(), None);
    }
}

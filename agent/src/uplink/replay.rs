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
//! - **Exact.** The range is fixed when the replay starts: events stored until then (ids up to
//!   the newest at that moment), so `events_total` is what will be sent or skipped.
//! - **Bounded.** At most [`WINDOW`] messages of a replay, and at most half the uplink's in-flight
//!   window, wait for their PUBACK, so live forwarding keeps the rest; one replay runs at a time.
//! - **Ends.** A replay waits for the broker as long as it takes (a broker outage pauses it), but
//!   it can be cancelled (`POST /api/v1/replays/{id}/cancel`), and the agent stopping cancels it
//!   at once. Whatever ends the replay thread (even a panic) ends its entry.
//! - **Skips, not stops.** Events the contract refuses (quarantined when first forwarded) are
//!   counted in `events_skipped`, not sent. A message the broker refuses, or the agent stopping,
//!   ends the replay `failed` with the reason.
//! - **In memory.** A replay lives as long as the agent: after a restart it is gone (run it
//!   again; the cloud deduplicates). The last [`KEEP`] replays can be looked up.
//!
//! [`Book`] (which replays exist, the one-at-a-time rule, their figures) and [`Window`] (which
//! messages wait for a PUBACK) are sans-IO; [`Replays`] and the replay thread do the I/O.
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
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
    /// Cancelled (by a request, or because the agent stopped).
    Cancelled,
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
    /// Why it failed or was cancelled.
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
    /// The store cannot be synced (stopping, or failing).
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The range cannot be read.
    #[error("reading the store: {0}")]
    Read(String),
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every event sent was acked.
    Done,
    /// Stopped on an error.
    Failed(String),
    /// Cancelled, and why.
    Cancelled(String),
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

    /// Ends replay `id` at `now_ms`, if it still runs.
    pub fn end(&mut self, id: u64, how: Ended, now_ms: i64) {
        if let Some(v) = self.get_mut(id).filter(|v| v.state == ReplayState::Running) {
            (v.state, v.error) = match how {
                Ended::Done => (ReplayState::Done, None),
                Ended::Failed(e) => (ReplayState::Failed, Some(e)),
                Ended::Cancelled(e) => (ReplayState::Cancelled, Some(e)),
            };
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
    limit: usize,
}

impl<W> Window<W> {
    /// A window for an uplink whose in-flight window is `uplink_window` messages: at most
    /// [`WINDOW`] and half of it (at least one).
    pub fn new(uplink_window: usize) -> Self {
        Window {
            waiting: VecDeque::new(),
            limit: (uplink_window / 2).clamp(1, WINDOW),
        }
    }

    /// Whether another message may go out.
    pub fn has_room(&self) -> bool {
        self.waiting.len() < self.limit
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
    /// The uplink's in-flight window (messages).
    uplink_window: usize,
    /// Cancelled when the agent stops; each replay's token is a child.
    stop: CancellationToken,
}

/// The agent's replays: start one, look them up, cancel one.
#[derive(Clone)]
pub struct Replays {
    book: Arc<Mutex<Book>>,
    cancels: Arc<Mutex<HashMap<u64, CancellationToken>>>,
    ctx: Arc<Ctx>,
}

/// Ends the replay's entry however its thread ends (a panic included: then `failed`).
struct EndGuard {
    book: Arc<Mutex<Book>>,
    cancels: Arc<Mutex<HashMap<u64, CancellationToken>>>,
    id: u64,
    how: Ended,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        lock(&self.cancels).remove(&self.id);
        lock(&self.book).end(self.id, self.how.clone(), crate::utc_now_ms());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Replays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replays").finish_non_exhaustive()
    }
}

/// Events of `device` (key) with `(ts_ms, id)` after `after`, `ts_ms < until` and `id <= upto`,
/// in `(ts_ms, id)` order.
fn page(
    c: &Connection,
    device: i64,
    after: (i64, i64),
    (until, upto): (i64, i64),
    limit: usize,
) -> rusqlite::Result<Vec<EventRow>> {
    c.prepare_cached(
        "SELECT id, device, boot_no, seq, sensor, ts_ms, value FROM events
         WHERE device = ?1 AND (ts_ms, id) > (?2, ?3) AND ts_ms < ?4 AND id <= ?5
         ORDER BY ts_ms, id LIMIT ?6",
    )?
    .query_map(
        params![device, after.0, after.1, until, upto, limit as i64],
        event_row,
    )?
    .collect()
}

/// What a replay reads: the device keys, the newest event id when it started, and the events.
struct Plan {
    keys: Vec<i64>,
    upto: i64,
    total: u64,
}

/// The devices a replay of `spec` reads, with the events in its range stored so far.
fn plan(c: &Connection, spec: &ReplaySpec) -> Result<Plan, StartError> {
    let read = |e: rusqlite::Error| StartError::Read(e.to_string());
    let tx = c.unchecked_transaction().map_err(read)?; // one snapshot for all counts
    let keys: Vec<i64> = match &spec.device {
        Some(d) => {
            let k = crate::store::query::device_key(&tx, d)
                .map_err(|e| StartError::Read(e.to_string()))?;
            vec![k.ok_or_else(|| StartError::UnknownDevice(d.clone()))?]
        }
        None => tx
            .prepare("SELECT id FROM devices ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(read)?,
    };
    let upto: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
        .map_err(read)?;
    let mut total = 0u64;
    for k in &keys {
        let n: i64 = tx
            .query_row(
                "SELECT count(*) FROM events
                 WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND id <= ?4",
                params![k, spec.since_ms, spec.until_ms, upto],
                |r| r.get(0),
            )
            .map_err(read)?;
        total += n as u64;
    }
    Ok(Plan { keys, upto, total })
}

impl Replays {
    /// Replays through the uplink that publishes what `out` carries, with its settings; `stop`
    /// (the agent stopping) cancels a running replay.
    pub fn new(
        db: PathBuf,
        store: StoreHandle,
        out: mpsc::Sender<OutgoingMessage>,
        settings: &UplinkSettings,
        stop: CancellationToken,
    ) -> Replays {
        Replays {
            book: Arc::default(),
            cancels: Arc::default(),
            ctx: Arc::new(Ctx {
                db,
                store,
                out,
                gateway: settings.gateway.clone(),
                limits: settings.limits,
                read_limit: settings.read_limit.max(1),
                uplink_window: usize::from(settings.link.inflight.max(2)),
                stop,
            }),
        }
    }

    /// Replay `id`.
    pub fn get(&self, id: u64) -> Option<ReplayView> {
        lock(&self.book).get(id)
    }

    /// The kept replays, newest first.
    pub fn list(&self) -> Vec<ReplayView> {
        lock(&self.book).list()
    }

    /// Cancels replay `id` if it runs; the replay as it is then (`None`: no such replay). The
    /// thread ends it `cancelled` a moment later.
    pub fn cancel(&self, id: u64) -> Option<ReplayView> {
        if let Some(t) = lock(&self.cancels).get(&id) {
            t.cancel();
        }
        self.get(id)
    }

    /// Checks `req`, writes acked samples to the database, counts the range and starts the
    /// replay; returns it as it starts.
    pub async fn start(&self, req: &ReplayRequest) -> Result<ReplayView, StartError> {
        let spec = ReplaySpec::resolve(req, crate::utc_now_ms()).map_err(StartError::BadRequest)?;
        if let Some(id) = lock(&self.book).running() {
            return Err(StartError::Busy(id));
        }
        self.ctx.store.sync().await?;
        let (ctx, book, cancels) = (self.ctx.clone(), self.book.clone(), self.cancels.clone());
        let rt = tokio::runtime::Handle::current();
        let (started_tx, started) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let opened = crate::store::open_reader(&ctx.db)
                .map_err(|e| StartError::Read(e.to_string()))
                .and_then(|c| plan(&c, &spec).map(|p| (c, p)));
            let (conn, plan) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let cancel = ctx.stop.child_token();
            let view = {
                let mut b = lock(&book);
                if let Some(id) = b.running() {
                    let _ = started_tx.send(Err(StartError::Busy(id)));
                    return;
                }
                let v = b.begin(&spec, plan.total, crate::utc_now_ms());
                lock(&cancels).insert(v.id, cancel.clone());
                v
            };
            let id = view.id;
            let mut guard = EndGuard {
                book: book.clone(),
                cancels,
                id,
                how: Ended::Failed("the replay stopped on an internal error".into()),
            };
            tracing::info!(
                replay = id,
                since = %view.since,
                until = %view.until,
                device = ?spec.device,
                events = plan.total,
                "Replay started."
            );
            let _ = started_tx.send(Ok(view));
            let how = run(&ctx, &rt, &conn, &spec, &plan, &cancel, |f| {
                if let Some(v) = lock(&book).get_mut(id) {
                    f(v);
                }
            });
            match &how {
                Ended::Done => {
                    let v = lock(&book).get(id);
                    tracing::info!(
                        replay = id,
                        acked = v.as_ref().map_or(0, |v| v.events_acked),
                        skipped = v.as_ref().map_or(0, |v| v.events_skipped),
                        "Replay done."
                    );
                }
                Ended::Failed(e) => tracing::warn!(replay = id, error = %e, "Replay failed."),
                Ended::Cancelled(why) => tracing::info!(replay = id, %why, "Replay cancelled."),
            }
            guard.how = how;
        });
        started
            .await
            .map_err(|_| StartError::Read("the replay thread stopped".into()))?
    }
}

/// Why the replay stops when `cancel` fired.
fn cancelled(ctx: &Ctx) -> Ended {
    Ended::Cancelled(if ctx.stop.is_cancelled() {
        "the agent is stopping".into()
    } else {
        "cancelled by a request".into()
    })
}

/// The replay itself, on a blocking thread: read a page, publish its messages within the window,
/// account for PUBACKs, until the range is done or `cancel`. `update` changes the figures.
fn run(
    ctx: &Ctx,
    rt: &tokio::runtime::Handle,
    conn: &Connection,
    spec: &ReplaySpec,
    plan: &Plan,
    cancel: &CancellationToken,
    update: impl Fn(&dyn Fn(&mut ReplayView)),
) -> Ended {
    let mut names = Names::default();
    let mut window: Window<oneshot::Receiver<()>> = Window::new(ctx.uplink_window);
    // `Err(how)`: the replay ends so.
    let wait_oldest = |window: &mut Window<oneshot::Receiver<()>>| -> Result<(), Ended> {
        let Some((rx, events)) = window.oldest() else {
            return Ok(());
        };
        rt.block_on(async {
            tokio::select! {
                r = rx => r.map_err(|_| if cancel.is_cancelled() || ctx.stop.is_cancelled() {
                    cancelled(ctx)
                } else {
                    Ended::Failed(
                        "a replayed message was not delivered: the broker refused it, or it is \
                         larger than the broker's maximum packet size (see the quarantine)"
                            .into(),
                    )
                }),
                _ = cancel.cancelled() => Err(cancelled(ctx)),
            }
        })?;
        update(&|v| v.events_acked += events);
        Ok(())
    };
    let mut body = || -> Result<(), Ended> {
        for &key in &plan.keys {
            let mut after = (spec.since_ms, 0);
            loop {
                if cancel.is_cancelled() {
                    return Err(cancelled(ctx));
                }
                let rows = page(conn, key, after, (spec.until_ms, plan.upto), ctx.read_limit)
                    .map_err(|e| Ended::Failed(format!("reading the store: {e}")))?;
                let Some(last) = rows.last() else { break };
                after = (last.5, last.0);
                let full = rows.len() == ctx.read_limit;
                // Batches want store order (`seq` rising within a boot); a device's clock may not.
                let mut rows = rows;
                rows.sort_unstable_by_key(|r| r.0);
                let events = names
                    .events(conn, rows)
                    .map_err(|e| Ended::Failed(format!("reading the store: {e}")))?;
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
                    let message = OutgoingMessage {
                        topic: m.topic,
                        payload: m.payload,
                        events: m.events,
                        delivered: Some(tx),
                    };
                    rt.block_on(async {
                        tokio::select! {
                            r = ctx.out.send(message) => r.map_err(|_| cancelled(ctx)),
                            _ = cancel.cancelled() => Err(cancelled(ctx)),
                        }
                    })?;
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
    };
    match body() {
        Ok(()) => Ended::Done,
        Err(how) => how,
    }
}

#[cfg(test)]
mod tests;

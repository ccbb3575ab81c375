//! The single writer: owns the read-write connection on its own thread, applies operations from a
//! bounded channel, and commits them in groups.
//!
//! Invariants:
//! - **Group commit.** A transaction closes when the queue runs dry, when it holds `flush_samples`
//!   samples, or `flush_interval` after its first operation, whichever comes first: light load is
//!   committed at once, heavy load in large batches. A `Hello` is answered only after the commit
//!   that holds its rows (the device must not be welcomed on uncommitted rows); Hellos queued
//!   together share that commit, so a gateway's devices reconnecting at once cost one sync, not one
//!   each.
//! - **Ack after commit.** Each link owns an [`AckSlot`]; only after `COMMIT` returns does the writer
//!   publish the boot's new committed `next_seq` into the slots of the links that sent samples.
//! - **Per-boot authority.** The writer keeps one `ferry_wire::Acceptor` per `(device, boot)`, so
//!   samples of a boot are stored once and in order even if two links carry the same device. If a
//!   commit fails, every touched acceptor is reset to its committed position: nothing rolled back
//!   is ever acked.
//! - **Full disk.** `SQLITE_FULL` rolls the transaction back (its samples count as refused), marks
//!   the disk full, and refuses samples for a second before trying again; the agent keeps running
//!   and keeps its data. Only a commit that wrote something clears the mark.
//! - **Bounded per link.** A `SamplesOp` carries a [`Held`] token from its link's [`LinkBudget`];
//!   the writer keeps it until the batch holding the samples commits (or fails), then the link may
//!   read more. A link therefore never has more than its budget waiting for a commit: under
//!   overload the devices' rings absorb the excess instead of the agent's queue, and an ack never
//!   waits behind more than every link's budget.
//! - **Counted drops.** Deleting unforwarded events (`drop_oldest`) and adding them to the
//!   `counters` table is one transaction; the metric follows only after it committed.
//! - **Ids only grow.** Retention never deletes the newest event, so SQLite's rowid (max + 1) never
//!   hands out an id at or below the forwarding cursor again: a new row is never taken for forwarded.
//! - **Read models.** The `latest` table (last value per sensor), `devices.events_total` and the
//!   ten-second summaries of fast sensors ([`super::rollup`]) are written in the same transaction
//!   as the rows they summarise, once per batch; retention updates the summaries in the deleting
//!   transaction.
//! - **Commit notifications.** After each commit that stored events, the highest committed
//!   `events.id` is published on a watch channel ([`StoreHandle::committed`]); live readers (the
//!   API's SSE stream) read everything above their position from the store, so nothing is skipped.
//! - **Shutdown.** When every sender is dropped the writer commits what it holds, checkpoints the
//!   WAL (`TRUNCATE`) and returns.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::{Acceptor, Heartbeat};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use super::retention::{self, Step};
use super::rollup;
use super::StoreError;
use crate::config::StoreSettings;
use crate::metrics::Metrics;

/// Operations queued before the writer blocks its senders.
const QUEUE: usize = 4096;
/// Rows deleted per retention statement.
const CHUNK: i64 = 5000;
/// How long samples are refused after the disk refused a write.
const DISK_FULL_BACKOFF: Duration = Duration::from_secs(1);
/// How often time-based retention and housekeeping run.
const MAINTENANCE: Duration = Duration::from_secs(5);
/// A writer step (a commit, the work after it, maintenance) taking longer than this is logged: every
/// device waiting for an ack waits for it.
const STALL: Duration = Duration::from_millis(200);
/// At most one stall log line per this long (the next one counts the stalls in between).
const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a link learns from the writer: the committed position of its current boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckState {
    /// `devices.id` the position belongs to (0 before the first publication).
    pub device: i64,
    /// Boot the position belongs to.
    pub boot_id: u32,
    /// Every seq below this is committed (or was dropped by the device).
    pub next_seq: u32,
    /// Bumped when the link should ack at once although nothing new committed (a hole).
    pub nudges: u32,
}

/// The writer's end of a link's ack channel.
pub type AckSlot = Arc<watch::Sender<AckState>>;

/// Samples one link may have waiting for a commit before it stops reading from its device (eight
/// full frames). Measured with the ingest bench's overload ladder: see `docs/decisions/`.
pub const LINK_BUDGET: usize = 128;

/// A link's samples handed to the writer and not yet committed (see the module header).
#[derive(Debug, Default)]
pub struct LinkBudget {
    waiting: std::sync::atomic::AtomicUsize,
    freed: tokio::sync::Notify,
}

impl LinkBudget {
    /// Whether the link may hand over more samples.
    pub fn has_room(&self) -> bool {
        self.waiting.load(Relaxed) < LINK_BUDGET
    }

    /// Samples waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Resolves after some samples were committed (or refused) since the last call.
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    /// Counts `n` samples as waiting until the returned token is dropped.
    pub fn hold(self: &Arc<Self>, n: usize) -> Held {
        self.waiting.fetch_add(n, Relaxed);
        Held {
            budget: self.clone(),
            n,
        }
    }
}

/// Samples counted in a [`LinkBudget`] until this is dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<LinkBudget>,
    n: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.waiting.fetch_sub(self.n, Relaxed);
        self.budget.freed.notify_one();
    }
}

/// Reply to a Hello.
#[derive(Debug, Clone, Copy)]
pub struct Welcomed {
    /// `devices.id`.
    pub device: i64,
    /// `boots.boot_no` of this boot.
    pub boot_no: i64,
    /// Committed position of this boot (the Welcome's `next_seq`).
    pub next_seq: u32,
}

/// A device announced itself.
#[derive(Debug)]
pub struct HelloOp {
    /// Device id.
    pub device_id: String,
    /// Firmware.
    pub firmware: String,
    /// Boot id.
    pub boot_id: u32,
    /// Tick rate.
    pub tick_hz: u32,
    /// `(index, name, unit, interval_ms)`.
    pub sensors: Vec<(u8, String, String, u32)>,
    /// Link name.
    pub link: String,
    /// Answer.
    pub reply: oneshot::Sender<Result<Welcomed, StoreError>>,
}

/// One reading, ready for the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Sensor index.
    pub sensor: u8,
    /// UTC milliseconds.
    pub ts_ms: i64,
    /// Value.
    pub value: f32,
}

/// The samples of one `Samples` frame.
#[derive(Debug)]
pub struct SamplesOp {
    /// `devices.id`.
    pub device: i64,
    /// `boots.boot_no`.
    pub boot_no: i64,
    /// The boot id (for acks).
    pub boot_id: u32,
    /// The frame's `oldest`.
    pub oldest: u32,
    /// The frame's `first_seq`.
    pub first_seq: u32,
    /// Rows in seq order.
    pub rows: Vec<Row>,
    /// Indexes of rows whose time is out of range (PROTOCOL.md section 5), ascending: their seqs
    /// are consumed (acked) but they are not stored; counted, and the frame quarantined, if new.
    pub out_of_range: Vec<usize>,
    /// `(link, encoded frame)` for the quarantine, when `out_of_range` is not empty.
    pub quarantine: Option<(String, Vec<u8>)>,
    /// The link's budget token, released when these samples are committed or refused.
    pub held: Option<Held>,
    /// Where to publish the committed position.
    pub ack: AckSlot,
}

/// Statements another module (commands) runs inside the writer's open transaction: the
/// single-writer rule holds, and they commit (durably) with the batch.
pub struct Exec(pub Box<ExecFn>);

/// The statements of an [`Exec`].
pub type ExecFn = dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send;

impl std::fmt::Debug for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exec(..)")
    }
}

/// Everything the writer does.
#[derive(Debug)]
pub enum Op {
    /// Runs statements in the current transaction; `reply` answers after the commit.
    Exec {
        /// The statements.
        run: Exec,
        /// Done (committed) or failed (rolled back).
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// See [`HelloOp`].
    Hello(HelloOp),
    /// See [`SamplesOp`].
    Samples(SamplesOp),
    /// Device status.
    Heartbeat {
        /// `devices.id`.
        device: i64,
        /// The message.
        hb: Heartbeat,
    },
    /// A device went offline (link closed or silent) or came back, on this link.
    Presence {
        /// `devices.id`.
        device: i64,
        /// The link reporting it (a stale link cannot mark a reconnected device offline).
        link: String,
        /// Online now.
        online: bool,
    },
    /// A rejected frame.
    Quarantine {
        /// Link name.
        link: String,
        /// Reason label.
        reason: std::borrow::Cow<'static, str>,
        /// Bytes in the run.
        len: usize,
        /// Its first bytes.
        raw: Vec<u8>,
    },
    /// Events up to this id are forwarded (the uplink's cursor).
    MarkForwarded {
        /// Last forwarded `events.id`.
        event_id: i64,
        /// Done.
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// The uplink's position (see `crate::uplink::forward::Progress`): every id
    /// `<= backlog` and every id in `(live_from, live]` is forwarded.
    UplinkProgress {
        /// Forwarded through this id (retention prunes up to here).
        backlog: i64,
        /// Start (exclusive) of the live range.
        live_from: i64,
        /// End (inclusive) of the live range.
        live: i64,
        /// Done.
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Commit now and answer (tests, CLI, shutdown).
    Sync(oneshot::Sender<Result<(), StoreError>>),
}

/// Cheap, cloneable handle to the writer.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Op>,
    committed: watch::Receiver<i64>,
}

impl StoreHandle {
    /// Queues an operation (waits while the queue is full: that is ingest backpressure).
    pub async fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx.send(op).await.map_err(|_| StoreError::Stopped)
    }

    /// Registers a Hello and returns the committed position of that boot.
    #[allow(clippy::too_many_arguments)]
    pub async fn hello(
        &self,
        device_id: String,
        firmware: String,
        boot_id: u32,
        tick_hz: u32,
        sensors: Vec<(u8, String, String, u32)>,
        link: String,
    ) -> Result<Welcomed, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Hello(HelloOp {
            device_id,
            firmware,
            boot_id,
            tick_hz,
            sensors,
            link,
            reply,
        }))
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Commits everything queued before this call.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Sync(reply)).await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Runs `run` in the writer's transaction and waits for the commit.
    pub async fn exec(
        &self,
        run: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Exec {
            run: Exec(Box::new(run)),
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// True while the writer thread accepts operations.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The highest committed `events.id`, updated after every commit that stored events.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// Moves the forwarding cursor.
    pub async fn mark_forwarded(&self, event_id: i64) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::MarkForwarded { event_id, reply }).await?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The running writer thread.
pub struct Spawned {
    /// Handle for senders.
    pub handle: StoreHandle,
    /// The thread.
    pub join: std::thread::JoinHandle<()>,
    /// Cancelled when the thread ends, however it ends (also on a panic).
    pub exited: tokio_util::sync::CancellationToken,
    /// Answered once the writer has read its state and accepts operations.
    pub ready: oneshot::Receiver<Result<(), StoreError>>,
}

/// Cancels its token when dropped: runs when the writer thread returns or unwinds.
struct ExitGuard(tokio_util::sync::CancellationToken);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Starts the writer thread on an opened, migrated connection.
pub fn spawn(
    conn: Connection,
    settings: StoreSettings,
    metrics: Arc<Metrics>,
) -> std::io::Result<Spawned> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (committed_tx, committed) = watch::channel(0i64);
    let exited = tokio_util::sync::CancellationToken::new();
    let guard = ExitGuard(exited.clone());
    let (ready_tx, ready) = oneshot::channel();
    let join = std::thread::Builder::new().name("ferry-store".into()).spawn(move || {
        let _guard = guard;
        let mut checkpointer = match super::checkpoint::Checkpointer::start(&settings.path) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "No checkpoint thread; the writer checkpoints itself.");
                let _ = conn.pragma_update(None, "wal_autocheckpoint", 1000);
                None
            }
        };
        let mut w = Writer::new(conn, settings, metrics);
        w.committed = committed_tx;
        w.wal_frames = checkpointer.as_ref().map(|c| c.frames());
        // Reading the state can meet a full disk (marking devices offline writes): retry a while.
        let mut attempt = 0;
        loop {
            match w.recover() {
                Ok(()) => break,
                Err(e @ StoreError::DiskFull(_)) if attempt < 30 => {
                    if attempt == 0 {
                        tracing::error!(error = %e, "Disk full while opening the store; retrying.");
                    }
                    attempt += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!(error = %e, "Store state could not be read; writer stops.");
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready_tx.send(Ok(()));
        w.run(rx, || {
            if let Some(c) = checkpointer.as_mut() {
                c.stop();
            }
        });
    })?;
    Ok(Spawned {
        handle: StoreHandle { tx, committed },
        join,
        exited,
        ready,
    })
}

struct BootState {
    acceptor: Acceptor,
    committed: u32,
    gap_pending: u64,
}

#[derive(Default)]
struct Batch {
    open: bool,
    samples: usize,
    started: Option<Instant>,
    boots: HashMap<(i64, i64), ()>,
    links: HashMap<usize, (AckSlot, u32, (i64, i64))>,
    heartbeats: HashMap<i64, Heartbeat>,
    presence: HashMap<i64, (String, bool)>,
    seen: HashMap<i64, i64>,
    quarantined: u64,
    forwarded: Option<i64>,
    live_range: Option<(i64, i64)>,
    /// Newest row per `(device, sensor)` in this batch: `(ts_ms, value, event id)`.
    latest: HashMap<(i64, u8), (i64, f32, i64)>,
    /// Rows stored per device in this batch.
    stored: HashMap<i64, u64>,
    /// Summaries of this batch's rows of summarised sensors.
    rollup: rollup::Batch,
    /// Highest `events.id` inserted in this batch (0: none).
    last_event_id: i64,
    replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Hellos of this batch, answered when it commits.
    welcomes: Vec<(oneshot::Sender<Result<Welcomed, StoreError>>, Welcomed)>,
    /// `total_changes()` when the transaction began: a commit that changed no row proves nothing
    /// about free space.
    changes_at_begin: u64,
    /// Budget tokens of the links whose samples this batch holds (released with the batch).
    held: Vec<Held>,
}

struct Writer {
    conn: Connection,
    settings: StoreSettings,
    metrics: Arc<Metrics>,
    boots: HashMap<(i64, i64), BootState>,
    batch: Batch,
    last_seen_written: HashMap<i64, i64>,
    refuse_until: Option<Instant>,
    refusing_for_cap: bool,
    forward_cursor: i64,
    quarantine_rows: u64,
    last_maintenance: Instant,
    last_loss_log: Option<Instant>,
    /// When a stall was last logged, and the stalls since.
    last_stall_log: Option<Instant>,
    stalls_unlogged: u64,
    last_retention: Instant,
    last_wal_check: Instant,
    /// Frames in the WAL, from the checkpoint thread (`None` without one: SQLite's automatic
    /// checkpoints keep the WAL short then).
    wal_frames: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Bytes per WAL frame (page size + frame header).
    frame_bytes: u64,
    rt: tokio::runtime::Runtime,
    committed: watch::Sender<i64>,
    /// Summarised sensors and the summaries held in memory.
    summaries: rollup::Summaries,
}

impl Writer {
    fn new(conn: Connection, settings: StoreSettings, metrics: Arc<Metrics>) -> Self {
        let frame_bytes = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_or(4096, |p| p.max(512) as u64)
            + 24;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("timer runtime");
        Writer {
            conn,
            settings,
            metrics,
            boots: HashMap::new(),
            batch: Batch::default(),
            last_seen_written: HashMap::new(),
            refuse_until: None,
            refusing_for_cap: false,
            forward_cursor: 0,
            quarantine_rows: 0,
            last_maintenance: Instant::now(),
            last_loss_log: None,
            last_stall_log: None,
            stalls_unlogged: 0,
            last_retention: Instant::now(),
            last_wal_check: Instant::now(),
            wal_frames: None,
            frame_bytes,
            rt,
            committed: watch::channel(0).0,
            summaries: rollup::Summaries::default(),
        }
    }

    /// Reads what the writer keeps in memory; marks every device offline (no link is open yet).
    fn recover(&mut self) -> Result<(), StoreError> {
        self.forward_cursor = self
            .conn
            .query_row(
                "SELECT event_id FROM forward_cursor WHERE name = 'uplink'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        self.quarantine_rows = self
            .conn
            .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))?;
        let last: i64 =
            self.conn
                .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        self.committed.send_replace(last);
        self.summaries = rollup::Summaries::load(&self.conn)?;
        self.conn
            .execute("UPDATE devices SET online = 0 WHERE online != 0", [])
            .map_err(StoreError::from_write)?;
        self.measure();
        Ok(())
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Op>, stop_checkpointer: impl FnOnce()) {
        'outer: loop {
            // Also under sustained load, when `recv` below is always ready and never times out.
            if self.last_maintenance.elapsed() >= MAINTENANCE {
                let t = Instant::now();
                self.maintenance();
                self.note_stall("maintenance", t.elapsed(), None);
            }
            let commits = Metrics::get(&self.metrics.commits);
            let wait = MAINTENANCE.saturating_sub(self.last_maintenance.elapsed());
            match self
                .rt
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
            {
                Err(_) => {
                    self.maintenance();
                    continue;
                }
                Ok(None) => break,
                Ok(Some(op)) => self.apply(op),
            }
            // Take what is already queued, until the batch is big enough or old enough. An empty
            // queue commits at once: waiting would only add latency, and under load the queue
            // refills while a commit runs, so batches grow by themselves.
            while self.batch.open
                && self.batch.samples < self.settings.flush_samples
                && self
                    .batch
                    .started
                    .is_some_and(|t| t.elapsed() < self.settings.flush_interval)
            {
                match rx.try_recv() {
                    Ok(op) => self.apply(op),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        let _ = self.commit();
                        break 'outer;
                    }
                }
            }
            let _ = self.commit();
            // A Sync commits inside `apply`: count commits, not the batch left open.
            let committed = Metrics::get(&self.metrics.commits) > commits;
            if committed || self.last_retention.elapsed() >= Duration::from_millis(200) {
                let t = Instant::now();
                self.after_commit();
                self.note_stall("retention and WAL checks after a commit", t.elapsed(), None);
            }
        }
        let _ = self.commit();
        stop_checkpointer();
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed.");
        }
        let h = &self.metrics.commit_time;
        tracing::info!(
            commits = h.counts().iter().sum::<u64>(),
            p50_le_ms = h.quantile_bound_s(0.5).unwrap_or(0.0) * 1e3,
            p99_le_ms = h.quantile_bound_s(0.99).unwrap_or(0.0) * 1e3,
            over_5ms = h.counts()[5..].iter().sum::<u64>(),
            buckets = ?h.counts(),
            "Store writer stopped; WAL checkpointed."
        );
    }

    fn begin(&mut self) -> Result<(), rusqlite::Error> {
        if !self.batch.open {
            self.conn.execute_batch("BEGIN")?;
            self.batch.changes_at_begin = self.conn.total_changes();
            self.batch.open = true;
            self.batch.started = Some(Instant::now());
        }
        Ok(())
    }

    fn refusing(&self) -> bool {
        self.refusing_for_cap || self.refuse_until.is_some_and(|t| Instant::now() < t)
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Samples(s) => self.samples(s),
            Op::Hello(h) => {
                // The Welcome must only carry committed state: it is sent after the commit.
                match self.hello(&h) {
                    Ok(w) => self.batch.welcomes.push((h.reply, w)),
                    Err(e) => {
                        let shared = e.shared();
                        self.fail(e);
                        let _ = h.reply.send(Err(shared));
                    }
                }
            }
            Op::Heartbeat { device, hb } => {
                self.batch.heartbeats.insert(device, hb);
                self.touch();
            }
            Op::Presence {
                device,
                link,
                online,
            } => {
                self.batch.presence.insert(device, (link, online));
                self.touch();
            }
            Op::Quarantine {
                link,
                reason,
                len,
                raw,
            } => {
                if let Err(e) = self.quarantine(&link, &reason, len, &raw) {
                    self.fail(e);
                }
            }
            Op::MarkForwarded { event_id, reply } => {
                self.batch.forwarded = Some(event_id.max(self.batch.forwarded.unwrap_or(0)));
                self.touch();
                self.batch.replies.push(reply);
            }
            Op::UplinkProgress {
                backlog,
                live_from,
                live,
                reply,
            } => {
                self.batch.forwarded = Some(backlog.max(self.batch.forwarded.unwrap_or(0)));
                self.batch.live_range = Some((live_from, live));
                self.touch();
                self.batch.replies.push(reply);
            }
            Op::Exec { run, reply } => {
                self.touch();
                self.batch.replies.push(reply);
                if let Err(e) = (run.0)(&self.conn) {
                    self.fail(StoreError::from_write(e));
                }
            }
            Op::Sync(reply) => {
                self.touch();
                self.batch.replies.push(reply);
                let _ = self.commit();
            }
        }
    }

    /// Makes sure a batch is open so the next commit writes pending state.
    fn touch(&mut self) {
        if let Err(e) = self.begin() {
            tracing::warn!(error = %e, "BEGIN failed.");
        }
    }

    fn boot_state(&mut self, key: (i64, i64)) -> Result<&mut BootState, rusqlite::Error> {
        if !self.boots.contains_key(&key) {
            let next: u32 = self
                .conn
                .query_row(
                    "SELECT next_seq FROM boots WHERE device = ?1 AND boot_no = ?2",
                    params![key.0, key.1],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            self.boots.insert(
                key,
                BootState {
                    acceptor: Acceptor::new(next),
                    committed: next,
                    gap_pending: 0,
                },
            );
        }
        Ok(self.boots.get_mut(&key).expect("inserted above"))
    }

    fn samples(&mut self, s: SamplesOp) {
        Metrics::add(&self.metrics.samples_received, s.rows.len() as u64);
        if self.refusing() {
            Metrics::add(&self.metrics.samples_refused, s.rows.len() as u64);
            return;
        }
        if let Err(e) = self.begin() {
            tracing::warn!(error = %e, "BEGIN failed.");
            return;
        }
        let key = (s.device, s.boot_no);
        let (accepted, committed) = match self.boot_state(key) {
            Ok(st) => {
                let a = st.acceptor.accept(s.oldest, s.first_seq, s.rows.len());
                st.gap_pending += u64::from(a.dropped_by_device);
                (a, st.committed)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Boot state unreadable; frame ignored (the device will resend).");
                return;
            }
        };
        let m = &self.metrics;
        Metrics::add(
            &m.samples_dropped_by_device,
            u64::from(accepted.dropped_by_device),
        );
        Metrics::add(&m.samples_duplicate, accepted.duplicates as u64);
        if accepted.hole {
            Metrics::add(&m.samples_out_of_order, s.rows.len() as u64);
            // Tell the device at once where we stand, so it retransmits now (fast retransmit).
            s.ack.send_modify(|a| {
                *a = AckState {
                    device: s.device,
                    boot_id: s.boot_id,
                    next_seq: committed,
                    nudges: a.nudges.wrapping_add(1),
                };
            });
        }
        if accepted.keep.is_empty() {
            if accepted.duplicates > 0 {
                // A retransmission of committed samples (its ack was lost): ack it with the next
                // commit instead of leaving the device to its timeouts.
                let id = Arc::as_ptr(&s.ack) as usize;
                self.batch.links.insert(id, (s.ack, s.boot_id, key));
            }
            return;
        }
        let res = (|| -> rusqlite::Result<()> {
            let mut st = self.conn.prepare_cached(
                "INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let b = &mut self.batch;
            // Newest row per sensor of this frame (a frame carries few sensors: a short list
            // beats hashing every row), folded into the batch's map after the loop.
            let mut newest: Vec<(u8, i64, f32, i64)> = Vec::new();
            for i in accepted.keep.clone() {
                if s.out_of_range.contains(&i) {
                    continue;
                }
                let r = s.rows[i];
                st.execute(params![
                    s.device,
                    s.boot_no,
                    s.first_seq + i as u32,
                    r.sensor,
                    r.ts_ms,
                    f64::from(r.value)
                ])?;
                let id = self.conn.last_insert_rowid();
                match newest.iter_mut().find(|n| n.0 == r.sensor) {
                    Some(n) if r.ts_ms >= n.1 => *n = (r.sensor, r.ts_ms, r.value, id),
                    Some(_) => {}
                    None => newest.push((r.sensor, r.ts_ms, r.value, id)),
                }
            }
            b.last_event_id = self.conn.last_insert_rowid();
            for (sensor, ts, value, id) in newest {
                let n = b
                    .latest
                    .entry((s.device, sensor))
                    .or_insert((ts, value, id));
                if ts >= n.0 {
                    *n = (ts, value, id);
                }
            }
            b.rollup.add_rows(
                self.summaries.of(s.device),
                s.device,
                stored(&s, accepted.keep.clone()).map(|r| (r.sensor, r.ts_ms, f64::from(r.value))),
            );
            *b.stored.entry(s.device).or_default() +=
                stored(&s, accepted.keep.clone()).count() as u64;
            Ok(())
        })();
        if let Err(e) = res {
            // The transaction is unusable; roll it back as a failed commit (nothing of it is acked).
            // This boot's acceptor already took these samples: `fail` must reset it too, or their
            // retransmissions would be skipped as duplicates and later acked, never stored.
            self.batch.boots.insert(key, ());
            self.batch.samples += accepted.keep.len();
            self.fail(StoreError::from_write(e));
            return;
        }
        let n = stored(&s, accepted.keep.clone()).count();
        let rejected = accepted.keep.len() - n;
        if rejected > 0 {
            Metrics::add(&self.metrics.samples_out_of_range, rejected as u64);
            let (link, raw) = s.quarantine.as_ref().map_or(("", &[][..]), |(l, r)| (l, r));
            tracing::warn!(link, device = s.device, rejected, "Samples with a time out of range not stored (PROTOCOL.md section 5); frame quarantined.");
            if let Err(e) = self.quarantine(link, "time_out_of_range", raw.len(), raw) {
                self.batch.boots.insert(key, ());
                self.fail(e);
                return;
            }
        }
        if let Some(last_ts) = stored(&s, accepted.keep.clone()).last().map(|r| r.ts_ms) {
            self.batch.seen.insert(s.device, last_ts);
        }
        self.batch.samples += n;
        self.batch.boots.insert(key, ());
        self.batch.held.extend(s.held);
        let id = Arc::as_ptr(&s.ack) as usize;
        self.batch.links.insert(id, (s.ack, s.boot_id, key));
    }

    fn hello(&mut self, h: &HelloOp) -> Result<Welcomed, StoreError> {
        self.begin()?;
        let now = crate::utc_now_ms();
        let c = &self.conn;
        let device: i64 = match c
            .query_row(
                "SELECT id FROM devices WHERE device_id = ?1",
                [&h.device_id],
                |r| r.get(0),
            )
            .optional()?
        {
            Some(id) => {
                c.execute(
                    "UPDATE devices SET firmware = ?2, last_seen_ms = ?3, online = 1, link = ?4 WHERE id = ?1",
                    params![id, h.firmware, now, h.link],
                )?;
                id
            }
            None => {
                c.execute(
                    "INSERT INTO devices (device_id, firmware, first_seen_ms, last_seen_ms, online, link)
                     VALUES (?1, ?2, ?3, ?3, 1, ?4)",
                    params![h.device_id, h.firmware, now, h.link],
                )?;
                c.last_insert_rowid()
            }
        };
        let boot_no: i64 = match c
            .query_row(
                "SELECT boot_no FROM boots WHERE device = ?1 AND boot_id = ?2",
                params![device, h.boot_id],
                |r| r.get(0),
            )
            .optional()?
        {
            Some(b) => b,
            None => {
                let b: i64 = c.query_row(
                    "SELECT coalesce(max(boot_no), 0) + 1 FROM boots WHERE device = ?1",
                    [device],
                    |r| r.get(0),
                )?;
                c.execute(
                    "INSERT INTO boots (device, boot_no, boot_id, tick_hz, started_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![device, b, h.boot_id, h.tick_hz, now],
                )?;
                b
            }
        };
        c.execute(
            "UPDATE devices SET boot_no = ?2, dropped = 0, ring_depth = 0, read_errors = 0 WHERE id = ?1 AND boot_no != ?2",
            params![device, boot_no],
        )?;
        c.execute("DELETE FROM sensors WHERE device = ?1", [device])?;
        for (idx, name, unit, interval) in &h.sensors {
            c.execute(
                "INSERT INTO sensors (device, idx, name, unit, interval_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device, idx, name, unit, interval],
            )?;
            if rollup::wanted(*interval) {
                self.summaries
                    .enable(c, &mut self.batch.rollup, device, *idx)?;
            }
        }
        // Older boots of this device are done; their state reloads from the table if a late frame
        // needs it. A boot with samples in the open batch stays until that batch is committed.
        let in_batch = &self.batch.boots;
        self.boots
            .retain(|key, _| key.0 != device || key.1 == boot_no || in_batch.contains_key(key));
        let next_seq = self.boot_state((device, boot_no))?.committed;
        self.last_seen_written.insert(device, now);
        Ok(Welcomed {
            device,
            boot_no,
            next_seq,
        })
    }

    fn quarantine(
        &mut self,
        link: &str,
        reason: &str,
        len: usize,
        raw: &[u8],
    ) -> Result<(), StoreError> {
        self.begin()?;
        self.conn
            .prepare_cached("INSERT INTO quarantine (at_ms, link, reason, len, raw) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![crate::utc_now_ms(), link, reason, len as i64, raw])
            .map_err(StoreError::from_write)?;
        self.batch.quarantined += 1;
        self.quarantine_rows += 1;
        if self.quarantine_rows > self.settings.quarantine_max_rows {
            let excess = self.quarantine_rows - self.settings.quarantine_max_rows;
            let n = self
                .conn
                .execute(
                    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?1)",
                    [excess as i64],
                )
                .map_err(StoreError::from_write)?;
            self.quarantine_rows -= n as u64;
        }
        Ok(())
    }

    /// Sets the quarantine row count (the bound's bookkeeping) from the table's committed state.
    fn recount_quarantine(&mut self) {
        match self
            .conn
            .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))
        {
            Ok(n) => self.quarantine_rows = n,
            Err(e) => tracing::warn!(error = %e, "Quarantine rows not recounted."),
        }
    }

    /// Writes the batch's pending state and commits. Returns the failure, if any (already handled).
    fn commit(&mut self) -> Result<(), StoreError> {
        if !self.batch.open {
            for r in self.batch.replies.drain(..) {
                let _ = r.send(Ok(()));
            }
            return Ok(());
        }
        let t = Instant::now();
        let mut written = Duration::ZERO;
        let res = self.write_pending().and_then(|()| {
            written = t.elapsed();
            self.conn.execute_batch("COMMIT")
        });
        self.metrics.commit_time.observe(t.elapsed());
        let samples = self.batch.samples;
        self.note_stall("commit", t.elapsed(), Some((written, samples)));
        match res {
            Ok(()) => {
                let wrote = self.conn.total_changes() > self.batch.changes_at_begin;
                let mut b = std::mem::take(&mut self.batch);
                self.summaries.committed(std::mem::take(&mut b.rollup));
                Metrics::add(&self.metrics.commits, 1);
                Metrics::add(&self.metrics.samples_committed, b.samples as u64);
                Metrics::add(&self.metrics.quarantined, b.quarantined);
                if let Some(f) = b.forwarded {
                    self.forward_cursor = f;
                }
                if b.last_event_id > 0 {
                    self.committed.send_replace(b.last_event_id);
                }
                for key in b.boots.keys() {
                    if let Some(st) = self.boots.get_mut(key) {
                        st.committed = st.acceptor.next();
                        st.gap_pending = 0;
                    }
                }
                for (slot, boot_id, key) in b.links.into_values() {
                    let committed = self.boots.get(&key).map_or(0, |s| s.committed);
                    slot.send_modify(|a| {
                        a.device = key.0;
                        a.boot_id = boot_id;
                        a.next_seq = committed;
                    });
                }
                for (d, ts) in b.seen {
                    self.last_seen_written.insert(d, ts);
                }
                if wrote {
                    let backing_off = self.refuse_until.take().is_some();
                    if self.metrics.disk_full.swap(false, Relaxed) || backing_off {
                        tracing::info!("Disk accepts writes again; accepting samples.");
                    }
                }
                for r in b.replies {
                    let _ = r.send(Ok(()));
                }
                for (r, w) in b.welcomes {
                    Metrics::add(&self.metrics.hellos, 1);
                    let _ = r.send(Ok(w));
                }
                Ok(())
            }
            Err(e) => {
                let e = StoreError::from_write(e);
                let shared = e.shared();
                self.fail(e);
                Err(shared)
            }
        }
    }

    /// Rolls back the open transaction after a failure; nothing in it was acked.
    fn fail(&mut self, e: StoreError) {
        let _ = self.conn.execute_batch("ROLLBACK");
        let b = std::mem::take(&mut self.batch);
        Metrics::add(&self.metrics.commit_failures, 1);
        for key in b.boots.keys() {
            if let Some(st) = self.boots.get_mut(key) {
                st.acceptor = Acceptor::new(st.committed);
                st.gap_pending = 0;
            }
        }
        self.summaries.rolled_back(b.rollup);
        if b.quarantined > 0 {
            // The rollback took this batch's quarantine inserts (and trims) with it.
            self.recount_quarantine();
        }
        if matches!(e, StoreError::DiskFull(_)) {
            Metrics::add(&self.metrics.samples_refused, b.samples as u64);
            if !self.metrics.disk_full.swap(true, Relaxed) {
                tracing::error!(error = %e, "Disk full: samples are refused (devices keep them) until space returns.");
            }
            self.refuse_until = Some(Instant::now() + DISK_FULL_BACKOFF);
        } else {
            tracing::error!(error = %e, "Commit failed; nothing of it was acked (devices will resend).");
        }
        for r in b.replies {
            let _ = r.send(Err(e.shared()));
        }
        for (r, _) in b.welcomes {
            let _ = r.send(Err(e.shared()));
        }
    }

    fn write_pending(&mut self) -> rusqlite::Result<()> {
        let c = &self.conn;
        for key in self.batch.boots.keys() {
            // The rows of this boot are in the transaction; committing them without moving its
            // position would let a retransmission store them twice. Fail the transaction instead
            // (rolled back, nothing acked, the device resends). `hello` keeps batch boots, so this
            // is a bug guard, not a path.
            let Some(st) = self.boots.get(key) else {
                tracing::error!(
                    device = key.0,
                    boot_no = key.1,
                    "Boot state missing for a batch; rolling back."
                );
                return Err(rusqlite::Error::InvalidParameterName(
                    "boot state missing".into(),
                ));
            };
            c.prepare_cached("UPDATE boots SET next_seq = ?3, gap_dropped = gap_dropped + ?4 WHERE device = ?1 AND boot_no = ?2")?
                .execute(params![key.0, key.1, st.acceptor.next(), st.gap_pending as i64])?;
        }
        // last_seen is written at most once a second per device.
        for (d, ts) in &self.batch.seen {
            if self.last_seen_written.get(d).is_none_or(|w| ts - w >= 1000) {
                c.prepare_cached("UPDATE devices SET last_seen_ms = ?2, online = 1 WHERE id = ?1")?
                    .execute(params![d, ts])?;
            }
        }
        for (d, hb) in &self.batch.heartbeats {
            c.prepare_cached(
                "UPDATE devices SET last_seen_ms = ?2, dropped = ?3, ring_depth = ?4, read_errors = ?5 WHERE id = ?1",
            )?
            .execute(params![d, crate::utc_now_ms(), hb.dropped, hb.ring_depth, hb.read_errors])?;
        }
        for (d, (link, online)) in &self.batch.presence {
            c.prepare_cached("UPDATE devices SET online = ?3 WHERE id = ?1 AND link = ?2")?
                .execute(params![d, link, online])?;
        }
        for ((d, sensor), (ts, value, id)) in &self.batch.latest {
            c.prepare_cached(
                "INSERT INTO latest (device, sensor, event_id, ts_ms, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device, sensor) DO UPDATE SET event_id = excluded.event_id,
                     ts_ms = excluded.ts_ms, value = excluded.value
                 WHERE excluded.ts_ms >= latest.ts_ms",
            )?
            .execute(params![d, sensor, id, ts, f64::from(*value)])?;
        }
        self.summaries.write(c, &mut self.batch.rollup)?;
        for (d, n) in &self.batch.stored {
            c.prepare_cached("UPDATE devices SET events_total = events_total + ?2 WHERE id = ?1")?
                .execute(params![d, *n as i64])?;
        }
        if let Some(f) = self.batch.forwarded {
            c.prepare_cached(
                "INSERT INTO forward_cursor (name, event_id) VALUES ('uplink', ?1)
                 ON CONFLICT (name) DO UPDATE SET event_id = max(event_id, excluded.event_id)",
            )?
            .execute([f])?;
        }
        if let Some((from, to)) = self.batch.live_range {
            let mut st = c.prepare_cached(
                "INSERT INTO forward_cursor (name, event_id) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id",
            )?;
            st.execute(params!["uplink.live_from", from])?;
            st.execute(params!["uplink.live", to])?;
        }
        Ok(())
    }

    /// Logs a step that held the writer longer than [`STALL`] (rate-limited). `commit`: the time
    /// its statements took before `COMMIT` (the rest is `COMMIT`, mostly the fsync), and its samples.
    fn note_stall(&mut self, step: &str, took: Duration, commit: Option<(Duration, usize)>) {
        if took < STALL {
            return;
        }
        self.stalls_unlogged += 1;
        if self
            .last_stall_log
            .is_some_and(|t| t.elapsed() < STALL_LOG_EVERY)
        {
            return;
        }
        let (statements_ms, samples) = commit.map_or((None, None), |(w, n)| {
            (Some(w.as_secs_f64() * 1e3), Some(n))
        });
        tracing::warn!(
            step,
            took_ms = took.as_secs_f64() * 1e3,
            statements_ms,
            samples,
            stalls_since_last_report = self.stalls_unlogged,
            "The store writer stalled: acks waited. A commit's time beyond its statements is the disk's sync."
        );
        self.last_stall_log = Some(Instant::now());
        self.stalls_unlogged = 0;
    }

    /// Measures usage and applies the retention policy (in separate small transactions).
    fn after_commit(&mut self) {
        if self.last_wal_check.elapsed() >= Duration::from_millis(200) {
            self.last_wal_check = Instant::now();
            if let Some(f) = &self.wal_frames {
                let wal_bytes = f.load(Relaxed).saturating_mul(self.frame_bytes);
                super::checkpoint::restart_if_large(&self.conn, &self.settings.path, wal_bytes);
            }
        }
        self.last_retention = Instant::now();
        for _ in 0..20 {
            let used = self.measure();
            let have_forwarded = self.forward_cursor > 0
                && self
                    .conn
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM events
                           WHERE id <= min(?1, (SELECT max(id) FROM events) - 1))",
                        [self.forward_cursor],
                        |r| r.get::<_, bool>(0),
                    )
                    .unwrap_or(false);
            let step = retention::decide(
                used,
                self.settings.max_db_size,
                have_forwarded,
                self.settings.when_full,
                self.refusing_for_cap,
            );
            let refusing = step == Step::Refuse;
            if refusing != self.refusing_for_cap {
                self.refusing_for_cap = refusing;
                self.metrics.backpressure.store(refusing, Relaxed);
                if refusing {
                    tracing::warn!(used, cap = ?self.settings.max_db_size, "Store at max_db_size with only unforwarded data: refusing samples (backpressure); devices keep them.");
                } else {
                    tracing::info!(
                        used,
                        "Store below its low watermark; accepting samples again."
                    );
                }
            }
            let deleted = match step {
                Step::Accept | Step::Refuse => return,
                Step::PruneForwarded => {
                    self.delete_oldest(Some(self.forward_cursor), self.chunk_for(used))
                }
                Step::DropOldest => self.delete_oldest(None, self.chunk_for(used)),
            };
            match deleted {
                Ok(0) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "Retention failed; retried after the next commit.");
                    return;
                }
                Ok(n) if step == Step::PruneForwarded => {
                    Metrics::add(&self.metrics.events_pruned_forwarded, n)
                }
                Ok(n) => {
                    Metrics::add(&self.metrics.events_dropped_oldest, n);
                    if self
                        .last_loss_log
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                    {
                        self.last_loss_log = Some(Instant::now());
                        tracing::error!(
                            dropped_total = Metrics::get(&self.metrics.events_dropped_oldest),
                            "Store at max_db_size: oldest unforwarded events deleted (when_full = \"drop_oldest\")."
                        );
                    }
                }
            }
        }
    }

    /// Deletes up to CHUNK oldest events (only forwarded ones if `upto` is given), never the newest
    /// one; returns the count. Unforwarded deletions are counted in the same transaction.
    /// Rows to delete in one retention step: about what brings usage down to the low watermark
    /// (bytes per row estimated from usage and the rowid span), between 100 and CHUNK, so a small
    /// cap is not overshot by a fixed chunk.
    fn chunk_for(&self, used: u64) -> i64 {
        let Some(cap) = self.settings.max_db_size else {
            return CHUNK;
        };
        let excess = used.saturating_sub((cap as f64 * retention::LOW) as u64);
        let (lo, hi): (i64, i64) = self
            .conn
            .query_row(
                "SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or((0, 0));
        let per_row = (used / (hi - lo + 1).max(1) as u64).max(1);
        ((excess / per_row) as i64).clamp(100, CHUNK)
    }

    fn delete_oldest(&mut self, upto: Option<i64>, chunk: i64) -> Result<u64, StoreError> {
        let limit = upto.unwrap_or(i64::MAX);
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(StoreError::from_write)?;
        let n = delete_events(
            &tx,
            &self.summaries,
            "DELETE FROM events WHERE id <= min(?1, (SELECT min(id) FROM events) + ?2 - 1,
                                                (SELECT max(id) FROM events) - 1)",
            params![limit, chunk],
        )
        .map_err(StoreError::from_write)?;
        if upto.is_none() && n > 0 {
            tx.execute(
                "INSERT INTO counters (name, value) VALUES ('events_dropped_oldest', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                [n as i64],
            )
            .map_err(StoreError::from_write)?;
        }
        tx.commit().map_err(StoreError::from_write)?;
        Ok(n as u64)
    }

    /// Bytes in use (pages minus free pages); also published as a gauge.
    fn measure(&self) -> u64 {
        let q = |p: &str| {
            self.conn
                .query_row(p, [], |r| r.get::<_, i64>(0))
                .unwrap_or(0)
        };
        let used =
            (q("PRAGMA page_count") - q("PRAGMA freelist_count")).max(0) * q("PRAGMA page_size");
        self.metrics.db_used_bytes.store(used as u64, Relaxed);
        used as u64
    }

    /// Time-based retention of forwarded events, and a retry of retention after refusals.
    fn maintenance(&mut self) {
        self.last_maintenance = Instant::now();
        if self.forward_cursor > 0 {
            let cutoff = crate::utc_now_ms() - self.settings.keep_forwarded_for.as_millis() as i64;
            for _ in 0..10 {
                let chunk = self.conn.unchecked_transaction().and_then(|tx| {
                    let n = delete_events(
                        &tx,
                        &self.summaries,
                        "DELETE FROM events WHERE id IN
                           (SELECT id FROM events
                             WHERE id <= min(?1, (SELECT max(id) FROM events) - 1) AND ts_ms < ?2
                             ORDER BY id LIMIT ?3)",
                        params![self.forward_cursor, cutoff, CHUNK],
                    )?;
                    tx.commit()?;
                    Ok(n)
                });
                match chunk {
                    Ok(n) => {
                        Metrics::add(&self.metrics.events_pruned_forwarded, n as u64);
                        if (n as i64) < CHUNK {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Retention of forwarded events failed.");
                        break;
                    }
                }
            }
        }
        self.after_commit();
    }
}

/// Runs a `DELETE FROM events ...` (inside the caller's transaction) and keeps the summaries of
/// what it deleted true ([`rollup::Deleted`]); returns the rows deleted.
/// The rows of `keep` that are stored (their time is in range).
fn stored(s: &SamplesOp, keep: std::ops::Range<usize>) -> impl Iterator<Item = &Row> {
    keep.filter(move |i| !s.out_of_range.contains(i))
        .map(move |i| &s.rows[i])
}

fn delete_events(
    c: &Connection,
    summaries: &rollup::Summaries,
    delete: &str,
    args: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    let mut st = c.prepare_cached(&format!("{delete} RETURNING device, sensor, ts_ms"))?;
    let mut rows = st.query(args)?;
    let (mut n, mut deleted) = (0, rollup::Deleted::default());
    while let Some(r) = rows.next()? {
        let (device, sensor) = (r.get(0)?, r.get(1)?);
        if summaries.has(device, sensor) {
            deleted.note(device, sensor, r.get(2)?);
        }
        n += 1;
    }
    drop(rows);
    deleted.apply(c)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query::Agg;

    fn writer(tag: &str, keep_forwarded_for: Duration) -> (Writer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ferry-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = StoreSettings {
            keep_forwarded_for,
            ..StoreSettings::for_test(dir.join("w.db"))
        };
        let conn = super::super::open_writer(&settings).unwrap();
        let mut w = Writer::new(conn, settings, Arc::new(Metrics::default()));
        w.recover().unwrap();
        (w, dir)
    }

    fn insert_events(w: &Writer, n: u32) {
        for seq in 0..n {
            w.conn
                .execute(
                    "INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value)
                     VALUES (1, 1, ?1, 0, 1700000000000 + ?1, ?1 + 0.25)",
                    [seq],
                )
                .unwrap();
        }
    }

    fn ids(w: &Writer) -> (i64, i64, i64) {
        w.conn
            .query_row("SELECT count(*), min(id), max(id) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
    }

    #[test]
    fn retention_never_lets_new_rows_take_ids_at_or_below_the_forwarding_cursor() {
        let (mut w, dir) = writer("ids", Duration::ZERO);
        insert_events(&w, 10);
        w.forward_cursor = 10;
        // Time-based retention: everything is forwarded and old, yet the newest row stays...
        w.maintenance();
        assert_eq!(ids(&w), (1, 10, 10));
        assert_eq!(Metrics::get(&w.metrics.events_pruned_forwarded), 9);
        // ... so new rows get ids above the cursor (an empty table would restart at 1).
        insert_events(&w, 3);
        assert_eq!(ids(&w), (4, 10, 13));
        // Cap-based pruning of forwarded rows keeps the newest row too.
        w.forward_cursor = 13;
        assert_eq!(w.delete_oldest(Some(13), CHUNK).unwrap(), 3);
        assert_eq!(ids(&w), (1, 13, 13));
        // drop_oldest likewise, and counts what it deleted in the same transaction.
        insert_events(&w, 5);
        assert_eq!(w.delete_oldest(None, CHUNK).unwrap(), 5);
        assert_eq!(ids(&w), (1, 18, 18));
        let counted: i64 = w
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'events_dropped_oldest'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(counted, 5);
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn maintenance_runs_when_due_even_if_the_queue_never_runs_dry() {
        let (mut w, dir) = writer("busy", Duration::ZERO);
        insert_events(&w, 10);
        w.forward_cursor = 10;
        w.last_maintenance = Instant::now() - MAINTENANCE;
        // A queue that always has an operation ready: `recv` never times out.
        let (tx, rx) = mpsc::channel(QUEUE);
        for _ in 0..100 {
            tx.try_send(Op::Presence {
                device: 1,
                link: "test".into(),
                online: true,
            })
            .unwrap();
        }
        drop(tx);
        w.run(rx, || {});
        assert_eq!(ids(&w), (1, 10, 10), "forwarded rows pruned by age");
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_commit_made_by_a_sync_or_hello_is_followed_by_retention() {
        let (mut w, dir) = writer("sync", Duration::from_secs(60));
        w.settings.max_db_size = Some(1 << 20);
        w.conn.execute_batch("BEGIN").unwrap();
        insert_events(&w, 30_000); // well over 1 MiB
        w.conn.execute_batch("COMMIT").unwrap();
        let (tx, rx) = mpsc::channel(QUEUE);
        let (reply, _done) = oneshot::channel();
        tx.try_send(Op::Sync(reply)).unwrap();
        drop(tx);
        w.last_retention = Instant::now(); // the 200 ms fallback is not what this test is about
        w.run(rx, || {});
        assert!(Metrics::get(&w.metrics.events_dropped_oldest) > 0);
        assert!(w.measure() <= 1 << 20, "back under the cap");
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn hello(w: &mut Writer, boot_id: u32) -> Welcomed {
        let (reply, mut rx) = oneshot::channel();
        w.apply(Op::Hello(HelloOp {
            device_id: "dev".into(),
            firmware: "fw".into(),
            boot_id,
            tick_hz: 1000,
            sensors: vec![],
            link: "test".into(),
            reply,
        }));
        // The run loop commits once the queue is empty.
        w.commit().expect("commit");
        rx.try_recv()
            .expect("answered after the commit")
            .expect("hello registered")
    }

    #[test]
    fn hellos_queued_together_share_one_commit_and_are_answered_after_it() {
        let (mut w, dir) = writer("hellos", Duration::from_secs(60));
        let commits = Metrics::get(&w.metrics.commits);
        let mut answers = Vec::new();
        for d in 0..3 {
            let (reply, rx) = oneshot::channel();
            w.apply(Op::Hello(HelloOp {
                device_id: format!("dev-{d}"),
                firmware: "fw".into(),
                boot_id: 1,
                tick_hz: 1000,
                sensors: vec![],
                link: "test".into(),
                reply,
            }));
            answers.push(rx);
        }
        for rx in &mut answers {
            assert!(rx.try_recv().is_err(), "welcomed before its rows committed");
        }
        w.commit().unwrap();
        assert_eq!(Metrics::get(&w.metrics.commits), commits + 1);
        let devices: Vec<i64> = answers
            .iter_mut()
            .map(|rx| rx.try_recv().unwrap().unwrap().device)
            .collect();
        assert_eq!(devices, [1, 2, 3]);
        assert_eq!(Metrics::get(&w.metrics.hellos), 3);
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_reboot_hello_while_the_old_boot_has_samples_in_the_open_batch_commits_both() {
        let (mut w, dir) = writer("reboot", Duration::from_secs(60));
        let ack: AckSlot = Arc::new(watch::channel(AckState::default()).0);
        let old = hello(&mut w, 7);
        let row = Row {
            sensor: 0,
            ts_ms: 1_700_000_000_000,
            value: 1.0,
        };
        w.apply(Op::Samples(SamplesOp {
            device: old.device,
            boot_no: old.boot_no,
            boot_id: 7,
            oldest: 0,
            first_seq: 0,
            rows: vec![row; 10],
            out_of_range: Vec::new(),
            quarantine: None,
            held: None,
            ack: ack.clone(),
        }));
        // The device reboots: its Hello arrives while boot 7's samples are still uncommitted.
        let new = hello(&mut w, 8);
        assert_eq!(
            (new.device, new.boot_no, new.next_seq),
            (old.device, old.boot_no + 1, 0)
        );
        let stored: i64 = w
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        let next: u32 = w
            .conn
            .query_row("SELECT next_seq FROM boots WHERE boot_id = 7", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!((stored, next), (10, 10));
        assert_eq!(
            *ack.borrow(),
            AckState {
                device: old.device,
                boot_id: 7,
                next_seq: 10,
                nudges: 0
            }
        );
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn samples(w: &mut Writer, n: usize, ack: &AckSlot) {
        let row = Row {
            sensor: 0,
            ts_ms: 1_700_000_000_000,
            value: 1.5,
        };
        w.apply(Op::Samples(SamplesOp {
            device: 1,
            boot_no: 1,
            boot_id: 7,
            oldest: 0,
            first_seq: 0,
            rows: vec![row; n],
            out_of_range: Vec::new(),
            quarantine: None,
            held: None,
            ack: ack.clone(),
        }));
        let _ = w.commit();
    }

    #[test]
    fn samples_the_full_disk_rolled_back_are_refused_then_stored_when_space_returns() {
        let (mut w, dir) = writer("enospc", Duration::from_secs(60));
        let pages: i64 = w
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        // SQLite answers SQLITE_FULL past max_page_count, here while inserting (not at COMMIT).
        let limit = |w: &Writer, n: i64| {
            w.conn
                .query_row(&format!("PRAGMA max_page_count = {n}"), [], |_| Ok(()))
                .unwrap()
        };
        limit(&w, pages);
        let (ack_tx, ack_rx) = watch::channel(AckState::default());
        let ack: AckSlot = Arc::new(ack_tx);
        samples(&mut w, 500, &ack);
        assert!(w.metrics.disk_full.load(Relaxed));
        assert_eq!(Metrics::get(&w.metrics.samples_refused), 500);
        assert_eq!(Metrics::get(&w.metrics.samples_committed), 0);
        assert_eq!(ack_rx.borrow().next_seq, 0, "nothing rolled back is acked");
        // Space returns; the device retransmits the same samples after the back-off.
        limit(&w, 1 << 30);
        w.refuse_until = None;
        samples(&mut w, 500, &ack);
        assert_eq!(Metrics::get(&w.metrics.samples_committed), 500);
        assert_eq!(ack_rx.borrow().next_seq, 500);
        assert!(!w.metrics.disk_full.load(Relaxed));
        let (stored, _, _) = ids(&w);
        assert_eq!(stored, 500, "acked means stored");
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn only_a_commit_that_wrote_clears_disk_full() {
        let (mut w, dir) = writer("full", Duration::from_secs(60));
        w.metrics.disk_full.store(true, Relaxed);
        w.refuse_until = Some(Instant::now() + Duration::from_secs(3600));
        // A Sync commits an empty transaction: no proof that the disk has room again.
        let (reply, _rx) = oneshot::channel();
        w.apply(Op::Sync(reply));
        assert!(w.metrics.disk_full.load(Relaxed) && w.refusing());
        // A commit that wrote a row is.
        w.apply(Op::Quarantine {
            link: "test".into(),
            reason: "bad_crc".into(),
            len: 1,
            raw: vec![0],
        });
        w.commit().unwrap();
        assert!(!w.metrics.disk_full.load(Relaxed) && !w.refusing());
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Series read through the summaries equal series computed here from the stored events, also
    /// after retention deleted some and for sensors enabled after they had events.
    #[test]
    fn summarised_series_equal_series_of_the_events_through_retention() {
        use rand::{Rng, SeedableRng};
        let (mut w, dir) = writer("rollup", Duration::from_secs(60));
        let ack: AckSlot = Arc::new(watch::channel(AckState::default()).0);
        let welcome = |w: &mut Writer, sensors: Vec<(u8, String, String, u32)>| {
            let (reply, mut rx) = oneshot::channel();
            w.apply(Op::Hello(HelloOp {
                device_id: "dev".into(),
                firmware: "fw".into(),
                boot_id: 7,
                tick_hz: 1000,
                sensors,
                link: "test".into(),
                reply,
            }));
            w.commit().unwrap();
            rx.try_recv().unwrap().unwrap()
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let t0 = 1_700_000_003_000i64;
        let mut seq = 0u32;
        let mut feed = |w: &mut Writer, frames: usize, ts_at: &mut dyn FnMut(u32) -> i64| {
            for f in 0..frames {
                let rows: Vec<Row> = (0..100)
                    .map(|k| Row {
                        sensor: rng.gen_range(0..3),
                        ts_ms: ts_at(seq + k),
                        // Now and then a NaN or an infinity (a legal f32 each, issue 13).
                        value: match rng.gen_range(0..4000) {
                            0..=7 => f32::NAN,
                            8 => f32::INFINITY,
                            9 => f32::NEG_INFINITY,
                            _ => rng.gen_range(-50.0f32..50.0),
                        },
                    })
                    .collect();
                w.apply(Op::Samples(SamplesOp {
                    device: 1,
                    boot_no: 1,
                    boot_id: 7,
                    oldest: 0,
                    first_seq: seq,
                    rows,
                    out_of_range: Vec::new(),
                    quarantine: None,
                    held: None,
                    ack: ack.clone(),
                }));
                seq += 100;
                if f % 7 == 6 {
                    // Every third commit writes what the summaries hold in memory.
                    if f % 21 == 20 {
                        w.summaries.flush_next();
                    }
                    w.commit().unwrap();
                    w.summaries.hold();
                }
            }
            w.commit().unwrap();
            w.summaries.hold();
        };
        let mut jitter = rand::rngs::SmallRng::seed_from_u64(6);
        let mut ts_at = |i: u32| t0 + i64::from(i) * 20 + jitter.gen_range(-40..40);
        // Events before the sensors are declared fast: not summarised.
        let d = welcome(&mut w, vec![]);
        assert_eq!(d.device, 1);
        feed(&mut w, 30, &mut ts_at);
        let fast = |i: u8, ms: u32| (i, format!("s{i}"), String::new(), ms);
        welcome(&mut w, vec![fast(0, 10), fast(1, 5_000), fast(2, 1_000)]);
        w.commit().unwrap();
        w.summaries.hold();
        let from: Vec<(u8, i64)> = w
            .conn
            .prepare("SELECT sensor, slot FROM rollup_from ORDER BY sensor")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let newest: i64 = w
            .conn
            .query_row("SELECT max(ts_ms) FROM events", [], |r| r.get(0))
            .unwrap();
        let first_from = newest / rollup::SLOT_MS + 1;
        assert_eq!(
            from,
            [(0, first_from), (2, first_from)],
            "slow sensor 1 is not summarised"
        );
        feed(&mut w, 300, &mut ts_at);
        // Late events: stamped before the summaries began, and below W.
        feed(&mut w, 3, &mut |i| t0 + i64::from(i % 500) * 11);
        feed(&mut w, 3, &mut |i| t0 + 400_000 + i64::from(i % 300) * 13);
        feed(&mut w, 20, &mut ts_at);
        let rows: i64 = w
            .conn
            .query_row("SELECT count(*) FROM rollup_10s", [], |r| r.get(0))
            .unwrap();
        assert!(rows > 100, "{rows} summary rows");

        let mut non_finite = 0;
        let mut check = |w: &Writer, rng: &mut rand::rngs::SmallRng, rounds: usize| {
            let (lo, hi): (i64, i64) = w
                .conn
                .query_row("SELECT min(ts_ms), max(ts_ms) FROM events", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            for round in 0..rounds {
                let sensor = rng.gen_range(0..3u8);
                let bucket = [1_000, 7_000, 10_000, 20_000, 30_000, 60_000][round % 6];
                let mut since = rng.gen_range(lo - 20_000..hi);
                let mut until = rng.gen_range(since + 1..hi + 20_000);
                if round % 5 == 0 {
                    // Slot-aligned ends.
                    since -= since % rollup::SLOT_MS;
                    until -= until % rollup::SLOT_MS;
                    until = until.max(since + rollup::SLOT_MS);
                }
                let events: Vec<(i64, f64)> = w
                    .conn
                    .prepare(
                        "SELECT ts_ms, value FROM events WHERE device = 1 AND sensor = ?1
                          AND ts_ms >= ?2 AND ts_ms < ?3 ORDER BY id",
                    )
                    .unwrap()
                    .query_map(params![sensor, since, until], |r| {
                        Ok((r.get(0)?, rollup::reading(r, 1)?))
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let mut want: std::collections::BTreeMap<i64, Vec<(i64, f64)>> = Default::default();
                for (ts, v) in events {
                    want.entry(ts - ts % bucket).or_default().push((ts, v));
                }
                for agg in [Agg::Avg, Agg::Min, Agg::Max, Agg::Count, Agg::Last] {
                    let got =
                        crate::store::query::series(&w.conn, 1, sensor, since, until, bucket, agg)
                            .unwrap();
                    let ctx = format!("sensor {sensor} [{since}, {until}) /{bucket} {agg:?}");
                    assert_eq!(got.len(), want.len(), "{ctx}: buckets");
                    for ((t, v, n), (wt, vs)) in got.iter().zip(&want) {
                        let newest = vs.iter().map(|x| x.0).max().unwrap();
                        // NaN readings are skipped by avg, min and max (NaN if nothing else).
                        let nums: Vec<f64> =
                            vs.iter().map(|x| x.1).filter(|v| !v.is_nan()).collect();
                        let expect = match agg {
                            _ if nums.is_empty()
                                && matches!(agg, Agg::Avg | Agg::Min | Agg::Max) =>
                            {
                                f64::NAN
                            }
                            Agg::Avg => nums.iter().sum::<f64>() / nums.len() as f64,
                            Agg::Min => nums.iter().copied().fold(f64::INFINITY, f64::min),
                            Agg::Max => nums.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            Agg::Count => vs.len() as f64,
                            Agg::Last => vs.iter().find(|x| x.0 == newest).unwrap().1,
                        };
                        assert_eq!((t, *n), (wt, vs.len() as i64), "{ctx}");
                        if !expect.is_finite() {
                            non_finite += 1;
                            assert!(
                                v.to_bits() == expect.to_bits() || v.is_nan() && expect.is_nan(),
                                "{ctx} at {t}: {v} != {expect}"
                            );
                            continue;
                        }
                        assert!(
                            (v - expect).abs() <= 1e-9 * expect.abs().max(1.0),
                            "{ctx} at {t}: {v} != {expect}"
                        );
                    }
                }
            }
        };
        let mut qrng = rand::rngs::SmallRng::seed_from_u64(8);
        check(&w, &mut qrng, 120);
        // A restart loses what was held in memory; the writer sums it again from the events.
        assert!(w.summaries.held() > 0, "some summaries only in memory");
        let settings = w.settings.clone();
        drop(w);
        let conn = super::super::open_writer(&settings).unwrap();
        let mut w = Writer::new(conn, settings, Arc::new(Metrics::default()));
        w.recover().unwrap();
        assert!(w.summaries.held() > 0, "summed again from the events");
        w.summaries.hold();
        check(&w, &mut qrng, 30);
        feed(&mut w, 42, &mut ts_at);
        check(&w, &mut qrng, 60);
        // Retention: drop the oldest events in chunks; summaries stay true.
        for _ in 0..4 {
            assert!(w.delete_oldest(None, 4_000).unwrap() > 0);
            check(&w, &mut qrng, 30);
        }
        let raised: i64 = w
            .conn
            .query_row("SELECT min(slot) FROM rollup_from", [], |r| r.get(0))
            .unwrap();
        assert!(raised > first_from, "retention raised the summaries' start");
        assert!(non_finite > 50, "{non_finite} non-finite points checked");
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }
}

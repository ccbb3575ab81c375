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
//! - **Ack after the log's sync.** A batch's samples go to the sample log ([`super::log`]) as one
//!   record; only after it is synced (`durability = "full"`) does the writer publish the boot's new
//!   `next_seq` into the slots of the links that sent samples. Their rows join the tail
//!   ([`super::tail`]), where readers see them at once.
//! - **The database in batches** ([`flush`]): the tail's samples, the boots' positions, `latest`,
//!   the per-device counts, `last_seen` and heartbeats, and the summaries are written to the
//!   database together, in one transaction, when the tail is old or large enough
//!   (`StoreSettings::tail_flush_age`, `tail_flush_rows`), on `Sync` and at shutdown; the same transaction raises
//!   `counters.log_applied`, after which the tail drops those samples and the log reuses their
//!   segments. After a crash the writer replays the log's records above `log_applied` and flushes
//!   them before it accepts anything.
//! - **Operations other than samples** (Hellos, quarantine, presence, cursors, `Exec`) commit to
//!   the database with the batch, as before; a failure there fails them only: the batch's samples,
//!   durable in the log, are acked all the same. The uplink's position, saved while a flush is
//!   open, joins the flush's transaction instead and is answered at once (so forwarding never
//!   makes a flush finish in one go); until that commits, a crash only forwards again.
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
//!
//! Layout: this module holds the handle, the operations and the writer's state; [`apply`] puts an
//! operation into the open transaction, [`commit`] runs the loop and opens, commits and rolls back
//! transactions, [`group_commit`] decides (purely) when a batch is done, and [`housekeeping`] does
//! retention, the WAL check and time-based maintenance between commits.

mod apply;
mod commit;
#[cfg(test)]
mod fixture;
mod flush;
mod group_commit;
mod housekeeping;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::{Acceptor, Heartbeat};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use super::log::SampleLog;
use super::rollup;
use super::tail::{SharedTail, TailRow};
use super::StoreError;
use crate::config::StoreSettings;
use crate::metrics::Metrics;

/// Operations queued before the writer blocks its senders.
const QUEUE: usize = 4096;

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

/// A link's budget under `store.ack_budget`: [`LINK_BUDGET`] per 20 ms (the default
/// `flush_interval`, the commit cadence it was measured at) of the ack budget, at least
/// [`LINK_BUDGET`]. Commits every 3/4 of the budget must not cap a device at 128 samples each.
pub fn link_budget(ack_budget: Duration) -> usize {
    let per_20ms = (ack_budget.as_millis() / 20) as usize;
    LINK_BUDGET.max(LINK_BUDGET.saturating_mul(per_20ms))
}

/// A link's samples handed to the writer and not yet committed (see the module header).
#[derive(Debug)]
pub struct LinkBudget {
    waiting: std::sync::atomic::AtomicUsize,
    freed: tokio::sync::Notify,
    limit: usize,
}

impl Default for LinkBudget {
    fn default() -> Self {
        LinkBudget::new(LINK_BUDGET)
    }
}

impl LinkBudget {
    /// A budget of `limit` samples.
    pub fn new(limit: usize) -> Self {
        LinkBudget {
            waiting: Default::default(),
            freed: Default::default(),
            limit,
        }
    }

    /// Whether the link may hand over more samples.
    pub fn has_room(&self) -> bool {
        self.waiting.load(Relaxed) < self.limit
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
    /// Answered as soon as the writer takes it, without touching the database: proves the writer
    /// takes operations (the systemd watchdog, [`crate::service`]).
    Probe(oneshot::Sender<()>),
}

/// Cheap, cloneable handle to the writer.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Op>,
    committed: watch::Receiver<i64>,
    tail: SharedTail,
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

    /// Whether the writer takes an operation and answers it within `within` (see [`Op::Probe`]).
    pub async fn probe(&self, within: Duration) -> bool {
        let (reply, answered) = oneshot::channel();
        tokio::time::timeout(within, async {
            self.tx.send(Op::Probe(reply)).await.is_ok() && answered.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// True while the writer thread accepts operations.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// The highest committed `events.id`, updated after every commit that stored events.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    /// The acked samples not yet in the database (see [`super::tail`]).
    pub fn tail(&self) -> SharedTail {
        self.tail.clone()
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
    let tail = SharedTail::default();
    let writer_tail = tail.clone();
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
        w.tail = writer_tail;
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
        handle: StoreHandle {
            tx,
            committed,
            tail,
        },
        join,
        exited,
        ready,
    })
}

/// The writer's view of one `(device, boot)`: its acceptor and its committed position.
struct BootState {
    acceptor: Acceptor,
    /// Every seq below is durable (in the log or the database).
    committed: u32,
    /// Seqs the device dropped, in total for the boot, as durable.
    gap_total: u64,
    /// Seqs the device dropped, learned in the open batch.
    gap_pending: u64,
}

/// What the open batch holds and what is published when it commits: samples for the log, and
/// (when `open`) a database transaction for everything else.
#[derive(Default)]
struct Batch {
    /// A database transaction is open.
    open: bool,
    samples: usize,
    started: Option<Instant>,
    boots: HashMap<(i64, i64), ()>,
    links: HashMap<usize, (AckSlot, u32, (i64, i64))>,
    presence: HashMap<i64, (String, bool)>,
    seen: HashMap<i64, i64>,
    quarantined: u64,
    /// Newest row per `(device, sensor)` in this batch: `(ts_ms, value, event id)`.
    latest: HashMap<(i64, u8), (i64, f32, i64)>,
    /// Rows stored per device in this batch.
    stored: HashMap<i64, u64>,
    /// Summaries of this batch's rows of summarised sensors.
    rollup: rollup::Batch,
    /// Sensors whose summaries this batch's transaction enabled.
    rollup_enabled: Vec<(i64, u8)>,
    /// Highest `events.id` given out in this batch (0: none).
    last_event_id: i64,
    /// The batch's stored samples, in id order (the log record's and then the tail's).
    rows: Vec<TailRow>,
    replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Hellos of this batch, answered when it commits.
    welcomes: Vec<(oneshot::Sender<Result<Welcomed, StoreError>>, Welcomed)>,
    /// `total_changes()` when the transaction began: a commit that changed no row proves nothing
    /// about free space.
    changes_at_begin: u64,
    /// Budget tokens of the links whose samples this batch holds (released with the batch).
    held: Vec<Held>,
}

/// The uplink's position as saved, waiting for the next database commit (a batch's or a
/// flush's, whichever comes first); kept if that commit fails, for the one after.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct PendingCursor {
    /// Forwarded through this id (`forward_cursor` `uplink`).
    forwarded: Option<i64>,
    /// `(live_from, live]`, forwarded too.
    live_range: Option<(i64, i64)>,
}

/// The writer thread's state; its methods live in the submodules by what they do.
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
    /// A saved position not yet in the database.
    cursor: PendingCursor,
    /// The position the transaction being committed holds.
    written_cursor: PendingCursor,
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
    /// Commit times for the log line at shutdown (`/metrics` has the histogram).
    commit_times: CommitTimes,
    /// The sample log (`None` until [`Writer::recover`] opened it).
    log: Option<SampleLog>,
    /// Acked samples not yet in the database, shared with readers.
    tail: SharedTail,
    /// What the log holds that the database does not yet (see [`flush`]).
    unflushed: flush::Unflushed,
    /// The id the next stored sample gets.
    next_id: i64,
    /// `counters.log_applied`: every id at or below is in the database.
    applied: i64,
    /// A flush whose transaction is open (see [`flush`]).
    open_flush: Option<flush::OpenFlush>,
    /// With `durability = "normal"`: when the oldest log record not yet synced was written.
    log_unsynced_since: Option<Instant>,
}

/// How long commits took, summed up for the writer's shutdown log.
#[derive(Debug, Default)]
struct CommitTimes {
    count: u64,
    total: Duration,
    max: Duration,
    /// Commits that took more than 5 ms (a device sees them as ack latency).
    over_5ms: u64,
}

impl CommitTimes {
    fn record(&mut self, d: Duration) {
        self.count += 1;
        self.total += d;
        self.max = self.max.max(d);
        self.over_5ms += u64::from(d > Duration::from_millis(5));
    }

    fn mean(&self) -> Duration {
        self.total / u32::try_from(self.count.max(1)).unwrap_or(u32::MAX)
    }
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
            cursor: PendingCursor::default(),
            written_cursor: PendingCursor::default(),
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
            commit_times: CommitTimes::default(),
            log: None,
            tail: SharedTail::default(),
            unflushed: flush::Unflushed::default(),
            next_id: 1,
            applied: 0,
            open_flush: None,
            log_unsynced_since: None,
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
        self.applied = super::tail::applied(&self.conn)?;
        self.next_id = last.max(self.applied) + 1;
        self.committed.send_replace(last);
        self.summaries = rollup::Summaries::load(&self.conn)?;
        self.conn
            .execute("UPDATE devices SET online = 0 WHERE online != 0", [])
            .map_err(StoreError::from_write)?;
        self.replay_log()?;
        self.measure();
        Ok(())
    }
}

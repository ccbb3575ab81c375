//! The writer's loop and the transaction lifecycle: `BEGIN` on the first operation of a batch,
//! `COMMIT` when [`super::group_commit`] says the batch is done, `ROLLBACK` on any failure.
//!
//! Invariants (see [`super`] for the whole list):
//! - Nothing is published before `COMMIT` returned: acks, Welcomes, `Sync` replies, the forwarding
//!   cursor and the committed-id watch are all sent from [`Writer::commit`]'s success arm.
//! - A failed transaction resets every acceptor it touched to its committed position and answers
//!   every waiter with the error ([`Writer::fail`]); `SQLITE_FULL` also refuses samples for
//!   [`DISK_FULL_BACKOFF`].
//! - A step that holds the writer longer than [`STALL`] is logged, at most once per
//!   [`STALL_LOG_EVERY`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ferry_wire::Acceptor;
use rusqlite::params;
use tokio::sync::mpsc;

use super::group_commit::{self, Next};
use super::housekeeping::MAINTENANCE;
use super::{Op, PendingCursor, StoreError, Writer};
use crate::metrics::Metrics;

/// With `durability = "normal"`, the sample log is synced this long after a record was written
/// (a power cut loses at most about this much of what was acked).
const NORMAL_LOG_SYNC: Duration = Duration::from_millis(100);
/// How long samples are refused after the disk refused a write.
const DISK_FULL_BACKOFF: Duration = Duration::from_secs(1);
/// A writer step (a commit, the work after it, maintenance) taking longer than this is logged: every
/// device waiting for an ack waits for it.
const STALL: Duration = Duration::from_millis(200);
/// At most one stall log line per this long (the next one counts the stalls in between).
const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

impl Writer {
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Op>, stop_checkpointer: impl FnOnce()) {
        'outer: loop {
            // Also under sustained load, when `recv` below is always ready and never times out.
            if self.last_maintenance.elapsed() >= MAINTENANCE {
                let t = Instant::now();
                self.maintenance();
                self.note_stall("maintenance", t.elapsed(), None);
            }
            let commits = Metrics::get(&self.metrics.commits);
            let wait = self.idle_wait();
            match self
                .rt
                .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
            {
                Err(_) if self.open_flush.is_some() => {
                    self.sync_log_if_due();
                    let _ = self.flush_step(Some(super::flush::STEP));
                    continue;
                }
                Err(_) if self.last_maintenance.elapsed() < MAINTENANCE => {
                    self.sync_log_if_due();
                    continue;
                }
                Err(_) => {
                    self.sync_log_if_due();
                    self.maintenance();
                    if self.flush_due() {
                        let _ = self.flush_step(Some(super::flush::STEP));
                    }
                    continue;
                }
                Ok(None) => break,
                Ok(Some(op)) => self.apply(op),
            }
            // Take what is already queued, until the batch is big enough or old enough; an empty
            // queue commits at once (see `group_commit`).
            while self.group_commit() == Next::TakeQueued {
                match rx.try_recv() {
                    Ok(op) => self.apply(op),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Under an ack budget, wait for more samples to share the commit.
                        let Some(wait) = group_commit::linger(
                            self.open_batch(),
                            self.settings.flush_samples,
                            self.settings.ack_budget,
                        ) else {
                            break;
                        };
                        match self
                            .rt
                            .block_on(async { tokio::time::timeout(wait, rx.recv()).await })
                        {
                            Ok(Some(op)) => self.apply(op),
                            Err(_) => break,
                            Ok(None) => {
                                let _ = self.commit();
                                break 'outer;
                            }
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        let _ = self.commit();
                        break 'outer;
                    }
                }
            }
            let _ = self.commit();
            self.sync_log_if_due();
            if self.open_flush.is_some() || self.flush_due() {
                let _ = self.flush_step(Some(super::flush::STEP));
            }
            // A Sync commits inside `apply`: count commits, not the batch left open.
            let committed = Metrics::get(&self.metrics.commits) > commits;
            if committed || self.last_retention.elapsed() >= Duration::from_millis(200) {
                let t = Instant::now();
                self.after_commit();
                self.note_stall("retention and WAL checks after a commit", t.elapsed(), None);
            }
        }
        let _ = self.commit();
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "Flush at shutdown failed; the sample log keeps the samples for the next start.");
        }
        stop_checkpointer();
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "WAL checkpoint at shutdown failed.");
        }
        let c = &self.commit_times;
        tracing::info!(
            commits = c.count,
            mean_ms = c.mean().as_secs_f64() * 1e3,
            max_ms = c.max.as_secs_f64() * 1e3,
            over_5ms = c.over_5ms,
            "Store writer stopped; WAL checkpointed."
        );
    }

    /// Whether the tail (or the log holding it) is old or large enough to be written to the
    /// database, or whether a flush the full disk refused is to be tried again (its back-off
    /// over).
    fn flush_due(&self) -> bool {
        let retry = self.metrics.disk_full.load(Relaxed)
            && self.unflushed.rows() > 0
            && self.refuse_until.is_none_or(|t| Instant::now() >= t);
        let log_full = self.log.as_ref().is_some_and(|l| {
            l.segments().1 as u64 * super::super::log::SEGMENT_BYTES
                >= self.settings.tail_flush_log_bytes
        });
        retry
            || (log_full && !self.unflushed.is_empty())
            || self
                .unflushed
                .due(self.settings.tail_flush_age, self.settings.tail_flush_rows)
    }

    /// The open batch as the group-commit decision sees it.
    fn open_batch(&self) -> Option<group_commit::Open> {
        self.batch
            .started
            .filter(|_| self.batch.open || !self.batch.boots.is_empty())
            .map(|t| group_commit::Open {
                samples: self.batch.samples,
                age: t.elapsed(),
                prompt: !self.batch.replies.is_empty() || !self.batch.welcomes.is_empty(),
            })
    }

    /// The group-commit decision for the batch as it stands now.
    fn group_commit(&self) -> Next {
        group_commit::next(
            self.open_batch(),
            self.settings.flush_samples,
            self.settings.flush_interval,
            self.settings.ack_budget,
        )
    }

    pub(super) fn begin(&mut self) -> Result<(), rusqlite::Error> {
        if !self.batch.open {
            // The batch's transaction follows a flush's, which finishes first (if it fails, it
            // is rolled back and tried again later).
            let _ = self.finish_flush();
            self.conn.execute_batch("BEGIN")?;
            self.batch.changes_at_begin = self.conn.total_changes();
            self.batch.open = true;
            self.batch.started = Some(Instant::now());
        }
        Ok(())
    }

    /// Commits the batch: its samples to the sample log (synced with `durability = "full"`), the
    /// rest to the database. Returns the failure, if any (already handled).
    pub(super) fn commit(&mut self) -> Result<(), StoreError> {
        let t = Instant::now();
        let samples = self.batch.samples;
        // The log first: if it fails, nothing of the batch happened (the transaction is rolled
        // back with it), and nothing is acked.
        let logged = if self.batch.boots.is_empty() {
            None
        } else {
            match self.write_log() {
                Ok(lsn) => Some(lsn),
                Err(e) => {
                    let e = StoreError::from_log(e);
                    let shared = e.shared();
                    self.fail(e);
                    return Err(shared);
                }
            }
        };
        let mut written = t.elapsed();
        let sql = if self.batch.open {
            let res = self.write_pending().and_then(|()| {
                written = t.elapsed();
                self.conn.execute_batch("COMMIT")
            });
            Some(res)
        } else {
            None
        };
        let took = t.elapsed();
        if logged.is_some() || sql.is_some() {
            self.metrics.commit_time.observe(took.as_secs_f64());
            self.commit_times.record(took);
            self.note_stall("commit", took, Some((written, samples)));
        }
        if logged.is_some() || matches!(sql, Some(Ok(()))) {
            Metrics::add(&self.metrics.commits, 1);
        }
        let sql_failed = match sql {
            Some(Err(e)) => {
                // Only the database's part failed: the samples are in the log and acked below.
                let e = StoreError::from_write(e);
                let shared = e.shared();
                self.fail_database(e);
                Some(shared)
            }
            Some(Ok(())) => {
                self.database_committed();
                None
            }
            None => None,
        };
        let mut b = std::mem::take(&mut self.batch);
        if let Some(lsn) = logged {
            Metrics::add(&self.metrics.samples_committed, b.samples as u64);
            for key in b.boots.keys() {
                if let Some(st) = self.boots.get_mut(key) {
                    st.committed = st.acceptor.next();
                    st.gap_total += st.gap_pending;
                    st.gap_pending = 0;
                    self.unflushed.note_boot(*key, st.committed, st.gap_total);
                }
            }
            let rows = std::mem::take(&mut b.rows);
            self.unflushed.absorb(
                lsn,
                &rows,
                std::mem::take(&mut b.latest),
                std::mem::take(&mut b.stored),
                std::mem::take(&mut b.seen),
                std::mem::take(&mut b.rollup),
            );
            let piece = crate::store::tail::piece(rows);
            self.tail
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(piece);
            if b.last_event_id > 0 {
                self.committed.send_replace(b.last_event_id);
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
        match sql_failed {
            None => {
                for r in b.replies {
                    let _ = r.send(Ok(()));
                }
                for (r, w) in b.welcomes {
                    Metrics::add(&self.metrics.hellos, 1);
                    let _ = r.send(Ok(w));
                }
                Ok(())
            }
            Some(e) => {
                for r in b.replies {
                    let _ = r.send(Err(e.shared()));
                }
                for (r, _) in b.welcomes {
                    let _ = r.send(Err(e.shared()));
                }
                Err(e)
            }
        }
    }

    /// The batch's samples as one log record, appended and (with `durability = "full"`) synced;
    /// returns its `lsn`.
    fn write_log(&mut self) -> std::io::Result<u64> {
        let entries = super::flush::entries(&self.batch.rows, &self.batch.boots, &self.boots);
        let mut payload = Vec::with_capacity(16 + self.batch.rows.len() * 10);
        crate::store::log::entry::encode(&entries, &mut payload);
        let log = self.log.as_mut().ok_or_else(|| {
            std::io::Error::other("the sample log is not open (the writer did not recover)")
        })?;
        let lsn = log.append(&payload)?;
        if self.settings.durability == crate::config::Durability::Full {
            log.sync()?;
        } else {
            self.log_unsynced_since.get_or_insert_with(Instant::now);
        }
        Ok(lsn)
    }

    /// With `durability = "normal"`: syncs the log once its oldest unsynced record is
    /// [`NORMAL_LOG_SYNC`] old (off the ack path, as checkpoints synced the WAL before the log).
    fn sync_log_if_due(&mut self) {
        if self
            .log_unsynced_since
            .is_some_and(|t| t.elapsed() >= NORMAL_LOG_SYNC)
        {
            self.log_unsynced_since = None;
            if let Some(Err(e)) = self.log.as_mut().map(|l| l.sync()) {
                tracing::warn!(error = %e, "Sample log sync failed (durability = \"normal\").");
            }
        }
    }

    /// How long the writer may wait for an operation: until maintenance is due, a flush in
    /// progress goes on at once, and an unsynced log (`"normal"`) is synced in time.
    fn idle_wait(&self) -> Duration {
        if self.open_flush.is_some() {
            return Duration::ZERO;
        }
        let mut wait = MAINTENANCE.saturating_sub(self.last_maintenance.elapsed());
        if let Some(t) = self.log_unsynced_since {
            wait = wait.min(NORMAL_LOG_SYNC.saturating_sub(t.elapsed()));
        }
        wait
    }

    /// The database transaction committed: the forwarding cursor moves, a full disk that took a
    /// write is over.
    fn database_committed(&mut self) {
        let wrote = self.conn.total_changes() > self.batch.changes_at_begin;
        self.batch.rollup_enabled.clear();
        Metrics::add(&self.metrics.quarantined, self.batch.quarantined);
        self.cursor_committed();
        if wrote {
            self.space_returned();
        }
        self.batch.open = false;
    }

    /// The commit that wrote [`Writer::written_cursor`] succeeded: retention may prune up to it,
    /// and it is pending no more unless a later save moved it since.
    pub(super) fn cursor_committed(&mut self) {
        let w = std::mem::take(&mut self.written_cursor);
        if let Some(f) = w.forwarded {
            self.forward_cursor = self.forward_cursor.max(f);
        }
        if self.cursor == w {
            self.cursor = PendingCursor::default();
        }
    }

    /// A database write succeeded after the disk was full: samples are accepted again.
    pub(super) fn space_returned(&mut self) {
        let backing_off = self.refuse_until.take().is_some();
        if self.metrics.disk_full.swap(false, Relaxed) || backing_off {
            tracing::info!("Disk accepts writes again; accepting samples.");
        }
    }

    /// The batch failed before its samples reached the log: the transaction is rolled back and
    /// nothing in the batch is acked.
    pub(super) fn fail(&mut self, e: StoreError) {
        if self.batch.open {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        let b = std::mem::take(&mut self.batch);
        Metrics::add(&self.metrics.commit_failures, 1);
        for key in b.boots.keys() {
            if let Some(st) = self.boots.get_mut(key) {
                st.acceptor = Acceptor::new(st.committed);
                st.gap_pending = 0;
            }
        }
        self.summaries.rolled_back(b.rollup_enabled);
        if b.quarantined > 0 {
            // The rollback took this batch's quarantine inserts (and trims) with it.
            self.recount_quarantine();
        }
        self.note_failure(&e, b.samples);
        for r in b.replies {
            let _ = r.send(Err(e.shared()));
        }
        for (r, _) in b.welcomes {
            let _ = r.send(Err(e.shared()));
        }
    }

    /// The database part of a batch failed after its samples were logged: only it is rolled back
    /// (the samples stay in the batch, to be acked); its waiters learn the error from `commit`.
    fn fail_database(&mut self, e: StoreError) {
        let _ = self.conn.execute_batch("ROLLBACK");
        self.batch.open = false;
        Metrics::add(&self.metrics.commit_failures, 1);
        self.summaries
            .rolled_back(std::mem::take(&mut self.batch.rollup_enabled));
        if self.batch.quarantined > 0 {
            self.batch.quarantined = 0;
            self.recount_quarantine();
        }
        self.batch.presence.clear();
        // The saved position stays pending, for the next commit.
        self.written_cursor = PendingCursor::default();
        self.note_failure(&e, 0);
    }

    /// Logs a failure; a full disk refuses samples for a while.
    pub(super) fn note_failure(&mut self, e: &StoreError, refused: usize) {
        if matches!(e, StoreError::DiskFull(_)) {
            Metrics::add(&self.metrics.samples_refused, refused as u64);
            if !self.metrics.disk_full.swap(true, Relaxed) {
                tracing::error!(error = %e, "Disk full: samples are refused (devices keep them) until space returns.");
            }
            self.refuse_until = Some(Instant::now() + DISK_FULL_BACKOFF);
        } else {
            tracing::error!(error = %e, "Commit failed; nothing of it was acked (devices will resend).");
        }
    }

    /// The batch's database state other than samples (those are flushed with the tail).
    fn write_pending(&mut self) -> rusqlite::Result<()> {
        let c = &self.conn;
        for (d, (link, online)) in &self.batch.presence {
            c.prepare_cached("UPDATE devices SET online = ?3 WHERE id = ?1 AND link = ?2")?
                .execute(params![d, link, online])?;
        }
        self.written_cursor = self.cursor;
        write_cursor(c, &self.cursor)?;
        Ok(())
    }

    /// Logs a step that held the writer longer than [`STALL`] (rate-limited). `commit`: the time
    /// its statements took before `COMMIT` (the rest is `COMMIT`, mostly the fsync), and its samples.
    pub(super) fn note_stall(
        &mut self,
        step: &str,
        took: Duration,
        commit: Option<(Duration, usize)>,
    ) {
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
}

/// Writes the uplink's saved position (if any) in the open transaction.
pub(super) fn write_cursor(c: &rusqlite::Connection, cur: &PendingCursor) -> rusqlite::Result<()> {
    if let Some(f) = cur.forwarded {
        c.prepare_cached(
            "INSERT INTO forward_cursor (name, event_id) VALUES ('uplink', ?1)
             ON CONFLICT (name) DO UPDATE SET event_id = max(event_id, excluded.event_id)",
        )?
        .execute([f])?;
    }
    if let Some((from, to)) = cur.live_range {
        let mut st = c.prepare_cached(
            "INSERT INTO forward_cursor (name, event_id) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET event_id = excluded.event_id",
        )?;
        st.execute(params!["uplink.live_from", from])?;
        st.execute(params!["uplink.live", to])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::sync::{mpsc, oneshot, watch};

    use super::super::fixture::{ids, insert_events, writer};
    use super::super::housekeeping::MAINTENANCE;
    use super::super::{AckSlot, AckState, Op, PendingCursor, Row, SamplesOp, Writer, QUEUE};
    use crate::metrics::Metrics;
    use rusqlite::OptionalExtension;

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
    fn samples(w: &mut Writer, n: usize, ack: &AckSlot) {
        samples_from(w, 0, n, ack)
    }

    fn samples_from(w: &mut Writer, first_seq: u32, n: usize, ack: &AckSlot) {
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
            first_seq,
            rows: vec![row; n],
            out_of_range: Vec::new(),
            quarantine: None,
            held: None,
            ack: ack.clone(),
        }));
        let _ = w.commit();
    }

    #[test]
    fn a_full_disk_keeps_logged_samples_in_the_tail_and_refuses_new_ones_until_space_returns() {
        let (mut w, dir) = writer("enospc", Duration::from_secs(60));
        let pages: i64 = w
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        // SQLite answers SQLITE_FULL past max_page_count, here while the flush inserts.
        let limit = |w: &Writer, n: i64| {
            w.conn
                .query_row(&format!("PRAGMA max_page_count = {n}"), [], |_| Ok(()))
                .unwrap()
        };
        limit(&w, pages);
        let (ack_tx, ack_rx) = watch::channel(AckState::default());
        let ack: AckSlot = Arc::new(ack_tx);
        samples(&mut w, 500, &ack);
        assert_eq!(ack_rx.borrow().next_seq, 500, "durable in the log: acked");
        assert!(w.flush().is_err(), "the database is full");
        assert!(w.metrics.disk_full.load(Relaxed) && w.refusing());
        assert_eq!(w.tail.read().unwrap().len(), 500, "kept for the next flush");
        // While the disk is full, new samples are refused (the device keeps them).
        let refused_before = Metrics::get(&w.metrics.samples_refused);
        samples_from(&mut w, 500, 100, &ack);
        assert_eq!(
            Metrics::get(&w.metrics.samples_refused),
            refused_before + 100
        );
        assert_eq!(ack_rx.borrow().next_seq, 500, "nothing refused is acked");
        // Space returns: the flush stores what was acked.
        limit(&w, 1 << 30);
        w.flush().unwrap();
        assert!(!w.metrics.disk_full.load(Relaxed) && !w.refusing());
        let (stored, _, _) = ids(&w);
        assert_eq!(stored, 500, "acked means stored");
        assert!(w.tail.read().unwrap().is_empty());
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_log_holding_its_byte_bound_is_flushed_before_the_age_or_row_bound() {
        let (mut w, dir) = writer("logbound", Duration::from_secs(60));
        // Each commit takes a 4 KiB block of the log: two segments' worth of one-sample commits.
        w.settings.tail_flush_log_bytes = 2 * crate::store::log::SEGMENT_BYTES;
        let (ack_tx, _ack_rx) = watch::channel(AckState::default());
        let ack: AckSlot = Arc::new(ack_tx);
        let per_segment = (crate::store::log::SEGMENT_BYTES / 4096) as u32;
        for seq in 0..per_segment {
            samples_from(&mut w, seq, 1, &ack);
        }
        assert!(
            !w.flush_due(),
            "one segment: below the bound, rows and age far below theirs"
        );
        for seq in per_segment..per_segment + 1 {
            samples_from(&mut w, seq, 1, &ack);
        }
        assert_eq!(w.log.as_ref().unwrap().segments().1, 2);
        assert!(w.flush_due(), "two segments hold unreleased records");
        w.flush().unwrap();
        assert!(!w.flush_due());
        assert_eq!(
            w.log.as_ref().unwrap().segments().1,
            1,
            "only the active one"
        );
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_flush_goes_in_steps_between_log_commits_and_readers_see_it_only_whole() {
        let (mut w, dir) = writer("steps", Duration::from_secs(60));
        let (ack_tx, ack_rx) = watch::channel(AckState::default());
        let ack: AckSlot = Arc::new(ack_tx);
        samples(&mut w, 5000, &ack);
        let reader = crate::store::open_reader(&w.settings.path).unwrap();
        let stored = |c: &rusqlite::Connection| -> i64 {
            c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap()
        };
        // A step with no time left inserts one round of rows and leaves its transaction open.
        w.flush_step(Some(Duration::ZERO)).unwrap();
        assert!(w.open_flush.is_some());
        assert_eq!(stored(&reader), 0, "nothing visible before the commit");
        assert_eq!(w.tail.read().unwrap().len(), 5000);
        // Samples keep being logged and acked while it is open.
        samples_from(&mut w, 5000, 100, &ack);
        assert_eq!(ack_rx.borrow().next_seq, 5100);
        w.flush_step(Some(Duration::ZERO)).unwrap();
        assert!(w.open_flush.is_some());
        // Anything else that writes the database finishes it first.
        w.begin().unwrap();
        assert!(w.open_flush.is_none());
        assert_eq!(
            stored(&reader),
            5100,
            "the flush took what was logged meanwhile"
        );
        assert!(w.tail.read().unwrap().is_empty());
        w.commit().unwrap();
        drop(w);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_cursor_saved_while_a_flush_is_open_joins_that_flush() {
        let (mut w, dir) = writer("cursor", Duration::from_secs(60));
        let (ack_tx, _ack_rx) = watch::channel(AckState::default());
        let ack: AckSlot = Arc::new(ack_tx);
        samples(&mut w, 5000, &ack);
        let reader = crate::store::open_reader(&w.settings.path).unwrap();
        let cursor = |c: &rusqlite::Connection, name: &str| -> Option<i64> {
            c.query_row(
                "SELECT event_id FROM forward_cursor WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
        };
        w.flush_step(Some(Duration::ZERO)).unwrap();
        assert!(w.open_flush.is_some());
        let (reply, mut rx) = oneshot::channel();
        w.apply(Op::UplinkProgress {
            backlog: 3000,
            live_from: 3500,
            live: 4000,
            reply,
        });
        assert!(w.open_flush.is_some(), "the save did not finish the flush");
        assert!(!w.batch.open);
        assert!(matches!(rx.try_recv(), Ok(Ok(()))), "answered at once");
        assert_eq!(
            cursor(&reader, "uplink"),
            None,
            "not visible before the flush commits"
        );
        assert_eq!(w.forward_cursor, 0, "retention does not prune by it yet");
        w.flush().unwrap();
        assert_eq!(cursor(&reader, "uplink"), Some(3000));
        assert_eq!(cursor(&reader, "uplink.live_from"), Some(3500));
        assert_eq!(cursor(&reader, "uplink.live"), Some(4000));
        assert_eq!(w.forward_cursor, 3000);
        assert_eq!(w.cursor, PendingCursor::default(), "nothing pending");
        // With no flush open, a save commits with its batch and is answered then.
        let (reply, mut rx) = oneshot::channel();
        w.apply(Op::MarkForwarded {
            event_id: 4500,
            reply,
        });
        assert!(w.batch.open && rx.try_recv().is_err());
        w.commit().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
        assert_eq!(cursor(&reader, "uplink"), Some(4500));
        assert_eq!(w.forward_cursor, 4500);
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
}

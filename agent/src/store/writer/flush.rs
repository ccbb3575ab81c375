//! The tail into the database, in batches, and the log replayed after a crash.
//!
//! Invariants:
//! - **One transaction per flush** holds the tail's samples, the positions of their boots, the
//!   read models that follow them (`latest`, `devices.events_total`, `last_seen`, heartbeats,
//!   summaries) and `counters.log_applied` = the highest id in it. Only after it committed does
//!   the tail drop the samples and the log reuse their segments; if it fails, everything stays
//!   where it was and the next flush tries again.
//! - **In steps between log commits.** The transaction stays open across the writer's loop: each
//!   [`step`](Writer::flush_step) inserts the tail's samples for at most [`STEP`] and returns, so
//!   a device's ack never waits for a whole flush, only for one step. When the inserts caught up
//!   with the tail, the same step writes the read models of everything inserted and commits. A
//!   batch holding only samples touches no SQL (its samples go to the log), and the uplink's
//!   position saved meanwhile is written with the flush; anything else that writes the database
//!   (a batch with a Hello, presence or quarantine, retention, a checkpoint, `Sync`,
//!   shutdown) first finishes the flush ([`finish_flush`](Writer::finish_flush)). A flush open
//!   longer than [`STEP_FOR_AT_MOST`], or with a tail of twice `tail_flush_rows`, is finished in
//!   one go: it cannot fall behind for ever.
//! - **Replay is idempotent.** Recovery applies the log's records above `log_applied` (positions
//!   by maximum, samples by id), then flushes before the writer accepts anything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_wire::Heartbeat;
use rusqlite::{params, OptionalExtension};

use super::{BootState, StoreError, Writer};

/// How long one step of a flush inserts samples.
pub(super) const STEP: Duration = Duration::from_millis(2);
/// A flush still open after this long is finished in one go.
const STEP_FOR_AT_MOST: Duration = Duration::from_secs(2);

/// A flush in progress: its transaction is open and holds the tail's samples up to `through`.
#[derive(Debug, Clone, Copy)]
pub(super) struct OpenFlush {
    through: i64,
    since: Instant,
}
use crate::metrics::Metrics;
use crate::store::codec::Sample;
use crate::store::log::entry::{self, Entry};
use crate::store::log::SampleLog;
use crate::store::rollup;
use crate::store::tail::TailRow;

/// What the log holds that the database does not yet, besides the samples (the tail has those).
#[derive(Debug, Default)]
pub(super) struct Unflushed {
    /// Samples (in the tail).
    rows: usize,
    /// The highest id among them.
    max_id: i64,
    /// The highest `lsn` holding them.
    last_lsn: u64,
    /// When the oldest of them was logged.
    since: Option<Instant>,
    /// `(next_seq, gap_dropped)` per boot, absolute.
    boots: HashMap<(i64, i64), (u32, u64)>,
    /// Newest sample per `(device, sensor)`: `(ts_ms, value, id)`.
    latest: HashMap<(i64, u8), (i64, f32, i64)>,
    /// Samples per device.
    stored: HashMap<i64, u64>,
    /// Newest sample time per device (for `last_seen_ms` and summary enablement).
    seen: HashMap<i64, i64>,
    /// Last heartbeat per device, with when it came (UTC ms).
    pub(super) heartbeats: HashMap<i64, (Heartbeat, i64)>,
    /// Summaries of the samples.
    rollup: rollup::Batch,
}

impl Unflushed {
    /// Samples not yet in the database.
    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0 && self.boots.is_empty() && self.heartbeats.is_empty()
    }

    /// A boot's position not yet in the database.
    pub(super) fn holds_boot(&self, key: (i64, i64)) -> bool {
        self.boots.contains_key(&key)
    }

    /// The newest sample time of `device` not yet in the database.
    pub(super) fn newest_ts(&self, device: i64) -> Option<i64> {
        self.seen.get(&device).copied()
    }

    /// A boot's durable position after a log commit.
    pub(super) fn note_boot(&mut self, key: (i64, i64), next_seq: u32, gap: u64) {
        let p = self.boots.entry(key).or_insert((next_seq, gap));
        p.0 = p.0.max(next_seq);
        p.1 = p.1.max(gap);
    }

    /// Takes in a log commit's samples and read models.
    pub(super) fn absorb(
        &mut self,
        lsn: u64,
        rows: &[TailRow],
        latest: HashMap<(i64, u8), (i64, f32, i64)>,
        stored: HashMap<i64, u64>,
        seen: HashMap<i64, i64>,
        summaries: rollup::Batch,
    ) {
        self.last_lsn = self.last_lsn.max(lsn);
        if let Some(last) = rows.last() {
            self.rows += rows.len();
            self.max_id = self.max_id.max(last.id);
            self.since.get_or_insert_with(Instant::now);
        }
        for (k, v) in latest {
            let e = self.latest.entry(k).or_insert(v);
            if v.0 >= e.0 {
                *e = v;
            }
        }
        for (d, n) in stored {
            *self.stored.entry(d).or_default() += n;
        }
        for (d, ts) in seen {
            let e = self.seen.entry(d).or_insert(ts);
            *e = (*e).max(ts);
        }
        self.rollup.absorb(summaries);
    }

    /// A device's heartbeat, written with the next flush.
    /// Returns when it came (UTC ms).
    pub(super) fn heartbeat(&mut self, device: i64, hb: Heartbeat) -> i64 {
        let at = crate::utc_now_ms();
        self.heartbeats.insert(device, (hb, at));
        self.since.get_or_insert_with(Instant::now);
        at
    }

    /// Whether a flush is due (see `StoreSettings::tail_flush_age` and `tail_flush_rows`).
    pub(super) fn due(&self, age: Duration, rows: usize) -> bool {
        self.rows >= rows || self.since.is_some_and(|t| t.elapsed() >= age)
    }
}

/// The log entries of a batch: per boot touched, its position and its stored rows.
pub(super) fn entries(
    rows: &[TailRow],
    touched: &HashMap<(i64, i64), ()>,
    boots: &HashMap<(i64, i64), BootState>,
) -> Vec<Entry> {
    let mut by_boot: HashMap<(i64, i64), Vec<Sample>> = HashMap::new();
    for r in rows {
        by_boot
            .entry((r.device, r.boot_no))
            .or_default()
            .push(Sample {
                id: r.id,
                seq: r.seq,
                sensor: r.sensor,
                ts_ms: r.ts_ms,
                value: r.value,
            });
    }
    touched
        .keys()
        .filter_map(|key| {
            let st = boots.get(key)?;
            Some(Entry {
                device: key.0,
                boot_no: key.1,
                next_seq: st.acceptor.next(),
                gap_dropped: st.gap_total + st.gap_pending,
                samples: by_boot.remove(key).unwrap_or_default(),
            })
        })
        .collect()
}

impl Writer {
    /// Writes what the log holds beyond the database, to the end (see the module header).
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        if self.unflushed.is_empty() && self.open_flush.is_none() {
            return Ok(());
        }
        self.flush_step(None)
    }

    /// Finishes a flush in progress, if any (before anything else writes the database).
    pub(super) fn finish_flush(&mut self) -> Result<(), StoreError> {
        if self.open_flush.is_none() {
            return Ok(());
        }
        self.flush_step(None)
    }

    /// One step of a flush (the whole flush with `budget` `None`): starts one if none is open,
    /// inserts the tail's samples for at most `budget`, and commits when they caught up.
    pub(super) fn flush_step(&mut self, budget: Option<Duration>) -> Result<(), StoreError> {
        debug_assert!(!self.batch.open, "flushes run between batches");
        let t = Instant::now();
        let budget = budget.filter(|_| {
            self.open_flush
                .is_none_or(|f| f.since.elapsed() < STEP_FOR_AT_MOST)
                && self.unflushed.rows() < 2 * self.settings.tail_flush_rows
        });
        let res = self.write_flush(budget.map(|b| t + b));
        let took = t.elapsed();
        self.note_stall("flush of the tail", took, None);
        match res {
            Ok(false) => Ok(()),
            Ok(true) => {
                self.open_flush = None;
                self.cursor_committed();
                let u = std::mem::take(&mut self.unflushed);
                self.summaries.committed(u.rollup);
                if u.max_id > 0 {
                    self.applied = self.applied.max(u.max_id);
                }
                {
                    let mut tail = self.tail.write().unwrap_or_else(|p| p.into_inner());
                    tail.drop_through(self.applied);
                    tail.forget_all();
                }
                if let Some(log) = self.log.as_mut() {
                    log.release_through(u.last_lsn);
                }
                for (key, (next, _)) in u.boots {
                    // Boots no link uses any more can be read from the table again.
                    if let Some(st) = self.boots.get(&key) {
                        debug_assert!(st.committed >= next);
                    }
                }
                self.space_returned();
                Ok(())
            }
            Err(e) => {
                self.open_flush = None;
                let _ = self.conn.execute_batch("ROLLBACK");
                self.written_cursor = Default::default();
                self.unflushed.rollup.rolled_back();
                // A rolled-back transaction like any other; its samples stay in the log and the
                // tail, acked, and the flush is tried again.
                Metrics::add(&self.metrics.commit_failures, 1);
                let e = StoreError::from_write(e);
                let shared = e.shared();
                self.note_failure(&e, 0);
                Err(shared)
            }
        }
    }

    /// Inserts the tail's samples (until `deadline`, if any); when they caught up, writes the
    /// read models and commits. Returns whether it committed.
    fn write_flush(&mut self, deadline: Option<Instant>) -> rusqlite::Result<bool> {
        let c = &self.conn;
        let mut open = match self.open_flush {
            Some(f) => f,
            None => {
                c.execute_batch("BEGIN")?;
                let f = OpenFlush {
                    through: self.applied,
                    since: Instant::now(),
                };
                self.open_flush = Some(f);
                f
            }
        };
        let u = &mut self.unflushed;
        let pieces = self.tail.read().unwrap_or_else(|p| p.into_inner()).pieces();
        {
            let mut st = c.prepare_cached(
                "INSERT INTO events (id, device, boot_no, seq, sensor, ts_ms, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut n = 0u32;
            let from = open.through;
            for r in pieces
                .iter()
                .filter(|p| p.last().is_some_and(|l| l.id > from))
                .flat_map(|p| p.iter())
            {
                if r.id <= open.through || r.id > u.max_id {
                    continue;
                }
                st.execute(params![
                    r.id,
                    r.device,
                    r.boot_no,
                    r.seq,
                    r.sensor,
                    r.ts_ms,
                    f64::from(r.value)
                ])?;
                open.through = r.id;
                n += 1;
                if n % 64 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
        self.open_flush = Some(open);
        if open.through < u.max_id {
            return Ok(false);
        }
        for (key, (next, gap)) in &u.boots {
            c.prepare_cached(
                "UPDATE boots SET next_seq = max(next_seq, ?3), gap_dropped = max(gap_dropped, ?4)
                  WHERE device = ?1 AND boot_no = ?2",
            )?
            .execute(params![key.0, key.1, next, *gap as i64])?;
        }
        for (d, ts) in &u.seen {
            c.prepare_cached(
                "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1 AND last_seen_ms < ?2",
            )?
            .execute(params![d, ts])?;
        }
        for (d, (hb, at)) in &u.heartbeats {
            c.prepare_cached(
                "UPDATE devices SET last_seen_ms = max(last_seen_ms, ?2), dropped = ?3, ring_depth = ?4,
                     read_errors = ?5 WHERE id = ?1",
            )?
            .execute(params![d, at, hb.dropped, hb.ring_depth, hb.read_errors])?;
        }
        for ((d, sensor), (ts, value, id)) in &u.latest {
            c.prepare_cached(
                "INSERT INTO latest (device, sensor, event_id, ts_ms, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device, sensor) DO UPDATE SET event_id = excluded.event_id,
                     ts_ms = excluded.ts_ms, value = excluded.value
                 WHERE excluded.ts_ms >= latest.ts_ms",
            )?
            .execute(params![d, sensor, id, ts, f64::from(*value)])?;
        }
        self.summaries.write(c, &mut u.rollup)?;
        for (d, n) in &u.stored {
            c.prepare_cached("UPDATE devices SET events_total = events_total + ?2 WHERE id = ?1")?
                .execute(params![d, *n as i64])?;
        }
        if u.max_id > self.applied {
            c.prepare_cached(
                "INSERT INTO counters (name, value) VALUES ('log_applied', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute([u.max_id])?;
        }
        // The uplink's position saved while the flush was open.
        self.written_cursor = self.cursor;
        super::commit::write_cursor(c, &self.cursor)?;
        c.execute_batch("COMMIT")?;
        Ok(true)
    }

    /// Opens the sample log and applies what it holds beyond the database (see the module
    /// header), then flushes it.
    pub(super) fn replay_log(&mut self) -> Result<(), StoreError> {
        let dir = crate::store::log_dir(&self.settings.path);
        let (log, records) = SampleLog::open(&dir).map_err(StoreError::from_log)?;
        self.log = Some(log);
        // Recovery may be retried (a full disk at start): begin from nothing each time.
        self.unflushed = Unflushed::default();
        *self.tail.write().unwrap_or_else(|p| p.into_inner()) = Default::default();
        self.boots.clear();
        let (mut replayed, mut boots_moved) = (0u64, 0usize);
        let mut rows: Vec<TailRow> = Vec::new();
        let mut last_lsn = 0;
        for rec in &records {
            let entries = match entry::decode(&rec.payload) {
                Ok(e) => e,
                Err(e) => {
                    // A record with a valid checksum always decodes; this is a bug, not a disk.
                    tracing::error!(lsn = rec.lsn, error = %e, "Sample log record unreadable; skipped.");
                    continue;
                }
            };
            last_lsn = rec.lsn;
            for e in entries {
                let key = (e.device, e.boot_no);
                let (next, gap): (u32, i64) = match self
                    .conn
                    .query_row(
                        "SELECT next_seq, gap_dropped FROM boots WHERE device = ?1 AND boot_no = ?2",
                        params![e.device, e.boot_no],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                {
                    Some(v) => v,
                    None => {
                        tracing::error!(
                            device = e.device,
                            boot_no = e.boot_no,
                            "Sample log names a boot the database does not have; its samples are skipped."
                        );
                        continue;
                    }
                };
                let st = self.boots.entry(key).or_insert(BootState {
                    acceptor: ferry_wire::Acceptor::new(next),
                    committed: next,
                    gap_total: gap as u64,
                    gap_pending: 0,
                });
                if e.next_seq > st.committed || e.gap_dropped > st.gap_total {
                    st.committed = st.committed.max(e.next_seq);
                    st.gap_total = st.gap_total.max(e.gap_dropped);
                    st.acceptor = ferry_wire::Acceptor::new(st.committed);
                    boots_moved += 1;
                }
                self.unflushed.note_boot(key, st.committed, st.gap_total);
                let mut batch = super::Batch::default();
                for s in e.samples.iter().filter(|s| s.id > self.applied) {
                    let r = TailRow {
                        id: s.id,
                        device: e.device,
                        boot_no: e.boot_no,
                        seq: s.seq,
                        sensor: s.sensor,
                        ts_ms: s.ts_ms,
                        value: s.value,
                    };
                    let n = batch
                        .latest
                        .entry((r.device, r.sensor))
                        .or_insert((r.ts_ms, r.value, r.id));
                    if r.ts_ms >= n.0 {
                        *n = (r.ts_ms, r.value, r.id);
                    }
                    *batch.stored.entry(r.device).or_default() += 1;
                    let seen = batch.seen.entry(r.device).or_insert(r.ts_ms);
                    *seen = (*seen).max(r.ts_ms);
                    rows.push(r);
                    replayed += 1;
                }
                batch.rollup.add_rows(
                    self.summaries.of(e.device),
                    e.device,
                    e.samples
                        .iter()
                        .filter(|s| s.id > self.applied)
                        .map(|s| (s.sensor, s.ts_ms, f64::from(s.value))),
                );
                self.unflushed.absorb(
                    rec.lsn,
                    &[],
                    batch.latest,
                    batch.stored,
                    batch.seen,
                    batch.rollup,
                );
            }
        }
        rows.sort_by_key(|r| r.id);
        rows.dedup_by_key(|r| r.id);
        if let Some(last) = rows.last() {
            self.next_id = self.next_id.max(last.id + 1);
            self.unflushed.rows = rows.len();
            self.unflushed.max_id = last.id;
            self.unflushed.since = Some(Instant::now());
            self.committed.send_replace(last.id);
        }
        self.unflushed.last_lsn = self.unflushed.last_lsn.max(last_lsn);
        let piece = crate::store::tail::piece(rows);
        self.tail
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(piece);
        if replayed > 0 || boots_moved > 0 {
            tracing::info!(
                records = records.len(),
                samples = replayed,
                boots = boots_moved,
                "Sample log replayed: acked samples the database did not hold yet are stored."
            );
        }
        // Into the database now, so the log can be reused; on a full disk the samples stay in the
        // tail (and the log) and the flush is tried again later.
        match self.flush() {
            Ok(()) => {
                if let Some(log) = self.log.as_mut() {
                    log.release_through(last_lsn);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "The replayed samples could not be written to the database yet; they stay in the sample log.")
            }
        }
        Ok(())
    }
}

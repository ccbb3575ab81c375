//! Applying one operation to the open batch: samples through the boot's acceptor into the batch's
//! rows (for the sample log; they get their `events.id` here), Hellos into
//! `devices`/`boots`/`sensors`, the quarantine, and the pending state (heartbeats, presence,
//! cursors) that [`super::commit`] writes once per batch.
//!
//! Invariants:
//! - Samples are refused, not queued, while the disk is full or the store is at its cap with only
//!   unforwarded data ([`Writer::refusing`]); the device keeps them.
//! - A boot's acceptor takes samples once and in order; its position moves in memory here and is
//!   durable only with the log's sync. If the log write fails, the acceptor is reset, so nothing
//!   that was not logged is skipped as a duplicate later.
//! - A Hello keeps the state of older boots that still have samples in the open batch or not yet
//!   in the database: their positions are the log's, ahead of the `boots` table.
//! - The quarantine holds at most `quarantine_max_rows` rows (the oldest go first).

use std::sync::Arc;
use std::time::Instant;

use ferry_wire::Acceptor;
use rusqlite::{params, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    rollup, AckState, BootState, HelloOp, Op, Row, SamplesOp, StoreError, TailRow, Welcomed, Writer,
};
use crate::metrics::Metrics;

/// Samples the tail may hold while the disk is full (beyond it samples are refused until a flush
/// succeeds): what a full disk has to take in when space returns stays small.
const FULL_DISK_TAIL: usize = 4096;

/// A reading as the database gives it back, so the tail (and the log) hold the same value: any
/// NaN is stored as NULL and read as the one quiet NaN, and -0.0 is stored as the integer 0.
fn as_stored(v: f32) -> f32 {
    if v.is_nan() {
        f32::NAN
    } else if v == 0.0 {
        0.0
    } else {
        v
    }
}

impl Writer {
    pub(super) fn refusing(&self) -> bool {
        self.refusing_for_cap
            || self.refuse_until.is_some_and(|t| Instant::now() < t)
            // While the database cannot take the tail, only a little more is acked into it.
            || (self.metrics.disk_full.load(std::sync::atomic::Ordering::Relaxed)
                && self.unflushed.rows() >= FULL_DISK_TAIL)
    }

    pub(super) fn apply(&mut self, op: Op) {
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
                // Written with the next flush of the tail, not in a transaction of its own;
                // readers see it in the tail until then.
                let at_ms = self.unflushed.heartbeat(device, hb);
                self.tail.write().unwrap_or_else(|p| p.into_inner()).hear(
                    device,
                    crate::store::tail::Heard {
                        at_ms,
                        dropped: hb.dropped,
                        ring_depth: hb.ring_depth,
                        read_errors: hb.read_errors,
                    },
                );
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
                let c = &mut self.cursor;
                c.forwarded = Some(event_id.max(c.forwarded.unwrap_or(0)));
                self.save_cursor(reply);
            }
            Op::UplinkProgress {
                backlog,
                live_from,
                live,
                reply,
            } => {
                let c = &mut self.cursor;
                c.forwarded = Some(backlog.max(c.forwarded.unwrap_or(0)));
                c.live_range = Some((live_from, live));
                self.save_cursor(reply);
            }
            Op::Exec { run, reply } => {
                self.touch();
                self.batch.replies.push(reply);
                if let Err(e) = (run.0)(&self.conn) {
                    self.fail(StoreError::from_write(e));
                }
            }
            Op::Probe(reply) => {
                let _ = reply.send(());
            }
            Op::Sync(reply) => {
                // Everything before it is committed and in the database when it is answered.
                self.touch();
                let committed = self.commit();
                let _ = reply.send(committed.and_then(|()| self.flush()));
            }
        }
    }

    /// The uplink's position goes to the database with the next commit. While a flush of the
    /// tail is open, that is the flush's (a few steps away; the uplink is answered now, and a
    /// crash before it commits only forwards those samples again, which the cloud side
    /// deduplicates): a save of the position never makes a flush finish in one go, holding acks.
    /// Otherwise it is this batch's, answered when it commits.
    fn save_cursor(&mut self, reply: oneshot::Sender<Result<(), StoreError>>) {
        if self.open_flush.is_some() && !self.batch.open {
            let _ = reply.send(Ok(()));
        } else {
            self.touch();
            self.batch.replies.push(reply);
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
            // Not in memory, so nothing of it waits for a flush: the table is current.
            let (next, gap): (u32, i64) = self
                .conn
                .query_row(
                    "SELECT next_seq, gap_dropped FROM boots WHERE device = ?1 AND boot_no = ?2",
                    params![key.0, key.1],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((0, 0));
            self.boots.insert(
                key,
                BootState {
                    acceptor: Acceptor::new(next),
                    committed: next,
                    gap_total: gap as u64,
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
        self.batch.started.get_or_insert_with(Instant::now);
        {
            let b = &mut self.batch;
            // Newest row per sensor of this frame (a frame carries few sensors: a short list
            // beats hashing every row), folded into the batch's map after the loop.
            let mut newest: Vec<(u8, i64, f32, i64)> = Vec::new();
            for i in accepted.keep.clone() {
                if s.out_of_range.contains(&i) {
                    continue;
                }
                let r = Row {
                    value: as_stored(s.rows[i].value),
                    ..s.rows[i]
                };
                let id = self.next_id;
                self.next_id += 1;
                b.rows.push(TailRow {
                    id,
                    device: s.device,
                    boot_no: s.boot_no,
                    seq: s.first_seq + i as u32,
                    sensor: r.sensor,
                    ts_ms: r.ts_ms,
                    value: r.value,
                });
                b.last_event_id = id;
                match newest.iter_mut().find(|n| n.0 == r.sensor) {
                    Some(n) if r.ts_ms >= n.1 => *n = (r.sensor, r.ts_ms, r.value, id),
                    Some(_) => {}
                    None => newest.push((r.sensor, r.ts_ms, r.value, id)),
                }
            }
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
        let unflushed = &self.unflushed;
        let batch_rows = &self.batch.rows;
        let newest_unflushed = |device: i64| {
            unflushed.newest_ts(device).max(
                batch_rows
                    .iter()
                    .filter(|r| r.device == device)
                    .map(|r| r.ts_ms)
                    .max(),
            )
        };
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
        let new_boot = c.execute(
            "UPDATE devices SET boot_no = ?2, dropped = 0, ring_depth = 0, read_errors = 0 WHERE id = ?1 AND boot_no != ?2",
            params![device, boot_no],
        )? > 0;
        c.execute("DELETE FROM sensors WHERE device = ?1", [device])?;
        for (idx, name, unit, interval) in &h.sensors {
            c.execute(
                "INSERT INTO sensors (device, idx, name, unit, interval_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device, idx, name, unit, interval],
            )?;
            if rollup::wanted(*interval) {
                self.summaries.enable(
                    c,
                    &mut self.batch.rollup_enabled,
                    device,
                    *idx,
                    newest_unflushed(device),
                )?;
            }
        }
        // Older boots of this device are done; their state reloads from the table if a late frame
        // needs it. A boot with samples in the open batch, or whose position the table does not
        // have yet (not flushed), stays.
        let in_batch = &self.batch.boots;
        let unflushed = &self.unflushed;
        self.boots.retain(|key, _| {
            key.0 != device
                || key.1 == boot_no
                || in_batch.contains_key(key)
                || unflushed.holds_boot(*key)
        });
        if new_boot {
            // The old boot's last heartbeat, not yet written, must not overwrite the new boot's
            // figures.
            self.unflushed.heartbeats.remove(&device);
            self.tail
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .forget(device);
        }
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
    pub(super) fn recount_quarantine(&mut self) {
        match self
            .conn
            .query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))
        {
            Ok(n) => self.quarantine_rows = n,
            Err(e) => tracing::warn!(error = %e, "Quarantine rows not recounted."),
        }
    }
}

/// The rows of `keep` that are stored (their time is in range).
fn stored(s: &SamplesOp, keep: std::ops::Range<usize>) -> impl Iterator<Item = &Row> {
    keep.filter(move |i| !s.out_of_range.contains(i))
        .map(move |i| &s.rows[i])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{oneshot, watch};

    use super::super::fixture::writer;
    use super::super::{AckSlot, AckState, HelloOp, Op, Row, SamplesOp, Welcomed, Writer};
    use crate::metrics::Metrics;

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
        // Both are in the log; the next flush puts both into the database.
        w.flush().unwrap();
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
}

#[cfg(test)]
mod as_stored_tests {
    use super::as_stored;

    #[test]
    fn readings_are_kept_as_the_database_gives_them_back() {
        assert_eq!(as_stored(-0.0).to_bits(), 0);
        assert_eq!(
            as_stored(f32::from_bits(0xffc0_0000)).to_bits(),
            0x7fc0_0000
        );
        assert_eq!(
            as_stored(f32::from_bits(0x7f80_0001)).to_bits(),
            0x7fc0_0000
        );
        assert_eq!(as_stored(1.5), 1.5);
        assert_eq!(as_stored(f32::NEG_INFINITY), f32::NEG_INFINITY);
    }
}

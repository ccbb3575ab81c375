//! Housekeeping between commits, each in its own small transaction: retention by size
//! ([`super::super::retention`] decides), retention of forwarded events by age, the WAL size check,
//! and the usage gauge.
//!
//! Invariants:
//! - **Ids only grow.** No deletion takes the newest event, so SQLite's rowid never hands out an id
//!   at or below the forwarding cursor again.
//! - **Counted drops.** Deleting unforwarded events (`drop_oldest`) and adding them to the
//!   `counters` table is one transaction; the metric follows only after it committed.
//! - Every deletion keeps the ten-second summaries true in the same transaction
//!   ([`delete_events`]).
//! - Maintenance runs every [`MAINTENANCE`] even under load that never lets the queue run dry.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::{rollup, StoreError, Writer};
use crate::metrics::Metrics;
use crate::store::checkpoint;
use crate::store::retention::{self, Step};

/// What a sample of the tail is expected to take in the database (row, index entry, page slack).
const TAIL_ROW_BYTES: u64 = 80;
/// Rows deleted per retention statement.
pub(super) const CHUNK: i64 = 5000;
/// How often time-based retention and housekeeping run.
pub(super) const MAINTENANCE: Duration = Duration::from_secs(5);

impl Writer {
    /// Measures usage and applies the retention policy (in separate small transactions).
    pub(super) fn after_commit(&mut self) {
        if self.last_wal_check.elapsed() >= Duration::from_millis(200) {
            self.last_wal_check = Instant::now();
            if let Some(f) = &self.wal_frames {
                let wal_bytes = f.load(Relaxed).saturating_mul(self.frame_bytes);
                // Not inside a flush's open transaction (the next check comes soon).
                if self.open_flush.is_none() {
                    checkpoint::restart_if_large(&self.conn, &self.settings.path, wal_bytes);
                }
            }
        }
        self.last_retention = Instant::now();
        for _ in 0..20 {
            // The tail's samples will take room with the next flush: counted now, so a cap is
            // not overshot by what is acked but not yet written.
            let stored = self.measure();
            let used = stored + self.unflushed.rows() as u64 * self.bytes_per_row(stored);
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
            if step != Step::Accept && self.unflushed.rows() > 0 {
                // Decide on what the database holds, not on an estimate of the tail: write it now.
                if self.flush().is_err() {
                    return;
                }
                continue;
            }
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

    /// The lowest and highest event id in the database (0, 0 when empty).
    fn id_span(&self) -> (i64, i64) {
        self.conn
            .query_row(
                // Two subqueries: `min` and `max` in one SELECT would scan every row (SQLite
                // reads a lone min() or max() of the rowid from one end of the table).
                "SELECT coalesce((SELECT min(id) FROM events), 0), coalesce((SELECT max(id) FROM events), 0)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or((0, 0))
    }

    /// Bytes a stored sample takes, from the database's use and its id span ([`TAIL_ROW_BYTES`]
    /// while it holds few).
    fn bytes_per_row(&self, used: u64) -> u64 {
        let (lo, hi) = self.id_span();
        let rows = (hi - lo + 1).max(0) as u64;
        if rows < 1000 {
            TAIL_ROW_BYTES
        } else {
            (used / rows).clamp(16, 4 * TAIL_ROW_BYTES)
        }
    }

    /// Rows to delete in one retention step: about what brings usage down to the low watermark
    /// (bytes per row estimated from usage and the rowid span), between 100 and CHUNK, so a small
    /// cap is not overshot by a fixed chunk.
    fn chunk_for(&self, used: u64) -> i64 {
        let Some(cap) = self.settings.max_db_size else {
            return CHUNK;
        };
        let excess = used.saturating_sub((cap as f64 * retention::LOW) as u64);
        let (lo, hi) = self.id_span();
        let per_row = (used / (hi - lo + 1).max(1) as u64).max(1);
        ((excess / per_row) as i64).clamp(100, CHUNK)
    }

    /// Deletes up to CHUNK oldest events (only forwarded ones if `upto` is given), never the newest
    /// one; returns the count. Unforwarded deletions are counted in the same transaction.
    pub(super) fn delete_oldest(
        &mut self,
        upto: Option<i64>,
        chunk: i64,
    ) -> Result<u64, StoreError> {
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
    pub(super) fn measure(&self) -> u64 {
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
    pub(super) fn maintenance(&mut self) {
        self.last_maintenance = Instant::now();
        // Its deletions are transactions of their own.
        if self.finish_flush().is_err() {
            return;
        }
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
    use std::sync::Arc;

    use tokio::sync::{oneshot, watch};

    use super::super::fixture::{ids, insert_events, writer};
    use super::super::{AckSlot, AckState, HelloOp, Op, Row, SamplesOp};
    use crate::store::query::Agg;

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
                    w.flush().unwrap();
                    w.summaries.hold();
                }
            }
            w.commit().unwrap();
            w.flush().unwrap();
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
                    let got = crate::store::query::series(
                        &w.conn,
                        &crate::store::tail::TailView::default(),
                        1,
                        sensor,
                        since,
                        until,
                        bucket,
                        agg,
                    )
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
        let conn = crate::store::open_writer(&settings).unwrap();
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

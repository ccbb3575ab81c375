//! Ten-second summaries of fast sensors, so a `series` over a long window reads one row per ten
//! seconds instead of every event.
//!
//! Each summarised `(device, sensor)` has a row in `rollup_from` with two bounds: `slot` (slots
//! below it may be partial and are never read) and `complete_ts` (W). Invariants:
//! - **Exactly the events below W.** For slots at or above `slot`, the `rollup_10s` rows count
//!   exactly the stored events with `ts_ms < W`: no event at or above W, none missing below it.
//! - **Cheap under load.** Events at or above W are summarised in the writer's memory and written
//!   every `FLUSH` (with a commit that stores new ones), raising W past them in the same
//!   transaction; an event stamped below W (late data) is added to its row in its own commit. So a
//!   busy writer writes each slot row a few times a second, not once per commit. Readers read
//!   events from W on (the last `FLUSH` or so of data) and summaries below it. Rows are stored by
//!   `(slot, device, sensor)` (schema v6): the current slot's rows, the ones a flush rewrites, share
//!   a few pages; reads by sensor go through the `(device, sensor, slot)` index.
//! - **Restart.** The unwritten summaries are lost with the process, but their events are stored at
//!   or above W: on start the writer sums them again from the events.
//! - **Which sensors.** A sensor declared (in a Hello) with `interval_ms <= MAX_INTERVAL_MS` is
//!   summarised from then on (a slower one would cost a row per few events). It starts at the slot
//!   after the newest stored event of its device, so no earlier event is missing from a slot at or
//!   above `slot`. Enablement is never undone; summaries stay correct whatever a later boot declares.
//! - **Retention.** Deleting events of a summarised sensor raises its `slot` past the slot of each
//!   deleted event and drops the rows below, in the deleting transaction: a summary that is read
//!   never counts a deleted event.
//! - **Negative timestamps** are never summarised; reads use summaries only when `since >= 0`.
//! - **NaN readings** (stored as NULL) count in `n` and in `nans`; `sum`, `min` and `max` skip them,
//!   as SQL's `total()`, `min()` and `max()` skip NULL, so `avg` is the mean of the readings that are
//!   numbers (NaN when there is none) whichever part a bucket comes from. Infinities take part:
//!   +Inf and -Inf in one sum make it NaN, stored as NULL and read back as NaN (it stays NaN).
//! - **`last`** of a slot is the value of its newest event; among equal timestamps the first one
//!   stored (lowest id), which is what SQLite's `max()` bare column gives over the events index.
//! - **Exact merge.** A series combines summary rows for slots whose events lie wholly inside the
//!   window with aggregates of the raw events for the rest, per bucket; the parts cover disjoint
//!   time ranges, so the result equals the aggregate over the raw events (up to floating-point
//!   summation order).
//!
//! The writer's side (what is summarised, the rows it writes, retention) is here; reading a
//! series from summaries and events is in `rollup/series.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

mod series;

pub use series::{raw_part_sql, series, slot_part_sql};

/// Width of a summary slot.
pub const SLOT_MS: i64 = 10_000;
/// Sensors sampling at least this often (declared interval) are summarised: at least 10 events per
/// slot row.
pub const MAX_INTERVAL_MS: u32 = 1_000;
/// How often summaries held in memory are written. It bounds the raw tail every `series` reads
/// (at 10 sensors x 1 kHz a device stores 1,000 events per 100 ms, all scanned through the
/// `(device, ts_ms)` index) against the writer's upserts (one per summarised sensor with new events
/// per flush, never more than one per event). 500 ms made a series request cost ~570 us of API CPU
/// under 300k samples/s of ingest, 100 ms ~225 us, 50 ms ~180 us, with no visible writer cost.
pub const FLUSH: Duration = Duration::from_millis(100);

/// Whether a sensor with this declared interval is summarised.
pub fn wanted(interval_ms: u32) -> bool {
    interval_ms > 0 && interval_ms <= MAX_INTERVAL_MS
}

/// The summary of one slot (or of some of its events).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    n: i64,
    /// Events whose value is NaN (not in `sum`, `min`, `max`).
    nans: i64,
    sum: f64,
    min: f64,
    max: f64,
    first_ts: i64,
    last_ts: i64,
    last: f64,
}

impl Slot {
    fn new(ts_ms: i64, value: f64) -> Slot {
        let nan = value.is_nan();
        Slot {
            n: 1,
            nans: i64::from(nan),
            sum: if nan { 0.0 } else { value },
            min: value,
            max: value,
            first_ts: ts_ms,
            last_ts: ts_ms,
            last: value,
        }
    }

    /// Counts an event stored after every event already counted.
    fn add(&mut self, ts_ms: i64, value: f64) {
        self.merge(&Slot::new(ts_ms, value));
    }

    /// Counts events stored after every event already counted.
    fn merge(&mut self, o: &Slot) {
        self.n += o.n;
        self.nans += o.nans;
        self.sum += o.sum;
        // f64::min/max skip a NaN operand: a slot's min is NaN only while it has no number.
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.first_ts = self.first_ts.min(o.first_ts);
        if o.last_ts > self.last_ts {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }
}

/// Summaries not yet written, by `(device, sensor, slot)`.
#[derive(Debug, Default)]
pub struct Pending {
    slots: HashMap<(i64, u8, i64), Slot>,
}

impl Pending {
    /// Counts one event (in store order).
    fn add(&mut self, device: i64, sensor: u8, ts_ms: i64, value: f64) {
        self.slots
            .entry((device, sensor, ts_ms / SLOT_MS))
            .and_modify(|s| s.add(ts_ms, value))
            .or_insert_with(|| Slot::new(ts_ms, value));
    }

    /// Takes in `later`'s events (stored after this one's).
    fn absorb(&mut self, later: Pending) {
        for (k, s) in later.slots {
            self.slots
                .entry(k)
                .and_modify(|mine| mine.merge(&s))
                .or_insert(s);
        }
    }

    /// Adds these summaries to the stored ones (inside the open transaction); notes the newest
    /// timestamp written per `(device, sensor)` into `newest`.
    fn write(&self, c: &Connection, newest: &mut HashMap<(i64, u8), i64>) -> rusqlite::Result<()> {
        if self.slots.is_empty() {
            return Ok(());
        }
        // The SET expressions see the row as it was (SQL semantics), so `last_ts` in the CASE is
        // the stored one. Strictly newer wins: among equal timestamps the first stored stays.
        let mut st = c.prepare_cached(
            "INSERT INTO rollup_10s (device, sensor, slot, n, total, vmin, vmax, first_ts, last_ts, last_value, nans)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (slot, device, sensor) DO UPDATE SET
                 n = n + excluded.n, nans = nans + excluded.nans, total = total + excluded.total,
                 vmin = min(coalesce(vmin, excluded.vmin), coalesce(excluded.vmin, vmin)),
                 vmax = max(coalesce(vmax, excluded.vmax), coalesce(excluded.vmax, vmax)),
                 first_ts = min(first_ts, excluded.first_ts),
                 last_value = CASE WHEN excluded.last_ts > last_ts THEN excluded.last_value ELSE last_value END,
                 last_ts = max(last_ts, excluded.last_ts)",
        )?;
        for ((d, sensor, slot), s) in &self.slots {
            st.execute(params![
                d, sensor, slot, s.n, s.sum, s.min, s.max, s.first_ts, s.last_ts, s.last, s.nans
            ])?;
            let t = newest.entry((*d, *sensor)).or_insert(s.last_ts);
            *t = (*t).max(s.last_ts);
        }
        Ok(())
    }
}

/// The writer's side: which sensors are summarised (with their W) and what is not written yet.
#[derive(Debug)]
pub struct Summaries {
    /// `devices.id` -> `(sensor, W)`, as committed (plus the open batch's enablements).
    sensors: HashMap<i64, Vec<(u8, i64)>>,
    /// Committed events at or above their W, not yet written.
    carried: Pending,
    flushed_at: Instant,
}

/// Summaries of stored events not yet written: a batch's, then (absorbed) everything since the
/// last flush of the tail to the database.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events below their W: written with the next flush.
    late: Pending,
    /// Events at or above their W.
    new: Pending,
    /// New W per `(device, sensor)` if this flush writes them.
    flushed: Option<HashMap<(i64, u8), i64>>,
}

impl Batch {
    /// The flush that was to write this rolled back: nothing of it was written.
    pub fn rolled_back(&mut self) {
        self.flushed = None;
    }

    /// Takes in `later`'s events (stored after this one's).
    pub fn absorb(&mut self, later: Batch) {
        self.late.absorb(later.late);
        self.new.absorb(later.new);
    }

    /// Counts a frame's stored events (in store order) of the summarised sensors among
    /// `sensors` (its device's, from [`Summaries::of`]).
    pub fn add_rows(
        &mut self,
        sensors: &[(u8, i64)],
        device: i64,
        rows: impl Iterator<Item = (u8, i64, f64)>,
    ) {
        if sensors.is_empty() {
            return;
        }
        // One open run per summarised sensor: consecutive events of a sensor share a slot, so a
        // frame touches the maps once per sensor and slot, not once per event.
        let mut open: Vec<Option<(i64, bool, Slot)>> = vec![None; sensors.len()];
        for (sensor, ts, value) in rows {
            let Some(p) = sensors.iter().position(|s| s.0 == sensor) else {
                continue;
            };
            if ts < 0 {
                continue;
            }
            let (slot, late) = (ts / SLOT_MS, ts < sensors[p].1);
            match &mut open[p] {
                Some((s0, l0, run)) if *s0 == slot && *l0 == late => run.add(ts, value),
                cur => {
                    if let Some((s0, l0, run)) = cur.take() {
                        self.put(device, sensor, s0, l0, run);
                    }
                    *cur = Some((slot, late, Slot::new(ts, value)));
                }
            }
        }
        for (p, cur) in open.into_iter().enumerate() {
            if let Some((slot, late, run)) = cur {
                self.put(device, sensors[p].0, slot, late, run);
            }
        }
    }

    fn put(&mut self, device: i64, sensor: u8, slot: i64, late: bool, run: Slot) {
        let to = if late { &mut self.late } else { &mut self.new };
        to.slots
            .entry((device, sensor, slot))
            .and_modify(|s| s.merge(&run))
            .or_insert(run);
    }
}

impl Default for Summaries {
    fn default() -> Self {
        Summaries {
            sensors: HashMap::new(),
            carried: Pending::default(),
            flushed_at: Instant::now(),
        }
    }
}

impl Summaries {
    /// Reads the summarised sensors and sums their unwritten events again (see the header).
    pub fn load(c: &Connection) -> rusqlite::Result<Summaries> {
        let mut sensors: HashMap<i64, Vec<(u8, i64)>> = HashMap::new();
        let mut carried = Pending::default();
        let mut st = c.prepare("SELECT device, sensor, complete_ts FROM rollup_from")?;
        let mut rows = st.query([])?;
        let mut ev = c.prepare(
            "SELECT ts_ms, value FROM events WHERE device = ?1 AND ts_ms >= ?2 AND sensor = ?3
              ORDER BY ts_ms, id",
        )?;
        while let Some(r) = rows.next()? {
            let (device, sensor, w): (i64, u8, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            sensors.entry(device).or_default().push((sensor, w));
            // In (ts, id) order: among equal timestamps the lowest id is added first and stays
            // `last`, as in store order.
            let mut evs = ev.query(params![device, w.max(0), sensor])?;
            while let Some(e) = evs.next()? {
                carried.add(device, sensor, e.get(0)?, reading(e, 1)?);
            }
        }
        Ok(Summaries {
            sensors,
            carried,
            flushed_at: Instant::now(),
        })
    }

    /// Tests: no flush until `flush_next`.
    #[cfg(test)]
    pub fn hold(&mut self) {
        self.flushed_at = Instant::now() + Duration::from_secs(3600);
    }

    /// Tests: the next commit flushes.
    #[cfg(test)]
    pub fn flush_next(&mut self) {
        self.flushed_at = Instant::now().checked_sub(FLUSH).unwrap_or(self.flushed_at);
    }

    /// Tests: slot summaries held in memory.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.carried.slots.len()
    }

    /// The summarised sensors of a device, with their W.
    pub fn of(&self, device: i64) -> &[(u8, i64)] {
        self.sensors.get(&device).map_or(&[], Vec::as_slice)
    }

    /// Whether `(device, sensor)` is summarised.
    pub fn has(&self, device: i64, sensor: u8) -> bool {
        self.of(device).iter().any(|s| s.0 == sensor)
    }

    /// Starts summarising `(device, sensor)` (inside the open transaction) unless it already is:
    /// from the slot after the newest event of the device stored so far.
    /// `newest_unflushed`: the newest timestamp of the device's samples not in the database yet.
    /// The enablement is noted in `enabled` (undone by [`Self::rolled_back`] if the transaction
    /// fails).
    pub fn enable(
        &mut self,
        c: &Connection,
        enabled: &mut Vec<(i64, u8)>,
        device: i64,
        sensor: u8,
        newest_unflushed: Option<i64>,
    ) -> rusqlite::Result<()> {
        if self.has(device, sensor) {
            return Ok(());
        }
        let stored: Option<i64> = c.query_row(
            "SELECT max(ts_ms) FROM events WHERE device = ?1",
            [device],
            |r| r.get(0),
        )?;
        let newest = stored.max(newest_unflushed);
        let from = newest.map_or(0, |t| t.max(0) / SLOT_MS + 1);
        c.prepare_cached(
            "INSERT INTO rollup_from (device, sensor, slot, complete_ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (device, sensor) DO NOTHING",
        )?
        .execute(params![device, sensor, from, from * SLOT_MS])?;
        self.sensors
            .entry(device)
            .or_default()
            .push((sensor, from * SLOT_MS));
        enabled.push((device, sensor));
        Ok(())
    }

    /// Writes the batch's late summaries and, every `FLUSH` with a batch that holds new ones,
    /// everything held in memory with the new W (inside the open transaction, before `COMMIT`).
    pub fn write(&self, c: &Connection, batch: &mut Batch) -> rusqlite::Result<()> {
        let mut ignored = HashMap::new();
        batch.late.write(c, &mut ignored)?;
        // Only a commit that stores summarised events flushes: a commit that writes nothing else
        // (a sync while the disk is full) must stay one that writes nothing.
        if batch.new.slots.is_empty() || self.flushed_at.elapsed() < FLUSH {
            return Ok(());
        }
        let mut newest = HashMap::new();
        self.carried.write(c, &mut newest)?;
        batch.new.write(c, &mut newest)?;
        let mut st = c.prepare_cached(
            "UPDATE rollup_from SET complete_ts = max(complete_ts, ?3) WHERE device = ?1 AND sensor = ?2",
        )?;
        for ((d, sensor), ts) in &mut newest {
            *ts += 1;
            st.execute(params![d, sensor, *ts])?;
        }
        batch.flushed = Some(newest);
        Ok(())
    }

    /// The flush that wrote `batch` committed.
    pub fn committed(&mut self, batch: Batch) {
        match batch.flushed {
            Some(w) => {
                for ((d, sensor), ts) in w {
                    if let Some(s) = self
                        .sensors
                        .get_mut(&d)
                        .and_then(|v| v.iter_mut().find(|s| s.0 == sensor))
                    {
                        s.1 = s.1.max(ts);
                    }
                }
                self.carried = Pending::default();
                self.flushed_at = Instant::now();
            }
            None => self.carried.absorb(batch.new),
        }
    }

    /// The transaction that enabled these rolled back: forget them; what is held stays.
    pub fn rolled_back(&mut self, enabled: Vec<(i64, u8)>) {
        for (d, sensor) in enabled {
            if let Some(v) = self.sensors.get_mut(&d) {
                v.retain(|s| s.0 != sensor);
            }
        }
    }
}

/// Deleted events of summarised sensors: the newest deleted timestamp per `(device, sensor)`.
#[derive(Debug, Default)]
pub struct Deleted(HashMap<(i64, u8), i64>);

impl Deleted {
    /// Notes one deleted event.
    pub fn note(&mut self, device: i64, sensor: u8, ts_ms: i64) {
        let t = self.0.entry((device, sensor)).or_insert(ts_ms);
        *t = (*t).max(ts_ms);
    }

    /// Raises `slot` past every deleted event and drops the rows below it (inside the deleting
    /// transaction). Note only summarised sensors; others are skipped by the `UPDATE`.
    pub fn apply(&self, c: &Connection) -> rusqlite::Result<()> {
        for ((d, sensor), ts) in &self.0 {
            if *ts < 0 {
                continue;
            }
            let from = ts / SLOT_MS + 1;
            let raised = c
                .prepare_cached(
                    "UPDATE rollup_from SET slot = ?3 WHERE device = ?1 AND sensor = ?2 AND slot < ?3",
                )?
                .execute(params![d, sensor, from])?;
            if raised > 0 {
                c.prepare_cached(DELETE_BELOW_SQL)?
                    .execute(params![d, sensor, from])?;
            }
        }
        Ok(())
    }
}

/// A stored reading: NULL is a NaN reading (SQLite has no NaN).
pub fn reading(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<f64> {
    Ok(r.get::<_, Option<f64>>(i)?.unwrap_or(f64::NAN))
}

const DELETE_BELOW_SQL: &str =
    "DELETE FROM rollup_10s WHERE device = ?1 AND sensor = ?2 AND slot < ?3";

#[cfg(test)]
mod tests {
    use super::series::SLOT_ROW_SQL;
    use super::*;
    use crate::store::query::Agg;

    #[test]
    fn a_slot_keeps_the_first_stored_of_equal_newest_timestamps() {
        let mut s = Slot::new(5, 1.0);
        s.add(7, 2.0);
        s.add(7, 3.0);
        s.add(6, -4.0);
        assert_eq!(
            s,
            Slot {
                n: 4,
                nans: 0,
                sum: 2.0,
                min: -4.0,
                max: 3.0,
                first_ts: 5,
                last_ts: 7,
                last: 2.0
            }
        );
    }

    /// A v5 store (rows keyed by sensor) migrated to v6 (keyed by slot) keeps every row, and the
    /// per-sensor reads and deletes go through the `(device, sensor, slot)` index, not a scan of
    /// every sensor's rows of a slot range.
    #[test]
    fn v6_keeps_the_rows_and_reads_by_sensor_through_the_index() {
        use crate::store::schema::MIGRATIONS;
        let c = Connection::open_in_memory().unwrap();
        for m in &MIGRATIONS[..5] {
            c.execute_batch(m).unwrap();
        }
        let mut rows = Vec::new();
        for (d, sensor, slot) in [(1, 0, 7), (1, 0, 8), (1, 2, 7), (2, 0, 3)] {
            let row = (d, sensor, slot, slot * 10, slot as f64 / 2.0);
            c.execute(
                "INSERT INTO rollup_10s VALUES (?1, ?2, ?3, ?4, ?5, -1.0, 9.0, ?6, ?7, 0.5)",
                params![
                    row.0,
                    row.1,
                    row.2,
                    row.3,
                    row.4,
                    slot * SLOT_MS,
                    slot * SLOT_MS + 9
                ],
            )
            .unwrap();
            rows.push(row);
        }
        c.execute_batch(MIGRATIONS[5]).unwrap();
        let read = |c: &Connection| -> Vec<(i64, i64, i64, i64, f64)> {
            c.prepare("SELECT device, sensor, slot, n, total FROM rollup_10s ORDER BY device, sensor, slot")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(read(&c), rows);
        // v7 (NaN readings) keeps them too.
        c.execute_batch(MIGRATIONS[6]).unwrap();
        assert_eq!(read(&c), rows);

        let plan = |sql: &str| -> String {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let args = [1, 0, 7, 9, 60_000];
            st.query_map(
                rusqlite::params_from_iter(&args[..st.parameter_count()]),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
        };
        let mut sqls: Vec<String> = [Agg::Avg, Agg::Min, Agg::Max, Agg::Count, Agg::Last]
            .into_iter()
            .map(slot_part_sql)
            .collect();
        sqls.push(DELETE_BELOW_SQL.into());
        for sql in &sqls {
            let p = plan(sql);
            assert!(
                p.contains("USING INDEX rollup_10s_key (device=? AND sensor=?")
                    || p.contains("USING COVERING INDEX rollup_10s_key (device=? AND sensor=?"),
                "{sql}: {p}"
            );
        }
        // One slot: the whole primary key.
        let p = plan(SLOT_ROW_SQL);
        assert!(
            p.contains("USING PRIMARY KEY (slot=? AND device=? AND sensor=?)"),
            "{p}"
        );

        // The writer's upsert names the primary key of v6 (and the NaN count of v7).
        let mut pending = Pending::default();
        pending.add(1, 0, 7 * SLOT_MS + 5, 3.0);
        pending.add(1, 1, 7 * SLOT_MS + 5, 3.0);
        pending.write(&c, &mut HashMap::new()).unwrap();
        let n: Vec<i64> = c
            .prepare("SELECT n FROM rollup_10s WHERE device = 1 AND slot = 7 ORDER BY sensor")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(n, [71, 1, 70]);
    }
}

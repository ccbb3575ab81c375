//! Ten-second summaries of fast sensors, so a `series` over a long window reads one row per ten
//! seconds instead of every event.
//!
//! Invariants:
//! - **Which sensors.** A sensor declared (in a Hello) with `interval_ms <= MAX_INTERVAL_MS` is
//!   summarised from then on: `rollup_from` holds a row for it. Slower sensors have no summaries
//!   (a summary row would cost as much as the events it sums); their series read the events.
//!   Enablement is never undone: summaries stay correct whatever a later boot declares.
//! - **Complete above `from`.** For a summarised `(device, sensor)`, every stored event whose slot
//!   (`ts_ms / SLOT_MS`) is at or above `rollup_from.slot` is counted in that slot's `rollup_10s`
//!   row, written by the writer in the same transaction as the event. Slot rows below `from` may be
//!   partial and are never read.
//! - **Enabling.** `from` starts past the slot of every event of the device already stored, so no
//!   earlier event is missing from a slot at or above it.
//! - **Retention.** Deleting events of a summarised sensor raises its `from` past the slot of each
//!   deleted event and drops the rows below, in the deleting transaction: a summary read never
//!   counts a deleted event.
//! - **Negative timestamps** are never summarised; reads use summaries only when `since >= 0`.
//! - **`last`** of a slot is the value of its newest event; among equal timestamps the first one
//!   stored (lowest id), which is what SQLite's `max()` bare column gives over the events index.
//! - **Exact merge.** A series combines summary rows for the slots that lie wholly inside the
//!   window (or whose events do: a slot row carries its first and last timestamp) with aggregates
//!   of the raw events for the rest, per bucket; the parts cover disjoint time ranges, so the
//!   result equals the aggregate over the raw events (up to floating-point summation order).

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};

use super::query::{Agg, Point};

/// Width of a summary slot.
pub const SLOT_MS: i64 = 10_000;
/// Sensors sampling at least this often (declared interval) are summarised: at least 10 events per
/// slot row.
pub const MAX_INTERVAL_MS: u32 = 1_000;

/// Whether a sensor with this declared interval is summarised.
pub fn wanted(interval_ms: u32) -> bool {
    interval_ms > 0 && interval_ms <= MAX_INTERVAL_MS
}

/// The summary of one slot (or of the part of a batch that falls in it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    n: i64,
    sum: f64,
    min: f64,
    max: f64,
    first_ts: i64,
    last_ts: i64,
    last: f64,
}

impl Slot {
    fn new(ts_ms: i64, value: f64) -> Slot {
        Slot {
            n: 1,
            sum: value,
            min: value,
            max: value,
            first_ts: ts_ms,
            last_ts: ts_ms,
            last: value,
        }
    }

    /// Counts an event stored after every event already counted.
    fn add(&mut self, ts_ms: i64, value: f64) {
        self.n += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.first_ts = self.first_ts.min(ts_ms);
        if ts_ms > self.last_ts {
            self.last_ts = ts_ms;
            self.last = value;
        }
    }
}

/// Summaries of the open transaction's events, written with it.
#[derive(Debug, Default)]
pub struct Pending {
    slots: HashMap<(i64, u8, i64), Slot>,
}

impl Pending {
    /// Counts one stored event of a summarised sensor (in store order).
    pub fn add(&mut self, device: i64, sensor: u8, ts_ms: i64, value: f64) {
        if ts_ms < 0 {
            return;
        }
        self.slots
            .entry((device, sensor, ts_ms / SLOT_MS))
            .and_modify(|s| s.add(ts_ms, value))
            .or_insert_with(|| Slot::new(ts_ms, value));
    }

    /// Adds the pending summaries to the stored ones (inside the open transaction).
    pub fn write(&self, c: &Connection) -> rusqlite::Result<()> {
        if self.slots.is_empty() {
            return Ok(());
        }
        // The SET expressions see the row as it was (SQL semantics), so `last_ts` in the CASE is
        // the stored one. Strictly newer wins: among equal timestamps the first stored stays.
        let mut st = c.prepare_cached(
            "INSERT INTO rollup_10s (device, sensor, slot, n, total, vmin, vmax, first_ts, last_ts, last_value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (device, sensor, slot) DO UPDATE SET
                 n = n + excluded.n, total = total + excluded.total,
                 vmin = min(vmin, excluded.vmin), vmax = max(vmax, excluded.vmax),
                 first_ts = min(first_ts, excluded.first_ts),
                 last_value = CASE WHEN excluded.last_ts > last_ts THEN excluded.last_value ELSE last_value END,
                 last_ts = max(last_ts, excluded.last_ts)",
        )?;
        for ((d, sensor, slot), s) in &self.slots {
            st.execute(params![
                d, sensor, slot, s.n, s.sum, s.min, s.max, s.first_ts, s.last_ts, s.last
            ])?;
        }
        Ok(())
    }
}

/// Summarised sensors per device (`devices.id` -> sensor indexes), as committed.
pub fn load_enabled(c: &Connection) -> rusqlite::Result<HashMap<i64, Vec<u8>>> {
    let mut out: HashMap<i64, Vec<u8>> = HashMap::new();
    let mut st = c.prepare("SELECT device, sensor FROM rollup_from")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        out.entry(r.get(0)?).or_default().push(r.get(1)?);
    }
    Ok(out)
}

/// Starts summarising `(device, sensor)` (inside the open transaction): from the slot after the
/// newest event of the device stored so far.
pub fn enable(c: &Connection, device: i64, sensor: u8) -> rusqlite::Result<()> {
    let newest: Option<i64> = c.query_row(
        "SELECT max(ts_ms) FROM events WHERE device = ?1",
        [device],
        |r| r.get(0),
    )?;
    let from = newest.map_or(0, |t| t.max(0) / SLOT_MS + 1);
    c.prepare_cached(
        "INSERT INTO rollup_from (device, sensor, slot) VALUES (?1, ?2, ?3)
         ON CONFLICT (device, sensor) DO NOTHING",
    )?
    .execute(params![device, sensor, from])?;
    Ok(())
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

    /// Raises `from` past every deleted event and drops the slot rows below it (inside the
    /// deleting transaction). Note only summarised sensors; others are skipped by the `UPDATE`.
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
                c.prepare_cached(
                    "DELETE FROM rollup_10s WHERE device = ?1 AND sensor = ?2 AND slot < ?3",
                )?
                .execute(params![d, sensor, from])?;
            }
        }
        Ok(())
    }
}

/// A bucket being assembled from parts: events, and the value so far (a sum for `avg`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Acc {
    n: i64,
    x: f64,
    /// Timestamp of `x` (for `last`).
    ts: i64,
}

/// Folds part `b` into `a`; the parts cover disjoint time ranges.
fn merge(agg: Agg, a: &mut Acc, b: Acc) {
    a.n += b.n;
    match agg {
        Agg::Avg => a.x += b.x,
        Agg::Min => a.x = a.x.min(b.x),
        Agg::Max => a.x = a.x.max(b.x),
        Agg::Count => {}
        Agg::Last => {
            if b.ts > a.ts {
                a.x = b.x;
                a.ts = b.ts;
            }
        }
    }
}

fn finish(agg: Agg, parts: BTreeMap<i64, Acc>) -> Vec<Point> {
    parts
        .into_iter()
        .filter(|(_, a)| a.n > 0)
        .map(|(t, a)| {
            let v = match agg {
                Agg::Avg => a.x / a.n as f64,
                Agg::Count => a.n as f64,
                _ => a.x,
            };
            (t, v, a.n)
        })
        .collect()
}

fn add_part(agg: Agg, parts: &mut BTreeMap<i64, Acc>, t: i64, b: Acc) {
    match parts.get_mut(&t) {
        Some(a) => merge(agg, a, b),
        None => {
            parts.insert(t, b);
        }
    }
}

/// Per-bucket aggregates of the raw events in `[since, until)`.
fn raw_part(
    c: &Connection,
    key: (i64, u8),
    range: (i64, i64),
    bucket_ms: i64,
    agg: Agg,
    parts: &mut BTreeMap<i64, Acc>,
) -> rusqlite::Result<()> {
    if range.0 >= range.1 {
        return Ok(());
    }
    // SQLite: with exactly one max(), bare columns come from the row holding the maximum (the
    // first such row in index order, that is the lowest id).
    let (x, ts) = match agg {
        Agg::Avg => ("sum(value)", "0"),
        Agg::Min => ("min(value)", "0"),
        Agg::Max => ("max(value)", "0"),
        Agg::Count => ("0.0", "0"),
        Agg::Last => ("value", "max(ts_ms)"),
    };
    let sql = format!(
        "SELECT (ts_ms / ?5) * ?5 AS t, count(*), {x}, {ts} FROM events
          WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND sensor = ?4
          GROUP BY t ORDER BY t"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![key.0, range.0, range.1, key.1, bucket_ms])?;
    while let Some(r) = rows.next()? {
        let t = r.get(0)?;
        let acc = Acc {
            n: r.get(1)?,
            x: r.get(2)?,
            ts: r.get(3)?,
        };
        add_part(agg, parts, t, acc);
    }
    Ok(())
}

/// Per-bucket aggregates of the summary rows of slots `[first, end)`.
fn slot_part(
    c: &Connection,
    key: (i64, u8),
    slots: (i64, i64),
    bucket_ms: i64,
    agg: Agg,
    parts: &mut BTreeMap<i64, Acc>,
) -> rusqlite::Result<()> {
    if slots.0 >= slots.1 {
        return Ok(());
    }
    let (x, ts) = match agg {
        Agg::Avg => ("sum(total)", "0"),
        Agg::Min => ("min(vmin)", "0"),
        Agg::Max => ("max(vmax)", "0"),
        Agg::Count => ("0.0", "0"),
        Agg::Last => ("last_value", "max(last_ts)"),
    };
    let sql = format!(
        "SELECT (slot * {SLOT_MS} / ?5) * ?5 AS t, sum(n), {x}, {ts} FROM rollup_10s
          WHERE device = ?1 AND sensor = ?2 AND slot >= ?3 AND slot < ?4
          GROUP BY t ORDER BY t"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(params![key.0, key.1, slots.0, slots.1, bucket_ms])?;
    while let Some(r) = rows.next()? {
        let t = r.get(0)?;
        let acc = Acc {
            n: r.get(1)?,
            x: r.get(2)?,
            ts: r.get(3)?,
        };
        add_part(agg, parts, t, acc);
    }
    Ok(())
}

/// One slot's stored summary.
fn slot_row(c: &Connection, key: (i64, u8), slot: i64) -> rusqlite::Result<Option<Slot>> {
    c.prepare_cached(
        "SELECT n, total, vmin, vmax, first_ts, last_ts, last_value FROM rollup_10s
          WHERE device = ?1 AND sensor = ?2 AND slot = ?3",
    )?
    .query_row(params![key.0, key.1, slot], |r| {
        Ok(Slot {
            n: r.get(0)?,
            sum: r.get(1)?,
            min: r.get(2)?,
            max: r.get(3)?,
            first_ts: r.get(4)?,
            last_ts: r.get(5)?,
            last: r.get(6)?,
        })
    })
    .optional()
}

fn slot_acc(agg: Agg, s: &Slot) -> Acc {
    let x = match agg {
        Agg::Avg => s.sum,
        Agg::Min => s.min,
        Agg::Max => s.max,
        Agg::Count => 0.0,
        Agg::Last => s.last,
    };
    Acc {
        n: s.n,
        x,
        ts: s.last_ts,
    }
}

/// Buckets of `bucket_ms` over `[since, until)` of one sensor, from summaries where they are
/// complete and from events elsewhere. Call inside a read transaction (one snapshot).
pub fn series(
    c: &Connection,
    key: (i64, u8),
    (since, until): (i64, i64),
    bucket_ms: i64,
    agg: Agg,
) -> rusqlite::Result<Vec<Point>> {
    let mut parts = BTreeMap::new();
    let from: Option<i64> = if bucket_ms % SLOT_MS == 0 && since >= 0 {
        c.prepare_cached("SELECT slot FROM rollup_from WHERE device = ?1 AND sensor = ?2")?
            .query_row(params![key.0, key.1], |r| r.get(0))
            .optional()?
    } else {
        None
    };
    let Some(from) = from else {
        raw_part(c, key, (since, until), bucket_ms, agg, &mut parts)?;
        return Ok(finish(agg, parts));
    };
    // Events before `from`'s first slot, and anything outside whole slots, come from events.
    let lo = since.max(from.saturating_mul(SLOT_MS)).min(until);
    raw_part(c, key, (since, lo), bucket_ms, agg, &mut parts)?;
    if lo < until {
        // Slots wholly inside [lo, until).
        let inner = ((lo + SLOT_MS - 1) / SLOT_MS, until / SLOT_MS);
        slot_part(c, key, inner, bucket_ms, agg, &mut parts)?;
        // The slots cut by lo or until: their summary serves when all their events lie inside.
        let mut edges = Vec::with_capacity(2);
        if lo % SLOT_MS != 0 {
            edges.push(lo / SLOT_MS);
        }
        if until % SLOT_MS != 0 && edges.last() != Some(&(until / SLOT_MS)) {
            edges.push(until / SLOT_MS);
        }
        for e in edges {
            let range = (lo.max(e * SLOT_MS), until.min((e + 1) * SLOT_MS));
            match slot_row(c, key, e)? {
                // A complete slot without a row has no events.
                None => {}
                Some(s) if s.first_ts >= range.0 && s.last_ts < range.1 => {
                    add_part(
                        agg,
                        &mut parts,
                        e * SLOT_MS / bucket_ms * bucket_ms,
                        slot_acc(agg, &s),
                    );
                }
                Some(_) => raw_part(c, key, range, bucket_ms, agg, &mut parts)?,
            }
        }
    }
    Ok(finish(agg, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

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
                sum: 2.0,
                min: -4.0,
                max: 3.0,
                first_ts: 5,
                last_ts: 7,
                last: 2.0
            }
        );
    }

    #[test]
    fn merging_parts_gives_the_aggregate_of_the_whole() {
        let a = Acc {
            n: 2,
            x: 3.0,
            ts: 10,
        };
        let b = Acc {
            n: 3,
            x: 9.0,
            ts: 20,
        };
        for (agg, want) in [
            (Agg::Avg, (5, 12.0)),
            (Agg::Min, (5, 3.0)),
            (Agg::Max, (5, 9.0)),
            (Agg::Last, (5, 9.0)),
        ] {
            let (mut x, mut y) = (a, b);
            merge(agg, &mut x, b);
            merge(agg, &mut y, a);
            assert_eq!((x.n, x.x), want, "{agg:?}");
            assert_eq!((y.n, y.x), want, "{agg:?} other order");
        }
    }
}

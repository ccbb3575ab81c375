//! Reading one sensor's buckets over a window: summary rows where they are complete, raw events
//! elsewhere, folded per bucket (the parent's "exact merge").
//!
//! Invariants:
//! - The parts cover disjoint time ranges: raw events before the first summarised slot and from W
//!   on, the summary rows of slots wholly inside the rest, and for a slot cut by the window its
//!   summary only when all its events lie inside (raw events otherwise). So a bucket counts each
//!   event of the window once.
//! - Summaries serve only when the bucket width is a multiple of [`SLOT_MS`] and `since >= 0`;
//!   otherwise the series is read from events alone.
//! - Call inside a read transaction: `rollup_from`, the summary rows and the events are one
//!   snapshot.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::{reading, Slot, SLOT_MS};
use crate::store::query::{Agg, Point};
use crate::store::tail::TailView;

/// A bucket being assembled from parts: events, and the value so far (a sum for `avg`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Acc {
    n: i64,
    /// Events whose value is a number (for `avg`).
    m: i64,
    x: f64,
    /// Timestamp of `x` (for `last`).
    ts: i64,
}

/// Folds part `b` into `a`; the parts cover disjoint time ranges.
fn merge(agg: Agg, a: &mut Acc, b: Acc) {
    a.n += b.n;
    a.m += b.m;
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
                Agg::Avg if a.m == 0 => f64::NAN,
                Agg::Avg => a.x / a.m as f64,
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

/// Runs a per-bucket query returning `(t, n, m, x, ts)` rows and folds them into `parts`.
fn add_parts(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
    agg: Agg,
    parts: &mut BTreeMap<i64, Acc>,
) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query(args)?;
    while let Some(r) = rows.next()? {
        let acc = Acc {
            n: r.get(1)?,
            m: r.get(2)?,
            x: reading(r, 3)?,
            ts: r.get(4)?,
        };
        add_part(agg, parts, r.get(0)?, acc);
    }
    Ok(())
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
    let args = params![key.0, range.0, range.1, key.1, bucket_ms];
    add_parts(c, &raw_part_sql(agg), args, agg, parts)
}

/// The query of [`raw_part`] (public for the API bench's query plans): `?1` device key, `?2..?3`
/// time range, `?4` sensor index, `?5` bucket width.
pub fn raw_part_sql(agg: Agg) -> String {
    // SQLite: with exactly one max(), bare columns come from the row holding the maximum (the
    // first such row in index order, that is the lowest id).
    // `total()` skips NULL (NaN readings) and is 0.0 without any number, like a slot's sum.
    let (m, x, ts) = match agg {
        Agg::Avg => ("count(value)", "total(value)", "0"),
        Agg::Min => ("0", "min(value)", "0"),
        Agg::Max => ("0", "max(value)", "0"),
        Agg::Count => ("0", "0.0", "0"),
        Agg::Last => ("0", "value", "max(ts_ms)"),
    };
    format!(
        "SELECT (ts_ms / ?5) * ?5 AS t, count(*), {m}, {x}, {ts} FROM events
          WHERE device = ?1 AND ts_ms >= ?2 AND ts_ms < ?3 AND sensor = ?4
          GROUP BY t ORDER BY t"
    )
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
    let args = params![key.0, key.1, slots.0, slots.1, bucket_ms];
    add_parts(c, &slot_part_sql(agg), args, agg, parts)
}

/// The query of [`slot_part`] (public for the API bench's query plans): `?1` device key, `?2`
/// sensor index, `?3..?4` slot range, `?5` bucket width.
pub fn slot_part_sql(agg: Agg) -> String {
    // A NULL total is a NaN sum (+Inf and -Inf met): it keeps the bucket's sum NaN.
    let (m, x, ts) = match agg {
        Agg::Avg => (
            "sum(n - nans)",
            "CASE WHEN count(total) < count(*) THEN NULL ELSE total(total) END",
            "0",
        ),
        Agg::Min => ("0", "min(vmin)", "0"),
        Agg::Max => ("0", "max(vmax)", "0"),
        Agg::Count => ("0", "0.0", "0"),
        Agg::Last => ("0", "last_value", "max(last_ts)"),
    };
    format!(
        "SELECT (slot * {SLOT_MS} / ?5) * ?5 AS t, sum(n), {m}, {x}, {ts} FROM rollup_10s
          WHERE device = ?1 AND sensor = ?2 AND slot >= ?3 AND slot < ?4
          GROUP BY t ORDER BY t"
    )
}

pub(super) const SLOT_ROW_SQL: &str =
    "SELECT n, total, vmin, vmax, first_ts, last_ts, last_value, nans FROM rollup_10s
  WHERE device = ?1 AND sensor = ?2 AND slot = ?3";

/// One slot's stored summary.
fn slot_row(c: &Connection, key: (i64, u8), slot: i64) -> rusqlite::Result<Option<Slot>> {
    c.prepare_cached(SLOT_ROW_SQL)?
        .query_row(params![key.0, key.1, slot], |r| {
            Ok(Slot {
                n: r.get(0)?,
                nans: r.get(7)?,
                sum: reading(r, 1)?,
                min: reading(r, 2)?,
                max: reading(r, 3)?,
                first_ts: r.get(4)?,
                last_ts: r.get(5)?,
                last: reading(r, 6)?,
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
        m: s.n - s.nans,
        x,
        ts: s.last_ts,
    }
}

/// Buckets of `bucket_ms` over `[since, until)` of one sensor, from summaries where they are
/// complete and from events elsewhere. Call inside a read transaction (one snapshot).
pub fn series(
    c: &Connection,
    tail: &TailView,
    key: (i64, u8),
    (since, until): (i64, i64),
    bucket_ms: i64,
    agg: Agg,
) -> rusqlite::Result<Vec<Point>> {
    let mut parts = BTreeMap::new();
    // The tail's samples are in no summary and in no stored row: added raw, whatever their time.
    let tail_part = |mut parts: BTreeMap<i64, Acc>| {
        for r in tail.device_rows(key.0) {
            if r.sensor != key.1 || r.ts_ms < since || r.ts_ms >= until {
                continue;
            }
            let v = f64::from(r.value);
            let acc = match agg {
                Agg::Avg if v.is_nan() => Acc {
                    n: 1,
                    m: 0,
                    x: 0.0,
                    ts: 0,
                },
                Agg::Avg => Acc {
                    n: 1,
                    m: 1,
                    x: v,
                    ts: 0,
                },
                Agg::Count => Acc {
                    n: 1,
                    m: 0,
                    x: 0.0,
                    ts: 0,
                },
                _ => Acc {
                    n: 1,
                    m: 0,
                    x: v,
                    ts: r.ts_ms,
                },
            };
            add_part(agg, &mut parts, r.ts_ms / bucket_ms * bucket_ms, acc);
        }
        finish(agg, parts)
    };
    let bounds: Option<(i64, i64)> = if bucket_ms % SLOT_MS == 0 && since >= 0 {
        c.prepare_cached(
            "SELECT slot, complete_ts FROM rollup_from WHERE device = ?1 AND sensor = ?2",
        )?
        .query_row(params![key.0, key.1], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    } else {
        None
    };
    let Some((from, w)) = bounds else {
        raw_part(c, key, (since, until), bucket_ms, agg, &mut parts)?;
        return Ok(tail_part(parts));
    };
    // Summaries serve [lo, hi): from their first slot to W. The rest comes from events.
    let lo = since.max(from.saturating_mul(SLOT_MS)).min(until);
    let hi = until.min(w.max(lo));
    raw_part(c, key, (since, lo), bucket_ms, agg, &mut parts)?;
    raw_part(c, key, (hi, until), bucket_ms, agg, &mut parts)?;
    let until = hi;
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
    Ok(tail_part(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_parts_gives_the_aggregate_of_the_whole() {
        let a = Acc {
            n: 2,
            m: 2,
            x: 3.0,
            ts: 10,
        };
        let b = Acc {
            n: 3,
            m: 3,
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

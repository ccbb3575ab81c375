//! The tail: samples that are durable in the sample log ([`super::log`]) and acked, but not yet in
//! the database, which receives them in large batches. Readers see the database and the tail as
//! one store ([`Snapshot`]).
//!
//! Invariants:
//! - **Store order.** Pieces are appended in `id` order (one piece per log commit), ids strictly
//!   increasing across pieces.
//! - **Each sample in exactly one place for a reader.** The writer commits a batch to the
//!   database (which records `applied`: every id at or below it is in the database) and only then
//!   drops those samples from the tail. A reader takes the tail's lock, begins its database read
//!   transaction and reads `applied` inside it, keeps the tail's pieces, and lets go of the lock:
//!   either its snapshot is from before the batch (and the tail still holds the batch's samples,
//!   since dropping them needs the lock) or from after it (the database has them); it uses the
//!   tail's samples above its own `applied` only.
//! - **Cheap for the writer.** A reader holds the lock only to clone the pieces' `Arc`s (and the
//!   small map of heartbeats), never while it filters them or queries the database.
//! - **Heartbeats too.** A device's last heartbeat (when it came, its ring figures) reaches the
//!   database with the next batch as well; until then it is [`Heard`] here, and readers overlay
//!   it on the device's row. The writer forgets it when the batch committed, or when the device
//!   starts a new boot (whose figures start from zero).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use rusqlite::Connection;

use super::StoreError;

/// One acked sample not yet in the database.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailRow {
    /// `events.id`.
    pub id: i64,
    /// `devices.id`.
    pub device: i64,
    /// `boots.boot_no`.
    pub boot_no: i64,
    /// Sequence number.
    pub seq: u32,
    /// Sensor index.
    pub sensor: u8,
    /// UTC milliseconds.
    pub ts_ms: i64,
    /// The reading.
    pub value: f32,
}

/// The samples of one log commit, in id order.
pub type Piece = Arc<PieceData>;

/// A piece's rows and, for readers of one device, where that device's runs of rows are (a frame's
/// samples are stored together, so a piece has a few runs, not one per row).
#[derive(Debug)]
pub struct PieceData {
    rows: Box<[TailRow]>,
    /// `(device, start, end)`: `rows[start..end]` are all of `device`, maximal.
    runs: Box<[(i64, u32, u32)]>,
}

impl PieceData {
    fn new(rows: Vec<TailRow>) -> Self {
        let mut runs: Vec<(i64, u32, u32)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match runs.last_mut() {
                Some((d, _, end)) if *d == r.device => *end = i as u32 + 1,
                _ => runs.push((r.device, i as u32, i as u32 + 1)),
            }
        }
        PieceData {
            rows: rows.into(),
            runs: runs.into(),
        }
    }

    /// Index of the first row with an id above `after`.
    fn first_after(&self, after: i64) -> usize {
        self.rows.partition_point(|r| r.id <= after)
    }
}

/// A log commit's samples as a piece (built before taking the tail's lock).
pub fn piece(rows: Vec<TailRow>) -> Piece {
    Arc::new(PieceData::new(rows))
}

impl std::ops::Deref for PieceData {
    type Target = [TailRow];
    fn deref(&self) -> &[TailRow] {
        &self.rows
    }
}

/// A device's last heartbeat, not yet in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    /// When it came, UTC ms (`devices.last_seen_ms` at least this).
    pub at_ms: i64,
    /// `devices.dropped`.
    pub dropped: u32,
    /// `devices.ring_depth`.
    pub ring_depth: u16,
    /// `devices.read_errors`.
    pub read_errors: u32,
}

/// What the writer keeps between batches.
#[derive(Debug, Default)]
pub struct Tail {
    pieces: VecDeque<Piece>,
    rows: usize,
    heard: HashMap<i64, Heard>,
}

impl Tail {
    /// Appends a log commit's samples (ids above every id held); see [`piece`].
    pub fn push(&mut self, piece: Piece) {
        if piece.is_empty() {
            return;
        }
        debug_assert!(self.max_id().is_none_or(|m| piece[0].id > m), "store order");
        self.rows += piece.len();
        self.pieces.push_back(piece);
    }

    /// Drops every sample with `id <= applied` (the database holds them now). A piece holding
    /// samples on both sides stays whole; readers skip what their snapshot already has.
    pub fn drop_through(&mut self, applied: i64) {
        while self
            .pieces
            .front()
            .is_some_and(|p| p.last().is_some_and(|r| r.id <= applied))
        {
            let p = self.pieces.pop_front().expect("checked");
            self.rows -= p.len();
        }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The highest id held.
    pub fn max_id(&self) -> Option<i64> {
        self.pieces.back().and_then(|p| p.last()).map(|r| r.id)
    }

    /// The pieces, for a reader (cheap: `Arc` clones).
    pub fn pieces(&self) -> Vec<Piece> {
        self.pieces.iter().cloned().collect()
    }

    /// A device's heartbeat came (`device`: `devices.id`).
    pub fn hear(&mut self, device: i64, h: Heard) {
        self.heard.insert(device, h);
    }

    /// Forgets a device's heartbeat (it started a new boot).
    pub fn forget(&mut self, device: i64) {
        self.heard.remove(&device);
    }

    /// Forgets every heartbeat (the database has them now).
    pub fn forget_all(&mut self) {
        self.heard.clear();
    }
}

/// The tail as the writer and the readers share it.
pub type SharedTail = Arc<RwLock<Tail>>;

/// A reader's view of the tail: the samples above what its database snapshot holds, in id order.
#[derive(Debug, Clone, Default)]
pub struct TailView {
    pieces: Vec<Piece>,
    applied: i64,
    heard: HashMap<i64, Heard>,
}

impl TailView {
    /// Where the rows with an id above `after` begin: `(piece, row)`.
    fn start(&self, after: i64) -> (usize, usize) {
        let p = self
            .pieces
            .partition_point(|p| p.last().is_some_and(|l| l.id <= after));
        (
            p,
            self.pieces
                .get(p)
                .map_or(0, |piece| piece.first_after(after)),
        )
    }

    /// Rows with an id above `after` (at least `applied`), in id order; found by binary search.
    fn from(&self, after: i64) -> impl Iterator<Item = &TailRow> + '_ {
        let (p, r) = self.start(after.max(self.applied));
        self.pieces[p..]
            .iter()
            .enumerate()
            .flat_map(move |(i, piece)| piece.rows[if i == 0 { r } else { 0 }..].iter())
    }

    /// Samples above `applied`, in id order.
    pub fn rows(&self) -> impl Iterator<Item = &TailRow> + '_ {
        self.from(self.applied)
    }

    /// Samples with `after < id <= upto`, in id order.
    pub fn between(&self, after: i64, upto: i64) -> impl Iterator<Item = &TailRow> + '_ {
        self.from(after).take_while(move |r| r.id <= upto)
    }

    /// One device's samples above `applied`, in id order, without looking at other devices'
    /// rows (only at each piece's runs).
    pub fn device_rows(&self, device: i64) -> impl Iterator<Item = &TailRow> + '_ {
        let (p, _) = self.start(self.applied);
        let applied = self.applied;
        self.pieces[p..].iter().flat_map(move |piece| {
            piece
                .runs
                .iter()
                .filter(move |(d, _, _)| *d == device)
                .flat_map(move |&(_, a, b)| piece.rows[a as usize..b as usize].iter())
                .filter(move |r| r.id > applied)
        })
    }

    /// The highest id in view.
    pub fn max_id(&self) -> Option<i64> {
        self.pieces
            .last()
            .and_then(|p| p.last())
            .map(|r| r.id)
            .filter(|&m| m > self.applied)
    }

    /// Every id at or below this is in the database snapshot taken with this view.
    pub fn applied(&self) -> i64 {
        self.applied
    }

    /// A device's heartbeat the database snapshot may not have yet.
    pub fn heard(&self, device: i64) -> Option<&Heard> {
        self.heard.get(&device)
    }
}

/// The database's `applied` mark as the open read transaction sees it.
pub fn applied(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce((SELECT value FROM counters WHERE name = 'log_applied'), 0)",
        )?
        .query_row([], |r| r.get(0))?)
}

/// Runs `f` in one read transaction on `conn` with the tail's samples above what that
/// transaction's snapshot holds (see the module header). Without a tail (`None`: tools reading a
/// store no agent writes), the view is empty. `conn` must not be inside a transaction already:
/// its snapshot must be taken under the tail's lock.
pub fn read_with_tail<T, E: From<StoreError>>(
    conn: &Connection,
    tail: Option<&SharedTail>,
    f: impl FnOnce(&Connection, &TailView) -> Result<T, E>,
) -> Result<T, E> {
    debug_assert!(conn.is_autocommit(), "the snapshot is taken here");
    super::read_snapshot(conn, |c| {
        let view = match tail {
            None => TailView::default(),
            Some(t) => {
                let guard = t.read().unwrap_or_else(|p| p.into_inner());
                // Inside the transaction: its first read fixes the snapshot, under the lock.
                let applied = applied(c)?;
                TailView {
                    pieces: guard.pieces(),
                    applied,
                    heard: guard.heard.clone(),
                }
            }
        };
        f(c, &view)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(ids: std::ops::RangeInclusive<i64>) -> Piece {
        super::piece(rows(ids))
    }

    fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<TailRow> {
        ids.map(|id| TailRow {
            id,
            device: 1 + id % 2,
            boot_no: 1,
            seq: id as u32,
            sensor: 0,
            ts_ms: id * 10,
            value: id as f32,
        })
        .collect()
    }

    fn ids<'a>(it: impl Iterator<Item = &'a TailRow>) -> Vec<i64> {
        it.map(|r| r.id).collect()
    }

    #[test]
    fn a_view_shows_only_what_its_snapshot_lacks() {
        let mut t = Tail::default();
        t.push(piece(1..=3));
        t.push(piece(4..=6));
        t.push(piece(7..=7));
        assert_eq!((t.len(), t.max_id()), (7, Some(7)));
        let v = TailView {
            pieces: t.pieces(),
            applied: 4,
            heard: HashMap::new(),
        };
        assert_eq!(ids(v.rows()), [5, 6, 7]);
        assert_eq!(ids(v.between(5, 6)), [6]);
        assert_eq!(ids(v.between(0, 4)), Vec::<i64>::new());
        assert_eq!(ids(v.between(2, 100)), [5, 6, 7]);
        assert_eq!(ids(v.between(6, 100)), [7]);
        assert_eq!(ids(v.between(7, 100)), Vec::<i64>::new());
        assert_eq!(ids(v.device_rows(1)), [6]);
        assert_eq!(ids(v.device_rows(2)), [5, 7]);
        assert_eq!(ids(v.device_rows(3)), Vec::<i64>::new());
        assert_eq!(v.max_id(), Some(7));
        let all_in_db = TailView {
            pieces: t.pieces(),
            applied: 7,
            heard: HashMap::new(),
        };
        assert_eq!(all_in_db.max_id(), None);
    }

    proptest::proptest! {
        #[test]
        fn searches_and_runs_find_what_a_scan_finds(
            sizes in proptest::collection::vec(1usize..12, 0..8),
            devices in proptest::collection::vec(1i64..4, 96),
            applied in 0i64..100,
            after in 0i64..100,
            upto in 0i64..100,
        ) {
            let mut t = Tail::default();
            let mut next = 1i64;
            for n in sizes {
                let rows: Vec<TailRow> = (next..next + n as i64)
                    .map(|id| TailRow { device: devices[id as usize % 96], ..rows(id..=id)[0] })
                    .collect();
                next += n as i64;
                t.push(super::piece(rows));
            }
            let v = TailView { pieces: t.pieces(), applied, heard: HashMap::new() };
            let all: Vec<TailRow> = t.pieces.iter().flat_map(|p| p.iter().copied()).collect();
            let scan = |f: &dyn Fn(&TailRow) -> bool| -> Vec<i64> {
                all.iter().filter(|r| r.id > applied && f(r)).map(|r| r.id).collect()
            };
            proptest::prop_assert_eq!(ids(v.rows()), scan(&|_| true));
            proptest::prop_assert_eq!(ids(v.between(after, upto)), scan(&|r| r.id > after && r.id <= upto));
            for d in 0..5 {
                proptest::prop_assert_eq!(ids(v.device_rows(d)), scan(&|r| r.device == d));
            }
        }
    }

    #[test]
    fn a_heartbeat_is_held_until_forgotten() {
        let mut t = Tail::default();
        let h = Heard {
            at_ms: 5,
            dropped: 1,
            ring_depth: 2,
            read_errors: 3,
        };
        t.hear(1, h);
        t.hear(2, Heard { at_ms: 6, ..h });
        t.forget(2);
        assert_eq!(t.heard.get(&1), Some(&h));
        assert!(!t.heard.contains_key(&2));
        t.forget_all();
        assert!(t.heard.is_empty());
    }

    #[test]
    fn dropping_keeps_pieces_that_are_not_wholly_applied() {
        let mut t = Tail::default();
        t.push(piece(1..=3));
        t.push(piece(4..=6));
        t.drop_through(4);
        assert_eq!(t.len(), 3, "4..=6 stays whole");
        t.drop_through(6);
        assert!(t.is_empty());
        assert_eq!(t.max_id(), None);
    }

    #[test]
    fn a_reader_sees_each_sample_once_across_a_batch() {
        let dir = std::env::temp_dir().join(format!("ferry-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE events (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
        let r = Connection::open(&path).unwrap();
        let tail: SharedTail = Arc::default();
        tail.write().unwrap().push(piece(1..=5));
        let seen = |r: &Connection| -> Vec<i64> {
            read_with_tail::<_, StoreError>(r, Some(&tail), |c, v| {
                let mut ids: Vec<i64> = c
                    .prepare("SELECT id FROM events ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                ids.extend(v.rows().map(|r| r.id));
                Ok(ids)
            })
            .unwrap()
        };
        assert_eq!(seen(&r), [1, 2, 3, 4, 5]);
        // The writer's batch commits (samples and mark together); the tail still holds them.
        w.execute_batch(
            "BEGIN; INSERT INTO events VALUES (1), (2), (3), (4), (5);
             INSERT INTO counters VALUES ('log_applied', 5); COMMIT;",
        )
        .unwrap();
        assert_eq!(seen(&r), [1, 2, 3, 4, 5], "not twice");
        tail.write().unwrap().drop_through(5);
        assert_eq!(seen(&r), [1, 2, 3, 4, 5], "not lost");
        drop((w, r));
        let _ = std::fs::remove_dir_all(dir);
    }
}

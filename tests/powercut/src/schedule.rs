//! Where a run's cuts fall: in turn at a random moment, in a checkpoint's writes to the database,
//! at the checkpoint's sync, at a WAL restart, and on a full disk, each with seeded random
//! details; and a tally of which cuts came at their moment (a trigger that never fires falls back
//! to a cut at the deadline, and a run where a kind never came tests less than it says).

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{Moment, Trigger};

/// The kinds, in the order a schedule takes them.
pub const KINDS: [&str; 7] = [
    "random",
    "checkpoint write",
    "checkpoint sync",
    "WAL restart",
    "full disk",
    "log write",
    "log sync",
];

/// The moments of a run's cuts, for a SQLite store named `db_name`.
#[derive(Debug)]
pub struct Schedule {
    db_name: String,
    rng: SmallRng,
    kinds: Vec<usize>,
    next: usize,
    reached: [usize; KINDS.len()],
    missed: [usize; KINDS.len()],
}

impl Schedule {
    /// A schedule of every kind for the store file `db_name` (e.g. `ferry.db`), seeded.
    pub fn new(db_name: &str, seed: u64) -> Schedule {
        Schedule::of(db_name, seed, &KINDS)
    }

    /// A schedule of the named kinds only (names from [`KINDS`]), in that order.
    pub fn of(db_name: &str, seed: u64, kinds: &[&str]) -> Schedule {
        let kinds = kinds
            .iter()
            .map(|k| {
                KINDS
                    .iter()
                    .position(|n| n == k)
                    .unwrap_or_else(|| panic!("no cut kind {k:?}; the kinds are {KINDS:?}"))
            })
            .collect();
        Schedule {
            db_name: db_name.to_owned(),
            rng: SmallRng::seed_from_u64(seed),
            kinds,
            next: 0,
            reached: [0; KINDS.len()],
            missed: [0; KINDS.len()],
        }
    }

    /// The next cut's moment, and how long to let the program run first (a trigger armed the
    /// instant after a restart would only ever catch the recovery).
    pub fn next_cut(&mut self) -> (usize, Duration, Moment) {
        let kind = self.kinds[self.next % self.kinds.len()];
        self.next += 1;
        let r = &mut self.rng;
        let db = self.db_name.as_str();
        let moment = match kind {
            0 => Moment::After(Duration::from_millis(r.gen_range(50..500))),
            1 => Moment::At(Trigger::checkpoint_write(db, r.gen_range(1..20))),
            2 => Moment::At(Trigger::checkpoint_sync(db, r.gen_range(1..4))),
            3 => Moment::At(Trigger::wal_restart(db, r.gen_range(1..4))),
            5 => Moment::At(Trigger::log_write(r.gen_range(1..40))),
            6 => Moment::At(Trigger::log_sync(r.gen_range(1..40))),
            _ => Moment::DiskFull {
                headroom: r.gen_range(16..512) * 1024,
                then: Duration::from_millis(r.gen_range(0..300)),
            },
        };
        let settle = if kind == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(r.gen_range(50..300))
        };
        (kind, settle, moment)
    }

    /// Records whether the cut of `kind` came at its moment.
    pub fn record(&mut self, kind: usize, reached: bool) {
        if reached {
            self.reached[kind] += 1;
        } else {
            self.missed[kind] += 1;
        }
    }

    /// Per kind: (name, cuts at the moment, cuts at the deadline instead).
    pub fn tally(&self) -> Vec<(&'static str, usize, usize)> {
        (0..KINDS.len())
            .map(|k| (KINDS[k], self.reached[k], self.missed[k]))
            .collect()
    }

    /// Panics unless every kind the run took came at its moment at least once.
    pub fn assert_each_reached(&self) {
        for &k in self.kinds.iter().take(self.next) {
            let name = KINDS[k];
            assert!(
                self.reached[k] > 0,
                "no {name} cut came at its moment: {:?}",
                self.tally()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_every_kind_in_turn() {
        let mut s = Schedule::new("ferry.db", 1);
        let kinds: Vec<usize> = (0..9).map(|_| s.next_cut().0).collect();
        assert_eq!(kinds, [0, 1, 2, 3, 4, 5, 6, 0, 1]);
    }

    #[test]
    fn takes_only_the_kinds_asked_for() {
        let mut s = Schedule::of("ferry.db", 1, &["WAL restart", "random"]);
        let kinds: Vec<usize> = (0..3).map(|_| s.next_cut().0).collect();
        assert_eq!(kinds, [3, 0, 3]);
    }

    #[test]
    fn a_kind_that_never_came_fails_the_run() {
        let mut s = Schedule::new("ferry.db", 1);
        for _ in 0..2 {
            let (k, _, _) = s.next_cut();
            s.record(k, true);
        }
        s.assert_each_reached();
        let (k, _, _) = s.next_cut();
        s.record(k, false);
        assert!(std::panic::catch_unwind(|| s.assert_each_reached()).is_err());
    }
}

//! A rollout's policy, sans-IO: how many of its jobs may run at once, and when it stops.
//!
//! Invariants: at most `concurrency` jobs started at once; once more than `max_failures` jobs
//! failed no job starts any more (those running finish); a cancelled rollout starts nothing.

use super::transfer::Outcome;

/// Devices updated at once when the request does not say.
pub const DEFAULT_CONCURRENCY: u32 = 4;

/// One rollout.
#[derive(Debug, Clone)]
pub struct Rollout {
    id: i64,
    concurrency: u32,
    max_failures: u32,
    failures: u32,
    cancelled: bool,
}

impl Rollout {
    /// A running rollout.
    pub fn new(id: i64, concurrency: u32, max_failures: u32) -> Self {
        Rollout {
            id,
            concurrency: concurrency.max(1),
            max_failures,
            failures: 0,
            cancelled: false,
        }
    }

    /// Its id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Failures tolerated.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// Failures counted before a restart.
    pub fn restore_failures(&mut self, n: u32) {
        self.failures = n;
    }

    /// Too many failures: no job starts any more.
    pub fn is_stopped(&self) -> bool {
        self.cancelled || self.failures > self.max_failures
    }

    /// Jobs that may start now, with `active` started.
    pub fn room(&self, active: usize) -> usize {
        if self.is_stopped() {
            return 0;
        }
        (self.concurrency as usize).saturating_sub(active)
    }

    /// A job ended; true when this made the rollout stop.
    pub fn ended(&mut self, o: Outcome) -> bool {
        let before = self.is_stopped();
        if matches!(o, Outcome::Failed(_)) {
            self.failures += 1;
        }
        !before && self.is_stopped()
    }

    /// Cancelled by an operator.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// State once every job ended.
    pub fn final_state(&self) -> &'static str {
        if self.cancelled {
            "cancelled"
        } else if self.failures > self.max_failures {
            "stopped"
        } else {
            "done"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::transfer::Failure;
    use ferry_wire::UpdateError;

    #[test]
    fn concurrency_and_the_failure_limit() {
        let mut r = Rollout::new(1, 3, 1);
        assert_eq!(r.room(0), 3);
        assert_eq!(r.room(2), 1);
        assert_eq!(r.room(5), 0);
        let fail = Outcome::Failed(Failure::Device(UpdateError::BadHash));
        assert!(!r.ended(Outcome::Done));
        assert!(!r.ended(fail), "one failure is tolerated");
        assert_eq!(r.room(0), 3);
        assert!(r.ended(fail), "the second stops it");
        assert_eq!(r.room(0), 0);
        assert_eq!(r.final_state(), "stopped");
        let mut c = Rollout::new(2, 1, 0);
        c.cancel();
        assert_eq!((c.room(0), c.final_state()), (0, "cancelled"));
    }
}

//! When the writer commits: the group-commit decision, as a pure function.
//!
//! Invariants:
//! - A batch closes when the queue runs dry, when it holds `flush_samples` samples, or
//!   `flush_interval` after its first operation, whichever comes first. Light load is committed at
//!   once (waiting would only add latency); under load the queue refills while a commit runs, so
//!   batches grow by themselves up to the limits.
//! - The decision reads no clock and no channel: the loop passes the open batch's size and age, and
//!   learns whether the queue ran dry by trying to take the next operation.

use std::time::Duration;

/// The open transaction, as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Open {
    /// Samples stored in it so far.
    pub samples: usize,
    /// Time since its first operation.
    pub age: Duration,
}

/// What the loop does after applying an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Take the next queued operation into the batch; if the queue is empty, commit.
    TakeQueued,
    /// Commit now (also the answer without an open batch: the commit then only answers replies).
    Commit,
}

/// Decides whether the open batch (`None`: no transaction is open) takes more operations.
pub(super) fn next(open: Option<Open>, flush_samples: usize, flush_interval: Duration) -> Next {
    match open {
        Some(b) if b.samples < flush_samples && b.age < flush_interval => Next::TakeQueued,
        _ => Next::Commit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: usize = 1000;
    const INTERVAL: Duration = Duration::from_millis(20);

    fn open(samples: usize, age_ms: u64) -> Option<Open> {
        Some(Open {
            samples,
            age: Duration::from_millis(age_ms),
        })
    }

    #[test]
    fn a_small_young_batch_takes_what_is_queued() {
        assert_eq!(next(open(0, 0), SAMPLES, INTERVAL), Next::TakeQueued);
        assert_eq!(next(open(999, 19), SAMPLES, INTERVAL), Next::TakeQueued);
    }

    #[test]
    fn a_batch_commits_at_flush_samples_or_flush_interval_whichever_comes_first() {
        assert_eq!(next(open(1000, 0), SAMPLES, INTERVAL), Next::Commit);
        assert_eq!(next(open(5000, 0), SAMPLES, INTERVAL), Next::Commit);
        assert_eq!(next(open(0, 20), SAMPLES, INTERVAL), Next::Commit);
        assert_eq!(next(open(10, 500), SAMPLES, INTERVAL), Next::Commit);
    }

    #[test]
    fn without_an_open_transaction_there_is_nothing_to_grow() {
        assert_eq!(next(None, SAMPLES, INTERVAL), Next::Commit);
    }

    #[test]
    fn flush_samples_of_one_commits_every_sample_bearing_operation() {
        assert_eq!(next(open(0, 0), 1, INTERVAL), Next::TakeQueued);
        assert_eq!(next(open(1, 0), 1, INTERVAL), Next::Commit);
    }
}

//! When the writer commits: the group-commit decision, as a pure function.
//!
//! Invariants:
//! - A batch closes when the queue runs dry, when it holds `flush_samples` samples, or
//!   `flush_interval` after its first operation, whichever comes first. Light load is committed at
//!   once (waiting would only add latency); under load the queue refills while a commit runs, so
//!   batches grow by themselves up to the limits.
//! - **Ack budget** (`store.ack_budget`, zero by default). With a budget B, a batch holding samples
//!   does not close when the queue runs dry: it [`linger`]s for more until it is [`hold`]`(B)` =
//!   3/4 B old (the last quarter is for the log's sync and the ack's way back), and under load it
//!   closes at `max(flush_interval, 3/4 B)`. A batch someone waits on other than a device's ack
//!   (a `Sync`, a Hello's Welcome) closes as without a budget. Fewer, larger commits: on an SD
//!   card each synced write costs at least one 4 KiB block, whatever it holds.
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
    /// Something other than a device's ack waits for its commit (a `Sync` reply, a Welcome).
    pub prompt: bool,
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
pub(super) fn next(
    open: Option<Open>,
    flush_samples: usize,
    flush_interval: Duration,
    ack_budget: Duration,
) -> Next {
    let interval = match open {
        Some(b) if !b.prompt => flush_interval.max(hold(ack_budget)),
        _ => flush_interval,
    };
    match open {
        Some(b) if b.samples < flush_samples && b.age < interval => Next::TakeQueued,
        _ => Next::Commit,
    }
}

/// How old a batch may grow under an ack budget before it commits.
pub(super) fn hold(ack_budget: Duration) -> Duration {
    ack_budget * 3 / 4
}

/// The queue ran dry: how long to wait for more operations before committing the open batch
/// (`None`: commit now).
pub(super) fn linger(
    open: Option<Open>,
    flush_samples: usize,
    ack_budget: Duration,
) -> Option<Duration> {
    let b = open?;
    if b.prompt || b.samples == 0 || b.samples >= flush_samples {
        return None;
    }
    hold(ack_budget).checked_sub(b.age).filter(|d| !d.is_zero())
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
            prompt: false,
        })
    }

    const NONE: Duration = Duration::ZERO;
    const BUDGET: Duration = Duration::from_millis(200);

    #[test]
    fn a_small_young_batch_takes_what_is_queued() {
        assert_eq!(next(open(0, 0), SAMPLES, INTERVAL, NONE), Next::TakeQueued);
        assert_eq!(
            next(open(999, 19), SAMPLES, INTERVAL, NONE),
            Next::TakeQueued
        );
    }

    #[test]
    fn a_batch_commits_at_flush_samples_or_flush_interval_whichever_comes_first() {
        assert_eq!(next(open(1000, 0), SAMPLES, INTERVAL, NONE), Next::Commit);
        assert_eq!(next(open(5000, 0), SAMPLES, INTERVAL, NONE), Next::Commit);
        assert_eq!(next(open(0, 20), SAMPLES, INTERVAL, NONE), Next::Commit);
        assert_eq!(next(open(10, 500), SAMPLES, INTERVAL, NONE), Next::Commit);
    }

    #[test]
    fn without_an_open_transaction_there_is_nothing_to_grow() {
        assert_eq!(next(None, SAMPLES, INTERVAL, NONE), Next::Commit);
    }

    #[test]
    fn flush_samples_of_one_commits_every_sample_bearing_operation() {
        assert_eq!(next(open(0, 0), 1, INTERVAL, NONE), Next::TakeQueued);
        assert_eq!(next(open(1, 0), 1, INTERVAL, NONE), Next::Commit);
    }

    #[test]
    fn under_an_ack_budget_a_batch_lingers_until_three_quarters_of_it() {
        // The queue ran dry 10 ms into a batch of 5 samples: wait up to 150 ms in all.
        assert_eq!(
            linger(open(5, 10), SAMPLES, BUDGET),
            Some(Duration::from_millis(140))
        );
        assert_eq!(linger(open(5, 150), SAMPLES, BUDGET), None);
        assert_eq!(
            linger(open(5, 10), SAMPLES, NONE),
            None,
            "no budget: commit"
        );
        // Under load it keeps taking operations until then, past flush_interval.
        assert_eq!(
            next(open(5, 100), SAMPLES, INTERVAL, BUDGET),
            Next::TakeQueued
        );
        assert_eq!(next(open(5, 150), SAMPLES, INTERVAL, BUDGET), Next::Commit);
        assert_eq!(
            next(open(1000, 10), SAMPLES, INTERVAL, BUDGET),
            Next::Commit
        );
        assert_eq!(
            linger(open(1000, 10), SAMPLES, BUDGET),
            None,
            "full: commit"
        );
    }

    #[test]
    fn a_batch_someone_waits_on_or_without_samples_does_not_linger() {
        let waited = Some(Open {
            prompt: true,
            ..open(5, 10).unwrap()
        });
        assert_eq!(linger(waited, SAMPLES, BUDGET), None);
        assert_eq!(
            next(waited, SAMPLES, Duration::from_millis(5), BUDGET),
            Next::Commit
        );
        assert_eq!(linger(open(0, 10), SAMPLES, BUDGET), None);
        assert_eq!(linger(None, SAMPLES, BUDGET), None);
    }
}

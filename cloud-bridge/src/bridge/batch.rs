//! When to commit: the accumulation policy, without I/O.
//!
//! Messages collect until the batch holds `max_events` events or `max_messages` messages, or
//! `max_wait` has passed since its first message arrived. `max_messages` stays below the
//! broker's in-flight window (our MQTT receive maximum): the broker sends no more unacked
//! messages than that, so a batch that waited for more would only ever end by its timer.
use std::time::{Duration, Instant};

/// Limits of one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Commit once this many events are in hand.
    pub max_events: usize,
    /// Commit once this many messages are in hand.
    pub max_messages: usize,
    /// Commit this long after the first message of a batch arrived, however full it is.
    pub max_wait: Duration,
}

/// Messages waiting for their commit, in arrival order.
#[derive(Debug)]
pub struct Accumulator<T> {
    policy: BatchPolicy,
    items: Vec<T>,
    events: usize,
    first_at: Option<Instant>,
}

impl<T> Accumulator<T> {
    /// An empty batch under `policy`.
    pub fn new(policy: BatchPolicy) -> Self {
        Accumulator {
            policy,
            items: Vec::new(),
            events: 0,
            first_at: None,
        }
    }

    /// Adds a message carrying `events` events (0 for a dead letter), received at `now`.
    pub fn push(&mut self, item: T, events: usize, now: Instant) {
        self.first_at.get_or_insert(now);
        self.items.push(item);
        self.events += events;
    }

    /// Whether the batch must be committed before taking more.
    pub fn is_full(&self) -> bool {
        self.events >= self.policy.max_events || self.items.len() >= self.policy.max_messages
    }

    /// When the batch must be committed at the latest; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.policy.max_wait)
    }

    /// Whether the batch is due at `now` (full, or its deadline passed).
    pub fn is_due(&self, now: Instant) -> bool {
        !self.items.is_empty() && (self.is_full() || self.deadline().is_some_and(|d| now >= d))
    }

    /// No message in hand.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Events in hand.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Messages in hand.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Empties the batch, returning its messages in arrival order.
    pub fn take(&mut self) -> Vec<T> {
        self.events = 0;
        self.first_at = None;
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BatchPolicy {
        BatchPolicy {
            max_events: 100,
            max_messages: 3,
            max_wait: Duration::from_millis(50),
        }
    }

    #[test]
    fn full_by_events_or_by_messages() {
        let t0 = Instant::now();
        let mut a = Accumulator::new(policy());
        assert!(!a.is_due(t0) && a.deadline().is_none());
        a.push("a", 60, t0);
        assert!(!a.is_full());
        a.push("b", 40, t0);
        assert!(a.is_full() && a.is_due(t0));
        assert_eq!(a.take(), ["a", "b"]);
        assert!(a.is_empty() && a.events() == 0 && a.deadline().is_none());
        for m in ["x", "y", "z"] {
            a.push(m, 0, t0); // dead letters count as messages only
        }
        assert!(a.is_full());
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn deadline_runs_from_the_first_message() {
        let t0 = Instant::now();
        let mut a = Accumulator::new(policy());
        a.push(1, 1, t0);
        a.push(2, 1, t0 + Duration::from_millis(40));
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(50)));
        assert!(!a.is_due(t0 + Duration::from_millis(49)));
        assert!(a.is_due(t0 + Duration::from_millis(50)));
        a.take();
        a.push(3, 1, t0 + Duration::from_millis(60));
        assert_eq!(a.deadline(), Some(t0 + Duration::from_millis(110)));
    }
}

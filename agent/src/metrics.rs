//! Process-wide counters and gauges (lock-free atomics) and two latency histograms
//! (`prometheus-client`'s), exposed by the API as `/metrics` (`api/metrics.rs`) and read by
//! `ferry demo`. Every dropped or refused item increments a counter here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ferry_wire::RejectReason;
pub use prometheus_client::metrics::histogram::Histogram;

/// Counters since the agent started.
#[derive(Debug)]
pub struct Metrics {
    /// Frames decoded successfully.
    pub frames_ok: AtomicU64,
    /// Rejected frames by reason: too_long, bad_cobs, too_short, bad_crc, unknown_version, malformed.
    pub frames_rejected: [AtomicU64; 6],
    /// Valid frames that a gateway should never receive (gateway→device messages echoed back).
    pub frames_unexpected: AtomicU64,
    /// Samples received in Samples messages (before dedup).
    pub samples_received: AtomicU64,
    /// Samples committed to the store.
    pub samples_committed: AtomicU64,
    /// Retransmitted samples ignored because they were already accepted.
    pub samples_duplicate: AtomicU64,
    /// Samples ignored because a frame before them was lost (the device retransmits them).
    pub samples_out_of_order: AtomicU64,
    /// Samples a device dropped from its full ring (learned from `oldest`).
    pub samples_dropped_by_device: AtomicU64,
    /// Samples not stored because their time is out of range (PROTOCOL.md section 5); their seqs
    /// were consumed and acked, their frames quarantined.
    pub samples_out_of_range: AtomicU64,
    /// Samples not accepted because the store is full (backpressure) or the disk is full.
    pub samples_refused: AtomicU64,
    /// Unforwarded events deleted to make room (`when_full = "drop_oldest"`).
    pub events_dropped_oldest: AtomicU64,
    /// Forwarded events deleted by retention.
    pub events_pruned_forwarded: AtomicU64,
    /// Rows written to quarantine.
    pub quarantined: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Transactions that failed (and were rolled back; nothing of them was acked).
    pub commit_failures: AtomicU64,
    /// Acks sent to devices.
    pub acks_sent: AtomicU64,
    /// Hellos answered.
    pub hellos: AtomicU64,
    /// Device links open now.
    pub links_open: AtomicU64,
    /// Device links opened since start (reopened ports count again).
    pub links_total: AtomicU64,
    /// Database bytes in use (pages minus free pages).
    pub db_used_bytes: AtomicU64,
    /// True while the disk refuses writes (ENOSPC / SQLITE_FULL).
    pub disk_full: AtomicBool,
    /// True while the store refuses samples because of `max_db_size` with `backpressure`.
    pub backpressure: AtomicBool,
    /// Time from the first statement of a transaction's flush to `COMMIT` returning.
    pub commit_time: Histogram,
    /// Time from reading a Samples frame off its link to writing the ack that covers it (store
    /// queue, group commit and fsync, ack hand-back): the agent's share of a device's ack latency.
    pub ack_delay: Histogram,
}

/// Upper bounds (seconds) of the latency histograms' buckets (`+Inf` comes on top).
pub const BUCKETS_S: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A latency histogram over [`BUCKETS_S`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS_S)
}

/// Cumulative counts of `h` by bucket bound (`le`), `+Inf` last, as `/metrics` shows them: for
/// tests, which have no other way into a `prometheus-client` histogram.
#[cfg(test)]
pub fn cumulative_counts(h: &Histogram) -> Vec<(String, u64)> {
    let mut r = prometheus_client::registry::Registry::default();
    r.register("h", "h", h.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).expect("to a String");
    text.lines()
        .filter_map(|l| l.strip_prefix("h_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(le, n)| (le.to_owned(), n.parse().expect("a count")))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            frames_ok: AtomicU64::default(),
            frames_rejected: Default::default(),
            frames_unexpected: AtomicU64::default(),
            samples_received: AtomicU64::default(),
            samples_committed: AtomicU64::default(),
            samples_duplicate: AtomicU64::default(),
            samples_out_of_order: AtomicU64::default(),
            samples_dropped_by_device: AtomicU64::default(),
            samples_out_of_range: AtomicU64::default(),
            samples_refused: AtomicU64::default(),
            events_dropped_oldest: AtomicU64::default(),
            events_pruned_forwarded: AtomicU64::default(),
            quarantined: AtomicU64::default(),
            commits: AtomicU64::default(),
            commit_failures: AtomicU64::default(),
            acks_sent: AtomicU64::default(),
            hellos: AtomicU64::default(),
            links_open: AtomicU64::default(),
            links_total: AtomicU64::default(),
            db_used_bytes: AtomicU64::default(),
            disk_full: AtomicBool::default(),
            backpressure: AtomicBool::default(),
            commit_time: latency_histogram(),
            ack_delay: latency_histogram(),
        }
    }
}

/// Index into [`Metrics::frames_rejected`].
pub fn reason_index(r: RejectReason) -> usize {
    match r {
        RejectReason::TooLong => 0,
        RejectReason::BadCobs => 1,
        RejectReason::TooShort => 2,
        RejectReason::BadCrc => 3,
        RejectReason::UnknownVersion(_) => 4,
        _ => 5,
    }
}

/// Labels of [`Metrics::frames_rejected`], in index order.
pub const REASONS: [&str; 6] = [
    "too_long",
    "bad_cobs",
    "too_short",
    "bad_crc",
    "unknown_version",
    "malformed",
];

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// Total rejected frames.
    pub fn rejected_total(&self) -> u64 {
        self.frames_rejected.iter().map(Self::get).sum()
    }
}

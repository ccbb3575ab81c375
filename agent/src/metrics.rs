//! Process-wide counters and gauges (lock-free atomics), exposed by the API as `/metrics` and read by
//! `ferry demo`. Every dropped or refused item increments a counter here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use ferry_wire::RejectReason;

/// Counters since the agent started.
#[derive(Debug, Default)]
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

/// Upper bounds (seconds) of [`Histogram`] buckets; the last bucket is unbounded.
pub const BUCKETS_S: [f64; 12] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// A fixed-bucket latency histogram (Prometheus style, non-cumulative counts inside).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_S.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Counts per bucket (non-cumulative), the last one for observations above every bound.
    pub fn counts(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }

    /// Sum of all observations in seconds.
    pub fn sum_s(&self) -> f64 {
        self.sum_us.load(Relaxed) as f64 / 1e6
    }

    /// The bucket bound at or below which `q` (0..1) of the observations fall: an upper estimate.
    pub fn quantile_bound_s(&self, q: f64) -> Option<f64> {
        let c = self.counts();
        let total: u64 = c.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, n) in c.iter().enumerate() {
            acc += n;
            if acc >= want {
                return Some(BUCKETS_S.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
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

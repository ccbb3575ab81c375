//! Adaptive retransmission timeout from measured ack round trips (after RFC 6298).
//!
//! One measurement at a time: the last seq of a frame of new samples and its send time; it completes
//! when an ack covers that seq. A rewind cancels it (Karn's rule: a retransmitted sample's ack is
//! ambiguous). `rto = srtt + max(10 ms, 4 * rttvar)`, clamped to `[min, max]`; each timeout doubles
//! it (up to `max`) until a new measurement completes. This keeps a loaded gateway, whose acks come
//! late but do come, from triggering retransmissions that would only add duplicate load.

/// Round-trip estimator and current timeout.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimator {
    pub(crate) rto_ms: u32,
    pub(crate) srtt_ms: Option<u32>,
    rttvar_ms: u32,
    min_ms: u32,
    max_ms: u32,
    timed: Option<(u32, u64)>,
}

impl RttEstimator {
    pub(crate) fn new(initial_ms: u32, min_ms: u32, max_ms: u32) -> Self {
        let max_ms = max_ms.max(min_ms).max(1);
        RttEstimator {
            rto_ms: initial_ms.clamp(1, max_ms),
            srtt_ms: None,
            rttvar_ms: 0,
            min_ms,
            max_ms,
            timed: None,
        }
    }

    /// Frame of new samples ending before `end_seq` sent at `now_ms`.
    pub(crate) fn on_send(&mut self, end_seq: u32, now_ms: u64) {
        if self.timed.is_none() {
            self.timed = Some((end_seq, now_ms));
        }
    }

    /// An ack released everything below `next_seq`.
    pub(crate) fn on_ack(&mut self, next_seq: u32, now_ms: u64) {
        let Some((end, sent)) = self.timed else {
            return;
        };
        if next_seq < end {
            return;
        }
        self.timed = None;
        let r = now_ms.saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
        match self.srtt_ms {
            None => {
                self.srtt_ms = Some(r);
                self.rttvar_ms = r / 2;
            }
            Some(srtt) => {
                self.rttvar_ms = (3 * self.rttvar_ms + srtt.abs_diff(r)) / 4;
                self.srtt_ms = Some((7 * srtt + r) / 8);
            }
        }
        let srtt = self.srtt_ms.unwrap_or(r);
        let rto = srtt.saturating_add((4 * self.rttvar_ms).max(10));
        self.rto_ms = rto.clamp(self.min_ms, self.max_ms);
    }

    /// Samples are being sent again: the running measurement would be ambiguous.
    /// How long an ack may take, with margin: `2 srtt + max(10 ms, 4 rttvar)` (a frame sent now
    /// may queue behind frames in flight, so one round trip is not enough); `None` before the
    /// first measurement.
    pub(crate) fn expected_ack_ms(&self) -> Option<u32> {
        self.srtt_ms.map(|s| {
            s.saturating_mul(2)
                .saturating_add((4 * self.rttvar_ms).max(10))
        })
    }

    pub(crate) fn on_rewind(&mut self) {
        self.timed = None;
    }

    /// The timeout expired: back off.
    pub(crate) fn on_timeout(&mut self) {
        self.rto_ms = self.rto_ms.saturating_mul(2).min(self.max_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_backs_off_and_obeys_karn() {
        let mut e = RttEstimator::new(1000, 200, 10_000);
        e.on_send(10, 0);
        e.on_send(20, 5); // a measurement is running: ignored
        e.on_ack(5, 100); // does not cover seq 10 yet
        assert_eq!(e.srtt_ms, None);
        e.on_ack(10, 400);
        assert_eq!((e.srtt_ms, e.rto_ms), (Some(400), 400 + 800));
        for t in 0..20u64 {
            e.on_send(100 + t as u32, t * 1000);
            e.on_ack(100 + t as u32, t * 1000 + 400);
        }
        assert_eq!(e.srtt_ms, Some(400));
        assert!(e.rto_ms < 500, "variance decays: {}", e.rto_ms);
        e.on_timeout();
        e.on_timeout();
        assert!(e.rto_ms >= 1600);
        for _ in 0..10 {
            e.on_timeout();
        }
        assert_eq!(e.rto_ms, 10_000);
        e.on_send(500, 0);
        e.on_rewind();
        e.on_ack(500, 50);
        assert_eq!(e.srtt_ms, Some(400), "a retransmitted sample is not timed");
        let mut fast = RttEstimator::new(1000, 200, 10_000);
        fast.on_send(1, 0);
        fast.on_ack(1, 2);
        assert_eq!(fast.rto_ms, 200, "clamped to the minimum");
    }
}

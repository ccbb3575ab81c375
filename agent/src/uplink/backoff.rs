//! Capped exponential backoff with jitter for reconnects (sans-IO apart from the random source).
use std::time::Duration;

/// Delay sequence: `min`, doubling up to `max`, each drawn uniformly from `[d/2, d]` so that many
/// gateways cut off together do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    /// A backoff between `min` and `max`; `seed` varies the jitter.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            current: min,
            rng: seed | 1,
        }
    }

    /// After a successful connect.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift64: jitter needs no cryptographic quality
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + 0.5 * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let caps = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, cap) in d.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(*d <= cap && *d >= cap / 2, "{d:?} vs {cap:?}");
        }
        assert_ne!(d[6], d[7], "jittered");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

//! Fixed-capacity ring of unacknowledged samples, indexed by sequence number.
//!
//! Holds exactly the samples `oldest()..next_seq()`, in order. Pushing onto a full ring evicts the
//! oldest sample and reports it, so the caller can count the drop.

use ferry_wire::Sample;

/// Ring of samples awaiting acknowledgement; `N` is the capacity.
pub struct SampleRing<const N: usize> {
    buf: [Sample; N],
    head: usize,
    len: usize,
    oldest: u32,
}

impl<const N: usize> SampleRing<N> {
    /// An empty ring whose first sample will get sequence number `first_seq`.
    pub const fn new(first_seq: u32) -> Self {
        const EMPTY: Sample = Sample {
            ticks: 0,
            sensor: 0,
            value: 0.0,
        };
        SampleRing {
            buf: [EMPTY; N],
            head: 0,
            len: 0,
            oldest: first_seq,
        }
    }

    /// Sequence number of the oldest held sample (equals `next_seq()` when empty).
    pub fn oldest(&self) -> u32 {
        self.oldest
    }

    /// Sequence number the next pushed sample gets.
    pub fn next_seq(&self) -> u32 {
        self.oldest.wrapping_add(self.len as u32)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a sample; returns its sequence number and whether the oldest sample was evicted.
    pub fn push(&mut self, s: Sample) -> (u32, bool) {
        let evicted = self.len == N;
        if evicted {
            self.head = (self.head + 1) % N;
            self.len -= 1;
            self.oldest = self.oldest.wrapping_add(1);
        }
        let seq = self.next_seq();
        self.buf[(self.head + self.len) % N] = s;
        self.len += 1;
        (seq, evicted)
    }

    /// Releases every sample with `seq < next`; returns how many were released.
    pub fn release_below(&mut self, next: u32) -> usize {
        let n = (next.saturating_sub(self.oldest) as usize).min(self.len);
        self.head = (self.head + n) % N;
        self.len -= n;
        self.oldest += n as u32;
        n
    }

    /// The sample with sequence number `seq`, if held.
    pub fn get(&self, seq: u32) -> Option<&Sample> {
        let i = seq.checked_sub(self.oldest)? as usize;
        (i < self.len).then(|| &self.buf[(self.head + i) % N])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: f32) -> Sample {
        Sample {
            ticks: 0,
            sensor: 0,
            value: v,
        }
    }

    #[test]
    fn push_release_and_evict() {
        let mut r: SampleRing<3> = SampleRing::new(10);
        assert_eq!(r.push(s(0.0)), (10, false));
        assert_eq!(r.push(s(1.0)), (11, false));
        assert_eq!(r.push(s(2.0)), (12, false));
        assert_eq!(r.push(s(3.0)), (13, true));
        assert_eq!(r.oldest(), 11);
        assert_eq!(r.get(10), None);
        assert_eq!(r.get(13).unwrap().value, 3.0);
        assert_eq!(r.release_below(12), 1);
        assert_eq!(r.release_below(5), 0);
        assert_eq!((r.oldest(), r.len()), (12, 2));
        assert_eq!(r.release_below(100), 2);
        assert!(r.is_empty());
        assert_eq!(r.next_seq(), 14);
    }
}

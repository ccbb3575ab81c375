//! Gateway-side acceptance of `Samples` (PROTOCOL.md section 4), as a pure state machine.
//!
//! Invariant: the accepted samples of one `(device, boot)` form the gap-free sequence
//! `0..next()`, except for ranges the device itself reported as dropped (its `oldest` moved past
//! them), which are counted in [`Accepted::dropped_by_device`]. Every sample is accepted at most once.

use core::ops::Range;

/// Tracks the next expected sequence number of one device boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptor {
    next: u32,
}

/// What to do with one `Samples` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Sequence numbers the device dropped before sending them (ring overflow), newly learned.
    pub dropped_by_device: u32,
    /// Samples at the front that were accepted before (retransmissions).
    pub duplicates: usize,
    /// Indexes into the message's samples to store, in order (empty if nothing is new).
    pub keep: Range<usize>,
    /// The message starts past the next expected sample (a frame was lost): it was ignored, and the
    /// device's go-back-N retransmission will fill the hole.
    pub hole: bool,
}

impl Acceptor {
    /// Expects `next` (0 for a boot not seen before, or one past the highest stored seq).
    pub const fn new(next: u32) -> Self {
        Acceptor { next }
    }

    /// One past the highest accepted sequence number.
    pub const fn next(&self) -> u32 {
        self.next
    }

    /// Applies the rules to a message with fields `oldest`, `first_seq` and `len` samples.
    pub fn accept(&mut self, oldest: u32, first_seq: u32, len: usize) -> Accepted {
        let mut out = Accepted {
            dropped_by_device: 0,
            duplicates: 0,
            keep: 0..0,
            hole: false,
        };
        if oldest > self.next {
            out.dropped_by_device = oldest - self.next;
            self.next = oldest;
        }
        let end = first_seq.saturating_add(len as u32);
        if first_seq > self.next {
            out.hole = true;
        } else if end <= self.next {
            out.duplicates = len;
        } else {
            let skip = (self.next - first_seq) as usize;
            out.duplicates = skip;
            out.keep = skip..len;
            self.next = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicate_hole_and_gap() {
        let mut a = Acceptor::new(0);
        assert_eq!(a.accept(0, 0, 3).keep, 0..3);
        // retransmission overlapping the accepted range
        let r = a.accept(0, 1, 4);
        assert_eq!((r.duplicates, r.keep.clone()), (2, 2..4));
        assert_eq!(a.next(), 5);
        // pure duplicate
        assert_eq!(a.accept(0, 0, 5).duplicates, 5);
        // lost frame: 5..7 missing, message 7..9 ignored
        let r = a.accept(5, 7, 2);
        assert!(r.hole && r.keep.is_empty());
        assert_eq!(a.next(), 5);
        // device dropped 5..8 from its ring, sends from 8
        let r = a.accept(8, 8, 2);
        assert_eq!(
            (r.dropped_by_device, r.keep.clone(), r.hole),
            (3, 0..2, false)
        );
        assert_eq!(a.next(), 10);
        // the gap is counted once
        assert_eq!(a.accept(8, 10, 1).dropped_by_device, 0);
    }
}

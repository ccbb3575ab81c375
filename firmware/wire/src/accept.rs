//! Gateway-side acceptance of `Samples` (PROTOCOL.md section 4), as a pure state machine.
//!
//! Invariant: the accepted samples of one `(device, boot)` form the gap-free sequence
//! `0..next()`, except for ranges the device itself reported as dropped (its `oldest` moved past
//! them), which are counted in [`Accepted::dropped_by_device`]. Every sample is accepted at most once.
//! `next()` never exceeds `2^32 - 1` = [`crate::LAST_SEQ`] + 1, which an `Ack` can carry: no sequence
//! number above `LAST_SEQ` is ever accepted, whatever the caller passes, and nothing wraps.
//!
//! Every message whose samples were all accepted before (`keep` empty, `duplicates > 0`) must be
//! answered with an `Ack` of the durable `next`, like a message with new samples: its sender lost
//! the earlier ack and holds those samples until it hears one.

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
    ///
    /// A decoded `Samples` always has `oldest <= first_seq` and no seq above [`crate::LAST_SEQ`]
    /// ([`crate::Message::is_valid`]); should a caller pass more, the samples above `LAST_SEQ` are
    /// left out of `keep`.
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
        // Samples with seq <= LAST_SEQ: first_seq + len <= u32::MAX, so `end` cannot overflow.
        let len = len.min((u32::MAX - first_seq) as usize);
        let end = first_seq + len as u32;
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

    #[test]
    fn all_duplicates_keep_nothing_and_leave_next() {
        let mut a = Acceptor::new(0);
        a.accept(0, 0, 4);
        let r = a.accept(0, 0, 4);
        assert_eq!((r.duplicates, r.keep, r.hole), (4, 0..0, false));
        assert_eq!(a.next(), 4, "the Ack that answers it carries next_seq 4");
    }

    /// `Hello.next_seq` plays no part: a boot the gateway has not seen starts at 0, and a first
    /// `Samples` with `oldest = k` counts `k` samples dropped by the device.
    #[test]
    fn a_new_boot_starts_at_zero() {
        let mut a = Acceptor::new(0);
        let r = a.accept(5, 7, 2);
        assert_eq!(
            (r.dropped_by_device, r.hole),
            (5, true),
            "5..7 were lost in flight"
        );
        let r = a.accept(5, 5, 4);
        assert_eq!((r.dropped_by_device, r.keep), (0, 0..4));
        assert_eq!(a.next(), 9);
    }

    #[test]
    fn top_of_the_sequence_space() {
        // The last usable seq is 0xFFFF_FFFE; accepting it makes next 0xFFFF_FFFF (an Ack can
        // carry that), and nothing wraps.
        let mut a = Acceptor::new(0xFFFF_FFF0);
        let r = a.accept(0xFFFF_FFF0, 0xFFFF_FFF0, 15);
        assert_eq!((r.keep, r.duplicates), (0..15, 0));
        assert_eq!(a.next(), u32::MAX);
        let r = a.accept(0xFFFF_FFF0, 0xFFFF_FFF0, 15);
        assert_eq!((r.keep, r.duplicates), (0..0, 15));
        assert_eq!(a.next(), u32::MAX);

        // A caller that skips validation: seq 0xFFFF_FFFF is never accepted.
        let mut a = Acceptor::new(0xFFFF_FFFE);
        let r = a.accept(0xFFFF_FFFE, 0xFFFF_FFFE, 2);
        assert_eq!(r.keep, 0..1, "only seq 0xFFFF_FFFE");
        assert_eq!(a.next(), u32::MAX);
        let r = a.accept(u32::MAX, u32::MAX, 1);
        assert!(r.keep.is_empty());
        assert_eq!(a.next(), u32::MAX);

        // A device that dropped everything up to the top counts the gap exactly.
        let mut a = Acceptor::new(0);
        let r = a.accept(0xFFFF_FFFE, 0xFFFF_FFFE, 1);
        assert_eq!((r.dropped_by_device, r.keep), (0xFFFF_FFFE, 0..1));
    }
}

//! Forwarding position: which stored events are on the broker (sans-IO).
//!
//! The store assigns every event an id in commit order. What has been forwarded is
//! `[..=backlog] ∪ (live_from..=live]` ([`Progress`]): one range while the uplink keeps up, two
//! while a backlog drains behind live data. Each stream reads its range in *chunks*; a chunk is
//! published as one or more messages, and it completes when the broker has acked (PUBACK) every
//! one of them. A stream's acked position moves over completed chunks in order only, so
//! [`Forwarder::progress`] never claims an event whose PUBACK has not arrived.
//!
//! Splitting: when the live stream is more than `threshold` events behind the store's head and no
//! backlog exists, the range it has not read yet becomes the backlog and live reading jumps to
//! the head. The backlog drains at a bounded rate (the caller's budget) while live data goes out
//! first; when the backlog reaches `live_from` the two ranges merge.
//!
//! The uplink's [`Ledger`](super::ledger::Ledger) owns the forwarder: it names a chunk in
//! [`Forwarder::acked`] once per message acked by the broker or kept in quarantine.
use std::collections::VecDeque;

/// What has been forwarded: every id `<= backlog`, and every id in `(live_from, live]`.
/// Invariant: `backlog <= live_from <= live`; with no backlog draining, all three are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Every event id up to this one is forwarded.
    pub backlog: i64,
    /// Start (exclusive) of the live range.
    pub live_from: i64,
    /// End (inclusive) of the live range.
    pub live: i64,
}

impl Progress {
    /// Repairs a stored progress that breaks the invariant (for instance written by hand) in the
    /// safe direction: nothing is claimed forwarded that the stored values did not claim.
    pub fn sanitized(self) -> Progress {
        let backlog = self.backlog.max(0);
        if self.live_from < backlog || self.live < self.live_from {
            return Progress {
                backlog,
                live_from: backlog,
                live: backlog,
            };
        }
        self
    }

    /// True if no backlog is draining.
    pub fn is_single(&self) -> bool {
        self.backlog == self.live_from && self.live_from == self.live
    }
}

/// Which stream a read or message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// New data, at full speed.
    Live,
    /// Older data behind the live range, at a bounded rate.
    Backlog,
}

/// A read the caller should do: events with `after < id <= upto`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    /// The stream it is for.
    pub stream: StreamKind,
    /// Exclusive lower bound.
    pub after: i64,
    /// Inclusive upper bound.
    pub upto: i64,
    /// Most events to return.
    pub limit: usize,
}

/// Identifies a chunk for [`Forwarder::acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    stream: StreamKind,
    /// Generation of the stream (a stream reused after a merge/split gets a new one).
    generation: u64,
    no: u64,
}

#[derive(Debug)]
struct Chunk {
    no: u64,
    upto: i64,
    outstanding: usize,
}

#[derive(Debug)]
struct Stream {
    generation: u64,
    read_to: i64,
    acked_to: i64,
    /// Reads never go past this (the backlog's `live_from`); `None` for live.
    bound: Option<i64>,
    chunks: VecDeque<Chunk>,
    next_chunk: u64,
}

impl Stream {
    fn new(at: i64, bound: Option<i64>, generation: u64) -> Stream {
        Stream {
            generation,
            read_to: at,
            acked_to: at,
            bound,
            chunks: VecDeque::new(),
            next_chunk: 0,
        }
    }

    fn settle(&mut self) -> bool {
        let mut moved = false;
        while self.chunks.front().is_some_and(|c| c.outstanding == 0) {
            let c = self.chunks.pop_front().expect("checked");
            self.acked_to = c.upto;
            moved = true;
        }
        moved
    }
}

/// The forwarding state machine. See the module docs.
#[derive(Debug)]
pub struct Forwarder {
    live: Stream,
    backlog: Option<Stream>,
    live_from: i64,
    generations: u64,
}

impl Forwarder {
    /// Resumes from a stored progress.
    pub fn new(p: Progress) -> Forwarder {
        let p = p.sanitized();
        let backlog =
            (p.backlog < p.live_from).then(|| Stream::new(p.backlog, Some(p.live_from), 1));
        Forwarder {
            live: Stream::new(p.live, None, 2),
            backlog,
            live_from: p.live_from,
            generations: 2,
        }
    }

    /// What is forwarded now (acked chunks only).
    pub fn progress(&self) -> Progress {
        match &self.backlog {
            Some(b) => Progress {
                backlog: b.acked_to,
                live_from: self.live_from,
                live: self.live.acked_to,
            },
            None => Progress {
                backlog: self.live.acked_to,
                live_from: self.live.acked_to,
                live: self.live.acked_to,
            },
        }
    }

    /// True while a backlog drains behind the live range.
    pub fn has_backlog(&self) -> bool {
        self.backlog.is_some()
    }

    /// Events between the live reader and `head` plus the backlog range not yet read: the
    /// forwarding backlog in events (an upper estimate: deleted ids count too).
    pub fn unread(&self, head: i64) -> i64 {
        let live = (head - self.live.read_to).max(0);
        let backlog = self
            .backlog
            .as_ref()
            .map_or(0, |b| (b.bound.unwrap_or(b.read_to) - b.read_to).max(0));
        live + backlog
    }

    /// Splits off a backlog if live reading is more than `threshold` ids behind `head` and no
    /// backlog exists yet. Returns true if it split.
    pub fn split_if_behind(&mut self, head: i64, threshold: i64) -> bool {
        if self.backlog.is_some() || head - self.live.read_to <= threshold {
            return false;
        }
        // The live stream (with whatever it has in flight) becomes the backlog, bounded by the
        // current head; live starts over at the head.
        self.generations += 1;
        let mut old = std::mem::replace(&mut self.live, Stream::new(head, None, self.generations));
        old.bound = Some(head);
        self.backlog = Some(old);
        self.live_from = head;
        true
    }

    /// The next read for `stream`, or `None` if that stream has nothing to read below `head`.
    pub fn plan(&self, stream: StreamKind, head: i64, limit: usize) -> Option<ReadPlan> {
        let s = match stream {
            StreamKind::Live => &self.live,
            StreamKind::Backlog => self.backlog.as_ref()?,
        };
        let upto = s.bound.map_or(head, |b| b.min(head));
        (s.read_to < upto && limit > 0).then_some(ReadPlan {
            stream,
            after: s.read_to,
            upto,
            limit,
        })
    }

    /// Records the result of `plan`: the id of the last event returned (`None` if none) and how
    /// many messages they were published as. Returns the chunk to name in [`acked`](Self::acked)
    /// once per message. A read that returned fewer than `limit` events covers the whole planned
    /// range (ids in it that were not returned do not exist: deleted or never committed).
    pub fn record(
        &mut self,
        plan: ReadPlan,
        returned: usize,
        last_id: Option<i64>,
        messages: usize,
    ) -> ChunkRef {
        let upto = if returned < plan.limit {
            plan.upto
        } else {
            last_id.unwrap_or(plan.upto)
        };
        let s = self.stream_mut(plan.stream).expect("planned stream exists");
        debug_assert_eq!(s.read_to, plan.after, "record follows plan");
        let no = s.next_chunk;
        s.next_chunk += 1;
        s.read_to = upto;
        s.chunks.push_back(Chunk {
            no,
            upto,
            outstanding: messages,
        });
        let r = ChunkRef {
            stream: plan.stream,
            generation: s.generation,
            no,
        };
        if messages == 0 {
            self.settle();
        }
        r
    }

    /// One message of `chunk` was acked by the broker (or quarantined). Returns true if the
    /// progress moved.
    pub fn acked(&mut self, chunk: ChunkRef) -> bool {
        // A chunk of the old live stream that became the backlog is found under its generation.
        let found = [self.backlog.as_mut(), Some(&mut self.live)]
            .into_iter()
            .flatten()
            .find(|s| s.generation == chunk.generation);
        let Some(s) = found else {
            return false;
        };
        if let Some(c) = s.chunks.iter_mut().find(|c| c.no == chunk.no) {
            c.outstanding = c.outstanding.saturating_sub(1);
        }
        self.settle()
    }

    fn stream_mut(&mut self, kind: StreamKind) -> Option<&mut Stream> {
        match kind {
            StreamKind::Live => Some(&mut self.live),
            StreamKind::Backlog => self.backlog.as_mut(),
        }
    }

    fn settle(&mut self) -> bool {
        let mut moved = self.live.settle();
        if let Some(b) = &mut self.backlog {
            moved |= b.settle();
            if b.acked_to >= self.live_from && b.chunks.is_empty() {
                self.backlog = None; // merged: everything up to live.acked_to is forwarded
                moved = true;
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(f: &mut Forwarder, s: StreamKind, head: i64, limit: usize, msgs: usize) -> ChunkRef {
        let p = f.plan(s, head, limit).expect("something to read");
        let n = ((p.upto - p.after) as usize).min(limit);
        f.record(p, n, Some(p.after + n as i64), msgs)
    }

    #[test]
    fn progress_moves_only_over_acked_chunks_in_order() {
        let mut f = Forwarder::new(Progress::default());
        let a = read(&mut f, StreamKind::Live, 100, 40, 2); // 1..=40
        let b = read(&mut f, StreamKind::Live, 100, 40, 1); // 41..=80
        assert_eq!(f.progress().live, 0);
        assert!(
            !f.acked(b),
            "a later chunk cannot move the position past an earlier one"
        );
        assert_eq!(f.progress().backlog, 0);
        assert!(!f.acked(a));
        assert!(f.acked(a));
        assert_eq!(
            f.progress(),
            Progress {
                backlog: 80,
                live_from: 80,
                live: 80
            }
        );
        // short read covers the whole planned range
        let c = read(&mut f, StreamKind::Live, 100, 40, 1);
        f.acked(c);
        assert_eq!(f.progress().backlog, 100);
        assert!(f.plan(StreamKind::Live, 100, 40).is_none());
    }

    #[test]
    fn a_backlog_splits_off_drains_and_merges() {
        let mut f = Forwarder::new(Progress {
            backlog: 10,
            live_from: 10,
            live: 10,
        });
        let first = read(&mut f, StreamKind::Live, 1_000, 5, 1); // 11..=15, in flight
        assert!(!f.split_if_behind(20, 100));
        assert!(f.split_if_behind(1_000, 100));
        assert!(!f.split_if_behind(5_000, 100), "only one backlog at a time");
        assert_eq!(
            f.progress(),
            Progress {
                backlog: 10,
                live_from: 1_000,
                live: 1_000
            }
        );
        // live reads from the head
        let l = read(&mut f, StreamKind::Live, 1_010, 100, 1);
        assert!(f.acked(l));
        assert_eq!(
            f.progress(),
            Progress {
                backlog: 10,
                live_from: 1_000,
                live: 1_010
            }
        );
        // the in-flight chunk of the old live stream now belongs to the backlog
        assert!(f.acked(first));
        assert_eq!(f.progress().backlog, 15);
        // backlog reads stop at live_from
        let p = f.plan(StreamKind::Backlog, 1_010, 10_000).unwrap();
        assert_eq!((p.after, p.upto), (15, 1_000));
        let c = f.record(p, 985, Some(1_000), 3);
        f.acked(c);
        f.acked(c);
        assert!(f.has_backlog());
        f.acked(c);
        assert!(!f.has_backlog());
        assert_eq!(
            f.progress(),
            Progress {
                backlog: 1_010,
                live_from: 1_010,
                live: 1_010
            }
        );
    }

    #[test]
    fn resume_with_a_backlog_and_sanitize() {
        let f = Forwarder::new(Progress {
            backlog: 5,
            live_from: 50,
            live: 70,
        });
        assert!(f.has_backlog());
        assert_eq!(f.plan(StreamKind::Backlog, 100, 1000).unwrap().upto, 50);
        assert_eq!(f.plan(StreamKind::Live, 100, 1000).unwrap().after, 70);
        assert_eq!(f.unread(100), 30 + 45);
        let bad = Progress {
            backlog: 9,
            live_from: 3,
            live: 70,
        }
        .sanitized();
        assert_eq!(
            bad,
            Progress {
                backlog: 9,
                live_from: 9,
                live: 9
            }
        );
    }

    #[test]
    fn empty_reads_of_deleted_ranges_complete_at_once() {
        let mut f = Forwarder::new(Progress {
            backlog: 0,
            live_from: 500,
            live: 500,
        });
        let p = f.plan(StreamKind::Backlog, 600, 100).unwrap();
        f.record(p, 0, None, 0);
        assert!(!f.has_backlog());
        assert_eq!(f.progress().backlog, 500);
    }
}

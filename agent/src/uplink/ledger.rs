//! The uplink's in-flight ledger, sans-IO: which messages are out, which broker ack belongs to
//! which message, what to hand to the connection next, what to read from the store next, and how
//! far the saved position may move. The uplink task ([`super::Uplink`]) does the I/O around it:
//! it reads the store, publishes, writes the quarantine and saves the position when told, and
//! feeds what the connection reports back in. Time is passed in as an [`Instant`]; nothing here
//! reads a clock, blocks or touches a socket.
//!
//! Invariants:
//! - **Position only over handled messages.** A message is *handled* once the broker acked it
//!   (PUBACK for the packet id it was written under) or once the task reports it kept in the
//!   quarantine ([`Ledger::quarantined`], called after the store write). Only then is its
//!   chunk acked in the [`Forwarder`], which moves the position over completed chunks in store
//!   order only; so [`Ledger::progress`] never covers an event whose message is unhandled.
//! - **Packet ids.** Publishes handed to the connection ([`Ledger::poll_publish`] then
//!   [`Ledger::queued`]) are written in that order; each [`Ledger::on_sent`] pairs its packet id
//!   with the oldest message handed over and not yet written. A disconnect voids every pairing
//!   (the connection drops what it had not written), so a late or reused packet id never acks
//!   the wrong message.
//! - **Republish.** On [`Ledger::on_connected`] the fresh birth message goes first, then every
//!   unacked message in the order it was created. The previous birth is dropped at the
//!   disconnect, never republished (its retained `online` would carry a stale time).
//! - **No poison loop.** A message larger than the broker's maximum packet size (checked when it
//!   is about to be handed over), the one the broker refused when it closed the connection
//!   (MQTT 5 PUBACK reason code: the packet id sent but neither acked nor kept by the
//!   connection), and events the contract refuses (split off by [`batch::batches`]) go to the
//!   quarantine queue ([`Ledger::next_quarantine`]) and count as handled once kept.
//! - **Unrouted.** With `require_subscriber`, a PUBACK saying no subscriber matched leaves an
//!   event message unacked; it is handed over again [`UNROUTED_RETRY`] later (or republished
//!   after a reconnect). Status and outcome messages count as delivered.
//! - **Bounded.** Reads happen only while connected and while fewer than `window` messages are
//!   unhandled (acked or quarantined); one read may overshoot by the messages it makes. At most
//!   [`PUBLISH_QUEUE`] messages are handed to the connection and not yet written; the rest wait
//!   in order.
//! - **Live first.** Each fill round ([`Ledger::begin_fill`]) splits off a backlog when the live
//!   reader is more than `backlog_threshold` events behind the head. Live reads come first; a
//!   backlog read happens only while fewer than `window / 2` backlog messages are unacked and
//!   the token bucket holds at least 50 ms of `backlog_rate` (at most `read_limit`); it pays for
//!   the events it actually returned.
//! - **Saves** are proposed at most every [`SAVE_INTERVAL`] unless forced, and only when the
//!   position moved.
//!
//! [`Forwarder`] (forward.rs) stays a separate struct: it is the position half (ranges and
//! chunks, no messages) and is tested on its own; this ledger maps messages to its chunks. The
//! token bucket is hand-written: rate-limiting crates grant whole cells at a fixed cost, while a
//! backlog read takes whatever has accrued (up to `read_limit`) and pays afterwards for what the
//! store returned.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::batch::{self, BatchLimits};
use super::forward::{ChunkRef, Forwarder, Progress, ReadPlan, StreamKind};
use super::{StoredEvent, UplinkSettings};

/// Most publishes handed to the connection and not yet written (more wait in the ledger).
pub const PUBLISH_QUEUE: usize = 128;

/// Wait before publishing an unrouted message again.
pub const UNROUTED_RETRY: Duration = Duration::from_millis(500);

/// Least time between two position saves, unless forced.
pub const SAVE_INTERVAL: Duration = Duration::from_millis(100);

/// Fixed header, topic length prefix, packet id, MQTT 5 properties length: < 16 bytes.
const PUBLISH_OVERHEAD: usize = 16;

/// What the ledger needs from [`UplinkSettings`].
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// Gateway id (topic level).
    pub gateway: String,
    /// Message limits and encoding.
    pub limits: BatchLimits,
    /// Events per store read.
    pub read_limit: usize,
    /// Most unhandled messages before reads stop (the connection's inflight window, at least 2).
    pub window: usize,
    /// Fall this many events behind and the rest becomes a rate-limited backlog.
    pub backlog_threshold: i64,
    /// Backlog drain rate, events per second.
    pub backlog_rate: u64,
    /// An event message needs a subscriber (MQTT 5 PUBACK reason 0x10 holds it).
    pub require_subscriber: bool,
}

impl From<&UplinkSettings> for LedgerSettings {
    fn from(s: &UplinkSettings) -> Self {
        LedgerSettings {
            gateway: s.gateway.clone(),
            limits: s.limits,
            read_limit: s.read_limit,
            window: usize::from(s.link.inflight.max(2)),
            backlog_threshold: s.backlog_threshold,
            backlog_rate: s.backlog_rate,
            require_subscriber: s.require_subscriber,
        }
    }
}

/// Identifies a message in the ledger (creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(u64);

/// A message to hand to the connection now; confirm with [`Ledger::queued`] once it took it.
#[derive(Debug)]
pub struct Publish<'a> {
    /// The message.
    pub id: MsgId,
    /// Topic.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a Bytes,
    /// Retained (the birth message).
    pub retain: bool,
}

/// A message the broker acked.
#[derive(Debug)]
pub struct Delivered<N> {
    /// Events in it (0 for status and outcome messages).
    pub events: usize,
    /// Events sent again by a replay ([`Ledger::push`]), not forwarded from the position.
    pub replayed: bool,
    /// Whoever waits for its PUBACK.
    pub notify: Option<N>,
}

/// What an unrouted PUBACK (no matching subscriber) did.
#[derive(Debug)]
pub enum Unrouted<N> {
    /// An event message, held to be published again after [`UNROUTED_RETRY`]. `first`: nothing
    /// else was held (worth a warning).
    Held {
        /// The message.
        id: MsgId,
        /// No other message was held.
        first: bool,
    },
    /// Delivered as far as MQTT goes (status, outcomes, or subscribers not required).
    Delivered(Delivered<N>),
    /// The packet id belongs to no message (written before a disconnect, or not by the ledger).
    Unknown,
}

/// A message to keep in the store's quarantine instead of forwarding it.
#[derive(Debug)]
pub struct Quarantine {
    /// Topic it would have gone to.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Events in it.
    pub events: usize,
    /// Why it is not forwarded.
    pub reason: String,
    chunk: Option<ChunkRef>,
}

#[derive(Debug)]
struct Msg<N> {
    topic: String,
    payload: Bytes,
    retain: bool,
    /// The birth message: replaced, not republished, after a reconnect.
    birth: bool,
    chunk: Option<ChunkRef>,
    stream: Option<StreamKind>,
    events: usize,
    /// Handed over before a disconnect: publishing it again counts as a republish.
    sent_before: bool,
    notify: Option<N>,
}

impl<N> Msg<N> {
    fn quarantine(self, reason: String) -> Quarantine {
        Quarantine {
            topic: self.topic,
            payload: self.payload,
            events: self.events,
            reason,
            chunk: self.chunk,
        }
    }
}

/// Tokens for backlog reads: `rate` events per second, at most a tenth of a second of rate
/// (at least one read) saved up.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    depth: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, read_limit: usize, now: Instant) -> Self {
        let rate = rate as f64;
        TokenBucket {
            rate,
            depth: (rate / 10.0).max(read_limit as f64),
            tokens: 0.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + self.rate * dt).min(self.depth);
    }
}

/// The in-flight ledger. See the module docs; `N` is what waits for a message's PUBACK.
#[derive(Debug)]
pub struct Ledger<N> {
    settings: LedgerSettings,
    fwd: Forwarder,
    /// Every unhandled message except those waiting for the quarantine, in creation order.
    unacked: BTreeMap<MsgId, Msg<N>>,
    /// Handed to the connection, waiting for their packet id, oldest first.
    fifo: VecDeque<MsgId>,
    /// To hand over once the connection's queue has room, in order (after `fifo`).
    waiting: VecDeque<MsgId>,
    by_pkid: HashMap<u16, MsgId>,
    next_msg: u64,
    connected: bool,
    max_packet: Option<u32>,
    /// Messages to keep in the quarantine, oldest first.
    quarantine: VecDeque<Quarantine>,
    /// Unrouted messages and when to publish them again.
    retry: Vec<(Instant, MsgId)>,
    bucket: TokenBucket,
    head: i64,
    saved: Progress,
    last_save: Instant,
}

impl<N> Ledger<N> {
    /// A ledger resuming from the position `saved` (as loaded), at `now`; disconnected.
    pub fn new(settings: LedgerSettings, saved: Progress, now: Instant) -> Self {
        let saved = saved.sanitized();
        Ledger {
            bucket: TokenBucket::new(settings.backlog_rate, settings.read_limit, now),
            settings,
            fwd: Forwarder::new(saved),
            unacked: BTreeMap::new(),
            fifo: VecDeque::new(),
            waiting: VecDeque::new(),
            by_pkid: HashMap::new(),
            next_msg: 1,
            connected: false,
            max_packet: None,
            quarantine: VecDeque::new(),
            retry: Vec::new(),
            head: 0,
            saved,
            last_save: now,
        }
    }

    /// Connected to the broker now.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Messages not yet acked (not counting those waiting for the quarantine).
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// What is forwarded now.
    pub fn progress(&self) -> Progress {
        self.fwd.progress()
    }

    /// The position last saved (or loaded).
    pub fn saved(&self) -> Progress {
        self.saved
    }

    /// Events not yet forwarded as of the last [`begin_fill`](Self::begin_fill) (an estimate).
    pub fn unread(&self) -> i64 {
        self.fwd.unread(self.head)
    }

    /// True while a split-off backlog drains.
    pub fn has_backlog(&self) -> bool {
        self.fwd.has_backlog()
    }

    /// Some message holding events is unhandled (what a shutdown waits for).
    pub fn has_events_in_flight(&self) -> bool {
        self.unacked.values().any(|m| m.chunk.is_some())
            || self.quarantine.iter().any(|q| q.chunk.is_some())
    }

    /// The topic of an unacked message.
    pub fn topic(&self, id: MsgId) -> Option<&str> {
        self.unacked.get(&id).map(|m| m.topic.as_str())
    }

    /// CONNACK: the broker takes packets up to `max_packet`. Queues the birth message, then every
    /// unacked message in creation order.
    pub fn on_connected(&mut self, max_packet: Option<u32>, birth_topic: String, birth: Bytes) {
        self.connected = true;
        self.max_packet = max_packet;
        let birth = self.insert(Msg {
            topic: birth_topic,
            payload: birth,
            retain: true,
            birth: true,
            chunk: None,
            stream: None,
            events: 0,
            sent_before: false,
            notify: None,
        });
        self.waiting.push_back(birth);
        for &id in self.unacked.keys() {
            if id != birth && !self.fifo.contains(&id) && !self.waiting.contains(&id) {
                self.waiting.push_back(id);
            }
        }
    }

    /// The connection is gone. `refused`: the broker refused a message (MQTT 5 reason code),
    /// which ended the connection; `kept`: the packet ids the connection still held unacked.
    /// Returns whether it was connected.
    pub fn on_disconnect(&mut self, refused: Option<String>, kept: &[u16]) -> bool {
        let was = std::mem::replace(&mut self.connected, false);
        if let Some(reason) = refused {
            // The refused message is the one written but neither acked nor kept.
            let mut missing = self
                .by_pkid
                .iter()
                .filter(|(p, _)| !kept.contains(p))
                .map(|(_, id)| *id);
            if let (Some(id), None) = (missing.next(), missing.next()) {
                if let Some(m) = self.unacked.remove(&id) {
                    self.quarantine.push_back(m.quarantine(reason));
                }
            }
        }
        self.fifo.clear();
        self.waiting.clear();
        self.by_pkid.clear();
        self.retry.clear(); // everything unacked is republished on connect
        self.unacked.retain(|_, m| !m.birth);
        for m in self.unacked.values_mut() {
            m.sent_before = true;
        }
        was
    }

    /// Adds a message outside the forwarding position (a command outcome, a firmware result, or
    /// `events` stored events replayed); `notify` is handed back when the broker acks it. With
    /// events, it is held when unrouted like the event stream's messages; it never moves the
    /// position, and is dropped (with `notify`) if the broker refuses it or it is too large.
    pub fn push(
        &mut self,
        topic: String,
        payload: Bytes,
        events: usize,
        notify: Option<N>,
    ) -> MsgId {
        let id = self.insert(Msg {
            topic,
            payload,
            retain: false,
            birth: false,
            chunk: None,
            stream: None,
            events,
            sent_before: false,
            notify,
        });
        self.submit(id);
        id
    }

    /// The next message to hand to the connection, if the connection's queue has room. A
    /// message too large for the broker goes to the quarantine instead.
    pub fn poll_publish(&mut self) -> Option<Publish<'_>> {
        while self.connected && self.fifo.len() < PUBLISH_QUEUE {
            let id = self.waiting.pop_front()?;
            let Some(m) = self.unacked.get(&id) else {
                continue;
            };
            let size = m.payload.len() + m.topic.len() + PUBLISH_OVERHEAD;
            if let Some(max) = self.max_packet.filter(|&max| size > max as usize) {
                let m = self.unacked.remove(&id).expect("present");
                self.quarantine.push_back(m.quarantine(format!(
                    "larger than the broker's maximum packet size ({max} bytes)"
                )));
                continue;
            }
            let m = &self.unacked[&id];
            return Some(Publish {
                id,
                topic: &m.topic,
                payload: &m.payload,
                retain: m.retain,
            });
        }
        None
    }

    /// The connection took message `id` (from [`poll_publish`](Self::poll_publish)). Returns
    /// true if it is a republish. A message handed out but not confirmed stays unacked and goes
    /// out again after the next connect.
    pub fn queued(&mut self, id: MsgId) -> bool {
        self.fifo.push_back(id);
        self.unacked.get(&id).is_some_and(|m| m.sent_before)
    }

    /// The connection wrote the oldest queued message under `pkid`. False if nothing was queued
    /// (a publish that did not come from the ledger).
    pub fn on_sent(&mut self, pkid: u16) -> bool {
        match self.fifo.pop_front() {
            Some(id) => {
                self.by_pkid.insert(pkid, id);
                true
            }
            None => false,
        }
    }

    /// PUBACK for `pkid`: its message is delivered.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Delivered<N>> {
        let id = self.by_pkid.remove(&pkid)?;
        self.deliver(id)
    }

    /// PUBACK for `pkid` saying no subscriber matched, at `now`.
    pub fn on_unrouted(&mut self, pkid: u16, now: Instant) -> Unrouted<N> {
        let Some(id) = self.by_pkid.remove(&pkid) else {
            return Unrouted::Unknown;
        };
        match self.unacked.get(&id) {
            Some(m) if m.events > 0 && self.settings.require_subscriber => {
                let first = self.retry.is_empty();
                self.retry.push((now + UNROUTED_RETRY, id));
                Unrouted::Held { id, first }
            }
            _ => self
                .deliver(id)
                .map_or(Unrouted::Unknown, Unrouted::Delivered),
        }
    }

    /// Queues held unrouted messages whose wait is over at `now` (while connected).
    pub fn retry_due(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let waiting = &mut self.waiting;
        self.retry.retain(|&(at, id)| {
            if at <= now {
                waiting.push_back(id);
            }
            at > now
        });
    }

    /// Starts a round of reads: the store's newest event is `head` at `now`. Returns true if
    /// the uplink fell behind and a backlog split off just now.
    pub fn begin_fill(&mut self, head: i64, now: Instant) -> bool {
        self.head = head;
        let split = self
            .fwd
            .split_if_behind(head, self.settings.backlog_threshold);
        self.bucket.refill(now);
        split
    }

    /// The next store read while the window has room: live first, then the backlog within its
    /// rate and half the window. `None`: stop reading for this round.
    pub fn next_read(&self) -> Option<ReadPlan> {
        let s = &self.settings;
        let window = s.window;
        if !self.connected || self.unacked.len() + self.quarantine.len() >= window {
            return None;
        }
        if let Some(p) = self.fwd.plan(StreamKind::Live, self.head, s.read_limit) {
            return Some(p);
        }
        let in_backlog = self
            .unacked
            .values()
            .filter(|m| m.stream == Some(StreamKind::Backlog))
            .count();
        let budget = self.bucket.tokens.min(s.read_limit as f64) as usize;
        // Wait for 50 ms worth of tokens: reading whatever trickled in since the last PUBACK
        // would make messages of a few events each.
        let min_read = (s.backlog_rate as f64 / 20.0)
            .min(s.read_limit as f64)
            .max(1.0) as usize;
        if in_backlog >= window / 2 || budget < min_read {
            return None;
        }
        self.fwd.plan(StreamKind::Backlog, self.head, budget)
    }

    /// What the store returned for `plan`: cut into messages and queued (the ones the contract
    /// refuses go to the quarantine).
    pub fn on_read(&mut self, plan: ReadPlan, events: &[StoredEvent]) {
        if plan.stream == StreamKind::Backlog {
            self.bucket.tokens -= events.len() as f64;
        }
        let msgs = batch::batches(&self.settings.gateway, events, &self.settings.limits);
        let chunk = self
            .fwd
            .record(plan, events.len(), events.last().map(|e| e.id), msgs.len());
        for m in msgs {
            let msg = Msg {
                topic: m.topic,
                payload: m.payload.into(),
                retain: false,
                birth: false,
                chunk: Some(chunk),
                stream: Some(plan.stream),
                events: m.events,
                sent_before: false,
                notify: None,
            };
            match m.refused {
                Some(reason) => self.quarantine.push_back(msg.quarantine(reason)),
                None => {
                    let id = self.insert(msg);
                    self.submit(id);
                }
            }
        }
    }

    /// The oldest message to keep in the quarantine; call [`quarantined`](Self::quarantined)
    /// once the store holds it.
    pub fn next_quarantine(&self) -> Option<&Quarantine> {
        self.quarantine.front()
    }

    /// The store holds the message from [`next_quarantine`](Self::next_quarantine): it counts
    /// as handled. Returns it.
    pub fn quarantined(&mut self) -> Option<Quarantine> {
        let q = self.quarantine.pop_front()?;
        if let Some(c) = q.chunk {
            self.fwd.acked(c);
        }
        Some(q)
    }

    /// The position to save at `now`, if it moved and the last save is [`SAVE_INTERVAL`] old
    /// (or `force`).
    pub fn position_to_save(&self, now: Instant, force: bool) -> Option<Progress> {
        let p = self.fwd.progress();
        let recent = now.saturating_duration_since(self.last_save) < SAVE_INTERVAL;
        (p != self.saved && (force || !recent)).then_some(p)
    }

    /// `p` is saved (durable with the store's next commit), at `now`.
    pub fn position_saved(&mut self, p: Progress, now: Instant) {
        self.saved = p;
        self.last_save = now;
    }

    fn insert(&mut self, m: Msg<N>) -> MsgId {
        let id = MsgId(self.next_msg);
        self.next_msg += 1;
        self.unacked.insert(id, m);
        id
    }

    /// Queues `id` for the connection (while connected; otherwise it goes out on connect).
    fn submit(&mut self, id: MsgId) {
        if self.connected {
            self.waiting.push_back(id);
        }
    }

    fn deliver(&mut self, id: MsgId) -> Option<Delivered<N>> {
        let m = self.unacked.remove(&id)?;
        if let Some(c) = m.chunk {
            self.fwd.acked(c);
        }
        Some(Delivered {
            events: m.events,
            replayed: m.chunk.is_none() && m.events > 0,
            notify: m.notify,
        })
    }
}

#[cfg(test)]
mod tests;

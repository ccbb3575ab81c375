//! One client's session: its QoS 1 queue and in-flight window (pure; sends go through an
//! [`Outbox`]).
//!
//! Invariants:
//! - At most `window` QoS 1 messages are in flight (sent, not yet PUBACKed); the rest wait in
//!   the queue, in publish order. The queue holds at most `max_queued`; a message that does
//!   not fit is dropped and counted, never silently.
//! - A message leaves the session only on its PUBACK. When the connection goes, in-flight
//!   messages move back to the front of the queue with their packet ids and the DUP flag and
//!   are sent first on the next connection of the same session, in their original order.
//! - A packet id is never used by two unacked messages of one session.
//! - QoS 0 messages are never queued: sent if the connection has room, else dropped (counted).
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::codec::{Delivery, DisconnectReason, Message, Outbound, Qos};
use super::BrokerStats;

/// Identifies one network connection (a session outlives many).
pub type ConnId = u64;

/// Where the router's packets go: one bounded queue per connection.
pub trait Outbox {
    /// Queues `out` for `conn` without waiting; `false` if that queue is full or gone.
    fn try_send(&mut self, conn: ConnId, out: Outbound) -> bool;
    /// Closes `conn` (5: with a DISCONNECT carrying `reason`).
    fn close(&mut self, conn: ConnId, reason: DisconnectReason);
}

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Granted QoS.
    pub qos: Qos,
    /// Do not deliver the subscriber's own messages.
    pub no_local: bool,
    /// Keep the retain flag on forwarded messages.
    pub retain_as_published: bool,
}

/// The live connection of a session.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The connection.
    pub conn: ConnId,
    /// Most QoS 1 messages in flight.
    pub window: usize,
    /// Largest packet the client accepts.
    pub max_packet: Option<u32>,
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// QoS 1 queue full.
    QueueFull,
    /// QoS 0 and no room on the connection (or no connection).
    Qos0,
    /// Larger than the client's maximum packet size.
    TooLarge,
}

/// A client session.
#[derive(Debug)]
pub struct Session {
    /// Client id.
    pub client_id: String,
    /// The connection, while connected.
    pub link: Option<Link>,
    /// Seconds the session outlives its connection (`u32::MAX`: while the broker runs).
    pub expiry_s: u32,
    /// When the connection went.
    pub gone_since: Option<Instant>,
    /// Subscriptions by their full string (`$share/...` included).
    pub subscriptions: HashMap<String, SubOptions>,
    /// The will of the current connection.
    pub will: Option<Message>,
    queue: VecDeque<Delivery>,
    inflight: VecDeque<Delivery>,
    next_pkid: u16,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: String) -> Session {
        Session {
            client_id,
            link: None,
            expiry_s: 0,
            gone_since: None,
            subscriptions: HashMap::new(),
            will: None,
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            next_pkid: 1,
        }
    }

    /// Messages held (queued and in flight).
    pub fn held(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Whether a new QoS 1 message would go out at once.
    pub fn has_room(&self) -> bool {
        self.link
            .is_some_and(|l| self.queue.is_empty() && self.inflight.len() < l.window)
    }

    /// Takes a message for this client (`d.pkid` is ignored).
    pub fn deliver(
        &mut self,
        mut d: Delivery,
        max_queued: usize,
        outbox: &mut dyn Outbox,
        stats: &BrokerStats,
    ) -> Result<(), Dropped> {
        if let Some(max) = self.link.and_then(|l| l.max_packet) {
            // Fixed header (≤ 5), topic length (2), packet id (2), properties length (1).
            if d.topic.len() + d.payload.len() + 10 > max as usize {
                return Err(Dropped::TooLarge);
            }
        }
        d.pkid = 0;
        d.dup = false;
        match d.qos {
            Qos::AtMostOnce => match self.link {
                Some(l) if outbox.try_send(l.conn, Outbound::Publish(d)) => {
                    stats.delivered.fetch_add(1, Relaxed);
                    Ok(())
                }
                _ => Err(Dropped::Qos0),
            },
            Qos::AtLeastOnce => {
                if self.queue.len() >= max_queued {
                    return Err(Dropped::QueueFull);
                }
                self.queue.push_back(d);
                self.pump(outbox, stats);
                Ok(())
            }
        }
    }

    /// Sends queued messages while the window has room and the connection takes them.
    pub fn pump(&mut self, outbox: &mut dyn Outbox, stats: &BrokerStats) {
        let Some(link) = self.link else { return };
        while self.inflight.len() < link.window {
            let Some(mut d) = self.queue.pop_front() else {
                break;
            };
            if d.pkid == 0 {
                d.pkid = self.alloc_pkid();
            }
            if !outbox.try_send(link.conn, Outbound::Publish(d.clone())) {
                self.queue.push_front(d);
                break;
            }
            stats.delivered.fetch_add(1, Relaxed);
            self.inflight.push_back(d);
        }
    }

    /// A PUBACK from the client; `false` if no message had that packet id.
    pub fn acked(&mut self, pkid: u16, outbox: &mut dyn Outbox, stats: &BrokerStats) -> bool {
        let Some(i) = self.inflight.iter().position(|d| d.pkid == pkid) else {
            return false;
        };
        self.inflight.remove(i);
        self.pump(outbox, stats);
        true
    }

    /// A connection takes over this session: unacked messages go first, as duplicates.
    pub fn attach(&mut self, link: Link, outbox: &mut dyn Outbox, stats: &BrokerStats) {
        self.link = Some(link);
        self.gone_since = None;
        self.requeue_inflight();
        self.pump(outbox, stats);
    }

    /// The connection is gone; unacked messages wait for the next one.
    pub fn detach(&mut self, now: Instant) {
        self.link = None;
        self.gone_since = Some(now);
        self.requeue_inflight();
    }

    fn requeue_inflight(&mut self) {
        while let Some(mut d) = self.inflight.pop_back() {
            d.dup = true;
            self.queue.push_front(d);
        }
    }

    fn alloc_pkid(&mut self) -> u16 {
        loop {
            let p = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            // Requeued messages keep their ids and sit at the queue's front.
            let taken = self.inflight.iter().any(|d| d.pkid == p)
                || self
                    .queue
                    .iter()
                    .take_while(|d| d.pkid != 0)
                    .any(|d| d.pkid == p);
            if !taken {
                return p;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// Records packets; `room` limits how many each connection takes.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub sent: Vec<(ConnId, Outbound)>,
        pub closed: Vec<(ConnId, DisconnectReason)>,
        pub room: Option<usize>,
    }

    impl Outbox for Recorder {
        fn try_send(&mut self, conn: ConnId, out: Outbound) -> bool {
            if let Some(r) = &mut self.room {
                if *r == 0 {
                    return false;
                }
                *r -= 1;
            }
            self.sent.push((conn, out));
            true
        }
        fn close(&mut self, conn: ConnId, reason: DisconnectReason) {
            self.closed.push((conn, reason));
        }
    }

    impl Recorder {
        pub(crate) fn publishes(&self, conn: ConnId) -> Vec<Delivery> {
            self.sent
                .iter()
                .filter(|(c, _)| *c == conn)
                .filter_map(|(_, o)| match o {
                    Outbound::Publish(d) => Some(d.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    fn d(n: u8) -> Delivery {
        Delivery {
            topic: Arc::from("t"),
            payload: vec![n].into(),
            qos: Qos::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 0,
        }
    }

    #[test]
    fn window_bounds_inflight_and_acks_release_more() {
        let stats = BrokerStats::default();
        let mut out = Recorder::default();
        let mut s = Session::new("c".into());
        s.attach(
            Link {
                conn: 1,
                window: 2,
                max_packet: None,
            },
            &mut out,
            &stats,
        );
        for n in 0..5 {
            s.deliver(d(n), 10, &mut out, &stats).unwrap();
        }
        let sent = out.publishes(1);
        assert_eq!(sent.len(), 2);
        assert!(s.acked(sent[0].pkid, &mut out, &stats));
        assert!(!s.acked(sent[0].pkid, &mut out, &stats), "acked twice");
        assert_eq!(out.publishes(1).len(), 3);
        assert_eq!(out.publishes(1)[2].payload[..], [2]);
    }

    #[test]
    fn unacked_messages_come_back_first_as_duplicates_with_their_ids() {
        let stats = BrokerStats::default();
        let mut out = Recorder::default();
        let mut s = Session::new("c".into());
        let link = |conn| Link {
            conn,
            window: 2,
            max_packet: None,
        };
        s.attach(link(1), &mut out, &stats);
        for n in 0..3 {
            s.deliver(d(n), 10, &mut out, &stats).unwrap();
        }
        let first = out.publishes(1);
        s.detach(Instant::now());
        s.deliver(d(3), 10, &mut out, &stats).unwrap();
        assert_eq!(s.held(), 4);
        s.attach(link(2), &mut out, &stats);
        let again = out.publishes(2);
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|d| d.dup));
        assert_eq!(
            again.iter().map(|d| d.pkid).collect::<Vec<_>>(),
            first.iter().map(|d| d.pkid).collect::<Vec<_>>()
        );
        for p in again.iter().map(|d| d.pkid) {
            s.acked(p, &mut out, &stats);
        }
        let rest: Vec<u8> = out.publishes(2).iter().map(|d| d.payload[0]).collect();
        assert_eq!(rest, vec![0, 1, 2, 3]);
    }

    #[test]
    fn full_queues_and_connections_drop_and_say_so() {
        let stats = BrokerStats::default();
        let mut out = Recorder {
            room: Some(1),
            ..Default::default()
        };
        let mut s = Session::new("c".into());
        s.attach(
            Link {
                conn: 1,
                window: 10,
                max_packet: Some(64),
            },
            &mut out,
            &stats,
        );
        s.deliver(d(0), 2, &mut out, &stats).unwrap();
        // The connection's queue is full now: QoS 1 waits in the session, QoS 0 is dropped.
        s.deliver(d(1), 2, &mut out, &stats).unwrap();
        s.deliver(d(2), 2, &mut out, &stats).unwrap();
        assert_eq!(
            s.deliver(d(3), 2, &mut out, &stats),
            Err(Dropped::QueueFull)
        );
        let mut q0 = d(4);
        q0.qos = Qos::AtMostOnce;
        assert_eq!(s.deliver(q0, 2, &mut out, &stats), Err(Dropped::Qos0));
        let mut big = d(5);
        big.payload = vec![0; 100].into();
        assert_eq!(s.deliver(big, 2, &mut out, &stats), Err(Dropped::TooLarge));
        out.room = None;
        s.pump(&mut out, &stats);
        assert_eq!(out.publishes(1).len(), 3);
    }
}

//! The broker's state: sessions, subscriptions, shared groups and retained messages (pure;
//! packets leave through an [`Outbox`], replies through a caller-supplied closure).
//!
//! Invariants:
//! - One router owns all of this; connections reach it through messages, so every decision
//!   (routing, acks, takeover) happens in one order.
//! - A PUBLISH is routed before it is acked, so a PUBACK means the message is in the queue of
//!   every matching session (or was dropped there and counted). The publisher learns whether
//!   anything matched ([`Router::publish`] returns the count); 5 clients get reason 0x10 for 0.
//! - Every matching plain subscription gets one copy per session (the highest granted QoS of
//!   its matching filters); every matching shared group (`$share/{group}/{filter}`) gets one
//!   copy, for one member: the next connected member with room in round-robin order, else the
//!   next member at all (its persistent session queues it).
//! - A session with a zero expiry ends with its connection; others outlive it until the
//!   expiry (3.1.1 persistent sessions: while the broker runs). A client id has one session and
//!   at most one connection: a new CONNECT takes the session over and closes the old one.
//! - Wills are published when a connection ends without a normal DISCONNECT (or is taken over).
//!   A will delay interval is not honoured: the will goes out at once.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::codec::{
    ConnCode, ConnectReq, Delivery, DisconnectReason, Message, Outbound, Qos, RetainHandling,
    SubCode, SubRequest, Version,
};
use super::session::{ConnId, Dropped, Link, Outbox, Session, SubOptions};
use super::topic::{matches, Subscription};
use super::BrokerStats;

/// Limits the router enforces.
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// Most QoS 1 messages in flight per connection.
    pub max_inflight: u16,
    /// Most QoS 1 messages queued per session.
    pub max_queued: usize,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(String, SubOptions)>,
    next: usize,
}

/// Sessions, subscriptions and retained messages.
#[derive(Debug)]
pub struct Router {
    limits: RouterLimits,
    stats: Arc<BrokerStats>,
    sessions: HashMap<String, Session>,
    conns: HashMap<ConnId, String>,
    /// filter → client id → options.
    plain: HashMap<String, BTreeMap<String, SubOptions>>,
    /// (group, filter) → members.
    shared: BTreeMap<(String, String), SharedGroup>,
    retained: BTreeMap<Arc<str>, Message>,
    auto_ids: u64,
}

impl Router {
    /// An empty router.
    pub fn new(limits: RouterLimits, stats: Arc<BrokerStats>) -> Router {
        Router {
            limits,
            stats,
            sessions: HashMap::new(),
            conns: HashMap::new(),
            plain: HashMap::new(),
            shared: BTreeMap::new(),
            retained: BTreeMap::new(),
            auto_ids: 0,
        }
    }

    /// Sessions (connected or not).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A CONNECT on `conn`. Sends the CONNACK through `reply`; returns whether it was accepted
    /// (if not, the caller closes the connection).
    pub fn connect(
        &mut self,
        conn: ConnId,
        mut req: ConnectReq,
        now: Instant,
        reply: impl FnOnce(Outbound),
        outbox: &mut dyn Outbox,
    ) -> bool {
        let refuse = |code| Outbound::ConnAck {
            session_present: false,
            code,
            assigned_id: None,
        };
        if req.will_qos2 && req.version == Version::V5 {
            reply(refuse(ConnCode::QosNotSupported));
            return false;
        }
        let mut assigned_id = None;
        if req.client_id.is_empty() {
            if req.version == Version::V311 && !req.clean_start {
                reply(refuse(ConnCode::BadClientId));
                return false;
            }
            self.auto_ids += 1;
            req.client_id = format!("auto-{}", self.auto_ids);
            assigned_id = (req.version == Version::V5).then(|| req.client_id.clone());
        }
        let id = req.client_id.clone();
        if let Some(old) = self.sessions.get(&id).and_then(|s| s.link) {
            info!(client_id = %id, "Session taken over by a new connection.");
            outbox.close(old.conn, DisconnectReason::SessionTakenOver);
            self.connection_lost(old.conn, true, now, outbox);
        }
        let resume = !req.clean_start && self.sessions.contains_key(&id);
        if !resume {
            self.end_session(&id);
        }
        let session = self
            .sessions
            .entry(id.clone())
            .or_insert_with(|| Session::new(id.clone()));
        session.expiry_s = req.session_expiry_s;
        session.will = req.will;
        self.conns.insert(conn, id.clone());
        reply(Outbound::ConnAck {
            session_present: resume,
            code: ConnCode::Accepted,
            assigned_id,
        });
        let link = Link {
            conn,
            window: usize::from(req.receive_maximum.min(self.limits.max_inflight)),
            max_packet: req.max_packet_size,
        };
        session.attach(link, outbox, &self.stats);
        debug!(client_id = %id, conn, resume, held = session.held(), "Client connected.");
        true
    }

    /// `conn` ended; `publish_will` unless it sent a normal DISCONNECT.
    pub fn connection_lost(
        &mut self,
        conn: ConnId,
        publish_will: bool,
        now: Instant,
        outbox: &mut dyn Outbox,
    ) {
        let Some(id) = self.conns.remove(&conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.link.is_none_or(|l| l.conn != conn) {
            return;
        }
        s.detach(now);
        let will = s.will.take();
        let ends = s.expiry_s == 0;
        if let (true, Some(w)) = (publish_will, will) {
            self.stats.wills.fetch_add(1, Relaxed);
            info!(client_id = %id, topic = %w.topic, "Publishing the will of a lost connection.");
            self.route(&id, w, outbox);
        }
        if ends {
            self.end_session(&id);
        }
    }

    /// A PUBLISH from `conn`; returns how many subscriptions it matched (0 if `conn` has no
    /// session, which cannot happen after an accepted CONNECT).
    pub fn publish(&mut self, conn: ConnId, msg: Message, outbox: &mut dyn Outbox) -> usize {
        self.stats.published.fetch_add(1, Relaxed);
        let Some(id) = self.conns.get(&conn).cloned() else {
            return 0;
        };
        self.route(&id, msg, outbox)
    }

    /// A PUBACK from `conn`.
    pub fn puback(&mut self, conn: ConnId, pkid: u16, outbox: &mut dyn Outbox) {
        if let Some(s) = self
            .conns
            .get(&conn)
            .and_then(|id| self.sessions.get_mut(id))
        {
            if !s.acked(pkid, outbox, &self.stats) {
                debug!(client_id = %s.client_id, pkid, "PUBACK for no message in flight.");
            }
        }
    }

    /// A SUBSCRIBE from `conn`: SUBACK through `reply`, then matching retained messages.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        pkid: u16,
        filters: Vec<SubRequest>,
        reply: impl FnOnce(Outbound),
        outbox: &mut dyn Outbox,
    ) {
        let Some(id) = self.conns.get(&conn).cloned() else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained_for = Vec::new();
        for f in filters {
            let Some(sub) = Subscription::parse(&f.filter) else {
                codes.push(SubCode::InvalidFilter);
                continue;
            };
            let opts = SubOptions {
                qos: f.qos,
                no_local: f.no_local,
                retain_as_published: f.retain_as_published,
            };
            let Some(session) = self.sessions.get_mut(&id) else {
                return;
            };
            let new = session
                .subscriptions
                .insert(f.filter.clone(), opts)
                .is_none();
            match sub {
                Subscription::Plain(filter) => {
                    self.plain
                        .entry(filter.to_owned())
                        .or_default()
                        .insert(id.clone(), opts);
                    let send = match f.retain_handling {
                        RetainHandling::OnEverySubscribe => true,
                        RetainHandling::OnNewSubscribe => new,
                        RetainHandling::Never => false,
                    };
                    if send {
                        retained_for.push((filter.to_owned(), opts.qos));
                    }
                }
                Subscription::Shared { group, filter } => {
                    let g = self
                        .shared
                        .entry((group.to_owned(), filter.to_owned()))
                        .or_default();
                    match g.members.iter_mut().find(|(m, _)| *m == id) {
                        Some(m) => m.1 = opts,
                        None => g.members.push((id.clone(), opts)),
                    }
                }
            }
            codes.push(SubCode::Granted(f.qos));
        }
        reply(Outbound::SubAck { pkid, codes });
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        for (filter, qos) in retained_for {
            for m in self
                .retained
                .values()
                .filter(|m| matches(&filter, &m.topic))
            {
                let d = Delivery {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos.min(qos),
                    retain: true,
                    dup: false,
                    pkid: 0,
                };
                if let Err(e) = session.deliver(d, self.limits.max_queued, outbox, &self.stats) {
                    count_drop(&self.stats, e, &id);
                }
            }
        }
    }

    /// An UNSUBSCRIBE from `conn`: UNSUBACK through `reply`.
    pub fn unsubscribe(
        &mut self,
        conn: ConnId,
        pkid: u16,
        filters: Vec<String>,
        reply: impl FnOnce(Outbound),
    ) {
        let Some(id) = self.conns.get(&conn).cloned() else {
            return;
        };
        let count = filters.len();
        for f in filters {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.subscriptions.remove(&f);
            }
            self.remove_subscription(&id, &f);
        }
        reply(Outbound::UnsubAck { pkid, count });
    }

    /// Housekeeping: ends expired sessions and retries sends a full connection refused.
    pub fn tick(&mut self, now: Instant, outbox: &mut dyn Outbox) {
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                s.expiry_s != u32::MAX
                    && s.gone_since.is_some_and(|t| {
                        now.duration_since(t) >= Duration::from_secs(u64::from(s.expiry_s))
                    })
            })
            .map(|s| s.client_id.clone())
            .collect();
        for id in expired {
            info!(client_id = %id, "Session expired.");
            self.end_session(&id);
        }
        for s in self.sessions.values_mut() {
            s.pump(outbox, &self.stats);
        }
    }

    fn end_session(&mut self, id: &str) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        let held = s.held() as u64;
        if held > 0 {
            self.stats.dropped_session_ended.fetch_add(held, Relaxed);
            warn!(client_id = %id, messages = held, "Session ended with undelivered messages; they are dropped.");
        }
        for f in s.subscriptions.keys() {
            self.remove_subscription(id, f);
        }
    }

    fn remove_subscription(&mut self, id: &str, sub: &str) {
        match Subscription::parse(sub) {
            Some(Subscription::Plain(f)) => {
                if let Some(m) = self.plain.get_mut(f) {
                    m.remove(id);
                    if m.is_empty() {
                        self.plain.remove(f);
                    }
                }
            }
            Some(Subscription::Shared { group, filter }) => {
                let key = (group.to_owned(), filter.to_owned());
                if let Some(g) = self.shared.get_mut(&key) {
                    g.members.retain(|(m, _)| m != id);
                    if g.members.is_empty() {
                        self.shared.remove(&key);
                    }
                }
            }
            None => {}
        }
    }

    /// Stores (retain) and delivers `msg` from client `from`; returns the subscriptions matched.
    fn route(&mut self, from: &str, msg: Message, outbox: &mut dyn Outbox) -> usize {
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.remove(&msg.topic);
            } else {
                self.retained.insert(msg.topic.clone(), msg.clone());
            }
        }
        // client id → (qos, retain flag as delivered)
        let mut targets: BTreeMap<String, (Qos, bool)> = BTreeMap::new();
        for (filter, subs) in &self.plain {
            if !matches(filter, &msg.topic) {
                continue;
            }
            for (client, o) in subs {
                if o.no_local && client == from {
                    continue;
                }
                let t = targets
                    .entry(client.clone())
                    .or_insert((Qos::AtMostOnce, false));
                t.0 = t.0.max(o.qos);
                t.1 |= o.retain_as_published && msg.retain;
            }
        }
        let mut matched = targets.len();
        let mut picks = Vec::new();
        for ((_, filter), g) in self.shared.iter_mut() {
            if !matches(filter, &msg.topic) || g.members.is_empty() {
                continue;
            }
            let n = g.members.len();
            let order = (0..n).map(|k| (g.next + k) % n);
            let ready = |i: &usize| {
                self.sessions
                    .get(&g.members[*i].0)
                    .is_some_and(Session::has_room)
            };
            let i = order.clone().find(ready).unwrap_or(g.next % n);
            g.next = (i + 1) % n;
            picks.push((g.members[i].0.clone(), g.members[i].1.qos));
            matched += 1;
        }
        let deliveries = targets
            .into_iter()
            .map(|(c, (q, r))| (c, q, r))
            .chain(picks.into_iter().map(|(c, q)| (c, q, false)));
        for (client, qos, retain) in deliveries {
            let Some(s) = self.sessions.get_mut(&client) else {
                continue;
            };
            let d = Delivery {
                topic: msg.topic.clone(),
                payload: msg.payload.clone(),
                qos: msg.qos.min(qos),
                retain,
                dup: false,
                pkid: 0,
            };
            if let Err(e) = s.deliver(d, self.limits.max_queued, outbox, &self.stats) {
                count_drop(&self.stats, e, &client);
            }
        }
        if matched == 0 {
            self.stats.unrouted.fetch_add(1, Relaxed);
        }
        matched
    }
}

fn count_drop(stats: &BrokerStats, e: Dropped, client: &str) {
    let (c, what) = match e {
        Dropped::QueueFull => (&stats.dropped_queue_full, "session queue full"),
        Dropped::Qos0 => (&stats.dropped_qos0, "QoS 0 with no room"),
        Dropped::TooLarge => (&stats.dropped_too_large, "larger than the client accepts"),
    };
    let n = c.fetch_add(1, Relaxed);
    // Log the first and then every 1000th, so a flood does not flood the log too.
    if n % 1000 == 0 {
        warn!(client_id = %client, reason = what, total = n + 1, "Message dropped for a subscriber.");
    }
}

#[cfg(test)]
mod tests {
    use super::super::session::tests::Recorder;
    use super::*;

    fn router() -> Router {
        Router::new(
            RouterLimits {
                max_inflight: 10,
                max_queued: 100,
            },
            Arc::new(BrokerStats::default()),
        )
    }

    fn req(id: &str, clean: bool, expiry: u32) -> ConnectReq {
        ConnectReq {
            version: Version::V5,
            client_id: id.into(),
            clean_start: clean,
            keep_alive: 30,
            session_expiry_s: expiry,
            receive_maximum: 100,
            max_packet_size: None,
            will: None,
            will_qos2: false,
        }
    }

    fn msg(topic: &str, n: u8) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: vec![n].into(),
            qos: Qos::AtLeastOnce,
            retain: false,
        }
    }

    fn sub(filter: &str) -> Vec<SubRequest> {
        vec![SubRequest {
            filter: filter.into(),
            qos: Qos::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnEverySubscribe,
        }]
    }

    #[test]
    fn shared_groups_take_turns_and_plain_subscribers_get_everything() {
        let (mut r, mut out, now) = (router(), Recorder::default(), Instant::now());
        for (conn, id) in [(1, "a"), (2, "b"), (3, "c")] {
            assert!(r.connect(conn, req(id, true, 0), now, |_| {}, &mut out));
        }
        r.subscribe(1, 1, sub("$share/g/x/+"), |_| {}, &mut out);
        r.subscribe(2, 1, sub("$share/g/x/+"), |_| {}, &mut out);
        r.subscribe(3, 1, sub("x/#"), |_| {}, &mut out);
        for n in 0..10 {
            assert_eq!(r.publish(3, msg("x/y", n), &mut out), 2);
        }
        assert_eq!(out.publishes(1).len(), 5);
        assert_eq!(out.publishes(2).len(), 5);
        assert_eq!(out.publishes(3).len(), 10);
        assert_eq!(r.publish(3, msg("other", 0), &mut out), 0);
        assert_eq!(r.stats.unrouted.load(Relaxed), 1);
    }

    #[test]
    fn persistent_sessions_keep_messages_and_others_end() {
        let (mut r, mut out, now) = (router(), Recorder::default(), Instant::now());
        r.connect(1, req("keep", false, 60), now, |_| {}, &mut out);
        r.connect(2, req("pub", true, 0), now, |_| {}, &mut out);
        r.subscribe(1, 1, sub("t"), |_| {}, &mut out);
        r.connection_lost(1, true, now, &mut out);
        assert_eq!(
            r.publish(2, msg("t", 7), &mut out),
            1,
            "an offline session matches"
        );
        let mut present = None;
        r.connect(
            3,
            req("keep", false, 60),
            now,
            |o| present = Some(o),
            &mut out,
        );
        assert!(matches!(
            present,
            Some(Outbound::ConnAck {
                session_present: true,
                ..
            })
        ));
        let redelivered = out.publishes(3);
        assert_eq!(redelivered[0].payload[..], [7]);
        r.puback(3, redelivered[0].pkid, &mut out);
        // Expiry: gone for longer than 60 s ends the session and its subscription.
        r.connection_lost(3, false, now, &mut out);
        r.tick(now + Duration::from_secs(61), &mut out);
        assert_eq!(r.sessions(), 1);
        assert_eq!(r.publish(2, msg("t", 8), &mut out), 0);
        assert_eq!(r.stats.dropped_session_ended.load(Relaxed), 0);
    }

    #[test]
    fn wills_go_out_on_loss_and_takeover_but_not_on_disconnect() {
        let (mut r, mut out, now) = (router(), Recorder::default(), Instant::now());
        r.connect(9, req("watch", true, 0), now, |_| {}, &mut out);
        r.subscribe(9, 1, sub("gw/status"), |_| {}, &mut out);
        let mut with_will = req("gw", true, 0);
        with_will.will = Some(Message {
            retain: true,
            ..msg("gw/status", 0)
        });
        r.connect(1, with_will.clone(), now, |_| {}, &mut out);
        r.connection_lost(1, false, now, &mut out);
        assert!(out.publishes(9).is_empty());
        r.connect(2, with_will.clone(), now, |_| {}, &mut out);
        r.connect(3, with_will, now, |_| {}, &mut out);
        assert_eq!(out.closed, vec![(2, DisconnectReason::SessionTakenOver)]);
        assert_eq!(out.publishes(9).len(), 1);
        r.connection_lost(3, true, now, &mut out);
        assert_eq!(out.publishes(9).len(), 2);
        // Retained: a new subscriber gets the will with the retain flag.
        r.connect(4, req("late", true, 0), now, |_| {}, &mut out);
        r.subscribe(4, 1, sub("gw/+"), |_| {}, &mut out);
        let got = out.publishes(4);
        assert_eq!(got.len(), 1);
        assert!(got[0].retain);
    }
}

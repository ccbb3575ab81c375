//! The ledger driven by scripted events, and a property test over random event orders.
//!
//! [`Sim`] plays the store, the connection (rumqttc writes queued publishes in order, at most
//! `window` unacked, packet ids reused cyclically like rumqttc's) and the broker around a
//! [`Ledger`], calling it the way the uplink task does. What the broker acked is known from the
//! payloads it received, independently of the ledger's bookkeeping.
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_contract::{self as contract, Compression, Encoding};
use proptest::prelude::*;

use super::*;

const GW: &str = "gw";
const REFUSED: &str = "broker refused the message: QuotaExceeded";

fn settings(window: usize, read_limit: usize, max_events: usize) -> LedgerSettings {
    LedgerSettings {
        gateway: GW.into(),
        limits: BatchLimits {
            max_events,
            max_bytes: 1 << 20,
            encoding: Encoding::Json,
            compression: Compression::None,
        },
        read_limit,
        window,
        backlog_threshold: 1_000_000,
        backlog_rate: 1_000,
        require_subscriber: true,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn progress(at: i64) -> Progress {
    Progress {
        backlog: at,
        live_from: at,
        live: at,
    }
}

fn covers(p: Progress, id: i64) -> bool {
    id <= p.backlog || (p.live_from < id && id <= p.live)
}

/// Event ids in a message (events carry `seq == id` here); none for status and outcomes. Read
/// from the JSON as is: `EventBatch::decode` would refuse the quarantined ones.
fn ids_in(topic: &str, payload: &[u8]) -> Vec<i64> {
    if !topic.ends_with("/events") {
        return Vec::new();
    }
    let b: serde_json::Value = serde_json::from_slice(payload).expect("JSON event batch");
    let events = b["events"].as_array().expect("events");
    events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect()
}

/// A publish as the connection got it.
#[derive(Debug, Clone, PartialEq)]
struct Wire {
    topic: String,
    ids: Vec<i64>,
    retain: bool,
}

struct Sim {
    ledger: Ledger<u32>,
    store: Vec<StoredEvent>,
    devices: i64,
    window: usize,
    now: Instant,
    /// Handed to the connection, not yet written.
    conn: VecDeque<Wire>,
    /// Written under a packet id, not acked.
    inflight: Vec<(u16, Wire)>,
    last_pkid: u16,
    /// Every publish handed to the connection, in order, and where each session began.
    log: Vec<Wire>,
    sessions: Vec<usize>,
    republished: usize,
    /// Event ids the broker acked or the store quarantined.
    handled: BTreeSet<i64>,
    quarantined: Vec<(Vec<i64>, String)>,
    notified: Vec<u32>,
    reads: Vec<ReadPlan>,
}

impl Sim {
    fn new(s: LedgerSettings) -> Sim {
        let now = Instant::now();
        Sim {
            window: s.window,
            ledger: Ledger::new(s, Progress::default(), now),
            store: Vec::new(),
            devices: 2,
            now,
            conn: VecDeque::new(),
            inflight: Vec::new(),
            last_pkid: 0,
            log: Vec::new(),
            sessions: Vec::new(),
            republished: 0,
            handled: BTreeSet::new(),
            quarantined: Vec::new(),
            notified: Vec::new(),
            reads: Vec::new(),
        }
    }

    fn head(&self) -> i64 {
        self.store.last().map_or(0, |e| e.id)
    }

    /// Stores `n` events after a gap of `gap` ids; `bad` ones have a time the contract refuses.
    fn ingest_with(&mut self, n: usize, gap: i64, bad: impl Fn(usize) -> bool) {
        let mut id = self.head() + gap;
        for i in 0..n {
            id += 1;
            self.store.push(StoredEvent {
                id,
                device: format!("d{}", id % self.devices),
                boot: 1,
                boot_id: 7,
                seq: id as u32,
                sensor: "t".into(),
                ts_ms: if bad(i) {
                    contract::MIN_TS_MS - 1
                } else {
                    1_000 + id
                },
                value: id as f64,
            });
        }
    }

    fn ingest(&mut self, n: usize) {
        self.ingest_with(n, 0, |_| false);
    }

    fn connect(&mut self, max_packet: Option<u32>) {
        self.sessions.push(self.log.len());
        let birth = Bytes::from_static(br#"{"state":"online"}"#);
        self.ledger
            .on_connected(max_packet, contract::status_topic(GW), birth);
        self.pump();
        self.fill();
    }

    fn pump(&mut self) {
        while let Some(p) = self.ledger.poll_publish() {
            let w = Wire {
                topic: p.topic.to_owned(),
                ids: ids_in(p.topic, p.payload),
                retain: p.retain,
            };
            let id = p.id;
            self.conn.push_back(w.clone());
            self.log.push(w);
            if self.ledger.queued(id) {
                self.republished += 1;
            }
        }
    }

    fn drain_quarantine(&mut self) {
        while let Some(q) = self.ledger.next_quarantine() {
            let (ids, reason) = (ids_in(&q.topic, &q.payload), q.reason.clone());
            let kept = self.ledger.quarantined().expect("pending");
            assert_eq!(kept.events, ids.len());
            self.handled.extend(&ids);
            self.quarantined.push((ids, reason));
        }
    }

    /// The task's fill round.
    fn fill(&mut self) {
        self.ledger.begin_fill(self.head(), self.now);
        loop {
            self.pump();
            self.drain_quarantine();
            let Some(plan) = self.ledger.next_read() else {
                break;
            };
            let events: Vec<StoredEvent> = self
                .store
                .iter()
                .filter(|e| e.id > plan.after && e.id <= plan.upto)
                .take(plan.limit)
                .cloned()
                .collect();
            self.reads.push(plan);
            self.ledger.on_read(plan, &events);
        }
    }

    /// The connection writes its oldest queued publish, if its inflight window has room.
    fn send_one(&mut self) -> bool {
        if self.inflight.len() >= self.window {
            return false;
        }
        let Some(w) = self.conn.pop_front() else {
            return false;
        };
        let max = self.window as u16 + 1;
        loop {
            self.last_pkid = self.last_pkid % max + 1;
            if !self.inflight.iter().any(|(p, _)| *p == self.last_pkid) {
                break;
            }
        }
        assert!(self.ledger.on_sent(self.last_pkid));
        self.inflight.push((self.last_pkid, w));
        self.pump();
        true
    }

    fn send_all(&mut self) {
        while self.send_one() {}
    }

    /// The broker acks the `i`-th unacked publish.
    fn ack(&mut self, i: usize) {
        let (pkid, w) = self.inflight.remove(i);
        if let Some(d) = self.ledger.on_puback(pkid) {
            // A replayed message's events are not the sim's (its payload names none).
            let events = if w.topic == "replay" { 5 } else { w.ids.len() };
            assert_eq!(d.events, events, "the PUBACK names the message written");
            self.notified.extend(d.notify);
        }
        self.handled.extend(&w.ids);
        if self.ledger.is_connected() {
            self.fill();
        }
    }

    /// Acks the unacked publish holding event `id`.
    fn ack_event(&mut self, id: i64) {
        let i = self.inflight.iter().position(|(_, w)| w.ids.contains(&id));
        self.ack(i.expect("in flight"));
    }

    fn ack_all(&mut self) {
        while !self.inflight.is_empty() || !self.conn.is_empty() {
            self.send_all();
            if !self.inflight.is_empty() {
                self.ack(0);
            }
        }
    }

    /// The broker says no subscriber took the `i`-th unacked publish.
    fn unrouted(&mut self, i: usize) -> Unrouted<u32> {
        let (pkid, _) = self.inflight.remove(i);
        self.ledger.on_unrouted(pkid, self.now)
    }

    /// The connection drops; with `refuse`, because the broker refused that unacked publish.
    fn disconnect(&mut self, refuse: Option<usize>) {
        let refused = refuse.map(|i| self.inflight.remove(i));
        let kept: Vec<u16> = self.inflight.iter().map(|(p, _)| *p).collect();
        self.conn.clear();
        self.inflight.clear();
        self.ledger
            .on_disconnect(refused.map(|_| REFUSED.to_owned()), &kept);
        self.drain_quarantine();
    }

    /// The task's timer.
    fn tick(&mut self, dt: Duration) {
        self.now += dt;
        if self.ledger.is_connected() {
            self.ledger.retry_due(self.now);
            self.pump();
            self.fill();
        }
        self.save(false);
    }

    fn save(&mut self, force: bool) {
        if let Some(p) = self.ledger.position_to_save(self.now, force) {
            self.ledger.position_saved(p, self.now);
        }
    }

    fn progress(&self) -> Progress {
        self.ledger.progress()
    }

    /// Neither the position nor the saved one covers an event that is not acked or quarantined.
    fn check(&self) {
        for p in [self.ledger.progress(), self.ledger.saved()] {
            for e in &self.store {
                assert!(
                    !covers(p, e.id) || self.handled.contains(&e.id),
                    "{p:?} covers event {} which is neither acked nor quarantined",
                    e.id
                );
            }
        }
    }

    fn logged_ids(&self, from: usize) -> Vec<Vec<i64>> {
        self.log[from..].iter().map(|w| w.ids.clone()).collect()
    }
}

/// Connected, with `events` events read (reads of 4 events over 2 devices: one chunk of two
/// messages each) and every message written.
fn all_sent(events: usize) -> Sim {
    let mut s = Sim::new(settings(8, 4, 4));
    s.ingest(events);
    s.connect(None);
    s.send_all();
    s
}

#[test]
fn pubacks_out_of_order_move_the_position_only_over_the_acked_prefix() {
    let mut s = all_sent(8);
    assert_eq!(
        s.logged_ids(0),
        [vec![], vec![1, 3], vec![2, 4], vec![5, 7], vec![6, 8]]
    );
    for id in [5, 6, 2] {
        s.ack_event(id);
        s.check();
        assert_eq!(s.progress(), progress(0), "after the PUBACK for event {id}");
    }
    s.ack_event(1);
    assert_eq!(s.progress(), progress(8));
    s.check();
}

#[test]
fn a_reconnect_republishes_unacked_messages_in_order_and_replaces_the_birth() {
    let mut s = all_sent(8);
    let old_pkids: Vec<u16> = s.inflight.iter().map(|(p, _)| *p).collect();
    s.ack_event(2);
    s.disconnect(None);
    assert!(
        s.ledger.on_puback(old_pkids[1]).is_none(),
        "a packet id of the old connection acks nothing"
    );
    s.ingest(2);
    s.tick(ms(10));
    assert_eq!(s.reads.len(), 2, "no reads while disconnected");
    let from = s.log.len();
    s.connect(None);
    let session: Vec<&Wire> = s.log[from..].iter().collect();
    assert!(session[0].retain && session[0].topic == contract::status_topic(GW));
    assert!(session[1..].iter().all(|w| !w.retain), "one birth only");
    assert_eq!(
        s.logged_ids(from + 1),
        [vec![1, 3], vec![5, 7], vec![6, 8], vec![9], vec![10]]
    );
    assert_eq!(s.republished, 3);
    s.ack_all();
    assert_eq!(s.progress(), progress(10));
    s.check();
}

#[test]
fn a_message_over_the_broker_limit_is_quarantined_and_the_position_moves() {
    let mut s = Sim::new(settings(8, 3, 3));
    s.ingest(3); // d1: 1, 3; d0: 2
    let one = batch::batches(GW, &s.store[1..2], &settings(1, 1, 1).limits);
    let fits = one[0].payload.len() + one[0].topic.len() + PUBLISH_OVERHEAD;
    s.connect(Some(fits as u32));
    assert_eq!(s.logged_ids(0), [vec![], vec![2]]);
    assert_eq!(
        s.quarantined,
        [(
            vec![1, 3],
            format!("larger than the broker's maximum packet size ({fits} bytes)")
        )]
    );
    assert_eq!(s.progress(), progress(0), "event 2 is not acked yet");
    s.ack_all();
    assert_eq!(s.progress(), progress(3));
    s.check();
}

#[test]
fn the_message_the_broker_refused_is_quarantined_and_the_rest_republished() {
    let mut s = all_sent(8);
    let refused = s.inflight.iter().position(|(_, w)| w.ids == [2, 4]);
    s.disconnect(refused);
    assert_eq!(s.quarantined, [(vec![2, 4], REFUSED.to_owned())]);
    let from = s.log.len();
    s.connect(None);
    assert_eq!(
        s.logged_ids(from),
        [vec![], vec![1, 3], vec![5, 7], vec![6, 8]]
    );
    s.ack_all();
    assert_eq!(s.progress(), progress(8));
    s.check();
}

#[test]
fn a_refusal_that_names_no_single_message_quarantines_nothing() {
    let mut s = all_sent(4);
    // Several written messages missing from the connection's list: which one it was is unknown.
    s.ledger.on_disconnect(Some(REFUSED.into()), &[]);
    assert!(s.ledger.next_quarantine().is_none());
    assert_eq!(s.ledger.unacked(), 2, "both stay, the birth is dropped");
}

#[test]
fn events_the_contract_refuses_are_quarantined_and_the_rest_of_their_read_goes_out() {
    let mut s = Sim::new(settings(8, 6, 6));
    s.devices = 1;
    s.ingest_with(6, 0, |i| i == 2 || i == 4);
    s.connect(None);
    assert_eq!(s.quarantined.len(), 1);
    assert_eq!(s.quarantined[0].0, [3, 5]);
    assert!(s.quarantined[0]
        .1
        .contains("2 stored event(s), e.g. seq 3: ts_ms"));
    assert_eq!(s.logged_ids(0), [vec![], vec![1, 2, 4, 6]]);
    s.ack_all();
    assert_eq!(s.progress(), progress(6));
    s.check();
}

#[test]
fn a_full_window_stops_reads_until_a_puback() {
    let mut s = Sim::new(settings(4, 2, 2));
    s.devices = 1;
    s.ingest(20);
    s.connect(None);
    assert_eq!(s.reads.len(), 3, "birth + 3 messages fill a window of 4");
    assert_eq!(s.ledger.next_read(), None);
    s.tick(ms(100));
    assert_eq!(s.reads.len(), 3);
    s.send_all();
    s.ack_event(1);
    assert_eq!(s.reads.len(), 4, "one PUBACK, one read");
    assert_eq!(s.ledger.unacked(), 4);
    s.check();
}

#[test]
fn a_backlog_splits_off_and_drains_at_its_rate_while_live_data_goes_first() {
    let rate = 100;
    let mut s = Sim::new(LedgerSettings {
        backlog_threshold: 20,
        backlog_rate: rate,
        ..settings(8, 10, 10)
    });
    s.devices = 1;
    s.ingest(1_000); // an outage's worth
    s.connect(None);
    assert!(s.ledger.has_backlog());
    assert!(s.reads.is_empty(), "no tokens yet, and nothing live");
    let start = s.now;
    for round in 0..40 {
        s.ingest(3);
        s.tick(ms(50));
        let live: Vec<i64> = (1_001 + 3 * round..=s.head()).collect();
        assert!(
            live.iter()
                .all(|id| s.log.iter().any(|w| w.ids.contains(id))),
            "round {round}: live events go out at once"
        );
        s.send_all();
        while !s.inflight.is_empty() {
            s.ack(0);
        }
        s.check();
    }
    let backlog_read: usize = s
        .reads
        .iter()
        .filter(|p| p.stream == StreamKind::Backlog)
        .map(|p| {
            s.store
                .iter()
                .filter(|e| e.id > p.after && e.id <= p.upto)
                .take(p.limit)
                .count()
        })
        .sum();
    let expected = (s.now - start).as_secs_f64() * rate as f64;
    assert!(
        (backlog_read as f64 - expected).abs() <= 10.0,
        "{backlog_read} backlog events read in {:?} at {rate}/s",
        s.now - start
    );
    assert_eq!(s.progress().live, s.head());
    assert!(s.progress().backlog < 1_000);
}

#[test]
fn backlog_reads_use_at_most_half_the_window() {
    let mut s = Sim::new(LedgerSettings {
        backlog_threshold: 5,
        backlog_rate: 1_000_000,
        ..settings(8, 2, 2)
    });
    s.devices = 1;
    s.ingest(100);
    s.connect(None);
    s.tick(ms(100));
    let backlog = s
        .reads
        .iter()
        .filter(|p| p.stream == StreamKind::Backlog)
        .count();
    assert_eq!(
        backlog, 4,
        "window 8: four backlog messages, then live data gets the rest"
    );
    s.ingest(20);
    s.tick(ms(1));
    assert_eq!(s.ledger.unacked(), 8, "live reads fill the window");
    s.check();
}

#[test]
fn unrouted_event_messages_are_held_and_published_again_later() {
    let mut s = Sim::new(settings(8, 4, 4));
    s.devices = 1;
    s.ingest(4);
    s.connect(None);
    s.send_all();
    assert!(matches!(s.unrouted(1), Unrouted::Held { first: true, .. }));
    assert!(
        matches!(s.unrouted(0), Unrouted::Delivered(_)),
        "the birth needs no subscriber"
    );
    assert_eq!(s.progress(), progress(0));
    let from = s.log.len();
    s.tick(ms(400));
    assert_eq!(s.log.len(), from, "not before the retry delay");
    s.tick(ms(100));
    assert_eq!(s.logged_ids(from), [vec![1, 2, 3, 4]]);
    assert_eq!(s.republished, 0, "a retry is no republish");
    s.ack_all();
    assert_eq!(s.progress(), progress(4));

    let mut s = Sim::new(LedgerSettings {
        require_subscriber: false,
        ..settings(8, 4, 4)
    });
    s.ingest(4);
    s.connect(None);
    s.send_all();
    while !s.inflight.is_empty() {
        assert!(matches!(s.unrouted(0), Unrouted::Delivered(_)));
    }
    assert_eq!(s.progress(), progress(4));
}

#[test]
fn at_most_publish_queue_messages_wait_in_the_connection() {
    let mut s = Sim::new(settings(1_000, 300, 1));
    s.devices = 1;
    s.ingest(300);
    s.connect(None);
    assert_eq!(s.ledger.unacked(), 301);
    assert_eq!(s.conn.len(), PUBLISH_QUEUE);
    s.send_one();
    assert_eq!(s.conn.len(), PUBLISH_QUEUE, "each write makes room for one");
    s.ack_all();
    let sent: Vec<i64> = s.log.iter().flat_map(|w| w.ids.clone()).collect();
    assert_eq!(sent, (1..=300).collect::<Vec<_>>(), "in order");
    assert_eq!(s.progress(), progress(300));
}

#[test]
fn nothing_is_read_or_published_while_disconnected() {
    let mut s = Sim::new(settings(8, 4, 4));
    s.ingest(4);
    s.fill();
    s.ledger
        .push("outcome".into(), Bytes::from_static(b"{}"), 0, Some(7));
    assert!(s.ledger.poll_publish().is_none());
    assert!(s.reads.is_empty());
    s.connect(None);
    assert_eq!(s.log[1].topic, "outcome", "after the birth");
    s.ack_all();
    assert_eq!(s.notified, [7]);
    assert_eq!(s.progress(), progress(4));
}

#[test]
fn replayed_events_are_held_when_unrouted_and_handed_back_on_their_puback_only() {
    let mut s = Sim::new(settings(8, 4, 4));
    s.connect(None);
    s.ledger
        .push("replay".into(), Bytes::from_static(b"[..]"), 5, Some(9));
    s.ledger
        .push("outcome".into(), Bytes::from_static(b"{}"), 0, Some(4));
    s.send_all();
    // inflight: birth, replay, outcome
    assert!(
        matches!(s.unrouted(1), Unrouted::Held { first: true, .. }),
        "replayed events need a subscriber like forwarded ones"
    );
    assert!(
        matches!(
            s.unrouted(1),
            Unrouted::Delivered(Delivered {
                notify: Some(4),
                ..
            })
        ),
        "an outcome does not"
    );
    s.tick(ms(500));
    s.ack_all();
    assert!(s.notified.contains(&9), "{:?}", s.notified);
    assert_eq!(
        s.progress(),
        progress(0),
        "a replay never moves the position"
    );
}

#[test]
fn an_outcome_is_handed_back_on_its_puback_and_holds_no_position() {
    let mut s = Sim::new(settings(8, 4, 4));
    s.connect(None);
    s.ledger
        .push("outcome".into(), Bytes::from_static(b"{}"), 0, Some(3));
    s.pump();
    assert!(
        !s.ledger.has_events_in_flight(),
        "shutdown waits for events only"
    );
    s.ingest(1);
    s.tick(ms(1));
    assert!(s.ledger.has_events_in_flight());
    s.send_all();
    s.ack(1);
    assert_eq!(s.notified, [3]);
    assert_eq!(s.progress(), progress(0));
    s.ack_all();
    assert_eq!(s.progress(), progress(1));
}

#[test]
fn saves_are_proposed_when_the_position_moved_at_most_every_interval_unless_forced() {
    let mut s = Sim::new(settings(8, 4, 4));
    assert_eq!(s.ledger.position_to_save(s.now + ms(500), true), None);
    s.ingest(4);
    s.connect(None);
    s.ack_all();
    assert_eq!(s.ledger.position_to_save(s.now + ms(99), false), None);
    assert_eq!(s.ledger.position_to_save(s.now, true), Some(progress(4)));
    s.now += SAVE_INTERVAL;
    s.save(false);
    assert_eq!(s.ledger.saved(), progress(4));
    assert_eq!(s.ledger.position_to_save(s.now + ms(500), false), None);
}

#[test]
fn a_saved_backlog_resumes_as_a_backlog() {
    let now = Instant::now();
    let mut l: Ledger<()> = Ledger::new(
        settings(8, 4, 4),
        Progress {
            backlog: 5,
            live_from: 50,
            live: 70,
        },
        now,
    );
    l.on_connected(None, "status".into(), Bytes::new());
    l.begin_fill(100, now);
    let p = l.next_read().unwrap();
    assert_eq!((p.stream, p.after), (StreamKind::Live, 70));
    assert_eq!(l.unread(), 30 + 45);
}

#[derive(Debug, Clone)]
enum Op {
    Ingest { n: usize, gap: i64, bad: bool },
    Connect(u8),
    Disconnect,
    Refuse(usize),
    Send(usize),
    Ack(usize),
    Unrouted(usize),
    Tick(u64),
    Outcome,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..12usize, 0..3i64, any::<bool>()).prop_map(|(n, gap, bad)| Op::Ingest { n, gap, bad }),
        2 => (0..3u8).prop_map(Op::Connect),
        1 => Just(Op::Disconnect),
        1 => any::<usize>().prop_map(Op::Refuse),
        4 => (1..6usize).prop_map(Op::Send),
        5 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Unrouted),
        2 => (0..300u64).prop_map(Op::Tick),
        1 => Just(Op::Outcome),
    ]
}

proptest! {
    /// Random interleavings of reads, publishes, PUBACKs in any order, unrouted PUBACKs,
    /// refusals, too-big messages, disconnects and reconnects, with backlog splits and the rate
    /// limit: the position never covers an event that is neither acked nor quarantined; each
    /// session starts with one birth; once everything is acked the position is at the head.
    #[test]
    fn random_event_orders_never_move_the_position_past_an_unhandled_event(
        window in 2..10usize,
        read_limit in 1..8usize,
        max_events in 1..4usize,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut s = Sim::new(LedgerSettings {
            backlog_threshold: 15,
            backlog_rate: 200,
            ..settings(window, read_limit, max_events)
        });
        s.ingest(1);
        let one = batch::batches(GW, &s.store, &settings(1, 1, 1).limits);
        let small = (one[0].payload.len() + one[0].topic.len() + PUBLISH_OVERHEAD + 20) as u32;
        for op in ops {
            match op {
                Op::Ingest { n, gap, bad } => s.ingest_with(n, gap, |i| bad && i == n / 2),
                Op::Connect(mp) if !s.ledger.is_connected() => {
                    s.connect([None, Some(1 << 20), Some(small)][usize::from(mp)]);
                }
                Op::Connect(_) => {}
                Op::Disconnect => s.disconnect(None),
                Op::Refuse(i) if !s.inflight.is_empty() => {
                    let i = i % s.inflight.len();
                    s.disconnect(Some(i));
                }
                Op::Refuse(_) => {}
                Op::Send(n) => (0..n).for_each(|_| { s.send_one(); }),
                Op::Ack(i) if !s.inflight.is_empty() => s.ack(i % s.inflight.len()),
                Op::Ack(_) => {}
                Op::Unrouted(i) if !s.inflight.is_empty() => {
                    s.unrouted(i % s.inflight.len());
                }
                Op::Unrouted(_) => {}
                Op::Tick(t) => s.tick(ms(t)),
                Op::Outcome => {
                    s.ledger.push("outcome".into(), Bytes::from_static(b"{}"), 0, Some(1));
                    s.pump();
                }
            }
            s.check();
        }
        // Settle: a good connection, every PUBACK in order, time passing for the backlog.
        for _ in 0..100_000 {
            if s.progress() == progress(s.head()) && !s.ledger.has_events_in_flight() {
                break;
            }
            if !s.ledger.is_connected() {
                s.connect(None);
            }
            s.send_all();
            if s.inflight.is_empty() {
                s.tick(ms(100));
            } else {
                s.ack(0);
            }
            s.check();
        }
        prop_assert_eq!(s.progress(), progress(s.head()));
        prop_assert!(!s.ledger.has_events_in_flight());
        for e in &s.store {
            prop_assert!(s.handled.contains(&e.id), "event {} never acked nor quarantined", e.id);
        }
        for (i, &start) in s.sessions.iter().enumerate() {
            let end = s.sessions.get(i + 1).copied().unwrap_or(s.log.len());
            let births = s.log[start..end].iter().filter(|w| w.retain).count();
            prop_assert!(s.log[start].retain && births == 1, "session {} births {}", i, births);
        }
    }
}

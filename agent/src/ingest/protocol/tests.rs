//! The gateway side of a session driven by scripted events: frames in, actions and bytes out.
//! One file over 700 lines: the scripted tests and the property share the bench, the decoder of
//! what the link writes and the model of the store writer.
use std::collections::HashMap;

use super::*;
use crate::store::writer::LINK_BUDGET;
use ferry_wire::{Acceptor, Decoder, Heartbeat, Sample, MAX_SAMPLES_PER_FRAME};
use proptest::prelude::*;

/// UTC milliseconds at which the test's time 0 arrives.
const UTC0: i64 = 1_700_000_000_000;
const OFFLINE_AFTER: Duration = Duration::from_secs(1);
/// The store's ids for the test device.
const DEVICE: i64 = 3;

/// A gateway → device message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Welcome {
        boot_id: u32,
        utc_ms: u64,
        next_seq: u32,
    },
    Ack {
        boot_id: u32,
        next_seq: u32,
    },
    Command {
        id: u32,
    },
    HelloRequest,
}

fn decode(bytes: &[u8]) -> Vec<Sent> {
    let mut dec: Decoder = Decoder::new();
    let mut input = bytes;
    let mut out = Vec::new();
    while let Some(r) = dec.feed(&mut input) {
        out.push(match r.expect("the link sends valid frames") {
            Message::Welcome(w) => Sent::Welcome {
                boot_id: w.boot_id,
                utc_ms: w.utc_ms,
                next_seq: w.next_seq,
            },
            Message::Ack(a) => Sent::Ack {
                boot_id: a.boot_id,
                next_seq: a.next_seq,
            },
            Message::Command(c) => Sent::Command { id: c.id },
            Message::HelloRequest => Sent::HelloRequest,
            other => panic!("the link sent a device message: {other:?}"),
        });
    }
    out
}

struct Bench {
    p: LinkProtocol,
    metrics: Arc<Metrics>,
    t0: Instant,
    /// Milliseconds since `t0`.
    ms: u64,
}

impl Bench {
    fn new() -> Bench {
        let metrics = Arc::new(Metrics::default());
        let t0 = Instant::now();
        Bench {
            p: LinkProtocol::new("tcp:test".into(), metrics.clone(), OFFLINE_AFTER, t0),
            metrics,
            t0,
            ms: 0,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.ms)
    }

    /// A frame arriving now; the actions it caused.
    fn feed(&mut self, m: DeviceMessage) -> Vec<Action> {
        let (now, arrived) = (self.now(), UTC0 + self.ms as i64);
        self.p.frame(now, arrived, Frame::Message(m));
        self.actions()
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.p.poll_action()).collect()
    }

    /// What the link writes now.
    fn sent(&mut self) -> Vec<Sent> {
        let s = decode(self.p.outgoing());
        self.p.clear_outgoing();
        s
    }

    /// A Hello of `boot` registered by the store at `next_seq`; the actions after the Welcome.
    fn connect(&mut self, boot: u32, next_seq: u32) -> Vec<Action> {
        let a = self.feed(hello(boot, 1_000));
        assert!(matches!(a.as_slice(), [Action::Register { .. }]), "{a:?}");
        self.p.welcomed(Welcomed {
            device: DEVICE,
            boot_no: i64::from(boot),
            next_seq,
        });
        self.actions()
    }

    fn commit(&mut self, boot: u32, next_seq: u32) {
        self.p.committed(
            self.now(),
            AckState {
                device: DEVICE,
                boot_id: boot,
                next_seq,
                nudges: 0,
            },
        );
    }
}

/// What the link writes for one ack.
fn ack(boot_id: u32, next_seq: u32) -> Vec<Sent> {
    vec![Sent::Ack { boot_id, next_seq }]
}

fn hello(boot_id: u32, ticks: u64) -> DeviceMessage {
    DeviceMessage::Hello {
        device_id: "dev-1".into(),
        firmware: "1.0".into(),
        boot_id,
        tick_hz: 1000,
        ticks,
        next_seq: 0,
        sensors: vec![(0, "t".into(), "C".into(), 1000)],
    }
}

/// `n` samples from `first_seq`, one per 10 ticks from `ticks`.
fn samples(oldest: u32, first_seq: u32, n: usize, ticks: u64) -> DeviceMessage {
    DeviceMessage::Samples {
        oldest,
        first_seq,
        samples: (0..n)
            .map(|i| Sample {
                ticks: ticks + 10 * i as u64,
                sensor: 0,
                value: i as f32,
            })
            .collect(),
    }
}

fn heartbeat(ticks: u64) -> DeviceMessage {
    DeviceMessage::Heartbeat(Heartbeat {
        ticks,
        dropped: 1,
        ring_depth: 2,
        read_errors: 3,
    })
}

fn result(id: u32) -> DeviceMessage {
    DeviceMessage::CommandResult {
        id,
        status: CommandStatus::Ok,
        data: vec![9],
    }
}

/// The one samples operation among `actions`.
fn samples_op(actions: Vec<Action>) -> SamplesOp {
    let mut ops: Vec<SamplesOp> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Store(Op::Samples(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(ops.len(), 1);
    ops.remove(0)
}

fn presence(a: &Action) -> Option<bool> {
    match a {
        Action::Store(Op::Presence {
            device,
            link,
            online,
        }) => {
            assert_eq!((*device, link.as_str()), (DEVICE, "tcp:test"));
            Some(*online)
        }
        _ => None,
    }
}

#[test]
fn a_hello_is_registered_then_welcomed_with_the_committed_position_and_its_arrival_time() {
    let mut b = Bench::new();
    b.ms = 250;
    let a = b.feed(hello(0x1234_5678, 1_500));
    match a.as_slice() {
        [Action::Register {
            device_id,
            firmware,
            boot_id,
            tick_hz,
            sensors,
        }] => {
            assert_eq!((device_id.as_str(), firmware.as_str()), ("dev-1", "1.0"));
            assert_eq!((*boot_id, *tick_hz, sensors.len()), (0x1234_5678, 1000, 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        b.sent().is_empty(),
        "no Welcome before the store registered the boot"
    );
    assert!(b.p.session().is_none() && !b.p.online());
    b.ms = 400; // the store took its time: the Welcome still carries the Hello's arrival
    b.p.welcomed(Welcomed {
        device: DEVICE,
        boot_no: 2,
        next_seq: 40,
    });
    assert_eq!(
        b.sent(),
        vec![Sent::Welcome {
            boot_id: 0x1234_5678,
            utc_ms: (UTC0 + 250) as u64,
            next_seq: 40
        }]
    );
    match b.actions().as_slice() {
        [Action::Attach { device_id, boot_id }] => {
            assert_eq!((device_id.as_str(), *boot_id), ("dev-1", 0x1234_5678));
        }
        other => panic!("{other:?}"),
    }
    let s = b.p.session().unwrap();
    assert_eq!((s.device, s.boot_no, s.boot_id), (DEVICE, 2, 0x1234_5678));
    assert_eq!(s.utc_ms(1_500), Some(UTC0 + 250), "anchored at the Hello");
    assert!(b.p.online());
    assert_eq!(Metrics::get(&b.metrics.frames_ok), 1);
}

#[test]
fn a_hello_the_store_cannot_register_leaves_the_link_without_a_session() {
    let mut b = Bench::new();
    b.feed(hello(7, 0));
    b.p.not_welcomed();
    b.p.welcomed(Welcomed {
        device: DEVICE,
        boot_no: 1,
        next_seq: 0,
    });
    assert!(b.sent().is_empty(), "a late answer welcomes nothing");
    assert!(b.actions().is_empty());
    assert!(b.p.session().is_none());
    assert!(b.feed(samples(0, 0, 1, 0)).is_empty());
    assert_eq!(b.sent(), vec![Sent::HelloRequest]);
}

#[test]
fn frames_before_a_hello_are_ignored_and_answered_with_hello_requests_at_most_every_200_ms() {
    let mut b = Bench::new();
    let mut requests = Vec::new();
    for (ms, m) in [
        (0, samples(0, 0, 3, 0)),
        (50, heartbeat(5)),
        (199, result(1)),
        (200, samples(0, 0, 3, 0)),
        (350, samples(0, 3, 3, 0)),
        (401, heartbeat(9)),
    ] {
        b.ms = ms;
        assert!(
            b.feed(m).is_empty(),
            "nothing reaches the store or the actor"
        );
        if !b.sent().is_empty() {
            requests.push(ms);
        }
    }
    assert_eq!(requests, vec![0, 200, 401]);
    assert_eq!(
        Metrics::get(&b.metrics.frames_ok),
        6,
        "they were valid frames"
    );
}

#[test]
fn samples_become_rows_at_utc_from_the_latest_anchor() {
    let mut b = Bench::new();
    b.connect(1, 0); // Hello at 1,000 ticks, arrived at UTC0
    let op = samples_op(b.feed(samples(0, 0, 3, 900)));
    assert_eq!((op.device, op.boot_no, op.boot_id), (DEVICE, 1, 1));
    assert_eq!((op.oldest, op.first_seq), (0, 0));
    let ts: Vec<i64> = op.rows.iter().map(|r| r.ts_ms - UTC0).collect();
    assert_eq!(ts, vec![-100, -90, -80], "taken before the Hello");
    assert_eq!(op.rows[2].value, 2.0);
    assert!(op.out_of_range.is_empty() && op.quarantine.is_none());
    // A heartbeat 10 s of ticks later arrives 10.05 s later: later samples follow the new anchor.
    b.ms = 10_050;
    match b.feed(heartbeat(11_000)).as_slice() {
        [Action::Store(Op::Heartbeat { device, hb })] => {
            assert_eq!((*device, hb.ticks, hb.dropped), (DEVICE, 11_000, 1));
        }
        other => panic!("{other:?}"),
    }
    let op = samples_op(b.feed(samples(0, 3, 1, 11_010)));
    assert_eq!(op.rows[0].ts_ms, UTC0 + 10_060);
}

#[test]
fn a_sample_out_of_time_range_is_marked_and_its_frame_quarantined() {
    let mut b = Bench::new();
    b.connect(1, 0);
    let frame = DeviceMessage::Samples {
        oldest: 5,
        first_seq: 6,
        samples: vec![
            Sample {
                ticks: 1_000,
                sensor: 0,
                value: 1.0,
            },
            Sample {
                ticks: u64::MAX,
                sensor: 1,
                value: 2.0,
            },
        ],
    };
    let op = samples_op(b.feed(frame));
    assert_eq!(op.out_of_range, vec![1]);
    assert_eq!(op.rows.len(), 2, "its seq is still consumed");
    let (link, raw) = op.quarantine.unwrap();
    assert_eq!(link, "tcp:test");
    let mut dec: Decoder = Decoder::new();
    let decoded = dec
        .feed(&mut raw.as_slice())
        .map(|r| r.map(|m| DeviceMessage::from_message(&m)));
    match decoded {
        Some(Ok(Some(DeviceMessage::Samples {
            oldest,
            first_seq,
            samples,
        }))) => {
            assert_eq!((oldest, first_seq, samples.len()), (5, 6, 2));
            assert_eq!(samples[1].ticks, u64::MAX);
        }
        other => panic!("{other:?}"),
    };
}

#[test]
fn duplicates_holes_and_reordered_frames_go_to_the_store_as_they_came() {
    let mut b = Bench::new();
    b.connect(1, 0);
    assert!(matches!(b.sent().as_slice(), [Sent::Welcome { .. }]));
    // The writer's per-boot acceptor decides; the link filters nothing.
    let mut got = Vec::new();
    for (oldest, first, n) in [(0, 0, 4), (0, 0, 4), (0, 8, 4), (0, 4, 4), (2, 2, 10)] {
        let op = samples_op(b.feed(samples(oldest, first, n, 1_000)));
        got.push((op.oldest, op.first_seq, op.rows.len()));
    }
    assert_eq!(
        got,
        vec![(0, 0, 4), (0, 0, 4), (0, 8, 4), (0, 4, 4), (2, 2, 10)]
    );
    assert!(b.sent().is_empty(), "and acks nothing itself");
}

#[test]
fn acks_follow_only_the_committed_position_of_the_sessions_boot() {
    let mut b = Bench::new();
    b.commit(1, 4);
    assert!(b.sent().is_empty(), "no session: nothing to ack");
    b.connect(1, 0);
    b.sent();
    b.commit(1, 4);
    assert_eq!(b.sent(), ack(1, 4));
    b.commit(2, 9);
    b.p.committed(
        b.now(),
        AckState {
            device: DEVICE + 1,
            boot_id: 1,
            next_seq: 9,
            nudges: 0,
        },
    );
    assert!(
        b.sent().is_empty(),
        "another boot's or device's position is not acked"
    );
    // A hole: the writer nudges without moving; the same position is acked again at once, so
    // the device's fast retransmission fills the hole.
    b.p.committed(
        b.now(),
        AckState {
            device: DEVICE,
            boot_id: 1,
            next_seq: 4,
            nudges: 1,
        },
    );
    assert_eq!(b.sent(), ack(1, 4));
    assert_eq!(Metrics::get(&b.metrics.acks_sent), 2);
}

#[test]
fn a_new_boot_moves_the_session_and_the_old_boots_positions_are_not_acked() {
    let mut b = Bench::new();
    b.connect(1, 0);
    let old = samples_op(b.feed(samples(0, 0, 2, 1_000)));
    b.connect(2, 0);
    b.sent();
    b.commit(1, 2);
    assert!(b.sent().is_empty());
    let new = samples_op(b.feed(samples(0, 0, 2, 1_000)));
    assert_eq!((old.boot_id, new.boot_id, new.boot_no), (1, 2, 2));
    b.commit(2, 2);
    assert_eq!(b.sent(), ack(2, 2));
}

#[test]
fn the_budget_holds_decoding_until_a_commit_releases_samples() {
    let mut b = Bench::new();
    b.connect(1, 0);
    let mut ops = Vec::new();
    let mut seq = 0;
    while b.p.has_room() {
        ops.push(samples_op(b.feed(samples(0, seq, 32, 1_000))));
        seq += 32;
    }
    assert_eq!(ops.len(), LINK_BUDGET / 32);
    assert_eq!(b.p.budget().waiting(), LINK_BUDGET);
    // The writer commits the first frame and drops its token.
    drop(ops.remove(0));
    assert!(b.p.has_room());
    assert_eq!(b.p.budget().waiting(), LINK_BUDGET - 32);
    // Frames without samples' tokens (heartbeats) never count.
    b.feed(heartbeat(2_000));
    assert_eq!(b.p.budget().waiting(), LINK_BUDGET - 32);
    drop(ops);
    assert_eq!(b.p.budget().waiting(), 0);
}

#[test]
fn a_command_is_written_once_per_session_and_its_result_is_routed() {
    let mut b = Bench::new();
    b.connect(1, 0);
    b.sent();
    let c = DeviceCommand {
        wire_id: 7,
        spec: CommandSpec::Reboot,
    };
    b.p.command(&c);
    b.p.command(&c);
    assert_eq!(
        b.sent(),
        vec![Sent::Command { id: 7 }],
        "once in this session"
    );
    match b.feed(result(7)).as_slice() {
        [Action::CommandResult {
            device_id,
            id,
            status,
            data,
        }] => {
            assert_eq!(
                (device_id.as_str(), *id, *status),
                ("dev-1", 7, CommandStatus::Ok)
            );
            assert_eq!(data, &vec![9]);
        }
        other => panic!("{other:?}"),
    }
    // A result for an id this session never wrote still goes to the actor (it may be the
    // answer to a write of the previous session): the actor decides.
    assert_eq!(b.feed(result(99)).len(), 1);
    // A new session (every Hello, even of the same boot) writes it again.
    b.connect(1, 0);
    b.sent();
    b.p.command(&c);
    assert_eq!(b.sent(), vec![Sent::Command { id: 7 }]);
}

/// PROTOCOL.md section 8, vectors `command_set_interval` and `command_opaque`.
#[test]
fn commands_are_framed_as_the_protocol_says() {
    let mut b = Bench::new();
    b.p.command(&DeviceCommand {
        wire_id: 7,
        spec: CommandSpec::SetInterval {
            sensor: 2,
            interval_ms: 250,
        },
    });
    b.p.command(&DeviceCommand {
        wire_id: 10,
        spec: CommandSpec::Opaque {
            hex: "00FF10".into(),
        },
    });
    let golden: &[u8] = &[
        0x00, 0x04, 0x01, 0x06, 0x07, 0x08, 0x02, 0xfa, 0x01, 0x08, 0x06, 0xb2, 0xc5, 0x00, //
        0x00, 0x06, 0x01, 0x06, 0x0a, 0x03, 0x03, 0x07, 0xff, 0x10, 0x83, 0xf1, 0x45, 0xb0, 0x00,
    ];
    assert_eq!(b.p.outgoing(), golden);
}

#[test]
fn a_silent_device_goes_offline_comes_back_with_its_next_frame_and_its_link_closes() {
    let mut b = Bench::new();
    b.connect(1, 0);
    b.ms = 999;
    assert_eq!(b.p.tick(b.now()), None);
    assert!(b.actions().is_empty());
    b.ms = 1_000;
    assert_eq!(b.p.tick(b.now()), None);
    let a = b.actions();
    assert_eq!(
        a.iter().map(presence).collect::<Vec<_>>(),
        vec![Some(false)]
    );
    assert!(!b.p.online());
    b.ms = 1_500;
    let a = b.feed(heartbeat(2_500));
    assert_eq!(
        presence(&a[0]),
        Some(true),
        "online again before its heartbeat is stored"
    );
    assert!(matches!(a[1], Action::Store(Op::Heartbeat { .. })));
    b.ms = 1_500 + 2_999;
    assert_eq!(b.p.tick(b.now()), None);
    b.actions();
    b.ms = 1_500 + 3_000;
    assert_eq!(b.p.tick(b.now()), Some("silent"));
    b.p.close();
    assert!(b.actions().is_empty(), "already offline");
}

#[test]
fn closing_marks_an_online_device_offline_and_a_link_without_a_session_reports_nothing() {
    let mut b = Bench::new();
    b.p.close();
    assert!(b.actions().is_empty());
    b.connect(1, 0);
    b.p.close();
    assert_eq!(
        b.actions().iter().map(presence).collect::<Vec<_>>(),
        vec![Some(false)]
    );
}

#[test]
fn rejected_frames_are_counted_and_quarantined_and_unexpected_ones_counted() {
    let mut b = Bench::new();
    b.p.frame(
        b.now(),
        UTC0,
        Frame::Rejected {
            reason: RejectReason::BadCrc,
            raw: vec![1, 2, 3],
            len: 40,
        },
    );
    b.p.frame(b.now(), UTC0, Frame::Unexpected);
    match b.actions().as_slice() {
        [Action::Store(Op::Quarantine {
            link,
            reason,
            len,
            raw,
        })] => {
            assert_eq!(
                (link.as_str(), reason.as_ref(), *len),
                ("tcp:test", "bad_crc", 40)
            );
            assert_eq!(raw, &vec![1, 2, 3]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.metrics.rejected_total(), 1);
    assert_eq!(Metrics::get(&b.metrics.frames_unexpected), 1);
    assert_eq!(Metrics::get(&b.metrics.frames_ok), 0);
    assert!(
        b.sent().is_empty(),
        "no HelloRequest for what is not a device message"
    );
}

#[test]
fn the_ack_delay_is_observed_once_per_frame_an_ack_covers() {
    let mut b = Bench::new();
    b.connect(1, 0);
    for first in [0, 4, 8] {
        drop(b.feed(samples(0, first, 4, 1_000)));
    }
    let counts = |b: &Bench| crate::metrics::cumulative_counts(&b.metrics.ack_delay);
    let observed = |b: &Bench| counts(b).last().expect("+Inf").1;
    b.ms = 3; // 3 ms later
    b.commit(1, 6);
    assert_eq!(observed(&b), 1, "the frame 0..4, not 4..8");
    b.commit(1, 12);
    assert_eq!(observed(&b), 3);
    b.commit(1, 12);
    assert_eq!(observed(&b), 3, "each frame once");
    let le = |want: &str| counts(&b).into_iter().find(|(le, _)| le == want).unwrap().1;
    assert_eq!(le("0.005") - le("0.002"), 3, "in the 2..5 ms bucket");
}

/// The store writer as the link sees it: one acceptor per boot, positions published only after a
/// commit (and at once, unmoved, for a hole), budget tokens kept until the commit.
#[derive(Default)]
struct ModelWriter {
    /// Per boot id: the batch's acceptor and the committed position.
    boots: HashMap<u32, (Acceptor, u32)>,
    /// Slots to publish into at the next commit, and the tokens the batch holds.
    publish: Vec<(AckSlot, u32)>,
    held: Vec<SamplesOp>,
}

impl ModelWriter {
    fn committed(&self, boot: u32) -> u32 {
        self.boots.get(&boot).map_or(0, |b| b.1)
    }

    fn apply(&mut self, op: SamplesOp) {
        let st = self
            .boots
            .entry(op.boot_id)
            .or_insert((Acceptor::new(0), 0));
        let a = st.0.accept(op.oldest, op.first_seq, op.rows.len());
        if a.hole {
            let committed = st.1;
            op.ack.send_modify(|s| {
                *s = AckState {
                    device: op.device,
                    boot_id: op.boot_id,
                    next_seq: committed,
                    nudges: s.nudges.wrapping_add(1),
                }
            });
        }
        if a.keep.is_empty() {
            if a.duplicates > 0 {
                self.publish.push((op.ack.clone(), op.boot_id));
            }
            return;
        }
        self.publish.push((op.ack.clone(), op.boot_id));
        self.held.push(op);
    }

    fn commit(&mut self) {
        for st in self.boots.values_mut() {
            st.1 = st.0.next();
        }
        for (slot, boot) in self.publish.drain(..) {
            let next_seq = self.boots[&boot].1;
            slot.send_modify(|s| {
                s.device = DEVICE;
                s.boot_id = boot;
                s.next_seq = next_seq;
            });
        }
        self.held.clear();
    }
}

#[derive(Debug, Clone)]
enum Event {
    Hello { boot: u32 },
    Samples { first: u32, back: u32, n: usize },
    Commit,
    Later { ms: u64 },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => (1..3u32).prop_map(|boot| Event::Hello { boot }),
        6 => (0..64u32, 0..6u32, 1..=MAX_SAMPLES_PER_FRAME)
            .prop_map(|(first, back, n)| Event::Samples { first, back, n }),
        3 => Just(Event::Commit),
        1 => (0..300u64).prop_map(|ms| Event::Later { ms }),
    ]
}

proptest! {
    /// Random frames of two boots with retransmissions, reorders, holes and device drops, commits
    /// at random points: every ack is for the session's boot, never beyond the committed position
    /// and never below an earlier ack of that boot; the budget bounds what waits for a commit.
    #[test]
    fn acks_never_exceed_the_committed_position_nor_go_back(
        events in prop::collection::vec(event(), 1..120)
    ) {
        let mut b = Bench::new();
        let mut w = ModelWriter::default();
        let mut acks = b.p.acks();
        let mut boot = None;
        let mut last_ack: HashMap<u32, u32> = HashMap::new();
        for e in events {
            match e {
                Event::Hello { boot: id } => {
                    drop(b.feed(hello(id, 1_000)));
                    b.p.welcomed(Welcomed {
                        device: DEVICE,
                        boot_no: i64::from(id),
                        next_seq: w.committed(id),
                    });
                    b.actions();
                    boot = Some(id);
                }
                Event::Samples { first, back, n } => {
                    if !b.p.has_room() {
                        continue; // the link stops decoding: the frame waits
                    }
                    for a in b.feed(samples(first.saturating_sub(back), first, n, 1_000)) {
                        if let Action::Store(Op::Samples(op)) = a {
                            prop_assert_eq!(Some(op.boot_id), boot);
                            w.apply(op);
                        }
                    }
                }
                Event::Commit => w.commit(),
                Event::Later { ms } => b.ms += ms,
            }
            prop_assert!(b.p.budget().waiting() < LINK_BUDGET + MAX_SAMPLES_PER_FRAME);
            if acks.has_changed().unwrap() {
                let a = *acks.borrow_and_update();
                b.p.committed(b.now(), a);
            }
            for s in b.sent() {
                match s {
                    Sent::Ack { boot_id, next_seq } => {
                        prop_assert_eq!(Some(boot_id), boot, "only the session's boot");
                        prop_assert!(next_seq <= w.committed(boot_id), "ack {} beyond the committed {}", next_seq, w.committed(boot_id));
                        let last = last_ack.entry(boot_id).or_default();
                        prop_assert!(next_seq >= *last, "ack went back from {} to {}", *last, next_seq);
                        *last = next_seq;
                    }
                    Sent::Welcome { boot_id, next_seq, .. } => {
                        prop_assert_eq!(next_seq, w.committed(boot_id));
                    }
                    Sent::HelloRequest => prop_assert!(boot.is_none()),
                    Sent::Command { .. } => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn an_ack_budget_needs_a_ring_of_16_times_what_the_device_samples_meanwhile() {
    // 2 sensors every 10 ms and a disabled one: 200 samples/s, 50 per 250 ms, 800 in the ring.
    let (rate, need) = ring_needed([10, 10, 0].into_iter(), Duration::from_millis(250));
    assert_eq!((rate, need), (200.0, 800));
    assert_eq!(ring_needed([10].into_iter(), Duration::ZERO).1, 0);
}

#[test]
fn an_ack_budget_widens_the_link_budget_by_its_20_ms_steps() {
    use crate::store::writer::link_budget;
    assert_eq!(link_budget(Duration::ZERO), LINK_BUDGET);
    assert_eq!(link_budget(Duration::from_millis(10)), LINK_BUDGET);
    assert_eq!(link_budget(Duration::from_millis(250)), 12 * LINK_BUDGET);
    let mut b = Bench::new();
    b.p = LinkProtocol::new("tcp:test".into(), b.metrics.clone(), OFFLINE_AFTER, b.t0)
        .with_ack_budget(Duration::from_millis(250));
    b.connect(1, 0);
    let mut held = Vec::new();
    for i in 0..(12 * LINK_BUDGET / 32) as u32 {
        assert!(b.p.has_room(), "frame {i}");
        held.push(samples_op(b.feed(samples(0, i * 32, 32, 1000))));
    }
    assert!(!b.p.has_room(), "12 x {LINK_BUDGET} samples wait");
}

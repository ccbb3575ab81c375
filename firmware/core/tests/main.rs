//! Device state machine driven by a minimal in-test gateway.
mod update;
use ferry_firmware::sensors::synthetic::Synthetic;
use ferry_firmware::{Action, Device, DeviceConfig, LinkState};
use ferry_wire::*;

/// What the gateway saw, owned.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Hello {
        boot: u32,
        next_seq: u32,
        sensors: Vec<(u8, String, u32)>,
    },
    Samples {
        oldest: u32,
        first: u32,
        samples: Vec<Sample>,
    },
    Heartbeat(Heartbeat),
    Result {
        id: u32,
        status: CommandStatus,
        data: Vec<u8>,
    },
}

struct Bench {
    dev: Device<16>,
    sensors: Synthetic,
    now: u64,
}

impl Bench {
    fn new() -> Self {
        let sensors = Synthetic::with_interval(10);
        let mut cfg = DeviceConfig::new("dev-1", "test", 77);
        cfg.retransmit_timeout_ms = 100;
        cfg.link_timeout_ms = 500;
        let dev = Device::new(cfg, &sensors, 0);
        Bench {
            dev,
            sensors,
            now: 0,
        }
    }

    /// Advances time and returns every frame the device sends.
    fn run_until(&mut self, t: u64) -> Vec<Seen> {
        let mut seen = Vec::new();
        while self.now <= t {
            self.dev.step(self.now, &mut self.sensors);
            let mut out = [0u8; MAX_ENCODED_LEN];
            while let Some(n) = self.dev.poll_transmit(self.now, &self.sensors, &mut out) {
                let mut dec: Decoder = Decoder::new();
                let mut input = &out[..n];
                let m = dec.feed(&mut input).unwrap().unwrap();
                seen.push(match m {
                    Message::Hello(h) => Seen::Hello {
                        boot: h.boot_id,
                        next_seq: h.next_seq,
                        sensors: h
                            .sensors
                            .iter()
                            .map(|s| (s.index, s.name.to_owned(), s.interval_ms))
                            .collect(),
                    },
                    Message::Samples(s) => Seen::Samples {
                        oldest: s.oldest,
                        first: s.first_seq,
                        samples: s.samples.to_vec(),
                    },
                    Message::Heartbeat(h) => Seen::Heartbeat(h),
                    Message::CommandResult(r) => Seen::Result {
                        id: r.id,
                        status: r.status,
                        data: r.data.to_vec(),
                    },
                    other => panic!("device sent a gateway message: {other:?}"),
                });
            }
            self.now += 1;
        }
        seen
    }

    /// Like `run_until`, acking everything received every 20 ms, as a gateway would.
    fn run_acking(&mut self, t: u64) -> Vec<Seen> {
        let mut seen = Vec::new();
        while self.now < t {
            let step = seen.len();
            seen.extend(self.run_until((self.now + 20).min(t)));
            if let Some(last) = seqs(&seen[step..]).last() {
                self.ack(last + 1);
            }
        }
        seen
    }

    fn send(&mut self, m: Message<'_>) {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(&m, &mut out).unwrap();
        // Deliver byte by byte to exercise the streaming decoder.
        for b in &out[..n] {
            self.dev.receive(self.now, std::slice::from_ref(b));
        }
    }

    fn set_interval(&mut self, id: u32, sensor: u8, interval_ms: u32) {
        self.send(Message::Command(Command {
            id,
            kind: CommandKind::SetInterval {
                sensor,
                interval_ms,
            },
        }));
    }

    fn welcome(&mut self, next_seq: u32) {
        self.send(Message::Welcome(Welcome {
            boot_id: 77,
            utc_ms: 1,
            next_seq,
        }));
    }

    fn ack(&mut self, next_seq: u32) {
        self.send(Message::Ack(Ack {
            boot_id: 77,
            next_seq,
        }));
    }
}

fn seqs(seen: &[Seen]) -> Vec<u32> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Samples { first, samples, .. } => {
                Some((*first..*first + samples.len() as u32).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn hello_repeats_until_welcome_then_samples_flow_in_order() {
    let mut b = Bench::new();
    let seen = b.run_until(2500);
    let hellos = seen
        .iter()
        .filter(|s| matches!(s, Seen::Hello { .. }))
        .count();
    assert_eq!(hellos, 3, "Hello at 0, 1000, 2000 ms");
    assert!(seqs(&seen).is_empty(), "no samples before Welcome");
    match &seen[0] {
        Seen::Hello {
            boot,
            next_seq,
            sensors,
        } => {
            assert_eq!(
                (*boot, *next_seq),
                (77, 3),
                "the t=0 samples were taken before the Hello"
            );
            assert_eq!(sensors[2], (2, "counter".to_owned(), 10));
        }
        other => panic!("{other:?}"),
    }
    // 3 sensors every 10 ms for 2.5 s = 753 samples, ring of 16 keeps the newest.
    assert_eq!(b.dev.stats().generated, 753);
    assert_eq!(b.dev.stats().dropped, 753 - 16);
    b.welcome(0);
    assert_eq!(b.dev.link(), LinkState::Connected);
    let seen = b.run_until(2505);
    let s = seqs(&seen);
    assert_eq!(s[0], 737, "resends the oldest held sample first");
    assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {s:?}");
    let Some(Seen::Samples { oldest, .. }) =
        seen.iter().find(|s| matches!(s, Seen::Samples { .. }))
    else {
        panic!()
    };
    assert_eq!(*oldest, 737);
}

#[test]
fn held_samples_are_the_transmitted_ones_until_released() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    let seen = b.run_until(30);
    let sent: Vec<(u32, Sample)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Samples { first, samples, .. } => {
                Some((*first..).zip(samples.iter().copied()).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sent.len(), 12, "3 sensors at 0, 10, 20, 30 ms");
    for (seq, sample) in &sent {
        assert_eq!(b.dev.held(*seq), Some(sample), "seq {seq}");
    }
    assert_eq!(b.dev.held(b.dev.next_seq()), None, "not taken yet");
    b.ack(5);
    assert_eq!(b.dev.held(4), None, "released by the ack");
    assert_eq!(b.dev.held(5), Some(&sent[5].1));
}

#[test]
fn acks_release_and_heartbeat_reports() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    let seen = b.run_until(40);
    let last = *seqs(&seen).last().unwrap();
    b.ack(last + 1);
    assert_eq!(b.dev.ring_depth(), 0);
    assert_eq!(b.dev.stats().acked, u64::from(last) + 1);
    assert_eq!(b.dev.acked_next(), last + 1);
    // Ack beyond what exists is clamped; a stale ack for another boot is ignored.
    b.send(Message::Ack(Ack {
        boot_id: 5,
        next_seq: 10_000,
    }));
    b.ack(10_000);
    assert_eq!(b.dev.acked_next(), last + 1);
    let seen = b.run_acking(1100);
    let hb = seen
        .iter()
        .find_map(|s| match s {
            Seen::Heartbeat(h) => Some(*h),
            _ => None,
        })
        .unwrap();
    assert_eq!(hb.dropped, 0);
}

#[test]
fn withheld_acks_cause_go_back_n_retransmission() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    let first = seqs(&b.run_until(50));
    assert_eq!(first[0], 0);
    let later = b.run_until(160); // RTO is 100 ms
    let mut next_new = *first.last().unwrap() + 1;
    let mut rewinds = 0;
    for f in &later {
        if let Seen::Samples {
            oldest,
            first,
            samples,
        } = f
        {
            if *first < next_new {
                // A retransmission starts at the oldest sample the device still holds.
                assert_eq!(first, oldest);
                rewinds += 1;
            }
            next_new = next_new.max(first + samples.len() as u32);
        }
    }
    assert_eq!(rewinds, 1, "one rewind between 100 and 160 ms");
    assert!(b.dev.stats().retransmits >= 1);
}

#[test]
fn stale_ack_from_previous_boot_never_releases_samples() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.run_until(30);
    let depth = b.dev.ring_depth();
    b.send(Message::Ack(Ack {
        boot_id: 76,
        next_seq: 1000,
    }));
    b.send(Message::Welcome(Welcome {
        boot_id: 76,
        utc_ms: 0,
        next_seq: 1000,
    }));
    assert_eq!(b.dev.ring_depth(), depth);
}

#[test]
fn set_interval_command_changes_the_rate_and_is_deduplicated() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.set_interval(42, 2, 100);
    let seen = b.run_acking(1000);
    assert!(seen.contains(&result(42, CommandStatus::Ok)));
    let counter_samples = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Samples { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .flatten()
        .filter(|s| s.sensor == 2)
        .count();
    assert!(
        (9..=11).contains(&counter_samples),
        "{counter_samples} counter samples in 1 s at 100 ms"
    );
    assert_eq!(b.dev.interval_ms(2), Some(100));
    // Repeated id: answered again, not executed again (interval stays even though args differ).
    b.set_interval(42, 2, 5);
    assert!(b.run_until(1001).contains(&result(42, CommandStatus::Ok)));
    assert_eq!(b.dev.interval_ms(2), Some(100));
    b.set_interval(43, 9, 5);
    assert!(b
        .run_until(1002)
        .contains(&result(43, CommandStatus::UnknownSensor)));
}

fn result(id: u32, status: CommandStatus) -> Seen {
    Seen::Result {
        id,
        status,
        data: vec![],
    }
}

#[test]
fn board_actions_identify_reboot_opaque() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.send(Message::Command(Command {
        id: 1,
        kind: CommandKind::Identify { duration_ms: 300 },
    }));
    assert_eq!(
        b.dev.take_action(),
        Some(Action::Identify { duration_ms: 300 })
    );
    b.send(Message::Command(Command {
        id: 2,
        kind: CommandKind::Opaque(&[1, 2, 3]),
    }));
    let Some(Action::Opaque { id, data }) = b.dev.take_action() else {
        panic!()
    };
    assert_eq!((id, &data[..]), (2, &[1u8, 2, 3][..]));
    b.dev.complete_command(2, CommandStatus::Ok, &[3, 2, 1]);
    b.send(Message::Command(Command {
        id: 3,
        kind: CommandKind::Reboot,
    }));
    assert_eq!(
        b.dev.take_action(),
        None,
        "reboot waits until its result is sent"
    );
    let seen = b.run_until(1);
    assert!(seen.contains(&Seen::Result {
        id: 2,
        status: CommandStatus::Ok,
        data: vec![3, 2, 1]
    }));
    assert!(seen.contains(&Seen::Result {
        id: 3,
        status: CommandStatus::Ok,
        data: vec![]
    }));
    assert_eq!(
        b.dev.take_action(),
        None,
        "and until the gateway acked what the device holds"
    );
    let held = b.dev.ring_depth();
    assert!(held > 0);
    let next = b.dev.next_seq();
    b.ack(next);
    assert_eq!(b.dev.take_action(), Some(Action::Reboot));
    b.run_until(b.now + 100);
    assert_eq!(
        b.dev.next_seq(),
        next,
        "no reading taken while waiting to reset"
    );
}

/// A gateway that never acks: the reset comes after REBOOT_DRAIN_MS all the same, and the
/// readings due meanwhile are counted as skipped, not taken (they could not be acked).
#[test]
fn a_reset_waits_for_acks_at_most_the_drain_time() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.run_until(50);
    b.send(Message::Command(Command {
        id: 4,
        kind: CommandKind::Reboot,
    }));
    let asked = b.now;
    let mut at = None;
    while at.is_none() && b.now < asked + 5000 {
        b.run_until(b.now + 10);
        if b.dev.take_action() == Some(Action::Reboot) {
            at = Some(b.now);
        }
    }
    let waited = at.expect("the reset came") - asked;
    assert!(
        (ferry_firmware::REBOOT_DRAIN_MS..ferry_firmware::REBOOT_DRAIN_MS + 50).contains(&waited),
        "{waited} ms"
    );
    assert!(b.dev.stats().skipped > 0);
}

/// An owner that carries out `Reboot` by replacing the device (as `ferry-sim` does) drains
/// `take_action` in a loop first: `Reboot` must come out once, after its result, or that loop never
/// ends (finding 9: `ferry-sim` spun at 100 % CPU on a reboot command).
#[test]
fn reboot_is_handed_out_once_after_its_result() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.send(Message::Command(Command {
        id: 9,
        kind: CommandKind::Reboot,
    }));
    assert_eq!(b.dev.take_action(), None, "not before the result is sent");
    let seen = b.run_until(1);
    assert!(seen.contains(&result(9, CommandStatus::Ok)), "{seen:?}");
    let next = b.dev.next_seq();
    b.ack(next);
    let mut actions = Vec::new();
    while let Some(a) = b.dev.take_action() {
        actions.push(a);
        assert!(actions.len() < 10, "take_action never ends: {actions:?}");
    }
    assert_eq!(actions, [Action::Reboot]);
}

#[test]
fn silence_falls_back_to_hello_and_hello_request_forces_one() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    let seen = b.run_until(600); // link timeout 500 ms, samples held, no acks
    assert_eq!(b.dev.link(), LinkState::Connecting);
    assert!(matches!(seen.last(), Some(Seen::Hello { .. })));
    b.welcome(0);
    b.send(Message::HelloRequest);
    assert_eq!(b.dev.link(), LinkState::Connecting);
    let seen = b.run_until(601);
    assert!(matches!(seen[0], Seen::Hello { .. }));
}

#[test]
fn echoed_uplink_frames_and_garbage_are_counted_not_obeyed() {
    let mut b = Bench::new();
    b.run_until(0);
    b.send(Message::Heartbeat(Heartbeat {
        ticks: 0,
        dropped: 0,
        ring_depth: 0,
        read_errors: 0,
    }));
    b.dev.receive(0, &[0, 1, 2, 3, 0]);
    assert_eq!(b.dev.stats().unexpected, 1);
    assert_eq!(b.dev.stats().frames_rejected, 1);
    assert_eq!(b.dev.link(), LinkState::Connecting);
}

#[test]
fn non_advancing_ack_triggers_fast_retransmit_once_per_guard() {
    let mut b = Bench::new(); // RTO 100 ms -> guard 25 ms
    b.run_until(0);
    b.welcome(0);
    let sent = seqs(&b.run_until(5));
    b.ack(2); // releases 0..2
    let more = seqs(&b.run_until(10));
    assert!(
        more.iter().all(|&s| s > *sent.last().unwrap()),
        "no rewind on a releasing ack"
    );
    let before = b.dev.stats().retransmits;
    b.ack(2); // releases nothing: gateway stuck at 2 while more is in flight
    assert_eq!(b.dev.stats().retransmits, before + 1);
    let resent = seqs(&b.run_until(11));
    assert_eq!(resent[0], 2, "resends from the oldest held sample at once");
    b.ack(2); // within the guard: ignored
    assert_eq!(b.dev.stats().retransmits, before + 1);
}

/// PROTOCOL.md section 6: an interval the channel cannot be sampled at is `InvalidArgument` and
/// changes nothing; 0 (disable) and the bounds themselves are fine; `Identify` on a device
/// without anything to blink is `Unsupported`.
#[test]
fn out_of_range_intervals_are_invalid_and_identify_can_be_unsupported() {
    let mut b = Bench::new();
    b.run_until(0);
    b.welcome(0);
    b.set_interval(1, 0, ferry_firmware::MAX_INTERVAL_MS + 1);
    b.set_interval(2, 1, u32::MAX);
    let seen = b.run_until(1);
    assert!(
        seen.contains(&result(1, CommandStatus::InvalidArgument)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&result(2, CommandStatus::InvalidArgument)),
        "{seen:?}"
    );
    assert_eq!(b.dev.interval_ms(0), Some(10), "unchanged");
    b.set_interval(3, 0, ferry_firmware::MAX_INTERVAL_MS);
    b.set_interval(4, 1, 0);
    b.set_interval(5, 2, 1);
    let seen = b.run_until(2);
    for id in 3..=5 {
        assert!(
            seen.contains(&result(id, CommandStatus::Ok)),
            "{id}: {seen:?}"
        );
    }
    assert_eq!(b.dev.interval_ms(1), Some(0));

    // A channel that cannot go below 16 ms (an SHT3x measurement).
    struct Slow(Synthetic, [ferry_firmware::SensorSpec; 1]);
    impl ferry_firmware::Sensors for Slow {
        fn specs(&self) -> &[ferry_firmware::SensorSpec] {
            &self.1
        }
        fn read(&mut self, i: usize, t: u64) -> Result<f32, ferry_firmware::ReadError> {
            self.0.read(i, t)
        }
    }
    let slow = Slow(
        Synthetic::with_interval(100),
        [ferry_firmware::SensorSpec {
            name: "t",
            unit: "C",
            default_interval_ms: 100,
            min_interval_ms: 16,
        }],
    );
    let mut cfg = DeviceConfig::new("dev-2", "test", 78);
    cfg.identify = false;
    let mut dev: Device<16> = Device::new(cfg, &slow, 0);
    let mut out = [0u8; MAX_ENCODED_LEN];
    let welcome = Message::Welcome(Welcome {
        boot_id: 78,
        utc_ms: 1,
        next_seq: 0,
    });
    let mut answers = Vec::new();
    for (id, kind) in [
        (
            1,
            CommandKind::SetInterval {
                sensor: 0,
                interval_ms: 15,
            },
        ),
        (
            2,
            CommandKind::SetInterval {
                sensor: 0,
                interval_ms: 16,
            },
        ),
        (3, CommandKind::Identify { duration_ms: 100 }),
    ] {
        for m in [&welcome, &Message::Command(Command { id, kind })] {
            let n = encode(m, &mut out).unwrap();
            let frame = out[..n].to_vec();
            dev.receive(0, &frame);
        }
        while let Some(n) = dev.poll_transmit(0, &slow, &mut out) {
            let mut dec: Decoder = Decoder::new();
            let mut input = &out[..n];
            if let Some(Ok(Message::CommandResult(r))) = dec.feed(&mut input) {
                answers.push((r.id, r.status));
            };
        }
    }
    assert_eq!(
        answers,
        [
            (1, CommandStatus::InvalidArgument),
            (2, CommandStatus::Ok),
            (3, CommandStatus::Unsupported)
        ]
    );
    assert_eq!(dev.interval_ms(0), Some(16));
    assert_eq!(
        dev.take_action(),
        None,
        "no Identify action without support"
    );
}

/// A gateway that stores at most `per_ms` samples each millisecond, in frame order, and acks a
/// frame `ack_after_ms` after it stored it. Returns `(generated, acked, dropped, stored, stored
/// samples the device had counted as dropped)` after `ms` milliseconds.
fn overloaded(per_ms: usize, ack_after_ms: u64, ms: u64) -> (u64, u64, u64, u64, u64) {
    let sensors_at_1khz = Synthetic::with_interval(1); // 3 samples per ms
    let mut sensors = sensors_at_1khz;
    let mut dev: Device<512> = Device::new(DeviceConfig::new("dev-1", "test", 77), &sensors, 0);
    let mut acceptor = Acceptor::new(0);
    let mut link: std::collections::VecDeque<(u32, u32, usize)> = Default::default();
    let mut acks: std::collections::VecDeque<(u64, u32)> = Default::default();
    let mut evicted_stored = 0u64;
    let mut stored = 0u64;
    let mut budget = 0usize;
    let mut out = [0u8; MAX_ENCODED_LEN];
    for now in 0..ms {
        dev.step(now, &mut sensors);
        while let Some(n) = dev.poll_transmit(now, &sensors, &mut out) {
            let mut dec: Decoder = Decoder::new();
            let mut input = &out[..n];
            let frame = match dec.feed(&mut input).unwrap().unwrap() {
                Message::Hello(_) => None,
                Message::Samples(s) => Some((s.oldest, s.first_seq, s.samples.len())),
                _ => continue,
            };
            match frame {
                None => {
                    let w = Message::Welcome(Welcome {
                        boot_id: 77,
                        utc_ms: 1,
                        next_seq: acceptor.next(),
                    });
                    let n = encode(&w, &mut out).unwrap();
                    dev.receive(now, &out[..n]);
                }
                Some(f) => link.push_back(f),
            }
        }
        // The gateway reads frames in order while it has capacity this millisecond.
        budget += per_ms;
        while let Some(&(oldest, first, len)) = link.front() {
            if len > budget {
                break;
            }
            budget -= len;
            link.pop_front();
            let a = acceptor.accept(oldest, first, len);
            for i in a.keep.clone() {
                // Stored: did the device already evict this sample from its ring (and count it)?
                let seq = first + i as u32;
                if dev.held(seq).is_none() && dev.acked_next() <= seq {
                    evicted_stored += 1;
                }
            }
            stored += a.keep.len() as u64;
            acks.push_back((now + ack_after_ms, acceptor.next()));
        }
        budget = budget.min(64);
        while acks.front().is_some_and(|&(t, _)| t <= now) {
            let (_, next) = acks.pop_front().unwrap();
            let n = encode(
                &Message::Ack(Ack {
                    boot_id: 77,
                    next_seq: next,
                }),
                &mut out,
            )
            .unwrap();
            dev.receive(now, &out[..n]);
        }
    }
    let st = dev.stats();
    (
        st.generated,
        st.acked,
        u64::from(st.dropped),
        stored,
        evicted_stored,
    )
}

/// Overload (PROTOCOL.md section 4, "Ring overflow"): a device sampling 3 kHz behind a gateway
/// that stores 2 kHz. Its ring absorbs the excess and drops oldest-first, but what it sends is
/// acked before the ring would evict it: the acked rate stays near the gateway's capacity, and no
/// stored sample is counted as dropped. (Before the device estimated its ack window, every frame
/// it sent from a full ring was evicted within a millisecond, before its ack: almost nothing was
/// acked and every stored sample was also counted as dropped.)
#[test]
fn overload_fills_the_ring_yet_sent_samples_are_acked_not_evicted() {
    let secs = 20;
    let (generated, acked, dropped, stored, both) = overloaded(2, 15, secs * 1000);
    let capacity = 2 * 1000 * secs;
    assert!(generated >= 3 * 1000 * (secs - 1), "{generated}");
    assert_eq!(both, 0, "stored samples the device counted as dropped");
    assert!(
        acked * 10 >= capacity * 9,
        "acked {acked} of a capacity of {capacity} (stored {stored}, dropped {dropped})"
    );
    assert!(dropped > 0, "the ring absorbed the excess");
    // Three times the capacity.
    let (_, acked, _, _, both) = overloaded(1, 15, secs * 1000);
    assert_eq!(both, 0, "at 3x");
    assert!(acked * 10 >= 1000 * secs * 9, "acked {acked} at 3x");
    // Below capacity nothing is dropped.
    let (generated, acked, dropped, _, both) = overloaded(4, 15, 5_000);
    assert_eq!((dropped, both), (0, 0));
    assert!(acked + 600 >= generated, "{acked} of {generated}");
}

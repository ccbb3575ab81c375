//! The command lifecycle driven by scripted events, without a store or links.
use super::*;
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;

fn request(id: &str, command: CommandSpec, ttl_s: Option<u32>) -> CommandRequest {
    CommandRequest {
        v: 1,
        id: id.into(),
        command,
        ttl_s,
    }
}

fn identify() -> CommandSpec {
    CommandSpec::Identify { duration_ms: 5 }
}

/// Accepts (as stored) a command received at `now`; returns its wire id and what to write now.
fn accept(
    l: &mut Ledger,
    device: &str,
    id: &str,
    spec: CommandSpec,
    ttl_s: Option<u32>,
    now: i64,
) -> (u32, Option<DeviceCommand>) {
    let c = l.prepare(device.into(), request(id, spec, ttl_s), now);
    let wire = c.id as u32;
    (wire, l.accept(c))
}

/// Attaches and records every command as written (as the actor does when the link takes it).
fn attach(l: &mut Ledger, device: &str, boot: u32) -> Vec<u32> {
    let cs = l.attach(device, boot);
    cs.iter().for_each(|c| l.written(c.wire_id));
    cs.iter().map(|c| c.wire_id).collect()
}

#[test]
fn wire_ids_follow_the_stored_ones_and_the_default_ttl_is_300_s() {
    let mut l = Ledger::new("gw".into(), 41);
    let a = l.prepare("d".into(), request("a", identify(), None), T0);
    let b = l.prepare("d".into(), request("b", identify(), Some(2)), T0);
    assert_eq!((a.id, b.id), (41, 42));
    assert_eq!(a.expires_ms, T0 + 300_000);
    assert_eq!(b.expires_ms, T0 + 2_000);
    assert_eq!((a.received_ms, a.request_id.as_str()), (T0, "a"));
}

#[test]
fn a_command_waits_for_its_device_and_is_written_on_every_hello_in_id_order() {
    let mut l = Ledger::new("gw".into(), 1);
    let (w1, now) = accept(&mut l, "d", "a", identify(), None, T0);
    assert_eq!(now, None, "no link yet: it waits");
    let (w2, _) = accept(&mut l, "d", "b", CommandSpec::Reboot, None, T0);
    let (other, _) = accept(&mut l, "e", "c", identify(), None, T0);
    assert_eq!(
        attach(&mut l, "d", 7),
        vec![w1, w2],
        "only its own, in order"
    );
    assert_eq!(
        attach(&mut l, "d", 7),
        vec![w1, w2],
        "again after a repeated Hello"
    );
    assert_eq!(attach(&mut l, "e", 1), vec![other]);
    // Accepted while attached: written at once; after the link closed: waits again.
    let (w3, now) = accept(&mut l, "d", "x", identify(), None, T0);
    assert_eq!(now.map(|c| c.wire_id), Some(w3));
    l.detach("d");
    assert_eq!(accept(&mut l, "d", "y", identify(), None, T0).1, None);
}

#[test]
fn a_result_ends_its_own_devices_command_once() {
    let mut l = Ledger::new("gw".into(), 1);
    let (w, _) = accept(&mut l, "d", "a", identify(), None, T0);
    attach(&mut l, "d", 7);
    assert_eq!(
        l.result("e", w, CommandStatus::Ok, &[], T0 + 1),
        None,
        "another device's"
    );
    assert_eq!(
        l.result("d", w + 1, CommandStatus::Ok, &[], T0 + 1),
        None,
        "an unknown id"
    );
    let f = l
        .result("d", w, CommandStatus::Unsupported, &[0xab], T0 + 5)
        .unwrap();
    assert_eq!(f.wire_id, w);
    assert_eq!(
        f.outcome,
        CommandOutcome {
            v: contract::SCHEMA_VERSION,
            id: "a".into(),
            gateway: "gw".into(),
            device: "d".into(),
            status: OutcomeStatus::Unsupported,
            detail: None,
            data_hex: Some("ab".into()),
            at_ms: T0 + 5,
        }
    );
    assert_eq!(
        l.result("d", w, CommandStatus::Ok, &[], T0 + 6),
        None,
        "it ended"
    );
    assert!(l.expire(i64::MAX).is_empty(), "and never expires");
    assert!(attach(&mut l, "d", 7).is_empty(), "nor is written again");
}

#[test]
fn every_device_status_maps_to_its_outcome_and_empty_data_is_absent() {
    let mut l = Ledger::new("gw".into(), 1);
    for (status, outcome) in [
        (CommandStatus::Ok, OutcomeStatus::Ok),
        (CommandStatus::UnknownSensor, OutcomeStatus::UnknownSensor),
        (
            CommandStatus::InvalidArgument,
            OutcomeStatus::InvalidArgument,
        ),
        (CommandStatus::Unsupported, OutcomeStatus::Unsupported),
        (CommandStatus::Failed, OutcomeStatus::Failed),
    ] {
        let (w, _) = accept(&mut l, "d", &format!("{status:?}"), identify(), None, T0);
        let f = l.result("d", w, status, &[], T0).unwrap();
        assert_eq!((f.outcome.status, f.outcome.data_hex), (outcome, None));
    }
}

#[test]
fn the_ttl_ends_a_command_at_its_expiry_and_says_whether_it_was_written() {
    let mut l = Ledger::new("gw".into(), 1);
    let (never, _) = accept(&mut l, "offline", "a", identify(), Some(10), T0);
    let (sent, _) = accept(&mut l, "d", "b", identify(), Some(10), T0);
    let (later, _) = accept(&mut l, "d", "c", identify(), Some(11), T0);
    attach(&mut l, "d", 7);
    assert!(l.expire(T0 + 9_999).is_empty(), "not before its TTL");
    let ended = l.expire(T0 + 10_000);
    let got: Vec<(u32, OutcomeStatus, Option<&str>, i64)> = ended
        .iter()
        .map(|f| {
            let o = &f.outcome;
            (f.wire_id, o.status, o.detail.as_deref(), o.at_ms)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                never,
                OutcomeStatus::Expired,
                Some(EXPIRED_UNREACHABLE),
                T0 + 10_000
            ),
            (
                sent,
                OutcomeStatus::Expired,
                Some(EXPIRED_UNANSWERED),
                T0 + 10_000
            ),
        ]
    );
    assert_eq!(ended[0].outcome.device, "offline");
    assert_eq!(
        l.pending().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![later]
    );
    assert_eq!(
        l.result("d", sent, CommandStatus::Ok, &[], T0 + 10_001),
        None,
        "a late answer is ignored"
    );
}

#[test]
fn a_command_the_link_did_not_take_counts_as_not_written() {
    let mut l = Ledger::new("gw".into(), 1);
    let (w, _) = accept(&mut l, "d", "a", identify(), Some(1), T0);
    assert_eq!(
        l.attach("d", 7).len(),
        1,
        "offered, but the link queue was full"
    );
    let f = l.expire(T0 + 1_000);
    assert_eq!(
        (f[0].wire_id, f[0].outcome.detail.as_deref()),
        (w, Some(EXPIRED_UNREACHABLE))
    );
}

/// A reboot's answer was lost and the device came back in a new boot: before, the reboot was
/// written again on each Hello until its TTL, resetting the device every time.
#[test]
fn a_reboot_taken_by_one_boot_is_not_written_to_the_next() {
    let mut l = Ledger::new("gw".into(), 1);
    let (reboot, _) = accept(&mut l, "d", "r", CommandSpec::Reboot, Some(60), T0);
    let (set, _) = accept(
        &mut l,
        "d",
        "s",
        CommandSpec::SetInterval {
            sensor: 0,
            interval_ms: 100,
        },
        Some(60),
        T0,
    );
    assert_eq!(attach(&mut l, "d", 7), vec![reboot, set]);
    assert_eq!(
        attach(&mut l, "d", 7),
        vec![reboot, set],
        "the same boot again"
    );
    assert_eq!(
        attach(&mut l, "d", 8),
        vec![set],
        "a new boot: only the set_interval"
    );
    assert_eq!(attach(&mut l, "d", 9), vec![set]);
    let f = l.expire(T0 + 60_000);
    assert_eq!(f[0].outcome.detail.as_deref(), Some(EXPIRED_UNANSWERED));
    // A reboot accepted while the device was away goes to the boot it finds.
    let (r2, _) = accept(&mut l, "d", "r2", CommandSpec::Reboot, None, T0);
    l.detach("d");
    assert_eq!(attach(&mut l, "d", 10), vec![r2]);
}

#[test]
fn restored_commands_wait_for_their_device_as_not_written() {
    let mut l = Ledger::new("gw".into(), 10);
    l.restore(3, "d".into(), "a".into(), CommandSpec::Reboot, T0 + 5);
    l.restore(4, "d".into(), "b".into(), identify(), T0 + 5);
    assert!(l.is_pending("d", "a") && !l.is_pending("e", "a"));
    assert_eq!(attach(&mut l, "d", 1), vec![3, 4]);
    assert_eq!(
        l.prepare("d".into(), request("c", identify(), None), T0).id,
        10
    );
}

#[test]
fn device_ids_the_link_cannot_carry_are_rejected_naming_the_topic_level() {
    let l = Ledger::new("gw".into(), 1);
    assert_eq!(l.rejection("dev-1", "r", T0), None);
    let o = l.rejection("", "r", T0).unwrap();
    assert_eq!(
        (o.status, o.id.as_str(), o.device.as_str()),
        (OutcomeStatus::Rejected, "r", "")
    );
    assert_eq!(
        o.detail.as_deref(),
        Some("device id (topic level): 0 bytes; a device id is 1..=32 bytes (the link protocol's limit)")
    );
}

#[derive(Debug, Clone)]
enum Event {
    Submit { device: u8, spec: u8, ttl_s: u8 },
    Attach { device: u8, boot: u8, takes: bool },
    Detach { device: u8 },
    Result { device: u8, pick: u8 },
    Tick { s: u8 },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..3u8, 0..3u8, 0..20u8).prop_map(|(device, spec, ttl_s)| Event::Submit {
            device,
            spec,
            ttl_s
        }),
        (0..3u8, 0..3u8, any::<bool>()).prop_map(|(device, boot, takes)| Event::Attach {
            device,
            boot,
            takes
        }),
        (0..3u8).prop_map(|device| Event::Detach { device }),
        (0..3u8, any::<u8>()).prop_map(|(device, pick)| Event::Result { device, pick }),
        (0..10u8).prop_map(|s| Event::Tick { s }),
    ]
}

proptest! {
    /// Whatever happens, every accepted command ends exactly once, never before its TTL unless
    /// answered, never after it; and a reboot taken by one boot is never offered to another.
    #[test]
    fn every_command_ends_exactly_once(events in prop::collection::vec(event(), 1..80)) {
        let mut l = Ledger::new("gw".into(), 1);
        let mut now = T0;
        let mut accepted: HashMap<u32, (String, i64, bool)> = HashMap::new();
        let mut ended: HashMap<u32, usize> = HashMap::new();
        // The boot each command was last handed to, and the boot on each device's link.
        let mut taken_by: HashMap<u32, u32> = HashMap::new();
        let mut attached: HashMap<String, u32> = HashMap::new();
        let name = |d: u8| format!("d{d}");
        for e in events {
            match e {
                Event::Submit { device, spec, ttl_s } => {
                    let spec = match spec { 0 => CommandSpec::Reboot, 1 => identify(),
                        _ => CommandSpec::SetInterval { sensor: 1, interval_ms: 5 } };
                    let reboot = spec == CommandSpec::Reboot;
                    let c = l.prepare(name(device), request(&format!("r{now}"), spec, Some(ttl_s.into())), now);
                    accepted.insert(c.id as u32, (name(device), c.expires_ms, reboot));
                    if let Some(w) = l.accept(c) {
                        l.written(w.wire_id);
                        taken_by.insert(w.wire_id, attached[&name(device)]);
                    }
                }
                Event::Attach { device, boot, takes } => {
                    let boot = u32::from(boot);
                    attached.insert(name(device), boot);
                    for c in l.attach(&name(device), boot) {
                        if c.spec == CommandSpec::Reboot {
                            let before = taken_by.get(&c.wire_id).copied();
                            prop_assert!(before.is_none_or(|b| b == boot),
                                "reboot {} taken by boot {:?}, offered to boot {}", c.wire_id, before, boot);
                        }
                        if takes {
                            l.written(c.wire_id);
                            taken_by.insert(c.wire_id, boot);
                        }
                    }
                }
                Event::Detach { device } => {
                    attached.remove(&name(device));
                    l.detach(&name(device));
                }
                Event::Result { device, pick } => {
                    let ids: Vec<u32> = accepted.keys().copied().collect();
                    if let Some(&id) = ids.get(usize::from(pick) % ids.len().max(1)) {
                        if let Some(f) = l.result(&name(device), id, CommandStatus::Ok, &[], now) {
                            prop_assert_eq!(&f.outcome.device, &accepted[&id].0);
                            prop_assert!(now <= accepted[&id].1, "answered no later than its TTL");
                            *ended.entry(id).or_default() += 1;
                        }
                    }
                }
                Event::Tick { s } => {
                    now += i64::from(s) * 1000;
                    for f in l.expire(now) {
                        prop_assert!(accepted[&f.wire_id].1 <= now, "not before its TTL");
                        prop_assert_eq!(f.outcome.status, OutcomeStatus::Expired);
                        *ended.entry(f.wire_id).or_default() += 1;
                    }
                }
            }
        }
        for f in l.expire(i64::MAX) {
            *ended.entry(f.wire_id).or_default() += 1;
        }
        for id in accepted.keys() {
            prop_assert_eq!(ended.get(id), Some(&1), "command {} ends once", id);
        }
    }
}

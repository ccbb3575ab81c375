//! MQTT downlink commands: a publish on `ferry/v1/{gateway}/{device}/commands`, as the agent's
//! uplink receives it, through to the frame written to the device.
//!
//! Input: the topic (UTF-8, as MQTT requires), a newline, then the payload.
//!
//! Checked, on the agent's own code (`ferry_agent::uplink::downlinked`, then the link protocol's
//! `LinkProtocol::command`):
//! - nothing panics;
//! - a command for another gateway or on another topic is `NotOurs`, never answered;
//! - a rejection is addressed to this gateway and the device the topic names, says why, and
//!   carries the request's `id` when the payload is a JSON object with a string `id`;
//! - an accepted request keeps the contract's invariants (version 1, id of 1..=64 bytes, opaque
//!   hex of at most 128 bytes), survives a JSON round trip, and reaches the device: the link
//!   writes exactly one frame, which decodes to a Command with the wire id and the same kind and
//!   bytes. A command the link could not encode would otherwise be lost without a word.
#![no_main]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::commands::DeviceCommand;
use ferry_agent::ingest::protocol::LinkProtocol;
use ferry_agent::metrics::Metrics;
use ferry_agent::uplink::{downlinked, Downlinked};
use ferry_contract::{
    decode_hex, CommandRequest, CommandSpec, OutcomeStatus, MAX_COMMAND_ID_LEN, MAX_OPAQUE_LEN,
    SCHEMA_VERSION,
};
use ferry_wire::{CommandKind, Decoder, Message};
use libfuzzer_sys::fuzz_target;

const GATEWAY: &str = "gw-1";

fuzz_target!(|data: &[u8]| {
    let Some((topic, payload)) = common::publish(data) else {
        return;
    };
    let ours = topic.starts_with("ferry/v1/gw-1/") && topic.ends_with("/commands");
    match downlinked(GATEWAY, topic, payload) {
        Downlinked::NotOurs(why) => assert!(!why.is_empty(), "{topic}: no reason"),
        Downlinked::Rejected(o) => {
            assert!(ours, "{topic} is not ours, yet answered");
            assert_eq!(o.gateway, GATEWAY);
            assert_eq!(o.status, OutcomeStatus::Rejected);
            assert!(
                o.detail.as_deref().is_some_and(|d| !d.is_empty()),
                "no reason"
            );
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned));
            if let Some(id) = id {
                assert_eq!(o.id, id, "the rejection carries the request's id");
            }
            // The outcome is published as JSON: it must serialize.
            serde_json::to_vec(&o).expect("outcome serializes");
        }
        Downlinked::Command { device, request } => {
            assert!(ours, "{topic} is not ours, yet accepted");
            assert!(!device.is_empty());
            check_request(&request);
            deliver(&request);
        }
    }
});

fn check_request(r: &CommandRequest) {
    assert_eq!(r.v, SCHEMA_VERSION);
    assert!(
        (1..=MAX_COMMAND_ID_LEN).contains(&r.id.len()),
        "id {:?}",
        r.id
    );
    if let CommandSpec::Opaque { hex } = &r.command {
        let bytes = decode_hex(hex).expect("accepted opaque hex decodes");
        assert!(bytes.len() <= MAX_OPAQUE_LEN);
    }
    let json = serde_json::to_vec(r).expect("request serializes");
    let again = CommandRequest::decode(&json).expect("a re-encoded request decodes");
    assert_eq!(&again, r, "JSON round trip");
}

/// Hands the command to a link, as the commands actor does, and decodes what the link writes.
fn deliver(r: &CommandRequest) {
    let metrics = Arc::new(Metrics::default());
    let mut link = LinkProtocol::new(
        "fuzz".into(),
        metrics,
        Duration::from_secs(10),
        Instant::now(),
    );
    let wire_id = 0x1234_5678;
    link.command(&DeviceCommand {
        wire_id,
        spec: r.command.clone(),
    });
    let mut input = link.outgoing();
    let mut decoder = Decoder::<{ ferry_wire::MAX_FRAME_LEN }>::new();
    let mut frames = 0;
    while let Some(result) = decoder.feed(&mut input) {
        frames += 1;
        let Ok(Message::Command(c)) = result else {
            panic!("the link wrote something else than a Command: {result:?}");
        };
        assert_eq!(c.id, wire_id);
        match (&r.command, c.kind) {
            (
                CommandSpec::SetInterval {
                    sensor,
                    interval_ms,
                },
                CommandKind::SetInterval {
                    sensor: s,
                    interval_ms: i,
                },
            ) => assert_eq!((*sensor, *interval_ms), (s, i)),
            (CommandSpec::Identify { duration_ms }, CommandKind::Identify { duration_ms: d }) => {
                assert_eq!(*duration_ms, d)
            }
            (CommandSpec::Reboot, CommandKind::Reboot) => {}
            (CommandSpec::Opaque { hex }, CommandKind::Opaque(bytes)) => {
                assert_eq!(decode_hex(hex).as_deref(), Some(bytes))
            }
            (spec, kind) => panic!("{spec:?} was written as {kind:?}"),
        }
    }
    assert_eq!(frames, 1, "the link writes the command exactly once");
}

//! Real payloads against `cloud-bridge/asyncapi.yaml`: the `ferry` agent binary runs with its
//! uplink on, simulated devices stream into it, commands go to a device, and the agent is
//! SIGKILLed at the end so the broker publishes its last will. A subscriber to `ferry/v1/#`
//! captures everything; each captured message is validated against the payload schema the
//! document gives its channel, and decoded with contract.rs.
use std::collections::HashMap;
use std::time::Duration;

use ferry_contract::{self as contract, CommandOutcome, CommandRequest, EventBatch, Status, Topic};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::{poll_until, try_poll_until};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::uplink_tls::{capture, start_agent, Captured};

/// Payload schemas of the document, by message key under `components.messages`.
pub(crate) struct Schemas(HashMap<String, jsonschema::Validator>);

impl Schemas {
    pub(crate) fn load() -> Schemas {
        let path = ferry_tests::repo_root().join("cloud-bridge/asyncapi.yaml");
        let doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut out = HashMap::new();
        for (name, m) in doc["components"]["messages"].as_object().unwrap() {
            let target = m["payload"]["$ref"].as_str().unwrap();
            let root = json!({
                "allOf": [{ "$ref": target }],
                "components": { "schemas": doc["components"]["schemas"] },
            });
            out.insert(name.clone(), jsonschema::draft7::new(&root).unwrap());
        }
        Schemas(out)
    }

    /// Schema errors of `payload` as the message `name`.
    pub(crate) fn errors(&self, name: &str, payload: &Value) -> Vec<String> {
        self.0[name]
            .iter_errors(payload)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect()
    }

    fn check(&self, name: &str, m: &Captured) -> Value {
        let v: Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e})", m.topic));
        let errors = self.errors(name, &v);
        assert!(
            errors.is_empty(),
            "{} ({name}) fails the document's schema: {errors:?}\n{v}",
            m.topic
        );
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn real_agent_payloads_match_the_asyncapi_document() {
    let schemas = Schemas::load();
    let broker = Mosquitto::start(MosquittoOptions::default());
    let stop = CancellationToken::new();
    let got = capture(
        broker.port(),
        "contract-sub",
        None,
        "ferry/v1/#",
        stop.clone(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = "gw-contract";
    let mut agent = start_agent(
        dir.path(),
        gw,
        &format!(
            "broker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
            broker.port()
        ),
    )
    .await;
    let sim = ferry_sim::SimConfig::tcp(agent.tcp().unwrap(), 2, 2, 20).for_secs(4);
    let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));

    // The cloud command sender.
    let (sender, mut el) = AsyncClient::new(
        MqttOptions::new("contract-op", "127.0.0.1", broker.port()),
        50,
    );
    let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let send = |device: &str, body: &str| {
        let (sender, topic, body) = (
            sender.clone(),
            contract::commands_topic(gw, device),
            body.to_owned(),
        );
        async move {
            sender
                .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
                .await
                .unwrap()
        }
    };
    let outcomes = |got: &std::sync::Mutex<Vec<Captured>>| -> Vec<CommandOutcome> {
        got.lock()
            .unwrap()
            .iter()
            .filter(|m| {
                matches!(
                    contract::parse_topic(&m.topic),
                    Some(Topic::CommandResult { .. })
                )
            })
            .map(|m| serde_json::from_slice(&m.payload).expect("outcome"))
            .collect()
    };
    // The agent subscribes to commands after it connects: probe until one is answered.
    let probed = try_poll_until(
        Duration::from_secs(15),
        "the agent to answer a command",
        async || {
            let answered = outcomes(&got).iter().any(|o| o.id == "probe");
            if !answered {
                send("sim-0000", r#"{"v":1,"id":"probe","command":"explode"}"#).await;
            }
            answered
        },
    );
    probed
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let long_device = "d".repeat(contract::MAX_DEVICE_ID_LEN + 1);
    let long_id = "i".repeat(contract::MAX_COMMAND_ID_LEN + 1);
    let requests: Vec<(&str, String)> = vec![
        (
            "sim-0000",
            r#"{"v":1,"id":"opaque-1","command":{"opaque":{"hex":"0a0B0c"}}}"#.into(),
        ),
        (
            "sim-0000",
            r#"{"v":1,"id":"interval-1","command":{"set_interval":{"sensor":1,"interval_ms":50}}}"#
                .into(),
        ),
        (
            "sim-0001",
            r#"{"v":1,"id":"interval-9","command":{"set_interval":{"sensor":9,"interval_ms":50}},"ttl_s":30}"#
                .into(),
        ),
        (
            "sim-0001",
            r#"{"v":1,"id":"identify-1","command":{"identify":{"duration_ms":100}}}"#.into(),
        ),
        (
            "sim-9999",
            r#"{"v":1,"id":"late-1","command":"reboot","ttl_s":1}"#.into(),
        ),
        (
            "sim-0000",
            r#"{"v":1,"id":"bad-1","command":"explode"}"#.into(),
        ),
        (
            "sim-0000",
            r#"{"v":1,"id":"bad-2","command":{"opaque":{"hex":"+f+f"}}}"#.into(),
        ),
        ("sim-0000", "not json".into()),
        // A device id the device link cannot carry (D3), and a request id that is too long.
        (
            &long_device,
            r#"{"v":1,"id":"long-device","command":"reboot"}"#.into(),
        ),
        (
            "sim-0000",
            format!(r#"{{"v":1,"id":"{long_id}","command":"reboot"}}"#),
        ),
    ];
    for (device, body) in &requests {
        send(device, body).await;
    }
    // A topic naming no device: acked and counted by the agent, never answered.
    let bad_topic = format!("ferry/v1/{gw}/%zz/commands");
    sender
        .publish(
            bad_topic.clone(),
            QoS::AtLeastOnce,
            false,
            br#"{"v":1,"id":"bad-topic","command":"reboot"}"#.to_vec(),
        )
        .await
        .unwrap();
    let ids = [
        "opaque-1",
        "interval-1",
        "interval-9",
        "identify-1",
        "late-1",
        "bad-1",
        "bad-2",
        "",
        "long-device",
        &long_id,
    ];
    let answered = try_poll_until(Duration::from_secs(20), "every outcome", async || {
        let o = outcomes(&got);
        if ids.iter().all(|id| o.iter().any(|o| o.id == *id)) {
            Ok(o)
        } else {
            Err(format!("got {o:?}"))
        }
    });
    let answered = answered
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let status_of = |id: &str| {
        let o = answered.iter().find(|o| o.id == id).unwrap();
        serde_json::to_value(o.status).unwrap()
    };
    assert_eq!(status_of("opaque-1"), "ok");
    assert_eq!(status_of("late-1"), "expired");
    for id in ["bad-1", "bad-2", "", "long-device", &long_id] {
        assert_eq!(status_of(id), "rejected", "{id}");
    }
    let detail = |id: &str| {
        let o = answered.iter().find(|o| o.id == id).unwrap();
        o.detail.clone().unwrap_or_default()
    };
    assert_eq!(
        detail("long-device"),
        "invalid command: device is 33 bytes; it must be 1..=32 bytes without NUL"
    );
    assert_eq!(
        detail(&long_id),
        "invalid command: id is 65 bytes; it must be 1..=64 bytes"
    );
    assert!(!answered.iter().any(|o| o.id == "bad-topic"));
    // The contract's device id limit is the device link's.
    assert_eq!(contract::MAX_DEVICE_ID_LEN, ferry_wire::MAX_DEVICE_ID_LEN);
    let report = devices.await.unwrap();
    assert!(report.totals.acked > 100, "{:?}", report.totals);
    // Wait until some events are out, then crash the agent: the broker publishes the will.
    poll_until(Duration::from_secs(15), "events published", async || {
        let got = got.lock().unwrap();
        got.iter().any(|m| m.topic.ends_with("/events"))
    })
    .await;
    agent.kill().await;
    let is_offline = |m: &Captured| {
        m.topic == contract::status_topic(gw)
            && serde_json::from_slice::<Status>(&m.payload)
                .is_ok_and(|s| s.state == contract::LinkState::Offline)
    };
    poll_until(Duration::from_secs(15), "the last will", async || {
        got.lock().unwrap().iter().any(is_offline)
    })
    .await;
    // The status is retained: a subscriber arriving now is handed the last will.
    let late_stop = CancellationToken::new();
    let late = capture(
        broker.port(),
        "contract-late",
        None,
        &contract::status_topic(gw),
        late_stop.clone(),
    )
    .await;
    poll_until(Duration::from_secs(10), "the retained status", async || {
        !late.lock().unwrap().is_empty()
    })
    .await;
    let retained = late.lock().unwrap()[0].clone();
    assert!(retained.retain && is_offline(&retained), "{retained:?}");
    late_stop.cancel();
    stop.cancel();
    poller.abort();

    // Every captured message against the document.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut event_count = 0;
    let mut statuses_seen = Vec::new();
    let mut states = Vec::new();
    for m in got.lock().unwrap().iter().chain([&retained]) {
        let Some(topic) = contract::parse_topic(&m.topic) else {
            assert_eq!(
                m.topic, bad_topic,
                "a message on a topic outside the contract"
            );
            continue;
        };
        match topic {
            Topic::Events { gateway, device } => {
                assert_eq!(m.payload[0], b'{', "JSON is the default encoding");
                schemas.check("eventBatch", m);
                let b = EventBatch::decode(&m.payload).unwrap();
                b.check_topic(&gateway, &device).unwrap();
                event_count += b.events.len();
                *counts.entry("eventBatch").or_default() += 1;
            }
            Topic::Status { gateway } => {
                let v = schemas.check("status", m);
                let s: Status = serde_json::from_value(v).unwrap();
                assert_eq!(s.gateway, gateway);
                states.push(s.state);
                *counts.entry("status").or_default() += 1;
            }
            Topic::CommandResult { gateway, device } => {
                let v = schemas.check("commandOutcome", m);
                let o: CommandOutcome = serde_json::from_value(v).unwrap();
                assert_eq!(
                    (o.gateway.as_str(), o.device.as_str()),
                    (gateway.as_str(), device.as_str())
                );
                statuses_seen.push(o.status);
                *counts.entry("commandOutcome").or_default() += 1;
            }
            // Firmware traffic is checked against the document by firmware_mqtt.rs.
            Topic::Firmware { .. } | Topic::FirmwareResult { .. } => {}
            Topic::Commands { .. } => {
                // The test's own requests: the schema and the agent's decoder agree on each.
                let accepted = CommandRequest::decode(&m.payload).is_ok();
                let valid = serde_json::from_slice::<Value>(&m.payload)
                    .is_ok_and(|v| schemas.errors("commandRequest", &v).is_empty());
                assert_eq!(
                    valid,
                    accepted,
                    "schema and decoder disagree on {}",
                    String::from_utf8_lossy(&m.payload)
                );
                *counts
                    .entry(if accepted {
                        "commandRequest"
                    } else {
                        "commandRequest (refused)"
                    })
                    .or_default() += 1;
            }
        }
    }
    eprintln!("validated against asyncapi.yaml: {counts:?}, {event_count} events, outcome statuses {statuses_seen:?}");
    assert!(
        states.contains(&contract::LinkState::Online),
        "birth message"
    );
    assert!(states.contains(&contract::LinkState::Offline), "last will");
    assert!(counts["eventBatch"] >= 1);
    assert!(counts["commandOutcome"] >= ids.len());
    assert_eq!(counts["commandRequest"], 6);
}

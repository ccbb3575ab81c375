//! A firmware update started from the cloud: the signed bundle goes to the gateway over mosquitto
//! (`ferry/v1/{gateway}/firmware/bundle`, the bundle file as the payload), then an update request
//! (`.../firmware/update`, JSON); the results come back on `.../firmware/bundle/result` and
//! `.../firmware/update/result` (`accepted` at once, `done` when every device runs the image). The
//! devices are simulated (the real updater and bootloader over a RAM flash) on the real `ferry`'s
//! TCP listener. A redelivered request starts nothing twice; a request for a bundle the gateway
//! does not have, and a bundle changed after signing, are answered `rejected`.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::poll_until;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Which published result a wait is for: `(topic, payload)`.
type Wanted = Box<dyn Fn(&str, &Value) -> bool + Send>;
const GW: &str = "gw-fw";

fn vendor() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[5; 32])
}

fn bundle(version: &str) -> Vec<u8> {
    let img = ferry_sim::firmware::make_image(version, 48 * 1024, true).unwrap();
    ferry_agent::firmware::bundle::Bundle::sign(img, version, "ferry-sim", &vendor())
        .unwrap()
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn an_update_started_over_mqtt_reaches_every_device_and_reports_back() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let dir = tempfile::Builder::new()
        .prefix("ferry-fw-mqtt-")
        .tempdir()
        .unwrap();
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[gateway]\nid = \"{GW}\"\n[store]\npath = {:?}\n\
             [devices]\ntcp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
            dir.path().join("ferry.db").display().to_string(),
            broker.port()
        ),
        None,
    );
    agent.start().await;
    let devices = agent
        .logged_addr("Listening for devices over TCP", WAIT)
        .await;
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(
        ferry_sim::SimConfig {
            update: Some(ferry_sim::SimUpdate {
                public_key: vendor().verifying_key().to_bytes(),
                version: "1.0.0".into(),
                trial_timeout_ms: 10_000,
            }),
            duration: Some(Duration::from_secs(600)),
            ..ferry_sim::SimConfig::tcp(devices, 3, 2, 50)
        },
        stop.clone(),
    ));

    let mut o = MqttOptions::new("firmware-operator", "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(Some(4 << 20));
    let (client, mut el) = AsyncClient::new(o, 100);
    for t in ["bundle", "update"] {
        client
            .subscribe(
                format!("ferry/v1/{GW}/firmware/{t}/result"),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
    }
    let results: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let sink = results.clone();
    let schemas = crate::contract::Schemas::load();
    let invalid: Arc<Mutex<Vec<String>>> = Arc::default();
    let bad = invalid.clone();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let v: Value = serde_json::from_slice(&p.payload).expect("result JSON");
                    // Every result as cloud-bridge/asyncapi.yaml documents it.
                    let name = if topic.ends_with("bundle/result") {
                        "firmwareBundleResult"
                    } else {
                        "firmwareUpdateResult"
                    };
                    let errors = schemas.errors(name, &v);
                    if !errors.is_empty() {
                        bad.lock()
                            .unwrap()
                            .push(format!("{topic}: {errors:?}\n{v}"));
                    }
                    sink.lock().unwrap().push((topic, v));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let publish = |what: &str, payload: Vec<u8>| {
        let (client, topic) = (client.clone(), format!("ferry/v1/{GW}/firmware/{what}"));
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    let find = |pred: Wanted| {
        let results = results.clone();
        async move {
            poll_until(WAIT, "a result on MQTT", async || {
                let all = results.lock().unwrap();
                all.iter().find(|(t, v)| pred(t, v)).map(|(_, v)| v.clone())
            })
            .await
        }
    };

    // The agent subscribes once connected: send the bundle until it answers.
    let good = bundle("1.1.0");
    poll_until(WAIT, "the agent to answer a bundle", async || {
        let answered = results
            .lock()
            .unwrap()
            .iter()
            .any(|(t, _)| t.ends_with("bundle/result"));
        if !answered {
            publish("bundle", good.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        answered
    })
    .await;
    let stored = find(Box::new(|t, v| {
        t.ends_with("bundle/result") && v["status"] == "stored"
    }))
    .await;
    let sha = stored["sha256"].as_str().unwrap().to_owned();
    assert_eq!(stored["version"], "1.1.0");

    // A bundle changed after signing is rejected, with the reason.
    let mut bad = bundle("1.2.0");
    let n = bad.len();
    bad[n - 3] ^= 1;
    publish("bundle", bad).await;
    let rejected = find(Box::new(|t, v| {
        t.ends_with("bundle/result") && v["status"] == "rejected"
    }))
    .await;
    assert!(
        rejected["detail"]
            .as_str()
            .unwrap()
            .contains("changed after signing"),
        "{rejected}"
    );

    // The update; sent twice (a redelivery): one update only.
    let request =
        json!({"v": 1, "id": "rollout-7", "devices": ["sim-*"], "bundle": sha, "concurrency": 2});
    publish("update", serde_json::to_vec(&request).unwrap()).await;
    publish("update", serde_json::to_vec(&request).unwrap()).await;
    let accepted = find(Box::new(|t, v| {
        t.ends_with("update/result") && v["id"] == "rollout-7" && v["status"] == "accepted"
    }))
    .await;
    let done = find(Box::new(|t, v| {
        t.ends_with("update/result") && v["id"] == "rollout-7" && v["status"] == "done"
    }))
    .await;
    assert_eq!(done["update"], accepted["update"], "{done}");
    let jobs = done["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3, "{done}");
    assert!(jobs.iter().all(|j| j["state"] == "done"), "{done}");
    let updates: Vec<Value> = results
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, v)| t.ends_with("update/result") && v["id"] == "rollout-7")
        .map(|(_, v)| v["update"].clone())
        .collect();
    assert!(
        updates.iter().all(|u| *u == accepted["update"]),
        "one update for the request: {updates:?}"
    );

    // A bundle the gateway does not have.
    let missing =
        json!({"v": 1, "id": "rollout-8", "devices": ["sim-0000"], "bundle": "00".repeat(32)});
    publish("update", serde_json::to_vec(&missing).unwrap()).await;
    let r = find(Box::new(|t, v| {
        t.ends_with("update/result") && v["id"] == "rollout-8"
    }))
    .await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("not stored"), "{r}");

    stop.cancel();
    let report = sim.await.unwrap();
    for d in &report.devices {
        assert_eq!(d.boots.last().unwrap().firmware, "1.1.0", "{}", d.device_id);
    }
    agent.terminate().await;
    poller.abort();
    let invalid = invalid.lock().unwrap();
    assert!(
        invalid.is_empty(),
        "results the document does not allow: {invalid:?}"
    );
    let seen = results.lock().unwrap().len();
    assert!(seen >= 5, "{seen} results checked against the document");
}

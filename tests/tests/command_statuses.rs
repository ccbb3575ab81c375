//! Every command status a device can give, end to end: the real `ferry` with the real `ferry-sim`
//! binary behind it on its TCP listener. Commands go in through the local API
//! (`POST /api/v1/devices/{id}/commands`, then `GET .../commands/{request_id}` until done) and, in
//! the second test, through mosquitto (`ferry/v1/{gateway}/{device}/commands`, outcomes on
//! `.../commands/result`). `ferry-sim --help` documents how simulated devices answer, so each
//! status is reached on purpose: `ok`, `unknown_sensor`, `invalid_argument` (an interval above one
//! day), `unsupported` (`identify`), `failed` (an opaque payload starting with `fail`).
//!
//! A `reboot` (both spellings) is answered `ok` before the device resets; the device comes back
//! with a new boot id, the other device keeps streaming, and `ferry-sim` still prints its report
//! when interrupted (finding 9: it spun at 100 % CPU on a reboot, silencing every device).
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::http_get;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::{poll_until, try_poll_until, workspace_bin};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Deadline of each wait (2 shared cores; the agent and the simulator are debug builds).
const WAIT: Duration = Duration::from_secs(30);

/// One command and the outcome it must get.
struct Case {
    device: &'static str,
    id: &'static str,
    command: &'static str,
    status: &'static str,
    data_hex: Option<&'static str>,
}

/// Commands for sim-0000 (2 sensors), answered without side effects on the link.
const CASES: [Case; 6] = [
    Case {
        device: "sim-0000",
        id: "interval-ok",
        command: r#"{"set_interval":{"sensor":1,"interval_ms":200}}"#,
        status: "ok",
        data_hex: None,
    },
    Case {
        device: "sim-0000",
        id: "interval-unknown",
        command: r#"{"set_interval":{"sensor":9,"interval_ms":200}}"#,
        status: "unknown_sensor",
        data_hex: None,
    },
    Case {
        device: "sim-0000",
        id: "interval-invalid",
        command: r#"{"set_interval":{"sensor":0,"interval_ms":86400001}}"#,
        status: "invalid_argument",
        data_hex: None,
    },
    Case {
        device: "sim-0000",
        id: "identify",
        command: r#"{"identify":{"duration_ms":500}}"#,
        status: "unsupported",
        data_hex: None,
    },
    Case {
        device: "sim-0000",
        id: "opaque-fail",
        command: r#"{"opaque":{"hex":"6661696c0102"}}"#,
        status: "failed",
        data_hex: Some("0102"),
    },
    Case {
        device: "sim-0000",
        id: "opaque-echo",
        command: r#"{"opaque":{"hex":"0a0b0c"}}"#,
        status: "ok",
        data_hex: Some("0a0b0c"),
    },
];

/// The two spellings of a reboot, sent to sim-0001 one after the other.
const REBOOTS: [(&str, &str); 2] = [
    ("reboot-1", r#""reboot""#),
    ("reboot-2", r#"{"reboot":null}"#),
];

fn body(id: &str, command: &str) -> String {
    format!(r#"{{"v":1,"id":"{id}","command":{command},"ttl_s":60}}"#)
}

/// The `ferry-sim` binary, its stdout (the report) collected.
struct SimProc {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
}

impl SimProc {
    fn start(devices: SocketAddr) -> SimProc {
        let bin = workspace_bin("ferry-sim", "ferry-sim").expect("build ferry-sim");
        let mut child = tokio::process::Command::new(bin)
            .args([
                "--devices",
                "2",
                "--sensors",
                "2",
                "--rate",
                "20",
                "--seed",
                "5",
            ])
            .arg("--tcp")
            .arg(devices.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry-sim");
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stdout.take().expect("piped");
        let sink = stdout.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        SimProc { child, stdout }
    }

    /// SIGINT (Ctrl-C), as a person stops it: it must exit cleanly and print its report.
    async fn interrupt(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT ferry-sim");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("ferry-sim exits within 30 s of SIGINT")
            .expect("wait for ferry-sim");
        assert!(status.success(), "ferry-sim exit status {status}");
        // The pipe closes with the process; the reader may still be appending (at the deadline,
        // the caller's checks of the report fail with what arrived).
        let _ = try_poll_until(WAIT, "ferry-sim's report", async || {
            self.stdout.lock().unwrap().contains("elapsed (s)")
        })
        .await;
        self.stdout.lock().unwrap().clone()
    }
}

/// The value of a row of ferry-sim's report table (`boots      4`).
fn report_row(report: &str, row: &str) -> Option<u64> {
    report.lines().find_map(|l| {
        let rest = l.strip_prefix(row)?;
        rest.trim().parse().ok()
    })
}

async fn get_json(api: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(api, path).await.expect("GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// `(online, boot_id, boots, events)` of a device.
async fn device(api: SocketAddr, id: &str) -> (bool, u64, u64, u64) {
    let d = get_json(api, &format!("/api/v1/devices/{id}")).await;
    (
        d["online"].as_bool().unwrap_or(false),
        d["boot_id"].as_u64().unwrap_or(0),
        d["boots"].as_u64().unwrap_or(0),
        d["counters"]["events"].as_u64().unwrap_or(0),
    )
}

/// Starts the agent (with `uplink` lines if given) and the simulator; waits until both devices
/// are online. Returns the agent, its API address and the simulator.
async fn start(dir: &std::path::Path, uplink: &str) -> (AgentProc, SocketAddr, SimProc) {
    let mut agent = AgentProc::new(
        dir,
        &format!(
            "[gateway]\nid = \"gw-cmd\"\n[store]\npath = {:?}\n\
             [devices]\ntcp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n{uplink}",
            dir.join("ferry.db").display().to_string(),
        ),
        None,
    );
    agent.start().await;
    let devices = agent
        .logged_addr("Listening for devices over TCP", WAIT)
        .await;
    let api = agent.logged_addr("Serving the local API", WAIT).await;
    let sim = SimProc::start(devices);
    for id in ["sim-0000", "sim-0001"] {
        poll_until(WAIT, format!("{id} online"), || async move {
            let (status, body) = http_get(api, &format!("/api/v1/devices/{id}")).await.ok()?;
            let d: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && d["online"] == true).then_some(())
        })
        .await;
    }
    (agent, api, sim)
}

/// After a reboot command was answered: the device is back online in a new boot.
async fn rebooted(api: SocketAddr, before: (bool, u64, u64, u64)) -> (bool, u64, u64, u64) {
    poll_until(WAIT, "sim-0001 back online in a new boot", || async move {
        let now = device(api, "sim-0001").await;
        (now.0 && now.2 == before.2 + 1 && now.1 != before.1).then_some(now)
    })
    .await
}

/// The simulator kept serving sim-0000 through the reboots, and reports the run when stopped.
async fn check_the_rest(api: SocketAddr, sim: SimProc) {
    let (_, _, _, events) = device(api, "sim-0000").await;
    poll_until(
        WAIT,
        "sim-0000 still streaming after the reboots",
        async || {
            let now = device(api, "sim-0000").await.3;
            (now > events + 20)
                .then_some(())
                .ok_or(format!("{now} events, was {events}"))
        },
    )
    .await;
    let report = sim.interrupt().await;
    eprintln!("ferry-sim report:\n{report}");
    assert_eq!(report_row(&report, "devices"), Some(2), "{report}");
    assert_eq!(
        report_row(&report, "boots"),
        Some(4),
        "2 devices + 2 reboots: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_commands_reach_every_status_and_reboot_answers_before_resetting() {
    let dir = tempfile::Builder::new()
        .prefix("ferry-cmd-api-")
        .tempdir()
        .unwrap();
    let (mut agent, api, sim) = start(dir.path(), "").await;

    let outcome = |device: &'static str, id: &'static str| async move {
        let path = format!("/api/v1/devices/{device}/commands/{id}");
        poll_until(WAIT, format!("{id} done"), async || {
            let r = get_json(api, &path).await;
            (r["status"] == "done").then(|| r["outcome"].clone())
        })
        .await
    };
    let post = |device: &'static str, id: &'static str, command: &'static str| async move {
        let (status, reply) = ferry_tests::bridge::http_post_json(
            api,
            &format!("/api/v1/devices/{device}/commands"),
            &body(id, command),
        )
        .await
        .expect("POST");
        assert_eq!(status, 202, "POST {id}: {reply}");
    };

    for c in &CASES {
        post(c.device, c.id, c.command).await;
    }
    for c in &CASES {
        let o = outcome(c.device, c.id).await;
        assert_eq!(o["status"], c.status, "{}: {o}", c.id);
        assert_eq!(o["data_hex"].as_str(), c.data_hex, "{}: {o}", c.id);
        assert_eq!(o["device"], c.device, "{}: {o}", c.id);
    }

    for (id, command) in REBOOTS {
        let before = device(api, "sim-0001").await;
        post("sim-0001", id, command).await;
        let o = outcome("sim-0001", id).await;
        assert_eq!(o["status"], "ok", "{id}: answered before the reset: {o}");
        let after = rebooted(api, before).await;
        eprintln!("{id}: boot {} -> {} ({} boots)", before.1, after.1, after.2);
    }
    check_the_rest(api, sim).await;
    agent.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn mqtt_commands_reach_every_status_and_reboot_answers_before_resetting() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let dir = tempfile::Builder::new()
        .prefix("ferry-cmd-mqtt-")
        .tempdir()
        .unwrap();
    let (mut agent, api, sim) = start(
        dir.path(),
        &format!(
            "[uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
            broker.port()
        ),
    )
    .await;

    let mut o = MqttOptions::new("command-statuses-operator", "127.0.0.1", broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe("ferry/v1/gw-cmd/+/commands/result", QoS::AtLeastOnce)
        .await
        .unwrap();
    let outcomes: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = outcomes.clone();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let o: Value = serde_json::from_slice(&p.payload).expect("outcome JSON");
                    sink.lock().unwrap().push(o);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let publish = |device: &str, payload: String| {
        let (client, topic) = (client.clone(), format!("ferry/v1/gw-cmd/{device}/commands"));
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
                .await
                .unwrap()
        }
    };
    let outcome = |id: &'static str| {
        let outcomes = outcomes.clone();
        async move {
            poll_until(WAIT, format!("the outcome of {id} on MQTT"), async || {
                let all = outcomes.lock().unwrap();
                all.iter().find(|o| o["id"] == id).cloned()
            })
            .await
        }
    };
    // The agent subscribes after it connects: probe until a command is answered ("rejected").
    poll_until(WAIT, "the agent to answer on MQTT", async || {
        let answered = outcomes.lock().unwrap().iter().any(|o| o["id"] == "probe");
        if !answered {
            publish("sim-0000", body("probe", r#""explode""#)).await;
        }
        answered
    })
    .await;

    for c in &CASES {
        publish(c.device, body(c.id, c.command)).await;
    }
    for c in &CASES {
        let o = outcome(c.id).await;
        assert_eq!(o["status"], c.status, "{}: {o}", c.id);
        assert_eq!(o["data_hex"].as_str(), c.data_hex, "{}: {o}", c.id);
        assert_eq!(o["device"], c.device, "{}: {o}", c.id);
    }
    for (id, command) in REBOOTS {
        let before = device(api, "sim-0001").await;
        publish("sim-0001", body(id, command)).await;
        let o = outcome(id).await;
        assert_eq!(o["status"], "ok", "{id}: answered before the reset: {o}");
        rebooted(api, before).await;
    }
    check_the_rest(api, sim).await;
    agent.terminate().await;
    poller.abort();
}

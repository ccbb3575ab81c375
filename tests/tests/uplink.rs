//! Agent → MQTT broker: the store-and-forward uplink and the downlink of commands.
//!
//! Simulated devices stream into the real agent (in-process or the `ferry` binary, real SQLite
//! store); the uplink forwards to a broker; test clients collect batches and send commands.
//! Tests of what any MQTT 5 broker must do run twice: against a real mosquitto and against
//! Ferry's own ferry-broker (what `ferry demo` uses). Tests that stop and restart the broker
//! mid-stream and count on it to keep sessions and queued messages across the restart run on
//! mosquitto only: ferry-broker keeps no state across a restart, by design. (One file of some
//! 750 lines: the scenarios share the batch collector and the shape of the agent under test.)
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_contract::EventBatch;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

use ferry_tests::broker::{BrokerKind, TestBroker};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::tmpfs::Tmpfs;
use ferry_tests::{poll_until, try_poll_until};

/// Collects (device, boot, seq) → times seen, from a persistent-session subscriber.
type Seen = std::sync::Arc<std::sync::Mutex<HashMap<(String, u32, u32), u32>>>;

/// Counts each event of an event batch payload in `seen`, by (device, boot, seq).
fn count_batch(seen: &Seen, payload: &[u8]) {
    let b = EventBatch::decode(payload).expect("valid batch");
    let mut seen = seen.lock().unwrap();
    for e in b.events {
        *seen.entry((b.device.clone(), b.boot, e.seq)).or_default() += 1;
    }
}

/// Counts every event published on `filter` into `seen` until `stop`, as client `id` with a
/// session that outlives broker restarts; `subscribed` turns true at the SUBACK.
async fn subscriber(
    port: u16,
    (id, filter): (&str, &str),
    stop: CancellationToken,
    seen: Seen,
    subscribed: Arc<AtomicBool>,
) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    o.set_clean_start(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_connect_properties(props)
        .set_max_packet_size(Some(16 << 20));
    let (client, mut el) = AsyncClient::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => count_batch(&seen, &p.payload),
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.store(true, SeqCst),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    }
}

/// Starts an in-process agent on `toml`, the text of a `ferry.toml`.
async fn start_agent(toml: &str) -> ferry_agent::Agent {
    let settings = ferry_agent::config::Settings::from_toml(toml, "test.toml", |_| None).unwrap();
    ferry_agent::Agent::start(&settings).await.unwrap()
}

/// Waits (≤ 30 s) until the uplink's saved position reaches event id `head`.
async fn wait_forwarded_to(conn: &rusqlite::Connection, head: i64) {
    poll_until(
        Duration::from_secs(30),
        "the forwarding position to reach the head",
        async || {
            let pos: i64 = conn
                .query_row(
                    "SELECT coalesce((SELECT event_id FROM forward_cursor WHERE name = 'uplink'), 0)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (pos >= head).then_some(()).ok_or(format!("position {pos}, head {head}"))
        },
    )
    .await;
}

/// `name` under the system's temp directory, emptied of what an earlier run left there.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Mosquitto only: the subscriber's persistent session and the messages queued in it must
/// survive the broker's restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn uplink_forwards_everything_through_broker_restarts() {
    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let dir = fresh_dir(&format!("ferry-uplink-agent-{}", std::process::id()));
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"test-gw\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n[uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\nmax_batch_events = 200\n",
        dir.join("ferry.db").display().to_string(),
        broker.port()
    );
    let agent = start_agent(&toml).await;
    let sub_stop = CancellationToken::new();
    let seen: Seen = Default::default();
    let sub = tokio::spawn(subscriber(
        broker.port(),
        ("uplink-test-sub", "ferry/v1/test-gw/+/events"),
        sub_stop.clone(),
        seen.clone(),
        Arc::default(),
    ));
    // Devices stream for 6 s while the broker goes down three times.
    let sim = ferry_sim::SimConfig::tcp(agent.tcp_addr.unwrap(), 8, 2, 5).for_secs(6);
    let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        broker.stop();
        tokio::time::sleep(Duration::from_millis(400)).await;
        broker.start_again();
    }
    let report = devices.await.unwrap();
    assert!(
        report.totals.acked > 5_000,
        "devices streamed: {:?}",
        report.totals
    );
    // Wait until the uplink's saved position covers the whole store (the tail written to the
    // database first: a running agent holds its newest samples there).
    agent.store.sync().await.unwrap();
    let db = dir.join("ferry.db");
    let conn = ferry_agent::store::open_reader(&db).unwrap();
    let head: i64 = conn
        .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
        .unwrap();
    wait_forwarded_to(&conn, head).await;
    let stats = agent.uplink_stats.clone();
    agent.stop().await.unwrap();
    // Every stored event arrived at least once.
    let mut stmt = conn
        .prepare(
            "SELECT d.device_id, e.boot_no, e.seq FROM events e JOIN devices d ON d.id = e.device",
        )
        .unwrap();
    let stored: Vec<(String, u32, u32)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Acked by the broker means queued for the subscriber's session: wait for delivery (at the
    // deadline, the checks below say what is missing).
    let _ = try_poll_until(
        Duration::from_secs(10),
        "every stored event at the subscriber",
        async || seen.lock().unwrap().len() >= stored.len(),
    )
    .await;
    sub_stop.cancel();
    sub.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let missing: Vec<_> = stored.iter().filter(|k| !seen.contains_key(*k)).collect();
    let dup = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "stored {} events, received {} distinct ({} seen twice or more); connects {}, republished {}",
        stored.len(),
        seen.len(),
        dup,
        stats.connects.load(std::sync::atomic::Ordering::Relaxed),
        stats.messages_republished.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        missing.is_empty(),
        "{} stored events never reached the broker, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        seen.len(),
        stored.len(),
        "nothing arrived that was not stored"
    );
    assert!(
        stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 4,
        "the broker restarts were seen"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full disk refuses the uplink's position writes for a while: forwarding goes on and
/// catches up once space returns. (The uplink once stopped on the first refused write and
/// forwarded nothing more until the agent restarted; the soak found it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and root (mounts a tmpfs)"]
async fn forwarding_goes_on_through_a_full_disk() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let dir = fresh_dir(&format!("ferry-uplink-full-{}", std::process::id()));
    let disk = Tmpfs::mount(&dir.join("disk"), 16);
    let db = dir.join("disk/ferry.db");
    let toml = format!(
        "[api]\nlisten = \"\"\n[gateway]\nid = \"full-gw\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n[uplink]\nbroker = \"127.0.0.1:{}\"\nmax_batch_events = 200\n",
        db.display().to_string(),
        broker.port()
    );
    let agent = start_agent(&toml).await;
    let (sub_stop, seen, subscribed) = (CancellationToken::new(), Seen::default(), Arc::default());
    let sub = tokio::spawn(subscriber(
        broker.port(),
        ("uplink-full-sub", "ferry/v1/full-gw/+/events"),
        sub_stop.clone(),
        seen.clone(),
        Arc::clone(&subscribed),
    ));
    poll_until(Duration::from_secs(10), "the subscription", async || {
        subscribed.load(SeqCst)
    })
    .await;
    let sim = ferry_sim::SimConfig::tcp(agent.tcp_addr.unwrap(), 4, 2, 5).for_secs(8);
    let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ballast = dir.join("disk/ballast");
    Tmpfs::fill(&ballast);
    poll_until(Duration::from_secs(10), "the disk to be full", async || {
        agent
            .metrics
            .disk_full
            .load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::remove_file(&ballast).unwrap();
    let report = devices.await.unwrap();
    assert_eq!(report.totals.unacked_at_end, 0, "{:?}", report.totals);
    // The tail into the database first (a running agent holds its newest samples there).
    agent.store.sync().await.unwrap();
    let conn = ferry_agent::store::open_reader(&db).unwrap();
    let head: i64 = conn
        .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
        .unwrap();
    wait_forwarded_to(&conn, head).await;
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    poll_until(
        Duration::from_secs(10),
        "every stored event at the subscriber",
        async || seen.lock().unwrap().len() as i64 >= stored,
    )
    .await;
    agent.stop().await.unwrap();
    sub_stop.cancel();
    sub.await.unwrap();
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn downlink_commands_reach_the_device_and_results_come_back_on_mosquitto() {
    downlink_commands_reach_the_device_and_results_come_back(BrokerKind::Mosquitto).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlink_commands_reach_the_device_and_results_come_back_on_ferry_broker() {
    downlink_commands_reach_the_device_and_results_come_back(BrokerKind::FerryBroker).await;
}

/// Downlink: commands published to `ferry/v1/{gw}/{device}/commands` reach a simulated device over
/// its link, and outcomes come back on `.../commands/result`; a command for a device that never
/// connects expires after its TTL; a malformed one is rejected with a reason.
async fn downlink_commands_reach_the_device_and_results_come_back(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let dir = fresh_dir(&format!(
        "ferry-downlink-agent-{kind}-{}",
        std::process::id()
    ));
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"test-gw\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n[uplink]\nbroker = \"127.0.0.1:{}\"\n",
        dir.join("ferry.db").display().to_string(),
        broker.port()
    );
    let agent = start_agent(&toml).await;
    // The operator's client: sends commands, collects results.
    let (client, mut el) = AsyncClient::new(
        {
            let mut o = MqttOptions::new("operator", "127.0.0.1", broker.port());
            o.set_keep_alive(Duration::from_secs(5));
            o
        },
        100,
    );
    client
        .subscribe("ferry/v1/test-gw/+/commands/result", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let o: ferry_contract::CommandOutcome =
                        serde_json::from_slice(&p.payload).expect("outcome JSON");
                    let _ = res_tx.send(o);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // One device streams for a few seconds.
    let sim = ferry_sim::SimConfig::tcp(agent.tcp_addr.unwrap(), 1, 2, 20).for_secs(4);
    let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
    // Wait until the agent's uplink is connected (the birth message is out).
    poll_until(
        Duration::from_secs(10),
        "the uplink to connect",
        async || {
            agent
                .uplink_stats
                .connected
                .load(std::sync::atomic::Ordering::Relaxed)
        },
    )
    .await;
    let send = |device: &str, body: &str| {
        let (client, topic, body) = (
            client.clone(),
            format!("ferry/v1/test-gw/{device}/commands"),
            body.to_owned(),
        );
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
                .await
                .unwrap()
        }
    };
    // The agent subscribes right after connecting; a probe that must be answered ('rejected')
    // shows the subscription is in place, instead of guessing with a fixed sleep.
    poll_until(
        Duration::from_secs(10),
        "the agent to answer a command",
        async || {
            send("sim-0000", r#"{"v":1,"id":"probe","command":"explode"}"#).await;
            let answered = async {
                while let Some(o) = res_rx.recv().await {
                    if o.id == "probe" {
                        return true;
                    }
                }
                false
            };
            tokio::time::timeout(Duration::from_millis(200), answered)
                .await
                .unwrap_or(false)
        },
    )
    .await;
    while res_rx.try_recv().is_ok() {} // later answers to repeated probes
                                       // Topics naming no device (a bad escape, an empty level): acked, not answered, counted.
    let refused_topic = || async {
        let (_, body) = ferry_tests::bridge::http_get(agent.api_addr.unwrap(), "/metrics")
            .await
            .unwrap();
        ferry_tests::bridge::parse_metric(&body, "ferry_uplink_commands_refused_topic_total")
    };
    assert_eq!(refused_topic().await, Some(0.0));
    for level in ["%zz", ""] {
        client
            .publish(
                format!("ferry/v1/test-gw/{level}/commands"),
                QoS::AtLeastOnce,
                false,
                br#"{"v":1,"id":"bad-topic","command":"reboot"}"#.to_vec(),
            )
            .await
            .unwrap();
    }
    poll_until(
        Duration::from_secs(10),
        "ferry_uplink_commands_refused_topic_total to be 2",
        async || {
            let n = refused_topic().await;
            (n == Some(2.0)).then_some(()).ok_or(format!("{n:?}"))
        },
    )
    .await;
    // Device ids the device link cannot carry (D3) and a too-long request id: rejected, and the
    // detail names the field.
    let long_id = "i".repeat(65);
    send(
        &"d".repeat(33),
        r#"{"v":1,"id":"long-device","command":"reboot"}"#,
    )
    .await;
    send("a%00b", r#"{"v":1,"id":"nul-device","command":"reboot"}"#).await;
    send(
        "sim-0000",
        &format!(r#"{{"v":1,"id":"{long_id}","command":"reboot"}}"#),
    )
    .await;
    send(
        "sim-0000",
        r#"{"v":1,"id":"echo-1","command":{"opaque":{"hex":"0a0b0c"}}}"#,
    )
    .await;
    send(
        "sim-0000",
        r#"{"v":1,"id":"slow-1","command":{"set_interval":{"sensor":1,"interval_ms":100}}}"#,
    )
    .await;
    send(
        "sim-9999",
        r#"{"v":1,"id":"late-1","command":"reboot","ttl_s":1}"#,
    )
    .await;
    send("sim-0000", r#"{"v":1,"id":"bad-1","command":"explode"}"#).await;
    let mut got: HashMap<String, ferry_contract::CommandOutcome> = HashMap::new();
    let t = Instant::now();
    while got.len() < 7 {
        match tokio::time::timeout(Duration::from_secs(10), res_rx.recv()).await {
            Ok(Some(o)) => {
                if o.id != "probe" {
                    got.insert(o.id.clone(), o);
                }
            }
            _ => panic!("only these outcomes arrived: {got:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(15));
    }
    use ferry_contract::OutcomeStatus;
    assert_eq!(
        got["echo-1"].status,
        OutcomeStatus::Ok,
        "{:?}",
        got["echo-1"]
    );
    assert_eq!(got["echo-1"].data_hex.as_deref(), Some("0a0b0c"));
    assert_eq!(got["echo-1"].device, "sim-0000");
    assert_eq!(
        got["slow-1"].status,
        OutcomeStatus::Ok,
        "{:?}",
        got["slow-1"]
    );
    assert_eq!(
        got["late-1"].status,
        OutcomeStatus::Expired,
        "{:?}",
        got["late-1"]
    );
    assert_eq!(got["bad-1"].status, OutcomeStatus::Rejected);
    assert!(
        got["bad-1"]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("explode"),
        "{:?}",
        got["bad-1"]
    );
    assert!(!got.contains_key("bad-topic"), "{:?}", got.get("bad-topic"));
    let rejected = |id: &str| {
        let o = &got[id];
        assert_eq!(o.status, OutcomeStatus::Rejected, "{o:?}");
        o.detail.clone().unwrap_or_default()
    };
    assert_eq!(
        rejected("long-device"),
        "invalid command: device is 33 bytes; it must be 1..=32 bytes without NUL"
    );
    assert_eq!(got["long-device"].device, "d".repeat(33));
    assert_eq!(
        rejected("nul-device"),
        "invalid command: device \"a\\0b\" contains NUL; it must be 1..=32 bytes without NUL"
    );
    assert_eq!(
        rejected(&long_id),
        "invalid command: id is 65 bytes; it must be 1..=64 bytes"
    );
    // A repeated request id is answered from the stored outcome, not executed again.
    send(
        "sim-0000",
        r#"{"v":1,"id":"echo-1","command":{"opaque":{"hex":"ffff"}}}"#,
    )
    .await;
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match res_rx.recv().await {
                Some(o) if o.id == "probe" => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("repeat answered")
    .unwrap();
    assert_eq!(
        (again.id.as_str(), again.data_hex.as_deref()),
        ("echo-1", Some("0a0b0c"))
    );
    devices.await.unwrap();
    agent.stop().await.unwrap();
    poller.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Downlink across crashes: a command published while the agent is down waits at the broker
/// (persistent session) and reaches the device after the agent restarts; an outcome stored while
/// the broker was down survives a SIGKILL of the agent and is published after the restart.
/// Mosquitto only: the agent's session must survive the broker's restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn downlink_commands_and_outcomes_survive_agent_kill_and_broker_outage() {
    use ferry_contract::{CommandOutcome, OutcomeStatus};
    use ferry_tests::agent::AgentProc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let tcp = ferry_tests::free_port();
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"crash-gw\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"300ms\"\n",
            db.display().to_string(),
            broker.port()
        ),
        Some(tcp),
    );
    agent.start().await;

    // The operator: a persistent session, so results published while it reconnects wait for it.
    let mut o = MqttOptions::new("crash-operator", "127.0.0.1", broker.port());
    let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
    props.session_expiry_interval = Some(3600);
    o.set_clean_start(false)
        .set_keep_alive(Duration::from_secs(5))
        .set_connect_properties(props);
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe("ferry/v1/crash-gw/+/commands/result", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (res_tx, mut res_rx) = tokio::sync::mpsc::unbounded_channel::<CommandOutcome>();
    let pubacks = Arc::new(AtomicUsize::new(0));
    let poller = tokio::spawn({
        let pubacks = pubacks.clone();
        async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = res_tx.send(serde_json::from_slice(&p.payload).expect("outcome"));
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        pubacks.fetch_add(1, SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    let send = |id: &str, hex: &str| {
        let client = client.clone();
        let body = format!(r#"{{"v":1,"id":"{id}","command":{{"opaque":{{"hex":"{hex}"}}}}}}"#);
        async move {
            client
                .publish(
                    "ferry/v1/crash-gw/sim-0000/commands",
                    QoS::AtLeastOnce,
                    false,
                    body.into_bytes(),
                )
                .await
                .unwrap()
        }
    };
    let command_row = |id: &str| -> Option<(i64, i64)> {
        let c = ferry_agent::store::open_reader(&db).ok()?;
        c.query_row(
            "SELECT done, outcome_published FROM commands WHERE request_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
    };
    const WAIT: Duration = Duration::from_secs(20);
    // (done, outcome_published) of the command crash-1.
    let crash_1_becomes = async |want: (i64, i64), what: &str| {
        poll_until(WAIT, what, async || {
            let row = command_row("crash-1");
            (row == Some(want)).then_some(()).ok_or(format!("{row:?}"))
        })
        .await
    };
    let device = |secs| {
        tokio::spawn(ferry_sim::run(
            ferry_sim::SimConfig::tcp(format!("127.0.0.1:{tcp}").parse().unwrap(), 1, 1, 50)
                .for_secs(secs),
            CancellationToken::new(),
        ))
    };

    // 1. A command for a device that is not connected yet: stored, pending (resent until the
    //    agent's subscription is in place).
    poll_until(WAIT, "the agent to store the command", async || {
        let stored = command_row("crash-1").is_some();
        if !stored {
            send("crash-1", "c1").await;
        }
        stored
    })
    .await;
    assert_eq!(command_row("crash-1"), Some((0, 0)), "pending");

    // 2. The broker goes away; the device connects and answers. The outcome is stored, not
    //    published. Then the agent is SIGKILLed.
    broker.stop();
    device(2).await.unwrap();
    crash_1_becomes((1, 0), "crash-1 done").await;
    agent.kill().await;

    // 3. The broker is back; a command is published while the agent is down and waits in the
    //    agent's persistent session at the broker.
    broker.start_again();
    let acked_before = pubacks.load(SeqCst);
    send("offline-1", "0f").await;
    poll_until(WAIT, "the broker to ack offline-1", async || {
        pubacks.load(SeqCst) > acked_before
    })
    .await;

    // 4. The agent restarts: the stored outcome goes out, the queued command reaches the device.
    agent.start().await;
    let dev = device(3);
    let mut got: HashMap<String, CommandOutcome> = HashMap::new();
    while !(got.contains_key("crash-1") && got.contains_key("offline-1")) {
        match tokio::time::timeout(Duration::from_secs(15), res_rx.recv()).await {
            Ok(Some(o)) => {
                got.insert(o.id.clone(), o);
            }
            _ => panic!("only these outcomes arrived: {got:?}"),
        }
    }
    assert_eq!(
        got["crash-1"].status,
        OutcomeStatus::Ok,
        "{:?}",
        got["crash-1"]
    );
    assert_eq!(got["crash-1"].data_hex.as_deref(), Some("c1"));
    assert_eq!(
        got["offline-1"].status,
        OutcomeStatus::Ok,
        "{:?}",
        got["offline-1"]
    );
    assert_eq!(got["offline-1"].data_hex.as_deref(), Some("0f"));
    // Delivery of the stored outcome is recorded, so the next start does not publish it again.
    crash_1_becomes((1, 1), "crash-1 marked published").await;
    dev.await.unwrap();
    agent.terminate().await;
    poller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn stored_events_the_contract_refuses_are_quarantined_and_the_rest_forwarded_on_mosquitto() {
    stored_events_the_contract_refuses_are_quarantined_and_the_rest_forwarded(
        BrokerKind::Mosquitto,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_the_contract_refuses_are_quarantined_and_the_rest_forwarded_on_ferry_broker()
{
    stored_events_the_contract_refuses_are_quarantined_and_the_rest_forwarded(
        BrokerKind::FerryBroker,
    )
    .await;
}

/// Stored events the contract refuses (here: times outside years 1..=9999, as a store written
/// before those bounds existed may hold) are quarantined by the uplink with the reason, and the
/// rest of their batch is forwarded: published, they would make the cloud refuse the whole batch.
async fn stored_events_the_contract_refuses_are_quarantined_and_the_rest_forwarded(
    kind: BrokerKind,
) {
    let broker = TestBroker::start(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let toml = |uplink: &str| {
        format!(
            "[api]\nlisten = \"\"\n[gateway]\nid = \"q-gw\"\n[store]\npath = {:?}\n\
             [devices]\ntcp_listen = \"127.0.0.1:0\"\n{uplink}",
            db.display().to_string()
        )
    };
    // 1. Twenty samples stored with forwarding off.
    let agent = start_agent(&toml("")).await;
    let io = tokio::net::TcpStream::connect(agent.tcp_addr.unwrap())
        .await
        .unwrap();
    let values: Vec<f32> = (0..20).map(|i| i as f32).collect();
    ferry_tests::link::DeviceLink::new(io)
        .send_boot("dev-q", 7, "t", &values, 32, Duration::from_secs(30))
        .await
        .unwrap();
    agent.stop().await.unwrap();
    // 2. Two of them get times the contract refuses.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let n = c
            .execute(
                "UPDATE events SET ts_ms = CASE seq WHEN 5 THEN -62135596800001 ELSE 253402300800000 END \
                 WHERE seq IN (5, 6)",
                [],
            )
            .unwrap();
        assert_eq!(n, 2);
    }
    // 3. Forwarding on: 18 events arrive, two are quarantined.
    let stop = CancellationToken::new();
    let seen: Seen = Default::default();
    let subscribed = Arc::new(AtomicBool::new(false));
    let sub = tokio::spawn(subscriber(
        broker.port(),
        ("q-sub", "ferry/v1/q-gw/+/events"),
        stop.clone(),
        seen.clone(),
        subscribed.clone(),
    ));
    poll_until(Duration::from_secs(10), "the SUBACK", async || {
        subscribed.load(SeqCst)
    })
    .await;
    let agent = start_agent(&toml(&format!(
        "[uplink]\nbroker = \"127.0.0.1:{}\"\n",
        broker.port()
    )))
    .await;
    let reader = ferry_agent::store::open_reader(&db).unwrap();
    poll_until(
        Duration::from_secs(20),
        "the whole store forwarded and 18 events received",
        async || {
            let (pos, head): (i64, i64) = reader
                .query_row(
                    "SELECT coalesce((SELECT event_id FROM forward_cursor WHERE name = 'uplink'), 0), \
                     (SELECT max(id) FROM events)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let got = seen.lock().unwrap().len();
            let done = pos >= head && got >= 18;
            done.then_some(())
                .ok_or(format!("position {pos} of {head}, {got} events received"))
        },
    )
    .await;
    let stats = agent.uplink_stats.clone();
    agent.stop().await.unwrap();
    stop.cancel();
    sub.await.unwrap();
    let mut seqs: Vec<u32> = seen
        .lock()
        .unwrap()
        .keys()
        .filter(|k| k.0 == "dev-q")
        .map(|k| k.2)
        .collect();
    seqs.sort_unstable();
    let want: Vec<u32> = (0..20).filter(|s| *s != 5 && *s != 6).collect();
    assert_eq!(seqs, want);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.events_quarantined.load(Relaxed), 2);
    let reasons: Vec<String> = reader
        .prepare("SELECT reason FROM quarantine WHERE link LIKE 'uplink %'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains(
            "the contract refuses 2 stored event(s), e.g. seq 5: ts_ms -62135596800001 is outside"
        ),
        "{reasons:?}"
    );
}

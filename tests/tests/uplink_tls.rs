//! The real `ferry` agent's uplink over TLS to a real mosquitto, with certificates made in the
//! test (rcgen): a custom CA plus username/password (MQTT 5), and mutual TLS with the agent's
//! client certificate (MQTT 3.1.1). Every event the simulated devices saw acked must arrive at
//! a subscriber, counted as distinct `(device, boot, seq)`. Negative cases: a broker whose
//! certificate another CA signed, and mutual TLS without a client certificate: the agent sends
//! nothing and its log says why.
//!
//! The test's own subscriber uses a second, plain listener of the same broker.
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_contract::{self as contract, EventBatch};
use ferry_tests::agent::AgentProc;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions, MosquittoTls, TestPki};
use ferry_tests::{free_port, try_poll_until};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

/// Writes `dir/ferry.toml` (gateway `gateway`, the store in `dir`, the device listener on a free
/// port, then `uplink` as the `[uplink]` table's lines) and starts the `ferry` binary on it.
pub(crate) async fn start_agent(dir: &Path, gateway: &str, uplink: &str) -> AgentProc {
    let tcp = free_port();
    let mut agent = AgentProc::new(
        dir,
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"{gateway}\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n[uplink]\n{uplink}",
            dir.join("ferry.db").display().to_string()
        ),
        Some(tcp),
    );
    agent.start().await;
    agent
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
}

/// A subscriber to `filter` that keeps every message; returns once the broker has granted the
/// subscription.
pub(crate) async fn capture(
    port: u16,
    client_id: &str,
    credentials: Option<(&str, &str)>,
    filter: &str,
    stop: CancellationToken,
) -> Arc<Mutex<Vec<Captured>>> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(Some(16 << 20));
    if let Some((u, p)) = credentials {
        o.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let sink = got.clone();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        let _client = client; // dropping the client would end the event loop
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Captured {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("subscriber: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("subscribed within 10 s")
        .unwrap();
    got
}

fn tls(pki: &TestPki, require_certificate: bool) -> MosquittoTls {
    MosquittoTls {
        cafile: pki.ca.clone(),
        certfile: pki.server_cert.clone(),
        keyfile: pki.server_key.clone(),
        require_certificate,
    }
}

/// One test's broker: mosquitto with a TLS listener made by `tls` from a fresh PKI, plus a plain
/// listener on `plain_port` for the test's own subscriber. Fields drop in order: the broker stops
/// before the PKI's directory goes.
struct TlsBroker {
    broker: Mosquitto,
    pki: TestPki,
    plain_port: u16,
    _pki_dir: tempfile::TempDir,
}

impl TlsBroker {
    fn start(tls: impl FnOnce(&TestPki) -> MosquittoTls, users: Vec<(String, String)>) -> Self {
        let pki_dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(pki_dir.path());
        let plain_port = free_port();
        let broker = Mosquitto::start(MosquittoOptions {
            tls: Some(tls(&pki)),
            users,
            extra: format!("listener {plain_port} 127.0.0.1\n"),
            ..MosquittoOptions::default()
        });
        TlsBroker {
            broker,
            pki,
            plain_port,
            _pki_dir: pki_dir,
        }
    }

    /// The agent's `[uplink]` table: this broker's TLS listener, trusting the test CA, plus `extra`.
    fn uplink(&self, extra: &str) -> String {
        format!(
            "broker = \"127.0.0.1:{}\"\nca_file = {}\n{extra}",
            self.broker.port(),
            path(&self.pki.ca)
        )
    }
}

/// `devices` simulated devices with 2 sensors each, streaming to the agent's TCP listener.
fn sim(agent: &AgentProc, devices: usize, interval_ms: u32, secs: u64) -> ferry_sim::SimConfig {
    ferry_sim::SimConfig::tcp(agent.tcp().unwrap(), devices, 2, interval_ms).for_secs(secs)
}

fn path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// Streams from simulated devices through the agent's TLS uplink and checks that every acked
/// event arrived at the plain-listener subscriber.
async fn every_acked_event_arrives(
    plain_port: u16,
    sub_credentials: Option<(&str, &str)>,
    uplink: String,
) {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let got = capture(
        plain_port,
        "tls-test-sub",
        sub_credentials,
        "ferry/v1/#",
        stop.clone(),
    )
    .await;
    let mut agent = start_agent(dir.path(), "gw-tls", &uplink).await;
    let report = ferry_sim::run(sim(&agent, 4, 10, 3), CancellationToken::new()).await;
    let t = &report.totals;
    assert!(t.acked > 1_000, "devices streamed: {t:?}");
    assert_eq!((t.dropped, t.unacked_at_end), (0, 0), "{t:?}");
    // Acked by the agent: for each device and boot, every seq below `acked_next`.
    let mut expected: HashSet<(String, u32, u32)> = HashSet::new();
    for d in &report.devices {
        for (i, b) in d.boots.iter().enumerate() {
            for seq in 0..b.acked_next {
                expected.insert((d.device_id.clone(), i as u32 + 1, seq));
            }
        }
    }
    assert_eq!(expected.len() as u64, t.acked);
    let seen = |got: &Mutex<Vec<Captured>>| -> (HashSet<(String, u32, u32)>, usize) {
        let got = got.lock().unwrap();
        let mut keys = HashSet::new();
        let mut status = 0;
        for m in got.iter() {
            match contract::parse_topic(&m.topic) {
                Some(contract::Topic::Events { .. }) => {
                    let b = EventBatch::decode(&m.payload).expect("valid batch");
                    for e in b.events {
                        keys.insert((b.device.clone(), b.boot, e.seq));
                    }
                }
                Some(contract::Topic::Status { .. }) => status += 1,
                _ => {}
            }
        }
        (keys, status)
    };
    // At the deadline, the checks below say what is missing.
    let _ = try_poll_until(
        Duration::from_secs(30),
        "every acked event at the subscriber",
        async || expected.is_subset(&seen(&got).0),
    )
    .await;
    let (keys, status) = seen(&got);
    agent.terminate().await;
    stop.cancel();
    let missing: Vec<_> = expected.difference(&keys).take(5).collect();
    let extra: Vec<_> = keys.difference(&expected).take(5).collect();
    eprintln!(
        "TLS uplink: devices acked {} events, the subscriber saw {} distinct",
        t.acked,
        keys.len()
    );
    assert!(
        missing.is_empty(),
        "{} acked events never arrived, e.g. {missing:?}; agent log:\n{}",
        expected.difference(&keys).count(),
        agent.log()
    );
    assert!(extra.is_empty(), "arrived but never acked: {extra:?}");
    assert!(status >= 1, "the birth message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn uplink_over_tls_with_a_custom_ca_and_a_password_delivers_every_acked_event() {
    let b = &TlsBroker::start(
        |pki| tls(pki, false),
        vec![
            ("gw-tls".into(), "gw-s3cret".into()),
            ("sub".into(), "sub-pass".into()),
        ],
    );
    let uplink = b.uplink(
        "username = \"gw-tls\"\npassword = \"gw-s3cret\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
    );
    every_acked_event_arrives(b.plain_port, Some(("sub", "sub-pass")), uplink).await;
    // The agent's connection was the TLS listener's, authenticated by its password.
    let line = agent_connection(&b.broker, "ferry-gw-tls");
    assert!(line.contains("p5") && line.contains("u'gw-tls'"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn uplink_over_mutual_tls_with_mqtt_3_1_1_delivers_every_acked_event() {
    let b = &TlsBroker::start(|pki| tls(pki, true), vec![]);
    let uplink = b.uplink(&format!(
        "protocol = \"3.1.1\"\ncert_file = {}\nkey_file = {}\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
        path(&b.pki.client_cert),
        path(&b.pki.client_key)
    ));
    every_acked_event_arrives(b.plain_port, None, uplink).await;
    let line = agent_connection(&b.broker, "ferry-gw-tls");
    assert!(
        line.contains("(p2,"),
        "MQTT 3.1.1 (mosquitto logs it as p2): {line}"
    );
}

/// mosquitto's "New client connected" line for `client_id`, checked to be on the TLS listener
/// (its "New connection from ADDR on port P" line has the same peer address).
fn agent_connection(broker: &Mosquitto, client_id: &str) -> String {
    let log = broker.log();
    let client = log
        .lines()
        .find(|l| {
            l.contains("New client connected from") && l.contains(&format!(" as {client_id} "))
        })
        .unwrap_or_else(|| panic!("{client_id} never connected; mosquitto log:\n{log}"));
    let peer = client
        .split("connected from ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert!(
        log.contains(&format!(
            "New connection from {peer} on port {}",
            broker.port()
        )),
        "{client_id} connected through the TLS listener; mosquitto log:\n{log}"
    );
    client.to_owned()
}

/// Runs the agent with `uplink` against `broker` while a device streams, and checks that nothing
/// reached the broker; returns the agent's log line about the failed connection.
async fn agent_sends_nothing(plain_port: u16, uplink: String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let got = capture(plain_port, "tls-neg-sub", None, "ferry/v1/#", stop.clone()).await;
    let mut agent = start_agent(dir.path(), "gw-tls", &uplink).await;
    let report = ferry_sim::run(sim(&agent, 1, 20, 2), CancellationToken::new()).await;
    assert!(report.totals.acked > 50, "{:?}", report.totals);
    let line = agent
        .wait_log_line(&["Uplink cannot reach the broker"], Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no connection error in the agent's log:\n{}", agent.log()));
    // Retries keep failing: still nothing after several backoff rounds.
    let retried = try_poll_until(Duration::from_secs(10), "3 retries logged", async || {
        let n = agent
            .log()
            .matches("Uplink cannot reach the broker")
            .count();
        (n >= 3).then_some(()).ok_or(n)
    });
    retried
        .await
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    agent.terminate().await;
    stop.cancel();
    let got = got.lock().unwrap();
    assert!(
        got.is_empty(),
        "the broker received {} messages, e.g. on {}",
        got.len(),
        got[0].topic
    );
    assert!(
        !agent.log().contains("Uplink connected"),
        "the agent never connects:\n{}",
        agent.log()
    );
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn a_broker_certificate_from_another_ca_is_refused_and_the_log_says_why() {
    // The broker presents a certificate for the right names, signed by a CA the agent does not
    // trust.
    let b = &TlsBroker::start(
        |pki| MosquittoTls {
            cafile: pki.other_ca.clone(),
            certfile: pki.other_server_cert.clone(),
            keyfile: pki.other_server_key.clone(),
            require_certificate: false,
        },
        vec![],
    );
    let uplink = b.uplink("backoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n");
    let line = agent_sends_nothing(b.plain_port, uplink).await;
    eprintln!("agent log: {line}");
    assert!(
        line.contains("UnknownIssuer") && line.contains("not signed by a CA in uplink.ca_file"),
        "the log line names the certificate problem: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn mutual_tls_without_a_client_certificate_is_refused_and_the_log_says_why() {
    let b = &TlsBroker::start(|pki| tls(pki, true), vec![]);
    let uplink = b.uplink("backoff_min = \"50ms\"\nbackoff_max = \"200ms\"\n");
    let line = agent_sends_nothing(b.plain_port, uplink).await;
    eprintln!("agent log: {line}");
    assert!(
        line.contains("client certificate") && line.contains("uplink.cert_file"),
        "the log line names the missing client certificate: {line}"
    );
}

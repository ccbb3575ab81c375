//! `ferry-bridge` (the real binary) between a real mosquitto and a real PostgreSQL, each test
//! with its own broker and cluster: exactly-once through duplicates, resends and broker
//! restarts; SIGTERM and SIGKILL of the bridge mid-stream; dead letters; two replicas sharing
//! the load; the jsonl sink; health and metrics through database and broker outages; TLS; flag
//! errors. One module, because every scenario runs the same rig (broker, cluster, bridge
//! process, publisher) and the same exactly-once check.
use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferry_contract::{events_topic, Compression, Encoding, SCHEMA_VERSION};
use ferry_tests::bridge::{
    assert_exactly_once, ferry_bridge_bin, test_batch, BridgeProcess, Publisher,
};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions, MosquittoTls, TestPki};
use ferry_tests::poll::TimedOut;
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::{poll_until, try_poll_until};
use tokio::io::{AsyncBufReadExt, BufReader};

const T: Duration = Duration::from_secs(60);

struct Rig {
    broker: Mosquitto,
    pg: Postgres,
}

fn rig() -> Rig {
    Rig {
        broker: Mosquitto::start(MosquittoOptions::default()),
        pg: Postgres::start(PostgresOptions::default()),
    }
}

fn args(rig: &Rig, client_id: &str) -> Vec<String> {
    [
        "--broker",
        &rig.broker.addr(),
        "--client-id",
        client_id,
        "--database",
        &rig.pg.conn_str(),
        "--batch-ms",
        "20",
    ]
    .map(String::from)
    .to_vec()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.map(|r| r.get(0)).unwrap_or(-1)
}

/// Polls `sql` (a count) until it returns `want`.
async fn wait_count(db: &tokio_postgres::Client, sql: &str, want: i64, timeout: Duration) {
    poll_until(timeout, format!("{sql} to be {want}"), async || {
        let n = count(db, sql).await;
        (n == want).then_some(()).ok_or(n)
    })
    .await;
}

/// Polls `sql` (a count) until it returns at least `want`, for up to [`T`].
async fn at_least(db: &tokio_postgres::Client, sql: &str, want: i64) -> Result<(), TimedOut> {
    try_poll_until(T, format!("{sql} to reach {want}"), async || {
        let n = count(db, sql).await;
        (n >= want).then_some(()).ok_or(n)
    })
    .await
}

/// A publishing stream that runs until the test has done its disruptions, so every disruption
/// falls inside the stream however fast or slow the machine is. Batch `i` of device `d` carries
/// seqs `i * per .. (i + 1) * per` of boot 1.
struct Stream {
    task: tokio::task::JoinHandle<anyhow::Result<u32>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Stream {
    /// At least 50 batches; at most 5,000, which ends a stream nobody stops.
    const MIN_BATCHES: u32 = 50;
    const MAX_BATCHES: u32 = 5_000;

    fn start(
        publisher: &std::sync::Arc<Publisher>,
        gateway: &'static str,
        devices: &'static [&'static str],
        per: u32,
        pause: Duration,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, done) = (publisher.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut i = 0;
            while i < Self::MIN_BATCHES
                || (!done.load(std::sync::atomic::Ordering::Acquire) && i < Self::MAX_BATCHES)
            {
                for d in devices {
                    let b = test_batch(gateway, d, 1, i * per..(i + 1) * per);
                    p.publish_batch(&b, Encoding::Binary).await?;
                }
                i += 1;
                tokio::time::sleep(pause).await;
            }
            anyhow::Ok(i)
        });
        Stream { task, stop }
    }

    /// Fails if the stream has already ended (an error, or the cap).
    async fn still_running(&mut self, what: &str) -> anyhow::Result<()> {
        if self.task.is_finished() {
            let ended = (&mut self.task).await?;
            anyhow::bail!("publishing ended before {what}: {ended:?}");
        }
        Ok(())
    }

    /// Stops the stream and returns how many batches per device it published.
    async fn finish(self) -> anyhow::Result<u32> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let batches = self.task.await??;
        anyhow::ensure!(
            batches < Self::MAX_BATCHES,
            "publishing hit its cap of {} batches before the test stopped it",
            Self::MAX_BATCHES
        );
        Ok(batches)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn bridge_stores_each_event_exactly_once_through_duplicates_and_resends() -> anyhow::Result<()>
{
    let rig = rig();
    let mut bridge = BridgeProcess::start(&args(&rig, "bridge-x1")).await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-x1");
    let encodings = [
        (Encoding::Json, Compression::None),
        (Encoding::Binary, Compression::None),
        (Encoding::Json, Compression::Deflate),
        (Encoding::Binary, Compression::Deflate),
    ];
    let mut expected = Vec::new();
    let mut offered = 0u64;
    let mut k = 0;
    // Ids that need escaping in a topic level: `%` in a gateway id, `+` in a device id.
    for gw in ["gw-a", "gw%b"] {
        for dev in ["d1", "d+2"] {
            for boot in [1, 2] {
                for start in (0..500).step_by(50) {
                    let (enc, comp) = encodings[k % encodings.len()];
                    k += 1;
                    let b = test_batch(gw, dev, boot, start..start + 50);
                    let topic = events_topic(gw, dev);
                    publisher.publish(&topic, b.encode(enc, comp)).await?;
                    offered += 50;
                    if start % 100 == 0 {
                        // An exact duplicate ...
                        publisher.publish(&topic, b.encode(enc, comp)).await?;
                        offered += 50;
                    }
                    if start >= 50 {
                        // ... and a resend overlapping the previous batch.
                        let overlap = test_batch(gw, dev, boot, start - 25..start + 25);
                        publisher.publish_batch(&overlap, Encoding::Json).await?;
                        offered += 50;
                    }
                }
                expected.push((gw.to_owned(), dev.to_owned(), boot, 500));
            }
        }
    }
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    wait_count(&db, "SELECT count(*) FROM ferry_events", 8 * 500, T).await;
    assert_exactly_once(&db, &expected).await?;
    // Every offered event is accounted for as inserted or duplicate once all are acked.
    bridge.wait_acked(publisher.acked(), T).await?;
    assert_eq!(
        bridge.metric("ferry_bridge_events_inserted_total").await?,
        4000.0
    );
    assert_eq!(
        bridge.metric("ferry_bridge_duplicates_total").await?,
        (offered - 4000) as f64
    );
    let gateways = db
        .query(
            "SELECT gateway, last_event_ts = 'epoch'::timestamptz + (1760000000000 + 499 * 10) * interval '1 ms' \
             FROM ferry_gateways ORDER BY gateway COLLATE \"C\"",
            &[],
        )
        .await?;
    let gateways: Vec<(String, bool)> = gateways.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        gateways,
        [("gw%b".to_owned(), true), ("gw-a".to_owned(), true)]
    );
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn bridge_loses_nothing_while_the_broker_restarts_repeatedly() -> anyhow::Result<()> {
    let mut rig = rig();
    let mut bridge = BridgeProcess::start(&args(&rig, "bridge-r1")).await?;
    bridge.wait_healthy(T).await?;
    let publisher = std::sync::Arc::new(Publisher::connect(rig.broker.port(), "pub-r1"));
    const DEVICES: [&str; 4] = ["dev-0", "dev-1", "dev-2", "dev-3"];
    const PER: u32 = 40;
    const RESTARTS: u32 = 4;
    let mut stream = Stream::start(&publisher, "gw-r", &DEVICES, PER, Duration::from_millis(10));
    for r in 0..RESTARTS {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream
            .still_running(&format!("broker restart {}", r + 1))
            .await?;
        rig.broker.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        rig.broker.start_again();
        // Each restart must find the bridge connected: after a few failed attempts its backoff
        // (100 ms doubling) can outlast a fixed pause on a busy machine.
        poll_until(T, "the bridge to reconnect", async || {
            let up = bridge.metric("ferry_bridge_up{link=\"mqtt\"}").await;
            up.is_ok_and(|v| v == 1.0)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let batches = stream.finish().await?;
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    let want = i64::from(DEVICES.len() as u32 * batches * PER);
    at_least(&db, "SELECT count(*) FROM ferry_events", want)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}; bridge logs:\n{}\nbroker log:\n{}",
                bridge.logs(),
                rig.broker.log()
            )
        });
    let expected: Vec<_> = DEVICES
        .iter()
        .map(|d| ("gw-r".to_owned(), d.to_string(), 1, batches * PER))
        .collect();
    assert_exactly_once(&db, &expected).await?;
    let lost = bridge
        .metric("ferry_bridge_mqtt_connection_lost_total")
        .await?;
    assert!(
        lost >= f64::from(RESTARTS),
        "{lost} connection losses seen for {RESTARTS} restarts; bridge logs:\n{}",
        bridge.logs()
    );
    eprintln!(
        "broker restarts: {RESTARTS} over {batches} batches; republished after 'no matching subscribers': {}",
        publisher.republished()
    );
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn bridge_dead_letters_invalid_payloads_and_stores_the_rest() -> anyhow::Result<()> {
    let rig = rig();
    let mut bridge = BridgeProcess::start(&args(&rig, "bridge-i1")).await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-i1");
    let topic = events_topic("gw", "d1");
    let json = |b: &ferry_contract::EventBatch| b.encode(Encoding::Json, Compression::None);
    let mut wrong_version = test_batch("gw", "d1", 1, 100..110);
    wrong_version.v = SCHEMA_VERSION + 1;
    let mut not_increasing = test_batch("gw", "d1", 1, 200..210);
    not_increasing.events[4].seq = not_increasing.events[3].seq;
    let mut nul_sensor = test_batch("gw", "d1", 1, 300..310);
    nul_sensor.events[0].sensor = "t\0".into();
    let mut year_0 = test_batch("gw", "d1", 1, 400..410);
    year_0.events[3].ts_ms = -62_135_596_800_001;
    let binary = |b: &ferry_contract::EventBatch| b.encode(Encoding::Binary, Compression::None);
    let mut trailing = binary(&test_batch("gw", "d1", 1, 500..510));
    trailing.push(0);
    // `boot` (after magic, v, "gw" and "d1") as the two-byte varint 81 00 instead of 01.
    let canonical = binary(&test_batch("gw", "d1", 1, 600..610));
    assert_eq!(canonical[8], 0x01);
    let mut long_varint = canonical[..8].to_vec();
    long_varint.extend([0x81, 0x00]);
    long_varint.extend(&canonical[9..]);
    let mut after_deflate =
        test_batch("gw", "d1", 1, 700..710).encode(Encoding::Json, Compression::Deflate);
    after_deflate.extend(b"xyz");
    let other = |gw: &str, dev: &str| {
        let b = test_batch(gw, dev, 1, 0..10);
        (events_topic(gw, dev), json(&b))
    };
    let (gw_plus, gw_plus_payload) = other("g+w", "d1");
    let long_gw = "g".repeat(65);
    let (gw_long, gw_long_payload) = other(&long_gw, "d1");
    let long_dev = "d".repeat(33);
    let (dev_long, dev_long_payload) = other("gw", &long_dev);
    let bad_topic = "ferry/v1/gw/%zz/events".to_owned();
    // (topic, payload, reason the dead letter starts with)
    let bad: Vec<(String, Vec<u8>, &str)> = vec![
        (topic.clone(), b"{not json".to_vec(), "malformed payload: "),
        (
            topic.clone(),
            json(&wrong_version),
            "unsupported schema version 2 (this build reads 1)",
        ),
        (
            topic.clone(),
            json(&test_batch("gw", "d2", 1, 0..10)),
            "topic names gw/d1 but the payload says gw/d2",
        ),
        (
            topic.clone(),
            json(&not_increasing),
            "invalid batch: events[4].seq 203 does not increase",
        ),
        (
            topic.clone(),
            vec![0x42, 1, 2],
            "malformed payload: unknown first byte 0x42",
        ),
        (
            topic.clone(),
            json(&nul_sensor),
            "invalid batch: events[0].sensor \"t\\0\" contains NUL",
        ),
        (
            topic.clone(),
            json(&year_0),
            "invalid batch: events[3].ts_ms -62135596800001 is outside",
        ),
        (
            topic.clone(),
            trailing,
            "malformed payload: binary: 1 byte(s) after the batch",
        ),
        (
            topic.clone(),
            long_varint,
            "malformed payload: binary: not canonical at offset 8",
        ),
        (
            topic.clone(),
            after_deflate,
            "bad compression: 3 byte(s) after the end of the deflate stream",
        ),
        (
            gw_plus,
            gw_plus_payload,
            "invalid batch: gateway \"g+w\" contains '+'",
        ),
        (
            gw_long,
            gw_long_payload,
            "invalid batch: gateway is 65 bytes",
        ),
        (
            dev_long,
            dev_long_payload,
            "invalid batch: device is 33 bytes",
        ),
        (
            bad_topic.clone(),
            json(&test_batch("gw", "d1", 1, 800..810)),
            "invalid topic: topic level 4 (\"%zz\") is not a percent-encoded id",
        ),
    ];
    for i in 0..5u32 {
        publisher
            .publish_batch(
                &test_batch("gw", "d1", 1, i * 10..(i + 1) * 10),
                Encoding::Json,
            )
            .await?;
    }
    for (t, payload, _) in &bad {
        publisher.publish(t, payload.clone()).await?;
    }
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    wait_count(
        &db,
        "SELECT count(*) FROM ferry_dead_letters",
        bad.len() as i64,
        T,
    )
    .await;
    wait_count(&db, "SELECT count(*) FROM ferry_events", 50, T).await;
    bridge.wait_acked(publisher.acked(), T).await?;
    assert_exactly_once(&db, &[("gw".into(), "d1".into(), 1, 50)]).await?;
    let rows = db
        .query(
            "SELECT topic, reason, payload FROM ferry_dead_letters ORDER BY id",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), bad.len());
    // Commit lanes run in parallel, so row order need not be publish order: match by payload.
    let stored: Vec<(String, String, Vec<u8>)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    for (topic, payload, reason) in &bad {
        let (t, r, _) = stored
            .iter()
            .find(|(_, _, p)| p == payload)
            .unwrap_or_else(|| panic!("no dead letter kept the raw payload for {reason:?}"));
        assert_eq!(t, topic);
        assert!(r.starts_with(reason), "reason {r:?}, want {reason:?}");
    }
    for (class, n) in [
        ("topic", 1.0),
        ("malformed", 4.0),
        ("version", 1.0),
        ("topic_mismatch", 1.0),
        ("invalid", 6.0),
        ("compression", 1.0),
        ("database", 0.0),
    ] {
        let series = format!("ferry_bridge_dead_letters_total{{reason=\"{class}\"}}");
        assert_eq!(bridge.metric(&series).await?, n, "{series}");
    }
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

/// NaN and the infinities are readings (D1): JSON carries them as strings, binary as bits, and
/// PostgreSQL stores them natively; finite values keep every bit, -0.0 included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn non_finite_and_exact_values_are_stored_as_sent() -> anyhow::Result<()> {
    let rig = rig();
    let mut bridge = BridgeProcess::start(&args(&rig, "bridge-v1")).await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-v1");
    let values = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        15.066666603088379, // an f32 widened: was stored as 0x402e222220000001
        f64::from(f32::MAX),
        f64::from(f32::from_bits(1)),
    ];
    for (encoding, device) in [(Encoding::Json, "json"), (Encoding::Binary, "binary")] {
        let mut b = test_batch("gw-v", device, 1, 0..values.len() as u32);
        for (e, v) in b.events.iter_mut().zip(values) {
            e.value = v;
        }
        publisher.publish_batch(&b, encoding).await?;
    }
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    let want = 2 * values.len() as i64;
    if let Err(e) = at_least(&db, "SELECT count(*) FROM ferry_events", want).await {
        let dead: Vec<String> = db
            .query("SELECT reason FROM ferry_dead_letters", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        panic!("{e}; dead letters: {dead:?}; logs:\n{}", bridge.logs());
    }
    let rows = db
        .query(
            "SELECT device, seq, value, value::text FROM ferry_events ORDER BY device, seq",
            &[],
        )
        .await?;
    let texts = ["NaN", "Infinity", "-Infinity", "-0"];
    for r in &rows {
        let (device, seq, value, text): (String, i64, f64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let sent = values[seq as usize];
        assert_eq!(
            value.to_bits(),
            sent.to_bits(),
            "{device} seq {seq}: sent {sent:?}, stored {value:?} ({text})"
        );
        if let Some(t) = texts.get(seq as usize) {
            assert_eq!(&text, t, "{device} seq {seq}");
        }
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM ferry_dead_letters").await,
        0
    );
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn two_bridges_share_the_subscription_and_store_exactly_once() -> anyhow::Result<()> {
    let rig = rig();
    let mut a = BridgeProcess::start(&args(&rig, "bridge-s-a")).await?;
    let mut b = BridgeProcess::start(&args(&rig, "bridge-s-b")).await?;
    a.wait_healthy(T).await?;
    b.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-s1");
    // Every batch twice in a row: round robin hands the copies to different replicas, whose
    // transactions then race on the same rows (the unique-violation fallback).
    const MESSAGES: u32 = 400;
    for i in 0..MESSAGES / 16 {
        for d in 0..8 {
            let batch = test_batch("gw-s", &format!("d{d}"), 1, i * 25..(i + 1) * 25);
            publisher.publish_batch(&batch, Encoding::Binary).await?;
            publisher.publish_batch(&batch, Encoding::Json).await?;
        }
    }
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    wait_count(
        &db,
        "SELECT count(*) FROM ferry_events",
        i64::from(MESSAGES / 2 * 25),
        T,
    )
    .await;
    let expected: Vec<_> = (0..8)
        .map(|d| ("gw-s".to_owned(), format!("d{d}"), 1, MESSAGES / 16 * 25))
        .collect();
    assert_exactly_once(&db, &expected).await?;
    let ma = a.metric("ferry_bridge_messages_total").await?;
    let mb = b.metric("ferry_bridge_messages_total").await?;
    assert_eq!(
        ma + mb,
        f64::from(MESSAGES),
        "each message went to one replica"
    );
    for (name, m) in [("a", ma), ("b", mb)] {
        assert!(
            m >= 0.2 * f64::from(MESSAGES),
            "replica {name} got {m} of {MESSAGES} messages"
        );
    }
    // Every copy is accounted for once all acks are in: inserted by one replica, a duplicate
    // for the other.
    poll_until(T, format!("{MESSAGES} messages acked"), async || {
        let acks = a.metric("ferry_bridge_acks_total").await?
            + b.metric("ferry_bridge_acks_total").await?;
        anyhow::ensure!(acks >= f64::from(MESSAGES), "{acks} acked");
        Ok(())
    })
    .await;
    let mut inserted = 0.0;
    let mut duplicates = 0.0;
    for p in [&a, &b] {
        inserted += p.metric("ferry_bridge_events_inserted_total").await?;
        duplicates += p.metric("ferry_bridge_duplicates_total").await?;
    }
    assert_eq!(inserted, f64::from(MESSAGES / 2 * 25));
    assert_eq!(duplicates, f64::from(MESSAGES / 2 * 25));
    let mut retries = 0.0;
    for p in [&a, &b] {
        retries += p.metric("ferry_bridge_conflict_retries_total").await?;
    }
    eprintln!("batches retried after a concurrent insert: {retries}");
    for p in [a, b] {
        let (status, logs) = p.terminate().await?;
        assert!(status.success(), "exit {status}; logs:\n{logs}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto"]
async fn jsonl_sink_prints_every_event_once() -> anyhow::Result<()> {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let mut bridge = BridgeProcess::start(
        &[
            "--broker",
            &broker.addr(),
            "--client-id",
            "bridge-j1",
            "--sink",
            "jsonl",
        ]
        .map(String::from),
    )
    .await?;
    bridge.wait_healthy(T).await?;
    let (status, body) = bridge.get("/healthz").await?;
    assert_eq!(status, 200);
    assert!(body.contains("\"database\":\"not used\""), "{body}");
    let mut lines = BufReader::new(bridge.take_stdout().expect("stdout")).lines();
    let publisher = Publisher::connect(broker.port(), "pub-j1");
    for i in 0..50u32 {
        let b = test_batch("gw-j", "dev", 3, i * 20..(i + 1) * 20);
        publisher.publish_batch(&b, Encoding::Json).await?;
    }
    publisher.wait_all_acked(T).await?;
    let mut seen = HashSet::new();
    let t0 = Instant::now();
    while seen.len() < 1000 {
        let line = tokio::time::timeout(T.saturating_sub(t0.elapsed()), lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} of 1000 lines; logs:\n{}", seen.len(), bridge.logs())
            })??
            .expect("stdout open");
        let v: serde_json::Value = serde_json::from_str(&line)?;
        assert_eq!(v["gateway"], "gw-j");
        assert_eq!(v["device"], "dev");
        assert_eq!(v["boot"], 3);
        assert_eq!(v["boot_id"], 0xB000 + 3);
        let seq = v["seq"].as_u64().expect("seq") as u32;
        assert_eq!(v["value"], ferry_tests::bridge::test_value(3, seq));
        assert_eq!(v["ts_ms"], ferry_tests::bridge::test_ts_ms(seq));
        assert!(v["sensor"].is_string());
        assert!(seen.insert(seq), "seq {seq} printed twice");
    }
    assert_eq!(seen, (0..1000).collect::<HashSet<u32>>());
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    assert_eq!(
        lines.next_line().await?,
        None,
        "nothing more after the last event"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn health_and_metrics_follow_outages_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut rig = rig();
    let mut bridge = BridgeProcess::start(&args(&rig, "bridge-h1")).await?;
    bridge.wait_healthy(T).await?;
    let (status, body) = bridge.get("/healthz").await?;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        v,
        serde_json::json!({"status":"ok","mqtt":"up","database":"up"})
    );
    let publisher = Publisher::connect(rig.broker.port(), "pub-h1");
    publisher
        .publish_batch(&test_batch("gw-h", "d", 1, 0..10), Encoding::Json)
        .await?;
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    wait_count(&db, "SELECT count(*) FROM ferry_events", 10, T).await;
    // The counters are updated after the commit that made the rows visible: wait for them too.
    let series = [
        "ferry_bridge_messages_total 1",
        "ferry_bridge_events_inserted_total 10",
        "ferry_bridge_up{link=\"database\"} 1",
        "ferry_bridge_up{link=\"mqtt\"} 1",
    ];
    poll_until(T, "the metrics of the first batch", async || {
        let (_, metrics) = bridge.get("/metrics").await?;
        let missing: Vec<_> = series
            .iter()
            .filter(|s| !metrics.lines().any(|l| l == **s))
            .collect();
        anyhow::ensure!(missing.is_empty(), "no {missing:?} in\n{metrics}");
        Ok(())
    })
    .await;
    // ts of the newest event is fixed in the past, so the lag is large and positive.
    let lag = bridge
        .metric("ferry_bridge_gateway_lag_seconds{gateway=\"gw-h\"}")
        .await?;
    assert!(lag > 1000.0, "lag {lag}");
    let age = bridge
        .metric("ferry_bridge_gateway_last_message_age_seconds{gateway=\"gw-h\"}")
        .await?;
    assert!((0.0..30.0).contains(&age), "age {age}");
    drop(db);

    // Database down: unhealthy, and what arrives meanwhile waits unacked.
    rig.pg.stop_immediate();
    wait_health(&bridge, 503, "\"database\":\"down\"").await?;
    publisher
        .publish_batch(&test_batch("gw-h", "d", 1, 10..20), Encoding::Json)
        .await?;
    publisher.wait_all_acked(T).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bridge.metric("ferry_bridge_acks_total").await?, 1.0);
    rig.pg.start_again();
    wait_health(&bridge, 200, "\"status\":\"ok\"").await?;
    let db = rig.pg.client().await;
    wait_count(&db, "SELECT count(*) FROM ferry_events", 20, T).await;
    assert_exactly_once(&db, &[("gw-h".into(), "d".into(), 1, 20)]).await?;

    // Broker down: unhealthy until it is back.
    rig.broker.stop();
    wait_health(&bridge, 503, "\"mqtt\":\"down\"").await?;
    rig.broker.start_again();
    wait_health(&bridge, 200, "\"status\":\"ok\"").await?;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    assert!(logs.contains("Writer drained"), "{logs}");
    Ok(())
}

async fn wait_health(bridge: &BridgeProcess, status: u16, needle: &str) -> anyhow::Result<()> {
    let what = format!("/healthz {status} with {needle}");
    let healthz = try_poll_until(T, what, async || {
        let (s, body) = bridge.get("/healthz").await?;
        anyhow::ensure!(s == status && body.contains(needle), "/healthz {s} {body}");
        Ok(())
    });
    healthz
        .await
        .map_err(|e| anyhow::anyhow!("{e}; logs:\n{}", bridge.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn bridge_connects_with_mutual_tls_and_a_password() -> anyhow::Result<()> {
    let pki_dir = tempfile::tempdir()?;
    let pki = TestPki::generate(pki_dir.path());
    let plain_port = ferry_tests::free_port();
    let broker = Mosquitto::start(MosquittoOptions {
        tls: Some(MosquittoTls {
            cafile: pki.ca.clone(),
            certfile: pki.server_cert.clone(),
            keyfile: pki.server_key.clone(),
            require_certificate: true,
        }),
        users: vec![
            ("bridge".into(), "s3cret".into()),
            ("pub".into(), "p".into()),
        ],
        // A second, plain listener for the test's publisher.
        extra: format!("listener {plain_port} 127.0.0.1\n"),
        ..MosquittoOptions::default()
    });
    let pg = Postgres::start(PostgresOptions::default());
    let tls_args = |cert: bool| {
        let mut a: Vec<String> = [
            "--broker",
            &broker.addr(),
            "--client-id",
            "bridge-t1",
            "--database",
            &pg.conn_str(),
            "--username",
            "bridge",
            "--tls-ca",
            pki.ca.to_str().expect("utf-8 path"),
        ]
        .map(String::from)
        .to_vec();
        if cert {
            for (flag, p) in [
                ("--tls-cert", &pki.client_cert),
                ("--tls-key", &pki.client_key),
            ] {
                a.push(flag.into());
                a.push(p.display().to_string());
            }
        }
        a
    };
    // Without a client certificate the broker refuses the handshake: never healthy.
    let mut no_cert = BridgeProcess::start(&tls_args(false)).await?;
    assert!(no_cert.wait_healthy(Duration::from_secs(3)).await.is_err());
    no_cert.kill().await;

    let mut bridge =
        BridgeProcess::start_with_env(&tls_args(true), &[("FERRY_BRIDGE_PASSWORD", "s3cret")])
            .await?;
    bridge.wait_healthy(T).await?;
    // Publisher on the plain listener, with its password (mosquitto checks it there too).
    let publisher = {
        use rumqttc::v5::{AsyncClient, MqttOptions};
        let mut o = MqttOptions::new("pub-t1", "127.0.0.1", plain_port);
        o.set_credentials("pub", "p");
        let (client, mut el) = AsyncClient::new(o, 10);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        client
    };
    let b = test_batch("gw-t", "d", 1, 0..5);
    publisher
        .publish(
            events_topic("gw-t", "d"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            b.encode(Encoding::Json, Compression::None),
        )
        .await?;
    let db = pg.client().await;
    wait_count(&db, "SELECT count(*) FROM ferry_events", 5, T).await;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_named() -> anyhow::Result<()> {
    let bin = ferry_bridge_bin()?;
    for (args, needle) in [
        (vec!["--broker", "nohost"], "--broker: expected HOST:PORT"),
        (
            vec!["--broker", "h:70000"],
            "--broker: \"70000\" is not a port number",
        ),
        (
            vec!["--database", "host=h port=x"],
            "--database: invalid connection string",
        ),
        (vec![], "--database: required with --sink postgres"),
        (vec!["--sink", "jsonl", "--listen", "nope"], "--listen:"),
        (
            vec!["--sink", "jsonl", "--tls-ca", "/nonexistent/ca.pem"],
            "--tls-ca: cannot read /nonexistent/ca.pem",
        ),
        (
            vec!["--sink", "jsonl", "--password", "x"],
            "--password: given without --username",
        ),
    ] {
        let out = tokio::process::Command::new(&bin)
            .args(&args)
            .env_remove("FERRY_BRIDGE_PASSWORD")
            .env_remove("FERRY_BRIDGE_DATABASE")
            .output()
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn copy_insert_method_is_exactly_once_too() -> anyhow::Result<()> {
    let rig = rig();
    let mut a = args(&rig, "bridge-c1");
    a.extend(["--insert-method".into(), "copy".into()]);
    let mut bridge = BridgeProcess::start(&a).await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-c1");
    for start in (0..1000).step_by(100) {
        let b = test_batch("gw-c", "d", 1, start..start + 100);
        publisher.publish_batch(&b, Encoding::Binary).await?;
        publisher.publish_batch(&b, Encoding::Json).await?;
    }
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    at_least(&db, "SELECT count(*) FROM ferry_events", 1000)
        .await
        .unwrap_or_else(|e| panic!("{e}; logs:\n{}", bridge.logs()));
    assert_exactly_once(&db, &[("gw-c".into(), "d".into(), 1, 1000)]).await?;
    // The second copy of each batch may still be committing when the rows are all there:
    // count once the bridge has acked (after commit) every message.
    bridge.wait_acked(publisher.acked(), T).await?;
    assert_eq!(
        bridge.metric("ferry_bridge_duplicates_total").await?,
        1000.0
    );
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn bridge_sigterm_and_sigkill_mid_stream_lose_nothing() -> anyhow::Result<()> {
    let rig = rig();
    let a = args(&rig, "bridge-k1");
    let mut bridge = BridgeProcess::start(&a).await?;
    bridge.wait_healthy(T).await?;
    let publisher = std::sync::Arc::new(Publisher::connect(rig.broker.port(), "pub-k1"));
    const DEVICES: [&str; 4] = ["d0", "d1", "d2", "d3"];
    const PER: u32 = 50;
    let mut stream = Stream::start(&publisher, "gw-k", &DEVICES, PER, Duration::from_millis(5));
    // Stop the bridge mid-stream, each time once it has committed and acked 200 messages:
    // gracefully, then as a crash, then let the last one take the rest of the stream.
    bridge.wait_acked(200, T).await?;
    stream.still_running("the SIGTERM").await?;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "SIGTERM exit {status}; logs:\n{logs}");
    assert!(logs.contains("Writer drained"), "{logs}");
    bridge = BridgeProcess::start(&a).await?;
    bridge.wait_healthy(T).await?;
    bridge.wait_acked(200, T).await?;
    stream.still_running("the SIGKILL").await?;
    bridge.kill().await;
    bridge = BridgeProcess::start(&a).await?;
    bridge.wait_healthy(T).await?;
    bridge.wait_acked(200, T).await?;
    let batches = stream.finish().await?;
    publisher.wait_all_acked(T).await?;
    let db = rig.pg.client().await;
    wait_count(
        &db,
        "SELECT count(*) FROM ferry_events",
        i64::from(DEVICES.len() as u32 * batches * PER),
        T,
    )
    .await;
    let expected: Vec<_> = DEVICES
        .iter()
        .map(|d| ("gw-k".to_owned(), d.to_string(), 1, batches * PER))
        .collect();
    assert_exactly_once(&db, &expected).await?;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

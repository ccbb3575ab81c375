//! The agent's uplink: forwarding rate from a pre-filled store to a local mosquitto at QoS 1.
//!
//! A store is filled once with N events (100 devices, 2 sensors, consecutive seqs) and copied for
//! each run. Each run starts the real agent (in-process, no device sources) on its copy with
//! `[uplink]` pointing at a private mosquitto, and times from the start until the broker has
//! PUBACKed every event (the uplink's own `events_acked` counter, which only moves on PUBACK).
//! A subscriber keeps every message; after the timing it decodes them and checks that every
//! event arrived (distinct (device, seq) = N), so a fast run that lost data fails.
//!
//! `backlog_rate` is set far above the link's capacity in the main rows: a pre-filled store is
//! all backlog, and the default 50,000 events/s cap is a policy (it keeps an outage's backlog
//! from crowding out live data), not the link's capacity. One row runs with the defaults.
//!
//! Messages hold one device's events from one read, so with 100 devices and the default
//! `read_limit` of 10,000 a message carries about 100 events; the "reads of 100k" row shows
//! larger messages.
//!
//! Run: `cargo bench -p ferry-tests --bench uplink`. Options (env): FERRY_BENCH_EVENTS
//! (default 2,000,000), FERRY_BENCH_ONLY (rows whose label contains it).
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_contract::EventBatch;
use ferry_tests::env_u64;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio_util::sync::CancellationToken;

const DEVICES: u64 = 100;
const SENSORS: u64 = 2;

/// The table's columns: header, width, left-aligned. The header and every row are printed by
/// [`line`] from an array of this length, so each value sits under its own label.
const COLUMNS: [(&str, usize, bool); 10] = [
    ("row", 22, true),
    ("enc", 7, true),
    ("compr", 8, true),
    ("batch", 6, false),
    ("read_limit", 10, false),
    ("secs", 8, false),
    ("events/s", 12, false),
    ("messages", 9, false),
    ("MB/s wire", 10, false),
    ("verified", 9, false),
];

/// One line of the table.
fn line(cells: [String; COLUMNS.len()]) -> String {
    let cells: Vec<String> = COLUMNS
        .iter()
        .zip(&cells)
        .map(|(&(_, width, left), cell)| {
            if left {
                format!("{cell:<width$}")
            } else {
                format!("{cell:>width$}")
            }
        })
        .collect();
    cells.join(" ")
}

/// Fills `db` with `n` events through the agent's own schema (the agent creates the file).
async fn prefill(db: &Path, n: u64) -> anyhow::Result<()> {
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"bench-gw\"\n[store]\npath = {:?}\n",
        db.display().to_string()
    );
    let settings = ferry_agent::config::Settings::from_toml(&toml, "bench.toml", |_| None)?;
    ferry_agent::Agent::start(&settings).await?.stop().await?;
    let mut c = rusqlite::Connection::open(db)?;
    let tx = c.transaction()?;
    let now = 1_790_000_000_000_i64;
    for d in 1..=DEVICES {
        tx.execute(
            "INSERT INTO devices (id, device_id, firmware, first_seen_ms, last_seen_ms) VALUES (?1, ?2, 'bench', ?3, ?3)",
            rusqlite::params![d, format!("dev-{d:04}"), now],
        )?;
        tx.execute(
            "INSERT INTO boots (device, boot_no, boot_id, tick_hz, started_ms, next_seq) VALUES (?1, 1, ?2, 1000, ?3, ?4)",
            rusqlite::params![d, 1000 + d, now, (n / DEVICES) + 1],
        )?;
        for s in 0..SENSORS {
            tx.execute(
                "INSERT INTO sensors (device, idx, name, unit, interval_ms) VALUES (?1, ?2, ?3, 'x', 10)",
                rusqlite::params![d, s, format!("sensor-{s}")],
            )?;
        }
    }
    {
        let mut st = tx.prepare(
            "INSERT INTO events (id, device, boot_no, seq, sensor, ts_ms, value) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)",
        )?;
        for i in 0..n {
            let (d, seq) = (i % DEVICES + 1, i / DEVICES);
            st.execute(rusqlite::params![
                i as i64 + 1,
                d as i64,
                seq as i64,
                (seq % SENSORS) as i64,
                now + (seq as i64) * 10,
                20.0 + (i % 1000) as f64 / 100.0
            ])?;
        }
    }
    tx.commit()?;
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Subscribes to every events topic and keeps the payloads.
async fn subscriber(
    port: u16,
    stop: CancellationToken,
    got: Arc<Mutex<Vec<Bytes>>>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new("bench-sub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(16 << 20));
    let (client, mut el) = AsyncClient::new(o, 100);
    client
        .subscribe("ferry/v1/+/+/events", QoS::AtLeastOnce)
        .await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    got.lock().unwrap().push(Bytes::new()); // marker: subscribed
                }
                Ok(Event::Incoming(Packet::Publish(p))) => got.lock().unwrap().push(p.payload),
                Ok(_) => {}
                Err(e) => anyhow::bail!("subscriber: {e}"),
            }
        }
    }
}

struct Row {
    label: &'static str,
    encoding: &'static str,
    compression: &'static str,
    batch: u32,
    read_limit: u32,
    unlimited: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let n = env_u64("FERRY_BENCH_EVENTS", 2_000_000);
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    let broker = Mosquitto::start(MosquittoOptions::default());
    let dir = tempfile::tempdir()?;
    let template = dir.path().join("template.db");
    let t = Instant::now();
    prefill(&template, n).await?;
    println!(
        "uplink forwarding from a pre-filled store ({n} events, {DEVICES} devices) to mosquitto at QoS 1, \
         inflight 64, on this host ({} CPUs); store filled in {:.1} s\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        t.elapsed().as_secs_f64()
    );
    println!("{}", line(COLUMNS.map(|(head, ..)| head.to_owned())));
    let rows = [
        Row {
            label: "json (default)",
            encoding: "json",
            compression: "none",
            batch: 1000,
            read_limit: 10_000,
            unlimited: true,
        },
        Row {
            label: "binary",
            encoding: "binary",
            compression: "none",
            batch: 1000,
            read_limit: 10_000,
            unlimited: true,
        },
        Row {
            label: "binary, reads of 100k",
            encoding: "binary",
            compression: "none",
            batch: 5000,
            read_limit: 100_000,
            unlimited: true,
        },
        Row {
            label: "json+deflate",
            encoding: "json",
            compression: "deflate",
            batch: 1000,
            read_limit: 10_000,
            unlimited: true,
        },
        Row {
            label: "json, default backlog",
            encoding: "json",
            compression: "none",
            batch: 1000,
            read_limit: 10_000,
            unlimited: false,
        },
    ];
    let mut failed = false;
    for (i, row) in rows.iter().enumerate() {
        if !only.is_empty() && !row.label.contains(&only) {
            continue;
        }
        let db = dir.path().join(format!("run-{i}.db"));
        std::fs::copy(&template, &db)?;
        // A fresh subscriber per run; wait for its SUBACK before starting the agent.
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let sub = tokio::spawn(subscriber(broker.port(), stop.clone(), got.clone()));
        let t = Instant::now();
        while got.lock().unwrap().is_empty() {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "no SUBACK");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rate = if row.unlimited {
            "backlog_rate = 100000000\n"
        } else {
            ""
        };
        let toml = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"bench-gw\"\n[store]\npath = {:?}\n[uplink]\nbroker = \"127.0.0.1:{}\"\n\
             client_id = \"bench-{i}\"\nencoding = \"{}\"\ncompression = \"{}\"\nmax_batch_events = {}\n\
             max_message_bytes = \"1 MiB\"\nread_limit = {}\n{rate}",
            db.display().to_string(),
            broker.port(),
            row.encoding,
            row.compression,
            row.batch,
            row.read_limit,
        );
        let settings = ferry_agent::config::Settings::from_toml(&toml, "bench.toml", |_| None)?;
        let t0 = Instant::now();
        let agent = ferry_agent::Agent::start(&settings).await?;
        let stats = agent.uplink_stats.clone();
        let deadline = Duration::from_secs(60 + n / 10_000);
        while stats.events_acked.load(Relaxed) < n {
            anyhow::ensure!(
                t0.elapsed() < deadline,
                "{}: not done in {deadline:?}: {stats:?}",
                row.label
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        let messages = stats.messages_acked.load(Relaxed);
        agent.stop().await?;
        // Verify at the subscriber: every (device, seq) exactly present.
        let t = Instant::now();
        let (mut distinct, mut bytes) = (0u64, 0u64);
        let mut seen = vec![false; n as usize];
        loop {
            let payloads: Vec<Bytes> = std::mem::take(&mut *got.lock().unwrap());
            for p in payloads.iter().filter(|p| !p.is_empty()) {
                bytes += p.len() as u64;
                let b = EventBatch::decode(p)?;
                let d: u64 = b.device.trim_start_matches("dev-").parse()?;
                for e in b.events {
                    let i = (u64::from(e.seq) * DEVICES + d - 1) as usize;
                    if i < seen.len() && !seen[i] {
                        seen[i] = true;
                        distinct += 1;
                    }
                }
            }
            if distinct >= n || t.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        let _ = sub.await;
        let ok = distinct == n;
        failed |= !ok;
        println!(
            "{}",
            line([
                row.label.to_owned(),
                row.encoding.to_owned(),
                row.compression.to_owned(),
                row.batch.to_string(),
                row.read_limit.to_string(),
                format!("{secs:.2}"),
                format!("{:.0}", n as f64 / secs),
                messages.to_string(),
                format!("{:.1}", bytes as f64 / secs / 1e6),
                if ok {
                    "all".to_owned()
                } else {
                    format!("{distinct}/{n}")
                },
            ])
        );
        let _ = std::fs::remove_file(&db);
    }
    anyhow::ensure!(!failed, "some events did not arrive at the subscriber");
    Ok(())
}

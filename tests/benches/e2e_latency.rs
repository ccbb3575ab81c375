//! End-to-end latency, device → PostgreSQL, at 10,000 events/s.
//!
//! Simulated devices (the real firmware core, `ferry-sim`; 10 devices × 2 sensors every 2 ms)
//! stream over TCP into the agent (in-process, `durability = "full"`), whose uplink forwards to a
//! private mosquitto; `ferry-bridge` (the release binary) writes to a private PostgreSQL.
//!
//! Latency of an event = the wall-clock time at which a reader polling PostgreSQL (every 1 ms,
//! one device's rows, by primary key) first sees its row committed, minus the event's `ts` (the
//! time the device took the sample, mapped to UTC by the agent; devices and agent share this
//! host's clock). So it covers: device send, agent commit + ack, uplink batching, the broker,
//! the bridge's batching and its PostgreSQL commit, plus up to ~1 ms of polling. The first 3 s
//! are warm-up and not counted.
//!
//! Rows: the defaults (agent `flush_interval` 20 ms, uplink `linger` 20 ms, bridge
//! `--batch-ms 50`), and a low-latency setting (2 ms, 2 ms, 5 ms).
//!
//! Run: `cargo bench -p ferry-tests --bench e2e_latency`. Options (env): FERRY_BENCH_SECS
//! (measured seconds per row, default 20).
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_tests::bridge::{ferry_bridge_bin, BridgeProcess};
use ferry_tests::env_u64;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use tokio_util::sync::CancellationToken;

const WARMUP: Duration = Duration::from_secs(3);

struct Row {
    label: &'static str,
    flush: &'static str,
    linger: &'static str,
    bridge_ms: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs = env_u64("FERRY_BENCH_SECS", 20);
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin()?;
    let db = pg.client().await;
    println!(
        "device -> agent -> mosquitto -> ferry-bridge -> PostgreSQL at 10,000 events/s \
         (10 devices x 2 sensors every 2 ms), {secs} s measured per row, this host ({} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<12} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "row",
        "flush",
        "linger",
        "bridge",
        "samples",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "events/s"
    );
    let rows = [
        Row {
            label: "defaults",
            flush: "20ms",
            linger: "20ms",
            bridge_ms: 50,
        },
        Row {
            label: "low-latency",
            flush: "2ms",
            linger: "2ms",
            bridge_ms: 5,
        },
    ];
    for (i, row) in rows.iter().enumerate() {
        let gateway = format!("lat-{i}");
        // One client id for every row: a bridge that left the shared subscription for good
        // would keep its share of messages queued in its session.
        let bridge = BridgeProcess::start_healthy(
            &broker.addr(),
            "bridge-lat",
            &pg.conn_str(),
            row.bridge_ms,
        )
        .await?;
        let dir = tempfile::tempdir()?;
        let toml = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"{gateway}\"\n[store]\npath = {:?}\ndurability = \"full\"\nflush_interval = \"{}\"\n\
             [devices]\ntcp_listen = \"127.0.0.1:0\"\n[uplink]\nbroker = \"{}\"\nclient_id = \"agent-lat-{i}\"\nlinger = \"{}\"\n",
            dir.path().join("ferry.db").display().to_string(),
            row.flush,
            broker.addr(),
            row.linger,
        );
        let settings = ferry_agent::config::Settings::from_toml(&toml, "bench.toml", |_| None)?;
        let agent = ferry_agent::Agent::start(&settings).await?;
        let total = WARMUP + Duration::from_secs(secs);
        let sim = ferry_sim::SimConfig {
            devices: 10,
            sensors: 2,
            interval_ms: 2,
            duration: Some(total),
            transport: ferry_sim::Transport::Tcp(agent.tcp_addr.expect("tcp listener")),
            ..ferry_sim::SimConfig::default()
        };
        let t0 = Instant::now();
        let start_ms = now_ms();
        let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
        // Poll one device's rows by primary key; latency = first seen - ts.
        let poll = db
            .prepare(
                "SELECT seq, (extract(epoch FROM ts) * 1000)::int8 FROM ferry_events \
                 WHERE gateway = $1 AND device = 'sim-0000' AND boot = 1 AND seq > $2 ORDER BY seq",
            )
            .await?;
        let mut last: i64 = -1;
        let mut lat = Vec::new();
        while t0.elapsed() < total + Duration::from_secs(2) {
            let rows = db.query(&poll, &[&gateway, &last]).await?;
            let seen = now_ms();
            for r in rows {
                let (seq, ts): (i64, i64) = (r.get(0), r.get(1));
                last = last.max(seq);
                if ts >= start_ms + WARMUP.as_millis() as i64 {
                    lat.push(seen - ts);
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let report = devices.await?;
        let forwarded = agent
            .uplink_stats
            .events_acked
            .load(std::sync::atomic::Ordering::Relaxed);
        let messages = agent
            .uplink_stats
            .messages_acked
            .load(std::sync::atomic::Ordering::Relaxed);
        let stored: i64 = db
            .query_one(
                "SELECT count(*) FROM ferry_events WHERE gateway = $1",
                &[&gateway],
            )
            .await?
            .get(0);
        agent.stop().await?;
        bridge.terminate().await?;
        lat.sort_unstable();
        println!(
            "{:<12} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>9.0}",
            row.label,
            row.flush,
            row.linger,
            format!("{}ms", row.bridge_ms),
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0),
            stored as f64 / total.as_secs_f64(),
        );
        anyhow::ensure!(
            report.totals.acked as i64 <= stored,
            "{}: devices saw {} acked, the uplink forwarded {forwarded} in {messages} messages, \
             but only {stored} rows landed",
            row.label,
            report.totals.acked
        );
        anyhow::ensure!(!lat.is_empty(), "{}: no samples observed", row.label);
    }
    Ok(())
}

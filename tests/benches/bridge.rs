//! `ferry-bridge` into PostgreSQL: events landed per second, with a real mosquitto and a
//! private PostgreSQL (default durability: fsync and synchronous_commit on), on this machine.
//!
//! Scenarios:
//! - backlog: the bridge's session exists, the bridge is stopped, N events are published (they
//!   queue in the broker), then the bridge starts: time from its start to the last event
//!   committed.
//! - live: the bridge runs while a publisher sends N events as fast as it can: time from the
//!   first publish to the last event committed.
//!
//! Run: `cargo bench -p ferry-tests --bench bridge` (builds ferry-bridge in release).
//!
//! Measured on the 2-CPU dev machine (1M events, 500 per message, 2 commit lanes, another
//! build running part of the time): backlog 181k-242k events/s, live 198k-209k events/s;
//! PostgreSQL uses ~7-9 CPU s per million events, the bridge ~0.6 s, mosquitto < 0.1 s.
//! Options (env): FERRY_BENCH_EVENTS (default 1,000,000), FERRY_BENCH_PER_MESSAGE (500),
//! FERRY_BENCH_ONLY (runs whose "scenario method" contains it), FERRY_BENCH_TIMEOUT_S (600).
use std::time::{Duration, Instant};

use ferry_contract::Encoding;
use ferry_tests::bridge::{test_batch, BridgeProcess, Publisher};
use ferry_tests::env_u64;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};

const LOG: &str = "warn";

struct Run {
    scenario: &'static str,
    method: &'static str,
    batch_events: usize,
    encoding: Encoding,
}

struct Result_ {
    events: u64,
    secs: f64,
    batches: f64,
    insert_p: f64,
    /// CPU seconds during the measured window: ferry-bridge, postgres (all processes),
    /// mosquitto.
    cpu: [f64; 3],
}

/// CPU seconds (user + system) so far of every process named ferry-bridge, postgres and
/// mosquitto (processes that ended are not counted).
fn cpu_by_process() -> [f64; 3] {
    let tick = 100.0; // USER_HZ on Linux
    let mut out = [0.0; 3];
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // After the comm: state is field 0, utime 11, stime 12.
        let cpu = (t(11) + t(12)) / tick;
        match comm {
            "ferry-bridge" => out[0] += cpu,
            "postgres" => out[1] += cpu,
            "mosquitto" => out[2] += cpu,
            _ => {}
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_u64("FERRY_BENCH_EVENTS", 1_000_000);
    let per = env_u64("FERRY_BENCH_PER_MESSAGE", 500) as u32;
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions {
        // Fewer checkpoints during a run; durability settings stay at their defaults.
        conf: vec![
            "max_wal_size = '8GB'".into(),
            "checkpoint_timeout = '30min'".into(),
        ],
    });
    let db = pg.client().await;
    let runs = [
        ("backlog", "unnest", 20_000, Encoding::Binary),
        ("backlog", "copy", 20_000, Encoding::Binary),
        ("backlog", "unnest", 5_000, Encoding::Binary),
        ("backlog", "unnest", 50_000, Encoding::Binary),
        ("backlog", "unnest", 20_000, Encoding::Json),
        ("live", "unnest", 20_000, Encoding::Binary),
        ("live", "copy", 20_000, Encoding::Binary),
    ]
    .map(|(scenario, method, batch_events, encoding)| Run {
        scenario,
        method,
        batch_events,
        encoding,
    });
    println!(
        "ferry-bridge -> PostgreSQL: {total} events in messages of {per}; mosquitto and PostgreSQL on this host ({} CPUs)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:<7} {:>7} {:<7} {:>10} {:>8} {:>12} {:>8} {:>13}",
        "scenario",
        "method",
        "batch",
        "enc",
        "events",
        "secs",
        "events/s",
        "commits",
        "mean commit"
    );
    let mut json = Vec::new();
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    for (i, run) in runs.iter().enumerate() {
        if !only.is_empty() && !format!("{} {}", run.scenario, run.method).contains(&only) {
            continue;
        }
        db.batch_execute(
            "DROP TABLE IF EXISTS ferry_events, ferry_gateways, ferry_dead_letters; CHECKPOINT",
        )
        .await?;
        let r = one_run(&broker, &pg, run, i, total, per).await?;
        let rate = r.events as f64 / r.secs;
        let enc = match run.encoding {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        };
        println!(
            "{:<8} {:<7} {:>7} {:<7} {:>10} {:>8.2} {:>12.0} {:>8} {:>10.1} ms   {:.2} / {:.2} / {:.2}",
            run.scenario,
            run.method,
            run.batch_events,
            enc,
            r.events,
            r.secs,
            rate,
            r.batches,
            r.insert_p * 1e3,
            r.cpu[0],
            r.cpu[1],
            r.cpu[2]
        );
        json.push(serde_json::json!({
            "scenario": run.scenario, "method": run.method, "batch_events": run.batch_events,
            "encoding": enc, "events": r.events, "events_per_message": per, "seconds": r.secs,
            "events_per_s": rate.round(), "commits": r.batches, "mean_commit_s": r.insert_p,
            "cpu_s": {"bridge": r.cpu[0], "postgres": r.cpu[1], "mosquitto": r.cpu[2]},
        }));
        let stored: i64 = db
            .query_one("SELECT count(*) FROM ferry_events", &[])
            .await?
            .get(0);
        anyhow::ensure!(stored as u64 == total, "{stored} rows stored, want {total}");
    }
    println!(
        "\n{}",
        serde_json::json!({ "bench": "ferry-bridge", "runs": json })
    );
    Ok(())
}

async fn one_run(
    broker: &Mosquitto,
    pg: &Postgres,
    run: &Run,
    i: usize,
    total: u64,
    per: u32,
) -> anyhow::Result<Result_> {
    let args: Vec<String> = [
        "--broker".into(),
        broker.addr(),
        // One client id for every run: a shared subscription keeps handing messages to the
        // sessions of departed members, so a new id per run would strand a share of them.
        "--client-id".into(),
        "bench-bridge".into(),
        "--database".into(),
        pg.conn_str(),
        "--batch-events".into(),
        run.batch_events.to_string(),
        "--insert-method".into(),
        run.method.into(),
        "--log".into(),
        "warn".into(),
    ]
    .to_vec();
    let messages = total.div_ceil(u64::from(per));
    let devices = 20u64;
    let gateway = format!("gw-bench-{i}");
    let publisher = Publisher::connect(broker.port(), &format!("bench-pub-{i}"));
    let publish_all = || async {
        for m in 0..messages {
            let dev = m % devices;
            let k = (m / devices) as u32;
            let b = test_batch(&gateway, &format!("dev-{dev}"), 1, k * per..(k + 1) * per);
            publisher.publish_batch(&b, run.encoding).await?;
        }
        anyhow::Ok(())
    };
    let start;
    let cpu0;
    let mut bridge;
    if run.scenario == "backlog" {
        // Create the session and its subscription, then leave.
        let mut first = BridgeProcess::start_with_env(&args, &[("RUST_LOG", LOG)]).await?;
        first.wait_healthy(Duration::from_secs(60)).await?;
        first.terminate().await?;
        publish_all().await?;
        publisher.wait_all_acked(Duration::from_secs(300)).await?;
        cpu0 = cpu_by_process();
        start = Instant::now();
        bridge = BridgeProcess::start_with_env(&args, &[("RUST_LOG", LOG)]).await?;
    } else {
        bridge = BridgeProcess::start_with_env(&args, &[("RUST_LOG", LOG)]).await?;
        bridge.wait_healthy(Duration::from_secs(60)).await?;
        cpu0 = cpu_by_process();
        start = Instant::now();
        publish_all().await?;
    }
    let want = (messages * u64::from(per)) as f64;
    let deadline = Instant::now() + Duration::from_secs(env_u64("FERRY_BENCH_TIMEOUT_S", 600));
    loop {
        if let Ok(n) = bridge.metric("ferry_bridge_events_inserted_total").await {
            if n >= want {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all events landed in time; logs:\n{}",
            bridge.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu_by_process();
    let cpu = [0, 1, 2].map(|i| cpu1[i] - cpu0[i]);
    let batches = bridge.metric("ferry_bridge_batches_total").await?;
    let sum = bridge.metric("ferry_bridge_insert_seconds_sum").await?;
    bridge.terminate().await?;
    Ok(Result_ {
        events: messages * u64::from(per),
        secs,
        batches,
        insert_p: sum / batches.max(1.0),
        cpu,
    })
}

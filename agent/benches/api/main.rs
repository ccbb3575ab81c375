//! Local API benchmark: read latency and HTTP throughput of the real `ferry` process over a store of
//! 10 million events, and the ingest rate while the API serves a dashboard-like 1,000 requests/s.
//!
//! ```text
//! cargo bench -p ferry-agent --bench api                      # full run (first run also builds the store)
//! FERRY_BENCH_QUICK=1 cargo bench -p ferry-agent --bench api  # 300k events, 100 devices, short windows
//! ```
//!
//! Knobs (env, `_` allowed in numbers): `FERRY_BENCH_EVENTS` (10,000,000), `FERRY_BENCH_DEVICES`
//! (1,000), `FERRY_BENCH_REQUESTS` (requests per latency row, 500), `FERRY_BENCH_LATEST_ROUNDS`
//! (rounds over every device, 5), `FERRY_BENCH_LOAD_SECS` (per throughput row, 10),
//! `FERRY_BENCH_INGEST_SECS` (10), `FERRY_BENCH_INGEST_RUNS` (runs of each ingest variant, 2),
//! `FERRY_BENCH_INGEST_DEVICES` (52: 520,000 samples/s; more offers more than the writer takes),
//! `FERRY_BENCH_LADDER` (device counts, e.g. `56,59,62,65,68,71,74,77,80`: instead of fixed-rate
//! ingest runs, climb these offered rates and report the highest each API load sustains),
//! `FERRY_BENCH_SKIP` (comma list of `reads`, `load`, `cost`, `ingest`).
//!
//! ```text
//! cargo bench -p ferry-agent --bench api                       # reads, throughput, costs, ingest
//! FERRY_BENCH_SKIP=reads,ingest cargo bench -p ferry-agent --bench api   # API CPU per request
//! FERRY_BENCH_SKIP=reads,cost FERRY_BENCH_INGEST_RUNS=3 FERRY_BENCH_INGEST_SECS=6 \
//!   FERRY_BENCH_LADDER=56,59,62,65,68,71,74,77,80 cargo bench -p ferry-agent --bench api
//! ```
//!
//! How it measures:
//! - **The store** is generated directly with rusqlite, not through ingest (a day of timestamps would
//!   take a day): the file is created by `ferry_agent::store::open_writer`, so schema, migrations and
//!   pragmas are the agent's; `devices`, `boots`, `sensors` and `events` are bulk-inserted (ids in
//!   time order, devices interleaved like real ingest, the `(device, ts_ms)` index built row by row as
//!   ingest builds it); `latest` and `devices.events_total` are then filled by the statements of
//!   migration v4. No `ANALYZE` (the agent never runs one). The file is cached in
//!   `target/bench-data/` and rebuilt when missing or when its schema version or counts are off.
//! - **The agent** is the real `ferry run` process (like the ingest benchmark), so its CPU and memory
//!   are its own; the client runs in this process on the same 2 cores. Before the reads the store file
//!   is read once so it sits in the OS page cache (a warm gateway; cold-disk reads are not measured).
//! - **Latency rows** are sequential requests on one keep-alive connection, timed client-side from
//!   sending to the last body byte. The "SQL" columns time the same `store::query` calls the handler
//!   makes, on a read connection in this process: the difference is HTTP, JSON and thread hops.
//! - **Throughput rows**: N closed-loop clients, each with its own keep-alive connection.
//! - **Ingest**: 52 simulated devices x 10 sensors at 1 kHz (520,000 samples/s offered, the ingest
//!   benchmark's throughput scenario), `durability = "full"`, a fresh store per run. Variants, run in
//!   turn so a noisy stretch of the machine hits all of them: no API load; a paced (open-loop) client
//!   at 1,000 requests/s against the live devices with the dashboard-like mix; the same without its
//!   `series` share; `latest` only. "acked" counts samples the devices saw acked (a sample evicted
//!   from a device's ring while its ack was late is not acked even if it was stored).
//! - **Query plans** are printed for the statements the store runs (`store::query`'s and
//!   `store::rollup`'s SQL, public for this), not for copies.
//!
//! Layout: [`dataset`] (the generated store), [`plans`] (query plans), [`load`] (the agent process
//! and the HTTP clients), [`reads`] (latency and throughput rows), [`ingest`] (ingest while
//! serving, API CPU per request), [`ladder`] (the capacity ladder), [`report`] (statistics and
//! tables); this file reads the knobs and runs the parts in order.

#[path = "../common/mod.rs"]
mod common;
mod dataset;
mod ingest;
mod ladder;
mod load;
mod plans;
mod reads;
mod report;

use std::time::Instant;

use ingest::{ingest_devices, ingest_run, ingest_summary, request_costs, Load, INGEST_SENSORS};
use ladder::capacity_ladder;
use reads::reads;
use report::{print_ingest, print_latency, print_load};

/// The day the `series` rows ask for: 2025-06-02T00:00:00Z. The data runs from an hour before it to
/// an hour after it (26 h).
pub const DAY_MS: i64 = 1_748_822_400_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const SPAN_MS: i64 = 26 * HOUR_MS;
pub const SENSORS: [(&str, &str); 3] = [
    ("temperature", "°C"),
    ("humidity", "%"),
    ("pressure", "hPa"),
];

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

pub struct Cfg {
    pub events: u64,
    pub devices: u64,
    pub requests: usize,
    pub latest_rounds: usize,
    pub load_secs: u64,
    pub ingest_secs: u64,
    pub ingest_runs: usize,
    /// Offered rates (devices x 10 kHz) for the capacity ladder; empty: fixed-rate runs.
    pub ladder: Vec<usize>,
    pub skip: Vec<String>,
}

impl Cfg {
    pub fn from_env() -> Cfg {
        let quick = std::env::var_os("FERRY_BENCH_QUICK").is_some();
        let q = |full: u64, quick_v: u64| if quick { quick_v } else { full };
        Cfg {
            events: env_u64("FERRY_BENCH_EVENTS", q(10_000_000, 300_000)),
            devices: env_u64("FERRY_BENCH_DEVICES", q(1_000, 100)).max(1),
            requests: env_u64("FERRY_BENCH_REQUESTS", q(500, 60)) as usize,
            latest_rounds: env_u64("FERRY_BENCH_LATEST_ROUNDS", q(5, 2)) as usize,
            load_secs: env_u64("FERRY_BENCH_LOAD_SECS", q(10, 3)),
            ingest_secs: env_u64("FERRY_BENCH_INGEST_SECS", q(10, 3)),
            ingest_runs: env_u64("FERRY_BENCH_INGEST_RUNS", 2) as usize,
            ladder: std::env::var("FERRY_BENCH_LADDER")
                .unwrap_or_default()
                .split(',')
                .filter_map(|d| d.trim().parse().ok())
                .collect(),
            skip: std::env::var("FERRY_BENCH_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }

    pub fn runs(&self, part: &str) -> bool {
        !self.skip.iter().any(|s| s == part)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list
    }
    let cfg = Cfg::from_env();
    let t0 = Instant::now();
    let read_results = if cfg.runs("reads") {
        Some(reads(&cfg).await)
    } else {
        None
    };
    let mut ingest = Vec::new();
    if cfg.runs("ingest") {
        let devices = ingest_devices();
        let offered = devices * INGEST_SENSORS * 1000;
        println!(
            "\ningest: {devices} devices x {INGEST_SENSORS} sensors at 1 kHz ({offered} samples/s offered), durability full, {} s per run",
            cfg.ingest_secs
        );
        // Variants alternate, so a noisy stretch of the machine hits all of them.
        for i in (1..=cfg.ingest_runs).filter(|_| cfg.ladder.is_empty()) {
            for load in [Load::None, Load::Mix, Load::NoSeries, Load::LatestOnly] {
                let label = format!("{} #{i}", load.label());
                println!("ingest run: {label} ...");
                ingest.push(ingest_run(label, load, cfg.ingest_secs, devices).await);
                print_ingest("ingest run", &ingest[ingest.len() - 1..]);
            }
        }
    }

    let costs = if cfg.runs("cost") {
        let lines = request_costs(cfg.ingest_secs).await;
        for l in &lines {
            println!("{l}");
        }
        Some(lines)
    } else {
        None
    };
    let ladder = if cfg.runs("ingest") && !cfg.ladder.is_empty() {
        Some(capacity_ladder(&cfg).await)
    } else {
        None
    };

    println!(
        "\n\n======== ferry local API benchmark ({} cores, {:.0} s) ========",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        t0.elapsed().as_secs_f64()
    );
    if let Some(r) = &read_results {
        for l in &r.lines {
            println!("{l}");
        }
        print_latency(
            "reads (sequential, one keep-alive connection; SQL = the handler's store calls in-process)",
            &r.latency,
        );
        if !r.load.is_empty() {
            print_load(
                "HTTP throughput (closed loop, keep-alive; client on the same 2 cores)",
                &r.load,
            );
        }
    }
    if !ingest.is_empty() {
        print_ingest(
            "ingest while serving (acked samples/s; API columns from the paced client)",
            &ingest,
        );
        for line in ingest_summary(&ingest) {
            println!("{line}");
        }
    }
    for l in [&costs, &ladder].into_iter().flatten() {
        for line in l {
            println!("{line}");
        }
    }
    if let Some(r) = &read_results {
        for row in &r.latency {
            println!("{}", serde_json::to_string(row).unwrap());
        }
        for row in &r.load {
            println!("{}", serde_json::to_string(row).unwrap());
        }
    }
    for row in &ingest {
        println!("{}", serde_json::to_string(row).unwrap());
    }
}

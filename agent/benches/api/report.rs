//! Statistics and the tables the benchmark prints (and their JSON rows).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ingest::Load;

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    pub fn of(mut ms: Vec<f64>) -> Stats {
        ms.sort_by(f64::total_cmp);
        Stats {
            n: ms.len(),
            p50_ms: pct(&ms, 50.0),
            p99_ms: pct(&ms, 99.0),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub request: String,
    pub http: Stats,
    pub sql: Option<Stats>,
    pub target_p99_ms: Option<f64>,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct LoadRow {
    pub route: String,
    pub clients: usize,
    pub secs: f64,
    pub requests: u64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct IngestRow {
    pub run: String,
    #[serde(skip)]
    pub load: Load,
    pub api_load: String,
    pub acked: u64,
    pub acked_per_s: f64,
    pub stored: i64,
    pub stored_per_s: f64,
    /// Samples committed per second between 3 s after the start (less in runs under 10 s) and the
    /// end of generation (the agent's own counter): the writer's rate in the steady part of the
    /// run, without the ramp-up and the drain.
    pub window_per_s: f64,
    pub agent_cpu_s: f64,
    /// This process: the simulated devices plus the HTTP client.
    pub bench_cpu_s: f64,
    pub agent_peak_rss_mb: f64,
    pub dropped_by_rings: u64,
    /// Every sample offered was generated, committed and acked (none evicted from a ring).
    pub sustained: bool,
    pub api: Option<PacedStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PacedStats {
    pub sent: u64,
    pub req_per_s: f64,
    pub ok: u64,
    pub not_ok: BTreeMap<u16, u64>,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// How late requests went out against the 1 ms schedule (queueing in the client when the
    /// server is slower than the pace).
    pub late_p99_ms: f64,
    /// Per route: p50 and p99 ms.
    pub by_route: BTreeMap<&'static str, Stats>,
}

/// A request path's route, for per-route figures.
pub fn route_of(path: &str) -> &'static str {
    if path.starts_with("/api/v1/series") {
        "series"
    } else if path.starts_with("/api/v1/events") {
        "events"
    } else {
        "latest"
    }
}

pub fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "-",
    }
}

pub fn print_latency(title: &str, rows: &[LatencyRow]) {
    println!("\n== {title} ==");
    println!(
        "{:<58} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  note",
        "request", "n", "p50 ms", "p99 ms", "max ms", "SQL p50", "SQL p99", "target", "verdict"
    );
    for r in rows {
        println!(
            "{:<58} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>8} {:>8}  {}",
            r.request,
            r.http.n,
            r.http.p50_ms,
            r.http.p99_ms,
            r.http.max_ms,
            r.sql.map_or("-".into(), |s| format!("{:.2}", s.p50_ms)),
            r.sql.map_or("-".into(), |s| format!("{:.2}", s.p99_ms)),
            r.target_p99_ms.map_or("-".into(), |t| format!("<= {t:.0}")),
            yes_no(r.met),
            r.note
        );
    }
}

pub fn print_load(title: &str, rows: &[LoadRow]) {
    println!("\n== {title} ==");
    println!(
        "{:<52} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "route", "clients", "secs", "requests", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in rows {
        println!(
            "{:<52} {:>7} {:>6.1} {:>9} {:>9.0} {:>8.2} {:>8.2} {:>7}",
            r.route, r.clients, r.secs, r.requests, r.req_per_s, r.p50_ms, r.p99_ms, r.errors
        );
    }
}

pub fn print_ingest(title: &str, rows: &[IngestRow]) {
    println!("\n== {title} ==");
    for load in [Load::None, Load::Mix, Load::NoSeries, Load::LatestOnly] {
        if rows.iter().any(|r| r.load == load) {
            println!("  {:<12} API load {}", load.label(), load.describe());
        }
    }
    println!(
        "{:<17} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "run",
        "acked",
        "acked/s",
        "stored/s",
        "window/s",
        "dropped",
        "agentCPU",
        "simCPU",
        "RSS MB",
        "API r/s",
        "p50 ms",
        "p99 ms",
        "latest",
        "events",
        "series",
        "!2xx"
    );
    for r in rows {
        let route = |a: &PacedStats, k: &str| {
            a.by_route
                .get(k)
                .map_or("-".into(), |s| format!("{:.1}", s.p99_ms))
        };
        let cols = match &r.api {
            Some(a) => [
                format!("{:.0}", a.req_per_s),
                format!("{:.2}", a.p50_ms),
                format!("{:.2}", a.p99_ms),
                route(a, "latest"),
                route(a, "events"),
                route(a, "series"),
                format!("{}", a.not_ok.values().sum::<u64>() + a.failed),
            ],
            None => std::array::from_fn(|_| "-".to_owned()),
        };
        println!(
            "{:<17} {:>9} {:>8.0} {:>8.0} {:>8.0} {:>8} {:>8.1} {:>6.1} {:>6.1} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}",
            r.run,
            r.acked,
            r.acked_per_s,
            r.stored_per_s,
            r.window_per_s,
            r.dropped_by_rings,
            r.agent_cpu_s,
            r.bench_cpu_s,
            r.agent_peak_rss_mb,
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6]
        );
    }
    println!(
        "  (latest/events/series: p99 ms per route; acked/s and stored/s over the sim's wall time incl. the drain; \
         window/s: committed from 3 s after the start to the end of generation, the agent's counter; dropped: samples evicted from device rings while waiting for acks)"
    );
}

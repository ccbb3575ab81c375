//! Ingest while serving: simulated devices feed a fresh agent while a paced client loads its API;
//! the API's CPU per request; the summary against runs without API load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_sim::{SimConfig, Transport};
use rand::rngs::SmallRng;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::common::{cpu_seconds, threads_cpu_seconds};
use crate::env_u64;
use crate::load::{get, http_client, json, paced, start_agent, stop_agent, Picker};
use crate::report::IngestRow;

/// Simulated devices in the ingest runs (`FERRY_BENCH_INGEST_DEVICES`; 52 = the ingest target's
/// 520,000 samples/s, more = overload, where `stored/s` is the writer's capacity).
pub fn ingest_devices() -> usize {
    env_u64("FERRY_BENCH_INGEST_DEVICES", 52) as usize
}

pub const INGEST_SENSORS: usize = 10;

pub const API_RATE: u64 = 1_000;

/// What the paced client asks for during an ingest run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    None,
    /// The dashboard-like mix.
    Mix,
    /// The mix with `latest` in place of `series`: what the series requests cost.
    NoSeries,
    /// Only `devices/{id}/latest`: what the request rate alone costs.
    LatestOnly,
}

impl Load {
    pub fn label(self) -> &'static str {
        match self {
            Load::None => "no API",
            Load::Mix => "API mix",
            Load::NoSeries => "API no series",
            Load::LatestOnly => "API latest",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Load::None => "none".into(),
            Load::Mix => format!(
                "{API_RATE}/s: 70% latest, 20% events since=-1m limit=100, 10% series -1h/1m"
            ),
            Load::NoSeries => format!(
                "{API_RATE}/s: the mix without series: 80% latest, 20% events since=-1m limit=100"
            ),
            Load::LatestOnly => format!("{API_RATE}/s: 100% devices/{{id}}/latest"),
        }
    }

    pub fn picker(self, devices: usize) -> Picker {
        Arc::new(move |rng: &mut SmallRng| {
            let d = format!("sim-{:04}", rng.gen_range(0..devices));
            match (self, rng.gen_range(0..100)) {
                (Load::Mix | Load::NoSeries, 70..90) => {
                    format!("/api/v1/events?device={d}&since=-1m&limit=100")
                }
                (Load::Mix, 90..) => format!(
                    "/api/v1/series?device={d}&sensor=temperature&since=-1h&bucket=1m&agg=avg"
                ),
                _ => format!("/api/v1/devices/{d}/latest"),
            }
        })
    }
}

/// The agent's `ferry_samples_committed_total` (0 when unreadable).
pub async fn committed_total(c: &reqwest::Client, base: &str) -> f64 {
    let r = get(c, &format!("{base}/metrics")).await;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix("ferry_samples_committed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// CPU seconds of this process (the simulated devices and the HTTP client).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

pub async fn ingest_run(label: String, load: Load, secs: u64, devices: usize) -> IngestRow {
    // Let the previous run's writes reach the disk first (as the ingest benchmark does).
    nix::unistd::sync();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let agent = start_agent(&format!("ingest-{load:?}"), None).await;
    let sim = SimConfig {
        devices,
        sensors: INGEST_SENSORS,
        interval_ms: 1,
        duration: Some(Duration::from_secs(secs)),
        drain_timeout: Duration::from_secs(30),
        transport: Transport::Tcp(agent.tcp),
        ..SimConfig::default()
    };
    let cpu0 = own_cpu_seconds();
    let started = Instant::now();
    let sim = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
    let window = {
        let base = agent.base();
        tokio::spawn(async move {
            let c = http_client();
            let committed = |c: reqwest::Client, base: String| async move {
                let n = committed_total(&c, &base).await;
                (Instant::now(), n)
            };
            // Past the ramp-up: 3 s, or less in short runs.
            let warm = Duration::from_secs_f64((secs as f64 * 0.3).min(3.0));
            tokio::time::sleep_until((started + warm).into()).await;
            let (t1, n1) = committed(c.clone(), base.clone()).await;
            tokio::time::sleep_until((started + Duration::from_secs(secs)).into()).await;
            let (t2, n2) = committed(c, base).await;
            (n2 - n1) / (t2 - t1).as_secs_f64()
        })
    };
    let api = if load == Load::None {
        None
    } else {
        // Start once every device is known, so no request is a 404 for a device still connecting.
        let (c, t) = (http_client(), Instant::now());
        loop {
            let r = get(&c, &format!("{}/api/v1/devices", agent.base())).await;
            let n = json(&r.body)["devices"].as_array().map_or(0, |a| a.len());
            if n == devices || t.elapsed() > Duration::from_secs(secs) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = Duration::from_secs(secs).saturating_sub(t.elapsed());
        Some(paced(agent.base(), API_RATE, left, 64, load.picker(devices)).await)
    };
    let report = sim.await.unwrap();
    let window_per_s = window.await.unwrap();
    let own_cpu = own_cpu_seconds() - cpu0;
    let (rss, cpu, stored) = stop_agent(agent).await;
    IngestRow {
        run: label,
        load,
        api_load: load.describe(),
        acked: report.totals.acked,
        acked_per_s: report.totals.acked as f64 / report.elapsed_s,
        stored,
        stored_per_s: stored as f64 / report.elapsed_s,
        window_per_s,
        agent_cpu_s: cpu,
        bench_cpu_s: own_cpu,
        agent_peak_rss_mb: rss,
        dropped_by_rings: report.totals.dropped,
        sustained: {
            let offered = (devices * INGEST_SENSORS * 1000) as f64 * secs as f64;
            let t = &report.totals;
            let api_served = api.as_ref().is_none_or(|a| {
                a.failed == 0 && a.not_ok.is_empty() && a.req_per_s >= 0.99 * API_RATE as f64
            });
            t.dropped == 0
                && t.acked == t.generated
                && t.generated as f64 >= 0.99 * offered
                && api_served
        },
        api,
    }
}

/// Devices feeding the agent while request costs are measured (10 sensors at 1 kHz each).
pub const COST_DEVICES: usize = 30;

/// The agent's CPU per request, by kind: 1,000 requests/s of one kind for `secs` while 30 devices
/// ingest 300,000 samples/s, timed as the CPU of the agent's `ferry-api` threads (its HTTP
/// workers and read threads). Returns the table's lines.
pub async fn request_costs(secs: u64) -> Vec<String> {
    let agent = start_agent("cost", None).await;
    let pid = agent.child.id().expect("agent running");
    let kinds: Vec<(&str, Picker)> = vec![
        (
            "/healthz (HTTP alone)",
            Arc::new(|_: &mut SmallRng| "/healthz".to_owned()),
        ),
        ("devices/{id}/latest", Load::LatestOnly.picker(COST_DEVICES)),
        (
            "events?device=&since=-1m&limit=100",
            Arc::new(|rng: &mut SmallRng| {
                let d = rng.gen_range(0..COST_DEVICES);
                format!("/api/v1/events?device=sim-{d:04}&since=-1m&limit=100")
            }),
        ),
        (
            "series?since=-1h&bucket=1m&agg=avg",
            Arc::new(|rng: &mut SmallRng| {
                let d = rng.gen_range(0..COST_DEVICES);
                format!("/api/v1/series?device=sim-{d:04}&sensor=temperature&since=-1h&bucket=1m&agg=avg")
            }),
        ),
        ("the mix (70/20/10)", Load::Mix.picker(COST_DEVICES)),
    ];
    let sim = SimConfig {
        devices: COST_DEVICES,
        sensors: INGEST_SENSORS,
        interval_ms: 1,
        duration: Some(Duration::from_secs((secs + 1) * kinds.len() as u64 + 10)),
        drain_timeout: Duration::from_secs(30),
        transport: Transport::Tcp(agent.tcp),
        ..SimConfig::default()
    };
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(sim, stop.clone()));
    let (c, t) = (http_client(), Instant::now());
    while json(
        &get(&c, &format!("{}/api/v1/devices", agent.base()))
            .await
            .body,
    )["devices"]
        .as_array()
        .map_or(0, |a| a.len())
        < COST_DEVICES
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "devices did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = vec![
        format!("\n== API CPU per request ({API_RATE} requests/s of one kind for {secs} s, {} samples/s ingest) ==", COST_DEVICES * INGEST_SENSORS * 1000),
        format!("{:<40} {:>8} {:>8} {:>12} {:>8} {:>14}", "request", "sent", "!2xx", "API CPU s", "us/req", "writer us/1k"),
    ];
    for (name, pick) in kinds {
        let c0 = threads_cpu_seconds(pid, "ferry-api");
        let (w0, n0) = (
            threads_cpu_seconds(pid, "ferry-store"),
            committed_total(&c, &agent.base()).await,
        );
        let stats = paced(agent.base(), API_RATE, Duration::from_secs(secs), 64, pick).await;
        let cpu = threads_cpu_seconds(pid, "ferry-api") - c0;
        let (w1, n1) = (
            threads_cpu_seconds(pid, "ferry-store"),
            committed_total(&c, &agent.base()).await,
        );
        let bad = stats.not_ok.values().sum::<u64>() + stats.failed;
        out.push(format!(
            "{name:<40} {:>8} {bad:>8} {cpu:>12.2} {:>8.0} {:>14.0}",
            stats.sent,
            1e6 * cpu / stats.sent.max(1) as f64,
            1e9 * (w1 - w0) / (n1 - n0).max(1.0)
        ));
    }
    stop.cancel();
    let _ = sim.await;
    let _ = stop_agent(agent).await;
    out
}

pub fn ingest_summary(rows: &[IngestRow]) -> Vec<String> {
    let values = |load: Load, of: fn(&IngestRow) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.load == load).map(of).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    // A noisy stretch of the machine can collapse every variant's run of one round (acks late,
    // rings evict): the median is not moved by one such round, the mean is. Both are printed.
    pub fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }
    pub fn median(v: &[f64]) -> f64 {
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    let mut out = Vec::new();
    type Figure = fn(&IngestRow) -> f64;
    let figures: [(&str, Figure); 3] = [
        ("acked", |r| r.acked_per_s),
        ("stored (committed)", |r| r.stored_per_s),
        ("committed in the steady window", |r| r.window_per_s),
    ];
    type Stat = fn(&[f64]) -> f64;
    let stats: [(&str, Stat); 2] = [("mean", mean), ("median", median)];
    for (what, of) in figures {
        for (stat, f) in stats {
            let base = values(Load::None, of);
            if base.is_empty() {
                return Vec::new();
            }
            let base = f(&base);
            out.push(format!(
                "ingest, no API load: {stat} {base:.0} {what} samples/s"
            ));
            for load in [Load::Mix, Load::NoSeries, Load::LatestOnly] {
                let v = values(load, of);
                if !v.is_empty() {
                    let m = f(&v);
                    let drop = 100.0 * (base - m) / base;
                    out.push(format!(
                        "ingest, {}: {stat} {m:.0} {what} samples/s, {drop:.1} % below (target <= 10 %: {})",
                        load.describe(),
                        if drop <= 10.0 { "met" } else { "NOT met" }
                    ));
                }
            }
        }
    }
    out
}

//! Firmware update benchmark: the real `ferry` process updates simulated devices (`ferry-sim` with
//! the real updater and bootloader over a RAM flash) through its local API, while the devices keep
//! sampling.
//!
//! ```text
//! cargo bench -p ferry-agent --bench firmware
//! FERRY_BENCH_QUICK=1 cargo bench -p ferry-agent --bench firmware
//! ```
//!
//! Scenarios (each prints a table row and a JSON line):
//! - `serial-115200`: one device on a link paced at 115,200 baud 8N1 (11,520 bytes/s each way; the
//!   simulator paces, as neither TCP nor a pty has a baud rate), a 64 KiB image. The line's own
//!   limit is 65,536 / 11,520 = 5.69 s; the figure is from the update's start (API) to the job's
//!   `done` (the new image booted and confirmed), and the ratio to the line's limit.
//! - `tcp`: the same over unpaced TCP.
//! - `rollout-50`: 50 devices (3 channels at 20 Hz each), each on its own link paced at 115,200
//!   baud, updated through one agent, 10 at a time, 64 KiB each; the ack latency (p50/p99/max) of
//!   every sample the devices took from the moment all were online to 2 s after the rollout ended,
//!   and the samples lost to the reboots (none expected: a device waits for its acks before it
//!   resets). `baseline-50` is the same setup for as long without an update: the difference is
//!   what the update costs the samples (on a serial line an ack can wait behind the chunks in
//!   flight, at most the device's window of 1 KiB: 89 ms at 11,520 bytes/s).
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{fresh_dir, spawn_agent};
use ed25519_dalek::SigningKey;
use ferry_agent::firmware::bundle::Bundle;
use ferry_sim::firmware::make_image;
use ferry_sim::{SimConfig, SimUpdate};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const IMAGE: usize = 64 * 1024;
const LINE_RATE: u32 = 11_520;

fn vendor() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn bundle(version: &str) -> Vec<u8> {
    Bundle::sign(
        make_image(version, IMAGE, true).unwrap(),
        version,
        ferry_sim::firmware::SIM_BOARD,
        &vendor(),
    )
    .unwrap()
    .to_bytes()
}

async fn post(url: &str, body: Vec<u8>) -> Value {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

struct Agent {
    child: tokio::process::Child,
    api: SocketAddr,
    devices: SocketAddr,
}

async fn agent(name: &str) -> Agent {
    let dir = fresh_dir(name);
    let api = common::free_addr();
    let devices = common::free_addr();
    let child = spawn_agent(
        &dir,
        &format!(
            "[api]\nlisten = \"{api}\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"{devices}\"\n",
            dir.join("ferry.db").display().to_string()
        ),
    );
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(api).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Agent {
        child,
        api,
        devices,
    }
}

fn sims(devices: SocketAddr, n: usize, line_rate: Option<u32>) -> SimConfig {
    SimConfig {
        update: Some(SimUpdate {
            public_key: vendor().verifying_key().to_bytes(),
            version: "1.0.0".into(),
            trial_timeout_ms: 30_000,
        }),
        line_rate,
        duration: Some(Duration::from_secs(3600)),
        measure_latency: true,
        seed: 3,
        ..SimConfig::tcp(devices, n, 3, 50)
    }
}

async fn online(api: SocketAddr, n: usize) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(&format!("http://{api}/api/v1/devices")).await;
        let up = v["devices"]
            .as_array()
            .map_or(0, |d| d.iter().filter(|d| d["online"] == true).count());
        if up >= n {
            return;
        }
        assert!(Instant::now() < until, "{up} of {n} devices online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an update and waits for its end; (seconds from start to end, the final view).
async fn update(api: SocketAddr, sha: &str, concurrency: u32) -> (f64, Value) {
    let t0 = Instant::now();
    let v = post(
        &format!("http://{api}/api/v1/firmware/updates"),
        serde_json::to_vec(
            &json!({"devices": ["sim-*"], "bundle": sha, "concurrency": concurrency}),
        )
        .unwrap(),
    )
    .await;
    let id = v["id"].as_i64().unwrap();
    loop {
        let v = get(&format!("http://{api}/api/v1/firmware/updates/{id}")).await;
        if v["state"] != "running" {
            return (t0.elapsed().as_secs_f64(), v);
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// One device's update over a line rate (or TCP); (seconds, resends reported by attempts).
async fn single(name: &str, line_rate: Option<u32>) -> Value {
    let mut a = agent(name).await;
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(sims(a.devices, 1, line_rate), stop.clone()));
    online(a.api, 1).await;
    let sha = post(
        &format!("http://{}/api/v1/firmware/bundles", a.api),
        bundle("1.1.0"),
    )
    .await["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let (secs, v) = update(a.api, &sha, 1).await;
    stop.cancel();
    let report = sim.await.unwrap();
    let _ = a.child.kill().await;
    assert_eq!(v["state"], "done", "{v}");
    let limit = line_rate.map(|r| IMAGE as f64 / f64::from(r));
    let sent: u64 = report.devices[0].boots.iter().map(|b| b.update_bytes).sum();
    json!({
        "scenario": name,
        "image_bytes": IMAGE,
        "seconds": secs,
        "line_limit_s": limit,
        "ratio_to_line": limit.map(|l| secs / l),
        "image_bytes_sent": sent,
        "lost_on_reboot": report.totals.lost_on_reboot,
    })
}

/// `devices` on paced links; with `Some(concurrency)` updated, else left alone for `idle_secs`.
async fn rollout(devices: usize, concurrency: Option<u32>, idle_secs: f64) -> Value {
    let mut a = agent("rollout").await;
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(
        sims(a.devices, devices, Some(LINE_RATE)),
        stop.clone(),
    ));
    online(a.api, devices).await;
    let sha = post(
        &format!("http://{}/api/v1/firmware/bundles", a.api),
        bundle("1.1.0"),
    )
    .await["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let (secs, v) = match concurrency {
        Some(c) => update(a.api, &sha, c).await,
        None => {
            tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
            (idle_secs, json!({"jobs": []}))
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let report = sim.await.unwrap();
    let _ = a.child.kill().await;
    let done = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "done")
        .count();
    let mut lat: Vec<u32> = report
        .devices
        .iter()
        .flat_map(|d| d.ack_latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    json!({
        "scenario": format!("{}-{devices}", if concurrency.is_some() { "rollout" } else { "baseline" }),
        "devices": devices,
        "concurrency": concurrency,
        "image_bytes": IMAGE,
        "seconds": secs,
        "done": done,
        "samples_acked": report.totals.acked,
        "lost_on_reboot": report.totals.lost_on_reboot,
        "dropped": report.totals.dropped,
        "ack_p50_ms": percentile(&lat, 0.5),
        "ack_p99_ms": percentile(&lat, 0.99),
        "ack_max_ms": percentile(&lat, 1.0),
    })
}

#[tokio::main]
async fn main() {
    let quick = std::env::var_os("FERRY_BENCH_QUICK").is_some();
    let mut rows = vec![
        single("serial-115200", Some(LINE_RATE)).await,
        single("tcp", None).await,
    ];
    let (n, c) = if quick { (10, 5) } else { (50, 10) };
    let r = rollout(n, Some(c), 0.0).await;
    let secs = r["seconds"].as_f64().unwrap_or(10.0);
    rows.push(rollout(n, None, secs).await);
    rows.push(r);
    println!(
        "\n{:<16} {:>9} {:>12} {:>8} {:>10} {:>10} {:>10}",
        "scenario", "seconds", "line limit", "ratio", "ack p50", "ack p99", "lost"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
        println!(
            "{:<16} {:>9} {:>12} {:>8} {:>10} {:>10} {:>10}",
            r["scenario"].as_str().unwrap(),
            f("seconds"),
            f("line_limit_s"),
            f("ratio_to_line"),
            f("ack_p50_ms"),
            f("ack_p99_ms"),
            r["lost_on_reboot"]
        );
    }
    for r in &rows {
        println!("{r}");
    }
}

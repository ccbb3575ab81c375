//! Bytes written per stored sample: what the agent costs an SD card or eMMC (issue 17, "measure
//! it first"). The real `ferry` process on its default settings (`durability = "full"`), fed over
//! TCP by simulated devices (`ferry-sim`), for each load of the issue:
//!
//! | load | devices × sensors × rate |
//! |---|---|
//! | `100/s` | 20 × 5 × 1 Hz |
//! | `300/s` | 10 × 3 × 10 Hz |
//! | `10k/s` | 50 × 10 × 20 Hz |
//!
//! ```text
//! cargo bench -p ferry-agent --bench disk_writes                 # 30 s per load (after 5 s)
//! FERRY_BENCH_SECS=10 cargo bench -p ferry-agent --bench disk_writes
//! FERRY_BENCH_SPLIT=1 cargo bench -p ferry-agent --bench disk_writes   # + which file, by strace
//! FERRY_BENCH_STORE='ack_budget = "1s"' cargo bench -p ferry-agent --bench disk_writes
//! ```
//!
//! `FERRY_BENCH_STORE`: lines added to the agent's `[store]` table (the SD-card setting above).
//!
//! Per load, over the measuring window: the agent's `write_bytes` from `/proc/PID/io` (bytes it
//! sent to the storage layer, the page cache's writeback included), the samples it committed and
//! its commits (from its `/metrics`), so: bytes per stored sample, commits/s, bytes and 4 KiB
//! pages per commit, and what a day of that load writes. With `FERRY_BENCH_SPLIT=1` a second run
//! of each load traces the agent's write system calls (`strace -f -y`) and splits the bytes into
//! the WAL, the database file and anything else. Tracing slows the agent, so that run gives
//! proportions only; the figures above come from the untraced run.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::{fresh_dir, spawn_agent};
use ferry_sim::SimConfig;
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Load {
    name: &'static str,
    devices: usize,
    sensors: usize,
    interval_ms: u32,
}

const LOADS: [Load; 3] = [
    Load {
        name: "100/s",
        devices: 20,
        sensors: 5,
        interval_ms: 1000,
    },
    Load {
        name: "300/s",
        devices: 10,
        sensors: 3,
        interval_ms: 100,
    },
    Load {
        name: "10k/s",
        devices: 50,
        sensors: 10,
        interval_ms: 50,
    },
];

fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A counter of the agent's `/metrics` (`name` with its `_total`).
async fn counter(api: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{api}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("metrics")
        .text()
        .await
        .unwrap();
    let want = format!("{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Bytes written per file class, from `strace -f -y` lines such as
/// `[pid 12] pwrite64(7</tmp/d/ferry.db-wal>, "..."..., 4120, 8192) = 4120`.
fn split(trace: &str) -> (u64, u64, u64, u64) {
    let (mut wal, mut db, mut log, mut other) = (0u64, 0u64, 0u64, 0u64);
    for line in trace.lines() {
        let Some(eq) = line.rfind(") = ") else {
            continue;
        };
        let Ok(n) = line[eq + 4..].trim().parse::<u64>() else {
            continue;
        };
        let path = line
            .find('<')
            .and_then(|a| line[a + 1..].find('>').map(|b| &line[a + 1..a + 1 + b]))
            .unwrap_or("");
        if path.ends_with("-wal") {
            wal += n;
        } else if path.contains(".db.log/") {
            log += n;
        } else if path.ends_with(".db") {
            db += n;
        } else {
            other += n;
        }
    }
    (wal, db, log, other)
}

async fn run(load: &Load, secs: u64, traced: bool, store_extra: &str) -> serde_json::Value {
    let dir = fresh_dir(&format!("disk-{}", load.devices));
    let api = common::free_addr();
    let devices = common::free_addr();
    let mut agent = spawn_agent(
        &dir,
        &format!(
            "[api]\nlisten = \"{api}\"\n[store]\npath = {:?}\n{store_extra}\n[devices]\ntcp_listen = \"{devices}\"\n",
            dir.join("ferry.db").display().to_string()
        ),
    );
    let pid = agent.id().expect("agent running");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(api).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(
        SimConfig {
            duration: Some(Duration::from_secs(secs + 10)),
            drain_timeout: Duration::from_secs(5),
            seed: 17,
            ..SimConfig::tcp(devices, load.devices, load.sensors, load.interval_ms)
        },
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await; // connected and steady
    let tracer = traced.then(|| {
        std::process::Command::new("strace")
            .args([
                "-f",
                "-y",
                "-qq",
                "-e",
                "trace=write,pwrite64,pwritev,pwritev2,writev",
            ])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(dir.join("strace.txt"))
            .spawn()
            .expect("strace (apt-get install strace)")
    });
    let (w0, s0, c0) = (
        write_bytes(pid),
        counter(api, "ferry_samples_committed").await,
        counter(api, "ferry_commits").await,
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (w1, s1, c1) = (
        write_bytes(pid),
        counter(api, "ferry_samples_committed").await,
        counter(api, "ferry_commits").await,
    );
    let window = t0.elapsed().as_secs_f64();
    if let Some(mut t) = tracer {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(t.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = t.wait();
    }
    stop.cancel();
    let _ = sim.await;
    let _ = agent.kill().await;
    let (bytes, samples, commits) = ((w1 - w0) as f64, s1 - s0, c1 - c0);
    let per_sample = bytes / samples.max(1.0);
    let mut row = json!({
        "load": load.name,
        "store_extra": store_extra,
        "traced": traced,
        "seconds": window,
        "samples_per_s": samples / window,
        "commits_per_s": commits / window,
        "written_mb_per_s": bytes / window / 1e6,
        "bytes_per_sample": per_sample,
        "bytes_per_commit": bytes / commits.max(1.0),
        "pages_per_commit": bytes / commits.max(1.0) / 4096.0,
        "gb_per_day": bytes / window * 86_400.0 / 1e9,
    });
    if traced {
        let trace = std::fs::read_to_string(dir.join("strace.txt")).unwrap_or_default();
        let (wal, db, log, other) = split(&trace);
        let all = (wal + db + log + other).max(1) as f64;
        row["split"] = json!({
            "wal": wal as f64 / all,
            "db": db as f64 / all,
            "log": log as f64 / all,
            "other": other as f64 / all,
            "syscall_bytes": wal + db + log + other,
        });
    }
    row
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let traced = std::env::var_os("FERRY_BENCH_SPLIT").is_some();
    let store_extra = std::env::var("FERRY_BENCH_STORE").unwrap_or_default();
    if !store_extra.is_empty() {
        println!("[store] settings added: {store_extra}");
    }
    let mut rows = Vec::new();
    for load in &LOADS {
        rows.push(run(load, secs, false, &store_extra).await);
        if traced {
            rows.push(run(load, secs.min(15), true, &store_extra).await);
        }
    }
    println!(
        "\n{:<7} {:>9} {:>10} {:>8} {:>11} {:>11} {:>9} {:>10}  split (WAL/db/log/other)",
        "load", "samples/s", "commits/s", "MB/s", "B/sample", "B/commit", "pg/commit", "GB/day"
    );
    for r in &rows {
        let f = |k: &str, d: usize| r[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.d$}"));
        let split = r.get("split").map_or(String::new(), |s| {
            format!(
                "{:.0}% / {:.0}% / {:.0}% / {:.0}% (traced)",
                s["wal"].as_f64().unwrap_or(0.0) * 100.0,
                s["db"].as_f64().unwrap_or(0.0) * 100.0,
                s["log"].as_f64().unwrap_or(0.0) * 100.0,
                s["other"].as_f64().unwrap_or(0.0) * 100.0
            )
        });
        println!(
            "{:<7} {:>9} {:>10} {:>8} {:>11} {:>11} {:>9} {:>10}  {split}",
            r["load"].as_str().unwrap(),
            f("samples_per_s", 0),
            f("commits_per_s", 1),
            f("written_mb_per_s", 2),
            f("bytes_per_sample", 0),
            f("bytes_per_commit", 0),
            f("pages_per_commit", 1),
            f("gb_per_day", 1),
        );
    }
    for r in &rows {
        println!("{r}");
    }
}

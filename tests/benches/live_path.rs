//! The live path, end to end: simulated devices → the agent (`durability = "full"`) → a local
//! mosquitto at QoS 1 → a subscriber that counts what arrived (issue 17).
//!
//! ```text
//! cargo bench -p ferry-tests --bench live_path                        # ladder + overload, JSON and binary
//! FERRY_BENCH_ONLY=ladder FERRY_BENCH_ENCODING=json cargo bench -p ferry-tests --bench live_path
//! FERRY_BENCH_SECS=3 FERRY_BENCH_RATES=100k,200k cargo bench -p ferry-tests --bench live_path
//! FERRY_BENCH_ONLY=overload FERRY_BENCH_CAPACITY=200k cargo bench -p ferry-tests --bench live_path
//! ```
//!
//! Options (env):
//! - `FERRY_BENCH_RATES`: the ladder's offered rates, samples/s, comma-separated (`k` and `M`
//!   suffixes allowed); default `100k,200k,400k,800k,1.2M,1.7M`.
//! - `FERRY_BENCH_SECS`: seconds of generation per step (default 10).
//! - `FERRY_BENCH_ENCODING`: `json`, `binary` or `both` (default `both`).
//! - `FERRY_BENCH_ONLY`: `ladder` or `overload` (default: both, the ladder first).
//! - `FERRY_BENCH_CAPACITY`: the capacity C the overload ladder is built on; without it C is the
//!   highest acked rate any step of the ladder reached with that encoding (what the path sustains
//!   when offered more; the ladder runs first also with `ONLY=overload`).
//!
//! Each step starts a fresh release `ferry` (`cargo build --release -p ferry-agent --bin ferry`,
//! done by the bench) on a new store in a temp dir: `durability = "full"`, every other key at its
//! default, `[uplink]` pointed at one private mosquitto (QoS 1; the encoding is the step's). Then
//! the release `ferry-sim` runs as its own process (so its CPU is not the bench's nor the
//! agent's): 50 devices × 8 sensors over TCP, the real firmware core with its ring of 4,096
//! samples, acks, retransmission and overload gate, generating for `FERRY_BENCH_SECS` and then
//! waiting up to 10 s for the last acks. A subscriber in this process (rumqttc, subscribed before
//! the agent starts) keeps every message with its arrival time; after the step it decodes them
//! (JSON or binary, `ferry_contract::EventBatch::decode`) and counts distinct
//! `(device, boot, seq)`.
//!
//! Offered rates: 50 devices × 8 sensors at a whole-millisecond interval, as the firmware core
//! samples; 1 ms (400,000 samples/s) is its finest. A rate that no interval reaches within 2 % with
//! 50 devices, or above 400,000/s, uses the device count nearest to 50 that does (800k: 100
//! devices at 1 ms). The step prints what was actually offered.
//!
//! Columns, per step:
//! - `offered/s`: devices × sensors × 1000 / interval; `gen/s`: what the devices generated per
//!   second of generation (below offered when the simulator could not keep its schedule; the
//!   step is then marked `sim short`).
//! - `in time`: samples acked before their ring evicted them, of those generated (generated −
//!   dropped by the rings − unacked at the end, over generated); `acked/s`: acked over the
//!   simulator's whole run (generation and drain).
//! - `stored`: samples the agent committed (`ferry_samples_committed_total`); `drops`: samples
//!   the devices' rings evicted (or their overload gate dropped) unacked.
//! - `delivered`: distinct samples the subscriber received; `deliv/s`: that over the time from the
//!   simulator's start to the last message; `tail s`: the last message after generation ended.
//! - `p50`, `p99`: the devices' ack latency (a frame of new samples handed to the link until an
//!   ack covers its newest sample).
//! - `µs/smp`: the agent's CPU (utime + stime of `/proc/PID/stat`, from before the devices start
//!   until the last sample was delivered) per delivered sample; `store µs` the part of it on the
//!   store writer and checkpoint threads (the rest is the tokio runtime: ingest, uplink reads,
//!   encoding, MQTT); `agent %` its CPU over the step's wall time, in % of one core, and
//!   `store %` the store writer and checkpoint threads' share of that; `writer`: how much of the
//!   simulator's run the store writer thread was busy (its state sampled every 10 ms: running,
//!   waiting for a core or for the disk, against waiting for work). Near 100 % the writer, one
//!   thread that commits and syncs, is what limits the path.
//! - `RSS MB`: the agent's peak resident set (VmHWM), a fresh agent per step.
//! - `sim CPU`: the simulator process's user + system time (`/proc/PID/stat`, read every 20 ms
//!   until it exits) and `sim %` that in % of one core over its run; `sub s`: this process's CPU
//!   over the step (mostly the subscriber); `broker`: mosquitto's CPU seconds over the step;
//!   `host %`: all cores busy over the step (`/proc/stat`), including anything else running on
//!   the machine; `load`: the 1-minute load average when the step started.
//! - `ok`: every sample acked in time, every one delivered, and delivery no more than
//!   [`MAX_TAIL`] behind generation. Else what failed: `drops` (not every sample acked in time),
//!   `missing` (stored but not delivered), `late` (the tail), `stalled` (delivery stopped moving),
//!   `sim short` (generated below 98 % of offered), `subscriber failed`.
//!
//! Then a summary per encoding: the highest offered rate whose step was `ok`, with its CPU per
//! sample and peak RSS, and the JSON/binary figures side by side.
//!
//! The overload ladder offers 0.5×, 0.75×, 1×, 1.25×, 1.5× and 2× of the capacity C and prints
//! the acked rate (and as a share of C), stored, delivered, device drops, `both` (stored samples
//! their device had also counted as dropped: stored + dropped − generated, an ack that came after
//! the ring evicted the sample), device retransmissions and ack p99 against the ring's time at that
//! rate; past C the acked rate should stay near C (no collapse).
//!
//! Every loop here ends by itself: the simulator ends its generation and drain, delivery is waited
//! for while it progresses (at most [`STALL`] without progress), and every child process (agent,
//! simulator, mosquitto) is killed when its handle drops, also on a panic. Everything listens on
//! 127.0.0.1 only; temp dirs are removed at the end of each step.
//!
//! Prints a table while it runs, the summary, and one JSON line per step.
// One `json!` per step row: its fields go past the default macro recursion limit.
#![recursion_limit = "256"]
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use ferry_contract::EventBatch;
use ferry_tests::bridge::{http_get, parse_metric};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::{free_port, workspace_bin};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Devices and sensors per device, as in the issue's measurement.
const DEVICES: usize = 50;
const SENSORS: usize = 8;
/// Ring capacity of a simulated device (samples).
const RING: usize = ferry_sim::SIM_RING;
/// A step is `ok` only if its last sample arrived at most this long after generation ended: a
/// live path further behind than that is not keeping up, even if it catches up later.
const MAX_TAIL: Duration = Duration::from_secs(1);
/// Waiting for delivery ends after this long without progress.
const STALL: Duration = Duration::from_secs(15);
/// Delivery is complete when the broker has acked every committed sample and the subscriber has
/// received nothing more for this long.
const QUIET: Duration = Duration::from_millis(500);
/// The simulator's wait for the last acks after generation.
const SIM_DRAIN_S: u64 = 10;

/// How a step offers its rate.
#[derive(Debug, Clone, Copy)]
struct Plan {
    devices: usize,
    interval_ms: u32,
}

impl Plan {
    /// [`DEVICES`] devices when a whole-millisecond interval offers `rate` within 2 %, else the
    /// device count nearest to it (by ratio) that does.
    fn for_rate(rate: f64) -> Plan {
        let per_device = |iv: u32| SENSORS as f64 * 1000.0 / f64::from(iv);
        (1..=10_000u32)
            .map(|iv| Plan {
                devices: (rate / per_device(iv)).round().max(1.0) as usize,
                interval_ms: iv,
            })
            .filter(|p| (p.offered() / rate - 1.0).abs() <= 0.02)
            .min_by(|a, b| {
                let off = |p: &Plan| (p.devices as f64 / DEVICES as f64).ln().abs();
                off(a).total_cmp(&off(b))
            })
            .unwrap_or(Plan {
                devices: DEVICES,
                interval_ms: 1,
            })
    }

    fn offered(&self) -> f64 {
        self.devices as f64 * SENSORS as f64 * 1000.0 / f64::from(self.interval_ms)
    }

    /// How long a device's ring holds its samples at this rate.
    fn ring_ms(&self) -> f64 {
        RING as f64 * f64::from(self.interval_ms) / SENSORS as f64
    }
}

/// Parses `200000`, `200k`, `1.2M`.
fn parse_rate(s: &str) -> Option<f64> {
    let s = s.trim().replace('_', "");
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1e3),
        'm' | 'M' => (&s[..s.len() - 1], 1e6),
        _ => (&s[..], 1.0),
    };
    num.parse::<f64>()
        .ok()
        .map(|v| v * mul)
        .filter(|v| *v > 0.0)
}

/// User + system CPU seconds of a process from `/proc/{pid}/stat` (`self` for this one).
fn cpu_s(pid: &str) -> f64 {
    stat_cpu_s(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_s(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime (fields 14 and 15 of proc(5)), counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of the threads of `pid` whose name is one of `names`.
fn threads_cpu_s(pid: u32, names: &[&str]) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| names.contains(&c.trim_end()))
        })
        .map(|t| stat_cpu_s(&t.path().join("stat").to_string_lossy()))
        .sum()
}

/// Samples the state of `pid`'s thread named `comm` every 10 ms until `stop`: the percentage of
/// samples in which it was running or waiting for a core (`R`) or for the disk (`D`), i.e. not
/// waiting for work. `None` if there is no such thread.
async fn thread_busy_pct(pid: u32, comm: &str, stop: CancellationToken) -> Option<f64> {
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })?
        .file_name();
    let path = format!("/proc/{pid}/task/{}/stat", tid.to_string_lossy());
    let (mut busy, mut n) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        let Ok(stat) = std::fs::read_to_string(&path) else {
            break;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        n += 1;
        busy += u64::from(matches!(state, Some("R" | "D")));
    }
    (n > 0).then(|| 100.0 * busy as f64 / n as f64)
}

/// `VmHWM` of a process in MB (1,000 KiB, as `/proc` reports kB).
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1000.0)
}

/// (busy, total) jiffies of all cores from `/proc/stat`.
fn host_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The pid of this process's child named `comm` (the broker: its handle does not say).
fn child_pid(comm: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
        let ppid = rest.split_whitespace().nth(1)?;
        (name == comm && ppid == me).then_some(pid)
    })
}

/// The 1-minute load average.
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The subscriber's messages: arrival time and payload.
type Inbox = Arc<Mutex<Vec<(Instant, Bytes)>>>;

/// Subscribes to `topic` and keeps every message; `subscribed` is set at the SUBACK.
async fn subscriber(
    port: u16,
    topic: String,
    stop: CancellationToken,
    inbox: Inbox,
    subscribed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut o = MqttOptions::new(
        format!("bench-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(16 << 20));
    let (client, mut el) = AsyncClient::new(o, 100);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ev = el.poll() => match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.store(1, Relaxed),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    inbox.lock().unwrap().push((Instant::now(), p.payload));
                }
                Ok(_) => {}
                Err(e) => anyhow::bail!("subscriber: {e}"),
            }
        }
    }
}

/// What the subscriber received, decoded.
#[derive(Debug, Default)]
struct Delivered {
    messages: u64,
    bytes: u64,
    /// Events, duplicates included.
    events: u64,
    /// Distinct `(device, boot, seq)`.
    distinct: u64,
    last: Option<Instant>,
    undecodable: u64,
}

fn decode_all(msgs: Vec<(Instant, Bytes)>) -> Delivered {
    let mut d = Delivered::default();
    let mut seen: HashMap<(String, u32), Vec<u64>> = HashMap::new();
    for (at, payload) in msgs {
        d.messages += 1;
        d.bytes += payload.len() as u64;
        d.last = Some(d.last.map_or(at, |l| l.max(at)));
        let Ok(batch) = EventBatch::decode(&payload) else {
            d.undecodable += 1;
            continue;
        };
        let bits = seen.entry((batch.device, batch.boot)).or_default();
        for e in batch.events {
            d.events += 1;
            let (word, bit) = (e.seq as usize / 64, e.seq % 64);
            if bits.len() <= word {
                bits.resize(word + 1, 0);
            }
            if bits[word] & (1 << bit) == 0 {
                bits[word] |= 1 << bit;
                d.distinct += 1;
            }
        }
    }
    d
}

/// The agent's `/metrics` as text.
async fn metrics(api: SocketAddr) -> String {
    match http_get(api, "/metrics").await {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

fn metric(text: &str, series: &str) -> f64 {
    parse_metric(text, series).unwrap_or(0.0)
}

/// What every step needs.
struct Bench {
    ferry: PathBuf,
    sim: PathBuf,
    broker: Mosquitto,
    broker_pid: Option<u32>,
    secs: u64,
}

/// One step's agent: the process, its ports and its temp dir (removed on drop).
struct Agent {
    child: tokio::process::Child,
    pid: u32,
    api: SocketAddr,
    devices: SocketAddr,
    dir: tempfile::TempDir,
}

impl Agent {
    async fn start(b: &Bench, gateway: &str, encoding: &str) -> anyhow::Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-live-path-")
            .tempdir()?;
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let devices = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let toml = format!(
            "[gateway]\nid = \"{gateway}\"\n[store]\npath = {:?}\ndurability = \"full\"\n\
             [devices]\ntcp_listen = \"{devices}\"\n[api]\nlisten = \"{api}\"\n\
             [uplink]\nbroker = \"{}\"\nencoding = \"{encoding}\"\n",
            dir.path().join("ferry.db").display().to_string(),
            b.broker.addr(),
        );
        let config = dir.path().join("ferry.toml");
        std::fs::write(&config, toml)?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let child = tokio::process::Command::new(&b.ferry)
            .args(["--log", "warn", "run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", b.ferry.display()))?;
        let pid = child.id().context("agent pid")?;
        let mut a = Agent {
            child,
            pid,
            api,
            devices,
            dir,
        };
        // Up when it takes device connections and its uplink is connected to the broker.
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = a.child.try_wait() {
                anyhow::bail!("the agent exited ({status}); log:\n{}", a.log());
            }
            let listening = tokio::net::TcpStream::connect(devices).await.is_ok();
            if listening && metric(&metrics(api).await, "ferry_uplink_connected") == 1.0 {
                return Ok(a);
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20),
                "the agent did not start with its uplink connected in 20 s; log:\n{}",
                a.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM and wait (SIGKILL after 30 s).
    async fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("live_path: the agent did not stop in 30 s; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// What the simulator reported, from its `--json` output.
#[derive(Debug, Default)]
struct SimOut {
    generated: u64,
    acked: u64,
    dropped: u64,
    unacked_at_end: u64,
    lost_on_reboot: u64,
    retransmits: u64,
    elapsed_s: f64,
    generating_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu_s: f64,
}

/// Runs `ferry-sim` against `devices` and waits for it (bounded).
async fn run_sim(b: &Bench, plan: Plan, devices: SocketAddr) -> anyhow::Result<SimOut> {
    let mut child = tokio::process::Command::new(&b.sim)
        .arg("--devices")
        .arg(plan.devices.to_string())
        .arg("--sensors")
        .arg(SENSORS.to_string())
        .arg("--rate")
        .arg(format!("{}", 1000.0 / f64::from(plan.interval_ms)))
        .arg("--tcp")
        .arg(devices.to_string())
        .arg("--duration")
        .arg(b.secs.to_string())
        .arg("--drain-timeout")
        .arg(SIM_DRAIN_S.to_string())
        .args(["--latency", "--json"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", b.sim.display()))?;
    let pid = child.id().context("ferry-sim pid")?.to_string();
    let mut stdout = child.stdout.take().context("ferry-sim stdout")?;
    let read = tokio::spawn(async move {
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out)
            .await
            .map(|_| out)
    });
    // Its CPU time: read every 20 ms while it runs (the last reading misses at most 20 ms of a
    // process that is then only waiting for its last acks).
    let limit = Instant::now() + Duration::from_secs(b.secs + SIM_DRAIN_S + 60);
    let mut cpu = 0.0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        cpu = f64::max(cpu, cpu_s(&pid));
        anyhow::ensure!(
            Instant::now() < limit,
            "ferry-sim did not end within {} s",
            b.secs + SIM_DRAIN_S + 60
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = read.await??;
    let cpu_s = cpu;
    anyhow::ensure!(status.success(), "ferry-sim exited with {status}");
    let v: Value = serde_json::from_slice(&out).context("ferry-sim --json output")?;
    let t = &v["report"]["totals"];
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    let retransmits = v["report"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|d| d["boots"].as_array().into_iter().flatten())
        .map(|b| n(&b["retransmits"]))
        .sum();
    Ok(SimOut {
        generated: n(&t["generated"]),
        acked: n(&t["acked"]),
        dropped: n(&t["dropped"]),
        unacked_at_end: n(&t["unacked_at_end"]),
        lost_on_reboot: n(&t["lost_on_reboot"]),
        retransmits,
        elapsed_s: f(&v["report"]["elapsed_s"]),
        generating_s: f(&v["report"]["generating_s"]),
        p50_ms: f(&v["ack_latency"]["p50_ms"]),
        p99_ms: f(&v["ack_latency"]["p99_ms"]),
        max_ms: f(&v["ack_latency"]["max_ms"]),
        cpu_s,
    })
}

/// One step: a fresh agent and subscriber, the simulator at `plan`, delivery waited for.
async fn step(b: &Bench, n: usize, encoding: &str, plan: Plan) -> anyhow::Result<Value> {
    let gateway = format!("lp-{encoding}-{n}");
    let load_at_start = loadavg();
    let inbox: Inbox = Arc::default();
    let stop = CancellationToken::new();
    // Ends the subscriber also when this step returns early with an error.
    let _stop_subscriber = stop.clone().drop_guard();
    let subscribed = Arc::new(AtomicU64::new(0));
    let sub = tokio::spawn(subscriber(
        b.broker.port(),
        format!("ferry/v1/{gateway}/+/events"),
        stop.clone(),
        inbox.clone(),
        subscribed.clone(),
    ));
    let t = Instant::now();
    while subscribed.load(Relaxed) == 0 {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(10), "no SUBACK in 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let agent = Agent::start(b, &gateway, encoding).await?;
    let store_threads = ["ferry-store", "ferry-checkpoint"];
    let broker_cpu = || b.broker_pid.map_or(f64::NAN, |p| cpu_s(&p.to_string()));
    let (agent0, store0, own0, broker0, host0) = (
        cpu_s(&agent.pid.to_string()),
        threads_cpu_s(agent.pid, &store_threads),
        cpu_s("self"),
        broker_cpu(),
        host_jiffies(),
    );
    let started = Instant::now();
    let sampling = CancellationToken::new();
    let writer = tokio::spawn(thread_busy_pct(agent.pid, "ferry-store", sampling.clone()));
    let sim = run_sim(b, plan, agent.devices).await;
    sampling.cancel();
    let writer_busy = writer.await.ok().flatten();
    let sim = match sim {
        Ok(s) => s,
        Err(e) => {
            let log = agent.log();
            agent.stop().await;
            return Err(e.context(format!("agent log:\n{log}")));
        }
    };
    let generation_end = started + Duration::from_secs_f64(sim.generating_s);
    // Delivery: until the broker has acked every committed sample and then no message has
    // arrived for [`QUIET`] (the uplink's own messages, such as its status, are acked too, so
    // message counts do not match), while that moves.
    let (mut last_progress, mut last_seen) = (Instant::now(), (0.0, 0.0, 0usize));
    let mut waited_for = String::new();
    let (committed, stalled) = loop {
        let m = metrics(agent.api).await;
        let committed = metric(&m, "ferry_samples_committed_total");
        let forwarded = metric(&m, "ferry_uplink_events_forwarded_total");
        let got = inbox.lock().unwrap().len();
        if (committed, forwarded, got) != last_seen {
            last_seen = (committed, forwarded, got);
            last_progress = Instant::now();
        } else if !m.is_empty() && forwarded >= committed && last_progress.elapsed() >= QUIET {
            break (committed, false);
        } else if last_progress.elapsed() > STALL {
            break (committed, true);
        }
        waited_for =
            format!("committed {committed}, forwarded {forwarded}, received {got} messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    let agent_cpu = cpu_s(&agent.pid.to_string()) - agent0;
    let store_cpu = threads_cpu_s(agent.pid, &store_threads) - store0;
    let rss = peak_rss_mb(agent.pid);
    let sub_cpu = cpu_s("self") - own0;
    let broker_cpu = broker_cpu() - broker0;
    let host1 = host_jiffies();
    let host_busy = 100.0 * (host1.0 - host0.0) as f64 / (host1.1 - host0.1).max(1) as f64;
    agent.stop().await;
    stop.cancel();
    let sub_error = match sub.await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(e.to_string()),
    };
    let msgs = std::mem::take(&mut *inbox.lock().unwrap());
    let d = decode_all(msgs);

    let gen = sim.generated.max(1) as f64;
    let in_time = sim.generated - sim.dropped.min(sim.generated);
    let in_time = in_time.saturating_sub(sim.unacked_at_end + sim.lost_on_reboot);
    let tail_s = d.last.map_or(f64::NAN, |l| {
        l.saturating_duration_since(generation_end).as_secs_f64()
    });
    let span = d.last.map_or(f64::NAN, |l| {
        l.saturating_duration_since(started).as_secs_f64()
    });
    let offered = plan.offered();
    let generated_per_s = sim.generated as f64 / sim.generating_s.max(1e-9);
    let mut verdict = Vec::new();
    if in_time < sim.generated {
        verdict.push("drops");
    }
    if d.distinct < committed as u64 {
        verdict.push("missing");
    }
    if tail_s.is_nan() || tail_s > MAX_TAIL.as_secs_f64() {
        verdict.push("late");
    }
    if stalled {
        verdict.push("stalled");
    }
    if sub_error.is_some() {
        verdict.push("subscriber failed");
    }
    if generated_per_s < 0.98 * offered {
        verdict.push("sim short");
    }
    if verdict.is_empty() && d.distinct < sim.generated {
        verdict.push("missing");
    }
    let ok = verdict.is_empty();
    Ok(json!({
        "encoding": encoding,
        "devices": plan.devices,
        "sensors": SENSORS,
        "interval_ms": plan.interval_ms,
        "ring_ms": plan.ring_ms(),
        "offered_per_s": offered,
        "generated": sim.generated,
        "generated_per_s": generated_per_s,
        "acked": sim.acked,
        "acked_per_s": sim.acked as f64 / sim.elapsed_s.max(1e-9),
        "acked_in_time_pct": 100.0 * in_time as f64 / gen,
        "dropped_by_rings": sim.dropped,
        "unacked_at_end": sim.unacked_at_end,
        "device_retransmits": sim.retransmits,
        // Stored, yet evicted from the ring before the ack arrived (counted in both).
        "stored_but_dropped": (committed as u64 + sim.dropped).saturating_sub(sim.generated),
        "stored": committed as u64,
        "delivered": d.distinct,
        "delivered_events_with_duplicates": d.events,
        "delivered_per_s": d.distinct as f64 / span,
        "delivery_tail_s": tail_s,
        "messages": d.messages,
        "undecodable": d.undecodable,
        "wire_bytes_per_event": d.bytes as f64 / d.events.max(1) as f64,
        "ack_p50_ms": sim.p50_ms,
        "ack_p99_ms": sim.p99_ms,
        "ack_max_ms": sim.max_ms,
        "agent_cpu_s": agent_cpu,
        "agent_cpu_us_per_sample": agent_cpu * 1e6 / d.distinct.max(1) as f64,
        "agent_store_cpu_us_per_sample": store_cpu * 1e6 / d.distinct.max(1) as f64,
        "agent_cpu_pct": 100.0 * agent_cpu / wall,
        "agent_store_cpu_pct": 100.0 * store_cpu / wall,
        "store_writer_busy_pct": writer_busy,
        "agent_peak_rss_mb": rss,
        "sim_cpu_s": sim.cpu_s,
        "sim_cpu_pct": 100.0 * sim.cpu_s / sim.elapsed_s.max(1e-9),
        "bench_cpu_s": sub_cpu,
        "broker_cpu_s": broker_cpu,
        "host_busy_pct": host_busy,
        "loadavg_at_start": load_at_start,
        "step_wall_s": wall,
        "ok": ok,
        "verdict": if ok { "ok".to_owned() } else { verdict.join(",") },
        "stalled_at": if stalled { Some(waited_for) } else { None },
        "subscriber_error": sub_error,
    }))
}

/// The table's columns: header and width (all right-aligned but the first).
const COLUMNS: [(&str, usize); 27] = [
    ("step", 6),
    ("enc", 6),
    ("dev", 4),
    ("offered/s", 10),
    ("gen/s", 10),
    ("in time", 8),
    ("acked/s", 10),
    ("stored", 10),
    ("delivered", 10),
    ("deliv/s", 10),
    ("tail s", 7),
    ("drops", 9),
    ("p50 ms", 7),
    ("p99 ms", 8),
    ("µs/smp", 7),
    ("store µs", 8),
    ("agent %", 7),
    ("store %", 7),
    ("writer", 6),
    ("RSS MB", 7),
    ("sim CPU", 8),
    ("sim %", 6),
    ("sub s", 6),
    ("broker", 6),
    ("host %", 6),
    ("load", 5),
    ("ok", 4),
];

fn line(cells: &[String]) -> String {
    let mut s = String::new();
    for (i, (cell, (_, w))) in cells.iter().zip(COLUMNS).enumerate() {
        if i == 0 {
            let _ = write!(s, "{cell:<w$}");
        } else {
            let _ = write!(s, " {cell:>w$}");
        }
    }
    s
}

fn header() -> String {
    line(&COLUMNS.map(|(h, _)| h.to_owned()))
}

fn row_line(label: &str, r: &Value) -> String {
    let f = |k: &str, d: usize| {
        r[k].as_f64()
            .filter(|x| x.is_finite())
            .map_or("-".to_owned(), |x| format!("{x:.d$}"))
    };
    let n = |k: &str| r[k].as_u64().map_or("-".to_owned(), |x| x.to_string());
    line(&[
        label.to_owned(),
        r["encoding"].as_str().unwrap_or("?").to_owned(),
        n("devices"),
        f("offered_per_s", 0),
        f("generated_per_s", 0),
        format!("{}%", f("acked_in_time_pct", 1)),
        f("acked_per_s", 0),
        n("stored"),
        n("delivered"),
        f("delivered_per_s", 0),
        f("delivery_tail_s", 2),
        n("dropped_by_rings"),
        f("ack_p50_ms", 1),
        f("ack_p99_ms", 1),
        f("agent_cpu_us_per_sample", 2),
        f("agent_store_cpu_us_per_sample", 2),
        f("agent_cpu_pct", 0),
        f("agent_store_cpu_pct", 0),
        format!("{}%", f("store_writer_busy_pct", 0)),
        f("agent_peak_rss_mb", 1),
        format!("{}s", f("sim_cpu_s", 1)),
        f("sim_cpu_pct", 0),
        f("bench_cpu_s", 1),
        f("broker_cpu_s", 1),
        f("host_busy_pct", 0),
        f("loadavg_at_start", 1),
        r["verdict"].as_str().unwrap_or("?").to_owned(),
    ])
}

/// The highest acked rate of any ladder step with `encoding`: what the path sustains when offered
/// more (the overload ladder's capacity C).
fn sustained(rows: &[Value], encoding: &str) -> Option<f64> {
    rows.iter()
        .filter(|r| r["encoding"] == encoding && r["mode"] == "ladder")
        .filter_map(|r| r["acked_per_s"].as_f64())
        .max_by(f64::total_cmp)
}

/// The highest offered rate whose step with `encoding` was `ok`.
fn best<'a>(rows: &'a [Value], encoding: &str) -> Option<&'a Value> {
    rows.iter()
        .filter(|r| r["ok"].as_bool() == Some(true) && r["encoding"] == encoding)
        .max_by(|a, b| {
            let o = |r: &Value| r["offered_per_s"].as_f64().unwrap_or(0.0);
            o(a).total_cmp(&o(b))
        })
}

/// The ladder, each rate run for every encoding in turn (so the machine's drift hits both).
async fn ladder(b: &Bench, encodings: &[&str], rates: &[f64], n: &mut usize) -> Vec<Value> {
    println!("\n== ladder ==\n{}", header());
    let mut rows = Vec::new();
    for &rate in rates {
        for &encoding in encodings {
            *n += 1;
            let plan = Plan::for_rate(rate);
            let label = format!("{:.0}k", rate / 1e3);
            match step(b, *n, encoding, plan).await {
                Ok(mut r) => {
                    r["mode"] = json!("ladder");
                    println!("{}", row_line(&label, &r));
                    rows.push(r);
                }
                Err(e) => println!("{label} {encoding}: step failed: {e:#}"),
            }
        }
    }
    rows
}

async fn overload(b: &Bench, encoding: &str, capacity: f64, n: &mut usize) -> Vec<Value> {
    let loads = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0];
    println!(
        "\n== overload ladder, {encoding}: capacity C = {capacity:.0} samples/s ==\n{}",
        header()
    );
    let mut rows = Vec::new();
    for load in loads {
        *n += 1;
        let plan = Plan::for_rate(load * capacity);
        match step(b, *n, encoding, plan).await {
            Ok(mut r) => {
                r["mode"] = json!("overload");
                r["load"] = json!(load);
                r["capacity_per_s"] = json!(capacity);
                println!("{}", row_line(&format!("{load:.2}x"), &r));
                rows.push(r);
            }
            Err(e) => println!("{load:.2}x: step failed: {e:#}"),
        }
    }
    println!(
        "\n{:>6} {:>4} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>7} {:>6} {:>8} {:>8} {:>8}",
        "load",
        "dev",
        "offered/s",
        "acked/s",
        "of C",
        "stored",
        "delivered",
        "drops",
        "both",
        "retx",
        "p99 ms",
        "ring ms",
        "ok"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let n = |k: &str| r[k].as_u64().map_or("-".to_owned(), |x| x.to_string());
        println!(
            "{:>5.2}x {:>4} {:>10.0} {:>10.0} {:>6.1}% {:>10} {:>10} {:>10} {:>7} {:>6} {:>8.1} {:>8.0} {:>8}",
            f("load"),
            n("devices"),
            f("offered_per_s"),
            f("acked_per_s"),
            100.0 * f("acked_per_s") / capacity,
            n("stored"),
            n("delivered"),
            n("dropped_by_rings"),
            n("stored_but_dropped"),
            n("device_retransmits"),
            f("ack_p99_ms"),
            f("ring_ms"),
            r["verdict"].as_str().unwrap_or("?"),
        );
    }
    rows
}

fn summary_line(encoding: &str, rows: &[Value]) -> String {
    match best(rows, encoding) {
        Some(r) => format!(
            "{encoding:<7} highest rate with every sample acked in time and delivered: {:.0} samples/s \
             offered ({:.0} delivered/s), agent {:.2} µs CPU per sample, peak RSS {:.1} MB",
            r["offered_per_s"].as_f64().unwrap_or(0.0),
            r["delivered_per_s"].as_f64().unwrap_or(0.0),
            r["agent_cpu_us_per_sample"].as_f64().unwrap_or(0.0),
            r["agent_peak_rss_mb"].as_f64().unwrap_or(0.0),
        ),
        None => format!("{encoding:<7} no step had every sample acked in time and delivered"),
    }
}

/// The encodings side by side at each offered rate of the ladder, and what the simulator used.
fn compare(rows: &[Value], encodings: &[&str]) {
    if encodings.len() > 1 {
        let mut head = format!("{:>10}", "offered/s");
        for enc in encodings {
            let _ = write!(
                head,
                "   {:>8} {:>9} {:>10} {:>7} {:>7}",
                format!("{enc}:"),
                "in time",
                "deliv/s",
                "µs/smp",
                "B/smp"
            );
        }
        println!("\n{head}");
        let mut offered: Vec<f64> = rows
            .iter()
            .filter_map(|r| r["offered_per_s"].as_f64())
            .collect();
        offered.dedup();
        for o in offered {
            let mut l = format!("{o:>10.0}");
            for enc in encodings {
                let Some(r) = rows
                    .iter()
                    .find(|r| r["offered_per_s"].as_f64() == Some(o) && r["encoding"] == *enc)
                else {
                    let _ = write!(
                        l,
                        "   {:>8} {:>9} {:>10} {:>7} {:>7}",
                        "", "-", "-", "-", "-"
                    );
                    continue;
                };
                let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
                let _ = write!(
                    l,
                    "   {:>8} {:>8.1}% {:>10.0} {:>7.2} {:>7.1}",
                    r["verdict"].as_str().unwrap_or("?"),
                    f("acked_in_time_pct"),
                    f("delivered_per_s"),
                    f("agent_cpu_us_per_sample"),
                    f("wire_bytes_per_event"),
                );
            }
            println!("{l}");
        }
    }
    let sim_max = rows
        .iter()
        .filter_map(|r| r["sim_cpu_pct"].as_f64())
        .fold(0.0, f64::max);
    let short = rows
        .iter()
        .filter(|r| {
            r["verdict"]
                .as_str()
                .is_some_and(|v| v.contains("sim short"))
        })
        .count();
    println!(
        "simulator: at most {sim_max:.0} % of one core; {short} step(s) where it generated less \
         than 98 % of the offered rate"
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(()); // `cargo test --benches` probes; nothing to list
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let secs = ferry_tests::env_u64("FERRY_BENCH_SECS", 10).max(1);
    let rates: Vec<f64> = match std::env::var("FERRY_BENCH_RATES") {
        Ok(s) => s
            .split(',')
            .map(|r| parse_rate(r).with_context(|| format!("FERRY_BENCH_RATES: {r:?}")))
            .collect::<anyhow::Result<_>>()?,
        Err(_) => vec![100e3, 200e3, 400e3, 800e3, 1.2e6, 1.7e6],
    };
    let encodings: &[&str] = match std::env::var("FERRY_BENCH_ENCODING").as_deref() {
        Ok("json") => &["json"],
        Ok("binary") => &["binary"],
        Ok("both") | Err(_) => &["json", "binary"],
        Ok(other) => anyhow::bail!("FERRY_BENCH_ENCODING={other:?}: json, binary or both"),
    };
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    anyhow::ensure!(
        matches!(only.as_str(), "" | "ladder" | "overload"),
        "FERRY_BENCH_ONLY={only:?}: ladder or overload"
    );
    let capacity = match std::env::var("FERRY_BENCH_CAPACITY") {
        Ok(c) => Some(parse_rate(&c).with_context(|| format!("FERRY_BENCH_CAPACITY: {c:?}"))?),
        Err(_) => None,
    };
    let b = Bench {
        ferry: workspace_bin("ferry-agent", "ferry")?,
        sim: workspace_bin("ferry-sim", "ferry-sim")?,
        broker: Mosquitto::start(MosquittoOptions::default()),
        broker_pid: None,
        secs,
    };
    let b = Bench {
        broker_pid: child_pid("mosquitto"),
        ..b
    };
    println!(
        "live path: ferry-sim ({DEVICES} devices x {SENSORS} sensors, TCP) -> ferry (durability \
         \"full\") -> mosquitto (QoS 1) -> subscriber; {secs} s per step; {} CPUs; load average \
         {:.2} at start; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        b.ferry.display()
    );
    let mut n = 0;
    let mut all = Vec::new();
    if only != "overload" || capacity.is_none() {
        all = ladder(&b, encodings, &rates, &mut n).await;
        println!("\n== summary ==");
        for enc in encodings {
            println!("{}", summary_line(enc, &all));
        }
        compare(&all, encodings);
    }
    if only != "ladder" {
        for &enc in encodings {
            match capacity.or_else(|| sustained(&all, enc)) {
                Some(c) => {
                    let rows = overload(&b, enc, c, &mut n).await;
                    all.extend(rows);
                }
                None => println!("\n{enc}: no capacity for the overload ladder (no ladder step)"),
            }
        }
    }
    println!();
    for r in &all {
        println!("{r}");
    }
    Ok(())
}

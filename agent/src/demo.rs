//! `ferry demo`: the whole pipeline on one machine with nothing installed.
//!
//! ```text
//!  ferry-sim devices ──TCP──▶ agent ──SQLite──▶ uplink ──MQTT 5──▶ in-process broker
//!                                                                      │ $share/ferry-bridge/...
//!                                  bridged.jsonl ◀── in-process ferry-bridge (jsonl file sink)
//! ```
//!
//! Starts the in-process broker ([`ferry_broker`]) on an ephemeral loopback port,
//! the cloud-side bridge ([`ferry_cloud_bridge::bridge::run`]) subscribed to it with a JSON-lines
//! file sink, and an agent on a temporary store forwarding to that broker; then runs simulated
//! devices (the real firmware core, `ferry-sim`) against the agent and prints the flow every
//! second.
//!
//! At the end it waits (bounded) for forwarding to drain, stops agent, bridge and broker in
//! that order, and checks:
//! - every sample a device saw acked is in the store (acked means durable);
//! - every stored event reached the bridge sink exactly once: the set of distinct
//!   `(gateway, device, boot, seq)` at the sink equals the store's, no line is repeated, and no
//!   acked seq of any device boot is missing at the sink (beyond what the device itself
//!   reported dropping).
//!
//! The jsonl sink does not dedup, so a repeated line would show a real duplicate delivery.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_broker::Broker;
use ferry_cloud_bridge::bridge::{self, BatchPolicy, BridgeSettings, MqttSettings, SinkSettings};
use ferry_sim::receiver::Verification;
use ferry_sim::{Report, SimConfig, Transport};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::Agent;

/// The demo's gateway id.
const GATEWAY: &str = "demo";
/// Where the demo serves the API and dashboard when the port is free.
const DEMO_API: &str = "127.0.0.1:7878";
/// Longest wait for the uplink and the bridge to catch up after the devices stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated devices.
    pub devices: usize,
    /// Samples per second per device (over 3 channels).
    pub rate: f64,
    /// How long devices generate (`None`: until `shutdown`, i.e. Ctrl-C).
    pub duration: Option<Duration>,
    /// The demo's directory (store, bridged events, log): see [`demo_dir`].
    pub dir: PathBuf,
    /// Delete `dir` at the end when every check passed (a temporary directory).
    pub temporary: bool,
    /// Where the log goes (shown in the intro), if to a file.
    pub log_file: Option<PathBuf>,
}

/// The demo's directory: `keep`, or a new one under the system's temporary directory (then
/// `true`: deleted at the end unless a check failed).
pub fn demo_dir(keep: Option<PathBuf>) -> (PathBuf, bool) {
    match keep {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())),
            true,
        ),
    }
}

/// What the demo measured and checked.
#[derive(Debug, Clone, Default)]
pub struct DemoOutcome {
    /// Device side against the store.
    pub store: Verification,
    /// Events the uplink saw PUBACKed (may count a resent message twice).
    pub forwarded: u64,
    /// Events sent again on request (`ferry replay` during the demo), PUBACKed: the bridge sees
    /// each once more, by design.
    pub replayed: u64,
    /// Store against the bridge's sink.
    pub bridge: BridgeCheck,
    /// The bridge stopped with an error (then nothing is trusted).
    pub bridge_error: Option<String>,
}

impl DemoOutcome {
    /// Every check passed.
    pub fn ok(&self) -> bool {
        self.store.missing_acked == 0
            && self.bridge_error.is_none()
            && self.bridge.exactly_once_besides(self.replayed)
    }
}

/// The bridge sink compared with the store and the devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeCheck {
    /// Lines at the sink.
    pub lines: u64,
    /// Distinct `(gateway, device, boot, seq)` at the sink.
    pub distinct: u64,
    /// Lines repeating an identity already seen.
    pub duplicates: u64,
    /// Identities at the sink the store does not have (or of another gateway).
    pub not_in_store: u64,
    /// Stored events that never reached the sink.
    pub not_bridged: u64,
    /// Seqs a device saw acked that are not at the sink (minus what the device dropped).
    pub acked_not_bridged: u64,
    /// Holes in a device boot's seqs at the sink beyond what the device reported dropping.
    pub gaps: u64,
    /// Lines that did not parse.
    pub unreadable: u64,
}

impl BridgeCheck {
    /// Every stored event arrived exactly once, nothing else arrived, nothing acked is missing.
    pub fn exactly_once(&self) -> bool {
        self.exactly_once_besides(0)
    }

    /// [`Self::exactly_once`], but for up to `replayed` repeats: events an operator asked to
    /// send again (`ferry replay`) arrive again by design, and a sink that keeps every line
    /// shows them twice.
    pub fn exactly_once_besides(&self, replayed: u64) -> bool {
        self.duplicates <= replayed
            && self.not_in_store == 0
            && self.not_bridged == 0
            && self.acked_not_bridged == 0
            && self.gaps == 0
            && self.unreadable == 0
    }
}

/// One line of the bridge's jsonl sink (other fields ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SinkLine {
    /// Gateway id.
    pub gateway: String,
    /// Device id.
    pub device: String,
    /// The gateway's boot number for the device.
    pub boot: u32,
    /// The device's random boot id.
    pub boot_id: u32,
    /// Sequence number.
    pub seq: u32,
}

/// Checks a simulator report against the store: every acked seq of every boot is committed.
pub fn verify(conn: &rusqlite::Connection, report: &Report) -> anyhow::Result<Verification> {
    let positions: HashMap<(String, u32), u32> = crate::store::read::boot_positions(conn)?;
    let stored = crate::store::read::event_count(conn)? as u64;
    Ok(ferry_sim::receiver::verify_positions(
        report,
        stored,
        |device, boot| {
            positions
                .get(&(device.to_owned(), boot))
                .copied()
                .unwrap_or(0)
        },
    ))
}

/// Every stored event's `(device, boot, seq)`.
pub fn stored_identities(
    conn: &rusqlite::Connection,
) -> anyhow::Result<HashSet<(String, u32, u32)>> {
    let mut st = conn.prepare(
        "SELECT d.device_id, e.boot_no, e.seq FROM events e JOIN devices d ON d.id = e.device",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Compares the sink's lines with the store (`stored`: `(device, boot, seq)` of `gateway`) and
/// with what the devices saw acked (`report`).
pub fn check_bridge(
    report: &Report,
    gateway: &str,
    stored: &HashSet<(String, u32, u32)>,
    lines: impl IntoIterator<Item = Result<SinkLine, String>>,
) -> BridgeCheck {
    let mut c = BridgeCheck::default();
    let mut seen: HashSet<(String, String, u32, u32)> = HashSet::new();
    // (device, device boot id) → seqs at the sink
    let mut by_boot: BTreeMap<(String, u32), BTreeSet<u32>> = BTreeMap::new();
    for line in lines {
        c.lines += 1;
        let Ok(l) = line else {
            c.unreadable += 1;
            continue;
        };
        if !seen.insert((l.gateway.clone(), l.device.clone(), l.boot, l.seq)) {
            c.duplicates += 1;
            continue;
        }
        if l.gateway != gateway || !stored.contains(&(l.device.clone(), l.boot, l.seq)) {
            c.not_in_store += 1;
        }
        by_boot
            .entry((l.device, l.boot_id))
            .or_default()
            .insert(l.seq);
    }
    c.distinct = seen.len() as u64;
    c.not_bridged = stored
        .iter()
        .filter(|(d, b, s)| !seen.contains(&(gateway.to_owned(), d.clone(), *b, *s)))
        .count() as u64;
    let mut dropped: HashMap<(&str, u32), u64> = HashMap::new();
    for d in &report.devices {
        for b in &d.boots {
            dropped.insert((&d.device_id, b.boot_id), u64::from(b.dropped));
            let at_sink = by_boot
                .get(&(d.device_id.clone(), b.boot_id))
                .map_or(0, |s| s.range(..b.acked_next).count() as u64);
            let missing = u64::from(b.acked_next) - at_sink;
            c.acked_not_bridged += missing.saturating_sub(u64::from(b.dropped));
        }
    }
    for ((device, boot_id), seqs) in &by_boot {
        let top = u64::from(*seqs.last().expect("non-empty")) + 1;
        let holes = top - seqs.len() as u64;
        let allowed = dropped
            .get(&(device.as_str(), *boot_id))
            .copied()
            .unwrap_or(0);
        c.gaps += holes.saturating_sub(allowed);
    }
    c
}

/// Counts the lines of a growing file, reading only what is new.
struct LineCounter {
    path: PathBuf,
    pos: u64,
    lines: u64,
}

impl LineCounter {
    fn poll(&mut self) -> u64 {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return self.lines;
        };
        if f.seek(std::io::SeekFrom::Start(self.pos)).is_err() {
            return self.lines;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_ok() {
            // Count only whole lines; a partial last line is read again next time.
            if let Some(end) = buf.iter().rposition(|b| *b == b'\n') {
                self.lines += buf[..=end].iter().filter(|b| **b == b'\n').count() as u64;
                self.pos += end as u64 + 1;
            }
        }
        self.lines
    }
}

fn read_sink(path: &Path) -> anyhow::Result<Vec<Result<SinkLine, String>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .map(|l| {
            l.map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()))
        })
        .collect())
}

/// Runs the demo until its duration ends or `shutdown` fires (Ctrl-C), then drains and checks.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<DemoOutcome> {
    let (dir, temp) = (opts.dir.clone(), opts.temporary);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("ferry.db");
    let sink = dir.join("bridged.jsonl");
    // A kept directory may hold an earlier run's store; the check compares this run's sink
    // with the whole store, so start both empty.
    for f in [&sink, &db] {
        let _ = std::fs::remove_file(f);
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("ferry.db{suffix}")));
    }

    // Broker, then the bridge subscribed to it, then the agent forwarding to it.
    let broker = Broker::bind("127.0.0.1:0".parse().expect("literal address"))
        .await
        .context("starting the in-process MQTT broker")?;
    let broker_addr = broker.local_addr();
    let broker_stats = broker.stats();
    let broker_stop = CancellationToken::new();
    let broker_task = tokio::spawn(broker.run(broker_stop.clone()));

    let bridge_settings = BridgeSettings {
        mqtt: MqttSettings {
            host: broker_addr.ip().to_string(),
            port: broker_addr.port(),
            client_id: "ferry-demo-bridge".into(),
            session_expiry_s: 300,
            receive_maximum: 256,
            credentials: None,
            tls: None,
        },
        sink: SinkSettings::JsonlFile(sink.clone()),
        batch: BatchPolicy {
            max_events: 20_000,
            max_messages: 128,
            max_wait: Duration::from_millis(20),
        },
        listen: "127.0.0.1:0".parse().expect("literal address"),
    };
    let bridge_stop = CancellationToken::new();
    let bridge_task = tokio::spawn(bridge::run(bridge_settings, bridge_stop.clone()));

    // The dashboard on the usual port when it is free (another agent may hold it).
    let api_listen = if std::net::TcpListener::bind(DEMO_API).is_ok() {
        DEMO_API
    } else {
        "127.0.0.1:0"
    };
    let toml = format!(
        "[api]\nlisten = \"{api_listen}\"\n[gateway]\nid = \"{GATEWAY}\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n\
         [uplink]\nbroker = \"{broker_addr}\"\n",
        db.display().to_string()
    );
    let settings = Settings::from_toml(&toml, "(demo)", |_| None)?;
    let agent = Agent::start(&settings).await?;
    let addr = agent.tcp_addr.context("demo agent has a TCP listener")?;
    let metrics = agent.metrics.clone();
    let uplink = agent.uplink_stats.clone();
    let per_channel = opts.rate / 3.0;
    let sim_cfg = SimConfig {
        devices: opts.devices,
        transport: Transport::Tcp(addr),
        sensors: 3,
        interval_ms: (1000.0 / per_channel).round().max(1.0) as u32,
        duration: opts.duration,
        id_prefix: "demo-".into(),
        ..SimConfig::default()
    };
    print!(
        "{}",
        intro(&Intro {
            devices: opts.devices,
            offered: (opts.devices as f64 * 3.0 * 1000.0 / f64::from(sim_cfg.interval_ms)).round(),
            duration: opts.duration,
            api: agent.api_addr,
            db: &db,
            sink: &sink,
            log: opts.log_file.as_deref(),
        })
    );
    println!(
        "{:>5} {:>6} {:>10} {:>10} {:>7} {:>8} {:>10} {:>10} {:>8}",
        "t(s)", "links", "received", "stored", "per s", "acks", "forwarded", "bridged", "per s"
    );
    let mut counter = LineCounter {
        path: sink.clone(),
        pos: 0,
        lines: 0,
    };
    let started = Instant::now();
    let mut last = (0, 0);
    let mut row = |counter: &mut LineCounter| {
        let committed = Metrics::get(&metrics.samples_committed);
        let bridged = counter.poll();
        println!(
            "{:>5.0} {:>6} {:>10} {:>10} {:>7} {:>8} {:>10} {:>10} {:>8}",
            started.elapsed().as_secs_f64(),
            metrics.links_open.load(Relaxed),
            Metrics::get(&metrics.samples_received),
            committed,
            committed - last.0,
            Metrics::get(&metrics.acks_sent),
            uplink.events_acked.load(Relaxed),
            bridged,
            bridged - last.1,
        );
        last = (committed, bridged);
        (committed, bridged)
    };
    // The devices stop on Ctrl-C, or when the bridge failed (nothing more would land).
    let devices_stop = shutdown.child_token();
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, devices_stop.clone()));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !sim.is_finished() && !bridge_task.is_finished() {
        tokio::select! {
            _ = tick.tick() => row(&mut counter),
            // Ctrl-C: the devices stop on the same token.
            _ = shutdown.cancelled() => break,
        };
    }
    devices_stop.cancel();
    let report = sim.await.context("simulator task")?;
    if shutdown.is_cancelled() {
        println!("stopping: devices stopped; waiting for forwarding to drain, then checking");
    }
    // Devices stopped at once may leave samples in flight: once their links closed, everything
    // received is committed, so the drain below waits for all of it.
    let closing = Instant::now() + Duration::from_secs(5);
    while metrics.links_open.load(Relaxed) > 0 && Instant::now() < closing {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
        .store
        .sync()
        .await
        .context("committing what the devices sent")?;

    // Drain: everything stored is forwarded and landed (bounded).
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let drained = loop {
        let committed = Metrics::get(&metrics.samples_committed);
        if uplink.events_acked.load(Relaxed) >= committed && counter.poll() >= committed {
            break true;
        }
        // Ctrl-C is how a demo ends: it drains all the same (a second Ctrl-C exits at once).
        if Instant::now() >= deadline || bridge_task.is_finished() {
            break false;
        }
        tick.tick().await;
        row(&mut counter);
    };
    if !drained {
        println!("forwarding did not drain within {DRAIN_TIMEOUT:?}; checking what arrived");
    }
    row(&mut counter);

    agent.stop().await?;
    bridge_stop.cancel();
    let bridge_error = match tokio::time::timeout(Duration::from_secs(10), bridge_task).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(format!("bridge task: {e}")),
        Err(_) => Some("the bridge did not stop within 10 s".into()),
    };
    broker_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), broker_task).await;

    let conn = crate::store::open_reader(&db)?;
    let store = verify(&conn, &report)?;
    let stored = stored_identities(&conn)?;
    drop(conn);
    let check = check_bridge(&report, GATEWAY, &stored, read_sink(&sink)?);
    let outcome = DemoOutcome {
        store,
        forwarded: uplink.events_acked.load(Relaxed),
        replayed: uplink.events_replayed.load(Relaxed),
        bridge: check,
        bridge_error,
    };

    let b = &outcome.bridge;
    println!("\n{}", report.table());
    let line = |k: &str, v: u64| println!("{k:<26}{v:>14}");
    line("stored in SQLite", outcome.store.stored);
    line("acked but not stored", outcome.store.missing_acked);
    line("forwarded (PUBACKed)", outcome.forwarded);
    line("bridged (sink lines)", b.lines);
    line("bridged, distinct", b.distinct);
    line("bridged more than once", b.duplicates);
    if outcome.replayed > 0 {
        line("  sent again (ferry replay)", outcome.replayed);
    }
    line("stored, not bridged", b.not_bridged);
    line("acked, not bridged", b.acked_not_bridged);
    line("bridged, not stored", b.not_in_store);
    line("gaps at the bridge", b.gaps);
    line(
        "broker messages dropped",
        broker_stats.dropped_queue_full.load(Relaxed)
            + broker_stats.dropped_too_large.load(Relaxed)
            + broker_stats.dropped_session_ended.load(Relaxed),
    );
    if let Some(e) = &outcome.bridge_error {
        println!("bridge failed: {e}");
    }
    println!(
        "exactly once at the bridge: {}",
        if outcome.ok() { "yes" } else { "NO" }
    );
    if temp && outcome.ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!(
            "kept in {}: the store ferry.db, the bridged events bridged.jsonl, the log ferry-demo.log",
            dir.display()
        );
    }
    Ok(outcome)
}

/// What the demo's first lines say.
struct Intro<'a> {
    devices: usize,
    offered: f64,
    duration: Option<Duration>,
    api: Option<std::net::SocketAddr>,
    db: &'a Path,
    sink: &'a Path,
    log: Option<&'a Path>,
}

/// The demo's first lines: the pipeline, the dashboard URL, CLI commands to try, where things are,
/// and how it ends.
fn intro(i: &Intro<'_>) -> String {
    let mut s = format!(
        "ferry demo: {} simulated devices ({} samples/s) -> agent (SQLite) -> MQTT broker -> ferry-bridge\n",
        i.devices, i.offered
    );
    if let Some(api) = i.api {
        // The CLI finds the agent on its default address; elsewhere it needs --api.
        let flag = if api.to_string() == DEMO_API {
            String::new()
        } else {
            format!(" --api http://{api}")
        };
        s.push_str(&format!("\n  dashboard  http://{api}/\n"));
        s.push_str(&format!(
            "  try        ferry status{flag}\n             ferry devices{flag}\n             ferry latest demo-0000{flag}\n             ferry tail --count 10{flag}\n             ferry query series --device demo-0000 --sensor temperature --since -5m --bucket 10s{flag}\n             ferry replay --since -1m{flag}   (sends the last minute to the bridge again)\n"
        ));
    }
    s.push_str(&format!(
        "  files      store {}, bridged events {}\n",
        i.db.display(),
        i.sink.display()
    ));
    if let Some(log) = i.log {
        s.push_str(&format!(
            "  log        {} (--verbose: on the terminal)\n",
            log.display()
        ));
    }
    s.push_str(&match i.duration {
        None => "\nRunning until Ctrl-C; then it drains forwarding and checks exactly-once.\n\n".to_owned(),
        Some(d) => format!(
            "\nRunning for {:.0} s (Ctrl-C ends it sooner); then it drains forwarding and checks exactly-once.\n\n",
            d.as_secs_f64()
        ),
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_sim::{BootReport, DeviceReport};

    fn report(acked_next: u32, dropped: u32) -> Report {
        Report::new(
            vec![DeviceReport {
                device_id: "d".into(),
                boots: vec![BootReport {
                    boot_id: 77,
                    acked_next,
                    dropped,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            1.0,
            1.0,
        )
    }

    fn line(seq: u32) -> Result<SinkLine, String> {
        Ok(SinkLine {
            gateway: "g".into(),
            device: "d".into(),
            boot: 1,
            boot_id: 77,
            seq,
        })
    }

    fn stored(seqs: impl IntoIterator<Item = u32>) -> HashSet<(String, u32, u32)> {
        seqs.into_iter().map(|s| ("d".to_owned(), 1, s)).collect()
    }

    #[test]
    fn exactly_once_passes_and_every_defect_is_named() {
        let ok = check_bridge(&report(4, 0), "g", &stored(0..5), (0..5).map(line));
        assert!(ok.exactly_once(), "{ok:?}");
        assert_eq!((ok.lines, ok.distinct), (5, 5));

        let dup = check_bridge(&report(4, 0), "g", &stored(0..3), [0, 1, 1, 2].map(line));
        assert_eq!(dup.duplicates, 1);
        assert!(!dup.exactly_once());
        // A repeat is fine when a replay sent that many events again, not more.
        let replayed = check_bridge(&report(3, 0), "g", &stored(0..3), [0, 1, 2, 1].map(line));
        assert!(!replayed.exactly_once(), "{replayed:?}");
        assert!(replayed.exactly_once_besides(1), "{replayed:?}");
        let twice = check_bridge(&report(3, 0), "g", &stored(0..3), [0, 1, 2, 1, 2].map(line));
        assert!(!twice.exactly_once_besides(1), "{twice:?}");

        let lost = check_bridge(&report(4, 0), "g", &stored(0..4), [0, 1, 3].map(line));
        assert_eq!(
            (lost.not_bridged, lost.acked_not_bridged, lost.gaps),
            (1, 1, 1)
        );

        let extra = check_bridge(&report(2, 0), "g", &stored(0..2), [0, 1, 2].map(line));
        assert_eq!(extra.not_in_store, 1);

        // Seqs the device dropped itself are neither stored nor expected at the sink.
        let dropped = check_bridge(&report(4, 1), "g", &stored([0, 1, 3]), [0, 1, 3].map(line));
        assert!(dropped.exactly_once(), "{dropped:?}");

        let garbage = check_bridge(&report(0, 0), "g", &stored([]), [Err("x".to_owned())]);
        assert_eq!(garbage.unreadable, 1);
    }
}

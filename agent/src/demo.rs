//! `ferry demo`: the whole pipeline on one machine with nothing installed.
//!
//! Starts an agent on a temporary store with its device listener on an ephemeral loopback port,
//! runs simulated devices (the real firmware core, `ferry-sim`) against it, prints the flow every
//! second, and at the end checks that every sample a device saw acked is in the store.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_sim::receiver::Verification;
use ferry_sim::{Report, SimConfig, Transport};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::Agent;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated devices.
    pub devices: usize,
    /// Samples per second per device (over 3 channels).
    pub rate: f64,
    /// How long devices generate.
    pub duration: Duration,
    /// Keep the store here instead of a temporary directory.
    pub keep: Option<std::path::PathBuf>,
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

/// Runs the demo until its duration ends or `shutdown` fires.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<bool> {
    let (dir, temp) = match &opts.keep {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("ferry.db");
    let toml = format!(
        "[gateway]\nid = \"demo\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n",
        db.display().to_string()
    );
    let settings = Settings::from_toml(&toml, "(demo)", |_| None)?;
    let agent = Agent::start(&settings).await?;
    let addr = agent.tcp_addr.context("demo agent has a TCP listener")?;
    let metrics = agent.metrics.clone();
    let per_channel = opts.rate / 3.0;
    let sim_cfg = SimConfig {
        devices: opts.devices,
        transport: Transport::Tcp(addr),
        sensors: 3,
        interval_ms: (1000.0 / per_channel).round().max(1.0) as u32,
        duration: Some(opts.duration),
        id_prefix: "demo-".into(),
        ..SimConfig::default()
    };
    println!(
        "ferry demo: {} simulated devices -> agent on {addr} -> {} ({} samples/s offered)",
        opts.devices,
        db.display(),
        (opts.devices as f64 * 3.0 * 1000.0 / f64::from(sim_cfg.interval_ms)).round()
    );
    println!(
        "{:>5} {:>8} {:>12} {:>10} {:>10} {:>9}",
        "t(s)", "links", "committed", "per s", "acks", "rejected"
    );
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, shutdown.clone()));
    let started = Instant::now();
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !sim.is_finished() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {}
        }
        let committed = Metrics::get(&metrics.samples_committed);
        println!(
            "{:>5.0} {:>8} {:>12} {:>10} {:>10} {:>9}",
            started.elapsed().as_secs_f64(),
            metrics.links_open.load(Relaxed),
            committed,
            committed - last,
            Metrics::get(&metrics.acks_sent),
            metrics.rejected_total()
        );
        last = committed;
    }
    let report = sim.await.context("simulator task")?;
    agent.stop().await?;
    let conn = crate::store::open_reader(&db)?;
    let v = verify(&conn, &report)?;
    println!("\n{}", report.table());
    println!("{:<22}{:>14}", "stored in SQLite", v.stored);
    println!("{:<22}{:>14}", "acked but missing", v.missing_acked);
    drop(conn);
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("store kept at {}", db.display());
    }
    Ok(v.missing_acked == 0)
}

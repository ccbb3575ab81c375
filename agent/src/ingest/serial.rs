//! Serial ports: exact paths and glob patterns, re-scanned every `rescan_interval`.
//!
//! Hot-plug: a port whose link ends (unplugged: read error or EOF) is forgotten and opened again when
//! a scan finds it; a new path matching a pattern is opened on the next scan. Paths are
//! canonicalised, so a port reached through a symlink and its real name is opened once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{link, LinkCtx};
use crate::config::SerialSettings;

fn matches(pattern: &str) -> Vec<PathBuf> {
    match glob::glob(pattern) {
        Ok(paths) => paths.filter_map(Result::ok).collect(),
        Err(_) => Vec::new(), // validated at config load
    }
}

/// Scans and opens ports until `shutdown`.
pub async fn run(
    sources: Vec<SerialSettings>,
    rescan: Duration,
    ctx: LinkCtx,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    beat: crate::service::Beat,
) {
    let mut open: HashSet<PathBuf> = HashSet::new();
    let mut failed: HashSet<PathBuf> = HashSet::new();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut tick = tokio::time::interval(rescan);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake = tokio::time::interval(crate::service::BEAT_EVERY);
    loop {
        beat.beat();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.tick() => continue,
            Some(p) = closed_rx.recv() => {
                open.remove(&p);
                continue;
            }
            _ = tick.tick() => {}
        }
        for src in &sources {
            for path in matches(&src.pattern) {
                let Ok(real) = std::fs::canonicalize(&path) else {
                    continue;
                };
                if open.contains(&real) {
                    continue;
                }
                match tokio_serial::new(path.to_string_lossy(), src.baud).open_native_async() {
                    Ok(port) => {
                        failed.remove(&real);
                        open.insert(real.clone());
                        let name = format!("serial:{}", path.display());
                        let (ctx, sd, tx) = (ctx.clone(), shutdown.clone(), closed_tx.clone());
                        tracker.spawn(async move {
                            link::serve(port, name, ctx, sd).await;
                            let _ = tx.send(real);
                        });
                    }
                    Err(e) => {
                        if failed.insert(real) {
                            tracing::warn!(port = %path.display(), error = %e, "Cannot open serial port; will retry.");
                        }
                    }
                }
            }
        }
    }
}

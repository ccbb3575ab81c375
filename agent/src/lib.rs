//! The Ferry gateway agent (`ferry`): device ingest into a durable SQLite buffer.
//!
//! Modules by domain, in the order a byte travels: [`ingest`] (serial/TCP links, sessions) →
//! [`store`] (SQLite writer, retention, reads) → [`uplink`] (MQTT to the cloud and back: the
//! store as the source, the in-flight ledger, downlink commands) ; beside them [`commands`]
//! (device commands), [`api`] (local HTTP API, live stream, metrics, dashboard), [`cli`] (the
//! command line's client of that API), [`config`] (ferry.toml), [`time`] (the wall clock, instants and durations),
//! [`metrics`], [`shutdown`], and `demo` (behind the `demo` feature: simulated devices, the
//! in-process broker and bridge).
//!
//! Lifecycle invariant ([`Agent::stop`]): stop the API and intake (listeners and links) → the
//! writer commits what it holds → WAL checkpoint → return. Every step is bounded in time.
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod firmware;
pub mod ingest;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod time;
pub mod uplink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::ingest::LinkCtx;
use crate::metrics::Metrics;
use crate::store::writer::StoreHandle;

pub use time::utc_now_ms;

/// How long links get to finish at shutdown.
const INTAKE_GRACE: Duration = Duration::from_secs(5);
/// How long the uplink gets to collect outstanding PUBACKs and save its position at shutdown.
const UPLINK_GRACE: Duration = Duration::from_secs(8);
/// How long the writer gets to commit and checkpoint at shutdown.
const WRITER_GRACE: Duration = Duration::from_secs(20);

/// A running agent.
pub struct Agent {
    /// Where the device TCP listener is bound (useful with port 0).
    pub tcp_addr: Option<SocketAddr>,
    /// Where the local API is bound.
    pub api_addr: Option<SocketAddr>,
    api: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    liveness: service::Liveness,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// The store writer.
    pub store: StoreHandle,
    intake: CancellationToken,
    tracker: TaskTracker,
    writer: std::thread::JoinHandle<()>,
    writer_exited: CancellationToken,
    uplink: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    commands_stop: CancellationToken,
    /// Cancels a running replay (first thing at stop: its thread would hold the API's runtime).
    replays_stop: CancellationToken,
    commands_task: tokio::task::JoinHandle<()>,
    firmware_task: tokio::task::JoinHandle<()>,
    /// Firmware updates (the local API uploads bundles and starts rollouts here).
    pub firmware: firmware::FirmwareHandle,
    /// Device commands (the local API submits here too).
    pub commands: commands::CommandsHandle,
    /// Uplink figures (all zero when forwarding is off).
    pub uplink_stats: Arc<crate::uplink::UplinkStats>,
}

/// How long the agent retries opening a store the disk refuses (full, an I/O error) before it
/// gives up with that error.
pub const OPEN_RETRY_FOR: Duration = Duration::from_secs(60);

/// Opens the store; while it is [`store::StoreError::Unavailable`] (a full disk, an I/O error)
/// retries every second for up to [`OPEN_RETRY_FOR`]: a gateway restarted on a full disk comes
/// back by itself when space returns.
async fn open_store(s: &config::StoreSettings) -> Result<rusqlite::Connection, store::StoreError> {
    let deadline = std::time::Instant::now() + OPEN_RETRY_FOR;
    let mut logged = false;
    loop {
        match store::open_writer(s) {
            Err(e @ store::StoreError::Unavailable { .. })
                if std::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::warn!(error = %e, "Cannot open the store yet; retrying every second.");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r => return r,
        }
    }
}

impl Agent {
    /// Opens the store and starts ingest. Fails (with context) on a bad store or an unusable address.
    pub async fn start(settings: &Settings) -> anyhow::Result<Agent> {
        // Bound first: a busy port fails the start before anything runs.
        let api_listener = match &settings.api {
            Some(a) => Some((api::bind(a.listen).await?, a.token.clone(), a.tls.clone())),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let conn = open_store(&settings.store)
            .await
            .with_context(|| format!("opening the store {}", settings.store.path.display()))?;
        let spawned = store::writer::spawn(conn, settings.store.clone(), metrics.clone())
            .context("starting the store writer thread")?;
        let (store, writer, writer_exited) = (spawned.handle, spawned.join, spawned.exited);
        match spawned.ready.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context("opening the store"),
            Err(_) => anyhow::bail!("the store writer stopped while starting"),
        }
        let intake = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (outcomes_tx, outcomes_rx) = tokio::sync::mpsc::channel(256);
        let commands_stop = CancellationToken::new();
        let (commands, commands_task) = commands::spawn(
            store::open_reader(&settings.store.path)
                .context("opening a read connection for commands")?,
            store.clone(),
            outcomes_tx,
            settings.gateway_id.clone(),
            commands_stop.clone(),
        )
        .await
        .context("loading pending commands")?;
        let (results_tx, results_rx) = tokio::sync::mpsc::channel(64);
        // Replayed events go out through the same queue as firmware results.
        let replays_stop = CancellationToken::new();
        let replays = settings.uplink.as_ref().map(|u| {
            uplink::replay::Replays::new(
                settings.store.path.clone(),
                store.clone(),
                results_tx.clone(),
                u,
                replays_stop.clone(),
            )
        });
        let (firmware, firmware_task) = firmware::spawn(
            store::open_reader(&settings.store.path)
                .context("opening a read connection for firmware updates")?,
            store.clone(),
            settings.firmware_keys.clone(),
            settings.gateway_id.clone(),
            results_tx,
            commands_stop.clone(),
        )
        .await
        .context("loading firmware update jobs")?;
        let ctx = LinkCtx {
            store: store.clone(),
            metrics: metrics.clone(),
            offline_after: settings.devices.offline_after,
            ack_budget: settings.store.ack_budget,
            commands: commands.clone(),
            firmware: firmware.clone(),
        };
        let mut tcp_addr = None;
        let mut loops = Vec::new();
        if let Some(addr) = settings.devices.tcp_listen {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("binding the device listener devices.tcp_listen = {addr}")
            })?;
            let bound = listener.local_addr()?;
            tcp_addr = Some(bound);
            tracing::info!(addr = %bound, "Listening for devices over TCP.");
            let beat = service::Beat::default();
            loops.push(("the device listener (TCP)", beat.clone()));
            tracker.spawn(ingest::tcp::run(
                listener,
                ctx.clone(),
                settings.devices.max_connections,
                tracker.clone(),
                intake.clone(),
                beat,
            ));
        }
        if !settings.devices.serial.is_empty() {
            let patterns: Vec<&str> = settings
                .devices
                .serial
                .iter()
                .map(|s| s.pattern.as_str())
                .collect();
            tracing::info!(?patterns, "Watching serial ports.");
            let beat = service::Beat::default();
            loops.push(("the serial port scanner", beat.clone()));
            tracker.spawn(ingest::serial::run(
                settings.devices.serial.clone(),
                settings.devices.rescan_interval,
                ctx,
                tracker.clone(),
                intake.clone(),
                beat,
            ));
        }
        let uplink_stats = Arc::new(crate::uplink::UplinkStats::default());
        let mut outcomes_rx = Some(outcomes_rx);
        let mut results_rx = Some(results_rx);
        let uplink = match &settings.uplink {
            None => {
                tracing::warn!(
                    "Forwarding is off: no [uplink] broker configured. Data stays buffered in the store."
                );
                // Outcomes stay in the store (the local API shows them); nobody publishes them.
                if let Some(mut rx) = outcomes_rx.take() {
                    tokio::spawn(async move { while rx.recv().await.is_some() {} });
                }
                if let Some(mut rx) = results_rx.take() {
                    tokio::spawn(async move { while rx.recv().await.is_some() {} });
                }
                None
            }
            Some(u) => {
                let conn = store::open_reader(&settings.store.path)
                    .context("opening a read connection for the uplink")?;
                let source = uplink::source::StoreSource::new(conn, store.clone());
                let (in_tx, mut in_rx) = tokio::sync::mpsc::channel(64);
                let up = crate::uplink::Uplink::new(u.clone(), source, uplink_stats.clone())
                    .await
                    .context("reading the forwarding position")?
                    .with_downlink(crate::uplink::Downlink {
                        commands: in_tx,
                        outcomes: outcomes_rx.take().expect("taken once"),
                        firmware: Some(firmware.clone()),
                        messages: results_rx.take().expect("taken once"),
                        outcomes_done: false,
                        messages_done: false,
                    });
                let c = commands.clone();
                tokio::spawn(async move {
                    while let Some(cmd) = in_rx.recv().await {
                        c.submit(cmd).await;
                    }
                });
                let stop = CancellationToken::new();
                let task = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        if let Err(e) = up.run(stop).await {
                            tracing::error!(error = %e, "Uplink stopped on an error; data stays buffered.");
                        }
                    }
                });
                Some((stop, task))
            }
        };
        let (api, api_addr) = match api_listener {
            None => {
                tracing::info!("The local API is off ([api] listen = \"\").");
                (None, None)
            }
            Some((listener, token, tls)) => {
                let bound = listener.local_addr()?;
                let stop = CancellationToken::new();
                let state = api::ApiState::new(
                    api::ApiParts {
                        store: store.clone(),
                        metrics: metrics.clone(),
                        uplink: uplink_stats.clone(),
                        forwarding_on: settings.uplink.is_some(),
                        commands: commands.clone(),
                        firmware: firmware.clone(),
                        replays: replays.clone(),
                        gateway: settings.gateway_id.clone(),
                        store_settings: settings.store.clone(),
                        token: token.clone(),
                    },
                    stop.clone(),
                )
                .context("opening read connections for the local API")?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                if tls.is_none() && !bound.ip().is_loopback() {
                    tracing::warn!(
                        addr = %bound,
                        "The local API is reachable from the network without TLS: its bearer token and data cross the network in clear. Set [api] tls_cert and tls_key."
                    );
                }
                tracing::info!(addr = %bound, auth = token.is_some(), tls = tls.is_some(), "Serving the local API and dashboard on {scheme}://{bound}/");
                let task = api::spawn(listener, state, tls, stop.clone())
                    .context("starting the local API")?;
                (Some((stop, task)), Some(bound))
            }
        };
        Ok(Agent {
            liveness: service::Liveness {
                store: store.clone(),
                loops,
            },
            api,
            api_addr,
            tcp_addr,
            metrics,
            store,
            intake,
            tracker,
            writer,
            writer_exited,
            uplink,
            uplink_stats,
            commands_stop,
            replays_stop,
            commands_task,
            firmware_task,
            firmware,
            commands,
        })
    }

    /// What the systemd watchdog watches ([`service::run_watchdog`]).
    pub fn liveness(&self) -> service::Liveness {
        self.liveness.clone()
    }

    /// Stops intake, lets the writer commit and checkpoint, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        service::notify_stopping();
        let m = &self.metrics;
        let g = Metrics::get;
        tracing::info!(
            committed = g(&m.samples_committed),
            received = g(&m.samples_received),
            duplicate = g(&m.samples_duplicate),
            out_of_order = g(&m.samples_out_of_order),
            dropped_by_device = g(&m.samples_dropped_by_device),
            refused = g(&m.samples_refused),
            commits = g(&m.commits),
            acks = g(&m.acks_sent),
            rejected = m.rejected_total(),
            "Agent totals."
        );
        tracing::info!("Stopping intake.");
        self.replays_stop.cancel();
        if let Some((stop, task)) = self.api {
            stop.cancel();
            if tokio::time::timeout(INTAKE_GRACE, task).await.is_err() {
                tracing::warn!("The local API did not stop in time.");
            }
        }
        self.intake.cancel();
        self.tracker.close();
        if tokio::time::timeout(INTAKE_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some device links did not stop in time.");
        }
        // The uplink saves its position through the writer, so it stops before the writer.
        if let Some((stop, task)) = self.uplink {
            stop.cancel();
            if tokio::time::timeout(UPLINK_GRACE, task).await.is_err() {
                tracing::warn!(
                    "The uplink did not stop in time; it resumes from its saved position."
                );
            }
        }
        self.commands_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.commands_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.firmware_task).await;
        drop(self.commands);
        // Every handle to the writer goes: it stops when its queue closes.
        drop(self.liveness);
        drop(self.store);
        let writer = self.writer;
        tokio::time::timeout(
            WRITER_GRACE,
            tokio::task::spawn_blocking(move || writer.join()),
        )
        .await
        .context("the store writer did not finish in time")?
        .context("joining the store writer")?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
        Ok(())
    }

    /// Runs until `shutdown`, then stops cleanly.
    ///
    /// If the store writer ends on its own (only a bug does that), intake stops and this returns
    /// an error, instead of running on as an agent that accepts devices it can no longer ack.
    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let died = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = self.writer_exited.cancelled() => true,
        };
        if died {
            tracing::error!("The store writer stopped unexpectedly; stopping the agent.");
            let r = self.stop().await;
            return Err(r
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("the store writer stopped unexpectedly")));
        }
        self.stop().await
    }
}

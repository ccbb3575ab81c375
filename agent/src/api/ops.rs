//! Operations routes: `/healthz`, `/readyz`, `/api/v1/status`, `/metrics` (Prometheus text).
//!
//! Labels are low-cardinality by construction: reasons and results from fixed lists, never device
//! ids. Rates are measured by the agent over the last 5 s ([`Rates`], sampled once a second).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio_util::sync::CancellationToken;

use super::error::{ApiError, ErrorDoc};
use super::model::*;
use super::params::Params;
use super::time::format_ms;
use super::ApiState;
use crate::metrics::{Metrics, BUCKETS_S, REASONS};
use crate::store::query::{self, ForwardPosition};

/// Samples of `(when, samples committed, events forwarded)`, newest last.
#[derive(Default)]
pub struct Rates(Mutex<VecDeque<(Instant, u64, u64)>>);

const RATE_WINDOW: usize = 6;

impl Rates {
    fn push(&self, committed: u64, forwarded: u64) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back((Instant::now(), committed, forwarded));
            while q.len() > RATE_WINDOW {
                q.pop_front();
            }
        }
    }

    /// `(samples/s, events forwarded/s)` between the oldest and newest sample.
    fn per_second(&self) -> (f64, f64) {
        let Ok(q) = self.0.lock() else {
            return (0.0, 0.0);
        };
        match (q.front(), q.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let dt = (b.0 - a.0).as_secs_f64();
                (
                    b.1.saturating_sub(a.1) as f64 / dt,
                    b.2.saturating_sub(a.2) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// Samples the counters once a second until `stop`.
pub async fn sample_rates(s: ApiState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let i = &s.inner;
        i.rates.push(
            Metrics::get(&i.metrics.samples_committed),
            i.uplink.events_acked.load(Relaxed),
        );
    }
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = HealthDoc)))]
pub async fn healthz() -> Json<HealthDoc> {
    Json(HealthDoc {
        status: "ok".into(),
    })
}

/// What `readyz` and `status` share, read in one go.
struct Snapshot {
    store: StoreStateDoc,
    uplink: UplinkDoc,
    disk: DiskDoc,
    devices: u64,
    devices_online: u64,
}

/// What the store says for [`Snapshot`]: the oldest unforwarded event, devices, devices online.
type StoreFigures = (Option<(i64, i64)>, u64, u64);

async fn read_figures(s: &ApiState) -> Result<StoreFigures, ApiError> {
    let forwarding_on = s.inner.forwarding_on;
    s.inner
        .reads
        .run(move |c| {
            let oldest = if forwarding_on {
                query::oldest_unforwarded(c, ForwardPosition::read(c)?)?
            } else {
                None
            };
            let (n, on): (i64, i64) = c
                .query_row(
                    "SELECT count(*), coalesce(sum(online), 0) FROM devices",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(crate::store::StoreError::from)?;
            Ok((oldest, n as u64, on as u64))
        })
        .await
}

async fn snapshot(s: &ApiState) -> Result<Snapshot, ApiError> {
    let figures = read_figures(s).await?;
    Ok(build_snapshot(s, figures))
}

/// The snapshot from the store's figures (without them, as when reads fail: unknown parts empty).
fn build_snapshot(s: &ApiState, (oldest, devices, online): StoreFigures) -> Snapshot {
    let i = &s.inner;
    let now = crate::utc_now_ms();
    let m = &i.metrics;
    let disk_full = m.disk_full.load(Relaxed);
    let backpressure = m.backpressure.load(Relaxed);
    let used = Metrics::get(&m.db_used_bytes);
    let fs_free = crate::store::fs_free_bytes(&i.db_path);
    let cap_left = i.max_db_size.map(|c| c.saturating_sub(used));
    let headroom = match (cap_left, fs_free) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (_, forwarded_per_s) = i.rates.per_second();
    let u = &i.uplink;
    Snapshot {
        store: StoreStateDoc {
            writable: i.store.is_running() && !disk_full && !backpressure,
            disk_full,
            backpressure,
        },
        uplink: UplinkDoc {
            state: if !i.forwarding_on {
                "off"
            } else if u.connected.load(Relaxed) {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            events_per_s: forwarded_per_s,
            events_acked: u.events_acked.load(Relaxed),
            backlog_events: u.backlog_events.load(Relaxed).max(0),
            oldest_unforwarded: oldest.map(|(_, ts)| format_ms(ts)),
            oldest_unforwarded_age_s: oldest.map(|(_, ts)| (now - ts).max(0) as f64 / 1000.0),
        },
        disk: DiskDoc {
            db_used_bytes: used,
            max_db_size: i.max_db_size,
            fs_free_bytes: fs_free,
            headroom_bytes: headroom,
        },
        devices,
        devices_online: online,
    }
}

/// How long `/readyz` waits for a read connection before it reports reads as unavailable.
pub const READY_READ_WAIT: Duration = Duration::from_secs(2);

/// Readiness: 200 while the store accepts samples and reads can be served, 503 otherwise; the body
/// says why.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = ReadyDoc), (status = 503, body = ReadyDoc)))]
pub async fn readyz(State(s): State<ApiState>) -> Response {
    let health = s.inner.reads.probe(READY_READ_WAIT).await;
    let (figures, read_problem) = if health.ok {
        match read_figures(&s).await {
            Ok(f) => (f, None),
            Err(e) => ((None, 0, 0), Some(e.to_string())),
        }
    } else {
        ((None, 0, 0), health.problem.clone())
    };
    let snap = build_snapshot(&s, figures);
    let mut reasons = Vec::new();
    if !snap.store.writable {
        reasons.push(
            if snap.store.disk_full {
                "store: the disk is full; samples are refused"
            } else if snap.store.backpressure {
                "store: max_db_size reached with when_full = \"backpressure\"; samples are refused"
            } else {
                "store: the writer is not running"
            }
            .to_owned(),
        );
    }
    if let Some(p) = &read_problem {
        reasons.push(format!("reads: {p}"));
    }
    let ready = reasons.is_empty();
    let doc = ReadyDoc {
        ready,
        reasons,
        reads: ReadsDoc {
            ok: read_problem.is_none(),
            connections: super::reads::READERS as u32,
            in_use: health.in_use as u32,
        },
        store: snap.store,
        uplink: snap.uplink,
        disk: snap.disk,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(doc)).into_response()
}

/// Ingest, drops, uplink, store and disk at a glance (`ferry status`, the dashboard).
#[utoipa::path(get, path = "/api/v1/status", tag = "operations",
    responses((status = 200, body = StatusDoc), (status = 400, body = ErrorDoc)))]
pub async fn status(
    State(s): State<ApiState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<StatusDoc>, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let snap = snapshot(&s).await?;
    let i = &s.inner;
    let m = &i.metrics;
    let g = Metrics::get;
    let (samples_per_s, _) = i.rates.per_second();
    Ok(Json(StatusDoc {
        gateway: i.gateway.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_s: i.started.elapsed().as_secs_f64(),
        ingest: IngestDoc {
            samples_per_s,
            samples_committed: g(&m.samples_committed),
            samples_received: g(&m.samples_received),
            duplicates: g(&m.samples_duplicate),
            acks_sent: g(&m.acks_sent),
            commits: g(&m.commits),
            links_open: g(&m.links_open),
            devices: snap.devices,
            devices_online: snap.devices_online,
            frames_rejected: m.rejected_total(),
            quarantined: g(&m.quarantined),
        },
        drops: DropsDoc {
            by_device: g(&m.samples_dropped_by_device),
            refused: g(&m.samples_refused),
            dropped_oldest: g(&m.events_dropped_oldest),
            pruned_forwarded: g(&m.events_pruned_forwarded),
        },
        uplink: snap.uplink,
        store: snap.store,
        disk: snap.disk,
    }))
}

/// Prometheus text exposition of every counter and gauge.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain")))]
pub async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let snap = snapshot(&s).await?;
    let text = render(&s, &snap);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn render(s: &ApiState, snap: &Snapshot) -> String {
    let i = &s.inner;
    let m = &i.metrics;
    let u = &i.uplink;
    let g = Metrics::get;
    let mut o = String::with_capacity(8192);
    let mut one = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    one(
        "ferry_frames_ok_total",
        "counter",
        "Frames decoded successfully.",
        g(&m.frames_ok) as f64,
    );
    one(
        "ferry_frames_unexpected_total",
        "counter",
        "Valid frames a gateway should never receive.",
        g(&m.frames_unexpected) as f64,
    );
    one(
        "ferry_samples_received_total",
        "counter",
        "Samples received (before dedup).",
        g(&m.samples_received) as f64,
    );
    one(
        "ferry_samples_committed_total",
        "counter",
        "Samples committed to the store.",
        g(&m.samples_committed) as f64,
    );
    one(
        "ferry_samples_duplicate_total",
        "counter",
        "Retransmitted samples already stored.",
        g(&m.samples_duplicate) as f64,
    );
    one(
        "ferry_samples_out_of_order_total",
        "counter",
        "Samples ignored after a lost frame (the device resends them).",
        g(&m.samples_out_of_order) as f64,
    );
    one(
        "ferry_samples_out_of_range_total",
        "counter",
        "Samples not stored because their time is out of range (acked, frame quarantined).",
        g(&m.samples_out_of_range) as f64,
    );
    one(
        "ferry_events_pruned_forwarded_total",
        "counter",
        "Forwarded events deleted by retention.",
        g(&m.events_pruned_forwarded) as f64,
    );
    one(
        "ferry_quarantined_total",
        "counter",
        "Rejected frames written to quarantine.",
        g(&m.quarantined) as f64,
    );
    one(
        "ferry_commits_total",
        "counter",
        "Store transactions committed.",
        g(&m.commits) as f64,
    );
    one(
        "ferry_commit_failures_total",
        "counter",
        "Store transactions rolled back (nothing in them acked).",
        g(&m.commit_failures) as f64,
    );
    one(
        "ferry_acks_sent_total",
        "counter",
        "Acks sent to devices.",
        g(&m.acks_sent) as f64,
    );
    one(
        "ferry_hellos_total",
        "counter",
        "Device Hellos answered.",
        g(&m.hellos) as f64,
    );
    one(
        "ferry_links_open",
        "gauge",
        "Device links open.",
        g(&m.links_open) as f64,
    );
    one(
        "ferry_links_opened_total",
        "counter",
        "Device links opened.",
        g(&m.links_total) as f64,
    );
    one(
        "ferry_devices",
        "gauge",
        "Devices known.",
        snap.devices as f64,
    );
    one(
        "ferry_devices_online",
        "gauge",
        "Devices online.",
        snap.devices_online as f64,
    );
    one(
        "ferry_db_used_bytes",
        "gauge",
        "Bytes the database uses.",
        snap.disk.db_used_bytes as f64,
    );
    if let Some(c) = snap.disk.max_db_size {
        one(
            "ferry_db_max_bytes",
            "gauge",
            "store.max_db_size.",
            c as f64,
        );
    }
    if let Some(f) = snap.disk.fs_free_bytes {
        one(
            "ferry_fs_free_bytes",
            "gauge",
            "Free bytes on the database's filesystem.",
            f as f64,
        );
    }
    one(
        "ferry_disk_full",
        "gauge",
        "1 while the disk refuses writes.",
        f64::from(u8::from(snap.store.disk_full)),
    );
    one(
        "ferry_backpressure",
        "gauge",
        "1 while max_db_size with backpressure refuses samples.",
        f64::from(u8::from(snap.store.backpressure)),
    );
    one(
        "ferry_store_writable",
        "gauge",
        "1 while the store accepts samples.",
        f64::from(u8::from(snap.store.writable)),
    );
    one(
        "ferry_uplink_enabled",
        "gauge",
        "1 when forwarding is configured.",
        f64::from(u8::from(i.forwarding_on)),
    );
    one(
        "ferry_uplink_connected",
        "gauge",
        "1 while connected to the broker.",
        f64::from(u8::from(u.connected.load(Relaxed))),
    );
    one(
        "ferry_uplink_connects_total",
        "counter",
        "Successful broker connects.",
        u.connects.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_disconnects_total",
        "counter",
        "Broker connection losses.",
        u.disconnects.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_messages_sent_total",
        "counter",
        "Messages written, including republished ones.",
        u.messages_sent.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_messages_republished_total",
        "counter",
        "Messages republished after a reconnect.",
        u.messages_republished.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_messages_acked_total",
        "counter",
        "Messages acked by the broker.",
        u.messages_acked.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_events_forwarded_total",
        "counter",
        "Events in messages the broker acked.",
        u.events_acked.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_messages_unrouted_total",
        "counter",
        "Messages with no subscriber (held and sent again).",
        u.messages_unrouted.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_commands_refused_topic_total",
        "counter",
        "Commands on a topic naming no valid device (acked and dropped).",
        u.commands_refused_topic.load(Relaxed) as f64,
    );
    one(
        "ferry_uplink_backlog_events",
        "gauge",
        "Events not yet forwarded (estimate).",
        snap.uplink.backlog_events as f64,
    );
    one(
        "ferry_uplink_lag_seconds",
        "gauge",
        "Age of the oldest unforwarded event (0 when none).",
        snap.uplink.oldest_unforwarded_age_s.unwrap_or(0.0),
    );
    one(
        "ferry_api_streams_open",
        "gauge",
        "Live API streams open.",
        (super::MAX_STREAMS - i.streams.available_permits()) as f64,
    );
    one(
        "ferry_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        i.started.elapsed().as_secs_f64(),
    );

    let _ = writeln!(o, "# HELP ferry_frames_rejected_total Frames rejected, by reason.\n# TYPE ferry_frames_rejected_total counter");
    for (r, c) in REASONS.iter().zip(&m.frames_rejected) {
        let _ = writeln!(o, "ferry_frames_rejected_total{{reason=\"{r}\"}} {}", g(c));
    }
    let _ = writeln!(o, "# HELP ferry_samples_dropped_total Samples or events lost to a full ring or full store, by reason.\n# TYPE ferry_samples_dropped_total counter");
    for (r, v) in [
        ("device_ring", g(&m.samples_dropped_by_device)),
        ("refused", g(&m.samples_refused)),
        ("drop_oldest", g(&m.events_dropped_oldest)),
    ] {
        let _ = writeln!(o, "ferry_samples_dropped_total{{reason=\"{r}\"}} {v}");
    }
    let _ = writeln!(o, "# HELP ferry_uplink_quarantined_total Messages and events the broker refused, kept in quarantine.\n# TYPE ferry_uplink_quarantined_total counter");
    let _ = writeln!(
        o,
        "ferry_uplink_quarantined_total{{unit=\"messages\"}} {}",
        u.messages_quarantined.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "ferry_uplink_quarantined_total{{unit=\"events\"}} {}",
        u.events_quarantined.load(Relaxed)
    );

    histogram(
        &mut o,
        "ferry_commit_duration_seconds",
        "Time from a batch's first statement to COMMIT returning.",
        &m.commit_time,
    );
    histogram(
        &mut o,
        "ferry_ack_delay_seconds",
        "Time from reading a Samples frame off its link to writing the ack that covers it.",
        &m.ack_delay,
    );
    o
}

/// One histogram in Prometheus text format (cumulative buckets, `+Inf`, sum and count).
fn histogram(o: &mut String, name: &str, help: &str, h: &crate::metrics::Histogram) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
    let counts = h.counts();
    let mut acc = 0;
    for (b, c) in BUCKETS_S.iter().zip(&counts) {
        acc += c;
        let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {acc}");
    }
    acc += counts.last().copied().unwrap_or(0);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {acc}");
    let _ = writeln!(o, "{name}_sum {}", h.sum_s());
    let _ = writeln!(o, "{name}_count {acc}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{reads::READERS, ApiParts};
    use crate::config::StoreSettings;

    /// An API state over a fresh store with a running writer (its directory is removed by the
    /// caller).
    async fn state(tag: &str) -> (ApiState, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ferry-ops-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = StoreSettings::for_test(dir.join("o.db"));
        let metrics = Arc::new(Metrics::default());
        let conn = crate::store::open_writer(&settings).unwrap();
        let spawned = crate::store::writer::spawn(conn, settings.clone(), metrics.clone()).unwrap();
        spawned.ready.await.unwrap().unwrap();
        let (outcomes, _) = tokio::sync::mpsc::channel(1);
        let stop = CancellationToken::new();
        let (commands, _) = crate::commands::spawn(
            crate::store::open_reader(&settings.path).unwrap(),
            spawned.handle.clone(),
            outcomes,
            "gw".into(),
            stop.clone(),
        )
        .await
        .unwrap();
        let s = ApiState::new(
            ApiParts {
                store: spawned.handle,
                metrics,
                uplink: Arc::default(),
                forwarding_on: false,
                commands,
                gateway: "gw".into(),
                store_settings: settings,
                token: None,
            },
            stop,
        )
        .unwrap();
        (s, dir)
    }

    async fn body(r: Response) -> serde_json::Value {
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_is_503_with_the_reason_while_no_read_connection_is_free() {
        let (s, dir) = state("readyz").await;
        let r = readyz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::OK);
        let ready = body(r).await;
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["reasons"], serde_json::json!([]));

        // Every read connection busy (long queries): reads cannot be served.
        let (release, _) = tokio::sync::broadcast::channel::<()>(1);
        let (started_tx, mut started) = tokio::sync::mpsc::channel::<()>(READERS);
        let mut held = Vec::new();
        for _ in 0..READERS {
            let (s, mut rx, started_tx) = (s.clone(), release.subscribe(), started_tx.clone());
            held.push(tokio::spawn(async move {
                s.inner
                    .reads
                    .run(move |_| {
                        started_tx.blocking_send(()).unwrap();
                        let _ = rx.blocking_recv();
                        Ok(())
                    })
                    .await
            }));
        }
        for _ in 0..READERS {
            started.recv().await.unwrap();
        }
        let r = readyz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready = body(r).await;
        assert_eq!(ready["ready"], false);
        assert_eq!(ready["reads"]["ok"], false);
        assert_eq!(ready["reads"]["in_use"], READERS);
        let reason = ready["reasons"][0].as_str().unwrap();
        assert!(
            reason.starts_with("reads: all 4 read connections stayed busy"),
            "{reason}"
        );
        assert_eq!(ready["store"]["writable"], true, "the store itself is fine");

        release.send(()).unwrap();
        for h in held {
            h.await.unwrap().unwrap();
        }
        let r = readyz(State(s.clone())).await;
        assert_eq!(r.status(), StatusCode::OK, "{}", body(r).await);
        s.inner.stop.cancel();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Operations routes: `/healthz`, `/readyz`, `/api/v1/status`, `/metrics` (rendered by
//! [`super::metrics`]).
//!
//! Labels are low-cardinality by construction: reasons and results from fixed lists, never device
//! ids. Rates are measured by the agent over the last 5 s ([`Rates`], sampled once a second); the
//! daily write rate over the last 5 minutes.

use std::collections::VecDeque;
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
use crate::metrics::Metrics;
use crate::store::query::{self, ForwardPosition};

/// One sample of the counters the rates are computed from.
#[derive(Debug, Clone, Copy)]
struct RatePoint {
    at: Instant,
    committed: u64,
    forwarded: u64,
    /// The process's bytes written to storage ([`crate::store::wear`]).
    written: Option<u64>,
}

/// Samples of the counters, once a second, newest last: the last [`RATE_WINDOW`] for the sample
/// and forwarding rates, up to [`WEAR_WINDOW`] for the write rate (writes come in bursts: a
/// checkpoint, a batch; a day's figure from five seconds would swing).
#[derive(Default)]
pub struct Rates(Mutex<VecDeque<RatePoint>>);

const RATE_WINDOW: usize = 6;
/// Five minutes of samples.
const WEAR_WINDOW: usize = 301;

impl Rates {
    fn push(&self, committed: u64, forwarded: u64, written: Option<u64>) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(RatePoint {
                at: Instant::now(),
                committed,
                forwarded,
                written,
            });
            while q.len() > WEAR_WINDOW {
                q.pop_front();
            }
        }
    }

    /// `(samples/s, events forwarded/s)` over the last [`RATE_WINDOW`] samples.
    fn per_second(&self) -> (f64, f64) {
        let Ok(q) = self.0.lock() else {
            return (0.0, 0.0);
        };
        let first = q.len().saturating_sub(RATE_WINDOW);
        match (q.get(first), q.back()) {
            (Some(a), Some(b)) if b.at > a.at => {
                let dt = (b.at - a.at).as_secs_f64();
                (
                    b.committed.saturating_sub(a.committed) as f64 / dt,
                    b.forwarded.saturating_sub(a.forwarded) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        }
    }

    /// Bytes written to storage per day at the rate of the whole window (up to five minutes).
    fn written_per_day(&self) -> Option<f64> {
        let q = self.0.lock().ok()?;
        let (a, b) = (q.front()?, q.back()?);
        let bytes = b.written?.checked_sub(a.written?)?;
        crate::store::wear::per_day(bytes, (b.at - a.at).as_secs_f64())
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
            crate::store::wear::process_write_bytes(),
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
pub(super) struct Snapshot {
    pub(super) store: StoreStateDoc,
    pub(super) uplink: UplinkDoc,
    pub(super) disk: DiskDoc,
    pub(super) devices: u64,
    pub(super) devices_online: u64,
}

/// What the store says for [`Snapshot`]: the oldest unforwarded event, devices, devices online.
type StoreFigures = (Option<(i64, i64)>, u64, u64);

async fn read_figures(s: &ApiState) -> Result<StoreFigures, ApiError> {
    let forwarding_on = s.inner.forwarding_on;
    s.inner
        .reads
        .run_events(move |c, t| {
            let oldest = if forwarding_on {
                query::oldest_unforwarded(c, t, ForwardPosition::read(c)?)?
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
            written_bytes: crate::store::wear::process_write_bytes(),
            written_bytes_per_day: i.rates.written_per_day(),
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

/// The OpenMetrics exposition of every counter, gauge and histogram ([`super::metrics`]).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text 1.0.0 (Prometheus reads it)", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let snap = snapshot(&s).await?;
    let text = super::metrics::render(&s, &snap);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
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
        let (firmware, _) = crate::firmware::spawn(
            crate::store::open_reader(&settings.path).unwrap(),
            spawned.handle.clone(),
            Vec::new(),
            "gw".into(),
            tokio::sync::mpsc::channel(1).0,
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
                firmware,
                replays: None,
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

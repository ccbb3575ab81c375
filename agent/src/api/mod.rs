//! The local query API (axum): routes under `/api/v1/`, `/healthz`, `/readyz`, `/metrics`, and the
//! dashboard at `/`. Contract for people: `agent/API.md`; for programs: `/api/v1/openapi.json`,
//! generated from the handlers in [`openapi`].
//!
//! Invariants:
//! - Reads never slow ingest: they run on a small pool of read-only WAL connections
//!   ([`reads::ReadPool`]) on blocking threads; the store writer is only reached by commands.
//! - Ingest comes first for the CPU: the API runs on its own runtime whose threads (HTTP and
//!   reads) have a lower scheduling priority (`nice` +10, [`API_NICE`]). An idle gateway answers at
//!   full speed; a busy one gives the API what ingest leaves.
//! - Every client mistake is a 4xx with `{"error", "detail"}`: handlers return [`ApiError`], and a
//!   last layer rewrites axum's own plain-text rejections (bad path, wrong method, no route).
//! - With a token configured, everything but `/healthz`, `/readyz` and the dashboard's static files
//!   needs it ([`auth`]).
//! - Hyper's own replies to requests it cannot parse (400, 414, 431) carry the same JSON body
//!   ([`server`]), and a connection that sends no complete request head within
//!   [`server::HEADER_READ_TIMEOUT`] is closed.
//! - Reads cannot leak: a read connection returns to its pool whatever happens to the request
//!   ([`reads`]), and `/readyz` answers 503 while reads cannot be served.
//! - Live streams end when the agent stops, so shutdown is never held up by an open browser tab.

pub mod dashboard;
pub mod error;
pub mod firmware;
mod metrics;
pub mod model;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod reads;
pub mod replays;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod tls;
/// Instants and durations in query strings (the agent's one time module).
pub use crate::time;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::commands::CommandsHandle;
use crate::metrics::Metrics;
use crate::store::writer::StoreHandle;

/// Most live streams at once.
pub const MAX_STREAMS: usize = 64;
/// Largest request body (commands are small).
const MAX_BODY: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    reads: reads::ReadPool,
    store: StoreHandle,
    metrics: Arc<Metrics>,
    uplink: Arc<crate::uplink::UplinkStats>,
    forwarding_on: bool,
    commands: CommandsHandle,
    firmware: crate::firmware::FirmwareHandle,
    replays: Option<crate::uplink::replay::Replays>,
    token: Option<String>,
    gateway: String,
    db_path: std::path::PathBuf,
    max_db_size: Option<u64>,
    started: Instant,
    rates: ops::Rates,
    latest: snapshot::Snapshot,
    streams: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
}

/// Everything [`serve`] needs from the agent.
pub struct ApiParts {
    /// The store writer (commit notifications, liveness).
    pub store: StoreHandle,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Uplink counters.
    pub uplink: Arc<crate::uplink::UplinkStats>,
    /// Whether an uplink is configured.
    pub forwarding_on: bool,
    /// Device commands.
    pub commands: CommandsHandle,
    /// Firmware updates.
    pub firmware: crate::firmware::FirmwareHandle,
    /// Replays to the cloud (`None`: forwarding is off).
    pub replays: Option<crate::uplink::replay::Replays>,
    /// Gateway id.
    pub gateway: String,
    /// Store settings (path, cap).
    pub store_settings: crate::config::StoreSettings,
    /// Required token.
    pub token: Option<String>,
}

impl ApiState {
    /// Opens the read pool.
    pub fn new(p: ApiParts, stop: CancellationToken) -> Result<ApiState, crate::store::StoreError> {
        Ok(ApiState {
            inner: Arc::new(Inner {
                reads: reads::ReadPool::open(&p.store_settings.path)?.with_tail(p.store.tail()),
                store: p.store,
                metrics: p.metrics,
                uplink: p.uplink,
                forwarding_on: p.forwarding_on,
                commands: p.commands,
                firmware: p.firmware,
                replays: p.replays,
                token: p.token,
                gateway: p.gateway,
                db_path: p.store_settings.path,
                max_db_size: p.store_settings.max_db_size,
                started: Instant::now(),
                rates: ops::Rates::default(),
                latest: snapshot::Snapshot::default(),
                streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
                stop,
            }),
        })
    }
}

/// The whole application.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/devices", get(routes::devices))
        .route("/api/v1/devices/{id}", get(routes::device))
        .route("/api/v1/devices/{id}/latest", get(routes::device_latest))
        .route("/api/v1/devices/{id}/commands", post(routes::post_command))
        .route(
            "/api/v1/devices/{id}/commands/{request_id}",
            get(routes::command_state),
        )
        .route(
            "/api/v1/firmware/bundles",
            post(firmware::post_bundle)
                .layer(axum::extract::DefaultBodyLimit::max(
                    firmware::MAX_BUNDLE_BODY,
                ))
                .get(firmware::bundles),
        )
        .route(
            "/api/v1/firmware/updates",
            post(firmware::post_update).get(firmware::updates),
        )
        .route("/api/v1/firmware/updates/{id}", get(firmware::update))
        .route(
            "/api/v1/firmware/updates/{id}/cancel",
            post(firmware::cancel_update),
        )
        .route(
            "/api/v1/replays",
            get(replays::list).post(replays::post_replay),
        )
        .route("/api/v1/replays/{id}", get(replays::get))
        .route("/api/v1/replays/{id}/cancel", post(replays::cancel))
        .route("/api/v1/latest", get(routes::all_latest))
        .route("/api/v1/events", get(routes::events))
        .route("/api/v1/series", get(routes::series))
        .route("/api/v1/stream", get(stream::stream))
        .route("/api/v1/status", get(ops::status))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::map_response(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Checks the bearer token where one is required.
async fn auth(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(token) = s.inner.token.as_deref() else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    let open = matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/assets/");
    if open {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    let given = from_header.map(str::to_owned).or(from_query);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => axum::response::IntoResponse::into_response(ApiError::Unauthorized),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Rewrites axum's plain-text rejections (no route, wrong method, bad path or body) as JSON errors.
async fn json_errors(r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return r;
    }
    let allow = r.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(r.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let (kind, detail) = match status {
        StatusCode::NOT_FOUND => (
            "not_found",
            "no such route (see /api/v1/openapi.json)".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("bad_request", format!("body larger than {MAX_BODY} bytes"))
        }
        s if s.is_server_error() => ("internal", text),
        _ => (
            "bad_request",
            if text.is_empty() {
                status.to_string()
            } else {
                text
            },
        ),
    };
    let mut out = error::error_response(status, kind, detail);
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

/// Scheduling priority (`nice`) of the API's threads, relative to ingest's 0.
pub const API_NICE: i32 = 10;

/// Lowers the calling thread's priority to [`API_NICE`] (on Linux, `nice` is per thread: this
/// sets the thread by its id).
fn lower_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), API_NICE) {
        tracing::debug!(error = %e, "API thread priority unchanged.");
    }
}

/// Serves on a runtime of its own (two workers and the read threads, all at [`API_NICE`]) until
/// `stop`. The returned task ends when the API has stopped.
pub fn spawn(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = listener.into_std()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-api")
        .on_thread_start(lower_priority)
        .enable_all()
        .build()?;
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ferry-api".into())
        .spawn(move || {
            lower_priority();
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, state, tls, stop).await,
                    Err(e) => tracing::error!(error = %e, "The local API could not start."),
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            let _ = done.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = stopped.await;
    }))
}

/// Serves until `stop`, then lets open requests finish (streams end at `stop`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let rates = tokio::spawn(ops::sample_rates(state.clone(), stop.clone()));
    server::serve(listener, router(state), tls, stop).await;
    rates.abort();
}

/// Binds `addr` (naming the config key on failure).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("binding the local API api.listen = {addr}: {e} (another ferry running? set [api] listen, or \"\" to disable)")
    })
}

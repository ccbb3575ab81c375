//! The local API: any request a client on the network can send, through the agent's real router
//! (auth, routes, query parameters, JSON bodies, error rewriting) against a real store that
//! simulated devices filled.
//!
//! Input: an HTTP request as text: `METHOD TARGET` on the first line, `name: value` header lines,
//! an empty line, then the body. The harness serves with a bearer token (`fuzz-token`); inputs
//! that send `authorization: Bearer fuzz-token` or `access_token=fuzz-token` reach the handlers.
//! A request line the `http` crate cannot represent never reaches the agent and is skipped.
//!
//! Checked for every request:
//! - the agent answers within 10 s (no hang, no unbounded query);
//! - no 5xx but 503 (not ready, too many streams): a 500 is the agent failing on input;
//! - every 4xx/5xx is `application/json` with string fields `error` and `detail`;
//! - every 2xx `application/json` body is JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use ferry_agent::api::{self, ApiParts, ApiState};
use ferry_agent::config::Settings;
use ferry_agent::Agent;
use ferry_sim::SimConfig;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
const DEADLINE: Duration = Duration::from_secs(10);

struct Harness {
    rt: tokio::runtime::Runtime,
    app: Router,
    _agent: Agent,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("ferry-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let toml = format!(
            "[gateway]\nid = \"fuzz-gw\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n[api]\nlisten = \"\"\n",
            dir.join("ferry.db").display().to_string()
        );
        let settings = Settings::from_toml(&toml, "fuzz.toml", |_| None).expect("settings");
        let (agent, app) = rt.block_on(async {
            let agent = Agent::start(&settings).await.expect("agent starts");
            // Three devices, four sensors, 100 Hz for a second: rows for every read route.
            let addr = agent.tcp_addr.expect("device listener");
            let report = ferry_sim::run(
                SimConfig::tcp(addr, 3, 4, 10).for_secs(1),
                CancellationToken::new(),
            )
            .await;
            assert!(report.totals.acked > 0, "the devices stored samples: {report:?}");
            let state = ApiState::new(
                ApiParts {
                    store: agent.store.clone(),
                    metrics: agent.metrics.clone(),
                    uplink: agent.uplink_stats.clone(),
                    forwarding_on: false,
                    commands: agent.commands.clone(),
                    firmware: agent.firmware.clone(),
                    replays: None,
                    gateway: settings.gateway_id.clone(),
                    store_settings: settings.store.clone(),
                    token: Some(TOKEN.into()),
                },
                CancellationToken::new(),
            )
            .expect("API state");
            (agent, api::router(state))
        });
        Harness {
            rt,
            app,
            _agent: agent,
        }
    })
}

/// The request the input describes, if `http` can represent it.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, target) = lines.next()?.split_once(' ')?;
    let mut b = Request::builder().method(method).uri(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            b = b.header(name.trim(), value.trim());
        }
    }
    b.body(Body::from(body.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some(req) = request(data) else {
        return;
    };
    let what = format!("{} {}", req.method(), req.uri());
    h.rt.block_on(async {
        let resp = tokio::time::timeout(DEADLINE, h.app.clone().oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {DEADLINE:?}"))
            .expect("the router is infallible");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if content_type.starts_with("text/event-stream") {
            assert_eq!(status, StatusCode::OK, "{what}");
            return; // a live stream: its body never ends
        }
        let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{what}: body not finished within {DEADLINE:?}"))
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{what}: {status} {text}"
        );
        let json = content_type.starts_with("application/json");
        if status.is_client_error() || status.is_server_error() {
            assert!(
                json,
                "{what}: {status} with content type {content_type:?}: {text}"
            );
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text}"));
            assert!(
                v["error"].is_string() && v["detail"].is_string(),
                "{what}: {status} body lacks error/detail: {text}"
            );
        } else if json {
            serde_json::from_slice::<serde_json::Value>(&body)
                .unwrap_or_else(|e| panic!("{what}: {status} body is not JSON ({e}): {text}"));
        }
    });
});

//! The local API against hostile HTTP clients, on the real `ferry` process where the damage would
//! be the process's: hundreds of requests reset mid-query and SSE storms reset mid-replay (every
//! read route must answer afterwards), hundreds of half-open connections (closed within the
//! header-read timeout), and requests hyper itself refuses (answered with the JSON error body).
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_sim::{SimConfig, Transport};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::common::{process_config_with_api, spawn_ferry, wait_listening, TempDir};

/// A `ferry run` process with `events` events from 4 devices x 4 sensors. Returns (dir, child,
/// API address).
async fn ferry_with_events(tag: &str, events: u64) -> (TempDir, tokio::process::Child, SocketAddr) {
    let dir = TempDir::new(tag);
    let (config, _db, devices, api) = process_config_with_api(dir.path(), "gw-hostile");
    let child = spawn_ferry(&config);
    wait_listening(devices, Duration::from_secs(20)).await;
    wait_listening(api, Duration::from_secs(20)).await;
    let cfg = SimConfig {
        devices: 4,
        transport: Transport::Tcp(devices),
        sensors: 4,
        interval_ms: 1,
        total_samples: Some(events),
        seed: 13,
        ..SimConfig::default()
    };
    let report = ferry_sim::run(cfg, CancellationToken::new()).await;
    assert!(report.totals.acked >= events, "{}", report.table());
    (dir, child, api)
}

/// Sends `request` on a fresh connection and resets it (SO_LINGER 0) `after` later: the server
/// sees the client vanish while it works on the request.
async fn send_and_reset(api: SocketAddr, request: &str, after: Duration) {
    let Ok(mut s) = TcpStream::connect(api).await else {
        return;
    };
    s.set_zero_linger().unwrap();
    if s.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    tokio::time::sleep(after).await;
    drop(s);
}

/// `(status, body)` of a plain GET on a fresh connection.
async fn get(api: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{api}{path}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_route_answers_after_hundreds_of_requests_reset_mid_query() {
    let (_dir, mut child, api) = ferry_with_events("hostile-aborts", 80_000).await;
    let routes = [
        "/api/v1/devices",
        "/api/v1/devices/sim-0001",
        "/api/v1/devices/sim-0001/latest",
        "/api/v1/latest",
        "/api/v1/events?since=0&limit=1000",
        "/api/v1/events?device=sim-0002&limit=1000",
        "/api/v1/series?device=sim-0003&sensor=temperature&since=-1d&bucket=1m",
        "/api/v1/status",
        "/metrics",
        "/readyz",
    ];
    for path in routes {
        let (status, body) = get(api, path).await;
        assert_eq!(status, 200, "{path} before: {body}");
    }
    // A dozen at a time, reset 0..=5 ms after sending: most land while their query runs.
    let heavy = [
        "GET /api/v1/events?since=0&limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/v1/events?device=sim-0000&since=0&limit=1000 HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/v1/series?device=sim-0001&sensor=temperature&since=-1d&bucket=10s HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut resets = 0;
    for round in 0..40u64 {
        let batch: Vec<_> = (0..12u64)
            .map(|i| {
                let req = heavy[((round * 12 + i) % heavy.len() as u64) as usize];
                let after = Duration::from_micros((round * 7 + i * 431) % 5_001);
                tokio::spawn(send_and_reset(api, req, after))
            })
            .collect();
        for b in batch {
            b.await.unwrap();
            resets += 1;
        }
    }
    // SSE storms: streams replaying every stored event from the start, reset while they read.
    for round in 0..10u64 {
        let batch: Vec<_> = (0..20u64)
            .map(|i| {
                let req = if i % 2 == 0 {
                    "GET /api/v1/stream?last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n"
                } else {
                    "GET /api/v1/stream?device=sim-0001&last_event_id=0 HTTP/1.1\r\nHost: x\r\n\r\n"
                };
                tokio::spawn(send_and_reset(
                    api,
                    req,
                    Duration::from_micros((round * 13 + i * 617) % 8_001),
                ))
            })
            .collect();
        for b in batch {
            b.await.unwrap();
            resets += 1;
        }
    }
    assert_eq!(resets, 680);
    // Every read route answers, each several times over (more than the pool's four connections).
    for _ in 0..3 {
        for path in routes {
            let (status, body) = get(api, path).await;
            assert_eq!(status, 200, "{path} after {resets} resets: {body}");
        }
    }
    let (_, ready) = get(api, "/readyz").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["reads"]["ok"], true, "{ready}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_within_the_header_read_timeout() {
    let dir = TempDir::new("hostile-half-open");
    let (config, _db, devices, api) = process_config_with_api(dir.path(), "gw-half");
    let mut child = spawn_ferry(&config);
    wait_listening(devices, Duration::from_secs(20)).await;
    wait_listening(api, Duration::from_secs(20)).await;
    // 400 connections: a third send nothing, a third half a request head, a third a complete
    // request and then idle on keep-alive.
    let mut conns = Vec::new();
    for i in 0..400 {
        let mut s = TcpStream::connect(api).await.unwrap();
        match i % 3 {
            0 => {}
            1 => s
                .write_all(b"GET /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap(),
            _ => s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap(),
        }
        conns.push(s);
    }
    let opened = Instant::now();
    // The API still serves others meanwhile.
    let (status, _) = get(api, "/healthz").await;
    assert_eq!(status, 200);
    // Each connection must be closed by the server: read to EOF (an idle one gets its answer first).
    let bound = Duration::from_secs(10) + Duration::from_secs(5);
    let closed = futures_util::future::join_all(conns.into_iter().map(|mut s| async move {
        let mut buf = Vec::new();
        let read = tokio::time::timeout_at(
            tokio::time::Instant::from_std(opened + bound),
            s.read_to_end(&mut buf),
        )
        .await;
        matches!(read, Ok(Ok(_)) | Ok(Err(_)))
    }))
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open,
        0,
        "{open} of 400 half-open or idle connections still open {:?} after opening",
        opened.elapsed()
    );
    let (status, _) = get(api, "/healthz").await;
    assert_eq!(status, 200);
    child.kill().await.unwrap();
}

/// Writes `raw` on a fresh connection and reads the whole answer (the server closes after it).
async fn raw_exchange(api: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(api).await.unwrap();
    // The server may answer (and close) before all of a huge request is written.
    let _ = s.write_all(raw).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&buf).into_owned()
}

/// The JSON error of a raw answer: its status and `{"error", "detail"}`.
fn json_error(answer: &str) -> (u16, Value) {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {answer:?}"));
    let status: u16 = head[9..12].parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    assert!(
        v["error"].is_string() && v["detail"].is_string(),
        "{answer}"
    );
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_hyper_refuses_get_the_json_error_body() {
    let dir = TempDir::new("hostile-refusals");
    let agent = crate::common::agent(&dir.path().join("ferry.db"), "").await;
    let api = agent.api_addr.unwrap();
    let long_target = format!(
        "GET /api/v1/devices?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    for (what, raw, want) in [
        (
            "a malformed request line",
            "GARBAGE\r\n\r\n".to_owned(),
            400,
        ),
        (
            "a bad header name",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".to_owned(),
            400,
        ),
        (
            "an unknown HTTP version",
            "GET /healthz HTTP/9.9\r\n\r\n".to_owned(),
            400,
        ),
        ("a target over 65,534 bytes", long_target, 414),
        ("150 headers", many_headers, 431),
        ("a 200 KB header", huge_header, 431),
    ] {
        let answer = raw_exchange(api, raw.as_bytes()).await;
        let (status, v) = json_error(&answer);
        assert_eq!(status, want, "{what}: {answer}");
        assert_eq!(v["error"], "bad_request", "{what}");
    }
    // After a good request on the same connection (pipelined): the first answered normally, the
    // garbage with the JSON error.
    let answer = raw_exchange(
        api,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo st: x\r\n\r\n",
    )
    .await;
    let (first, rest) = answer.split_at(answer.find("HTTP/1.1 400").expect(&answer));
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(first.ends_with("{\"status\":\"ok\"}"), "{first}");
    assert_eq!(json_error(rest).0, 400);
    // The API's own errors are untouched by this.
    let (status, body) = get(api, "/api/v1/events?limit=0").await;
    assert_eq!(status, 400);
    assert!(body.contains("\"detail\":\"limit: "), "{body}");
    agent.stop().await.unwrap();
}

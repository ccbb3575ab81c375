//! The local API against a real agent with simulated devices over TCP: every route, pagination
//! across page boundaries, series checked against buckets computed here from the raw rows, SSE
//! resume with `Last-Event-ID`, auth, the OpenAPI document against real responses, and random
//! query strings that must never produce a 5xx.
use std::collections::BTreeMap;
use std::time::Duration;

use ferry_agent::Agent;
use ferry_sim::{SimConfig, Transport};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::{agent, settings, TempDir};
use crate::poll::{poll_until, try_poll_until};

/// An agent that has stored a few thousand events from 3 devices with 2 sensors each.
async fn agent_with_data(tag: &str) -> (TempDir, Agent, String) {
    let dir = TempDir::new(tag);
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let cfg = SimConfig {
        devices: 3,
        transport: Transport::Tcp(agent.tcp_addr.unwrap()),
        sensors: 2,
        interval_ms: 2,
        total_samples: Some(6_000),
        seed: 11,
        ..SimConfig::default()
    };
    let report = ferry_sim::run(cfg, CancellationToken::new()).await;
    assert!(report.totals.acked >= 6_000, "{}", report.table());
    assert_eq!(report.totals.unacked_at_end, 0, "{}", report.table());
    let base = format!("http://{}", agent.api_addr.unwrap());
    (dir, agent, base)
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    (status, v)
}

async fn ok(url: &str) -> Value {
    let (status, v) = get(url).await;
    assert_eq!(status, 200, "{url}: {v}");
    v
}

/// Follows `next_cursor` from `url` to the end: the event ids in page order, and the page count.
async fn all_pages(url: &str) -> (Vec<i64>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    let mut next = url.to_owned();
    loop {
        let page = ok(&next).await;
        pages += 1;
        ids.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => next = format!("{url}&cursor={c}"),
            None => return (ids, pages),
        }
    }
}

/// All stored events of a device as `(id, sensor name, ts_ms, value)` in `(ts, id)` order, read
/// straight from SQLite.
fn stored(db: &std::path::Path, device: &str) -> Vec<(i64, String, i64, f64)> {
    let c = ferry_agent::store::open_reader(db).unwrap();
    let mut st = c
        .prepare(
            "SELECT e.id, s.name, e.ts_ms, e.value FROM events e
               JOIN devices d ON d.id = e.device
               JOIN sensors s ON s.device = e.device AND s.idx = e.sensor
              WHERE d.device_id = ?1 ORDER BY e.ts_ms, e.id",
        )
        .unwrap();
    let rows = st
        .query_map([device], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_latest_and_pages_across_boundaries_without_gap_or_repeat() {
    let (dir, agent, base) = agent_with_data("api-pages").await;
    let db = dir.path().join("ferry.db");

    let devices = ok(&format!("{base}/api/v1/devices")).await;
    let list = devices["devices"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for d in list {
        let n = stored(&db, d["id"].as_str().unwrap()).len();
        assert!(n >= 2_000);
        assert_eq!(d["counters"]["events"].as_u64(), Some(n as u64), "{d}");
        assert_eq!(d["sensors"].as_array().unwrap().len(), 2);
        assert!(d["forwarding"].is_null(), "forwarding is off");
    }
    let one = ok(&format!("{base}/api/v1/devices/sim-0001")).await;
    assert_eq!(one["id"], "sim-0001");
    let (status, e) = get(&format!("{base}/api/v1/devices/nope")).await;
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")));

    // latest = the newest stored row per sensor.
    let latest = ok(&format!("{base}/api/v1/devices/sim-0001/latest")).await;
    let rows = stored(&db, "sim-0001");
    for s in latest["sensors"].as_array().unwrap() {
        let name = s["sensor"].as_str().unwrap();
        let newest = rows
            .iter()
            .filter(|r| r.1 == name)
            .max_by_key(|r| (r.2, r.0))
            .unwrap();
        assert_eq!(s["ts_ms"].as_i64(), Some(newest.2), "{name}");
        assert_eq!(s["value"].as_f64(), Some(newest.3), "{name}");
    }
    let all = ok(&format!("{base}/api/v1/latest")).await;
    assert_eq!(all["devices"].as_array().unwrap().len(), 3);

    // Per device, (ts, id) order, pages of 7: exactly the stored rows.
    let (got, pages) = all_pages(&format!("{base}/api/v1/events?device=sim-0001&limit=7")).await;
    let want: Vec<i64> = rows.iter().map(|r| r.0).collect();
    assert_eq!(got, want, "device pages = stored rows in (ts, id) order");
    assert!(pages > 280, "{pages} pages");

    // A time window and a sensor, pages of 50.
    let (t0, t1) = (rows[100].2, rows[1500].2);
    let (got, _) = all_pages(&format!(
        "{base}/api/v1/events?device=sim-0001&sensor=humidity&since={t0}&until={t1}&limit=50"
    ))
    .await;
    let want: Vec<i64> = rows
        .iter()
        .filter(|r| r.1 == "humidity" && r.2 >= t0 && r.2 < t1)
        .map(|r| r.0)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want, "window + sensor pages");

    // Store order across all devices, pages of 333.
    let (got, _) = all_pages(&format!("{base}/api/v1/events?limit=333")).await;
    let total: i64 = ferry_agent::store::open_reader(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(got.len() as i64, total);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "store order, no repeat"
    );

    // Limits and bad input are 4xx with a detail naming the parameter.
    for (q, name) in [
        ("limit=1001", "limit"),
        ("since=yesterday", "since"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "colour"),
    ] {
        let (status, e) = get(&format!("{base}/api/v1/events?{q}")).await;
        assert_eq!(status, 400, "{q}");
        assert_eq!(e["error"], "bad_request");
        assert!(e["detail"].as_str().unwrap().starts_with(name), "{q}: {e}");
    }
    let (status, e) = get(&format!("{base}/api/v1/nothing")).await;
    assert_eq!((status, e["error"].as_str()), (404, Some("not_found")));
    let r = reqwest::Client::new()
        .delete(format!("{base}/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    agent.stop().await.unwrap();
}

/// Buckets computed here, from the raw rows: `bucket start -> (avg, min, max, count, last)`.
fn buckets(
    rows: &[(i64, String, i64, f64)],
    sensor: &str,
    since: i64,
    until: i64,
    width: i64,
) -> BTreeMap<i64, (f64, f64, f64, i64, f64)> {
    let mut acc: BTreeMap<i64, Vec<(i64, i64, f64)>> = BTreeMap::new();
    for (id, s, ts, v) in rows {
        if s == sensor && *ts >= since && *ts < until {
            acc.entry(ts - ts.rem_euclid(width))
                .or_default()
                .push((*ts, *id, *v));
        }
    }
    acc.into_iter()
        .map(|(t, vs)| {
            let n = vs.len() as i64;
            let sum: f64 = vs.iter().map(|x| x.2).sum();
            let min = vs.iter().map(|x| x.2).fold(f64::INFINITY, f64::min);
            let max = vs.iter().map(|x| x.2).fold(f64::NEG_INFINITY, f64::max);
            let newest_ts = vs.iter().map(|x| x.0).max().unwrap();
            let last = vs.iter().find(|x| x.0 == newest_ts).unwrap().2;
            (t, (sum / n as f64, min, max, n, last))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_buckets_match_values_computed_from_the_rows() {
    let (dir, agent, base) = agent_with_data("api-series").await;
    let rows = stored(&dir.path().join("ferry.db"), "sim-0002");
    let since = rows.first().unwrap().2 - 5_000;
    let until = rows.last().unwrap().2 + 5_000;
    for (width, bucket) in [
        (1_000, "1s"),
        (2_000, "2s"),
        (10_000, "10s"),
        (60_000, "1m"),
    ] {
        let want = buckets(&rows, "temperature", since, until, width);
        assert!(!want.is_empty());
        for agg in ["avg", "min", "max", "count", "last"] {
            let doc = ok(&format!(
                "{base}/api/v1/series?device=sim-0002&sensor=temperature&since={since}&until={until}&bucket={bucket}&agg={agg}"
            ))
            .await;
            assert_eq!(doc["bucket_ms"], width);
            let points = doc["points"].as_array().unwrap();
            assert_eq!(points.len(), want.len(), "{bucket} {agg}: bucket count");
            for (p, (t, (avg, min, max, n, last))) in points.iter().zip(&want) {
                assert_eq!(p["ts_ms"].as_i64(), Some(*t));
                assert_eq!(p["count"].as_i64(), Some(*n));
                let expect = match agg {
                    "avg" => *avg,
                    "min" => *min,
                    "max" => *max,
                    "count" => *n as f64,
                    _ => *last,
                };
                let got = p["value"].as_f64().unwrap();
                assert!(
                    (got - expect).abs() <= 1e-9 * expect.abs().max(1.0),
                    "{bucket} {agg} at {t}: {got} != {expect}"
                );
            }
        }
    }
    for (q, status) in [
        ("device=sim-0002&sensor=nope", 404),
        ("device=ghost&sensor=temperature", 404),
        ("device=sim-0002", 400),
        (
            "device=sim-0002&sensor=temperature&bucket=1s&since=-1d",
            400,
        ),
        ("device=sim-0002&sensor=temperature&agg=median", 400),
    ] {
        let (s, e) = get(&format!("{base}/api/v1/series?{q}")).await;
        assert_eq!(s, status, "{q}: {e}");
    }
    agent.stop().await.unwrap();
}

/// Reads SSE messages `(id, data)` from a response until `n` arrived.
async fn read_sse(r: reqwest::Response, n: usize) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = r.bytes_stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("SSE messages arrive in time")
            .expect("stream open")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let msg: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in msg.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_follows_commits_and_resumes_after_last_event_id() {
    let dir = TempDir::new("api-sse");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    let stop = CancellationToken::new();
    let cfg = SimConfig {
        devices: 2,
        transport: Transport::Tcp(agent.tcp_addr.unwrap()),
        sensors: 2,
        interval_ms: 5,
        duration: Some(Duration::from_secs(30)),
        seed: 5,
        ..SimConfig::default()
    };
    let sim = tokio::spawn(ferry_sim::run(cfg, stop.clone()));
    let client = reqwest::Client::new();

    // A stream opens with an id-only block: the resume point of a client that has seen nothing yet.
    let r = client
        .get(format!("{base}/api/v1/stream"))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let head = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    let block = head.split("\n\n").next().unwrap();
    assert!(
        block.starts_with("id:") && !block.contains("data:"),
        "{head:?}"
    );
    drop(body);

    // Live: 300 samples of one device, then the connection drops.
    let r = client
        .get(format!("{base}/api/v1/stream?device=sim-0001"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = read_sse(r, 300).await;
    // Reconnect with Last-Event-ID while samples keep committing: replay, then live.
    let last = first.last().unwrap().0;
    let r = client
        .get(format!("{base}/api/v1/stream?device=sim-0001"))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await
        .unwrap();
    let second = read_sse(r, 600).await;
    stop.cancel();
    let _ = sim.await;

    let ids: Vec<i64> = first.iter().chain(&second).map(|m| m.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "no repeat, in order");
    for (_, e) in first.iter().chain(&second) {
        assert_eq!(e["device"], "sim-0001");
    }
    // No gap: every stored event of the device between the first and last id was streamed.
    let c = ferry_agent::store::open_reader(&dir.path().join("ferry.db")).unwrap();
    let want: Vec<i64> = c
        .prepare(
            "SELECT e.id FROM events e JOIN devices d ON d.id = e.device
              WHERE d.device_id = 'sim-0001' AND e.id BETWEEN ?1 AND ?2 ORDER BY e.id",
        )
        .unwrap()
        .query_map([ids[0], *ids.last().unwrap()], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, want, "streamed = stored, across the reconnect");

    // Resuming from an old id replays stored events (query form, sensor filter).
    let r = client
        .get(format!(
            "{base}/api/v1/stream?sensor=humidity&last_event_id=0"
        ))
        .send()
        .await
        .unwrap();
    let replay = read_sse(r, 50).await;
    assert!(replay.iter().all(|(_, e)| e["sensor"] == "humidity"));
    assert!(replay.windows(2).all(|w| w[0].0 < w[1].0));
    let (status, e) = get(&format!("{base}/api/v1/stream?last_event_id=x")).await;
    assert_eq!((status, e["error"].as_str()), (400, Some("bad_request")));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured_and_a_public_address_without_one_is_refused() {
    let e = ferry_agent::config::Settings::from_toml(
        "[api]\nlisten = \"0.0.0.0:0\"\n",
        "t.toml",
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("api.token"), "{e}");

    let dir = TempDir::new("api-auth");
    let token = "s3cret-token-0123456789";
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n",
        dir.path().join("ferry.db").display().to_string()
    );
    let agent = Agent::start(&settings(&toml)).await.unwrap();
    let base = format!("http://{}", agent.api_addr.unwrap());
    let c = reqwest::Client::new();
    for path in [
        "/api/v1/devices",
        "/api/v1/events",
        "/metrics",
        "/api/v1/stream",
        "/api/v1/openapi.json",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without a token");
        assert!(r.headers().contains_key("www-authenticate"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "unauthorized");
        let r = c
            .get(format!("{base}{path}"))
            .bearer_auth("wrong-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with a wrong token");
    }
    let r = c
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("{base}/api/v1/devices?access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "query token (EventSource)");
    for open in ["/healthz", "/readyz", "/", "/assets/app.js"] {
        let r = c.get(format!("{base}{open}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{open} is open");
    }
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_status_metrics_and_readiness() {
    let (_dir, agent, base) = agent_with_data("api-ops").await;
    // Keep one device connected so the command can run.
    let stop = CancellationToken::new();
    let cfg = SimConfig {
        devices: 1,
        transport: Transport::Tcp(agent.tcp_addr.unwrap()),
        sensors: 2,
        interval_ms: 50,
        duration: Some(Duration::from_secs(30)),
        id_prefix: "live-".into(),
        seed: 9,
        ..SimConfig::default()
    };
    let sim = tokio::spawn(ferry_sim::run(cfg, stop.clone()));
    let c = reqwest::Client::new();
    let body = r#"{"v":1,"id":"req-1","command":{"set_interval":{"sensor":1,"interval_ms":100}}}"#;
    let r = c
        .post(format!("{base}/api/v1/devices/live-0000/commands"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let accepted: Value = r.json().await.unwrap();
    let location = accepted["location"].as_str().unwrap().to_owned();
    let state = poll_until(Duration::from_secs(15), "the command done", async || {
        let s = ok(&format!("{base}{location}")).await;
        if s["status"] == "done" {
            Ok(s)
        } else {
            Err(s)
        }
    })
    .await;
    assert_eq!(state["status"], "done", "{state}");
    assert_eq!(state["outcome"]["status"], "ok", "{state}");
    let r = c
        .post(format!("{base}/api/v1/devices/live-0000/commands"))
        .body("{\"v\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (status, _) = get(&format!(
        "{base}/api/v1/devices/live-0000/commands/never-sent"
    ))
    .await;
    assert_eq!(status, 404);
    stop.cancel();
    let _ = sim.await;

    let status = ok(&format!("{base}/api/v1/status")).await;
    assert_eq!(status["uplink"]["state"], "off");
    assert!(status["ingest"]["samples_committed"].as_u64().unwrap() >= 6_000);
    assert_eq!(status["ingest"]["devices"], 4);
    let ready = ok(&format!("{base}/readyz")).await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ok(&format!("{base}/healthz")).await["status"], "ok");

    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed = ferry_agent::metrics::Metrics::get(&agent.metrics.samples_committed);
    assert!(
        text.contains(&format!("ferry_samples_committed_total {committed}\n")),
        "{text}"
    );
    assert!(text.contains("ferry_samples_dropped_total{reason=\"drop_oldest\"} 0"));
    assert!(text.contains("ferry_commit_duration_seconds_bucket{le=\"+Inf\"}"));
    // Every device was acked, so frames were timed from read to ack.
    let acked_frames: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ferry_ack_delay_seconds_count "))
        .expect("ack delay histogram")
        .parse()
        .unwrap();
    assert!(acked_frames > 0, "{text}");
    assert!(text.contains(&format!(
        "ferry_ack_delay_seconds_bucket{{le=\"+Inf\"}} {acked_frames}\n"
    )));
    // OpenMetrics: every sample line is `name{labels} number` of a declared family (a counter's
    // family is its name without `_total`), and the text ends with `# EOF`.
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let base_name = name.split('{').next().unwrap();
        let family = base_name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count")
            .trim_end_matches("_total");
        assert!(
            text.contains(&format!("# TYPE {base_name} "))
                || text.contains(&format!("# TYPE {family} ")),
            "{line}"
        );
    }
    agent.stop().await.unwrap();
}

/// Validates `value` against a schema of the OpenAPI document (refs resolve inside the document).
fn validate(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let v = jsonschema::draft202012::new(&root).unwrap_or_else(|e| panic!("{what}: schema: {e}"));
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route_and_real_responses_validate_against_it() {
    let (_dir, agent, base) = agent_with_data("api-openapi").await;
    let doc = ok(&format!("{base}/api/v1/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    // The router's routes (api/mod.rs), besides the dashboard's static files.
    let mut served = vec![
        "GET /api/v1/devices",
        "GET /api/v1/devices/{id}",
        "GET /api/v1/devices/{id}/latest",
        "POST /api/v1/devices/{id}/commands",
        "GET /api/v1/devices/{id}/commands/{request_id}",
        "GET /api/v1/latest",
        "GET /api/v1/events",
        "GET /api/v1/series",
        "GET /api/v1/stream",
        "GET /api/v1/status",
        "GET /api/v1/openapi.json",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    ];
    served.sort();
    assert_eq!(documented, served);

    // Real responses against their documented 200 schemas.
    let schema_of = |path: &str, status: &str| -> Value {
        let op = &doc["paths"][path]["get"]["responses"][status]["content"]["application/json"]
            ["schema"];
        assert!(!op.is_null(), "{path} {status} has a JSON schema");
        op.clone()
    };
    let cases = [
        ("/api/v1/devices", "/api/v1/devices"),
        ("/api/v1/devices/{id}", "/api/v1/devices/sim-0000"),
        (
            "/api/v1/devices/{id}/latest",
            "/api/v1/devices/sim-0000/latest",
        ),
        ("/api/v1/latest", "/api/v1/latest"),
        ("/api/v1/events", "/api/v1/events?limit=20"),
        ("/api/v1/events", "/api/v1/events?device=sim-0000&limit=20"),
        (
            "/api/v1/series",
            "/api/v1/series?device=sim-0000&sensor=temperature&since=-1d&bucket=1h&agg=last",
        ),
        ("/api/v1/status", "/api/v1/status"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
    ];
    for (path, url) in cases {
        let v = ok(&format!("{base}{url}")).await;
        validate(&doc, &schema_of(path, "200"), &v, url);
    }
    // Errors match ErrorDoc.
    let (_, e) = get(&format!("{base}/api/v1/events?limit=0")).await;
    validate(&doc, &schema_of("/api/v1/events", "400"), &e, "400");
    let (_, e) = get(&format!("{base}/api/v1/devices/ghost")).await;
    validate(&doc, &schema_of("/api/v1/devices/{id}", "404"), &e, "404");
    agent.stop().await.unwrap();
}

#[test]
fn random_query_strings_never_get_a_5xx() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dir, agent, base) = rt.block_on(agent_with_data("api-fuzz"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let key = prop_oneof![
        Just("device"),
        Just("sensor"),
        Just("since"),
        Just("until"),
        Just("limit"),
        Just("cursor"),
        Just("bucket"),
        Just("agg"),
        Just("last_event_id"),
        Just("access_token"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("sim-0000".to_owned()),
        Just("temperature".to_owned()),
        Just("-1h".to_owned()),
        Just("now".to_owned()),
        Just("0".to_owned()),
        Just("1000".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("t1.1".to_owned()),
        Just("s99999999999".to_owned()),
        Just("1s".to_owned()),
        Just("last".to_owned()),
        Just("2026-11-24T10:00:00Z".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%".to_owned()),
        "\\PC{0,24}",
        "[0-9a-z.:+-]{0,16}",
    ];
    let path = prop_oneof![
        Just("/api/v1/events"),
        Just("/api/v1/series"),
        Just("/api/v1/devices"),
        Just("/api/v1/latest"),
        Just("/api/v1/devices/sim-0000/latest"),
        Just("/api/v1/devices/%00/latest"),
        Just("/api/v1/status"),
        Just("/api/v1/stream"),
        Just("/api/v1/devices/sim-0000/commands/x"),
    ];
    let strategy = (path, proptest::collection::vec((key, value), 0..6));
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 400,
        failure_persistence: None,
        ..Default::default()
    });
    let checked = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&strategy, |(path, pairs)| {
            let query: String = pairs
                .iter()
                .map(|(k, v)| {
                    // Raw (sometimes invalid) encodings go through as they are.
                    let v = if v.starts_with('%') {
                        v.clone()
                    } else {
                        form_urlencoded::byte_serialize(v.as_bytes()).collect()
                    };
                    format!("{k}={v}")
                })
                .collect::<Vec<_>>()
                .join("&");
            let url = format!("{base}{path}?{query}");
            let status = rt.block_on(async {
                let r = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                let s = r.status().as_u16();
                if path != "/api/v1/stream" || s != 200 {
                    let body = r.text().await.unwrap_or_default();
                    if s != 200 {
                        let v: Value = serde_json::from_str(&body).map_err(|_| {
                            TestCaseError::fail(format!("{url}: {s} body is not JSON: {body}"))
                        })?;
                        prop_assert!(
                            v["error"].is_string() && v["detail"].is_string(),
                            "{url}: {v}"
                        );
                    }
                }
                Ok::<u16, TestCaseError>(s)
            })?;
            checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            prop_assert!(status < 500, "{url} answered {status}");
            Ok(())
        })
        .unwrap();
    println!(
        "{} random requests, none answered 5xx",
        checked.into_inner()
    );
    rt.block_on(agent.stop()).unwrap();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_and_counts_survive_a_restart() {
    let (dir, agent, base) = agent_with_data("api-restart").await;
    let before = ok(&format!("{base}/api/v1/latest")).await;
    let devices_before = ok(&format!("{base}/api/v1/devices")).await;
    agent.stop().await.unwrap();
    let agent = crate::common::agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    assert_eq!(ok(&format!("{base}/api/v1/latest")).await, before);
    let after = ok(&format!("{base}/api/v1/devices")).await;
    for (a, b) in after["devices"]
        .as_array()
        .unwrap()
        .iter()
        .zip(devices_before["devices"].as_array().unwrap())
    {
        assert_eq!(a["counters"], b["counters"]);
    }
    agent.stop().await.unwrap();
}

/// Sends `values` per sensor from one device over a real link (seqs 0.., 10 ms apart, sensors
/// interleaved in the order given) and waits until all are acked. Returns (device, API base).
async fn store_readings(
    agent: &Agent,
    device: &str,
    sensors: &[(&str, &[f32])],
) -> (crate::common::DeviceLink, u32) {
    let mut link = crate::common::DeviceLink::connect(
        agent.tcp_addr.unwrap(),
        device,
        0x0D1_0001,
        &sensors.iter().map(|(n, _)| (*n, "u")).collect::<Vec<_>>(),
    )
    .await;
    let longest = sensors.iter().map(|(_, v)| v.len()).max().unwrap();
    let mut values = Vec::new();
    for i in 0..longest {
        for (s, (_, vs)) in sensors.iter().enumerate() {
            if let Some(v) = vs.get(i) {
                values.push((s as u8, *v));
            }
        }
    }
    link.send(0, &values).await;
    let n = values.len() as u32;
    link.wait_acked(n, Duration::from_secs(15)).await;
    (link, n)
}

/// The JSON form of a reading (D1).
fn json_value(v: f32) -> Value {
    if v.is_nan() {
        Value::from("NaN")
    } else if v == f32::INFINITY {
        Value::from("Infinity")
    } else if v == f32::NEG_INFINITY {
        Value::from("-Infinity")
    } else {
        serde_json::json!(f64::from(v))
    }
}

/// A value of the API's JSON as a number (D1's strings included).
fn from_json(v: &Value) -> f64 {
    match v.as_str() {
        Some("NaN") => f64::NAN,
        Some("Infinity") => f64::INFINITY,
        Some("-Infinity") => f64::NEG_INFINITY,
        _ => v.as_f64().unwrap_or_else(|| panic!("{v} is not a value")),
    }
}

/// Reads `sensors` back from every route that serves values and checks each is `json_value` of
/// what was sent, and that the answers match the OpenAPI document's schemas.
async fn check_every_route(base: &str, device: &str, sensors: &[(&str, &[f32])]) {
    let doc = ok(&format!("{base}/api/v1/openapi.json")).await;
    let schema_of = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    // Events, per device (time order) and in store order: every value in the order sent.
    for url in [
        format!("{base}/api/v1/events?device={device}&limit=1000"),
        format!("{base}/api/v1/events?limit=1000"),
    ] {
        let page = ok(&url).await;
        validate(&doc, &schema_of("/api/v1/events"), &page, &url);
        for (name, vs) in sensors {
            let got: Vec<Value> = page["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["device"] == device && e["sensor"] == *name)
                .map(|e| e["value"].clone())
                .collect();
            let want: Vec<Value> = vs.iter().map(|v| json_value(*v)).collect();
            assert_eq!(got, want, "{url}: {name}");
        }
    }
    // Latest, of the device and of all devices: the last value of each sensor.
    let mine = ok(&format!("{base}/api/v1/devices/{device}/latest")).await;
    validate(
        &doc,
        &schema_of("/api/v1/devices/{id}/latest"),
        &mine,
        "latest",
    );
    // The shared body may lag the newest commit by up to 100 ms (at the deadline, the last one
    // is validated).
    let mut all = Value::Null;
    let _ = try_poll_until(Duration::from_secs(5), "/latest to match", async || {
        all = ok(&format!("{base}/api/v1/latest")).await;
        let theirs = all["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device);
        theirs == Some(&mine)
    })
    .await;
    validate(&doc, &schema_of("/api/v1/latest"), &all, "all latest");
    for (name, vs) in sensors {
        let s = mine["sensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["sensor"] == *name)
            .unwrap_or_else(|| panic!("{name} in {mine}"));
        assert_eq!(s["value"], json_value(*vs.last().unwrap()), "latest {name}");
    }
    // Series: `last`, `min` and `max` over one bucket holding every sample of a sensor.
    for (name, vs) in sensors {
        for (agg, want) in [
            ("last", *vs.last().unwrap()),
            ("min", vs.iter().copied().fold(f32::INFINITY, f32::min)),
            ("max", vs.iter().copied().fold(f32::NEG_INFINITY, f32::max)),
        ] {
            if vs.iter().any(|v| v.is_nan()) && agg != "last" {
                continue; // SQL's min/max skip the NULL a NaN is stored as
            }
            let url = format!(
                "{base}/api/v1/series?device={device}&sensor={name}&since=-1d&until=%2B1d&bucket=1d&agg={agg}"
            );
            let s = ok(&url).await;
            validate(&doc, &schema_of("/api/v1/series"), &s, &url);
            // One bucket, or two if the samples straddle a UTC midnight: fold them.
            let values: Vec<f64> = s["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| from_json(&p["value"]))
                .collect();
            let got = match agg {
                "last" => *values.last().unwrap(),
                "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                _ => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            assert_eq!(json_value(got as f32), json_value(want), "{url}: {s}");
        }
    }
    // The live stream, replayed from the start: the same values, as strings in `data`.
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/v1/stream?device={device}&last_event_id=0"
        ))
        .send()
        .await
        .unwrap();
    let total: usize = sensors.iter().map(|(_, v)| v.len()).sum();
    let msgs = read_sse(r, total).await;
    for (name, vs) in sensors {
        let got: Vec<Value> = msgs
            .iter()
            .filter(|(_, e)| e["sensor"] == *name)
            .map(|(_, e)| e["value"].clone())
            .collect();
        let want: Vec<Value> = vs.iter().map(|v| json_value(*v)).collect();
        assert_eq!(got, want, "stream: {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_readings_are_served_as_strings_on_every_route() {
    let dir = TempDir::new("api-inf");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    // +Inf and -Inf on separate sensors: one ten-second summary holding both would sum to NaN,
    // which is the NaN case below.
    let up: &[f32] = &[1.5, f32::INFINITY, 2.5, f32::INFINITY];
    let down: &[f32] = &[-1.5, f32::NEG_INFINITY, f32::MAX, f32::NEG_INFINITY];
    let plain: &[f32] = &[0.1, 15.066_667, -3.25, 1e-30];
    let sensors = [("up", up), ("down", down), ("plain", plain)];
    let (_link, _) = store_readings(&agent, "d1-inf", &sensors).await;
    check_every_route(&base, "d1-inf", &sensors).await;
    // `avg` over a bucket with an infinity is that infinity.
    for (sensor, want) in [("up", "Infinity"), ("down", "-Infinity")] {
        let s = ok(&format!(
            "{base}/api/v1/series?device=d1-inf&sensor={sensor}&since=-1d&until=%2B1d&bucket=1d&agg=avg"
        ))
        .await;
        let points = s["points"].as_array().unwrap();
        assert!(points.iter().any(|p| p["value"] == want), "{s}");
    }
    agent.stop().await.unwrap();
}

/// Fails at ingest until the store keeps NaN (as NULL, read back as NaN): today the commit of a
/// NaN fails and the device is never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_readings_are_served_as_strings_on_every_route() {
    let dir = TempDir::new("api-nan");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    let odd: &[f32] = &[f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN];
    let plain: &[f32] = &[0.5, 0.25, 0.125, 2.0, 4.0];
    let sensors = [("odd", odd), ("plain", plain)];
    let (_link, _) = store_readings(&agent, "d1-nan", &sensors).await;
    check_every_route(&base, "d1-nan", &sensors).await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_ids_request_ids_and_times_at_the_edges() {
    let dir = TempDir::new("api-edges");
    let agent = agent(&dir.path().join("ferry.db"), "").await;
    let base = format!("http://{}", agent.api_addr.unwrap());
    let c = reqwest::Client::new();
    let body = |id: &str| {
        serde_json::json!({"v": 1, "id": id, "command": {"identify": {"duration_ms": 10}}})
            .to_string()
    };
    // Device ids the link protocol cannot carry: 33 bytes, a NUL. Refused, naming `id`.
    for device in [
        "d".repeat(33),
        "a%00b".to_owned(),
        "%C3%A9".repeat(16) + "x",
    ] {
        let r = c
            .post(format!("{base}/api/v1/devices/{device}/commands"))
            .body(body("r-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{device}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"], "bad_request");
        assert!(e["detail"].as_str().unwrap().starts_with("id: "), "{e}");
        let (status, e) = get(&format!("{base}/api/v1/devices/{device}/latest")).await;
        assert_eq!(status, 400, "{device}: {e}");
    }
    // 32 bytes with characters that need encoding: taken, and the Location resolves.
    let device = "dev/ice ?#%+".to_owned() + &"x".repeat(20);
    assert_eq!(device.len(), 32);
    let dev_segment: String = form_urlencoded::byte_serialize(device.as_bytes())
        .collect::<String>()
        .replace('+', "%20");
    for request_id in ["../../x", "a/b", "..x", "%41 b?c#d", "é\u{0}", "./"] {
        let r = c
            .post(format!("{base}/api/v1/devices/{dev_segment}/commands"))
            .body(body(request_id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{request_id:?}");
        let accepted: Value = r.json().await.unwrap();
        assert_eq!(accepted["id"], request_id);
        assert_eq!(accepted["device"], device.as_str());
        let location = accepted["location"].as_str().unwrap();
        // Resolved like a browser would, against the API's base.
        let url = reqwest::Url::parse(&base).unwrap().join(location).unwrap();
        assert!(
            url.path().starts_with("/api/v1/devices/") && url.path().contains("/commands/"),
            "{request_id:?}: {location} -> {url}"
        );
        let state = ok(url.as_str()).await;
        assert_eq!(
            (state["device"].as_str(), state["id"].as_str()),
            (Some(device.as_str()), Some(request_id)),
            "{location}"
        );
    }
    assert_eq!(
        ok(&format!(
            "{base}/api/v1/devices/{dev_segment}/commands/..%2F..%2Fx"
        ))
        .await["id"],
        "../../x"
    );
    // `.` and `..` can be no URL's path segment: refused, naming the field.
    for request_id in [".", ".."] {
        let r = c
            .post(format!("{base}/api/v1/devices/sim-1/commands"))
            .body(body(request_id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let e: Value = r.json().await.unwrap();
        assert!(
            e["detail"].as_str().unwrap().starts_with("body.id: "),
            "{e}"
        );
    }
    // Times too far for any arithmetic are out of range, naming the parameter.
    for (route, q, name) in [
        ("events", "since=-1000000000000w", "since"),
        ("events", "until=99999999999999999999", "until"),
        ("events", "since=-10000000w", "since"),
        ("series", "device=d&sensor=s&since=-1000000000000w", "since"),
        (
            "series",
            "device=d&sensor=s&bucket=1000000000000w",
            "bucket",
        ),
    ] {
        let (status, e) = get(&format!("{base}/api/v1/{route}?{q}")).await;
        assert_eq!(status, 400, "{q}");
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{name}: ")) && detail.contains("out of range"),
            "{q}: {detail}"
        );
    }
    // Year 1 is a valid instant (D2), 1969 too.
    ok(&format!(
        "{base}/api/v1/events?since=0001-01-01T00:00:00Z&until=-1"
    ))
    .await;
    agent.stop().await.unwrap();
}

//! The local API against a real agent with simulated devices over TCP: every route, pagination
//! across page boundaries, series checked against buckets computed here from the raw rows, SSE
//! resume with `Last-Event-ID`, auth, the OpenAPI document against real responses, and random
//! query strings that must never produce a 5xx. The OpenAPI checks and the random query strings are
//! in `api_contract.rs`, non-finite readings and ids and times at the edges in `api_values.rs`;
//! they share this module's agent and HTTP helpers.
use std::collections::BTreeMap;
use std::time::Duration;

use ferry_agent::Agent;
use ferry_sim::{SimConfig, Transport};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::{agent, settings, TempDir};
use crate::poll::poll_until;

/// An agent that has stored a few thousand events from 3 devices with 2 sensors each.
pub(crate) async fn agent_with_data(tag: &str) -> (TempDir, Agent, String) {
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
    // The tests read the database directly for what to expect: everything in it (the tail's
    // answers are checked against the database's in `answers_from_the_tail_equal_the_database`).
    agent.store.sync().await.unwrap();
    let base = format!("http://{}", agent.api_addr.unwrap());
    (dir, agent, base)
}

pub(crate) async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    (status, v)
}

pub(crate) async fn ok(url: &str) -> Value {
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
pub(crate) async fn read_sse(r: reqwest::Response, n: usize) -> Vec<(i64, Value)> {
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
    // What was streamed came (mostly) from the tail; the database gets it with the flush.
    agent.store.sync().await.unwrap();

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
    // The wear figures: the kernel's count of what was written (here the test process's, as the
    // agent runs in it), and a day at the recent rate.
    let written = status["disk"]["written_bytes"]
        .as_u64()
        .expect("written_bytes");
    assert!(written > 0, "{status}");
    assert!(
        status["disk"]["written_bytes_per_day"].as_f64().unwrap() > 0.0,
        "{status}"
    );
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
    let scraped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ferry_store_bytes_written_total "))
        .expect("bytes written")
        .parse()
        .unwrap();
    assert!(scraped >= written, "{scraped} after {written}");
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
        // Heartbeat figures (ring depth and the like) reach the database with the next flush of
        // the tail, the last one at the stop: only the stored counts are compared.
        assert_eq!(a["counters"]["events"], b["counters"]["events"]);
    }
    agent.stop().await.unwrap();
}

/// Every page of `url` (following `next_cursor`), whole.
async fn every_page(url: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut next = url.to_owned();
    loop {
        let page = ok(&next).await;
        let cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        match cursor {
            Some(c) => next = format!("{url}&cursor={c}"),
            None => return pages,
        }
    }
}

/// What the API answers about the data, with the figures the writer keeps for its next flush
/// (heartbeat counters and `last_seen`: written with the flush, stale until then by design)
/// left out.
async fn data_answers(base: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut devices = ok(&format!("{base}/api/v1/devices")).await;
    for d in devices["devices"].as_array_mut().unwrap() {
        let o = d.as_object_mut().unwrap();
        o.remove("last_seen_ms");
        if let Some(c) = o.get_mut("counters").and_then(Value::as_object_mut) {
            for k in ["ring_depth", "dropped_by_device", "read_errors"] {
                c.remove(k);
            }
        }
    }
    out.push(("devices".to_owned(), devices));
    for path in [
        "/api/v1/latest".to_owned(),
        "/api/v1/devices/sim-0001/latest".to_owned(),
    ] {
        out.push((path.clone(), ok(&format!("{base}{path}")).await));
    }
    for path in [
        "/api/v1/events?limit=97&since=0",
        "/api/v1/events?limit=50&since=0&device=sim-0002",
        "/api/v1/events?limit=1000&since=0&device=sim-0000&sensor=humidity",
    ] {
        for (i, page) in every_page(&format!("{base}{path}"))
            .await
            .into_iter()
            .enumerate()
        {
            out.push((format!("{path} page {i}"), page));
        }
    }
    let rows = ok(&format!(
        "{base}/api/v1/events?limit=1&since=0&device=sim-0002"
    ))
    .await;
    let first = rows["events"][0]["ts_ms"].as_i64().unwrap();
    let until = first + 600_000;
    for agg in ["avg", "min", "max", "count", "last"] {
        for bucket in ["1s", "10s", "1m"] {
            let path = format!(
                "/api/v1/series?device=sim-0002&sensor=temperature&since={first}&until={until}&bucket={bucket}&agg={agg}"
            );
            out.push((path.clone(), ok(&format!("{base}{path}")).await));
        }
    }
    out
}

/// The tail (acked samples not yet in the database) answers like the database: every read of the
/// data is the same while the samples are only in the sample log and the tail, and after the
/// flush that writes them to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_tail_equal_the_database() {
    let dir = TempDir::new("api-tail");
    let db = dir.path().join("ferry.db");
    let agent = crate::common::agent_tuned(&db, "", |s| {
        s.store.tail_flush_age = Duration::from_secs(3600);
        s.store.tail_flush_rows = usize::MAX;
    })
    .await;
    let cfg = SimConfig {
        devices: 3,
        transport: Transport::Tcp(agent.tcp_addr.unwrap()),
        sensors: 2,
        interval_ms: 2,
        total_samples: Some(3_000),
        seed: 17,
        ..SimConfig::default()
    };
    let report = ferry_sim::run(cfg, CancellationToken::new()).await;
    assert_eq!(report.totals.unacked_at_end, 0, "{}", report.table());
    let committed = ferry_agent::metrics::Metrics::get(&agent.metrics.samples_committed);
    let in_tail = agent.store.tail().read().unwrap().len() as u64;
    assert!(committed >= 3_000);
    assert_eq!(
        in_tail, committed,
        "every sample is in the tail, none in the database"
    );
    let base = format!("http://{}", agent.api_addr.unwrap());
    let from_tail = data_answers(&base).await;
    agent.store.sync().await.unwrap();
    assert!(agent.store.tail().read().unwrap().is_empty(), "flushed");
    let stored: i64 = ferry_agent::store::open_reader(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as u64, committed);
    let from_db = data_answers(&base).await;
    assert_eq!(from_tail.len(), from_db.len());
    for ((what, a), (_, b)) in from_tail.iter().zip(&from_db) {
        assert_eq!(a, b, "{what}: from the tail, then from the database");
    }
    agent.stop().await.unwrap();
}

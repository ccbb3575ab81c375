//! The `ferry` API commands (`devices`, `latest`, `query`, `tail`, `status`) as processes against a
//! real in-process agent fed by simulated devices over TCP, checked against the store read
//! directly: row counts, exit codes and messages, `tail` across an agent restart (nothing skipped
//! or repeated), and a closed stdout.
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_agent::Agent;
use ferry_sim::{SimConfig, Transport};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::common::{free_port, settings, TempDir};
use crate::poll::poll_until;

/// How long one `ferry` command may run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn agent_toml(db: &Path, api_listen: &str, extra_api: &str) -> String {
    format!(
        "[gateway]\nid = \"test\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n\
         [api]\nlisten = {api_listen:?}\n{extra_api}\n",
        db.display().to_string()
    )
}

async fn start_agent(db: &Path, api_listen: &str, extra_api: &str) -> Agent {
    Agent::start(&settings(&agent_toml(db, api_listen, extra_api)))
        .await
        .expect("agent starts")
}

fn sims(agent: &Agent, prefix: &str, total: Option<u64>) -> SimConfig {
    SimConfig {
        devices: 3,
        transport: Transport::Tcp(agent.tcp_addr.expect("tcp listener")),
        sensors: 2,
        interval_ms: 2,
        total_samples: total,
        id_prefix: prefix.into(),
        seed: 7,
        ..SimConfig::default()
    }
}

/// An agent that has stored about 2,700 events (3 pages of `query events`) from 3 devices.
async fn agent_with_data(tag: &str) -> (TempDir, PathBuf, Agent, String) {
    let dir = TempDir::new(tag);
    let db = dir.path().join("ferry.db");
    let agent = start_agent(&db, "127.0.0.1:0", "").await;
    let report = ferry_sim::run(sims(&agent, "sim-", Some(2_700)), CancellationToken::new()).await;
    let t = &report.totals;
    assert!(
        t.acked >= 2_700 && t.acked == t.generated,
        "{}",
        report.table()
    );
    // The tests read the database directly for what to expect: everything in it.
    agent.store.sync().await.unwrap();
    let api = format!("http://{}", agent.api_addr.expect("api bound"));
    (dir, db, agent, api)
}

/// The `ferry` binary with a clean environment for the API settings.
pub(crate) fn ferry_cmd(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.args(args)
        .env_remove("FERRY_API_URL")
        .env_remove("FERRY_API_TOKEN")
        .env_remove("FERRY_API_CA_FILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

pub(crate) async fn run(cmd: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("ferry finishes in time")
        .expect("ferry runs")
}

/// Runs `ferry ARGS`; asserts exit 0 and returns stdout.
async fn ferry_ok(args: &[&str]) -> String {
    let out = run(&mut ferry_cmd(args)).await;
    assert!(
        out.status.success(),
        "ferry {args:?}: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Rows of CSV output, header checked and removed (no field in these tests is quoted).
fn csv_rows(text: &str, header_starts: &str) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header row");
    assert!(header.starts_with(header_starts), "header: {header}");
    lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

fn store_count(db: &Path, sql: &str, params: &[&str]) -> u64 {
    let c = ferry_agent::store::open_reader(db).unwrap();
    c.query_row(sql, rusqlite::params_from_iter(params), |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

fn all_events(db: &Path) -> u64 {
    store_count(db, "SELECT count(*) FROM events", &[])
}

fn device_events(db: &Path, device: &str) -> u64 {
    store_count(
        db,
        "SELECT count(*) FROM events e JOIN devices d ON d.id = e.device WHERE d.device_id = ?1",
        &[device],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_lists_every_simulated_device_with_its_event_count() {
    let (_dir, db, agent, api) = agent_with_data("cli-devices").await;
    let table = ferry_ok(&["devices", "--api", &api]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("device "), "{table}");
    assert_eq!(lines.len(), 4, "header + 3 devices:\n{table}");
    for (i, line) in lines[1..].iter().enumerate() {
        let id = format!("sim-{i:04}");
        assert!(line.starts_with(&id), "{table}");
        assert!(line.contains("online") || line.contains("offline"));
        assert!(
            line.split_whitespace()
                .any(|c| c == device_events(&db, &id).to_string()),
            "events column of {id}:\n{table}"
        );
    }
    // CSV and JSON carry the same devices and counts.
    let csv = ferry_ok(&["devices", "--api", &api, "--format", "csv"]).await;
    let rows = csv_rows(&csv, "id,online,last_seen,");
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r[7], device_events(&db, &r[0]).to_string(), "{csv}");
    }
    let json: Value =
        serde_json::from_str(&ferry_ok(&["devices", "--api", &api, "--format", "json"]).await)
            .expect("devices --format json is JSON");
    let arr = json.as_array().expect("an array of devices");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["id"], "sim-0000");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_events_follows_pages_and_matches_the_store() {
    let (_dir, db, agent, api) = agent_with_data("cli-events").await;
    let total = all_events(&db);
    assert!(total > 2_000, "three pages");
    // Every row, over three pages, each once, in store order.
    let csv = ferry_ok(&["query", "events", "--api", &api, "--format", "csv"]).await;
    let rows = csv_rows(&csv, "id,device,boot_id,seq,sensor,value,unit,ts,ts_ms");
    assert_eq!(rows.len() as u64, total);
    let ids: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    // One device: ordered by time, the same count as the store.
    let dev = ferry_ok(&[
        "query", "events", "--api", &api, "--format", "csv", "--device", "sim-0001",
    ])
    .await;
    let rows = csv_rows(&dev, "id,");
    assert_eq!(rows.len() as u64, device_events(&db, "sim-0001"));
    assert!(rows.iter().all(|r| r[1] == "sim-0001"));
    let ts: Vec<i64> = rows.iter().map(|r| r[8].parse().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "ordered by time");
    // --limit across a page boundary; JSON Lines; relative --since (a value starting with '-').
    let jl = ferry_ok(&[
        "query", "events", "--api", &api, "--format", "json", "--limit", "1500", "--since", "-7d",
    ])
    .await;
    let lines: Vec<Value> = jl
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON object"))
        .collect();
    assert_eq!(lines.len(), 1_500);
    assert!(lines
        .iter()
        .all(|v| v["id"].is_u64() && v["device"].is_string()));
    // The table: a header and one line per row.
    let table = ferry_ok(&["query", "events", "--api", &api, "--limit", "5"]).await;
    assert_eq!(table.lines().count(), 6, "{table}");
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_series_and_status_read_the_same_store() {
    let (_dir, db, agent, api) = agent_with_data("cli-series").await;
    let devices: Value =
        serde_json::from_str(&ferry_ok(&["devices", "--api", &api, "--format", "json"]).await)
            .unwrap();
    let sensor = devices[0]["sensors"][0]["name"]
        .as_str()
        .expect("a sensor name")
        .to_owned();
    let latest = ferry_ok(&["latest", "sim-0000", "--api", &api]).await;
    assert_eq!(latest.lines().count(), 3, "header + 2 sensors:\n{latest}");
    assert!(latest.contains(&sensor), "{latest}");
    let all = ferry_ok(&["latest", "--api", &api, "--format", "csv"]).await;
    assert_eq!(csv_rows(&all, "device,sensor,value").len(), 6, "{all}");
    // Counts per bucket add up to the device's events of that sensor.
    let until = (ferry_agent::utc_now_ms() + 3_600_000).to_string();
    let series = ferry_ok(&[
        "query", "series", "--api", &api, "--device", "sim-0000", "--sensor", &sensor, "--since",
        "-1d", "--until", &until, "--bucket", "1h", "--agg", "count", "--format", "csv",
    ])
    .await;
    let rows = csv_rows(&series, "device,sensor,agg,unit,ts,ts_ms,value,count");
    let sum: u64 = rows.iter().map(|r| r[7].parse::<u64>().unwrap()).sum();
    let direct = store_count(
        &db,
        "SELECT count(*) FROM events e JOIN devices d ON d.id = e.device
           JOIN sensors s ON s.device = e.device AND s.idx = e.sensor
          WHERE d.device_id = ?1 AND s.name = ?2",
        &["sim-0000", &sensor],
    );
    assert!(direct > 0);
    assert_eq!(sum, direct, "{series}");
    let status: Value =
        serde_json::from_str(&ferry_ok(&["status", "--api", &api, "--format", "json"]).await)
            .expect("status --format json is JSON");
    assert_eq!(
        status["ingest"]["samples_committed"],
        all_events(&db),
        "{status}"
    );
    let table = ferry_ok(&["status", "--api", &api]).await;
    for key in ["ingest", "devices", "uplink", "backlog", "disk", "drops"] {
        assert!(
            table.lines().any(|l| l.starts_with(key)),
            "{key} in:\n{table}"
        );
    }
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_exits_2_with_the_agents_detail() {
    let (_dir, _db, agent, api) = agent_with_data("cli-4xx").await;
    let out = run(&mut ferry_cmd(&[
        "query",
        "events",
        "--api",
        &api,
        "--since",
        "yesterday",
    ]))
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("ferry: ") && err.contains("since"), "{err}");
    assert!(out.stdout.is_empty(), "no data, not even a header");
    let out = run(&mut ferry_cmd(&["latest", "no-such-device", "--api", &api])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ferry: "));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_exits_1_with_the_hint() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for cmd in [
        vec!["devices"],
        vec!["query", "events"],
        vec!["tail"],
        vec!["status"],
    ] {
        let out = run(ferry_cmd(&cmd).env("FERRY_API_URL", &url)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert!(
            err.contains(&url) && err.contains("is `ferry run` running? (--api / FERRY_API_URL)"),
            "{cmd:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_the_flag_or_the_environment() {
    let dir = TempDir::new("cli-token");
    let agent = start_agent(
        &dir.path().join("ferry.db"),
        "127.0.0.1:0",
        "token = \"0123456789abcdef\"",
    )
    .await;
    let api = format!("http://{}", agent.api_addr.unwrap());
    let out = run(&mut ferry_cmd(&["status", "--api", &api])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FERRY_API_TOKEN"));
    ferry_ok(&["status", "--api", &api, "--token", "0123456789abcdef"]).await;
    let out = run(ferry_cmd(&["devices"])
        .env("FERRY_API_URL", &api)
        .env("FERRY_API_TOKEN", "0123456789abcdef"))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_quietly() {
    let (_dir, _db, agent, api) = agent_with_data("cli-pipe").await;
    // 2,700 JSON lines are far more than a pipe buffer holds: ferry must meet the closed pipe.
    let mut child = ferry_cmd(&["query", "events", "--api", &api, "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(first.starts_with('{'), "{first}");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    let status = tokio::time::timeout(RUN_LIMIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}; stderr: {stderr}");
    assert_eq!(stderr, "", "no panic, no message");
    agent.stop().await.unwrap();
}

/// `ferry tail` as a child whose CSV rows are collected as they arrive.
struct Tail {
    child: tokio::process::Child,
    rows: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Tail {
    fn spawn(args: &[&str]) -> Tail {
        let mut child = ferry_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rows: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = rows.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Tail {
            child,
            rows,
            stderr,
            reader,
        }
    }

    fn count(&self) -> usize {
        self.rows.lock().unwrap().len()
    }

    /// Waits for exit 0; returns the ids of the rows after the header.
    async fn finish(mut self) -> Vec<u64> {
        let status = tokio::time::timeout(RUN_LIMIT, self.child.wait())
            .await
            .expect("tail stops after --count samples")
            .unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "{status}; stderr: {stderr}");
        // The reader ends at the pipe's EOF, after the last row.
        tokio::time::timeout(Duration::from_secs(10), self.reader)
            .await
            .expect("stdout closes after exit")
            .unwrap();
        let rows = self.rows.lock().unwrap().clone();
        assert!(rows[0].starts_with("id,"), "header: {:?}", rows[0]);
        rows[1..]
            .iter()
            .map(|r| r.split(',').next().unwrap().parse().unwrap())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_count_prints_n_live_samples_then_exits() {
    let dir = TempDir::new("cli-tail");
    let db = dir.path().join("ferry.db");
    let agent = start_agent(&db, "127.0.0.1:0", "").await;
    let api = format!("http://{}", agent.api_addr.unwrap());
    let stop_sims = CancellationToken::new();
    let sims = tokio::spawn(ferry_sim::run(
        sims(&agent, "sim-", None),
        stop_sims.clone(),
    ));
    let tail = Tail::spawn(&["tail", "--api", &api, "--count", "300", "--format", "csv"]);
    let ids = tail.finish().await;
    assert_eq!(ids.len(), 300);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in store order, no repeat"
    );
    // Replay: stored events after an id come first, then live ones.
    let tail = Tail::spawn(&[
        "tail", "--api", &api, "--count", "50", "--after", "0", "--device", "sim-0002", "--format",
        "csv",
    ]);
    let ids = tail.finish().await;
    assert_eq!(ids.len(), 50);
    stop_sims.cancel();
    let _ = sims.await;
    agent.stop().await.unwrap();
    // Without a device filter every stored id in the range was printed: nothing skipped.
    let conn = ferry_agent::store::open_reader(&db).unwrap();
    let first: i64 = conn
        .query_row(
            "SELECT min(e.id) FROM events e JOIN devices d ON d.id = e.device WHERE d.device_id = 'sim-0002'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        ids[0], first as u64,
        "--after 0 replays from the first event"
    );
}

/// Starts an agent on the same store (and API address), retrying while the old one's port frees.
async fn restart_agent(db: &Path, api_listen: &str) -> Agent {
    poll_until(
        Duration::from_secs(10),
        "the agent to restart",
        async || Agent::start(&settings(&agent_toml(db, api_listen, ""))).await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_across_an_agent_restart_without_gaps_or_repeats() {
    let dir = TempDir::new("cli-tail-restart");
    let db = dir.path().join("ferry.db");
    let listen = format!("127.0.0.1:{}", free_port());
    let api = format!("http://{listen}");
    // 1. Live: devices a-* stream while tail prints.
    let agent = start_agent(&db, &listen, "").await;
    let stop_sims = CancellationToken::new();
    let slow = |agent: &Agent, prefix: &str, total| SimConfig {
        interval_ms: 10,
        ..sims(agent, prefix, total)
    };
    let run = tokio::spawn(ferry_sim::run(slow(&agent, "a-", None), stop_sims.clone()));
    let tail = Tail::spawn(&["tail", "--api", &api, "--count", "2000", "--format", "csv"]);
    poll_until(
        Duration::from_secs(30),
        "tail printed 100 rows",
        async || tail.count() > 100,
    )
    .await;
    stop_sims.cancel();
    let _ = run.await;
    agent.stop().await.unwrap();
    let printed_before = tail.count();
    // 2. The gap: the agent runs without its API while devices b-* store events. tail, retrying,
    //    can only get them by resuming after the last id it printed.
    let agent = Agent::start(&settings(&agent_toml(&db, "", "")))
        .await
        .expect("agent without API starts");
    let report = ferry_sim::run(slow(&agent, "b-", Some(600)), CancellationToken::new()).await;
    assert!(report.totals.acked >= 600, "{}", report.table());
    agent.stop().await.unwrap();
    // 3. Back on the same address; devices c-* stream live until tail has its 2000.
    let agent = restart_agent(&db, &listen).await;
    let stop_sims = CancellationToken::new();
    let run = tokio::spawn(ferry_sim::run(slow(&agent, "c-", None), stop_sims.clone()));
    let ids = tail.finish().await;
    stop_sims.cancel();
    let _ = run.await;
    agent.stop().await.unwrap();
    assert_eq!(ids.len(), 2000);
    assert!(printed_before < 1000, "the restart happened mid-tail");
    // Exactly the stored ids from the first to the last printed: nothing skipped, nothing twice.
    let conn = ferry_agent::store::open_reader(&db).unwrap();
    let ids_where = |sql: &str, a: i64, b: i64| -> Vec<u64> {
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([a, b], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|r| r.unwrap() as u64)
            .collect()
    };
    let stored = ids_where(
        "SELECT id FROM events WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        ids[0] as i64,
        *ids.last().unwrap() as i64,
    );
    assert_eq!(ids, stored);
    let gap = ids_where(
        "SELECT e.id FROM events e JOIN devices d ON d.id = e.device
          WHERE substr(d.device_id, 1, 2) = 'b-' AND e.id BETWEEN ?1 AND ?2 ORDER BY e.id",
        0,
        i64::MAX,
    );
    assert!(gap.len() >= 600);
    assert!(
        gap.iter().all(|id| ids.binary_search(id).is_ok()),
        "every event stored while tail was away was printed"
    );
}

/// D1: infinite readings, stored through a real device link, read back by every CLI command
/// that prints values, as `Infinity` / `-Infinity` (and passed on as those strings in JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_readings_print_as_infinity_in_every_format() {
    let dir = TempDir::new("cli-inf");
    let agent = start_agent(&dir.path().join("ferry.db"), "127.0.0.1:0", "").await;
    let api = format!("http://{}", agent.api_addr.unwrap());
    let mut link = crate::common::DeviceLink::connect(
        agent.tcp_addr.unwrap(),
        "cli-inf",
        7,
        &[("up", "u"), ("down", "u")],
    )
    .await;
    // up: 1.5, +Inf, 2.5; down: -Inf, -0.5, -Inf (interleaved: up, down, up, down, ...).
    let values = [
        (0, 1.5),
        (1, f32::NEG_INFINITY),
        (0, f32::INFINITY),
        (1, -0.5),
        (0, 2.5),
        (1, f32::NEG_INFINITY),
    ];
    link.send(0, &values).await;
    link.wait_acked(6, Duration::from_secs(15)).await;

    let csv = ferry_ok(&[
        "query", "events", "--api", &api, "--device", "cli-inf", "--format", "csv",
    ])
    .await;
    let rows = csv_rows(&csv, "id,device,boot_id,seq,sensor,value");
    let got: Vec<&str> = rows.iter().map(|r| r[5].as_str()).collect();
    assert_eq!(
        got,
        ["1.5", "-Infinity", "Infinity", "-0.5", "2.5", "-Infinity"],
        "{csv}"
    );
    let jl = ferry_ok(&[
        "query", "events", "--api", &api, "--device", "cli-inf", "--format", "json",
    ])
    .await;
    let values: Vec<Value> = jl
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].clone())
        .collect();
    assert_eq!(values[1], "-Infinity");
    assert_eq!(values[2], "Infinity");
    let table = ferry_ok(&["query", "events", "--api", &api, "--device", "cli-inf"]).await;
    assert!(
        table.contains(" Infinity  u") && table.contains(" -Infinity  u"),
        "{table}"
    );

    let latest = ferry_ok(&["latest", "cli-inf", "--api", &api, "--format", "csv"]).await;
    let rows = csv_rows(&latest, "device,sensor,value");
    let by_sensor: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[1].as_str(), r[2].as_str()))
        .collect();
    assert!(by_sensor.contains(&("up", "2.5")), "{latest}");
    assert!(by_sensor.contains(&("down", "-Infinity")), "{latest}");
    let table = ferry_ok(&["latest", "cli-inf", "--api", &api]).await;
    assert!(table.contains("-Infinity"), "{table}");

    let until = (ferry_agent::utc_now_ms() + 3_600_000).to_string();
    for (sensor, agg, want) in [("up", "max", "Infinity"), ("down", "min", "-Infinity")] {
        let series = ferry_ok(&[
            "query", "series", "--api", &api, "--device", "cli-inf", "--sensor", sensor, "--since",
            "-1d", "--until", &until, "--bucket", "1h", "--agg", agg, "--format", "csv",
        ])
        .await;
        let rows = csv_rows(&series, "device,sensor,agg,unit,ts,ts_ms,value,count");
        assert!(rows.iter().any(|r| r[6] == want), "{series}");
    }

    let tail = ferry_ok(&[
        "tail", "--api", &api, "--after", "0", "--count", "6", "--device", "cli-inf", "--format",
        "csv",
    ])
    .await;
    let rows = csv_rows(&tail, "id,device,boot_id,seq,sensor,value");
    assert_eq!(rows[2][5], "Infinity", "{tail}");
    assert_eq!(rows[5][5], "-Infinity", "{tail}");
    agent.stop().await.unwrap();
}

//! The soak (not in CI; `tests/soak.sh`, 30 minutes by default): everything that goes wrong on a
//! gateway, at once, for a long time, then the exactly-once count.
//!
//! Real processes: `ferry` (its store on a 48 MiB tmpfs of its own), mosquitto, `ferry-bridge`,
//! PostgreSQL; simulated devices (`ferry-sim`'s library) with line noise both ways, link drops and
//! reboots, and the independent Python device. Meanwhile:
//! - the broker is restarted every 45-120 s;
//! - the disk fills every 60-150 s: a ballast file takes all the tmpfs's free space for 5-15 s;
//! - the local API serves a client that asks for events, latest values, series and status, about
//!   20 requests per second.
//!
//! At the end the devices stop, drain their acks, and PostgreSQL must hold every sample a device
//! saw acked, exactly once. Printed: samples acked, stored by the agent, forwarded, rows in
//! PostgreSQL, lost (acked but not in PostgreSQL), duplicated (rows beyond one per
//! `(device, boot, seq)`), API answers by status; exit status 1 when anything was lost or
//! duplicated, or the API answered anything but 200 (its client asks only valid questions).
//!
//! `--minutes M` sets the length (e.g. `--minutes 1` for a try); `--seed S` the randomness.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_sim::SimConfig;
use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, http_get, parse_metric, BridgeProcess};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::peer::PythonPeer;
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::tmpfs::Tmpfs;
use ferry_tests::{free_port, try_poll_until};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "gw-soak";
const TMPFS_MIB: u64 = 48;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
        })
        .unwrap_or(default)
}

fn say(start: Instant, what: impl std::fmt::Display) {
    let s = start.elapsed().as_secs();
    println!("[{:02}:{:02}] {what}", s / 60, s % 60);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes = arg("--minutes", 30);
    let seed = arg("--seed", 1);
    let start = Instant::now();
    let run_for = Duration::from_secs(minutes * 60);

    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin().expect("build ferry-bridge");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-soak", &pg.conn_str(), 50)
        .await
        .expect("start ferry-bridge");

    let dir = tempfile::Builder::new()
        .prefix("ferry-soak")
        .tempdir()
        .unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let _tmpfs = Tmpfs::mount(&disk, TMPFS_MIB);
    let (tcp, api_port) = (free_port(), free_port());
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[gateway]\nid = \"{GATEWAY}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [store]\npath = {:?}\ndurability = \"full\"\nkeep_forwarded_for = \"30s\"\n\
             [devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"100ms\"\nbackoff_max = \"2s\"\n",
            disk.join("ferry.db").display().to_string(),
            broker.port()
        ),
        Some(tcp),
    );
    agent.start().await;
    let addr = agent.tcp().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], api_port));
    say(
        start,
        format!("running for {minutes} min; store on a {TMPFS_MIB} MiB tmpfs"),
    );

    // 12 devices × 4 sensors at 20 Hz (960 samples/s) with noise, link drops and reboots.
    let sim = tokio::spawn(ferry_sim::run(
        SimConfig {
            duration: Some(run_for),
            drain_timeout: Duration::from_secs(120),
            noise: 0.0002,
            noise_downlink: 0.0002,
            disconnect_every: Some(Duration::from_secs(40)),
            reboot_every: Some(Duration::from_secs(150)),
            seed,
            ..SimConfig::tcp(addr, 12, 4, 50)
        },
        CancellationToken::new(),
    ));
    let peer = PythonPeer::spawn(
        addr,
        "peer-py",
        4,
        20,
        run_for,
        Duration::from_secs(120),
        dir.path(),
    );

    let stop_api = Arc::new(AtomicBool::new(false));
    let api_answers = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let api_load = tokio::spawn(api_client(api, stop_api.clone(), api_answers.clone()));

    // The chaos: broker restarts and disk-full episodes at random times, progress every minute.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut next_broker = Instant::now() + Duration::from_secs(rng.gen_range(45..120));
    let mut next_full = Instant::now() + Duration::from_secs(rng.gen_range(60..150));
    let mut next_report = Instant::now() + Duration::from_secs(60);
    let (mut broker_restarts, mut full_episodes) = (0, 0);
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Instant::now() >= next_broker {
            broker.stop();
            let down = Duration::from_millis(rng.gen_range(500..4000));
            tokio::time::sleep(down).await;
            broker.start_again();
            broker_restarts += 1;
            say(start, format!("broker restarted after {down:?} down"));
            next_broker = Instant::now() + Duration::from_secs(rng.gen_range(45..120));
        }
        if Instant::now() >= next_full {
            let hold = Duration::from_secs(rng.gen_range(5..15));
            let filled = Tmpfs::fill(&disk.join("ballast"));
            tokio::time::sleep(hold).await;
            let full = metric(api, "ferry_disk_full").await;
            std::fs::remove_file(disk.join("ballast")).unwrap();
            full_episodes += 1;
            say(
                start,
                format!(
                    "disk full for {hold:?} ({} MiB of ballast; the agent's ferry_disk_full was {full:?})",
                    filled >> 20
                ),
            );
            next_full = Instant::now() + Duration::from_secs(rng.gen_range(60..150));
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            say(
                start,
                format!(
                    "committed {:?}, forwarded {:?}, API answers {:?}",
                    metric(api, "ferry_samples_committed_total").await,
                    metric(api, "ferry_uplink_events_forwarded_total").await,
                    api_answers.lock().unwrap()
                ),
            );
        }
    }

    say(start, "generation over; the devices drain their acks");
    let mut report = sim.await.unwrap();
    report.devices.push(peer.finish().await);
    stop_api.store(true, Relaxed);
    api_load.await.unwrap();
    let acked: u64 = report
        .devices
        .iter()
        .flat_map(|d| &d.boots)
        .map(|b| u64::from(b.acked_next))
        .sum();
    let committed = metric(api, "ferry_samples_committed_total").await;
    let forwarded = metric(api, "ferry_uplink_events_forwarded_total").await;

    let client = pg.client().await;
    let in_pg = async || -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM ferry_events WHERE gateway = $1",
                &[&GATEWAY],
            )
            .await
            .unwrap()
            .get(0)
    };
    let caught_up = try_poll_until(
        Duration::from_secs(180),
        "PostgreSQL to hold every acked sample",
        async || {
            let n = in_pg().await;
            (n as u64 >= acked).then_some(()).ok_or(format!("{n} rows"))
        },
    )
    .await;
    say(start, format!("PostgreSQL caught up: {caught_up:?}"));

    // Per (device, boot_id): the rows, distinct seqs, and the acked seqs missing.
    let rows = client
        .query(
            "SELECT device, boot_id, count(*), count(DISTINCT seq), \
             array_agg(seq ORDER BY seq) FROM ferry_events WHERE gateway = $1 GROUP BY 1, 2",
            &[&GATEWAY],
        )
        .await
        .unwrap();
    let mut seqs: HashMap<(String, u32), Vec<i64>> = HashMap::new();
    let mut duplicated = 0i64;
    for r in &rows {
        let (d, boot_id, n, distinct): (String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        duplicated += n - distinct;
        seqs.insert((d, boot_id as u32), r.get(4));
    }
    let mut lost = 0u64;
    for d in &report.devices {
        for b in &d.boots {
            let have = seqs
                .get(&(d.device_id.clone(), b.boot_id))
                .map(|s| s.iter().filter(|&&q| q < i64::from(b.acked_next)).count() as u64)
                .unwrap_or(0);
            let missing = u64::from(b.acked_next) - have;
            if missing > 0 {
                println!(
                    "LOST: {} boot {:08x}: {missing} of {} acked samples not in PostgreSQL",
                    d.device_id, b.boot_id, b.acked_next
                );
            }
            lost += missing;
        }
    }
    let rows_total = in_pg().await;
    let t = &report.totals;
    let boots: Vec<_> = report.devices.iter().flat_map(|d| &d.boots).collect();
    let generated: u64 = boots.iter().map(|b| b.generated).sum();
    let answers = api_answers.lock().unwrap().clone();
    // The client asks only valid questions: every answer must be a 200.
    let bad_answers: u64 = answers
        .iter()
        .filter(|(s, _)| s.as_str() != "200")
        .map(|(_, n)| n)
        .sum();
    agent.terminate().await;
    let _ = bridge.terminate().await;

    println!("\nsoak of {minutes} min (seed {seed}):");
    println!(
        "  devices, boots            {}, {}",
        report.devices.len(),
        boots.len()
    );
    println!("  link drops (devices)      {}", t.disconnects);
    println!("  bytes corrupted           {}", t.bytes_corrupted);
    println!("  broker restarts           {broker_restarts}");
    println!("  disk-full episodes        {full_episodes}");
    println!("  API answers               {answers:?}");
    println!("  samples generated         {generated}");
    println!(
        "  lost on device reboots    {} (never acked)",
        t.lost_on_reboot
    );
    println!("  samples acked             {acked}");
    println!("  stored by the agent       {committed:?}");
    println!("  forwarded (broker-acked)  {forwarded:?}");
    println!("  rows in PostgreSQL        {rows_total}");
    println!("  lost                      {lost}");
    println!("  duplicated in PostgreSQL  {duplicated}");
    println!(
        "{}",
        serde_json::json!({
            "minutes": minutes, "seed": seed, "acked": acked, "stored": committed,
            "forwarded": forwarded, "postgres_rows": rows_total, "lost": lost,
            "duplicated": duplicated, "broker_restarts": broker_restarts,
            "disk_full_episodes": full_episodes, "link_drops": t.disconnects,
            "device_boots": boots.len(), "generated": generated, "api_answers": answers,
        })
    );
    let ok = lost == 0 && duplicated == 0 && bad_answers == 0 && acked > 0;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    std::process::exit(if ok { 0 } else { 1 });
}

/// A client of the local API, about 20 requests a second until `stop`; counts answers by status.
async fn api_client(
    api: SocketAddr,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let paths = [
        "/api/v1/events?device=sim-0000&limit=1000",
        "/api/v1/events?since=-5m&limit=500",
        "/api/v1/latest",
        "/api/v1/devices",
        "/api/v1/series?device=sim-0001&sensor=temperature&since=-10m&bucket=10s",
        "/api/v1/status",
    ];
    let mut i = 0;
    while !stop.load(Relaxed) {
        let status = match http_get(api, paths[i % paths.len()]).await {
            Ok((status, _)) => status.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        *answers.lock().unwrap().entry(status).or_default() += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(api: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(api, "/metrics").await.ok()?;
    parse_metric(&body, series)
}

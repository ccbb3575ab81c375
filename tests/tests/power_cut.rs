//! Power cuts on the whole path: the real `ferry` on a `ferry-powercut` volume, forwarding to a
//! real mosquitto, `ferry-bridge` writing PostgreSQL; simulated devices and the independent
//! Python device stream while the power is cut: at random moments, in checkpoints, at WAL
//! restarts (see `ferry_powercut::Schedule`), and every fifth cut while retention deletes
//! forwarded rows (`keep_forwarded_for = "1s"`; retention runs 5 s after the writer starts, so
//! that cut waits for the agent's `ferry_events_pruned_forwarded_total` to move). The full-disk
//! cuts are the agent's test's (`agent/tests/power_cut.rs`): here retention keeps the files from
//! growing.
//!
//! After the last cut and a clean stop: PostgreSQL holds every sample a device saw acked, once;
//! the store passes `PRAGMA integrity_check`. The agent's own store is not the reference here
//! (retention deleted what was forwarded); the agent's test (`agent/tests/power_cut.rs`) checks
//! the store itself.
use std::collections::HashMap;
use std::time::Duration;

use ferry_powercut::{CutReport, Policy, PowerCut, Schedule};
use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, http_get, parse_metric, BridgeProcess};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::peer::PythonPeer;
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::{free_port, poll_until, try_poll_until};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs /dev/fuse and root, mosquitto and PostgreSQL"]
async fn power_cuts_lose_nothing_on_the_way_to_postgres() {
    let n: usize = std::env::var("FERRY_E2E_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin().expect("build ferry-bridge");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-pc", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");

    let dir = tempfile::Builder::new()
        .prefix("ferry-e2e-power-cut")
        .tempdir()
        .unwrap();
    let mut pc = PowerCut::mount(
        &dir.path().join("disk"),
        &dir.path().join("mnt"),
        Policy::Random(21),
    )
    .expect("mount the power-cut volume (needs /dev/fuse and root)");
    let db = pc.path().join("ferry.db");
    let (tcp, api_port) = (free_port(), free_port());
    // The config on the real disk (AgentProc writes it into `dir`), the store on the volume.
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[gateway]\nid = \"gw-cut\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [store]\npath = {:?}\ndurability = \"full\"\nkeep_forwarded_for = \"1s\"\n\
             [devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
            db.display().to_string(),
            broker.port()
        ),
        Some(tcp),
    );
    agent.start().await;
    let addr = agent.tcp().unwrap();

    // 5 devices × 3 sensors every 5 ms and the Python device (4 sensors every 10 ms).
    let generating = Duration::from_millis(1_500 * n as u64 + 2_000);
    let sim = tokio::spawn(ferry_sim::run(
        ferry_sim::SimConfig {
            duration: Some(generating),
            drain_timeout: Duration::from_secs(30),
            seed: 44,
            ..ferry_sim::SimConfig::tcp(addr, 5, 3, 5)
        },
        CancellationToken::new(),
    ));
    let peer = PythonPeer::beside_the_simulator(addr, generating, dir.path());
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], api_port));
    let mut schedule = Schedule::of(
        "ferry.db",
        21,
        &[
            "random",
            "checkpoint write",
            "checkpoint sync",
            "WAL restart",
        ],
    );
    let mut totals = CutReport::default();
    let (mut in_retention, mut retention_cuts) = (0, 0);
    for i in 0..n {
        let label = if i % 5 == 4 {
            // In a retention run: it starts 5 s after the writer does, deleting in chunks.
            retention_cuts += 1;
            let deleting = try_poll_until(
                Duration::from_secs(15),
                "retention to delete forwarded rows",
                async || pruned(api).await.filter(|&n| n > 0.0).ok_or("none yet"),
            )
            .await
            .is_ok();
            pc.freeze();
            in_retention += usize::from(deleting);
            format!("retention (deleting: {deleting})")
        } else {
            let (kind, settle, moment) = schedule.next_cut();
            tokio::time::sleep(settle).await;
            let reached =
                tokio::task::block_in_place(|| pc.freeze_at(&moment, Duration::from_secs(5)))
                    .expect("volume");
            schedule.record(kind, reached);
            format!("{moment:?} (reached: {reached})")
        };
        agent.kill().await;
        let r = tokio::task::block_in_place(|| pc.cut()).expect("cut");
        eprintln!("cut {i} at {label}: {r:?}");
        totals += &r;
        agent.start().await; // panics with the log if the agent exits instead of listening
    }
    let mut report = sim.await.unwrap();
    report.devices.push(peer.finish().await);
    let acked: u64 = report
        .devices
        .iter()
        .flat_map(|d| &d.boots)
        .map(|b| u64::from(b.acked_next))
        .sum();

    // PostgreSQL catches up with everything acked.
    let client = pg.client().await;
    let count = async || -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM ferry_events WHERE gateway = 'gw-cut'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    poll_until(
        Duration::from_secs(60),
        format!("{acked} acked samples in PostgreSQL"),
        async || {
            let n = count().await;
            (n as u64 >= acked).then_some(()).ok_or(format!("{n} rows"))
        },
    )
    .await;
    agent.terminate().await;
    pc.freeze();
    tokio::task::block_in_place(|| pc.cut()).unwrap();
    let disk_db = pc.disk().join("ferry.db");
    pc.unmount().unwrap();

    // Per device and boot: seqs 0..rows, each once, covering every acked seq.
    let rows = client
        .query(
            "SELECT device, boot, count(*), count(DISTINCT seq), min(seq), max(seq) FROM ferry_events \
             WHERE gateway = 'gw-cut' GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let mut in_pg: HashMap<(String, u32), i64> = HashMap::new();
    for r in &rows {
        let (d, boot, n, distinct, min, max): (String, i64, i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(n, distinct, "{d} boot {boot}: duplicate rows");
        assert_eq!((min, max), (0, n - 1), "{d} boot {boot}: gaps");
        in_pg.insert((d, boot as u32), n);
    }
    for d in &report.devices {
        for (i, b) in d.boots.iter().enumerate() {
            let have = in_pg
                .get(&(d.device_id.clone(), i as u32 + 1))
                .copied()
                .unwrap_or(0);
            assert!(
                have as u64 >= u64::from(b.acked_next),
                "{} boot {}: {} acked, {have} in PostgreSQL",
                d.device_id,
                i + 1,
                b.acked_next
            );
        }
    }
    let conn = rusqlite::Connection::open(&disk_db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let total = count().await;
    eprintln!(
        "{n} cuts {:?} and {in_retention} of {retention_cuts} in a retention run, {totals:?}; \
         {acked} samples acked, {total} rows in PostgreSQL, no duplicate; the store kept {kept}",
        schedule.tally()
    );
    schedule.assert_each_reached();
    assert!(acked > 10_000, "the devices streamed ({acked} acked)");
    assert!(
        retention_cuts == 0 || in_retention > 0,
        "no cut came during retention"
    );
    assert!(totals.sectors_lost > 0, "the cuts lost unsynced writes");
    let _ = bridge.terminate().await;
}

/// Forwarded rows the running agent's retention deleted (`None` while it does not answer).
async fn pruned(api: std::net::SocketAddr) -> Option<f64> {
    let (_, metrics) = http_get(api, "/metrics").await.ok()?;
    parse_metric(&metrics, "ferry_events_pruned_forwarded_total")
}

//! The whole path with real processes: simulated devices → `ferry` (the agent binary) → mosquitto
//! → `ferry-bridge` → PostgreSQL, while the broker is restarted and the agent is SIGKILLed
//! mid-forward. Duplicates on the wire are allowed; the table must hold every sample the devices
//! saw acked, exactly once, with no gaps.
use std::collections::HashMap;
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, BridgeProcess};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::{free_port, try_poll_until};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn agent_sigkills_and_broker_restarts_leave_postgres_exactly_once() {
    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin().expect("build ferry-bridge");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-e2e", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");

    let dir = std::env::temp_dir().join(format!("ferry-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tcp = free_port();
    let mut agent = AgentProc::new(
        &dir,
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"gw-e2e\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"127.0.0.1:{}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\nmax_batch_events = 300\n",
            dir.join("ferry.db").display().to_string(),
            broker.port()
        ),
        Some(tcp),
    );
    agent.start().await;

    // 10 devices x 2 channels at 100 Hz for 10 s; the devices reconnect after each agent kill.
    let sim = ferry_sim::SimConfig {
        devices: 10,
        sensors: 2,
        interval_ms: 10,
        duration: Some(Duration::from_secs(10)),
        drain_timeout: Duration::from_secs(30),
        transport: ferry_sim::Transport::Tcp(format!("127.0.0.1:{tcp}").parse().unwrap()),
        ..ferry_sim::SimConfig::default()
    };
    let devices = tokio::spawn(ferry_sim::run(sim, CancellationToken::new()));
    let (mut kills, mut restarts) = (0, 0);
    let mode = std::env::var("FERRY_PIPELINE_MODE").unwrap_or_default();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(700 + 211 * (round % 3))).await;
        if mode == "none" {
            continue;
        }
        if (round % 2 == 0 && mode != "broker") || mode == "kills" {
            agent.kill().await;
            kills += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
            agent.start().await;
        } else {
            broker.stop();
            tokio::time::sleep(Duration::from_millis(300)).await;
            broker.start_again();
            restarts += 1;
        }
    }
    let report = devices.await.unwrap();
    eprintln!("mode {mode:?}: {kills} kills");
    // Wait until PostgreSQL holds everything the store holds.
    let (db, conn) = tokio_postgres::connect(&pg.conn_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // What the agent stored: its database after an orderly stop (a running agent holds its
    // newest samples in the sample log and the tail until its next flush). Then it runs again,
    // to forward what it had not.
    agent.terminate().await;
    let store = ferry_agent::store::open_reader(&dir.join("ferry.db")).unwrap();
    let stored: i64 = store
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    agent.start().await;
    let count_pg = async || -> i64 {
        db.query_one(
            "SELECT count(*) FROM ferry_events WHERE gateway = 'gw-e2e'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    // At the deadline, the report below says what is missing.
    let _ = try_poll_until(
        Duration::from_secs(60),
        format!("{stored} rows in PostgreSQL"),
        async || count_pg().await >= stored,
    )
    .await;
    let in_pg = count_pg().await;
    agent.terminate().await;
    if in_pg != stored {
        let dl = db
            .query(
                "SELECT reason, count(*) FROM ferry_dead_letters GROUP BY 1",
                &[],
            )
            .await
            .unwrap();
        for r in &dl {
            eprintln!(
                "dead letters: {} x {}",
                r.get::<_, i64>(1),
                r.get::<_, String>(0)
            );
        }
        let gaps = db
            .query(
                "SELECT s FROM generate_series(0, (SELECT max(seq) FROM ferry_events WHERE device = 'sim-0000')) s \
                 WHERE NOT EXISTS (SELECT 1 FROM ferry_events WHERE device = 'sim-0000' AND boot = 1 AND seq = s)",
                &[],
            )
            .await
            .unwrap();
        let missing: Vec<i64> = gaps.iter().map(|r| r.get::<_, i64>(0)).collect();
        eprintln!(
            "sim-0000 missing {} seqs: {:?}",
            missing.len(),
            &missing[..missing.len().min(40)]
        );
        eprintln!(
            "bridge log tail:\n{}",
            bridge
                .logs()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Per device and boot: seqs 0..n, each once (the key makes repeats impossible; gaps are not).
    let rows = db
        .query(
            "SELECT device, boot, count(*), count(DISTINCT seq), min(seq), max(seq) FROM ferry_events \
             WHERE gateway = 'gw-e2e' GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap();
    let mut pg_next: HashMap<(String, u32), i64> = HashMap::new();
    for r in &rows {
        let (d, boot, n, distinct, min, max): (String, i64, i64, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(n, distinct, "{d} boot {boot}: duplicate rows");
        assert_eq!(
            (min, max),
            (0, n - 1),
            "{d} boot {boot}: gaps ({n} rows, seq {min}..={max})"
        );
        pg_next.insert((d, boot as u32), n);
    }
    // Every sample a device saw acked is there.
    let mut acked_total = 0u64;
    for d in &report.devices {
        for (i, b) in d.boots.iter().enumerate() {
            let acked = u64::from(b.acked_next);
            acked_total += acked;
            let have = pg_next
                .get(&(d.device_id.clone(), i as u32 + 1))
                .copied()
                .unwrap_or(0);
            assert!(
                have as u64 >= acked,
                "{} boot {}: devices saw {acked} acked, PostgreSQL has {have}",
                d.device_id,
                i + 1
            );
        }
    }
    eprintln!(
        "pipeline: {acked_total} samples acked to devices, {stored} stored by the agent, {in_pg} rows in PostgreSQL; \
         {kills} agent SIGKILLs, {restarts} broker restarts"
    );
    assert_eq!(
        in_pg, stored,
        "PostgreSQL holds exactly what the agent stored"
    );
    assert!(
        acked_total > 10_000,
        "the devices streamed ({acked_total} acked)"
    );
    let _ = bridge.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
}

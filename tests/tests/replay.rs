//! Replaying a stored range for a cloud that lost data: simulated devices → `ferry` → mosquitto →
//! `ferry-bridge` → PostgreSQL; rows of a time range are deleted in PostgreSQL, `ferry replay`
//! (the real CLI process against the agent's local API) sends the range again, and the table
//! ends up exactly as it was: every row back, once, with the same values.
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, BridgeProcess};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::{free_port, poll_until, workspace_bin};
use tokio_util::sync::CancellationToken;

/// One row of `ferry_events` as compared: device, boot, seq, boot id, sensor, ts (Unix ms),
/// value bits.
type Row = (String, i64, i64, i64, String, i64, u64);

async fn rows(db: &tokio_postgres::Client) -> Vec<Row> {
    db.query(
        "SELECT device, boot, seq, boot_id, sensor, (extract(epoch FROM ts) * 1000)::bigint, value \
         FROM ferry_events WHERE gateway = 'gw-replay' ORDER BY device, boot, seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get::<_, f64>(6).to_bits(),
        )
    })
    .collect()
}

/// Runs `ferry replay ARGS --api URL`; its exit status and stdout.
async fn ferry_replay(api: &str, args: &[String]) -> (std::process::ExitStatus, String, String) {
    let bin = workspace_bin("ferry-agent", "ferry").expect("build ferry");
    let out = tokio::process::Command::new(bin)
        .arg("replay")
        .args(args)
        .args(["--api", api])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .await
        .expect("run ferry replay");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn a_replayed_range_restores_deleted_rows_in_postgres_exactly_once() {
    let mut broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    ferry_bridge_bin().expect("build ferry-bridge");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-replay", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");
    let dir = tempfile::tempdir().unwrap();
    let tcp = free_port();
    let mut agent = AgentProc::new(
        dir.path(),
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"gw-replay\"\n[store]\npath = {:?}\n\
             [devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
             [uplink]\nbroker = \"{}\"\nmax_batch_events = 100\nread_limit = 7\nbackoff_max = \"500ms\"\n",
            dir.path().join("ferry.db").display().to_string(),
            broker.addr()
        ),
        Some(tcp),
    );
    agent.start().await;
    let api = format!(
        "http://{}",
        agent
            .logged_addr("Serving the local API", Duration::from_secs(10))
            .await
    );

    // 4 devices x 2 sensors at 100 Hz for 3 s.
    let report = ferry_sim::run(
        ferry_sim::SimConfig::tcp(format!("127.0.0.1:{tcp}").parse().unwrap(), 4, 2, 10)
            .for_secs(3),
        CancellationToken::new(),
    )
    .await;
    let acked = report.totals.acked as usize;
    assert!(acked > 1000, "{report:?}");
    let (db, conn) = tokio_postgres::connect(&pg.conn_str(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    poll_until(
        Duration::from_secs(60),
        format!("{acked} rows in PostgreSQL"),
        async || {
            let n = rows(&db).await.len();
            (n >= acked).then_some(()).ok_or(format!("{n} rows"))
        },
    )
    .await;
    let before = rows(&db).await;
    assert_eq!(before.len(), acked, "every acked sample, once");

    // The cloud loses the middle third of the range (every device), and the first half of one
    // device's data.
    let (first, last) = (
        before.iter().map(|r| r.5).min().unwrap(),
        before.iter().map(|r| r.5).max().unwrap(),
    );
    let (lost_from, lost_until) = (first + (last - first) / 3, first + 2 * (last - first) / 3);
    let deleted = db
        .execute(
            "DELETE FROM ferry_events WHERE gateway = 'gw-replay' \
             AND ts >= to_timestamp($1::bigint / 1000.0) AND ts < to_timestamp($2::bigint / 1000.0)",
            &[&lost_from, &lost_until],
        )
        .await
        .unwrap() as usize;
    let in_range = before
        .iter()
        .filter(|r| r.5 >= lost_from && r.5 < lost_until)
        .count();
    assert_eq!(deleted, in_range, "the deleted rows are the range's");
    let half = first + (last - first) / 2;
    let deleted_one = db
        .execute(
            "DELETE FROM ferry_events WHERE gateway = 'gw-replay' AND device = 'sim-0002' \
             AND ts < to_timestamp($1::bigint / 1000.0)",
            &[&half],
        )
        .await
        .unwrap() as usize;
    assert!(
        deleted > 100 && deleted_one > 100,
        "{deleted}, {deleted_one}"
    );

    // One device: a wider range than was lost (what the cloud has is deduplicated).
    let (status, out, err) = ferry_replay(
        &api,
        &[
            "--since".into(),
            (first - 60_000).to_string(),
            "--until".into(),
            half.to_string(),
            "--device".into(),
            "sim-0002".into(),
        ],
    )
    .await;
    assert!(status.success(), "{status}: {out}\n{err}\n{}", agent.log());
    let one_total = before
        .iter()
        .filter(|r| r.0 == "sim-0002" && r.5 < half)
        .count();
    assert!(
        out.contains(": done — sim-0002 ")
            && out.contains(&format!(
                ": {one_total} of {one_total} events acked by the broker"
            )),
        "{out}"
    );

    // Every device, exactly the lost range.
    let (status, out, err) = ferry_replay(
        &api,
        &[
            "--since".into(),
            lost_from.to_string(),
            "--until".into(),
            lost_until.to_string(),
        ],
    )
    .await;
    assert!(status.success(), "{status}: {out}\n{err}\n{}", agent.log());
    assert!(
        out.contains(&format!(
            ": {in_range} of {in_range} events acked by the broker"
        )),
        "{out}"
    );

    poll_until(
        Duration::from_secs(30),
        format!("{} rows back in PostgreSQL", before.len()),
        async || {
            let n = rows(&db).await.len();
            (n >= before.len()).then_some(()).ok_or(format!("{n} rows"))
        },
    )
    .await;
    let after = rows(&db).await;
    assert_eq!(after.len(), before.len(), "exactly once");
    assert!(after == before, "the same rows, values and times");

    // The API: the replays are listed with their figures; a bad range names the field.
    let listed = ferry_replay(&api, &["--status".into(), "--format".into(), "json".into()]).await;
    let views: serde_json::Value = serde_json::from_str(&listed.1).expect(&listed.1);
    assert_eq!(views[0]["events_total"], in_range as u64, "{views}");
    assert_eq!(views[0]["events_acked"], in_range as u64, "{views}");
    assert_eq!(views[1]["device"], "sim-0002", "{views}");
    let (status, _, err) = ferry_replay(
        &api,
        &[
            "--since".into(),
            "-1h".into(),
            "--until".into(),
            "-2h".into(),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(2), "a client mistake: {err}");
    assert!(
        err.contains("until:") && err.contains("not after since"),
        "{err}"
    );
    let (status, _, err) = ferry_replay(
        &api,
        &[
            "--since".into(),
            "-1h".into(),
            "--device".into(),
            "nope".into(),
        ],
    )
    .await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("no device \"nope\""), "{err}");

    // With the broker gone a replay waits; it can be cancelled, and then another may start.
    broker.stop();
    let all = ["--since".to_owned(), first.to_string()];
    let (status, out, err) = ferry_replay(&api, &[&all[..], &["--detach".into()]].concat()).await;
    assert!(status.success(), "{out}{err}");
    let id: String = out
        .strip_prefix("replay ")
        .and_then(|r| r.split(':').next())
        .expect(&out)
        .to_owned();
    let (status, _, err) = ferry_replay(&api, &all).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("replay {id} is running")), "{err}");
    let (status, out, err) = ferry_replay(&api, &["--cancel".into(), id.clone()]).await;
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(&format!("replay {id}: cancelled")), "{out}");
    let (status, out, err) = ferry_replay(&api, &[&all[..], &["--detach".into()]].concat()).await;
    assert!(status.success(), "another replay starts: {out}{err}");
    broker.start_again();
    poll_until(
        Duration::from_secs(30),
        "the last replay done",
        async || {
            let (_, out, _) = ferry_replay(&api, &["--status".into()]).await;
            out.lines()
                .next()
                .is_some_and(|l| l.contains(": done"))
                .then_some(())
                .ok_or(out)
        },
    )
    .await;
    assert!(rows(&db).await == before, "still exactly the rows before");

    agent.terminate().await;
    let _ = bridge.terminate().await;
}

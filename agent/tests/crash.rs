//! Crash safety: the real `ferry` process is SIGKILLed at random moments while simulated devices
//! stream, and restarted each time. Afterwards every sample a device saw acked is in the store
//! exactly once, in seq order per device boot; and what the writer keeps in memory between two
//! flushes of the tail (`latest`, the per-device and per-boot counters, the ten-second summaries)
//! is rebuilt by the restart, equal to what the rows say.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_sim::SimConfig;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_acked_stored_once_in_order, process_config, spawn_ferry, stop_cleanly, wait_listening,
    TempDir,
};
use crate::poll::poll_until;

const KILLS: usize = 22;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acked_sample() {
    let dir = TempDir::new("crash");
    let (config, db, addr) = process_config(dir.path(), "crash");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;

    // 10 devices × 3 sensors every 5 ms: 6,000 samples/s in total.
    let sim_cfg = SimConfig {
        duration: Some(Duration::from_secs(14)),
        drain_timeout: Duration::from_secs(20),
        seed: 42,
        ..SimConfig::tcp(addr, 10, 3, 5)
    };
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, CancellationToken::new()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..450))).await;
        agent.start_kill().unwrap(); // SIGKILL
        let status = agent.wait().await.unwrap();
        assert!(!status.success(), "the agent was killed, not stopped");
        agent = spawn_ferry(&config);
        wait_listening(addr, Duration::from_secs(10)).await;
    }
    let report = sim.await.unwrap();
    // Orderly stop of the last agent (SIGTERM) to read a checkpointed store; exit code 0.
    stop_cleanly(&mut agent).await;

    println!("{}", report.table());
    let t = &report.totals;
    assert!(
        t.generated > 50_000,
        "devices streamed during the kills: {t:?}"
    );
    assert_eq!(
        t.unacked_at_end, 0,
        "the last agent acked everything after the kills"
    );
    assert!(
        t.disconnects >= KILLS as u64,
        "devices saw the kills: {t:?}"
    );
    let checked = assert_acked_stored_once_in_order(&db, &report);
    assert_eq!(
        checked, t.acked,
        "every acked sample is stored (none dropped by rings here)"
    );
    assert_eq!(t.dropped, 0);
}

/// The slow cadence of this test: the tail reaches the database every 1.5 s.
const FLUSH_AFTER_MS: u64 = 1500;

/// `counters.log_applied`: the highest event id the database holds from the sample log (0 before
/// the first flush).
fn log_applied(db: &Path) -> i64 {
    let c = ferry_agent::store::open_reader(db).unwrap();
    c.query_row(
        "SELECT coalesce((SELECT value FROM counters WHERE name = 'log_applied'), 0)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_two_flushes_loses_no_read_model_state() {
    let dir = TempDir::new("crash-models");
    let (config, db, addr) = process_config(dir.path(), "crash-models");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "durability = \"full\"\n",
        &format!("durability = \"full\"\ntail_flush_after = \"{FLUSH_AFTER_MS}ms\"\n"),
    );
    std::fs::write(&config, text).unwrap();
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;

    // 6 devices x 3 sensors every 10 ms (summarised sensors): 1,800 samples/s.
    let sim_cfg = SimConfig {
        duration: Some(Duration::from_secs(12)),
        drain_timeout: Duration::from_secs(20),
        seed: 11,
        ..SimConfig::tcp(addr, 6, 3, 10)
    };
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, CancellationToken::new()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
    let mut kills = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(9) {
        // A flush just happened (its mark moved): the next one is at least FLUSH_AFTER_MS away,
        // so a kill within the next second lands between two flushes, with acked samples only in
        // the log and the writer's memory.
        let before = log_applied(&db);
        poll_until(Duration::from_secs(10), "a flush of the tail", async || {
            log_applied(&db) > before
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..1000))).await;
        agent.start_kill().unwrap(); // SIGKILL
        assert!(!agent.wait().await.unwrap().success());
        kills += 1;
        agent = spawn_ferry(&config);
        wait_listening(addr, Duration::from_secs(10)).await;
    }
    let report = sim.await.unwrap();
    // The last kill's samples are replayed from the log into the last agent's memory, and written
    // by its flush at the orderly stop.
    stop_cleanly(&mut agent).await;
    println!("{}", report.table());
    assert!(kills >= 3, "{kills} kills");
    assert_eq!(report.totals.unacked_at_end, 0);
    let checked = assert_acked_stored_once_in_order(&db, &report);
    assert_eq!(checked, report.totals.acked);
    let n = assert_read_models_match_rows(&db);
    println!("{kills} kills; {checked} acked samples stored once; read models of {n:?} checked");
}

/// Compares every read model with its value recomputed from the `events` rows; returns how many
/// (latest rows, devices, boots, summary rows) were compared.
fn assert_read_models_match_rows(db: &Path) -> (usize, usize, usize, usize) {
    let c = ferry_agent::store::open_reader(db).unwrap();
    let all = |sql: &str| -> Vec<Vec<rusqlite::types::Value>> {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    use rusqlite::types::Value;
    let int = |v: &Value| match v {
        Value::Integer(i) => *i,
        v => panic!("not an integer: {v:?}"),
    };
    let real = |v: &Value| match v {
        Value::Real(f) => Some(*f),
        Value::Integer(i) => Some(*i as f64),
        Value::Null => None,
        v => panic!("not a reading: {v:?}"),
    };

    // `latest`: per (device, sensor) the newest reading; among equal timestamps the last stored.
    let mut latest: BTreeMap<(i64, i64), (i64, Option<f64>, i64)> = BTreeMap::new();
    for r in all("SELECT device, sensor, ts_ms, value, id FROM events ORDER BY id") {
        let e = latest
            .entry((int(&r[0]), int(&r[1])))
            .or_insert((i64::MIN, None, 0));
        if int(&r[2]) >= e.0 {
            *e = (int(&r[2]), real(&r[3]), int(&r[4]));
        }
    }
    let stored: BTreeMap<_, _> = all("SELECT device, sensor, ts_ms, value, event_id FROM latest")
        .iter()
        .map(|r| {
            (
                (int(&r[0]), int(&r[1])),
                (int(&r[2]), real(&r[3]), int(&r[4])),
            )
        })
        .collect();
    assert_eq!(stored, latest, "latest = the newest row of each sensor");

    // Per-device counts.
    let counts: BTreeMap<i64, i64> =
        all("SELECT id, (SELECT count(*) FROM events e WHERE e.device = d.id) FROM devices d")
            .iter()
            .map(|r| (int(&r[0]), int(&r[1])))
            .collect();
    let totals: BTreeMap<i64, i64> = all("SELECT id, events_total FROM devices")
        .iter()
        .map(|r| (int(&r[0]), int(&r[1])))
        .collect();
    assert_eq!(totals, counts, "devices.events_total = its rows");

    // Per boot: every seq below next_seq is stored or counted as dropped by the device.
    let boots = all("SELECT b.device, b.boot_no, b.next_seq, b.gap_dropped,
                (SELECT count(*) FROM events e WHERE e.device = b.device AND e.boot_no = b.boot_no)
           FROM boots b");
    for b in &boots {
        assert_eq!(
            int(&b[2]),
            int(&b[4]) + int(&b[3]),
            "boot {:?}: next_seq = stored + gap_dropped",
            (&b[0], &b[1])
        );
    }

    // Summaries: for slots from `rollup_from.slot`, exactly the rows below W.
    let mut want: BTreeMap<(i64, i64, i64), Vec<Value>> = BTreeMap::new();
    for f in all("SELECT device, sensor, slot, complete_ts FROM rollup_from") {
        let (d, s, slot, w) = (int(&f[0]), int(&f[1]), int(&f[2]), int(&f[3]));
        let sql = format!(
            "SELECT ts_ms / 10000 AS slot, count(*), count(*) - count(value), total(value),
                    min(value), max(value), min(ts_ms), max(ts_ms)
               FROM events WHERE device = {d} AND sensor = {s} AND ts_ms >= {} AND ts_ms < {w}
              GROUP BY slot",
            slot * 10_000
        );
        for r in all(&sql) {
            let k = (d, s, int(&r[0]));
            let last: Value = c
                .query_row(
                    &format!(
                        "SELECT value FROM events WHERE device = {d} AND sensor = {s} AND ts_ms = {}
                          ORDER BY id LIMIT 1",
                        int(&r[7])
                    ),
                    [],
                    |x| x.get(0),
                )
                .unwrap();
            let mut v = r[1..].to_vec();
            v.push(last);
            want.insert(k, v);
        }
    }
    let got: BTreeMap<(i64, i64, i64), Vec<Value>> = all(
        "SELECT s.device, s.sensor, s.slot, s.n, s.nans, s.total, s.vmin, s.vmax, s.first_ts,
                s.last_ts, s.last_value
           FROM rollup_10s s JOIN rollup_from f ON f.device = s.device AND f.sensor = s.sensor
          WHERE s.slot >= f.slot",
    )
    .into_iter()
    .map(|r| ((int(&r[0]), int(&r[1]), int(&r[2])), r[3..].to_vec()))
    .collect();
    assert!(!want.is_empty(), "the sensors are summarised");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "a summary row for each slot with rows below W, no other"
    );
    for (k, w) in &want {
        let g = &got[k];
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
            (a, b) => a.is_none() && b.is_none(),
        };
        // n, nans exact; the sum up to summation order; min, max, first/last ts, last exact.
        assert_eq!(
            (int(&g[0]), int(&g[1])),
            (int(&w[0]), int(&w[1])),
            "{k:?} n, nans"
        );
        assert!(
            close(real(&g[2]), real(&w[2])),
            "{k:?} total {g:?} vs {w:?}"
        );
        for i in [3, 4, 7] {
            assert_eq!(real(&g[i]), real(&w[i]), "{k:?} column {i}: {g:?} vs {w:?}");
        }
        assert_eq!(
            (int(&g[5]), int(&g[6])),
            (int(&w[5]), int(&w[6])),
            "{k:?} first/last ts"
        );
    }

    // The log's mark: everything is in the database after the orderly stop.
    let max_id: i64 = c
        .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(log_applied(db), max_id, "counters.log_applied");
    (latest.len(), totals.len(), boots.len(), want.len())
}

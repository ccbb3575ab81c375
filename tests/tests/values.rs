//! Exactly the value, not only exactly once: 10,000 random f32 readings (seeded random bit
//! patterns) plus the special values go from a device link into the real `ferry` agent, through
//! mosquitto and the real `ferry-bridge`, into PostgreSQL, once with the uplink's JSON encoding
//! and once with the binary one. Every value must land with the bits of the f32 widened to f64,
//! except the two canonicalisations of the gateway's store (decision D1 of issue 13): every NaN
//! becomes the quiet NaN 0x7FF8000000000000, and -0.0 becomes +0.0.
//!
//! The seed is printed; `FERRY_VALUES_SEED=<n>` repeats a run.
use std::time::Duration;

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::BridgeProcess;
use ferry_tests::link::DeviceLink;
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::{free_port, try_poll_until};

const RANDOM_VALUES: usize = 10_000;
const T: Duration = Duration::from_secs(120);

/// splitmix64: reproducible random bits without a dependency.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The specials first (each named), then `RANDOM_VALUES` random bit patterns.
fn readings(seed: u64) -> Vec<f32> {
    let mut v = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001), // signalling NaN
        f32::from_bits(0xffff_ffff), // NaN with every payload bit set
        0.0,
        -0.0,
        f32::from_bits(1),           // smallest subnormal
        f32::from_bits(0x807f_ffff), // largest negative subnormal
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        f32::EPSILON,
        0.1,
        15.066_667, // 15.066666603088379 as f64: once stored one ulp off
        21.5,
    ];
    let mut state = seed;
    v.extend((0..RANDOM_VALUES).map(|_| f32::from_bits(next_random(&mut state) as u32)));
    v
}

/// The f64 bits PostgreSQL must hold for a device's `v` (D1).
fn expected_bits(v: f32) -> u64 {
    if v.is_nan() {
        0x7ff8_0000_0000_0000
    } else if v == 0.0 {
        0 // -0.0 -> +0.0
    } else {
        f64::from(v).to_bits()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn every_f32_lands_in_postgres_with_its_bits_in_both_encodings() {
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    let seed = std::env::var("FERRY_VALUES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("values: seed {seed} (FERRY_VALUES_SEED={seed} repeats this run)");
    let values = readings(seed);
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-values", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");
    let db = pg.client().await;

    let mut failures = Vec::new();
    for encoding in ["json", "binary"] {
        let gateway = format!("gw-values-{encoding}");
        let dir = tempfile::tempdir().unwrap();
        let tcp = free_port();
        let mut agent = AgentProc::new(
            dir.path(),
            &format!(
                "[api]\nlisten = \"\"\n[gateway]\nid = \"{gateway}\"\n[store]\npath = {:?}\n\
                 [devices]\ntcp_listen = \"127.0.0.1:{tcp}\"\n\
                 [uplink]\nbroker = \"127.0.0.1:{}\"\nencoding = \"{encoding}\"\n\
                 backoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
                dir.path().join("ferry.db").display().to_string(),
                broker.port()
            ),
            Some(tcp),
        );
        agent.start().await;
        let io = tokio::net::TcpStream::connect(agent.tcp().unwrap())
            .await
            .unwrap();
        let mut device = DeviceLink::new(io);
        let sent = device
            .send_boot("dev-values", 0x0BAD_CAFE, "v", &values, 32 * 32, T)
            .await;
        if let Err(e) = sent {
            panic!(
                "{encoding}: the agent did not ack every sample: {e:#}\nagent log:\n{}",
                agent.log()
            );
        }
        // Every sample is durable at the gateway: wait until PostgreSQL holds all of them.
        let n = values.len() as i64;
        let stored = try_poll_until(
            T,
            format!("{encoding}: {n} rows in PostgreSQL"),
            async || {
                let have: i64 = db
                    .query_one(
                        "SELECT count(*) FROM ferry_events WHERE gateway = $1",
                        &[&gateway],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (have == n).then_some(()).ok_or(format!("{have} rows"))
            },
        )
        .await;
        if let Err(e) = stored {
            let dead = db
                .query("SELECT reason FROM ferry_dead_letters LIMIT 5", &[])
                .await
                .unwrap();
            let dead: Vec<String> = dead.iter().map(|r| r.get(0)).collect();
            panic!(
                "{e}; dead letters {dead:?}\nagent log:\n{}\nbridge log:\n{}",
                agent.log(),
                bridge.logs()
            );
        }
        agent.terminate().await;
        let rows = db
            .query(
                "SELECT seq, value FROM ferry_events WHERE gateway = $1 ORDER BY seq",
                &[&gateway],
            )
            .await
            .unwrap();
        let mut wrong = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let (seq, got): (i64, f64) = (r.get(0), r.get(1));
            assert_eq!(seq, i as i64, "{encoding}: seqs 0..{n} once each");
            let sent = values[i];
            if got.to_bits() != expected_bits(sent) {
                wrong.push(format!(
                    "seq {seq}: sent f32 {:#010x} ({sent:?}), want f64 {:#018x}, PostgreSQL has {:#018x} ({got:?})",
                    sent.to_bits(),
                    expected_bits(sent),
                    got.to_bits()
                ));
            }
        }
        eprintln!(
            "values: {encoding}: {} of {n} values differ in PostgreSQL",
            wrong.len()
        );
        if !wrong.is_empty() {
            failures.push(format!(
                "{encoding}: {} of {n} values differ, e.g.\n  {}",
                wrong.len(),
                wrong[..wrong.len().min(5)].join("\n  ")
            ));
        }
    }
    let dead: i64 = db
        .query_one("SELECT count(*) FROM ferry_dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
    assert_eq!(dead, 0, "no batch was refused");
    let (status, logs) = bridge.terminate().await.unwrap();
    assert!(status.success(), "exit {status}; logs:\n{logs}");
}

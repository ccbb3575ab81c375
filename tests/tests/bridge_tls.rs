//! `ferry-bridge` (the real binary) into a PostgreSQL that takes TCP clients over TLS only
//! (`ssl = on`, `hostssl` in pg_hba.conf), with certificates made in the test (rcgen,
//! [`TestPki`]): with `verify-full` and the test CA every event lands exactly once over TLS; a CA
//! from another PKI is refused with a log line naming the option to fix; a plain connection is
//! refused by the server itself (it really is TLS-only); a server without TLS under
//! `verify-full` is named as such; bad TLS flags are named at start-up.
use std::path::PathBuf;
use std::time::Duration;

use ferry_tests::bridge::{
    assert_exactly_once, ferry_bridge_bin, test_batch, BridgeProcess, Publisher,
};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions, TestPki};
use ferry_tests::postgres::{Postgres, PostgresOptions, PostgresTls};
use ferry_tests::try_poll_until;

const T: Duration = Duration::from_secs(60);

/// A broker, a TLS-only cluster with a certificate from `pki`. Fields drop in order: the server
/// stops before the PKI's directory goes.
struct Rig {
    broker: Mosquitto,
    pg: Postgres,
    pki: TestPki,
    _pki_dir: tempfile::TempDir,
}

fn rig() -> Rig {
    rig_with(|pki| (pki.server_cert.clone(), pki.server_key.clone()))
}

/// [`rig`] with the server's certificate and key chosen from the PKI.
fn rig_with(server: impl Fn(&TestPki) -> (PathBuf, PathBuf)) -> Rig {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(pki_dir.path());
    let (cert, key) = server(&pki);
    let pg = Postgres::start_tls(PostgresOptions::default(), PostgresTls { cert, key });
    Rig {
        broker: Mosquitto::start(MosquittoOptions::default()),
        pg,
        pki,
        _pki_dir: pki_dir,
    }
}

fn args(broker: &Mosquitto, pg: &Postgres, client_id: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--broker",
        &broker.addr(),
        "--client-id",
        client_id,
        "--database",
        &pg.conn_str(),
        "--batch-ms",
        "20",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Waits until the bridge's log has a line with every one of `needles`; returns that line.
async fn log_line(bridge: &BridgeProcess, needles: &[&str]) -> anyhow::Result<String> {
    let what = format!("a ferry-bridge log line with {needles:?}");
    try_poll_until(T, what, async || {
        let logs = bridge.logs();
        logs.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .ok_or("not yet")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; logs:\n{}", bridge.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn verify_full_into_a_tls_only_postgres_stores_each_event_exactly_once() -> anyhow::Result<()>
{
    let rig = rig();
    // The mode from the environment, as the packaged service sets it.
    let mut bridge = BridgeProcess::start_with_env(
        &args(
            &rig.broker,
            &rig.pg,
            "bridge-tls1",
            &["--pg-ca-file", path(&rig.pki.ca)],
        ),
        &[("FERRY_BRIDGE_PG_SSLMODE", "verify-full")],
    )
    .await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(rig.broker.port(), "pub-tls1");
    let mut expected = Vec::new();
    let mut messages = 0;
    for dev in ["d1", "d2"] {
        for start in (0..300).step_by(50) {
            let b = test_batch("gw-tls", dev, 1, start..start + 50);
            // Every batch twice: the second copy must not land again.
            for _ in 0..2 {
                publisher
                    .publish_batch(&b, ferry_contract::Encoding::Json)
                    .await?;
                messages += 1;
            }
        }
        expected.push(("gw-tls".to_owned(), dev.to_owned(), 1, 300));
    }
    publisher.wait_all_acked(T).await?;
    bridge.wait_acked(messages, T).await?;
    let db = rig.pg.client().await;
    assert_exactly_once(&db, &expected).await?;
    assert_eq!(bridge.metric("ferry_bridge_duplicates_total").await?, 600.0);
    // The bridge's sessions (every TCP client) are encrypted.
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await?;
    let (tls, plain): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        tls >= 1 && plain == 0,
        "{tls} TLS and {plain} plain sessions"
    );
    log_line(&bridge, &["Connected to PostgreSQL", "sslmode=verify-full"]).await?;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn a_server_certificate_from_another_ca_is_refused_and_the_log_says_what_to_fix(
) -> anyhow::Result<()> {
    let rig = rig();
    let other_ca = path(&rig.pki.other_ca);
    let bridge = BridgeProcess::start(&args(
        &rig.broker,
        &rig.pg,
        "bridge-tls2",
        &["--pg-ca-file", other_ca],
    ))
    .await?;
    let line = log_line(
        &bridge,
        &[
            "ERROR",
            "the server's certificate is not signed by a CA in --pg-ca-file \
             (FERRY_BRIDGE_PG_CA_FILE)",
            other_ca,
            "UnknownIssuer",
        ],
    )
    .await?;
    eprintln!("refused as expected: {line}");
    let (status, _) = bridge.get("/healthz").await?;
    assert_eq!(status, 503, "healthy without a database");
    // No session ever ran: the bridge creates its tables first thing after connecting.
    let db = rig.pg.client().await;
    let row = db
        .query_one("SELECT to_regclass('ferry_events') IS NULL", &[])
        .await?;
    assert!(row.get::<_, bool>(0), "ferry_events exists");
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn plain_connections_to_the_tls_only_postgres_are_refused() -> anyhow::Result<()> {
    let rig = rig();
    // Any client without TLS: the server itself says no.
    let plain = format!("{} sslmode=disable", rig.pg.conn_str());
    let err = match tokio_postgres::connect(&plain, tokio_postgres::NoTls).await {
        Ok(_) => anyhow::bail!("a plain connection to the TLS-only server was accepted"),
        Err(e) => e,
    };
    let db_err = err
        .as_db_error()
        .ok_or_else(|| anyhow::anyhow!("not a server refusal: {err:?}"))?;
    assert_eq!(db_err.code().code(), "28000", "{db_err:?}");
    assert!(db_err.message().contains("no encryption"), "{db_err:?}");
    // The bridge told not to use TLS: the log says what to change.
    let bridge = BridgeProcess::start(&args(
        &rig.broker,
        &rig.pg,
        "bridge-tls3",
        &["--pg-sslmode", "disable"],
    ))
    .await?;
    log_line(
        &bridge,
        &[
            "no encryption",
            "the server takes only TLS connections here, but sslmode is disable",
            "--pg-sslmode (FERRY_BRIDGE_PG_SSLMODE) verify-full",
        ],
    )
    .await?;
    bridge.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn verify_full_against_a_server_without_tls_says_so() -> anyhow::Result<()> {
    let pki_dir = tempfile::tempdir()?;
    let pki = TestPki::generate(pki_dir.path());
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    let bridge = BridgeProcess::start(&args(
        &broker,
        &pg,
        "bridge-tls4",
        &["--pg-ca-file", path(&pki.ca)],
    ))
    .await?;
    log_line(
        &bridge,
        &[
            "ERROR",
            "the server does not offer TLS but sslmode is verify-full",
        ],
    )
    .await?;
    bridge.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_postgres_tls_flags_are_named_at_start() -> anyhow::Result<()> {
    let bin = ferry_bridge_bin()?;
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "")?;
    let empty = path(&empty);
    let db = "host=127.0.0.1 user=ferry";
    for (args, needle) in [
        (
            vec!["--database", db, "--pg-ca-file", "/nonexistent/ca.pem"],
            "--pg-ca-file: cannot read /nonexistent/ca.pem",
        ),
        (
            vec!["--database", db, "--pg-ca-file", empty],
            "holds no certificate",
        ),
        (
            vec!["--database", db, "--pg-sslmode", "verify-full"],
            "--pg-ca-file: sslmode verify-full checks the server's certificate against a CA",
        ),
        (
            vec![
                "--database",
                "postgresql://ferry@127.0.0.1/ferry?sslmode=require",
                "--pg-sslmode",
                "verify-ca",
            ],
            "--pg-sslmode: is verify-ca (FERRY_BRIDGE_PG_SSLMODE) but --database says sslmode=require",
        ),
        (
            vec!["--database", db, "--pg-sslmode", "verify"],
            "is not an sslmode (one of disable, prefer, require, verify-ca, verify-full)",
        ),
    ] {
        let out = tokio::process::Command::new(&bin)
            .args(&args)
            .env_remove("FERRY_BRIDGE_DATABASE")
            .env_remove("FERRY_BRIDGE_PG_SSLMODE")
            .env_remove("FERRY_BRIDGE_PG_CA_FILE")
            .output()
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        if needle == "holds no certificate" {
            assert!(
                err.contains(&format!("--pg-ca-file: {empty} holds")),
                "{err}"
            );
        }
    }
    Ok(())
}

/// A TLS-only PostgreSQL whose certificate (from the test CA) names only `gw.invalid`, while
/// clients connect to 127.0.0.1.
fn misnamed_rig() -> Rig {
    rig_with(|pki| {
        (
            pki.misnamed_server_cert.clone(),
            pki.misnamed_server_key.clone(),
        )
    })
}

/// A certificate from the right CA for another name: `verify-full` refuses it, and says so at
/// ERROR also while a batch waits in hand (a failing commit, not only the idle connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn a_certificate_for_another_name_fails_verify_full_at_error_level_under_traffic(
) -> anyhow::Result<()> {
    let Rig {
        broker, pg, pki, ..
    } = &misnamed_rig();
    let bridge = BridgeProcess::start(&args(
        broker,
        pg,
        "bridge-tls5",
        &["--pg-ca-file", path(&pki.ca)],
    ))
    .await?;
    let publisher = Publisher::connect(broker.port(), "pub-tls5");
    publisher
        .publish_batch(
            &test_batch("gw-tls5", "d1", 1, 0..50),
            ferry_contract::Encoding::Json,
        )
        .await?;
    log_line(
        &bridge,
        &[
            "ERROR",
            "Commit failed: database connection refused",
            "not valid for host 127.0.0.1",
            "subjectAltName",
        ],
    )
    .await?;
    let _ = bridge.terminate().await?;
    Ok(())
}

/// `verify-ca` checks the CA only: the certificate for another name is taken, and every event
/// lands once over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and PostgreSQL"]
async fn verify_ca_takes_a_certificate_for_another_name_from_the_right_ca() -> anyhow::Result<()> {
    let Rig {
        broker, pg, pki, ..
    } = &misnamed_rig();
    let mut bridge = BridgeProcess::start(&args(
        broker,
        pg,
        "bridge-tls6",
        &["--pg-ca-file", path(&pki.ca), "--pg-sslmode", "verify-ca"],
    ))
    .await?;
    bridge.wait_healthy(T).await?;
    let publisher = Publisher::connect(broker.port(), "pub-tls6");
    publisher
        .publish_batch(
            &test_batch("gw-tls6", "d1", 1, 0..50),
            ferry_contract::Encoding::Json,
        )
        .await?;
    publisher.wait_all_acked(T).await?;
    bridge.wait_acked(1, T).await?;
    let db = pg.client().await;
    assert_exactly_once(&db, &[("gw-tls6".to_owned(), "d1".to_owned(), 1, 50)]).await?;
    log_line(&bridge, &["Connected to PostgreSQL", "sslmode=verify-ca"]).await?;
    let (status, logs) = bridge.terminate().await?;
    assert!(status.success(), "exit {status}; logs:\n{logs}");
    Ok(())
}

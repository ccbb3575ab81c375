//! The local API over HTTPS (`[api] tls_cert`, `tls_key`) with certificates made in the test: the
//! CLI reads it with the test CA (`--ca-file`), refuses a certificate it cannot trust with what
//! to do about it, and a plain HTTP request on the HTTPS port is told to use `https://`. A
//! network-facing API without TLS is warned about at start; bad TLS settings name their key.
use std::time::Duration;

use ferry_agent::Agent;
use ferry_sim::SimConfig;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::cli::{ferry_cmd, run};
use crate::common::{settings, TempDir};
use crate::pki::TestPki;

fn toml(db: &std::path::Path, listen: &str, api_extra: &str) -> String {
    format!(
        "[gateway]\nid = \"tls\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n\
         [api]\nlisten = {listen:?}\n{api_extra}\n",
        db.display().to_string()
    )
}

fn tls_keys(pki: &TestPki) -> String {
    format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    )
}

/// `ferry ARGS`: (exit code, stdout, stderr).
async fn ferry(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(&mut ferry_cmd(args)).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_api_over_https_and_refuses_what_it_cannot_trust() {
    let dir = TempDir::new("api-tls");
    let pki = TestPki::generate(dir.path());
    let agent = Agent::start(&settings(&toml(
        &dir.path().join("ferry.db"),
        "127.0.0.1:0",
        &tls_keys(&pki),
    )))
    .await
    .expect("agent starts");
    let report = ferry_sim::run(
        SimConfig {
            total_samples: Some(300),
            ..SimConfig::tcp(agent.tcp_addr.unwrap(), 2, 2, 2)
        },
        CancellationToken::new(),
    )
    .await;
    assert!(report.totals.acked >= 300, "{}", report.table());
    let port = agent.api_addr.unwrap().port();
    let https = format!("https://127.0.0.1:{port}");
    let ca = pki.ca.display().to_string();

    // The test CA: the answers, by IP address and by host name (both in the certificate).
    let (code, out, err) = ferry(&[
        "devices",
        "--api",
        &https,
        "--ca-file",
        &ca,
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let devices: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(devices.as_array().map(Vec::len), Some(2), "{out}");
    let localhost = format!("https://localhost:{port}");
    let (code, out, err) = ferry(&["status", "--api", &localhost, "--ca-file", &ca]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    // The CA from the environment, as for the other API settings.
    let out = run(ferry_cmd(&["latest", "--api", &https]).env("FERRY_API_CA_FILE", &ca)).await;
    assert!(out.status.success(), "{out:?}");

    // No CA, or another PKI's: refused, saying what to pass.
    let other = pki.other_ca.display().to_string();
    for args in [
        vec!["devices", "--api", &https],
        vec!["devices", "--api", &https, "--ca-file", &other],
    ] {
        let (code, _, err) = ferry(&args).await;
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err.contains("not signed by a CA the CLI trusts: pass that CA with --ca-file"),
            "{args:?}: {err}"
        );
    }
    // Plain HTTP on the HTTPS port: the agent says to use https://.
    let (code, _, err) = ferry(&["devices", "--api", &format!("http://127.0.0.1:{port}")]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("this port speaks HTTPS"), "{err}");
    // A CA file with an http:// address is a command-line mistake.
    let (code, _, err) = ferry(&[
        "devices",
        "--api",
        &format!("http://127.0.0.1:{port}"),
        "--ca-file",
        &ca,
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--ca-file is for an https:// address"),
        "{err}"
    );
    agent.stop().await.unwrap();

    // A certificate from the right CA for another name.
    let misnamed = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        pki.misnamed_server_cert.display().to_string(),
        pki.misnamed_server_key.display().to_string()
    );
    let agent = Agent::start(&settings(&toml(
        &dir.path().join("misnamed.db"),
        "127.0.0.1:0",
        &misnamed,
    )))
    .await
    .unwrap();
    let addr = format!("https://127.0.0.1:{}", agent.api_addr.unwrap().port());
    let (code, _, err) = ferry(&["devices", "--api", &addr, "--ca-file", &ca]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("its certificate does not name \"127.0.0.1\""),
        "{err}"
    );
    agent.stop().await.unwrap();

    // HTTPS to a plain-HTTP agent: told the port does not speak HTTPS.
    let plain = Agent::start(&settings(&toml(
        &dir.path().join("plain.db"),
        "127.0.0.1:0",
        "",
    )))
    .await
    .unwrap();
    let addr = format!("https://127.0.0.1:{}", plain.api_addr.unwrap().port());
    let (code, _, err) = ferry(&["devices", "--api", &addr, "--ca-file", &ca]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not speak HTTPS on that port"), "{err}");
    plain.stop().await.unwrap();
}

/// `ferry run` on `config` until it logs that it serves the API; that log up to then.
async fn log_until_serving(config: &std::path::Path) -> String {
    let mut child = ferry_cmd(&["run", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ferry run");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let read = async {
        while let Ok(Some(l)) = lines.next_line().await {
            log.push_str(&l);
            log.push('\n');
            if l.contains("Serving the local API") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    let _ = child.kill().await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_api_without_tls_is_warned_about_and_bad_tls_settings_name_their_key() {
    let dir = TempDir::new("api-tls-warn");
    let pki = TestPki::generate(dir.path());
    let token = "token = \"0123456789abcdef0123\"";
    let config = dir.path().join("ferry.toml");
    let db = dir.path().join("ferry.db");
    let warning = "reachable from the network without TLS";

    std::fs::write(&config, toml(&db, "0.0.0.0:0", token)).unwrap();
    let log = log_until_serving(&config).await;
    assert!(log.contains("Serving the local API"), "{log}");
    assert!(log.contains(warning), "{log}");

    std::fs::write(
        &config,
        toml(&db, "0.0.0.0:0", &format!("{token}\n{}", tls_keys(&pki))),
    )
    .unwrap();
    let log = log_until_serving(&config).await;
    assert!(log.contains("on https://"), "{log}");
    assert!(!log.contains(warning), "{log}");

    // `ferry config check` (the unit's ExecStartPre) names the key and the file.
    let cert = pki.server_cert.display().to_string();
    let other_key = pki.other_server_key.display().to_string();
    for (api, key, says) in [
        (
            format!("tls_cert = {cert:?}"),
            "api.tls_key",
            "HTTPS needs both".to_owned(),
        ),
        (
            format!("tls_cert = {cert:?}\ntls_key = {other_key:?}"),
            "api.tls_key",
            format!("{other_key} does not fit the certificate in {cert}"),
        ),
        (
            format!("tls_cert = \"/nonexistent/api.pem\"\ntls_key = {other_key:?}"),
            "api.tls_cert",
            "/nonexistent/api.pem".to_owned(),
        ),
    ] {
        std::fs::write(&config, toml(&db, "127.0.0.1:0", &api)).unwrap();
        let (code, _, err) = ferry(&["config", "check", config.to_str().unwrap()]).await;
        assert_ne!(code, Some(0), "{api}: {err}");
        assert!(err.contains(key) && err.contains(&says), "{api}: {err}");
    }
}

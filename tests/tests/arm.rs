//! The arm64 and armhf agents from the packages, run under qemu-user: `ferry run` on an emulated
//! ARM stores and acks what simulated devices (native, over TCP) send, and its API answers with
//! the stored figures. Prints each binary's stripped size and the glibc version it needs.
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_tests::bridge::http_get;
use ferry_tests::debs::{self, ARCHES};
use ferry_tests::{free_port, require_tool};
use tokio_util::sync::CancellationToken;

async fn agent_under_qemu_stores_and_acks(arch: &str, qemu: &str, sysroot: &str) {
    let qemu = require_tool(qemu, "apt-get install -y qemu-user");
    let root = tempfile::tempdir().unwrap();
    debs::extract(&debs::deb("ferry", arch), root.path());
    let ferry = root.path().join("usr/bin/ferry");
    println!(
        "ferry {arch}: {} bytes stripped, needs glibc {}",
        ferry.metadata().unwrap().len(),
        debs::glibc_needed(&ferry)
    );
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = ferry_tests::service::minimal_config(root.path(), tcp, api);
    let mut agent = tokio::process::Command::new(&qemu)
        .arg("-L")
        .arg(Path::new(sysroot))
        .arg(&ferry)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry under qemu-user");
    ferry_tests::poll::poll_until(
        Duration::from_secs(60),
        format!("the {arch} agent's API to answer /healthz"),
        async || {
            http_get(api, "/healthz")
                .await
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        },
    )
    .await;

    let sim = ferry_sim::SimConfig {
        devices: 3,
        sensors: 2,
        interval_ms: 5,
        total_samples: Some(3_000),
        drain_timeout: Duration::from_secs(60),
        transport: ferry_sim::Transport::Tcp(tcp),
        ..ferry_sim::SimConfig::default()
    };
    let report = ferry_sim::run(sim, CancellationToken::new()).await;
    let t = &report.totals;
    assert!(t.generated >= 3_000, "{}", report.table());
    assert_eq!(
        t.unacked_at_end,
        0,
        "every sample acked:\n{}",
        report.table()
    );
    assert_eq!(t.acked, t.generated, "{}", report.table());

    let (status, body) = http_get(api, "/api/v1/devices").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stored: u64 = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["counters"]["events"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        stored, t.acked,
        "the {arch} agent's API counts every acked sample: {body}"
    );
    println!(
        "ferry {arch} under {qemu:?}: {} samples acked and stored",
        t.acked
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), agent.wait())
        .await
        .expect("stops")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs qemu-user and the packages (tests/package.sh): tests/run-all.sh"]
async fn the_arm64_agent_under_qemu_stores_and_acks_simulated_devices() {
    let (arch, _, qemu) = ARCHES[1];
    agent_under_qemu_stores_and_acks(arch, qemu, "/usr/aarch64-linux-gnu").await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs qemu-user and the packages (tests/package.sh): tests/run-all.sh"]
async fn the_armhf_agent_under_qemu_stores_and_acks_simulated_devices() {
    let (arch, _, qemu) = ARCHES[2];
    agent_under_qemu_stores_and_acks(arch, qemu, "/usr/arm-linux-gnueabihf").await;
}

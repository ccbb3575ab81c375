//! The `ferry` binary syncs with `fdatasync(2)`, never `fsync(2)` (`.cargo/config.toml` builds the
//! bundled SQLite with `HAVE_FDATASYNC`): a build that lost the flag would still be correct, only
//! slower at the tail of ack latency, so nothing else would notice. Traced with strace.
use std::time::Duration;

use ferry_sim::{SimConfig, Transport};
use tokio_util::sync::CancellationToken;

use crate::common::{process_config, wait_listening, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs strace"]
async fn commits_sync_with_fdatasync() {
    if let Err(e) = std::process::Command::new("strace").arg("-V").output() {
        panic!(
            "this test needs `strace` ({e}); install it with `apt-get install -y strace`, \
             or run tests/run-all.sh, which installs every tool the tests need"
        );
    }
    let dir = TempDir::new("sync");
    let (config, _db, addr) = process_config(dir.path(), "sync");
    let trace = dir.path().join("strace.out");
    let mut strace = tokio::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log", "warn", "run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn strace");
    wait_listening(addr, Duration::from_secs(20)).await;
    let report = ferry_sim::run(
        SimConfig {
            devices: 2,
            sensors: 2,
            interval_ms: 10,
            transport: Transport::Tcp(addr),
            total_samples: Some(400),
            drain_timeout: Duration::from_secs(20),
            ..SimConfig::default()
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(report.totals.unacked_at_end, 0, "every sample acked");
    // Stop the agent (strace's child) with SIGTERM; strace exits with it.
    let tracer = strace.id().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
        .expect("strace's children");
    let ferry: i32 = children
        .split_whitespace()
        .next()
        .expect("ferry runs under strace")
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ferry),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), strace.wait())
        .await
        .expect("the agent stops")
        .unwrap();
    assert!(status.success(), "ferry exits 0 under strace: {status}");
    let out = std::fs::read_to_string(&trace).unwrap();
    let count = |call: &str| {
        out.lines()
            .filter(|l| l.contains(&format!(" {call}(")))
            .count()
    };
    let (fdatasync, fsync) = (count("fdatasync"), count("fsync"));
    println!("{fdatasync} fdatasync and {fsync} fsync calls for 400 samples");
    assert_eq!(
        fsync, 0,
        "no fsync(2) (SQLite built without HAVE_FDATASYNC? see .cargo/config.toml)"
    );
    assert!(fdatasync >= 2, "commits are synced (durability = \"full\")");
}

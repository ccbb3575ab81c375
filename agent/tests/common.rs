//! Shared helpers: temporary directories, agents in-process or as `ferry` processes, and checks
//! of the store against a simulator report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_agent::config::Settings;
use ferry_agent::Agent;
use ferry_sim::Report;

/// A directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ferry-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings from TOML text (no environment overrides).
pub fn settings(toml: &str) -> Settings {
    Settings::from_toml(toml, "(test)", |_| None).expect("test config is valid")
}

/// An in-process agent with its store at `db` and a TCP listener on an ephemeral port; `extra`
/// is appended to the `[store]` table.
pub async fn agent(db: &Path, store_extra: &str) -> Agent {
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"test\"\n[store]\npath = {:?}\n{store_extra}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n",
        db.display().to_string()
    );
    Agent::start(&settings(&toml)).await.expect("agent starts")
}

/// A free loopback TCP port (bound and released; good enough for tests on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `dir/ferry.toml` for a `ferry` process: store `dir/ferry.db` with `durability = "full"`,
/// the API on an ephemeral port, the device listener on a free port. Returns (config, db, device
/// listener).
pub fn process_config(dir: &Path, gateway: &str) -> (PathBuf, PathBuf, std::net::SocketAddr) {
    let db = dir.join("ferry.db");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"{gateway}\"\n[store]\npath = {:?}\ndurability = \"full\"\n[devices]\ntcp_listen = \"{addr}\"\n",
            db.display().to_string()
        ),
    )
    .unwrap();
    (config, db, addr)
}

/// Starts the real `ferry` binary with this config file.
pub fn spawn_ferry(config: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--log", "warn", "run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry")
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: std::net::SocketAddr, within: Duration) {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(start.elapsed() < within, "nothing listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// For every device and boot in the report: every seq the device saw acked is stored exactly
/// once, and the stored seqs of each boot are strictly increasing in store order. Returns the
/// number of acked samples checked.
pub fn assert_acked_stored_once_in_order(db: &Path, report: &Report) -> u64 {
    let conn = ferry_agent::store::open_reader(db).unwrap();
    let mut checked = 0;
    for d in &report.devices {
        let keys = ferry_agent::store::read::event_keys(&conn, &d.device_id).unwrap();
        let mut per_boot: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        for (boot, seq) in keys {
            per_boot.entry(boot).or_default().push(seq);
        }
        for seqs in per_boot.values() {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{}: stored seqs of a boot are strictly increasing (no duplicate, in order)",
                d.device_id
            );
        }
        for b in &d.boots {
            let stored = per_boot.get(&b.boot_id).map(Vec::as_slice).unwrap_or(&[]);
            // Every acked seq below acked_next is stored, except those the device dropped
            // from its ring before sending (b.dropped bounds them).
            let present = stored.iter().filter(|&&s| s < b.acked_next).count() as u64;
            let missing = u64::from(b.acked_next) - present;
            assert!(
                missing <= u64::from(b.dropped),
                "{} boot {:08x}: {missing} acked seqs missing (device dropped {})",
                d.device_id,
                b.boot_id,
                b.dropped
            );
            checked += present;
        }
    }
    checked
}

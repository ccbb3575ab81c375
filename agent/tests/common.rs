//! Shared helpers: temporary directories, agents in-process or as `ferry` processes, and checks
//! of the store against a simulator report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry_agent::config::Settings;
use ferry_agent::Agent;
use ferry_sim::Report;

use crate::poll::poll_until;

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
    agent_tuned(db, store_extra, |_| {}).await
}

/// [`agent`] with its settings changed by `tune` first (settings no config key reaches).
pub async fn agent_tuned(db: &Path, store_extra: &str, tune: impl FnOnce(&mut Settings)) -> Agent {
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"test\"\n[store]\npath = {:?}\n{store_extra}\n[devices]\ntcp_listen = \"127.0.0.1:0\"\n",
        db.display().to_string()
    );
    let mut s = settings(&toml);
    tune(&mut s);
    Agent::start(&s).await.expect("agent starts")
}

/// Sensor descriptions for a Hello: `sensors` as `(name, unit)`, indexed in order, each sampled
/// every 100 ms.
pub fn sensor_infos<'a, C: FromIterator<ferry_wire::SensorInfo<'a>>>(
    sensors: &[(&'a str, &'a str)],
) -> C {
    sensors
        .iter()
        .enumerate()
        .map(|(i, &(name, unit))| ferry_wire::SensorInfo {
            index: i as u8,
            name,
            unit,
            interval_ms: 100,
        })
        .collect()
}

/// `m` encoded as one frame.
pub fn frame(m: &ferry_wire::Message<'_>) -> Vec<u8> {
    let mut buf = [0u8; ferry_wire::MAX_ENCODED_LEN];
    let n = ferry_wire::encode(m, &mut buf).expect("test message encodes");
    buf[..n].to_vec()
}

#[path = "../benches/common/port.rs"]
mod port;
pub use port::free_port;

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

/// Stops an agent process with SIGTERM and asserts it exits 0 within 20 s (its store then
/// checkpointed and closed).
pub async fn stop_cleanly(agent: &mut tokio::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), agent.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the agent cleanly: {status}"
    );
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(addr: std::net::SocketAddr, within: Duration) {
    let what = format!("something listening on {addr}");
    poll_until(within, what, async || {
        tokio::net::TcpStream::connect(addr).await.map(drop)
    })
    .await;
}

/// Acked samples of one device boot that the store does not hold.
#[derive(Debug)]
pub struct Missing {
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot_id: u32,
    /// Acked seqs not stored.
    pub missing: u64,
    /// Samples the device dropped from its ring before sending (they may be among the missing).
    pub dropped: u64,
}

/// Compares the store with what the devices saw acked: asserts that the stored seqs of each boot
/// are strictly increasing in store order (no duplicate), and returns the number of acked
/// samples stored and, per boot, the acked ones missing.
pub fn acked_in_store(db: &Path, report: &Report) -> (u64, Vec<Missing>) {
    let conn = ferry_agent::store::open_reader(db).unwrap();
    let (mut present_total, mut gaps) = (0, Vec::new());
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
            let present = stored.iter().filter(|&&s| s < b.acked_next).count() as u64;
            present_total += present;
            let missing = u64::from(b.acked_next) - present;
            if missing > 0 {
                gaps.push(Missing {
                    device: d.device_id.clone(),
                    boot_id: b.boot_id,
                    missing,
                    dropped: u64::from(b.dropped),
                });
            }
        }
    }
    (present_total, gaps)
}

/// For every device and boot in the report: every seq the device saw acked is stored exactly
/// once, and the stored seqs of each boot are strictly increasing in store order. Returns the
/// number of acked samples checked.
pub fn assert_acked_stored_once_in_order(db: &Path, report: &Report) -> u64 {
    let (checked, gaps) = acked_in_store(db, report);
    for g in gaps {
        // Every acked seq below acked_next is stored, except those the device dropped from its
        // ring before sending (`dropped` bounds them).
        assert!(
            g.missing <= g.dropped,
            "{} boot {:08x}: {} acked seqs missing (device dropped {})",
            g.device,
            g.boot_id,
            g.missing,
            g.dropped
        );
    }
    checked
}

/// Like [`process_config`], with the API on a free port too. Returns (config, db, device
/// listener, API address).
pub fn process_config_with_api(
    dir: &Path,
    gateway: &str,
) -> (PathBuf, PathBuf, std::net::SocketAddr, std::net::SocketAddr) {
    let (config, db, addr) = process_config(dir, gateway);
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[api]\nlisten = \"127.0.0.1:0\"",
        &format!("[api]\nlisten = \"{api}\""),
    );
    std::fs::write(&config, text).unwrap();
    (config, db, addr, api)
}

/// A device written from PROTOCOL.md over TCP: sends a Hello, waits for the Welcome, then sends
/// Samples frames of exactly the values given and waits for their acks.
pub struct DeviceLink {
    stream: tokio::net::TcpStream,
    decoder: Box<ferry_wire::Decoder>,
    boot_id: u32,
    tick0: u64,
    /// One past the highest seq acked so far.
    pub acked: u32,
}

impl DeviceLink {
    /// Connects to `addr` as `device_id` (boot `boot_id`, 1 kHz ticks) with sensors `(name, unit)`
    /// at indexes 0, 1, ...; returns once the gateway's Welcome arrived.
    pub async fn connect(
        addr: std::net::SocketAddr,
        device_id: &str,
        boot_id: u32,
        sensors: &[(&str, &str)],
    ) -> DeviceLink {
        use ferry_wire::{Hello, Message};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tick0 = 1_000;
        let mut link = DeviceLink {
            stream,
            decoder: Box::new(ferry_wire::Decoder::new()),
            boot_id,
            tick0,
            acked: 0,
        };
        let hello = Message::Hello(Hello {
            device_id,
            firmware: "test-device 1",
            boot_id,
            tick_hz: 1000,
            ticks: tick0,
            next_seq: 0,
            sensors: sensor_infos(sensors),
        });
        link.write(&hello).await;
        link.wait(
            Duration::from_secs(10),
            "the Welcome",
            |m| matches!(m, Message::Welcome(w) if w.boot_id == boot_id),
        )
        .await;
        link
    }

    async fn write(&mut self, m: &ferry_wire::Message<'_>) {
        use tokio::io::AsyncWriteExt;
        let mut buf = [0u8; ferry_wire::MAX_ENCODED_LEN];
        let n = ferry_wire::encode(m, &mut buf).expect("test message encodes");
        self.stream.write_all(&buf[..n]).await.unwrap();
    }

    /// Reads frames until `done` holds for one (acks update [`DeviceLink::acked`] on the way).
    async fn wait(
        &mut self,
        within: Duration,
        what: &str,
        mut done: impl FnMut(&ferry_wire::Message<'_>) -> bool,
    ) {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
            assert!(
                n > 0,
                "the gateway closed the link while waiting for {what}"
            );
            let mut input = &buf[..n];
            while let Some(r) = self.decoder.feed(&mut input) {
                if let Ok(m) = r {
                    if let ferry_wire::Message::Ack(a) = &m {
                        if a.boot_id == self.boot_id {
                            self.acked = self.acked.max(a.next_seq);
                        }
                    }
                    if done(&m) {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `values` as seqs `first_seq..`, one per 10 ms of device time, on sensors
    /// `sensor_of(i)`, in frames of at most 32 samples.
    pub async fn send(&mut self, first_seq: u32, values: &[(u8, f32)]) {
        use ferry_wire::{Message, Sample, Samples};
        for (k, chunk) in values.chunks(32).enumerate() {
            let first = first_seq + (k * 32) as u32;
            let frame = Message::Samples(Samples {
                oldest: self.acked.min(first),
                first_seq: first,
                samples: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, &(sensor, value))| Sample {
                        ticks: self.tick0 + 10 * u64::from(first + i as u32),
                        sensor,
                        value,
                    })
                    .collect(),
            });
            self.write(&frame).await;
        }
    }

    /// Waits until every seq below `next_seq` is acked.
    pub async fn wait_acked(&mut self, next_seq: u32, within: Duration) {
        if self.acked >= next_seq {
            return;
        }
        let boot = self.boot_id;
        self.wait(within, &format!("an ack up to {next_seq}"), |m| {
            matches!(m, ferry_wire::Message::Ack(a) if a.boot_id == boot && a.next_seq >= next_seq)
        })
        .await;
    }
}

//! The independent Python device (`firmware/wire/tests/peer_device.py`, written from PROTOCOL.md
//! alone) as extra load beside the simulated devices: spawned over TCP, its JSON report read
//! back as a `ferry_sim` device report, so the same exactly-once checks cover it.
//!
//! Used by the agent's tests too (included by path), so it depends only on `ferry_sim`,
//! `serde_json` and tokio.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_sim::{BootReport, DeviceReport};

/// The script.
pub fn peer_device_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("firmware/wire/tests/peer_device.py")
}

/// A running Python device.
pub struct PythonPeer {
    child: tokio::process::Child,
    report: PathBuf,
}

impl PythonPeer {
    /// Starts device `id` with `sensors` sensors sampled every `interval_ms` for `duration`,
    /// reporting into `dir`; it reconnects to `addr` whenever the link drops and, after
    /// `duration`, waits up to `drain` for its last acks.
    pub fn spawn(
        addr: SocketAddr,
        id: &str,
        sensors: u32,
        interval_ms: u32,
        duration: Duration,
        drain: Duration,
        dir: &Path,
    ) -> PythonPeer {
        let report = dir.join(format!("{id}.json"));
        let child = tokio::process::Command::new("python3")
            .arg(peer_device_script())
            .args(["--connect", &addr.to_string(), "--id", id])
            .args(["--sensors", &sensors.to_string()])
            .args(["--interval-ms", &interval_ms.to_string()])
            .args(["--duration-s", &format!("{:.3}", duration.as_secs_f64())])
            .args(["--drain-timeout-s", &drain.as_secs().to_string()])
            .args(["--seed", "5", "--report"])
            .arg(&report)
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the peer device (apt-get install python3)");
        PythonPeer { child, report }
    }

    /// The Python device the power-cut tests add to their load: `peer-py`, 4 sensors every 10 ms
    /// for `duration`, 30 s to drain.
    pub fn beside_the_simulator(addr: SocketAddr, duration: Duration, dir: &Path) -> PythonPeer {
        PythonPeer::spawn(
            addr,
            "peer-py",
            4,
            10,
            duration,
            Duration::from_secs(30),
            dir,
        )
    }

    /// Waits for the peer to finish and returns its report.
    pub async fn finish(mut self) -> DeviceReport {
        let status = self.child.wait().await.expect("wait for the peer");
        assert!(status.success(), "the Python peer failed: {status}");
        let text = std::fs::read_to_string(&self.report).expect("the peer's report");
        parse_report(&text)
    }
}

/// A peer report (`{"device_id", "boots": [{"boot_id", "generated", "acked", "acked_next",
/// "dropped"}], "disconnects"}`) as a device report.
pub fn parse_report(text: &str) -> DeviceReport {
    let v: serde_json::Value = serde_json::from_str(text).expect("the peer's report is JSON");
    let num = |v: &serde_json::Value, k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("peer report: {k} missing in {v}"))
    };
    let boots = v["boots"]
        .as_array()
        .expect("peer report: boots")
        .iter()
        .map(|b| BootReport {
            boot_id: num(b, "boot_id") as u32,
            generated: num(b, "generated"),
            acked: num(b, "acked"),
            acked_next: num(b, "acked_next") as u32,
            dropped: num(b, "dropped") as u32,
            ..BootReport::default()
        })
        .collect();
    DeviceReport {
        device_id: v["device_id"].as_str().expect("device_id").to_owned(),
        boots,
        disconnects: num(&v, "disconnects") as u32,
        ..DeviceReport::default()
    }
}

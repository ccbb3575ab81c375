//! What the simulator tells at the end: per device, per boot, and totals; as a table or JSON.

use serde::Serialize;

/// Counters of one device boot.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BootReport {
    /// The boot id.
    pub boot_id: u32,
    /// Samples produced in this boot.
    pub generated: u64,
    /// Samples released by gateway acks.
    pub acked: u64,
    /// Every seq below this was acked (or dropped by the ring).
    pub acked_next: u32,
    /// Samples evicted from the full ring (never acked).
    pub dropped: u32,
    /// Samples held unacked when the device rebooted (lost with its RAM).
    pub lost_on_reboot: u64,
    /// Samples still unacked when the run ended.
    pub unacked_at_end: u64,
    /// Go-back-N rewinds.
    pub retransmits: u32,
    /// The firmware version this boot ran (what its Hello said).
    pub firmware: String,
    /// Firmware image bytes the gateway sent this boot (in update chunks).
    pub update_bytes: u64,
}

/// One simulated device.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceReport {
    /// Why the device stopped for good: its flash held no bootable image (never expected).
    pub bricked: Option<String>,
    /// Device id.
    pub device_id: String,
    /// Boots in order; more than one after reboot injection.
    pub boots: Vec<BootReport>,
    /// Links dropped (injected or by the peer).
    pub disconnects: u32,
    /// Bytes corrupted by noise injection.
    pub bytes_corrupted: u64,
    /// Frames the device received that its decoder rejected.
    pub frames_rejected: u64,
    /// With `measure_latency`: microseconds from handing a frame of new samples to the link until
    /// an ack covered its newest sample.
    #[serde(skip)]
    pub ack_latencies_us: Vec<u32>,
}

/// Sums over every device and boot.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Samples produced.
    pub generated: u64,
    /// Samples acked.
    pub acked: u64,
    /// Samples dropped by full rings.
    pub dropped: u64,
    /// Samples lost to reboots.
    pub lost_on_reboot: u64,
    /// Samples unacked at the end.
    pub unacked_at_end: u64,
    /// Boots (devices plus injected reboots).
    pub boots: u64,
    /// Disconnects.
    pub disconnects: u64,
    /// Bytes corrupted.
    pub bytes_corrupted: u64,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Wall-clock seconds from start to the end of the drain.
    pub elapsed_s: f64,
    /// Seconds during which samples were generated.
    pub generating_s: f64,
    /// Sums.
    pub totals: Totals,
    /// Per device.
    pub devices: Vec<DeviceReport>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Measurements.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Report {
    /// Ack latency over every device (empty unless `measure_latency` was set).
    pub fn ack_latency(&self) -> Latency {
        let mut all: Vec<u32> = self
            .devices
            .iter()
            .flat_map(|d| d.ack_latencies_us.iter().copied())
            .collect();
        if all.is_empty() {
            return Latency::default();
        }
        all.sort_unstable();
        let at = |q: f64| f64::from(all[((all.len() - 1) as f64 * q).round() as usize]) / 1000.0;
        Latency {
            count: all.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }

    /// Builds the report and its totals.
    pub fn new(devices: Vec<DeviceReport>, elapsed_s: f64, generating_s: f64) -> Self {
        let mut t = Totals::default();
        for d in &devices {
            t.disconnects += u64::from(d.disconnects);
            t.bytes_corrupted += d.bytes_corrupted;
            for b in &d.boots {
                t.generated += b.generated;
                t.acked += b.acked;
                t.dropped += u64::from(b.dropped);
                t.lost_on_reboot += b.lost_on_reboot;
                t.unacked_at_end += b.unacked_at_end;
                t.boots += 1;
            }
        }
        Report {
            elapsed_s,
            generating_s,
            totals: t,
            devices,
        }
    }

    /// Generated samples per second of generation.
    pub fn generated_per_s(&self) -> f64 {
        self.totals.generated as f64 / self.generating_s.max(1e-9)
    }

    /// Human-readable summary.
    pub fn table(&self) -> String {
        let t = &self.totals;
        let rows = [
            ("devices", self.devices.len().to_string()),
            ("boots", t.boots.to_string()),
            ("generated", t.generated.to_string()),
            ("acked", t.acked.to_string()),
            ("dropped (ring full)", t.dropped.to_string()),
            ("lost on reboot", t.lost_on_reboot.to_string()),
            ("unacked at end", t.unacked_at_end.to_string()),
            ("disconnects", t.disconnects.to_string()),
            ("bytes corrupted", t.bytes_corrupted.to_string()),
            ("generating (s)", format!("{:.2}", self.generating_s)),
            ("elapsed (s)", format!("{:.2}", self.elapsed_s)),
            ("generated/s", format!("{:.0}", self.generated_per_s())),
        ];
        let mut s = String::new();
        for (k, v) in rows {
            s.push_str(&format!("{k:<22}{v:>14}\n"));
        }
        s
    }
}

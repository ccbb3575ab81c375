//! The simulator proper: one task per device, each owning its link.
//!
//! Per device the loop never blocks on I/O: reads, writes (from a bounded outgoing buffer) and the
//! sampling tick are arms of one `select!`. When the outgoing buffer is above its high-water mark the
//! device simply stops handing out frames, so an unread link fills the device's ring (and then its
//! drop counter), as on real hardware, instead of growing memory.
//!
//! Commands get deterministic answers, so a test can reach every status (see [`COMMANDS_HELP`]):
//! the firmware core answers `SetInterval` (`unknown_sensor`, `invalid_argument` above one day)
//! and `Reboot`; `Identify` is `unsupported` (nothing to blink); `Opaque` is echoed (`ok`) unless
//! its payload starts with [`OPAQUE_FAIL_PREFIX`] (`failed`, the rest of the payload as result
//! data). A reboot, commanded or injected, keeps the link and starts a new boot with a new id.
//!
//! With [`SimConfig::update`] each device has a flash with the real updater and bootloader
//! ([`crate::firmware`]): it reports its update status after each Welcome, takes images, and a
//! reset runs the bootloader, so an update, a rollback and the new version in the Hello are the
//! real thing. [`SimConfig::line_rate`] paces each link to a serial line's rate both ways (neither
//! TCP nor a pty has a baud rate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_firmware::{Action, Device, DeviceConfig};
use ferry_wire::{CommandStatus, MAX_ENCODED_LEN};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::firmware::{Firmware, SimUpdate};
use crate::pty::Pty;
use crate::report::{BootReport, DeviceReport, Report};
use crate::sensors::SimSensors;
use crate::SIM_RING;
use ferry_firmware::update::Updates;

/// Outgoing bytes buffered per device before it stops handing out frames.
const HIGH_WATER: usize = 64 * 1024;

/// An `Opaque` command whose payload starts with these bytes (ASCII `fail`, hex `6661696c`) is
/// answered `Failed`, with the rest of the payload as the result data.
pub const OPAQUE_FAIL_PREFIX: &[u8] = b"fail";

/// How simulated devices answer commands (for `ferry-sim --help`).
pub const COMMANDS_HELP: &str = "\
Commands (from the agent's local API or MQTT) are answered deterministically:
  set_interval   ok for a sensor below --sensors and an interval of 0 (disable) or
                 1..=86400000 ms; unknown_sensor for another sensor; invalid_argument for
                 an interval above 86400000 ms (one day)
  identify       unsupported (a simulated device has nothing to blink)
  reboot         ok, then the device resets into a new boot (new boot id) on the same link;
                 samples it held unacked are lost and reported as \"lost on reboot\"
  opaque         failed if the payload starts with the ASCII bytes \"fail\" (hex 6661696c),
                 with the rest of the payload as result data; otherwise ok, payload echoed";

/// The simulated application's answer to an `Opaque` payload.
fn opaque(data: &[u8]) -> (CommandStatus, &[u8]) {
    match data.strip_prefix(OPAQUE_FAIL_PREFIX) {
        Some(rest) => (CommandStatus::Failed, rest),
        None => (CommandStatus::Ok, data),
    }
}

/// How devices reach the gateway.
#[derive(Debug, Clone)]
pub enum Transport {
    /// One TCP connection per device to the agent's device listener.
    Tcp(SocketAddr),
    /// One pty per device; with a directory, a symlink `DIR/{device id}` points at each slave.
    Pty {
        /// Where to put the symlinks.
        link_dir: Option<PathBuf>,
    },
}

/// Simulator settings (the CLI fills these).
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of devices.
    pub devices: usize,
    /// Link type.
    pub transport: Transport,
    /// Sensor channels per device (1..=16).
    pub sensors: usize,
    /// Sampling interval of every channel, in ms.
    pub interval_ms: u32,
    /// Fraction of device → gateway bytes corrupted.
    pub noise: f64,
    /// Fraction of gateway → device bytes corrupted.
    pub noise_downlink: f64,
    /// Mean time between injected disconnects, per device (each gap uniform in 0.5x..1.5x).
    pub disconnect_every: Option<Duration>,
    /// How long a disconnected device stays away.
    pub reconnect_after: Duration,
    /// Mean time between injected reboots, per device (each gap uniform in 0.5x..1.5x).
    pub reboot_every: Option<Duration>,
    /// Stop generating after this many samples in total (split evenly over devices).
    pub total_samples: Option<u64>,
    /// Stop generating after this long.
    pub duration: Option<Duration>,
    /// After generation stops, wait at most this long for the remaining acks.
    pub drain_timeout: Duration,
    /// Device ids are `{prefix}{index:04}`.
    pub id_prefix: String,
    /// Seed for boot ids, noise and injection times.
    pub seed: u64,
    /// Device main-loop tick.
    pub tick: Duration,
    /// Device retransmission timeout.
    pub retransmit_timeout_ms: u32,
    /// Record the ack latency of every frame of new samples (`DeviceReport::ack_latencies_us`).
    pub measure_latency: bool,
    /// All devices tick in the same instant (the worst case for the gateway: every device
    /// transmits at once). Off by default: independent microcontrollers tick in unrelated phases,
    /// so each device's ticks are offset by a fixed fraction of the tick.
    pub lockstep: bool,
    /// Devices take firmware updates (a flash, the updater and the bootloader per device).
    pub update: Option<SimUpdate>,
    /// Pace each link to this many bytes per second in each direction (115,200 baud 8N1 moves
    /// 11,520); `None` = as fast as the transport goes.
    pub line_rate: Option<u32>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 1,
            transport: Transport::Tcp(SocketAddr::from(([127, 0, 0, 1], 7879))),
            sensors: 3,
            interval_ms: 100,
            noise: 0.0,
            noise_downlink: 0.0,
            disconnect_every: None,
            reconnect_after: Duration::from_millis(200),
            reboot_every: None,
            total_samples: None,
            duration: None,
            drain_timeout: Duration::from_secs(10),
            id_prefix: "sim-".into(),
            seed: 1,
            tick: Duration::from_millis(5),
            retransmit_timeout_ms: 500,
            measure_latency: false,
            lockstep: false,
            update: None,
            line_rate: None,
        }
    }
}

impl SimConfig {
    /// `devices` devices of `sensors` sensors each, one sample per sensor every `interval_ms`,
    /// over TCP to `addr`; the rest as [`SimConfig::default`] (no end: see [`SimConfig::for_secs`]).
    pub fn tcp(addr: SocketAddr, devices: usize, sensors: usize, interval_ms: u32) -> SimConfig {
        SimConfig::over(Transport::Tcp(addr), devices, sensors, interval_ms)
    }

    /// The same over pseudo-terminals whose names are linked in `link_dir` (`sim-0000`, ...).
    pub fn pty(link_dir: PathBuf, devices: usize, sensors: usize, interval_ms: u32) -> SimConfig {
        let link_dir = Some(link_dir);
        SimConfig::over(Transport::Pty { link_dir }, devices, sensors, interval_ms)
    }

    fn over(transport: Transport, devices: usize, sensors: usize, interval_ms: u32) -> SimConfig {
        SimConfig {
            devices,
            transport,
            sensors,
            interval_ms,
            ..SimConfig::default()
        }
    }

    /// Stops generating after `secs` seconds (then drains the acks).
    pub fn for_secs(self, secs: u64) -> SimConfig {
        SimConfig {
            duration: Some(Duration::from_secs(secs)),
            ..self
        }
    }
}

/// Runs every device until generation stops and acks drain (or `shutdown`), then reports.
pub async fn run(cfg: SimConfig, shutdown: CancellationToken) -> Report {
    let cfg = Arc::new(cfg);
    let start = Instant::now();
    let per_device = |i: usize| {
        cfg.total_samples
            .map(|t| t / cfg.devices as u64 + u64::from((i as u64) < t % cfg.devices as u64))
    };
    let handles: Vec<_> = (0..cfg.devices)
        .map(|i| tokio::spawn(run_device(i, per_device(i), cfg.clone(), shutdown.clone())))
        .collect();
    let mut devices = Vec::with_capacity(handles.len());
    let mut generating_until = start;
    for h in handles {
        if let Ok((report, gen_end)) = h.await {
            devices.push(report);
            generating_until = generating_until.max(gen_end);
        }
    }
    Report::new(
        devices,
        start.elapsed().as_secs_f64(),
        (generating_until - start).as_secs_f64(),
    )
}

trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}
type Link = Pin<Box<dyn Io>>;

/// Uniformly jittered delay around `mean` (0.5x..1.5x): random, but with a predictable count of
/// injected faults over a run (exponential gaps were too uneven for tests).
fn jittered(rng: &mut SmallRng, mean: Duration) -> Duration {
    mean.mul_f64(rng.gen_range(0.5..1.5))
}

fn corrupt(rng: &mut SmallRng, bytes: &mut [u8], p: f64) -> u64 {
    if p <= 0.0 {
        return 0;
    }
    let mut n = 0;
    for b in bytes {
        if rng.gen_bool(p) {
            *b ^= rng.gen_range(1..=255u8);
            n += 1;
        }
    }
    n
}

async fn connect(
    cfg: &SimConfig,
    index: usize,
    device_id: &str,
    shutdown: &CancellationToken,
) -> Option<Link> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt: std::io::Result<Link> = match &cfg.transport {
            Transport::Tcp(addr) => TcpStream::connect(addr).await.map(|s| {
                let _ = s.set_nodelay(true);
                Box::pin(s) as Link
            }),
            Transport::Pty { link_dir } => {
                let link = link_dir.as_ref().map(|d| d.join(device_id));
                Pty::open(link.as_deref()).map(|p| {
                    tracing::info!(device = index, port = %p.path().display(), "Simulated serial port open.");
                    Box::pin(p) as Link
                })
            }
        };
        match attempt {
            Ok(l) => return Some(l),
            Err(e) => tracing::debug!(device = index, error = %e, "Connect failed; retrying."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

struct Sim {
    dev: Device<SIM_RING>,
    sensors: SimSensors,
    booted: Instant,
    firmware: Option<Firmware>,
}

impl Sim {
    fn boot(cfg: &SimConfig, id: &str, boot_id: u32, firmware: Option<Firmware>) -> Self {
        let sensors = SimSensors::new(cfg.sensors, cfg.interval_ms);
        let version = firmware.as_ref().map_or(
            concat!("ferry-sim-", env!("CARGO_PKG_VERSION")),
            Firmware::version,
        );
        let mut dc = DeviceConfig::new(id, version, boot_id);
        dc.retransmit_timeout_ms = cfg.retransmit_timeout_ms;
        dc.identify = false;
        Sim {
            dev: Device::new(dc, &sensors, 0),
            sensors,
            booted: Instant::now(),
            firmware,
        }
    }

    fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        match &mut self.firmware {
            Some(f) => self.dev.receive_with(now_ms, bytes, &mut f.updater),
            None => self.dev.receive(now_ms, bytes),
        }
    }

    fn now_ms(&self) -> u64 {
        self.booted.elapsed().as_millis() as u64
    }

    fn boot_report(&self) -> BootReport {
        let s = self.dev.stats();
        BootReport {
            boot_id: self.dev.boot_id(),
            generated: s.generated,
            acked: s.acked,
            acked_next: self.dev.acked_next(),
            dropped: s.dropped,
            lost_on_reboot: 0,
            unacked_at_end: self.dev.ring_depth() as u64,
            retransmits: s.retransmits,
            firmware: self.dev.config().firmware.to_owned(),
            update_bytes: s.update_bytes,
        }
    }
}

async fn run_device(
    index: usize,
    quota: Option<u64>,
    cfg: Arc<SimConfig>,
    shutdown: CancellationToken,
) -> (DeviceReport, Instant) {
    let mut rng =
        SmallRng::seed_from_u64(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let id = format!("{}{index:04}", cfg.id_prefix);
    let mut report = DeviceReport {
        device_id: id.clone(),
        ..Default::default()
    };
    let firmware = match cfg.update.as_ref().map(Firmware::new) {
        Some(Err(e)) => {
            tracing::error!(device = %id, "{e}");
            report.bricked = Some(e);
            return (report, Instant::now());
        }
        f => f.map(|f| f.expect("checked")),
    };
    let mut sim = Sim::boot(&cfg, &id, rng.gen(), firmware);
    let mut pace = cfg.line_rate.map(Pace::new);
    let started = Instant::now();
    let gen_deadline = cfg.duration.map(|d| started + d);
    let mut gen_end: Option<Instant> = None;
    let mut generated_before: u64 = 0; // samples of earlier boots
    let mut next_disconnect = cfg
        .disconnect_every
        .map(|m| Instant::now() + jittered(&mut rng, m));
    let mut next_reboot = cfg
        .reboot_every
        .map(|m| Instant::now() + jittered(&mut rng, m));
    // Phases spread evenly (golden-ratio steps), independent of the seed's random sequence.
    let phase = if cfg.lockstep {
        Duration::ZERO
    } else {
        cfg.tick.mul_f64((index as f64 * 0.618_034).fract())
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, cfg.tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rbuf = vec![0u8; 16 * 1024];
    let mut frame = vec![0u8; MAX_ENCODED_LEN];
    let mut reply = [0u8; ferry_wire::MAX_OPAQUE_LEN];
    let mut out: Vec<u8> = Vec::with_capacity(HIGH_WATER + MAX_ENCODED_LEN);
    let mut out_pos;
    // (one past the newest sample handed to the link, when), for ack latency.
    let mut inflight: std::collections::VecDeque<(u32, Instant)> = Default::default();
    // The newest sample already timed: a frame without newer samples (a heartbeat) is not timed,
    // also when everything timed so far is acked and `inflight` is empty.
    let mut timed_to: u32 = 0;

    'link: loop {
        let Some(link) = connect(&cfg, index, &id, &shutdown).await else {
            break;
        };
        let (mut rd, mut wr) = tokio::io::split(link);
        out.clear();
        out_pos = 0;
        loop {
            if let Some(p) = &mut pace {
                p.refill();
            }
            let rx_allow = pace
                .as_ref()
                .map_or(rbuf.len(), |p| (p.rx as usize).min(rbuf.len()));
            let tx_allow = pace.as_ref().map_or(usize::MAX, |p| p.tx as usize);
            // Hand out frames while the outgoing buffer has room.
            let now = sim.now_ms();
            while out.len() - out_pos < HIGH_WATER {
                let Some(n) = sim.dev.poll_transmit(now, &sim.sensors, &mut frame) else {
                    break;
                };
                report.bytes_corrupted += corrupt(&mut rng, &mut frame[..n], cfg.noise);
                out.extend_from_slice(&frame[..n]);
                // Time the newest sample handed out, once (for ack latency): the end of what was
                // sent, not of what was sampled (under overload the ring holds a backlog, and its
                // end is acked much later than the frame).
                let newest = sim.dev.sent_to();
                if cfg.measure_latency && newest > timed_to {
                    timed_to = newest;
                    inflight.push_back((newest, Instant::now()));
                }
            }
            while let Some(action) = sim.dev.take_action() {
                match action {
                    // The command's result is already in `out`, ahead of the new boot's Hello;
                    // the reset itself happens on the next tick, like an injected reboot.
                    Action::Reboot => next_reboot = Some(Instant::now()),
                    Action::Opaque { id, data } => {
                        let (status, answer) = opaque(&data);
                        reply[..answer.len()].copy_from_slice(answer);
                        sim.dev.complete_command(id, status, &reply[..answer.len()]);
                    }
                    // Not handed out: the device is configured without identify (Unsupported).
                    Action::Identify { .. } => {}
                }
            }
            let generating = gen_end.is_none();
            if !generating && sim.dev.ring_depth() == 0 && out_pos == out.len() {
                break 'link; // everything acked
            }
            if gen_end.is_some_and(|t| t.elapsed() >= cfg.drain_timeout) {
                break 'link;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break 'link,
                r = rd.read(&mut rbuf[..rx_allow]), if rx_allow > 0 => match r {
                    Ok(0) | Err(_) => {
                        report.disconnects += 1;
                        continue 'link;
                    }
                    Ok(n) => {
                        if let Some(p) = &mut pace {
                            p.rx -= n as f64;
                        }
                        corrupt(&mut rng, &mut rbuf[..n], cfg.noise_downlink);
                        let now = sim.now_ms();
                        sim.receive(now, &rbuf[..n]);
                        let acked = sim.dev.acked_next();
                        while inflight.front().is_some_and(|(s, _)| *s <= acked) {
                            let (_, t) = inflight.pop_front().expect("checked");
                            report.ack_latencies_us.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                    }
                },
                r = wr.write(&out[out_pos..out.len().min(out_pos.saturating_add(tx_allow))]), if out_pos < out.len() && tx_allow > 0 => match r {
                    Ok(n) if n > 0 => {
                        if let Some(p) = &mut pace {
                            p.tx -= n as f64;
                        }
                        out_pos += n;
                        if out_pos == out.len() {
                            out.clear();
                            out_pos = 0;
                        }
                    }
                    _ => {
                        report.disconnects += 1;
                        continue 'link;
                    }
                },
                _ = ticker.tick() => {
                    let now_i = Instant::now();
                    if generating {
                        let now = sim.now_ms();
                        sim.dev.step(now, &mut sim.sensors);
                        let total = generated_before + sim.dev.stats().generated;
                        if quota.is_some_and(|q| total >= q) || gen_deadline.is_some_and(|d| now_i >= d) {
                            gen_end = Some(now_i);
                        }
                    }
                    if let Some(f) = &mut sim.firmware {
                        if f.updater.poll(sim.booted.elapsed().as_millis() as u64) {
                            // A new image not confirmed in time: reset (once what is held is
                            // acked), and the bootloader restores the old one.
                            sim.dev.request_reboot();
                        }
                    }
                    if next_reboot.is_some_and(|t| now_i >= t) {
                        let mut b = sim.boot_report();
                        b.lost_on_reboot = b.unacked_at_end;
                        b.unacked_at_end = 0;
                        generated_before += b.generated;
                        report.boots.push(b);
                        let mut firmware = sim.firmware.take();
                        if let Some(Err(e)) = firmware.as_mut().map(Firmware::reboot) {
                            tracing::error!(device = %id, "{e}");
                            report.bricked = Some(e);
                            break 'link;
                        }
                        sim = Sim::boot(&cfg, &id, rng.gen(), firmware);
                        inflight.clear();
                        timed_to = 0;
                        next_reboot = cfg.reboot_every.map(|m| now_i + jittered(&mut rng, m));
                        tracing::debug!(device = %id, boot = sim.dev.boot_id(), "Injected reboot.");
                    }
                    if next_disconnect.is_some_and(|t| now_i >= t) {
                        next_disconnect = cfg.disconnect_every.map(|m| now_i + cfg.reconnect_after + jittered(&mut rng, m));
                        report.disconnects += 1;
                        drop((rd, wr));
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'link,
                            _ = tokio::time::sleep(cfg.reconnect_after) => {}
                        }
                        continue 'link;
                    }
                }
            }
        }
    }
    report.frames_rejected = u64::from(sim.dev.stats().frames_rejected);
    report.boots.push(sim.boot_report());
    (report, gen_end.unwrap_or_else(Instant::now))
}

/// A link paced to a line rate: a byte budget per direction, earned with time and capped at
/// 10 ms of the rate (a UART holds no more than a small FIFO in each direction).
struct Pace {
    rate: f64,
    cap: f64,
    rx: f64,
    tx: f64,
    last: Instant,
}

impl Pace {
    fn new(bytes_per_sec: u32) -> Self {
        let rate = f64::from(bytes_per_sec.max(1));
        Pace {
            rate,
            cap: (rate / 100.0).max(16.0),
            rx: 0.0,
            tx: 0.0,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.last = now;
        self.rx = (self.rx + earned).min(self.cap);
        self.tx = (self.tx + earned).min(self.cap);
    }
}

//! `ferry-sim`: simulated Ferry devices for testing and demonstrating a gateway.
//!
//! ```text
//! ferry-sim --devices 50 --rate 333 --samples 1000000            # TCP to 127.0.0.1:7879
//! ferry-sim --devices 4 --pty --pty-dir /tmp/ferry-ports         # ptys, symlinked for globbing
//! ferry-sim --devices 50 --rate 333 --samples 1000000 --loopback # against the built-in receiver
//! ferry-sim --devices 50 --update-key vendor.pub --firmware 1.0.0  # devices that take updates
//! ferry-sim image --version 1.1.0 --size 65536 --out app.bin      # an image for them
//! ```
//!
//! `--help` ends with how the devices answer commands ([`ferry_sim::COMMANDS_HELP`]).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_sim::receiver::{verify, Receiver};
use ferry_sim::{run, SimConfig, Transport};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-sim",
    version,
    about = "Simulated Ferry devices (the real firmware core on the host)",
    after_help = ferry_sim::COMMANDS_HELP
)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Agent device listener to connect to (ignored with --pty or --loopback).
    #[arg(long, default_value = "127.0.0.1:7879")]
    tcp: SocketAddr,
    /// Give each device its own pty (a serial port for the agent) instead of TCP.
    #[arg(long)]
    pty: bool,
    /// With --pty: create symlinks DIR/{device id} to the ports (created if missing).
    #[arg(long, value_name = "DIR")]
    pty_dir: Option<PathBuf>,
    /// Sensor channels per device (1..=16).
    #[arg(long, default_value_t = 3)]
    sensors: usize,
    /// Samples per second per channel (the interval is rounded to whole milliseconds).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Fraction of device→gateway bytes to corrupt (line noise), e.g. 0.001.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// Fraction of gateway→device bytes to corrupt.
    #[arg(long, default_value_t = 0.0)]
    noise_downlink: f64,
    /// Mean seconds between injected disconnects per device.
    #[arg(long, value_name = "SECS")]
    disconnect_every: Option<f64>,
    /// Mean seconds between injected reboots per device.
    #[arg(long, value_name = "SECS")]
    reboot_every: Option<f64>,
    /// Stop after this many samples in total, wait for their acks, and report.
    #[arg(long)]
    samples: Option<u64>,
    /// Stop generating after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Seconds to wait for outstanding acks after generation stops.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Device id prefix.
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// Random seed (boot ids, noise, injection times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run against the built-in reference receiver and verify every acked sample arrived.
    #[arg(long)]
    loopback: bool,
    /// Measure ack latency (time from sending new samples until their ack) and report percentiles.
    #[arg(long)]
    latency: bool,
    /// Tick every device in the same instant (the worst case: all transmit at once) instead of in
    /// unrelated phases like independent microcontrollers.
    #[arg(long)]
    lockstep: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Devices take firmware updates signed by this key (PEM public key or 64 hex digits).
    #[arg(long, value_name = "FILE")]
    update_key: Option<PathBuf>,
    /// With --update-key: the version every device's first image has.
    #[arg(long, default_value = "1.0.0")]
    firmware: String,
    /// With --update-key: a new image not welcomed by the gateway within this many seconds
    /// resets, and the bootloader restores the old one.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    trial_timeout: f64,
    /// Pace each link to this serial line rate, in baud with 8N1 framing (10 bits per byte), in
    /// both directions. TCP and ptys have no baud rate of their own.
    #[arg(long)]
    baud: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a firmware image for simulated devices (sign it with `ferry firmware sign --board
    /// ferry-sim`).
    Image {
        /// The image's version (dot-separated numbers, e.g. 1.1.0).
        #[arg(long)]
        version: String,
        /// Size in bytes (the simulated slot holds 131,072).
        #[arg(long, default_value_t = 65_536)]
        size: usize,
        /// An image that never confirms itself once booted (its self-test "fails"): the
        /// bootloader rolls it back.
        #[arg(long)]
        never_confirm: bool,
        /// Where to write it.
        #[arg(long, short)]
        out: PathBuf,
    },
}

/// Reads an ed25519 public key: a PEM file (`-----BEGIN PUBLIC KEY-----`, as written by `ferry
/// firmware keygen` or `openssl pkey -pubout`) or 64 hex digits.
fn read_public_key(path: &std::path::Path) -> Result<[u8; 32], String> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--update-key {}: {e}", path.display()))?;
    let hex = text.trim();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(key);
    }
    ed25519_dalek::VerifyingKey::from_public_key_pem(&text)
        .map(|k| k.to_bytes())
        .map_err(|e| {
            format!(
                "--update-key {}: not an ed25519 public key (PEM \"BEGIN PUBLIC KEY\" or 64 hex digits): {e}",
                path.display()
            )
        })
}

fn config(a: &Args) -> Result<SimConfig, String> {
    if a.devices == 0 {
        return Err("--devices must be at least 1".into());
    }
    if !(1..=ferry_wire::MAX_SENSORS).contains(&a.sensors) {
        return Err(format!("--sensors must be 1..={}", ferry_wire::MAX_SENSORS));
    }
    if !(a.rate > 0.0 && a.rate <= 1000.0) {
        return Err("--rate must be in (0, 1000] samples/s per channel".into());
    }
    for (name, p) in [("--noise", a.noise), ("--noise-downlink", a.noise_downlink)] {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("{name} must be in [0, 1)"));
        }
    }
    if a.id_prefix.len() + 4 > ferry_wire::MAX_DEVICE_ID_LEN {
        return Err("--id-prefix is too long (device ids are at most 32 bytes)".into());
    }
    let secs = |s: Option<f64>| s.map(Duration::from_secs_f64);
    let transport = if a.pty {
        if let Some(d) = &a.pty_dir {
            std::fs::create_dir_all(d).map_err(|e| format!("--pty-dir {}: {e}", d.display()))?;
        }
        Transport::Pty {
            link_dir: a.pty_dir.clone(),
        }
    } else {
        Transport::Tcp(a.tcp)
    };
    Ok(SimConfig {
        devices: a.devices,
        transport,
        sensors: a.sensors,
        interval_ms: (1000.0 / a.rate).round().max(1.0) as u32,
        noise: a.noise,
        noise_downlink: a.noise_downlink,
        disconnect_every: secs(a.disconnect_every),
        reboot_every: secs(a.reboot_every),
        total_samples: a.samples,
        duration: secs(a.duration),
        drain_timeout: Duration::from_secs_f64(a.drain_timeout),
        id_prefix: a.id_prefix.clone(),
        seed: a.seed,
        measure_latency: a.latency,
        lockstep: a.lockstep,
        update: match &a.update_key {
            Some(path) => Some(ferry_sim::SimUpdate {
                public_key: read_public_key(path)?,
                version: a.firmware.clone(),
                trial_timeout_ms: (a.trial_timeout * 1000.0) as u32,
            }),
            None => None,
        },
        line_rate: a.baud.map(|b| b / 10),
        ..SimConfig::default()
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if let Some(Command::Image {
        version,
        size,
        never_confirm,
        out,
    }) = &args.command
    {
        let written =
            ferry_sim::firmware::make_image(version, *size, !never_confirm).and_then(|img| {
                std::fs::write(out, img).map_err(|e| format!("{}: {e}", out.display()))
            });
        return match written {
            Ok(()) => {
                eprintln!(
                    "ferry-sim: wrote {} ({size} bytes, version {version})",
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-sim: {e}");
                ExitCode::from(2)
            }
        };
    }
    let mut cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let receiver = if args.loopback {
        let r = match Receiver::bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ferry-sim: cannot start the loopback receiver: {e}");
                return ExitCode::FAILURE;
            }
        };
        cfg.transport = Transport::Tcp(r.addr);
        Some(r)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        sd.cancel();
    });
    let per_device = 1000.0 / f64::from(cfg.interval_ms) * cfg.sensors as f64;
    eprintln!(
        "ferry-sim: {} devices x {} channels every {} ms = {:.0} samples/s offered",
        cfg.devices,
        cfg.sensors,
        cfg.interval_ms,
        per_device * cfg.devices as f64
    );
    let report = run(cfg, shutdown).await;
    let verification = match receiver {
        Some(r) => {
            let state = r.stop().await;
            let st = state.lock().unwrap();
            Some(verify(&report, &st))
        }
        None => None,
    };
    if args.json {
        let v = serde_json::json!({ "report": report, "ack_latency": report.ack_latency(), "verification": verification });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", report.table());
        if args.latency {
            let l = report.ack_latency();
            println!("{:<22}{:>14}", "ack latency samples", l.count);
            println!("{:<22}{:>14.3}", "ack latency p50 (ms)", l.p50_ms);
            println!("{:<22}{:>14.3}", "ack latency p99 (ms)", l.p99_ms);
            println!("{:<22}{:>14.3}", "ack latency max (ms)", l.max_ms);
        }
        if let Some(v) = &verification {
            println!("{:<22}{:>14}", "receiver stored", v.stored);
            println!("{:<22}{:>14}", "acked but missing", v.missing_acked);
        }
    }
    match verification {
        Some(v) if v.missing_acked > 0 => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

//! `ferry`: the gateway agent and its command line.
//!
//! ```text
//! ferry run --config ferry.toml      run the agent
//! ferry config check ferry.toml      validate a config file and print the effective settings
//! ferry devices --config ferry.toml  list devices from the store
//! ferry demo                         the whole pipeline on one machine
//! ```
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use ferry_agent::config::{ConfigError, Settings};
use ferry_agent::{demo, shutdown, store, Agent};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry gateway agent: device ingest into a durable SQLite buffer"
)]
struct Cli {
    /// Log filter (e.g. info, debug, ferry_agent=debug); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "ferry.toml")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// List the devices in the store.
    Devices {
        /// Configuration file (for the store path).
        #[arg(long, short, default_value = "ferry.toml")]
        config: PathBuf,
        /// Read this database instead of the configured one.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Simulated devices -> agent -> in-process MQTT broker -> ferry-bridge, with live figures
    /// and a final exactly-once check.
    Demo {
        /// Simulated devices.
        #[arg(long, default_value_t = 5)]
        devices: usize,
        /// Samples per second per device.
        #[arg(long, default_value_t = 30.0)]
        rate: f64,
        /// Seconds of data generation.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Keep the store and the bridged events (bridged.jsonl) in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a file and print the effective settings.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(config: &std::path::Path) -> Result<Settings, ExitCode> {
    Settings::load(config).map_err(|e: ConfigError| {
        eprintln!("ferry: config error: {e}");
        ExitCode::from(2)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log);
    match cli.cmd {
        Cmd::Run { config } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let token = shutdown::on_signals();
            let agent = match Agent::start(&settings).await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("ferry: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(gateway = %settings.gateway_id, store = %settings.store.path.display(), "Agent running.");
            match agent.run_until(token).await {
                Ok(()) => {
                    tracing::info!("Agent stopped cleanly.");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferry: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => match load(&file) {
            Ok(s) => {
                println!("{}: ok\n{s:#?}", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Devices { config, db, format } => {
            let path = match db {
                Some(p) => p,
                None => match load(&config) {
                    Ok(s) => s.store.path,
                    Err(code) => return code,
                },
            };
            let rows = match store::open_reader(&path).and_then(|c| store::read::devices(&c)) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                ),
                Format::Table => {
                    println!(
                        "{:<20} {:<7} {:<24} {:<10} {:>9} {:>6} {:>10} {:>8}  link",
                        "device",
                        "state",
                        "last seen (UTC)",
                        "boot",
                        "boots",
                        "ring",
                        "events",
                        "dropped"
                    );
                    for r in rows {
                        println!(
                            "{:<20} {:<7} {:<24} {:<10} {:>9} {:>6} {:>10} {:>8}  {}",
                            r.device_id,
                            if r.online { "online" } else { "offline" },
                            fmt_utc(r.last_seen_ms),
                            r.boot_id.map(|b| format!("{b:08x}")).unwrap_or_default(),
                            r.boots,
                            r.ring_depth,
                            r.events,
                            r.dropped,
                            r.link
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Demo {
            devices,
            rate,
            duration,
            keep,
        } => {
            if devices == 0 || rate.is_nan() || rate <= 0.0 || duration.is_nan() || duration <= 0.0
            {
                eprintln!("ferry: demo needs --devices >= 1, --rate > 0 and --duration > 0");
                return ExitCode::from(2);
            }
            let token = shutdown::on_signals();
            let opts = demo::DemoOptions {
                devices,
                rate,
                duration: Duration::from_secs_f64(duration),
                keep,
            };
            match demo::run(opts, token).await {
                Ok(outcome) if outcome.ok() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ferry: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` for UTC milliseconds (civil-from-days, no date library).
fn fmt_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

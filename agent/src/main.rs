//! `ferry`: the gateway agent and its command line.
//!
//! ```text
//! ferry run --config ferry.toml      run the agent
//! ferry config check ferry.toml      validate a config file and print the effective settings
//! ferry devices                      list devices (over the local API; --db FILE reads a store)
//! ferry latest [DEVICE]              latest value of every sensor
//! ferry query events|series          stored events, page by page; aggregated series
//! ferry tail                         follow samples as they are stored
//! ferry status                       ingest, uplink, backlog, disk and drops at a glance
//! ferry flash DEVICE… BUNDLE         update devices' firmware through the agent, with progress
//! ferry firmware keygen|sign         vendor keys and signed bundles (offline)
//! ferry firmware status|cancel       firmware updates in progress and done
//! ferry demo                         the whole pipeline on one machine
//! ```
//! The API commands take `--api URL` (else `FERRY_API_URL`, else `http://127.0.0.1:7878`),
//! `--token` (else `FERRY_API_TOKEN`) and `--format table|json|csv`; exit 0 ok, 1 agent
//! unreachable or failing, 2 refused request or bad command line.
use std::io::BufWriter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use ferry_agent::cli::commands::{self, finish};
use ferry_agent::cli::{
    ApiClient, CliError, Endpoint, EventsQuery, Format, SeriesQuery, TailOptions,
};
use ferry_agent::config::{ConfigError, Settings};
use ferry_agent::store::query::Agg;
use ferry_agent::{shutdown, Agent};

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
    /// List the devices: state, last seen, firmware, boot, events, forwarding backlog, link.
    Devices {
        #[command(flatten)]
        api: ApiArgs,
        /// Read this store file directly instead of asking the agent (works while it is stopped;
        /// no forwarding figures).
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
    },
    /// The latest value of each sensor of DEVICE (of every device without one).
    Latest {
        /// Device id.
        device: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Query stored events or aggregated series.
    Query {
        #[command(subcommand)]
        cmd: QueryCmd,
    },
    /// Follow samples as the agent stores them (reconnects without skipping or repeating any).
    Tail {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Only this sensor (by name).
        #[arg(long)]
        sensor: Option<String>,
        /// Stop after this many samples.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// First replay the stored events after this event id, then follow.
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Ingest rate and totals, devices online, uplink and backlog, disk headroom, drops.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send the stored events of a time range to the cloud again (for a cloud that lost data;
    /// the cloud deduplicates what it has). Shows progress until the broker acked every event.
    /// Exit 0 when done, 1 when it failed.
    Replay {
        /// Start, inclusive (device time): RFC 3339, Unix ms, `now`, or relative (-15m, -1h, -7d).
        #[arg(
            long,
            value_name = "TIME",
            allow_hyphen_values = true,
            required_unless_present_any = ["status", "cancel"]
        )]
        since: Option<String>,
        /// End, exclusive (same forms) [default: now].
        #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
        until: Option<String>,
        /// Only this device [default: every device].
        #[arg(long)]
        device: Option<String>,
        /// Start it and return at once (follow it with --status ID).
        #[arg(long)]
        detach: bool,
        /// Show replay ID (or the recent ones with --status alone) instead of starting one.
        #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "0",
            conflicts_with_all = ["since", "until", "device", "detach"])]
        status: Option<u64>,
        /// Cancel replay ID (what the broker acked stays delivered).
        #[arg(long, value_name = "ID",
            conflicts_with_all = ["since", "until", "device", "detach", "status"])]
        cancel: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Update the firmware of devices through the agent: uploads the bundle, starts the update,
    /// and shows a progress bar per device until every device ran or failed. Exit 0 when every
    /// device runs the new image, 1 when one failed.
    Flash {
        /// Device ids or globs (`line-2-*`), then the bundle file last.
        #[arg(required = true, num_args = 2.., value_name = "DEVICE… BUNDLE")]
        args: Vec<String>,
        /// Install even when the version is not newer than the device's.
        #[arg(long)]
        force: bool,
        /// Devices updated at once.
        #[arg(long, default_value_t = ferry_agent::firmware::rollout::DEFAULT_CONCURRENCY)]
        concurrency: u32,
        /// Stop starting devices once more than this many failed.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Vendor keys, signed bundles, and the agent's firmware updates.
    Firmware {
        #[command(subcommand)]
        cmd: FirmwareCmd,
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
        /// Seconds of data generation [default: until Ctrl-C].
        #[arg(long)]
        duration: Option<f64>,
        /// Keep the store, the bridged events (bridged.jsonl) and the log in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Logs on the terminal instead of ferry-demo.log in the demo's directory.
        #[arg(long)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum FirmwareCmd {
    /// Make a vendor key pair: OUT.key (private, PKCS#8 PEM, mode 0600) and OUT.pub (public PEM).
    Keygen {
        #[arg(long, default_value = "vendor")]
        out: PathBuf,
    },
    /// Sign an image (offline): writes a bundle for `ferry flash` and the local API.
    Sign {
        /// The raw image (the binary the bootloader copies into the active slot).
        image: PathBuf,
        /// The vendor's private key (PEM, "BEGIN PRIVATE KEY").
        #[arg(long)]
        key: PathBuf,
        /// The image's version (dot-separated numbers, e.g. 1.2.0); devices refuse older ones.
        #[arg(long)]
        version: String,
        /// The board it is built for (e.g. microbit, stm32f407-disco, ferry-sim).
        #[arg(long)]
        board: String,
        /// The bundle to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Store a bundle in the agent without starting an update.
    Upload {
        bundle: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Firmware updates: one (by id) or the recent ones, with every device's progress.
    Status {
        id: Option<i64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel an update: queued devices are skipped, transfers in progress aborted.
    Cancel {
        id: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a file and print the effective settings.
    Check {
        /// The file.
        file: PathBuf,
        /// Print only "ok" (the settings hold secrets: the service runs this before each start).
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum QueryCmd {
    /// Stored events, oldest first, printed page by page as they arrive (`--format json` writes
    /// JSON Lines: one event object per line).
    Events {
        /// Only this device (then ordered by time).
        #[arg(long)]
        device: Option<String>,
        /// Only this sensor (by name).
        #[arg(long)]
        sensor: Option<String>,
        #[command(flatten)]
        range: Range,
        /// Print at most N rows [default: all].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One sensor aggregated into time buckets (empty buckets left out).
    Series {
        /// Device id.
        #[arg(long)]
        device: String,
        /// Sensor name.
        #[arg(long)]
        sensor: String,
        #[command(flatten)]
        range: Range,
        /// Bucket width: 10s, 1m, 1h, ... [agent default: 1m]
        #[arg(long, value_name = "DURATION")]
        bucket: Option<String>,
        /// Aggregate per bucket [agent default: avg]
        #[arg(long, value_parser = PossibleValuesParser::new(Agg::ALL.map(Agg::name)))]
        agg: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

// Where the agent's API is, and the output format (shared by the API commands).
#[derive(Args)]
struct ApiArgs {
    /// The agent's local API [default: $FERRY_API_URL, else http://127.0.0.1:7878]
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Bearer token for the API [default: $FERRY_API_TOKEN]
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// CA certificate(s), PEM, that sign the agent's HTTPS certificate (an https:// --api),
    /// besides the system's [default: $FERRY_API_CA_FILE]
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

// A time range; relative times start with `-`, so hyphen values are allowed.
#[derive(Args)]
struct Range {
    /// Start, inclusive: RFC 3339, Unix ms, `now`, or relative (-90s, -15m, -1h, -7d).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
    /// End, exclusive (same forms).
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    until: Option<String>,
}

/// Logs to `file` (plain text) instead of stderr (`ferry demo`).
#[cfg(feature = "demo")]
fn init_logs_to(filter: &str, file: std::fs::File) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Arc::new(file))
        .with_ansi(false)
        .init();
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only on a terminal: the journal and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    if !matches!(cli.cmd, Cmd::Demo { verbose: false, .. }) {
        init_logs(&cli.log);
    }
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
            // Under systemd (Type=notify): ready now that the store is open and the listeners
            // are bound; the watchdog pings only while the writer and ingest make progress.
            ferry_agent::service::notify_ready();
            let watchdog = ferry_agent::service::watchdog_interval().map(|every| {
                tokio::spawn(ferry_agent::service::run_watchdog(
                    every,
                    agent.liveness(),
                    token.clone(),
                ))
            });
            let stopped = agent.run_until(token).await;
            if let Some(w) = watchdog {
                w.abort();
            }
            match stopped {
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
            cmd: ConfigCmd::Check { file, quiet },
        } => match load(&file) {
            Ok(_) if quiet => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Ok(s) => {
                println!("{}: ok\n{s:#?}", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Devices { api, db: Some(db) } => {
            done(commands::devices_offline(&db, api.format, &mut stdout()))
        }
        Cmd::Devices { api, db: None } => {
            let r = async { commands::devices(&client(&api)?, api.format, &mut stdout()).await };
            done(r.await)
        }
        Cmd::Latest { device, api } => {
            let r = async {
                let c = client(&api)?;
                commands::latest(&c, device.as_deref(), api.format, &mut stdout()).await
            };
            done(r.await)
        }
        Cmd::Query {
            cmd:
                QueryCmd::Events {
                    device,
                    sensor,
                    range,
                    limit,
                    api,
                },
        } => {
            let q = EventsQuery {
                device,
                sensor,
                since: range.since,
                until: range.until,
                limit,
            };
            let r = async {
                commands::query_events(&client(&api)?, &q, api.format, &mut stdout()).await
            };
            done(r.await)
        }
        Cmd::Query {
            cmd:
                QueryCmd::Series {
                    device,
                    sensor,
                    range,
                    bucket,
                    agg,
                    api,
                },
        } => {
            let q = SeriesQuery {
                device,
                sensor,
                since: range.since,
                until: range.until,
                bucket,
                agg,
            };
            let r = async {
                commands::query_series(&client(&api)?, &q, api.format, &mut stdout()).await
            };
            done(r.await)
        }
        Cmd::Tail {
            device,
            sensor,
            count,
            after,
            api,
        } => {
            let opts = TailOptions {
                device,
                sensor,
                count,
                after,
            };
            let r =
                async { commands::tail(&client(&api)?, &opts, api.format, &mut stdout()).await };
            done(r.await)
        }
        Cmd::Flash {
            mut args,
            force,
            concurrency,
            max_failures,
            api,
        } => {
            let bundle = PathBuf::from(args.pop().unwrap_or_default());
            let r = async {
                let c = client(&api)?;
                ferry_agent::cli::firmware::flash(
                    &c,
                    args,
                    &bundle,
                    force,
                    concurrency,
                    max_failures,
                    &mut stdout(),
                )
                .await
            };
            verdict(r.await)
        }
        Cmd::Replay {
            since,
            until,
            device,
            detach,
            status,
            cancel,
            api,
        } => {
            use ferry_agent::cli::replay;
            let json = matches!(api.format, Format::Json);
            if let Some(id) = cancel {
                let r = async { replay::cancel(&client(&api)?, id, json, &mut stdout()).await };
                return verdict(r.await);
            }
            if let Some(id) = status {
                let id = (id > 0).then_some(id);
                let r = async { replay::status(&client(&api)?, id, json, &mut stdout()).await };
                return done(r.await);
            }
            let r = async {
                let c = client(&api)?;
                let since = since.unwrap_or_default();
                replay::replay(
                    &c,
                    &since,
                    until.as_deref(),
                    device,
                    detach,
                    json,
                    &mut stdout(),
                )
                .await
            };
            verdict(r.await)
        }
        Cmd::Firmware { cmd } => {
            use ferry_agent::cli::firmware as fw;
            let r = async {
                match cmd {
                    FirmwareCmd::Keygen { out } => fw::keygen(&out, &mut stdout()),
                    FirmwareCmd::Sign {
                        image,
                        key,
                        version,
                        board,
                        out,
                    } => fw::sign(&image, &key, &version, &board, &out, &mut stdout()),
                    FirmwareCmd::Upload { bundle, api } => {
                        let info = fw::upload(&client(&api)?, &bundle).await?;
                        use std::io::Write;
                        writeln!(
                            stdout(),
                            "stored: version {} for board {}, {} bytes, sha256 {}",
                            info.version,
                            info.board,
                            info.length,
                            info.sha256
                        )?;
                        Ok(())
                    }
                    FirmwareCmd::Status { id, api } => {
                        let json = matches!(api.format, Format::Json);
                        fw::status(&client(&api)?, id, json, &mut stdout()).await
                    }
                    FirmwareCmd::Cancel { id, api } => {
                        fw::cancel(&client(&api)?, id, &mut stdout()).await
                    }
                }
            };
            done(r.await)
        }
        Cmd::Status { api } => {
            let r = async { commands::status(&client(&api)?, api.format, &mut stdout()).await };
            done(r.await)
        }
        Cmd::Demo {
            devices,
            rate,
            duration,
            keep,
            verbose,
        } => {
            if devices == 0
                || rate.is_nan()
                || rate <= 0.0
                || duration.is_some_and(|d| d.is_nan() || d <= 0.0 || d > 1e9)
            {
                eprintln!(
                    "ferry: demo needs --devices >= 1, --rate > 0 and --duration > 0 (seconds)"
                );
                return ExitCode::from(2);
            }
            let opts = DemoArgs {
                devices,
                rate,
                duration: duration.map(Duration::from_secs_f64),
                keep,
                verbose,
                log: cli.log,
            };
            demo(opts).await
        }
    }
}

/// `ferry demo`'s command line.
struct DemoArgs {
    devices: usize,
    rate: f64,
    duration: Option<Duration>,
    keep: Option<PathBuf>,
    verbose: bool,
    log: String,
}

/// `ferry demo`: simulated devices, the in-process broker and bridge (the `demo` feature). Logs
/// go to `ferry-demo.log` in its directory unless `--verbose`, so the table stays readable.
#[cfg(feature = "demo")]
async fn demo(a: DemoArgs) -> ExitCode {
    let (dir, temporary) = ferry_agent::demo::demo_dir(a.keep);
    let mut log_file = None;
    if !a.verbose {
        let path = dir.join("ferry-demo.log");
        let file = std::fs::create_dir_all(&dir).and_then(|()| std::fs::File::create(&path));
        match file {
            Ok(f) => {
                init_logs_to(&a.log, f);
                log_file = Some(path);
            }
            Err(e) => {
                init_logs(&a.log);
                tracing::warn!(error = %e, path = %path.display(), "Cannot write the demo's log file; logging here.");
            }
        }
    }
    let token = shutdown::on_signals();
    let opts = ferry_agent::demo::DemoOptions {
        devices: a.devices,
        rate: a.rate,
        duration: a.duration,
        dir,
        temporary,
        log_file,
    };
    match ferry_agent::demo::run(opts, token).await {
        Ok(outcome) if outcome.ok() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A gateway build (`--no-default-features`) carries no simulator, broker or bridge.
#[cfg(not(feature = "demo"))]
async fn demo(a: DemoArgs) -> ExitCode {
    init_logs(&a.log);
    let _ = (a.devices, a.rate, a.duration, a.keep, a.verbose);
    eprintln!(
        "ferry: this build has no demo: it was built without the `demo` feature \
         (cargo build --release -p ferry-agent builds it with the demo)"
    );
    ExitCode::from(2)
}

/// The client for `--api` / `--token` (else the environment).
fn client(api: &ApiArgs) -> Result<ApiClient, CliError> {
    let endpoint = Endpoint::resolve(
        api.api.as_deref(),
        api.token.as_deref(),
        api.ca_file.as_deref(),
        |k| std::env::var(k).ok(),
    )?;
    ApiClient::new(endpoint)
}

/// Buffered stdout: commands flush after each page or sample.
fn stdout() -> BufWriter<std::io::Stdout> {
    BufWriter::new(std::io::stdout())
}

/// Exit 0 when the long job succeeded, 1 when it ended in failure, else the error's code.
fn verdict(r: Result<bool, CliError>) -> ExitCode {
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => done(Err(e)),
    }
}

/// Prints a failure (nothing for a closed stdout) and gives its exit code.
fn done(r: Result<(), CliError>) -> ExitCode {
    ExitCode::from(finish(r))
}

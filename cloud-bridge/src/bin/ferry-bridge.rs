//! `ferry-bridge`: lands every gateway's events from the MQTT broker in PostgreSQL (or prints
//! them as JSON lines). Logs go to stderr; with `--sink jsonl`, stdout carries only events.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ferry_cloud_bridge::bridge::{
    self, parse_host_port, BatchPolicy, BridgeError, BridgeSettings, InsertMethod, MqttSettings,
    PgConnection, SinkSettings, SslMode, TlsSettings,
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SinkKind {
    /// PostgreSQL (`--database`).
    Postgres,
    /// One JSON object per event on stdout.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    /// INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING.
    Unnest,
    /// COPY into a temporary table, then INSERT ... ON CONFLICT DO NOTHING.
    Copy,
}

/// Ferry's cloud-side ingest: MQTT 5 shared subscription -> PostgreSQL, acked after commit.
/// Every option can also be set in the environment (`FERRY_BRIDGE_<OPTION>`, shown in `--help`);
/// the packaged service reads them from /etc/ferry/ferry-bridge.env.
#[derive(Debug, Parser)]
#[command(name = "ferry-bridge", version)]
struct Args {
    /// Broker address.
    #[arg(
        long,
        env = "FERRY_BRIDGE_BROKER",
        default_value = "127.0.0.1:1883",
        value_name = "HOST:PORT"
    )]
    broker: String,
    /// Stable MQTT client id; the broker keeps this id's session across restarts. Give each
    /// replica its own.
    #[arg(long, env = "FERRY_BRIDGE_CLIENT_ID", default_value = "ferry-bridge-1")]
    client_id: String,
    /// PostgreSQL connection: a URL (postgresql://user@host:port/db) or key=value pairs.
    /// Required with --sink postgres.
    #[arg(long, env = "FERRY_BRIDGE_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// TLS to PostgreSQL, as libpq's sslmode: disable, prefer (TLS if offered, unchecked),
    /// require (TLS, certificate unchecked: encryption only), verify-ca, verify-full (TLS, the
    /// certificate checked against --pg-ca-file; verify-full also checks the host name).
    /// Default: verify-full with --pg-ca-file, else prefer. May be sslmode= in --database instead.
    #[arg(long, env = "FERRY_BRIDGE_PG_SSLMODE", value_name = "MODE", value_parser = parse_sslmode)]
    pg_sslmode: Option<SslMode>,
    /// CA certificate(s), PEM, that signed PostgreSQL's server certificate (for verify-ca and
    /// verify-full).
    #[arg(long, env = "FERRY_BRIDGE_PG_CA_FILE", value_name = "FILE")]
    pg_ca_file: Option<PathBuf>,
    /// Where events go.
    #[arg(long, env = "FERRY_BRIDGE_SINK", value_enum, default_value_t = SinkKind::Postgres)]
    sink: SinkKind,
    /// Commit once this many events are in hand.
    #[arg(long, env = "FERRY_BRIDGE_BATCH_EVENTS", default_value_t = 20_000)]
    batch_events: usize,
    /// Commit at the latest this many milliseconds after a batch's first message.
    #[arg(long, env = "FERRY_BRIDGE_BATCH_MS", default_value_t = 50)]
    batch_ms: u64,
    /// Database connections committing batches in parallel.
    #[arg(long, env = "FERRY_BRIDGE_WRITERS", default_value_t = 2)]
    writers: usize,
    /// Most unacked messages the broker may send at once (MQTT receive maximum).
    #[arg(long, env = "FERRY_BRIDGE_RECEIVE_MAXIMUM", default_value_t = 2_000)]
    receive_maximum: u16,
    /// Seconds the broker keeps this client's session (and queued messages) while it is away.
    #[arg(long, env = "FERRY_BRIDGE_SESSION_EXPIRY", default_value_t = 3_600)]
    session_expiry: u32,
    /// Address for /metrics and /healthz.
    #[arg(long, env = "FERRY_BRIDGE_LISTEN", default_value = "127.0.0.1:9187")]
    listen: String,
    /// CA certificate (PEM) to verify the broker: enables TLS.
    #[arg(long, env = "FERRY_BRIDGE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key and --tls-ca.
    #[arg(
        long,
        env = "FERRY_BRIDGE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs --tls-cert.
    #[arg(
        long,
        env = "FERRY_BRIDGE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// MQTT username.
    #[arg(long, env = "FERRY_BRIDGE_USERNAME")]
    username: Option<String>,
    /// MQTT password (better: the FERRY_BRIDGE_PASSWORD environment variable).
    #[arg(long, env = "FERRY_BRIDGE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Bulk insert method (for benchmarking).
    #[arg(long, value_enum, default_value_t = Method::Unnest, hide = true)]
    insert_method: Method,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides.
    #[arg(long, env = "FERRY_BRIDGE_LOG", default_value = "info")]
    log: String,
}

fn parse_sslmode(s: &str) -> Result<SslMode, String> {
    s.parse()
}

fn setting(flag: &'static str, message: impl Into<String>) -> BridgeError {
    BridgeError::Setting {
        flag,
        message: message.into(),
    }
}

fn read(flag: &'static str, path: &PathBuf) -> Result<Vec<u8>, BridgeError> {
    std::fs::read(path).map_err(|e| setting(flag, format!("cannot read {}: {e}", path.display())))
}

impl Args {
    fn settings(&self) -> Result<BridgeSettings, BridgeError> {
        let (host, port) = parse_host_port(&self.broker).map_err(|m| setting("--broker", m))?;
        if self.client_id.is_empty() || self.client_id.len() > 65_535 {
            return Err(setting("--client-id", "must be 1..=65535 bytes"));
        }
        let sink = match self.sink {
            SinkKind::Jsonl => SinkSettings::Jsonl,
            SinkKind::Postgres => {
                let db = self.database.as_deref().ok_or_else(|| {
                    setting(
                        "--database",
                        "required with --sink postgres (or FERRY_BRIDGE_DATABASE)",
                    )
                })?;
                let ca = match &self.pg_ca_file {
                    Some(path) => Some((path.as_path(), read("--pg-ca-file", path)?)),
                    None => None,
                };
                let PgConnection { config, tls } = PgConnection::new(
                    db,
                    self.pg_sslmode,
                    ca.as_ref().map(|(p, pem)| (*p, pem.as_slice())),
                )?;
                SinkSettings::Postgres {
                    config: Box::new(config),
                    tls,
                    method: match self.insert_method {
                        Method::Unnest => InsertMethod::Unnest,
                        Method::Copy => InsertMethod::Copy,
                    },
                    writers: self.writers,
                }
            }
        };
        if self.batch_events == 0 {
            return Err(setting("--batch-events", "must be at least 1"));
        }
        if self.writers == 0 || self.writers > 64 {
            return Err(setting("--writers", "must be 1..=64"));
        }
        let lanes = match self.sink {
            SinkKind::Postgres => self.writers,
            SinkKind::Jsonl => 1,
        };
        if usize::from(self.receive_maximum) < lanes + 1 {
            return Err(setting(
                "--receive-maximum",
                format!("must be at least --writers + 1 ({})", lanes + 1),
            ));
        }
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            setting(
                "--listen",
                format!("{:?}: {e} (expected IP:PORT)", self.listen),
            )
        })?;
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (None, _, _) => return Err(setting("--tls-cert", "mutual TLS needs --tls-ca too")),
            (Some(ca), cert, key) => Some(TlsSettings {
                ca: read("--tls-ca", ca)?,
                client_auth: match (cert, key) {
                    (Some(c), Some(k)) => Some((read("--tls-cert", c)?, read("--tls-key", k)?)),
                    _ => None,
                },
            }),
        };
        let credentials = match (&self.username, &self.password) {
            (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
            (None, Some(_)) => {
                return Err(setting("--password", "given without --username"));
            }
            (None, None) => None,
        };
        Ok(BridgeSettings {
            mqtt: MqttSettings {
                host,
                port,
                client_id: self.client_id.clone(),
                session_expiry_s: self.session_expiry,
                receive_maximum: self.receive_maximum,
                credentials,
                tls,
            },
            sink,
            batch: BatchPolicy {
                max_events: self.batch_events,
                // Every lane's batch plus the one filling fit in the in-flight window, so the
                // next batch fills while the others commit.
                max_messages: (usize::from(self.receive_maximum) / (lanes + 1)).max(1),
                max_wait: Duration::from_millis(self.batch_ms),
            },
            listen,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry-bridge: --log: {e}");
            return ExitCode::from(2);
        }
    };
    // Colour only on a terminal: the journal and log files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "ferry-bridge failed.");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: BridgeSettings) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(on_signal(shutdown.clone()));
        // Under systemd (Type=notify): ready once /metrics is bound and the sink is open.
        let result = bridge::run_with(settings, shutdown, || {
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "Could not tell systemd the bridge is ready.");
            }
        })
        .await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        signals.abort();
        result.context("bridge")
    })
}

async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "Cannot watch SIGTERM.");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "Shutting down: committing what is in hand."),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "Shutting down: committing what is in hand."),
    }
    shutdown.cancel();
}

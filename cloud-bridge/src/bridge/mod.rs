//! `ferry-bridge`: the cloud-side ingest. Subscribes to every gateway's events through an MQTT 5
//! shared subscription and lands them in PostgreSQL (or prints them as JSON lines).
//!
//! ```text
//!  broker ──PUBLISH──▶ mqtt task ──classify──▶ writer task ──COMMIT──▶ PostgreSQL
//!         ◀──PUBACK─── (AckGate, same connection only) ◀── acks after commit
//! ```
//!
//! Invariants (what makes it lossless):
//! - A PUBLISH is acked only after its events (or its dead letter) are committed; until then the
//!   broker keeps it in this client's persistent session and redelivers it after any failure.
//! - Writes are idempotent: the table's key is the event identity `(gateway, device, boot, seq)`
//!   and inserts ignore conflicts, so redeliveries, publisher resends and a message landing on
//!   two replicas all leave one row.
//! - Invalid messages are not retried forever: they become dead-letter rows (topic, reason,
//!   payload) and are acked like stored ones.
//! - Replicas with different client ids split the load through the shared subscription
//!   [`EVENTS_SHARED_FILTER`](ferry_contract::EVENTS_SHARED_FILTER). A replica removed for good
//!   should keep its client id until the broker has drained its session (messages queued for
//!   an offline session wait there until the session expires).
//!
//! Pure logic ([`batch`], [`inbound`], [`rows`], [`metrics`]) is apart from the tasks that own
//! the MQTT connection (`mqtt`), the sink (`sink`, `postgres`, `writer`) and the HTTP listener (`http`).
pub mod batch;
mod http;
pub mod inbound;
pub mod metrics;
mod mqtt;
#[cfg(feature = "postgres")]
pub mod pg_tls;
#[cfg(feature = "postgres")]
mod postgres;
pub mod rows;
mod sink;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use batch::BatchPolicy;
pub use metrics::Metrics;
#[cfg(feature = "postgres")]
pub use pg_tls::{PgConnection, PgTlsSettings, SslMode};
#[cfg(feature = "postgres")]
pub use postgres::{InsertMethod, SCHEMA};

/// Everything `ferry-bridge` needs to run.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// The broker connection.
    pub mqtt: MqttSettings,
    /// Where events go.
    pub sink: SinkSettings,
    /// When to commit.
    pub batch: BatchPolicy,
    /// Address of `/metrics` and `/healthz`.
    pub listen: SocketAddr,
}

/// The broker connection.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Stable client id: the broker keeps this id's session (and its queued messages) across
    /// restarts.
    pub client_id: String,
    /// How long the broker keeps the session while the bridge is away, seconds.
    pub session_expiry_s: u32,
    /// Most unacked messages the broker may send us at once.
    pub receive_maximum: u16,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// TLS, if any.
    pub tls: Option<TlsSettings>,
}

/// TLS to the broker.
#[derive(Clone)]
pub struct TlsSettings {
    /// CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// Client certificate chain and key, PEM, for mutual TLS.
    pub client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_bytes", &self.ca.len())
            .field("client_auth", &self.client_auth.is_some())
            .finish()
    }
}

/// Where events go.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres {
        /// Parsed connection settings.
        config: Box<tokio_postgres::Config>,
        /// TLS (`sslmode`, CA).
        tls: PgTlsSettings,
        /// Bulk insert method.
        method: InsertMethod,
        /// Commit lanes: connections committing batches in parallel.
        writers: usize,
    },
    /// One JSON object per event on stdout.
    Jsonl,
    /// One JSON object per event appended to this file (created if missing). `ferry demo` uses
    /// it to land events with nothing installed.
    JsonlFile(std::path::PathBuf),
}

/// Why the bridge could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// A setting is unusable; names the flag.
    #[error("{flag}: {message}")]
    Setting {
        /// The flag (or environment variable).
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The sink failed for good (jsonl: stdout closed or the file unwritable).
    #[error("sink failed: {0}")]
    Sink(String),
}

/// Parses `--broker`: `HOST:PORT` (`[v6]:PORT` for IPv6 literals, see
/// [`ferry_contract::parse_host_port`]); port 0 is refused.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = ferry_contract::parse_host_port(s)?;
    if port == 0 {
        return Err("port 0 is not a broker port".into());
    }
    Ok((host, port))
}

/// Runs the bridge until `shutdown` is cancelled (then drains, acks and disconnects) or the
/// sink fails for good.
pub async fn run(s: BridgeSettings, shutdown: CancellationToken) -> Result<(), BridgeError> {
    run_with(s, shutdown, || {}).await
}

/// [`run`], calling `ready` once the sink is open, `/metrics` is bound and the MQTT connection is
/// started (`ferry-bridge` tells systemd then).
pub async fn run_with(
    s: BridgeSettings,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), BridgeError> {
    let metrics = Arc::new(Metrics::default());
    let jsonl_file = match &s.sink {
        SinkSettings::JsonlFile(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| BridgeError::Sink(format!("opening {}: {e}", path.display())))?,
        ),
        _ => None,
    };
    let listener = TcpListener::bind(s.listen)
        .await
        .map_err(|source| BridgeError::Listen {
            addr: s.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(s.listen);
    info!(%addr, "Serving /metrics and /healthz.");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(http::serve(listener, metrics.clone(), http_stop.clone()));

    let stop = shutdown.child_token();
    let (client, eventloop) = mqtt::connect_options(&s.mqtt);
    let gate = Arc::new(mqtt::AckGate::new(client));
    // At most a receive-maximum of messages per connection is unacked; allow one stale set.
    let (tx, rx) = mpsc::channel(2 * usize::from(s.mqtt.receive_maximum) + 16);
    let sinks = match s.sink {
        #[cfg(feature = "postgres")]
        SinkSettings::Postgres {
            config,
            tls,
            method,
            writers,
        } => (0..writers.max(1))
            .map(|_| {
                sink::Sink::Postgres(Box::new(postgres::PgStore::new(
                    (*config).clone(),
                    tls.clone(),
                    method,
                    metrics.clone(),
                )))
            })
            .collect(),
        // One writer keeps stdout in commit order.
        SinkSettings::Jsonl => vec![sink::Sink::Jsonl],
        SinkSettings::JsonlFile(_) => {
            let file = jsonl_file.expect("opened above");
            vec![sink::Sink::JsonlFile(Arc::new(std::sync::Mutex::new(file)))]
        }
    };
    info!(
        broker = %format!("{}:{}", s.mqtt.host, s.mqtt.port),
        client_id = %s.mqtt.client_id,
        tls = s.mqtt.tls.is_some(),
        "Starting."
    );
    let mqtt_task = tokio::spawn(mqtt::run(
        eventloop,
        gate.clone(),
        tx,
        metrics.clone(),
        stop.clone(),
    ));
    ready();
    let result = writer::Writer {
        sinks,
        policy: s.batch,
        gate,
        metrics,
        shutdown: stop.clone(),
    }
    .run(rx)
    .await;
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), mqtt_task)
        .await
        .is_err()
    {
        warn!("MQTT connection did not close in time.");
    }
    http_stop.cancel();
    let _ = http.await;
    info!("Stopped.");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_port_zero_is_refused_and_the_rest_is_the_contract_parser() {
        assert_eq!(parse_host_port("[::1]:8883"), Ok(("::1".into(), 8883)));
        assert!(parse_host_port("localhost")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert_eq!(
            parse_host_port("h:0"),
            Err("port 0 is not a broker port".into())
        );
    }
}

//! What the agent runs with: validated settings, built once at load by [`super::validate`].
//!
//! Invariants: every value here has passed validation (addresses parse, durations are positive
//! where they must be, the API is not reachable from the network without a token), so the
//! tasks that take these never check them again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Validated `[api]`.
#[derive(Clone)]
pub struct ApiSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// HTTPS with this certificate and key (`[api] tls_cert`, `tls_key`); `None`: plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// The files `tls` was read from (cert, key), for people.
    pub tls_files: Option<(PathBuf, PathBuf)>,
}

/// Shows the token as set or not, and TLS as its files (not rustls's whole setup).
impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("tls", &self.tls_files)
            .finish()
    }
}

/// `store.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced before devices are acked; survives power loss.
    Full,
    /// `synchronous=NORMAL`: commits survive a crash of the agent, not a power loss.
    Normal,
}

/// `store.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Delete the oldest unforwarded events (counted) to make room.
    DropOldest,
    /// Stop acking new samples: devices keep them in their rings until room returns.
    Backpressure,
}

/// Validated store settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Database file.
    pub path: PathBuf,
    /// Sync mode.
    pub durability: Durability,
    /// Group-commit size bound.
    pub flush_samples: usize,
    /// Group-commit time bound.
    pub flush_interval: Duration,
    /// Cap on used bytes; `None` = unlimited.
    pub max_db_size: Option<u64>,
    /// Retention of forwarded events.
    pub keep_forwarded_for: Duration,
    /// Full-cap policy.
    pub when_full: WhenFull,
    /// Quarantine bound.
    pub quarantine_max_rows: u64,
    /// The tail is written to the database once its oldest sample is this old ...
    pub tail_flush_age: Duration,
    /// ... or once it holds this many samples (see `store::writer::flush`) ...
    pub tail_flush_rows: usize,
    /// ... or once the sample log's unreleased segments hold this many bytes: each commit takes
    /// at least one 4 KiB block of the log, so at many small commits the log, not the rows, is
    /// what grows (disk space, and replay time after a crash).
    pub tail_flush_log_bytes: u64,
    /// How long a sample may wait for others to share its commit (`store.ack_budget`; zero:
    /// commit as soon as the writer is free). See `store::writer::group_commit`.
    pub ack_budget: Duration,
}

/// Largest `store.ack_budget`.
pub const MAX_ACK_BUDGET: Duration = Duration::from_secs(5);

/// Default of [`StoreSettings::tail_flush_rows`].
pub const TAIL_FLUSH_ROWS: usize = 65_536;
/// Default of [`StoreSettings::tail_flush_log_bytes`]: 8 MiB.
pub const TAIL_FLUSH_LOG_BYTES: u64 = 8 << 20;

#[cfg(test)]
impl StoreSettings {
    /// Unit tests' store at `path`: normal sync, 20 ms group commits, no cap, an hour of forwarded
    /// events kept, 100 quarantine rows.
    pub fn for_test(path: PathBuf) -> StoreSettings {
        StoreSettings {
            path,
            durability: Durability::Normal,
            flush_samples: 1000,
            flush_interval: Duration::from_millis(20),
            max_db_size: None,
            keep_forwarded_for: Duration::from_secs(3600),
            tail_flush_age: Duration::from_secs(30),
            tail_flush_rows: TAIL_FLUSH_ROWS,
            tail_flush_log_bytes: TAIL_FLUSH_LOG_BYTES,
            ack_budget: Duration::ZERO,
            when_full: WhenFull::DropOldest,
            quarantine_max_rows: 100,
        }
    }
}

/// A validated serial source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// Path or glob.
    pub pattern: String,
    /// Baud.
    pub baud: u32,
}

/// Validated device-side settings.
#[derive(Debug, Clone)]
pub struct DevicesSettings {
    /// TCP listener, if enabled.
    pub tcp_listen: Option<SocketAddr>,
    /// Serial sources.
    pub serial: Vec<SerialSettings>,
    /// Serial rescan period.
    pub rescan_interval: Duration,
    /// Offline timeout.
    pub offline_after: Duration,
    /// TCP connection limit.
    pub max_connections: usize,
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the settings came from (for messages).
    pub source: String,
    /// Gateway id.
    pub gateway_id: String,
    /// Store.
    pub store: StoreSettings,
    /// Devices.
    pub devices: DevicesSettings,
    /// Forwarding; `None` when no broker is configured.
    pub uplink: Option<crate::uplink::UplinkSettings>,
    /// Local API; `None` when disabled.
    pub api: Option<ApiSettings>,
    /// Vendor keys whose bundles are taken (`[firmware] keys`); empty: any bundle that verifies
    /// with the key it names.
    pub firmware_keys: Vec<[u8; 32]>,
}

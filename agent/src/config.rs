//! `ferry.toml`: what the file may say ([`FerryConfig`]) and what the agent runs with ([`Settings`]).
//!
//! Rules: unknown keys are errors; every key has a default (a `const fn` or a `Default` impl), so an
//! empty file is a valid config; validation happens once, at load, and every error names the file
//! and the dotted key. Environment variables override the common keys (see [`ENV_OVERRIDES`]);
//! they are applied before validation, so their errors name the variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration error, naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// Path.
        file: String,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax or type error (serde names the key and the position).
    #[error("{file}: {message}")]
    Parse {
        /// Path.
        file: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        /// Path (or the environment variable).
        file: String,
        /// Dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Environment variables that override keys: `(variable, dotted key)`.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("FERRY_GATEWAY_ID", "gateway.id"),
    ("FERRY_STORE_PATH", "store.path"),
    ("FERRY_DURABILITY", "store.durability"),
    ("FERRY_MAX_DB_SIZE", "store.max_db_size"),
    ("FERRY_WHEN_FULL", "store.when_full"),
    ("FERRY_TCP_LISTEN", "devices.tcp_listen"),
    ("FERRY_UPLINK_BROKER", "uplink.broker"),
    ("FERRY_UPLINK_PASSWORD", "uplink.password"),
    ("FERRY_API_LISTEN", "api.listen"),
    ("FERRY_API_TOKEN", "api.token"),
    (
        "FERRY_SERIAL",
        "devices.serial (comma-separated paths or globs)",
    ),
];

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryConfig {
    /// `[gateway]`
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// `[store]`
    #[serde(default)]
    pub store: StoreConfig,
    /// `[devices]`
    #[serde(default)]
    pub devices: DevicesConfig,
    /// `[uplink]`
    #[serde(default)]
    pub uplink: UplinkConfig,
    /// `[api]`
    #[serde(default)]
    pub api: ApiConfig,
}

/// `[api]`: the local HTTP API, live stream, metrics and dashboard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address; `""` disables the API.
    #[serde(default = "default_api_listen")]
    pub listen: String,
    /// Bearer token; required when `listen` is not a loopback address.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            token: None,
        }
    }
}

fn default_api_listen() -> String {
    "127.0.0.1:7878".into()
}

/// Validated `[api]`.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Required bearer token, if any.
    pub token: Option<String>,
}

/// `[uplink]`: forwarding to an MQTT broker. Without `broker`, forwarding is off and data stays
/// buffered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// `host:port` of the broker; empty = forwarding off.
    #[serde(default)]
    pub broker: String,
    /// `"5"` (default) or `"3.1.1"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// MQTT client id; default `ferry-{gateway id}`.
    pub client_id: Option<String>,
    /// Username (with `password`).
    pub username: Option<String>,
    /// Password (or `FERRY_UPLINK_PASSWORD`).
    pub password: Option<String>,
    /// CA certificate file (PEM); setting it turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    pub key_file: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: String,
    /// Most unacked messages.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Most events per message.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Largest message payload, e.g. `"256 KiB"`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: String,
    /// `"json"` (default) or `"binary"`.
    #[serde(default = "default_encoding")]
    pub encoding: String,
    /// `"none"` (default) or `"deflate"`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How often to look for new events when caught up (the longest a new event waits).
    #[serde(default = "default_linger")]
    pub linger: String,
    /// Events per store read.
    #[serde(default = "default_read_limit")]
    pub read_limit: usize,
    /// Fall this many events behind and the rest drains as a rate-limited backlog.
    #[serde(default = "default_backlog_threshold")]
    pub backlog_threshold: u64,
    /// Backlog drain rate, events per second.
    #[serde(default = "default_backlog_rate")]
    pub backlog_rate: u64,
    /// Reconnect backoff, first delay.
    #[serde(default = "default_backoff_min")]
    pub backoff_min: String,
    /// Reconnect backoff, longest delay.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: String,
    /// MQTT 5: keep events the broker discarded for lack of a subscriber, and publish them again.
    #[serde(default = "default_require_subscriber")]
    pub require_subscriber: bool,
}

const fn default_require_subscriber() -> bool {
    true
}

impl Default for UplinkConfig {
    fn default() -> Self {
        toml::from_str("").expect("all uplink keys have defaults")
    }
}

fn default_protocol() -> String {
    "5".into()
}
fn default_keep_alive() -> String {
    "30s".into()
}
const fn default_inflight() -> u16 {
    64
}
const fn default_max_batch_events() -> usize {
    1000
}
fn default_max_message_bytes() -> String {
    "256 KiB".into()
}
fn default_encoding() -> String {
    "json".into()
}
fn default_compression() -> String {
    "none".into()
}
fn default_linger() -> String {
    "20ms".into()
}
const fn default_read_limit() -> usize {
    10_000
}
const fn default_backlog_threshold() -> u64 {
    100_000
}
const fn default_backlog_rate() -> u64 {
    50_000
}
fn default_backoff_min() -> String {
    "200ms".into()
}
fn default_backoff_max() -> String {
    "30s".into()
}

/// `[gateway]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Gateway id used in MQTT topics; default: the host name.
    pub id: Option<String>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite database file.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// `"full"` (fsync every commit) or `"normal"`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Under sustained load, commit after this many samples ...
    #[serde(default = "default_flush_samples")]
    pub flush_samples: usize,
    /// ... or this long after the first uncommitted one, whichever comes first (an idle queue
    /// commits at once).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Cap on the database's used size, e.g. `"2 GiB"`; `"0"` = no cap.
    #[serde(default = "default_max_db_size")]
    pub max_db_size: String,
    /// Forwarded events are kept this long, e.g. `"7d"`.
    #[serde(default = "default_keep_forwarded_for")]
    pub keep_forwarded_for: String,
    /// What to do when unforwarded data alone reaches the cap: `"drop_oldest"` or `"backpressure"`.
    #[serde(default = "default_when_full")]
    pub when_full: String,
    /// Rows kept in the quarantine table (oldest deleted first).
    #[serde(default = "default_quarantine_max_rows")]
    pub quarantine_max_rows: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_store_path(),
            durability: default_durability(),
            flush_samples: default_flush_samples(),
            flush_interval: default_flush_interval(),
            max_db_size: default_max_db_size(),
            keep_forwarded_for: default_keep_forwarded_for(),
            when_full: default_when_full(),
            quarantine_max_rows: default_quarantine_max_rows(),
        }
    }
}

/// `[devices]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// TCP listener for networked devices; `""` disables it.
    #[serde(default = "default_tcp_listen")]
    pub tcp_listen: String,
    /// Serial ports: exact paths or glob patterns.
    #[serde(default)]
    pub serial: Vec<SerialConfig>,
    /// How often serial patterns are re-scanned for new or returning ports.
    #[serde(default = "default_rescan")]
    pub rescan_interval: String,
    /// A device with no frame for this long is marked offline.
    #[serde(default = "default_offline_after")]
    pub offline_after: String,
    /// Maximum concurrent TCP device connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            tcp_listen: default_tcp_listen(),
            serial: Vec::new(),
            rescan_interval: default_rescan(),
            offline_after: default_offline_after(),
            max_connections: default_max_connections(),
        }
    }
}

/// `[[devices.serial]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Path or glob, e.g. `/dev/ttyACM*`.
    pub path: String,
    /// Baud rate (ignored by USB CDC and ptys).
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("ferry.db")
}
fn default_durability() -> String {
    "full".into()
}
const fn default_flush_samples() -> usize {
    20_000
}
fn default_flush_interval() -> String {
    "20ms".into()
}
fn default_max_db_size() -> String {
    "1 GiB".into()
}
fn default_keep_forwarded_for() -> String {
    "7d".into()
}
fn default_when_full() -> String {
    "drop_oldest".into()
}
const fn default_quarantine_max_rows() -> u64 {
    10_000
}
fn default_tcp_listen() -> String {
    "127.0.0.1:7879".into()
}
fn default_rescan() -> String {
    "1s".into()
}
fn default_offline_after() -> String {
    "10s".into()
}
const fn default_max_connections() -> usize {
    1024
}
const fn default_baud() -> u32 {
    115_200
}

/// `store.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsynced before devices are acked; survives power loss.
    Full,
    /// `synchronous=NORMAL`: commits survive a crash of the agent, not a power loss.
    Normal,
}

/// `store.when_full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

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
}

impl Settings {
    /// Reads, overrides from the environment, and validates `file`.
    pub fn load(file: &Path) -> Result<Settings, ConfigError> {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: name.clone(),
            source,
        })?;
        Self::from_toml(&text, &name, |k| std::env::var(k).ok())
    }

    /// Parses and validates TOML text; `env` looks up override variables.
    pub fn from_toml(
        text: &str,
        file: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut cfg: FerryConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let mut origin: std::collections::HashMap<&str, String> = Default::default();
        let mut set = |var: &'static str, key: &'static str, apply: &mut dyn FnMut(String)| {
            if let Some(v) = env(var) {
                apply(v);
                origin.insert(key, format!("environment variable {var}"));
            }
        };
        set("FERRY_GATEWAY_ID", "gateway.id", &mut |v| {
            cfg.gateway.id = Some(v)
        });
        set("FERRY_STORE_PATH", "store.path", &mut |v| {
            cfg.store.path = v.into()
        });
        set("FERRY_DURABILITY", "store.durability", &mut |v| {
            cfg.store.durability = v
        });
        set("FERRY_MAX_DB_SIZE", "store.max_db_size", &mut |v| {
            cfg.store.max_db_size = v
        });
        set("FERRY_WHEN_FULL", "store.when_full", &mut |v| {
            cfg.store.when_full = v
        });
        set("FERRY_TCP_LISTEN", "devices.tcp_listen", &mut |v| {
            cfg.devices.tcp_listen = v
        });
        set("FERRY_UPLINK_BROKER", "uplink.broker", &mut |v| {
            cfg.uplink.broker = v
        });
        set("FERRY_UPLINK_PASSWORD", "uplink.password", &mut |v| {
            cfg.uplink.password = Some(v)
        });
        set("FERRY_API_LISTEN", "api.listen", &mut |v| {
            cfg.api.listen = v
        });
        set("FERRY_API_TOKEN", "api.token", &mut |v| {
            cfg.api.token = Some(v)
        });
        set("FERRY_SERIAL", "devices.serial", &mut |v| {
            cfg.devices.serial = v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| SerialConfig {
                    path: p.trim().to_owned(),
                    baud: default_baud(),
                })
                .collect()
        });
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: origin.get(key).cloned().unwrap_or_else(|| file.to_owned()),
            key: key.to_owned(),
            message,
        };
        cfg.validate(file, invalid)
    }
}

impl FerryConfig {
    fn validate(
        self,
        file: &str,
        invalid: impl Fn(&str, String) -> ConfigError,
    ) -> Result<Settings, ConfigError> {
        let gateway_id = match self.gateway.id {
            Some(id) => id,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "ferry-gateway".into()),
        };
        // NUL too: no PostgreSQL text (nor MQTT topic) can hold it, so the cloud refuses it.
        if gateway_id.is_empty()
            || gateway_id.contains(['/', '+', '#', '\0'])
            || gateway_id.len() > 64
        {
            return Err(invalid(
                "gateway.id",
                format!("{gateway_id:?} must be 1..=64 bytes without '/', '+', '#' or NUL (it is an MQTT topic level)"),
            ));
        }
        let s = &self.store;
        let durability = match s.durability.as_str() {
            "full" => Durability::Full,
            "normal" => Durability::Normal,
            other => {
                return Err(invalid(
                    "store.durability",
                    format!("{other:?} is not one of \"full\", \"normal\""),
                ))
            }
        };
        let when_full = match s.when_full.as_str() {
            "drop_oldest" => WhenFull::DropOldest,
            "backpressure" => WhenFull::Backpressure,
            other => {
                return Err(invalid(
                    "store.when_full",
                    format!("{other:?} is not one of \"drop_oldest\", \"backpressure\""),
                ))
            }
        };
        if s.flush_samples == 0 {
            return Err(invalid("store.flush_samples", "must be at least 1".into()));
        }
        let flush_interval =
            parse_duration(&s.flush_interval).map_err(|m| invalid("store.flush_interval", m))?;
        let max_db_size =
            parse_size(&s.max_db_size).map_err(|m| invalid("store.max_db_size", m))?;
        if max_db_size.is_some_and(|b| b < 1 << 20) {
            return Err(invalid(
                "store.max_db_size",
                "must be 0 (no cap) or at least 1 MiB".into(),
            ));
        }
        let keep_forwarded_for = parse_duration(&s.keep_forwarded_for)
            .map_err(|m| invalid("store.keep_forwarded_for", m))?;
        if s.path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty".into()));
        }
        let d = &self.devices;
        let tcp_listen = if d.tcp_listen.trim().is_empty() {
            None
        } else {
            Some(d.tcp_listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "devices.tcp_listen",
                    format!(
                        "{:?} is not an address like 127.0.0.1:7879 ({e})",
                        d.tcp_listen
                    ),
                )
            })?)
        };
        let mut serial = Vec::new();
        for (i, p) in d.serial.iter().enumerate() {
            let key = format!("devices.serial[{i}].path");
            if p.path.is_empty() {
                return Err(invalid(&key, "must not be empty".into()));
            }
            glob::Pattern::new(&p.path)
                .map_err(|e| invalid(&key, format!("bad glob pattern: {e}")))?;
            if p.baud == 0 {
                return Err(invalid(
                    &format!("devices.serial[{i}].baud"),
                    "must be positive".into(),
                ));
            }
            serial.push(SerialSettings {
                pattern: p.path.clone(),
                baud: p.baud,
            });
        }
        if tcp_listen.is_none() && serial.is_empty() {
            return Err(invalid(
                "devices",
                "no device source: set devices.tcp_listen or add [[devices.serial]]".into(),
            ));
        }
        if d.max_connections == 0 {
            return Err(invalid(
                "devices.max_connections",
                "must be at least 1".into(),
            ));
        }
        let uplink = uplink_settings(&self.uplink, &gateway_id, &invalid)?;
        let api = api_settings(&self.api, &invalid)?;
        Ok(Settings {
            source: file.to_owned(),
            uplink,
            api,
            gateway_id,
            store: StoreSettings {
                path: s.path.clone(),
                durability,
                flush_samples: s.flush_samples,
                flush_interval,
                max_db_size,
                keep_forwarded_for,
                when_full,
                quarantine_max_rows: s.quarantine_max_rows,
            },
            devices: DevicesSettings {
                tcp_listen,
                serial,
                rescan_interval: positive(&d.rescan_interval)
                    .map_err(|m| invalid("devices.rescan_interval", m))?,
                offline_after: positive(&d.offline_after)
                    .map_err(|m| invalid("devices.offline_after", m))?,
                max_connections: d.max_connections,
            },
        })
    }
}

/// `[api]`: loopback needs nothing; any other address needs a token (safe by default).
fn api_settings(
    a: &ApiConfig,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<ApiSettings>, ConfigError> {
    if a.listen.trim().is_empty() {
        return Ok(None);
    }
    let listen: SocketAddr = a.listen.trim().parse().map_err(|e| {
        invalid(
            "api.listen",
            format!("{:?} is not an address like 127.0.0.1:7878 ({e})", a.listen),
        )
    })?;
    let token = match a.token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) if t.len() < 16 => {
            return Err(invalid(
                "api.token",
                "must be at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
            ))
        }
        Some(t) if !t.chars().all(|c| c.is_ascii_graphic()) => {
            return Err(invalid(
                "api.token",
                "must be printable ASCII without spaces (it travels in an HTTP header)".into(),
            ))
        }
        Some(t) => Some(t.to_owned()),
    };
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(invalid(
            "api.token",
            format!(
                "api.listen = {listen} is reachable from the network: set api.token (or FERRY_API_TOKEN) so requests need `Authorization: Bearer <token>`"
            ),
        ));
    }
    Ok(Some(ApiSettings { listen, token }))
}

/// A duration that must be greater than zero (periods and timeouts).
fn uplink_settings(
    u: &UplinkConfig,
    gateway: &str,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<crate::uplink::UplinkSettings>, ConfigError> {
    use crate::uplink::{batch::BatchLimits, mqtt, Protocol, UplinkSettings};
    use ferry_contract::{Compression, Encoding};
    if u.broker.trim().is_empty() {
        return Ok(None);
    }
    let (host, port) = u
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| {
            invalid(
                "uplink.broker",
                format!("{:?} is not host:port, e.g. \"127.0.0.1:1883\"", u.broker),
            )
        })?;
    let protocol = match u.protocol.as_str() {
        "5" | "5.0" => Protocol::V5,
        "3.1.1" | "4" => Protocol::V311,
        other => {
            return Err(invalid(
                "uplink.protocol",
                format!("{other:?} is not one of \"5\", \"3.1.1\""),
            ))
        }
    };
    let encoding = match u.encoding.as_str() {
        "json" => Encoding::Json,
        "binary" => Encoding::Binary,
        other => {
            return Err(invalid(
                "uplink.encoding",
                format!("{other:?} is not one of \"json\", \"binary\""),
            ))
        }
    };
    let compression = match u.compression.as_str() {
        "none" => Compression::None,
        "deflate" => Compression::Deflate,
        other => {
            return Err(invalid(
                "uplink.compression",
                format!("{other:?} is not one of \"none\", \"deflate\""),
            ))
        }
    };
    let read = |key: &str, p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
        p.as_ref()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))
            })
            .transpose()
    };
    let ca = read("uplink.ca_file", &u.ca_file)?;
    let cert = read("uplink.cert_file", &u.cert_file)?;
    let key = read("uplink.key_file", &u.key_file)?;
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "uplink.cert_file",
                "mutual TLS needs both cert_file and key_file".into(),
            ))
        }
    };
    let tls = match (ca, client) {
        (Some(ca), client) => Some(mqtt::TlsFiles { ca, client }),
        (None, Some(_)) => {
            return Err(invalid(
                "uplink.ca_file",
                "a client certificate needs TLS: set ca_file to the broker's CA".into(),
            ))
        }
        (None, None) => None,
    };
    let credentials = match (&u.username, &u.password) {
        (Some(user), pass) => Some((user.clone(), pass.clone().unwrap_or_default())),
        (None, Some(_)) => {
            return Err(invalid(
                "uplink.username",
                "a password needs a username".into(),
            ))
        }
        (None, None) => None,
    };
    if u.inflight == 0 {
        return Err(invalid("uplink.inflight", "must be at least 1".into()));
    }
    if u.max_batch_events == 0 || u.read_limit == 0 || u.backlog_rate == 0 {
        let key = if u.max_batch_events == 0 {
            "uplink.max_batch_events"
        } else if u.read_limit == 0 {
            "uplink.read_limit"
        } else {
            "uplink.backlog_rate"
        };
        return Err(invalid(key, "must be at least 1".into()));
    }
    let max_bytes = parse_size(&u.max_message_bytes)
        .map_err(|m| invalid("uplink.max_message_bytes", m))?
        .filter(|b| *b >= 1024)
        .ok_or_else(|| invalid("uplink.max_message_bytes", "must be at least 1 KiB".into()))?;
    let dur = |key: &str, v: &str| positive(v).map_err(|m| invalid(key, m));
    let backoff_min = dur("uplink.backoff_min", &u.backoff_min)?;
    let backoff_max = dur("uplink.backoff_max", &u.backoff_max)?;
    if backoff_max < backoff_min {
        return Err(invalid(
            "uplink.backoff_max",
            "must not be shorter than uplink.backoff_min".into(),
        ));
    }
    Ok(Some(UplinkSettings {
        gateway: gateway.to_owned(),
        protocol,
        link: mqtt::LinkOptions {
            host: host.to_owned(),
            port,
            client_id: u
                .client_id
                .clone()
                .unwrap_or_else(|| format!("ferry-{gateway}")),
            keep_alive: dur("uplink.keep_alive", &u.keep_alive)?,
            tls,
            credentials,
            will: None,
            inflight: u.inflight,
            max_incoming: 1 << 20,
            queue: usize::from(u.inflight) + 16,
        },
        limits: BatchLimits {
            max_events: u.max_batch_events,
            max_bytes: max_bytes as usize,
            encoding,
            compression,
        },
        read_limit: u.read_limit,
        linger: dur("uplink.linger", &u.linger)?,
        backlog_threshold: u.backlog_threshold as i64,
        backlog_rate: u.backlog_rate,
        backoff: (backoff_min, backoff_max),
        drain_timeout: std::time::Duration::from_secs(3),
        require_subscriber: u.require_subscriber,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

fn positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
}

/// Parses `"500ms"`, `"2s"`, `"5m"`, `"12h"`, `"7d"` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"500ms\", \"30s\", \"7d\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Parses `"512 MiB"`, `"2GB"`, `"1048576"`; `"0"` means no cap (`None`).
pub fn parse_size(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"512 MiB\" or \"2 GB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    let bytes = (n * mult) as u64;
    Ok((bytes > 0).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(text, "test.toml", |_| None)
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let s = load("").unwrap();
        assert_eq!(s.store.durability, Durability::Full);
        assert_eq!(s.store.when_full, WhenFull::DropOldest);
        assert_eq!(s.store.max_db_size, Some(1 << 30));
        assert_eq!(
            s.devices.tcp_listen,
            Some("127.0.0.1:7879".parse().unwrap())
        );
        assert_eq!(s.store.flush_interval, Duration::from_millis(20));
    }

    #[test]
    fn api_is_loopback_by_default_and_needs_a_token_elsewhere() {
        let s = load("").unwrap();
        let api = s.api.unwrap();
        assert_eq!(api.listen, "127.0.0.1:7878".parse().unwrap());
        assert!(api.token.is_none());
        assert!(load("[api]\nlisten = \"\"").unwrap().api.is_none());
        let e = load("[api]\nlisten = \"0.0.0.0:7878\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`api.token`") && e.contains("0.0.0.0:7878"),
            "{e}"
        );
        let ok = load("[api]\nlisten = \"0.0.0.0:7878\"\ntoken = \"0123456789abcdef\"").unwrap();
        assert_eq!(ok.api.unwrap().token.as_deref(), Some("0123456789abcdef"));
        let e = load("[api]\ntoken = \"short\"").unwrap_err().to_string();
        assert!(e.contains("`api.token`"), "{e}");
        let e = load("[api]\nlisten = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`api.listen`"), "{e}");
        let env = Settings::from_toml("", "t.toml", |k| {
            (k == "FERRY_API_LISTEN").then(|| "[::]:7878".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(env.contains("api.token"), "{env}");
    }

    #[test]
    fn gateway_id_must_be_a_topic_level_without_nul() {
        let id = |v: &str| load(&format!("[gateway]\nid = {v}\n"));
        let ok = id(&format!("{:?}", "g".repeat(64))).unwrap();
        assert_eq!(ok.gateway_id.len(), 64);
        for bad in [
            r#""a\u0000b""#.to_owned(),
            r#""a/b""#.to_owned(),
            r#""a+b""#.to_owned(),
            "\"a#b\"".to_owned(),
            "\"\"".to_owned(),
            format!("{:?}", "g".repeat(65)),
        ] {
            let e = id(&bad).unwrap_err().to_string();
            assert!(
                e.contains("`gateway.id`") && e.contains("NUL"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn uplink_is_off_without_a_broker_and_validated_with_one() {
        assert!(load("").unwrap().uplink.is_none());
        let u = load("[gateway]\nid = \"gw\"\n[uplink]\nbroker = \"mqtt.local:8883\"\nprotocol = \"3.1.1\"\n")
            .unwrap()
            .uplink
            .unwrap();
        assert_eq!((u.link.host.as_str(), u.link.port), ("mqtt.local", 8883));
        assert_eq!(u.link.client_id, "ferry-gw");
        for (text, key) in [
            ("broker = \"nohost\"", "uplink.broker"),
            ("broker = \"h:1\"\nprotocol = \"6\"", "uplink.protocol"),
            (
                "broker = \"h:1\"\ncert_file = \"/etc/hostname\"",
                "uplink.cert_file",
            ),
            (
                "broker = \"h:1\"\nca_file = \"/nonexistent/ca.pem\"",
                "uplink.ca_file",
            ),
            ("broker = \"h:1\"\ninflight = 0", "uplink.inflight"),
            (
                "broker = \"h:1\"\nmax_message_bytes = \"10\"",
                "uplink.max_message_bytes",
            ),
            (
                "broker = \"h:1\"\nbackoff_min = \"5s\"\nbackoff_max = \"1s\"",
                "uplink.backoff_max",
            ),
        ] {
            let e = load(&format!("[uplink]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = load("[devices]\nrescan_interval = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("devices.rescan_interval") && e.contains("greater than zero"),
            "{e}"
        );
        let e = load("[store]\ndurability = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains("store.durability") && e.contains("fast"),
            "{e}"
        );
        let e = load("[store]\nmax_db_size = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.max_db_size"), "{e}");
        let e = load("[devices]\ntcp_listen = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("devices.tcp_listen"), "{e}");
        let e = load("[[devices.serial]]\npath = \"/dev/tty[\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("devices.serial[0].path"), "{e}");
        let e = load("[store]\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("test.toml") && e.contains("bogus"), "{e}");
        let e = load("[devices]\ntcp_listen = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no device source"), "{e}");
    }

    #[test]
    fn environment_overrides_and_is_named_in_errors() {
        let env = |k: &str| match k {
            "FERRY_STORE_PATH" => Some("/tmp/x.db".to_owned()),
            "FERRY_SERIAL" => Some("/dev/ttyACM*, /dev/ttyUSB0".to_owned()),
            "FERRY_DURABILITY" => Some("normal".to_owned()),
            _ => None,
        };
        let s = Settings::from_toml("", "f.toml", env).unwrap();
        assert_eq!(s.store.path, PathBuf::from("/tmp/x.db"));
        assert_eq!(s.store.durability, Durability::Normal);
        assert_eq!(s.devices.serial.len(), 2);
        let e = Settings::from_toml("", "f.toml", |k| {
            (k == "FERRY_WHEN_FULL").then(|| "never".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("FERRY_WHEN_FULL") && e.contains("store.when_full"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("512 MiB").unwrap(), Some(512 << 20));
        assert_eq!(parse_size("2GB").unwrap(), Some(2_000_000_000));
        assert_eq!(parse_size("0").unwrap(), None);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("5 fortnights").is_err());
    }
}

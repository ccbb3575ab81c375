//! Validation: from the file as written ([`FerryConfig`]) to what the agent runs with
//! ([`Settings`]), once, at load.
//!
//! Invariants: every refusal names its dotted key (through `invalid`, which also knows whether the
//! value came from the file or an environment variable); checks run in a fixed order, so a file
//! with several mistakes always reports the same one first.
//!
//! Durations are read by [`crate::time::parse_duration`], the one syntax the config file, the
//! API and the CLI share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::time::parse_duration;

use super::file::{ApiConfig, FerryConfig, Keyword, UplinkConfig, Word};
use super::{ApiSettings, ConfigError, DevicesSettings, SerialSettings, Settings, StoreSettings};

impl FerryConfig {
    /// Checks every value and builds the settings; `invalid` makes the error for a key (naming
    /// the file, or the environment variable that set the key).
    pub(super) fn validate(
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
        let durability = word(&s.durability, "store.durability", &invalid)?;
        let when_full = word(&s.when_full, "store.when_full", &invalid)?;
        if s.flush_samples == 0 {
            return Err(invalid("store.flush_samples", "must be at least 1".into()));
        }
        let flush_interval =
            parse_duration(&s.flush_interval).map_err(|m| invalid("store.flush_interval", m))?;
        let tail_flush_age = parse_duration(&s.tail_flush_after)
            .map_err(|m| invalid("store.tail_flush_after", m))?;
        let ack_budget =
            parse_duration(&s.ack_budget).map_err(|m| invalid("store.ack_budget", m))?;
        if ack_budget > super::settings::MAX_ACK_BUDGET {
            return Err(invalid(
                "store.ack_budget",
                format!(
                    "{:?} is more than 5s: devices would time out and resend samples waiting for their ack",
                    s.ack_budget
                ),
            ));
        }
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
        let mut firmware_keys = Vec::new();
        for (i, path) in self.firmware.keys.iter().enumerate() {
            let key = format!("firmware.keys[{i}]");
            let text =
                std::fs::read_to_string(path).map_err(|e| invalid(&key, format!("{path}: {e}")))?;
            let k = crate::firmware::bundle::read_public_key(&text)
                .map_err(|e| invalid(&key, format!("{path}: {e}")))?;
            firmware_keys.push(k);
        }
        Ok(Settings {
            firmware_keys,
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
                tail_flush_age,
                tail_flush_rows: super::settings::TAIL_FLUSH_ROWS,
                tail_flush_log_bytes: super::settings::TAIL_FLUSH_LOG_BYTES,
                ack_budget,
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
    let tls = match (a.tls_cert.trim(), a.tls_key.trim()) {
        ("", "") => None,
        ("", _) => {
            return Err(invalid(
                "api.tls_cert",
                "is not set but api.tls_key is: HTTPS needs both (or neither)".into(),
            ))
        }
        (_, "") => {
            return Err(invalid(
                "api.tls_key",
                "is not set but api.tls_cert is: HTTPS needs both (or neither)".into(),
            ))
        }
        (cert, key) => Some(
            crate::api::tls::server_config(cert.as_ref(), key.as_ref())
                .map_err(|(k, m)| invalid(k, m))?,
        ),
    };
    let tls_files = tls
        .is_some()
        .then(|| (a.tls_cert.trim().into(), a.tls_key.trim().into()));
    Ok(Some(ApiSettings {
        listen,
        token,
        tls,
        tls_files,
    }))
}

/// `[uplink]`: off without a broker; TLS with a CA file; the MQTT options and batch limits.
fn uplink_settings(
    u: &UplinkConfig,
    gateway: &str,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<Option<crate::uplink::UplinkSettings>, ConfigError> {
    use crate::uplink::{batch::BatchLimits, mqtt, UplinkSettings};
    if u.broker.trim().is_empty() {
        return Ok(None);
    }
    let (host, port) = ferry_contract::parse_host_port(&u.broker).map_err(|_| {
        invalid(
            "uplink.broker",
            format!("{:?} is not host:port, e.g. \"127.0.0.1:1883\"", u.broker),
        )
    })?;
    let protocol = word(&u.protocol, "uplink.protocol", invalid)?.into();
    let encoding = word(&u.encoding, "uplink.encoding", invalid)?;
    let compression = word(&u.compression, "uplink.compression", invalid)?;
    let read = |key: &str, p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
        p.as_ref()
            .map(|p| {
                read_pem(p).map_err(|e| invalid(key, format!("cannot read {}: {e}", p.display())))
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
            host,
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

/// A keyword setting's value, or the error naming `key`.
fn word<T: Keyword>(
    w: &Word<T>,
    key: &str,
    invalid: &impl Fn(&str, String) -> ConfigError,
) -> Result<T, ConfigError> {
    w.value().map_err(|m| invalid(key, m))
}

/// A duration that must be greater than zero (periods and timeouts).
fn positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than zero"));
    }
    Ok(d)
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

/// Largest certificate or key file read (a PEM chain is a few KiB; a wrong path such as a device
/// or a database must not be read whole into memory).
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a certificate or key file of at most [`MAX_PEM_FILE`] bytes.
fn read_pem(p: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(p)?
        .take(MAX_PEM_FILE + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_PEM_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PEM_FILE} bytes, not a certificate or key file"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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

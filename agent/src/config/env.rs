//! The environment overlay: variables that override keys of the file, as one table.
//!
//! Invariants: a variable that is set replaces its key's value (an empty value too) before
//! validation, and validation's error for that key names the variable instead of the file. Each
//! row is the whole truth about one variable (its name, its key, how it sets the key), so the list
//! that documents the variables cannot drift from the code that applies them.

use std::collections::HashMap;

use super::file::{default_baud, FerryConfig, SerialConfig, Word};

/// One environment variable that overrides a key of the file.
pub struct EnvOverride {
    /// The variable.
    pub var: &'static str,
    /// The dotted key it overrides.
    pub key: &'static str,
    /// Puts the variable's value into the parsed file.
    set: fn(&mut FerryConfig, String),
}

/// Every override, in the order they are applied.
#[rustfmt::skip]
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    row("FERRY_GATEWAY_ID", "gateway.id", |c, v| c.gateway.id = Some(v)),
    row("FERRY_STORE_PATH", "store.path", |c, v| c.store.path = v.into()),
    row("FERRY_DURABILITY", "store.durability", |c, v| c.store.durability = Word::parse(v)),
    row("FERRY_MAX_DB_SIZE", "store.max_db_size", |c, v| c.store.max_db_size = v),
    row("FERRY_WHEN_FULL", "store.when_full", |c, v| c.store.when_full = Word::parse(v)),
    row("FERRY_TCP_LISTEN", "devices.tcp_listen", |c, v| c.devices.tcp_listen = v),
    row("FERRY_UPLINK_BROKER", "uplink.broker", |c, v| c.uplink.broker = v),
    row("FERRY_UPLINK_PASSWORD", "uplink.password", |c, v| c.uplink.password = Some(v)),
    row("FERRY_API_LISTEN", "api.listen", |c, v| c.api.listen = v),
    row("FERRY_API_TOKEN", "api.token", |c, v| c.api.token = Some(v)),
    row("FERRY_API_TLS_CERT", "api.tls_cert", |c, v| c.api.tls_cert = v),
    row("FERRY_API_TLS_KEY", "api.tls_key", |c, v| c.api.tls_key = v),
    // Comma-separated paths or globs, each at the default baud rate.
    row("FERRY_SERIAL", "devices.serial", |c, v| {
        c.devices.serial = v
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| SerialConfig {
                path: p.trim().to_owned(),
                baud: default_baud(),
            })
            .collect()
    }),
];

/// A row of [`ENV_OVERRIDES`].
const fn row(
    var: &'static str,
    key: &'static str,
    set: fn(&mut FerryConfig, String),
) -> EnvOverride {
    EnvOverride { var, key, set }
}

/// Applies every variable that `env` finds; returns, per key it overrode, where the value came
/// from (`environment variable NAME`) for validation's messages.
pub(super) fn overlay(
    cfg: &mut FerryConfig,
    env: impl Fn(&str) -> Option<String>,
) -> HashMap<&'static str, String> {
    let mut origin = HashMap::new();
    for o in ENV_OVERRIDES {
        if let Some(v) = env(o.var) {
            (o.set)(cfg, v);
            origin.insert(o.key, format!("environment variable {}", o.var));
        }
    }
    origin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variable_sets_its_key_and_is_remembered_as_the_origin() {
        let mut cfg = FerryConfig::default();
        let origin = overlay(&mut cfg, |k| match k {
            "FERRY_GATEWAY_ID" => Some("gw".into()),
            "FERRY_SERIAL" => Some(" /dev/ttyACM*, ,/dev/ttyUSB0".into()),
            "FERRY_WHEN_FULL" => Some("never".into()),
            _ => None,
        });
        assert_eq!(cfg.gateway.id.as_deref(), Some("gw"));
        let serial: Vec<_> = cfg
            .devices
            .serial
            .iter()
            .map(|s| (s.path.as_str(), s.baud))
            .collect();
        assert_eq!(
            serial,
            [("/dev/ttyACM*", 115_200), ("/dev/ttyUSB0", 115_200)]
        );
        assert_eq!(cfg.store.when_full, Word::Unknown("never".into()));
        let mut keys: Vec<_> = origin.keys().copied().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["devices.serial", "gateway.id", "store.when_full"]);
        assert_eq!(
            origin["devices.serial"],
            "environment variable FERRY_SERIAL"
        );
    }

    #[test]
    fn every_row_names_a_distinct_variable_and_key() {
        let mut vars: Vec<_> = ENV_OVERRIDES.iter().map(|o| o.var).collect();
        let mut keys: Vec<_> = ENV_OVERRIDES.iter().map(|o| o.key).collect();
        vars.sort_unstable();
        vars.dedup();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!((vars.len(), keys.len()), (13, 13));
    }
}

//! `ferry.toml`: what the file may say ([`FerryConfig`]) and what the agent runs with ([`Settings`]).
//!
//! Rules: unknown keys are errors; every key has a default (a `const fn` or a `Default` impl), so an
//! empty file is a valid config; validation happens once, at load, and every error names the file
//! and the dotted key. Environment variables override the common keys (see [`ENV_OVERRIDES`]);
//! they are applied before validation, so their errors name the variable.
//!
//! Layout: [`file`] is the TOML schema (serde), [`env`] the environment overlay (one table of
//! variable, key and setter), [`validate`] the checks, [`settings`] the validated result. Loading
//! is parse, overlay, validate: [`Settings::load`].

mod env;
mod file;
mod settings;
mod validate;

use std::path::Path;

pub use env::{EnvOverride, ENV_OVERRIDES};
pub use file::{
    ApiConfig, DevicesConfig, FerryConfig, GatewayConfig, Keyword, MqttVersion, SerialConfig,
    StoreConfig, UplinkConfig, Word,
};
pub use settings::{
    ApiSettings, DevicesSettings, Durability, SerialSettings, Settings, StoreSettings, WhenFull,
};
pub use validate::{parse_duration, parse_size};

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
        let origin = env::overlay(&mut cfg, env);
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: origin.get(key).cloned().unwrap_or_else(|| file.to_owned()),
            key: key.to_owned(),
            message,
        };
        cfg.validate(file, invalid)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

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
            // An endless file is refused at 1 MiB, not read into memory.
            (
                "broker = \"h:1\"\nca_file = \"/dev/zero\"",
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
}

//! The TOML schema of `ferry.toml`: what the file may say, as serde types.
//!
//! Rules: unknown keys are errors (`deny_unknown_fields`); every key has a default (a `const fn`
//! or a `Default` impl), so an empty file is a valid config. Nothing here judges a value beyond its
//! TOML type: [`super::validate`] turns this into [`super::Settings`] and names the key of every
//! value it refuses.
//!
//! Keyword settings (`store.durability`, `store.when_full`, `uplink.protocol`, `uplink.encoding`,
//! `uplink.compression`) are serde enums, read through [`Word`]: a word that is none of the
//! enum's is kept as written instead of failing the whole parse, so validation can report it as
//! `` `key`: "word" is not one of ... `` naming the file or the environment variable it came from
//! (toml's own error for an unknown variant names neither the key nor where the value came from).

use std::path::PathBuf;

use ferry_contract::{Compression, Encoding};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

use super::{Durability, WhenFull};
use crate::uplink::Protocol;

/// A string setting with a fixed set of words: a serde enum whose accepted words are its
/// (renamed and aliased) variant names.
pub trait Keyword: DeserializeOwned + Copy {
    /// The words an error message lists (aliases are accepted but not listed).
    const WORDS: &'static [&'static str];
}

/// A keyword setting as written: a word of `T`, or the text that is none of them (refused by
/// validation, which knows the key and where the text came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word<T> {
    /// One of `T`'s words.
    Known(T),
    /// Not one of them, as written.
    Unknown(String),
}

impl<T: Keyword> Word<T> {
    /// Reads `text` as one of `T`'s words (exactly: no trimming, no case folding).
    pub fn parse(text: String) -> Self {
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            text.as_str().into_deserializer();
        match T::deserialize(de) {
            Ok(v) => Word::Known(v),
            Err(_) => Word::Unknown(text),
        }
    }

    /// The value, or the message for a word that is none of `T`'s.
    pub fn value(&self) -> Result<T, String> {
        match self {
            Word::Known(v) => Ok(*v),
            Word::Unknown(text) => {
                let words: Vec<String> = T::WORDS.iter().map(|w| format!("{w:?}")).collect();
                Err(format!("{text:?} is not one of {}", words.join(", ")))
            }
        }
    }
}

impl<'de, T: Keyword> Deserialize<'de> for Word<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A value that is not a string is a type error, reported by toml with its position.
        String::deserialize(d).map(Word::parse)
    }
}

impl Keyword for Durability {
    const WORDS: &'static [&'static str] = &["full", "normal"];
}

impl Keyword for WhenFull {
    const WORDS: &'static [&'static str] = &["drop_oldest", "backpressure"];
}

impl Keyword for Encoding {
    const WORDS: &'static [&'static str] = &["json", "binary"];
}

impl Keyword for Compression {
    const WORDS: &'static [&'static str] = &["none", "deflate"];
}

/// `uplink.protocol`: the MQTT version as people write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MqttVersion {
    /// MQTT 5 (the default).
    #[serde(rename = "5", alias = "5.0")]
    V5,
    /// MQTT 3.1.1 (protocol level 4).
    #[serde(rename = "3.1.1", alias = "4")]
    V311,
}

impl Keyword for MqttVersion {
    const WORDS: &'static [&'static str] = &["5", "3.1.1"];
}

impl From<MqttVersion> for Protocol {
    fn from(v: MqttVersion) -> Protocol {
        match v {
            MqttVersion::V5 => Protocol::V5,
            MqttVersion::V311 => Protocol::V311,
        }
    }
}

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
    /// `[firmware]`
    #[serde(default)]
    pub firmware: FirmwareConfig,
}

/// `[firmware]`: firmware updates of the devices behind the gateway.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareConfig {
    /// Public key files (PEM, or 64 hex digits) of the vendors whose bundles the gateway takes;
    /// empty: any bundle that verifies with the key it names (the devices check their own key).
    #[serde(default)]
    pub keys: Vec<String>,
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
    /// HTTPS: the certificate chain (PEM), with `tls_key`; `""` = plain HTTP.
    #[serde(default)]
    pub tls_cert: String,
    /// HTTPS: the certificate's private key (PEM), with `tls_cert`.
    #[serde(default)]
    pub tls_key: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            token: None,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

fn default_api_listen() -> String {
    "127.0.0.1:7878".into()
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
    pub protocol: Word<MqttVersion>,
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
    pub encoding: Word<Encoding>,
    /// `"none"` (default) or `"deflate"`.
    #[serde(default = "default_compression")]
    pub compression: Word<Compression>,
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

const fn default_protocol() -> Word<MqttVersion> {
    Word::Known(MqttVersion::V5)
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
const fn default_encoding() -> Word<Encoding> {
    Word::Known(Encoding::Json)
}
const fn default_compression() -> Word<Compression> {
    Word::Known(Compression::None)
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
    pub durability: Word<Durability>,
    /// Under sustained load, commit after this many samples ...
    #[serde(default = "default_flush_samples")]
    pub flush_samples: usize,
    /// ... or this long after the first uncommitted one, whichever comes first (an idle queue
    /// commits at once).
    #[serde(default = "default_flush_interval")]
    pub flush_interval: String,
    /// Acked samples (durable in the sample log from the ack on) reach the database within this
    /// long, or sooner in batches of 65,536 or when the log holds 8 MiB: longer means fewer writes, more to replay after a
    /// crash, and device figures (`last_seen`, heartbeats) that old in the API.
    #[serde(default = "default_tail_flush_after")]
    pub tail_flush_after: String,
    /// How long a sample may wait for others to share its commit before it is acked: `"0s"`
    /// commits as soon as the writer is free (ack p99 of a few ms); `"250ms"`..`"1s"` for SD
    /// cards (far fewer synced writes). At most 5 s. A device's ring must hold 16 times what it
    /// samples in this time (it keeps at most 1/16 of its ring unacknowledged).
    #[serde(default = "default_ack_budget")]
    pub ack_budget: String,
    /// Cap on the database's used size, e.g. `"2 GiB"`; `"0"` = no cap.
    #[serde(default = "default_max_db_size")]
    pub max_db_size: String,
    /// Forwarded events are kept this long, e.g. `"7d"`.
    #[serde(default = "default_keep_forwarded_for")]
    pub keep_forwarded_for: String,
    /// What to do when unforwarded data alone reaches the cap: `"drop_oldest"` or `"backpressure"`.
    #[serde(default = "default_when_full")]
    pub when_full: Word<WhenFull>,
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
            tail_flush_after: default_tail_flush_after(),
            ack_budget: default_ack_budget(),
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
const fn default_durability() -> Word<Durability> {
    Word::Known(Durability::Full)
}
const fn default_flush_samples() -> usize {
    20_000
}
fn default_tail_flush_after() -> String {
    "30s".into()
}
fn default_ack_budget() -> String {
    "0s".into()
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
const fn default_when_full() -> Word<WhenFull> {
    Word::Known(WhenFull::DropOldest)
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
pub(super) const fn default_baud() -> u32 {
    115_200
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words<T: Keyword + std::fmt::Debug + PartialEq>(extra: &[&str]) -> Vec<Result<T, String>> {
        T::WORDS
            .iter()
            .chain(extra)
            .map(|w| Word::<T>::parse((*w).to_owned()).value())
            .collect()
    }

    #[test]
    fn every_listed_word_is_accepted_and_aliases_too() {
        assert_eq!(
            words::<Durability>(&[]),
            [Ok(Durability::Full), Ok(Durability::Normal)]
        );
        assert_eq!(
            words::<WhenFull>(&[]),
            [Ok(WhenFull::DropOldest), Ok(WhenFull::Backpressure)]
        );
        assert_eq!(
            words::<Encoding>(&[]),
            [Ok(Encoding::Json), Ok(Encoding::Binary)]
        );
        assert_eq!(
            words::<Compression>(&[]),
            [Ok(Compression::None), Ok(Compression::Deflate)]
        );
        assert_eq!(
            words::<MqttVersion>(&["5.0", "4"]),
            [
                Ok(MqttVersion::V5),
                Ok(MqttVersion::V311),
                Ok(MqttVersion::V5),
                Ok(MqttVersion::V311)
            ]
        );
    }

    #[test]
    fn other_words_are_kept_and_refused_with_the_list() {
        for bad in ["Full", " full", "", "fast"] {
            let w = Word::<Durability>::parse(bad.to_owned());
            assert_eq!(w, Word::Unknown(bad.to_owned()));
            assert_eq!(
                w.value(),
                Err(format!("{bad:?} is not one of \"full\", \"normal\""))
            );
        }
        assert_eq!(
            Word::<MqttVersion>::parse("6".into()).value(),
            Err("\"6\" is not one of \"5\", \"3.1.1\"".into())
        );
    }
}

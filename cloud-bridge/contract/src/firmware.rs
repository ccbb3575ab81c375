//! Firmware updates from the cloud: a signed bundle sent to a gateway, an update request naming
//! devices and that bundle, and the gateway's answers (JSON, like command outcomes).
//!
//! A bundle travels as the MQTT message's payload, byte for byte the file `ferry firmware sign`
//! writes (the gateway verifies it); everything else is JSON with `"v": 1`.
//!
//! Invariants:
//! - An update request's `id` is chosen by the sender and names one update for good: a repeated id
//!   (a redelivered message) is answered with that update's current result, never started twice.
//! - Every update request gets an answer on `.../firmware/update/result`: `accepted` (with the
//!   gateway's `update` id) or `rejected` (with `detail`) at once, then one final result when every
//!   device's job ended: `done`, `stopped` or `cancelled`, with each device's state.

use serde::{Deserialize, Serialize};

use crate::{ContractError, SCHEMA_VERSION};

/// Longest update request id, in bytes.
pub const MAX_UPDATE_ID_LEN: usize = 64;

/// An update request on `ferry/v1/{gateway}/firmware/update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Chosen by the sender, 1..=64 bytes; echoed in every result.
    pub id: String,
    /// Device ids, or globs (`*`, `?`) over the devices the gateway knows.
    pub devices: Vec<String>,
    /// SHA-256 (64 hex digits) of a bundle the gateway stored (see `.../firmware/bundle`).
    pub bundle: String,
    /// Install even when the version is not newer.
    #[serde(default)]
    pub force: bool,
    /// Devices updated at once (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Failed devices tolerated before the update starts no more (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
}

impl UpdateRequest {
    /// Parses and checks a request.
    pub fn decode(payload: &[u8]) -> Result<UpdateRequest, ContractError> {
        let r: UpdateRequest =
            serde_json::from_slice(payload).map_err(|e| ContractError::Malformed(e.to_string()))?;
        if r.v != SCHEMA_VERSION {
            return Err(ContractError::UnsupportedVersion(r.v));
        }
        let bad = |m: String| Err(ContractError::InvalidCommand(m));
        if r.id.is_empty() || r.id.len() > MAX_UPDATE_ID_LEN {
            return bad(format!(
                "id is {} bytes; it must be 1..={MAX_UPDATE_ID_LEN} bytes",
                r.id.len()
            ));
        }
        if r.devices.is_empty() {
            return bad("devices: name at least one device id or glob".into());
        }
        if r.bundle.len() != 64 || !r.bundle.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("bundle: a bundle's SHA-256, 64 hex digits".into());
        }
        if r.concurrency == Some(0) {
            return bad("concurrency: at least 1".into());
        }
        Ok(r)
    }
}

/// First line of a bundle file (then a newline, the manifest as one JSON line, the image).
pub const BUNDLE_MAGIC: &str = "ferry-bundle 1";

/// The manifest line of a bundle file (`ferry firmware sign` writes it; the agent checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Image version (PROTOCOL.md section 9.5).
    pub version: String,
    /// Board the image is built for.
    pub board: String,
    /// Image length.
    pub length: u32,
    /// SHA-256 of the image, hex.
    pub sha256: String,
    /// ed25519 signature of the signed message (PROTOCOL.md section 9.4), hex.
    pub signature: String,
    /// The public key that signed it, hex.
    pub key: String,
}

/// What became of a bundle, on `ferry/v1/{gateway}/firmware/bundle/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleResult {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Gateway id.
    pub gateway: String,
    /// `stored` or `rejected`.
    pub status: BundleStatus,
    /// The image's SHA-256 (hex), when the bundle could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its board.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When (UTC ms).
    pub at_ms: i64,
}

/// A bundle's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleStatus {
    /// Verified and stored (or stored before).
    Stored,
    /// Not a bundle, or changed after signing, or signed with a key the gateway does not trust.
    Rejected,
}

/// An update's result, on `ferry/v1/{gateway}/firmware/update/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateResult {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The request's id (empty if the request was too malformed to have one).
    pub id: String,
    /// Gateway id.
    pub gateway: String,
    /// The gateway's id of the update (its local API's `/api/v1/firmware/updates/{update}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<i64>,
    /// Where it stands.
    pub status: UpdateResultStatus,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Each device's job.
    #[serde(default)]
    pub jobs: Vec<JobResult>,
    /// When (UTC ms).
    pub at_ms: i64,
}

/// An update's state in a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateResultStatus {
    /// Stored; the devices are being updated (a final result follows).
    Accepted,
    /// Not started (see `detail`).
    Rejected,
    /// Every job ended, failures within `max_failures`.
    Done,
    /// More failures than `max_failures`: no more devices were started.
    Stopped,
    /// Cancelled on the gateway.
    Cancelled,
}

/// One device's job in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// Device id.
    pub device: String,
    /// `queued`, `transferring`, `rebooting`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed (e.g. `not_newer`, `rolled_back`, `no_return`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_requests_parse_and_validate() {
        let sha = "ab".repeat(32);
        let ok = format!(r#"{{"v":1,"id":"u-1","devices":["line-*"],"bundle":"{sha}"}}"#);
        let r = UpdateRequest::decode(ok.as_bytes()).unwrap();
        assert_eq!(
            (r.force, r.concurrency, r.max_failures),
            (false, None, None)
        );
        for (bad, why) in [
            (
                format!(r#"{{"v":2,"id":"u","devices":["d"],"bundle":"{sha}"}}"#),
                "unsupported",
            ),
            (
                format!(r#"{{"v":1,"id":"","devices":["d"],"bundle":"{sha}"}}"#),
                "id is 0 bytes",
            ),
            (
                format!(r#"{{"v":1,"id":"u","devices":[],"bundle":"{sha}"}}"#),
                "devices",
            ),
            (
                r#"{"v":1,"id":"u","devices":["d"],"bundle":"abc"}"#.to_owned(),
                "bundle",
            ),
            (
                format!(r#"{{"v":1,"id":"u","devices":["d"],"bundle":"{sha}","concurrency":0}}"#),
                "concurrency",
            ),
            (
                format!(r#"{{"v":1,"id":"u","devices":["d"],"bundle":"{sha}","extra":1}}"#),
                "unknown field",
            ),
        ] {
            let e = UpdateRequest::decode(bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}

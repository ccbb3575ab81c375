//! The gateway's retained status message (birth and last will).

use serde::{Deserialize, Serialize};

/// Retained on `ferry/v1/{gateway}/status`: the birth message on connect, and the last will the
/// broker publishes if the gateway vanishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
    pub v: u32,
    /// Gateway id.
    pub gateway: String,
    /// Whether the gateway is connected.
    pub state: LinkState,
    /// When the gateway published this (for the last will: when it connected), UTC ms.
    pub at_ms: i64,
    /// Agent version.
    pub agent: String,
}

/// `online` or `offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Connected (birth message).
    Online,
    /// Disconnected (last will, or a clean shutdown).
    Offline,
}

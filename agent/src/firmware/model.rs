//! What the firmware service shows: bundles, update requests, updates and their jobs, as the local
//! API, the event stream and the CLI see them (JSON).

use serde::{Deserialize, Serialize};

use super::rollout;

/// A stored bundle, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BundleInfo {
    /// SHA-256 of the image (hex): the bundle's id.
    pub sha256: String,
    /// Version.
    pub version: String,
    /// Board.
    pub board: String,
    /// Image bytes.
    pub length: u32,
    /// Signing key (hex).
    pub key: String,
    /// When it was stored (UTC ms).
    pub added_ms: i64,
}

/// What a rollout is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Device ids, or globs (`*`, `?`) matched against the devices the gateway knows.
    pub devices: Vec<String>,
    /// The bundle's SHA-256 (hex).
    pub bundle: String,
    /// Install even when the version is not newer.
    #[serde(default)]
    pub force: bool,
    /// Devices updated at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// The rollout stops starting jobs once more than this many failed.
    #[serde(default)]
    pub max_failures: u32,
}

fn default_concurrency() -> u32 {
    rollout::DEFAULT_CONCURRENCY
}

/// A job, as the API and the event stream show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobView {
    /// Job id (the transfer id on the wire).
    pub id: i64,
    /// Its rollout.
    pub rollout: i64,
    /// Device id.
    pub device: String,
    /// `queued`, `transferring`, `rebooting`, `done`, `failed`, `cancelled`.
    pub state: String,
    /// Image bytes the device holds.
    pub offset: u32,
    /// Image length.
    pub length: u32,
    /// Begins sent.
    pub attempts: u32,
    /// Why it failed (a device error such as `not_newer`, or `too_many_attempts`, `no_return`,
    /// `rollout_stopped`).
    pub error: Option<String>,
    /// The version being installed.
    pub version: String,
    /// Last change (UTC ms).
    pub updated_ms: i64,
}

/// A rollout, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RolloutView {
    /// Rollout id.
    pub id: i64,
    /// The bundle.
    pub bundle: String,
    /// Its version.
    pub version: String,
    /// `running`, `done`, `stopped` (too many failures), `cancelled`.
    pub state: String,
    /// Devices at once.
    pub concurrency: u32,
    /// Failures tolerated.
    pub max_failures: u32,
    /// Created (UTC ms).
    pub created_ms: i64,
    /// Its jobs.
    pub jobs: Vec<JobView>,
}

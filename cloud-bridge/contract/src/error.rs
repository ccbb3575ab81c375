//! Why a payload was refused: one error type for every payload of the contract.

use crate::SCHEMA_VERSION;

/// Why a payload was refused. The `Display` text is what dead-letter rows and quarantine rows
/// record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// Not JSON, not binary, or not the expected shape.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A `v` this build does not understand.
    #[error("unsupported schema version {0} (this build reads {SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
    /// A well-formed event batch that breaks a rule of the contract.
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// A well-formed command request that breaks a rule of the contract; names the field.
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The topic's gateway or device differs from the payload's.
    #[error("topic names {topic} but the payload says {payload}")]
    TopicMismatch {
        /// From the topic.
        topic: String,
        /// From the payload.
        payload: String,
    },
    /// Inflating the payload failed or exceeded [`MAX_INFLATED_LEN`](crate::MAX_INFLATED_LEN).
    #[error("bad compression: {0}")]
    Compression(String),
}

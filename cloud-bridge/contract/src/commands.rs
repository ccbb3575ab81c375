//! Downlink commands and their outcomes (JSON only), and the hex their bytes travel in.
//!
//! Invariant: a [`CommandRequest`] that [`CommandRequest::decode`] returns has a supported
//! version, an id of 1..=[`MAX_COMMAND_ID_LEN`] bytes and, for `opaque`, valid hex of at most
//! [`MAX_OPAQUE_LEN`] bytes; any other request is refused with the field named.

use serde::{Deserialize, Serialize};

use crate::{ContractError, SCHEMA_VERSION};

/// A downlink command on `ferry/v1/{gateway}/{device}/commands` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Chosen by the sender, echoed in the result; 1..=64 bytes. A repeated id is executed once.
    pub id: String,
    /// What the device should do.
    pub command: CommandSpec,
    /// Seconds the gateway keeps the command while the device is offline (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u32>,
}

/// The device commands of the link protocol, in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandSpec {
    /// Change one sensor's sampling interval (0 disables the sensor).
    SetInterval {
        /// Sensor index from the device's Hello.
        sensor: u8,
        /// New interval in milliseconds.
        interval_ms: u32,
    },
    /// Make the device visible (blink an LED) for a while.
    Identify {
        /// How long, in milliseconds.
        duration_ms: u32,
    },
    /// Reset the device.
    Reboot,
    /// Application-defined bytes (hex, up to 128 bytes).
    Opaque {
        /// The bytes, as lowercase or uppercase hex.
        hex: String,
    },
}

/// Longest command id.
pub const MAX_COMMAND_ID_LEN: usize = 64;
/// Longest opaque command payload in bytes.
pub const MAX_OPAQUE_LEN: usize = 128;
/// Default command time to live.
pub const DEFAULT_COMMAND_TTL_S: u32 = 300;

impl CommandRequest {
    /// Parses and validates a downlink payload.
    pub fn decode(payload: &[u8]) -> Result<CommandRequest, ContractError> {
        let r: CommandRequest =
            serde_json::from_slice(payload).map_err(|e| ContractError::Malformed(e.to_string()))?;
        if r.v != SCHEMA_VERSION {
            return Err(ContractError::UnsupportedVersion(r.v));
        }
        if r.id.is_empty() || r.id.len() > MAX_COMMAND_ID_LEN {
            return Err(ContractError::InvalidCommand(format!(
                "id is {} bytes; it must be 1..={MAX_COMMAND_ID_LEN} bytes",
                r.id.len()
            )));
        }
        if let CommandSpec::Opaque { hex } = &r.command {
            let bytes = decode_hex(hex).ok_or_else(|| {
                ContractError::InvalidCommand("command.opaque.hex is not hex".into())
            })?;
            if bytes.len() > MAX_OPAQUE_LEN {
                return Err(ContractError::InvalidCommand(format!(
                    "command.opaque.hex is {} bytes; it must be at most {MAX_OPAQUE_LEN}",
                    bytes.len()
                )));
            }
        }
        Ok(r)
    }
}

/// Outcome of a command, on `.../commands/result` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutcome {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// The request's id (empty if the request was too malformed to have one).
    pub id: String,
    /// Gateway id.
    pub gateway: String,
    /// Device id, as in the request's topic (for `rejected`, possibly one the contract refuses).
    pub device: String,
    /// Outcome.
    pub status: OutcomeStatus,
    /// Human-readable detail for anything but `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Result bytes from the device, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hex: Option<String>,
    /// When the gateway learned the outcome, UTC ms.
    pub at_ms: i64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The device did it (for `reboot`: took it, and resets right after answering).
    Ok,
    /// The device has no such sensor.
    UnknownSensor,
    /// The device refused an argument as out of range.
    InvalidArgument,
    /// The device does not implement the command.
    Unsupported,
    /// The device tried and failed.
    Failed,
    /// No answer from the device before the command's TTL (it was offline, or had the command
    /// and did not answer in time).
    Expired,
    /// The gateway refused the request (malformed, or breaking a rule of the contract, such as a
    /// device id the device link cannot carry); `detail` names the field.
    Rejected,
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex (either case); `None` if malformed.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // Checked up front: `u8::from_str_radix` alone would take a sign (`"+f"`).
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_validate() {
        let r = CommandRequest::decode(
            br#"{"v":1,"id":"c1","command":{"set_interval":{"sensor":0,"interval_ms":100}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.command,
            CommandSpec::SetInterval {
                sensor: 0,
                interval_ms: 100
            }
        );
        assert!(CommandRequest::decode(br#"{"v":1,"id":"c1","command":"reboot"}"#).is_ok());
        assert!(CommandRequest::decode(br#"{"v":1,"id":"","command":"reboot"}"#).is_err());
        assert!(
            CommandRequest::decode(br#"{"v":1,"id":"x","command":{"opaque":{"hex":"zz"}}}"#)
                .is_err()
        );
        assert!(CommandRequest::decode(br#"{"v":1,"id":"x","command":"explode"}"#).is_err());
        assert_eq!(decode_hex(&encode_hex(&[0, 1, 255])), Some(vec![0, 1, 255]));
        assert_eq!(decode_hex("0A0b"), Some(vec![10, 11]));
        assert_eq!(decode_hex("+f+f"), None);
    }

    #[test]
    fn command_errors_name_the_field() {
        let long = format!(r#"{{"v":1,"id":"{}","command":"reboot"}}"#, "i".repeat(65));
        let e = CommandRequest::decode(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid command: id is 65 bytes; it must be 1..=64 bytes"
        );
        let e = CommandRequest::decode(br#"{"v":1,"id":"x","command":{"opaque":{"hex":"zz"}}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid command: command.opaque.hex is not hex");
    }
}

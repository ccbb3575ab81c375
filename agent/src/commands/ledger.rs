//! The commands' policy as plain data (no I/O): which commands are pending, when each is written
//! to its device, and how it ends. The actor in [`super`] owns one [`Ledger`], stores what it
//! decides and carries its writes to the links.
//!
//! A command's life: **accepted** (stored; waits for its device) → **written** (handed to the link
//! of one boot of its device) → **done**: the device's result (`ok`, `unknown_sensor`,
//! `invalid_argument`, `unsupported`, `failed`) or `expired` once its TTL has passed. A request
//! for a device id the link protocol cannot carry is `rejected` and never accepted.
//!
//! Invariants:
//! - Wire ids are the stored rows' ids: allocated in order, never reused.
//! - A pending command is written when it is accepted while its device is attached, and again
//!   on every attach (every Hello: the device executes a repeated id once), in id order. The
//!   exception: a `reboot` written to one boot of its device is not written to a later boot. The
//!   device reset since it took the command (it answers before resetting; the answer was lost),
//!   and writing it again would reset the device again on every Hello until the TTL, each time
//!   losing the samples it held.
//! - A command ends exactly once: with a result from its own device, or at `expires_ms`
//!   (inclusive). A result for an unknown id, another device's id, or an ended command is ignored.
//! - An `expired` outcome says whether the command was written to the device in this run of the
//!   agent: it may have been executed. (Across a restart the ledger knows only what is stored:
//!   accepted, not written.)

use std::collections::{BTreeMap, HashMap};

use ferry_contract::{
    self as contract, CommandOutcome, CommandRequest, CommandSpec, OutcomeStatus,
    DEFAULT_COMMAND_TTL_S,
};
use ferry_wire::CommandStatus;

use super::{check_device_id, DeviceCommand};

/// `detail` of an `expired` command that was never written to its device.
pub const EXPIRED_UNREACHABLE: &str = "the device was not reachable before the command's TTL";
/// `detail` of an `expired` command that was written to its device and not answered.
pub const EXPIRED_UNANSWERED: &str =
    "the device did not answer before the command's TTL; it was sent the command and may have executed it";

/// A command waiting for its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Device id.
    pub device: String,
    /// The sender's id, echoed in the outcome.
    pub request_id: String,
    /// What to do.
    pub spec: CommandSpec,
    /// When it expires (UTC ms).
    pub expires_ms: i64,
    /// The boot of the device whose link it was last handed to (in this run).
    written_to: Option<u32>,
}

/// A command to store before it is accepted ([`Ledger::accept`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Row id and wire id.
    pub id: i64,
    /// Device id.
    pub device: String,
    /// The sender's id.
    pub request_id: String,
    /// What to do.
    pub spec: CommandSpec,
    /// When it was received (UTC ms).
    pub received_ms: i64,
    /// When it expires (UTC ms).
    pub expires_ms: i64,
}

/// A command that ended: store its outcome, then publish it.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Its wire id (row id).
    pub wire_id: u32,
    /// The outcome.
    pub outcome: CommandOutcome,
}

/// The pending commands and the devices attached now.
#[derive(Debug)]
pub struct Ledger {
    gateway: String,
    pending: BTreeMap<u32, Pending>,
    next_id: i64,
    /// Devices with a link, and the boot on it.
    attached: HashMap<String, u32>,
}

impl Ledger {
    /// An empty ledger for `gateway` whose next wire id is `next_id` (one past the stored ones).
    pub fn new(gateway: String, next_id: i64) -> Self {
        Ledger {
            gateway,
            pending: BTreeMap::new(),
            next_id,
            attached: HashMap::new(),
        }
    }

    /// A pending command read from the store at start.
    pub fn restore(
        &mut self,
        id: u32,
        device: String,
        request_id: String,
        spec: CommandSpec,
        expires_ms: i64,
    ) {
        self.pending.insert(
            id,
            Pending {
                device,
                request_id,
                spec,
                expires_ms,
                written_to: None,
            },
        );
    }

    /// The pending commands, in id order.
    pub fn pending(&self) -> impl Iterator<Item = (u32, &Pending)> {
        self.pending.iter().map(|(id, p)| (*id, p))
    }

    /// The `rejected` outcome for a request no device can take (its device id cannot be carried
    /// by the link protocol), or `None` for one that may be accepted.
    pub fn rejection(&self, device: &str, request_id: &str, now_ms: i64) -> Option<CommandOutcome> {
        let e = check_device_id(device).err()?;
        Some(self.outcome(
            device,
            request_id,
            OutcomeStatus::Rejected,
            Some(format!("device id (topic level): {e}")),
            None,
            now_ms,
        ))
    }

    /// Whether a command with this request id is pending for the device.
    pub fn is_pending(&self, device: &str, request_id: &str) -> bool {
        self.pending
            .values()
            .any(|p| p.device == device && p.request_id == request_id)
    }

    /// A new command received at `now_ms`, with the next wire id (taken even if storing fails).
    pub fn prepare(&mut self, device: String, request: CommandRequest, now_ms: i64) -> NewCommand {
        let id = self.next_id;
        self.next_id += 1;
        let ttl_s = request.ttl_s.unwrap_or(DEFAULT_COMMAND_TTL_S);
        NewCommand {
            id,
            device,
            request_id: request.id,
            spec: request.command,
            received_ms: now_ms,
            expires_ms: now_ms + i64::from(ttl_s) * 1000,
        }
    }

    /// The command is stored: it is pending, and returned for writing if its device is attached.
    pub fn accept(&mut self, c: NewCommand) -> Option<DeviceCommand> {
        let wire_id = c.id as u32;
        let attached = self.attached.contains_key(&c.device);
        let spec = c.spec.clone();
        self.pending.insert(
            wire_id,
            Pending {
                device: c.device,
                request_id: c.request_id,
                spec: c.spec,
                expires_ms: c.expires_ms,
                written_to: None,
            },
        );
        attached.then_some(DeviceCommand { wire_id, spec })
    }

    /// The device was welcomed on a link in boot `boot_id`: its pending commands to write there,
    /// in id order.
    pub fn attach(&mut self, device: &str, boot_id: u32) -> Vec<DeviceCommand> {
        self.attached.insert(device.to_owned(), boot_id);
        self.pending
            .iter()
            .filter(|(_, p)| p.device == device)
            .filter(|(id, p)| {
                let reset_since = matches!(p.spec, CommandSpec::Reboot)
                    && p.written_to.is_some_and(|b| b != boot_id);
                if reset_since {
                    tracing::info!(%device, request = %p.request_id, wire_id = **id, "Not writing a reboot again: the device reset since it took it.");
                }
                !reset_since
            })
            .map(|(id, p)| DeviceCommand {
                wire_id: *id,
                spec: p.spec.clone(),
            })
            .collect()
    }

    /// The device's link closed.
    pub fn detach(&mut self, device: &str) {
        self.attached.remove(device);
    }

    /// Command `wire_id` was handed to its device's link.
    pub fn written(&mut self, wire_id: u32) {
        if let Some(p) = self.pending.get_mut(&wire_id) {
            if let Some(boot) = self.attached.get(&p.device) {
                p.written_to = Some(*boot);
            }
        }
    }

    /// A device answered command `wire_id` at `now_ms`: its outcome, if the command was pending
    /// for that device.
    pub fn result(
        &mut self,
        device: &str,
        wire_id: u32,
        status: CommandStatus,
        data: &[u8],
        now_ms: i64,
    ) -> Option<Finished> {
        if self.pending.get(&wire_id)?.device != device {
            return None;
        }
        let p = self.pending.remove(&wire_id)?;
        let data_hex = (!data.is_empty()).then(|| contract::encode_hex(data));
        let outcome = self.outcome(
            &p.device,
            &p.request_id,
            outcome_status(status),
            None,
            data_hex,
            now_ms,
        );
        Some(Finished { wire_id, outcome })
    }

    /// The commands whose TTL has passed at `now_ms`, ended `expired`.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Finished> {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.expires_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| {
                let p = self.pending.remove(&id)?;
                let detail = match p.written_to {
                    None => EXPIRED_UNREACHABLE,
                    Some(_) => EXPIRED_UNANSWERED,
                };
                let outcome = self.outcome(
                    &p.device,
                    &p.request_id,
                    OutcomeStatus::Expired,
                    Some(detail.into()),
                    None,
                    now_ms,
                );
                Some(Finished {
                    wire_id: id,
                    outcome,
                })
            })
            .collect()
    }

    fn outcome(
        &self,
        device: &str,
        request_id: &str,
        status: OutcomeStatus,
        detail: Option<String>,
        data_hex: Option<String>,
        at_ms: i64,
    ) -> CommandOutcome {
        CommandOutcome {
            v: contract::SCHEMA_VERSION,
            id: request_id.to_owned(),
            gateway: self.gateway.clone(),
            device: device.to_owned(),
            status,
            detail,
            data_hex,
            at_ms,
        }
    }
}

fn outcome_status(s: CommandStatus) -> OutcomeStatus {
    match s {
        CommandStatus::Ok => OutcomeStatus::Ok,
        CommandStatus::UnknownSensor => OutcomeStatus::UnknownSensor,
        CommandStatus::InvalidArgument => OutcomeStatus::InvalidArgument,
        CommandStatus::Unsupported => OutcomeStatus::Unsupported,
        CommandStatus::Failed => OutcomeStatus::Failed,
    }
}

#[cfg(test)]
mod tests;

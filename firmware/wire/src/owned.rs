//! Owned copies of device → gateway messages, for gateways and tests that keep what they decode
//! past the frame buffer (`alloc` feature). The borrowed [`Message`] stays the protocol's
//! definition; this is a copy of it, never a second encoding.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use crate::{CommandStatus, Heartbeat, Message, Sample, UpdateStatus};

/// A device → gateway message, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    /// See [`crate::Hello`].
    Hello {
        /// Device id.
        device_id: String,
        /// Firmware version.
        firmware: String,
        /// Boot id.
        boot_id: u32,
        /// Tick rate (ticks per second).
        tick_hz: u32,
        /// Tick counter when sent.
        ticks: u64,
        /// Next new seq.
        next_seq: u32,
        /// `(index, name, unit, interval_ms)`.
        sensors: Vec<(u8, String, String, u32)>,
    },
    /// See [`crate::Samples`].
    Samples {
        /// Oldest held seq.
        oldest: u32,
        /// Seq of `samples[0]`.
        first_seq: u32,
        /// The samples.
        samples: Vec<Sample>,
    },
    /// See [`crate::Heartbeat`].
    Heartbeat(Heartbeat),
    /// See [`crate::CommandResult`].
    CommandResult {
        /// Command id.
        id: u32,
        /// Outcome.
        status: CommandStatus,
        /// Result payload.
        data: Vec<u8>,
    },
    /// See [`crate::UpdateStatus`].
    UpdateStatus(UpdateStatus),
}

impl DeviceMessage {
    /// Copies a device → gateway message; `None` for gateway → device messages.
    pub fn from_message(m: &Message<'_>) -> Option<DeviceMessage> {
        Some(match m {
            Message::Hello(h) => DeviceMessage::Hello {
                device_id: h.device_id.to_owned(),
                firmware: h.firmware.to_owned(),
                boot_id: h.boot_id,
                tick_hz: h.tick_hz,
                ticks: h.ticks,
                next_seq: h.next_seq,
                sensors: h
                    .sensors
                    .iter()
                    .map(|s| (s.index, s.name.to_owned(), s.unit.to_owned(), s.interval_ms))
                    .collect(),
            },
            Message::Samples(s) => DeviceMessage::Samples {
                oldest: s.oldest,
                first_seq: s.first_seq,
                samples: s.samples.to_vec(),
            },
            Message::Heartbeat(h) => DeviceMessage::Heartbeat(*h),
            Message::CommandResult(r) => DeviceMessage::CommandResult {
                id: r.id,
                status: r.status,
                data: r.data.to_vec(),
            },
            Message::UpdateStatus(s) => DeviceMessage::UpdateStatus(*s),
            _ => return None,
        })
    }
}

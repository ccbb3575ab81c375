//! Every message of the device link, in one tag space for both directions.
//!
//! The postcard encoding of these types *is* the protocol: field order, enum variant order and
//! integer widths must never change within a protocol version. Tags 0..=3 and 8 travel device →
//! gateway, 4..=7 and 9..=12 gateway → device; a side that receives a message meant for the other
//! direction treats it as unexpected (this catches echoing links such as a pty left in cooked mode).
//! Tags 8..=12 are the firmware update messages (section 9), added after the others: new variants
//! only ever go at the end.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::update::{begin_is_valid, chunk_is_valid, status_is_valid};
use crate::{
    UpdateAbort, UpdateBegin, UpdateChunk, UpdateCommit, UpdateStatus, LAST_SEQ, MAX_DEVICE_ID_LEN,
    MAX_FIRMWARE_LEN, MAX_OPAQUE_LEN, MAX_SAMPLES_PER_FRAME, MAX_SENSORS, MAX_SENSOR_NAME_LEN,
    MAX_UNIT_LEN,
};

/// Names never contain U+0000 (decision D3: ids, names and units travel into C strings, SQL and
/// MQTT topics, where NUL truncates or is refused).
fn no_nul(s: &str) -> bool {
    !s.as_bytes().contains(&0)
}

/// One message of the device link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message<'a> {
    /// Tag 0, device → gateway: announces the device and its boot; repeated until [`Message::Welcome`].
    Hello(#[serde(borrow)] Hello<'a>),
    /// Tag 1, device → gateway: a run of samples with consecutive sequence numbers.
    Samples(Samples),
    /// Tag 2, device → gateway: liveness and ring statistics.
    Heartbeat(Heartbeat),
    /// Tag 3, device → gateway: outcome of a [`Message::Command`].
    CommandResult(#[serde(borrow)] CommandResult<'a>),
    /// Tag 4, gateway → device: answer to [`Message::Hello`].
    Welcome(Welcome),
    /// Tag 5, gateway → device: cumulative acknowledgement.
    Ack(Ack),
    /// Tag 6, gateway → device: a command to execute.
    Command(#[serde(borrow)] Command<'a>),
    /// Tag 7, gateway → device: "who are you?" — the device answers with a Hello at once.
    HelloRequest,
    /// Tag 8, device → gateway: where the device's firmware update stands.
    UpdateStatus(UpdateStatus),
    /// Tag 9, gateway → device: start or resume writing an image.
    UpdateBegin(#[serde(borrow)] UpdateBegin<'a>),
    /// Tag 10, gateway → device: image bytes.
    UpdateChunk(#[serde(borrow)] UpdateChunk<'a>),
    /// Tag 11, gateway → device: verify the written image, mark it and reset into it.
    UpdateCommit(UpdateCommit),
    /// Tag 12, gateway → device: forget a transfer.
    UpdateAbort(UpdateAbort),
}

impl Message<'_> {
    /// True for messages a device sends (tags 0..=3 and 8).
    pub const fn is_uplink(&self) -> bool {
        matches!(
            self,
            Message::Hello(_)
                | Message::Samples(_)
                | Message::Heartbeat(_)
                | Message::CommandResult(_)
                | Message::UpdateStatus(_)
        )
    }

    /// Checks the limits postcard cannot express (PROTOCOL.md section 1, "Limits"): string lengths,
    /// empty ids, NUL in strings, unique sensor indexes, `tick_hz > 0`, `oldest <= first_seq`, and
    /// no sequence number above [`LAST_SEQ`]; for the update messages, the limits of section 9.
    pub fn is_valid(&self) -> bool {
        match self {
            Message::Hello(h) => {
                !h.device_id.is_empty()
                    && h.device_id.len() <= MAX_DEVICE_ID_LEN
                    && h.firmware.len() <= MAX_FIRMWARE_LEN
                    && no_nul(h.device_id)
                    && no_nul(h.firmware)
                    && h.tick_hz > 0
                    && h.sensors.iter().all(|s| {
                        s.name.len() <= MAX_SENSOR_NAME_LEN
                            && s.unit.len() <= MAX_UNIT_LEN
                            && no_nul(s.name)
                            && no_nul(s.unit)
                    })
                    && h.sensors
                        .iter()
                        .enumerate()
                        .all(|(i, s)| h.sensors[..i].iter().all(|o| o.index != s.index))
            }
            Message::Samples(s) => {
                // The last sample's seq (first_seq + count - 1), computed without overflow.
                let end = u64::from(s.first_seq) + s.samples.len() as u64;
                !s.samples.is_empty() && s.oldest <= s.first_seq && end - 1 <= u64::from(LAST_SEQ)
            }
            Message::CommandResult(r) => r.data.len() <= MAX_OPAQUE_LEN,
            Message::Command(c) => match c.kind {
                CommandKind::Opaque(d) => d.len() <= MAX_OPAQUE_LEN,
                _ => true,
            },
            Message::UpdateStatus(s) => status_is_valid(s),
            Message::UpdateBegin(b) => begin_is_valid(b),
            Message::UpdateChunk(c) => chunk_is_valid(c),
            Message::UpdateCommit(c) => c.id != 0,
            Message::UpdateAbort(a) => a.id != 0,
            Message::Heartbeat(_)
            | Message::Welcome(_)
            | Message::Ack(_)
            | Message::HelloRequest => true,
        }
    }
}

/// Device announcement, sent after boot and whenever the device (re)connects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello<'a> {
    /// Stable device identity, 1..=32 bytes of UTF-8.
    pub device_id: &'a str,
    /// Firmware version, up to 32 bytes of UTF-8.
    pub firmware: &'a str,
    /// Identifies this boot; a new value on every reset. Samples are keyed by `(device, boot, seq)`.
    pub boot_id: u32,
    /// Rate of the device tick counter, in ticks per second (must be > 0).
    pub tick_hz: u32,
    /// Tick counter when this Hello was sent (lets the gateway map ticks to UTC).
    pub ticks: u64,
    /// Sequence number the next new sample of this boot will get.
    pub next_seq: u32,
    /// The sensor table; `index` values are unique.
    #[serde(borrow)]
    pub sensors: Vec<SensorInfo<'a>, MAX_SENSORS>,
}

/// One entry of the sensor table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorInfo<'a> {
    /// Index used by [`Sample::sensor`].
    pub index: u8,
    /// Name, up to 24 bytes of UTF-8 (e.g. `temperature`).
    pub name: &'a str,
    /// Unit, up to 12 bytes of UTF-8 (e.g. `°C`).
    pub unit: &'a str,
    /// Current sampling interval in milliseconds (0 = disabled).
    pub interval_ms: u32,
}

/// A run of samples with consecutive sequence numbers `first_seq, first_seq + 1, …`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Oldest sequence number the device still holds unacknowledged. Sequence numbers below it that
    /// the gateway has not received are gone for good (dropped by the device and counted).
    pub oldest: u32,
    /// Sequence number of `samples[0]`.
    pub first_seq: u32,
    /// 1..=32 samples.
    pub samples: Vec<Sample, MAX_SAMPLES_PER_FRAME>,
}

impl Samples {
    /// Iterates `(seq, sample)` pairs.
    pub fn iter_seq(&self) -> impl Iterator<Item = (u32, &Sample)> {
        (self.first_seq..).zip(self.samples.iter())
    }
}

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Device tick counter at the scheduled sampling time.
    pub ticks: u64,
    /// Sensor index from the Hello sensor table.
    pub sensor: u8,
    /// The reading, in the sensor's unit.
    pub value: f32,
}

/// Periodic device status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Tick counter now.
    pub ticks: u64,
    /// Samples dropped this boot because the unacked ring was full (oldest first).
    pub dropped: u32,
    /// Samples currently held unacknowledged.
    pub ring_depth: u16,
    /// Sensor reads that failed this boot (no sample was produced for them).
    pub read_errors: u32,
}

/// Outcome of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult<'a> {
    /// The command's id.
    pub id: u32,
    /// Outcome.
    pub status: CommandStatus,
    /// Optional result payload, up to 128 bytes.
    pub data: &'a [u8],
}

/// Outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandStatus {
    /// Tag 0: done.
    Ok,
    /// Tag 1: the command names a sensor index the device does not have.
    UnknownSensor,
    /// Tag 2: an argument is out of range.
    InvalidArgument,
    /// Tag 3: the device does not implement this command.
    Unsupported,
    /// Tag 4: the device tried and failed.
    Failed,
}

/// Answer to a Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The `boot_id` of the Hello being answered; a device ignores a Welcome for another boot.
    pub boot_id: u32,
    /// Gateway wall-clock time, milliseconds since the Unix epoch (UTC).
    pub utc_ms: u64,
    /// Every sample of this boot with `seq < next_seq` is already durable at the gateway.
    pub next_seq: u32,
}

/// Cumulative acknowledgement: every sample of `boot_id` with `seq < next_seq` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Boot the ack belongs to; a device ignores acks for another boot.
    pub boot_id: u32,
    /// One past the highest acknowledged sequence number.
    pub next_seq: u32,
}

/// A command for the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command<'a> {
    /// Chosen by the gateway; the device answers with a [`CommandResult`] of the same id and
    /// executes a repeated id only once.
    pub id: u32,
    /// What to do.
    #[serde(borrow)]
    pub kind: CommandKind<'a>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind<'a> {
    /// Tag 0: change one sensor's sampling interval (0 disables the sensor).
    SetInterval {
        /// Sensor index.
        sensor: u8,
        /// New interval in milliseconds.
        interval_ms: u32,
    },
    /// Tag 1: make the device visible (blink an LED) for a while.
    Identify {
        /// How long, in milliseconds.
        duration_ms: u32,
    },
    /// Tag 2: reset the device (after answering).
    Reboot,
    /// Tag 3: application-defined bytes, up to 128.
    Opaque(&'a [u8]),
}

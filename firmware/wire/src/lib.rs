//! The Ferry device link protocol, shared by firmware and gateway.
//!
//! This crate is the only place the protocol is defined (see `PROTOCOL.md` next to this crate for the
//! language-neutral specification and its golden vectors). It is `#![no_std]` and never allocates; the `alloc` feature adds
//! owned copies of device messages ([`owned`]) for gateways.
//!
//! A frame on the wire is
//!
//! ```text
//! 0x00 | COBS( version:u8 · postcard(Message) · crc32:u32-le ) | 0x00
//! ```
//!
//! Invariants:
//! - [`encode`] produces exactly that; [`Decoder`] accepts it from arbitrary byte chunks.
//! - Every delimited run of bytes that is not a valid frame is reported once, with a [`RejectReason`];
//!   empty runs (two delimiters in a row) are silent padding.
//! - Because each frame starts *and* ends with a delimiter, bytes injected between two frames can never
//!   corrupt either of them.
//! - No frame longer than [`MAX_FRAME_LEN`] encoded bytes is ever produced or accepted.
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

#[cfg(feature = "alloc")]
extern crate alloc;

mod accept;
mod cobs;
mod codec;
mod decoder;
mod message;
#[cfg(feature = "alloc")]
pub mod owned;
pub mod update;

pub use accept::{Accepted, Acceptor};
pub use codec::{decode_body, encode, EncodeError};
pub use decoder::{Decoder, Rejected};
pub use message::*;
pub use update::{
    UpdateAbort, UpdateBegin, UpdateChunk, UpdateCommit, UpdateError, UpdateState, UpdateStatus,
    MAX_CHUNK_LEN,
};

/// Protocol version carried in the first byte of every frame body.
pub const PROTOCOL_VERSION: u8 = 1;

/// Frame delimiter byte.
pub const DELIMITER: u8 = 0x00;

/// Maximum COBS-encoded length of one frame, delimiters excluded.
pub const MAX_FRAME_LEN: usize = 1024;

/// Maximum length of a frame body (version + message + CRC) before COBS encoding.
///
/// COBS adds one byte per 254 bytes plus one; `1016 + 1 + 1016/254 = 1021 <= MAX_FRAME_LEN`.
pub const MAX_BODY_LEN: usize = 1016;

/// Buffer size that always holds one complete encoded frame including both delimiters.
pub const MAX_ENCODED_LEN: usize = MAX_FRAME_LEN + 2;

/// The last usable sequence number of a boot. `0xFFFF_FFFF` can never be acknowledged (the
/// [`Ack`] that covers it would need `next_seq = 2^32`), so a `Samples` message carrying it is
/// malformed; a device whose boot has used `LAST_SEQ` starts a new boot.
pub const LAST_SEQ: u32 = 0xFFFF_FFFE;

/// Maximum number of samples in one [`Samples`] frame.
pub const MAX_SAMPLES_PER_FRAME: usize = 32;

/// Maximum number of entries in a [`Hello`] sensor table.
pub const MAX_SENSORS: usize = 16;

/// Maximum length in bytes of a device id.
pub const MAX_DEVICE_ID_LEN: usize = 32;

/// Maximum length in bytes of a firmware version string.
pub const MAX_FIRMWARE_LEN: usize = 32;

/// Maximum length in bytes of a sensor name.
pub const MAX_SENSOR_NAME_LEN: usize = 24;

/// Maximum length in bytes of a sensor unit.
pub const MAX_UNIT_LEN: usize = 12;

/// Maximum length of opaque command payloads and command result data.
pub const MAX_OPAQUE_LEN: usize = 128;

/// Why a delimited run of bytes was not accepted as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// More than the decoder's capacity (at most [`MAX_FRAME_LEN`]) bytes before a delimiter.
    TooLong,
    /// The bytes are not valid COBS.
    BadCobs,
    /// Fewer bytes than version + tag + CRC.
    TooShort,
    /// CRC-32 mismatch.
    BadCrc,
    /// Intact frame with a protocol version this side does not speak.
    UnknownVersion(u8),
    /// Intact frame whose message does not decode, has trailing bytes, is not in canonical form, or
    /// breaks a protocol limit ([`Message::is_valid`]).
    Malformed,
}

impl RejectReason {
    /// Stable, lowercase identifier suitable for metrics labels and database columns.
    pub const fn as_str(&self) -> &'static str {
        match self {
            RejectReason::TooLong => "too_long",
            RejectReason::BadCobs => "bad_cobs",
            RejectReason::TooShort => "too_short",
            RejectReason::BadCrc => "bad_crc",
            RejectReason::UnknownVersion(_) => "unknown_version",
            RejectReason::Malformed => "malformed",
        }
    }
}

impl core::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RejectReason::TooLong => f.write_str("frame too long"),
            RejectReason::BadCobs => f.write_str("invalid COBS encoding"),
            RejectReason::TooShort => f.write_str("frame too short"),
            RejectReason::BadCrc => f.write_str("CRC mismatch"),
            RejectReason::UnknownVersion(v) => write!(f, "unknown protocol version {v}"),
            RejectReason::Malformed => f.write_str("malformed message"),
        }
    }
}

const _: () = assert!(cobs::max_encoded_len(MAX_BODY_LEN) <= MAX_FRAME_LEN);

/// CRC-32/ISO-HDLC (the zlib/Ethernet CRC): poly 0x04C11DB7, reflected, init and xorout 0xFFFFFFFF.
pub fn crc32(bytes: &[u8]) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC.checksum(bytes)
}

//! Whole-frame encoding and body validation (sans-IO).

use crate::{cobs, crc32, Message, RejectReason, DELIMITER, MAX_BODY_LEN, PROTOCOL_VERSION};

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message breaks a protocol limit (see [`Message::is_valid`]).
    Invalid,
    /// The encoded body would exceed [`MAX_BODY_LEN`].
    TooLarge,
    /// The output buffer is too small; [`crate::MAX_ENCODED_LEN`] always suffices.
    BufferTooSmall,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            EncodeError::Invalid => "message breaks a protocol limit",
            EncodeError::TooLarge => "message too large for one frame",
            EncodeError::BufferTooSmall => "output buffer too small",
        })
    }
}

/// Encodes `msg` as one complete frame, both delimiters included, into `out`; returns its length.
pub fn encode(msg: &Message<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    if !msg.is_valid() {
        return Err(EncodeError::Invalid);
    }
    let mut body = [0u8; MAX_BODY_LEN];
    body[0] = PROTOCOL_VERSION;
    let n = postcard::to_slice(msg, &mut body[1..MAX_BODY_LEN - 4])
        .map_err(|_| EncodeError::TooLarge)?
        .len();
    let crc_at = 1 + n;
    let crc = crc32(&body[..crc_at]);
    body[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    let body = &body[..crc_at + 4];

    if out.len() < 2 {
        return Err(EncodeError::BufferTooSmall);
    }
    out[0] = DELIMITER;
    let last = out.len() - 1;
    let m = cobs::encode(body, &mut out[1..last]).ok_or(EncodeError::BufferTooSmall)?;
    out[1 + m] = DELIMITER;
    Ok(m + 2)
}

/// Validates a COBS-decoded frame body (version · message · CRC) and decodes its message.
pub fn decode_body(body: &[u8]) -> Result<Message<'_>, RejectReason> {
    // version + at least a one-byte tag + CRC
    if body.len() < 1 + 1 + 4 {
        return Err(RejectReason::TooShort);
    }
    let (covered, crc) = body.split_at(body.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(covered) != crc {
        return Err(RejectReason::BadCrc);
    }
    if covered[0] != PROTOCOL_VERSION {
        return Err(RejectReason::UnknownVersion(covered[0]));
    }
    if body.len() > MAX_BODY_LEN {
        return Err(RejectReason::Malformed);
    }
    let encoded = &covered[1..];
    match postcard::take_from_bytes::<Message<'_>>(encoded) {
        // Only the canonical (shortest) encoding is accepted: postcard's decoder tolerates padded
        // varints, which would let one message have many encodings, bodies beyond the limit, and
        // lengths that a 32-bit receiver reads differently from a 64-bit one.
        Ok((msg, [])) if msg.is_valid() && canonical_len(&msg) == Some(encoded.len()) => Ok(msg),
        _ => Err(RejectReason::Malformed),
    }
}

fn canonical_len(msg: &Message<'_>) -> Option<usize> {
    postcard::serialize_with_flavor::<_, postcard::ser_flavors::Size, usize>(
        msg,
        Default::default(),
    )
    .ok()
}

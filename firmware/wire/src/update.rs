//! Firmware update messages (PROTOCOL.md section 9) and the bytes a vendor signs.
//!
//! The gateway drives a transfer with [`UpdateBegin`], [`UpdateChunk`]s, [`UpdateCommit`] and
//! [`UpdateAbort`]; the device answers every one of them, and reports itself after every
//! `Welcome`, with an [`UpdateStatus`]: a snapshot of its update record, so the gateway can always
//! resume from what the device says it holds, never from what the gateway thinks it sent.
//!
//! Invariants:
//! - The signature covers [`signed_message`] (length, version, board and SHA-256 of the image), so
//!   neither the version used for the downgrade check nor the board can be changed without the
//!   vendor's key.
//! - Every chunk but the last of an image is a multiple of [`CHUNK_ALIGN`] bytes long, so a
//!   device's flash writes stay aligned for every common write size (1..=32 bytes).

use serde::{Deserialize, Serialize};

/// Largest `data` of one [`UpdateChunk`]. A device may ask for less ([`UpdateStatus::max_chunk`]).
pub const MAX_CHUNK_LEN: usize = 512;

/// Chunk lengths (all but the last) and [`UpdateStatus::max_chunk`] are multiples of this.
pub const CHUNK_ALIGN: usize = 32;

/// Longest COBS-encoded gateway → device frame (a full [`UpdateChunk`]), delimiters excluded: a
/// device that takes chunks sizes its receive buffer to hold it.
pub const MAX_DOWNLINK_FRAME_LEN: usize =
    crate::cobs::max_encoded_len(1 + 1 + 5 + 5 + 2 + MAX_CHUNK_LEN + 4);

/// Maximum length in bytes of the board name an image is built for.
pub const MAX_BOARD_LEN: usize = 24;

/// Maximum length in bytes of an image's version string.
pub const MAX_VERSION_LEN: usize = 32;

/// Length of a SHA-256 digest.
pub const SHA256_LEN: usize = 32;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of an ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The first bytes of every [`signed_message`]: the domain of Ferry firmware signatures, so a
/// signature made for anything else never verifies as an image's.
pub const SIGNED_PREFIX: &[u8; 12] = b"ferry-fw-v1\0";

/// Longest [`signed_message`].
pub const MAX_SIGNED_LEN: usize =
    SIGNED_PREFIX.len() + 4 + 1 + MAX_VERSION_LEN + 1 + MAX_BOARD_LEN + SHA256_LEN;

/// Writes the bytes the vendor signs with ed25519 (PROTOCOL.md section 9.4) into `out` and
/// returns their length:
///
/// ```text
/// "ferry-fw-v1" 0x00 · length:u32-le · len(version):u8 · version · len(board):u8 · board · sha256
/// ```
///
/// `None` when `version` or `board` is empty or too long, or `sha256` is not 32 bytes.
pub fn signed_message(
    length: u32,
    version: &str,
    board: &str,
    sha256: &[u8],
    out: &mut [u8; MAX_SIGNED_LEN],
) -> Option<usize> {
    if version.is_empty()
        || version.len() > MAX_VERSION_LEN
        || board.is_empty()
        || board.len() > MAX_BOARD_LEN
        || sha256.len() != SHA256_LEN
    {
        return None;
    }
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        out[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    put(SIGNED_PREFIX);
    put(&length.to_le_bytes());
    put(&[version.len() as u8]);
    put(version.as_bytes());
    put(&[board.len() as u8]);
    put(board.as_bytes());
    put(sha256);
    Some(n)
}

/// Compares two firmware versions as the device's downgrade check does (PROTOCOL.md section
/// 9.5): dotted decimal numbers (`1.10.2`), anything from the first `-` or `+` on ignored, missing
/// components counting as 0. `None` when either is not such a version.
pub fn compare_versions(a: &str, b: &str) -> Option<core::cmp::Ordering> {
    fn core_part(v: &str) -> &str {
        v.split(['-', '+']).next().unwrap_or("")
    }
    fn parts(v: &str) -> Option<[u32; 4]> {
        let mut out = [0u32; 4];
        for (i, p) in core_part(v).split('.').enumerate() {
            if i == 4 || p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            out[i] = p.parse().ok()?;
        }
        Some(out)
    }
    Some(parts(a)?.cmp(&parts(b)?))
}

/// Tag 9, gateway → device: start (or resume) writing an image into the device's update slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateBegin<'a> {
    /// Chosen by the gateway, never 0; names this transfer in every later message.
    pub id: u32,
    /// The slot to write. A device with one update slot (the bootloader's swap layout) has slot 1.
    pub slot: u8,
    /// Image length in bytes, at least 1.
    pub length: u32,
    /// The image's version, 1..=32 bytes of UTF-8 without NUL (signed).
    pub version: &'a str,
    /// The board the image is built for, 1..=24 bytes of UTF-8 without NUL (signed).
    pub board: &'a str,
    /// SHA-256 of the image, 32 bytes.
    pub sha256: &'a [u8],
    /// ed25519 signature of [`signed_message`], 64 bytes.
    pub signature: &'a [u8],
    /// Install even when the version is not newer than the running one.
    pub force: bool,
}

/// Tag 10, gateway → device: image bytes `offset .. offset + data.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateChunk<'a> {
    /// The transfer's id.
    pub id: u32,
    /// Position of `data[0]` in the image.
    pub offset: u32,
    /// 1..=512 bytes; a multiple of [`CHUNK_ALIGN`] unless it ends the image.
    pub data: &'a [u8],
}

/// Tag 11, gateway → device: every byte is written; verify the image, mark it and reset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCommit {
    /// The transfer's id.
    pub id: u32,
}

/// Tag 12, gateway → device: forget this transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateAbort {
    /// The transfer's id.
    pub id: u32,
}

/// Tag 8, device → gateway: where the device's update stands. Sent after every `Welcome` by a
/// device that can be updated, and in answer to every update message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The transfer this is about; 0 with [`UpdateState::Idle`].
    pub id: u32,
    /// Its state.
    pub state: UpdateState,
    /// Image bytes written and kept: the next chunk must start here.
    pub offset: u32,
    /// Why the last request was not carried out, or why the update failed.
    pub error: UpdateError,
    /// Longest chunk `data` the device takes: a multiple of 32 in 32..=512.
    pub max_chunk: u16,
    /// The gateway may send chunks up to `offset + window` before the next status (≥ `max_chunk`).
    pub window: u16,
}

/// State of a device's update record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateState {
    /// Tag 0: no transfer recorded.
    Idle,
    /// Tag 1: taking chunks from `offset` on.
    Receiving,
    /// Tag 2: the image was verified and marked; the device resets into it now.
    Rebooting,
    /// Tag 3: the new image runs on trial; it has not confirmed itself yet.
    Trial,
    /// Tag 4: the new image runs and has confirmed itself. The update is done.
    Done,
    /// Tag 5: the transfer failed or was refused (see `error`); the old image runs.
    Failed,
}

/// Why an update request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateError {
    /// Tag 0: no error.
    None,
    /// Tag 1: a new image runs on trial, or is marked to be booted: no new transfer now.
    Busy,
    /// Tag 2: the device has no such slot.
    BadSlot,
    /// Tag 3: the image is longer than the slot.
    TooBig,
    /// Tag 4: the image is for another board.
    WrongBoard,
    /// Tag 5: the image's version is not newer than the running one, and `force` was not set.
    NotNewer,
    /// Tag 6: the image's or the running firmware's version is not a dotted version.
    BadVersion,
    /// Tag 7: the written image's SHA-256 is not the announced one.
    BadHash,
    /// Tag 8: the signature does not verify with the device's public key.
    BadSignature,
    /// Tag 9: writing, erasing or reading the flash failed.
    Flash,
    /// Tag 10: the new image did not confirm itself; the old one was restored and runs.
    RolledBack,
    /// Tag 11: the gateway aborted the transfer.
    Aborted,
    /// Tag 12: a chunk, commit or abort for a transfer the device does not have.
    UnknownId,
    /// Tag 13: a commit before every byte was written.
    Incomplete,
}

impl UpdateState {
    /// Stable lowercase name, as used in the agent's API and database.
    pub const fn as_str(&self) -> &'static str {
        match self {
            UpdateState::Idle => "idle",
            UpdateState::Receiving => "receiving",
            UpdateState::Rebooting => "rebooting",
            UpdateState::Trial => "trial",
            UpdateState::Done => "done",
            UpdateState::Failed => "failed",
        }
    }
}

impl UpdateError {
    /// Stable lowercase name, as used in the agent's API and database.
    pub const fn as_str(&self) -> &'static str {
        match self {
            UpdateError::None => "none",
            UpdateError::Busy => "busy",
            UpdateError::BadSlot => "bad_slot",
            UpdateError::TooBig => "too_big",
            UpdateError::WrongBoard => "wrong_board",
            UpdateError::NotNewer => "not_newer",
            UpdateError::BadVersion => "bad_version",
            UpdateError::BadHash => "bad_hash",
            UpdateError::BadSignature => "bad_signature",
            UpdateError::Flash => "flash",
            UpdateError::RolledBack => "rolled_back",
            UpdateError::Aborted => "aborted",
            UpdateError::UnknownId => "unknown_id",
            UpdateError::Incomplete => "incomplete",
        }
    }
}

pub(crate) fn begin_is_valid(b: &UpdateBegin<'_>) -> bool {
    let text_ok =
        |s: &str, max: usize| !s.is_empty() && s.len() <= max && !s.as_bytes().contains(&0);
    b.id != 0
        && b.length > 0
        && text_ok(b.version, MAX_VERSION_LEN)
        && text_ok(b.board, MAX_BOARD_LEN)
        && b.sha256.len() == SHA256_LEN
        && b.signature.len() == SIGNATURE_LEN
}

pub(crate) fn chunk_is_valid(c: &UpdateChunk<'_>) -> bool {
    c.id != 0
        && !c.data.is_empty()
        && c.data.len() <= MAX_CHUNK_LEN
        && u64::from(c.offset) + c.data.len() as u64 <= u64::from(u32::MAX)
}

pub(crate) fn status_is_valid(s: &UpdateStatus) -> bool {
    let chunk = usize::from(s.max_chunk);
    (CHUNK_ALIGN..=MAX_CHUNK_LEN).contains(&chunk)
        && chunk % CHUNK_ALIGN == 0
        && s.window >= s.max_chunk
        && (s.id == 0) == (s.state == UpdateState::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cmp::Ordering::*;

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert_eq!(compare_versions("1.10.0", "1.9.3"), Some(Greater));
        assert_eq!(compare_versions("1.2", "1.2.0"), Some(Equal));
        assert_eq!(compare_versions("2.0.0-rc1", "2.0.0"), Some(Equal));
        assert_eq!(compare_versions("1.2.3+build7", "1.2.4"), Some(Less));
        assert_eq!(compare_versions("1.2.3.4", "1.2.3"), Some(Greater));
        for bad in [
            "",
            "v1.2",
            "1..2",
            "1.2.3.4.5",
            "1.x",
            "sim",
            "1.2.",
            "9999999999",
        ] {
            assert_eq!(compare_versions(bad, "1.0.0"), None, "{bad:?}");
        }
    }

    #[test]
    fn the_signed_message_is_laid_out_as_documented() {
        let mut out = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(0x0102_0304, "1.2.0", "sim", &[0xAA; 32], &mut out).unwrap();
        let mut want = std::vec::Vec::new();
        want.extend_from_slice(b"ferry-fw-v1\0");
        want.extend_from_slice(&[4, 3, 2, 1, 5]);
        want.extend_from_slice(b"1.2.0");
        want.push(3);
        want.extend_from_slice(b"sim");
        want.extend_from_slice(&[0xAA; 32]);
        assert_eq!(&out[..n], &want[..]);
        assert_eq!(signed_message(1, "", "sim", &[0; 32], &mut out), None);
        assert_eq!(signed_message(1, "1", "sim", &[0; 31], &mut out), None);
        let long = "x".repeat(MAX_BOARD_LEN + 1);
        assert_eq!(signed_message(1, "1", &long, &[0; 32], &mut out), None);
        let longest = signed_message(1, &"1".repeat(32), &"b".repeat(24), &[0; 32], &mut out);
        assert_eq!(longest, Some(MAX_SIGNED_LEN));
    }
}

//! Streaming frame decoder: arbitrary chunks in, validated messages or rejections out.
//!
//! Invariants:
//! - Memory is fixed: two `N`-byte buffers (raw frame, decoded body). Nothing allocates.
//! - Every non-empty run of bytes between delimiters yields exactly one result: a message, or a
//!   [`Rejected`] with its reason and (up to `N` of) its raw bytes.
//! - A run longer than `N` is skipped up to the next delimiter and reported once as `TooLong`, so the
//!   decoder resynchronises on the next frame whatever came before.

use crate::{cobs, codec::decode_body, Message, RejectReason, DELIMITER, MAX_FRAME_LEN};

/// A delimited run of bytes that was not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected<'d> {
    /// Why it was rejected.
    pub reason: RejectReason,
    /// The bytes between the delimiters as received (the first `N` only, for `TooLong`).
    pub raw: &'d [u8],
    /// How many bytes the run had in total.
    pub len: usize,
}

/// Streaming decoder with room for frames of up to `N` encoded bytes (`N <= MAX_FRAME_LEN` is the
/// protocol limit; devices that only receive small gateway messages may choose a smaller `N`).
pub struct Decoder<const N: usize = MAX_FRAME_LEN> {
    raw: [u8; N],
    len: usize,
    overflow: usize,
    body: [u8; N],
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// A decoder waiting for the start of a frame.
    pub const fn new() -> Self {
        Decoder {
            raw: [0; N],
            len: 0,
            overflow: 0,
            body: [0; N],
        }
    }

    /// Bytes of a not yet complete frame currently held.
    pub fn pending(&self) -> usize {
        self.len + self.overflow
    }

    /// Discards a partially received frame (e.g. after the link was reopened).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflow = 0;
    }

    /// Consumes bytes from the front of `input` until one frame completes, and returns it; returns
    /// `None` once `input` is used up with no frame completed (the partial frame is kept).
    ///
    /// ```
    /// # use ferry_wire::{Decoder, Message};
    /// let mut dec: Decoder = Decoder::new();
    /// let mut input: &[u8] = &[0x00, 0x01, 0x00];
    /// while let Some(result) = dec.feed(&mut input) {
    ///     match result {
    ///         Ok(message) => { let _: Message<'_> = message; }
    ///         Err(rejected) => { let _ = rejected.reason; }
    ///     }
    /// }
    /// ```
    pub fn feed<'d>(&'d mut self, input: &mut &[u8]) -> Option<Result<Message<'d>, Rejected<'d>>> {
        loop {
            let (chunk, rest, complete) = match input.iter().position(|&b| b == DELIMITER) {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (*input, &input[input.len()..], false),
            };
            *input = rest;
            let room = N - self.len;
            if self.overflow == 0 && chunk.len() <= room {
                self.raw[self.len..self.len + chunk.len()].copy_from_slice(chunk);
                self.len += chunk.len();
            } else {
                let fit = chunk.len().min(room);
                self.raw[self.len..self.len + fit].copy_from_slice(&chunk[..fit]);
                self.len += fit;
                self.overflow += chunk.len() - fit;
            }
            if !complete {
                return None;
            }
            if self.len == 0 {
                // Two delimiters in a row: padding, not a frame.
                if input.is_empty() {
                    return None;
                }
                continue;
            }
            return Some(self.finish());
        }
    }

    fn finish(&mut self) -> Result<Message<'_>, Rejected<'_>> {
        let len = self.len;
        let total = len + self.overflow;
        self.len = 0;
        let overflowed = core::mem::take(&mut self.overflow) > 0;
        let raw = &self.raw[..len];
        let reject = |reason| Rejected {
            reason,
            raw,
            len: total,
        };
        if overflowed {
            return Err(reject(RejectReason::TooLong));
        }
        let Some(n) = cobs::decode(raw, &mut self.body) else {
            return Err(reject(RejectReason::BadCobs));
        };
        decode_body(&self.body[..n]).map_err(reject)
    }
}

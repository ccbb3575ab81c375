//! Message codec fuzz target: the input is a message's postcard bytes, wrapped in a body with the
//! right version and CRC so mutations reach the message decoder instead of dying at the CRC check.
//!
//! For every body `decode_body` accepts: the message re-encodes and round-trips (see
//! `common::reencode`), its canonical body is no longer than the input body, and the same body with
//! a wrong version or a damaged CRC is rejected for exactly that reason.
#![no_main]

mod common;

use common::{reencode, ref_cobs_decode};
use ferry_wire::{crc32, decode_body, RejectReason, MAX_BODY_LEN, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

fn with_crc(mut covered: Vec<u8>) -> Vec<u8> {
    let crc = crc32(&covered);
    covered.extend_from_slice(&crc.to_le_bytes());
    covered
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_BODY_LEN {
        return;
    }
    let mut covered = Vec::with_capacity(data.len() + 5);
    covered.push(PROTOCOL_VERSION);
    covered.extend_from_slice(data);
    let body = with_crc(covered.clone());

    let msg = match decode_body(&body) {
        Ok(msg) => msg,
        Err(reason) => {
            let allowed = if data.is_empty() {
                RejectReason::TooShort
            } else {
                RejectReason::Malformed
            };
            assert_eq!(reason, allowed, "body {body:02x?}");
            return;
        }
    };
    let frame = reencode(&msg);
    let canonical =
        ref_cobs_decode(&frame[1..frame.len() - 1]).expect("re-encoded frame is bad COBS");
    assert!(
        canonical.len() <= body.len(),
        "canonical body {canonical:02x?} longer than accepted body {body:02x?}"
    );
    assert!(decode_body(&canonical).is_ok());

    let mut other_version = covered.clone();
    other_version[0] = PROTOCOL_VERSION.wrapping_add(1);
    assert_eq!(
        decode_body(&with_crc(other_version)),
        Err(RejectReason::UnknownVersion(
            PROTOCOL_VERSION.wrapping_add(1)
        ))
    );
    let mut bad_crc = body.clone();
    *bad_crc.last_mut().unwrap() ^= 0x5a;
    assert_eq!(decode_body(&bad_crc), Err(RejectReason::BadCrc));
});

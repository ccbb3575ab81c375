//! Helpers shared by the fuzz targets.

use ferry_wire::{encode, Decoder, Message, DELIMITER, MAX_ENCODED_LEN, MAX_FRAME_LEN};

/// Re-encodes `msg` and checks the encoding round-trips; returns the frame.
pub fn reencode(msg: &Message<'_>) -> Vec<u8> {
    assert!(msg.is_valid(), "accepted message breaks a limit: {msg:?}");
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let n = encode(msg, &mut buf).unwrap_or_else(|e| panic!("re-encoding {msg:?} failed: {e:?}"));
    assert!(n <= MAX_ENCODED_LEN);
    let frame = &buf[..n];
    assert!(n >= 2 && n - 2 <= MAX_FRAME_LEN, "frame length {n}");
    assert_eq!(frame[0], DELIMITER);
    assert_eq!(frame[n - 1], DELIMITER);
    assert!(!frame[1..n - 1].contains(&DELIMITER));

    // Decode the re-encoded frame from scratch; it must give back the same message.
    let mut dec: Decoder = Decoder::new();
    let mut input = frame;
    let msg2 = match dec.feed(&mut input) {
        Some(Ok(m)) => m,
        other => panic!("re-encoded frame {frame:02x?} of {msg:?} not accepted: {other:?}"),
    };
    assert!(input.is_empty());
    let mut buf2 = [0u8; MAX_ENCODED_LEN];
    let n2 = encode(&msg2, &mut buf2).expect("second re-encoding failed");
    assert_eq!(
        frame,
        &buf2[..n2],
        "re-decoded message differs: {msg:?} vs {msg2:?}"
    );
    frame.to_vec()
}

/// COBS decoding by the `cobs` crate (an implementation independent of ferry-wire's), plus
/// PROTOCOL.md section 1's canonical-form rule: a block whose last group is a `0xFF` group is
/// refused (the encoder ends such a body with an empty `01` group). A block never holds `0x00`
/// (the crate would stop there).
pub fn ref_cobs_decode(block: &[u8]) -> Option<Vec<u8>> {
    if block.contains(&0) {
        return None;
    }
    let body = cobs::decode_vec(block).ok()?;
    let (mut i, mut last) = (0, 0u8);
    while i < block.len() {
        last = block[i];
        i += usize::from(last);
    }
    (last != 0xFF).then_some(body)
}

use crate::strategies::{frame, owned, same};
use ferry_wire::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every message type encodes within the limits and decodes back to the same value.
    #[test]
    fn every_message_roundtrips(o in owned()) {
        let m = o.message();
        let bytes = frame(&m);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN + 2);
        prop_assert_eq!(bytes[0], 0);
        prop_assert_eq!(*bytes.last().unwrap(), 0);
        prop_assert!(!bytes[1..bytes.len() - 1].contains(&0));
        let mut dec: Decoder = Decoder::new();
        let mut input = &bytes[..];
        {
            let got = dec.feed(&mut input).expect("one frame").expect("valid");
            prop_assert!(same(&got, &m), "{:?} != {:?}", got, m);
        }
        prop_assert!(dec.feed(&mut input).is_none());
        prop_assert_eq!(dec.pending(), 0);
    }

    /// A single flipped bit anywhere inside a frame is always detected (CRC-32 catches all 1-bit errors).
    #[test]
    fn bit_flip_is_rejected(o in owned(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let m = o.message();
        let mut bytes = frame(&m);
        let inner = bytes.len() - 2;
        let i = 1 + pos.index(inner);
        bytes[i] ^= 1 << bit;
        let mut dec: Decoder = Decoder::new();
        let mut input = &bytes[..];
        while let Some(r) = dec.feed(&mut input) {
            prop_assert!(r.is_err(), "corrupted frame accepted");
        }
    }
}

#[test]
fn encoder_refuses_invalid_messages() {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let long_id = "x".repeat(MAX_DEVICE_ID_LEN + 1);
    let hello = Message::Hello(Hello {
        device_id: &long_id,
        firmware: "",
        boot_id: 1,
        tick_hz: 1000,
        ticks: 0,
        next_seq: 0,
        sensors: heapless::Vec::new(),
    });
    assert_eq!(encode(&hello, &mut buf), Err(EncodeError::Invalid));
    let empty = Message::Samples(Samples {
        oldest: 0,
        first_seq: 0,
        samples: heapless::Vec::new(),
    });
    assert_eq!(encode(&empty, &mut buf), Err(EncodeError::Invalid));
    assert_eq!(
        encode(&Message::HelloRequest, &mut buf[..4]),
        Err(EncodeError::BufferTooSmall)
    );
}

#[test]
fn unknown_version_and_trailing_bytes_are_reported() {
    // A well-formed body with version 2.
    let mut body = vec![2u8, 7];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::UnknownVersion(2)));
    // Version 1, HelloRequest tag, one stray byte.
    let mut body = vec![1u8, 7, 9];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::Malformed));
    // Unknown message tag.
    let mut body = vec![1u8, 8];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::Malformed));
    assert_eq!(decode_body(&[1, 7, 0, 0]), Err(RejectReason::TooShort));
}

#[test]
fn padded_varints_are_malformed() {
    // HelloRequest is tag 7; a padded tag `87 00` decodes to 7 as well but is not canonical.
    let mut body = vec![1u8, 0x87, 0x00];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::Malformed));
    // An Opaque command whose 3-byte payload length is padded to 10 bytes.
    let mut body = vec![
        1u8, 6, 10, 3, 0x83, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 1, 2, 3,
    ];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::Malformed));
    // The same command, canonical, is fine.
    let mut body = vec![1u8, 6, 10, 3, 3, 1, 2, 3];
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    assert!(decode_body(&body).is_ok());
}

#[test]
fn bodies_over_the_limit_are_malformed_even_if_they_decode() {
    let mut body = vec![0u8; MAX_BODY_LEN + 1];
    body[0] = 1;
    body[1] = 7;
    let n = body.len();
    let crc = crc32(&body[..n - 4]);
    body[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_body(&body), Err(RejectReason::Malformed));
}

/// The body of `m` as a sender that skips `is_valid` would write it (version, postcard, CRC).
fn unchecked_body(m: &Message<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_BODY_LEN];
    let mut body = vec![PROTOCOL_VERSION];
    body.extend_from_slice(postcard::to_slice(m, &mut buf).unwrap());
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    body
}

fn hello<'a>(
    device_id: &'a str,
    firmware: &'a str,
    tick_hz: u32,
    name: &'a str,
    unit: &'a str,
) -> Message<'a> {
    let mut sensors = heapless::Vec::new();
    sensors
        .push(SensorInfo {
            index: 0,
            name,
            unit,
            interval_ms: 1000,
        })
        .unwrap();
    Message::Hello(Hello {
        device_id,
        firmware,
        boot_id: 1,
        tick_hz,
        ticks: 0,
        next_seq: 0,
        sensors,
    })
}

fn samples(oldest: u32, first_seq: u32, count: usize) -> Message<'static> {
    let sample = Sample {
        ticks: 5,
        sensor: 0,
        value: 1.0,
    };
    Message::Samples(Samples {
        oldest,
        first_seq,
        samples: (0..count).map(|_| sample).collect(),
    })
}

/// PROTOCOL.md section 1, `malformed`: the limits postcard cannot express. Each case is refused
/// by the encoder and rejected by the decoder; the valid neighbours pass.
#[test]
fn limits_postcard_cannot_express_are_malformed() {
    let bad = [
        ("tick_hz 0", hello("dev", "1", 0, "t", "C")),
        ("NUL in device_id", hello("de\0v", "1", 1000, "t", "C")),
        ("NUL in firmware", hello("dev", "1\0", 1000, "t", "C")),
        ("NUL in sensor name", hello("dev", "1", 1000, "\0", "C")),
        ("NUL in unit", hello("dev", "1", 1000, "t", "°\0C")),
        ("oldest > first_seq", samples(43, 42, 1)),
        ("seq 0xFFFFFFFF", samples(0, u32::MAX, 1)),
        ("last seq 0xFFFFFFFF", samples(0, LAST_SEQ, 2)),
        ("last seq 0xFFFFFFFF of 32", samples(0, u32::MAX - 31, 32)),
    ];
    let mut buf = [0u8; MAX_ENCODED_LEN];
    for (what, m) in &bad {
        assert_eq!(encode(m, &mut buf), Err(EncodeError::Invalid), "{what}");
        assert_eq!(
            decode_body(&unchecked_body(m)),
            Err(RejectReason::Malformed),
            "{what}"
        );
    }
    let good = [
        ("tick_hz 1", hello("dev", "1", 1, "t", "C")),
        ("last usable seq", samples(LAST_SEQ, LAST_SEQ, 1)),
        (
            "32 up to the last usable seq",
            samples(0, LAST_SEQ - 31, 32),
        ),
        ("oldest == first_seq", samples(42, 42, 1)),
    ];
    for (what, m) in &good {
        assert!(encode(m, &mut buf).is_ok(), "{what}");
        assert!(decode_body(&unchecked_body(m)).is_ok(), "{what}");
    }
}

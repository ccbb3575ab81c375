//! Golden vectors: the ```` ```hex golden=NAME ```` examples in PROTOCOL.md must equal (1) what this
//! crate encodes for the values below, (2) what this crate decodes them to, and (3) what the
//! independent Python peer in `tests/reference_peer.py` (written from the spec alone) encodes and
//! accepts. Every ```` ```hex rejected=NAME reason=REASON ```` block must be the frame described
//! here, and be rejected for REASON by this crate's decoder and by the Python peer.
use crate::strategies::{frame, same};
use ferry_wire::*;

const SPEC: &str = include_str!("../PROTOCOL.md");

/// Section 9.6's example image: 65,536 bytes, byte `i` = `i mod 251`.
fn example_image() -> Vec<u8> {
    (0..65_536u32).map(|i| (i % 251) as u8).collect()
}

/// RFC 8032's first test key (section 7.1, TEST 1): a published key, for vectors only.
const TEST_SECRET: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];

/// SHA-256 of [`example_image`] and the test key's signature of its signed message.
fn example_signature() -> ([u8; 32], [u8; 64]) {
    use ed25519_dalek::Signer;
    use sha2::Digest;
    let sha: [u8; 32] = sha2::Sha256::digest(example_image()).into();
    let mut msg = [0u8; update::MAX_SIGNED_LEN];
    let n = update::signed_message(65_536, "1.1.0", "microbit", &sha, &mut msg).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&TEST_SECRET);
    (sha, key.sign(&msg[..n]).to_bytes())
}

fn golden_messages() -> Vec<(&'static str, Message<'static>)> {
    let mut sensors = heapless::Vec::new();
    sensors
        .push(SensorInfo {
            index: 0,
            name: "temperature",
            unit: "°C",
            interval_ms: 1000,
        })
        .unwrap();
    sensors
        .push(SensorInfo {
            index: 1,
            name: "humidity",
            unit: "%",
            interval_ms: 2000,
        })
        .unwrap();
    let mut samples = heapless::Vec::new();
    samples
        .push(Sample {
            ticks: 123_456,
            sensor: 0,
            value: 21.5,
        })
        .unwrap();
    samples
        .push(Sample {
            ticks: 123_456,
            sensor: 1,
            value: 40.25,
        })
        .unwrap();
    let mut last = heapless::Vec::new();
    last.push(Sample {
        ticks: 5000,
        sensor: 0,
        value: 1.5,
    })
    .unwrap();
    let non_finite = [
        (1000, 0, 0x7FC0_0000),
        (1000, 1, 0xFFC0_0001),
        (2000, 0, 0x7F80_0000),
        (2000, 1, 0xFF80_0000),
        (3000, 0, 0x8000_0000),
    ]
    .into_iter()
    .map(|(ticks, sensor, bits)| Sample {
        ticks,
        sensor,
        value: f32::from_bits(bits),
    })
    .collect();
    let mut unknown = heapless::Vec::new();
    unknown
        .push(Sample {
            ticks: 1000,
            sensor: 9,
            value: 3.25,
        })
        .unwrap();
    let piece = (0..32)
        .map(|i| Sample {
            ticks: 15_300 + 100 * i,
            sensor: 1,
            value: 21.1,
        })
        .collect();
    let (sha, sig) = example_signature();
    let sha: &'static [u8] = Vec::leak(sha.to_vec());
    let sig: &'static [u8] = Vec::leak(sig.to_vec());
    let chunk: &'static [u8] = Vec::leak(example_image()[1536..1568].to_vec());
    vec![
        (
            "hello",
            Message::Hello(Hello {
                device_id: "dev-01",
                firmware: "1.0.0",
                boot_id: 0x1234_5678,
                tick_hz: 1000,
                ticks: 1500,
                next_seq: 0,
                sensors,
            }),
        ),
        (
            "samples",
            Message::Samples(Samples {
                oldest: 40,
                first_seq: 42,
                samples,
            }),
        ),
        (
            "heartbeat",
            Message::Heartbeat(Heartbeat {
                ticks: 200_000,
                dropped: 3,
                ring_depth: 17,
                read_errors: 0,
            }),
        ),
        (
            "command_result",
            Message::CommandResult(CommandResult {
                id: 7,
                status: CommandStatus::Ok,
                data: &[1, 2],
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                boot_id: 0x1234_5678,
                utc_ms: 1_767_225_600_000,
                next_seq: 40,
            }),
        ),
        (
            "ack",
            Message::Ack(Ack {
                boot_id: 0x1234_5678,
                next_seq: 300,
            }),
        ),
        (
            "command_set_interval",
            Message::Command(Command {
                id: 7,
                kind: CommandKind::SetInterval {
                    sensor: 2,
                    interval_ms: 250,
                },
            }),
        ),
        (
            "command_identify",
            Message::Command(Command {
                id: 8,
                kind: CommandKind::Identify { duration_ms: 5000 },
            }),
        ),
        (
            "command_reboot",
            Message::Command(Command {
                id: 9,
                kind: CommandKind::Reboot,
            }),
        ),
        (
            "command_opaque",
            Message::Command(Command {
                id: 10,
                kind: CommandKind::Opaque(&[0x00, 0xFF, 0x10]),
            }),
        ),
        ("hello_request", Message::HelloRequest),
        (
            "samples_last_seq",
            Message::Samples(Samples {
                oldest: LAST_SEQ,
                first_seq: LAST_SEQ,
                samples: last,
            }),
        ),
        (
            "ack_last_seq",
            Message::Ack(Ack {
                boot_id: 0x1234_5678,
                next_seq: LAST_SEQ + 1,
            }),
        ),
        (
            "samples_non_finite",
            Message::Samples(Samples {
                oldest: 7,
                first_seq: 7,
                samples: non_finite,
            }),
        ),
        (
            "samples_unknown_sensor",
            Message::Samples(Samples {
                oldest: 0,
                first_seq: 0,
                samples: unknown,
            }),
        ),
        (
            "samples_cobs_254",
            Message::Samples(Samples {
                oldest: 96,
                first_seq: 100,
                samples: piece,
            }),
        ),
        (
            "update_status",
            Message::UpdateStatus(UpdateStatus {
                id: 7,
                state: UpdateState::Receiving,
                offset: 1536,
                error: UpdateError::None,
                max_chunk: 512,
                window: 1024,
            }),
        ),
        (
            "update_status_rolled_back",
            Message::UpdateStatus(UpdateStatus {
                id: 7,
                state: UpdateState::Failed,
                offset: 0,
                error: UpdateError::RolledBack,
                max_chunk: 512,
                window: 1024,
            }),
        ),
        (
            "update_begin",
            Message::UpdateBegin(example_begin(sha, sig)),
        ),
        (
            "update_chunk",
            Message::UpdateChunk(UpdateChunk {
                id: 7,
                offset: 1536,
                data: chunk,
            }),
        ),
        (
            "update_commit",
            Message::UpdateCommit(UpdateCommit { id: 7 }),
        ),
        ("update_abort", Message::UpdateAbort(UpdateAbort { id: 7 })),
    ]
}

fn example_begin<'a>(sha256: &'a [u8], signature: &'a [u8]) -> UpdateBegin<'a> {
    UpdateBegin {
        id: 7,
        slot: 1,
        length: 65_536,
        version: "1.1.0",
        board: "microbit",
        sha256,
        signature,
        force: false,
    }
}

#[test]
fn the_example_signature_verifies_with_the_test_public_key() {
    use ed25519_dalek::Verifier;
    let (sha, sig) = example_signature();
    let key = ed25519_dalek::SigningKey::from_bytes(&TEST_SECRET).verifying_key();
    let spec_key = spec_hex_after("public key: `");
    assert_eq!(
        key.to_bytes().to_vec(),
        spec_key,
        "section 9.6's public key"
    );
    assert_eq!(
        sha.to_vec(),
        spec_hex_after("SHA-256: `"),
        "section 9.6's image hash"
    );
    assert_eq!(
        sig.to_vec(),
        spec_hex_after("signature: `"),
        "section 9.6's signature"
    );
    let mut msg = [0u8; update::MAX_SIGNED_LEN];
    let n = update::signed_message(65_536, "1.1.0", "microbit", &sha, &mut msg).unwrap();
    assert_eq!(msg[..n].to_vec(), spec_hex_after("signed message: `"));
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    key.verify(&msg[..n], &sig).unwrap();
}

/// The hex bytes in backquotes after `label` in PROTOCOL.md.
fn spec_hex_after(label: &str) -> Vec<u8> {
    let at = SPEC
        .find(label)
        .unwrap_or_else(|| panic!("PROTOCOL.md has no `{label}`"))
        + label.len();
    let end = SPEC[at..].find('`').unwrap();
    parse_hex(&SPEC[at..at + end])
}

/// `(name, reason, frame)` of every rejected vector, built here from its description (the spec's
/// bytes must match).
fn rejected_frames() -> Vec<(&'static str, RejectReason, Vec<u8>)> {
    let golden = golden_messages();
    let (_, piece) = golden
        .iter()
        .find(|(n, _)| *n == "samples_cobs_254")
        .unwrap();
    let piece = frame(piece);
    let n = piece.len();
    assert_eq!(
        &piece[n - 2..],
        &[0x01, 0x00],
        "the encoder ends with an empty group"
    );
    let mut trailing_ff = piece[..n - 2].to_vec();
    trailing_ff.push(0);
    let sample = |ticks, value| Sample {
        ticks,
        sensor: 0,
        value,
    };
    let hello = |device_id: &'static str, tick_hz| {
        Message::Hello(Hello {
            device_id,
            firmware: "1.0.0",
            boot_id: 0x1234_5678,
            tick_hz,
            ticks: 1500,
            next_seq: 0,
            sensors: heapless::Vec::new(),
        })
    };
    let samples = |oldest, first_seq, s: &[Sample]| {
        unchecked_frame(&Message::Samples(Samples {
            oldest,
            first_seq,
            samples: s.iter().copied().collect(),
        }))
    };
    vec![
        ("cobs_trailing_ff", RejectReason::BadCobs, trailing_ff),
        (
            "samples_seq_ffffffff",
            RejectReason::Malformed,
            samples(LAST_SEQ, LAST_SEQ, &[sample(5000, 1.5), sample(5001, 1.5)]),
        ),
        (
            "samples_oldest_after_first",
            RejectReason::Malformed,
            samples(43, 42, &[sample(123_456, 21.5)]),
        ),
        (
            "hello_tick_hz_zero",
            RejectReason::Malformed,
            unchecked_frame(&hello("dev-01", 0)),
        ),
        (
            "hello_nul_in_device_id",
            RejectReason::Malformed,
            unchecked_frame(&hello("dev\u{0}01", 1000)),
        ),
        (
            "update_chunk_empty",
            RejectReason::Malformed,
            unchecked_frame(&Message::UpdateChunk(UpdateChunk {
                id: 7,
                offset: 1536,
                data: &[],
            })),
        ),
        (
            "update_begin_short_signature",
            RejectReason::Malformed,
            unchecked_frame(&Message::UpdateBegin(example_begin(
                &[0x11; 32],
                &[0x22; 63],
            ))),
        ),
        (
            "update_begin_force_2",
            RejectReason::Malformed,
            // `force` is the message's last byte: 2 is not a postcard bool.
            unchecked_frame_with_last_byte(
                &Message::UpdateBegin(example_begin(&[0x11; 32], &[0x22; 64])),
                2,
            ),
        ),
        (
            "update_status_idle_with_id",
            RejectReason::Malformed,
            unchecked_frame(&Message::UpdateStatus(UpdateStatus {
                id: 3,
                state: UpdateState::Idle,
                offset: 0,
                error: UpdateError::None,
                max_chunk: 512,
                window: 1024,
            })),
        ),
        (
            "update_status_max_chunk_100",
            RejectReason::Malformed,
            unchecked_frame(&Message::UpdateStatus(UpdateStatus {
                id: 7,
                state: UpdateState::Receiving,
                offset: 0,
                error: UpdateError::None,
                max_chunk: 100,
                window: 1024,
            })),
        ),
    ]
}

/// A frame as a sender that skips `Message::is_valid` would write it, COBS done as PROTOCOL.md
/// section 1 describes it (each zero-free piece as groups of 254 bytes, then a last group of
/// `len mod 254` bytes, which is empty when `len` is a multiple of 254).
fn unchecked_frame(m: &Message<'_>) -> Vec<u8> {
    let mut body = [0u8; MAX_BODY_LEN];
    body[0] = PROTOCOL_VERSION;
    let n = 1 + postcard::to_slice(m, &mut body[1..]).unwrap().len();
    cobs_frame(&mut body, n)
}

/// [`unchecked_frame`] with the message's last byte replaced.
fn unchecked_frame_with_last_byte(m: &Message<'_>, last: u8) -> Vec<u8> {
    let mut body = [0u8; MAX_BODY_LEN];
    body[0] = PROTOCOL_VERSION;
    let n = 1 + postcard::to_slice(m, &mut body[1..]).unwrap().len();
    body[n - 1] = last;
    cobs_frame(&mut body, n)
}

/// Appends the CRC to `body[..n]` and COBS-frames it.
fn cobs_frame(body: &mut [u8; MAX_BODY_LEN], n: usize) -> Vec<u8> {
    let crc = crc32(&body[..n]);
    body[n..n + 4].copy_from_slice(&crc.to_le_bytes());
    let mut out = vec![0u8];
    for piece in body[..n + 4].split(|&b| b == 0) {
        let full = piece.len() / 254;
        for g in piece[..full * 254].chunks(254) {
            out.push(0xFF);
            out.extend_from_slice(g);
        }
        let tail = &piece[full * 254..];
        out.push(tail.len() as u8 + 1);
        out.extend_from_slice(tail);
    }
    out.push(0);
    out
}

fn parse_hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

/// `(info string after "```hex ", bytes)` for every hex block in the spec.
fn spec_blocks() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = SPEC;
    while let Some(i) = rest.find("```hex ") {
        rest = &rest[i + "```hex ".len()..];
        let nl = rest.find('\n').unwrap();
        let info = rest[..nl].trim().to_owned();
        let end = rest.find("```").unwrap();
        out.push((info, parse_hex(&rest[nl..end])));
        rest = &rest[end + 3..];
    }
    out
}

/// `name -> bytes` for every ```` ```hex golden=NAME ```` block in the spec.
fn spec_vectors() -> Vec<(String, Vec<u8>)> {
    spec_blocks()
        .into_iter()
        .filter_map(|(info, bytes)| Some((info.strip_prefix("golden=")?.to_owned(), bytes)))
        .collect()
}

/// `(name, reason, bytes)` for every ```` ```hex rejected=NAME reason=REASON ```` block in the spec.
fn spec_rejections() -> Vec<(String, String, Vec<u8>)> {
    spec_blocks()
        .into_iter()
        .filter_map(|(info, bytes)| {
            let rest = info.strip_prefix("rejected=")?;
            let (name, reason) = rest
                .split_once(" reason=")
                .expect("rejected=NAME reason=REASON");
            Some((name.to_owned(), reason.to_owned(), bytes))
        })
        .collect()
}

#[test]
fn spec_vectors_match_encoder_and_decoder() {
    let spec = spec_vectors();
    let msgs = golden_messages();
    assert_eq!(
        spec.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        msgs.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "PROTOCOL.md must have one golden block per message variant, in this order"
    );
    for ((name, bytes), (_, msg)) in spec.iter().zip(&msgs) {
        assert_eq!(&frame(msg), bytes, "encoding of golden vector `{name}`");
        assert_eq!(
            &unchecked_frame(msg),
            bytes,
            "section 1's COBS for `{name}`"
        );
        let mut dec: Decoder = Decoder::new();
        let mut input = &bytes[..];
        let got = dec.feed(&mut input).unwrap().unwrap();
        assert!(
            same(&got, msg),
            "decoding of golden vector `{name}`: {got:?}"
        );
    }
}

#[test]
fn spec_rejections_are_rejected_for_their_reason() {
    let spec = spec_rejections();
    let mine = rejected_frames();
    assert_eq!(
        spec.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(),
        mine.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        "PROTOCOL.md's rejected blocks, in this order"
    );
    for ((name, reason, bytes), (_, want, built)) in spec.iter().zip(&mine) {
        assert_eq!(reason, want.as_str(), "`{name}`: the reason the spec gives");
        assert_eq!(
            bytes, built,
            "`{name}`: the spec's bytes are the frame it describes"
        );
        let mut dec: Decoder = Decoder::new();
        let mut input = &bytes[..];
        match dec.feed(&mut input) {
            Some(Err(rej)) => assert_eq!(rej.reason, *want, "`{name}`"),
            other => panic!("`{name}` was not rejected: {other:?}"),
        }
        assert!(dec.feed(&mut input).is_none(), "`{name}` is one frame");
    }
}

#[test]
#[ignore = "needs python3"]
fn independent_python_encoder_agrees() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference_peer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "this test needs `python3` ({e}); install it with `apt-get install -y python3`, \
                 or run tests/run-all.sh, which installs every tool the tests need"
            )
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let spec = spec_vectors();
    let rejections = spec_rejections();
    let mut encoded = Vec::new();
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut checked = Vec::new();
    for line in text.lines() {
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("encode"), Some(name), Some(hex)) => encoded.push((name, parse_hex(hex))),
            (Some("accept"), Some(name), None) => accepted.push(name),
            (Some("reject"), Some(name), Some(reason)) => rejected.push((name, reason)),
            (Some("check"), Some(what), None) => checked.push(what),
            _ => panic!("unexpected line from the python peer: {line}"),
        }
    }
    let all: Vec<(&str, &Vec<u8>)> = spec
        .iter()
        .map(|(n, b)| (n.as_str(), b))
        .chain(rejections.iter().map(|(n, _, b)| (n.as_str(), b)))
        .collect();
    assert_eq!(encoded.len(), all.len(), "one encoding per spec block");
    for (name, want) in all {
        let (_, got) = encoded
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("python did not encode `{name}`"));
        assert_eq!(got, want, "python encoder disagrees on `{name}`");
    }
    assert_eq!(
        accepted,
        spec.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        "the python decoder accepts every golden vector"
    );
    assert_eq!(
        rejected,
        rejections
            .iter()
            .map(|(n, r, _)| (n.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        "the python decoder rejects every rejected vector for the spec's reason"
    );
    assert_eq!(
        checked,
        ["signature"],
        "the python peer made and verified section 9.6's signature"
    );
}

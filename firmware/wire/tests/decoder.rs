use crate::strategies::{frame, owned, same, Owned};
use ferry_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Item {
    Frame(Owned),
    Garbage(Vec<u8>),
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        3 => owned().prop_map(Item::Frame),
        1 => vec(any::<u8>(), 0..64).prop_map(Item::Garbage),
        1 => vec(1u8..=255, 1000..2500).prop_map(Item::Garbage), // no delimiter: must hit TooLong
    ]
}

/// Splits `bytes` at the given cut points and feeds the pieces; returns accepted frames (re-encoded,
/// since messages borrow the decoder) and rejection reasons.
fn feed_chunks(bytes: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, Vec<RejectReason>) {
    let mut dec: Decoder = Decoder::new();
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    bounds.push(0);
    bounds.push(bytes.len());
    bounds.sort_unstable();
    for w in bounds.windows(2) {
        let mut input = &bytes[w[0]..w[1]];
        while let Some(r) = dec.feed(&mut input) {
            match r {
                Ok(m) => ok.push(frame(&m)),
                Err(rej) => {
                    assert!(rej.raw.len() <= MAX_FRAME_LEN && rej.raw.len() <= rej.len);
                    bad.push(rej.reason)
                }
            }
        }
    }
    (ok, bad)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Arbitrary bytes in arbitrary chunks never panic and never yield a frame that breaks a limit.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..4096), cuts in vec(any::<usize>(), 0..16)) {
        let (ok, _) = feed_chunks(&bytes, &cuts);
        for f in ok {
            prop_assert!(f.len() <= MAX_FRAME_LEN + 2);
        }
    }

    /// Garbage (with or without delimiters, short or overlong) between valid frames, any chunking:
    /// every valid frame comes out, in order, and nothing else does.
    #[test]
    fn every_frame_recovered_after_garbage(items in vec(item(), 1..24), cuts in vec(any::<usize>(), 0..32)) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for it in &items {
            match it {
                Item::Frame(o) => {
                    let f = frame(&o.message());
                    stream.extend_from_slice(&f);
                    expected.push(f);
                }
                Item::Garbage(g) => stream.extend_from_slice(g),
            }
        }
        let (ok, bad) = feed_chunks(&stream, &cuts);
        prop_assert_eq!(&ok, &expected);
        // Runs closed by a delimiter; a trailing unterminated run is still pending in the decoder.
        let runs: Vec<&[u8]> = stream.split(|&b| b == 0).collect();
        let closed = &runs[..runs.len() - 1];
        let overlong = closed.iter().filter(|run| run.len() > MAX_FRAME_LEN).count();
        prop_assert_eq!(bad.iter().filter(|r| **r == RejectReason::TooLong).count(), overlong);
    }

    /// Random corruption of bytes inside frames: a frame whose own bytes are untouched is recovered;
    /// a corrupted one is never accepted.
    #[test]
    fn corruption_only_costs_the_frames_it_hits(
        msgs in vec(owned(), 1..16),
        hits in vec((any::<prop::sample::Index>(), 1u8..=255), 0..8),
    ) {
        let frames: Vec<Vec<u8>> = msgs.iter().map(|o| frame(&o.message())).collect();
        let mut stream: Vec<u8> = frames.concat();
        let mut touched = vec![false; frames.len()];
        for (idx, xor) in &hits {
            let i = idx.index(stream.len());
            stream[i] ^= xor;
            let mut start = 0;
            for (k, f) in frames.iter().enumerate() {
                if (start..start + f.len()).contains(&i) {
                    touched[k] = true;
                }
                start += f.len();
            }
        }
        let (ok, _) = feed_chunks(&stream, &[]);
        let intact: Vec<Vec<u8>> = frames.iter().zip(&touched).filter(|(_, t)| !**t).map(|(f, _)| f.clone()).collect();
        // Accepted frames are exactly the intact ones (a corrupted frame is never accepted).
        prop_assert_eq!(ok, intact);
    }
}

#[test]
fn reports_reasons() {
    let mut dec: Decoder<64> = Decoder::new();
    let mut long = vec![0u8];
    long.extend(std::iter::repeat_n(0x11u8, 100));
    long.push(0);
    long.extend_from_slice(&[0x05, 0x11, 0x00]); // COBS code points past the end
    long.extend_from_slice(&[0x03, 0x11, 0x22, 0x00]); // valid COBS, too short
    long.extend_from_slice(&[0x07, 1, 7, 1, 2, 3, 4, 0x00]); // bad CRC
    let mut input = &long[..];
    let mut reasons = Vec::new();
    while let Some(r) = dec.feed(&mut input) {
        let rej = r.unwrap_err();
        if rej.reason == RejectReason::TooLong {
            assert_eq!(rej.len, 100);
            assert_eq!(rej.raw.len(), 64);
        }
        reasons.push(rej.reason);
    }
    assert_eq!(
        reasons,
        [
            RejectReason::TooLong,
            RejectReason::BadCobs,
            RejectReason::TooShort,
            RejectReason::BadCrc
        ]
    );
    // And it still decodes a good frame afterwards.
    let f = frame(&Message::HelloRequest);
    let mut input = &f[..];
    assert!(same(
        &dec.feed(&mut input).unwrap().unwrap(),
        &Message::HelloRequest
    ));
}

//! Streaming decoder fuzz target.
//!
//! Input layout: `h · sizes[(h & 3) + 1] · stream`. The stream is fed to a `Decoder` (default `N`
//! and `Decoder<SMALL>`) in chunks whose sizes cycle through `sizes` (a size byte `s` means
//! `s * scale` bytes, `scale` picked by bits 2..=3 of `h`; `s == 0` means "all the rest").
//!
//! Checked for both decoders:
//! - `feed` always makes progress and only returns `None` with its input used up;
//! - every accepted message re-encodes, the re-encoded frame fits `MAX_ENCODED_LEN`, is a single
//!   well-formed frame, and decodes to the same message (compared by re-encoding again);
//! - every rejection has `raw.len() <= N` and `raw.len() <= len`;
//! - the result for each delimited run matches a reference computed from the whole stream (split
//!   at the delimiters, COBS-decoded by a separate implementation written from PROTOCOL.md, then
//!   `decode_body`), so results do not depend on chunking, and `pending()` equals the length of the
//!   unterminated tail.
#![no_main]

mod common;

use common::{reencode, ref_cobs_decode};
use ferry_wire::{decode_body, Decoder, RejectReason, DELIMITER, MAX_FRAME_LEN};
use libfuzzer_sys::fuzz_target;

const SMALL: usize = 64;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// A message, as its canonical re-encoded frame.
    Accepted(Vec<u8>),
    Rejected {
        reason: RejectReason,
        raw: Vec<u8>,
        len: usize,
    },
}

/// Runs the stream through a `Decoder<N>` in the given chunks, checking per-result invariants.
fn run<const N: usize>(stream: &[u8], sizes: &[usize]) -> (Vec<Outcome>, usize) {
    let mut dec = Decoder::<N>::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut input = chunk;
        loop {
            let before = input.len();
            match dec.feed(&mut input) {
                None => {
                    assert!(input.is_empty(), "feed returned None with input left");
                    break;
                }
                Some(result) => {
                    assert!(input.len() < before, "feed made no progress");
                    out.push(match result {
                        Ok(msg) => Outcome::Accepted(reencode(&msg)),
                        Err(rej) => {
                            assert!(rej.raw.len() <= N, "raw {} > N {N}", rej.raw.len());
                            assert!(
                                rej.raw.len() <= rej.len,
                                "raw {} > len {}",
                                rej.raw.len(),
                                rej.len
                            );
                            Outcome::Rejected {
                                reason: rej.reason,
                                raw: rej.raw.to_vec(),
                                len: rej.len,
                            }
                        }
                    });
                }
            }
        }
    }
    (out, dec.pending())
}

/// What a receiver with an `n`-byte buffer must report for one non-empty delimited run.
fn expected(run: &[u8], n: usize) -> Outcome {
    let reject = |reason, raw: &[u8]| Outcome::Rejected {
        reason,
        raw: raw.to_vec(),
        len: run.len(),
    };
    if run.len() > n {
        return reject(RejectReason::TooLong, &run[..n]);
    }
    let Some(body) = ref_cobs_decode(run) else {
        return reject(RejectReason::BadCobs, run);
    };
    let outcome = match decode_body(&body) {
        Ok(msg) => Outcome::Accepted(reencode(&msg)),
        Err(reason) => reject(reason, run),
    };
    outcome
}

fn check<const N: usize>(stream: &[u8], sizes: &[usize]) {
    let (got, pending) = run::<N>(stream, sizes);
    let mut runs: Vec<&[u8]> = stream.split(|&b| b == DELIMITER).collect();
    let tail = runs.pop().unwrap_or_default(); // not terminated by a delimiter: still pending
    let want: Vec<Outcome> = runs
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| expected(r, N))
        .collect();
    assert_eq!(got.len(), want.len(), "N={N}: number of results");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "N={N}: result {i} differs from reference");
    }
    assert_eq!(pending, tail.len(), "N={N}: pending()");
}

fuzz_target!(|data: &[u8]| {
    let Some((&h, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(h & 3) + 1;
    let scale = [1, 3, 17, 129][usize::from((h >> 2) & 3)];
    let (size_bytes, stream) = rest.split_at(k.min(rest.len()));
    let mut sizes: Vec<usize> = size_bytes
        .iter()
        .map(|&s| {
            if s == 0 {
                usize::MAX
            } else {
                usize::from(s) * scale
            }
        })
        .collect();
    if sizes.is_empty() {
        sizes.push(usize::MAX);
    }
    check::<MAX_FRAME_LEN>(stream, &sizes);
    check::<SMALL>(stream, &sizes);
});

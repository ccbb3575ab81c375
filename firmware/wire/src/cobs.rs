//! Consistent Overhead Byte Stuffing: removes every 0x00 from a block so 0x00 can delimit frames.
//!
//! Hand-written (it is short) so the exact rules live next to `PROTOCOL.md`: a code byte `c` (1..=255)
//! is followed by `c - 1` data bytes; a zero follows the group unless `c == 0xFF` or the group ends
//! the block.
//!
//! Invariant: every body has exactly one accepted encoding, the one [`encode`] emits. The COBS rules
//! alone allow two for a body whose last zero-free piece is 254·k bytes long (k ≥ 1): the encoder
//! ends such a block with an empty group (`… ff <254 bytes> 01`), and `… ff <254 bytes>` would
//! decode to the same body. [`decode`] rejects a block whose last group is a `0xFF` group, so a
//! frame cannot be accepted in two spellings (one sample, two raw forms in quarantine or a dedup
//! by bytes).

/// Worst-case encoded length of `n` bytes.
pub const fn max_encoded_len(n: usize) -> usize {
    n + n / 254 + 1
}

/// Encodes `src` into `dst`; returns the encoded length, or `None` if `dst` is too small.
pub fn encode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut code_at = 0;
    let mut out = 1;
    let mut code: u8 = 1;
    if dst.is_empty() {
        return None;
    }
    for &b in src {
        if b == 0 {
            dst[code_at] = code;
            code_at = out;
            *dst.get_mut(out)? = 0; // placeholder for the next code byte
            out += 1;
            code = 1;
        } else {
            *dst.get_mut(out)? = b;
            out += 1;
            code += 1;
            if code == 0xFF {
                dst[code_at] = code;
                code_at = out;
                *dst.get_mut(out)? = 0;
                out += 1;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    Some(out)
}

/// Decodes one COBS block (without delimiters) into `dst`; `None` if it is not valid COBS, not the
/// canonical encoding (a last group of code `0xFF`), or `dst` is too small.
pub fn decode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut out = 0;
    while i < src.len() {
        let code = src[i] as usize;
        if code == 0 || i + code > src.len() {
            return None;
        }
        if code == 0xFF && i + code == src.len() {
            // `encode` always follows a 0xFF group with another group (`01` if nothing is left).
            return None;
        }
        let data = &src[i + 1..i + code];
        dst.get_mut(out..out + data.len())?.copy_from_slice(data);
        out += data.len();
        i += code;
        if code < 0xFF && i < src.len() {
            *dst.get_mut(out)? = 0;
            out += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{vec, vec::Vec};

    fn roundtrip(src: &[u8]) {
        let mut enc = [0u8; 2048];
        let n = encode(src, &mut enc).unwrap();
        assert!(n <= max_encoded_len(src.len()));
        assert!(!enc[..n].contains(&0));
        let mut dec = [0u8; 2048];
        let m = decode(&enc[..n], &mut dec).unwrap();
        assert_eq!(&dec[..m], src);
    }

    #[test]
    fn known_vectors() {
        // Vectors from the COBS paper / Wikipedia.
        let cases: &[(&[u8], &[u8])] = &[
            (&[0x00], &[0x01, 0x01]),
            (&[0x00, 0x00], &[0x01, 0x01, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x22, 0x33, 0x44], &[0x05, 0x11, 0x22, 0x33, 0x44]),
            (&[0x11, 0x00, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01, 0x01]),
        ];
        for (raw, cobs) in cases {
            let mut out = [0u8; 16];
            let n = encode(raw, &mut out).unwrap();
            assert_eq!(&out[..n], *cobs);
            roundtrip(raw);
        }
    }

    #[test]
    fn long_runs() {
        let mut v = [1u8; 600];
        roundtrip(&v);
        v[253] = 0;
        v[254] = 0;
        roundtrip(&v);
        roundtrip(&v[..254]);
        roundtrip(&v[..255]);
        roundtrip(&[]);
    }

    #[test]
    fn rejects_invalid() {
        let mut out = [0u8; 16];
        assert_eq!(decode(&[0x05, 0x11], &mut out), None);
        assert_eq!(decode(&[0x00], &mut out), None);
        assert_eq!(decode(&[0x03, 0x11, 0x22], &mut [0u8; 1]), None);
    }

    #[test]
    fn pieces_of_254_k_bytes_have_one_encoding() {
        for k in 1..=3 {
            for zero_before in [false, true] {
                let mut body = vec![];
                if zero_before {
                    body.extend_from_slice(&[0x11, 0x00]);
                }
                body.extend((0..254 * k).map(|i| (i % 255 + 1) as u8));
                let mut enc = [0u8; 1024];
                let n = encode(&body, &mut enc).unwrap();
                assert_eq!(
                    enc[n - 256],
                    0xFF,
                    "k={k}: the last piece ends a 0xFF group"
                );
                assert_eq!(
                    enc[n - 1],
                    0x01,
                    "k={k}: the encoder ends with an empty group"
                );
                roundtrip(&body);
                // Without the trailing empty group the block would decode to the same body.
                let mut dec = [0u8; 1024];
                assert_eq!(decode(&enc[..n - 1], &mut dec), None, "k={k}");
            }
        }
        // A 0xFF group followed by more data stays valid.
        let mut v = vec![0xFF];
        v.extend(1..=254u8);
        v.extend_from_slice(&[0x02, 0x33]);
        let mut dec = [0u8; 512];
        let n = decode(&v, &mut dec).unwrap();
        assert_eq!(n, 255);
        assert_eq!(dec[254], 0x33);
    }

    /// Against the `cobs` crate, an independent implementation. The crate ends a block whose
    /// last zero-free piece is 254·k bytes with that `0xFF` group; PROTOCOL.md's canonical form
    /// adds an empty `01` group after it (see the module header). So: the same encoding apart from
    /// that `01`, and a block is accepted exactly when the `cobs` crate decodes it and its last
    /// group is not a `0xFF` group. Blocks hold no `0x00` (the delimiter ends them before a
    /// decoder sees them; the crate would stop at one).
    mod oracle {
        use super::super::{decode, encode, max_encoded_len};
        use std::vec::Vec;

        /// The code byte of the block's last group (`None` for an empty or malformed block).
        fn last_code(block: &[u8]) -> Option<u8> {
            let (mut i, mut last) = (0, None);
            while i < block.len() {
                let code = block[i];
                if code == 0 {
                    return None;
                }
                last = Some(code);
                i += usize::from(code);
            }
            last
        }

        fn canonical_encode(body: &[u8]) -> Vec<u8> {
            let mut out = std::vec![0u8; cobs::max_encoding_length(body.len())];
            let n = cobs::encode(body, &mut out);
            out.truncate(n);
            // The crate encodes the empty body as nothing, though it decodes `01` to it.
            if out.is_empty() || last_code(&out) == Some(0xFF) {
                out.push(0x01);
            }
            out
        }

        proptest::proptest! {
            #[test]
            fn encodes_like_the_cobs_crate(
                body in proptest::collection::vec(
                    proptest::prop_oneof![1 => proptest::prelude::Just(0u8), 9 => 1u8..=255],
                    0..1100,
                ),
            ) {
                let mut enc = std::vec![0u8; max_encoded_len(body.len())];
                let n = encode(&body, &mut enc).unwrap();
                proptest::prop_assert_eq!(&enc[..n], &canonical_encode(&body)[..]);
            }

            #[test]
            fn decodes_exactly_the_canonical_blocks(
                block in proptest::collection::vec(
                    proptest::prop_oneof![1 => proptest::prelude::Just(0xFFu8), 3 => 1u8..=8, 4 => 1u8..=255],
                    1..600,
                ),
            ) {
                let mut dec = [0u8; 1024];
                let ours = decode(&block, &mut dec).map(|n| dec[..n].to_vec());
                let theirs = cobs::decode_vec(&block)
                    .ok()
                    .filter(|_| last_code(&block) != Some(0xFF));
                proptest::prop_assert_eq!(ours, theirs);
            }

            /// Blocks of whole 254-byte groups, where the two forms differ.
            #[test]
            fn long_zero_free_runs(k in 1usize..4, tail in 0usize..3, fill in 1u8..=255) {
                let body = std::vec![fill; 254 * k + tail];
                let mut enc = std::vec![0u8; max_encoded_len(body.len())];
                let n = encode(&body, &mut enc).unwrap();
                proptest::prop_assert_eq!(&enc[..n], &canonical_encode(&body)[..]);
                let mut dec = [0u8; 1024];
                let m = decode(&enc[..n], &mut dec).unwrap();
                proptest::prop_assert_eq!(&dec[..m], &cobs::decode_vec(&enc[..n]).unwrap()[..]);
                if tail == 0 {
                    // The other spelling, without the final `01`: the crate takes it for the same
                    // body, the protocol refuses it.
                    let short = &enc[..n - 1];
                    proptest::prop_assert_eq!(cobs::decode_vec(short).unwrap(), body);
                    proptest::prop_assert_eq!(decode(short, &mut dec), None);
                }
            }
        }
    }

    proptest::proptest! {
        /// Any block made of well-formed groups either is the encoder's output for what it
        /// decodes to, or ends with a 0xFF group and is rejected: one encoding per body.
        #[test]
        fn every_accepted_block_is_the_canonical_encoding(
            groups in proptest::collection::vec((1u8..=255, proptest::prelude::any::<u8>()), 1..8),
        ) {
            let mut block = Vec::new();
            for (code, fill) in groups {
                block.push(code);
                block.extend((1..code).map(|i| fill.wrapping_add(i).max(1)));
            }
            let mut dec = [0u8; 4096];
            match decode(&block, &mut dec) {
                Some(n) => {
                    let mut enc = [0u8; 4096];
                    let m = encode(&dec[..n], &mut enc).unwrap();
                    proptest::prop_assert_eq!(&enc[..m], &block[..]);
                }
                None => {
                    let last = block.len() - 255;
                    proptest::prop_assert_eq!(block[last], 0xFF, "only a trailing 0xFF group is refused");
                }
            }
        }
    }
}

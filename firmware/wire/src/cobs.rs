//! Consistent Overhead Byte Stuffing: removes every 0x00 from a block so 0x00 can delimit frames.
//!
//! Hand-written (it is short) so the exact rules live next to `PROTOCOL.md`: a code byte `c` (1..=255)
//! is followed by `c - 1` data bytes; a zero follows the group unless `c == 0xFF` or the group ends
//! the block.

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

/// Decodes one COBS block (without delimiters) into `dst`; `None` if it is not valid COBS or `dst`
/// is too small.
pub fn decode(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut out = 0;
    while i < src.len() {
        let code = src[i] as usize;
        if code == 0 || i + code > src.len() {
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
}

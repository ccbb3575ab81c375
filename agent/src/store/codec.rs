//! The compact form of a run of samples of one `(device, boot)`: how they are written to the
//! sample log ([`super::log`]) and how they are kept in the database (one row per run).
//!
//! A run is a list of [`Sample`]s in store order (ascending `id`, and per boot ascending `seq`).
//! The first sample is written whole, every later one as the difference to the one before:
//!
//! | field | encoding |
//! |---|---|
//! | `id` | unsigned LEB128; later samples: `id − previous id` (≥ 1) |
//! | `seq` | unsigned LEB128; later samples: `seq − previous seq` (≥ 1; a boot stores each seq once, in order) |
//! | `ts_ms` | zigzag LEB128 of the value; later samples: of `ts_ms − previous ts_ms` (may be negative: sensors of one frame are not sampled in time order) |
//! | `sensor` | one byte |
//! | `value` | the f32 reading as 4 bytes, little-endian, bit for bit (NaN payloads and −0 kept) |
//!
//! A run of a device sampling a few sensors costs 8–9 bytes a sample (a row per sample cost
//! about 60 in the table and its index). Hand-written: the deltas are the point, a general
//! serializer would add a length and a tag per field, and this is the ingest path's inner loop.
//!
//! Decoding checks everything (lengths, overflow, strictly increasing `id` and `seq`): bytes read
//! back from a disk are outside input.

/// One stored sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `events.id`: the store order, unique across devices.
    pub id: i64,
    /// The device's sequence number within its boot.
    pub seq: u32,
    /// Sensor index.
    pub sensor: u8,
    /// UTC milliseconds.
    pub ts_ms: i64,
    /// The reading.
    pub value: f32,
}

/// Why bytes are not a run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a sample.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A number is longer than its type or out of its range.
    #[error("number out of range at byte {0}")]
    Overflow(usize),
    /// `id` or `seq` does not increase.
    #[error("ids or seqs not increasing at byte {0}")]
    NotIncreasing(usize),
}

/// Appends `v` as unsigned LEB128.
pub fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as unsigned LEB128.
pub fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A reader over encoded bytes that remembers where it is.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.at == self.buf.len()
    }

    /// An unsigned LEB128 number (at most 10 bytes, no bits beyond 64).
    pub fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.at).ok_or(DecodeError::Truncated(start))?;
            self.at += 1;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Overflow(start));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Overflow(start))
    }

    /// A zigzag LEB128 number.
    pub fn ivarint(&mut self) -> Result<i64, DecodeError> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// An unsigned LEB128 number that fits `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let at = self.at;
        u32::try_from(self.uvarint()?).map_err(|_| DecodeError::Overflow(at))
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Ok(b)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
}

/// Appends the run `samples` (see the module header); `samples` must be in store order.
pub fn encode(samples: &[Sample], out: &mut Vec<u8>) {
    put_uvarint(out, samples.len() as u64);
    let mut prev: Option<&Sample> = None;
    for s in samples {
        match prev {
            None => {
                put_uvarint(out, s.id as u64);
                put_uvarint(out, u64::from(s.seq));
                put_ivarint(out, s.ts_ms);
            }
            Some(p) => {
                debug_assert!(s.id > p.id && s.seq > p.seq, "a run is in store order");
                put_uvarint(out, (s.id - p.id) as u64);
                put_uvarint(out, u64::from(s.seq - p.seq));
                put_ivarint(out, s.ts_ms.wrapping_sub(p.ts_ms));
            }
        }
        out.push(s.sensor);
        out.extend_from_slice(&s.value.to_bits().to_le_bytes());
        prev = Some(s);
    }
}

/// Reads one run written by [`encode`], appending its samples to `out`.
pub fn decode(r: &mut Reader<'_>, out: &mut Vec<Sample>) -> Result<(), DecodeError> {
    let at = r.position();
    let n = r.uvarint()?;
    // Each sample takes at least 8 bytes: a count beyond that is a lie, not a reason to allocate.
    let left = (r.buf.len() - r.position()) as u64;
    if n > left / 8 + 1 {
        return Err(DecodeError::Truncated(at));
    }
    out.reserve(n as usize);
    let mut prev: Option<Sample> = None;
    for _ in 0..n {
        let at = r.position();
        let (id, seq, ts_ms) = match prev {
            None => {
                let id = i64::try_from(r.uvarint()?).map_err(|_| DecodeError::Overflow(at))?;
                (id, r.u32()?, r.ivarint()?)
            }
            Some(p) => {
                let did = r.uvarint()?;
                let dseq = r.uvarint()?;
                let dts = r.ivarint()?;
                if did == 0 || dseq == 0 {
                    return Err(DecodeError::NotIncreasing(at));
                }
                let id = i64::try_from(did)
                    .ok()
                    .and_then(|d| p.id.checked_add(d))
                    .ok_or(DecodeError::Overflow(at))?;
                let seq = u32::try_from(dseq)
                    .ok()
                    .and_then(|d| p.seq.checked_add(d))
                    .ok_or(DecodeError::Overflow(at))?;
                (id, seq, p.ts_ms.wrapping_add(dts))
            }
        };
        let sensor = r.u8()?;
        let bits = r.bytes(4)?;
        let value = f32::from_bits(u32::from_le_bytes(bits.try_into().expect("4 bytes")));
        let s = Sample {
            id,
            seq,
            sensor,
            ts_ms,
            value,
        };
        out.push(s);
        prev = Some(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(samples: &[Sample]) -> Vec<u8> {
        let mut b = Vec::new();
        encode(samples, &mut b);
        b
    }

    fn back(bytes: &[u8]) -> Result<Vec<Sample>, DecodeError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        decode(&mut r, &mut out)?;
        assert!(r.is_empty(), "a run is read to its end");
        Ok(out)
    }

    fn typical(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                id: 1_000_000 + 50 * i as i64,
                seq: 7 + i as u32,
                sensor: (i % 5) as u8,
                ts_ms: 1_764_000_000_000 + (i / 5) as i64 * 1000,
                value: 20.0 + i as f32 * 0.01,
            })
            .collect()
    }

    #[test]
    fn a_typical_run_costs_under_nine_bytes_a_sample() {
        let s = typical(1000);
        let b = run(&s);
        assert!(b.len() < 9 * 1000, "{} bytes", b.len());
        assert_eq!(back(&b).unwrap(), s);
    }

    #[test]
    fn odd_values_are_kept_bit_for_bit() {
        let mut s = typical(6);
        s[0].value = f32::NAN;
        s[1].value = -0.0;
        s[2].value = f32::INFINITY;
        s[3].value = f32::from_bits(0x7fc0_1234);
        s[4].ts_ms = i64::MIN;
        s[5].ts_ms = i64::MAX;
        let got = back(&run(&s)).unwrap();
        for (a, b) in s.iter().zip(&got) {
            assert_eq!(a.value.to_bits(), b.value.to_bits());
            assert_eq!(
                (a.id, a.seq, a.sensor, a.ts_ms),
                (b.id, b.seq, b.sensor, b.ts_ms)
            );
        }
    }

    #[test]
    fn broken_bytes_are_errors_never_panics_or_huge_allocations() {
        let b = run(&typical(10));
        for cut in 0..b.len() {
            assert!(back(&b[..cut]).is_err(), "cut at {cut}");
        }
        // A count of 2^60 samples in a few bytes.
        let mut lie = Vec::new();
        put_uvarint(&mut lie, 1 << 60);
        assert_eq!(back(&lie), Err(DecodeError::Truncated(0)));
        // An 11-byte varint.
        assert_eq!(
            Reader::new(&[0xff; 11]).uvarint(),
            Err(DecodeError::Overflow(0))
        );
        // Two samples with the same id.
        let s = typical(2);
        let mut b = run(&s);
        let second = b.len() - 8; // id delta, seq delta, ts delta (1 byte each), sensor, value
        b[second] = 0;
        assert!(matches!(back(&b), Err(DecodeError::NotIncreasing(_))));
    }

    fn sample() -> impl Strategy<Value = (u64, u32, u8, i64, u32)> {
        (
            1u64..1_000_000,
            1u32..1000,
            any::<u8>(),
            any::<i64>(),
            any::<u32>(),
        )
    }

    proptest! {
        #[test]
        fn any_run_in_store_order_reads_back(first in 0i64..i64::MAX / 2, seq0 in 0u32..u32::MAX / 2,
                                             steps in proptest::collection::vec(sample(), 0..200)) {
            let mut s = Vec::new();
            let (mut id, mut seq) = (first, seq0);
            for (did, dseq, sensor, ts_ms, bits) in steps {
                s.push(Sample { id, seq, sensor, ts_ms, value: f32::from_bits(bits) });
                id += did as i64;
                seq = seq.saturating_add(dseq);
                if seq == u32::MAX { break; }
            }
            let got = back(&run(&s)).unwrap();
            prop_assert_eq!(got.len(), s.len());
            for (a, b) in s.iter().zip(&got) {
                prop_assert_eq!((a.id, a.seq, a.sensor, a.ts_ms, a.value.to_bits()),
                                (b.id, b.seq, b.sensor, b.ts_ms, b.value.to_bits()));
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = Reader::new(&bytes);
            let mut out = Vec::new();
            let _ = decode(&mut r, &mut out);
        }
    }
}

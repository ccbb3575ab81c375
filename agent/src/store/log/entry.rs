//! What a log record holds (sans-IO): per `(device, boot)` touched by the commit, the boot's
//! position after it and the samples it stored.
//!
//! Payload: a count of entries (LEB128), then per entry `device`, `boot_no`, `next_seq`,
//! `gap_dropped` (each unsigned LEB128) and the samples as a [`codec`](crate::store::codec) run.
//! Positions are absolute (the boot's `next_seq` and its total of seqs dropped by the device), so
//! replaying a record twice, or one the database already holds, changes nothing: recovery takes
//! the maximum.

use crate::store::codec::{self, DecodeError, Reader, Sample};

/// One boot's part of a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `devices.id`.
    pub device: i64,
    /// `boots.boot_no`.
    pub boot_no: i64,
    /// Every seq below this is stored or was dropped by the device.
    pub next_seq: u32,
    /// Seqs the device dropped before sending them, in total for the boot.
    pub gap_dropped: u64,
    /// The samples stored, in store order.
    pub samples: Vec<Sample>,
}

/// Appends the payload of a record holding `entries`.
pub fn encode(entries: &[Entry], out: &mut Vec<u8>) {
    codec::put_uvarint(out, entries.len() as u64);
    for e in entries {
        codec::put_uvarint(out, e.device as u64);
        codec::put_uvarint(out, e.boot_no as u64);
        codec::put_uvarint(out, u64::from(e.next_seq));
        codec::put_uvarint(out, e.gap_dropped);
        codec::encode(&e.samples, out);
    }
}

/// Reads a record's payload.
pub fn decode(payload: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    let mut r = Reader::new(payload);
    let n = r.uvarint()?;
    if n > payload.len() as u64 {
        return Err(DecodeError::Truncated(0));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let at = r.position();
        let device = i64::try_from(r.uvarint()?).map_err(|_| DecodeError::Overflow(at))?;
        let boot_no = i64::try_from(r.uvarint()?).map_err(|_| DecodeError::Overflow(at))?;
        let next_seq = r.u32()?;
        let gap_dropped = r.uvarint()?;
        let mut samples = Vec::new();
        codec::decode(&mut r, &mut samples)?;
        out.push(Entry {
            device,
            boot_no,
            next_seq,
            gap_dropped,
            samples,
        });
    }
    if !r.is_empty() {
        return Err(DecodeError::Truncated(r.position()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_broken_payloads_are_errors() {
        let e = vec![
            Entry {
                device: 3,
                boot_no: 2,
                next_seq: 10,
                gap_dropped: 4,
                samples: vec![Sample {
                    id: 77,
                    seq: 9,
                    sensor: 1,
                    ts_ms: 1_764_000_000_000,
                    value: 2.5,
                }],
            },
            Entry {
                device: 4,
                boot_no: 1,
                next_seq: 5,
                gap_dropped: 0,
                samples: vec![],
            },
        ];
        let mut b = Vec::new();
        encode(&e, &mut b);
        assert_eq!(decode(&b).unwrap(), e);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
    }
}

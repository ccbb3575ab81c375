//! Framing of the sample log's records (sans-IO).
//!
//! A record is one commit: a 24-byte header, the payload, zeros up to the next [`BLOCK`]
//! boundary. Every record starts on a block of its own, so appending a record never rewrites a
//! block that holds an earlier, already synced (and acked) record: a write torn by a power cut
//! can only damage the record being written, which nobody was told about yet.
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `FSL1` |
//! | 4..12 | `lsn`, u64 little-endian: 1, 2, 3 … over the life of the log |
//! | 12..16 | payload length, u32 little-endian |
//! | 16..20 | CRC-32C (Castagnoli) of bytes 4..16 and of the payload |
//! | 20..24 | zero |
//! | 24.. | payload, then zeros to the block boundary |
//!
//! A record is valid when the magic, the length (within the buffer) and the CRC hold. Reading a
//! segment stops at the first invalid record, and at a record whose `lsn` is not one more than the
//! previous one: a recycled segment still holds older records after the new ones.

use std::ops::Range;

/// Records are padded to this: the unit a disk writes (4 KiB is also the least a synced write
/// costs on the disks measured, see `docs/decisions/lean-data-path.md`).
pub const BLOCK: usize = 4096;
/// Header bytes before the payload.
pub const HEADER: usize = 24;
const MAGIC: [u8; 4] = *b"FSL1";
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Bytes a record with `payload_len` bytes of payload takes.
pub fn framed_len(payload_len: usize) -> usize {
    (HEADER + payload_len).div_ceil(BLOCK) * BLOCK
}

/// Appends the record `lsn` holding `payload`, padded to whole blocks.
pub fn encode(lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("a record payload fits u32");
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut d = CRC.digest();
    d.update(&out[start + 4..start + 16]);
    d.update(payload);
    out.extend_from_slice(&d.finalize().to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out.resize(start + framed_len(payload.len()), 0);
}

/// A valid record found in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its sequence number.
    pub lsn: u64,
    /// Where its payload is in the buffer.
    pub payload: Range<usize>,
    /// Where the next record would start.
    pub next: usize,
}

/// The record at `at` in `buf`, if there is a valid one.
pub fn decode_at(buf: &[u8], at: usize) -> Option<Found> {
    let h = buf.get(at..at.checked_add(HEADER)?)?;
    if h[0..4] != MAGIC {
        return None;
    }
    let lsn = u64::from_le_bytes(h[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(h[12..16].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    let payload = at + HEADER..(at + HEADER).checked_add(len)?;
    let body = buf.get(payload.clone())?;
    let mut d = CRC.digest();
    d.update(&h[4..16]);
    d.update(body);
    if d.finalize() != crc {
        return None;
    }
    Some(Found {
        lsn,
        payload,
        next: at + framed_len(len),
    })
}

/// The valid records of a segment from its start, each `lsn` one more than the one before.
pub fn scan(buf: &[u8]) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut at = 0;
    while let Some(f) = decode_at(buf, at) {
        if out.last().is_some_and(|p| f.lsn != p.lsn + 1) {
            break;
        }
        at = f.next;
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[(u64, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (lsn, p) in records {
            encode(*lsn, p, &mut b);
        }
        b
    }

    #[test]
    fn records_take_whole_blocks_and_read_back_in_order() {
        let big = vec![7u8; BLOCK];
        let b = segment(&[(1, b"one"), (2, &big), (3, b"")]);
        assert_eq!(b.len(), BLOCK + 2 * BLOCK + BLOCK);
        let found = scan(&b);
        assert_eq!(found.iter().map(|f| f.lsn).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(&b[found[0].payload.clone()], b"one");
        assert_eq!(&b[found[1].payload.clone()], &big[..]);
        assert!(found[2].payload.is_empty());
    }

    #[test]
    fn a_torn_or_flipped_record_ends_the_scan_and_hides_nothing_before_it() {
        let b = segment(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        for at in [BLOCK + 2, BLOCK + HEADER + 1, BLOCK + 13] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            assert_eq!(scan(&bad).len(), 1, "flip at {at}");
        }
        // A record cut short by the end of what reached the disk.
        assert_eq!(scan(&b[..2 * BLOCK + HEADER + 2]).len(), 2);
        // Zeros (a fresh segment) hold no record.
        assert!(scan(&vec![0; 3 * BLOCK]).is_empty());
    }

    #[test]
    fn a_recycled_segment_ends_where_the_new_records_end() {
        // Old records 10..13 of an earlier use, then 20 and 21 written over the first two blocks.
        let mut b = segment(&[(10, b"a"), (11, b"b"), (12, b"c"), (13, b"d")]);
        let new = segment(&[(20, b"x"), (21, b"y")]);
        b[..new.len()].copy_from_slice(&new);
        let found = scan(&b);
        assert_eq!(found.iter().map(|f| f.lsn).collect::<Vec<_>>(), [20, 21]);
    }
}

//! The sample log: where an acked sample is durable before it reaches the database.
//!
//! Each commit of the writer appends one record ([`record`]) and syncs it (`fdatasync`); only
//! then are its samples acked. The database receives them later, in large batches, so the pages
//! of its tables, indexes and read models are written once per batch instead of once per commit
//! (see `docs/decisions/lean-data-path.md`). A record stays until the writer
//! [`releases`](SampleLog::release_through) it, after the batch holding its samples committed to
//! the database durably.
//!
//! Files: the log lives in a directory beside the database (`ferry.db.log/`) as segments
//! `seg-0000.log`, `seg-0001.log`, … of [`SEGMENT_BYTES`] each, zero-filled and synced when created
//! and reused after release, so appending never changes a file's size or allocation (no
//! metadata to sync with each commit, nothing the filesystem must journal).
//!
//! Invariants:
//! - **Never rewrite a synced block.** Records start on block boundaries and a segment is reused
//!   only when every record in it is released: a torn write can only damage the record being
//!   written, which was not acked.
//! - **What [`open`](SampleLog::open) returns is every valid record**, in `lsn` order, from every
//!   segment (released ones included: the caller knows what its database holds, by sample id).
//!   A segment is read from its start until a record is invalid or its `lsn` does not follow.
//! - **New records go to a segment holding nothing unreleased.** After `open`, the first append
//!   starts a segment of its own: the tail of the segment written before a crash is never
//!   written again.

pub mod entry;
pub mod record;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per segment.
pub const SEGMENT_BYTES: u64 = 256 << 10;

/// A record read back at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Its sequence number.
    pub lsn: u64,
    /// What was appended.
    pub payload: Vec<u8>,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    file: File,
    /// Highest `lsn` written to it (0: none since it was last free).
    last_lsn: u64,
    /// Holds records not yet released.
    in_use: bool,
    /// Written since the last sync.
    dirty: bool,
}

/// The open log.
#[derive(Debug)]
pub struct SampleLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Segment appended to, and the offset of its next record (`None`: pick one at the next
    /// append).
    active: Option<(usize, u64)>,
    next_lsn: u64,
    segment_bytes: u64,
    buf: Vec<u8>,
}

fn segment_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("seg-{i:04}.log"))
}

/// Syncs a directory (its entries: a created file's name). `fdatasync`, as everywhere in the
/// agent: a directory's entries are its data.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_data()
}

impl SampleLog {
    /// Opens the log in `dir` (created if missing), with the records it holds.
    pub fn open(dir: &Path) -> io::Result<(SampleLog, Vec<Recovered>)> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`open`](Self::open) with another segment size (tests).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> io::Result<(SampleLog, Vec<Recovered>)> {
        assert!(segment_bytes as usize % record::BLOCK == 0 && segment_bytes > 0);
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut segments = Vec::new();
        let mut recovered = Vec::new();
        for i in 0.. {
            let path = segment_path(dir, i);
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            let buf = std::fs::read(&path)?;
            let found = record::scan(&buf);
            let last_lsn = found.last().map_or(0, |f| f.lsn);
            recovered.extend(found.into_iter().map(|f| Recovered {
                lsn: f.lsn,
                payload: buf[f.payload].to_vec(),
            }));
            segments.push(Segment {
                file,
                last_lsn,
                // Until the caller releases what it has: nothing read here is overwritten.
                in_use: last_lsn > 0,
                dirty: false,
            });
        }
        recovered.sort_by_key(|r| r.lsn);
        let next_lsn = recovered.last().map_or(1, |r| r.lsn + 1);
        Ok((
            SampleLog {
                dir: dir.to_path_buf(),
                segments,
                active: None,
                next_lsn,
                segment_bytes,
                buf: Vec::new(),
            },
            recovered,
        ))
    }

    /// The `lsn` the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Appends a record (not yet durable: see [`sync`](Self::sync)); returns its `lsn`.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<u64> {
        let len = record::framed_len(payload.len()) as u64;
        if len > self.segment_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a log record of {} bytes is larger than a segment",
                    payload.len()
                ),
            ));
        }
        let (seg, at) = match self.active {
            Some((s, at)) if at + len <= self.segment_bytes => (s, at),
            _ => (self.free_segment()?, 0),
        };
        let lsn = self.next_lsn;
        self.buf.clear();
        record::encode(lsn, payload, &mut self.buf);
        let s = &mut self.segments[seg];
        s.file.write_all_at(&self.buf, at)?;
        s.last_lsn = lsn;
        s.in_use = true;
        s.dirty = true;
        self.active = Some((seg, at + len));
        self.next_lsn += 1;
        Ok(lsn)
    }

    /// Makes every appended record durable (`fdatasync` of each segment written since the last
    /// sync).
    pub fn sync(&mut self) -> io::Result<()> {
        for s in self.segments.iter_mut().filter(|s| s.dirty) {
            s.file.sync_data()?;
            s.dirty = false;
        }
        Ok(())
    }

    /// Records up to `lsn` are in the database durably: their segments may be reused (all but
    /// the one being appended to).
    pub fn release_through(&mut self, lsn: u64) {
        let active = self.active.map(|(s, _)| s);
        for (i, s) in self.segments.iter_mut().enumerate() {
            if s.in_use && s.last_lsn <= lsn && Some(i) != active {
                s.in_use = false;
            }
        }
    }

    /// Segments on disk, and of those holding unreleased records.
    pub fn segments(&self) -> (usize, usize) {
        (
            self.segments.len(),
            self.segments.iter().filter(|s| s.in_use).count(),
        )
    }

    /// A segment holding nothing unreleased (a new one when there is none).
    fn free_segment(&mut self) -> io::Result<usize> {
        if let Some(i) = self.segments.iter().position(|s| !s.in_use) {
            return Ok(i);
        }
        let i = self.segments.len();
        let path = segment_path(&self.dir, i);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // Zeros written (not a sparse `set_len`): later writes then change no allocation. One block
        // per write: the page cache keeps a file in folios as large as the writes that filled it
        // (ext4 on Linux 6.x), and a record written into a 256 KiB folio would dirty, count and
        // write back all 256 KiB (measured: see docs/decisions/lean-data-path.md).
        let zeros = [0u8; record::BLOCK];
        let mut at = 0;
        while at < self.segment_bytes {
            file.write_all_at(&zeros, at)?;
            at += record::BLOCK as u64;
        }
        file.sync_data()?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            file,
            last_lsn: 0,
            in_use: false,
            dirty: false,
        });
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 4 * record::BLOCK as u64;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn lsns(r: &[Recovered]) -> Vec<u64> {
        r.iter().map(|r| r.lsn).collect()
    }

    #[test]
    fn records_survive_a_reopen_in_order_and_new_ones_follow() {
        let d = dir("reopen");
        let (mut log, got) = SampleLog::open_with(&d, SEG).unwrap();
        assert!(got.is_empty());
        for i in 0..10u8 {
            assert_eq!(log.append(&[i; 100]).unwrap(), u64::from(i) + 1);
        }
        log.sync().unwrap();
        // 10 one-block records in 4-block segments: 3 segments.
        assert_eq!(log.segments(), (3, 3));
        drop(log);
        let (mut log, got) = SampleLog::open_with(&d, SEG).unwrap();
        assert_eq!(lsns(&got), (1..=10).collect::<Vec<_>>());
        assert_eq!(got[4].payload, vec![4u8; 100]);
        assert_eq!(log.append(b"next").unwrap(), 11);
        // After a reopen, appends start a segment of their own.
        assert_eq!(log.segments(), (4, 4));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn released_segments_are_reused_and_their_old_records_never_read_as_new() {
        let d = dir("reuse");
        let (mut log, _) = SampleLog::open_with(&d, SEG).unwrap();
        for _ in 0..8 {
            log.append(b"old").unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.segments(), (2, 2));
        log.release_through(4);
        // Segment 0 (lsn 1..=4) is free; segment 1 is the active one, not released.
        assert_eq!(log.segments(), (2, 1));
        log.release_through(8);
        assert_eq!(log.segments(), (2, 1), "the active segment stays");
        for _ in 0..5 {
            log.append(b"new").unwrap();
        }
        log.sync().unwrap();
        // lsn 9..=12 filled what was left of nothing in segment 1 (full): segment 0 was reused
        // for 9..=12, a new segment 2 took 13.
        assert_eq!(log.segments().0, 3);
        drop(log);
        let (_, got) = SampleLog::open_with(&d, SEG).unwrap();
        let l = lsns(&got);
        assert_eq!(&l[l.len() - 5..], &[9, 10, 11, 12, 13]);
        assert!(got
            .iter()
            .filter(|r| r.lsn >= 9)
            .all(|r| r.payload == b"new"));
        // Segment 0's old lsn 1..=4 were overwritten; segment 1's 5..=8 are still there
        // (released, read back; the caller skips what its database holds).
        assert_eq!(&l[..l.len() - 5], &[5, 6, 7, 8]);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
        let d = dir("torn");
        let (mut log, _) = SampleLog::open_with(&d, SEG).unwrap();
        log.append(b"kept").unwrap();
        log.append(&[9u8; 5000]).unwrap();
        log.sync().unwrap();
        drop(log);
        // The power went while the second record's second block was being written.
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(&d, 0))
            .unwrap();
        f.write_all_at(&[0u8; 100], record::BLOCK as u64 + 4200)
            .unwrap();
        let (mut log, got) = SampleLog::open_with(&d, SEG).unwrap();
        assert_eq!(lsns(&got), [1]);
        assert_eq!(log.append(b"after").unwrap(), 2);
        log.sync().unwrap();
        drop(log);
        let (_, got) = SampleLog::open_with(&d, SEG).unwrap();
        assert_eq!(lsns(&got), [1, 2]);
        assert_eq!(got[1].payload, b"after");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_record_larger_than_a_segment_is_refused() {
        let d = dir("big");
        let (mut log, _) = SampleLog::open_with(&d, SEG).unwrap();
        let e = log.append(&vec![0; SEG as usize]).unwrap_err();
        assert!(e.to_string().contains("larger than a segment"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}

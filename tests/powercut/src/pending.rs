//! What one file holds that is not yet on the "disk": its unsynced content, as a pure value.
//!
//! Invariants:
//! - The durable content is the backing file; nothing here writes it. [`Pending::sync`] and
//!   [`Pending::cut`] return a [`Flush`] that the volume applies to the backing file, and then
//!   the pending state starts again from what the flush left.
//! - What a reader sees is the backing content up to `truncated_to` (zeros past it, up to the
//!   visible size), overlaid by every sector written since the last sync.
//! - A sync keeps everything. A cut keeps each written block (512 B or 4 KiB, aligned in the
//!   file) whole or not at all, independently of the others: a sector that survives holds the
//!   last content written to it, one that does not holds the content of the last sync. The file's
//!   size after a cut is the size of the last sync or the size written since, either of the two
//!   (the size is metadata, written apart from the data); a truncate not synced survives only
//!   with the new size. Each outcome is one a real disk may leave after losing power.

use std::collections::BTreeMap;
use std::io;

/// The unit of tearing: a write lost in part is lost in whole sectors.
pub const SECTOR: u64 = 512;

/// Reads `buf.len()` bytes of the backing file at an offset (zeros past its end).
pub type ReadBacking<'a> = &'a mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>;

/// The unsynced state of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Visible content of each sector written since the last sync, by sector index.
    sectors: BTreeMap<u64, Box<[u8]>>,
    /// The size readers see.
    size: u64,
    /// The size at the last sync (the backing file's length).
    durable_size: u64,
    /// The lowest size a truncate set since the last sync: backing bytes from here on read as
    /// zeros.
    truncated_to: Option<u64>,
}

/// What to do to the backing file, in this order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Flush {
    /// Cut the backing file to this length first.
    pub truncate: Option<u64>,
    /// Then write these bytes at these offsets.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// Then set the length to this.
    pub size: u64,
}

/// How a cut treats the unsynced writes of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutChoice {
    /// Bytes per block that survives or is lost as one (a multiple of [`SECTOR`]).
    pub block: u64,
    /// Keep the size written since the last sync (else the size at the last sync).
    pub keep_size: bool,
}

impl Pending {
    /// A file whose backing file is `durable_size` bytes long and nothing unsynced.
    pub fn new(durable_size: u64) -> Pending {
        Pending {
            sectors: BTreeMap::new(),
            size: durable_size,
            durable_size,
            truncated_to: None,
        }
    }

    /// The size readers see.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether anything is unsynced.
    pub fn is_dirty(&self) -> bool {
        !self.sectors.is_empty() || self.size != self.durable_size || self.truncated_to.is_some()
    }

    /// Bytes held in memory.
    pub fn held_bytes(&self) -> u64 {
        self.sectors.len() as u64 * SECTOR
    }

    /// The visible content of `[off, off + len)`, clipped to the size.
    pub fn read(&self, off: u64, len: usize, backing: ReadBacking<'_>) -> io::Result<Vec<u8>> {
        let end = (off + len as u64).min(self.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - off) as usize];
        // Backing bytes below both the durable size and any truncate, then the dirty sectors.
        let backing_end = end
            .min(self.durable_size)
            .min(self.truncated_to.unwrap_or(u64::MAX));
        if backing_end > off {
            backing(off, &mut out[..(backing_end - off) as usize])?;
        }
        for (&s, data) in self.sectors.range(off / SECTOR..=(end - 1) / SECTOR) {
            let (s_start, s_end) = (s * SECTOR, s * SECTOR + SECTOR);
            let (a, b) = (s_start.max(off), s_end.min(end));
            out[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&data[(a - s_start) as usize..(b - s_start) as usize]);
        }
        Ok(out)
    }

    /// Writes `data` at `off` (extending the size if it ends past it).
    pub fn write(&mut self, off: u64, data: &[u8], backing: ReadBacking<'_>) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        for s in off / SECTOR..=(end - 1) / SECTOR {
            let s_start = s * SECTOR;
            if !self.sectors.contains_key(&s) {
                let current = self.read(s_start, SECTOR as usize, backing)?;
                let mut full = vec![0u8; SECTOR as usize];
                full[..current.len()].copy_from_slice(&current);
                self.sectors.insert(s, full.into_boxed_slice());
            }
            let sector = self.sectors.get_mut(&s).expect("inserted");
            let (a, b) = (s_start.max(off), (s_start + SECTOR).min(end));
            sector[(a - s_start) as usize..(b - s_start) as usize]
                .copy_from_slice(&data[(a - off) as usize..(b - off) as usize]);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Sets the size (`ftruncate`): bytes past it are gone, and read as zeros if the file grows
    /// again.
    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.truncated_to = Some(self.truncated_to.map_or(size, |t| t.min(size)));
            let first_gone = size.div_ceil(SECTOR);
            self.sectors.split_off(&first_gone);
            if size % SECTOR != 0 {
                if let Some(last) = self.sectors.get_mut(&(size / SECTOR)) {
                    last[(size % SECTOR) as usize..].fill(0);
                }
            }
        }
        self.size = size;
    }

    /// Everything, for `fsync`/`fdatasync`; the state is clean afterwards.
    pub fn sync(&mut self) -> Flush {
        let flush = self.flush(|_| true, true);
        *self = Pending::new(flush.size);
        flush
    }

    /// What a power cut leaves: blocks kept or lost whole by `keep_block` (called once per
    /// written block, in file order, with the block's index), the size as `choice` says. The
    /// state is clean afterwards.
    pub fn cut(&mut self, choice: CutChoice, mut keep_block: impl FnMut(u64) -> bool) -> Flush {
        assert!(
            choice.block >= SECTOR && choice.block % SECTOR == 0,
            "blocks are whole sectors"
        );
        let per_block = choice.block / SECTOR;
        let mut decided: BTreeMap<u64, bool> = BTreeMap::new();
        let flush = self.flush(
            |s| {
                *decided
                    .entry(s / per_block)
                    .or_insert_with_key(|&b| keep_block(b))
            },
            choice.keep_size,
        );
        *self = Pending::new(flush.size);
        flush
    }

    fn flush(&self, mut keep: impl FnMut(u64) -> bool, keep_size: bool) -> Flush {
        let size = if keep_size {
            self.size
        } else {
            self.durable_size
        };
        // A truncate and the size it set go together: without the new size, the old content
        // stays.
        let truncate = self.truncated_to.filter(|_| keep_size);
        let mut writes = Vec::new();
        for (&s, data) in &self.sectors {
            if !keep(s) {
                continue;
            }
            let start = s * SECTOR;
            if start >= size {
                continue;
            }
            let len = (size - start).min(SECTOR) as usize;
            writes.push((start, data[..len].to_vec()));
        }
        Flush {
            truncate,
            writes,
            size,
        }
    }
}

#[cfg(test)]
mod tests;

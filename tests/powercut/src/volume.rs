//! The power-cut volume: a backing directory (the "disk") plus what is not yet durable on it.
//!
//! Invariants:
//! - `root/data` is the disk as a power cut would leave it *plus* the namespace changes not yet
//!   synced (those are in the [`Journal`] with their undo); file content not yet synced is only
//!   in memory ([`Pending`]), never in the backing file.
//! - Inode numbers are this volume's own, valid until the next [`Volume::cut`]; after a cut the
//!   filesystem is mounted again, so the kernel holds none of the old ones.
//! - While frozen (from the instant of the cut until [`Volume::cut`] returns), every operation
//!   that would change the disk fails with `EIO`: nothing written after the cut can reach it, and
//!   no `fsync` after it can claim success.
//! - An armed [`Trigger`] freezes the volume at the operation it names (see [`crate::trigger`]
//!   for where that operation ends).
//! - With a capacity set, a write or size change that would make the visible files (synced or
//!   not) larger than it fails with `ENOSPC` and changes nothing: a full disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::journal::{Change, Journal};
use crate::pending::{CutChoice, Flush, Pending, SECTOR};
use crate::trigger::{Armed, Op, Trigger};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// What one cut did, for the test's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced content or size.
    pub dirty_files: usize,
    /// Unsynced sectors written anyway (the disk got to them).
    pub sectors_kept: usize,
    /// Unsynced sectors lost.
    pub sectors_lost: usize,
    /// Namespace changes not yet synced: kept, and undone.
    pub changes_kept: usize,
    /// See `changes_kept`.
    pub changes_undone: usize,
}

impl std::ops::AddAssign<&CutReport> for CutReport {
    fn add_assign(&mut self, r: &CutReport) {
        self.dirty_files += r.dirty_files;
        self.sectors_kept += r.sectors_kept;
        self.sectors_lost += r.sectors_lost;
        self.changes_kept += r.changes_kept;
        self.changes_undone += r.changes_undone;
    }
}

/// What a cut keeps of the unsynced state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each unsynced block, size and namespace change kept or lost at random (seeded).
    Random(u64),
    /// Nothing unsynced survives (the harshest cut; for the volume's own tests).
    LoseAll,
}

/// The disk and its unsynced state.
pub struct Volume {
    data: PathBuf,
    graveyard: PathBuf,
    next_grave: u64,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    files: HashMap<u64, File>,
    pending: HashMap<u64, Pending>,
    journal: Journal,
    frozen: bool,
    rng: SmallRng,
    lose_all: bool,
    armed: Option<Armed>,
    fired: bool,
    capacity: Option<u64>,
    enospc: u64,
}

fn frozen_err() -> io::Error {
    io::Error::from_raw_os_error(libc_eio())
}

const fn libc_eio() -> i32 {
    5 // EIO
}

impl Volume {
    /// A volume on `root` (creates `root/data` and `root/graveyard`); `policy` decides the cuts.
    pub fn open(root: &Path, policy: Policy) -> io::Result<Volume> {
        let data = root.join("data");
        let graveyard = root.join("graveyard");
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&graveyard)?;
        let mut v = Volume {
            data: data.clone(),
            graveyard,
            next_grave: 0,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: ROOT + 1,
            files: HashMap::new(),
            pending: HashMap::new(),
            journal: Journal::default(),
            frozen: false,
            rng: SmallRng::seed_from_u64(match policy {
                Policy::Random(seed) => seed,
                Policy::LoseAll => 0,
            }),
            lose_all: policy == Policy::LoseAll,
            armed: None,
            fired: false,
            capacity: None,
            enospc: 0,
        };
        v.paths.insert(ROOT, data.clone());
        v.inos.insert(data, ROOT);
        Ok(v)
    }

    /// The backing directory holding the visible tree.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// From now on nothing reaches the disk (the instant of the power cut).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Freezes the volume at `t`'s operation (replaces an armed trigger; a cut disarms it).
    pub fn arm(&mut self, t: Trigger) {
        self.armed = Some(Armed::new(t));
        self.fired = false;
    }

    /// Whether the armed trigger fired (the volume froze at its operation).
    pub fn fired(&self) -> bool {
        self.fired
    }

    /// Counts `op` on `ino` against the armed trigger; freezes when it fires.
    fn trigger(&mut self, ino: u64, op: Op) -> bool {
        let Some(a) = self.armed.as_mut() else {
            return false;
        };
        let name = self
            .paths
            .get(&ino)
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| a.fires(&n, op)) {
            return false;
        }
        self.armed = None;
        self.fired = true;
        self.frozen = true;
        true
    }

    /// Limits the visible files' total size (`None`: unlimited).
    pub fn set_capacity(&mut self, bytes: Option<u64>) {
        self.capacity = bytes;
    }

    /// Writes and size changes refused with `ENOSPC` so far.
    pub fn enospc_count(&self) -> u64 {
        self.enospc
    }

    /// Total visible size of the regular files (synced or not).
    pub fn used(&self) -> io::Result<u64> {
        let mut total = 0;
        let mut dirs = vec![self.data.clone()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                let md = e.metadata()?;
                if md.is_dir() {
                    dirs.push(e.path());
                    continue;
                }
                let pending = self.inos.get(&e.path()).and_then(|i| self.pending.get(i));
                total += pending.map_or(md.len(), Pending::size);
            }
        }
        Ok(total)
    }

    /// `ENOSPC` if growing `ino` to `new_size` would pass the capacity.
    fn room_for(&mut self, ino: u64, new_size: u64) -> io::Result<()> {
        let Some(cap) = self.capacity else {
            return Ok(());
        };
        let size = self.pending_mut(ino)?.size();
        if new_size > size && self.used()? + (new_size - size) > cap {
            self.enospc += 1;
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }

    fn writable(&self) -> io::Result<()> {
        if self.frozen {
            Err(frozen_err())
        } else {
            Ok(())
        }
    }

    /// The backing path of an inode.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&ino)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(2)) // ENOENT
    }

    /// The inode of a backing path, assigned on first sight.
    pub fn ino_of(&mut self, path: &Path) -> u64 {
        if let Some(&i) = self.inos.get(path) {
            return i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(i, path.to_path_buf());
        self.inos.insert(path.to_path_buf(), i);
        i
    }

    fn child(&self, parent: u64, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.data).unwrap_or(path).to_path_buf()
    }

    /// Looks up `name` in `parent`.
    pub fn lookup(
        &mut self,
        parent: u64,
        name: &std::ffi::OsStr,
    ) -> io::Result<(u64, fs::Metadata)> {
        let p = self.child(parent, name)?;
        let md = fs::symlink_metadata(&p)?;
        Ok((self.ino_of(&p), md))
    }

    /// The metadata of an inode, and its visible size.
    pub fn getattr(&mut self, ino: u64) -> io::Result<(fs::Metadata, u64)> {
        let md = fs::symlink_metadata(self.path(ino)?)?;
        let size = self.pending.get(&ino).map_or(md.len(), Pending::size);
        Ok((md, size))
    }

    fn file(&mut self, ino: u64) -> io::Result<&File> {
        if !self.files.contains_key(&ino) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(ino)?)?;
            self.files.insert(ino, f);
        }
        Ok(&self.files[&ino])
    }

    fn pending_mut(&mut self, ino: u64) -> io::Result<&mut Pending> {
        if !self.pending.contains_key(&ino) {
            let len = self.file(ino)?.metadata()?.len();
            self.pending.insert(ino, Pending::new(len));
        }
        Ok(self.pending.get_mut(&ino).expect("inserted"))
    }

    /// Reads `len` bytes at `off` as a reader sees them.
    pub fn read(&mut self, ino: u64, off: u64, len: usize) -> io::Result<Vec<u8>> {
        self.pending_mut(ino)?;
        let file = self.files.get(&ino).expect("opened by pending_mut");
        let p = &self.pending[&ino];
        p.read(off, len, &mut |o, buf| read_at(file, o, buf))
    }

    /// Writes `data` at `off` (held in memory until synced).
    pub fn write(&mut self, ino: u64, off: u64, data: &[u8]) -> io::Result<()> {
        self.writable()?;
        self.room_for(ino, off + data.len() as u64)?;
        self.pending_mut(ino)?;
        let file = self.files.get(&ino).expect("opened by pending_mut");
        let p = self.pending.get_mut(&ino).expect("present");
        p.write(off, data, &mut |o, buf| read_at(file, o, buf))?;
        self.trigger(ino, Op::Write { off });
        Ok(())
    }

    /// `ftruncate`.
    pub fn set_size(&mut self, ino: u64, size: u64) -> io::Result<()> {
        self.writable()?;
        self.room_for(ino, size)?;
        self.pending_mut(ino)?.set_size(size);
        self.trigger(ino, Op::SetSize);
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its content and size become durable.
    pub fn fsync(&mut self, ino: u64) -> io::Result<()> {
        self.writable()?;
        if fs::symlink_metadata(self.path(ino)?)?.is_dir() {
            return self.fsyncdir();
        }
        if self.trigger(ino, Op::Sync) {
            return Err(frozen_err()); // the power went before the sync completed
        }
        let flush = self.pending_mut(ino)?.sync();
        apply(self.file(ino)?, &flush)
    }

    /// `fsync` of a directory: every namespace change becomes durable.
    pub fn fsyncdir(&mut self) -> io::Result<()> {
        self.writable()?;
        for g in self.journal.sync() {
            remove_any(&self.graveyard.join(g))?;
        }
        Ok(())
    }

    /// Creates a regular file (`O_CREAT`), or opens the existing one unless `exclusive`.
    pub fn create(
        &mut self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        exclusive: bool,
    ) -> io::Result<u64> {
        self.writable()?;
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.child(parent, name)?;
        if p.exists() {
            if exclusive {
                return Err(io::Error::from_raw_os_error(17)); // EEXIST
            }
            return Ok(self.ino_of(&p));
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)?;
        self.journal.record(Change::Created { path: self.rel(&p) });
        Ok(self.ino_of(&p))
    }

    /// Creates a directory.
    pub fn mkdir(&mut self, parent: u64, name: &std::ffi::OsStr, mode: u32) -> io::Result<u64> {
        self.writable()?;
        use std::os::unix::fs::DirBuilderExt;
        let p = self.child(parent, name)?;
        fs::DirBuilder::new().mode(mode).create(&p)?;
        self.journal.record(Change::Created { path: self.rel(&p) });
        Ok(self.ino_of(&p))
    }

    /// Removes a file (`unlink`) or an empty directory (`rmdir`): into the graveyard.
    pub fn remove(&mut self, parent: u64, name: &std::ffi::OsStr, dir: bool) -> io::Result<()> {
        self.writable()?;
        let p = self.child(parent, name)?;
        let md = fs::symlink_metadata(&p)?;
        if dir != md.is_dir() {
            return Err(io::Error::from_raw_os_error(if dir { 20 } else { 21 }));
            // ENOTDIR / EISDIR
        }
        if dir && fs::read_dir(&p)?.next().is_some() {
            return Err(io::Error::from_raw_os_error(39)); // ENOTEMPTY
        }
        let grave = self.bury(&p)?;
        self.journal.record(Change::Removed {
            path: self.rel(&p),
            grave,
        });
        Ok(())
    }

    /// Moves `path` into the graveyard (its inode follows it); returns its grave's name.
    fn bury(&mut self, path: &Path) -> io::Result<PathBuf> {
        let grave = PathBuf::from(self.next_grave.to_string());
        self.next_grave += 1;
        let to = self.graveyard.join(&grave);
        fs::rename(path, &to)?;
        self.moved(path, &to);
        Ok(grave)
    }

    /// Keeps the inode table in step with a rename of `from` (and what is below it) to `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        let affected: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, i) in affected {
            let below = p.strip_prefix(from).expect("filtered");
            // `join("")` would add a trailing slash, which fails on a file.
            let np = if below.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(below)
            };
            self.inos.remove(&p);
            self.inos.insert(np.clone(), i);
            self.paths.insert(i, np);
        }
    }

    /// `rename`: what the target held goes to the graveyard.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &std::ffi::OsStr,
        newparent: u64,
        newname: &std::ffi::OsStr,
    ) -> io::Result<()> {
        self.writable()?;
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        fs::symlink_metadata(&from)?;
        let displaced = if fs::symlink_metadata(&to).is_ok() {
            Some(self.bury(&to)?)
        } else {
            None
        };
        fs::rename(&from, &to)?;
        self.moved(&from, &to);
        self.journal.record(Change::Renamed {
            from: self.rel(&from),
            to: self.rel(&to),
            displaced,
        });
        Ok(())
    }

    /// The entries of a directory: (inode, name, is a directory).
    pub fn readdir(&mut self, ino: u64) -> io::Result<Vec<(u64, std::ffi::OsString, bool)>> {
        let dir = self.path(ino)?;
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            out.push((self.ino_of(&p), e.file_name(), e.file_type()?.is_dir()));
        }
        Ok(out)
    }

    /// Changes mode or times directly (not modelled as unsynced).
    pub fn set_mode(&mut self, ino: u64, mode: u32) -> io::Result<()> {
        self.writable()?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(self.path(ino)?, fs::Permissions::from_mode(mode))
    }

    /// Forgets open backing handles (after the last release of a file they are reopened on use).
    pub fn released(&mut self, ino: u64) {
        if !self.pending.get(&ino).is_some_and(Pending::is_dirty) {
            self.pending.remove(&ino);
            self.files.remove(&ino);
        }
    }

    /// The power cut: applies to the disk what a cut may leave of the unsynced state (chosen by
    /// the seeded generator), undoes the namespace changes it loses, and forgets everything
    /// else. Unfreezes the volume; the caller mounts it again.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut inos: Vec<u64> = self.pending.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let mut p = self.pending.remove(&ino).expect("listed");
            if !p.is_dirty() {
                continue;
            }
            report.dirty_files += 1;
            let held = (p.held_bytes() / SECTOR) as usize;
            let choice = CutChoice {
                block: if self.rng.gen_bool(0.5) { SECTOR } else { 4096 },
                keep_size: !self.lose_all && self.rng.gen_bool(0.5),
            };
            let (rng, lose_all) = (&mut self.rng, self.lose_all);
            let flush = p.cut(choice, |_| !lose_all && rng.gen_bool(0.5));
            let kept = flush.writes.len();
            report.sectors_kept += kept;
            report.sectors_lost += held.saturating_sub(kept);
            apply(self.file(ino)?, &flush)?;
        }
        let n = self.journal.len();
        let keep = if self.lose_all {
            0
        } else {
            self.rng.gen_range(0..=n)
        };
        let undo = self.journal.cut(keep);
        report.changes_kept = keep;
        report.changes_undone = undo.reverse.len();
        self.files.clear();
        for c in undo.reverse {
            match c {
                Change::Created { path } => remove_any(&self.data.join(path))?,
                Change::Removed { path, grave } => {
                    fs::rename(self.graveyard.join(grave), self.data.join(path))?;
                }
                Change::Renamed {
                    from,
                    to,
                    displaced,
                } => {
                    fs::rename(self.data.join(&to), self.data.join(from))?;
                    if let Some(g) = displaced {
                        fs::rename(self.graveyard.join(g), self.data.join(to))?;
                    }
                }
            }
        }
        for g in undo.buried {
            remove_any(&self.graveyard.join(g))?;
        }
        // Synced removals were deleted at their sync, kept ones just now, undone ones moved
        // back: anything left is unreachable.
        for e in fs::read_dir(&self.graveyard)? {
            remove_any(&e?.path())?;
        }
        self.paths.retain(|&i, _| i == ROOT);
        self.inos.retain(|_, &mut i| i == ROOT);
        self.armed = None;
        self.frozen = false;
        Ok(report)
    }
}

fn read_at(file: &File, off: u64, buf: &mut [u8]) -> io::Result<()> {
    buf.fill(0);
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64)? {
            0 => break, // past the end: zeros
            n => done += n,
        }
    }
    Ok(())
}

fn apply(file: &File, f: &Flush) -> io::Result<()> {
    if let Some(t) = f.truncate {
        file.set_len(t)?;
    }
    for (off, data) in &f.writes {
        file.write_all_at(data, *off)?;
    }
    file.set_len(f.size)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

//! A filesystem that loses power: a FUSE passthrough to a backing directory that keeps every
//! write in memory until it is synced, and on a cut throws away what a real disk may lose.
//!
//! A SIGKILL keeps the kernel's page cache, so a program that forgot an `fsync` still finds its
//! data after a restart. Here it does not: the test mounts a [`PowerCut`] volume, runs the
//! program on it, then [`PowerCut::freeze`]s it (the instant of the cut: from here every change
//! fails with `EIO`), kills the program, and calls [`PowerCut::cut`], which unmounts, applies what
//! the disk may have kept (see [`pending`] and [`journal`]: unsynced writes kept or lost per
//! 512 B or 4 KiB block, sizes kept or not, unsynced renames, creates and removes undone from the
//! newest back) and mounts the volume again for the restart.
//!
//! Layout: [`pending`] (one file's unsynced content, pure), [`journal`] (unsynced namespace
//! changes, pure), [`volume`] (the two applied to a backing directory), [`fuse`] (kernel
//! requests to volume calls). Mounting needs `/dev/fuse` and root (or `fusermount3`).

pub mod fuse;
pub mod journal;
pub mod pending;
pub mod volume;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use volume::Volume;
pub use volume::{CutReport, Policy};

/// A mounted power-cut volume.
pub struct PowerCut {
    vol: Arc<Mutex<Volume>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl PowerCut {
    /// Mounts a volume kept in `root` (created if missing) at `mountpoint`; `policy` decides what
    /// each cut keeps.
    pub fn mount(root: &Path, mountpoint: &Path, policy: Policy) -> io::Result<PowerCut> {
        std::fs::create_dir_all(mountpoint)?;
        let vol = Arc::new(Mutex::new(Volume::open(root, policy)?));
        let mut pc = PowerCut {
            vol,
            mountpoint: mountpoint.to_path_buf(),
            session: None,
        };
        pc.attach()?;
        Ok(pc)
    }

    fn attach(&mut self) -> io::Result<()> {
        let fs = fuse::PowerCutFs {
            vol: self.vol.clone(),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("ferry-powercut".into()),
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::All;
        self.session = Some(fuser::spawn_mount(fs, &self.mountpoint, &config)?);
        Ok(())
    }

    /// Where programs see the volume.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory: the disk itself (for inspecting after a cut; do not write it while
    /// mounted).
    pub fn disk(&self) -> PathBuf {
        self.lock().data_dir().to_path_buf()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Volume> {
        self.vol.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instant power is lost: nothing reaches the disk from now on.
    pub fn freeze(&self) {
        self.lock().freeze();
    }

    /// After [`freeze`](Self::freeze) and after every program using the volume has exited:
    /// unmounts, leaves on the disk what a power cut may leave, and mounts again.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        self.lock().freeze();
        if let Some(s) = self.session.take() {
            s.umount_and_join()?;
        }
        let report = self.lock().cut()?;
        self.attach()?;
        Ok(report)
    }

    /// Unmounts (also done on drop).
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

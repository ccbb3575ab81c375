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
pub mod schedule;
pub mod trigger;
pub mod volume;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

pub use schedule::Schedule;
pub use trigger::Trigger;
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

    /// Freezes the volume at the operation `t` names (see [`trigger`]); [`fired`](Self::fired)
    /// tells when. A cut disarms it.
    pub fn arm(&self, t: Trigger) {
        self.lock().arm(t);
    }

    /// Whether the armed trigger fired: the power is out, [`cut`](Self::cut) is next.
    pub fn fired(&self) -> bool {
        self.lock().fired()
    }

    /// A disk of `bytes` (`None`: unlimited): growing the files past it fails with `ENOSPC`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().set_capacity(bytes);
    }

    /// Total size of the files on the volume, synced or not.
    pub fn used(&self) -> io::Result<u64> {
        self.lock().used()
    }

    /// Writes refused with `ENOSPC` so far.
    pub fn enospc_count(&self) -> u64 {
        self.lock().enospc_count()
    }

    /// Waits (blocking) for `moment`, at most `wait`, and freezes the volume there; returns
    /// whether the moment came (else it froze at the deadline). A [`Moment::DiskFull`] leaves
    /// the capacity set: lift it with [`set_capacity`](Self::set_capacity)`(None)`.
    pub fn freeze_at(&self, moment: &Moment, wait: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + wait;
        let until = |done: &dyn Fn() -> bool| {
            while !done() {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            true
        };
        let reached = match moment {
            Moment::After(d) => {
                std::thread::sleep(*d);
                true
            }
            Moment::At(t) => {
                self.arm(t.clone());
                until(&|| self.fired())
            }
            Moment::DiskFull { headroom, then } => {
                let refused = self.enospc_count();
                self.set_capacity(Some(self.used()? + headroom));
                let full = until(&|| self.enospc_count() > refused);
                std::thread::sleep(*then);
                full
            }
        };
        self.freeze();
        Ok(reached)
    }

    /// After [`freeze`](Self::freeze) and after every program using the volume has exited:
    /// unmounts, leaves on the disk what a power cut may leave, and mounts again.
    pub fn cut(&mut self) -> io::Result<CutReport> {
        self.lock().freeze();
        if let Some(s) = self.session.take() {
            end_session(s, &self.mountpoint)?;
        }
        let report = self.lock().cut()?;
        self.attach()?;
        Ok(report)
    }

    /// Unmounts (also done on drop).
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(s) => end_session(s, &self.mountpoint),
            None => Ok(()),
        }
    }
}

/// When a cut falls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moment {
    /// After this long, whatever the program is doing.
    After(Duration),
    /// At the operation the trigger names.
    At(Trigger),
    /// While the disk is full: the capacity is set `headroom` bytes above what the files use,
    /// and the cut falls `then` after the first write it refuses.
    DiskFull {
        /// Room left when the disk is made full.
        headroom: u64,
        /// How long the program runs on the full disk before the cut.
        then: Duration,
    },
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = end_session(s, &self.mountpoint);
        }
    }
}

/// Unmounts and waits for the server thread.
///
/// The unmount is done here, not by `fuser`, because it can meet `EBUSY`: a process another test
/// thread forks inherits this process's open files (until its `exec` closes them), and one of
/// them may be on the volume for that instant. The unmount is retried for up to 5 s. It aborts
/// the kernel's connection; a request the server thread was reading at that instant (one the
/// killed program left, say) then ends the session with `ECONNABORTED` instead of the usual
/// `ENODEV`. Both mean the same here: the volume is gone, as asked. (`fuser`'s own unmount, when
/// the session is dropped, then finds nothing mounted and does nothing.)
fn end_session(s: BackgroundSession, mountpoint: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match nix::mount::umount(mountpoint) {
            Ok(()) => break,
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Not root: only `fuser` (through fusermount3) can unmount.
            Err(nix::errno::Errno::EPERM) => return s.umount_and_join(),
            Err(e) => return Err(e.into()),
        }
    }
    match s.join() {
        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
        r => r,
    }
}

//! A tmpfs of a given size mounted on a directory (needs root): a disk that really fills.
use std::path::{Path, PathBuf};

/// A mounted tmpfs; unmounted at drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created if missing); panics with the reason when
    /// it cannot (not root).
    pub fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_path_buf())
    }

    /// Fills it with a file of zeros at `path` until the filesystem refuses more; returns the
    /// bytes written.
    pub fn fill(path: &Path) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(path).expect("ballast file");
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0;
        while let Ok(n @ 1..) = f.write(&chunk) {
            written += n as u64;
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

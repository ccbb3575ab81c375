//! Building the lm3s6965 firmware image and booting it in `qemu-system-arm` with UART0 on a pty.
//!
//! QEMU is started with `kill_on_drop`, so a test that ends (or panics) stops its emulator.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::repo_root;

/// Builds (once per test process) and returns the release ELF of the lm3s6965 board.
pub fn lm3s6965_image() -> anyhow::Result<PathBuf> {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = repo_root().join("firmware/boards/lm3s6965");
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet"])
                .current_dir(&dir)
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("RUSTFLAGS")
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "building {} failed (is the target installed? rustup target add thumbv7m-none-eabi)",
                    dir.display()
                ));
            }
            Ok(dir.join("target/thumbv7m-none-eabi/release/ferry-board-lm3s6965"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A running emulator.
pub struct Qemu {
    /// The emulator process (killed on drop).
    pub child: Child,
    /// The pty QEMU connected UART0 to.
    pub pty: PathBuf,
}

impl Qemu {
    /// Boots `elf` with UART0 on a new pty; `device_id` goes to the firmware via semihosting.
    pub async fn boot(
        qemu: &std::path::Path,
        elf: &std::path::Path,
        device_id: &str,
    ) -> anyhow::Result<Qemu> {
        let mut child = Command::new(qemu)
            .args([
                "-cpu",
                "cortex-m3",
                "-machine",
                "lm3s6965evb",
                "-display",
                "none",
                "-monitor",
                "none",
            ])
            .arg("-semihosting-config")
            .arg(format!("enable=on,target=native,arg=id={device_id}"))
            .args(["-serial", "pty", "-kernel"])
            .arg(elf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning qemu-system-arm")?;
        // QEMU announces the pty on stderr (older versions: stdout); read both.
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        let find = async move {
            let (mut out, mut err) = (stdout, stderr);
            loop {
                let line = tokio::select! {
                    l = out.next_line() => l,
                    l = err.next_line() => l,
                };
                match line {
                    Ok(Some(l)) => {
                        eprintln!("qemu: {l}");
                        if let Some(i) = l.find("/dev/pts/") {
                            let path: String =
                                l[i..].chars().take_while(|c| !c.is_whitespace()).collect();
                            // Keep draining QEMU's output (semihosting prints) in the background.
                            tokio::spawn(async move {
                                loop {
                                    let l = tokio::select! { l = out.next_line() => l, l = err.next_line() => l };
                                    match l {
                                        Ok(Some(l)) => eprintln!("qemu: {l}"),
                                        _ => break,
                                    }
                                }
                            });
                            return Ok(PathBuf::from(path));
                        }
                    }
                    _ => bail!("qemu exited before announcing its pty"),
                }
            }
        };
        let pty = tokio::time::timeout(Duration::from_secs(20), find)
            .await
            .context("waiting for QEMU's pty")??;
        Ok(Qemu { child, pty })
    }
}

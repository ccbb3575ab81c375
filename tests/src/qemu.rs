//! Building the lm3s6965 firmware image and booting it in `qemu-system-arm` with UART0 on a pty,
//! optionally with more UARTs (the board's UART1 test report, read by [`FirmwareReport`]).
//!
//! QEMU is started with `kill_on_drop`, so a test that ends (or panics) stops its emulator.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{repo_root, try_poll_until_blocking};

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
        Self::boot_with(qemu, elf, device_id, &[]).await
    }

    /// [`boot`](Self::boot) with `extra_serial` as QEMU `-serial` backends for UART1, UART2 (e.g.
    /// [`report_serial`]). A backend that waits for a client (`server=on,wait=on`) holds the guest
    /// until the test connects; the UART0 pty is already announced then.
    pub async fn boot_with(
        qemu: &std::path::Path,
        elf: &std::path::Path,
        device_id: &str,
        extra_serial: &[String],
    ) -> anyhow::Result<Qemu> {
        let mut cmd = Command::new(qemu);
        cmd.args(["-serial", "pty"]);
        for s in extra_serial {
            cmd.args(["-serial", s]);
        }
        let mut child = cmd
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
            .arg("-kernel")
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
                        // Only UART0's pty (extra backends may be ptys too).
                        let serial0 = l.contains("(label serial0)") || !l.contains("(label ");
                        if let Some(i) = l.find("/dev/pts/").filter(|_| serial0) {
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

/// A `-serial` backend for the board's UART1 report: a TCP server on loopback `port` that holds
/// the guest until [`FirmwareReport::connect`] connects (so no line is lost), and that delivers
/// every byte before closing when QEMU exits.
pub fn report_serial(port: u16) -> String {
    format!("tcp:127.0.0.1:{port},server=on,wait=on")
}

/// One line of the board's UART1 report (`firmware/boards/lm3s6965/src/report.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportLine {
    /// `b`: a boot starts.
    Boot {
        /// The boot id the firmware announces in its Hello.
        boot_id: u32,
    },
    /// `s`: a sample was taken.
    Taken {
        /// Sequence number in this boot.
        seq: u32,
        /// Sensor index.
        sensor: u8,
        /// The value's `f32` bits.
        value_bits: u32,
    },
    /// `a`: the device's `acked_next` grew.
    Acked {
        /// Every sample below this was acked or dropped.
        next: u32,
    },
    /// `d`: samples `from..to` were evicted from the device's ring.
    Dropped {
        /// First dropped seq.
        from: u32,
        /// One past the last.
        to: u32,
    },
}

impl ReportLine {
    /// Parses one line (without the newline).
    pub fn parse(line: &str) -> Option<ReportLine> {
        let mut w = line.split_ascii_whitespace();
        let kind = w.next()?;
        let mut num = |radix: u32| w.next().and_then(|t| u32::from_str_radix(t, radix).ok());
        let r = match kind {
            "b" => ReportLine::Boot { boot_id: num(16)? },
            "s" => ReportLine::Taken {
                seq: num(10)?,
                sensor: u8::try_from(num(10)?).ok()?,
                value_bits: num(16)?,
            },
            "a" => ReportLine::Acked { next: num(10)? },
            "d" => ReportLine::Dropped {
                from: num(10)?,
                to: num(10)?,
            },
            _ => return None,
        };
        w.next().is_none().then_some(r)
    }
}

/// The board's UART1 report as it arrives, each line stamped with the host's wall clock when its
/// bytes were read (a dedicated thread blocks on the socket, so the stamp is the arrival time to
/// within scheduling delay).
pub struct FirmwareReport {
    lines: Arc<Mutex<Vec<(SystemTime, ReportLine)>>>,
    problems: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FirmwareReport {
    /// Connects to the report backend on loopback `port` (retrying for up to `timeout`); the
    /// guest starts running once this returns.
    pub fn connect(port: u16, timeout: Duration) -> anyhow::Result<FirmwareReport> {
        let mut sock = try_poll_until_blocking(timeout, "the firmware report port", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
        })?;
        let lines: Arc<Mutex<Vec<(SystemTime, ReportLine)>>> = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let (out, bad) = (lines.clone(), problems.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let n = match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = SystemTime::now();
                pending.extend_from_slice(&buf[..n]);
                let mut parsed = Vec::new();
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..i]);
                    match ReportLine::parse(text.trim_end_matches('\r')) {
                        Some(l) => parsed.push((at, l)),
                        None => bad.lock().expect("lock").push(text.into_owned()),
                    }
                }
                out.lock().expect("lock").extend(parsed);
            }
        });
        Ok(FirmwareReport {
            lines,
            problems,
            reader: Some(reader),
        })
    }

    /// The lines received so far.
    pub fn lines(&self) -> Vec<(SystemTime, ReportLine)> {
        self.lines.lock().expect("lock").clone()
    }

    /// How many samples were reported taken so far.
    pub fn taken(&self) -> usize {
        let lines = self.lines.lock().expect("lock");
        lines
            .iter()
            .filter(|(_, l)| matches!(l, ReportLine::Taken { .. }))
            .count()
    }

    /// Waits (up to `timeout`) until the report ends (QEMU exited) and returns every line; lines
    /// that did not parse are an error.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<Vec<(SystemTime, ReportLine)>> {
        let reader = self.reader.take().expect("finished once");
        try_poll_until_blocking(timeout, "the firmware report to end", || {
            reader.is_finished()
        })?;
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("report reader panicked"))?;
        let problems = self.problems.lock().expect("lock");
        if !problems.is_empty() {
            bail!(
                "{} report lines did not parse, e.g. {:?}",
                problems.len(),
                &problems[..problems.len().min(5)]
            );
        }
        Ok(self.lines())
    }
}

#[cfg(test)]
mod tests {
    use super::ReportLine;

    #[test]
    fn report_lines_parse() {
        assert_eq!(
            ReportLine::parse("b 9d54370e"),
            Some(ReportLine::Boot {
                boot_id: 0x9d54_370e
            })
        );
        assert_eq!(
            ReportLine::parse("s 231 0 4178cccd"),
            Some(ReportLine::Taken {
                seq: 231,
                sensor: 0,
                value_bits: 0x4178_cccd
            })
        );
        assert_eq!(
            ReportLine::parse("a 42"),
            Some(ReportLine::Acked { next: 42 })
        );
        assert_eq!(
            ReportLine::parse("d 3 7"),
            Some(ReportLine::Dropped { from: 3, to: 7 })
        );
        for bad in ["", "s 1 2", "a x", "a 1 2", "q 1", "s 1 300 0"] {
            assert_eq!(ReportLine::parse(bad), None, "{bad:?}");
        }
    }
}

//! Shared harness for Ferry's end-to-end tests: locating tools, brokers, PostgreSQL, building and
//! booting the firmware image in QEMU, talking to a device from the gateway side, and waiting.
//!
//! Rule: a test that needs a tool (mosquitto, PostgreSQL, QEMU, Chromium) is
//! `#[ignore = "needs …"]`, so a plain `cargo test` lists what it did not run. Run with
//! `--include-ignored` (as `tests/run-all.sh` does), a missing tool fails the test with the
//! install step: nothing passes without having run.
pub mod agent;
pub mod bridge;
pub mod broker;
pub mod browser;
pub mod debs;
pub mod link;
pub mod microbit;
pub mod mosquitto;
pub mod peer;
pub mod pki;
pub mod poll;
pub mod postgres;
pub mod qemu;
pub mod service;
pub mod tmpfs;

pub use poll::{poll_until, poll_until_blocking, try_poll_until, try_poll_until_blocking};

use std::path::{Path, PathBuf};

/// A count from the environment (`_` separators allowed, as in `2_000_000`), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_owned()
}

/// Fails a test whose tool is missing: names the tool, where it was looked for, and the install
/// step.
pub(crate) fn missing_tool(tool: &str, looked: &str, install: &str) -> ! {
    panic!(
        "this test needs `{tool}`, which is not installed ({looked}); install it with `{install}`, \
         or run tests/run-all.sh, which installs every tool the tests need"
    )
}

/// Finds `tool` on PATH; panics with the install step when it is missing.
pub fn require_tool(tool: &str, install: &str) -> PathBuf {
    require_tool_in(tool, &[], install)
}

/// Like [`require_tool`], but also looks in `extra_dirs` (e.g. `/usr/sbin`, often not on PATH).
pub fn require_tool_in(tool: &str, extra_dirs: &[&str], install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|p| p.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            let looked = match extra_dirs {
                [] => "not on PATH".to_owned(),
                dirs => format!("not on PATH nor in {}", dirs.join(", ")),
            };
            missing_tool(tool, &looked, install)
        })
}

/// A loopback TCP port that was free a moment ago (for servers that cannot report the port
/// they bound, like mosquitto).
/// The end of starting a server process: `child`, once `waited` (the poll for it to be up) says
/// it is; otherwise why not, with the server's `log`. A child still running when the poll timed
/// out is killed and reaped first.
pub(crate) fn started<T>(
    mut child: std::process::Child,
    waited: Result<Result<T, String>, poll::TimedOut>,
    log: impl FnOnce() -> String,
) -> Result<std::process::Child, String> {
    match waited {
        Ok(Ok(_)) => Ok(child),
        Ok(Err(exited)) => Err(format!("{exited}; log:\n{}", log())),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{e}; log:\n{}", log()))
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// Whether the test runs as root (PostgreSQL refuses to; mosquitto switches users).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Builds a workspace binary (once per test process, same profile and target dir as the running
/// test) and returns its path: binaries of dependencies are not built for integration tests.
pub fn workspace_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().expect("lock");
    let r = built
        .entry(format!("{package}/{bin}"))
        .or_insert_with(|| build_bin(package, bin))
        .clone();
    r.map_err(anyhow::Error::msg)
}

fn build_bin(package: &str, bin: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("test executable is not in <target>/<profile>/deps")?;
    let target_dir = profile_dir.parent().ok_or("no target dir")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => return Err("unnamed profile dir".into()),
    };
    let mut cargo = std::process::Command::new(env!("CARGO"));
    // Without the variables cargo set for this test run: a build script that watches one of them
    // (ring's watches CARGO_MANIFEST_DIR) would see it change between this build and a plain
    // `cargo build`, and the two would rebuild each other's dependencies every time.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || matches!(
                &*k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            cargo.env_remove(&key);
        }
    }
    let status = cargo
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(repo_root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {bin} failed ({status})"));
    }
    let path = profile_dir.join(bin);
    if !path.is_file() {
        return Err(format!("{} missing after the build", path.display()));
    }
    Ok(path)
}

/// The tests of [`poll`] live here: `poll.rs` is also included by path into other crates' test
/// binaries, which should not run them again.
#[cfg(test)]
mod poll_tests {
    use super::poll::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn checks_back_off_from_10_to_100_ms_and_the_last_runs_at_the_deadline() {
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        let r = try_poll_until(Duration::from_millis(500), "never", async || {
            at.push(start.elapsed().as_millis());
            false
        })
        .await;
        assert!(r.is_err());
        assert_eq!(at, [0, 10, 30, 70, 150, 250, 350, 450, 500]);
    }

    #[test]
    fn a_timeout_names_the_wait_and_the_last_check() {
        let mut n = 0;
        let e = try_poll_until_blocking(Duration::from_millis(30), "n to reach 1000", || {
            n += 1;
            if n >= 1000 {
                Ok(())
            } else {
                Err(format!("n = {n}"))
            }
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("timed out after 30ms waiting for n to reach 1000; last check: n = {n}")
        );
        let e = try_poll_until_blocking(Duration::ZERO, "never", || false).unwrap_err();
        assert_eq!(e.to_string(), "timed out after 0ns waiting for never");
    }

    #[tokio::test]
    async fn a_done_check_returns_its_value() {
        let mut n = 0;
        let v = poll_until(Duration::from_secs(10), "the third check", async || {
            n += 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!((v, n), (30, 3));
        // Done on the first check even with no time at all.
        assert_eq!(poll_until_blocking(Duration::ZERO, "now", || Some(1)), 1);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 20ms waiting for the impossible; last check: no")]
    async fn poll_until_panics_at_the_deadline() {
        poll_until(Duration::from_millis(20), "the impossible", async || {
            Err::<(), _>("no")
        })
        .await;
    }
}

//! Shared harness for Ferry's end-to-end tests: locating tools, building and booting the firmware
//! image in QEMU, and talking to a device from the gateway side.
//!
//! Rule: a test that needs a missing tool fails with the install step when `FERRY_REQUIRE_ALL=1`
//! (the README's test command sets it); otherwise it prints why it is skipped. It never passes
//! silently.

pub mod agent;
pub mod bridge;
pub mod browser;
pub mod link;
pub mod mosquitto;
pub mod postgres;
pub mod qemu;

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

/// Finds `tool` on PATH. Missing: panics with `install` under `FERRY_REQUIRE_ALL=1`, else `None`.
pub fn require_tool(tool: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("FERRY_REQUIRE_ALL").as_deref() == Ok("1") {
            panic!(
                "`{tool}` is required (FERRY_REQUIRE_ALL=1) but not on PATH; install it: {install}"
            );
        }
        eprintln!("SKIPPED: `{tool}` not found; install it with: {install}");
    }
    found
}

/// Like [`require_tool`], but also looks in `extra_dirs` (e.g. `/usr/sbin`, often not on PATH).
pub fn require_tool_in(tool: &str, extra_dirs: &[&str], install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|p| p.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        // Same message and rule as require_tool.
        return require_tool(tool, install);
    }
    found
}

/// A loopback TCP port that was free a moment ago (for servers that cannot report the port
/// they bound, like mosquitto).
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
    let status = std::process::Command::new(env!("CARGO"))
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

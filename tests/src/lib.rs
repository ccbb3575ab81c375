//! Shared harness for Ferry's end-to-end tests: locating tools, building and booting the firmware
//! image in QEMU, and talking to a device from the gateway side.
//!
//! Rule: a test that needs a missing tool fails with the install step when `FERRY_REQUIRE_ALL=1`
//! (the README's test command sets it); otherwise it prints why it is skipped. It never passes
//! silently.

pub mod bridge;
pub mod link;
pub mod mosquitto;
pub mod postgres;
pub mod qemu;

use std::path::{Path, PathBuf};

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

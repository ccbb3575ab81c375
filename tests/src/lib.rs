//! Shared harness for Ferry's end-to-end tests: locating tools, building and booting the firmware
//! image in QEMU, and talking to a device from the gateway side.
//!
//! Rule: a test that needs a missing tool fails with the install step when `FERRY_REQUIRE_ALL=1`
//! (the README's test command sets it); otherwise it prints why it is skipped. It never passes
//! silently.

pub mod link;
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

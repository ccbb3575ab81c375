//! The Debian packages tests/package.sh builds into target/debian/: where they are, what is in
//! them, and the ELF facts of their binaries (architecture, glibc version needed).
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::repo_root;

/// The three architectures, as Debian names them, with their Rust target and qemu-user runner.
pub const ARCHES: [(&str, &str, &str); 3] = [
    ("amd64", "x86_64-unknown-linux-gnu", ""),
    ("arm64", "aarch64-unknown-linux-gnu", "qemu-aarch64"),
    ("armhf", "armv7-unknown-linux-gnueabihf", "qemu-arm"),
];

/// `target/debian/{package}_*_{arch}.deb` (the newest, if several).
pub fn deb(package: &str, arch: &str) -> PathBuf {
    let dir = repo_root().join("target/debian");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with(&format!("{package}_")) && n.ends_with(&format!("_{arch}.deb"))
        })
    });
    found.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    found.pop().unwrap_or_else(|| {
        panic!(
            "no {package} package for {arch} in {}: build them with tests/package.sh (tests/run-all.sh does)",
            dir.display()
        )
    })
}

/// Runs `cmd`, panics with its output if it fails, returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The paths a package installs (`dpkg-deb -c`), without the leading `.`.
pub fn contents(deb: &Path) -> Vec<String> {
    run(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// A control field (`dpkg-deb -f`).
pub fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

/// One control member (`conffiles`, `postinst`, ...), empty if absent.
pub fn control_file(deb: &Path, member: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb)
        .arg(member)
        .output()
        .expect("dpkg-deb");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Unpacks a package's files under `root` (no maintainer scripts).
pub fn extract(deb: &Path, root: &Path) {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root));
}

/// The ELF machine of a binary (62 x86-64, 183 AArch64, 40 ARM).
pub fn elf_machine(bin: &Path) -> u16 {
    let b = std::fs::read(bin).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", bin.display());
    u16::from_le_bytes([b[18], b[19]])
}

/// The highest `GLIBC_x.y` symbol version a binary needs (from its dynamic symbols).
pub fn glibc_needed(bin: &Path) -> String {
    let out = run(Command::new("objdump").arg("-T").arg(bin));
    let mut versions: Vec<(u32, u32)> = out
        .split("GLIBC_")
        .skip(1)
        .filter_map(|s| {
            let v: String = s
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut it = v.split('.').map(|n| n.parse::<u32>().ok());
            Some((it.next()??, it.next().flatten().unwrap_or(0)))
        })
        .collect();
    versions.sort();
    versions
        .last()
        .map_or("none".into(), |(a, b)| format!("{a}.{b}"))
}

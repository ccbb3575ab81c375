//! The micro:bit v1 firmware (`firmware/boards/microbit`) for end-to-end tests: building the
//! bootloader and application images, signing update bundles with a test vendor key, and booting
//! them in `qemu-system-arm -machine microbit` with UART0 on a pty (the agent opens it as a serial
//! device, exactly like the lm3s6965 tests).
//!
//! - Images are built once per (version, confirm) per test process, one cargo build at a time,
//!   in their own target directory (`firmware/boards/microbit/target/qemu-tests`, so the images a
//!   person builds in `target/` are never replaced by test variants); each is copied out under a
//!   name that says its variant, and its raw binary is cut from the ELF's loadable segments here
//!   (no objcopy needed; the result is what `objcopy -O binary` gives).
//! - The test vendor key is made once (`ferry_agent::firmware::bundle::keygen`) and kept in that
//!   target directory, so later runs sign with the same key and do not rebuild the images; the
//!   application reads its public half as PEM (`FERRY_UPDATE_KEY`).
//! - QEMU restores every image it loaded on each guest reset, so the first application is loaded
//!   into FACTORY and the bootloader (feature `qemu-provision`) installs it in ACTIVE
//!   (`firmware/boards/microbit/nrf51/src/layout.rs`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::qemu::Qemu;
use crate::repo_root;

/// The board name images are signed for.
pub const BOARD: &str = "microbit";
/// Where the application is linked (layout.rs `ACTIVE`).
pub const ACTIVE_START: u32 = 0x0000_3000;
/// Where QEMU loads the first application (layout.rs `FACTORY`).
pub const FACTORY_START: u32 = 0x0002_B400;
/// The application's package and binary.
const APP: &str = "ferry-board-microbit";
/// The bootloader's package and binary.
const BOOTLOADER: &str = "ferry-bootloader-microbit";

fn board_dir() -> PathBuf {
    repo_root().join("firmware/boards/microbit")
}

fn test_dir() -> PathBuf {
    board_dir().join("target/qemu-tests")
}

/// One cargo build at a time in this process (cargo's lock serialises other processes).
fn build_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The test vendor's key pair.
pub struct VendorKey {
    /// The private key, PKCS#8 PEM (what `ferry firmware sign --key` reads).
    pub private_pem: String,
    /// The public key file (PEM), the images' `FERRY_UPDATE_KEY`.
    pub public_path: PathBuf,
}

/// The test vendor key, made on first use and kept in the test target directory.
pub fn vendor_key() -> anyhow::Result<&'static VendorKey> {
    static KEY: OnceLock<Result<VendorKey, String>> = OnceLock::new();
    KEY.get_or_init(|| load_or_make_key().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn load_or_make_key() -> anyhow::Result<VendorKey> {
    let dir = test_dir().join("vendor-key");
    if !dir.join("vendor.pub").is_file() {
        // Made in a fresh directory, then renamed into place: a concurrent test process either
        // wins the rename or uses the winner's pair, never half of each.
        std::fs::create_dir_all(test_dir())?;
        let tmp = tempfile::Builder::new()
            .prefix("vendor-key-")
            .tempdir_in(test_dir())?;
        let (private, public) =
            ferry_agent::firmware::bundle::keygen().map_err(anyhow::Error::msg)?;
        std::fs::write(tmp.path().join("vendor.key"), private)?;
        std::fs::write(tmp.path().join("vendor.pub"), public)?;
        let tmp = tmp.keep();
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok(VendorKey {
        private_pem: std::fs::read_to_string(dir.join("vendor.key"))
            .with_context(|| format!("reading {}", dir.display()))?,
        public_path: dir.join("vendor.pub"),
    })
}

/// Signs `image` as `version` for the micro:bit with the test vendor key: a bundle file.
pub fn signed_bundle(image: Vec<u8>, version: &str) -> anyhow::Result<Vec<u8>> {
    use ferry_agent::firmware::bundle::{read_private_key, Bundle};
    let key = read_private_key(&vendor_key()?.private_pem).map_err(anyhow::Error::msg)?;
    Ok(Bundle::sign(image, version, BOARD, &key)
        .map_err(anyhow::Error::msg)?
        .to_bytes())
}

/// A built application image.
#[derive(Debug, Clone)]
pub struct AppImage {
    /// The version it reports and checks updates against.
    pub version: String,
    /// Whether it confirms itself once welcomed (`false`: built with
    /// `FERRY_FW_NEVER_CONFIRM=1`, the bootloader rolls it back).
    pub confirms: bool,
    /// The ELF.
    pub elf: PathBuf,
    /// The raw image from ACTIVE's start (what QEMU loads at FACTORY and what a bundle carries).
    pub bin: PathBuf,
}

impl AppImage {
    /// The raw image's bytes.
    pub fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&self.bin).with_context(|| format!("reading {}", self.bin.display()))
    }
}

/// Builds (once per process) the application as `version`, confirming itself or not.
pub fn app_image(version: &str, confirms: bool) -> anyhow::Result<AppImage> {
    /// Built images by (version, confirms); an error is kept as its message.
    type Built = HashMap<(String, bool), Result<AppImage, String>>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    // Held while building: a second test asking for the same image waits for it instead of
    // rewriting files the first may be loading into QEMU.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry((version.to_owned(), confirms))
        .or_insert_with(|| build_app(version, confirms).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so a reader never
/// sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("no parent directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn build_app(version: &str, confirms: bool) -> anyhow::Result<AppImage> {
    let key = vendor_key()?;
    let name = format!(
        "{APP}-{version}{}",
        if confirms { "" } else { "-never-confirm" }
    );
    let _lock = build_lock();
    let elf = cargo_build(
        APP,
        &[],
        &[
            ("FERRY_FW_VERSION", version),
            ("FERRY_FW_NEVER_CONFIRM", if confirms { "0" } else { "1" }),
            (
                "FERRY_UPDATE_KEY",
                key.public_path.to_str().context("key path is not UTF-8")?,
            ),
        ],
        &name,
    )?;
    let (base, bin) = elf_to_bin(&std::fs::read(&elf)?)?;
    if base != ACTIVE_START {
        bail!("{} is linked at {base:#x}, not at ACTIVE ({ACTIVE_START:#x}): is tests/src/microbit.rs behind layout.rs?", elf.display());
    }
    if !bin.windows(version.len()).any(|w| w == version.as_bytes()) {
        bail!("{} does not carry its version {version:?}", elf.display());
    }
    let bin_path = elf.with_extension("bin");
    write_atomically(&bin_path, &bin)?;
    Ok(AppImage {
        version: version.to_owned(),
        confirms,
        elf,
        bin: bin_path,
    })
}

/// Builds (once per process) the bootloader with the `qemu-provision` feature: its ELF.
pub fn bootloader_image() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let _lock = build_lock();
            cargo_build(
                BOOTLOADER,
                &["--features", "qemu-provision"],
                &[],
                &format!("{BOOTLOADER}-qemu-provision"),
            )
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `cargo build --release -p package` in the board directory with `env`; copies the ELF to
/// `images/<name>.elf` and returns that path.
fn cargo_build(
    package: &str,
    args: &[&str],
    env: &[(&str, &str)],
    name: &str,
) -> anyhow::Result<PathBuf> {
    let target = test_dir();
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--release", "--quiet", "-p", package])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(board_dir())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("FERRY_FW_VERSION")
        .env_remove("FERRY_FW_NEVER_CONFIRM")
        .env_remove("FERRY_UPDATE_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!(
            "building {package} in {} failed ({status}); is the target installed? \
             rustup target add thumbv6m-none-eabi",
            board_dir().display()
        );
    }
    let images = target.join("images");
    std::fs::create_dir_all(&images)?;
    let out = images.join(format!("{name}.elf"));
    let elf = std::fs::read(target.join("thumbv6m-none-eabi/release").join(package))
        .with_context(|| format!("reading the {package} ELF"))?;
    write_atomically(&out, &elf)?;
    Ok(out)
}

/// The raw image of an ELF32 little-endian file: its loadable segments with contents, at their
/// load (physical) addresses, gaps (alignment padding) filled with zeros as `objcopy -O binary`
/// does, so the image is byte for byte the one the board's README makes; returns the first
/// address and the bytes.
pub fn elf_to_bin(elf: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    let u16_at = |at: usize| -> anyhow::Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(at..at + 2).context("truncated ELF")?.try_into()?,
        ))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(at..at + 4).context("truncated ELF")?.try_into()?,
        ))
    };
    if elf.get(..6) != Some(b"\x7fELF\x01\x01".as_slice()) {
        bail!("not an ELF32 little-endian file");
    }
    let (phoff, phentsize, phnum) = (u32_at(28)? as usize, u16_at(42)? as usize, u16_at(44)?);
    const PT_LOAD: u32 = 1;
    let mut segments = Vec::new();
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * phentsize;
        let (kind, offset, paddr, filesz) = (
            u32_at(ph)?,
            u32_at(ph + 4)?,
            u32_at(ph + 12)?,
            u32_at(ph + 16)?,
        );
        if kind == PT_LOAD && filesz > 0 {
            let data = elf
                .get(offset as usize..(offset + filesz) as usize)
                .context("segment past the end of the ELF")?;
            segments.push((paddr, data));
        }
    }
    let base = segments
        .iter()
        .map(|s| s.0)
        .min()
        .context("no loadable segment")?;
    let end = segments
        .iter()
        .map(|(a, d)| a + d.len() as u32)
        .max()
        .unwrap_or(base);
    let mut bin = vec![0; (end - base) as usize];
    for (addr, data) in segments {
        let at = (addr - base) as usize;
        bin[at..at + data.len()].copy_from_slice(data);
    }
    Ok((base, bin))
}

/// The QEMU arguments that boot `bootloader` (ELF, at 0) with `app` (raw image) in FACTORY and
/// UART0 on a pty.
pub fn qemu_args(bootloader: &Path, app_bin: &Path) -> Vec<String> {
    vec![
        "-machine".into(),
        "microbit".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        "pty".into(),
        "-kernel".into(),
        bootloader.display().to_string(),
        "-device".into(),
        format!("loader,file={},addr={FACTORY_START:#x}", app_bin.display()),
    ]
}

/// Boots the micro:bit with `bootloader` and `app` (the first application) in QEMU; returns once
/// QEMU announced UART0's pty. QEMU is killed when the returned value is dropped.
pub async fn boot(qemu: &Path, bootloader: &Path, app: &AppImage) -> anyhow::Result<Qemu> {
    let mut child = Command::new(qemu)
        .args(qemu_args(bootloader, &app.bin))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning qemu-system-arm")?;
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let find = async {
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
    // Keep draining QEMU's output in the background.
    tokio::spawn(async move {
        loop {
            let l = tokio::select! { l = out.next_line() => l, l = err.next_line() => l };
            match l {
                Ok(Some(l)) => eprintln!("qemu: {l}"),
                _ => break,
            }
        }
    });
    Ok(Qemu { child, pty })
}

#[cfg(test)]
mod tests {
    use super::elf_to_bin;

    /// A hand-made ELF32 with two loadable segments and one without contents.
    #[test]
    fn elf_segments_become_one_image_at_their_load_addresses() {
        let mut elf = vec![0u8; 0x100];
        elf[..6].copy_from_slice(b"\x7fELF\x01\x01");
        elf[28..32].copy_from_slice(&0x34u32.to_le_bytes()); // e_phoff
        elf[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
        elf[44..46].copy_from_slice(&3u16.to_le_bytes()); // e_phnum
        let ph = |elf: &mut Vec<u8>, i: usize, offset: u32, paddr: u32, filesz: u32| {
            let at = 0x34 + 32 * i;
            elf[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
            elf[at + 4..at + 8].copy_from_slice(&offset.to_le_bytes());
            elf[at + 8..at + 12].copy_from_slice(&0x2000_0000u32.to_le_bytes());
            elf[at + 12..at + 16].copy_from_slice(&paddr.to_le_bytes());
            elf[at + 16..at + 20].copy_from_slice(&filesz.to_le_bytes());
        };
        ph(&mut elf, 0, 0xC0, 0x3000, 4);
        ph(&mut elf, 1, 0xD0, 0x3008, 2);
        ph(&mut elf, 2, 0xE0, 0x9000, 0); // .bss-like: nothing to load
        elf[0xC0..0xC4].copy_from_slice(&[1, 2, 3, 4]);
        elf[0xD0..0xD2].copy_from_slice(&[5, 6]);
        let (base, bin) = elf_to_bin(&elf).unwrap();
        assert_eq!(base, 0x3000);
        assert_eq!(bin, [1, 2, 3, 4, 0, 0, 0, 0, 5, 6]);
        assert!(elf_to_bin(b"\x7fELF\x02\x01").is_err(), "64-bit");
    }
}

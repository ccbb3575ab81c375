//! A simulated device's flash and firmware: the real updater (`ferry_firmware::update`) and
//! embassy-boot's bootloader over a RAM flash, so a simulated device is updated exactly as a board
//! is, resets included.
//!
//! A simulated image is bytes like any other, with a small header that tells the simulator what
//! to "run" after a boot: [`IMAGE_MAGIC`], the version, and whether the image confirms itself once
//! welcomed (an image built with `--never-confirm` stands for a firmware whose self-test fails, so
//! the bootloader must roll it back). The rest is filler derived from the version.
//!
//! Invariant: the version a device reports in its Hello is read from its ACTIVE slot after the
//! bootloader ran, never from the configuration, so the report shows what really booted.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use ferry_firmware::ram_flash::{DeviceFlash, Region};
use ferry_firmware::update::{Updater, UpdaterConfig};
use ferry_wire::update::{compare_versions, MAX_VERSION_LEN};

/// The board name of simulated devices: images for them are signed for this board.
pub const SIM_BOARD: &str = "ferry-sim";

/// First bytes of every simulated image.
pub const IMAGE_MAGIC: &[u8; 16] = b"ferry-sim-image\0";

/// Bytes of the header: magic, version length, version (padded), confirm flag.
const HEADER_LEN: usize = 16 + 1 + MAX_VERSION_LEN + 1;

/// Size of a simulated device's ACTIVE slot: 128 pages of 1 KiB (nRF51-like flash).
pub const SLOT_PAGES: usize = 128;

/// Size of the image a simulated device starts with.
const FIRST_IMAGE_LEN: usize = 16 * 1024;

/// The flash of a simulated device: 4-byte writes, 1 KiB pages.
pub type SimFlash = DeviceFlash<4, 1024>;
type Part = Region<4, 1024>;
/// The updater of a simulated device.
pub type SimUpdater = Updater<Part, Part, Part, Part>;

/// What a simulated image says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Its version.
    pub version: String,
    /// Whether it confirms itself when welcomed.
    pub confirms: bool,
}

/// Builds a simulated image of `size` bytes.
pub fn make_image(version: &str, size: usize, confirms: bool) -> Result<Vec<u8>, String> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN {
        return Err(format!("a version is 1..={MAX_VERSION_LEN} bytes"));
    }
    if compare_versions(version, "0").is_none() {
        return Err(format!(
            "{version:?} is not a version (one to four dot-separated numbers, e.g. 1.2.0)"
        ));
    }
    if !(HEADER_LEN..=SLOT_PAGES * 1024).contains(&size) {
        return Err(format!(
            "an image is {HEADER_LEN}..={} bytes",
            SLOT_PAGES * 1024
        ));
    }
    let mut img = Vec::with_capacity(size);
    img.extend_from_slice(IMAGE_MAGIC);
    img.push(version.len() as u8);
    img.extend_from_slice(version.as_bytes());
    img.resize(16 + 1 + MAX_VERSION_LEN, 0);
    img.push(u8::from(confirms));
    // Filler: a cheap generator seeded by the version, so two versions differ everywhere.
    let mut x = version
        .bytes()
        .fold(0x9E37_79B9u32, |h, b| h.rotate_left(5) ^ u32::from(b));
    while img.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        img.push(x as u8);
    }
    Ok(img)
}

/// Reads the header of a simulated image; `None` when `bytes` is not one.
pub fn read_image(bytes: &[u8]) -> Option<ImageInfo> {
    let h = bytes.get(..HEADER_LEN)?;
    if &h[..16] != IMAGE_MAGIC {
        return None;
    }
    let len = usize::from(h[16]);
    let version = std::str::from_utf8(h.get(17..17 + len)?).ok()?.to_owned();
    Some(ImageInfo {
        version,
        confirms: h[HEADER_LEN - 1] != 0,
    })
}

/// Versions are `&'static str` in the device core; a device boots a handful of versions in its
/// life, so each distinct one is leaked once.
fn intern(s: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(v) = seen.get(s) {
        return v;
    }
    let v: &'static str = Box::leak(s.to_owned().into_boxed_str());
    seen.insert(v);
    v
}

/// How simulated devices take updates.
#[derive(Debug, Clone)]
pub struct SimUpdate {
    /// The vendor's public key.
    pub public_key: [u8; 32],
    /// The version of the image every device starts with.
    pub version: String,
    /// A new image not welcomed within this time resets (and is rolled back).
    pub trial_timeout_ms: u32,
}

/// One simulated device's flash and the updater of the image that runs.
pub struct Firmware {
    flash: SimFlash,
    update: SimUpdate,
    /// The updater of the running image (created by [`Firmware::boot`]).
    pub updater: SimUpdater,
    /// What runs.
    pub running: ImageInfo,
}

impl Firmware {
    /// A device as it leaves the factory: the first image programmed into ACTIVE, then booted.
    pub fn new(update: &SimUpdate) -> Result<Self, String> {
        let flash = SimFlash::new(SLOT_PAGES);
        flash.install(&make_image(&update.version, FIRST_IMAGE_LEN, true)?);
        let (updater, running) = Self::start(&flash, update, 0)?;
        Ok(Firmware {
            flash,
            update: update.clone(),
            updater,
            running,
        })
    }

    fn start(
        flash: &SimFlash,
        update: &SimUpdate,
        now_ms: u64,
    ) -> Result<(SimUpdater, ImageInfo), String> {
        flash
            .boot()
            .map_err(|e| format!("the bootloader failed: {e:?}"))?;
        let running = read_image(&flash.active(HEADER_LEN))
            .ok_or("ACTIVE holds no image after the bootloader ran: the device is bricked")?;
        let mut cfg = UpdaterConfig::new(update.public_key, SIM_BOARD, intern(&running.version));
        cfg.confirm = running.confirms;
        cfg.trial_timeout_ms = update.trial_timeout_ms;
        Ok((Updater::new(flash.slots(), cfg, now_ms), running))
    }

    /// A reset: the bootloader swaps or reverts as its state says, and the image in ACTIVE runs.
    pub fn reboot(&mut self) -> Result<(), String> {
        let (updater, running) = Self::start(&self.flash, &self.update, 0)?;
        self.updater = updater;
        self.running = running;
        Ok(())
    }

    /// The running version, for the Hello.
    pub fn version(&self) -> &'static str {
        intern(&self.running.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_carry_their_version_and_confirm_flag() {
        let img = make_image("2.1.0", 4096, false).unwrap();
        assert_eq!(img.len(), 4096);
        assert_eq!(
            read_image(&img),
            Some(ImageInfo {
                version: "2.1.0".into(),
                confirms: false
            })
        );
        assert_ne!(
            img[100..200],
            make_image("2.1.1", 4096, false).unwrap()[100..200]
        );
        assert!(make_image("nightly", 4096, true).is_err());
        assert!(make_image("1.0", 10, true).is_err());
        assert_eq!(read_image(&[0u8; 100]), None);
    }
}

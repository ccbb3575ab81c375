//! Firmware updates, the inputs from outside: bundle files (local API, `ferry flash`, MQTT), update
//! requests (MQTT), and the update messages a device takes from its link, with resets and power
//! cuts in between.
//!
//! Input: a first byte choosing the part, then that part's bytes.
//! - `0`: a bundle file for `Bundle::parse`. Checked: nothing panics; a bundle it takes is
//!   self-consistent (its image has the length and SHA-256 it names, its signature verifies with
//!   its key), and what it writes back parses to the same bundle.
//! - `1`: an MQTT update request for `UpdateRequest::decode`. Checked: nothing panics; a request
//!   it takes keeps the contract's rules and survives a JSON round trip.
//! - otherwise: a script for a simulated device with the real updater and embassy-boot's
//!   bootloader over a RAM NOR flash (4-byte writes, 1 KiB pages), running image 1.0.0. Each step
//!   is a byte (and its arguments): a signed Begin for the new image (1.1.0) or for a random
//!   one, a chunk of the new image at a chosen offset and length (or random bytes), a Commit, an
//!   Abort, a raw frame of random bytes, a reset, a power cut armed at a chosen flash operation,
//!   a Welcome. Checked after every step and at the end (a reset with the power back): no panic;
//!   every status the device sends is a valid message; after every reset ACTIVE holds the old
//!   image or the new one, byte for byte (the device never boots a partial or unsigned image).
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use ferry_agent::firmware::bundle::Bundle;
use ferry_contract::{UpdateRequest, MAX_UPDATE_ID_LEN, SCHEMA_VERSION};
use ferry_firmware::ram_flash::{Cut, DeviceFlash};
use ferry_firmware::update::{Updater, UpdaterConfig, Updates, UPDATE_SLOT};
use ferry_wire::update::{signed_message, MAX_SIGNED_LEN};
use ferry_wire::{Message, UpdateAbort, UpdateBegin, UpdateChunk, UpdateCommit};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const PAGES: usize = 8;
const BOARD: &str = "fuzz-board";

struct Images {
    key: SigningKey,
    old: Vec<u8>,
    new: Vec<u8>,
    sha: [u8; 32],
    sig: [u8; 64],
}

fn images() -> &'static Images {
    static I: OnceLock<Images> = OnceLock::new();
    I.get_or_init(|| {
        let key = SigningKey::from_bytes(&[0x5A; 32]);
        let image = |tag: u8, len: usize| -> Vec<u8> {
            (0..len).map(|i| (i as u8).wrapping_mul(7) ^ tag).collect()
        };
        let old = image(0x11, 5 * 1024 + 100);
        let new = image(0x22, 6 * 1024 + 44);
        let sha: [u8; 32] = Sha256::digest(&new).into();
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(new.len() as u32, "1.1.0", BOARD, &sha, &mut msg).unwrap();
        let sig = key.sign(&msg[..n]).to_bytes();
        Images {
            key,
            old,
            new,
            sha,
            sig,
        }
    })
}

type Dev = Updater<
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
>;

/// A reset: the bootloader, then the updater of the image ACTIVE holds (asserted whole).
fn boot(flash: &DeviceFlash<4, 1024>) -> Option<Dev> {
    let im = images();
    if flash.boot().is_err() {
        return None;
    }
    let version = if flash.active(im.old.len()) == im.old {
        "1.0.0"
    } else if flash.active(im.new.len()) == im.new {
        "1.1.0"
    } else {
        panic!("ACTIVE holds neither image after a reset: bricked");
    };
    let cfg = UpdaterConfig::new(im.key.verifying_key().to_bytes(), BOARD, version);
    let u = Updater::new(flash.slots(), cfg, 0);
    (!flash.chip().lock().unwrap().is_dead()).then_some(u)
}

fn check_status(s: &ferry_wire::UpdateStatus) {
    assert!(
        Message::UpdateStatus(*s).is_valid(),
        "the device sent an invalid status: {s:?}"
    );
}

fn script(data: &[u8]) {
    let im = images();
    let flash = DeviceFlash::<4, 1024>::new(PAGES);
    flash.install(&im.old);
    let mut dev = boot(&flash);
    let mut i = 0;
    let mut next = |n: usize| -> Option<&[u8]> {
        let s = data.get(i..i + n)?;
        i += n;
        Some(s)
    };
    let mut steps = 0;
    while let Some(&[op]) = next(1) {
        steps += 1;
        if steps > 200 {
            break;
        }
        let reply = match op % 9 {
            0 => {
                let Some(u) = dev.as_mut() else { continue };
                let force = op & 0x80 != 0;
                u.handle(
                    0,
                    &Message::UpdateBegin(UpdateBegin {
                        id: 7,
                        slot: UPDATE_SLOT,
                        length: im.new.len() as u32,
                        version: "1.1.0",
                        board: BOARD,
                        sha256: &im.sha,
                        signature: &im.sig,
                        force,
                    }),
                )
            }
            1 => {
                let Some(&[a, b, c]) = next(3) else { break };
                let offset = (usize::from(a) << 5) % (im.new.len() + 64);
                let len = (usize::from(b) << 2 | usize::from(c & 3)) % 600 + 1;
                let end = (offset + len).min(im.new.len());
                let data = if offset < end { &im.new[offset..end] } else { &im.new[..1] };
                let Some(u) = dev.as_mut() else { continue };
                u.handle(
                    0,
                    &Message::UpdateChunk(UpdateChunk {
                        id: 7,
                        offset: offset as u32,
                        data,
                    }),
                )
            }
            2 => {
                let Some(u) = dev.as_mut() else { continue };
                u.handle(0, &Message::UpdateCommit(UpdateCommit { id: 7 }))
            }
            3 => {
                let Some(u) = dev.as_mut() else { continue };
                u.handle(0, &Message::UpdateAbort(UpdateAbort { id: 7 }))
            }
            4 => {
                // A random chunk for the transfer: wrong bytes, any offset.
                let Some(&[a, len]) = next(2) else { break };
                let Some(bytes) = next(usize::from(len) % 64 + 1) else { break };
                let bytes = bytes.to_vec();
                let Some(u) = dev.as_mut() else { continue };
                let m = Message::UpdateChunk(UpdateChunk {
                    id: 7,
                    offset: u32::from(a) * 32,
                    data: &bytes,
                });
                let r = u.handle(0, &m);
                r
            }
            5 => {
                // A reset, with the power back if it was cut.
                drop(dev.take());
                flash.chip().lock().unwrap().power_on();
                dev = boot(&flash);
                None
            }
            6 => {
                let Some(&[n]) = next(1) else { break };
                let mut chip = flash.chip().lock().unwrap();
                let at = chip.ops() + u64::from(n % 64);
                chip.cut_at(at, if n & 0x80 != 0 { Cut::Half } else { Cut::Before });
                None
            }
            7 => {
                let Some(u) = dev.as_mut() else { continue };
                u.welcomed(0).map(|s| ferry_firmware::update::Reply {
                    status: s,
                    reboot: false,
                })
            }
            _ => {
                // A Begin with fuzzed fields (bad signatures, odd versions and boards).
                let Some(&[len]) = next(1) else { break };
                let Some(raw) = next(usize::from(len) % 48) else { break };
                let text = String::from_utf8_lossy(raw).into_owned();
                let mid = (0..=text.len() / 2)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                let (version, board) = text.split_at(mid);
                let Some(u) = dev.as_mut() else { continue };
                let m = Message::UpdateBegin(UpdateBegin {
                    id: 8,
                    slot: raw.first().copied().unwrap_or(1) % 3,
                    length: raw.len() as u32 * 100 + 1,
                    version,
                    board,
                    sha256: &im.sha,
                    signature: &im.sig,
                    force: raw.len() % 2 == 0,
                });
                if !m.is_valid() {
                    continue;
                }
                let r = u.handle(0, &m);
                r
            }
        };
        if let Some(r) = reply {
            check_status(&r.status);
        }
        if flash.chip().lock().unwrap().is_dead() {
            dev = None; // the device lost power: nothing runs until a reset
        }
    }
    drop(dev);
    flash.chip().lock().unwrap().power_on();
    // Two resets: a swap (or revert) may be pending; each must leave a whole image.
    if let Some(mut u) = boot(&flash) {
        if let Some(s) = u.welcomed(0) {
            check_status(&s);
        }
    }
    let _ = boot(&flash);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which {
        0 => {
            if let Ok(b) = Bundle::parse(rest) {
                assert_eq!(b.image.len(), b.manifest.length as usize);
                let sha: [u8; 32] = Sha256::digest(&b.image).into();
                assert_eq!(sha, b.sha256(), "the hash it names is the image's");
                b.verify_with(&b.key()).expect("a taken bundle verifies");
                let again = Bundle::parse(&b.to_bytes()).expect("a bundle it wrote parses");
                assert_eq!(again, b, "a bundle survives writing it back");
            }
        }
        1 => {
            if let Ok(r) = UpdateRequest::decode(rest) {
                assert_eq!(r.v, SCHEMA_VERSION);
                assert!(!r.id.is_empty() && r.id.len() <= MAX_UPDATE_ID_LEN);
                assert!(!r.devices.is_empty() && r.bundle.len() == 64);
                let again = serde_json::to_vec(&r).unwrap();
                assert_eq!(UpdateRequest::decode(&again).unwrap(), r);
            }
        }
        _ => script(rest),
    }
});

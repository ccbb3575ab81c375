//! The updater and embassy-boot's swap on a RAM NOR flash, with the power cut at every write and
//! erase of an update's life: the device must always boot a whole image, and the update must
//! still complete once the power is back, resuming from what the device kept.
use ed25519_dalek::{Signer, SigningKey};
use ferry_firmware::ram_flash::{Cut, DeviceFlash};
use ferry_firmware::update::{Reply, Updater, UpdaterConfig, Updates, UPDATE_SLOT};
use ferry_wire::update::{signed_message, MAX_SIGNED_LEN};
use ferry_wire::*;
use sha2::{Digest, Sha256};

/// nRF51-like: 4-byte writes, 1 KiB pages; a 12-page ACTIVE slot.
type Flash = DeviceFlash<4, 1024>;
const ACTIVE_PAGES: usize = 12;
const BOARD: &str = "test-board";
const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// An image whose first bytes name its version (so a boot can tell which one runs).
fn image(version: &str, len: usize) -> Vec<u8> {
    let mut img: Vec<u8> = (0..len)
        .map(|i| (i * 31 + i / 7 + version.len()) as u8)
        .collect();
    img[..16].fill(0);
    img[..version.len()].copy_from_slice(version.as_bytes());
    img
}

/// A signed offer of `img` as `version`.
struct Offer {
    id: u32,
    version: &'static str,
    board: &'static str,
    img: Vec<u8>,
    sha: [u8; 32],
    sig: [u8; 64],
    force: bool,
}

impl Offer {
    fn new(id: u32, version: &'static str, img: Vec<u8>) -> Self {
        let sha: [u8; 32] = Sha256::digest(&img).into();
        Self::signed_as(id, version, BOARD, img, sha)
    }

    /// Signed by the vendor's key over `sha` (which may not be the image's).
    fn signed_as(
        id: u32,
        version: &'static str,
        board: &'static str,
        img: Vec<u8>,
        sha: [u8; 32],
    ) -> Self {
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(img.len() as u32, version, board, &sha, &mut msg).unwrap();
        let sig = key().sign(&msg[..n]).to_bytes();
        Offer {
            id,
            version,
            board,
            img,
            sha,
            sig,
            force: false,
        }
    }

    fn begin(&self) -> UpdateBegin<'_> {
        UpdateBegin {
            id: self.id,
            slot: UPDATE_SLOT,
            length: self.img.len() as u32,
            version: self.version,
            board: self.board,
            sha256: &self.sha,
            signature: &self.sig,
            force: self.force,
        }
    }
}

type Dev = Updater<
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
    ferry_firmware::ram_flash::Region<4, 1024>,
>;

/// A device: the flash, and the updater of the image that booted (if the flash has power).
struct Device {
    flash: Flash,
    old: Vec<u8>,
    new: Vec<u8>,
    /// Versions whose images never confirm themselves.
    never_confirm: &'static [&'static str],
}

impl Device {
    fn new(old: Vec<u8>, new: Vec<u8>) -> Self {
        let flash = Flash::new(ACTIVE_PAGES);
        flash.install(&old);
        Device {
            flash,
            old,
            new,
            never_confirm: &[],
        }
    }

    fn dead(&self) -> bool {
        self.flash.chip().lock().unwrap().is_dead()
    }

    /// Which image ACTIVE holds; panics when it is neither (a bricked device).
    fn running(&self) -> &'static str {
        if self.flash.active(self.old.len()) == self.old {
            OLD
        } else if self.flash.active(self.new.len()) == self.new {
            NEW
        } else {
            panic!("ACTIVE holds neither image: the device is bricked")
        }
    }

    /// A reset: the bootloader runs, then the image it leaves in ACTIVE starts its updater.
    /// `None` when the power failed on the way.
    fn boot(&self, now: u64) -> Option<Dev> {
        self.flash.boot().ok()?;
        let version = self.running();
        let mut cfg = UpdaterConfig::new(key().verifying_key().to_bytes(), BOARD, version);
        cfg.confirm = !self.never_confirm.contains(&version);
        cfg.trial_timeout_ms = 1000;
        let u = Updater::new(self.flash.slots(), cfg, now);
        (!self.dead()).then_some(u)
    }
}

fn send(u: &mut Dev, m: Message<'_>) -> Reply {
    u.handle(0, &m)
        .expect("an updater answers every update message")
}

/// The gateway's side, as PROTOCOL.md section 9 describes it: follow the device's status.
/// Returns the image bytes sent and the final reply; stops early when the flash lost power.
fn transfer(dev: &Device, u: &mut Dev, offer: &Offer) -> (usize, Option<Reply>) {
    let mut sent = 0;
    let mut r = send(u, Message::UpdateBegin(offer.begin()));
    loop {
        if dev.dead() {
            return (sent, None);
        }
        let s = r.status;
        if s.id != offer.id || s.state != UpdateState::Receiving {
            return (sent, Some(r));
        }
        if s.offset as usize == offer.img.len() {
            r = send(u, Message::UpdateCommit(UpdateCommit { id: offer.id }));
            if dev.dead() {
                return (sent, None);
            }
            return (sent, Some(r));
        }
        let at = s.offset as usize;
        let end = (at + usize::from(s.max_chunk)).min(offer.img.len());
        sent += end - at;
        r = send(
            u,
            Message::UpdateChunk(UpdateChunk {
                id: offer.id,
                offset: at as u32,
                data: &offer.img[at..end],
            }),
        );
    }
}

/// Drives an update to its end from a fresh boot, through any number of power cuts already
/// armed: each cut is followed by a reset. Returns (resets, image bytes sent in total, the
/// first status seen after each reset).
fn update_to_the_end(dev: &Device, offer: &Offer) -> (u32, usize, Vec<UpdateStatus>) {
    let mut resets = 0;
    let mut sent = 0;
    let mut after_reset = Vec::new();
    let mut now = 0;
    loop {
        assert!(resets < 10, "no end after {resets} resets");
        now += 10_000;
        let Some(mut u) = dev.boot(now) else {
            dev.flash.chip().lock().unwrap().power_on();
            resets += 1;
            continue;
        };
        let Some(welcome) = u.welcomed(now) else {
            unreachable!()
        };
        if dev.dead() {
            dev.flash.chip().lock().unwrap().power_on();
            resets += 1;
            continue;
        }
        after_reset.push(welcome);
        if welcome.id == offer.id && welcome.state == UpdateState::Done {
            return (resets, sent, after_reset);
        }
        if welcome.id == offer.id && welcome.state == UpdateState::Trial {
            // Not confirmed: the trial times out and the device resets.
            assert!(u.poll(now + 1000));
            resets += 1;
            continue;
        }
        if welcome.id == offer.id && welcome.state == UpdateState::Failed {
            return (resets, sent, after_reset);
        }
        let (n, reply) = transfer(dev, &mut u, offer);
        sent += n;
        match reply {
            None => dev.flash.chip().lock().unwrap().power_on(),
            Some(r) if r.reboot => {}
            Some(r) => panic!("the transfer ended with {:?}", r.status),
        }
        resets += 1;
    }
}

fn old_and_new() -> (Vec<u8>, Vec<u8>) {
    // Lengths that are not whole pages or chunks.
    (image(OLD, 9 * 1024 + 300), image(NEW, 10 * 1024 + 77))
}

#[test]
fn an_update_installs_confirms_and_reports_done() {
    let (old, new) = old_and_new();
    let dev = Device::new(old, new.clone());
    let offer = Offer::new(5, NEW, new.clone());
    let (resets, sent, statuses) = update_to_the_end(&dev, &offer);
    assert_eq!(resets, 1, "one reset into the new image");
    assert_eq!(sent, new.len(), "every byte sent once");
    assert_eq!(dev.running(), NEW);
    assert_eq!(statuses[0].state, UpdateState::Idle);
    assert_eq!((statuses[1].id, statuses[1].state), (5, UpdateState::Done));
    // Booted again: still done, no swap back.
    dev.flash.boot().unwrap();
    let mut u = dev.boot(99_000).unwrap();
    assert_eq!(u.welcomed(99_000).unwrap().state, UpdateState::Done);
    assert_eq!(dev.running(), NEW);
}

/// Every write and erase of the whole update (transfer, commit, swap, confirmation), cut before
/// it or half-way through it: the device boots a whole image after every cut, and the update
/// completes with the power back.
#[test]
fn a_power_cut_at_every_flash_operation_never_bricks_and_the_update_completes() {
    let (old, new) = old_and_new();
    let offer = Offer::new(9, NEW, new.clone());
    let clean = Device::new(old.clone(), new.clone());
    update_to_the_end(&clean, &offer);
    let total = clean.flash.chip().lock().unwrap().ops();
    assert!(total > 40, "{total} flash operations in an update");
    let mut resumed_past_zero = 0;
    let mut rolled_back = 0;
    for op in 0..total {
        for how in [Cut::Before, Cut::Half] {
            let dev = Device::new(old.clone(), new.clone());
            dev.flash.chip().lock().unwrap().cut_at(op, how);
            let (resets, sent, statuses) = update_to_the_end(&dev, &offer);
            let last = statuses.last().unwrap();
            if last.error == UpdateError::RolledBack {
                // Cut before the new image confirmed itself: the old one is back, reported,
                // and the next attempt installs the new one.
                assert_eq!(dev.running(), OLD, "cut at {op} ({how:?})");
                rolled_back += 1;
                let retry = Offer::new(10, NEW, new.clone());
                let (_, _, statuses) = update_to_the_end(&dev, &retry);
                assert_eq!(
                    statuses.last().unwrap().state,
                    UpdateState::Done,
                    "cut at {op}"
                );
                assert_eq!(dev.running(), NEW, "cut at {op} ({how:?}), second attempt");
                continue;
            }
            assert_eq!(dev.running(), NEW, "cut at operation {op} ({how:?})");
            assert_eq!((last.id, last.state), (9, UpdateState::Done), "cut at {op}");
            assert!(resets <= 3, "cut at {op}: {resets} resets");
            // The transfer resumed from the device's offset: what was re-sent is at most the
            // part after the last progress mark (a page) and the chunk that was cut.
            assert!(
                sent <= new.len() + 1024 + 512,
                "cut at {op} ({how:?}): {sent} bytes sent for a {}-byte image",
                new.len()
            );
            if statuses
                .iter()
                .any(|s| s.state == UpdateState::Receiving && s.offset > 0)
            {
                resumed_past_zero += 1;
            }
        }
    }
    assert!(
        resumed_past_zero > 10,
        "{resumed_past_zero} cuts resumed past zero"
    );
    // Only the cuts between the swap's end and the confirmation roll back.
    assert!(
        rolled_back <= 4,
        "{rolled_back} of {} cuts rolled back",
        2 * total
    );
    eprintln!("{total} operations, each cut twice: {resumed_past_zero} resumed past zero, {rolled_back} rolled back");
}

/// A second cut while the bootloader recovers from the first (during the swap): still a whole
/// image every time.
#[test]
fn a_cut_during_the_recovery_of_a_cut_swap_still_boots_a_whole_image() {
    let (old, new) = old_and_new();
    let offer = Offer::new(9, NEW, new.clone());
    // Where the swap's operations are: after the transfer and the commit.
    let probe = Device::new(old.clone(), new.clone());
    let mut u = probe.boot(0).unwrap();
    let (_, reply) = transfer(&probe, &mut u, &offer);
    assert!(reply.unwrap().reboot);
    let swap_from = probe.flash.chip().lock().unwrap().ops();
    probe.flash.boot().unwrap();
    let swap_to = probe.flash.chip().lock().unwrap().ops();
    assert!(swap_to - swap_from > 20);
    for first in (swap_from..swap_to).step_by(3) {
        for second in (0..swap_to - swap_from).step_by(5) {
            let dev = Device::new(old.clone(), new.clone());
            let mut u = dev.boot(0).unwrap();
            transfer(&dev, &mut u, &offer);
            let chip = dev.flash.chip();
            chip.lock().unwrap().cut_at(first, Cut::Half);
            assert!(dev.flash.boot().is_err(), "the first cut hits the swap");
            chip.lock().unwrap().power_on();
            let at = chip.lock().unwrap().ops() + second;
            chip.lock().unwrap().cut_at(at, Cut::Half);
            // A second boot that completes the swap starts the new image (on trial); one that
            // is cut again leaves the work to the third.
            if dev.flash.boot().is_err() {
                chip.lock().unwrap().power_on();
                dev.flash.boot().unwrap();
            }
            let running = dev.running();
            assert_eq!(running, NEW, "cuts at {first} and +{second}");
        }
    }
}

#[test]
fn a_new_image_that_never_confirms_is_rolled_back_and_reported_failed() {
    let (old, new) = old_and_new();
    let offer = Offer::new(3, NEW, new.clone());
    let probe = {
        let mut d = Device::new(old.clone(), new.clone());
        d.never_confirm = &[NEW];
        d
    };
    let (_, _, statuses) = update_to_the_end(&probe, &offer);
    assert_eq!(probe.running(), OLD);
    let last = statuses.last().unwrap();
    assert_eq!(
        (last.id, last.state, last.error),
        (3, UpdateState::Failed, UpdateError::RolledBack)
    );
    assert!(statuses.iter().any(|s| s.state == UpdateState::Trial));
    // Stays reported after another reset, and a new transfer may start.
    let mut u = probe.boot(500_000).unwrap();
    assert_eq!(u.welcomed(500_000).unwrap().error, UpdateError::RolledBack);
    let again = Offer::new(4, NEW, new.clone());
    let r = send(&mut u, Message::UpdateBegin(again.begin()));
    assert_eq!(
        (r.status.id, r.status.state, r.status.offset),
        (4, UpdateState::Receiving, 0)
    );

    // With a power cut at every operation of the rollback too.
    let total = probe.flash.chip().lock().unwrap().ops();
    for op in 0..total {
        let mut dev = Device::new(old.clone(), new.clone());
        dev.never_confirm = &[NEW];
        dev.flash.chip().lock().unwrap().cut_at(op, Cut::Half);
        let (_, _, statuses) = update_to_the_end(&dev, &offer);
        assert_eq!(dev.running(), OLD, "cut at {op}");
        assert_eq!(
            statuses.last().unwrap().error,
            UpdateError::RolledBack,
            "cut at {op}"
        );
    }
}

/// Refusals change nothing: the old image keeps running, nothing is marked.
#[test]
fn bad_offers_are_refused_with_a_clear_error_and_the_old_image_keeps_running() {
    let (old, new) = old_and_new();
    let real_sha: [u8; 32] = Sha256::digest(&new).into();
    let mut bad_sig = Offer::new(1, NEW, new.clone());
    bad_sig.sig[10] ^= 0x40;
    let mut other_key = Offer::new(1, NEW, new.clone());
    other_key.sig = {
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(new.len() as u32, NEW, BOARD, &real_sha, &mut msg).unwrap();
        SigningKey::from_bytes(&[8; 32]).sign(&msg[..n]).to_bytes()
    };
    let too_big = Offer::new(1, NEW, image(NEW, ACTIVE_PAGES * 1024 + 1));
    let downgrade = Offer::new(1, "0.9.0", image("0.9.0", 4000));
    let same = Offer::new(1, OLD, image(OLD, 4000));
    let not_a_version = Offer::new(1, "nightly", image("nightly", 4000));
    let board = Offer::signed_as(1, NEW, "other-board", new.clone(), real_sha);
    let cases: Vec<(&str, Offer, UpdateError)> = vec![
        ("bad signature", bad_sig, UpdateError::BadSignature),
        ("another vendor's key", other_key, UpdateError::BadSignature),
        ("too big for the slot", too_big, UpdateError::TooBig),
        ("downgrade", downgrade, UpdateError::NotNewer),
        ("same version", same, UpdateError::NotNewer),
        ("not a version", not_a_version, UpdateError::BadVersion),
        ("another board", board, UpdateError::WrongBoard),
    ];
    for (what, offer, want) in cases {
        let dev = Device::new(old.clone(), new.clone());
        let mut u = dev.boot(0).unwrap();
        let ops = dev.flash.chip().lock().unwrap().ops();
        let r = send(&mut u, Message::UpdateBegin(offer.begin()));
        assert_eq!(
            (r.status.id, r.status.state, r.status.error),
            (1, UpdateState::Failed, want),
            "{what}"
        );
        assert_eq!(
            dev.flash.chip().lock().unwrap().ops(),
            ops,
            "{what}: flash untouched"
        );
        assert_eq!(u.welcomed(0).unwrap().state, UpdateState::Idle, "{what}");
        assert_eq!(dev.running(), OLD);
    }

    // A slot the device does not have.
    let dev = Device::new(old.clone(), new.clone());
    let mut u = dev.boot(0).unwrap();
    let offer = Offer::new(2, NEW, new.clone());
    let mut b = offer.begin();
    b.slot = 0;
    assert_eq!(
        send(&mut u, Message::UpdateBegin(b)).status.error,
        UpdateError::BadSlot
    );

    // A downgrade is installed when forced.
    let mut forced = Offer::new(6, "0.9.0", image("0.9.0", 4000));
    forced.force = true;
    let r = send(&mut u, Message::UpdateBegin(forced.begin()));
    assert_eq!(r.status.state, UpdateState::Receiving);
}

/// The image the vendor signed is not the one that arrives: a corrupted chunk, or a signed hash
/// that is not the image's. Both are refused at the commit; nothing is marked.
#[test]
fn a_corrupted_image_or_a_wrong_hash_is_refused_at_the_commit() {
    let (old, new) = old_and_new();
    let mut corrupted = Offer::new(1, NEW, new.clone());
    corrupted.img[5000] ^= 0x08; // flipped after signing: the bytes sent are not the signed ones
    let mut wrong = new.clone();
    wrong[0] ^= 1;
    let wrong_hash = Offer::signed_as(2, NEW, BOARD, new.clone(), Sha256::digest(&wrong).into());
    for offer in [corrupted, wrong_hash] {
        let dev = Device::new(old.clone(), new.clone());
        let mut u = dev.boot(0).unwrap();
        let (_, r) = transfer(&dev, &mut u, &offer);
        let r = r.unwrap();
        assert!(!r.reboot);
        assert_eq!(
            (r.status.id, r.status.state, r.status.error),
            (offer.id, UpdateState::Failed, UpdateError::BadHash)
        );
        dev.flash.boot().unwrap();
        assert_eq!(dev.running(), OLD, "nothing marked");
        let mut u = dev.boot(1).unwrap();
        assert_eq!(u.welcomed(1).unwrap().state, UpdateState::Idle);
    }
}

/// A link that drops mid-transfer (no reset): the same Begin again continues at the device's
/// exact offset; a chunk at any other offset is answered with that offset and not written.
#[test]
fn a_transfer_resumes_from_the_device_offset_after_the_link_drops() {
    let (old, new) = old_and_new();
    let dev = Device::new(old, new.clone());
    let offer = Offer::new(11, NEW, new.clone());
    let mut u = dev.boot(0).unwrap();
    let r = send(&mut u, Message::UpdateBegin(offer.begin()));
    assert_eq!(r.status.offset, 0);
    for at in (0..3 * 512).step_by(512) {
        send(
            &mut u,
            Message::UpdateChunk(UpdateChunk {
                id: 11,
                offset: at as u32,
                data: &new[at..at + 512],
            }),
        );
    }
    // The gateway lost everything it knew and begins again.
    let r = send(&mut u, Message::UpdateBegin(offer.begin()));
    assert_eq!(
        (r.status.state, r.status.offset),
        (UpdateState::Receiving, 1536)
    );
    // A chunk past a hole and a duplicate are not written.
    for at in [2048usize, 1024] {
        let r = send(
            &mut u,
            Message::UpdateChunk(UpdateChunk {
                id: 11,
                offset: at as u32,
                data: &new[at..at + 512],
            }),
        );
        assert_eq!(r.status.offset, 1536, "chunk at {at}");
    }
    // A chunk for another transfer.
    let r = send(
        &mut u,
        Message::UpdateChunk(UpdateChunk {
            id: 12,
            offset: 1536,
            data: &new[1536..2048],
        }),
    );
    assert_eq!(r.status.error, UpdateError::UnknownId);
    // A commit before the end.
    let r = send(&mut u, Message::UpdateCommit(UpdateCommit { id: 11 }));
    assert_eq!((r.status.error, r.reboot), (UpdateError::Incomplete, false));
    let (sent, r) = transfer(&dev, &mut u, &offer);
    assert_eq!(sent, new.len() - 1536, "went on from the device's offset");
    assert!(r.unwrap().reboot);
    // A reset (no power cut) keeps what was written: after the device reset mid-transfer the
    // offset is the last progress mark.
    let dev = Device::new(image(OLD, 5000), new.clone());
    let mut u = dev.boot(0).unwrap();
    send(&mut u, Message::UpdateBegin(offer.begin()));
    for at in (0..5 * 512).step_by(512) {
        send(
            &mut u,
            Message::UpdateChunk(UpdateChunk {
                id: 11,
                offset: at as u32,
                data: &new[at..at + 512],
            }),
        );
    }
    drop(u);
    let mut u = dev.boot(1).unwrap();
    let s = u.welcomed(1).unwrap();
    assert_eq!(
        (s.id, s.state, s.offset),
        (11, UpdateState::Receiving, 2048),
        "two whole pages"
    );
    // Aborting forgets it.
    let r = send(&mut u, Message::UpdateAbort(UpdateAbort { id: 11 }));
    assert_eq!(
        (r.status.state, r.status.error),
        (UpdateState::Idle, UpdateError::Aborted)
    );
    let mut u = dev.boot(2).unwrap();
    assert_eq!(u.welcomed(2).unwrap().state, UpdateState::Idle);
}

/// A record left by a build with a larger slot (its length does not fit this one) is no transfer:
/// the updater forgets it at boot instead of hashing past the end of the flash.
#[test]
fn a_record_longer_than_the_slot_is_forgotten() {
    use ferry_firmware::update::{Manifest, Record};
    let (old, new) = old_and_new();
    let dev = Device::new(old, new);
    let mut rec = Record::new(dev.flash.slots().record);
    rec.start(&Manifest {
        id: 4,
        length: (ACTIVE_PAGES as u32 + 5) * 1024,
        force: false,
        version: heapless::String::try_from(NEW).unwrap(),
        board: heapless::String::try_from(BOARD).unwrap(),
        sha256: [0; 32],
        signature: [0; 64],
    })
    .unwrap();
    rec.set_marked().unwrap();
    let mut u = dev.boot(0).unwrap();
    assert_eq!(u.welcomed(0).unwrap().state, UpdateState::Idle);
    assert!(rec_is_empty(&dev));
}

fn rec_is_empty(dev: &Device) -> bool {
    use ferry_firmware::update::Record;
    Record::new(dev.flash.slots().record)
        .load()
        .unwrap()
        .is_none()
}

/// A reset whose bootloader did not swap (STATE still asks for it): the old image is not on
/// trial and must confirm nothing; it reports the update as waiting for the reset, and a working
/// bootloader swaps at the next one.
#[test]
fn without_a_swap_the_old_image_never_confirms_the_new_one() {
    let (old, new) = old_and_new();
    let dev = Device::new(old, new.clone());
    let offer = Offer::new(5, NEW, new);
    let mut u = dev.boot(0).unwrap();
    let (_, r) = transfer(&dev, &mut u, &offer);
    assert!(r.unwrap().reboot);
    drop(u);
    let cfg = UpdaterConfig::new(key().verifying_key().to_bytes(), BOARD, OLD);
    let mut u = Updater::new(dev.flash.slots(), cfg, 0);
    let s = u.welcomed(0).unwrap();
    assert_eq!((s.id, s.state), (5, UpdateState::Rebooting));
    assert_eq!(dev.running(), OLD);
    dev.flash.boot().unwrap();
    assert_eq!(
        dev.running(),
        NEW,
        "the swap comes with a working bootloader"
    );
}

//! The device's firmware updater (PROTOCOL.md section 9): takes an image over the link into the
//! inactive slot while the device keeps sampling, verifies it, and hands it to the bootloader.
//!
//! Flash layout (four partitions, each any `embedded-storage` NOR flash):
//! - ACTIVE: the running image (read only here, to settle one ambiguous case after a power cut);
//! - DFU: the update slot, one erase page larger than ACTIVE (embassy-boot swaps through it);
//! - STATE: embassy-boot's state (`mark_updated` / `mark_booted`, read for "on trial");
//! - RECORD: this module's [`record`], the transfer's manifest and progress.
//!
//! The bootloader (embassy-boot's `BootLoader::prepare_boot`) swaps DFU into ACTIVE when STATE
//! says so, and swaps back when the new image resets before it confirmed itself.
//!
//! Invariants (the promise "a device is never bricked by an update"):
//! - Nothing is handed to the bootloader before the whole image was written, its SHA-256 matched
//!   the signed one and the signature verified with the device's public key: a power cut at any
//!   point before that leaves the running image and STATE untouched.
//! - A transfer is refused before any flash is touched when it is for another board or slot, too
//!   big, not newer (unless forced), or badly signed.
//! - No new transfer starts while a new image is marked or on trial: the DFU slot then holds the
//!   image the bootloader would restore.
//! - The offset the device reports is never past the bytes it holds: after a reset it is the
//!   progress marks' count times the mark unit (whole erase pages), within a session the exact
//!   end of the last chunk written.
//! - The new image confirms itself (`mark_booted`) only when the gateway has welcomed it, i.e.
//!   the link works; one that is not welcomed within [`UpdaterConfig::trial_timeout_ms`] asks for
//!   a reset, and the bootloader restores the old image.

pub mod record;
mod verify;

use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};
use ferry_wire::update::{
    compare_versions, signed_message, CHUNK_ALIGN, MAX_CHUNK_LEN, MAX_SIGNED_LEN, PUBLIC_KEY_LEN,
};
use ferry_wire::{
    Message, UpdateAbort, UpdateBegin, UpdateChunk, UpdateCommit, UpdateError, UpdateState,
    UpdateStatus,
};
use heapless::String;

pub use record::{Manifest, Record};

/// The slot number of the update slot in `UpdateBegin` (the swap layout has one).
pub const UPDATE_SLOT: u8 = 1;

/// What an updater knows about itself.
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// The vendor's ed25519 public key; only images it signed are installed.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// The board images must be built for (compared byte for byte with `UpdateBegin::board`).
    pub board: &'static str,
    /// The running image's version (what `Hello::firmware` reports).
    pub version: &'static str,
    /// Longest chunk taken (a multiple of 32, at most 512).
    pub max_chunk: u16,
    /// Bytes the gateway may send past the reported offset.
    pub window: u16,
    /// A new image not welcomed by the gateway within this time after boot asks for a reset
    /// (and is rolled back by the bootloader).
    pub trial_timeout_ms: u32,
    /// Confirm a new image once welcomed. `false` only to build images that must be rolled back
    /// (tests of the rollback).
    pub confirm: bool,
}

impl UpdaterConfig {
    /// Defaults: 512-byte chunks, two chunks in flight, 60 s to be welcomed on trial.
    pub fn new(
        public_key: [u8; PUBLIC_KEY_LEN],
        board: &'static str,
        version: &'static str,
    ) -> Self {
        UpdaterConfig {
            public_key,
            board,
            version,
            max_chunk: MAX_CHUNK_LEN as u16,
            window: 2 * MAX_CHUNK_LEN as u16,
            trial_timeout_ms: 60_000,
            confirm: true,
        }
    }
}

/// The four flash partitions.
pub struct Slots<A, D, S, R> {
    /// The running image.
    pub active: A,
    /// The update slot.
    pub dfu: D,
    /// embassy-boot's state.
    pub state: S,
    /// The update record.
    pub record: R,
}

/// The answer to one update message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// To send to the gateway.
    pub status: UpdateStatus,
    /// Reset once the status is on its way: the image is marked for the bootloader.
    pub reboot: bool,
}

/// What the device does with the update messages: an [`Updater`], or [`NoUpdates`] for a
/// device that cannot be updated (it ignores them and never reports an update status).
pub trait Updates {
    /// Handles one gateway → device update message; `None` to ignore it.
    fn handle(&mut self, now_ms: u64, msg: &Message<'_>) -> Option<Reply>;
    /// The gateway welcomed this boot: the status to report, if the device can be updated.
    fn welcomed(&mut self, now_ms: u64) -> Option<UpdateStatus>;
    /// Called every loop: true when the device must reset (a trial not confirmed in time).
    fn poll(&mut self, _now_ms: u64) -> bool {
        false
    }
}

/// A device without an updater.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoUpdates;

impl Updates for NoUpdates {
    fn handle(&mut self, _now_ms: u64, _msg: &Message<'_>) -> Option<Reply> {
        None
    }
    fn welcomed(&mut self, _now_ms: u64) -> Option<UpdateStatus> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Taking chunks; `erased` DFU pages from the start are erased (and maybe written).
    Receiving {
        offset: u32,
        erased: u32,
        marks: u32,
    },
    Rebooting,
    Trial,
    Done,
    /// A failure the record keeps (rolled back) or a flash error (the record may resume).
    Failed(UpdateError),
}

/// The updater over the four partitions.
pub struct Updater<A, D, S, R> {
    cfg: UpdaterConfig,
    active: A,
    dfu: D,
    state: S,
    record: Record<R>,
    manifest: Option<Manifest>,
    phase: Phase,
    booted_ms: u64,
    /// Bytes of image per progress mark (whole DFU erase pages).
    unit: u32,
}

/// The bootloader's view of STATE, read through embassy-boot.
fn boot_state<S: NorFlash>(state: &mut S) -> Result<embassy_boot::State, ()> {
    let mut aligned = [0u8; 32];
    let mut fs = embassy_boot::BlockingFirmwareState::new(state, &mut aligned[..S::WRITE_SIZE]);
    fs.get_state().map_err(|_| ())
}

fn set_boot_state<S: NorFlash>(state: &mut S, updated: bool) -> Result<(), ()> {
    let mut aligned = [0u8; 32];
    let mut fs = embassy_boot::BlockingFirmwareState::new(state, &mut aligned[..S::WRITE_SIZE]);
    if updated {
        fs.mark_updated().map_err(|_| ())
    } else {
        fs.mark_booted().map_err(|_| ())
    }
}

impl<A, D, S, R> Updater<A, D, S, R>
where
    A: ReadNorFlash,
    D: NorFlash,
    S: NorFlash,
    R: NorFlash,
{
    /// Reads the record and the bootloader's state after a boot at `now_ms`, and settles what
    /// they say: on trial, rolled back (the bootloader's REVERT is recorded and cleared), done,
    /// or receiving from the last progress mark.
    pub fn new(slots: Slots<A, D, S, R>, cfg: UpdaterConfig, now_ms: u64) -> Self {
        const {
            assert!(CHUNK_ALIGN % D::WRITE_SIZE == 0);
            assert!(S::WRITE_SIZE <= 32);
        }
        let record = Record::new(slots.record);
        let pages = (slots.dfu.capacity() / D::ERASE_SIZE) as u32;
        let per_mark = pages.div_ceil(record.mark_capacity()).max(1);
        let mut u = Updater {
            cfg,
            active: slots.active,
            dfu: slots.dfu,
            state: slots.state,
            record,
            manifest: None,
            phase: Phase::Idle,
            booted_ms: now_ms,
            unit: per_mark * D::ERASE_SIZE as u32,
        };
        u.phase = u.settle().unwrap_or(Phase::Failed(UpdateError::Flash));
        u
    }

    fn settle(&mut self) -> Result<Phase, ()> {
        use embassy_boot::State;
        let boot = boot_state(&mut self.state)?;
        let stored = self.record.load().map_err(|_| ())?;
        let Some(s) = stored else {
            if boot == State::Revert {
                set_boot_state(&mut self.state, false)?;
            }
            // Swapped without a record (it was erased since): nothing to report; the image
            // confirms itself like any trial.
            return Ok(if boot == State::Swap {
                Phase::Trial
            } else {
                Phase::Idle
            });
        };
        let length = s.manifest.length;
        let room = self
            .active
            .capacity()
            .min(self.dfu.capacity().saturating_sub(D::ERASE_SIZE));
        if length as usize > room || length == 0 {
            // Written by a build with another layout: nothing of it can be in this slot.
            self.record.clear().map_err(|_| ())?;
            return Ok(if boot == State::Swap {
                Phase::Trial
            } else {
                Phase::Idle
            });
        }
        self.manifest = Some(s.manifest);
        Ok(match boot {
            // STATE says the bootloader swapped, and the running image is the new one: on trial.
            // If it is not (a bootloader that did not swap), the old image must not confirm
            // anything: the update waits for a swap that does not come (the gateway times out).
            State::Swap if self.active_is_the_new_image()? => {
                self.record.set_tried().map_err(|_| ())?;
                Phase::Trial
            }
            State::Swap => Phase::Rebooting,
            // The bootloader reverted. (embassy-boot also "reverts" without copying anything when
            // a cut confirmation left STATE as SWAP with its progress invalidated: then the new
            // image still runs, and it did confirm.)
            State::Revert => {
                if s.confirmed || self.active_is_the_new_image()? {
                    self.record.set_confirmed().map_err(|_| ())?;
                    set_boot_state(&mut self.state, false)?;
                    Phase::Done
                } else {
                    self.record.set_rolled_back().map_err(|_| ())?;
                    set_boot_state(&mut self.state, false)?;
                    Phase::Failed(UpdateError::RolledBack)
                }
            }
            _ if s.rolled_back => Phase::Failed(UpdateError::RolledBack),
            _ if s.confirmed => Phase::Done,
            _ if s.marked => {
                // Marked, and STATE says boot. The running image tells what happened: the new
                // image confirmed itself and the CONFIRMED write was cut; or it ran on trial and
                // was restored, and the REVERT mark was cut; or the mark for the bootloader was
                // cut before any swap, and a commit may mark it again.
                if self.active_is_the_new_image()? {
                    self.record.set_confirmed().map_err(|_| ())?;
                    Phase::Done
                } else if s.tried {
                    self.record.set_rolled_back().map_err(|_| ())?;
                    Phase::Failed(UpdateError::RolledBack)
                } else {
                    Phase::Receiving {
                        offset: length,
                        erased: u32::MAX,
                        marks: u32::MAX,
                    }
                }
            }
            _ => {
                let offset = (s.marks.saturating_mul(self.unit)).min(length);
                Phase::Receiving {
                    offset,
                    erased: offset / D::ERASE_SIZE as u32,
                    marks: s.marks,
                }
            }
        })
    }

    fn active_is_the_new_image(&mut self) -> Result<bool, ()> {
        let Some(m) = &self.manifest else {
            return Ok(false);
        };
        if m.length as usize > self.active.capacity() {
            return Ok(false);
        }
        let digest = verify::sha256_of(&mut self.active, m.length).map_err(|_| ())?;
        Ok(digest == m.sha256)
    }

    /// The status the device reports now.
    pub fn status(&self) -> UpdateStatus {
        self.status_with(UpdateError::None)
    }

    fn status_with(&self, error: UpdateError) -> UpdateStatus {
        let (id, length) = self.manifest.as_ref().map_or((0, 0), |m| (m.id, m.length));
        let (state, offset, error) = match self.phase {
            // No record (a trial whose record was erased since reports nothing either).
            _ if id == 0 => (UpdateState::Idle, 0, error),
            Phase::Idle => (UpdateState::Idle, 0, error),
            Phase::Receiving { offset, .. } => (UpdateState::Receiving, offset, error),
            Phase::Rebooting => (UpdateState::Rebooting, length, error),
            Phase::Trial => (UpdateState::Trial, length, error),
            Phase::Done => (UpdateState::Done, length, error),
            Phase::Failed(e) if error == UpdateError::None => (UpdateState::Failed, 0, e),
            Phase::Failed(_) => (UpdateState::Failed, 0, error),
        };
        UpdateStatus {
            id: if state == UpdateState::Idle { 0 } else { id },
            state,
            offset,
            error,
            max_chunk: self.cfg.max_chunk,
            window: self.cfg.window,
        }
    }

    /// A refusal of a request for transfer `id` that changes nothing on the device.
    fn refuse(&self, id: u32, error: UpdateError) -> UpdateStatus {
        UpdateStatus {
            id,
            state: UpdateState::Failed,
            offset: 0,
            error,
            max_chunk: self.cfg.max_chunk,
            window: self.cfg.window,
        }
    }

    fn reply(status: UpdateStatus) -> Option<Reply> {
        Some(Reply {
            status,
            reboot: false,
        })
    }

    fn signature_ok(&self, m: &Manifest) -> bool {
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let Some(n) = signed_message(m.length, &m.version, &m.board, &m.sha256, &mut msg) else {
            return false;
        };
        verify::ed25519(&self.cfg.public_key, &msg[..n], &m.signature)
    }

    fn begin(&mut self, b: &UpdateBegin<'_>) -> UpdateStatus {
        if matches!(self.phase, Phase::Rebooting | Phase::Trial) {
            return self.refuse(b.id, UpdateError::Busy);
        }
        // The bootloader's STATE decides, not only this updater's memory: while it asks for a
        // swap (an image is marked, or runs on trial), DFU holds what the bootloader will copy
        // or restore, and must not be written. A STATE that cannot be read counts as busy.
        if !matches!(boot_state(&mut self.state), Ok(s) if s != embassy_boot::State::Swap) {
            return self.refuse(b.id, UpdateError::Busy);
        }
        if b.slot != UPDATE_SLOT {
            return self.refuse(b.id, UpdateError::BadSlot);
        }
        let room = self
            .active
            .capacity()
            .min(self.dfu.capacity().saturating_sub(D::ERASE_SIZE));
        if b.length as usize > room {
            return self.refuse(b.id, UpdateError::TooBig);
        }
        if b.board != self.cfg.board {
            return self.refuse(b.id, UpdateError::WrongBoard);
        }
        match compare_versions(b.version, self.cfg.version) {
            _ if b.force => {}
            None => return self.refuse(b.id, UpdateError::BadVersion),
            Some(core::cmp::Ordering::Greater) => {}
            Some(_) => return self.refuse(b.id, UpdateError::NotNewer),
        }
        let (Ok(version), Ok(board), Ok(sha256), Ok(signature)) = (
            String::try_from(b.version),
            String::try_from(b.board),
            b.sha256.try_into(),
            b.signature.try_into(),
        ) else {
            return self.refuse(b.id, UpdateError::BadSignature);
        };
        let m = Manifest {
            id: b.id,
            length: b.length,
            force: b.force,
            version,
            board,
            sha256,
            signature,
        };
        if self.manifest.as_ref() == Some(&m) {
            match self.phase {
                // The same transfer again (a gateway that restarted or lost our status).
                Phase::Receiving { .. } | Phase::Done => return self.status(),
                // A flash error earlier: resume from the record's marks if it reads back.
                _ => {
                    if let Ok(p @ Phase::Receiving { .. }) = self.settle() {
                        self.phase = p;
                        return self.status();
                    }
                }
            }
        }
        // Checked once per transfer (a repeated Begin of the recorded one was checked when it
        // began): verifying takes about a second on a 16 MHz Cortex-M0.
        if !self.signature_ok(&m) {
            return self.refuse(b.id, UpdateError::BadSignature);
        }
        if self.record.start(&m).is_err() {
            self.manifest = Some(m);
            self.phase = Phase::Failed(UpdateError::Flash);
            return self.status();
        }
        self.manifest = Some(m);
        self.phase = Phase::Receiving {
            offset: 0,
            erased: 0,
            marks: 0,
        };
        self.status()
    }

    fn chunk(&mut self, c: &UpdateChunk<'_>) -> UpdateStatus {
        let Some(m) = &self.manifest else {
            return self.status_with(UpdateError::UnknownId);
        };
        if c.id != m.id {
            return self.status_with(UpdateError::UnknownId);
        }
        let length = m.length;
        let Phase::Receiving {
            offset,
            erased,
            marks,
        } = self.phase
        else {
            return self.status();
        };
        let len = c.data.len() as u32;
        let end = offset + len;
        let aligned = len as usize % CHUNK_ALIGN == 0 || end == length;
        if c.offset != offset || end > length || !aligned || len > u32::from(self.cfg.max_chunk) {
            // Not the next chunk (one was lost, or this one is a duplicate): the status tells
            // the gateway where to go on from.
            return self.status();
        }
        match self.write(offset, c.data, erased, marks, length) {
            Ok((erased, marks)) => {
                self.phase = Phase::Receiving {
                    offset: end,
                    erased,
                    marks,
                }
            }
            Err(()) => self.phase = Phase::Failed(UpdateError::Flash),
        }
        self.status()
    }

    /// Writes one chunk at `offset` (erasing the pages it reaches first) and the progress marks
    /// it completes; returns the new erased-page and mark counts.
    fn write(
        &mut self,
        offset: u32,
        data: &[u8],
        mut erased: u32,
        mut marks: u32,
        length: u32,
    ) -> Result<(u32, u32), ()> {
        let page = D::ERASE_SIZE as u32;
        let end = offset + data.len() as u32;
        let last_page = (end - 1) / page;
        while erased <= last_page {
            self.dfu
                .erase(erased * page, (erased + 1) * page)
                .map_err(|_| ())?;
            erased += 1;
        }
        // Whole write units: the last chunk is padded with the erased value.
        let mut buf = [0xFFu8; MAX_CHUNK_LEN + CHUNK_ALIGN];
        buf[..data.len()].copy_from_slice(data);
        let padded = data.len().div_ceil(D::WRITE_SIZE) * D::WRITE_SIZE;
        self.dfu.write(offset, &buf[..padded]).map_err(|_| ())?;
        while marks < self.record.mark_capacity()
            && ((marks + 1).saturating_mul(self.unit) <= end
                || (end == length && marks * self.unit < end))
        {
            self.record.mark(marks).map_err(|_| ())?;
            marks += 1;
        }
        Ok((erased, marks))
    }

    fn commit(&mut self, c: &UpdateCommit) -> Reply {
        let reply = |status| Reply {
            status,
            reboot: false,
        };
        let Some(m) = self.manifest.clone() else {
            return reply(self.status_with(UpdateError::UnknownId));
        };
        if c.id != m.id {
            return reply(self.status_with(UpdateError::UnknownId));
        }
        match self.phase {
            Phase::Rebooting => {
                return Reply {
                    status: self.status(),
                    reboot: true,
                }
            }
            Phase::Receiving { offset, .. } if offset < m.length => {
                return reply(self.status_with(UpdateError::Incomplete))
            }
            Phase::Receiving { .. } => {}
            _ => return reply(self.status()),
        }
        let failed = |u: &mut Self, error| {
            // The slot's bytes are of no use: start again from zero next time.
            let _ = u.record.clear();
            let status = u.refuse(m.id, error);
            u.manifest = None;
            u.phase = Phase::Idle;
            reply(status)
        };
        match verify::sha256_of(&mut self.dfu, m.length) {
            Err(()) => {
                self.phase = Phase::Failed(UpdateError::Flash);
                return reply(self.status());
            }
            Ok(digest) if digest != m.sha256 => return failed(self, UpdateError::BadHash),
            Ok(_) => {}
        }
        if !self.signature_ok(&m) {
            return failed(self, UpdateError::BadSignature);
        }
        if set_boot_state(&mut self.state, true).is_err() || self.record.set_marked().is_err() {
            self.phase = Phase::Failed(UpdateError::Flash);
            return reply(self.status());
        }
        self.phase = Phase::Rebooting;
        Reply {
            status: self.status(),
            reboot: true,
        }
    }

    fn abort(&mut self, a: &UpdateAbort) -> UpdateStatus {
        if self.manifest.as_ref().map(|m| m.id) != Some(a.id) {
            return self.status_with(UpdateError::UnknownId);
        }
        match self.phase {
            Phase::Rebooting | Phase::Trial => self.status_with(UpdateError::Busy),
            Phase::Done => self.status(),
            _ => {
                if self.record.clear().is_err() {
                    return self.status_with(UpdateError::Flash);
                }
                self.manifest = None;
                self.phase = Phase::Idle;
                self.status_with(UpdateError::Aborted)
            }
        }
    }

    /// The partitions back (for a bootloader run in tests, or a board's reset).
    pub fn into_slots(self) -> Slots<A, D, S, R> {
        Slots {
            active: self.active,
            dfu: self.dfu,
            state: self.state,
            record: self.record.into_inner(),
        }
    }
}

impl<A, D, S, R> Updates for Updater<A, D, S, R>
where
    A: ReadNorFlash,
    D: NorFlash,
    S: NorFlash,
    R: NorFlash,
{
    fn handle(&mut self, _now_ms: u64, msg: &Message<'_>) -> Option<Reply> {
        match msg {
            Message::UpdateBegin(b) => Self::reply(self.begin(b)),
            Message::UpdateChunk(c) => Self::reply(self.chunk(c)),
            Message::UpdateCommit(c) => Some(self.commit(c)),
            Message::UpdateAbort(a) => Self::reply(self.abort(a)),
            _ => None,
        }
    }

    fn welcomed(&mut self, _now_ms: u64) -> Option<UpdateStatus> {
        if self.phase == Phase::Trial && self.cfg.confirm {
            let confirmed = set_boot_state(&mut self.state, false).is_ok()
                && (self.manifest.is_none() || self.record.set_confirmed().is_ok());
            if confirmed {
                self.phase = if self.manifest.is_some() {
                    Phase::Done
                } else {
                    Phase::Idle
                };
            }
        }
        Some(self.status())
    }

    fn poll(&mut self, now_ms: u64) -> bool {
        self.phase == Phase::Trial
            && now_ms.saturating_sub(self.booted_ms) >= u64::from(self.cfg.trial_timeout_ms)
    }
}

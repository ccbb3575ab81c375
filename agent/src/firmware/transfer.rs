//! One device's update job as a sans-IO state machine: the gateway's rules of PROTOCOL.md section
//! 9.2. The firmware actor feeds it the device's [`UpdateStatus`]es, link changes and the time, and
//! sends the [`Out`] messages it returns on the device's link.
//!
//! Invariants:
//! - Chunks always continue from the device's latest reported `offset` (never from what was sent):
//!   a lost chunk, a dropped link, a gateway restart or a device reset costs at most the bytes
//!   since the device's last kept point, never the transfer.
//! - At most the device's `window` of bytes past its reported offset is in flight; each chunk is
//!   the device's `max_chunk` long but the last.
//! - A job ends exactly once ([`Transfer::outcome`]): done when the device reports `Done` for its id
//!   (after the reboot), failed on a refusal, a rollback, too many attempts or a device that does
//!   not come back after its reboot, cancelled on request.
//! - Nothing is sent on a link that has not shown, by a status in its current session, that the
//!   device can be updated.

use std::time::{Duration, Instant};

use ferry_wire::{UpdateError, UpdateState, UpdateStatus};

/// Silence from a device that has chunks in flight after which they are sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(2);
/// A device that was told to reset into its new image and has not reported since fails the job
/// after this long (its trial time, the bootloader's swap back and a reconnect fit well in it).
pub const REBOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Begins (first and repeated ones) before a job fails: every device reset or unexpected `Idle`
/// in the middle of a transfer costs one.
pub const MAX_ATTEMPTS: u32 = 5;
/// A started transfer whose device holds no new byte for this long fails (`stalled`): the
/// device went away, or reset into a firmware that cannot be updated.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// The most bytes in flight, whatever window the device offers (the link's queue holds 16 frames).
pub const MAX_WINDOW: u32 = 8 * ferry_wire::MAX_CHUNK_LEN as u32;

/// The signed description of the image, as the job sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Transfer id on the wire (the job's id).
    pub id: u32,
    /// Image length.
    pub length: u32,
    /// Image version.
    pub version: String,
    /// Board.
    pub board: String,
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
    /// Signature of the signed message.
    pub signature: [u8; 64],
    /// Install even if not newer.
    pub force: bool,
}

/// A message for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// `UpdateBegin` with the offer.
    Begin,
    /// `UpdateChunk` of image bytes `offset .. offset + len`.
    Chunk {
        /// Start.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// `UpdateCommit`.
    Commit,
    /// `UpdateAbort`.
    Abort,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started: waits for its turn and for the device.
    Queued,
    /// Chunks going out.
    Transferring,
    /// Committed: the device resets into the new image.
    Rebooting,
    /// Ended.
    Ended(Outcome),
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device runs the new image and confirmed it.
    Done,
    /// It did not happen; the device runs its old image.
    Failed(Failure),
    /// Cancelled by an operator (the device was told to forget the transfer).
    Cancelled,
}

/// Why a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The device refused or failed it, with this error.
    Device(UpdateError),
    /// [`MAX_ATTEMPTS`] begins without success.
    TooManyAttempts,
    /// The device reported the update done, but its Hello names another version than the
    /// image's: what runs is not what was sent.
    WrongVersion,
    /// No progress for [`STALL_TIMEOUT`].
    Stalled,
    /// No report within [`REBOOT_TIMEOUT`] of the reboot.
    NoReturn,
    /// The rollout was stopped before this job started.
    RolloutStopped,
}

impl Failure {
    /// Stable lowercase name (API, database, MQTT).
    pub fn as_str(&self) -> &'static str {
        match self {
            Failure::Device(e) => e.as_str(),
            Failure::TooManyAttempts => "too_many_attempts",
            Failure::WrongVersion => "wrong_version",
            Failure::Stalled => "stalled",
            Failure::NoReturn => "no_return",
            Failure::RolloutStopped => "rollout_stopped",
        }
    }
}

/// One job's transfer state.
#[derive(Debug, Clone)]
pub struct Transfer {
    offer: Offer,
    phase: Phase,
    /// The device's latest reported offset (what it holds).
    acked: u32,
    /// One past the last byte sent since the latest status.
    sent_to: u32,
    max_chunk: u32,
    window: u32,
    /// The device showed it can be updated on its current link.
    attached: bool,
    last_heard: Option<Instant>,
    rebooting_since: Option<Instant>,
    attempts: u32,
    /// The device reported `Idle` or another id once since the last Begin; a second time means
    /// the Begin itself was lost.
    begin_pending: bool,
    resends: u32,
    /// When the device last reported holding more than before (or the job started).
    progress_at: Option<Instant>,
}

impl Transfer {
    /// A job for `offer`, queued (or restored: `phase` and `attempts` from the database).
    pub fn new(offer: Offer, phase: Phase, attempts: u32) -> Self {
        Transfer {
            offer,
            phase,
            acked: 0,
            sent_to: 0,
            max_chunk: ferry_wire::MAX_CHUNK_LEN as u32,
            window: 2 * ferry_wire::MAX_CHUNK_LEN as u32,
            attached: false,
            last_heard: None,
            rebooting_since: None,
            attempts,
            begin_pending: false,
            resends: 0,
            progress_at: None,
        }
    }

    /// After a restart at `now`: what the device was last known to hold (shown until it
    /// reports); the stall timeout counts from now.
    pub fn restore(&mut self, offset: u32, now: Instant) {
        self.acked = offset.min(self.offer.length);
        self.progress_at = Some(now);
    }

    /// The offer.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Bytes the device reported holding.
    pub fn offset(&self) -> u32 {
        self.acked
    }

    /// Begins sent so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Chunks sent again after a silence or a hole.
    pub fn resends(&self) -> u32 {
        self.resends
    }

    /// The outcome, once ended.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.phase {
            Phase::Ended(o) => Some(o),
            _ => None,
        }
    }

    /// Whether it is started (transferring or rebooting): it holds a slot of its rollout.
    pub fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Transferring | Phase::Rebooting)
    }

    /// The device reported on a link (a queued job learns it can begin).
    pub fn attach(&mut self) {
        self.attached = true;
    }

    /// The device's link closed: nothing can be sent until it reports again.
    pub fn detach(&mut self) {
        self.attached = false;
    }

    fn end(&mut self, o: Outcome) -> Vec<Out> {
        self.phase = Phase::Ended(o);
        Vec::new()
    }

    fn begin(&mut self, now: Instant) -> Vec<Out> {
        if self.attempts >= MAX_ATTEMPTS {
            return self.end(Outcome::Failed(Failure::TooManyAttempts));
        }
        self.attempts += 1;
        self.begin_pending = true;
        self.phase = Phase::Transferring;
        self.last_heard = Some(now);
        self.progress_at.get_or_insert(now);
        self.acked = 0;
        self.sent_to = 0;
        vec![Out::Begin]
    }

    /// The rollout gives the job its turn; it begins once the device is attached.
    pub fn start(&mut self, now: Instant) -> Vec<Out> {
        if self.phase != Phase::Queued {
            return Vec::new();
        }
        self.phase = Phase::Transferring;
        self.progress_at = Some(now);
        if self.attached {
            return self.begin(now);
        }
        Vec::new()
    }

    /// Cancels the job; a transfer in progress is aborted on the device. A job past its commit
    /// cannot be cancelled (the device resets into the image anyway); `false` then.
    pub fn cancel(&mut self) -> (bool, Vec<Out>) {
        match self.phase {
            Phase::Queued => (true, self.end(Outcome::Cancelled)),
            // The commit is out: the device may already be resetting into the image.
            Phase::Transferring if self.acked >= self.offer.length => (false, Vec::new()),
            Phase::Transferring => {
                let abort = self.attached && self.attempts > 0;
                self.end(Outcome::Cancelled);
                (true, if abort { vec![Out::Abort] } else { Vec::new() })
            }
            Phase::Rebooting | Phase::Ended(_) => (false, Vec::new()),
        }
    }

    /// The rollout stopped before this job's turn.
    pub fn stop(&mut self) {
        if self.phase == Phase::Queued {
            self.phase = Phase::Ended(Outcome::Failed(Failure::RolloutStopped));
        }
    }

    /// The device reported `s` on its link (after a Welcome, or answering us); `running` is the
    /// version its Hello reported.
    pub fn status(&mut self, now: Instant, s: &UpdateStatus, running: &str) -> Vec<Out> {
        self.attached = true;
        self.last_heard = Some(now);
        let ours = s.id == self.offer.id;
        let started = matches!(self.phase, Phase::Rebooting | Phase::Transferring);
        if ours && s.state == UpdateState::Done && started {
            return if running == self.offer.version {
                self.end(Outcome::Done)
            } else {
                self.end(Outcome::Failed(Failure::WrongVersion))
            };
        }
        match self.phase {
            Phase::Queued | Phase::Ended(_) => Vec::new(),
            Phase::Rebooting => match (ours, s.state) {
                (true, UpdateState::Failed) => self.end(Outcome::Failed(Failure::Device(s.error))),
                // Still the old boot answering, or the new image on trial (it confirms once
                // welcomed): wait.
                (true, UpdateState::Rebooting | UpdateState::Trial) => Vec::new(),
                // A new image that has no record of the transfer (it reports Idle or another
                // id) but runs the offered version: the update happened.
                (false, _) | (_, UpdateState::Idle) if running == self.offer.version => {
                    self.end(Outcome::Done)
                }
                // The mark was cut before any swap (section 9.2, rule 6): commit again.
                (true, UpdateState::Receiving) if s.offset >= self.offer.length => {
                    self.phase = Phase::Transferring;
                    self.acked = s.offset;
                    vec![Out::Commit]
                }
                // The device lost the transfer on the way: start over.
                _ => self.begin(now),
            },
            Phase::Transferring => self.transferring(now, s, ours),
        }
    }

    fn transferring(&mut self, now: Instant, s: &UpdateStatus, ours: bool) -> Vec<Out> {
        if !ours || s.state == UpdateState::Idle {
            // A refusal names our id; anything else (another transfer, nothing recorded) means
            // the device does not have ours: begin (again). A status sent before our Begin
            // arrived (after a Welcome) is followed by the Begin's answer, so a second one is
            // needed before beginning again.
            if self.attempts == 0 || !self.begin_pending {
                return self.begin(now);
            }
            self.begin_pending = false;
            return Vec::new();
        }
        self.begin_pending = false;
        match s.state {
            UpdateState::Failed => match s.error {
                // A flash error may pass: the next begin resumes from the device's marks.
                UpdateError::Flash | UpdateError::Busy => self.begin(now),
                e => self.end(Outcome::Failed(Failure::Device(e))),
            },
            UpdateState::Rebooting => {
                self.phase = Phase::Rebooting;
                self.rebooting_since = Some(now);
                Vec::new()
            }
            UpdateState::Trial => {
                self.phase = Phase::Rebooting;
                self.rebooting_since.get_or_insert(now);
                Vec::new()
            }
            UpdateState::Done => unreachable!("handled in status"),
            UpdateState::Receiving => {
                self.max_chunk = u32::from(s.max_chunk).clamp(32, ferry_wire::MAX_CHUNK_LEN as u32);
                self.window = u32::from(s.window).clamp(self.max_chunk, MAX_WINDOW);
                if s.offset > self.acked || self.progress_at.is_none() {
                    self.progress_at = Some(now);
                }
                if s.offset < self.sent_to && s.offset <= self.acked && s.error == UpdateError::None
                {
                    // The device is still where it was although more was sent: a chunk was
                    // lost (or this answers a duplicate). Go on from its offset.
                    self.resends += 1;
                    self.sent_to = s.offset;
                }
                self.acked = s.offset;
                self.sent_to = self.sent_to.max(s.offset);
                if s.offset >= self.offer.length {
                    return vec![Out::Commit];
                }
                self.fill()
            }
            UpdateState::Idle => unreachable!("handled above"),
        }
    }

    /// Chunks up to the window past the device's offset.
    fn fill(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        let limit = self
            .acked
            .saturating_add(self.window)
            .min(self.offer.length);
        while self.sent_to < limit {
            let len = self.max_chunk.min(self.offer.length - self.sent_to);
            if self.sent_to + len > limit && self.sent_to + len != self.offer.length {
                break; // a whole chunk does not fit the window yet
            }
            if self.sent_to + len > limit {
                break;
            }
            out.push(Out::Chunk {
                offset: self.sent_to,
                len,
            });
            self.sent_to += len;
        }
        out
    }

    /// Time passes: resend after silence, fail a device that does not come back.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        if self.phase == Phase::Transferring
            && self
                .progress_at
                .is_some_and(|t| now.saturating_duration_since(t) >= STALL_TIMEOUT)
        {
            return self.end(Outcome::Failed(Failure::Stalled));
        }
        match self.phase {
            Phase::Transferring if self.attached => {
                let silent = self
                    .last_heard
                    .is_none_or(|t| now.saturating_duration_since(t) >= RESEND_AFTER);
                if !silent {
                    return Vec::new();
                }
                self.last_heard = Some(now);
                if self.attempts == 0 || self.begin_pending {
                    // The Begin (or its answer) was lost.
                    return self.begin(now);
                }
                if self.acked >= self.offer.length {
                    return vec![Out::Commit];
                }
                self.resends += 1;
                self.sent_to = self.acked;
                self.fill()
            }
            Phase::Rebooting => {
                let since = *self.rebooting_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= REBOOT_TIMEOUT {
                    return self.end(Outcome::Failed(Failure::NoReturn));
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;

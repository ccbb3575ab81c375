use super::*;

/// The device reports, its Hello naming the offer's version.
trait Report {
    fn report(&mut self, now: Instant, s: &UpdateStatus) -> Vec<Out>;
}

impl Report for Transfer {
    fn report(&mut self, now: Instant, s: &UpdateStatus) -> Vec<Out> {
        self.status(now, s, "1.1.0")
    }
}

fn offer(length: u32) -> Offer {
    Offer {
        id: 7,
        length,
        version: "1.1.0".into(),
        board: "b".into(),
        sha256: [1; 32],
        signature: [2; 64],
        force: false,
    }
}

fn st(id: u32, state: UpdateState, offset: u32, error: UpdateError) -> UpdateStatus {
    UpdateStatus {
        id,
        state,
        offset,
        error,
        max_chunk: 512,
        window: 1024,
    }
}

fn receiving(offset: u32) -> UpdateStatus {
    st(7, UpdateState::Receiving, offset, UpdateError::None)
}

/// A device that keeps chunks in order and answers each with its status.
struct Dev {
    offset: u32,
    /// Chunk numbers (0-based, in arrival order) it loses.
    lose: Vec<usize>,
    seen: usize,
}

impl Dev {
    fn answer(&mut self, t: &mut Transfer, now: Instant, outs: Vec<Out>) -> Vec<Out> {
        let mut next = Vec::new();
        for o in outs {
            let s = match o {
                Out::Begin => receiving(self.offset),
                Out::Chunk { offset, len } => {
                    self.seen += 1;
                    if self.lose.contains(&(self.seen - 1)) {
                        continue;
                    }
                    if offset == self.offset {
                        self.offset += len;
                    }
                    receiving(self.offset)
                }
                Out::Commit => st(7, UpdateState::Rebooting, self.offset, UpdateError::None),
                Out::Abort => st(0, UpdateState::Idle, 0, UpdateError::Aborted),
            };
            next.extend(t.report(now, &s));
        }
        next
    }

    /// Runs the exchange until nothing is sent; returns the chunks' total bytes.
    fn run(&mut self, t: &mut Transfer, now: Instant, mut outs: Vec<Out>) -> u32 {
        let mut bytes = 0;
        for _ in 0..10_000 {
            if outs.is_empty() {
                return bytes;
            }
            for o in &outs {
                if let Out::Chunk { len, offset } = o {
                    bytes += len;
                    assert!(
                        offset + len <= self.offset.max(t.offset()) + 1024,
                        "past the window"
                    );
                }
            }
            outs = self.answer(t, now, outs);
        }
        panic!("no end");
    }
}

fn started(length: u32) -> (Transfer, Instant, Vec<Out>) {
    let now = Instant::now();
    let mut t = Transfer::new(offer(length), Phase::Queued, 0);
    t.attach();
    let outs = t.start(now);
    assert_eq!(outs, vec![Out::Begin]);
    (t, now, outs)
}

#[test]
fn a_transfer_fills_the_window_commits_and_ends_done_after_the_reboot() {
    let (mut t, now, outs) = started(5000);
    let mut dev = Dev {
        offset: 0,
        lose: vec![],
        seen: 0,
    };
    let bytes = dev.run(&mut t, now, outs);
    assert_eq!(bytes, 5000, "every byte once");
    assert_eq!(t.phase(), Phase::Rebooting);
    // The old boot's status may come again; the new image reports Trial, then Done.
    assert!(t
        .report(now, &st(7, UpdateState::Trial, 5000, UpdateError::None))
        .is_empty());
    assert_eq!(t.phase(), Phase::Rebooting);
    t.report(now, &st(7, UpdateState::Done, 5000, UpdateError::None));
    assert_eq!(t.outcome(), Some(Outcome::Done));
}

#[test]
fn a_lost_chunk_is_sent_again_from_the_device_offset() {
    let (mut t, now, outs) = started(6000);
    let mut dev = Dev {
        offset: 0,
        lose: vec![2, 5],
        seen: 0,
    };
    let bytes = dev.run(&mut t, now, outs);
    assert_eq!(t.phase(), Phase::Rebooting, "{:?}", t);
    assert!(bytes > 6000 && bytes <= 6000 + 4 * 1024, "{bytes}");
    assert!(t.resends() >= 1);
}

#[test]
fn silence_resends_from_the_last_reported_offset() {
    let (mut t, now, _) = started(4096);
    let outs = t.report(now, &receiving(0));
    assert_eq!(outs.len(), 2, "a window of two chunks");
    // Nothing comes back.
    assert!(t.tick(now + Duration::from_millis(500)).is_empty());
    let again = t.tick(now + RESEND_AFTER);
    assert_eq!(
        again,
        vec![
            Out::Chunk {
                offset: 0,
                len: 512
            },
            Out::Chunk {
                offset: 512,
                len: 512
            }
        ]
    );
}

#[test]
fn after_a_device_reset_it_goes_on_from_what_the_device_kept() {
    let (mut t, now, _) = started(8192);
    t.report(now, &receiving(0));
    t.report(now, &receiving(512));
    t.report(now, &receiving(1024));
    t.report(now, &receiving(1536));
    // Reset: the device kept one whole page (1024) and says so after its Welcome.
    t.detach();
    let outs = t.report(now, &receiving(1024));
    assert_eq!(
        outs.first(),
        Some(&Out::Chunk {
            offset: 1024,
            len: 512
        })
    );
    assert_eq!(t.attempts(), 1, "no new Begin");
}

#[test]
fn a_device_that_lost_the_transfer_gets_a_begin_and_too_many_attempts_fail() {
    let (mut t, now, _) = started(4096);
    t.report(now, &receiving(0));
    let idle = st(0, UpdateState::Idle, 0, UpdateError::None);
    let mut begins = 1;
    for _ in 0..20 {
        let outs = t.report(now, &idle);
        begins += outs.iter().filter(|o| **o == Out::Begin).count();
        if t.outcome().is_some() {
            break;
        }
        // The device answers the begin (if any) with Idle again: a refusal-free loop.
    }
    assert_eq!(begins as u32, MAX_ATTEMPTS);
    assert_eq!(t.outcome(), Some(Outcome::Failed(Failure::TooManyAttempts)));
}

#[test]
fn refusals_rollbacks_and_silence_after_the_reboot_fail_the_job() {
    let (mut t, now, _) = started(4096);
    t.report(now, &st(7, UpdateState::Failed, 0, UpdateError::NotNewer));
    assert_eq!(
        t.outcome(),
        Some(Outcome::Failed(Failure::Device(UpdateError::NotNewer)))
    );

    let (mut t, now, _) = started(512);
    t.report(now, &receiving(0));
    assert_eq!(t.report(now, &receiving(512)), vec![Out::Commit]);
    t.report(now, &st(7, UpdateState::Rebooting, 512, UpdateError::None));
    t.report(now, &st(7, UpdateState::Failed, 0, UpdateError::RolledBack));
    assert_eq!(
        t.outcome(),
        Some(Outcome::Failed(Failure::Device(UpdateError::RolledBack)))
    );

    let (mut t, now, _) = started(512);
    t.report(now, &st(7, UpdateState::Rebooting, 512, UpdateError::None));
    assert!(t
        .tick(now + REBOOT_TIMEOUT - Duration::from_secs(1))
        .is_empty());
    t.tick(now + REBOOT_TIMEOUT);
    assert_eq!(t.outcome(), Some(Outcome::Failed(Failure::NoReturn)));
}

#[test]
fn cancel_aborts_a_transfer_but_not_a_reboot() {
    let (mut t, now, _) = started(4096);
    t.report(now, &receiving(0));
    assert_eq!(t.cancel(), (true, vec![Out::Abort]));
    assert_eq!(t.outcome(), Some(Outcome::Cancelled));
    let (mut t, now, _) = started(512);
    t.report(now, &st(7, UpdateState::Rebooting, 512, UpdateError::None));
    assert_eq!(t.cancel(), (false, vec![]));
    let mut q = Transfer::new(offer(10), Phase::Queued, 0);
    assert_eq!(q.cancel(), (true, vec![]));
}

#[test]
fn done_with_another_version_in_the_hello_is_a_failure() {
    let (mut t, now, _) = started(512);
    t.report(now, &st(7, UpdateState::Rebooting, 512, UpdateError::None));
    t.status(
        now,
        &st(7, UpdateState::Done, 512, UpdateError::None),
        "1.0.0",
    );
    assert_eq!(t.outcome(), Some(Outcome::Failed(Failure::WrongVersion)));
}

#[test]
fn review_fixes_cancel_after_commit_stall_and_a_new_image_without_a_record() {
    // Cancel once the commit is out: the device may be resetting into the image already.
    let (mut t, now, _) = started(512);
    t.report(now, &receiving(0));
    assert_eq!(t.report(now, &receiving(512)), vec![Out::Commit]);
    assert_eq!(t.cancel(), (false, vec![]));
    // No progress for the stall timeout: failed, not waiting forever.
    let (mut t, now, _) = started(4096);
    t.report(now, &receiving(0));
    t.detach();
    assert!(t
        .tick(now + STALL_TIMEOUT - Duration::from_secs(1))
        .is_empty());
    t.tick(now + STALL_TIMEOUT);
    assert_eq!(t.outcome(), Some(Outcome::Failed(Failure::Stalled)));
    // The new image reports no record (Idle) but its Hello names the offered version: done.
    let (mut t, now, _) = started(512);
    t.report(now, &st(7, UpdateState::Rebooting, 512, UpdateError::None));
    t.status(
        now,
        &st(0, UpdateState::Idle, 0, UpdateError::None),
        "1.1.0",
    );
    assert_eq!(t.outcome(), Some(Outcome::Done));
    // A huge window offered is clamped to what the link queue holds.
    let (mut t, now, _) = started(64 * 1024);
    let big = UpdateStatus {
        window: u16::MAX,
        ..receiving(0)
    };
    let outs = t.report(now, &big);
    assert_eq!(outs.len() as u32, MAX_WINDOW / 512);
}

//! The one way tests wait for a condition: run a check until it is done or a deadline passes.
//!
//! ```text
//! poll_until(Duration::from_secs(30), "the forwarding position to reach the head", async || {
//!     let pos = position(&db);
//!     (pos >= head).then_some(()).ok_or(format!("position {pos}, head {head}"))
//! })
//! .await;
//! ```
//!
//! A check returns a [`Check`]: `bool`, `Option<T>` (done with the value) or `Result<T, E>`
//! (`Err` is "not yet", and says what the check saw, for the failure message).
//!
//! - [`poll_until`] panics at the deadline (test bodies); [`try_poll_until`] returns [`TimedOut`]
//!   (harness functions whose callers may expect the timeout, e.g. "not healthy within 3 s").
//! - [`poll_until_blocking`] and [`try_poll_until_blocking`] are the same for sync harness code
//!   that starts and stops processes (mosquitto, PostgreSQL), where no runtime is at hand.
//! - The check runs at least once; the last pause ends at the deadline, so the last check runs at
//!   (or, after a slow check, past) it. Pauses grow from 10 ms to 100 ms: a quick condition is
//!   seen quickly, a long wait costs little. A timeout names what was awaited, for how long, and
//!   what the last check saw.
//! - A check that must give up early (a process exited) returns done with an error value, e.g.
//!   `Ok(Err(..))` of a `Result<Result<T, E>, String>`.
//!
//! This file uses only std and tokio: the agent's and the simulator's integration tests include
//! it by path (`#[path]`), because they cannot depend on ferry-tests, which depends on them.
use std::fmt::Display;
use std::time::Duration;

/// The first pause between checks; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between checks.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// What one check found: done (with a value), or not yet (with what it saw, maybe nothing).
pub trait Check {
    /// The value a finished wait returns.
    type Done;
    /// `Ok` when done; else `Err` with what the check saw (empty: nothing to say).
    fn done(self) -> Result<Self::Done, String>;
}

impl Check for bool {
    type Done = ();
    fn done(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

impl<T> Check for Option<T> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Check for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:#}"))
    }
}

/// A wait that ran out of time.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub within: Duration,
    /// What the last check saw (may be empty).
    pub last: String,
}

impl Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.within, self.what
        )?;
        if !self.last.is_empty() {
            write!(f, "; last check: {}", self.last)?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}

/// The deadline and the pauses of one wait, shared by the async and the blocking loop.
struct Schedule {
    within: Duration,
    pause: Duration,
}

impl Schedule {
    fn new(within: Duration) -> Schedule {
        Schedule {
            within,
            pause: FIRST_PAUSE,
        }
    }

    /// After a check that was not done at `elapsed`: how long to pause, or the timeout.
    fn next(
        &mut self,
        elapsed: Duration,
        last: String,
        what: &dyn Display,
    ) -> Result<Duration, TimedOut> {
        if elapsed >= self.within {
            return Err(TimedOut {
                what: what.to_string(),
                within: self.within,
                last,
            });
        }
        let pause = self.pause.min(self.within - elapsed);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Ok(pause)
    }
}

/// Runs `check` until it is done; [`TimedOut`] once `within` has passed.
pub async fn try_poll_until<C: Check>(
    within: Duration,
    what: impl Display,
    mut check: impl AsyncFnMut() -> C,
) -> Result<C::Done, TimedOut> {
    let start = tokio::time::Instant::now();
    let mut schedule = Schedule::new(within);
    loop {
        match check().await.done() {
            Ok(v) => return Ok(v),
            Err(last) => {
                let pause = schedule.next(start.elapsed(), last, &what)?;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Runs `check` until it is done; panics once `within` has passed, naming `what` and what the
/// last check saw.
pub async fn poll_until<C: Check>(
    within: Duration,
    what: impl Display,
    check: impl AsyncFnMut() -> C,
) -> C::Done {
    try_poll_until(within, what, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`try_poll_until`] for sync code: sleeps the thread between checks.
pub fn try_poll_until_blocking<C: Check>(
    within: Duration,
    what: impl Display,
    mut check: impl FnMut() -> C,
) -> Result<C::Done, TimedOut> {
    let start = std::time::Instant::now();
    let mut schedule = Schedule::new(within);
    loop {
        match check().done() {
            Ok(v) => return Ok(v),
            Err(last) => std::thread::sleep(schedule.next(start.elapsed(), last, &what)?),
        }
    }
}

/// [`poll_until`] for sync code: sleeps the thread between checks.
pub fn poll_until_blocking<C: Check>(
    within: Duration,
    what: impl Display,
    check: impl FnMut() -> C,
) -> C::Done {
    try_poll_until_blocking(within, what, check).unwrap_or_else(|e| panic!("{e}"))
}

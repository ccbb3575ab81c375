//! Running as a systemd service (`Type=notify`, `WatchdogSec=`): readiness and the watchdog,
//! sent with `sd-notify`. Without `NOTIFY_SOCKET` (a terminal, a test) nothing is sent.
//!
//! Invariants:
//! - **READY=1 once the agent can work.** `ferry run` sends it after [`crate::Agent::start`]
//!   returned: the store is open (the writer replayed the sample log), and the device listener
//!   and the local API are bound.
//! - **WATCHDOG=1 only on progress.** Every quarter of `WATCHDOG_USEC` the writer is probed (it
//!   answers if it takes operations: not stuck in a sync, a lock or a loop) and the ingest loops'
//!   beats are read (the device accept loop, the serial scanner; they wake at least every
//!   [`BEAT_EVERY`]). A ping goes out on each tick unless the writer has not answered for half the
//!   interval, or a loop has not beat for half the interval (at least three beats' time). A
//!   transient stall (a slow sync on an SD card) therefore costs no ping; a writer or loop stuck
//!   for half the interval stops the pings, and systemd restarts the agent `WatchdogSec` after the
//!   last one.
//! - A stall is logged once when pings stop (naming what did not answer) and once when they
//!   resume.
//!
//! The decision is [`Watchdog::tick`] (no I/O, unit-tested); [`run_watchdog`] does the probing
//! and the sending.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::writer::StoreHandle;

/// How often an ingest loop wakes up (and beats) when nothing else wakes it.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);

/// When a loop last woke up, for the watchdog: milliseconds since the beat was made.
#[derive(Debug, Clone)]
pub struct Beat {
    base: Instant,
    at_ms: Arc<AtomicU64>,
}

impl Default for Beat {
    fn default() -> Self {
        Beat {
            base: Instant::now(),
            at_ms: Arc::default(),
        }
    }
}

impl Beat {
    /// The loop is awake now.
    pub fn beat(&self) {
        self.at_ms
            .store(self.base.elapsed().as_millis() as u64, Relaxed);
    }

    /// When it last beat.
    pub fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.at_ms.load(Relaxed))
    }
}

/// What the watchdog watches: the store writer and the ingest loops, by name.
#[derive(Clone)]
pub struct Liveness {
    /// The writer, probed through its queue.
    pub store: StoreHandle,
    /// Ingest loops and their beats.
    pub loops: Vec<(&'static str, Beat)>,
}

/// The watchdog's decision for a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// Send WATCHDOG=1.
    pub ping: bool,
    /// A line to log (pings stopped, or resumed).
    pub log: Option<String>,
}

/// The watchdog's state between ticks (see the module header).
#[derive(Debug)]
pub struct Watchdog {
    /// The writer may go this long without answering before pings stop.
    writer_stall: Duration,
    /// A loop may go this long without a beat before pings stop.
    loop_stall: Duration,
    writer_answered_at: Instant,
    withheld_since: Option<Instant>,
}

impl Watchdog {
    /// A watchdog for systemd's `interval` (`WATCHDOG_USEC`), starting at `now`.
    pub fn new(interval: Duration, now: Instant) -> Watchdog {
        Watchdog {
            writer_stall: interval / 2,
            loop_stall: (interval / 2).max(3 * BEAT_EVERY),
            writer_answered_at: now,
            withheld_since: None,
        }
    }

    /// Decides the tick at `now`: whether the writer answered this tick's probe, and when each
    /// loop last beat.
    pub fn tick(
        &mut self,
        now: Instant,
        writer_answered: bool,
        loops: &[(&str, Instant)],
    ) -> Round {
        if writer_answered {
            self.writer_answered_at = now;
        }
        let mut stuck: Vec<&str> = Vec::new();
        if now.duration_since(self.writer_answered_at) > self.writer_stall {
            stuck.push("the store writer");
        }
        stuck.extend(
            loops
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(*at) > self.loop_stall)
                .map(|(n, _)| *n),
        );
        if stuck.is_empty() {
            let log = self.withheld_since.take().map(|t| {
                format!(
                    "Watchdog: everything answers again after {:.1} s; pinging systemd again.",
                    now.duration_since(t).as_secs_f64()
                )
            });
            return Round { ping: true, log };
        }
        let log = self.withheld_since.is_none().then(|| {
            format!(
                "Watchdog: {} made no progress for {:.1} s; no more pings to systemd (it restarts the agent after WatchdogSec without one).",
                stuck.join(" and "),
                self.writer_stall.as_secs_f64()
            )
        });
        self.withheld_since.get_or_insert(now);
        Round { ping: false, log }
    }
}

/// Tells systemd the agent is ready (no-op without `NOTIFY_SOCKET`).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "Could not tell systemd the agent is ready.");
    }
}

/// Tells systemd the agent is stopping (no-op without `NOTIFY_SOCKET`).
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC` for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings systemd's watchdog every quarter `interval` while the writer and the ingest loops make
/// progress, until `stop`.
pub async fn run_watchdog(interval: Duration, live: Liveness, stop: CancellationToken) {
    let every = interval / 4;
    let mut dog = Watchdog::new(interval, Instant::now());
    tracing::info!(
        interval_s = interval.as_secs_f64(),
        "systemd watchdog on: pings while the store writer and ingest loops make progress."
    );
    loop {
        let began = Instant::now();
        let answered = tokio::select! {
            _ = stop.cancelled() => return,
            a = live.store.probe(every) => a,
        };
        let loops: Vec<(&str, Instant)> = live.loops.iter().map(|(n, b)| (*n, b.last())).collect();
        let r = dog.tick(Instant::now(), answered, &loops);
        if let Some(line) = &r.log {
            if r.ping {
                tracing::info!("{line}");
            } else {
                tracing::error!("{line}");
            }
        }
        if r.ping {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until((began + every).into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_silent_for_half_the_interval_stops_the_pings_and_a_shorter_stall_does_not() {
        let s = Duration::from_secs(1);
        let t0 = Instant::now();
        // WatchdogSec=8s: ticks every 2 s, the writer may be silent for 4 s.
        let mut dog = Watchdog::new(8 * s, t0);
        let beat = |at: Instant| [("tcp", at)];
        assert_eq!(
            dog.tick(t0 + 2 * s, true, &beat(t0 + 2 * s)),
            Round {
                ping: true,
                log: None
            }
        );
        // A 4 s stall (two ticks without an answer) still pings.
        assert!(dog.tick(t0 + 4 * s, false, &beat(t0 + 4 * s)).ping);
        assert!(dog.tick(t0 + 6 * s, false, &beat(t0 + 6 * s)).ping);
        // Beyond half the interval: no ping, one line naming the writer.
        let r = dog.tick(t0 + 8 * s, false, &beat(t0 + 8 * s));
        assert!(!r.ping);
        assert!(r
            .log
            .unwrap()
            .contains("the store writer made no progress for 4.0 s"));
        // Still stuck: no ping, no second line.
        assert_eq!(
            dog.tick(t0 + 10 * s, false, &beat(t0 + 10 * s)),
            Round {
                ping: false,
                log: None
            }
        );
        // It answers again: a ping at once, and a line saying how long the pings stopped.
        let r = dog.tick(t0 + 12 * s, true, &beat(t0 + 12 * s));
        assert!(r.ping);
        assert!(r.log.unwrap().contains("after 4.0 s"));
    }

    #[test]
    fn a_loop_without_a_beat_for_half_the_interval_withholds_the_ping() {
        let s = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut dog = Watchdog::new(8 * s, t0);
        // Beats a second apart are never "late", whatever the tick's phase.
        assert!(
            dog.tick(t0 + 2 * s, true, &[("devices over TCP", t0 + s)])
                .ping
        );
        let r = dog.tick(t0 + 6 * s, true, &[("devices over TCP", t0 + s)]);
        assert!(!r.ping);
        assert!(r
            .log
            .unwrap()
            .starts_with("Watchdog: devices over TCP made no progress"));
    }

    #[test]
    fn a_short_interval_still_allows_three_beats_of_a_loop() {
        let s = Duration::from_secs(1);
        let t0 = Instant::now();
        // WatchdogSec=2s: half is 1 s, the beat interval; loops get 3 s.
        let mut dog = Watchdog::new(2 * s, t0);
        assert!(dog.tick(t0 + 3 * s, true, &[("serial", t0 + s / 2)]).ping);
        assert!(!dog.tick(t0 + 4 * s, true, &[("serial", t0 + s / 2)]).ping);
    }

    #[test]
    fn a_beat_records_when_it_was_made() {
        let b = Beat::default();
        b.beat();
        let now = Instant::now();
        assert!(b.last() <= now);
        assert!(now.duration_since(b.last()) < Duration::from_millis(2));
    }
}

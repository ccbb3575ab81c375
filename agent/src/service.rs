//! Running as a systemd service (`Type=notify`, `WatchdogSec=`): readiness and the watchdog,
//! sent with `sd-notify`. Without `NOTIFY_SOCKET` (a terminal, a test) nothing is sent.
//!
//! Invariants:
//! - **READY=1 once the agent can work.** `ferry run` sends it after [`crate::Agent::start`]
//!   returned: the store is open (the writer replayed the sample log), and the device listener
//!   and the local API are bound.
//! - **WATCHDOG=1 only on progress.** Each round (half of `WATCHDOG_USEC`) pings only if the store
//!   writer answered a probe in that round (it takes operations: not stuck in a sync, a lock or a
//!   loop) and every ingest loop woke up within the round (the device accept loop, the serial
//!   scanner; they wake at least every [`BEAT_EVERY`]). A stuck writer or a starved runtime thus
//!   stops the pings, and systemd restarts the agent once `WatchdogSec` passes without one.
//! - A stall is logged once when pings stop (naming what did not answer) and once when they
//!   resume.
//!
//! The decision is [`Watchdog::round`] (no I/O, unit-tested); [`run_watchdog`] does the probing
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

/// The watchdog's decision for a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// Send WATCHDOG=1.
    pub ping: bool,
    /// A line to log (pings stopped, or resumed).
    pub log: Option<String>,
}

/// The watchdog's state between rounds (see the module header).
#[derive(Debug, Default)]
pub struct Watchdog {
    withheld_since: Option<Instant>,
}

impl Watchdog {
    /// Decides a round that began at `began` and ends at `now`: whether the writer answered its
    /// probe, and when each loop last beat.
    pub fn round(
        &mut self,
        began: Instant,
        now: Instant,
        writer_answered: bool,
        loops: &[(&str, Instant)],
    ) -> Round {
        let mut stuck: Vec<&str> = Vec::new();
        if !writer_answered {
            stuck.push("the store writer");
        }
        stuck.extend(loops.iter().filter(|(_, at)| *at < began).map(|(n, _)| *n));
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
                "Watchdog: {} made no progress; no more pings to systemd (it restarts the agent after WatchdogSec without one).",
                stuck.join(" and ")
            )
        });
        self.withheld_since.get_or_insert(began);
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

/// Pings systemd's watchdog every half `interval` while the writer and the ingest loops make
/// progress, until `stop`.
pub async fn run_watchdog(interval: Duration, live: Liveness, stop: CancellationToken) {
    let every = interval / 2;
    let mut dog = Watchdog::default();
    tracing::info!(
        interval_s = interval.as_secs_f64(),
        "systemd watchdog on: pings while the store writer and ingest loops make progress."
    );
    loop {
        let began = Instant::now();
        let answered = tokio::select! {
            _ = stop.cancelled() => return,
            a = live.store.probe(every / 2) => a,
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until((began + every).into()) => {}
        }
        let loops: Vec<(&str, Instant)> = live.loops.iter().map(|(n, b)| (*n, b.last())).collect();
        let r = dog.round(began, Instant::now(), answered, &loops);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_only_when_the_writer_answered_and_every_loop_beat_in_the_round() {
        let mut dog = Watchdog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let fresh = [("tcp", t0 + s / 2), ("serial", t0 + s / 4)];
        let r = dog.round(t0, t0 + s, true, &fresh);
        assert_eq!(
            r,
            Round {
                ping: true,
                log: None
            }
        );
        // The writer did not answer: no ping, one line naming it.
        let r = dog.round(t0 + s, t0 + 2 * s, false, &[("tcp", t0 + s * 3 / 2)]);
        assert!(!r.ping);
        assert!(r.log.unwrap().contains("the store writer made no progress"));
        // Still stuck, and now a loop too: no ping, no second line.
        let r = dog.round(t0 + 2 * s, t0 + 3 * s, false, &[("tcp", t0 + s)]);
        assert_eq!(
            r,
            Round {
                ping: false,
                log: None
            }
        );
        // Everything answers again: a ping, and a line saying how long it lasted.
        let r = dog.round(t0 + 3 * s, t0 + 4 * s, true, &[("tcp", t0 + s * 7 / 2)]);
        assert!(r.ping);
        assert!(r.log.unwrap().contains("after 3.0 s"));
    }

    #[test]
    fn a_loop_that_did_not_beat_in_the_round_withholds_the_ping() {
        let mut dog = Watchdog::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let r = dog.round(t0 + s, t0 + 2 * s, true, &[("devices over TCP", t0)]);
        assert!(!r.ping);
        assert_eq!(
            r.log.as_deref(),
            Some("Watchdog: devices over TCP made no progress; no more pings to systemd (it restarts the agent after WatchdogSec without one).")
        );
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

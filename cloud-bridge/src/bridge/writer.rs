//! The writer task: accumulates classified messages, commits them, then acks them.
//!
//! Invariants:
//! - Acks follow the commit that made their messages durable, in one call to the
//!   [`AckGate`]; nothing uncommitted is ever acked, including on shutdown and on failure.
//! - A failed commit is retried with backoff, never skipped: the messages stay in hand (and
//!   unacked in the broker) until they are stored.
//! - Shutdown: take what is already queued, commit it (retrying for at most
//!   [`SHUTDOWN_GRACE`]), ack it, then queue the MQTT DISCONNECT behind those acks.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::batch::{Accumulator, BatchPolicy};
use super::inbound::{Content, Inbound};
use super::metrics::Metrics;
use super::mqtt::AckGate;
use super::rows::GatewayProgress;
use super::store::{Sink, StoreError};
use super::BridgeError;

/// How long shutdown keeps retrying a commit before giving up (the messages stay unacked).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Writer {
    pub sink: Sink,
    pub policy: BatchPolicy,
    pub gate: Arc<AckGate>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl Writer {
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Inbound>) -> Result<(), BridgeError> {
        let mut acc = Accumulator::new(self.policy);
        let mut next_connect = Some(Instant::now());
        let mut backoff = Duration::from_millis(100);
        loop {
            let deadline = acc.deadline();
            let connect_at = next_connect.filter(|_| acc.is_empty());
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                m = rx.recv() => match m {
                    Some(m) => {
                        let n = events(&m);
                        acc.push(m, n, Instant::now());
                    }
                    None => break,
                },
                _ = sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
                _ = sleep_until(connect_at.unwrap_or_else(Instant::now).into()), if connect_at.is_some() => {
                    // Idle: connect early so /healthz tells the truth before traffic arrives.
                    match self.sink.connect().await {
                        Ok(()) => { next_connect = None; backoff = Duration::from_millis(100); }
                        Err(e) => {
                            warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Database unavailable.");
                            next_connect = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
            if acc.is_due(Instant::now()) {
                self.flush(acc.take()).await?;
            }
            if self.sink.needs_connect() && next_connect.is_none() {
                next_connect = Some(Instant::now() + backoff);
            }
        }
        // Shutdown: what is queued is in hand; commit it and ack it.
        let grace_end = Instant::now() + SHUTDOWN_GRACE;
        rx.close();
        while let Ok(m) = rx.try_recv() {
            let n = events(&m);
            acc.push(m, n, Instant::now());
            if acc.is_full() {
                self.flush_until(acc.take(), Some(grace_end)).await?;
            }
        }
        if !acc.is_empty() {
            self.flush_until(acc.take(), Some(grace_end)).await?;
        }
        info!("Writer drained; disconnecting from the broker.");
        self.gate.disconnect();
        Ok(())
    }

    async fn flush(&mut self, msgs: Vec<Inbound>) -> Result<(), BridgeError> {
        self.flush_until(msgs, None).await
    }

    /// Commits `msgs` (retrying) and acks them. With `give_up_at`, stops retrying then and
    /// leaves them unacked.
    async fn flush_until(
        &mut self,
        mut msgs: Vec<Inbound>,
        mut give_up_at: Option<Instant>,
    ) -> Result<(), BridgeError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = Instant::now();
            match self.sink.write(&mut msgs).await {
                Ok(w) => {
                    let m = &self.metrics;
                    m.insert_latency(started.elapsed());
                    m.batches.fetch_add(1, Relaxed);
                    m.events_inserted.fetch_add(w.inserted, Relaxed);
                    m.duplicates.fetch_add(w.duplicates, Relaxed);
                    record_progress(m, &msgs);
                    let (acked, withheld) = self.gate.ack(msgs.iter().map(|m| m.ack));
                    m.acks.fetch_add(acked, Relaxed);
                    m.acks_stale.fetch_add(withheld, Relaxed);
                    debug!(
                        messages = msgs.len(),
                        inserted = w.inserted,
                        duplicates = w.duplicates,
                        acked,
                        withheld,
                        ms = started.elapsed().as_millis() as u64,
                        "Committed."
                    );
                    return Ok(());
                }
                Err(StoreError::Fatal(e)) => {
                    error!(error = %e, messages = msgs.len(), "Sink failed for good; stopping without acking.");
                    return Err(BridgeError::Sink(e));
                }
                Err(e) => {
                    self.metrics.commit_failures.fetch_add(1, Relaxed);
                    if self.shutdown.is_cancelled() && give_up_at.is_none() {
                        give_up_at = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                    if give_up_at.is_some_and(|t| Instant::now() + backoff > t) {
                        warn!(error = %e, messages = msgs.len(), "Commit still failing at shutdown; leaving the messages unacked for redelivery.");
                        return Ok(());
                    }
                    warn!(error = %e, messages = msgs.len(), retry_in_ms = backoff.as_millis() as u64, "Commit failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn events(m: &Inbound) -> usize {
    match &m.content {
        Content::Batch(b) => b.events.len(),
        Content::Dead(_) => 0,
    }
}

fn record_progress(metrics: &Metrics, msgs: &[Inbound]) {
    let mut last: Option<(&str, GatewayProgress)> = None;
    for m in msgs {
        match &m.content {
            Content::Dead(d) => metrics.dead_letter(d.class),
            Content::Batch(b) => {
                let p = GatewayProgress {
                    newest_event_ms: b.events.iter().map(|e| e.ts_ms).max().unwrap_or(i64::MIN),
                    last_received_at: m.received_at,
                };
                // Consecutive messages of one gateway are merged before taking the lock.
                match &mut last {
                    Some((g, q)) if *g == b.gateway => {
                        q.newest_event_ms = q.newest_event_ms.max(p.newest_event_ms);
                        q.last_received_at = q.last_received_at.max(p.last_received_at);
                    }
                    _ => {
                        if let Some((g, q)) = last.take() {
                            metrics.gateway_progress(g, q);
                        }
                        last = Some((&b.gateway, p));
                    }
                }
            }
        }
    }
    if let Some((g, q)) = last {
        metrics.gateway_progress(g, q);
    }
}

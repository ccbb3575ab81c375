//! The writer: one task accumulates classified messages into batches; commit lanes (each with
//! its own database connection) commit batches in parallel and ack them.
//!
//! Invariants:
//! - Acks follow the commit that made their messages durable, in one call to the
//!   [`AckGate`]; nothing uncommitted is ever acked, including on shutdown and on failure.
//!   Lanes ack independently: PUBACKs may leave out of order, which MQTT allows.
//! - A failed commit is retried with backoff, never skipped: the messages stay in hand (and
//!   unacked in the broker) until they are stored.
//! - While every lane is busy the next batch keeps filling (up to its limits), so batches
//!   grow with load.
//! - Shutdown: take what is already queued, commit it (retrying for at most
//!   [`SHUTDOWN_GRACE`]), ack it, then queue the MQTT DISCONNECT behind those acks.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Mutex};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::batch::{Accumulator, BatchPolicy};
use super::inbound::{Content, Inbound};
use super::metrics::Metrics;
use super::mqtt::AckGate;
use super::rows::GatewayProgress;
use super::sink::{Sink, StoreError};
use super::BridgeError;

/// How long shutdown keeps retrying a commit before giving up (the messages stay unacked).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Writer {
    /// One sink per commit lane.
    pub sinks: Vec<Sink>,
    pub policy: BatchPolicy,
    pub gate: Arc<AckGate>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

type Batches = Arc<Mutex<mpsc::Receiver<Vec<Inbound>>>>;

impl Writer {
    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Inbound>) -> Result<(), BridgeError> {
        let (btx, brx) = mpsc::channel::<Vec<Inbound>>(1);
        let brx: Batches = Arc::new(Mutex::new(brx));
        let mut lanes = tokio::task::JoinSet::new();
        for (i, sink) in self.sinks.into_iter().enumerate() {
            let lane = Lane {
                id: i,
                sink,
                gate: self.gate.clone(),
                metrics: self.metrics.clone(),
                shutdown: self.shutdown.clone(),
            };
            lanes.spawn(lane.run(brx.clone()));
        }
        // Only the lanes hold the receiver: when they are all gone, sending fails.
        drop(brx);
        let mut acc = Accumulator::new(self.policy);
        let mut failed = None;
        loop {
            let now = Instant::now();
            let due = acc.is_due(now);
            let deadline = acc.deadline().filter(|_| !due);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                permit = btx.reserve(), if due => match permit {
                    Ok(p) => p.send(acc.take()),
                    Err(_) => break, // every lane has stopped
                },
                m = rx.recv(), if !acc.is_full() => match m {
                    Some(m) => {
                        let n = events(&m);
                        acc.push(m, n, Instant::now());
                    }
                    None => break,
                },
                _ = sleep_until(deadline.unwrap_or(now).into()), if deadline.is_some() => {}
                Some(r) = lanes.join_next() => {
                    failed = Some(r.unwrap_or_else(|e| Err(BridgeError::Sink(format!("commit lane: {e}")))));
                    break;
                }
            }
        }
        // Shutdown: what is queued is in hand; commit it and ack it.
        rx.close();
        while let Ok(m) = rx.try_recv() {
            let n = events(&m);
            acc.push(m, n, Instant::now());
            if acc.is_full() && btx.send(acc.take()).await.is_err() {
                break;
            }
        }
        if !acc.is_empty() {
            let _ = btx.send(acc.take()).await;
        }
        drop(btx);
        let mut result = failed.unwrap_or(Ok(()));
        while let Some(r) = lanes.join_next().await {
            let r = r.unwrap_or_else(|e| Err(BridgeError::Sink(format!("commit lane: {e}"))));
            if result.is_ok() {
                result = r;
            }
        }
        info!("Writer drained; disconnecting from the broker.");
        self.gate.disconnect();
        result
    }
}

/// One commit lane: its own sink (database connection), committing one batch at a time.
struct Lane {
    id: usize,
    sink: Sink,
    gate: Arc<AckGate>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Lane {
    async fn run(mut self, batches: Batches) -> Result<(), BridgeError> {
        let mut backoff = Duration::from_millis(100);
        let mut next_connect = Instant::now();
        loop {
            // Idle: connect early so /healthz tells the truth before traffic arrives.
            if self.sink.needs_connect() && Instant::now() >= next_connect {
                match self.sink.connect().await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => {
                        if let StoreError::Misconfigured(_) = e {
                            error!(lane = self.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "Database connection refused; an operator must act.");
                        } else {
                            warn!(lane = self.id, error = %e, retry_in_ms = backoff.as_millis() as u64, "Database unavailable.");
                        }
                        next_connect = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let batch = {
                let mut rx = batches.lock().await;
                tokio::select! {
                    b = rx.recv() => match b {
                        Some(b) => b,
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            };
            self.flush(batch).await?;
        }
    }

    /// Commits `msgs` (retrying) and acks them. Once shutdown has begun, stops retrying after
    /// [`SHUTDOWN_GRACE`] and leaves them unacked.
    async fn flush(&mut self, mut msgs: Vec<Inbound>) -> Result<(), BridgeError> {
        let mut backoff = Duration::from_millis(50);
        let mut give_up_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            match self.sink.write(&mut msgs).await {
                Ok(w) => {
                    let m = &self.metrics;
                    m.insert_latency(started.elapsed());
                    m.batches.inc();
                    m.events_inserted.inc_by(w.inserted);
                    m.duplicates.inc_by(w.duplicates);
                    record_progress(m, &msgs);
                    let (acked, withheld) = self.gate.ack(msgs.iter().map(|m| m.ack));
                    m.acks.inc_by(acked);
                    m.acks_stale.inc_by(withheld);
                    debug!(
                        lane = self.id,
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
                    self.shutdown.cancel();
                    return Err(BridgeError::Sink(e));
                }
                Err(e) => {
                    self.metrics.commit_failures.inc();
                    if self.shutdown.is_cancelled() && give_up_at.is_none() {
                        give_up_at = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                    if give_up_at.is_some_and(|t| Instant::now() + backoff > t) {
                        warn!(error = %e, messages = msgs.len(), "Commit still failing at shutdown; leaving the messages unacked for redelivery.");
                        return Ok(());
                    }
                    if let StoreError::Misconfigured(_) = e {
                        // Under traffic as when idle: a refused TLS setup needs a person.
                        error!(lane = self.id, error = %e, messages = msgs.len(), retry_in_ms = backoff.as_millis() as u64, "Commit failed: database connection refused; an operator must act.");
                    } else {
                        warn!(lane = self.id, error = %e, messages = msgs.len(), retry_in_ms = backoff.as_millis() as u64, "Commit failed; retrying.");
                    }
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

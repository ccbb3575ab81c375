//! Store-and-forward uplink: drains the agent's store to an MQTT broker.
//!
//! Guarantees (ARCHITECTURE.md 2-4):
//! - **Forwarded only after PUBACK.** The position saved through [`EventSource::save_progress`]
//!   covers an event only once the broker has acked (PUBACK) every message of the read that held
//!   it ([`forward::Forwarder`]). rumqttc's `publish()` returning is never taken as delivery.
//! - **Nothing skipped.** Unacked messages are republished after every reconnect, in their
//!   original order. A restart resumes from the saved position, so a message may go out twice;
//!   the cloud dedups on `(gateway, device, boot, seq)`.
//! - **No poison loop.** A message the broker refuses (MQTT 5 PUBACK reason code) or one larger
//!   than the broker's maximum packet size goes to the store's quarantine with the reason, and
//!   counts as handled. So do stored events the contract would refuse (a time outside years
//!   1..=9999, a device id or sensor name out of bounds: data stored before those bounds existed),
//!   split off before publishing so the rest of their batch goes out.
//! - **Downlink.** A command on a topic that is not a valid `.../{device}/commands` of this
//!   gateway is acked, never acted on, logged and counted (`commands_refused_topic`); a command
//!   for a device id the link cannot carry is answered `rejected`.
//! - **Live first.** If the uplink falls more than `backlog_threshold` events behind (an outage),
//!   the unread range becomes a backlog that drains at `backlog_rate` events/s with at most half
//!   the in-flight window, while new data goes out at full speed.
//! - **Bounded.** At most `inflight` messages are unacked; reads are `read_limit` events.
//!
//! Shutdown: stop reading, wait up to `drain_timeout` for outstanding PUBACKs, save the
//! position, publish the retained `offline` status, disconnect.
pub mod backoff;
pub mod batch;
pub mod forward;
pub mod mqtt;
pub mod source;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::commands::{Completion, OutgoingOutcome, Submission};
use batch::BatchLimits;
use ferry_contract::{self as contract, LinkState, Status};
use forward::{ChunkRef, Forwarder, Progress, StreamKind};
use mqtt::{LinkEvent, LinkOptions, Publisher};

/// One stored event as the uplink needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Store order (the store's event id).
    pub id: i64,
    /// Device id.
    pub device: String,
    /// The gateway's boot number for the device (1, 2, ...).
    pub boot: u32,
    /// The device's boot id.
    pub boot_id: u32,
    /// Sequence number in the boot.
    pub seq: u32,
    /// Sensor name.
    pub sensor: String,
    /// UTC milliseconds.
    pub ts_ms: i64,
    /// Value.
    pub value: f64,
}

/// A failure of the event source (the agent's store).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// What the uplink needs from the store. Methods may block (SQLite); the uplink calls them from
/// a blocking thread, one at a time.
pub trait EventSource: Send + 'static {
    /// The newest committed event id (0 if none).
    fn head(&mut self) -> Result<i64, SourceError>;
    /// Events with `after < id <= upto` in id order, at most `limit`.
    fn read(
        &mut self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SourceError>;
    /// The saved forwarding position.
    fn load_progress(&mut self) -> Result<Progress, SourceError>;
    /// Saves the forwarding position durably.
    fn save_progress(&mut self, p: Progress) -> Result<(), SourceError>;
    /// Keeps a message the broker would not take, with the reason.
    fn quarantine(&mut self, topic: &str, reason: &str, payload: &[u8]) -> Result<(), SourceError>;
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 5 (default).
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// Validated uplink settings (built by the agent from its `[uplink]` config).
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    /// Gateway id (topic level).
    pub gateway: String,
    /// Protocol version.
    pub protocol: Protocol,
    /// Connection.
    pub link: LinkOptions,
    /// Message limits and encoding.
    pub limits: BatchLimits,
    /// Events per store read.
    pub read_limit: usize,
    /// How often to look for new events when caught up (also the longest a new event waits).
    pub linger: Duration,
    /// Fall this many events behind and the rest becomes a rate-limited backlog.
    pub backlog_threshold: i64,
    /// Backlog drain rate, events per second.
    pub backlog_rate: u64,
    /// Reconnect backoff bounds.
    pub backoff: (Duration, Duration),
    /// Longest wait for outstanding PUBACKs at shutdown.
    pub drain_timeout: Duration,
    /// MQTT 5: an event message counts as forwarded only if the broker routed it to at least one
    /// subscriber (PUBACK reason 0x10 "no matching subscribers" means it was discarded).
    pub require_subscriber: bool,
    /// Agent version for the status message.
    pub agent_version: String,
}

/// Live figures for metrics and status (all counters since start).
#[derive(Debug, Default)]
pub struct UplinkStats {
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Successful connects.
    pub connects: AtomicU64,
    /// Connection losses.
    pub disconnects: AtomicU64,
    /// Messages written (including republished ones).
    pub messages_sent: AtomicU64,
    /// Messages republished after a reconnect.
    pub messages_republished: AtomicU64,
    /// Messages acked by the broker.
    pub messages_acked: AtomicU64,
    /// Events in acked messages.
    pub events_acked: AtomicU64,
    /// PUBACKs saying no subscriber matched (MQTT 5): held and published again.
    pub messages_unrouted: AtomicU64,
    /// Messages sent to quarantine (refused or too large).
    pub messages_quarantined: AtomicU64,
    /// Events in quarantined messages.
    pub events_quarantined: AtomicU64,
    /// Forwarded-through position (`Progress::backlog`).
    pub position: AtomicI64,
    /// Events not yet forwarded (estimate).
    pub backlog_events: AtomicI64,
    /// True while a split-off backlog drains.
    pub draining_backlog: AtomicBool,
    /// Commands received on a topic that is not a valid command topic of this gateway (an empty
    /// or badly escaped device level): acked and dropped.
    pub commands_refused_topic: AtomicU64,
}

/// Why the uplink stopped.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The store failed.
    #[error("event source: {0}")]
    Source(#[from] SourceError),
}

/// The PUBACK owed for a received command, as the commands actor's opaque [`Completion`].
fn puback(client: Arc<dyn Publisher>, token: mqtt::AckToken) -> Completion {
    Completion::new(move || {
        if let Err(e) = client.ack(token) {
            tracing::debug!(error = %e, "Command PUBACK not queued; the broker will deliver it again.");
        }
    })
}

/// The agent's ends of the downlink: commands the uplink received, and outcomes to publish on
/// `.../commands/result`.
#[derive(Debug)]
pub struct Downlink {
    /// Where valid commands go, each with its PUBACK as the completion.
    pub commands: tokio::sync::mpsc::Sender<Submission>,
    /// Outcomes to publish.
    pub outcomes: tokio::sync::mpsc::Receiver<OutgoingOutcome>,
}

#[derive(Debug)]
struct Msg {
    topic: String,
    payload: Bytes,
    retain: bool,
    /// The birth message: replaced, not republished, after a reconnect.
    birth: bool,
    chunk: Option<ChunkRef>,
    stream: Option<StreamKind>,
    events: usize,
    sent_before: bool,
    /// Told when the broker acks it (command outcomes).
    delivered: Option<tokio::sync::oneshot::Sender<()>>,
}

type Shared<S> = Arc<Mutex<S>>;

async fn blocking<S: EventSource, T: Send + 'static>(
    src: &Shared<S>,
    f: impl FnOnce(&mut S) -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    let src = src.clone();
    tokio::task::spawn_blocking(move || f(&mut src.lock().expect("source lock")))
        .await
        .map_err(|e| SourceError(format!("source task failed: {e}")))?
}

fn status_payload(gateway: &str, state: LinkState, version: &str) -> Vec<u8> {
    serde_json::to_vec(&Status {
        v: contract::SCHEMA_VERSION,
        gateway: gateway.to_owned(),
        state,
        at_ms: now_ms(),
        agent: version.to_owned(),
    })
    .expect("status serializes")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The uplink task. Runs until `shutdown`, then drains and returns.
pub struct Uplink<S: EventSource> {
    settings: UplinkSettings,
    src: Shared<S>,
    stats: Arc<UplinkStats>,
    fwd: Forwarder,
    unacked: BTreeMap<u64, Msg>,
    /// Queued on the connection, waiting for their packet id, oldest first.
    fifo: VecDeque<u64>,
    /// Messages to publish once the connection's request queue has room (in order, after
    /// `fifo`): one read can produce more messages than the queue holds.
    waiting: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
    next_msg: u64,
    connected: bool,
    max_packet: Option<u32>,
    saved: Progress,
    last_save: Instant,
    tokens: f64,
    last_refill: Instant,
    head: i64,
    downlink: Option<Downlink>,
    /// Messages `submit` found too large for the broker; `fill` quarantines them.
    too_big: Vec<u64>,
    /// Messages the broker discarded for lack of a subscriber, and when to publish them again.
    retry: Vec<(Instant, u64)>,
}

/// Wait before publishing an unrouted message again.
const UNROUTED_RETRY: Duration = Duration::from_millis(500);

/// Most publishes handed to the connection and not yet written (more wait in `waiting`).
const PUBLISH_QUEUE: usize = 128;

impl<S: EventSource> Uplink<S> {
    /// Prepares the uplink; reads the saved position.
    pub async fn new(
        settings: UplinkSettings,
        source: S,
        stats: Arc<UplinkStats>,
    ) -> Result<Uplink<S>, UplinkError> {
        let src = Arc::new(Mutex::new(source));
        let saved = blocking(&src, |s| s.load_progress()).await?.sanitized();
        Ok(Uplink {
            fwd: Forwarder::new(saved),
            settings,
            src,
            stats,
            unacked: BTreeMap::new(),
            fifo: VecDeque::new(),
            waiting: VecDeque::new(),
            by_pkid: HashMap::new(),
            next_msg: 1,
            connected: false,
            max_packet: None,
            saved,
            last_save: Instant::now(),
            tokens: 0.0,
            last_refill: Instant::now(),
            head: 0,
            downlink: None,
            too_big: Vec::new(),
            retry: Vec::new(),
        })
    }

    /// Subscribes to this gateway's commands and publishes their outcomes.
    pub fn with_downlink(mut self, d: Downlink) -> Self {
        self.downlink = Some(d);
        self
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), UplinkError> {
        let s = &self.settings;
        let mut opts = s.link.clone();
        opts.will = Some((
            contract::status_topic(&s.gateway),
            status_payload(&s.gateway, LinkState::Offline, &s.agent_version),
        ));
        // Publishes never take more than PUBLISH_QUEUE slots; the rest is for subscribes and
        // the PUBACKs of received commands.
        opts.queue = PUBLISH_QUEUE + 64;
        let link_stop = CancellationToken::new();
        let (client, mut events, task) = mqtt::start(
            s.protocol == Protocol::V5,
            &opts,
            backoff::Backoff::new(s.backoff.0, s.backoff.1, now_ms() as u64),
            link_stop.clone(),
        );
        tracing::info!(
            broker = %format!("{}:{}", opts.host, opts.port),
            gateway = %s.gateway,
            position = self.saved.backlog,
            "Uplink started."
        );
        let mut tick = tokio::time::interval(self.settings.linger);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev, &client).await?,
                    None => break Ok(()),
                },
                o = async { self.downlink.as_mut().expect("guarded").outcomes.recv().await },
                    if self.downlink.is_some() => match o {
                    Some(o) => self.publish_outcome(client.as_ref(), &o.outcome, o.delivered),
                    None => self.downlink = None,
                },
                _ = tick.tick() => {
                    if self.connected && !self.retry.is_empty() {
                        let now = Instant::now();
                        let (due, wait): (Vec<_>, Vec<_>) = self.retry.drain(..).partition(|(t, _)| *t <= now);
                        self.retry = wait;
                        for (_, id) in due {
                            self.submit(client.as_ref(), id);
                        }
                    }
                    if self.connected {
                        self.fill(client.as_ref()).await?;
                    }
                    self.maybe_save(false).await?;
                }
            }
        };
        // Drain: no new reads; wait for what is in flight.
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        while self.connected && self.unacked.values().any(|m| m.chunk.is_some()) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => self.on_event(ev, &client).await?,
                _ => break,
            }
        }
        self.maybe_save(true).await?;
        if self.connected {
            let _ = client.publish(
                &contract::status_topic(&self.settings.gateway),
                status_payload(
                    &self.settings.gateway,
                    LinkState::Offline,
                    &self.settings.agent_version,
                )
                .into(),
                true,
            );
            let _ = client.disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(ev) = events.recv().await {
                    if let LinkEvent::Down { resume, .. } = ev {
                        drop(resume);
                        break;
                    }
                }
            })
            .await;
        }
        link_stop.cancel();
        drop(events);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        tracing::info!(position = self.saved.backlog, "Uplink stopped.");
        result
    }

    async fn on_event(
        &mut self,
        ev: LinkEvent,
        shared: &Arc<dyn Publisher>,
    ) -> Result<(), UplinkError> {
        let client = shared.as_ref();
        match ev {
            LinkEvent::Connected { max_packet } => {
                self.connected = true;
                self.max_packet = max_packet;
                self.stats.connected.store(true, Relaxed);
                self.stats.connects.fetch_add(1, Relaxed);
                tracing::info!(
                    unacked = self.unacked.len(),
                    "Uplink connected to the broker."
                );
                let birth = status_payload(
                    &self.settings.gateway,
                    LinkState::Online,
                    &self.settings.agent_version,
                );
                let topic = contract::status_topic(&self.settings.gateway);
                self.enqueue(client, topic, birth.into(), true, None, None, 0);
                if let Some(id) = self.unacked.keys().next_back().copied() {
                    if let Some(m) = self.unacked.get_mut(&id) {
                        m.birth = true;
                    }
                }
                if self.downlink.is_some() {
                    let filter = contract::commands_filter(&self.settings.gateway);
                    if let Err(e) = client.subscribe(&filter) {
                        tracing::warn!(error = %e, "Could not subscribe to commands.");
                    }
                }
                // Republish everything unacked, in order.
                let ids: Vec<u64> = self.unacked.keys().copied().collect();
                for id in ids {
                    if !self.fifo.contains(&id) && !self.waiting.contains(&id) {
                        self.submit(client, id);
                    }
                }
                self.fill(client).await?;
            }
            LinkEvent::Sent(pkid) => {
                if let Some(id) = self.fifo.pop_front() {
                    self.by_pkid.insert(pkid, id);
                    self.stats.messages_sent.fetch_add(1, Relaxed);
                }
                while self.fifo.len() < PUBLISH_QUEUE {
                    let Some(id) = self.waiting.pop_front() else {
                        break;
                    };
                    self.publish_now(client, id);
                }
            }
            LinkEvent::Acked(pkid) => {
                if let Some(id) = self.by_pkid.remove(&pkid) {
                    self.delivered(id);
                }
                if self.connected {
                    self.fill(client).await?;
                }
            }
            LinkEvent::Unrouted(pkid) => {
                // The broker discarded it: no session subscribes (for instance the cloud bridge's
                // subscription did not survive a broker restart yet). Events are not forwarded
                // until something receives them, so keep the message and publish it again later.
                if let Some(id) = self.by_pkid.remove(&pkid) {
                    match self.unacked.get(&id) {
                        Some(m) if m.chunk.is_some() && self.settings.require_subscriber => {
                            self.stats.messages_unrouted.fetch_add(1, Relaxed);
                            if self.retry.is_empty() {
                                tracing::warn!(topic = %m.topic, "The broker has no subscriber for events; holding them and publishing again.");
                            }
                            self.retry.push((Instant::now() + UNROUTED_RETRY, id));
                        }
                        // Status, outcomes, or subscribers not required: delivered as far as MQTT goes.
                        _ => self.delivered(id),
                    }
                }
            }
            LinkEvent::Message {
                topic,
                payload,
                ack,
            } => {
                let receipt = puback(shared.clone(), ack);
                self.on_command(client, &topic, &payload, receipt).await
            }
            LinkEvent::Down {
                error,
                refused,
                kept,
                resume,
            } => {
                if self.connected {
                    self.stats.disconnects.fetch_add(1, Relaxed);
                    tracing::warn!(%error, unacked = self.unacked.len(), "Uplink lost the broker; will republish unacked messages.");
                } else {
                    tracing::warn!(%error, "Uplink cannot reach the broker; retrying with backoff.");
                }
                self.connected = false;
                self.stats.connected.store(false, Relaxed);
                if let Some(reason) = refused {
                    let missing: Vec<u64> = self
                        .by_pkid
                        .iter()
                        .filter(|(p, _)| !kept.contains(p))
                        .map(|(_, id)| *id)
                        .collect();
                    if let [id] = missing.as_slice() {
                        self.quarantine(*id, &reason).await?;
                    }
                }
                self.fifo.clear();
                self.waiting.clear();
                self.by_pkid.clear();
                self.retry.clear(); // everything unacked is republished on connect
                                    // A stale birth message is replaced by a fresh one on connect.
                self.unacked.retain(|_, m| !m.birth);
                for m in self.unacked.values_mut() {
                    m.sent_before = true;
                }
                let _ = resume.send(());
            }
        }
        Ok(())
    }

    /// Reads and publishes while the window has room: live first, then the backlog within its
    /// rate and half the window.
    async fn fill(&mut self, client: &dyn Publisher) -> Result<(), UplinkError> {
        let window = usize::from(self.settings.link.inflight.max(2));
        self.head = blocking(&self.src, |s| s.head()).await?;
        if self
            .fwd
            .split_if_behind(self.head, self.settings.backlog_threshold)
        {
            tracing::warn!(
                behind = self.fwd.unread(self.head),
                rate = self.settings.backlog_rate,
                "Uplink is behind; draining the backlog at a bounded rate while live data goes first."
            );
        }
        self.refill_tokens();
        loop {
            if self.unacked.len() >= window {
                break;
            }
            let live = self
                .fwd
                .plan(StreamKind::Live, self.head, self.settings.read_limit);
            let plan = match live {
                Some(p) => p,
                None => {
                    let in_backlog = self
                        .unacked
                        .values()
                        .filter(|m| m.stream == Some(StreamKind::Backlog))
                        .count();
                    let budget = self.tokens.min(self.settings.read_limit as f64) as usize;
                    // Wait for 50 ms worth of tokens: reading whatever trickled in since the
                    // last PUBACK would make messages of a few events each.
                    let min_read = (self.settings.backlog_rate as f64 / 20.0)
                        .min(self.settings.read_limit as f64)
                        .max(1.0) as usize;
                    if in_backlog >= window / 2 || budget < min_read {
                        break;
                    }
                    match self.fwd.plan(StreamKind::Backlog, self.head, budget) {
                        Some(p) => p,
                        None => break,
                    }
                }
            };
            let (after, upto, limit) = (plan.after, plan.upto, plan.limit);
            let events = blocking(&self.src, move |s| s.read(after, upto, limit)).await?;
            if plan.stream == StreamKind::Backlog {
                self.tokens -= events.len() as f64;
            }
            let msgs = batch::batches(&self.settings.gateway, &events, &self.settings.limits);
            let chunk =
                self.fwd
                    .record(plan, events.len(), events.last().map(|e| e.id), msgs.len());
            for m in msgs {
                let refused = m.refused;
                let id = self.insert(
                    m.topic,
                    m.payload.into(),
                    false,
                    Some(chunk),
                    Some(plan.stream),
                    m.events,
                );
                match refused {
                    Some(reason) => self.quarantine(id, &reason).await?,
                    None if self.connected => self.submit(client, id),
                    None => {}
                }
            }
        }
        // Messages too large for the broker go to quarantine instead of blocking the queue.
        for id in std::mem::take(&mut self.too_big) {
            let limit = self.max_packet.unwrap_or(u32::MAX);
            self.quarantine(
                id,
                &format!("larger than the broker's maximum packet size ({limit} bytes)"),
            )
            .await?;
        }
        self.stats
            .backlog_events
            .store(self.fwd.unread(self.head), Relaxed);
        self.stats
            .draining_backlog
            .store(self.fwd.has_backlog(), Relaxed);
        Ok(())
    }

    fn refill_tokens(&mut self) {
        let rate = self.settings.backlog_rate as f64;
        let dt = self.last_refill.elapsed().as_secs_f64();
        self.last_refill = Instant::now();
        // Bucket depth: a tenth of a second of rate, at least one read.
        let depth = (rate / 10.0).max(self.settings.read_limit as f64);
        self.tokens = (self.tokens + rate * dt).min(depth);
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        client: &dyn Publisher,
        topic: String,
        payload: Bytes,
        retain: bool,
        chunk: Option<ChunkRef>,
        stream: Option<StreamKind>,
        events: usize,
    ) {
        let id = self.insert(topic, payload, retain, chunk, stream, events);
        if self.connected {
            self.submit(client, id);
        }
    }

    /// Adds a message to the unacked set without queueing it; returns its id.
    fn insert(
        &mut self,
        topic: String,
        payload: Bytes,
        retain: bool,
        chunk: Option<ChunkRef>,
        stream: Option<StreamKind>,
        events: usize,
    ) -> u64 {
        let id = self.next_msg;
        self.next_msg += 1;
        self.unacked.insert(
            id,
            Msg {
                topic,
                payload,
                retain,
                birth: false,
                chunk,
                stream,
                events,
                sent_before: false,
                delivered: None,
            },
        );
        id
    }

    /// Queues message `id` on the connection, or behind the ones already waiting when the
    /// connection's queue is full.
    fn submit(&mut self, client: &dyn Publisher, id: u64) {
        if self.fifo.len() >= PUBLISH_QUEUE || !self.waiting.is_empty() {
            self.waiting.push_back(id);
        } else {
            self.publish_now(client, id);
        }
    }

    /// Hands message `id` to the connection unless it is too large for the broker (then it
    /// stays unqueued and `fill` quarantines it).
    fn publish_now(&mut self, client: &dyn Publisher, id: u64) {
        let Some(m) = self.unacked.get(&id) else {
            return;
        };
        // Fixed header, topic length prefix, packet id, MQTT 5 properties length: < 16 bytes.
        let size = m.payload.len() + m.topic.len() + 16;
        if self.max_packet.is_some_and(|max| size > max as usize) {
            self.too_big.push(id);
            return;
        }
        match client.publish(&m.topic, m.payload.clone(), m.retain) {
            Ok(()) => {
                if m.sent_before {
                    self.stats.messages_republished.fetch_add(1, Relaxed);
                }
                self.fifo.push_back(id);
            }
            Err(e) => {
                // The queue has room for PUBLISH_QUEUE publishes, so this means the link task
                // is gone; the message stays unacked and is republished after the next connect.
                tracing::warn!(error = %e, "Uplink could not queue a message.");
            }
        }
    }

    async fn quarantine(&mut self, id: u64, reason: &str) -> Result<(), UplinkError> {
        let Some(m) = self.unacked.remove(&id) else {
            return Ok(());
        };
        tracing::error!(topic = %m.topic, events = m.events, %reason, "Message quarantined instead of forwarded.");
        let (topic, payload, why) = (m.topic.clone(), m.payload.clone(), reason.to_owned());
        blocking(&self.src, move |s| s.quarantine(&topic, &why, &payload)).await?;
        self.stats.messages_quarantined.fetch_add(1, Relaxed);
        self.stats
            .events_quarantined
            .fetch_add(m.events as u64, Relaxed);
        if let Some(c) = m.chunk {
            self.fwd.acked(c);
        }
        Ok(())
    }

    /// Message `id` is acked by the broker: count it, move the position, tell who waits.
    fn delivered(&mut self, id: u64) {
        let Some(m) = self.unacked.remove(&id) else {
            return;
        };
        self.stats.messages_acked.fetch_add(1, Relaxed);
        self.stats.events_acked.fetch_add(m.events as u64, Relaxed);
        if let Some(c) = m.chunk {
            self.fwd.acked(c);
        }
        if let Some(tx) = m.delivered {
            let _ = tx.send(());
        }
    }

    async fn on_command(
        &mut self,
        client: &dyn Publisher,
        topic: &str,
        payload: &[u8],
        receipt: Completion,
    ) {
        let (gateway, device) = match contract::try_parse_topic(topic) {
            Ok(contract::Topic::Commands { gateway, device })
                if gateway == self.settings.gateway =>
            {
                (gateway, device)
            }
            other => {
                // No outcome can be addressed to a device the topic does not name: drop it,
                // acked so the broker does not deliver it again, and count it.
                let why = other
                    .err()
                    .unwrap_or_else(|| "not a command topic of this gateway".into());
                self.stats.commands_refused_topic.fetch_add(1, Relaxed);
                tracing::warn!(%topic, reason = %why, "Ignoring a command on an invalid topic.");
                receipt.done();
                return;
            }
        };
        let decoded = contract::check_device_id(&device)
            .map_err(|m| contract::ContractError::InvalidCommand(format!("device {m}")))
            .and_then(|()| contract::CommandRequest::decode(payload));
        let request = match decoded {
            Ok(r) => r,
            Err(e) => {
                // Answer even a malformed request, with its id if one can be found.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                tracing::warn!(%device, error = %e, "Command rejected.");
                let o = contract::CommandOutcome {
                    v: contract::SCHEMA_VERSION,
                    id,
                    gateway,
                    device,
                    status: contract::OutcomeStatus::Rejected,
                    detail: Some(e.to_string()),
                    data_hex: None,
                    at_ms: now_ms(),
                };
                // The request is acked once its answer is: a crash in between redelivers it.
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.publish_outcome(client, &o, Some(tx));
                tokio::spawn(async move {
                    if rx.await.is_ok() {
                        receipt.done();
                    }
                });
                return;
            }
        };
        let Some(d) = &self.downlink else { return };
        if d.commands
            .send(Submission {
                device,
                request,
                completion: receipt,
            })
            .await
            .is_err()
        {
            self.downlink = None;
        }
    }

    fn publish_outcome(
        &mut self,
        client: &dyn Publisher,
        o: &contract::CommandOutcome,
        delivered: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let topic = contract::command_result_topic(&o.gateway, &o.device);
        let payload = serde_json::to_vec(o).expect("outcome serializes");
        let id = self.next_msg;
        self.enqueue(client, topic, payload.into(), false, None, None, 0);
        if let Some(m) = self.unacked.get_mut(&id) {
            m.delivered = delivered;
        }
    }

    async fn maybe_save(&mut self, force: bool) -> Result<(), UplinkError> {
        let p = self.fwd.progress();
        if p == self.saved || (!force && self.last_save.elapsed() < Duration::from_millis(100)) {
            return Ok(());
        }
        blocking(&self.src, move |s| s.save_progress(p)).await?;
        self.saved = p;
        self.last_save = Instant::now();
        self.stats.position.store(p.backlog, Relaxed);
        Ok(())
    }
}

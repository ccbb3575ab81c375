//! Store-and-forward uplink: drains the agent's store to an MQTT broker.
//!
//! The policy and protocol state is sans-IO in [`ledger::Ledger`] (in-flight messages, packet
//! ids, republish order, quarantine, live/backlog split, rate limit, when the position may move),
//! over [`forward::Forwarder`] (the position itself) and [`batch`] (reads into messages). The
//! [`Uplink`] task only does I/O: it reads the store, publishes through [`mqtt`], writes the
//! quarantine and the position when the ledger says so, and feeds what the connection reports
//! back into the ledger.
//!
//! Guarantees (ARCHITECTURE.md 2-4):
//! - **Forwarded only after PUBACK.** The position saved through [`EventSource::save_progress`]
//!   covers an event only once the broker has acked (PUBACK) every message of the read that held
//!   it (or the store holds it in quarantine, below). rumqttc's `publish()` returning is never
//!   taken as delivery.
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
//! - **Bounded.** At most `inflight` messages are unacked (one read may overshoot by the messages
//!   it makes); reads are `read_limit` events.
//! - **Store failures pass.** A failed store read or write (a full disk, an I/O error) changes
//!   nothing in the ledger and is retried on the next tick; only shutdown ends the uplink.
//!
//! Shutdown: stop reading on the timer, wait up to `drain_timeout` for outstanding PUBACKs (a
//! PUBACK in that time still triggers a read, so the drain can forward what is left up to the
//! head), save the position, publish the retained `offline` status, disconnect.
pub mod backoff;
pub mod batch;
pub mod forward;
pub mod ledger;
pub mod mqtt;
pub mod replay;
pub mod source;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::commands::{Completion, OutgoingOutcome, Submission};
use batch::BatchLimits;
use ferry_contract::{self as contract, LinkState, Status};
use forward::Progress;
use ledger::{Delivered, Ledger, LedgerSettings, Unrouted, PUBLISH_QUEUE};
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
    /// Saves the forwarding position: durable with the store's next commit, which may come a
    /// moment after the answer (a crash in between only forwards those events again).
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
    /// Events in acked messages, forwarded from the position (not replays).
    pub events_acked: AtomicU64,
    /// Events in acked messages sent again by replays.
    pub events_replayed: AtomicU64,
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
/// `.../commands/result`; firmware bundles and update requests (`.../firmware/{bundle,update}`),
/// and their results to publish.
pub struct Downlink {
    /// Where valid commands go, each with its PUBACK as the completion.
    pub commands: tokio::sync::mpsc::Sender<Submission>,
    /// Outcomes to publish.
    pub outcomes: tokio::sync::mpsc::Receiver<OutgoingOutcome>,
    /// Where firmware messages go (with their PUBACK as the completion); `None`: not subscribed.
    pub firmware: Option<crate::firmware::FirmwareHandle>,
    /// Firmware results to publish.
    pub messages: tokio::sync::mpsc::Receiver<crate::firmware::OutgoingMessage>,
    /// The queues closed so far (set by the uplink).
    pub outcomes_done: bool,
    /// See `outcomes_done`.
    pub messages_done: bool,
}

/// What the agent gives the uplink to publish.
enum Outgoing {
    Outcome(OutgoingOutcome),
    Message(crate::firmware::OutgoingMessage),
}

impl Downlink {
    /// The next thing to publish; `None` once both queues are closed.
    async fn next_out(&mut self) -> Option<Outgoing> {
        loop {
            let (outcomes_open, messages_open) = (!self.outcomes_done, !self.messages_done);
            if !outcomes_open && !messages_open {
                return None;
            }
            tokio::select! {
                o = self.outcomes.recv(), if outcomes_open => match o {
                    Some(o) => return Some(Outgoing::Outcome(o)),
                    None => self.outcomes_done = true,
                },
                m = self.messages.recv(), if messages_open => match m {
                    Some(m) => return Some(Outgoing::Message(m)),
                    None => self.messages_done = true,
                },
            }
        }
    }
}

impl std::fmt::Debug for Downlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downlink").finish_non_exhaustive()
    }
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
        at_ms: crate::utc_now_ms(),
        agent: version.to_owned(),
    })
    .expect("status serializes")
}

/// The uplink task. Runs until `shutdown`, then drains and returns.
///
/// I/O only: the protocol and policy state (in-flight messages, packet ids, republish order,
/// quarantine, live/backlog split, rate limit, position) is the [`Ledger`]; this task reads the
/// store, publishes, writes the quarantine and saves the position when the ledger says so.
pub struct Uplink<S: EventSource> {
    settings: UplinkSettings,
    src: Shared<S>,
    stats: Arc<UplinkStats>,
    ledger: Ledger<tokio::sync::oneshot::Sender<()>>,
    downlink: Option<Downlink>,
    /// Store failures since the last warning, and when that was.
    store_trouble: (u64, Option<Instant>),
}

/// Least time between two warnings about the store failing the uplink.
const STORE_TROUBLE_LOG_EVERY: Duration = Duration::from_secs(10);

impl<S: EventSource> Uplink<S> {
    /// Prepares the uplink; reads the saved position.
    pub async fn new(
        settings: UplinkSettings,
        source: S,
        stats: Arc<UplinkStats>,
    ) -> Result<Uplink<S>, UplinkError> {
        let src = Arc::new(Mutex::new(source));
        let saved = blocking(&src, |s| s.load_progress()).await?;
        Ok(Uplink {
            ledger: Ledger::new(LedgerSettings::from(&settings), saved, Instant::now()),
            settings,
            src,
            stats,
            downlink: None,
            store_trouble: (0, None),
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
            backoff::Backoff::new(s.backoff.0, s.backoff.1, crate::utc_now_ms() as u64),
            link_stop.clone(),
        );
        tracing::info!(
            broker = %format!("{}:{}", opts.host, opts.port),
            gateway = %s.gateway,
            position = self.ledger.saved().backlog,
            "Uplink started."
        );
        let mut tick = tokio::time::interval(self.settings.linger);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                ev = events.recv() => match ev {
                    Some(ev) => {
                        if let Err(e) = self.on_event(ev, &client).await {
                            self.store_failed(&e);
                        }
                    }
                    None => break Ok(()),
                },
                o = async { self.downlink.as_mut().expect("guarded").next_out().await },
                    if self.downlink.is_some() => match o {
                    Some(Outgoing::Outcome(o)) => self.publish_outcome(client.as_ref(), &o.outcome, o.delivered),
                    Some(Outgoing::Message(m)) => {
                        self.ledger.push(m.topic, m.payload.into(), m.events, m.delivered);
                        self.pump(client.as_ref());
                    }
                    None => self.downlink = None,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.on_tick(client.as_ref()).await {
                        self.store_failed(&e);
                    }
                }
            }
        };
        // Drain: wait for what is in flight.
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        while self.ledger.is_connected() && self.ledger.has_events_in_flight() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) => self.on_event(ev, &client).await?,
                _ => break,
            }
        }
        self.maybe_save(true).await?;
        if self.ledger.is_connected() {
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
        tracing::info!(position = self.ledger.saved().backlog, "Uplink stopped.");
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
                self.stats.connected.store(true, Relaxed);
                self.stats.connects.fetch_add(1, Relaxed);
                tracing::info!(
                    unacked = self.ledger.unacked(),
                    "Uplink connected to the broker."
                );
                let birth = status_payload(
                    &self.settings.gateway,
                    LinkState::Online,
                    &self.settings.agent_version,
                );
                let topic = contract::status_topic(&self.settings.gateway);
                self.ledger.on_connected(max_packet, topic, birth.into());
                if let Some(d) = &self.downlink {
                    let filter = contract::commands_filter(&self.settings.gateway);
                    if let Err(e) = client.subscribe(&filter) {
                        tracing::warn!(error = %e, "Could not subscribe to commands.");
                    }
                    if d.firmware.is_some() {
                        // By name: `firmware/+` would also match a device called "firmware".
                        let g = &self.settings.gateway;
                        for topic in [
                            contract::firmware_bundle_topic(g),
                            contract::firmware_update_topic(g),
                        ] {
                            if let Err(e) = client.subscribe(&topic) {
                                tracing::warn!(error = %e, %topic, "Could not subscribe to firmware updates.");
                            }
                        }
                    }
                }
                self.pump(client);
                self.fill(client).await?;
            }
            LinkEvent::Sent(pkid) => {
                if self.ledger.on_sent(pkid) {
                    self.stats.messages_sent.fetch_add(1, Relaxed);
                }
                self.pump(client);
            }
            LinkEvent::Acked(pkid) => {
                if let Some(d) = self.ledger.on_puback(pkid) {
                    self.delivered(d);
                }
                if self.ledger.is_connected() {
                    self.fill(client).await?;
                }
            }
            LinkEvent::Unrouted(pkid) => {
                // The broker discarded it: no session subscribes (for instance the cloud bridge's
                // subscription did not survive a broker restart yet). Events are not forwarded
                // until something receives them, so the ledger holds the message and it is
                // published again later.
                match self.ledger.on_unrouted(pkid, Instant::now()) {
                    Unrouted::Held { id, first } => {
                        self.stats.messages_unrouted.fetch_add(1, Relaxed);
                        if first {
                            let topic = self.ledger.topic(id).unwrap_or_default();
                            tracing::warn!(%topic, "The broker has no subscriber for events; holding them and publishing again.");
                        }
                    }
                    Unrouted::Delivered(d) => self.delivered(d),
                    Unrouted::Unknown => {}
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
                if self.ledger.is_connected() {
                    self.stats.disconnects.fetch_add(1, Relaxed);
                    tracing::warn!(%error, unacked = self.ledger.unacked(), "Uplink lost the broker; will republish unacked messages.");
                } else {
                    tracing::warn!(%error, "Uplink cannot reach the broker; retrying with backoff.");
                }
                self.stats.connected.store(false, Relaxed);
                self.ledger.on_disconnect(refused, &kept);
                self.quarantine_pending().await?;
                let _ = resume.send(());
            }
        }
        Ok(())
    }

    /// Reads and publishes while the ledger says so (live first, then the backlog within its
    /// rate and half the window).
    async fn fill(&mut self, client: &dyn Publisher) -> Result<(), UplinkError> {
        let head = blocking(&self.src, |s| s.head()).await?;
        if self.ledger.begin_fill(head, Instant::now()) {
            tracing::warn!(
                behind = self.ledger.unread(),
                rate = self.settings.backlog_rate,
                "Uplink is behind; draining the backlog at a bounded rate while live data goes first."
            );
        }
        loop {
            self.pump(client);
            self.quarantine_pending().await?;
            let Some(plan) = self.ledger.next_read() else {
                break;
            };
            let (after, upto, limit) = (plan.after, plan.upto, plan.limit);
            let events = blocking(&self.src, move |s| s.read(after, upto, limit)).await?;
            self.ledger.on_read(plan, &events);
        }
        self.stats
            .backlog_events
            .store(self.ledger.unread(), Relaxed);
        self.stats
            .draining_backlog
            .store(self.ledger.has_backlog(), Relaxed);
        Ok(())
    }

    /// Hands the connection what the ledger has queued, while its queue has room.
    fn pump(&mut self, client: &dyn Publisher) {
        while let Some(p) = self.ledger.poll_publish() {
            let id = p.id;
            match client.publish(p.topic, p.payload.clone(), p.retain) {
                Ok(()) => {
                    if self.ledger.queued(id) {
                        self.stats.messages_republished.fetch_add(1, Relaxed);
                    }
                }
                Err(e) => {
                    // The queue has room for PUBLISH_QUEUE publishes, so this means the link task
                    // is gone; the message stays unacked and is republished after the next connect.
                    tracing::warn!(error = %e, "Uplink could not queue a message.");
                }
            }
        }
    }

    /// Keeps the messages the ledger will not forward in the store's quarantine; each counts as
    /// handled once the store holds it.
    async fn quarantine_pending(&mut self) -> Result<(), UplinkError> {
        while let Some(q) = self.ledger.next_quarantine() {
            tracing::error!(topic = %q.topic, events = q.events, reason = %q.reason, "Message quarantined instead of forwarded.");
            let (topic, payload, why) = (q.topic.clone(), q.payload.clone(), q.reason.clone());
            blocking(&self.src, move |s| s.quarantine(&topic, &why, &payload)).await?;
            if let Some(q) = self.ledger.quarantined() {
                self.stats.messages_quarantined.fetch_add(1, Relaxed);
                self.stats
                    .events_quarantined
                    .fetch_add(q.events as u64, Relaxed);
            }
        }
        Ok(())
    }

    /// Every `linger`: republishes what is due, reads what is new, saves the position.
    async fn on_tick(&mut self, client: &dyn Publisher) -> Result<(), UplinkError> {
        if self.ledger.is_connected() {
            self.ledger.retry_due(Instant::now());
            self.pump(client);
            self.fill(client).await?;
        }
        self.maybe_save(false).await
    }

    /// A store read or write failed (a full disk, an I/O error). Nothing is lost: the ledger
    /// changes only after a store operation succeeded, so the next tick repeats what failed.
    /// The uplink never stops on it (it once did, and forwarding stayed off after a disk-full
    /// episode until the agent restarted). Warns at most every [`STORE_TROUBLE_LOG_EVERY`].
    fn store_failed(&mut self, e: &UplinkError) {
        let (failures, warned) = &mut self.store_trouble;
        *failures += 1;
        if warned.is_none_or(|t| t.elapsed() >= STORE_TROUBLE_LOG_EVERY) {
            tracing::warn!(error = %e, failures = *failures, "The uplink could not read or write the store; retrying.");
            *failures = 0;
            *warned = Some(Instant::now());
        }
    }

    /// A message is acked by the broker: count it, tell who waits.
    fn delivered(&self, d: Delivered<tokio::sync::oneshot::Sender<()>>) {
        self.stats.messages_acked.fetch_add(1, Relaxed);
        let events = if d.replayed {
            &self.stats.events_replayed
        } else {
            &self.stats.events_acked
        };
        events.fetch_add(d.events as u64, Relaxed);
        if let Some(tx) = d.notify {
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
        if let Ok(contract::Topic::Firmware { gateway, what }) = contract::try_parse_topic(topic) {
            match self.downlink.as_ref().and_then(|d| d.firmware.as_ref()) {
                Some(f) if gateway == self.settings.gateway => {
                    f.mqtt(what, payload.to_vec(), receipt).await;
                }
                _ => {
                    tracing::warn!(%topic, "Ignoring a firmware message not for this gateway.");
                    receipt.done();
                }
            }
            return;
        }
        let (device, request) = match downlinked(&self.settings.gateway, topic, payload) {
            Downlinked::Command { device, request } => (device, request),
            Downlinked::NotOurs(why) => {
                // No outcome can be addressed to a device the topic does not name: drop it,
                // acked so the broker does not deliver it again, and count it.
                self.stats.commands_refused_topic.fetch_add(1, Relaxed);
                tracing::warn!(%topic, reason = %why, "Ignoring a command on an invalid topic.");
                receipt.done();
                return;
            }
            Downlinked::Rejected(o) => {
                tracing::warn!(device = %o.device, error = o.detail.as_deref().unwrap_or(""), "Command rejected.");
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
        self.ledger.push(topic, payload.into(), 0, delivered);
        self.pump(client);
    }

    async fn maybe_save(&mut self, force: bool) -> Result<(), UplinkError> {
        let Some(p) = self.ledger.position_to_save(Instant::now(), force) else {
            return Ok(());
        };
        blocking(&self.src, move |s| s.save_progress(p)).await?;
        self.ledger.position_saved(p, Instant::now());
        self.stats.position.store(p.backlog, Relaxed);
        Ok(())
    }
}

/// What a publish on the downlink subscription is, decided without I/O.
#[derive(Debug)]
pub enum Downlinked {
    /// Not a command topic of this gateway (the reason): dropped, acked, counted.
    NotOurs(String),
    /// A command topic of this gateway with an invalid device id or request: answered with this
    /// `rejected` outcome (its `id` is the request's when one can be found).
    Rejected(contract::CommandOutcome),
    /// A valid command for `device`.
    Command {
        /// The device the topic names.
        device: String,
        /// The checked request.
        request: contract::CommandRequest,
    },
}

/// Decides what a downlink publish on `topic` is for the gateway `own_gateway`.
pub fn downlinked(own_gateway: &str, topic: &str, payload: &[u8]) -> Downlinked {
    let (gateway, device) = match contract::try_parse_topic(topic) {
        Ok(contract::Topic::Commands { gateway, device }) if gateway == own_gateway => {
            (gateway, device)
        }
        Ok(_) => return Downlinked::NotOurs("not a command topic of this gateway".into()),
        Err(why) => return Downlinked::NotOurs(why),
    };
    let decoded = contract::check_device_id(&device)
        .map_err(|m| contract::ContractError::InvalidCommand(format!("device {m}")))
        .and_then(|()| contract::CommandRequest::decode(payload));
    match decoded {
        Ok(request) => Downlinked::Command { device, request },
        Err(e) => {
            // Answer even a malformed request, with its id if one can be found.
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            Downlinked::Rejected(contract::CommandOutcome {
                v: contract::SCHEMA_VERSION,
                id,
                gateway,
                device,
                status: contract::OutcomeStatus::Rejected,
                detail: Some(e.to_string()),
                data_hex: None,
                at_ms: crate::utc_now_ms(),
            })
        }
    }
}

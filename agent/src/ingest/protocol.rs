//! The gateway side of the link protocol (PROTOCOL.md sections 3, 4 and 6) as a sans-IO state
//! machine: one [`LinkProtocol`] per device link, fed events, returning actions. It is the
//! counterpart of the device's `ferry_firmware::Device`.
//!
//! The link task ([`super::link`]) owns the port or socket and calls, as things happen:
//! [`LinkProtocol::frame`] for every decoded frame (while [`LinkProtocol::has_room`]),
//! [`LinkProtocol::welcomed`] or [`LinkProtocol::not_welcomed`] with the store's answer to an
//! [`Action::Register`], [`LinkProtocol::committed`] when the store writer publishes the link's
//! committed position, [`LinkProtocol::command`] for each command the commands actor hands the
//! link, [`LinkProtocol::update`] for each firmware update message the firmware actor hands it,
//! [`LinkProtocol::tick`] periodically and [`LinkProtocol::close`] at the end. After each
//! call it carries out [`LinkProtocol::poll_action`] in order (an `Action::Register` is answered
//! before the next frame is fed) and writes [`LinkProtocol::outgoing`]. Time is passed in: a
//! monotonic `now`, and the UTC milliseconds at which the bytes of a frame arrived.
//!
//! Invariants:
//! - Every non-empty run between delimiters is either a message or a quarantined rejection.
//! - A link's session is the `(device, boot)` of the last Hello the store registered; a Welcome
//!   carries the store's committed position of that boot and the Hello's arrival time. Samples,
//!   Heartbeats and CommandResults belong to the session; without one they are ignored and
//!   answered with a HelloRequest (at most every [`HELLO_REQUEST_EVERY`]).
//! - Samples are handed to the store as they came (duplicates, holes and reordered frames too:
//!   the writer's per-boot acceptor is the authority on them), each frame with its rows' UTC times;
//!   a sample whose time is out of range (PROTOCOL.md section 5) is marked, and its frame goes to
//!   quarantine with it.
//! - Acks are sent only from the writer's committed position ([`AckState`]) and only for the
//!   session's `(device, boot)`: the link never acks anything itself.
//! - At most the link's budget ([`LINK_BUDGET`], more under `store.ack_budget`: see
//!   `store::writer::link_budget`) plus one frame of the link's samples wait for a commit: every
//!   Samples frame carries a [`LinkBudget`] token, and the link decodes only while
//!   [`LinkProtocol::has_room`], so under overload the device's ring, not the agent's queue, absorbs
//!   the excess and acks stay prompt.
//! - A command is written at most once per session (the actor writes pending commands again
//!   after every Hello); every CommandResult of the session goes to the actor, which decides.
//! - Every UpdateStatus of the session goes to the firmware actor with the session's device id;
//!   update messages are written as the actor hands them (it paces them by the device's window).
//! - Under an ack budget B, a device must hold [`ring_needed`] samples (16 x what it samples in B:
//!   it keeps at most 1/16 of its ring unacknowledged). The Hello carries no ring size, so the
//!   link logs the need at each Hello and warns, once per session, when the device reports ring
//!   drops.
//! - The device is online from its Welcome (or its next frame) until `offline_after` of silence
//!   or the end of the link; after three times that the link asks to be closed.
//!
//! [`LINK_BUDGET`]: crate::store::writer::LINK_BUDGET

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_contract::CommandSpec;
use ferry_wire::owned::DeviceMessage;
use ferry_wire::{
    encode, Ack, Command, CommandKind, CommandStatus, Message, RejectReason, Welcome,
    MAX_ENCODED_LEN,
};
use tokio::sync::watch;

use super::session::Session;
use crate::commands::DeviceCommand;
use crate::firmware::UpdateFrame;
use crate::metrics::{reason_index, Metrics};
use crate::store::writer::{AckSlot, AckState, LinkBudget, Op, Row, SamplesOp, Welcomed};
use ferry_wire::{UpdateAbort, UpdateBegin, UpdateChunk, UpdateCommit};

#[cfg(test)]
mod tests;

/// Least time between two HelloRequests of a link without a session.
pub const HELLO_REQUEST_EVERY: Duration = Duration::from_millis(200);
/// Samples frames tracked per link for the ack-delay histogram (a metric never holds memory for a
/// stuck link).
const UNACKED_TRACKED: usize = 1024;
/// Command ids remembered per session (a device that never answers cannot grow the set).
const WRITTEN_TRACKED: usize = 1024;

/// One item the decoder produced.
#[derive(Debug)]
pub enum Frame {
    /// A device → gateway message.
    Message(DeviceMessage),
    /// A valid frame a gateway never receives (a gateway → device message: an echoing link).
    Unexpected,
    /// A run the decoder rejected.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Its first bytes.
        raw: Vec<u8>,
        /// Bytes in the run.
        len: usize,
    },
}

/// What the link task must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Queue this on the store writer (a failed `Presence` may be ignored; any other failure
    /// means the store stopped).
    Store(Op),
    /// Register a Hello with the store ([`crate::store::writer::StoreHandle::hello`]), then call
    /// [`LinkProtocol::welcomed`] or [`LinkProtocol::not_welcomed`] before feeding another frame.
    Register {
        /// Device id.
        device_id: String,
        /// Firmware version.
        firmware: String,
        /// Boot id.
        boot_id: u32,
        /// Tick rate.
        tick_hz: u32,
        /// `(index, name, unit, interval_ms)`.
        sensors: Vec<(u8, String, String, u32)>,
    },
    /// The device is welcomed on this link: tell the commands actor (pending commands come back
    /// through [`LinkProtocol::command`]).
    Attach {
        /// Device id.
        device_id: String,
        /// Its boot.
        boot_id: u32,
    },
    /// The device reported its firmware update status: hand it to the firmware actor.
    UpdateStatus {
        /// Device id.
        device_id: String,
        /// The firmware version its Hello reported.
        firmware: String,
        /// The status.
        status: ferry_wire::UpdateStatus,
    },
    /// The device answered a command: hand it to the commands actor.
    CommandResult {
        /// Device id.
        device_id: String,
        /// Command id.
        id: u32,
        /// Its status.
        status: CommandStatus,
        /// Result bytes.
        data: Vec<u8>,
    },
}

/// A Hello handed out for registration.
#[derive(Debug)]
struct Registering {
    device_id: String,
    firmware: String,
    boot_id: u32,
    tick_hz: u32,
    ticks: u64,
    received_ms: i64,
}

/// The gateway's state of one device link.
#[derive(Debug)]
pub struct LinkProtocol {
    name: String,
    metrics: Arc<Metrics>,
    offline_after: Duration,
    ack: AckSlot,
    budget: Arc<LinkBudget>,
    session: Option<Session>,
    /// The firmware version the session's Hello reported.
    firmware: String,
    registering: Option<Registering>,
    online: bool,
    last_frame: Instant,
    last_hello_request: Option<Instant>,
    /// Samples frames waiting for their ack: `(boot id, seq after the frame, read at)`, oldest
    /// first, for the ack-delay histogram.
    unacked: VecDeque<(u32, u32, Instant)>,
    /// Command ids written in this session.
    written: BTreeSet<u32>,
    out: Vec<u8>,
    actions: VecDeque<Action>,
    /// `store.ack_budget`.
    ack_budget: Duration,
    /// What the device samples per second and the ring it needs under the ack budget (from its
    /// last Hello).
    ring_need: Option<(f64, u64)>,
    /// Ring drops the session's device reported last, and whether the ring warning was logged.
    drops: Option<u32>,
    ring_warned: bool,
}

/// Samples per second a sensor table declares, and the ring a device needs to keep sending while
/// its acks wait up to `ack_budget`: 16 times what it samples meanwhile (PROTOCOL.md, overload:
/// a device keeps at most 1/16 of its ring unacknowledged).
pub fn ring_needed(intervals_ms: impl Iterator<Item = u32>, ack_budget: Duration) -> (f64, u64) {
    let rate: f64 = intervals_ms
        .filter(|&i| i > 0)
        .map(|i| 1000.0 / f64::from(i))
        .sum();
    (rate, (16.0 * rate * ack_budget.as_secs_f64()).ceil() as u64)
}

impl LinkProtocol {
    /// A link named `name` (`tcp:…`, `serial:…`) opened at `now`, without a session.
    pub fn new(name: String, metrics: Arc<Metrics>, offline_after: Duration, now: Instant) -> Self {
        LinkProtocol {
            name,
            metrics,
            offline_after,
            ack: Arc::new(watch::channel(AckState::default()).0),
            budget: Arc::default(),
            session: None,
            firmware: String::new(),
            registering: None,
            online: false,
            last_frame: now,
            last_hello_request: None,
            unacked: VecDeque::new(),
            written: BTreeSet::new(),
            out: Vec::with_capacity(256),
            actions: VecDeque::new(),
            ack_budget: Duration::ZERO,
            ring_need: None,
            drops: None,
            ring_warned: false,
        }
    }

    /// The same link under `store.ack_budget` (its link budget from
    /// `store::writer::link_budget`).
    pub fn with_ack_budget(mut self, ack_budget: Duration) -> Self {
        self.ack_budget = ack_budget;
        self.budget = Arc::new(LinkBudget::new(crate::store::writer::link_budget(
            ack_budget,
        )));
        self
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The committed positions the writer publishes for this link: pass each to
    /// [`LinkProtocol::committed`].
    pub fn acks(&self) -> watch::Receiver<AckState> {
        self.ack.subscribe()
    }

    /// The link's budget (its `freed()` says when [`LinkProtocol::has_room`] may have changed).
    pub fn budget(&self) -> &Arc<LinkBudget> {
        &self.budget
    }

    /// Whether the link may decode and feed another frame.
    pub fn has_room(&self) -> bool {
        self.budget.has_room()
    }

    /// The welcomed session, if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Whether the device counts as online on this link.
    pub fn online(&self) -> bool {
        self.online
    }

    /// Bytes to write to the device; call [`LinkProtocol::clear_outgoing`] once they are written.
    pub fn outgoing(&self) -> &[u8] {
        &self.out
    }

    /// The outgoing bytes were written.
    pub fn clear_outgoing(&mut self) {
        self.out.clear();
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// One decoded frame, read at `now`, whose bytes arrived at `arrived_ms` (UTC): the anchor of
    /// tick → UTC is the arrival, not the time a frame is processed (later when the store is busy).
    pub fn frame(&mut self, now: Instant, arrived_ms: i64, frame: Frame) {
        debug_assert!(
            self.registering.is_none(),
            "a Hello's registration is answered before the next frame"
        );
        let m = &self.metrics;
        let msg = match frame {
            Frame::Rejected { reason, raw, len } => {
                Metrics::add(&m.frames_rejected[reason_index(reason)], 1);
                tracing::debug!(link = %self.name, %reason, len, "Frame rejected.");
                self.actions.push_back(Action::Store(Op::Quarantine {
                    link: self.name.clone(),
                    reason: reason.as_str().into(),
                    len,
                    raw,
                }));
                return;
            }
            Frame::Unexpected => {
                Metrics::add(&m.frames_unexpected, 1);
                return;
            }
            Frame::Message(msg) => msg,
        };
        Metrics::add(&m.frames_ok, 1);
        self.last_frame = now;
        if !self.online && self.session.is_some() && !matches!(msg, DeviceMessage::Hello { .. }) {
            self.presence(true);
        }
        match (msg, self.session.as_mut()) {
            (
                DeviceMessage::Hello {
                    device_id,
                    firmware,
                    boot_id,
                    tick_hz,
                    ticks,
                    sensors,
                    ..
                },
                _,
            ) => {
                if !self.ack_budget.is_zero() {
                    let (rate, need) = ring_needed(sensors.iter().map(|s| s.3), self.ack_budget);
                    tracing::info!(
                        device = %device_id,
                        samples_per_s = rate,
                        ring_needed = need,
                        ack_budget = ?self.ack_budget,
                        "Under store.ack_budget this device's ring must hold at least ring_needed samples."
                    );
                    self.ring_need = Some((rate, need));
                }
                self.drops = None;
                self.ring_warned = false;
                self.registering = Some(Registering {
                    device_id: device_id.clone(),
                    firmware: firmware.clone(),
                    boot_id,
                    tick_hz,
                    ticks,
                    received_ms: arrived_ms,
                });
                self.actions.push_back(Action::Register {
                    device_id,
                    firmware,
                    boot_id,
                    tick_hz,
                    sensors,
                });
            }
            (_, None) => self.hello_request(now),
            (
                DeviceMessage::Samples {
                    oldest,
                    first_seq,
                    samples,
                },
                Some(s),
            ) => {
                let (rows, out_of_range) = rows(s, &samples);
                let quarantine = (!out_of_range.is_empty()).then(|| {
                    let mut v = Vec::new();
                    push(
                        &mut v,
                        &Message::Samples(ferry_wire::Samples {
                            oldest,
                            first_seq,
                            samples: samples.iter().copied().collect(),
                        }),
                    );
                    (self.name.clone(), v)
                });
                if self.unacked.len() == UNACKED_TRACKED {
                    self.unacked.pop_front();
                }
                let end = first_seq.wrapping_add(samples.len() as u32);
                self.unacked.push_back((s.boot_id, end, now));
                self.actions.push_back(Action::Store(Op::Samples(SamplesOp {
                    device: s.device,
                    boot_no: s.boot_no,
                    boot_id: s.boot_id,
                    oldest,
                    first_seq,
                    rows,
                    out_of_range,
                    quarantine,
                    held: Some(self.budget.hold(samples.len())),
                    ack: self.ack.clone(),
                })));
            }
            (DeviceMessage::Heartbeat(hb), Some(s)) => {
                s.observe(hb.ticks, arrived_ms);
                let dropped_more = self.drops.is_some_and(|d| hb.dropped > d);
                self.drops = Some(hb.dropped);
                if dropped_more && !self.ring_warned {
                    if let Some((rate, need)) = self.ring_need {
                        self.ring_warned = true;
                        tracing::warn!(
                            device = %s.device_id,
                            dropped = hb.dropped,
                            samples_per_s = rate,
                            ring_needed = need,
                            ack_budget = ?self.ack_budget,
                            "Device drops samples from its full ring: under store.ack_budget its ring must hold at least ring_needed samples; give it a larger ring or lower store.ack_budget."
                        );
                    }
                }
                let device = s.device;
                self.actions
                    .push_back(Action::Store(Op::Heartbeat { device, hb }));
            }
            (DeviceMessage::UpdateStatus(status), Some(s)) => {
                self.actions.push_back(Action::UpdateStatus {
                    device_id: s.device_id.clone(),
                    firmware: self.firmware.clone(),
                    status,
                });
            }
            (DeviceMessage::CommandResult { id, status, data }, Some(s)) => {
                tracing::info!(device = %s.device_id, id, ?status, "Command result.");
                self.written.remove(&id);
                self.actions.push_back(Action::CommandResult {
                    device_id: s.device_id.clone(),
                    id,
                    status,
                    data,
                });
            }
        }
    }

    /// The store registered the pending Hello: the session is now that boot's, the Welcome goes
    /// out and the commands actor is told.
    pub fn welcomed(&mut self, w: Welcomed) {
        let Some(r) = self.registering.take() else {
            return;
        };
        let s = Session::new(
            r.device_id.clone(),
            w.device,
            w.boot_no,
            r.boot_id,
            r.tick_hz,
            r.ticks,
            r.received_ms,
        );
        self.session = Some(s);
        self.firmware = r.firmware.clone();
        self.online = true;
        self.written.clear();
        push(
            &mut self.out,
            &Message::Welcome(Welcome {
                boot_id: r.boot_id,
                utc_ms: r.received_ms as u64,
                next_seq: w.next_seq,
            }),
        );
        self.actions.push_back(Action::Attach {
            device_id: r.device_id,
            boot_id: r.boot_id,
        });
    }

    /// The store could not register the pending Hello: nothing changes (the device repeats it).
    pub fn not_welcomed(&mut self) {
        self.registering = None;
    }

    /// The writer published the link's committed position: ack it if it is the session's boot.
    pub fn committed(&mut self, now: Instant, a: AckState) {
        let ours = self
            .session
            .as_ref()
            .is_some_and(|s| s.device == a.device && s.boot_id == a.boot_id);
        if !ours {
            return;
        }
        push(
            &mut self.out,
            &Message::Ack(Ack {
                boot_id: a.boot_id,
                next_seq: a.next_seq,
            }),
        );
        Metrics::add(&self.metrics.acks_sent, 1);
        self.observe_ack_delay(now, a.boot_id, a.next_seq);
    }

    /// A command for the device: written unless this session already wrote it.
    pub fn command(&mut self, c: &DeviceCommand) {
        if !self.written.insert(c.wire_id) {
            return;
        }
        if self.written.len() > WRITTEN_TRACKED {
            self.written.pop_first();
        }
        push_command(&mut self.out, c);
    }

    /// A firmware update message for the device (only with a session: the actor answers a status
    /// of this session).
    pub fn update(&mut self, f: &UpdateFrame) {
        if self.session.is_none() {
            return;
        }
        let m = match f {
            UpdateFrame::Begin(o) => Message::UpdateBegin(UpdateBegin {
                id: o.id,
                slot: 1,
                length: o.length,
                version: &o.version,
                board: &o.board,
                sha256: &o.sha256,
                signature: &o.signature,
                force: o.force,
            }),
            UpdateFrame::Chunk { id, offset, data } => Message::UpdateChunk(UpdateChunk {
                id: *id,
                offset: *offset,
                data,
            }),
            UpdateFrame::Commit(id) => Message::UpdateCommit(UpdateCommit { id: *id }),
            UpdateFrame::Abort(id) => Message::UpdateAbort(UpdateAbort { id: *id }),
        };
        push(&mut self.out, &m);
    }

    /// Periodic check at `now`: marks a silent device offline; `Some(reason)` when the link
    /// should close (a dead peer, power loss or half-open TCP, never sends a reset; serial ports
    /// are reopened by the rescan).
    pub fn tick(&mut self, now: Instant) -> Option<&'static str> {
        let silent = now.saturating_duration_since(self.last_frame);
        if self.online && silent >= self.offline_after {
            self.presence(false);
        }
        (silent >= self.offline_after * 3).then_some("silent")
    }

    /// The link ends: the device is offline for it.
    pub fn close(&mut self) {
        if self.online {
            self.presence(false);
        }
    }

    fn presence(&mut self, online: bool) {
        self.online = online;
        if let Some(s) = &self.session {
            self.actions.push_back(Action::Store(Op::Presence {
                device: s.device,
                link: self.name.clone(),
                online,
            }));
        }
    }

    fn hello_request(&mut self, now: Instant) {
        if self
            .last_hello_request
            .is_none_or(|t| now.saturating_duration_since(t) >= HELLO_REQUEST_EVERY)
        {
            self.last_hello_request = Some(now);
            push(&mut self.out, &Message::HelloRequest);
        }
    }

    /// Observes the ack delay of every tracked frame this ack covers (and forgets frames of other
    /// boots: their acks will not come on this session).
    fn observe_ack_delay(&mut self, now: Instant, boot_id: u32, next_seq: u32) {
        while let Some(&(boot, end, at)) = self.unacked.front() {
            if boot == boot_id && end > next_seq {
                break;
            }
            if boot == boot_id {
                self.metrics
                    .ack_delay
                    .observe(now.saturating_duration_since(at).as_secs_f64());
            }
            self.unacked.pop_front();
        }
    }
}

/// The rows of a frame's samples and the indexes of those whose time is out of range (stored as
/// time 0, never written: the writer consumes their seqs).
fn rows(s: &Session, samples: &[ferry_wire::Sample]) -> (Vec<Row>, Vec<usize>) {
    let mut out_of_range = Vec::new();
    let rows = samples
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let ts_ms = s.utc_ms(x.ticks).unwrap_or_else(|| {
                out_of_range.push(i);
                0
            });
            Row {
                sensor: x.sensor,
                ts_ms,
                value: x.value,
            }
        })
        .collect();
    (rows, out_of_range)
}

/// Frames a command for the device.
fn push_command(out: &mut Vec<u8>, c: &DeviceCommand) {
    let bytes;
    let kind = match &c.spec {
        CommandSpec::SetInterval {
            sensor,
            interval_ms,
        } => CommandKind::SetInterval {
            sensor: *sensor,
            interval_ms: *interval_ms,
        },
        CommandSpec::Identify { duration_ms } => CommandKind::Identify {
            duration_ms: *duration_ms,
        },
        CommandSpec::Reboot => CommandKind::Reboot,
        CommandSpec::Opaque { hex } => {
            bytes = ferry_contract::decode_hex(hex).unwrap_or_default(); // validated when received
            CommandKind::Opaque(&bytes)
        }
    };
    push(
        out,
        &Message::Command(Command {
            id: c.wire_id,
            kind,
        }),
    );
}

fn push(out: &mut Vec<u8>, m: &Message<'_>) {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    if let Ok(n) = encode(m, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

//! The device side of the link protocol as a sans-IO state machine.
//!
//! The owner calls, in any order and as often as it likes:
//! [`Device::step`] (sample due sensors), [`Device::receive`] (bytes from the link),
//! [`Device::poll_transmit`] (next frame to send, until `None`) and [`Device::take_action`]
//! (board-level effects of commands). Time is passed in as milliseconds since boot.
//!
//! Transmission priority: Hello (while connecting) > command results > update status > heartbeat >
//! samples.
//!
//! Firmware updates (PROTOCOL.md section 9): [`Device::receive_with`] hands the update messages to
//! an [`Updates`] implementation (the updater over the board's flash) and sends its answer, the
//! latest status replacing an unsent older one; after each `Welcome` of this boot it sends the
//! updater's status. A commit that marked a new image is answered first and then handed to the
//! owner as [`Action::Reboot`]. [`Device::receive`] is for devices that cannot be updated: update
//! messages are ignored and no status is ever sent.
//!
//! Commands (PROTOCOL.md section 6): `SetInterval` answers `UnknownSensor` for a sensor the table
//! lacks and `InvalidArgument` for an interval outside the channel's `min_interval_ms ..=`
//! [`MAX_INTERVAL_MS`] (0 always disables); `Identify` is `Unsupported` unless
//! [`DeviceConfig::identify`]; `Reboot` is answered `Ok` and handed to the owner as
//! [`Action::Reboot`] once its result has been handed to the transmitter and the gateway has
//! acked every sample held (at most [`REBOOT_DRAIN_MS`]; no reading is taken meanwhile, each is
//! counted in [`DeviceStats::skipped`]), so a commanded reset or a firmware update loses no
//! reading the device took; `Opaque` goes to the
//! owner, who answers with [`Device::complete_command`].
//!
//! The end of a boot's sequence space: after [`LAST_SEQ`] the device takes no new sample (each due
//! reading is counted in [`DeviceStats::skipped`]) and hands out [`Action::Reboot`] as soon as the
//! gateway has acknowledged everything held, or once a ring's capacity of readings was skipped
//! waiting for that (then what is still held is lost with the reset, as it would have been dropped
//! from a full ring). `Action::Reboot` is handed out at most once per `Device`.
//!
//! One file because it is one state machine: the parts that stand alone (the sample ring, the RTT
//! estimate, the schedule, the sensor table) have their own modules; what is left is `Device`'s
//! state and its transitions (acks, rewinds, commands and the transmit order share the ring, the
//! link state and the sequence counters).

use ferry_wire::{
    encode, Command, CommandKind, CommandResult, CommandStatus, Decoder, Heartbeat, Hello, Message,
    Sample, SensorInfo, UpdateStatus, LAST_SEQ, MAX_DEVICE_ID_LEN, MAX_OPAQUE_LEN,
    MAX_SAMPLES_PER_FRAME, MAX_SENSORS,
};
use heapless::{Deque, String, Vec};

use crate::ring::SampleRing;
use crate::rtt::RttEstimator;
use crate::schedule::Schedule;
use crate::sensors::{Sensors, MAX_INTERVAL_MS};
use crate::update::{NoUpdates, Updates};
use crate::TICK_HZ;

/// The longest gateway → device frame is a firmware chunk; this bounds the receive buffer.
const RX_FRAME_MAX: usize = ferry_wire::update::MAX_DOWNLINK_FRAME_LEN;
/// Command ids remembered for de-duplication.
const RECENT_COMMANDS: usize = 8;
/// Before a reset it was asked for (a `Reboot` command, a new firmware image), the device waits
/// at most this long for the gateway to ack what it holds, taking no new readings meanwhile.
pub const REBOOT_DRAIN_MS: u64 = 2000;

/// Identity and timing of a device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Stable device id (1..=32 bytes).
    pub device_id: String<MAX_DEVICE_ID_LEN>,
    /// Firmware version string.
    pub firmware: &'static str,
    /// This boot's id; must differ on every reset.
    pub boot_id: u32,
    /// Hello repetition while connecting.
    pub hello_interval_ms: u32,
    /// Heartbeat period while connected.
    pub heartbeat_interval_ms: u32,
    /// Initial go-back-N retransmission timeout (before any round trip was measured).
    pub retransmit_timeout_ms: u32,
    /// Lower bound of the adaptive retransmission timeout.
    pub min_retransmit_timeout_ms: u32,
    /// Upper bound of the adaptive retransmission timeout (also bounds the backoff).
    pub max_retransmit_timeout_ms: u32,
    /// Silence from the gateway (with samples held) after which the device reconnects.
    pub link_timeout_ms: u32,
    /// The board can make itself visible (an LED to blink, a console to print to): `Identify` is
    /// answered `Ok` and handed over as [`Action::Identify`]. When false it is answered
    /// `Unsupported`.
    pub identify: bool,
}

impl DeviceConfig {
    /// Defaults from PROTOCOL.md: Hello every 1 s, heartbeat every 1 s, retransmission timeout
    /// starting at 1 s and adapting to measured ack round trips within 200 ms..10 s, reconnect after
    /// 5 s of silence, `Identify` supported. An over-long id is truncated to 32 bytes.
    pub fn new(device_id: &str, firmware: &'static str, boot_id: u32) -> Self {
        let mut id = String::new();
        for c in device_id.chars() {
            if id.push(c).is_err() {
                break;
            }
        }
        DeviceConfig {
            device_id: id,
            firmware,
            boot_id,
            hello_interval_ms: 1000,
            heartbeat_interval_ms: 1000,
            retransmit_timeout_ms: 1000,
            min_retransmit_timeout_ms: 200,
            max_retransmit_timeout_ms: 10_000,
            link_timeout_ms: 5000,
            identify: true,
        }
    }
}

/// Whether the gateway has welcomed this boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Sending Hello until a Welcome for this boot arrives; samples accumulate.
    Connecting,
    /// Sending samples and heartbeats.
    Connected,
}

/// Board-level effect of a command, for the owner to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make the device visible for a while (blink).
    Identify {
        /// Duration in milliseconds.
        duration_ms: u32,
    },
    /// Reset now, into a new boot: a `Reboot` command's result has been handed to the transmitter
    /// already, or this boot has used its last sequence number. Handed out once.
    Reboot,
    /// Application bytes; answer with [`Device::complete_command`].
    Opaque {
        /// Command id to answer.
        id: u32,
        /// Payload.
        data: Vec<u8, MAX_OPAQUE_LEN>,
    },
}

/// Counters since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Samples produced.
    pub generated: u64,
    /// Samples released by acks.
    pub acked: u64,
    /// Samples evicted from a full ring.
    pub dropped: u32,
    /// Failed sensor reads.
    pub read_errors: u32,
    /// Go-back-N rewinds.
    pub retransmits: u32,
    /// Current adaptive retransmission timeout.
    pub rto_ms: u32,
    /// Smoothed ack round trip (0 until measured).
    pub srtt_ms: u32,
    /// Hellos sent.
    pub hellos: u32,
    /// Frames handed to the transmitter.
    pub frames_sent: u64,
    /// Received runs rejected by the decoder.
    pub frames_rejected: u32,
    /// Valid frames that a device should never receive (uplink messages: an echoing link).
    pub unexpected: u32,
    /// Due readings not taken because this boot has used its last sequence number
    /// ([`ferry_wire::LAST_SEQ`]), or a reset it was asked for is coming, and waits to reset.
    pub skipped: u32,
    /// Firmware image bytes received in `UpdateChunk`s (written or not).
    pub update_bytes: u64,
}

struct PendingResult {
    id: u32,
    status: CommandStatus,
    data: Vec<u8, MAX_OPAQUE_LEN>,
}

/// A gateway → device message copied out of the decoder buffer.
enum Downlink {
    Welcome { boot_id: u32, next_seq: u32 },
    Ack { boot_id: u32, next_seq: u32 },
    Command { id: u32, kind: OwnedKind },
    HelloRequest,
    Unexpected,
}

enum OwnedKind {
    SetInterval { sensor: u8, interval_ms: u32 },
    Identify { duration_ms: u32 },
    Reboot,
    Opaque(Vec<u8, MAX_OPAQUE_LEN>),
}

impl Downlink {
    fn from_message(m: Message<'_>) -> Self {
        match m {
            Message::Welcome(w) => Downlink::Welcome {
                boot_id: w.boot_id,
                next_seq: w.next_seq,
            },
            Message::Ack(a) => Downlink::Ack {
                boot_id: a.boot_id,
                next_seq: a.next_seq,
            },
            Message::Command(Command { id, kind }) => Downlink::Command {
                id,
                kind: match kind {
                    CommandKind::SetInterval {
                        sensor,
                        interval_ms,
                    } => OwnedKind::SetInterval {
                        sensor,
                        interval_ms,
                    },
                    CommandKind::Identify { duration_ms } => OwnedKind::Identify { duration_ms },
                    CommandKind::Reboot => OwnedKind::Reboot,
                    // Length is checked by the decoder (<= MAX_OPAQUE_LEN).
                    CommandKind::Opaque(d) => {
                        OwnedKind::Opaque(Vec::from_slice(d).unwrap_or_default())
                    }
                },
            },
            Message::HelloRequest => Downlink::HelloRequest,
            _ => Downlink::Unexpected,
        }
    }
}

/// One device: sampling schedule, unacked ring, link state and command handling.
/// `RING` is the ring capacity in samples.
pub struct Device<const RING: usize = { crate::DEFAULT_RING }> {
    cfg: DeviceConfig,
    schedule: Schedule,
    min_interval_ms: [u32; MAX_SENSORS],
    ring: SampleRing<RING>,
    send_seq: u32,
    inflight_since: Option<u64>,
    last_rewind_ms: Option<u64>,
    rtt: RttEstimator,
    high_sent: u32,
    link: LinkState,
    next_hello_ms: u64,
    last_rx_ms: u64,
    next_heartbeat_ms: u64,
    acked_next: u32,
    results: Deque<PendingResult, 4>,
    recent: [Option<(u32, CommandStatus)>; RECENT_COMMANDS],
    recent_at: usize,
    actions: Deque<Action, 4>,
    reboot_pending: bool,
    reboot_handed_out: bool,
    /// When the reset was asked for, and whether the wait for acks is over.
    draining_since: Option<u64>,
    drain_over: bool,
    update_status: Option<UpdateStatus>,
    decoder: Decoder<RX_FRAME_MAX>,
    stats: DeviceStats,
}

impl<const RING: usize> Device<RING> {
    /// A freshly booted device at `now_ms`, connecting.
    pub fn new(cfg: DeviceConfig, sensors: &impl Sensors, now_ms: u64) -> Self {
        let schedule = Schedule::new(
            sensors
                .specs()
                .iter()
                .take(MAX_SENSORS)
                .map(|s| s.default_interval_ms),
            now_ms,
        );
        let mut min_interval_ms = [1; MAX_SENSORS];
        for (m, s) in min_interval_ms.iter_mut().zip(sensors.specs()) {
            *m = s.min_interval_ms.max(1);
        }
        Device {
            schedule,
            min_interval_ms,
            ring: SampleRing::new(0),
            send_seq: 0,
            inflight_since: None,
            last_rewind_ms: None,
            rtt: RttEstimator::new(
                cfg.retransmit_timeout_ms,
                cfg.min_retransmit_timeout_ms,
                cfg.max_retransmit_timeout_ms,
            ),
            high_sent: 0,
            link: LinkState::Connecting,
            next_hello_ms: now_ms,
            last_rx_ms: now_ms,
            next_heartbeat_ms: now_ms,
            acked_next: 0,
            results: Deque::new(),
            recent: [None; RECENT_COMMANDS],
            recent_at: 0,
            actions: Deque::new(),
            reboot_pending: false,
            reboot_handed_out: false,
            draining_since: None,
            drain_over: false,
            update_status: None,
            decoder: Decoder::new(),
            stats: DeviceStats::default(),
            cfg,
        }
    }

    /// This boot's id.
    pub fn boot_id(&self) -> u32 {
        self.cfg.boot_id
    }

    /// The configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Connecting or connected.
    pub fn link(&self) -> LinkState {
        self.link
    }

    /// Counters since boot.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            rto_ms: self.rtt.rto_ms,
            srtt_ms: self.rtt.srtt_ms.unwrap_or(0),
            ..self.stats
        }
    }

    /// Every sample with `seq < acked_next()` was acked or dropped.
    pub fn acked_next(&self) -> u32 {
        self.acked_next
    }

    /// Sequence number the next sample gets.
    pub fn next_seq(&self) -> u32 {
        self.ring.next_seq()
    }

    /// One past the newest sample ever handed to the link (this boot).
    pub fn sent_to(&self) -> u32 {
        self.high_sent
    }

    /// Samples held unacknowledged.
    pub fn ring_depth(&self) -> usize {
        self.ring.len()
    }

    /// A held (taken, not yet acked or dropped) sample by sequence number.
    pub fn held(&self, seq: u32) -> Option<&Sample> {
        self.ring.get(seq)
    }

    /// Current sampling interval of sensor `index` (0 = disabled).
    pub fn interval_ms(&self, index: usize) -> Option<u32> {
        (index < self.schedule.len()).then(|| self.schedule.interval(index))
    }

    /// Takes every sample due at `now_ms` into the ring.
    pub fn step(&mut self, now_ms: u64, sensors: &mut impl Sensors) {
        sensors.poll(now_ms);
        if self.reboot_pending {
            let since = *self.draining_since.get_or_insert(now_ms);
            self.drain_over |= now_ms.saturating_sub(since) >= REBOOT_DRAIN_MS;
        }
        while let Some((index, due_ms)) = self.schedule.next_due(now_ms) {
            if self.ring.next_seq() > LAST_SEQ || self.reboot_pending {
                // No sequence number left in this boot, or a reset is coming: readings taken
                // now could not be acked before it. take_action asks for the reset.
                self.stats.skipped = self.stats.skipped.saturating_add(1);
                continue;
            }
            match sensors.read(index, due_ms) {
                Ok(value) => {
                    let (_, evicted) = self.ring.push(Sample {
                        ticks: due_ms,
                        sensor: index as u8,
                        value,
                    });
                    self.stats.generated += 1;
                    if evicted {
                        self.stats.dropped += 1;
                        self.send_seq = self.send_seq.max(self.ring.oldest());
                    }
                }
                Err(_) => self.stats.read_errors += 1,
            }
        }
    }

    /// Feeds bytes received from the gateway (a device that cannot be updated).
    pub fn receive(&mut self, now_ms: u64, bytes: &[u8]) {
        self.receive_with(now_ms, bytes, &mut NoUpdates)
    }

    /// Feeds bytes received from the gateway; update messages go to `updates`.
    pub fn receive_with(&mut self, now_ms: u64, bytes: &[u8], updates: &mut impl Updates) {
        let mut input = bytes;
        loop {
            let msg = match self.decoder.feed(&mut input) {
                None => break,
                Some(Err(_)) => {
                    self.stats.frames_rejected += 1;
                    continue;
                }
                Some(Ok(
                    m @ (Message::UpdateBegin(_)
                    | Message::UpdateChunk(_)
                    | Message::UpdateCommit(_)
                    | Message::UpdateAbort(_)),
                )) => {
                    self.last_rx_ms = now_ms;
                    if let Message::UpdateChunk(c) = &m {
                        self.stats.update_bytes += c.data.len() as u64;
                    }
                    if let Some(reply) = updates.handle(now_ms, &m) {
                        self.update_status = Some(reply.status);
                        self.reboot_pending |= reply.reboot;
                    }
                    continue;
                }
                Some(Ok(m)) => Downlink::from_message(m),
            };
            if self.handle(now_ms, msg) {
                if let Some(status) = updates.welcomed(now_ms) {
                    self.update_status = Some(status);
                }
            }
        }
    }

    /// Applies one message; true when it was this boot's `Welcome`.
    fn handle(&mut self, now_ms: u64, msg: Downlink) -> bool {
        if matches!(msg, Downlink::Unexpected) {
            self.stats.unexpected += 1;
            return false;
        }
        self.last_rx_ms = now_ms;
        match msg {
            Downlink::Welcome { boot_id, next_seq } if boot_id == self.cfg.boot_id => {
                self.link = LinkState::Connected;
                self.next_heartbeat_ms = now_ms + u64::from(self.cfg.heartbeat_interval_ms);
                // Everything held is sent again below; a frame timed before the reconnect would
                // measure the outage, not a round trip (Karn's rule).
                self.rtt.on_rewind();
                self.apply_ack(now_ms, next_seq);
                // The gateway may have lost frames in flight: resend everything held.
                self.send_seq = self.ring.oldest();
                self.inflight_since = None;
                return true;
            }
            Downlink::Ack { boot_id, next_seq } if boot_id == self.cfg.boot_id => {
                self.apply_ack(now_ms, next_seq)
            }
            Downlink::Command { id, kind } => self.command(now_ms, id, kind),
            Downlink::HelloRequest => {
                self.link = LinkState::Connecting;
                self.next_hello_ms = now_ms;
            }
            // Welcome/Ack for another boot: stale, ignore.
            _ => {}
        }
        false
    }

    fn apply_ack(&mut self, now_ms: u64, next_seq: u32) {
        let next = next_seq.min(self.ring.next_seq());
        self.acked_next = self.acked_next.max(next);
        let released = self.ring.release_below(next);
        if released > 0 {
            self.rtt.on_ack(next, now_ms);
            self.stats.acked += released as u64;
            self.send_seq = self.send_seq.max(self.ring.oldest());
            self.inflight_since = (self.send_seq > self.ring.oldest()).then_some(now_ms);
        } else if next == self.ring.oldest() && self.send_seq > next {
            // Fast retransmit: the gateway is stuck at our oldest sample although more is in
            // flight, so a frame was lost. Rewind now rather than after the timeout, at most once
            // per quarter timeout so a burst of such acks does not cause a burst of rewinds.
            let guard = u64::from(self.rtt.rto_ms / 4);
            if self
                .last_rewind_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= guard)
            {
                self.rewind(now_ms);
            }
        }
    }

    fn rewind(&mut self, now_ms: u64) {
        self.rtt.on_rewind();
        self.send_seq = self.ring.oldest();
        self.inflight_since = None;
        self.last_rewind_ms = Some(now_ms);
        self.stats.retransmits += 1;
    }

    fn command(&mut self, now_ms: u64, id: u32, kind: OwnedKind) {
        if let Some((_, status)) = self.recent.iter().flatten().find(|(rid, _)| *rid == id) {
            let status = *status;
            self.push_result(id, status, &[]);
            return;
        }
        let status = match kind {
            OwnedKind::SetInterval {
                sensor,
                interval_ms,
            } => {
                let index = usize::from(sensor);
                if index >= self.schedule.len() {
                    CommandStatus::UnknownSensor
                } else if interval_ms != 0
                    && !(self.min_interval_ms[index]..=MAX_INTERVAL_MS).contains(&interval_ms)
                {
                    CommandStatus::InvalidArgument
                } else {
                    self.schedule.set_interval(index, interval_ms, now_ms);
                    CommandStatus::Ok
                }
            }
            OwnedKind::Identify { duration_ms } if self.cfg.identify => {
                self.act(Action::Identify { duration_ms })
            }
            OwnedKind::Identify { .. } => CommandStatus::Unsupported,
            OwnedKind::Reboot => {
                self.reboot_pending = true;
                CommandStatus::Ok
            }
            OwnedKind::Opaque(data) => {
                if self.actions.push_back(Action::Opaque { id, data }).is_err() {
                    CommandStatus::Failed
                } else {
                    return; // answered by complete_command
                }
            }
        };
        self.complete_command(id, status, &[]);
    }

    fn act(&mut self, a: Action) -> CommandStatus {
        match self.actions.push_back(a) {
            Ok(()) => CommandStatus::Ok,
            Err(_) => CommandStatus::Failed,
        }
    }

    /// Answers a command (used by the owner for [`Action::Opaque`]); `data` beyond 128 bytes is cut.
    pub fn complete_command(&mut self, id: u32, status: CommandStatus, data: &[u8]) {
        self.recent[self.recent_at] = Some((id, status));
        self.recent_at = (self.recent_at + 1) % RECENT_COMMANDS;
        self.push_result(id, status, data);
    }

    fn push_result(&mut self, id: u32, status: CommandStatus, data: &[u8]) {
        let data = Vec::from_slice(&data[..data.len().min(MAX_OPAQUE_LEN)]).unwrap_or_default();
        if self.results.is_full() {
            // The gateway re-sends a command whose result it misses; the recent list answers it.
            self.results.pop_front();
        }
        let _ = self.results.push_back(PendingResult { id, status, data });
    }

    /// Asks for a reset (a new image on trial that was not confirmed in time, say): handed out as
    /// [`Action::Reboot`] like a commanded one, once what the device holds is acked (at most
    /// [`REBOOT_DRAIN_MS`]).
    pub fn request_reboot(&mut self) {
        self.reboot_pending = true;
    }

    /// The next board-level action to carry out. `Reboot` comes only after every command result
    /// and update status was handed to the transmitter, and only once: an owner that drains this in a loop before
    /// resetting (or replacing) the device must see the loop end.
    pub fn take_action(&mut self) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        // An update status waits for the link; while connecting it cannot leave (only Hellos do),
        // and a reset must not wait for it (the gateway learns the outcome from the next boot).
        let status_waits = self.update_status.is_some() && self.link == LinkState::Connected;
        if self.reboot_handed_out || !self.results.is_empty() || status_waits {
            return None;
        }
        let used_up = self.ring.next_seq() > LAST_SEQ
            && (self.ring.is_empty() || self.stats.skipped as usize >= RING);
        // A reset asked for waits for the gateway to ack what is held (a reading lost to a reset
        // is a reading lost), at most REBOOT_DRAIN_MS.
        let drained = self.ring.is_empty() || self.drain_over;
        if (self.reboot_pending && drained) || used_up {
            self.reboot_handed_out = true;
            return Some(Action::Reboot);
        }
        None
    }

    /// Writes the next frame to send into `out` (at least `ferry_wire::MAX_ENCODED_LEN` bytes) and
    /// returns its length; `None` when there is nothing to send now.
    pub fn poll_transmit(
        &mut self,
        now_ms: u64,
        sensors: &impl Sensors,
        out: &mut [u8],
    ) -> Option<usize> {
        if self.link == LinkState::Connected
            && !self.ring.is_empty()
            && now_ms.saturating_sub(self.last_rx_ms) >= u64::from(self.cfg.link_timeout_ms)
        {
            self.link = LinkState::Connecting;
            self.next_hello_ms = now_ms;
        }
        let n = if self.link == LinkState::Connecting {
            if now_ms < self.next_hello_ms {
                return None;
            }
            self.next_hello_ms = now_ms + u64::from(self.cfg.hello_interval_ms);
            self.stats.hellos += 1;
            self.encode_hello(now_ms, sensors, out)
        } else if let Some(r) = self.results.pop_front() {
            let msg = Message::CommandResult(CommandResult {
                id: r.id,
                status: r.status,
                data: &r.data,
            });
            encode(&msg, out).ok()
        } else if let Some(status) = self.update_status.take() {
            encode(&Message::UpdateStatus(status), out).ok()
        } else if now_ms >= self.next_heartbeat_ms {
            self.next_heartbeat_ms = now_ms + u64::from(self.cfg.heartbeat_interval_ms);
            let msg = Message::Heartbeat(Heartbeat {
                ticks: now_ms,
                dropped: self.stats.dropped,
                ring_depth: self.ring.len().min(u16::MAX as usize) as u16,
                read_errors: self.stats.read_errors,
            });
            encode(&msg, out).ok()
        } else {
            self.encode_samples(now_ms, out)
        };
        if n.is_some() {
            self.stats.frames_sent += 1;
        }
        n
    }

    /// Overload (PROTOCOL.md section 4, "Ring overflow"): whether new samples may be sent now.
    ///
    /// A full ring evicts its oldest samples, and the oldest are the ones in flight: a gateway that
    /// acks later than the ring takes to turn over would see every sample it stores evicted first
    /// (stored, yet counted as dropped, never acked). So:
    /// - at most `RING / 8` samples (at least one full frame) are in flight, so the queue in front
    ///   of a slow gateway stays short against the ring's turnover;
    /// - before sending new samples, the device estimates how many it will sample before an ack
    ///   can come back (two expected round trips, `2 srtt + 4 rttvar`, or twice the current wait
    ///   if longer) and how many held samples that pushes out of the front (`doomed`). If the next
    ///   new sample is among them, it waits while earlier frames are unacked, and else drops the
    ///   doomed front now (oldest first, counted, never sent), so what it sends outlives its ack.
    ///
    /// Below overload `doomed` is 0 and the window is never reached at the round trips of a
    /// healthy gateway; retransmissions are not gated.
    fn overload_gate(&mut self, now_ms: u64) -> bool {
        if self.send_seq < self.high_sent {
            return true;
        }
        let Some(mut ack_ms) = self.rtt.expected_ack_ms() else {
            return true;
        };
        // Acks slower than measured so far (a queue building up) count at once.
        if let Some(since) = self.inflight_since {
            let waiting = now_ms.saturating_sub(since).min(u64::from(u32::MAX / 2)) as u32;
            ack_ms = ack_ms.max(2 * waiting);
        }
        // A bounded window in flight, so a queue in front of a slow gateway cannot grow past what
        // the ring outlives.
        let in_flight = self.high_sent.saturating_sub(self.ring.oldest()) as usize;
        if in_flight >= (RING / 16).max(MAX_SAMPLES_PER_FRAME) {
            return false;
        }
        let coming = self.schedule.produced_within(ack_ms);
        let doomed = (self.ring.len() + coming).saturating_sub(RING);
        let pos = (self.send_seq - self.ring.oldest()) as usize;
        if pos >= doomed {
            return true;
        }
        if in_flight > 0 {
            return false; // sent samples still held: their ack (or the timeout) comes first
        }
        let drop = doomed.min(self.ring.len().saturating_sub(MAX_SAMPLES_PER_FRAME));
        let dropped = self.ring.release_below(self.ring.oldest() + drop as u32);
        self.stats.dropped += dropped as u32;
        self.send_seq = self.send_seq.max(self.ring.oldest());
        true
    }

    fn encode_hello(&self, now_ms: u64, sensors: &impl Sensors, out: &mut [u8]) -> Option<usize> {
        let table = sensors
            .specs()
            .iter()
            .take(self.schedule.len())
            .enumerate()
            .map(|(i, s)| SensorInfo {
                index: i as u8,
                name: s.name,
                unit: s.unit,
                interval_ms: self.schedule.interval(i),
            })
            .collect();
        let msg = Message::Hello(Hello {
            device_id: &self.cfg.device_id,
            firmware: self.cfg.firmware,
            boot_id: self.cfg.boot_id,
            tick_hz: TICK_HZ,
            ticks: now_ms,
            next_seq: self.ring.next_seq(),
            sensors: table,
        });
        encode(&msg, out).ok()
    }

    fn encode_samples(&mut self, now_ms: u64, out: &mut [u8]) -> Option<usize> {
        if let Some(since) = self.inflight_since {
            if now_ms.saturating_sub(since) >= u64::from(self.rtt.rto_ms) {
                self.rtt.on_timeout();
                self.rewind(now_ms);
            }
        }
        let end = self.ring.next_seq();
        if self.send_seq >= end {
            return None;
        }
        if !self.overload_gate(now_ms) {
            return None;
        }
        let first = self.send_seq;
        let count = ((end - first) as usize).min(MAX_SAMPLES_PER_FRAME);
        let samples: Vec<Sample, MAX_SAMPLES_PER_FRAME> = (first..first + count as u32)
            .filter_map(|s| self.ring.get(s).copied())
            .collect();
        let msg = Message::Samples(ferry_wire::Samples {
            oldest: self.ring.oldest(),
            first_seq: first,
            samples,
        });
        let n = encode(&msg, out).ok()?;
        let end_seq = first + count as u32;
        if end_seq > self.high_sent {
            // New data (never sent before): time it, unless a measurement is running (Karn).
            self.rtt.on_send(end_seq, now_ms);
            self.high_sent = end_seq;
        }
        self.send_seq = end_seq;
        self.inflight_since.get_or_insert(now_ms);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::synthetic::Synthetic;
    use ferry_wire::{Ack, Welcome, MAX_ENCODED_LEN};

    /// `(first_seq, count)` of every Samples frame the device sends at `now`.
    fn sent(dev: &mut Device<8>, sensors: &Synthetic, now: u64) -> std::vec::Vec<(u32, usize)> {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let mut frames = std::vec::Vec::new();
        while let Some(n) = dev.poll_transmit(now, sensors, &mut out) {
            let mut dec: Decoder = Decoder::new();
            let mut input = &out[..n];
            match dec.feed(&mut input) {
                Some(Ok(Message::Samples(s))) => frames.push((s.first_seq, s.samples.len())),
                Some(Ok(_)) => {}
                other => panic!("the device sent an invalid frame: {other:?}"),
            };
        }
        frames
    }

    fn gateway(dev: &mut Device<8>, now: u64, m: Message<'_>) {
        let mut out = [0u8; MAX_ENCODED_LEN];
        let n = encode(&m, &mut out).unwrap();
        dev.receive(now, &out[..n]);
    }

    /// A device near the end of its boot's sequence space (as if it had taken 2^32 - 6 samples).
    fn near_the_end() -> (Device<8>, Synthetic) {
        let sensors = Synthetic::with_interval(10);
        let mut dev: Device<8> = Device::new(DeviceConfig::new("d", "t", 5), &sensors, 0);
        dev.ring = SampleRing::new(LAST_SEQ - 5);
        dev.send_seq = LAST_SEQ - 5;
        dev.high_sent = LAST_SEQ - 5;
        dev.acked_next = LAST_SEQ - 5;
        gateway(
            &mut dev,
            0,
            Message::Welcome(Welcome {
                boot_id: 5,
                utc_ms: 0,
                next_seq: LAST_SEQ - 5,
            }),
        );
        (dev, sensors)
    }

    #[test]
    fn the_last_usable_seq_ends_the_boot_once_everything_is_acked() {
        let (mut dev, mut sensors) = near_the_end();
        let mut frames = std::vec::Vec::new();
        for now in (0..=30).step_by(10) {
            dev.step(now, &mut sensors); // 3 channels every 10 ms
            frames.extend(sent(&mut dev, &sensors, now));
        }
        let last = frames.iter().map(|(f, n)| f + (*n as u32 - 1)).max();
        assert_eq!(last, Some(LAST_SEQ), "seqs up to LAST_SEQ sent: {frames:?}");
        assert_eq!(dev.next_seq(), u32::MAX);
        assert_eq!(dev.stats().generated, 6);
        assert_eq!(
            dev.stats().skipped,
            6,
            "readings due after LAST_SEQ are not taken"
        );
        assert_eq!(dev.take_action(), None, "samples still held");
        gateway(
            &mut dev,
            30,
            Message::Ack(Ack {
                boot_id: 5,
                next_seq: u32::MAX,
            }),
        );
        assert_eq!(dev.ring_depth(), 0);
        assert_eq!(dev.acked_next(), u32::MAX);
        assert_eq!(dev.take_action(), Some(Action::Reboot));
        assert_eq!(dev.take_action(), None, "handed out once");
    }

    #[test]
    fn without_acks_the_boot_ends_after_a_ring_of_skipped_readings() {
        let (mut dev, mut sensors) = near_the_end();
        let mut now = 0;
        let action = loop {
            dev.step(now, &mut sensors);
            sent(&mut dev, &sensors, now);
            if let Some(a) = dev.take_action() {
                break a;
            }
            assert!(dev.stats().skipped < 8, "at {now} ms");
            now += 10;
        };
        assert_eq!(action, Action::Reboot);
        assert!(
            dev.stats().skipped >= 8,
            "a ring (8) of readings skipped first"
        );
        assert_eq!(dev.ring_depth(), 6, "held, never acked");
        assert_eq!(dev.take_action(), None);
    }
}

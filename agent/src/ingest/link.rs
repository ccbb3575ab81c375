//! One device link (a serial port or a TCP connection), owned by one task.
//!
//! Invariants:
//! - Every non-empty run between delimiters is either a message or a quarantined rejection.
//! - Samples are only forwarded to the store for the session's `(device, boot)`; without a session
//!   the link answers HelloRequest (at most every 200 ms) and ignores the data.
//! - Acks are sent only from the writer's committed position (the link's `AckSlot`).
//! - At most `LINK_BUDGET` (plus one frame) of the link's samples wait for a commit: beyond it the
//!   link stops decoding and reading until a commit frees some, so under overload the device's
//!   ring, not the agent's queue, absorbs the excess and acks stay prompt.
//! - Writes to the device time out after 2 s (a device that does not read is dropped).
//! - On close or shutdown the device is marked offline for this link.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::owned::DeviceMessage;
use ferry_wire::{encode, Ack, Decoder, Message, Welcome, MAX_ENCODED_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session::Session;
use super::LinkCtx;
use crate::commands::DeviceCommand;
use crate::metrics::{reason_index, Metrics};
use crate::store::writer::{AckState, LinkBudget, Op, Row, SamplesOp};

const HELLO_REQUEST_EVERY: Duration = Duration::from_millis(200);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Link {
    name: String,
    ctx: LinkCtx,
    session: Option<Session>,
    ack: Arc<watch::Sender<AckState>>,
    budget: Arc<LinkBudget>,
    out: Vec<u8>,
    last_frame: Instant,
    online: bool,
    last_hello_request: Option<Instant>,
    cmd_tx: Option<tokio::sync::mpsc::Sender<DeviceCommand>>,
    /// Samples frames waiting for their ack: `(boot id, seq after the frame, read at)`, oldest
    /// first, for the ack-delay histogram (bounded: a metric never holds memory for a stuck link).
    unacked: std::collections::VecDeque<(u32, u32, Instant)>,
}

/// Frames tracked for the ack-delay histogram per link.
const UNACKED_TRACKED: usize = 1024;

enum Item {
    Msg(Option<DeviceMessage>),
    Rejected {
        reason: ferry_wire::RejectReason,
        raw: Vec<u8>,
        len: usize,
    },
}

/// Serves one link until it closes or `shutdown` fires.
pub async fn serve<S>(io: S, name: String, ctx: LinkCtx, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    Metrics::add(&ctx.metrics.links_open, 1);
    Metrics::add(&ctx.metrics.links_total, 1);
    let (ack_tx, mut ack_rx) = watch::channel(AckState::default());
    let mut link = Link {
        name,
        ctx,
        session: None,
        ack: Arc::new(ack_tx),
        budget: Arc::default(),
        out: Vec::with_capacity(256),
        last_frame: Instant::now(),
        online: false,
        last_hello_request: None,
        cmd_tx: None,
        unacked: Default::default(),
    };
    tracing::info!(link = %link.name, "Device link open.");
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut dec: Box<Decoder> = Box::new(Decoder::new());
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes read but not decoded yet (the budget ran out), and when they arrived.
    let mut held = 0..0;
    let mut arrived = 0;
    let mut idle =
        tokio::time::interval((link.ctx.offline_after / 2).max(Duration::from_millis(100)));
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<DeviceCommand>(32);
    link.cmd_tx = Some(cmd_tx);
    let why = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            r = rd.read(&mut buf), if held.is_empty() => {
                let n = match r {
                    Ok(0) => break "closed by peer",
                    Err(_) => break "read error",
                    Ok(n) => n,
                };
                // Anchors for tick->UTC use the arrival time, not the time a frame is processed
                // (which can be later when the store queue is full).
                arrived = crate::utc_now_ms();
                held = 0..n;
                if link.feed(&mut dec, &buf, &mut held, arrived).await.is_err() {
                    break "store stopped";
                }
            }
            _ = link.budget.freed(), if !held.is_empty() => {
                if link.feed(&mut dec, &buf, &mut held, arrived).await.is_err() {
                    break "store stopped";
                }
            }
            changed = ack_rx.changed() => {
                if changed.is_err() {
                    break "store stopped";
                }
                let a = *ack_rx.borrow_and_update();
                if link.session.as_ref().is_some_and(|s| s.device == a.device && s.boot_id == a.boot_id) {
                    push(&mut link.out, &Message::Ack(Ack { boot_id: a.boot_id, next_seq: a.next_seq }));
                    Metrics::add(&link.ctx.metrics.acks_sent, 1);
                    link.acked(a.boot_id, a.next_seq);
                }
            }
            Some(c) = cmd_rx.recv() => push_command(&mut link.out, &c),
            _ = idle.tick() => {
                let silent = link.last_frame.elapsed();
                if link.online && silent >= link.ctx.offline_after {
                    link.presence(false).await;
                }
                // A dead peer (power loss, half-open TCP) never sends a reset: close the link so it
                // does not hold a connection slot forever. Serial ports are reopened by the rescan.
                if silent >= link.ctx.offline_after * 3 {
                    break "silent";
                }
            }
        }
        if !link.out.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&link.out)).await {
                Ok(Ok(())) => link.out.clear(),
                Ok(Err(_)) => break "write error",
                Err(_) => break "device does not read",
            }
        }
    };
    if link.online {
        link.presence(false).await;
    }
    link.ctx
        .metrics
        .links_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(link = %link.name, reason = why, "Device link closed.");
}

/// Frames a command for the device.
fn push_command(out: &mut Vec<u8>, c: &DeviceCommand) {
    use ferry_contract::{decode_hex, CommandSpec};
    use ferry_wire::{Command, CommandKind};
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
            bytes = decode_hex(hex).unwrap_or_default(); // validated when received
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

impl Link {
    /// Decodes and handles the bytes `buf[held]` while the link's budget has room; leaves the rest
    /// in `held`. `Err` only when the store is gone.
    async fn feed(
        &mut self,
        dec: &mut Decoder,
        buf: &[u8],
        held: &mut std::ops::Range<usize>,
        arrived: i64,
    ) -> Result<(), crate::store::StoreError> {
        let mut input = &buf[held.clone()];
        while self.budget.has_room() {
            let item = match dec.feed(&mut input) {
                None => break,
                Some(Ok(m)) => Item::Msg(DeviceMessage::from_message(&m)),
                Some(Err(r)) => Item::Rejected {
                    reason: r.reason,
                    raw: r.raw.to_vec(),
                    len: r.len,
                },
            };
            self.handle(item, arrived).await?;
        }
        *held = held.end - input.len()..held.end;
        Ok(())
    }

    async fn presence(&mut self, online: bool) {
        self.online = online;
        if let Some(s) = &self.session {
            let op = Op::Presence {
                device: s.device,
                link: self.name.clone(),
                online,
            };
            let _ = self.ctx.store.send(op).await;
        }
    }

    fn hello_request(&mut self) {
        if self
            .last_hello_request
            .is_none_or(|t| t.elapsed() >= HELLO_REQUEST_EVERY)
        {
            self.last_hello_request = Some(Instant::now());
            push(&mut self.out, &Message::HelloRequest);
        }
    }

    /// Observes the ack delay of every tracked frame this ack covers (and forgets frames of other
    /// boots: their acks will not come on this session).
    fn acked(&mut self, boot_id: u32, next_seq: u32) {
        while let Some(&(boot, end, at)) = self.unacked.front() {
            if boot == boot_id && end > next_seq {
                break;
            }
            if boot == boot_id {
                self.ctx.metrics.ack_delay.observe(at.elapsed());
            }
            self.unacked.pop_front();
        }
    }

    /// Handles one decoded item; `Err` only when the store is gone.
    async fn handle(&mut self, item: Item, arrived: i64) -> Result<(), crate::store::StoreError> {
        let m = &self.ctx.metrics;
        let msg = match item {
            Item::Rejected { reason, raw, len } => {
                Metrics::add(&m.frames_rejected[reason_index(reason)], 1);
                tracing::debug!(link = %self.name, %reason, len, "Frame rejected.");
                let op = Op::Quarantine {
                    link: self.name.clone(),
                    reason: reason.as_str().into(),
                    len,
                    raw,
                };
                return self.ctx.store.send(op).await;
            }
            Item::Msg(None) => {
                Metrics::add(&m.frames_unexpected, 1);
                return Ok(());
            }
            Item::Msg(Some(u)) => u,
        };
        Metrics::add(&m.frames_ok, 1);
        self.last_frame = Instant::now();
        if !self.online && self.session.is_some() && !matches!(msg, DeviceMessage::Hello { .. }) {
            self.presence(true).await;
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
                let received = arrived;
                let r = self
                    .ctx
                    .store
                    .hello(
                        device_id.clone(),
                        firmware,
                        boot_id,
                        tick_hz,
                        sensors,
                        self.name.clone(),
                    )
                    .await;
                match r {
                    Ok(w) => {
                        self.session = Some(Session::new(
                            device_id, w.device, w.boot_no, boot_id, tick_hz, ticks, received,
                        ));
                        self.online = true;
                        let welcome = Welcome {
                            boot_id,
                            utc_ms: received as u64,
                            next_seq: w.next_seq,
                        };
                        push(&mut self.out, &Message::Welcome(welcome));
                        if let Some(tx) = &self.cmd_tx {
                            let id = self
                                .session
                                .as_ref()
                                .map(|s| s.device_id.clone())
                                .unwrap_or_default();
                            self.ctx.commands.attach(id, tx.clone()).await;
                        }
                    }
                    Err(crate::store::StoreError::Stopped) => {
                        return Err(crate::store::StoreError::Stopped)
                    }
                    Err(e) => {
                        tracing::warn!(link = %self.name, error = %e, "Hello not registered; the device will repeat it.")
                    }
                }
            }
            (
                DeviceMessage::Samples {
                    oldest,
                    first_seq,
                    samples,
                },
                Some(s),
            ) => {
                // A sample whose time is out of range is not stored; its seq is still consumed
                // (and acked), so it cannot block the device. The frame goes to quarantine.
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
                self.unacked.push_back((s.boot_id, end, Instant::now()));
                let op = SamplesOp {
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
                };
                return self.ctx.store.send(Op::Samples(op)).await;
            }
            (DeviceMessage::Heartbeat(hb), Some(s)) => {
                s.observe(hb.ticks, arrived);
                let device = s.device;
                return self.ctx.store.send(Op::Heartbeat { device, hb }).await;
            }
            (DeviceMessage::CommandResult { id, status, data }, Some(s)) => {
                tracing::info!(device = %s.device_id, id, ?status, "Command result.");
                self.ctx
                    .commands
                    .result(s.device_id.clone(), id, status, data)
                    .await;
            }
            (_, None) => self.hello_request(),
        }
        Ok(())
    }
}

//! One device link (a serial port or a TCP connection), owned by one task: the I/O around a
//! [`LinkProtocol`] (the protocol and its invariants are there).
//!
//! The task reads bytes, decodes frames (`ferry_wire::Decoder`) while the protocol has room, feeds
//! them to the protocol, carries out its actions (store operations, Hello registration, the
//! commands actor) in order, and writes what it returns to the device. Invariants of the I/O:
//! - Bytes read while the link's budget is spent stay undecoded (and no more are read) until a
//!   commit frees some; their arrival time stays theirs.
//! - Writes to the device time out after 2 s (a device that does not read is dropped).
//! - The link ends on shutdown, EOF, a read or write error, a stopped store, or a silent peer;
//!   the device is then marked offline for this link.

use std::time::{Duration, Instant};

use ferry_wire::owned::DeviceMessage;
use ferry_wire::Decoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{Action, Frame, LinkProtocol};
use super::LinkCtx;
use crate::commands::DeviceCommand;
use crate::firmware::UpdateFrame;
use crate::metrics::Metrics;
use crate::store::writer::Op;
use crate::store::StoreError;

const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands the actor may queue for a link before it keeps them for the next reconnect.
const COMMAND_QUEUE: usize = 32;
/// Update messages the firmware actor may queue for a link (a window's worth of chunks is a few).
const UPDATE_QUEUE: usize = 16;

/// Serves one link until it closes or `shutdown` fires.
pub async fn serve<S>(io: S, name: String, ctx: LinkCtx, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    Metrics::add(&ctx.metrics.links_open, 1);
    Metrics::add(&ctx.metrics.links_total, 1);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<DeviceCommand>(COMMAND_QUEUE);
    let (upd_tx, mut upd_rx) = mpsc::channel::<UpdateFrame>(UPDATE_QUEUE);
    let mut link = Link {
        upd_tx,
        proto: LinkProtocol::new(name, ctx.metrics.clone(), ctx.offline_after, Instant::now())
            .with_ack_budget(ctx.ack_budget),
        ctx,
        cmd_tx,
    };
    tracing::info!(link = %link.proto.name(), "Device link open.");
    let mut ack_rx = link.proto.acks();
    let budget = link.proto.budget().clone();
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut dec: Box<Decoder> = Box::new(Decoder::new());
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes read but not decoded yet (the budget ran out), and when they arrived.
    let mut held = 0..0;
    let mut arrived = 0;
    let mut idle =
        tokio::time::interval((link.ctx.offline_after / 2).max(Duration::from_millis(100)));
    let why = loop {
        let step = tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            r = rd.read(&mut buf), if held.is_empty() => {
                let n = match r {
                    Ok(0) => break "closed by peer",
                    Err(_) => break "read error",
                    Ok(n) => n,
                };
                arrived = crate::utc_now_ms();
                held = 0..n;
                link.feed(&mut dec, &buf, &mut held, arrived).await.map(|()| None)
            }
            _ = budget.freed(), if !held.is_empty() => {
                link.feed(&mut dec, &buf, &mut held, arrived).await.map(|()| None)
            }
            changed = ack_rx.changed() => {
                if changed.is_err() {
                    break "store stopped";
                }
                let a = *ack_rx.borrow_and_update();
                link.proto.committed(Instant::now(), a);
                Ok(None)
            }
            Some(c) = cmd_rx.recv() => {
                link.proto.command(&c);
                Ok(None)
            }
            Some(f) = upd_rx.recv() => {
                // Acks first: a commit published meanwhile goes out ahead of the chunk.
                if ack_rx.has_changed().unwrap_or(false) {
                    let a = *ack_rx.borrow_and_update();
                    link.proto.committed(Instant::now(), a);
                }
                link.proto.update(&f);
                Ok(None)
            }
            _ = idle.tick() => {
                let close = link.proto.tick(Instant::now());
                link.act().await.map(|()| close)
            }
        };
        match step {
            Err(_) => break "store stopped",
            Ok(Some(why)) => break why,
            Ok(None) => {}
        }
        if !link.proto.outgoing().is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(link.proto.outgoing())).await {
                Ok(Ok(())) => link.proto.clear_outgoing(),
                Ok(Err(_)) => break "write error",
                Err(_) => break "device does not read",
            }
        }
    };
    link.proto.close();
    let _ = link.act().await;
    link.ctx
        .metrics
        .links_open
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(link = %link.proto.name(), reason = why, "Device link closed.");
}

struct Link {
    proto: LinkProtocol,
    ctx: LinkCtx,
    /// Where the commands actor sends this link's commands.
    cmd_tx: mpsc::Sender<DeviceCommand>,
    /// Where the firmware actor sends this link's update messages.
    upd_tx: mpsc::Sender<UpdateFrame>,
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
    ) -> Result<(), StoreError> {
        let mut input = &buf[held.clone()];
        while self.proto.has_room() {
            let frame = match dec.feed(&mut input) {
                None => break,
                Some(Ok(m)) => match DeviceMessage::from_message(&m) {
                    Some(m) => Frame::Message(m),
                    None => Frame::Unexpected,
                },
                Some(Err(r)) => Frame::Rejected {
                    reason: r.reason,
                    raw: r.raw.to_vec(),
                    len: r.len,
                },
            };
            self.proto.frame(Instant::now(), arrived, frame);
            self.act().await?;
        }
        *held = held.end - input.len()..held.end;
        Ok(())
    }

    /// Carries out the protocol's actions in order; `Err` only when the store is gone.
    async fn act(&mut self) -> Result<(), StoreError> {
        while let Some(a) = self.proto.poll_action() {
            match a {
                // The presence of a device is advisory: a lost update is corrected by the next.
                Action::Store(op @ Op::Presence { .. }) => {
                    let _ = self.ctx.store.send(op).await;
                }
                Action::Store(op) => self.ctx.store.send(op).await?,
                Action::Register {
                    device_id,
                    firmware,
                    boot_id,
                    tick_hz,
                    sensors,
                } => {
                    let name = self.proto.name().to_owned();
                    let r = self
                        .ctx
                        .store
                        .hello(device_id, firmware, boot_id, tick_hz, sensors, name)
                        .await;
                    match r {
                        Ok(w) => self.proto.welcomed(w),
                        Err(StoreError::Stopped) => return Err(StoreError::Stopped),
                        Err(e) => {
                            tracing::warn!(link = %self.proto.name(), error = %e, "Hello not registered; the device will repeat it.");
                            self.proto.not_welcomed();
                        }
                    }
                }
                Action::Attach { device_id, boot_id } => {
                    self.ctx
                        .commands
                        .attach(device_id, boot_id, self.cmd_tx.clone())
                        .await;
                }
                Action::CommandResult {
                    device_id,
                    id,
                    status,
                    data,
                } => self.ctx.commands.result(device_id, id, status, data).await,
                Action::UpdateStatus {
                    device_id,
                    firmware,
                    status,
                } => {
                    self.ctx
                        .firmware
                        .status(device_id, firmware, status, self.upd_tx.clone())
                        .await
                }
            }
        }
        Ok(())
    }
}

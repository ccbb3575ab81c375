//! Device commands: from the MQTT downlink and the local API to a device's link, and their
//! outcomes back. The command types are the agent's own: the uplink turns an MQTT message into a
//! [`Submission`] whose [`Completion`] acknowledges it, the API submits without one.
//!
//! One actor task owns the pending commands: their policy is the sans-IO [`ledger::Ledger`] (the
//! lifecycle, TTL, when a command is written, what ends it); the actor only stores, reads and
//! sends. Invariants:
//! - A command is stored (committed through the store writer, table `commands`) before it is sent
//!   to a device, so it survives a restart and waits while the device is offline.
//! - The command id on the wire is the row id; a device executes a repeated id once, so resending
//!   pending commands on every (re)connect is safe (a `reboot` is not resent to a later boot: see
//!   the ledger).
//! - Each command ends exactly once: with the device's result, or `expired` after its TTL. The
//!   outcome is stored with it; a repeated request id gets the stored outcome again.
//! - Only commands for a device id the link protocol can carry are taken (D3: 1..=32 bytes of
//!   UTF-8 without NUL, [`check_device_id`]): the API refuses others with a 400 naming the id, and
//!   one from MQTT is answered `rejected` on `.../commands/result` with a detail naming the device
//!   id, never stored; its MQTT message is acked once that answer is (as the uplink does for a
//!   malformed request).
//! - Nothing is lost across a crash: a submission's [`Completion`] (the MQTT message's PUBACK) runs
//!   only after the command is stored (until then the broker redelivers it), and an outcome is
//!   marked published only when the broker acked it; unpublished outcomes go out again at start.
pub mod ledger;

use std::collections::HashMap;
use std::time::Duration;

use ferry_contract::{CommandOutcome, CommandRequest, CommandSpec};
use ferry_wire::CommandStatus;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::writer::StoreHandle;
use ledger::{Finished, Ledger};

/// Why a device id cannot have commands (D3): `None` for an id the link protocol can carry,
/// 1..=[`ferry_wire::MAX_DEVICE_ID_LEN`] bytes of UTF-8 without NUL. The text names no field:
/// each caller says where the id came from.
pub fn check_device_id(id: &str) -> Result<(), String> {
    let max = ferry_wire::MAX_DEVICE_ID_LEN;
    if id.is_empty() || id.len() > max {
        return Err(format!(
            "{} bytes; a device id is 1..={max} bytes (the link protocol's limit)",
            id.len()
        ));
    }
    if let Some(at) = id.find('\0') {
        return Err(format!(
            "NUL at byte {at}; a device id never contains U+0000"
        ));
    }
    Ok(())
}

/// A valid command request for one device, as submitted (from the downlink or the API).
#[derive(Debug)]
pub struct Submission {
    /// Device id.
    pub device: String,
    /// The request.
    pub request: CommandRequest,
    /// Run once the command is safe (stored, or answered); dropped unrun otherwise, so its sender
    /// delivers it again.
    pub completion: Completion,
}

/// What the submitter of a command is owed once it is safe (the uplink: the MQTT message's
/// PUBACK). Opaque to the commands actor.
pub struct Completion(Option<Box<dyn FnOnce() + Send>>);

impl Completion {
    /// Nothing is owed (a command from the local API).
    pub fn none() -> Self {
        Completion(None)
    }

    /// Runs `f` when the command is safe.
    pub fn new(f: impl FnOnce() + Send + 'static) -> Self {
        Completion(Some(Box::new(f)))
    }

    /// The command is safe: pay what is owed.
    pub fn done(self) {
        if let Some(f) = self.0 {
            f();
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Completion(owed)"
        } else {
            "Completion(none)"
        })
    }
}

/// An outcome to publish on `.../commands/result`; `delivered` fires when the broker acked it.
#[derive(Debug)]
pub struct OutgoingOutcome {
    /// The outcome.
    pub outcome: CommandOutcome,
    /// Told when the PUBACK arrives.
    pub delivered: Option<oneshot::Sender<()>>,
}

/// A command for one device link to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCommand {
    /// Command id on the wire.
    pub wire_id: u32,
    /// What to do.
    pub spec: CommandSpec,
}

enum Req {
    /// A command; `stored` is told whether it is stored (or already known) once that is settled.
    Submit(Submission, Option<oneshot::Sender<bool>>),
    Attach {
        device: String,
        boot_id: u32,
        link: mpsc::Sender<DeviceCommand>,
    },
    Result {
        device: String,
        wire_id: u32,
        status: CommandStatus,
        data: Vec<u8>,
    },
}

/// Cheap handle to the commands actor.
#[derive(Clone)]
pub struct CommandsHandle {
    tx: mpsc::Sender<Req>,
}

impl CommandsHandle {
    /// A new command from the downlink (already validated); its completion runs once it is safe.
    pub async fn submit(&self, c: Submission) {
        let _ = self.tx.send(Req::Submit(c, None)).await;
    }

    /// A new command from the local API (already validated); true once it is stored (or was
    /// already known), false if it was rejected ([`check_device_id`]), storing failed or the
    /// actor is gone.
    pub async fn submit_stored(&self, device: String, request: CommandRequest) -> bool {
        let c = Submission {
            device,
            request,
            completion: Completion::none(),
        };
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Req::Submit(c, Some(tx))).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A device's link after its Hello (boot `boot_id`): pending commands for it are sent there.
    pub async fn attach(&self, device: String, boot_id: u32, link: mpsc::Sender<DeviceCommand>) {
        let _ = self
            .tx
            .send(Req::Attach {
                device,
                boot_id,
                link,
            })
            .await;
    }

    /// A device answered a command.
    pub async fn result(&self, device: String, wire_id: u32, status: CommandStatus, data: Vec<u8>) {
        let _ = self
            .tx
            .send(Req::Result {
                device,
                wire_id,
                status,
                data,
            })
            .await;
    }
}

/// Starts the actor. `outcomes` receives every outcome (the uplink publishes them), first the
/// stored ones the broker never acked.
pub async fn spawn(
    reader: Connection,
    store: StoreHandle,
    outcomes: mpsc::Sender<OutgoingOutcome>,
    gateway: String,
    shutdown: CancellationToken,
) -> rusqlite::Result<(CommandsHandle, tokio::task::JoinHandle<()>)> {
    let next_id: i64 =
        reader.query_row("SELECT coalesce(max(id), 0) + 1 FROM commands", [], |r| {
            r.get(0)
        })?;
    let mut ledger = Ledger::new(gateway, next_id);
    {
        let mut st = reader.prepare(
            "SELECT id, device_id, request_id, spec, expires_ms FROM commands WHERE done = 0",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (id, device, request_id, spec, expires_ms) = row?;
            if let Ok(spec) = serde_json::from_str(&spec) {
                ledger.restore(id as u32, device, request_id, spec, expires_ms);
            }
        }
    }
    let unpublished: Vec<(i64, String)> = {
        let mut st = reader.prepare(
            "SELECT id, outcome FROM commands WHERE done = 1 AND outcome_published = 0 AND outcome IS NOT NULL ORDER BY id",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let (tx, rx) = mpsc::channel(256);
    let actor = Actor {
        reader,
        store,
        outcomes,
        ledger,
        links: HashMap::new(),
    };
    for (id, json) in unpublished {
        if let Ok(o) = serde_json::from_str::<CommandOutcome>(&json) {
            tracing::info!(device = %o.device, request = %o.id, "Publishing a stored command outcome the broker never acked.");
            actor.send_outcome(o, Some(id));
        }
    }
    Ok((CommandsHandle { tx }, tokio::spawn(actor.run(rx, shutdown))))
}

struct Actor {
    reader: Connection,
    store: StoreHandle,
    outcomes: mpsc::Sender<OutgoingOutcome>,
    ledger: Ledger,
    links: HashMap<String, mpsc::Sender<DeviceCommand>>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Req>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = rx.recv() => match r {
                    None => break,
                    Some(Req::Submit(c, reply)) => {
                        let stored = self.submit(c).await;
                        if let Some(r) = reply {
                            let _ = r.send(stored);
                        }
                    }
                    Some(Req::Attach { device, boot_id, link }) => {
                        for c in self.ledger.attach(&device, boot_id) {
                            write(&mut self.ledger, &link, c);
                        }
                        self.links.insert(device, link);
                    }
                    Some(Req::Result { device, wire_id, status, data }) => {
                        if let Some(f) = self.ledger.result(&device, wire_id, status, &data, crate::utc_now_ms()) {
                            self.finish(f).await;
                        }
                    }
                },
                _ = tick.tick() => {
                    for f in self.ledger.expire(crate::utc_now_ms()) {
                        self.finish(f).await;
                    }
                    let ledger = &mut self.ledger;
                    self.links.retain(|device, l| {
                        let open = !l.is_closed();
                        if !open {
                            ledger.detach(device);
                        }
                        open
                    });
                }
            }
        }
    }

    /// Stores a new command (completing its submission only then); true once it is safe.
    async fn submit(&mut self, c: Submission) -> bool {
        let Submission {
            device,
            request,
            completion,
        } = c;
        let now = crate::utc_now_ms();
        if let Some(o) = self.ledger.rejection(&device, &request.id, now) {
            tracing::warn!(device = %device.escape_debug(), request = %request.id, detail = ?o.detail, "Command rejected: no device can have this id.");
            self.reject(o, completion);
            return false;
        }
        // A repeated request id: answer with the stored outcome, or keep waiting.
        let known: Option<Option<String>> = self
            .reader
            .query_row(
                "SELECT outcome FROM commands WHERE device_id = ?1 AND request_id = ?2",
                params![device, request.id],
                |r| r.get(0),
            )
            .optional()
            .unwrap_or(None);
        match known {
            Some(Some(outcome)) => {
                if let Ok(o) = serde_json::from_str::<CommandOutcome>(&outcome) {
                    self.send_outcome(o, None);
                }
                completion.done();
                return true;
            }
            Some(None) => {
                completion.done(); // stored and pending
                return true;
            }
            None => {}
        }
        if self.ledger.is_pending(&device, &request.id) {
            completion.done();
            return true;
        }
        let new = self.ledger.prepare(device, request, now);
        let row = new.clone();
        let spec_json = serde_json::to_string(&row.spec).expect("spec serializes");
        let stored = self
            .store
            .exec(move |c| {
                c.execute(
                    "INSERT INTO commands (id, device_id, request_id, spec, received_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![row.id, row.device, row.request_id, spec_json, row.received_ms, row.expires_ms],
                )
                .map(|_| ())
            })
            .await;
        if let Err(e) = stored {
            // Not completed: the broker delivers it again (after a reconnect) and storing is retried.
            tracing::warn!(device = %new.device, request = %new.request_id, error = %e, "Command not stored; leaving it unacked at the broker.");
            drop(completion);
            return false;
        }
        completion.done();
        tracing::info!(device = %new.device, request = %new.request_id, wire_id = new.id, "Command queued for the device.");
        let device = new.device.clone();
        if let Some(c) = self.ledger.accept(new) {
            if let Some(link) = self.links.get(&device) {
                write(&mut self.ledger, link, c);
            }
        }
        true
    }

    /// Stores a command's outcome and publishes it.
    async fn finish(&mut self, f: Finished) {
        let Finished { wire_id, outcome } = f;
        let json = serde_json::to_string(&outcome).expect("outcome serializes");
        let id = i64::from(wire_id);
        let mut stored = true;
        if let Err(e) = self
            .store
            .exec(move |c| {
                c.execute(
                    "UPDATE commands SET done = 1, outcome = ?2 WHERE id = ?1",
                    params![id, json],
                )
                .map(|_| ())
            })
            .await
        {
            tracing::warn!(error = %e, "Command outcome not stored; publishing it anyway.");
            stored = false;
        }
        tracing::info!(device = %outcome.device, request = %outcome.id, status = ?outcome.status, "Command finished.");
        self.send_outcome(outcome, stored.then_some(id));
    }

    /// Answers a command that is not taken with `rejected` (not stored); its submission is
    /// completed once the broker has the answer, so a crash in between delivers it again.
    fn reject(&self, o: CommandOutcome, completion: Completion) {
        let (tx, rx) = oneshot::channel();
        match self.outcomes.try_send(OutgoingOutcome {
            outcome: o,
            delivered: Some(tx),
        }) {
            Ok(()) => {
                tokio::spawn(async move {
                    if rx.await.is_ok() {
                        completion.done();
                    }
                });
            }
            // Not completed: the broker delivers it again later and it is answered then.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("Outcome queue full; a rejected command is answered when the broker delivers it again.");
            }
            // No uplink (a command from the API): nobody to answer but the API, which did.
            Err(mpsc::error::TrySendError::Closed(_)) => completion.done(),
        }
    }

    /// Hands an outcome to the uplink. For a stored one (`row`), the row is marked published
    /// once the broker acked it; until then a restart publishes it again.
    fn send_outcome(&self, o: CommandOutcome, row: Option<i64>) {
        let delivered = row.map(|id| {
            let (tx, rx) = oneshot::channel::<()>();
            let store = self.store.clone();
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    let marked = store
                        .exec(move |c| {
                            c.execute(
                                "UPDATE commands SET outcome_published = 1 WHERE id = ?1",
                                params![id],
                            )
                            .map(|_| ())
                        })
                        .await;
                    if let Err(e) = marked {
                        tracing::debug!(error = %e, "Outcome delivery not recorded; it may be published again.");
                    }
                }
            });
            tx
        });
        let sent = self.outcomes.try_send(OutgoingOutcome {
            outcome: o,
            delivered,
        });
        match sent {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "Outcome queue full; a stored outcome goes out after the next start."
                );
            }
            // No uplink: outcomes stay stored.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// Hands a command to a device's link (a full link queue keeps it for the next reconnect).
fn write(ledger: &mut Ledger, link: &mpsc::Sender<DeviceCommand>, c: DeviceCommand) {
    let id = c.wire_id;
    if link.try_send(c).is_ok() {
        ledger.written(id);
    }
}

#[cfg(test)]
mod tests;

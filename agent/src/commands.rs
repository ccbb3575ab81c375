//! Device commands: from the MQTT downlink (and later the local API) to a device's link, and
//! their outcomes back.
//!
//! One actor task owns the pending commands. Invariants:
//! - A command is stored (committed through the store writer, table `commands`) before it is sent
//!   to a device, so it survives a restart and waits while the device is offline.
//! - The command id on the wire is the row id; a device executes a repeated id once, so resending
//!   pending commands on every (re)connect is safe.
//! - Each command ends exactly once: with the device's result, or `expired` after its TTL. The
//!   outcome is stored with it; a repeated request id gets the stored outcome again.
//! - Only commands for a device id the link protocol can carry are taken (D3: 1..=32 bytes of
//!   UTF-8 without NUL, [`check_device_id`]): the API refuses others with a 400 naming the id, and
//!   one from MQTT is answered `rejected` on `.../commands/result` with a detail naming the device
//!   id, never stored; its MQTT message is acked once that answer is (as the uplink does for a
//!   malformed request).
//! - Nothing is lost across a crash: the MQTT message of a command is acked ([`crate::uplink::Receipt::done`])
//!   only after the command is stored (until then the broker redelivers it), and an outcome is
//!   marked published only when the broker acked it; unpublished outcomes go out again at start.
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::uplink::{InboundCommand, OutgoingOutcome, Receipt};
use ferry_contract::{
    self as contract, CommandOutcome, CommandSpec, OutcomeStatus, DEFAULT_COMMAND_TTL_S,
};
use ferry_wire::CommandStatus;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::writer::StoreHandle;

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

/// A command for one device link to send.
#[derive(Debug, Clone)]
pub struct DeviceCommand {
    /// Command id on the wire.
    pub wire_id: u32,
    /// What to do.
    pub spec: CommandSpec,
}

enum Req {
    /// A command; `stored` is told whether it is stored (or already known) once that is settled.
    Submit(InboundCommand, Option<oneshot::Sender<bool>>),
    Attach {
        device: String,
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
    /// A new command (already validated).
    pub async fn submit(&self, c: InboundCommand) {
        let _ = self.tx.send(Req::Submit(c, None)).await;
    }

    /// A new command (already validated); true once it is stored (or was already known), false
    /// if it was rejected ([`check_device_id`]), storing failed or the actor is gone.
    pub async fn submit_stored(&self, c: InboundCommand) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Req::Submit(c, Some(tx))).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A device's link after its Hello: pending commands for it are sent there.
    pub async fn attach(&self, device: String, link: mpsc::Sender<DeviceCommand>) {
        let _ = self.tx.send(Req::Attach { device, link }).await;
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

struct Pending {
    device: String,
    request_id: String,
    spec: CommandSpec,
    expires_ms: i64,
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
    let mut pending = BTreeMap::new();
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
                pending.insert(
                    id as u32,
                    Pending {
                        device,
                        request_id,
                        spec,
                        expires_ms,
                    },
                );
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
    let next_id: i64 =
        reader.query_row("SELECT coalesce(max(id), 0) + 1 FROM commands", [], |r| {
            r.get(0)
        })?;
    let (tx, rx) = mpsc::channel(256);
    let actor = Actor {
        reader,
        store,
        outcomes,
        gateway,
        pending,
        links: HashMap::new(),
        next_id,
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
    gateway: String,
    pending: BTreeMap<u32, Pending>,
    links: HashMap<String, mpsc::Sender<DeviceCommand>>,
    next_id: i64,
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
                    Some(Req::Attach { device, link }) => {
                        for (id, p) in &self.pending {
                            if p.device == device {
                                let _ = link.try_send(DeviceCommand { wire_id: *id, spec: p.spec.clone() });
                            }
                        }
                        self.links.insert(device, link);
                    }
                    Some(Req::Result { device, wire_id, status, data }) => {
                        self.finish(wire_id, Some(&device), outcome_status(status), None, (!data.is_empty()).then(|| contract::encode_hex(&data))).await;
                    }
                },
                _ = tick.tick() => {
                    let now = crate::utc_now_ms();
                    let expired: Vec<u32> = self.pending.iter().filter(|(_, p)| p.expires_ms <= now).map(|(id, _)| *id).collect();
                    for id in expired {
                        self.finish(id, None, OutcomeStatus::Expired, Some("the device was not reachable before the command's TTL".into()), None).await;
                    }
                    self.links.retain(|_, l| !l.is_closed());
                }
            }
        }
    }

    /// Stores a new command (acking its MQTT message only then); true once it is safe.
    async fn submit(&mut self, c: InboundCommand) -> bool {
        let InboundCommand {
            device,
            request,
            receipt,
        } = c;
        if let Err(e) = check_device_id(&device) {
            tracing::warn!(device = %device.escape_debug(), request = %request.id, error = %e, "Command rejected: no device can have this id.");
            self.reject(
                device,
                request.id,
                format!("device id (topic level): {e}"),
                receipt,
            );
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
                receipt.done();
                return true;
            }
            Some(None) => {
                receipt.done(); // stored and pending
                return true;
            }
            None => {}
        }
        if self
            .pending
            .values()
            .any(|p| p.device == device && p.request_id == request.id)
        {
            receipt.done();
            return true;
        }
        let id = self.next_id;
        self.next_id += 1;
        let now = crate::utc_now_ms();
        let expires_ms = now + i64::from(request.ttl_s.unwrap_or(DEFAULT_COMMAND_TTL_S)) * 1000;
        let spec_json = serde_json::to_string(&request.command).expect("spec serializes");
        let (d, rid) = (device.clone(), request.id.clone());
        let stored = self
            .store
            .exec(move |c| {
                c.execute(
                    "INSERT INTO commands (id, device_id, request_id, spec, received_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, d, rid, spec_json, now, expires_ms],
                )
                .map(|_| ())
            })
            .await;
        if let Err(e) = stored {
            // Not acked: the broker delivers it again (after a reconnect) and storing is retried.
            tracing::warn!(%device, request = %request.id, error = %e, "Command not stored; leaving it unacked at the broker.");
            drop(receipt);
            return false;
        }
        receipt.done();
        tracing::info!(%device, request = %request.id, wire_id = id, "Command queued for the device.");
        let p = Pending {
            device: device.clone(),
            request_id: request.id,
            spec: request.command,
            expires_ms,
        };
        if let Some(link) = self.links.get(&device) {
            let _ = link.try_send(DeviceCommand {
                wire_id: id as u32,
                spec: p.spec.clone(),
            });
        }
        self.pending.insert(id as u32, p);
        true
    }

    async fn finish(
        &mut self,
        wire_id: u32,
        device: Option<&str>,
        status: OutcomeStatus,
        detail: Option<String>,
        data_hex: Option<String>,
    ) {
        let Some(p) = self.pending.get(&wire_id) else {
            return;
        };
        if device.is_some_and(|d| d != p.device) {
            return;
        }
        let p = self.pending.remove(&wire_id).expect("checked");
        let o = CommandOutcome {
            v: contract::SCHEMA_VERSION,
            id: p.request_id.clone(),
            gateway: self.gateway.clone(),
            device: p.device.clone(),
            status,
            detail,
            data_hex,
            at_ms: crate::utc_now_ms(),
        };
        let json = serde_json::to_string(&o).expect("outcome serializes");
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
        tracing::info!(device = %p.device, request = %p.request_id, ?status, "Command finished.");
        self.send_outcome(o, stored.then_some(id));
    }

    /// Answers a command that is not taken with `rejected` (not stored); its MQTT message is
    /// acked once the broker has the answer, so a crash in between delivers it again.
    fn reject(&self, device: String, request_id: String, detail: String, receipt: Receipt) {
        let o = CommandOutcome {
            v: contract::SCHEMA_VERSION,
            id: request_id,
            gateway: self.gateway.clone(),
            device,
            status: OutcomeStatus::Rejected,
            detail: Some(detail),
            data_hex: None,
            at_ms: crate::utc_now_ms(),
        };
        let (tx, rx) = oneshot::channel();
        match self.outcomes.try_send(OutgoingOutcome {
            outcome: o,
            delivered: Some(tx),
        }) {
            Ok(()) => {
                tokio::spawn(async move {
                    if rx.await.is_ok() {
                        receipt.done();
                    }
                });
            }
            // Unacked: the broker delivers it again later and it is answered then.
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("Outcome queue full; a rejected command is answered when the broker delivers it again.");
            }
            // No uplink (a command from the API): nobody to answer but the API, which did.
            Err(mpsc::error::TrySendError::Closed(_)) => receipt.done(),
        }
    }

    /// Hands an outcome to the uplink. For a stored one (`row`), the row is marked published
    /// once the broker acked it; until then a restart publishes it again.
    fn send_outcome(&self, o: CommandOutcome, row: Option<i64>) {
        let delivered = row.map(|id| {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
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

fn outcome_status(s: CommandStatus) -> OutcomeStatus {
    match s {
        CommandStatus::Ok => OutcomeStatus::Ok,
        CommandStatus::UnknownSensor => OutcomeStatus::UnknownSensor,
        CommandStatus::InvalidArgument => OutcomeStatus::InvalidArgument,
        CommandStatus::Unsupported => OutcomeStatus::Unsupported,
        CommandStatus::Failed => OutcomeStatus::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreSettings;
    use ferry_contract::CommandRequest;

    #[test]
    fn device_ids_the_link_protocol_cannot_carry_are_refused() {
        assert_eq!(check_device_id("sim-0001"), Ok(()));
        assert_eq!(
            check_device_id("a/b+c#d"),
            Ok(()),
            "escaped in topics and URLs"
        );
        assert_eq!(check_device_id(&"x".repeat(32)), Ok(()));
        let e = check_device_id(&"x".repeat(33)).unwrap_err();
        assert!(
            e.starts_with("33 bytes; a device id is 1..=32 bytes"),
            "{e}"
        );
        assert!(check_device_id("").is_err());
        assert_eq!(
            check_device_id("ab\0c").unwrap_err(),
            "NUL at byte 2; a device id never contains U+0000"
        );
        // 32 bytes of UTF-8 pass, 33 do not, whatever the characters.
        assert_eq!(check_device_id(&"é".repeat(16)), Ok(()));
        assert!(check_device_id(&format!("{}x", "é".repeat(16))).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_for_an_impossible_device_id_is_answered_rejected_and_not_stored() {
        let dir = std::env::temp_dir().join(format!("ferry-commands-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = StoreSettings::for_test(dir.join("c.db"));
        let conn = crate::store::open_writer(&settings).unwrap();
        let spawned = crate::store::writer::spawn(
            conn,
            settings.clone(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        spawned.ready.await.unwrap().unwrap();
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let (handle, task) = spawn(
            crate::store::open_reader(&settings.path).unwrap(),
            spawned.handle.clone(),
            out_tx,
            "gw".into(),
            stop.clone(),
        )
        .await
        .unwrap();
        let request = |id: &str| {
            CommandRequest::decode(
                format!(r#"{{"v":1,"id":"{id}","command":{{"identify":{{"duration_ms":5}}}}}}"#)
                    .as_bytes(),
            )
            .unwrap()
        };
        for (device, says) in [
            ("d".repeat(33), "33 bytes"),
            ("a\0b".to_owned(), "NUL at byte 1"),
        ] {
            let stored = handle
                .submit_stored(InboundCommand {
                    device: device.clone(),
                    request: request("r-1"),
                    receipt: Receipt::none(),
                })
                .await;
            assert!(!stored);
            let o = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(o.outcome.status, OutcomeStatus::Rejected);
            assert_eq!(
                (o.outcome.device.as_str(), o.outcome.id.as_str()),
                (device.as_str(), "r-1")
            );
            let detail = o.outcome.detail.unwrap();
            assert!(
                detail.starts_with("device id (topic level): ") && detail.contains(says),
                "{detail}"
            );
            assert!(o.delivered.is_some(), "acked at the broker once answered");
        }
        // A valid id is stored as before.
        assert!(
            handle
                .submit_stored(InboundCommand {
                    device: "d".repeat(32),
                    request: request("r-2"),
                    receipt: Receipt::none(),
                })
                .await
        );
        let rows: Vec<String> = crate::store::open_reader(&settings.path)
            .unwrap()
            .prepare("SELECT device_id FROM commands")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows, vec!["d".repeat(32)]);
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

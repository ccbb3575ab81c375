//! The agent's side of forwarding: the store as the uplink's [`EventSource`].
//!
//! Reads go through this module's own read-only connection (never blocking ingest); the
//! forwarding position and quarantined messages are written by the store's single writer (via
//! [`StoreHandle`]), in its transactions. The position rows live in `forward_cursor`:
//! `uplink` (every id up to it is forwarded; retention prunes only up to here),
//! `uplink.live_from` and `uplink.live` (a live range forwarded ahead of a draining backlog).
use std::collections::HashMap;

use crate::uplink::forward::Progress;
use crate::uplink::{EventSource, SourceError, StoredEvent};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::store::writer::{Op, StoreHandle};

/// The store, as the uplink sees it.
pub struct StoreSource {
    conn: Connection,
    store: StoreHandle,
    rt: tokio::runtime::Handle,
    names: Names,
}

/// One `events` row: id, device key, boot number, seq, sensor index, ts_ms, value.
pub type EventRow = (i64, i64, i64, i64, i64, i64, f64);

/// An [`EventRow`] from `SELECT id, device, boot_no, seq, sensor, ts_ms, value`.
pub fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        crate::store::rollup::reading(r, 6)?,
    ))
}

/// Device ids, boot ids and sensor names by their keys, read once and again whenever a row names
/// a key not seen yet (a new device, boot or sensor).
#[derive(Debug, Default)]
pub struct Names {
    devices: HashMap<i64, String>,
    boots: HashMap<(i64, i64), u32>,
    sensors: HashMap<(i64, i64), String>,
}

impl Names {
    fn reload(&mut self, c: &Connection) -> Result<(), SourceError> {
        self.devices = c
            .prepare("SELECT id, device_id FROM devices")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(err)?;
        self.boots = c
            .prepare("SELECT device, boot_no, boot_id FROM boots")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u32))
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(err)?;
        self.sensors = c
            .prepare("SELECT device, idx, name FROM sensors")
            .and_then(|mut s| {
                s.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?
                    .collect::<Result<_, _>>()
            })
            .map_err(err)?;
        Ok(())
    }

    /// `rows` with their names, in the same order.
    pub fn events(
        &mut self,
        c: &Connection,
        rows: Vec<EventRow>,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let mut out = Vec::with_capacity(rows.len());
        for (id, device, boot_no, seq, sensor, ts_ms, value) in rows {
            let known = self.devices.contains_key(&device)
                && self.boots.contains_key(&(device, boot_no))
                && self.sensors.contains_key(&(device, sensor));
            if !known {
                self.reload(c)?;
            }
            out.push(StoredEvent {
                id,
                device: self
                    .devices
                    .get(&device)
                    .cloned()
                    .unwrap_or_else(|| format!("device-{device}")),
                boot: boot_no as u32,
                boot_id: self.boots.get(&(device, boot_no)).copied().unwrap_or(0),
                seq: seq as u32,
                sensor: self
                    .sensors
                    .get(&(device, sensor))
                    .cloned()
                    .unwrap_or_else(|| format!("sensor{sensor}")),
                ts_ms,
                value,
            });
        }
        Ok(out)
    }
}

fn err(e: impl std::fmt::Display) -> SourceError {
    SourceError(e.to_string())
}

impl StoreSource {
    /// A source reading through `conn` (read-only) and writing through `store`. Must be created
    /// inside the runtime whose writer handle it uses.
    pub fn new(conn: Connection, store: StoreHandle) -> StoreSource {
        StoreSource {
            conn,
            store,
            rt: tokio::runtime::Handle::current(),
            names: Names::default(),
        }
    }

    fn write(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), crate::store::StoreError>>) -> Op,
    ) -> Result<(), SourceError> {
        let (reply, rx) = oneshot::channel();
        let store = self.store.clone();
        self.rt.block_on(async move {
            store.send(op(reply)).await.map_err(err)?;
            rx.await.map_err(err)?.map_err(err)
        })
    }
}

impl EventSource for StoreSource {
    fn head(&mut self) -> Result<i64, SourceError> {
        let tail = self.store.tail();
        crate::store::tail::read_with_tail(&self.conn, Some(&tail), |c, t| {
            crate::store::query::max_event_id(c, t)
        })
        .map_err(err)
    }

    fn read(
        &mut self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SourceError> {
        let tail = self.store.tail();
        // The database's rows first, then the tail's (whose ids are all above them).
        let rows: Vec<EventRow> =
            crate::store::tail::read_with_tail(&self.conn, Some(&tail), |c, t| {
                let mut rows: Vec<EventRow> = c
                    .prepare_cached(
                        "SELECT id, device, boot_no, seq, sensor, ts_ms, value FROM events
                         WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                    )?
                    .query_map(params![after, upto, limit as i64], event_row)?
                    .collect::<Result<_, _>>()
                    .map_err(crate::store::StoreError::from)?;
                let room = limit.saturating_sub(rows.len());
                rows.extend(t.between(after, upto).take(room).map(|r| {
                    (
                        r.id,
                        r.device,
                        r.boot_no,
                        i64::from(r.seq),
                        i64::from(r.sensor),
                        r.ts_ms,
                        f64::from(r.value),
                    )
                }));
                Ok::<_, crate::store::StoreError>(rows)
            })
            .map_err(err)?;
        self.names.events(&self.conn, rows)
    }

    fn load_progress(&mut self) -> Result<Progress, SourceError> {
        let get = |name: &str| -> Result<Option<i64>, SourceError> {
            self.conn
                .query_row(
                    "SELECT event_id FROM forward_cursor WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(err)
        };
        let backlog = get("uplink")?.unwrap_or(0);
        let live_from = get("uplink.live_from")?.unwrap_or(backlog);
        let live = get("uplink.live")?.unwrap_or(live_from);
        Ok(Progress {
            backlog,
            live_from,
            live,
        }
        .sanitized())
    }

    fn save_progress(&mut self, p: Progress) -> Result<(), SourceError> {
        self.write(|reply| Op::UplinkProgress {
            backlog: p.backlog,
            live_from: p.live_from,
            live: p.live,
            reply,
        })
    }

    fn quarantine(&mut self, topic: &str, reason: &str, payload: &[u8]) -> Result<(), SourceError> {
        let op = Op::Quarantine {
            link: format!("uplink {topic}"),
            reason: format!("uplink: {reason}").into(),
            len: payload.len(),
            raw: payload[..payload.len().min(4096)].to_vec(),
        };
        let store = self.store.clone();
        self.rt.block_on(store.send(op)).map_err(err)?;
        // Make it durable before the message counts as handled.
        let store = self.store.clone();
        self.rt.block_on(store.sync()).map_err(err)
    }
}

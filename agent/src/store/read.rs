//! Read-only queries on their own connections (WAL readers never block the writer).

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use super::StoreError;

/// One row of `ferry devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Online now.
    pub online: bool,
    /// Last frame, UTC ms.
    pub last_seen_ms: i64,
    /// Firmware version.
    pub firmware: String,
    /// Current boot id.
    pub boot_id: Option<u32>,
    /// Boots seen.
    pub boots: i64,
    /// Events stored.
    pub events: i64,
    /// Ring drops the device reported (current boot).
    pub dropped: i64,
    /// Samples held unacked at the device (last heartbeat).
    pub ring_depth: i64,
    /// Link it is (or was last) on.
    pub link: String,
}

/// Every device, by id.
pub fn devices(conn: &Connection) -> Result<Vec<DeviceRow>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT d.device_id, d.online, d.last_seen_ms, d.firmware,
                (SELECT boot_id FROM boots b WHERE b.device = d.id AND b.boot_no = d.boot_no),
                (SELECT count(*) FROM boots b WHERE b.device = d.id),
                (SELECT count(*) FROM events e WHERE e.device = d.id),
                d.dropped, d.ring_depth, d.link
           FROM devices d ORDER BY d.device_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(DeviceRow {
            device_id: r.get(0)?,
            online: r.get(1)?,
            last_seen_ms: r.get(2)?,
            firmware: r.get(3)?,
            boot_id: r.get(4)?,
            boots: r.get(5)?,
            events: r.get(6)?,
            dropped: r.get(7)?,
            ring_depth: r.get(8)?,
            link: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Committed position per `(device_id, boot_id)`: every seq below it is stored or was dropped by
/// the device (`boots.next_seq`).
pub fn boot_positions(conn: &Connection) -> Result<HashMap<(String, u32), u32>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT d.device_id, b.boot_id, b.next_seq FROM boots b JOIN devices d ON d.id = b.device",
    )?;
    let rows = st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every stored `(boot_id, seq)` of a device, in store order.
pub fn event_keys(conn: &Connection, device_id: &str) -> Result<Vec<(u32, u32)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT b.boot_id, e.seq FROM events e
           JOIN devices d ON d.id = e.device
           JOIN boots b ON b.device = e.device AND b.boot_no = e.boot_no
          WHERE d.device_id = ?1 ORDER BY e.id",
    )?;
    let rows = st.query_map([device_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Quarantined frames by reason.
pub fn quarantine_counts(conn: &Connection) -> Result<HashMap<String, i64>, StoreError> {
    let mut st = conn.prepare_cached("SELECT reason, count(*) FROM quarantine GROUP BY reason")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Total events stored.
pub fn event_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM events")?
        .query_row([], |r| r.get(0))?)
}

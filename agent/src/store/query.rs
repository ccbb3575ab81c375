//! The local API's reads: SQL over a read-only connection, returning plain rows.
//!
//! Invariants:
//! - Every query is bounded: pages by `LIMIT`, store-order scans by an id budget per call
//!   ([`SCAN_BUDGET`]), series by the caller's bucket limit. No query reads the whole table.
//! - Keyset pagination: a page ends at a row key (`(ts_ms, id)` per device, `id` in store order);
//!   the next page starts strictly after it, so pages never repeat or skip a row, whatever is
//!   inserted meanwhile.
//! - Reads never take the writer's lock (WAL readers); each call is one snapshot.
//! - The hot statements are public (`DEVICE_KEY_SQL`, `devices_sql`, ...), so the API bench plans
//!   exactly what runs here.

use std::collections::HashMap;

use crate::store::tail::{TailRow, TailView};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::StoreError;

/// Most ids one store-order call looks at; a page may come back short (with a cursor) at this bound.
pub const SCAN_BUDGET: i64 = 200_000;
/// Per-device forwarding figures are computed only while the backlog is at most this many events.
pub const FORWARDING_DETAIL_MAX: i64 = 200_000;

// The statements of the hot reads, public so the API bench plans exactly what runs here. Where a
// read takes one device or all, each shape has its own statement: `?1 IS NULL OR ...` would keep
// SQLite off the unique index.

/// [`device_key`]: `?1` the device id.
pub const DEVICE_KEY_SQL: &str = "SELECT id FROM devices WHERE device_id = ?1";

/// [`devices`]: one device (`?1` its id) or every device (`?1` NULL).
pub fn devices_sql(one: bool) -> String {
    format!(
        "SELECT d.id, d.device_id, d.online, d.last_seen_ms, d.firmware, b.boot_id,
                (SELECT count(*) FROM boots c WHERE c.device = d.id),
                d.link, d.events_total, d.dropped, d.ring_depth, d.read_errors
           FROM devices d LEFT JOIN boots b ON b.device = d.id AND b.boot_no = d.boot_no
          {}
          ORDER BY d.device_id",
        device_filter(one)
    )
}

/// The sensors [`devices`] attaches: one device's (`?1` its key) or every device's (`?1` NULL).
pub fn sensors_sql(one: bool) -> &'static str {
    if one {
        "SELECT device, idx, name, unit, interval_ms FROM sensors WHERE device = ?1 ORDER BY idx"
    } else {
        "SELECT device, idx, name, unit, interval_ms FROM sensors WHERE ?1 IS NULL ORDER BY device, idx"
    }
}

/// [`latest`]: one device (`?1` its id) or every device (`?1` NULL).
pub fn latest_sql(one: bool) -> String {
    format!(
        "SELECT d.device_id, coalesce(s.name, 'sensor' || l.sensor), coalesce(s.unit, ''),
                l.value, l.ts_ms, l.event_id, l.sensor
           FROM latest l JOIN devices d ON d.id = l.device
           LEFT JOIN sensors s ON s.device = l.device AND s.idx = l.sensor
          {}
          ORDER BY d.device_id, l.sensor",
        device_filter(one)
    )
}

fn device_filter(one: bool) -> &'static str {
    if one {
        "WHERE d.device_id = ?1"
    } else {
        "WHERE ?1 IS NULL"
    }
}

/// [`device_events`]: `?1` device key, `?2..?3` time range, `?4, ?5` the previous page's last
/// `(ts_ms, id)`, `?6` sensor name or NULL, `?7` limit.
pub fn device_events_sql() -> String {
    format!(
        "{SELECT_EVENT}
          WHERE e.device = ?1 AND e.ts_ms >= ?2 AND e.ts_ms < ?3
            AND e.ts_ms >= ?4 AND (e.ts_ms > ?4 OR e.id > ?5)
            AND (?6 IS NULL OR s.name = ?6)
          ORDER BY e.ts_ms, e.id LIMIT ?7"
    )
}

/// A device as the API shows it (times in Unix ms; the API adds RFC 3339).
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// `devices.id` (internal).
    pub key: i64,
    /// Device id.
    pub id: String,
    /// Online now.
    pub online: bool,
    /// Last frame.
    pub last_seen_ms: i64,
    /// Firmware.
    pub firmware: String,
    /// Current boot id.
    pub boot_id: Option<u32>,
    /// Boots seen.
    pub boots: i64,
    /// Link name.
    pub link: String,
    /// Events ever stored.
    pub events: i64,
    /// Ring drops reported (current boot).
    pub dropped_by_device: i64,
    /// Unacked samples at the device.
    pub ring_depth: i64,
    /// Sensor read errors reported.
    pub read_errors: i64,
    /// Sensors from the Hello.
    pub sensors: Vec<SensorInfo>,
    /// Events not yet forwarded and the oldest one's time; `None` when not computed.
    pub unforwarded: Option<(i64, Option<i64>)>,
}

/// A sensor of a device.
#[derive(Debug, Clone)]
pub struct SensorInfo {
    /// Index in the Hello.
    pub index: u8,
    /// Name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Sampling interval.
    pub interval_ms: i64,
}

/// One stored event, with names resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// `events.id` (store order).
    pub id: i64,
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot_id: u32,
    /// Sequence number in the boot.
    pub seq: u32,
    /// Sensor name.
    pub sensor: String,
    /// Unit.
    pub unit: String,
    /// Value.
    pub value: f64,
    /// UTC ms.
    pub ts_ms: i64,
}

/// The newest value of one sensor.
#[derive(Debug, Clone)]
pub struct LatestValue {
    /// Sensor name.
    pub sensor: String,
    /// Unit.
    pub unit: String,
    /// Value.
    pub value: f64,
    /// UTC ms.
    pub ts_ms: i64,
    /// Its `events.id`.
    pub event_id: i64,
    /// The sensor's index.
    pub sensor_index: u8,
}

/// The uplink's saved position (see `forward.rs`): ids `<= backlog` and in `(live_from, live]` are
/// forwarded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardPosition {
    /// Forwarded through.
    pub backlog: i64,
    /// Live range start (exclusive).
    pub live_from: i64,
    /// Live range end (inclusive).
    pub live: i64,
}

impl ForwardPosition {
    /// Reads the saved position.
    pub fn read(conn: &Connection) -> Result<ForwardPosition, StoreError> {
        let get = |name: &str| -> Result<i64, StoreError> {
            Ok(conn
                .prepare_cached("SELECT event_id FROM forward_cursor WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?
                .unwrap_or(0))
        };
        Ok(ForwardPosition {
            backlog: get("uplink")?,
            live_from: get("uplink.live_from")?,
            live: get("uplink.live")?,
        })
    }

    fn live_range(&self) -> Option<(i64, i64)> {
        (self.live > self.live_from && self.live > self.backlog)
            .then_some((self.live_from.max(self.backlog), self.live))
    }
}

/// The oldest unforwarded event: `(id, ts_ms)`.
pub fn oldest_unforwarded(
    conn: &Connection,
    tail: &TailView,
    pos: ForwardPosition,
) -> Result<Option<(i64, i64)>, StoreError> {
    let first_after = |id: i64| -> Result<Option<(i64, i64)>, StoreError> {
        let stored: Option<(i64, i64)> = conn
            .prepare_cached("SELECT id, ts_ms FROM events WHERE id > ?1 ORDER BY id LIMIT 1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        // The tail's ids are all above the database's.
        Ok(stored.or_else(|| tail.rows().find(|r| r.id > id).map(|r| (r.id, r.ts_ms))))
    };
    let first = first_after(pos.backlog)?;
    match (first, pos.live_range()) {
        (Some((id, _)), Some((from, to))) if id > from && id <= to => first_after(to),
        (f, _) => Ok(f),
    }
}

/// Highest stored id (0 when empty).
pub fn max_event_id(conn: &Connection, tail: &TailView) -> Result<i64, StoreError> {
    let stored: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) FROM events")?
        .query_row([], |r| r.get(0))?;
    Ok(tail.max_id().map_or(stored, |t| t.max(stored)))
}

/// Devices, by id; one device with `only`. `forwarding`: the uplink position, when forwarding is on.
pub fn devices(
    conn: &Connection,
    tail: &TailView,
    only: Option<&str>,
    forwarding: Option<ForwardPosition>,
) -> Result<Vec<DeviceInfo>, StoreError> {
    let mut st = conn.prepare_cached(&devices_sql(only.is_some()))?;
    let mut out: Vec<DeviceInfo> = st
        .query_map([only], |r| {
            Ok(DeviceInfo {
                key: r.get(0)?,
                id: r.get(1)?,
                online: r.get(2)?,
                last_seen_ms: r.get(3)?,
                firmware: r.get(4)?,
                boot_id: r.get::<_, Option<i64>>(5)?.map(|b| b as u32),
                boots: r.get(6)?,
                link: r.get(7)?,
                events: r.get(8)?,
                dropped_by_device: r.get(9)?,
                ring_depth: r.get(10)?,
                read_errors: r.get(11)?,
                sensors: Vec::new(),
                unforwarded: None,
            })
        })?
        .collect::<Result<_, _>>()?;
    let index: HashMap<i64, usize> = out.iter().enumerate().map(|(i, d)| (d.key, i)).collect();
    // Samples of the tail are counted in `events_total` when they reach the database; so are
    // heartbeats.
    let rows: Box<dyn Iterator<Item = &TailRow>> = match (only, out.first()) {
        (Some(_), Some(d)) => Box::new(tail.device_rows(d.key)),
        _ => Box::new(tail.rows()),
    };
    for r in rows {
        if let Some(&i) = index.get(&r.device) {
            out[i].events += 1;
            out[i].last_seen_ms = out[i].last_seen_ms.max(r.ts_ms);
        }
    }
    for d in &mut out {
        if let Some(h) = tail.heard(d.key) {
            d.last_seen_ms = d.last_seen_ms.max(h.at_ms);
            d.dropped_by_device = h.dropped.into();
            d.ring_depth = h.ring_depth.into();
            d.read_errors = h.read_errors.into();
        }
    }
    let one = match (only, out.first()) {
        (Some(_), Some(d)) => Some(d.key),
        (Some(_), None) => return Ok(out),
        _ => None,
    };
    let mut st = conn.prepare_cached(sensors_sql(one.is_some()))?;
    let mut rows = st.query([one])?;
    while let Some(r) = rows.next()? {
        if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
            out[i].sensors.push(SensorInfo {
                index: r.get::<_, i64>(1)? as u8,
                name: r.get(2)?,
                unit: r.get(3)?,
                interval_ms: r.get(4)?,
            });
        }
    }
    if let Some(pos) = forwarding {
        if max_event_id(conn, tail)? - pos.backlog <= FORWARDING_DETAIL_MAX {
            for d in &mut out {
                d.unforwarded = Some((0, None));
            }
            let (lf, l) = pos.live_range().unwrap_or((0, 0));
            let mut st = conn.prepare_cached(
                "SELECT device, count(*), min(ts_ms) FROM events
                  WHERE id > ?1 AND NOT (id > ?2 AND id <= ?3) GROUP BY device",
            )?;
            let mut rows = st.query(params![pos.backlog, lf, l])?;
            while let Some(r) = rows.next()? {
                if let Some(&i) = index.get(&r.get::<_, i64>(0)?) {
                    out[i].unforwarded = Some((r.get(1)?, r.get(2)?));
                }
            }
            for r in tail.rows() {
                if r.id <= pos.backlog || (r.id > lf && r.id <= l) {
                    continue;
                }
                if let Some(&i) = index.get(&r.device) {
                    let (n, oldest) = out[i].unforwarded.get_or_insert((0, None));
                    *n += 1;
                    *oldest = Some(oldest.map_or(r.ts_ms, |o| o.min(r.ts_ms)));
                }
            }
        }
    }
    Ok(out)
}

/// Latest value per sensor, per device (`only`: one device).
pub fn latest(
    conn: &Connection,
    tail: &TailView,
    only: Option<&str>,
) -> Result<Vec<(String, Vec<LatestValue>)>, StoreError> {
    let newer = newest_in_tail(conn, tail, only)?;
    let mut st = conn.prepare_cached(&latest_sql(only.is_some()))?;
    let mut out: Vec<(String, Vec<LatestValue>)> = Vec::new();
    let mut rows = st.query([only])?;
    while let Some(r) = rows.next()? {
        let device: String = r.get(0)?;
        let v = LatestValue {
            sensor: r.get(1)?,
            unit: r.get(2)?,
            value: super::rollup::reading(r, 3)?,
            ts_ms: r.get(4)?,
            event_id: r.get(5)?,
            sensor_index: r.get::<_, i64>(6)? as u8,
        };
        match out.last_mut() {
            Some((d, vs)) if *d == device => vs.push(v),
            _ => out.push((device, vec![v])),
        }
    }
    if !newer.is_empty() {
        merge_latest(&mut out, newer);
    }
    Ok(out)
}

/// The newest tail sample per `(device id, sensor name)`, named like `latest_sql` names them.
fn newest_in_tail(
    conn: &Connection,
    tail: &TailView,
    only: Option<&str>,
) -> Result<Vec<(String, LatestValue)>, StoreError> {
    let mut newest: HashMap<(i64, u8), &TailRow> = HashMap::new();
    let one: Option<i64> = match only {
        Some(o) => match conn
            .prepare_cached("SELECT id FROM devices WHERE device_id = ?1")?
            .query_row([o], |r| r.get(0))
            .optional()?
        {
            Some(key) => Some(key),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let rows: Box<dyn Iterator<Item = &TailRow>> = match one {
        Some(key) => Box::new(tail.device_rows(key)),
        None => Box::new(tail.rows()),
    };
    for r in rows {
        let e = newest.entry((r.device, r.sensor)).or_insert(r);
        if r.ts_ms >= e.ts_ms {
            *e = r;
        }
    }
    let mut names = Names::new(conn);
    let mut out = Vec::new();
    for r in newest.into_values() {
        let Some(device) = names.device(r.device)? else {
            continue;
        };
        if only.is_some_and(|o| o != device) {
            continue;
        }
        let (sensor, unit) = names
            .sensor(r.device, r.sensor)?
            .unwrap_or_else(|| (format!("sensor{}", r.sensor), String::new()));
        out.push((
            device,
            LatestValue {
                sensor,
                unit,
                value: f64::from(r.value),
                ts_ms: r.ts_ms,
                event_id: r.id,
                sensor_index: r.sensor,
            },
        ));
    }
    Ok(out)
}

/// Puts tail values over the stored ones where they are at least as new, in the order
/// `latest_sql` gives (device id, then sensor index).
fn merge_latest(out: &mut Vec<(String, Vec<LatestValue>)>, newer: Vec<(String, LatestValue)>) {
    for (device, v) in newer {
        let pos = match out.iter().position(|(d, _)| *d == device) {
            Some(p) => p,
            None => {
                out.push((device, Vec::new()));
                out.len() - 1
            }
        };
        let vs = &mut out[pos].1;
        match vs.iter_mut().find(|x| x.sensor_index == v.sensor_index) {
            Some(x) if v.ts_ms >= x.ts_ms => *x = v,
            Some(_) => {}
            None => vs.push(v),
        }
        vs.sort_by_key(|x| x.sensor_index);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
}

/// Names of tail samples (what the events queries join), read from the same snapshot, cached.
struct Names<'c> {
    c: &'c Connection,
    devices: HashMap<i64, Option<String>>,
    boots: HashMap<(i64, i64), Option<u32>>,
    sensors: HashMap<(i64, u8), Option<(String, String)>>,
}

impl<'c> Names<'c> {
    fn new(c: &'c Connection) -> Self {
        Names {
            c,
            devices: HashMap::new(),
            boots: HashMap::new(),
            sensors: HashMap::new(),
        }
    }

    fn device(&mut self, key: i64) -> Result<Option<String>, StoreError> {
        if !self.devices.contains_key(&key) {
            let id: Option<String> = self
                .c
                .prepare_cached("SELECT device_id FROM devices WHERE id = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            self.devices.insert(key, id);
        }
        Ok(self.devices[&key].clone())
    }

    fn boot_id(&mut self, device: i64, boot_no: i64) -> Result<Option<u32>, StoreError> {
        if !self.boots.contains_key(&(device, boot_no)) {
            let id: Option<i64> = self
                .c
                .prepare_cached("SELECT boot_id FROM boots WHERE device = ?1 AND boot_no = ?2")?
                .query_row([device, boot_no], |r| r.get(0))
                .optional()?;
            self.boots.insert((device, boot_no), id.map(|b| b as u32));
        }
        Ok(self.boots[&(device, boot_no)])
    }

    /// `(name, unit)` from the device's sensor table, if it declares the sensor.
    fn sensor(&mut self, device: i64, idx: u8) -> Result<Option<(String, String)>, StoreError> {
        if !self.sensors.contains_key(&(device, idx)) {
            let s: Option<(String, String)> = self
                .c
                .prepare_cached("SELECT name, unit FROM sensors WHERE device = ?1 AND idx = ?2")?
                .query_row(params![device, idx], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            self.sensors.insert((device, idx), s);
        }
        Ok(self.sensors[&(device, idx)].clone())
    }

    /// A tail sample as the events queries return it, if it passes `f`'s sensor filter (`None`
    /// also when its device or boot is unknown, as the queries' inner joins drop such rows).
    fn event(
        &mut self,
        r: &TailRow,
        sensor_filter: Option<&str>,
    ) -> Result<Option<EventRow>, StoreError> {
        let Some(device) = self.device(r.device)? else {
            return Ok(None);
        };
        let Some(boot_id) = self.boot_id(r.device, r.boot_no)? else {
            return Ok(None);
        };
        let declared = self.sensor(r.device, r.sensor)?;
        if let Some(want) = sensor_filter {
            if declared.as_ref().is_none_or(|(n, _)| n != want) {
                return Ok(None);
            }
        }
        let (sensor, unit) =
            declared.unwrap_or_else(|| (format!("sensor{}", r.sensor), String::new()));
        Ok(Some(EventRow {
            id: r.id,
            device,
            boot_id,
            seq: r.seq,
            sensor,
            unit,
            value: f64::from(r.value),
            ts_ms: r.ts_ms,
        }))
    }
}

/// `devices.id` of a device id.
pub fn device_key(conn: &Connection, device: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(DEVICE_KEY_SQL)?
        .query_row([device], |r| r.get(0))
        .optional()?)
}

/// Index and unit of a sensor name on a device.
pub fn sensor(
    conn: &Connection,
    device: i64,
    name: &str,
) -> Result<Option<(u8, String)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT idx, unit FROM sensors WHERE device = ?1 AND name = ?2")?
        .query_row(params![device, name], |r| {
            Ok((r.get::<_, i64>(0)? as u8, r.get(1)?))
        })
        .optional()?)
}

/// What to select.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `devices.id`.
    pub device: Option<i64>,
    /// Sensor name.
    pub sensor: Option<String>,
    /// Inclusive lower time bound.
    pub since_ms: Option<i64>,
    /// Exclusive upper time bound.
    pub until_ms: Option<i64>,
}

/// The columns of an [`EventRow`], for every events query.
const SELECT_EVENT: &str = "SELECT e.id, d.device_id, b.boot_id, e.seq,
        coalesce(s.name, 'sensor' || e.sensor), coalesce(s.unit, ''), e.value, e.ts_ms
   FROM events e
   JOIN devices d ON d.id = e.device
   JOIN boots b ON b.device = e.device AND b.boot_no = e.boot_no
   LEFT JOIN sensors s ON s.device = e.device AND s.idx = e.sensor";

fn event_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        device: r.get(1)?,
        boot_id: r.get::<_, i64>(2)? as u32,
        seq: r.get::<_, i64>(3)? as u32,
        sensor: r.get(4)?,
        unit: r.get(5)?,
        value: super::rollup::reading(r, 6)?,
        ts_ms: r.get(7)?,
    })
}

/// One device's events in `(ts_ms, id)` order, strictly after `after` (a previous page's last
/// key), at most `limit`.
pub fn device_events(
    conn: &Connection,
    tail: &TailView,
    f: &EventFilter,
    after: Option<(i64, i64)>,
    limit: usize,
) -> Result<Vec<EventRow>, StoreError> {
    let device = f.device.unwrap_or(-1);
    let since = f.since_ms.unwrap_or(i64::MIN);
    let (after_ts, after_id) = after.unwrap_or((i64::MIN, i64::MIN));
    let mut st = conn.prepare_cached(&device_events_sql())?;
    let rows = st.query_map(
        params![
            device,
            since,
            f.until_ms.unwrap_or(i64::MAX),
            after_ts,
            after_id,
            f.sensor,
            limit as i64
        ],
        event_row,
    )?;
    let stored: Vec<EventRow> = rows.collect::<Result<_, _>>()?;
    let until = f.until_ms.unwrap_or(i64::MAX);
    let mut names = Names::new(conn);
    // Only the tail's rows that can be among the first `limit` are named (most of a busy tail is
    // not, and naming a row allocates): in key order, until `limit` passed the sensor filter or
    // a full page of stored rows comes first.
    let mut candidates: Vec<&TailRow> = tail
        .device_rows(device)
        .filter(|r| r.ts_ms >= since && r.ts_ms < until && (r.ts_ms, r.id) > (after_ts, after_id))
        .collect();
    if candidates.is_empty() {
        return Ok(stored);
    }
    candidates.sort_unstable_by_key(|r| (r.ts_ms, r.id));
    let full_page_ends = (stored.len() == limit)
        .then(|| stored.last().map(|e| (e.ts_ms, e.id)))
        .flatten();
    let mut newer = Vec::new();
    for r in candidates {
        if newer.len() == limit || full_page_ends.is_some_and(|k| (r.ts_ms, r.id) > k) {
            break;
        }
        if let Some(e) = names.event(r, f.sensor.as_deref())? {
            newer.push(e);
        }
    }
    if newer.is_empty() {
        return Ok(stored);
    }
    let mut all = stored;
    all.extend(newer);
    all.sort_by_key(|e| (e.ts_ms, e.id));
    all.truncate(limit);
    Ok(all)
}

/// Events in store (id) order with ids in `(after, upto]`, matching `f`, at most `limit`, looking
/// at no more than [`SCAN_BUDGET`] ids. Returns the rows and the id the scan reached: the next
/// call continues after it (rows may be fewer than `limit` before `upto` is reached).
pub fn events_by_id(
    conn: &Connection,
    tail: &TailView,
    f: &EventFilter,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<(Vec<EventRow>, i64), StoreError> {
    let sql = format!(
        "{SELECT_EVENT}
          WHERE e.id > ?1 AND e.id <= ?2
            AND (?3 IS NULL OR e.device = ?3)
            AND e.ts_ms >= ?4 AND e.ts_ms < ?5
            AND (?6 IS NULL OR s.name = ?6)
          ORDER BY e.id LIMIT ?7"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let end = upto.min(after.saturating_add(SCAN_BUDGET));
    let rows: Vec<EventRow> = st
        .query_map(
            params![
                after,
                end,
                f.device,
                f.since_ms.unwrap_or(i64::MIN),
                f.until_ms.unwrap_or(i64::MAX),
                f.sensor,
                limit as i64
            ],
            event_row,
        )?
        .collect::<Result<_, _>>()?;
    // The tail's ids are above every stored one: they follow the stored rows.
    let mut rows = rows;
    if rows.len() < limit {
        let (since, until) = (
            f.since_ms.unwrap_or(i64::MIN),
            f.until_ms.unwrap_or(i64::MAX),
        );
        let mut names = Names::new(conn);
        for r in tail.between(after, end) {
            if rows.len() == limit {
                break;
            }
            if f.device.is_some_and(|d| d != r.device) || r.ts_ms < since || r.ts_ms >= until {
                continue;
            }
            if let Some(e) = names.event(r, f.sensor.as_deref())? {
                rows.push(e);
            }
        }
    }
    let reached = if rows.len() == limit {
        rows.last().map_or(end, |r| r.id)
    } else {
        end
    };
    Ok((rows, reached))
}

/// How a series bucket is summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Number of events.
    Count,
    /// Value of the newest event.
    Last,
}

impl Agg {
    /// Every aggregate, in the order help texts list them.
    pub const ALL: [Agg; 5] = [Agg::Avg, Agg::Min, Agg::Max, Agg::Count, Agg::Last];

    /// Parses `avg|min|max|count|last`.
    pub fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "count" => Agg::Count,
            "last" => Agg::Last,
            _ => return None,
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::Last => "last",
        }
    }
}

/// One series point: bucket start (UTC ms), value, events in the bucket.
pub type Point = (i64, f64, i64);

/// Buckets of `bucket_ms` (aligned to the epoch) over `[since, until)` of one sensor, computed in
/// SQL; empty buckets are absent. Fast sensors are read from their ten-second summaries where
/// those are complete ([`super::rollup`]); the result is the same as from the events.
#[allow(clippy::too_many_arguments)]
pub fn series(
    conn: &Connection,
    tail: &TailView,
    device: i64,
    sensor: u8,
    since_ms: i64,
    until_ms: i64,
    bucket_ms: i64,
    agg: Agg,
) -> Result<Vec<Point>, StoreError> {
    // Summaries and events from one snapshot.
    super::read_snapshot(conn, |c| {
        Ok(super::rollup::series(
            c,
            tail,
            (device, sensor),
            (since_ms, until_ms),
            bucket_ms,
            agg,
        )?)
    })
}

/// A stored command: `(done, outcome JSON)`.
pub fn command(
    conn: &Connection,
    device: &str,
    request_id: &str,
) -> Result<Option<(bool, Option<String>)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT done, outcome FROM commands WHERE device_id = ?1 AND request_id = ?2",
        )?
        .query_row(params![device, request_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

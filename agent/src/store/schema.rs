//! Schema migrations, applied in order on `PRAGMA user_version`.
//!
//! Layout decisions (measured, see README "Store"): `events` is a rowid table, so the rowid is the
//! store order and the forwarding cursor is one integer; a single secondary index on
//! `(device, ts_ms)` serves time queries per device. Uniqueness of `(device, boot, seq)` is enforced
//! by the single writer through `boots.next_seq`, updated in the same transaction as the rows (a
//! UNIQUE index would cost a quarter of the ingest rate).

/// Marks a database file as Ferry's (`PRAGMA application_id`, "FERY").
pub const APPLICATION_ID: i64 = 0x4645_5259;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1
    r#"
CREATE TABLE devices (
    id            INTEGER PRIMARY KEY,
    device_id     TEXT    NOT NULL UNIQUE,
    firmware      TEXT    NOT NULL DEFAULT '',
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    online        INTEGER NOT NULL DEFAULT 0,
    link          TEXT    NOT NULL DEFAULT '',
    boot_no       INTEGER NOT NULL DEFAULT 0,   -- current boot (boots.boot_no)
    dropped       INTEGER NOT NULL DEFAULT 0,   -- ring drops reported by the device this boot
    ring_depth    INTEGER NOT NULL DEFAULT 0,
    read_errors   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE boots (
    device      INTEGER NOT NULL REFERENCES devices(id),
    boot_no     INTEGER NOT NULL,               -- 1, 2, 3 ... per device, in order first seen
    boot_id     INTEGER NOT NULL,               -- the device's random boot id
    tick_hz     INTEGER NOT NULL,
    started_ms  INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL DEFAULT 0,     -- every seq below is stored or was dropped by the device
    gap_dropped INTEGER NOT NULL DEFAULT 0,     -- seqs the device dropped before sending them
    PRIMARY KEY (device, boot_no),
    UNIQUE (device, boot_id)
) WITHOUT ROWID;
CREATE TABLE sensors (
    device      INTEGER NOT NULL REFERENCES devices(id),
    idx         INTEGER NOT NULL,
    name        TEXT    NOT NULL,
    unit        TEXT    NOT NULL,
    interval_ms INTEGER NOT NULL,
    PRIMARY KEY (device, idx)
) WITHOUT ROWID;
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,                -- store order; forward_cursor points into it
    device  INTEGER NOT NULL,
    boot_no INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    sensor  INTEGER NOT NULL,
    ts_ms   INTEGER NOT NULL,                   -- UTC, from device ticks
    value   REAL    NOT NULL
);
CREATE INDEX events_device_ts ON events (device, ts_ms);
CREATE TABLE quarantine (
    id     INTEGER PRIMARY KEY,
    at_ms  INTEGER NOT NULL,
    link   TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    len    INTEGER NOT NULL,                    -- bytes in the rejected run
    raw    BLOB    NOT NULL                     -- its first bytes as received
);
CREATE TABLE forward_cursor (
    name     TEXT    PRIMARY KEY,
    event_id INTEGER NOT NULL                   -- events with id <= event_id are forwarded
) WITHOUT ROWID;
CREATE TABLE counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // v2: downlink commands (kept until done or expired; the outcome is kept for repeats)
    r#"
CREATE TABLE commands (
    id          INTEGER PRIMARY KEY,            -- also the command id sent to the device
    device_id   TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,               -- the sender's id, echoed in the outcome
    spec        TEXT    NOT NULL,               -- JSON CommandSpec
    received_ms INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    done        INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT,                           -- JSON CommandOutcome once done
    UNIQUE (device_id, request_id)
);
"#,
    // v3: an outcome is published again after a restart until the broker acked it
    r#"
ALTER TABLE commands ADD COLUMN outcome_published INTEGER NOT NULL DEFAULT 0;
"#,
    // v4: what the local API reads without scanning events: the last value per sensor, and a
    // per-device count of events ever stored (both kept by the writer in each transaction)
    r#"
CREATE TABLE latest (
    device   INTEGER NOT NULL,
    sensor   INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    ts_ms    INTEGER NOT NULL,
    value    REAL    NOT NULL,
    PRIMARY KEY (device, sensor)
) WITHOUT ROWID;
INSERT INTO latest (device, sensor, event_id, ts_ms, value)
    SELECT device, sensor, id, ts_ms, value FROM
        (SELECT device, sensor, id, value, max(ts_ms) AS ts_ms FROM events GROUP BY device, sensor);
ALTER TABLE devices ADD COLUMN events_total INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET events_total = (SELECT count(*) FROM events e WHERE e.device = devices.id);
"#,
    // v5: ten-second summaries of fast sensors for `series` (see store::rollup). Sensors are
    // enabled at their next Hello, from the slot after the newest stored event: nothing to backfill.
    r#"
CREATE TABLE rollup_from (
    device      INTEGER NOT NULL,
    sensor      INTEGER NOT NULL,
    slot        INTEGER NOT NULL,               -- rows of lower slots are never read
    complete_ts INTEGER NOT NULL,               -- W: rows count exactly the events below it
    PRIMARY KEY (device, sensor)
) WITHOUT ROWID;
CREATE TABLE rollup_10s (
    device     INTEGER NOT NULL,
    sensor     INTEGER NOT NULL,
    slot       INTEGER NOT NULL,                -- ts_ms / 10000
    n          INTEGER NOT NULL,
    total      REAL    NOT NULL,
    vmin       REAL    NOT NULL,
    vmax       REAL    NOT NULL,
    first_ts   INTEGER NOT NULL,
    last_ts    INTEGER NOT NULL,
    last_value REAL    NOT NULL,                -- of the newest event (first stored among equals)
    PRIMARY KEY (device, sensor, slot)
) WITHOUT ROWID;
"#,
    // v6: summary rows clustered by slot. Keyed by (device, sensor, slot), every flush rewrote the
    // current slot's row of each summarised sensor, each on a page of its own once a sensor had
    // some history: one page per sensor per flush. By slot first, the rows a flush rewrites share
    // a few pages; the index (device, sensor, slot) for reads gains one entry per sensor per slot.
    r#"
CREATE TABLE rollup_10s_v6 (
    device     INTEGER NOT NULL,
    sensor     INTEGER NOT NULL,
    slot       INTEGER NOT NULL,                -- ts_ms / 10000
    n          INTEGER NOT NULL,
    total      REAL    NOT NULL,
    vmin       REAL    NOT NULL,
    vmax       REAL    NOT NULL,
    first_ts   INTEGER NOT NULL,
    last_ts    INTEGER NOT NULL,
    last_value REAL    NOT NULL,                -- of the newest event (first stored among equals)
    PRIMARY KEY (slot, device, sensor)
) WITHOUT ROWID;
INSERT INTO rollup_10s_v6 SELECT device, sensor, slot, n, total, vmin, vmax, first_ts, last_ts, last_value
    FROM rollup_10s;
DROP TABLE rollup_10s;
ALTER TABLE rollup_10s_v6 RENAME TO rollup_10s;
CREATE INDEX rollup_10s_key ON rollup_10s (device, sensor, slot);
"#,
];

/// Schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

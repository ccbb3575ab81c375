//! Schema migrations, applied in order on `PRAGMA user_version`.
//!
//! Layout decisions (measured, see `docs/decisions/store-layout.md`): `events` is a rowid table,
//! so the rowid is the store order and the forwarding cursor is one integer; a single secondary
//! index on `(device, ts_ms)` serves time queries per device. Uniqueness of `(device, boot, seq)` is enforced
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
    // v7: readings may be NaN. SQLite has no NaN (it binds one as NULL), so a value column holds
    // NULL for a NaN reading: the NOT NULL constraints go. A summary counts its NaN readings
    // (`nans`): `avg` divides by the readings that are numbers. Dropping NOT NULL changes no stored
    // record, so it edits the schema text instead of copying tables (SQLite's "other kinds of table
    // schema changes"); the column is added first, because ADD COLUMN edits the stored text at
    // offsets of the parsed schema. Every REAL column of these tables is a reading.
    r#"
ALTER TABLE rollup_10s ADD COLUMN nans INTEGER NOT NULL DEFAULT 0;
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql, 'REAL    NOT NULL', 'REAL')
 WHERE type = 'table' AND name IN ('events', 'latest', 'rollup_10s');
PRAGMA writable_schema = RESET;
"#,
    // v8: firmware updates (PROTOCOL.md section 9). A bundle is stored once, by its image's SHA-256;
    // a rollout names a bundle and devices; one job per device, whose id is the transfer id on the
    // wire (so it stays below 2^32).
    r#"
CREATE TABLE firmware_bundles (
    sha256     TEXT    NOT NULL PRIMARY KEY,    -- hex SHA-256 of the image
    version    TEXT    NOT NULL,
    board      TEXT    NOT NULL,
    length     INTEGER NOT NULL,
    signature  BLOB    NOT NULL,                -- ed25519, 64 bytes
    public_key BLOB    NOT NULL,                -- the key that signed it, 32 bytes
    image      BLOB    NOT NULL,
    added_ms   INTEGER NOT NULL
);
CREATE TABLE firmware_rollouts (
    id           INTEGER PRIMARY KEY,
    bundle       TEXT    NOT NULL,              -- firmware_bundles.sha256
    targets      TEXT    NOT NULL,              -- JSON: the device ids and globs as requested
    force        INTEGER NOT NULL,
    concurrency  INTEGER NOT NULL,
    max_failures INTEGER NOT NULL,
    state        TEXT    NOT NULL,              -- running | done | stopped | cancelled
    created_ms   INTEGER NOT NULL,
    finished_ms  INTEGER,
    request_id   TEXT    UNIQUE,                -- the MQTT update request's id (NULL from the API)
    result_published INTEGER NOT NULL DEFAULT 0 -- the final result reached the broker
);
CREATE TABLE firmware_jobs (
    id          INTEGER PRIMARY KEY,            -- the transfer id on the wire
    rollout     INTEGER NOT NULL,
    device_id   TEXT    NOT NULL,
    state       TEXT    NOT NULL,               -- queued | transferring | rebooting | done | failed | cancelled
    bytes_done  INTEGER NOT NULL DEFAULT 0,     -- what the device last reported holding
    attempts    INTEGER NOT NULL DEFAULT 0,     -- UpdateBegins sent
    last_error  TEXT,
    updated_ms  INTEGER NOT NULL,
    finished_ms INTEGER
);
CREATE INDEX firmware_jobs_rollout ON firmware_jobs (rollout);
CREATE INDEX firmware_jobs_device ON firmware_jobs (device_id, id);
"#,
];

/// Schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// v7 lets every reading column hold NULL (a NaN reading) and keeps the rows and the other
    /// constraints of a v6 store; the migrating connection sees the new schema at once.
    #[test]
    fn v7_lets_readings_be_nan_and_keeps_the_rest() {
        let c = Connection::open_in_memory().unwrap();
        for m in &MIGRATIONS[..6] {
            c.execute_batch(m).unwrap();
        }
        c.execute_batch(
            "INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value) VALUES (1, 1, 0, 0, 5, 2.5);
             INSERT INTO latest VALUES (1, 0, 1, 5, 2.5);
             INSERT INTO rollup_10s VALUES (1, 0, 0, 1, 2.5, 2.5, 2.5, 5, 5, 2.5);",
        )
        .unwrap();
        let nan_insert = "INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value) VALUES (1, 1, 1, 0, 6, ?1)";
        assert!(c.execute(nan_insert, [f64::NAN]).is_err(), "v6 refuses NaN");
        c.execute_batch(MIGRATIONS[6]).unwrap();
        c.execute(nan_insert, [f64::NAN]).unwrap();
        c.execute("UPDATE latest SET value = ?1 WHERE device = 1", [f64::NAN])
            .unwrap();
        c.execute(
            "INSERT INTO rollup_10s (device, sensor, slot, n, total, vmin, vmax, first_ts, last_ts, last_value, nans)
             VALUES (1, 0, 1, 1, ?1, ?1, ?1, 10000, 10000, ?1, 1)",
            [f64::NAN],
        )
        .unwrap();
        let kept: (f64, i64) = c
            .query_row(
                "SELECT total, nans FROM rollup_10s WHERE slot = 0",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            kept,
            (2.5, 0),
            "old rows keep their values and count no NaN"
        );
        // Other NOT NULL constraints stand.
        assert!(c
            .execute("INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value) VALUES (1, 1, 2, 0, NULL, 1.0)", [])
            .is_err());
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        // The stored schema text (what other connections load) has no NOT NULL reading left.
        let sql: String = c
            .query_row(
                "SELECT group_concat(sql, ' ') FROM sqlite_schema WHERE name IN ('events', 'latest', 'rollup_10s')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("REAL    NOT NULL"), "{sql}");
    }
}

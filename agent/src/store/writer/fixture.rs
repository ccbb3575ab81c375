//! Test fixtures shared by the writer's unit tests: a writer on a fresh database in a temp dir,
//! and raw access to its `events` table.

use std::sync::Arc;
use std::time::Duration;

use super::Writer;
use crate::config::StoreSettings;
use crate::metrics::Metrics;

pub(super) fn writer(tag: &str, keep_forwarded_for: Duration) -> (Writer, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ferry-writer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = StoreSettings {
        keep_forwarded_for,
        ..StoreSettings::for_test(dir.join("w.db"))
    };
    let conn = crate::store::open_writer(&settings).unwrap();
    let mut w = Writer::new(conn, settings, Arc::new(Metrics::default()));
    w.recover().unwrap();
    (w, dir)
}

pub(super) fn insert_events(w: &Writer, n: u32) {
    for seq in 0..n {
        w.conn
            .execute(
                "INSERT INTO events (device, boot_no, seq, sensor, ts_ms, value)
                 VALUES (1, 1, ?1, 0, 1700000000000 + ?1, ?1 + 0.25)",
                [seq],
            )
            .unwrap();
    }
}

pub(super) fn ids(w: &Writer) -> (i64, i64, i64) {
    w.conn
        .query_row("SELECT count(*), min(id), max(id) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
}

//! Why the events table looks the way it does: SQLite insert rates for candidate layouts, with the
//! agent's access pattern (50 devices interleaved, 10 sensors, WAL, `synchronous=FULL`).
//!
//! ```text
//! cargo bench -p ferry-agent --bench store_layout
//! ```
use std::time::Instant;

use rusqlite::{params, Connection};

const BASE: &str =
    "CREATE TABLE events(id INTEGER PRIMARY KEY, device INT, boot INT, seq INT, sensor INT, ts_ms INT, value REAL);";

fn run(schema: &str, per_txn: usize, rows: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("ferry-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c = Connection::open(dir.join("t.db")).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-16384;")
        .unwrap();
    c.execute_batch(schema).unwrap();
    let devices = 50usize;
    let mut seq = vec![0u32; devices];
    let start = Instant::now();
    for t in 0..rows / per_txn {
        c.execute_batch("BEGIN").unwrap();
        {
            let mut st = c
                .prepare_cached("INSERT INTO events(device, boot, seq, sensor, ts_ms, value) VALUES (?1,?2,?3,?4,?5,?6)")
                .unwrap();
            for i in 0..per_txn {
                let d = i % devices;
                let s = seq[d];
                seq[d] += 1;
                st.execute(params![
                    d as i64,
                    1,
                    s,
                    s % 10,
                    1_700_000_000_000i64 + (t * 10 + (s as usize % 10)) as i64,
                    21.5
                ])
                .unwrap();
            }
        }
        c.execute_batch("COMMIT").unwrap();
    }
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let layouts = [
        ("rowid only (no index)", BASE.to_owned()),
        ("rowid + (device, ts_ms)  <- chosen", format!("{BASE} CREATE INDEX i ON events(device, ts_ms);")),
        ("rowid + (device, sensor, ts_ms)", format!("{BASE} CREATE INDEX i ON events(device, sensor, ts_ms);")),
        (
            "rowid + UNIQUE(device, boot, seq) + (device, ts_ms)",
            format!("{BASE} CREATE UNIQUE INDEX u ON events(device, boot, seq); CREATE INDEX i ON events(device, ts_ms);"),
        ),
        (
            "WITHOUT ROWID pk (device, boot, seq)",
            "CREATE TABLE events(device INT, boot INT, seq INT, sensor INT, ts_ms INT, value REAL, \
             PRIMARY KEY(device, boot, seq)) WITHOUT ROWID;"
                .to_owned(),
        ),
    ];
    println!(
        "{:<55} {:>14} {:>14}",
        "layout", "rows/s @2k/tx", "rows/s @10k/tx"
    );
    for (name, schema) in &layouts {
        let small = run(schema, 2_000, 1_000_000);
        let big = run(schema, 10_000, 1_000_000);
        println!("{name:<55} {small:>14.0} {big:>14.0}");
    }
}

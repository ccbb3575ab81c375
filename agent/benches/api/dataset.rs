//! The store the reads run on: generated once with rusqlite (ids in time order, devices
//! interleaved like real ingest), cached under `target/bench-data/`, and rebuilt when its schema
//! version or counts are off.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_agent::config::Settings;
use ferry_agent::store::{self, schema};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

use crate::{Cfg, DAY_MS, HOUR_MS, SENSORS, SPAN_MS};

/// Part of the cache file name: bump when the generated data changes.
pub const GENERATOR: u32 = 1;

/// Rows per bulk transaction.
pub const TXN_ROWS: u64 = 1_000_000;

/// The generated store's shape.
pub struct Dataset {
    pub path: PathBuf,
    pub events: u64,
    pub devices: u64,
    /// Per device and sensor, one sample every `interval_ms`.
    pub interval_ms: i64,
    pub start_ms: i64,
    /// Newest timestamp.
    pub end_ms: i64,
}

pub fn device_name(i: u64) -> String {
    format!("dev-{i:04}")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

impl Dataset {
    pub fn new(events: u64, devices: u64) -> Dataset {
        let per_sensor = events.div_ceil(devices * SENSORS.len() as u64).max(1);
        let interval_ms = (SPAN_MS / per_sensor as i64).max(1);
        let start_ms = DAY_MS - HOUR_MS;
        let mut ds = Dataset {
            path: target_dir().join("bench-data").join(format!(
                "api-{events}-{devices}d-g{GENERATOR}-v{}.db",
                schema::LATEST
            )),
            events,
            devices,
            interval_ms,
            start_ms,
            end_ms: 0,
        };
        let last = events - 1;
        let per_step = devices * SENSORS.len() as u64;
        ds.end_ms = ds.ts(
            last / per_step,
            (last % per_step) / SENSORS.len() as u64,
            last % SENSORS.len() as u64,
        );
        ds
    }

    /// Timestamp of step `k`, device `d`, sensor `s`: devices take turns within each interval, so
    /// store order (id) is time order, as with real interleaved ingest.
    pub fn ts(&self, k: u64, d: u64, s: u64) -> i64 {
        let slots = (self.devices * SENSORS.len() as u64) as i64;
        let slot = (d * SENSORS.len() as u64 + s) as i64;
        self.start_ms + k as i64 * self.interval_ms + slot * self.interval_ms / slots
    }

    /// Why the cached file cannot be used, or `None` when it can.
    pub fn check_cached(&self) -> Option<String> {
        if !self.path.exists() {
            return Some("missing".into());
        }
        // A writer connection first: a read-only one cannot open a WAL file without its -shm.
        let w = match Connection::open(&self.path) {
            Ok(c) => c,
            Err(e) => return Some(format!("cannot open: {e}")),
        };
        let c = match store::open_reader(&self.path) {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        let one = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap_or(-1) };
        let checks = [
            ("schema version", one("PRAGMA user_version"), schema::LATEST),
            (
                "max(events.id)",
                one("SELECT coalesce(max(id), 0) FROM events"),
                self.events as i64,
            ),
            (
                "devices",
                one("SELECT count(*) FROM devices"),
                self.devices as i64,
            ),
            (
                "sum(events_total)",
                one("SELECT coalesce(sum(events_total), 0) FROM devices"),
                self.events as i64,
            ),
            (
                "latest rows",
                one("SELECT count(*) FROM latest"),
                (self.devices * SENSORS.len() as u64).min(self.events) as i64,
            ),
        ];
        drop(c);
        drop(w);
        checks
            .iter()
            .find(|(_, got, want)| got != want)
            .map(|(what, got, want)| format!("{what} is {got}, expected {want}"))
    }

    /// Builds the file (at a temporary name, renamed when complete).
    pub fn generate(&self) {
        let partial = self.path.with_extension("db.partial");
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", partial.display()));
        }
        let settings = Settings::from_toml(
            &format!(
                "[gateway]\nid = \"bench\"\n[store]\npath = {:?}\nmax_db_size = \"0\"\n",
                partial.display().to_string()
            ),
            "bench",
            |_| None,
        )
        .expect("bench settings");
        let c = store::open_writer(&settings.store).expect("create the store");
        // Bulk load: no journal, no syncs, a big page cache; the file returns to WAL at the end.
        let mode: String = c
            .query_row("PRAGMA journal_mode = OFF", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "off");
        c.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -1048576;")
            .unwrap();
        let mut rng = SmallRng::seed_from_u64(0x00fe_1111);
        let per_step = self.devices * SENSORS.len() as u64;
        let steps = self.events.div_ceil(per_step);
        let last_step = (self.events - 1) / per_step;
        c.execute_batch("BEGIN").unwrap();
        for d in 0..self.devices {
            let key = d as i64 + 1;
            // Last timestamp this device gets.
            let last_k = if d * SENSORS.len() as u64 <= (self.events - 1) % per_step {
                last_step
            } else {
                last_step.saturating_sub(1)
            };
            c.execute(
                "INSERT INTO devices (id, device_id, firmware, first_seen_ms, last_seen_ms, online, link, boot_no)
                 VALUES (?1, ?2, 'bench-gen 1', ?3, ?4, 0, ?5, 1)",
                params![
                    key,
                    device_name(d),
                    self.start_ms,
                    self.ts(last_k, d, 0),
                    format!("tcp:10.0.{}.{}:4000", d / 250, d % 250 + 1)
                ],
            )
            .unwrap();
            c.execute(
                "INSERT INTO boots (device, boot_no, boot_id, tick_hz, started_ms) VALUES (?1, 1, ?2, 1000, ?3)",
                params![key, rng.gen::<u32>(), self.start_ms],
            )
            .unwrap();
            for (i, (name, unit)) in SENSORS.iter().enumerate() {
                c.execute(
                    "INSERT INTO sensors (device, idx, name, unit, interval_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key, i as i64, name, unit, self.interval_ms],
                )
                .unwrap();
            }
        }
        let mut seq = vec![0i64; self.devices as usize];
        let phase: Vec<f64> = (0..self.devices)
            .map(|_| rng.gen::<f64>() * std::f64::consts::TAU)
            .collect();
        {
            let mut st = c
                .prepare(
                    "INSERT INTO events (id, device, boot_no, seq, sensor, ts_ms, value)
                     VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6)",
                )
                .unwrap();
            let mut id = 0u64;
            let day = 86_400_000.0;
            'all: for k in 0..steps {
                for d in 0..self.devices {
                    for s in 0..SENSORS.len() as u64 {
                        if id == self.events {
                            break 'all;
                        }
                        id += 1;
                        let ts = self.ts(k, d, s);
                        let x = (ts % 86_400_000) as f64 / day * std::f64::consts::TAU
                            + phase[d as usize];
                        let value = match s {
                            0 => 21.0 + 4.0 * x.sin() + rng.gen_range(-0.2..0.2),
                            1 => 55.0 - 12.0 * x.sin() + rng.gen_range(-1.0..1.0),
                            _ => 1013.0 + 3.0 * (x / 3.0).cos() + rng.gen_range(-0.1..0.1),
                        };
                        let value = (value * 100.0).round() / 100.0;
                        st.execute(params![
                            id as i64,
                            d as i64 + 1,
                            seq[d as usize],
                            s as i64,
                            ts,
                            value
                        ])
                        .unwrap();
                        seq[d as usize] += 1;
                        if id % TXN_ROWS == 0 {
                            c.execute_batch("COMMIT; BEGIN").unwrap();
                        }
                    }
                }
            }
        }
        for (d, n) in seq.iter().enumerate() {
            c.execute(
                "UPDATE boots SET next_seq = ?2 WHERE device = ?1 AND boot_no = 1",
                params![d as i64 + 1, n],
            )
            .unwrap();
        }
        // `latest` and `events_total` exactly as migration v4 computes them from `events`.
        let v4 = schema::MIGRATIONS[3];
        for start in ["INSERT INTO latest", "UPDATE devices SET events_total"] {
            let from = v4
                .find(start)
                .expect("migration v4 fills latest and events_total");
            let sql = &v4[from..from + v4[from..].find(';').unwrap()];
            c.execute(sql, []).unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(c);
        std::fs::rename(&partial, &self.path).expect("rename the generated store");
    }
}

/// The cached store, generated if needed. Returns it and a line saying what happened.
pub fn ensure_dataset(cfg: &Cfg) -> (Dataset, String) {
    let ds = Dataset::new(cfg.events, cfg.devices);
    std::fs::create_dir_all(ds.path.parent().unwrap()).unwrap();
    let t = Instant::now();
    let line = match ds.check_cached() {
        None => format!(
            "store: cached {} (checked in {:.1} s)",
            ds.path.display(),
            t.elapsed().as_secs_f64()
        ),
        Some(why) => {
            println!(
                "store: generating {} events ({why}) into {} ...",
                ds.events,
                ds.path.display()
            );
            let t = Instant::now();
            ds.generate();
            let gen_s = t.elapsed().as_secs_f64();
            if let Some(bad) = ds.check_cached() {
                panic!("the generated store fails its own check: {bad}");
            }
            format!(
                "store: generated {} events in {gen_s:.1} s ({:.0} rows/s)",
                ds.events,
                ds.events as f64 / gen_s
            )
        }
    };
    let size = std::fs::metadata(&ds.path).map_or(0, |m| m.len());
    let line = format!(
        "{line}; {} devices x {} sensors, one sample per sensor every {:.1} s, {} .. {} UTC, file {:.0} MB",
        ds.devices,
        SENSORS.len(),
        ds.interval_ms as f64 / 1000.0,
        fmt_ms(ds.start_ms),
        fmt_ms(ds.end_ms),
        size as f64 / 1e6
    );
    (ds, line)
}

pub fn fmt_ms(ms: i64) -> String {
    ferry_agent::time::format_utc(ms, ' ', false)
}

/// Reads the file once so the reads below find it in the OS page cache.
pub fn warm_page_cache(path: &Path) -> String {
    use std::io::Read;
    let t = Instant::now();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    format!(
        "page cache: read {:.0} MB in {:.1} s",
        n as f64 / 1e6,
        t.elapsed().as_secs_f64()
    )
}

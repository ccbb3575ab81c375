//! A full store and a full disk: `max_db_size` with both `when_full` policies, and ENOSPC on a real
//! (tmpfs) filesystem. Real SQLite files, real TCP, simulated devices running the firmware core.
//!
//! Accounting used below: `samples_committed` counts every sample the writer committed; with
//! `drop_oldest` and nothing forwarded a committed row is either still in `events` or was deleted
//! and counted in `events_dropped_oldest`, so `stored + dropped == committed` exactly. A device
//! counts a sample as acked only after the agent committed it, and the agent acks everything it
//! commits; the two differ only by samples a full device ring evicted after their commit but before
//! the ack arrived (those are in the device's `dropped`). With no ring drops the equation
//! `acked == stored + dropped` is therefore exact.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ferry_agent::metrics::Metrics;
use ferry_agent::Agent;
use ferry_sim::{Report, SimConfig, Transport};
use rusqlite::OptionalExtension;
use tokio_util::sync::CancellationToken;

use crate::common::{agent, assert_acked_stored_once_in_order, TempDir};
use crate::poll::poll_until;

const MIB: u64 = 1 << 20;

fn sim(agent: &Agent, prefix: &str, devices: usize, sensors: usize, interval_ms: u32) -> SimConfig {
    SimConfig {
        devices,
        transport: Transport::Tcp(agent.tcp_addr.expect("tcp listener")),
        sensors,
        interval_ms,
        id_prefix: prefix.into(),
        seed: 7,
        ..SimConfig::default()
    }
}

/// Runs the simulator to its end, within `limit`.
async fn run_sim(cfg: SimConfig, limit: Duration) -> Report {
    tokio::time::timeout(limit, ferry_sim::run(cfg, CancellationToken::new()))
        .await
        .expect("the simulator finishes in time")
}

/// A read-only view of the store, as any other process would see it.
struct Db(rusqlite::Connection);

impl Db {
    fn open(path: &Path) -> Db {
        Db(ferry_agent::store::open_reader(path).expect("the store opens read-only"))
    }

    fn int(&self, sql: &str) -> i64 {
        self.0
            .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or(0)
    }

    fn events(&self) -> i64 {
        self.int("SELECT count(*) FROM events")
    }

    fn counter(&self, name: &str) -> Option<i64> {
        self.0
            .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .unwrap()
    }

    /// Pages in use times the page size, measured the way the agent measures it.
    fn used_bytes(&self) -> u64 {
        let used = self.int("PRAGMA page_count") - self.int("PRAGMA freelist_count");
        (used * self.int("PRAGMA page_size")) as u64
    }

    /// Stored seqs per `(device_id, boot_id)`, in store order.
    fn seqs(&self) -> HashMap<(String, u32), Vec<u32>> {
        let mut st = self
            .0
            .prepare(
                "SELECT d.device_id, b.boot_id, e.seq FROM events e
                   JOIN devices d ON d.id = e.device
                   JOIN boots b ON b.device = e.device AND b.boot_no = e.boot_no
                  ORDER BY e.id",
            )
            .unwrap();
        let mut out: HashMap<(String, u32), Vec<u32>> = HashMap::new();
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (d, b, s) = row.unwrap();
            out.entry((d, b)).or_default().push(s);
        }
        out
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    Metrics::get(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_store_under_its_cap_and_counts_every_drop() {
    let t0 = Instant::now();
    let dir = TempDir::new("full-drop");
    let path = dir.path().join("ferry.db");
    let agent = agent(
        &path,
        "max_db_size = \"1 MiB\"\nwhen_full = \"drop_oldest\"",
    )
    .await;
    let m = agent.metrics.clone();
    let cap = MIB;

    // Several times the cap (a 1 MiB store holds about 21,000 rows).
    let first = run_sim(
        SimConfig {
            total_samples: Some(80_000),
            drain_timeout: Duration::from_secs(20),
            ..sim(&agent, "drop-a-", 4, 8, 4)
        },
        Duration::from_secs(45),
    )
    .await;
    let dropped_then = get(&m.events_dropped_oldest);
    assert!(
        dropped_then > 0,
        "80,000 samples into a 1 MiB store dropped nothing (used {} bytes)",
        m.db_used_bytes.load(Relaxed)
    );

    // The cap was hit: new devices are still welcomed and acked, and the store keeps taking data.
    let second = run_sim(
        SimConfig {
            total_samples: Some(20_000),
            drain_timeout: Duration::from_secs(20),
            ..sim(&agent, "drop-b-", 2, 8, 4)
        },
        Duration::from_secs(30),
    )
    .await;
    println!(
        "first run:\n{}second run:\n{}",
        first.table(),
        second.table()
    );
    for r in [&first, &second] {
        assert_eq!(
            r.totals.unacked_at_end, 0,
            "every sample acked after the drain"
        );
        assert_eq!(r.totals.acked + r.totals.dropped, r.totals.generated);
    }
    assert!(
        second.totals.acked >= 19_000,
        "acked after the cap was hit: {}",
        second.totals.acked
    );
    assert!(
        get(&m.events_dropped_oldest) > dropped_then,
        "the second run also made room"
    );

    // Two syncs: the second is handled after the retention pass that follows the first commit.
    agent.store.sync().await.expect("the writer is alive");
    agent.store.sync().await.expect("the writer is alive");
    let db = Db::open(&path);
    let used_metric = m.db_used_bytes.load(Relaxed);
    let used = db.used_bytes();
    let stored = db.events() as u64;
    let dropped = get(&m.events_dropped_oldest);
    let committed = get(&m.samples_committed);
    let acked = first.totals.acked + second.totals.acked;
    let ring_dropped = first.totals.dropped + second.totals.dropped;
    println!(
        "cap {cap} B, used {used} B (metric {used_metric}), stored {stored}, dropped_oldest {dropped}, \
         committed {committed}, acked {acked}, ring drops {ring_dropped}, refused {}, {:.1} s",
        get(&m.samples_refused),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        used_metric <= cap,
        "db_used_bytes {used_metric} > cap {cap}"
    );
    assert!(used <= cap, "measured {used} bytes in use > cap {cap}");
    assert_eq!(used, used_metric, "the gauge shows the current usage");
    assert_eq!(
        db.counter("events_dropped_oldest"),
        Some(dropped as i64),
        "counters table == metric"
    );
    assert_eq!(get(&m.events_pruned_forwarded), 0, "nothing was forwarded");
    assert_eq!(get(&m.samples_refused), 0, "drop_oldest never refuses");
    assert_eq!(
        stored + dropped,
        committed,
        "every committed row is stored or counted as dropped"
    );
    // The dropped rows are exactly the oldest ones: the ids left are one unbroken range after them.
    assert_eq!(db.int("SELECT min(id) FROM events") as u64, dropped + 1);
    assert_eq!(db.int("SELECT max(id) FROM events") as u64, committed);
    if ring_dropped == 0 {
        assert_eq!(acked, stored + dropped, "acked == stored + dropped_oldest");
    } else {
        // Rings evicted some samples; a few of them may have been committed before their ack came.
        println!(
            "note: devices evicted {ring_dropped} samples; checking bounds instead of equality"
        );
        assert!(acked <= stored + dropped && stored + dropped <= acked + ring_dropped);
    }
    // Per device boot, what is left is the newest part: a suffix of the acked seqs, in order.
    let seqs = db.seqs();
    for d in first.devices.iter().chain(&second.devices) {
        for b in &d.boots {
            let Some(s) = seqs.get(&(d.device_id.clone(), b.boot_id)) else {
                continue; // every row of this boot was dropped
            };
            assert!(
                s.windows(2).all(|w| w[0] < w[1]),
                "{}: in order, once",
                d.device_id
            );
            assert_eq!(
                *s.last().unwrap() + 1,
                b.acked_next,
                "{}: the newest sample is kept",
                d.device_id
            );
            let holes = u64::from(b.acked_next - s[0]) - s.len() as u64;
            assert!(
                holes <= u64::from(b.dropped),
                "{}: {holes} holes in the kept range",
                d.device_id
            );
        }
    }
    agent.stop().await.expect("clean stop");
    assert!(t0.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_refuses_without_losing_and_resumes_when_space_is_freed() {
    let t0 = Instant::now();
    let dir = TempDir::new("full-bp");
    let path = dir.path().join("ferry.db");
    let agent = agent(
        &path,
        "max_db_size = \"1 MiB\"\nwhen_full = \"backpressure\"",
    )
    .await;
    let m = agent.metrics.clone();

    // 3 devices x 8 channels at 250 Hz = 6,000 samples/s: the cap (about 22,000 rows) is reached in
    // about 4 s. 42,000 samples in all: more than the cap plus three full rings (3 x 4,096), so the
    // rings must overflow while the store refuses. After the resume at most about 20,000 samples
    // remain, and the forwarded rows left are pruned before the store would refuse again.
    let sim_task = tokio::spawn(run_sim(
        SimConfig {
            total_samples: Some(42_000),
            drain_timeout: Duration::from_secs(40),
            ..sim(&agent, "bp-", 3, 8, 4)
        },
        Duration::from_secs(55),
    ));
    poll_until(
        Duration::from_secs(25),
        "the backpressure gauge",
        async || m.backpressure.load(Relaxed),
    )
    .await;
    // What was acked before the refusal reaches the database with the next flush: now.
    agent.store.sync().await.expect("flushed");
    let db = Db::open(&path);
    let stored_at_full = db.events();
    let max_id = db.int("SELECT max(id) FROM events");
    let committed_at_full = get(&m.samples_committed);
    let positions = ferry_agent::store::read::boot_positions(&db.0).unwrap();
    assert!(stored_at_full > 0);
    // Devices are no longer acked: their rings fill up and overflow (seen through heartbeats).
    poll_until(
        Duration::from_secs(15),
        "device rings overflow while refused",
        async || {
            // Heartbeats reach the database with a flush of the tail.
            agent.store.sync().await.expect("flushed");
            let devs = ferry_agent::store::read::devices(&db.0).unwrap();
            devs.len() == 3 && devs.iter().all(|d| d.dropped > 0)
        },
    )
    .await;
    let refused = get(&m.samples_refused);
    assert!(refused > 0, "refused samples are counted");
    assert!(m.backpressure.load(Relaxed), "still refusing");
    // Nothing stored was deleted, nothing new was committed.
    assert_eq!(get(&m.events_dropped_oldest), 0);
    assert_eq!(db.counter("events_dropped_oldest"), None);
    assert_eq!(
        db.events(),
        stored_at_full,
        "rows neither added nor deleted while refusing"
    );
    assert_eq!(
        db.int("SELECT min(id) FROM events"),
        1,
        "the oldest row is still there"
    );
    assert_eq!(db.int("SELECT max(id) FROM events"), max_id);
    assert_eq!(
        get(&m.samples_committed),
        committed_at_full,
        "nothing acked while refusing"
    );
    let used_full = m.db_used_bytes.load(Relaxed);
    assert!(used_full <= MIB, "refusing at {used_full} bytes, cap {MIB}");

    // Free space: everything stored so far is forwarded, so retention may prune it.
    agent
        .store
        .mark_forwarded(max_id)
        .await
        .expect("the cursor moves");
    poll_until(
        Duration::from_secs(10),
        "the backpressure gauge clears",
        async || !m.backpressure.load(Relaxed),
    )
    .await;
    poll_until(
        Duration::from_secs(15),
        "samples are acked again",
        async || get(&m.samples_committed) > committed_at_full,
    )
    .await;
    let report = sim_task.await.unwrap();
    println!("{}", report.table());
    agent.store.sync().await.unwrap();
    let pruned = get(&m.events_pruned_forwarded);
    println!(
        "cap {MIB} B, used at refusal {used_full} B, stored at refusal {stored_at_full}, refused {refused} \
         (total {}), pruned forwarded {pruned}, committed {}, stored now {}, ring drops {}, {:.1} s",
        get(&m.samples_refused),
        get(&m.samples_committed),
        db.events(),
        report.totals.dropped,
        t0.elapsed().as_secs_f64()
    );
    assert!(!m.backpressure.load(Relaxed));
    assert_eq!(
        get(&m.events_dropped_oldest),
        0,
        "backpressure never deletes unforwarded rows"
    );
    assert!(
        pruned > 0 && pruned <= stored_at_full as u64,
        "only forwarded rows were pruned"
    );
    assert!(
        report.totals.dropped > 0,
        "device rings overflowed while refused"
    );
    assert_eq!(
        report.totals.unacked_at_end, 0,
        "the rings drained once space was freed"
    );
    let committed = get(&m.samples_committed);
    assert!(
        report.totals.acked <= committed
            && committed <= report.totals.acked + report.totals.dropped,
        "acked {} vs committed {committed}: only ring-evicted samples may be committed unacked",
        report.totals.acked
    );
    // New rows come after the forwarded ones (ids are never reused below the cursor)...
    let newer = db.int(&format!("SELECT count(*) FROM events WHERE id > {max_id}"));
    assert_eq!(
        newer as u64,
        get(&m.samples_committed) - committed_at_full,
        "every sample committed after the resume is stored with an id above the forwarded ones"
    );
    // ... and per boot, every seq acked after the refusal point is stored once, in order, except
    // those the device's ring evicted.
    let seqs = db.seqs();
    for d in &report.devices {
        for b in &d.boots {
            let from = positions
                .get(&(d.device_id.clone(), b.boot_id))
                .copied()
                .unwrap_or(0);
            assert!(
                b.acked_next > from,
                "{}: acked again after the refusal",
                d.device_id
            );
            let s = seqs
                .get(&(d.device_id.clone(), b.boot_id))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            assert!(
                s.windows(2).all(|w| w[0] < w[1]),
                "{}: in order, once",
                d.device_id
            );
            let present = s.iter().filter(|&&q| q >= from && q < b.acked_next).count() as u64;
            let missing = u64::from(b.acked_next - from) - present;
            assert!(
                missing <= u64::from(b.dropped),
                "{}: {missing} acked seqs missing",
                d.device_id
            );
        }
    }
    agent.stop().await.expect("clean stop");
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// A tmpfs mounted on a temporary directory; unmounted (then the directory removed) at drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new("tmpfs");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the filesystem with one file, then frees `leave` bytes of it.
fn fill(path: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (mounts a 4 MiB tmpfs)"]
async fn enospc_on_a_full_filesystem_keeps_running_and_recovers() {
    let t0 = Instant::now();
    let fs = Tmpfs::mount("4m").unwrap_or_else(|e| {
        panic!("this test needs root, to mount a 4 MiB tmpfs; run it as root: {e}")
    });
    let path = fs.path().join("ferry.db");
    // The sample log holds about `tail_flush_after` of commits, a 4 KiB block each: at 30 s it
    // would be most of a 4 MiB filesystem. Flushed each second, it is about 1 MiB.
    let agent = agent(&path, "max_db_size = \"0\"\ntail_flush_after = \"1s\"").await;
    let m = agent.metrics.clone();
    // The filler leaves 1.5 MiB; when it is removed, the rest of the run (WAL included) fits in
    // what returns even when a loaded machine commits in few large batches.
    let filler = fill(fs.path(), 1536 * 1024);

    // 2 devices x 4 channels at 200 Hz = 1,600 samples/s for 10 s.
    let sim_task = tokio::spawn(run_sim(
        SimConfig {
            total_samples: Some(16_000),
            drain_timeout: Duration::from_secs(30),
            ..sim(&agent, "enospc-", 2, 4, 5)
        },
        Duration::from_secs(50),
    ));
    poll_until(Duration::from_secs(10), "the disk_full gauge", async || {
        m.disk_full.load(Relaxed)
    })
    .await;
    let full_at = t0.elapsed();
    // The agent keeps running; what was committed is intact and readable.
    let db = Db::open(&path);
    let check: String =
        db.0.query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
    assert_eq!(check, "ok");
    // Committed samples are in the database or, acked but not yet written to it (the disk is
    // full), in the sample log and the tail.
    let mut stored = 0;
    let tail = agent.store.tail();
    poll_until(
        Duration::from_secs(5),
        "stored rows + the tail == committed samples",
        async || {
            stored = db.events() as u64 + tail.read().unwrap().len() as u64;
            stored == get(&m.samples_committed)
        },
    )
    .await;
    assert!(stored > 0, "samples were committed before the disk filled");
    for (k, s) in db.seqs() {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{k:?}: in order, once");
    }
    // Samples are refused (and counted) rather than acked while the disk is full.
    let refused_then = get(&m.samples_refused);
    poll_until(
        Duration::from_secs(10),
        "samples refused while the disk is full",
        async || get(&m.samples_refused) > refused_then,
    )
    .await;
    // It keeps retrying after its back-off, and keeps failing (and refusing) while the disk is full.
    let failures = get(&m.commit_failures);
    poll_until(
        Duration::from_secs(10),
        "another write attempt fails",
        async || get(&m.commit_failures) > failures,
    )
    .await;
    // The writer and the listener still answer. (That an empty commit is no proof of space is
    // `store::writer`'s unit test: here a sync may carry a heartbeat or a few samples that fit in
    // WAL space a checkpoint freed, and a commit that wrote does clear the mark until the next
    // refused write sets it again.)
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), agent.store.sync()).await;
        assert!(r.is_ok(), "the writer answers while the disk is full");
    }
    poll_until(
        Duration::from_secs(10),
        "disk_full while the disk stays full",
        async || m.disk_full.load(Relaxed),
    )
    .await;
    tokio::net::TcpStream::connect(agent.tcp_addr.unwrap())
        .await
        .expect("the device listener still accepts");
    let committed_full = get(&m.samples_committed);
    let refused_full = get(&m.samples_refused);

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    poll_until(Duration::from_secs(10), "disk_full clears", async || {
        !m.disk_full.load(Relaxed)
    })
    .await;
    poll_until(Duration::from_secs(10), "samples acked again", async || {
        get(&m.samples_committed) > committed_full
    })
    .await;
    let report = sim_task.await.unwrap();
    println!("{}", report.table());
    agent.store.sync().await.expect("the writer is alive");
    let stored = db.events() as u64;
    let committed = get(&m.samples_committed);
    println!(
        "disk full after {:.1} s; committed when full {committed_full}, refused {refused_full} (total {}), \
         commit failures {}, committed {committed}, stored {stored}, acked {}, ring drops {}, \
         WAL file {} bytes, {:.1} s",
        full_at.as_secs_f64(),
        get(&m.samples_refused),
        get(&m.commit_failures),
        report.totals.acked,
        report.totals.dropped,
        std::fs::metadata(fs.path().join("ferry.db-wal")).map_or(0, |m| m.len()),
        t0.elapsed().as_secs_f64()
    );
    assert!(!m.disk_full.load(Relaxed));
    assert_eq!(
        report.totals.unacked_at_end, 0,
        "everything acked once space returned"
    );
    assert_eq!(
        stored, committed,
        "no cap: every committed sample is stored"
    );
    let checked = assert_acked_stored_once_in_order(&path, &report);
    assert!(
        checked >= report.totals.acked && checked <= report.totals.acked + report.totals.dropped
    );
    drop(db);
    agent.stop().await.expect("clean stop");
    drop(fs);
    assert!(t0.elapsed() < Duration::from_secs(60));
}

/// Forwarded rows pruned by age (`keep_forwarded_for`) can empty the table; rows stored after that
/// must still get ids above the forwarding cursor, or they would count as forwarded (and be pruned
/// as such) without ever having been forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_stored_after_forwarded_ones_were_pruned_are_not_forwarded() {
    let t0 = Instant::now();
    let dir = TempDir::new("full-fwd");
    let path = dir.path().join("ferry.db");
    let agent = agent(&path, "keep_forwarded_for = \"0s\"").await;
    let m = agent.metrics.clone();
    let first = run_sim(
        SimConfig {
            total_samples: Some(2_000),
            ..sim(&agent, "fwd-a-", 1, 4, 5)
        },
        Duration::from_secs(20),
    )
    .await;
    // A loaded machine can make a device take a few readings past the total in one step.
    let acked = first.totals.acked;
    assert!(acked >= 2_000, "{acked} acked");
    agent.store.sync().await.unwrap();
    let db = Db::open(&path);
    let cursor = db.int("SELECT max(id) FROM events");
    assert_eq!(cursor as u64, acked);
    agent.store.mark_forwarded(cursor).await.unwrap();
    // Everything is forwarded and older than 0 s: time-based retention prunes it.
    poll_until(
        Duration::from_secs(15),
        "forwarded rows pruned by age",
        async || get(&m.events_pruned_forwarded) as i64 >= cursor - 1,
    )
    .await;
    let second = run_sim(
        SimConfig {
            total_samples: Some(2_000),
            ..sim(&agent, "fwd-b-", 1, 4, 5)
        },
        Duration::from_secs(20),
    )
    .await;
    let acked = second.totals.acked;
    assert!(acked >= 2_000, "{acked} acked");
    agent.store.sync().await.unwrap();
    let above = db.int(&format!("SELECT count(*) FROM events WHERE id > {cursor}"));
    // The second device's rows: at least what it saw acked (a last frame may be stored after the
    // simulator stopped counting), every one of them above the cursor.
    let second_rows = db.int(
        "SELECT count(*) FROM events WHERE device IN \
         (SELECT id FROM devices WHERE device_id LIKE 'fwd-b-%')",
    );
    let second_at_or_below = db.int(&format!(
        "SELECT count(*) FROM events WHERE id <= {cursor} AND device IN \
         (SELECT id FROM devices WHERE device_id LIKE 'fwd-b-%')"
    ));
    println!(
        "cursor {cursor}, pruned {}, rows above the cursor {above}, stored {}, {:.1} s",
        get(&m.events_pruned_forwarded),
        db.events(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        second_rows as u64 >= acked,
        "{second_rows} rows of the second device, {acked} acked"
    );
    assert_eq!(
        (second_at_or_below, above),
        (0, second_rows),
        "every new row has an id above the forwarding cursor"
    );
    assert_eq!(get(&m.events_dropped_oldest), 0);
    agent.stop().await.expect("clean stop");
}

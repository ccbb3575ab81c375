//! The real firmware through the whole pipeline: the lm3s6965 image in QEMU → UART0 on a pty →
//! `ferry` (the agent binary, serial source) → mosquitto → `ferry-bridge` → PostgreSQL.
//!
//! What the firmware says happened is the reference, never the agent or the database: the board
//! writes a report on UART1 (`firmware/boards/lm3s6965/src/report.rs`), a line when a sample is
//! taken (seq, sensor, value bits), when its `acked_next` grows and when its ring drops samples.
//! The report backend is a TCP server that holds the guest until the test connects, so no line is
//! lost, and QEMU delivers it completely when it exits.
//!
//! - **Acked** = every seq below the last `acked_next` the firmware reported, minus the seqs it
//!   reported dropped. Each must be in `ferry_events` exactly once, for this boot (the boot id
//!   the firmware announced), with the sensor and the exact value the firmware took: that ties
//!   each row to its seq, so the table holds the firmware's samples in the firmware's order with
//!   no gap. Rows past the last ack (committed, ack still on the wire when QEMU stopped) may
//!   exist; they are checked the same way.
//! - **Taken** = the host's wall clock when the test's reader thread received the sample's report
//!   line. The firmware writes that line in the loop pass that reads the sensor, before it
//!   transmits the sample; QEMU forwards UART writes at once over loopback TCP, so the stamp lags
//!   the sensor read by the host's scheduling delay (milliseconds). It does not depend on the
//!   agent's tick → UTC mapping (which anchors on Hello and Heartbeat arrival times), which is
//!   what this checks: each row's `ts` must be within 1 s of that stamp.
//!
//! The run: the agent opens the pty before the guest starts; about 10 s of sampling (~140
//! samples/s: counter every 10 ms, temperature and humidity every 50 ms); QEMU stopped with
//! SIGTERM; then a bounded wait until PostgreSQL holds everything the agent stored.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_tests::agent::AgentProc;
use ferry_tests::bridge::{ferry_bridge_bin, BridgeProcess};
use ferry_tests::mosquitto::{Mosquitto, MosquittoOptions};
use ferry_tests::postgres::{Postgres, PostgresOptions};
use ferry_tests::qemu::{lm3s6965_image, report_serial, FirmwareReport, Qemu, ReportLine};
use ferry_tests::{free_port, poll_until, require_tool, try_poll_until, workspace_bin};

const GATEWAY: &str = "gw-qemu";
const DEVICE: &str = "qemu-pipeline-1";
/// The synthetic sensor set of the board, by index.
const SENSORS: [&str; 3] = ["temperature", "humidity", "counter"];
/// Samples to take before stopping the firmware (~10 s).
const RUN_SAMPLES: usize = 1400;
/// A row's `ts` may differ from when the sample was taken by at most this.
const MAX_TS_ERROR_MS: i64 = 1000;

/// The agent binary with the pty as its serial source (no TCP listener); waits until the agent
/// has opened the port, so the guest's first bytes have a reader.
/// The agent on the QEMU device's pty. Its tail goes to the database every second (not every
/// 30 s): the drain check below reads the database file, which lags the tail by that much.
async fn start_agent(dir: &Path, pty: &Path, broker: u16) -> AgentProc {
    let mut agent = AgentProc::new(
        dir,
        &format!(
                "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"{GATEWAY}\"\n\
                 [store]\npath = {:?}\ntail_flush_after = \"1s\"\n\
                 [devices]\ntcp_listen = \"\"\nrescan_interval = \"100ms\"\n\
                 [[devices.serial]]\npath = {:?}\n\
                 [uplink]\nbroker = \"127.0.0.1:{broker}\"\nbackoff_min = \"50ms\"\nbackoff_max = \"500ms\"\n",
                dir.join("ferry.db").display().to_string(),
                pty.display().to_string(),
            ),
        None,
    );
    agent.start().await;
    let open = agent
        .wait_log_line(&["Device link open"], Duration::from_secs(15))
        .await;
    assert!(
        open.is_some(),
        "agent did not open the pty:\n{}",
        agent.log()
    );
    agent
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// What the firmware reported, checked for internal consistency.
struct Reported {
    boot_id: u32,
    /// seq → (when the report line arrived, sensor, value bits).
    taken: BTreeMap<u32, (SystemTime, u8, u32)>,
    acked_next: u32,
    dropped: BTreeSet<u32>,
}

impl Reported {
    fn from_lines(lines: &[(SystemTime, ReportLine)]) -> Reported {
        let mut boots = Vec::new();
        let mut taken = BTreeMap::new();
        let mut acked_next = 0;
        let mut dropped = BTreeSet::new();
        for &(at, line) in lines {
            match line {
                ReportLine::Boot { boot_id } => boots.push(boot_id),
                ReportLine::Taken {
                    seq,
                    sensor,
                    value_bits,
                } => {
                    let next = taken.keys().next_back().map_or(0, |s| s + 1);
                    assert!(
                        seq >= next && (next..seq).all(|s| dropped.contains(&s)),
                        "seq {seq} reported after {next}: seqs are consecutive except dropped ones"
                    );
                    taken.insert(seq, (at, sensor, value_bits));
                }
                ReportLine::Acked { next } => {
                    assert!(next > acked_next, "acked_next grows: {acked_next} → {next}");
                    acked_next = next;
                }
                ReportLine::Dropped { from, to } => dropped.extend(from..to),
            }
        }
        assert_eq!(boots.len(), 1, "one boot (no reset) in the run: {boots:x?}");
        let end = taken.keys().next_back().map_or(0, |s| s + 1);
        assert!(
            acked_next <= end.max(dropped.last().map_or(0, |d| d + 1)),
            "acked_next {acked_next} beyond the samples taken ({end})"
        );
        Reported {
            boot_id: boots[0],
            taken,
            acked_next,
            dropped,
        }
    }

    /// Device milliseconds per host millisecond, from the counter channel (one sample per 10
    /// device ms) against the report's arrival times: QEMU's SysTick can fall behind real time.
    fn device_clock_rate(&self) -> f64 {
        let counter: Vec<SystemTime> = self
            .taken
            .values()
            .filter(|(_, sensor, _)| *sensor == 2)
            .map(|(at, _, _)| *at)
            .collect();
        let (Some(first), Some(last)) = (counter.first(), counter.last()) else {
            return f64::NAN;
        };
        let host_ms = last
            .duration_since(*first)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        (counter.len() - 1) as f64 * 10.0 / host_ms
    }

    /// The seqs the firmware was told are durable.
    fn acked(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.acked_next).filter(|s| !self.dropped.contains(s))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm, the thumbv7m-none-eabi target, mosquitto and PostgreSQL"]
async fn lm3s6965_in_qemu_to_postgres_exactly_once_with_timestamps() {
    let started = Instant::now();
    let qemu = require_tool(
        "qemu-system-arm",
        "apt-get install -y --no-install-recommends qemu-system-arm",
    );
    let broker = Mosquitto::start(MosquittoOptions::default());
    let pg = Postgres::start(PostgresOptions::default());
    let elf = lm3s6965_image().expect("firmware image");
    ferry_bridge_bin().expect("build ferry-bridge");
    workspace_bin("ferry-agent", "ferry").expect("build ferry");
    let bridge = BridgeProcess::start_healthy(&broker.addr(), "bridge-qemu", &pg.conn_str(), 20)
        .await
        .expect("start ferry-bridge");

    // QEMU announces UART0's pty, then waits for the report client before running the guest.
    let report_port = free_port();
    let mut vm = Qemu::boot_with(&qemu, &elf, DEVICE, &[report_serial(report_port)])
        .await
        .expect("boot QEMU");
    let dir = tempfile::tempdir().unwrap();
    let mut agent = start_agent(dir.path(), &vm.pty, broker.port()).await;
    let report = FirmwareReport::connect(report_port, Duration::from_secs(10)).expect("report");
    let sampling = Instant::now();
    let setup_done = sampling;
    let what = format!("the firmware to take {RUN_SAMPLES} samples");
    poll_until(Duration::from_secs(40), what, async || {
        assert!(vm.child.try_wait().unwrap().is_none(), "QEMU exited early");
        let taken = report.taken();
        (taken >= RUN_SAMPLES)
            .then_some(())
            .ok_or(format!("{taken} taken"))
    })
    .await;
    let sampled_for = sampling.elapsed();

    // Stop the firmware: QEMU exits on SIGTERM and delivers the rest of the report.
    let pid = nix::unistd::Pid::from_raw(vm.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(10), vm.child.wait())
        .await
        .expect("QEMU exits on SIGTERM")
        .unwrap();
    let lines = report
        .finish(Duration::from_secs(10))
        .expect("complete report");
    let fw = Reported::from_lines(&lines);
    let acked: Vec<u32> = fw.acked().collect();
    let clock = fw.device_clock_rate();
    for s in &acked {
        assert!(fw.taken.contains_key(s), "seq {s} acked but never taken");
    }

    // Forwarding drains: everything the agent stored reaches PostgreSQL (bounded wait).
    let db = pg.client().await;
    let store = ferry_agent::store::open_reader(&dir.path().join("ferry.db")).unwrap();
    let count_pg = || async {
        db.query_one(
            "SELECT count(*) FROM ferry_events WHERE gateway = $1 AND device = $2",
            &[&GATEWAY, &DEVICE],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let drain = Instant::now();
    let counts = async || {
        let stored: i64 = store
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        (stored, count_pg().await)
    };
    // At the deadline, the checks below say what is missing.
    let _ = try_poll_until(
        Duration::from_secs(30),
        "everything stored to reach PostgreSQL",
        async || {
            let (stored, in_pg) = counts().await;
            in_pg == stored && stored >= acked.len() as i64
        },
    )
    .await;
    let (stored, in_pg) = counts().await;
    let drained_in = drain.elapsed();
    agent.terminate().await;

    let rows = db
        .query(
            "SELECT boot, boot_id, seq, sensor, round(extract(epoch FROM ts) * 1000)::bigint, value \
             FROM ferry_events WHERE gateway = $1 AND device = $2 ORDER BY boot, seq",
            &[&GATEWAY, &DEVICE],
        )
        .await
        .unwrap();
    let other: i64 = db
        .query_one(
            "SELECT count(*) FROM ferry_events WHERE gateway <> $1 OR device <> $2",
            &[&GATEWAY, &DEVICE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 0, "rows of another gateway or device");

    // Every row is a sample the firmware took, once, with its sensor, value and time.
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    let mut max_err = 0i64;
    let mut err_sum = 0i64;
    let (mut prev_ts, mut inversions, mut max_back) = (i64::MIN, 0, 0i64);
    for r in &rows {
        let (boot, boot_id, seq, sensor, ts_ms, value): (i64, i64, i64, String, i64, f64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(boot, 1, "seq {seq}: the first boot in a fresh store");
        assert_eq!(
            boot_id,
            i64::from(fw.boot_id),
            "seq {seq}: the boot id the firmware announced"
        );
        let seq = u32::try_from(seq).unwrap();
        assert!(seen.insert(seq), "seq {seq} in the table more than once");
        let Some(&(at, fw_sensor, bits)) = fw.taken.get(&seq) else {
            panic!("seq {seq} in the table but never taken by the firmware");
        };
        assert_eq!(sensor, SENSORS[usize::from(fw_sensor)], "seq {seq}: sensor");
        assert_eq!(
            (value as f32).to_bits(),
            bits,
            "seq {seq}: value {value} is not the one the firmware took ({})",
            f32::from_bits(bits)
        );
        let err = ts_ms - unix_ms(at);
        assert!(
            err.abs() <= MAX_TS_ERROR_MS,
            "seq {seq}: ts is {err} ms from when the sample was taken"
        );
        if ts_ms < prev_ts {
            inversions += 1;
            max_back = max_back.max(prev_ts - ts_ms);
        }
        prev_ts = ts_ms;
        max_err = max_err.max(err.abs());
        err_sum += err;
    }
    // Every acked sample is there: with the checks above, exactly once and in firmware order.
    let missing: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|s| !seen.contains(s))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acked samples missing from PostgreSQL, first {:?}; agent stored {stored}\nbridge log tail:\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)],
        bridge.logs().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(in_pg, stored, "PostgreSQL holds what the agent stored");
    assert!(
        acked.len() >= 1000,
        "a meaningful run: {} samples acked",
        acked.len()
    );
    eprintln!(
        "firmware pipeline: {} taken in {:.1} s, {} acked (acked_next {}), {} dropped by the device; \
         {stored} stored by the agent, {} rows in PostgreSQL (drained in {:.1} s); \
         ts − taken: max |{max_err}| ms, mean {:.1} ms; {inversions} ts inversions (max {max_back} ms); \
         device clock at {:.1}% of real time; total {:.1} s (setup {:.1} s)",
        fw.taken.len(),
        sampled_for.as_secs_f64(),
        acked.len(),
        fw.acked_next,
        fw.dropped.len(),
        rows.len(),
        drained_in.as_secs_f64(),
        err_sum as f64 / rows.len().max(1) as f64,
        clock * 100.0,
        started.elapsed().as_secs_f64(),
        (setup_done - started).as_secs_f64(),
    );
    let _ = bridge.terminate().await;
}

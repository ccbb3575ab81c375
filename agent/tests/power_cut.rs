//! Power cuts, not just kills: the real `ferry` process runs on a `ferry-powercut` volume while
//! simulated devices stream; at random moments the power is cut (every write not yet synced is
//! kept or lost as a disk may do, unsynced renames and creates may be undone), the agent is
//! killed and started again on what the disk kept. Afterwards every sample a device saw acked is
//! in the store exactly once, and the store passes `PRAGMA integrity_check`.
//!
//! The filesystem runs in this process, the agent in its own (see `tests/powercut`: a program
//! mapping a file of the volume must not share the server's process). The final checks read the
//! backing directory after the volume is unmounted.
use std::time::Duration;

use ferry_powercut::{Policy, PowerCut};
use ferry_sim::{SimConfig, Transport};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_acked_stored_once_in_order, process_config, spawn_ferry, stop_cleanly, wait_listening,
    TempDir,
};

/// Cuts in the test command; `FERRY_POWER_CUTS` sets another count (the docs report a long run).
fn cuts() -> usize {
    std::env::var("FERRY_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs /dev/fuse and root"]
async fn power_cuts_at_random_moments_lose_no_acked_sample() {
    let dir = TempDir::new("power-cut");
    let seed: u64 = std::env::var("FERRY_POWER_CUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let mut pc = PowerCut::mount(
        &dir.path().join("disk"),
        &dir.path().join("mnt"),
        Policy::Random(seed),
    )
    .expect("mount the power-cut volume");
    let (config, db, addr) = process_config(pc.path(), "power-cut");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;

    let n = cuts();
    let sim_cfg = SimConfig {
        devices: 10,
        transport: Transport::Tcp(addr),
        sensors: 3,
        interval_ms: 5, // 6,000 samples/s in total
        duration: Some(Duration::from_millis(350 * n as u64 + 2_000)),
        drain_timeout: Duration::from_secs(30),
        seed: 43,
        ..SimConfig::default()
    };
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, CancellationToken::new()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut totals = ferry_powercut::CutReport::default();
    for i in 0..n {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..500))).await;
        pc.freeze(); // the power goes: nothing written from here on reaches the disk
        agent.start_kill().unwrap();
        agent.wait().await.unwrap();
        let r = tokio::task::block_in_place(|| pc.cut()).expect("cut");
        println!("cut {i}: {r:?}");
        totals.dirty_files += r.dirty_files;
        totals.sectors_kept += r.sectors_kept;
        totals.sectors_lost += r.sectors_lost;
        totals.changes_kept += r.changes_kept;
        totals.changes_undone += r.changes_undone;
        agent = spawn_ferry(&config);
        // The agent refuses a store that fails its open-time check: it would never listen.
        wait_listening(addr, Duration::from_secs(20)).await;
    }
    let report = sim.await.unwrap();
    stop_cleanly(&mut agent).await;
    // One more cut after the clean stop: what it synced must be all there is.
    pc.freeze();
    tokio::task::block_in_place(|| pc.cut()).unwrap();
    let disk_db = pc.disk().join(db.strip_prefix(pc.path()).unwrap());
    pc.unmount().unwrap();

    println!("{}", report.table());
    println!("{n} cuts, in total: {totals:?}");
    let t = &report.totals;
    assert!(t.disconnects >= n as u64, "devices saw the cuts: {t:?}");
    assert!(
        totals.sectors_lost > 0,
        "the cuts lost unsynced writes (else this tests nothing): {totals:?}"
    );
    assert_eq!(t.unacked_at_end, 0, "the last agent acked everything");
    let conn = rusqlite::Connection::open(&disk_db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let checked = assert_acked_stored_once_in_order(&disk_db, &report);
    assert_eq!(checked, t.acked, "every acked sample is stored");
    assert_eq!(t.dropped, 0);
}

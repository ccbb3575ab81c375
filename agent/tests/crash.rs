//! Crash safety: the real `ferry` process is SIGKILLed at random moments while simulated devices
//! stream, and restarted each time. Afterwards every sample a device saw acked is in the store
//! exactly once, in seq order per device boot.
use std::time::Duration;

use ferry_sim::SimConfig;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_acked_stored_once_in_order, process_config, spawn_ferry, stop_cleanly, wait_listening,
    TempDir,
};

const KILLS: usize = 22;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acked_sample() {
    let dir = TempDir::new("crash");
    let (config, db, addr) = process_config(dir.path(), "crash");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;

    // 10 devices × 3 sensors every 5 ms: 6,000 samples/s in total.
    let sim_cfg = SimConfig {
        duration: Some(Duration::from_secs(14)),
        drain_timeout: Duration::from_secs(20),
        seed: 42,
        ..SimConfig::tcp(addr, 10, 3, 5)
    };
    let sim = tokio::spawn(ferry_sim::run(sim_cfg, CancellationToken::new()));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..450))).await;
        agent.start_kill().unwrap(); // SIGKILL
        let status = agent.wait().await.unwrap();
        assert!(!status.success(), "the agent was killed, not stopped");
        agent = spawn_ferry(&config);
        wait_listening(addr, Duration::from_secs(10)).await;
    }
    let report = sim.await.unwrap();
    // Orderly stop of the last agent (SIGTERM) to read a checkpointed store; exit code 0.
    stop_cleanly(&mut agent).await;

    println!("{}", report.table());
    let t = &report.totals;
    assert!(
        t.generated > 50_000,
        "devices streamed during the kills: {t:?}"
    );
    assert_eq!(
        t.unacked_at_end, 0,
        "the last agent acked everything after the kills"
    );
    assert!(
        t.disconnects >= KILLS as u64,
        "devices saw the kills: {t:?}"
    );
    let checked = assert_acked_stored_once_in_order(&db, &report);
    assert_eq!(
        checked, t.acked,
        "every acked sample is stored (none dropped by rings here)"
    );
    assert_eq!(t.dropped, 0);
}

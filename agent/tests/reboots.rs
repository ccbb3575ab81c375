//! Devices that reboot while streaming: a new boot's Hello often arrives while the old boot's
//! samples are still in the writer's open batch (this once panicked the writer thread). Every
//! acked sample of every boot must be stored exactly once, in order, and the agent must stay up.
use std::time::Duration;

use ferry_sim::{SimConfig, Transport};
use tokio_util::sync::CancellationToken;

use crate::common::{agent, assert_acked_stored_once_in_order, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebooting_devices_keep_every_acked_sample_and_the_writer_up() {
    let dir = TempDir::new("reboots");
    let db = dir.path().join("ferry.db");
    let agent = agent(&db, "").await;
    let cfg = SimConfig {
        devices: 50, // 30,000 samples/s: batches stay open long enough for the race
        transport: Transport::Tcp(agent.tcp_addr.unwrap()),
        sensors: 3,
        interval_ms: 5,
        reboot_every: Some(Duration::from_millis(1000)),
        duration: Some(Duration::from_secs(6)),
        seed: 3,
        ..SimConfig::default()
    };
    let report = ferry_sim::run(cfg, CancellationToken::new()).await;
    // A panicked writer makes stop() fail.
    agent
        .stop()
        .await
        .expect("the writer survived every reboot");
    println!("{}", report.table());
    let t = &report.totals;
    assert!(t.boots >= 200, "devices rebooted: {t:?}");
    assert_eq!(t.unacked_at_end, 0);
    let checked = assert_acked_stored_once_in_order(&db, &report);
    assert_eq!(checked, t.acked);
}

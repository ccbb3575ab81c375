//! Serial ingest over real ptys: devices on simulated serial ports found by a glob, ports that
//! close and come back (unplug/replug), and a port that appears later.
use std::time::Duration;

use ferry_agent::metrics::Metrics;
use ferry_agent::Agent;
use ferry_sim::SimConfig;
use tokio_util::sync::CancellationToken;

use crate::common::{assert_acked_stored_once_in_order, settings, TempDir};
use crate::poll::poll_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_devices_are_ingested_through_unplug_replug_and_late_arrival() {
    let dir = TempDir::new("serial");
    let ports = dir.path().join("ports");
    std::fs::create_dir_all(&ports).unwrap();
    let db = dir.path().join("ferry.db");
    let toml = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[store]\npath = {:?}\n[devices]\ntcp_listen = \"\"\nrescan_interval = \"100ms\"\n\
         [[devices.serial]]\npath = {:?}\nbaud = 115200\n",
        db.display().to_string(),
        format!("{}/*", ports.display())
    );
    let agent = Agent::start(&settings(&toml)).await.unwrap();
    let m = agent.metrics.clone();

    // Two devices whose ports vanish and come back (a new /dev/pts/N behind the same name).
    let flaky = SimConfig {
        disconnect_every: Some(Duration::from_millis(1500)),
        reconnect_after: Duration::from_millis(300),
        id_prefix: "flaky-".into(),
        ..SimConfig::pty(ports.clone(), 2, 3, 10).for_secs(6)
    };
    let flaky = tokio::spawn(ferry_sim::run(flaky, CancellationToken::new()));
    poll_until(
        Duration::from_secs(10),
        "first samples committed",
        async || Metrics::get(&m.samples_committed) > 100,
    )
    .await;

    // A device plugged in later, matching the same glob.
    let late = SimConfig {
        id_prefix: "late-".into(),
        ..SimConfig::pty(ports.clone(), 1, 2, 20).for_secs(3)
    };
    let late = ferry_sim::run(late, CancellationToken::new()).await;
    let flaky = flaky.await.unwrap();
    agent.stop().await.unwrap();

    println!("flaky:\n{}late:\n{}", flaky.table(), late.table());
    assert!(
        flaky.totals.disconnects >= 4,
        "ports were unplugged: {:?}",
        flaky.totals
    );
    assert!(
        Metrics::get(&m.links_total) >= 3 + flaky.totals.disconnects,
        "every replugged port was opened again: {} links for {} disconnects",
        Metrics::get(&m.links_total),
        flaky.totals.disconnects
    );
    for r in [&flaky, &late] {
        assert!(r.totals.acked > 0);
        assert_eq!(r.totals.unacked_at_end, 0, "everything acked in the end");
        let checked = assert_acked_stored_once_in_order(&db, r);
        assert_eq!(
            checked + r.totals.dropped,
            r.totals.acked + r.totals.dropped
        );
    }
    let conn = ferry_agent::store::open_reader(&db).unwrap();
    let devices = ferry_agent::store::read::devices(&conn).unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
    assert_eq!(ids, ["flaky-0000", "flaky-0001", "late-0000"]);
    assert!(devices.iter().all(|d| d.link.starts_with("serial:")));
}

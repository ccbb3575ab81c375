//! `store.ack_budget`: samples wait up to 3/4 of the budget for others to share their commit (one
//! synced log write for many), so the same load costs far fewer commits, and every sample is still
//! acked, within about the budget.
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use ferry_sim::{Report, SimConfig, Transport};
use tokio_util::sync::CancellationToken;

use crate::common::{agent, TempDir};

/// 6 devices x 3 sensors every 10 ms (1,800 samples/s) for 3 s; the agent's commits and the
/// simulator's report.
async fn run(store_extra: &str) -> (u64, Report) {
    let dir = TempDir::new("ack-budget");
    let a = agent(&dir.path().join("ferry.db"), store_extra).await;
    let cfg = SimConfig {
        devices: 6,
        sensors: 3,
        interval_ms: 10,
        transport: Transport::Tcp(a.tcp_addr.expect("tcp listener")),
        duration: Some(Duration::from_secs(3)),
        drain_timeout: Duration::from_secs(20),
        measure_latency: true,
        seed: 5,
        ..SimConfig::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(40),
        ferry_sim::run(cfg, CancellationToken::new()),
    )
    .await
    .expect("the simulator finishes");
    let commits = a.metrics.commits.load(Relaxed);
    a.stop().await.expect("clean stop");
    (commits, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_budget_commits_far_less_often_and_still_acks_everything() {
    let budget = Duration::from_millis(250);
    let (commits_none, none) = run("").await;
    let (commits_budget, with) = run("ack_budget = \"250ms\"").await;
    let (l0, l1) = (none.ack_latency(), with.ack_latency());
    println!(
        "no budget: {commits_none} commits, ack p50 {:.1} ms p99 {:.1} ms; 250 ms: {commits_budget} \
         commits, ack p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        l0.p50_ms, l0.p99_ms, l1.p50_ms, l1.p99_ms, l1.max_ms
    );
    for r in [&none, &with] {
        assert_eq!(r.totals.unacked_at_end, 0, "every sample acked");
        assert_eq!(r.totals.dropped, 0, "no ring drops");
        assert!(r.totals.generated >= 5_000, "{:?}", r.totals);
    }
    // 3 s of samples in batches of 187.5 ms: about 16 commits, plus the Hellos' and the stop's.
    assert!(
        commits_budget <= 40,
        "{commits_budget} commits under a 250 ms budget"
    );
    assert!(
        commits_budget * 5 < commits_none,
        "{commits_budget} commits with the budget, {commits_none} without"
    );
    // Acks wait for the batch (a median of tens of ms, not a fraction of one) but not much beyond
    // the budget (a loaded test machine gets twice it).
    assert!(l1.p50_ms >= 20.0, "acks wait for their batch: {l1:?}");
    assert!(
        l1.p99_ms <= 2.0 * budget.as_secs_f64() * 1e3,
        "acks within about the budget: {l1:?}"
    );
}

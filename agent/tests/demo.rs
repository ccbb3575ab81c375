//! `ferry demo` end to end in-process: simulated devices → agent → in-process MQTT broker →
//! in-process ferry-bridge → jsonl sink, with the demo's own exactly-once check.
use std::time::Duration;

use ferry_agent::demo::{self, DemoOptions};
use tokio_util::sync::CancellationToken;

use crate::common::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_lands_every_acked_sample_at_the_bridge_exactly_once() {
    let dir = TempDir::new("demo");
    let opts = DemoOptions {
        devices: 3,
        rate: 60.0,
        duration: Duration::from_secs(3),
        keep: Some(dir.path().to_owned()),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        demo::run(opts, CancellationToken::new()),
    )
    .await
    .expect("the demo ends in time")
    .expect("the demo runs");
    assert!(outcome.ok(), "{outcome:#?}");
    let b = &outcome.bridge;
    // 3 devices at 60 samples/s for 3 s: well over a hundred samples must have made the trip.
    assert!(outcome.store.acked > 100, "{outcome:#?}");
    assert_eq!(b.distinct, outcome.store.stored, "{outcome:#?}");
    assert_eq!(b.lines, b.distinct, "{outcome:#?}");
    assert!(outcome.forwarded >= outcome.store.stored, "{outcome:#?}");
    // The kept sink is the bridge's own output: one JSON object per event.
    let sink = std::fs::read_to_string(dir.path().join("bridged.jsonl")).unwrap();
    assert_eq!(sink.lines().count() as u64, b.lines);
    let first: serde_json::Value = serde_json::from_str(sink.lines().next().unwrap()).unwrap();
    assert_eq!(first["gateway"], "demo");
}

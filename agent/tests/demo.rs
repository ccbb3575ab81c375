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
        // Until interrupted, as a person runs it: the interruption comes after 3 s.
        duration: None,
        dir: dir.path().to_owned(),
        temporary: false,
        log_file: None,
    };
    let interrupt = CancellationToken::new();
    tokio::spawn({
        let interrupt = interrupt.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            interrupt.cancel();
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(90), demo::run(opts, interrupt))
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

/// `ferry demo` as a newcomer runs it: no options, so it runs until Ctrl-C. It prints the dashboard
/// URL and commands to try, a per-second table with no log lines in it (the log goes to a file);
/// the `ferry replay` it suggests sends events again, which the verdict accounts for; on SIGINT it
/// drains, prints the exactly-once verdict and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_demo_runs_until_ctrl_c_with_a_clean_table_then_prints_the_verdict() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = TempDir::new("demo-cli");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["demo", "--devices", "2", "--keep"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Rows of the table: a number of seconds first. Wait for a few with data flowing.
    let rows_with_data = tokio::time::timeout(Duration::from_secs(60), async {
        let mut rows = 0;
        while let Some(l) = out.next_line().await.unwrap() {
            seen.push(l.clone());
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() == 9 && cols[0].parse::<u32>().is_ok() && cols[3] != "0" {
                rows += 1;
                if rows == 3 {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        rows_with_data.is_ok(),
        "no table rows with data:\n{}",
        seen.join("\n")
    );
    // The replay hint, tried: the events go to the bridge again, and the verdict knows why.
    let api = seen
        .iter()
        .find_map(|l| l.trim().strip_prefix("dashboard  "))
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| panic!("no dashboard line:\n{}", seen.join("\n")));
    let replay = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["replay", "--since", "-1m", "--api", &api])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success() && said.contains(": done"),
        "{replay:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .expect("the demo ends after Ctrl-C")
        .unwrap();
    while let Some(l) = out.next_line().await.unwrap() {
        seen.push(l);
    }
    let text = seen.join("\n");
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("dashboard  http://127.0.0.1:"), "{text}");
    assert!(text.contains("ferry status"), "{text}");
    assert!(text.contains("Running until Ctrl-C"), "{text}");
    assert!(text.contains("sent again (ferry replay)"), "{text}");
    assert!(text.contains("exactly once at the bridge: yes"), "{text}");
    for l in &seen {
        assert!(
            !l.contains(" INFO ") && !l.contains(" WARN ") && !l.contains('\u{1b}'),
            "a log line in the demo's output: {l:?}\n{text}"
        );
    }
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    assert!(err.trim().is_empty(), "nothing on stderr: {err}");
    let log = std::fs::read_to_string(dir.path().join("ferry-demo.log")).unwrap();
    assert!(
        log.contains("Agent totals."),
        "the log went to the file:\n{log}"
    );
}

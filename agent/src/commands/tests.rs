//! The actor's I/O over a real store writer: what it stores, sends to links and publishes. The
//! policy itself is tested in `ledger/tests.rs`.
use super::*;
use crate::config::StoreSettings;
use ferry_contract::OutcomeStatus;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn device_ids_the_link_protocol_cannot_carry_are_refused() {
    assert_eq!(check_device_id("sim-0001"), Ok(()));
    assert_eq!(
        check_device_id("a/b+c#d"),
        Ok(()),
        "escaped in topics and URLs"
    );
    assert_eq!(check_device_id(&"x".repeat(32)), Ok(()));
    let e = check_device_id(&"x".repeat(33)).unwrap_err();
    assert!(
        e.starts_with("33 bytes; a device id is 1..=32 bytes"),
        "{e}"
    );
    assert!(check_device_id("").is_err());
    assert_eq!(
        check_device_id("ab\0c").unwrap_err(),
        "NUL at byte 2; a device id never contains U+0000"
    );
    // 32 bytes of UTF-8 pass, 33 do not, whatever the characters.
    assert_eq!(check_device_id(&"é".repeat(16)), Ok(()));
    assert!(check_device_id(&format!("{}x", "é".repeat(16))).is_err());
}

/// A running writer and actor over a fresh store in a temp dir.
struct Rig {
    dir: std::path::PathBuf,
    settings: StoreSettings,
    handle: CommandsHandle,
    outcomes: mpsc::Receiver<OutgoingOutcome>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(tag: &str) -> Rig {
        let dir = std::env::temp_dir().join(format!("ferry-commands-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = StoreSettings::for_test(dir.join("c.db"));
        let conn = crate::store::open_writer(&settings).unwrap();
        let spawned = crate::store::writer::spawn(
            conn,
            settings.clone(),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        )
        .unwrap();
        spawned.ready.await.unwrap().unwrap();
        let (out_tx, outcomes) = mpsc::channel(8);
        let stop = CancellationToken::new();
        let (handle, task) = spawn(
            crate::store::open_reader(&settings.path).unwrap(),
            spawned.handle.clone(),
            out_tx,
            "gw".into(),
            stop.clone(),
        )
        .await
        .unwrap();
        Rig {
            dir,
            settings,
            handle,
            outcomes,
            stop,
            task,
        }
    }

    async fn outcome(&mut self) -> OutgoingOutcome {
        tokio::time::timeout(WAIT, self.outcomes.recv())
            .await
            .expect("an outcome in time")
            .expect("the actor runs")
    }

    /// `(device_id, done, outcome)` of every stored command, in id order.
    fn rows(&self) -> Vec<(String, bool, Option<String>)> {
        crate::store::open_reader(&self.settings.path)
            .unwrap()
            .prepare("SELECT device_id, done, outcome FROM commands ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn request(id: &str, command: &str) -> CommandRequest {
    CommandRequest::decode(format!(r#"{{"v":1,"id":"{id}","command":{command}}}"#).as_bytes())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_impossible_device_id_is_answered_rejected_and_not_stored() {
    let mut rig = Rig::start("reject").await;
    let identify = r#"{"identify":{"duration_ms":5}}"#;
    for (device, says) in [
        ("d".repeat(33), "33 bytes"),
        ("a\0b".to_owned(), "NUL at byte 1"),
    ] {
        let stored = rig
            .handle
            .submit_stored(device.clone(), request("r-1", identify))
            .await;
        assert!(!stored);
        let o = rig.outcome().await;
        assert_eq!(o.outcome.status, OutcomeStatus::Rejected);
        assert_eq!(
            (o.outcome.device.as_str(), o.outcome.id.as_str()),
            (device.as_str(), "r-1")
        );
        let detail = o.outcome.detail.unwrap();
        assert!(
            detail.starts_with("device id (topic level): ") && detail.contains(says),
            "{detail}"
        );
        assert!(o.delivered.is_some(), "acked at the broker once answered");
    }
    // A valid id is stored as before.
    assert!(
        rig.handle
            .submit_stored("d".repeat(32), request("r-2", identify))
            .await
    );
    let devices: Vec<String> = rig.rows().into_iter().map(|r| r.0).collect();
    assert_eq!(devices, vec!["d".repeat(32)]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downlink_command_is_completed_once_stored_and_a_rejected_one_once_answered() {
    let mut rig = Rig::start("completion").await;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let completion = |tag: &'static str| {
        let tx = done_tx.clone();
        Completion::new(move || tx.send(tag).unwrap())
    };
    rig.handle
        .submit(Submission {
            device: "dev-1".into(),
            request: request("r-1", r#""reboot""#),
            completion: completion("stored"),
        })
        .await;
    let done = tokio::time::timeout(WAIT, done_rx.recv()).await.unwrap();
    assert_eq!(done, Some("stored"));
    assert_eq!(rig.rows().len(), 1, "completed only after it was stored");

    rig.handle
        .submit(Submission {
            device: String::new(),
            request: request("r-2", r#""reboot""#),
            completion: completion("rejected"),
        })
        .await;
    let o = rig.outcome().await;
    assert_eq!(o.outcome.status, OutcomeStatus::Rejected);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), done_rx.recv())
            .await
            .is_err(),
        "not completed before the broker has the answer"
    );
    o.delivered.unwrap().send(()).unwrap();
    let done = tokio::time::timeout(WAIT, done_rx.recv()).await.unwrap();
    assert_eq!(done, Some("rejected"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_link_gets_the_command_and_its_result_is_stored_and_published() {
    let mut rig = Rig::start("roundtrip").await;
    let spec = r#"{"set_interval":{"sensor":1,"interval_ms":250}}"#;
    assert!(
        rig.handle
            .submit_stored("dev-1".into(), request("early", spec))
            .await
    );
    let (link_tx, mut link_rx) = mpsc::channel(32);
    rig.handle.attach("dev-1".into(), 7, link_tx).await;
    let early = tokio::time::timeout(WAIT, link_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        early.spec,
        CommandSpec::SetInterval { sensor: 1, .. }
    ));
    // Accepted while attached: written at once.
    let late_request = || request("late", r#"{"opaque":{"hex":"0a"}}"#);
    assert!(
        rig.handle
            .submit_stored("dev-1".into(), late_request())
            .await
    );
    let late = tokio::time::timeout(WAIT, link_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.wire_id, early.wire_id + 1);

    // Another device's result for the same id is ignored; the device's own ends the command.
    rig.handle
        .result("dev-2".into(), late.wire_id, CommandStatus::Ok, vec![])
        .await;
    rig.handle
        .result(
            "dev-1".into(),
            late.wire_id,
            CommandStatus::Failed,
            vec![1, 2],
        )
        .await;
    let o = rig.outcome().await;
    assert_eq!(
        (o.outcome.id.as_str(), o.outcome.status),
        ("late", OutcomeStatus::Failed)
    );
    assert_eq!(o.outcome.data_hex.as_deref(), Some("0102"));
    let rows = rig.rows();
    assert_eq!(
        (rows[0].1, rows[1].1),
        (false, true),
        "only the answered one is done"
    );
    let stored: CommandOutcome = serde_json::from_str(rows[1].2.as_deref().unwrap()).unwrap();
    assert_eq!(stored, o.outcome, "the published outcome is the stored one");

    // A repeated request id gets the stored outcome again, and nothing new is stored.
    assert!(
        rig.handle
            .submit_stored("dev-1".into(), late_request())
            .await
    );
    assert_eq!(rig.outcome().await.outcome, o.outcome);
    assert_eq!(rig.rows().len(), 2);
    rig.stop().await;
}

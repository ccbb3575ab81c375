//! Firmware updates through the real `ferry` process: simulated devices run the real updater and
//! embassy-boot's bootloader over a RAM flash (`ferry-sim --update-key`), so an update, a
//! rollback and a resumed transfer are the device's real behaviour; the agent is the real binary,
//! driven over its local API, SIGKILLed where the test says.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ferry_agent::firmware::bundle::Bundle;
use ferry_sim::firmware::make_image;
use ferry_sim::{SimConfig, SimUpdate};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::{
    assert_acked_stored_once_in_order, process_config_with_api, spawn_ferry, stop_cleanly,
    wait_listening, TempDir,
};

fn vendor() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn bundle(version: &str, size: usize, confirms: bool) -> Vec<u8> {
    let img = make_image(version, size, confirms).unwrap();
    Bundle::sign(img, version, ferry_sim::firmware::SIM_BOARD, &vendor())
        .unwrap()
        .to_bytes()
}

fn sims(addr: SocketAddr, devices: usize) -> SimConfig {
    SimConfig {
        update: Some(SimUpdate {
            public_key: vendor().verifying_key().to_bytes(),
            version: "1.0.0".into(),
            trial_timeout_ms: 3000,
        }),
        duration: Some(Duration::from_secs(600)),
        drain_timeout: Duration::from_secs(20),
        seed: 16,
        ..SimConfig::tcp(addr, devices, 3, 20)
    }
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Uploads a bundle; its SHA-256.
async fn upload(api: SocketAddr, b: Vec<u8>) -> String {
    let (status, v) = post(&format!("http://{api}/api/v1/firmware/bundles"), b).await;
    assert!(status == 201 || status == 200, "{status} {v}");
    v["sha256"].as_str().unwrap().to_owned()
}

async fn start(api: SocketAddr, spec: Value) -> i64 {
    let (status, v) = post(
        &format!("http://{api}/api/v1/firmware/updates"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    v["id"].as_i64().unwrap()
}

/// Polls an update until it is no longer running.
async fn finished(api: SocketAddr, id: i64, within: Duration) -> Value {
    let until = Instant::now() + within;
    loop {
        let v = get(&format!("http://{api}/api/v1/firmware/updates/{id}")).await;
        if v["state"] != "running" {
            return v;
        }
        assert!(Instant::now() < until, "update {id} still running: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn devices_known(api: SocketAddr, n: usize) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v = get(&format!("http://{api}/api/v1/devices")).await;
        let online = v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["online"] == true)
            .count();
        if online >= n {
            return v;
        }
        assert!(Instant::now() < until, "devices online: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `firmware` events of `/api/v1/stream?device=…` until the job is done (at most 60 s);
/// `open` is told once the stream is open.
async fn firmware_events(
    api: SocketAddr,
    device: &str,
    open: tokio::sync::oneshot::Sender<()>,
) -> Vec<Value> {
    use futures_util::StreamExt;
    let r = reqwest::get(format!("http://{api}/api/v1/stream?device={device}"))
        .await
        .unwrap();
    // The answer's head came: the stream is subscribed to the job events from now on.
    let _ = open.send(());
    let mut body = r.bytes_stream();
    let (mut text, mut seen) = (String::new(), Vec::new());
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(until, body.next()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if block.starts_with("event: firmware\n") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap();
                assert!(!block.contains("\nid:"), "progress carries no id: {block}");
                let j: Value = serde_json::from_str(data).unwrap();
                let done = j["state"] == "done";
                seen.push(j);
                if done {
                    return seen;
                }
            }
        }
    }
    seen
}

fn firmware_of(devices: &Value, id: &str) -> String {
    devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .map(|d| d["firmware"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_updates_every_device_refuses_a_downgrade_and_rolls_back_a_bad_image() {
    let dir = TempDir::new("fw-rollout");
    let (config, db, addr, api) = process_config_with_api(dir.path(), "fw");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let stop = CancellationToken::new();
    let sim = tokio::spawn(ferry_sim::run(sims(addr, 6), stop.clone()));
    devices_known(api, 6).await;

    // Stored once, by its hash.
    let good = bundle("1.1.0", 64 * 1024, true);
    let sha = upload(api, good.clone()).await;
    let (status, again) = post(&format!("http://{api}/api/v1/firmware/bundles"), good).await;
    assert_eq!((status, &again["created"]), (200, &json!(false)), "{again}");
    // The same image signed as another version: refused (a device reports the version it was
    // built with, so that version could never show).
    let relabelled = Bundle::sign(
        make_image("1.1.0", 64 * 1024, true).unwrap(),
        "1.1.1",
        ferry_sim::firmware::SIM_BOARD,
        &vendor(),
    )
    .unwrap();
    let (status, err) = post(
        &format!("http://{api}/api/v1/firmware/bundles"),
        relabelled.to_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .contains("is stored as version 1.1.0"),
        "{err}"
    );
    let mut damaged = bundle("1.1.0", 4096, true);
    let n = damaged.len();
    damaged[n - 1] ^= 1;
    let (status, err) = post(&format!("http://{api}/api/v1/firmware/bundles"), damaged).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .contains("changed after signing"),
        "{err}"
    );

    // The live stream of one device carries its job's progress (`event: firmware`).
    let (open_tx, open_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(firmware_events(api, "sim-0003", open_tx));
    open_rx.await.expect("the stream opened");
    let id = start(
        api,
        json!({"devices": ["sim-*"], "bundle": sha, "concurrency": 3}),
    )
    .await;
    let done = finished(api, id, Duration::from_secs(90)).await;
    assert_eq!(done["state"], "done", "{done:#}");
    let jobs = done["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    for j in jobs {
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(j["offset"], 64 * 1024);
    }
    let seen = progress.await.unwrap();
    assert!(seen.iter().all(|j| j["device"] == "sim-0003"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|j| j["state"] == "transferring" && j["offset"].as_u64() > Some(0)),
        "progress on the stream: {seen:?}"
    );
    assert_eq!(seen.last().unwrap()["state"], "done", "{seen:?}");
    let devs = devices_known(api, 6).await;
    for i in 0..6 {
        assert_eq!(
            firmware_of(&devs, &format!("sim-{i:04}")),
            "1.1.0",
            "{devs:#}"
        );
    }

    // A downgrade is refused by the device; forced, it is installed.
    let old = upload(api, bundle("1.0.5", 8 * 1024, true)).await;
    let id = start(api, json!({"devices": ["sim-0001"], "bundle": old})).await;
    let v = finished(api, id, Duration::from_secs(30)).await;
    assert_eq!(v["state"], "stopped", "{v:#}");
    assert_eq!(v["jobs"][0]["error"], "not_newer", "{v:#}");

    // An image that never confirms itself: rolled back, reported failed, the old version runs.
    let bad = upload(api, bundle("1.2.0", 16 * 1024, false)).await;
    let id = start(api, json!({"devices": ["sim-0002"], "bundle": bad})).await;
    let v = finished(api, id, Duration::from_secs(60)).await;
    assert_eq!(v["jobs"][0]["state"], "failed", "{v:#}");
    assert_eq!(v["jobs"][0]["error"], "rolled_back", "{v:#}");
    let devs = devices_known(api, 6).await;
    assert_eq!(firmware_of(&devs, "sim-0002"), "1.1.0", "{devs:#}");

    stop.cancel();
    let report = sim.await.unwrap();
    stop_cleanly(&mut agent).await;
    println!("{}", report.table());
    for d in &report.devices {
        assert_eq!(d.bricked, None, "{}", d.device_id);
    }
    // Data kept flowing through the updates and the reboots: every acked sample is stored once.
    let checked = assert_acked_stored_once_in_order(&db, &report);
    assert!(checked > 1000, "{checked} samples checked");
    let boots: Vec<String> = report.devices[2]
        .boots
        .iter()
        .map(|b| b.firmware.clone())
        .collect();
    assert_eq!(
        boots,
        ["1.0.0", "1.1.0", "1.2.0", "1.1.0"],
        "sim-0002 ran the new image on trial, then the old one again"
    );
}

/// The agent is SIGKILLed in the middle of a transfer over a line paced at 115,200 baud: after
/// the restart the job goes on from what the device holds, not from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_from_the_device_offset_after_the_agent_is_killed() {
    let dir = TempDir::new("fw-kill");
    let (config, db, addr, api) = process_config_with_api(dir.path(), "fwk");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let stop = CancellationToken::new();
    let cfg = SimConfig {
        line_rate: Some(11_520),
        ..sims(addr, 1)
    };
    let sim = tokio::spawn(ferry_sim::run(cfg, stop.clone()));
    devices_known(api, 1).await;
    let size = 64 * 1024;
    let sha = upload(api, bundle("2.0.0", size, true)).await;
    let id = start(api, json!({"devices": ["sim-0000"], "bundle": sha})).await;
    // Until the device holds about half of it.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(&format!("http://{api}/api/v1/firmware/updates/{id}")).await;
        if v["jobs"][0]["offset"].as_u64().unwrap() >= (size / 2) as u64 {
            break;
        }
        assert!(Instant::now() < until, "{v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();
    agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let v = finished(api, id, Duration::from_secs(60)).await;
    assert_eq!(v["state"], "done", "{v:#}");
    stop.cancel();
    let report = sim.await.unwrap();
    stop_cleanly(&mut agent).await;
    let sent: u64 = report.devices[0].boots.iter().map(|b| b.update_bytes).sum();
    println!(
        "{}\nimage bytes sent: {sent} for a {size}-byte image",
        report.table()
    );
    assert!(
        sent < (size + size / 4) as u64,
        "the transfer went on from the device's offset: {sent} bytes sent"
    );
    assert_eq!(report.devices[0].boots.last().unwrap().firmware, "2.0.0");
    assert_acked_stored_once_in_order(&db, &report);
}

fn ferry(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// The command line a vendor and an operator use: keygen and sign offline, `ferry flash` through
/// the agent (exit 0 when every device runs the image, 1 when one failed), `ferry firmware status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_flash_updates_devices_from_the_command_line() {
    let dir = TempDir::new("fw-cli");
    let d = dir.path();
    let (config, _db, addr, api) = process_config_with_api(d, "fwc");
    let out = ferry(&["firmware", "keygen", "--out", "vendor"], d);
    assert!(out.status.success(), "{out:?}");
    let again = ferry(&["firmware", "keygen", "--out", "vendor"], d);
    assert_eq!(again.status.code(), Some(2), "never overwrites a key");
    let public = ferry_agent::firmware::bundle::read_public_key(
        &std::fs::read_to_string(d.join("vendor.pub")).unwrap(),
    )
    .unwrap();
    for (version, name) in [("1.1.0", "new"), ("0.9.0", "old")] {
        std::fs::write(
            d.join(format!("{name}.bin")),
            make_image(version, 32 * 1024, true).unwrap(),
        )
        .unwrap();
        let out = ferry(
            &[
                "firmware",
                "sign",
                &format!("{name}.bin"),
                "--key",
                "vendor.key",
                "--version",
                version,
                "--board",
                "ferry-sim",
                "-o",
                &format!("{name}.fwb"),
            ],
            d,
        );
        assert!(out.status.success(), "{out:?}");
    }
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let stop = CancellationToken::new();
    let mut cfg = sims(addr, 3);
    if let Some(u) = cfg.update.as_mut() {
        u.public_key = public;
    }
    let sim = tokio::spawn(ferry_sim::run(cfg, stop.clone()));
    devices_known(api, 3).await;
    let api_url = format!("http://{api}");
    let out = tokio::task::spawn_blocking({
        let d = d.to_owned();
        let api_url = api_url.clone();
        move || ferry(&["flash", "sim-*", "new.fwb", "--api", &api_url], &d)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("  done").count(), 3, "{text}");
    let out = tokio::task::spawn_blocking({
        let d = d.to_owned();
        let api_url = api_url.clone();
        move || ferry(&["flash", "sim-0001", "old.fwb", "--api", &api_url], &d)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refused update fails the command: {text}"
    );
    assert!(text.contains("not_newer"), "{text}");
    let status = ferry(&["firmware", "status", "--api", &api_url], d);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && text.contains("update 1: done")
            && text.contains("update 2: stopped"),
        "{text}"
    );
    stop.cancel();
    sim.await.unwrap();
    stop_cleanly(&mut agent).await;
}

/// `[firmware] keys`: a gateway that names its vendor's key takes only bundles signed with it;
/// a key file that cannot be read is a config error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_trusted_keys_refuses_bundles_signed_by_others() {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let dir = TempDir::new("fw-keys");
    let d = dir.path();
    let (config, _db, addr, api) = process_config_with_api(d, "fwk2");
    let pem = vendor()
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    std::fs::write(d.join("vendor.pub"), pem).unwrap();
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{base}[firmware]\nkeys = [{:?}]\n",
            d.join("vendor.pub").display().to_string()
        ),
    )
    .unwrap();
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let url = format!("http://{api}/api/v1/firmware/bundles");
    let (status, _) = post(&url, bundle("1.1.0", 4096, true)).await;
    assert_eq!(status, 201);
    let other = Bundle::sign(
        make_image("1.1.0", 4096, true).unwrap(),
        "1.1.0",
        ferry_sim::firmware::SIM_BOARD,
        &SigningKey::from_bytes(&[0x43; 32]),
    )
    .unwrap();
    let (status, err) = post(&url, other.to_bytes()).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .contains("not one of [firmware] keys"),
        "{err}"
    );
    stop_cleanly(&mut agent).await;

    std::fs::write(
        &config,
        format!("{base}[firmware]\nkeys = [\"/nonexistent/vendor.pub\"]\n"),
    )
    .unwrap();
    let out = ferry(&["config", "check", config.to_str().unwrap()], d);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("firmware.keys[0]"),
        "{text}"
    );
}

/// Fifty simulated devices updated through one agent, ten at a time, while they keep sampling:
/// every device ends on the new version and every sample any device saw acked is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_are_updated_through_one_agent_while_they_sample() {
    let dir = TempDir::new("fw-fifty");
    let (config, db, addr, api) = process_config_with_api(dir.path(), "fw50");
    let mut agent = spawn_ferry(&config);
    wait_listening(addr, Duration::from_secs(10)).await;
    let stop = CancellationToken::new();
    let cfg = SimConfig {
        sensors: 1,
        interval_ms: 100,
        ..sims(addr, 50)
    };
    let sim = tokio::spawn(ferry_sim::run(cfg, stop.clone()));
    devices_known(api, 50).await;
    let sha = upload(api, bundle("1.1.0", 16 * 1024, true)).await;
    let id = start(
        api,
        json!({"devices": ["sim-*"], "bundle": sha, "concurrency": 10}),
    )
    .await;
    let v = finished(api, id, Duration::from_secs(120)).await;
    assert_eq!(v["state"], "done", "{v:#}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 50);
    // Enough sampling to check (an update can finish in about a second): the devices go on, on
    // their new image, until the agent has committed 1,500 samples (3 s of 50 devices at 10 Hz).
    crate::poll::poll_until(
        Duration::from_secs(60),
        "1,500 samples committed",
        async || {
            let n = get(&format!("http://{api}/api/v1/status")).await["ingest"]
                ["samples_committed"]
                .as_u64()
                .unwrap_or(0);
            (n >= 1_500).then_some(()).ok_or(format!("{n}"))
        },
    )
    .await;
    stop.cancel();
    let report = sim.await.unwrap();
    stop_cleanly(&mut agent).await;
    println!("{}", report.table());
    for d in &report.devices {
        assert_eq!(d.boots.last().unwrap().firmware, "1.1.0", "{}", d.device_id);
    }
    assert_eq!(
        report.totals.lost_on_reboot, 0,
        "no reading lost to the reboots"
    );
    let checked = assert_acked_stored_once_in_order(&db, &report);
    // The acked samples: about the 1,500 committed by the stop (with margin for timing).
    assert!(checked >= 1_000, "{checked}");
}

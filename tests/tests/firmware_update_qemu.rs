//! A real firmware update of a real image: the micro:bit v1 firmware (`firmware/boards/microbit`)
//! in `qemu-system-arm -machine microbit` (nRF51822, whose flash controller QEMU emulates), UART0
//! on a pty opened by the real `ferry` agent as a serial device; the update goes in through the
//! agent's local API, exactly as `agent/tests/firmware.rs` does it with simulated devices.
//!
//! - `a_signed_image_is_written_swapped_in_and_confirmed`: 1.0.0 runs; a signed 1.1.0 is uploaded
//!   and an update started; the device writes it to its DFU slot while it keeps sampling,
//!   verifies it (SHA-256, ed25519), resets; the bootloader (embassy-boot) swaps it into ACTIVE;
//!   its Hello says 1.1.0, it confirms itself, and the job ends `done`.
//! - `an_image_that_never_confirms_is_rolled_back`: 1.2.0 built with `FERRY_FW_NEVER_CONFIRM=1`
//!   runs on trial, asks for a reset 5 s later, the bootloader swaps 1.0.0 back: the job fails
//!   with `rolled_back` and the Hello says 1.0.0 again.
//!
//! Samples are checked before, during and after: the store must grow while the job is
//! transferring, and for every boot of the device, every seq below the agent's `boots.next_seq`
//! (everything acked to the device: the agent acks only what it committed) is stored exactly once,
//! except what the device itself dropped (`gap_dropped`). The synthetic `counter` channel counts
//! the readings the device took in that boot, so the device's own numbering is checked too: the
//! counter values stored have no gap larger than what the device reported dropped. The board has
//! one UART, so there is no separate device-side report as in the lm3s6965 tests.
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::agent::AgentProc;
use ferry_tests::microbit::{self, AppImage};
use ferry_tests::qemu::Qemu;
use ferry_tests::{poll_until, require_tool, workspace_bin};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline of each wait (2 shared cores; the agent is a debug build).
const WAIT: Duration = Duration::from_secs(30);
/// The synthetic sensors' `counter` channel.
const COUNTER: i64 = 2;

/// One HTTP/1.1 request to the local API (Connection: close): (status, JSON body or the text).
async fn api(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect to the API");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, v)
}

async fn get(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = api(addr, "GET", path, b"").await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// The device under test: QEMU, the agent on its pty, the agent's API.
struct Rig {
    vm: Qemu,
    agent: AgentProc,
    api: SocketAddr,
    dir: tempfile::TempDir,
    device: String,
    started: Instant,
}

impl Rig {
    /// Boots `first` (through the bootloader) and the agent; returns once the device is online
    /// and reports `first`'s version.
    async fn start(first: &AppImage) -> Rig {
        let started = Instant::now();
        let qemu = require_tool(
            "qemu-system-arm",
            "apt-get install -y --no-install-recommends qemu-system-arm",
        );
        let bootloader = microbit::bootloader_image().expect("bootloader image");
        // Built before the guest starts: until the agent answers, the device's small ring
        // overflows (it samples from boot on).
        workspace_bin("ferry-agent", "ferry").expect("build ferry");
        let vm = microbit::boot(&qemu, &bootloader, first)
            .await
            .expect("boot QEMU");
        let dir = tempfile::Builder::new()
            .prefix("ferry-microbit-")
            .tempdir()
            .unwrap();
        let mut agent = AgentProc::new(
            dir.path(),
            &format!(
                "[api]\nlisten = \"127.0.0.1:0\"\n[gateway]\nid = \"gw-microbit\"\n\
                 [store]\npath = {:?}\n\
                 [devices]\ntcp_listen = \"\"\nrescan_interval = \"100ms\"\n\
                 [[devices.serial]]\npath = {:?}\n\
                 [firmware]\nkeys = [{:?}]\n",
                dir.path().join("ferry.db").display().to_string(),
                vm.pty.display().to_string(),
                // The gateway takes only bundles of the vendor the images trust.
                microbit::vendor_key()
                    .expect("vendor key")
                    .public_path
                    .display()
                    .to_string(),
            ),
            None,
        );
        agent.start().await;
        assert!(
            agent
                .wait_log_line(&["Device link open"], WAIT)
                .await
                .is_some(),
            "agent did not open the pty:\n{}",
            agent.log()
        );
        let api = agent.logged_addr("Serving the local API", WAIT).await;
        let version = first.version.clone();
        let device = poll_until(
            WAIT,
            format!("the micro:bit online with firmware {version}"),
            async || {
                let v = get(api, "/api/v1/devices").await;
                let d = v["devices"]
                    .as_array()?
                    .iter()
                    .find(|d| d["online"] == true)?;
                (d["firmware"] == version.as_str()).then(|| d["id"].as_str().unwrap().to_owned())
            },
        )
        .await;
        assert!(device.starts_with("microbit"), "{device}");
        eprintln!(
            "micro:bit {device} online with {version} after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Rig {
            vm,
            agent,
            api,
            dir,
            device,
            started,
        }
    }

    async fn device(&self) -> Value {
        get(self.api, &format!("/api/v1/devices/{}", self.device)).await
    }

    async fn events(&self) -> u64 {
        self.device().await["counters"]["events"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the store holds `n` more events of the device than now.
    async fn more_events(&self, n: u64, what: &str) -> u64 {
        let from = self.events().await;
        poll_until(
            WAIT,
            format!("{n} more samples stored {what}"),
            async || {
                let e = self.events().await;
                (e >= from + n).then_some(e)
            },
        )
        .await
    }

    /// Uploads `image` signed as `version`; starts an update of the device to it: its id.
    async fn update_to(&self, image: &AppImage, version: &str) -> i64 {
        let bundle = microbit::signed_bundle(image.bytes().unwrap(), version).unwrap();
        let (status, b) = api(self.api, "POST", "/api/v1/firmware/bundles", &bundle).await;
        assert!(status == 201 || status == 200, "{status} {b}");
        assert_eq!(b["board"], microbit::BOARD, "{b}");
        let spec = json!({"devices": [self.device], "bundle": b["sha256"]});
        let (status, u) = api(
            self.api,
            "POST",
            "/api/v1/firmware/updates",
            spec.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{u}");
        u["id"].as_i64().unwrap()
    }

    /// Sends the opaque command `stack` (the firmware answers its stack's high-water mark):
    /// the request id.
    async fn ask_stack(&self, id: &str) {
        let body = json!({"v": 1, "id": id, "command": {"opaque": {"hex": "737461636b"}}});
        let (status, r) = api(
            self.api,
            "POST",
            &format!("/api/v1/devices/{}/commands", self.device),
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{r}");
    }

    /// The answer to [`Rig::ask_stack`]: (bytes used at the deepest, bytes for the stack, the
    /// longest pass of the device loop in µs).
    async fn stack(&self, id: &str) -> (u32, u32, u32) {
        let path = format!("/api/v1/devices/{}/commands/{id}", self.device);
        let outcome = poll_until(WAIT, format!("the answer to {id}"), async || {
            let r = get(self.api, &path).await;
            (r["status"] == "done").then(|| r["outcome"].clone())
        })
        .await;
        assert_eq!(outcome["status"], "ok", "{outcome}");
        let hex = outcome["data_hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        (word(0), word(4), word(8))
    }

    /// Polls the update until it ends (within `within`); along the way, whether samples were
    /// stored while the job was transferring, the device's firmware versions in the order seen,
    /// and (once) a stack probe sent while transferring, after the device verified the signature
    /// of the Begin.
    async fn follow(&self, id: i64, within: Duration) -> Followed {
        let until = Instant::now() + within;
        let mut f = Followed::default();
        let mut transfer_start: Option<(Instant, u64)> = None;
        loop {
            let u = get(self.api, &format!("/api/v1/firmware/updates/{id}")).await;
            let d = self.device().await;
            let job = &u["jobs"][0];
            let events = d["counters"]["events"].as_u64().unwrap_or(0);
            let fw = d["firmware"].as_str().unwrap_or("").to_owned();
            // Ring drops the boot that took the update reported (its heartbeats).
            let boot_id = d["boot_id"].as_u64();
            if *f.old_boot.get_or_insert(boot_id) == boot_id {
                let dropped = d["counters"]["dropped_by_device"].as_u64().unwrap_or(0);
                let before = *f.dropped_before_update.get_or_insert(dropped);
                f.dropped_during_update = dropped.saturating_sub(before);
            }
            if f.firmware.last() != Some(&fw) {
                f.firmware.push(fw);
            }
            let state = job["state"].as_str().unwrap_or("").to_owned();
            if f.states.last() != Some(&state) {
                f.states.push(state.clone());
            }
            let offset = job["offset"].as_u64().unwrap_or(0);
            let length = job["length"].as_u64().unwrap_or(0);
            if state == "transferring" && offset > 0 && offset < length {
                match transfer_start {
                    None => {
                        transfer_start = Some((Instant::now(), events));
                        if !f.stack_asked {
                            self.ask_stack("stack-in-transfer").await;
                            f.stack_asked = true;
                        }
                    }
                    Some((_, e0)) if events > e0 => {
                        f.stored_during = f.stored_during.max(events - e0)
                    }
                    _ => {}
                }
            }
            if state != "transferring" {
                if let Some((t0, _)) = transfer_start.filter(|_| f.transfer_s.is_none()) {
                    f.transfer_s = Some(t0.elapsed().as_secs_f64());
                }
            }
            if u["state"] != "running" {
                f.update = u;
                return f;
            }
            assert!(
                Instant::now() < until,
                "update {id} still running after {within:?}: {u:#}\n{d:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks the store, boot by boot (see the module doc); returns each boot's
    /// (boot_no, next_seq, gap_dropped, stored).
    fn check_store(&self, boots: usize) -> Vec<(i64, i64, i64, i64)> {
        let store =
            ferry_agent::store::open_reader(&self.dir.path().join("ferry.db")).expect("store");
        let rows: Vec<(i64, i64, i64)> = store
            .prepare(
                "SELECT b.boot_no, b.next_seq, b.gap_dropped FROM boots b \
                 JOIN devices d ON d.id = b.device WHERE d.device_id = ?1 ORDER BY b.boot_no",
            )
            .unwrap()
            .query_map([&self.device], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), boots, "boots of {}: {rows:?}", self.device);
        let mut out = Vec::new();
        for (boot_no, next_seq, gap_dropped) in rows {
            let q = |sql: &str| -> i64 {
                store
                    .query_row(
                        &format!(
                            "SELECT {sql} FROM events e JOIN devices d ON d.id = e.device \
                             WHERE d.device_id = ?1 AND e.boot_no = ?2"
                        ),
                        rusqlite::params![self.device, boot_no],
                        |r| r.get(0),
                    )
                    .unwrap()
            };
            let stored = q("count(*)");
            let distinct = q("count(DISTINCT e.seq)");
            let acked_stored: i64 = store
                .query_row(
                    "SELECT count(DISTINCT e.seq) FROM events e JOIN devices d ON d.id = e.device \
                     WHERE d.device_id = ?1 AND e.boot_no = ?2 AND e.seq < ?3",
                    rusqlite::params![self.device, boot_no, next_seq],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(stored, distinct, "boot {boot_no}: a seq stored twice");
            assert_eq!(
                acked_stored,
                next_seq - gap_dropped,
                "boot {boot_no}: of the seqs below next_seq {next_seq}, all but the \
                 {gap_dropped} the device dropped must be stored"
            );
            let counters: Vec<f64> = store
                .prepare(
                    "SELECT e.value FROM events e JOIN devices d ON d.id = e.device \
                     WHERE d.device_id = ?1 AND e.boot_no = ?2 AND e.sensor = ?3 ORDER BY e.seq",
                )
                .unwrap()
                .query_map(rusqlite::params![self.device, boot_no, COUNTER], |r| {
                    r.get(0)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                counters.windows(2).all(|w| w[1] > w[0]),
                "boot {boot_no}: the counter grows with seq"
            );
            let missing =
                counters.last().map_or(0, |&last| last as i64 + 1) - counters.len() as i64;
            assert!(
                missing <= gap_dropped,
                "boot {boot_no}: {missing} counter readings missing, the device dropped only \
                 {gap_dropped} samples"
            );
            out.push((boot_no, next_seq, gap_dropped, stored));
        }
        out
    }

    /// Stops the agent (cleanly) and QEMU, then checks the store as [`Rig::check_store`] does,
    /// on its final state.
    async fn finish(&mut self, boots: usize) -> Vec<(i64, i64, i64, i64)> {
        self.agent.terminate().await;
        let _ = self.vm.child.start_kill();
        let _ = self.vm.child.wait().await;
        self.check_store(boots)
    }
}

#[derive(Default)]
struct Followed {
    update: Value,
    states: Vec<String>,
    firmware: Vec<String>,
    /// Samples stored while the job was transferring (after its first progress).
    stored_during: u64,
    transfer_s: Option<f64>,
    stack_asked: bool,
    /// The boot that took the update.
    old_boot: Option<Option<u64>>,
    /// The old boot's count of samples dropped from its full ring when the update started.
    dropped_before_update: Option<u64>,
    /// How many more it dropped until it reset.
    dropped_during_update: u64,
}

fn images(versions: &[(&str, bool)]) -> Vec<AppImage> {
    versions
        .iter()
        .map(|&(v, confirms)| microbit::app_image(v, confirms).expect("application image"))
        .collect()
}

fn report(
    rig: &Rig,
    f: &Followed,
    boots: &[(i64, i64, i64, i64)],
    stack: (u32, u32, u32),
    image: &Path,
) {
    eprintln!(
        "micro:bit update: job states {:?}, firmware seen {:?}, transfer {:.1} s of a {}-byte image \
         ({}), {} samples stored while transferring, {} dropped by the device during the \
         update; stack high-water {} of {} bytes after \
         verifying the Begin's signature, longest loop pass {} µs; per boot (boot_no, next_seq, gap_dropped, stored): \
         {boots:?}; {:.1} s in all",
        f.states,
        f.firmware,
        f.transfer_s.unwrap_or(0.0),
        f.update["jobs"][0]["length"],
        image.display(),
        f.stored_during,
        f.dropped_during_update,
        stack.0,
        stack.1,
        stack.2,
        rig.started.elapsed().as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm and the thumbv6m-none-eabi target"]
async fn a_signed_image_is_written_swapped_in_and_confirmed() {
    let [old, new] =
        <[AppImage; 2]>::try_from(images(&[("1.0.0", true), ("1.1.0", true)])).unwrap();
    let mut rig = Rig::start(&old).await;
    rig.more_events(300, "before the update").await;

    let id = rig.update_to(&new, "1.1.0").await;
    let f = rig.follow(id, Duration::from_secs(40)).await;
    let job = &f.update["jobs"][0];
    assert_eq!(f.update["state"], "done", "{:#}", f.update);
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["error"], Value::Null, "{job}");
    assert_eq!(job["offset"], job["length"], "{job}");
    assert_eq!(job["length"], new.bytes().unwrap().len(), "{job}");
    assert!(
        f.stored_during > 0,
        "samples were stored while the image was transferred: {:?}",
        f.states
    );
    let stack = rig.stack("stack-in-transfer").await;

    let d = rig.device().await;
    assert_eq!(d["firmware"], "1.1.0", "the Hello of the new boot: {d:#}");
    assert_eq!(d["boots"], 2, "one reset, into the new image: {d:#}");
    assert_eq!(f.firmware.first().map(String::as_str), Some("1.0.0"));
    rig.more_events(200, "after the update").await;
    // Still 1.1.0 after it confirmed itself and kept running.
    assert_eq!(rig.device().await["firmware"], "1.1.0");

    let boots = rig.finish(2).await;
    report(&rig, &f, &boots, stack, &new.bin);
    assert!(stack.0 < stack.1, "the stack fits: {stack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm and the thumbv6m-none-eabi target"]
async fn an_image_that_never_confirms_is_rolled_back() {
    let [old, bad] =
        <[AppImage; 2]>::try_from(images(&[("1.0.0", true), ("1.2.0", false)])).unwrap();
    assert!(!bad.confirms);
    let mut rig = Rig::start(&old).await;
    rig.more_events(200, "before the update").await;

    let id = rig.update_to(&bad, "1.2.0").await;
    let f = rig.follow(id, Duration::from_secs(45)).await;
    let job = &f.update["jobs"][0];
    assert_eq!(job["state"], "failed", "{:#}", f.update);
    assert_eq!(job["error"], "rolled_back", "{job}");
    assert!(
        f.stored_during > 0,
        "samples were stored while the image was transferred: {:?}",
        f.states
    );
    let stack = rig.stack("stack-in-transfer").await;

    let d = rig.device().await;
    assert_eq!(
        d["firmware"], "1.0.0",
        "the Hello after the rollback: {d:#}"
    );
    assert_eq!(
        d["boots"], 3,
        "the old image, the trial, the old image again: {d:#}"
    );
    assert!(
        f.firmware.iter().any(|v| v == "1.2.0"),
        "the new image ran on trial: {:?}",
        f.firmware
    );
    rig.more_events(200, "after the rollback").await;
    assert_eq!(rig.device().await["firmware"], "1.0.0");

    let boots = rig.finish(3).await;
    report(&rig, &f, &boots, stack, &bad.bin);
    assert!(stack.0 < stack.1, "the stack fits: {stack:?}");
}

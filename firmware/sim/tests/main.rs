//! ferry-sim against the reference receiver: throughput, ptys and fault injection, each checked
//! sample by sample (every acked sample stored, once, in seq order).
use std::net::SocketAddr;
use std::time::Duration;

use ferry_sim::receiver::{verify, Receiver};
use ferry_sim::{run, SimConfig, Transport};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

// The one wait-until helper of ferry-tests, by path: ferry-tests depends on this crate.
#[path = "../../../tests/src/poll.rs"]
#[allow(dead_code)]
mod poll;
use poll::poll_until;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_over_tcp_at_50k_per_s_lose_no_acked_sample() {
    let rx = Receiver::bind(loopback(), true).await.unwrap();
    let cfg = SimConfig {
        devices: 50,
        transport: Transport::Tcp(rx.addr),
        sensors: 11,
        interval_ms: 10, // 50 x 11 x 100/s = 55,000 samples/s offered
        total_samples: Some(275_000),
        ..SimConfig::default()
    };
    let report = run(cfg, CancellationToken::new()).await;
    let state = rx.stop().await;
    let st = state.lock().unwrap();
    let v = verify(&report, &st);
    println!("{}", report.table());
    println!("{v:?}");
    assert!(report.totals.generated >= 275_000);
    assert_eq!(
        report.totals.acked, report.totals.generated,
        "everything acked after the drain"
    );
    assert_eq!(
        (report.totals.dropped, report.totals.unacked_at_end),
        (0, 0)
    );
    assert_eq!(v.missing_acked, 0);
    assert_eq!(v.misordered, 0);
    assert_eq!(v.stored, report.totals.acked, "stored exactly once");
    let rate = report.generated_per_s();
    assert!(rate >= 50_000.0, "combined rate {rate:.0} samples/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_ptys_are_serial_ports() {
    let dir = std::env::temp_dir().join(format!("ferry-sim-pty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rx = Receiver::bind(loopback(), true).await.unwrap();
    let cfg = SimConfig {
        total_samples: Some(8_000),
        ..SimConfig::pty(dir.clone(), 4, 3, 5)
    };
    let sim = tokio::spawn(run(cfg, CancellationToken::new()));
    // Open each port the way the agent will: by the symlink, as a serial port.
    let mut attached = [false; 4];
    poll_until(Duration::from_secs(5), "every simulated port", async || {
        for (i, done) in attached.iter_mut().enumerate().filter(|(_, d)| !**d) {
            let path = dir.join(format!("sim-{i:04}"));
            if let Ok(port) = tokio_serial::new(path.to_string_lossy(), 115_200).open_native_async()
            {
                rx.attach(port);
                *done = true;
            }
        }
        let all = attached.iter().all(|d| *d);
        all.then_some(()).ok_or(format!("attached {attached:?}"))
    })
    .await;
    let report = sim.await.unwrap();
    let state = rx.stop().await;
    let st = state.lock().unwrap();
    let v = verify(&report, &st);
    println!("{}\n{v:?}", report.table());
    assert_eq!(report.totals.acked, report.totals.generated);
    assert_eq!((v.missing_acked, v.misordered), (0, 0));
    assert_eq!(v.stored, report.totals.acked);
    for d in 0..4 {
        assert!(
            !dir.join(format!("sim-{d:04}")).exists(),
            "links removed when the ports close"
        );
    }
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_disconnects_and_reboots_never_lose_an_acked_sample() {
    let rx = Receiver::bind(loopback(), true).await.unwrap();
    let cfg = SimConfig {
        devices: 10,
        transport: Transport::Tcp(rx.addr),
        sensors: 3,
        interval_ms: 10,
        noise: 0.0005,
        noise_downlink: 0.0005,
        disconnect_every: Some(Duration::from_secs(1)),
        reboot_every: Some(Duration::from_secs(2)),
        duration: Some(Duration::from_secs(5)),
        seed: 7,
        ..SimConfig::default()
    };
    let report = run(cfg, CancellationToken::new()).await;
    let state = rx.stop().await;
    let st = state.lock().unwrap();
    let v = verify(&report, &st);
    println!("{}\n{v:?}", report.table());
    let t = &report.totals;
    assert!(
        t.boots > 10 && t.disconnects > 0 && t.bytes_corrupted > 0,
        "faults were injected: {t:?}"
    );
    assert!(st.rejected > 0, "the receiver saw corrupted frames");
    assert_eq!(v.missing_acked, 0);
    assert_eq!(v.misordered, 0);
    // Stored is at least what was acked (some stored samples lost their ack to noise or a reboot).
    assert!(v.stored >= t.acked);
    // Accounting closes per boot: generated = acked + dropped + lost on reboot + unacked at end.
    for d in &report.devices {
        for b in &d.boots {
            assert_eq!(
                b.generated,
                b.acked + u64::from(b.dropped) + b.lost_on_reboot + b.unacked_at_end,
                "{b:?}"
            );
        }
    }
}

/// Ack latency times frames of new samples only: each timed entry has at least one sample of its
/// own, so there are never more entries than samples. (A heartbeat sent while nothing was in
/// flight used to be timed too, until the ack of the next samples frame.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_latency_times_no_frame_without_new_samples() {
    let rx = Receiver::bind(loopback(), true).await.unwrap();
    let cfg = SimConfig {
        devices: 1,
        transport: Transport::Tcp(rx.addr),
        sensors: 1,
        interval_ms: 200, // one sample per frame; a heartbeat every second in between
        duration: Some(Duration::from_millis(3_500)),
        measure_latency: true,
        ..SimConfig::default()
    };
    let report = run(cfg, CancellationToken::new()).await;
    rx.stop().await;
    let timed = report.ack_latency().count as u64;
    let generated = report.totals.generated;
    println!("timed {timed} frames, generated {generated} samples");
    assert!(generated >= 10, "{generated} samples");
    assert!(timed >= 1);
    assert!(
        timed <= generated,
        "{timed} timed frames for {generated} samples: a frame without new samples was timed"
    );
}

/// Finding 9: a `Reboot` command made `ferry-sim` spin at 100 % CPU (the device handed out
/// `Action::Reboot` forever), silencing every device of the process and never reporting. Now the
/// device answers `Ok` in its old boot (PROTOCOL.md section 6: answered before the reset), comes
/// back with a new boot id, and the other devices keep streaming until the run reports.
///
/// The scenario runs on its own runtime in its own thread, so a hang fails the test at a deadline
/// instead of hanging it.
#[test]
fn reboot_command_is_answered_then_the_device_reboots_and_the_others_keep_going() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let _ = done_tx.send(rt.block_on(async {
            let rx = Receiver::bind(loopback(), false).await.unwrap();
            let cfg = SimConfig {
                devices: 3,
                transport: Transport::Tcp(rx.addr),
                sensors: 2,
                interval_ms: 10,
                duration: Some(Duration::from_secs(3)),
                seed: 3,
                ..SimConfig::default()
            };
            let sim = tokio::spawn(run(cfg, CancellationToken::new()));
            // Once sim-0001 streams, command its reboot.
            poll_until(Duration::from_secs(10), "sim-0001 to stream", async || {
                let streaming = rx
                    .state
                    .lock()
                    .unwrap()
                    .boots
                    .iter()
                    .any(|((d, _), log)| d == "sim-0001" && log.stored > 0);
                streaming && rx.command("sim-0001", 41, ferry_wire::CommandKind::Reboot)
            })
            .await;
            let report = sim.await.unwrap();
            let state = rx.stop().await;
            let st = state.lock().unwrap();
            let v = verify(&report, &st);
            (report, st.results.clone(), v)
        }));
    });
    let (report, results, v) = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ferry-sim finished and reported within 60 s of a reboot command (it hung)");
    println!("{}\n{v:?}\n{results:?}", report.table());
    let dev = &report.devices[1];
    assert_eq!(dev.device_id, "sim-0001");
    assert_eq!(dev.boots.len(), 2, "one reboot: {:?}", dev.boots);
    let (old, new) = (&dev.boots[0], &dev.boots[1]);
    assert_ne!(old.boot_id, new.boot_id, "a new boot id after the reset");
    assert_eq!(
        results
            .iter()
            .map(|r| (r.device.as_str(), r.boot_id, r.id, r.status))
            .collect::<Vec<_>>(),
        [("sim-0001", old.boot_id, 41, ferry_wire::CommandStatus::Ok)],
        "answered once, Ok, in the old boot's session (before the reset)"
    );
    assert!(
        new.generated > 0 && new.acked > 0,
        "the new boot streams: {new:?}"
    );
    for d in [&report.devices[0], &report.devices[2]] {
        assert_eq!(d.boots.len(), 1, "{}", d.device_id);
        let b = &d.boots[0];
        // 2 channels at 100 Hz for 3 s: 600 samples; the others never stalled.
        assert!(
            b.generated >= 540,
            "{} generated {}",
            d.device_id,
            b.generated
        );
        assert_eq!(b.acked, b.generated, "{}: everything acked", d.device_id);
    }
    assert_eq!(v.missing_acked, 0);
}

/// Every command status a simulated device can give, as `ferry-sim --help` documents them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_every_status() {
    use ferry_wire::{CommandKind, CommandStatus};
    let rx = Receiver::bind(loopback(), false).await.unwrap();
    let cfg = SimConfig {
        devices: 1,
        transport: Transport::Tcp(rx.addr),
        sensors: 2,
        interval_ms: 50,
        duration: Some(Duration::from_secs(2)),
        ..SimConfig::default()
    };
    let sim = tokio::spawn(run(cfg, CancellationToken::new()));
    let commands = [
        (
            1,
            CommandKind::SetInterval {
                sensor: 1,
                interval_ms: 100,
            },
        ),
        (
            2,
            CommandKind::SetInterval {
                sensor: 2,
                interval_ms: 100,
            },
        ),
        (
            3,
            CommandKind::SetInterval {
                sensor: 0,
                interval_ms: 86_400_001,
            },
        ),
        (4, CommandKind::Identify { duration_ms: 100 }),
        (5, CommandKind::Opaque(b"fail:disk full")),
        (6, CommandKind::Opaque(&[0x0a, 0x0b])),
    ];
    const WAIT: Duration = Duration::from_secs(10);
    poll_until(WAIT, "the device to say Hello", async || {
        rx.command("sim-0000", 0, CommandKind::Opaque(b""))
    })
    .await;
    // One at a time: a device queues at most 4 results (a gateway re-sends a command whose result
    // it missed; this receiver does not).
    for (id, kind) in commands {
        assert!(rx.command("sim-0000", id, kind));
        poll_until(WAIT, format!("the answer to {id}"), async || {
            rx.state.lock().unwrap().results.iter().any(|r| r.id == id)
        })
        .await;
    }
    let answered = poll_until(WAIT, "7 answers", async || {
        let results = rx.state.lock().unwrap().results.clone();
        if results.len() == 7 {
            Ok(results)
        } else {
            Err(format!("{results:?}"))
        }
    })
    .await;
    // By id: an opaque command is answered by the board loop, so it may come after later ones.
    let mut got: Vec<(u32, CommandStatus, &[u8])> = answered
        .iter()
        .map(|r| (r.id, r.status, &r.data[..]))
        .collect();
    got.sort_by_key(|r| r.0);
    assert_eq!(
        got,
        [
            (0, CommandStatus::Ok, &b""[..]),
            (1, CommandStatus::Ok, &b""[..]),
            (2, CommandStatus::UnknownSensor, &b""[..]),
            (3, CommandStatus::InvalidArgument, &b""[..]),
            (4, CommandStatus::Unsupported, &b""[..]),
            (5, CommandStatus::Failed, &b":disk full"[..]),
            (6, CommandStatus::Ok, &[0x0a, 0x0b][..]),
        ]
    );
    sim.await.unwrap();
    rx.stop().await;
}

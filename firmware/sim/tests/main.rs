//! ferry-sim against the reference receiver: throughput, ptys and fault injection, each checked
//! sample by sample (every acked sample stored, once, in seq order).
use std::net::SocketAddr;
use std::time::Duration;

use ferry_sim::receiver::{verify, Receiver};
use ferry_sim::{run, SimConfig, Transport};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

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
        devices: 4,
        transport: Transport::Pty {
            link_dir: Some(dir.clone()),
        },
        sensors: 3,
        interval_ms: 5,
        total_samples: Some(8_000),
        ..SimConfig::default()
    };
    let sim = tokio::spawn(run(cfg, CancellationToken::new()));
    // Open each port the way the agent will: by the symlink, as a serial port.
    let mut attached = [false; 4];
    for _ in 0..100 {
        for (i, done) in attached.iter_mut().enumerate().filter(|(_, d)| !**d) {
            let path = dir.join(format!("sim-{i:04}"));
            if let Ok(port) = tokio_serial::new(path.to_string_lossy(), 115_200).open_native_async()
            {
                rx.attach(port);
                *done = true;
            }
        }
        if attached.iter().all(|d| *d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        attached.iter().all(|d| *d),
        "every simulated port appeared: {attached:?}"
    );
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

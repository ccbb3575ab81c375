//! The real lm3s6965 firmware image in QEMU, driven from the host over its UART pty: handshake,
//! ≥ 200 consecutive samples acked, an interval change observed in the sample stream, go-back-N
//! retransmission while acks are withheld, and a reboot by command that starts a new boot.
use std::time::{Duration, Instant};

use ferry_tests::link::{utc_ms, GatewayLink};
use ferry_tests::qemu::{lm3s6965_image, Qemu};
use ferry_tests::require_tool;
use ferry_wire::owned::DeviceMessage;
use ferry_wire::{Acceptor, Ack, Command, CommandKind, CommandStatus, Message, Sample, Welcome};
use tokio_serial::SerialPortBuilderExt;

const COUNTER: u8 = 2;
const T: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-arm and the thumbv7m-none-eabi target"]
async fn lm3s6965_image_in_qemu_speaks_the_protocol() -> anyhow::Result<()> {
    let qemu = require_tool(
        "qemu-system-arm",
        "apt-get install -y --no-install-recommends qemu-system-arm",
    );
    let elf = lm3s6965_image()?;
    let vm = Qemu::boot(&qemu, &elf, "qemu-test-1").await?;
    let port = tokio_serial::new(vm.pty.to_string_lossy(), 115_200).open_native_async()?;
    let mut link = GatewayLink::new(port);

    // Handshake: Hello (repeated until answered) -> Welcome.
    let (boot, sensors) = loop {
        if let DeviceMessage::Hello {
            device_id,
            boot_id,
            sensors,
            firmware,
            ..
        } = link.recv(T).await?
        {
            assert_eq!(device_id, "qemu-test-1");
            assert!(firmware.starts_with("lm3s6965-"), "{firmware}");
            break (boot_id, sensors);
        }
    };
    let names: Vec<&str> = sensors.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(names, ["temperature", "humidity", "counter"]);
    assert_eq!(
        sensors[COUNTER as usize].3, 10,
        "counter sampled every 10 ms at boot"
    );
    link.send(&Message::Welcome(Welcome {
        boot_id: boot,
        utc_ms: utc_ms(),
        next_seq: 0,
    }))
    .await?;

    // ≥ 200 samples, consecutive seqs, each frame acked.
    let mut next: Option<u32> = None;
    let mut got: Vec<(u32, Sample)> = Vec::new();
    while got.len() < 200 {
        if let DeviceMessage::Samples {
            oldest,
            first_seq,
            samples,
        } = link.recv(T).await?
        {
            let expect = *next.get_or_insert(oldest);
            assert_eq!(
                first_seq, expect,
                "consecutive seqs (no retransmission while we ack)"
            );
            got.extend((first_seq..).zip(samples.iter().copied()));
            next = Some(first_seq + samples.len() as u32);
            link.send(&Message::Ack(Ack {
                boot_id: boot,
                next_seq: next.unwrap(),
            }))
            .await?;
        }
    }
    let counter: Vec<&Sample> = got
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.sensor == COUNTER)
        .collect();
    assert!(
        counter.windows(2).all(|w| w[1].value == w[0].value + 1.0),
        "counter channel has no gaps"
    );
    assert!(
        counter.windows(2).all(|w| w[1].ticks - w[0].ticks == 10),
        "counter every 10 ms"
    );
    eprintln!(
        "received {} samples, seqs {}..={}",
        got.len(),
        got[0].0,
        got.last().unwrap().0
    );

    // Change the counter's interval to 100 ms and observe the new rate.
    link.send(&Message::Command(Command {
        id: 1,
        kind: CommandKind::SetInterval {
            sensor: COUNTER,
            interval_ms: 100,
        },
    }))
    .await?;
    let mut result = None;
    let mut after: Vec<Sample> = Vec::new();
    let mut window_start: Option<Instant> = None;
    while window_start.is_none_or(|t| t.elapsed() < Duration::from_secs(2)) {
        match link.recv(T).await? {
            DeviceMessage::CommandResult { id, status, .. } => {
                result = Some((id, status));
                window_start = Some(Instant::now());
            }
            DeviceMessage::Samples {
                first_seq, samples, ..
            } => {
                assert_eq!(first_seq, next.unwrap());
                if window_start.is_some() {
                    after.extend(samples.iter().copied());
                }
                next = Some(first_seq + samples.len() as u32);
                link.send(&Message::Ack(Ack {
                    boot_id: boot,
                    next_seq: next.unwrap(),
                }))
                .await?;
            }
            _ => {}
        }
    }
    assert_eq!(result, Some((1, CommandStatus::Ok)));
    let slow: Vec<&Sample> = after.iter().filter(|s| s.sensor == COUNTER).collect();
    assert!(
        slow.windows(2).all(|w| w[1].ticks - w[0].ticks == 100),
        "counter now every 100 ms"
    );
    assert!(
        (12..=28).contains(&slow.len()),
        "{} counter samples in 2 s at 100 ms",
        slow.len()
    );
    let temps = after.iter().filter(|s| s.sensor == 0).count();
    assert!(
        (25..=55).contains(&temps),
        "{temps} temperature samples in 2 s at 50 ms (unchanged)"
    );

    // Withhold acks: the device must go back to its oldest unacked sample and resend.
    let acked = next.unwrap();
    let mut acceptor = Acceptor::new(acked);
    let mut retransmitted_from = None;
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline && retransmitted_from.is_none() {
        if let DeviceMessage::Samples {
            oldest,
            first_seq,
            samples,
        } = link.recv(T).await?
        {
            assert_eq!(
                oldest, acked,
                "nothing below the last ack is held, nothing above it released"
            );
            let a = acceptor.accept(oldest, first_seq, samples.len());
            assert!(!a.hole, "the pty loses nothing");
            if a.duplicates > 0 {
                retransmitted_from = Some(first_seq);
            }
        }
    }
    assert_eq!(
        retransmitted_from,
        Some(acked),
        "retransmission restarts at the oldest unacked seq"
    );

    // Resume acking: the stream continues with no hole and no drop.
    let resumed_at = acceptor.next();
    link.send(&Message::Ack(Ack {
        boot_id: boot,
        next_seq: resumed_at,
    }))
    .await?;
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(1) {
        match link.recv(T).await? {
            DeviceMessage::Samples {
                oldest,
                first_seq,
                samples,
            } => {
                let a = acceptor.accept(oldest, first_seq, samples.len());
                assert!(!a.hole && a.dropped_by_device == 0, "{a:?} at {first_seq}");
                link.send(&Message::Ack(Ack {
                    boot_id: boot,
                    next_seq: acceptor.next(),
                }))
                .await?;
            }
            DeviceMessage::Heartbeat(h) => assert_eq!(h.dropped, 0),
            _ => {}
        }
    }
    assert!(
        acceptor.next() > resumed_at,
        "new samples flow after the resume"
    );

    // Reboot by command: the result comes first, then a Hello with a new boot id.
    link.send(&Message::Command(Command {
        id: 2,
        kind: CommandKind::Reboot,
    }))
    .await?;
    let mut result_seen = false;
    loop {
        match link.recv(T).await? {
            DeviceMessage::CommandResult { id: 2, status, .. } => {
                assert_eq!(status, CommandStatus::Ok);
                result_seen = true;
            }
            DeviceMessage::Hello {
                boot_id, next_seq, ..
            } => {
                assert!(result_seen, "result before reset");
                assert_ne!(boot_id, boot, "a reboot is a new boot");
                assert!(next_seq < 50, "seqs restart in the new boot");
                break;
            }
            _ => {}
        }
    }
    drop(vm);
    Ok(())
}

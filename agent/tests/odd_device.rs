//! An odd but legal device, written from PROTOCOL.md: NaN and infinite readings, ticks far from
//! their anchor, a sensor missing from its Hello, all-duplicate frames, an odd `Hello.next_seq`.
//! Each must be stored (or refused) as the protocol says, always acked, and never able to stop
//! the device or fail another device's commits (issue 13, findings 2, 3 and 6).

use std::time::Duration;

use ferry_agent::metrics::Metrics;
use ferry_agent::store::query::{self, Agg, EventFilter};
use ferry_agent::store::tail::TailView;
use ferry_wire::{Decoder, Hello, Message, Sample, Samples};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{agent, frame, sensor_infos, TempDir};
use crate::poll::poll_until;

const WAIT: Duration = Duration::from_secs(10);
/// Ticks of the Hello (the session's first anchor).
const TICK0: u64 = 1_000;

/// A scripted device on one TCP connection.
struct Device {
    io: TcpStream,
    dec: Box<Decoder>,
    boot_id: u32,
    acked: u32,
    acks: u32,
}

impl Device {
    /// Connects, says Hello (sensors `s0`, `s1` at 100 ms, so both are summarised) and waits for
    /// the Welcome.
    async fn connect(addr: std::net::SocketAddr, id: &str, boot_id: u32, next_seq: u32) -> Device {
        let io = TcpStream::connect(addr).await.unwrap();
        let mut d = Device {
            io,
            dec: Box::new(Decoder::new()),
            boot_id,
            acked: 0,
            acks: 0,
        };
        let sensors = sensor_infos(&[("s0", "u"), ("s1", "u")]);
        let hello = frame(&Message::Hello(Hello {
            device_id: id,
            firmware: "odd-1",
            boot_id,
            tick_hz: 1000,
            ticks: TICK0,
            next_seq,
            sensors,
        }));
        d.io.write_all(&hello).await.unwrap();
        let welcomed = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(Message::Welcome(w)) = d.read_one().await {
                    if w.boot_id == boot_id {
                        return w.next_seq;
                    }
                }
            }
        })
        .await
        .expect("welcomed");
        d.acked = welcomed;
        d
    }

    /// Reads until one message decodes (acks are noted).
    async fn read_one(&mut self) -> Option<Message<'static>> {
        let mut buf = [0u8; 256];
        loop {
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(n > 0, "the agent closed the link");
            let mut input = &buf[..n];
            let mut last = None;
            while let Some(r) = self.dec.feed(&mut input) {
                match r {
                    Ok(Message::Ack(a)) if a.boot_id == self.boot_id => {
                        self.acks += 1;
                        self.acked = self.acked.max(a.next_seq);
                        last = Some(Message::Ack(a));
                    }
                    Ok(Message::Welcome(w)) => last = Some(Message::Welcome(w)),
                    _ => {}
                }
            }
            if last.is_some() {
                return last;
            }
        }
    }

    async fn send(&mut self, first_seq: u32, samples: &[Sample]) {
        let f = frame(&Message::Samples(Samples {
            oldest: first_seq,
            first_seq,
            samples: samples.iter().copied().collect(),
        }));
        self.io.write_all(&f).await.unwrap();
    }

    /// Waits for an ack covering `next` (and at least `acks` acks in all).
    async fn acked_to(&mut self, next: u32, acks: u32) {
        tokio::time::timeout(WAIT, async {
            while self.acked < next || self.acks < acks {
                self.read_one().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("acked to {next} ({} so far)", self.acked));
    }
}

fn at(ms: u64, sensor: u8, value: f32) -> Sample {
    Sample {
        ticks: TICK0 + ms,
        sensor,
        value,
    }
}

fn events(db: &std::path::Path, device: &str) -> Vec<query::EventRow> {
    let c = ferry_agent::store::open_reader(db).unwrap();
    let key = query::device_key(&c, device)
        .unwrap()
        .expect("device stored");
    let f = EventFilter {
        device: Some(key),
        ..Default::default()
    };
    query::events_by_id(&c, &TailView::default(), &f, 0, i64::MAX, 10_000)
        .unwrap()
        .0
}

fn bits(v: f64) -> String {
    format!("{v} ({:#018x})", v.to_bits())
}

/// NaN, +Inf and -Inf among normal readings: acked, stored as they are (NaN as the quiet NaN),
/// served by `latest` and `series`; no commit fails, the other device loses nothing. On the code
/// before issue 13 the NaN failed every group commit (`NOT NULL constraint failed: events.value`)
/// and its device was never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinities_are_acked_stored_and_served_and_other_devices_unaffected() {
    let dir = TempDir::new("odd-nan");
    let db = dir.path().join("ferry.db");
    let a = agent(&db, "").await;
    let addr = a.tcp_addr.unwrap();
    let mut odd = Device::connect(addr, "odd", 0x0dd, 0).await;
    let mut plain = Device::connect(addr, "plain", 0x91a, 0).await;

    // +Inf and -Inf of sensor 1 fall into one ten-second summary slot.
    let odd_values: Vec<Sample> = vec![
        at(0, 0, 1.5),
        at(0, 1, f32::NAN),
        at(10, 0, f32::INFINITY),
        at(10, 1, f32::NEG_INFINITY),
        at(20, 0, -2.5),
        at(20, 1, f32::INFINITY),
        at(30, 0, f32::from_bits(0x7fc0_1234)), // a NaN with a payload
        at(30, 1, 4.0),
        at(40, 0, f32::from_bits(0xffc0_0000)), // a negative quiet NaN
        at(40, 1, f32::MIN_POSITIVE / 8.0),     // subnormal
    ];
    let mut plain_next = 0;
    for (i, chunk) in odd_values.chunks(2).enumerate() {
        odd.send((i * 2) as u32, chunk).await;
        let normal: Vec<Sample> = (0..8)
            .map(|k| at(u64::from(plain_next + k), 0, (plain_next + k) as f32))
            .collect();
        plain.send(plain_next, &normal).await;
        plain_next += 8;
    }
    odd.acked_to(odd_values.len() as u32, 1).await;
    plain.acked_to(plain_next, 1).await;
    assert_eq!(
        Metrics::get(&a.metrics.commit_failures),
        0,
        "no commit failed"
    );
    assert_eq!(
        Metrics::get(&a.metrics.samples_committed),
        odd_values.len() as u64 + u64::from(plain_next)
    );

    a.store.sync().await.unwrap();
    let stored = events(&db, "odd");
    assert_eq!(stored.len(), odd_values.len(), "every odd reading stored");
    for (e, s) in stored.iter().zip(&odd_values) {
        let want = f64::from(s.value);
        if want.is_nan() {
            assert_eq!(
                e.value.to_bits(),
                f64::NAN.to_bits(),
                "seq {}: every NaN is stored as the quiet NaN, got {}",
                e.seq,
                bits(e.value)
            );
        } else {
            assert_eq!(e.value.to_bits(), want.to_bits(), "seq {}", e.seq);
        }
    }
    assert_eq!(events(&db, "plain").len(), plain_next as usize);

    let c = ferry_agent::store::open_reader(&db).unwrap();
    let latest = query::latest(&c, &TailView::default(), Some("odd")).unwrap();
    let sensors = &latest[0].1;
    assert!(sensors[0].value.is_nan(), "s0's newest is the NaN");
    assert_eq!(sensors[1].value, f64::from(f32::MIN_POSITIVE / 8.0));

    // Series over the raw events and, once the summaries hold them, over the summaries.
    let key = query::device_key(&c, "odd").unwrap().unwrap();
    let since = 0;
    let until = i64::MAX / 2;
    let series = |agg| {
        let c = ferry_agent::store::open_reader(&db).unwrap();
        query::series(
            &c,
            &TailView::default(),
            key,
            1,
            since,
            until,
            3_600_000,
            agg,
        )
        .unwrap()
    };
    // sensor 1: NaN, -Inf, +Inf, 4.0, subnormal. NaN is skipped; -Inf + +Inf is NaN.
    let check = |what: &str| {
        let avg = series(Agg::Avg);
        assert_eq!(avg.len(), 1, "{what}");
        assert!(avg[0].1.is_nan(), "{what}: avg {}", avg[0].1);
        assert_eq!(avg[0].2, 5, "{what}: count");
        assert_eq!(series(Agg::Min)[0].1, f64::NEG_INFINITY, "{what}: min");
        assert_eq!(series(Agg::Max)[0].1, f64::INFINITY, "{what}: max");
        assert_eq!(series(Agg::Count)[0].1, 5.0, "{what}: count");
    };
    check("raw");
    // The summaries are written with a flush of the tail that stores summarised events (at most
    // every 100 ms): feed sensor 0 and flush until sensor 1's slot is written.
    let summarised = |c: &rusqlite::Connection| -> i64 {
        c.query_row(
            "SELECT count(*) FROM rollup_10s WHERE device = ?1 AND sensor = 1 AND total IS NULL",
            [key],
            |r| r.get(0),
        )
        .unwrap()
    };
    let mut seq = odd_values.len() as u32;
    poll_until(WAIT, "sensor 1's summary", async || {
        if summarised(&c) > 0 {
            return true;
        }
        odd.send(seq, &[at(50 + u64::from(seq), 0, 1.0)]).await;
        seq += 1;
        odd.acked_to(seq, 1).await;
        a.store.sync().await.unwrap();
        false
    })
    .await;
    assert_eq!(
        summarised(&c),
        1,
        "the summary of +Inf and -Inf is a NaN sum"
    );
    check("summaries");
    assert_eq!(
        Metrics::get(&a.metrics.commit_failures),
        0,
        "no commit failed"
    );
    a.stop().await.unwrap();
}

/// Ticks far from the anchor (2^63, `u64::MAX`) are not stored with a wrapped timestamp: the
/// samples are refused, counted, quarantined once, and their seqs acked, so the device goes on.
/// Before issue 13 they were stored in the year -292,274,998 and 1 ms before the anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_out_of_range_are_acked_counted_quarantined_and_not_stored() {
    let dir = TempDir::new("odd-ticks");
    let db = dir.path().join("ferry.db");
    let a = agent(&db, "").await;
    let mut d = Device::connect(a.tcp_addr.unwrap(), "ticks", 7, 0).await;
    let samples = [
        at(0, 0, 1.0),
        Sample {
            ticks: 1 << 63,
            sensor: 0,
            value: 2.0,
        },
        Sample {
            ticks: u64::MAX,
            sensor: 1,
            value: 3.0,
        },
        at(5, 1, 4.0),
    ];
    d.send(0, &samples).await;
    d.acked_to(4, 1).await;
    // The device retransmits the frame (its ack was late): a duplicate, not a second refusal.
    d.send(0, &samples).await;
    d.acked_to(4, 2).await;
    d.send(4, &[at(10, 0, 5.0)]).await;
    d.acked_to(5, 3).await;
    a.store.sync().await.unwrap();

    let stored: Vec<(u32, f64)> = events(&db, "ticks")
        .iter()
        .map(|e| (e.seq, e.value))
        .collect();
    assert_eq!(stored, [(0, 1.0), (3, 4.0), (4, 5.0)]);
    let anchor = events(&db, "ticks")[0].ts_ms;
    for e in events(&db, "ticks") {
        assert!(
            (e.ts_ms - anchor).abs() < 1_000,
            "{} near the anchor",
            e.ts_ms
        );
    }
    assert_eq!(Metrics::get(&a.metrics.samples_out_of_range), 2);
    let c = ferry_agent::store::open_reader(&db).unwrap();
    let q = ferry_agent::store::read::quarantine_counts(&c).unwrap();
    assert_eq!(q.get("time_out_of_range"), Some(&1), "{q:?}");
    a.stop().await.unwrap();
}

/// PROTOCOL.md section 4 and 5: a sensor index missing from the Hello's table is stored as
/// `sensor<index>`; an all-duplicate frame is acked; `Hello.next_seq` is informational (a Hello
/// announcing 0xFFFFFFF0 counts no gap when the samples start at 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sensor_duplicates_and_hello_next_seq_follow_the_protocol() {
    let dir = TempDir::new("odd-proto");
    let db = dir.path().join("ferry.db");
    let a = agent(&db, "").await;
    let mut d = Device::connect(a.tcp_addr.unwrap(), "proto", 9, 0xFFFF_FFF0).await;
    d.send(0, &[at(0, 0, 1.0), at(0, 9, 2.0), at(1, 1, 3.0)])
        .await;
    d.acked_to(3, 1).await;
    let acks = d.acks;
    // All duplicates: answered with an ack of the durable next.
    d.send(0, &[at(0, 0, 1.0), at(0, 9, 2.0)]).await;
    d.acked_to(3, acks + 1).await;
    a.store.sync().await.unwrap();

    let names: Vec<(u32, String, String)> = events(&db, "proto")
        .into_iter()
        .map(|e| (e.seq, e.sensor, e.unit))
        .collect();
    assert_eq!(
        names,
        [
            (0, "s0".into(), "u".into()),
            (1, "sensor9".into(), String::new()),
            (2, "s1".into(), "u".into())
        ]
    );
    assert_eq!(Metrics::get(&a.metrics.samples_dropped_by_device), 0);
    assert_eq!(Metrics::get(&a.metrics.samples_duplicate), 2);
    a.stop().await.unwrap();
}

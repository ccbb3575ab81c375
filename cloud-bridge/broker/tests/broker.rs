//! The in-process broker against real rumqttc clients (MQTT 5 and 3.1.1) over loopback.
//! Every wait is bounded; a missing message fails the test with what did arrive.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use ferry_broker::{Broker, BrokerStats};
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use rumqttc::v5::mqttbytes::QoS as Q5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    addr: SocketAddr,
    stats: Arc<BrokerStats>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Rig {
    async fn start() -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ferry_broker=debug")
            .with_test_writer()
            .try_init();
        let broker = Broker::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = broker.local_addr();
        let stats = broker.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(broker.run(stop.clone()));
        Rig {
            addr,
            stats,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("broker stops in time")
            .unwrap();
    }
}

/// What a client saw, in order.
#[derive(Debug, Clone)]
#[allow(dead_code)] // some fields are only printed (Debug) when a test fails
enum Seen {
    ConnAck {
        session_present: bool,
    },
    SubAck,
    Publish {
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        dup: bool,
        pkid: u16,
    },
    PubAck {
        pkid: u16,
        unrouted: bool,
    },
    Disconnect,
    Error(String),
}

/// An MQTT 5 client whose event loop runs in a task; aborting the task drops the socket
/// without a DISCONNECT (an abnormal end for the broker).
struct C5 {
    client: rumqttc::v5::AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

fn v5_options(id: &str, addr: SocketAddr, persistent: bool) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5));
    let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
    props.max_packet_size = Some(4 << 20);
    if persistent {
        o.set_clean_start(false).set_manual_acks(true);
        props.session_expiry_interval = Some(300);
    }
    o.set_connect_properties(props);
    o
}

impl C5 {
    fn start(o: rumqttc::v5::MqttOptions) -> C5 {
        let (client, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let seen = match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => match p {
                        P5::ConnAck(c) => Seen::ConnAck {
                            session_present: c.session_present,
                        },
                        P5::SubAck(_) => Seen::SubAck,
                        P5::Publish(p) => Seen::Publish {
                            topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
                            pkid: p.pkid,
                        },
                        P5::PubAck(a) => Seen::PubAck {
                            pkid: a.pkid,
                            unrouted: a.reason == PubAckReason::NoMatchingSubscribers,
                        },
                        P5::Disconnect(_) => Seen::Disconnect,
                        _ => continue,
                    },
                    Ok(rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                        // Written and flushed; dropping the event loop closes the socket.
                        let _ = tx.send(Seen::Disconnect);
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Seen::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        C5 { client, rx, task }
    }

    /// The next event matching `f`, skipping others; panics after `WAIT`.
    async fn expect<T>(&mut self, what: &str, mut f: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(s)) => match f(&s) {
                    Some(t) => return t,
                    None => skipped.push(s),
                },
                _ => panic!("no {what} within {WAIT:?}; saw {skipped:?}"),
            }
        }
    }

    async fn connack(&mut self) -> bool {
        self.expect("CONNACK", |s| match s {
            Seen::ConnAck { session_present } => Some(*session_present),
            _ => None,
        })
        .await
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, Q5::AtLeastOnce)
            .await
            .unwrap();
        self.expect("SUBACK", |s| matches!(s, Seen::SubAck).then_some(()))
            .await;
    }

    /// The next `n` publishes: (topic, payload, retain, dup, pkid).
    async fn publishes(&mut self, n: usize) -> Vec<(String, Vec<u8>, bool, bool, u16)> {
        let mut out = Vec::new();
        while out.len() < n {
            let p = self
                .expect(&format!("PUBLISH {} of {n}", out.len() + 1), |s| match s {
                    Seen::Publish {
                        topic,
                        payload,
                        retain,
                        dup,
                        pkid,
                    } => Some((topic.clone(), payload.clone(), *retain, *dup, *pkid)),
                    _ => None,
                })
                .await;
            out.push(p);
        }
        out
    }

    /// No PUBLISH arrives within `d`.
    async fn quiet(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(s)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            assert!(!matches!(s, Seen::Publish { .. }), "unexpected {s:?}");
        }
    }

    /// Sends a QoS 1 PUBLISH (its PUBACK comes through [`C5::puback`]).
    async fn publish1(&self, topic: &str, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, Q5::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }

    async fn puback(&mut self) -> bool {
        self.expect("PUBACK", |s| match s {
            Seen::PubAck { unrouted, .. } => Some(*unrouted),
            _ => None,
        })
        .await
    }

    /// Drops the connection without DISCONNECT.
    fn kill(self) {
        self.task.abort();
    }
}

fn v4_client(
    id: &str,
    addr: SocketAddr,
    clean: bool,
) -> (
    rumqttc::AsyncClient,
    mpsc::UnboundedReceiver<rumqttc::Event>,
    JoinHandle<()>,
) {
    let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(clean);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    (client, rx, task)
}

async fn v4_next_publish(rx: &mut mpsc::UnboundedReceiver<rumqttc::Event>) -> rumqttc::Publish {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) => return p,
            Ok(Some(_)) => {}
            _ => panic!("no PUBLISH within {WAIT:?}"),
        }
    }
}

async fn v4_wait_for(
    rx: &mut mpsc::UnboundedReceiver<rumqttc::Event>,
    what: &str,
    f: impl Fn(&rumqttc::Packet) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(rumqttc::Event::Incoming(p))) if f(&p) => return,
            Ok(Some(_)) => {}
            _ => panic!("no {what} within {WAIT:?}"),
        }
    }
}

#[tokio::test]
async fn v4_and_v5_clients_exchange_messages_through_wildcards() {
    let rig = Rig::start().await;
    let mut sub = C5::start(v5_options("sub5", rig.addr, false));
    assert!(!sub.connack().await);
    sub.subscribe("a/+/c").await;
    sub.subscribe("x/#").await;
    let (pub4, mut rx4, _t) = v4_client("pub4", rig.addr, true);
    v4_wait_for(&mut rx4, "CONNACK", |p| {
        matches!(p, rumqttc::Packet::ConnAck(_))
    })
    .await;
    for t in ["a/b/c", "a/b/d", "a/b/c/d", "x", "x/y/z", "y/x"] {
        pub4.publish(t, rumqttc::QoS::AtLeastOnce, false, t.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let got: Vec<String> = sub.publishes(3).await.into_iter().map(|p| p.0).collect();
    assert_eq!(got, ["a/b/c", "x", "x/y/z"]);
    sub.quiet(Duration::from_millis(300)).await;

    // And the other way: a 3.1.1 subscriber gets what a 5 client publishes.
    pub4.subscribe("back/+", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_for(&mut rx4, "SUBACK", |p| {
        matches!(p, rumqttc::Packet::SubAck(_))
    })
    .await;
    sub.publish1("back/1", false, b"hi".to_vec()).await;
    let p = v4_next_publish(&mut rx4).await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("back/1", &b"hi"[..]));
    rig.stop().await;
}

#[tokio::test]
async fn shared_subscription_splits_messages_across_members() {
    let rig = Rig::start().await;
    let filter = ferry_contract::EVENTS_SHARED_FILTER;
    let mut a = C5::start(v5_options("bridge-a", rig.addr, false));
    let mut b = C5::start(v5_options("bridge-b", rig.addr, false));
    a.connack().await;
    b.connack().await;
    a.subscribe(filter).await;
    b.subscribe(filter).await;
    let mut p = C5::start(v5_options("gw", rig.addr, false));
    p.connack().await;
    let n = 40;
    for i in 0..n {
        let topic = ferry_contract::events_topic("gw", &format!("d{}", i % 3));
        p.publish1(&topic, false, format!("{i}").into_bytes()).await;
    }
    for _ in 0..n {
        assert!(!p.puback().await, "a shared group is a subscriber");
    }
    let mut seen = BTreeSet::new();
    let (mut from_a, mut from_b) = (0, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < n && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(Seen::Publish { payload, .. }) = a.rx.recv() => {
                from_a += 1;
                assert!(seen.insert(payload), "delivered twice");
            }
            Some(Seen::Publish { payload, .. }) = b.rx.recv() => {
                from_b += 1;
                assert!(seen.insert(payload), "delivered twice");
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    assert_eq!(seen.len(), n, "a got {from_a}, b got {from_b}");
    assert!(
        from_a > 0 && from_b > 0,
        "not split: a {from_a}, b {from_b}"
    );
    a.quiet(Duration::from_millis(200)).await;
    b.quiet(Duration::from_millis(200)).await;
    rig.stop().await;
}

#[tokio::test]
async fn retained_messages_reach_later_subscribers_until_cleared() {
    let rig = Rig::start().await;
    let mut p = C5::start(v5_options("p", rig.addr, false));
    p.connack().await;
    p.publish1("ferry/v1/gw/status", true, b"online".to_vec())
        .await;
    assert!(p.puback().await, "no subscriber yet: reason 0x10");
    let mut s = C5::start(v5_options("s", rig.addr, false));
    s.connack().await;
    s.subscribe("ferry/v1/+/status").await;
    let got = s.publishes(1).await;
    assert_eq!((&got[0].1[..], got[0].2), (&b"online"[..], true));
    // A live message is forwarded without the retain flag.
    p.publish1("ferry/v1/gw/status", true, b"again".to_vec())
        .await;
    let got = s.publishes(1).await;
    assert_eq!((&got[0].1[..], got[0].2), (&b"again"[..], false));
    // An empty retained payload clears it.
    p.publish1("ferry/v1/gw/status", true, Vec::new()).await;
    s.publishes(1).await;
    let mut late = C5::start(v5_options("late", rig.addr, false));
    late.connack().await;
    late.subscribe("ferry/v1/+/status").await;
    late.quiet(Duration::from_millis(300)).await;
    rig.stop().await;
}

#[tokio::test]
async fn will_is_published_on_abnormal_drop_and_keepalive_timeout_but_not_on_disconnect() {
    let rig = Rig::start().await;
    let mut watch = C5::start(v5_options("watch", rig.addr, false));
    watch.connack().await;
    watch.subscribe("ferry/v1/+/status").await;
    let will = |id: &str| {
        let mut o = v5_options(id, rig.addr, false);
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            format!("ferry/v1/{id}/status"),
            b"offline".to_vec(),
            Q5::AtLeastOnce,
            true,
            None,
        ));
        o
    };
    // Clean DISCONNECT: no will.
    let mut clean = C5::start(will("clean"));
    clean.connack().await;
    clean.client.disconnect().await.unwrap();
    watch.quiet(Duration::from_millis(300)).await;
    // Dropped socket: the will, retained.
    let mut lost = C5::start(will("lost"));
    lost.connack().await;
    lost.kill();
    let got = watch.publishes(1).await;
    assert_eq!(
        (got[0].0.as_str(), &got[0].1[..]),
        ("ferry/v1/lost/status", &b"offline"[..])
    );
    let mut late = C5::start(v5_options("late", rig.addr, false));
    late.connack().await;
    late.subscribe("ferry/v1/lost/status").await;
    assert!(late.publishes(1).await[0].2, "the will was retained");

    // Keep-alive: a raw 3.1.1 client with keep-alive 1 s and a will goes silent.
    let mut raw = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    let mut c = rumqttc::mqttbytes::v4::Connect::new("silent");
    c.keep_alive = 1;
    c.last_will = Some(rumqttc::mqttbytes::v4::LastWill::new(
        "ferry/v1/silent/status",
        b"gone".to_vec(),
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let mut buf = bytes::BytesMut::new();
    c.write(&mut buf).unwrap();
    raw.write_all(&buf).await.unwrap();
    let started = std::time::Instant::now();
    let got = watch.publishes(1).await;
    assert_eq!(got[0].0, "ferry/v1/silent/status");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}"
    );
    assert!(rig.stats.wills.load(Relaxed) >= 2);
    rig.stop().await;
}

#[tokio::test]
async fn qos1_publish_without_subscriber_is_acked_with_0x10() {
    let rig = Rig::start().await;
    let mut p = C5::start(v5_options("gw", rig.addr, false));
    p.connack().await;
    p.publish1("ferry/v1/gw/d/events", false, b"{}".to_vec())
        .await;
    assert!(p.puback().await, "no subscriber: reason 0x10");
    let mut s = C5::start(v5_options("bridge", rig.addr, false));
    s.connack().await;
    s.subscribe(ferry_contract::EVENTS_SHARED_FILTER).await;
    p.publish1("ferry/v1/gw/d/events", false, b"{}".to_vec())
        .await;
    assert!(!p.puback().await, "a subscriber now: success");
    s.publishes(1).await;
    assert_eq!(rig.stats.unrouted.load(Relaxed), 1);
    rig.stop().await;
}

#[tokio::test]
async fn persistent_sessions_get_unacked_and_queued_messages_after_reconnect() {
    let rig = Rig::start().await;
    let mut sub = C5::start(v5_options("bridge", rig.addr, true));
    assert!(!sub.connack().await);
    sub.subscribe("t/#").await;
    let mut p = C5::start(v5_options("pub", rig.addr, false));
    p.connack().await;
    for i in 0..3u8 {
        p.publish1("t/a", false, vec![i]).await;
    }
    // Received but never acked (manual acks), then the connection drops.
    let first = sub.publishes(3).await;
    assert!(first.iter().all(|p| !p.3));
    sub.kill();
    for i in 3..6u8 {
        p.publish1("t/b", false, vec![i]).await;
    }
    for _ in 0..6 {
        assert!(
            !p.puback().await,
            "an offline persistent session is a subscriber"
        );
    }
    let mut again = C5::start(v5_options("bridge", rig.addr, true));
    assert!(again.connack().await, "session present");
    let got = again.publishes(6).await;
    let payloads: Vec<u8> = got.iter().map(|p| p.1[0]).collect();
    assert_eq!(
        payloads,
        [0, 1, 2, 3, 4, 5],
        "unacked first, in order, then queued"
    );
    assert!(got[..3].iter().all(|p| p.3), "redeliveries carry DUP");
    assert_eq!(
        got[..3].iter().map(|p| p.4).collect::<Vec<_>>(),
        first.iter().map(|p| p.4).collect::<Vec<_>>(),
        "same packet ids"
    );
    // Ack everything this time: a further reconnect gets nothing.
    let publishes: Vec<_> = got
        .iter()
        .map(|g| {
            let mut p = rumqttc::v5::mqttbytes::v5::Publish::new(
                g.0.clone(),
                Q5::AtLeastOnce,
                g.1.clone(),
                None,
            );
            p.pkid = g.4;
            p
        })
        .collect();
    for pb in &publishes {
        again.client.ack(pb).await.unwrap();
    }
    // The broker handles a connection's packets in order: once this PUBACK is back, so are
    // the acks before it.
    again.publish1("sync", false, Vec::new()).await;
    again.puback().await;
    again.client.disconnect().await.unwrap();
    again
        .expect("DISCONNECT sent", |s| {
            matches!(s, Seen::Disconnect).then_some(())
        })
        .await;
    let mut third = C5::start(v5_options("bridge", rig.addr, true));
    assert!(third.connack().await);
    third.quiet(Duration::from_millis(300)).await;

    // 3.1.1 persistent session (clean_session = false): queued while away.
    let (c4, mut rx4, t4) = v4_client("agent", rig.addr, false);
    c4.subscribe("cmd/+", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    v4_wait_for(&mut rx4, "SUBACK", |p| {
        matches!(p, rumqttc::Packet::SubAck(_))
    })
    .await;
    t4.abort();
    p.publish1("cmd/x", false, b"reboot".to_vec()).await;
    assert!(!p.puback().await);
    let (_c4, mut rx4, _t4) = v4_client("agent", rig.addr, false);
    let got = v4_next_publish(&mut rx4).await;
    assert_eq!(&got.payload[..], b"reboot");
    assert_eq!(rig.stats.dropped_queue_full.load(Relaxed), 0);
    rig.stop().await;
}

#[tokio::test]
async fn malformed_bytes_and_qos2_close_only_that_connection() {
    let rig = Rig::start().await;
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "the broker kept a bad connection open");
    };
    // Garbage as the first packet.
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02])
        .await
        .unwrap();
    closed(s).await;
    // A valid CONNECT, then garbage with a plausible header.
    let connect = {
        let mut buf = bytes::BytesMut::new();
        rumqttc::mqttbytes::v4::Connect::new("raw")
            .write(&mut buf)
            .unwrap();
        buf
    };
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(&connect).await.unwrap();
    s.write_all(&[0x82, 0x03, 0x00, 0x00, 0xff]).await.unwrap();
    closed(s).await;
    // QoS 2 is refused by closing.
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(&connect).await.unwrap();
    let mut q2 =
        rumqttc::mqttbytes::v4::Publish::new("t", rumqttc::QoS::ExactlyOnce, b"x".to_vec());
    q2.pkid = 1;
    let mut buf = bytes::BytesMut::new();
    q2.write(&mut buf).unwrap();
    s.write_all(&buf).await.unwrap();
    closed(s).await;
    // A header announcing more than the maximum packet size.
    let mut s = tokio::net::TcpStream::connect(rig.addr).await.unwrap();
    s.write_all(&connect).await.unwrap();
    s.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f]).await.unwrap();
    closed(s).await;
    assert!(rig.stats.protocol_errors.load(Relaxed) >= 4);

    // The broker still works.
    let mut c = C5::start(v5_options("fine", rig.addr, false));
    c.connack().await;
    c.subscribe("ok").await;
    c.publish1("ok", false, vec![0u8; 1 << 20]).await;
    let got = c.publishes(1).await;
    assert_eq!(got[0].1.len(), 1 << 20, "a 1 MiB message goes through");
    rig.stop().await;
}

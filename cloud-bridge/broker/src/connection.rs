//! One client connection: a reader (decode, keep-alive, forward to the router) and a writer
//! (drain the connection's bounded queue into the socket).
//!
//! Invariants:
//! - The reader reserves queue space for a reply before it asks the router (CONNECT, QoS 1
//!   PUBLISH, SUBSCRIBE, UNSUBSCRIBE), so the router never waits and no reply is lost; when the
//!   queue is full the reader stops reading from this client (backpressure).
//! - Nothing from a client is forwarded before its CONNECT, and a second CONNECT, a QoS 2
//!   packet, an invalid topic name, malformed bytes or an oversized packet close the
//!   connection with a log line (MQTT 5: after a DISCONNECT naming the reason).
//! - The router hears exactly one `Gone` per accepted connection, saying whether the will is
//!   due (anything but a normal DISCONNECT). The writer ends once the reader and the router
//!   have let go of the queue, after writing what it holds (bounded by a grace period).
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{
    encode, CodecError, Decoder, DisconnectReason, Inbound, Limits, Outbound, Qos, Version,
};
use super::session::ConnId;
use super::topic::valid_topic_name;
use super::{BrokerSettings, BrokerStats, ToRouter};

/// Queue slots kept for replies and QoS 0 deliveries on top of the in-flight window.
const QUEUE_SLACK: usize = 320;
/// Longest the writer may take to flush after the connection ended.
const WRITER_GRACE: Duration = Duration::from_secs(2);

/// How a connection ended.
enum End {
    /// DISCONNECT from the client.
    Normal { publish_will: bool },
    /// Lost or closed for a reason; the will is due. `send` is the 5 DISCONNECT reason.
    Abnormal {
        why: String,
        send: Option<DisconnectReason>,
        protocol_error: bool,
    },
    /// Another connection took the session (the router already handled it).
    TakenOver,
    /// The broker stops.
    Shutdown,
}

fn abnormal(why: impl Into<String>) -> End {
    End::Abnormal {
        why: why.into(),
        send: None,
        protocol_error: false,
    }
}

fn violation(why: impl Into<String>, send: DisconnectReason) -> End {
    End::Abnormal {
        why: why.into(),
        send: Some(send),
        protocol_error: true,
    }
}

fn codec_end(e: CodecError) -> End {
    let send = match e {
        CodecError::TooLarge { .. } => DisconnectReason::PacketTooLarge,
        _ => DisconnectReason::Malformed,
    };
    violation(e.to_string(), send)
}

/// Serves one accepted connection until it ends.
pub(crate) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    router: mpsc::Sender<ToRouter>,
    settings: Arc<BrokerSettings>,
    stats: Arc<BrokerStats>,
    shutdown: CancellationToken,
) {
    stats.connected.fetch_add(1, Relaxed);
    serve(stream, peer, conn, router, &settings, &stats, shutdown).await;
    stats.connected.fetch_sub(1, Relaxed);
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    router: mpsc::Sender<ToRouter>,
    settings: &BrokerSettings,
    stats: &BrokerStats,
    shutdown: CancellationToken,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut dec = Decoder::new(settings.max_packet);
    let first = tokio::select! {
        r = tokio::time::timeout(settings.connect_timeout, read_first(&mut rd, &mut buf, &mut dec)) => r,
        _ = shutdown.cancelled() => return,
    };
    let req = match first {
        Ok(Ok(Some(Inbound::Connect(req)))) => req,
        Ok(Ok(_)) => {
            debug!(%peer, "Connection closed before CONNECT.");
            return;
        }
        Ok(Err(CodecError::UnsupportedLevel(level))) => {
            stats.protocol_errors.fetch_add(1, Relaxed);
            warn!(%peer, level, "Unsupported MQTT protocol level; refusing the connection.");
            // CONNACK 0x01 "unacceptable protocol version" (the 3.1/3.1.1 form).
            let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            return;
        }
        Ok(Err(e)) => {
            stats.protocol_errors.fetch_add(1, Relaxed);
            warn!(%peer, error = %e, "Bad first packet; closing the connection.");
            return;
        }
        Err(_) => {
            warn!(%peer, "No CONNECT in time; closing the connection.");
            return;
        }
    };
    let version = req.version;
    let client_id = req.client_id.clone();
    let keep_alive = req.keep_alive;
    let capacity = usize::from(settings.max_inflight) + QUEUE_SLACK;
    let (tx, rx) = mpsc::channel(capacity);
    let close = shutdown.child_token();
    let writer_kill = CancellationToken::new();
    let limits = Limits {
        max_packet: settings.max_packet,
        receive_maximum: settings.receive_maximum,
    };
    let writer = tokio::spawn(write_loop(wr, rx, version, limits, writer_kill.clone()));
    let Ok(permit) = tx.clone().reserve_owned().await else {
        return;
    };
    let connect = ToRouter::Connect {
        conn,
        req,
        tx: tx.clone(),
        close: close.clone(),
        reply: permit,
    };
    let end = if router.send(connect).await.is_err() {
        End::Shutdown
    } else {
        debug!(%peer, client_id = %client_id, ?version, "CONNECT received.");
        read_loop(
            &mut rd, &mut buf, &mut dec, conn, &router, &tx, keep_alive, &close, &shutdown,
        )
        .await
    };
    let publish_will = match &end {
        End::Normal { publish_will } => *publish_will,
        End::Abnormal {
            why,
            send,
            protocol_error,
        } => {
            if *protocol_error {
                stats.protocol_errors.fetch_add(1, Relaxed);
                warn!(%peer, client_id = %client_id, reason = %why, "Closing the connection.");
            } else {
                info!(%peer, client_id = %client_id, reason = %why, "Connection lost.");
            }
            if let Some(r) = send {
                let _ = tx.try_send(Outbound::Disconnect(*r));
            }
            true
        }
        End::TakenOver => false,
        End::Shutdown => {
            let _ = tx.try_send(Outbound::Disconnect(DisconnectReason::ShuttingDown));
            false
        }
    };
    // After a takeover the router has already forgotten this connection and ignores this.
    let _ = router.send(ToRouter::Gone { conn, publish_will }).await;
    drop(tx);
    let mut writer = writer;
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer_kill.cancel();
        let _ = writer.await;
    }
}

/// Reads until the first packet (CONNECT) is complete.
async fn read_first(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    dec: &mut Decoder,
) -> Result<Option<Inbound>, CodecError> {
    loop {
        if let Some(p) = dec.next(buf)? {
            return Ok(Some(p));
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    dec: &mut Decoder,
    conn: ConnId,
    router: &mpsc::Sender<ToRouter>,
    tx: &mpsc::Sender<Outbound>,
    keep_alive: u16,
    close: &CancellationToken,
    shutdown: &CancellationToken,
) -> End {
    // The specification allows one and a half keep-alive periods of silence.
    let grace = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    let mut deadline = grace.map(|g| Instant::now() + g);
    loop {
        loop {
            let packet = match dec.next(buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return codec_end(e),
            };
            if let Some(end) = handle(packet, conn, router, tx).await {
                return end;
            }
        }
        let ka = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = close.cancelled() => {
                return if shutdown.is_cancelled() { End::Shutdown } else { End::TakenOver };
            }
            _ = ka => return violation("keep-alive timeout", DisconnectReason::KeepAliveTimeout),
            r = rd.read_buf(buf) => match r {
                Ok(0) => return abnormal("closed by the peer without DISCONNECT"),
                Ok(_) => deadline = grace.map(|g| Instant::now() + g),
                Err(e) => return abnormal(format!("read error: {e}")),
            },
        }
    }
}

/// Handles one packet after CONNECT; `Some` ends the connection.
async fn handle(
    packet: Inbound,
    conn: ConnId,
    router: &mpsc::Sender<ToRouter>,
    tx: &mpsc::Sender<Outbound>,
) -> Option<End> {
    // The router is gone only when the broker stops; our queue only when the writer failed.
    let gone = || Some(End::Shutdown);
    let closed = || Some(abnormal("the connection's writer stopped"));
    let to_router = match packet {
        Inbound::Publish { msg, pkid } => {
            if !valid_topic_name(&msg.topic) {
                return Some(violation(
                    format!("invalid topic name {:?}", msg.topic),
                    DisconnectReason::TopicNameInvalid,
                ));
            }
            let ack = match msg.qos {
                Qos::AtMostOnce => None,
                Qos::AtLeastOnce => match tx.clone().reserve_owned().await {
                    Ok(p) => Some((pkid, p)),
                    Err(_) => return closed(),
                },
            };
            ToRouter::Publish { conn, msg, ack }
        }
        Inbound::PubAck(pkid) => ToRouter::PubAck { conn, pkid },
        Inbound::Subscribe { pkid, filters } => {
            if filters.is_empty() {
                return Some(violation(
                    "SUBSCRIBE without filters",
                    DisconnectReason::ProtocolError,
                ));
            }
            let Ok(reply) = tx.clone().reserve_owned().await else {
                return closed();
            };
            ToRouter::Subscribe {
                conn,
                pkid,
                filters,
                reply,
            }
        }
        Inbound::Unsubscribe { pkid, filters } => {
            let Ok(reply) = tx.clone().reserve_owned().await else {
                return closed();
            };
            ToRouter::Unsubscribe {
                conn,
                pkid,
                filters,
                reply,
            }
        }
        Inbound::PingReq => {
            return tx.send(Outbound::PingResp).await.err().and(closed());
        }
        Inbound::Disconnect { publish_will } => return Some(End::Normal { publish_will }),
        Inbound::Qos2(what) => {
            return Some(violation(
                format!("{what}: QoS 2 is not supported by this broker (use QoS 0 or 1)"),
                DisconnectReason::QosNotSupported,
            ))
        }
        Inbound::Connect(_) => {
            return Some(violation("second CONNECT", DisconnectReason::ProtocolError))
        }
        Inbound::Unexpected(what) => {
            return Some(violation(
                format!("{what} is not sent by clients"),
                DisconnectReason::ProtocolError,
            ))
        }
    };
    router.send(to_router).await.err().and(gone())
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outbound>,
    version: Version,
    limits: Limits,
    kill: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let first = tokio::select! {
            o = rx.recv() => o,
            _ = kill.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(o) = next {
            if let Err(e) = encode(version, &o, limits, &mut buf) {
                warn!(error = %e, "Could not encode a packet; closing the connection.");
                return;
            }
            next = if buf.len() < 256 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let written = tokio::select! {
            r = wr.write_all(&buf) => r,
            _ = kill.cancelled() => break,
        };
        if written.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
}

//! A small in-process MQTT broker (3.1.1 and 5, loopback TCP, no TLS) so `ferry demo` and tests
//! run the whole path with nothing installed. Not a production broker: no authentication, no
//! persistence across restarts, no QoS 2.
//!
//! ```text
//!  client ──TCP──▶ connection task (reader: decode, keep-alive) ──ToRouter──▶ router task
//!         ◀──TCP── connection writer (encode) ◀──bounded queue (Outbound)──┘  (sessions, subs,
//!                                                                              retained)
//! ```
//!
//! Modules by domain: [`topic`] (names, filters, `$share`), [`codec`] (framing and packets on
//! top of rumqttc's codecs), [`session`] (QoS 1 queue and window), [`router`] (routing, shared
//! groups, retained, wills) are pure; `connection` owns a socket; this module owns the router
//! task and the listener.
//!
//! Invariants:
//! - One owner per resource: the router task alone holds sessions, subscriptions and retained
//!   messages; each connection's socket belongs to its own reader and writer tasks.
//! - A QoS 1 PUBLISH is acked after it was routed: a PUBACK means every matching session has it
//!   (MQTT 5: reason 0x10 when nothing matched, as mosquitto does; the Ferry uplink relies on it
//!   to hold events until the bridge subscribes).
//! - The router never waits on a connection: replies (CONNACK, PUBACK, SUBACK, UNSUBACK) use
//!   queue space the reader reserved before asking, deliveries use `try_send` (a QoS 1 message
//!   that does not fit stays queued in its session and is retried; QoS 0 is dropped).
//! - Everything is bounded: the packet size, each connection's queue, each session's queue and
//!   in-flight window. Whatever is dropped is counted in [`BrokerStats`].
//! - Persistent sessions (3.1.1 `clean_session = false`, 5 `clean_start = false` with a session
//!   expiry) live in memory while the broker runs; unacked and queued messages are redelivered
//!   when the client reconnects.
//! - Malformed input closes that connection with a log line (and publishes its will); it never
//!   panics the broker.
//! - Shutdown: stop accepting, close every connection (5: DISCONNECT "server shutting down"),
//!   stop the router. Session state is lost.
#![warn(missing_docs)]
pub mod codec;
mod connection;
pub mod router;
pub mod session;
pub mod topic;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use codec::{ConnectReq, DisconnectReason, Message, Outbound, SubRequest};
use router::{Router, RouterLimits};
use session::{ConnId, Outbox};

/// Broker limits.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// Largest packet accepted (and announced to MQTT 5 clients).
    pub max_packet: usize,
    /// Most QoS 1 messages in flight to one client.
    pub max_inflight: u16,
    /// Most QoS 1 messages queued for one session.
    pub max_queued: usize,
    /// Most unacked QoS 1 publishes a 5 client may send (announced in CONNACK).
    pub receive_maximum: u16,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_packet: 16 << 20,
            max_inflight: 256,
            max_queued: 100_000,
            receive_maximum: 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters since start. Every dropped message or refused connection increments one.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub connected: AtomicU64,
    /// PUBLISH packets received (wills included).
    pub published: AtomicU64,
    /// PUBLISH packets sent to subscribers (redeliveries included).
    pub delivered: AtomicU64,
    /// Publishes that matched no subscriber.
    pub unrouted: AtomicU64,
    /// QoS 1 messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped (subscriber offline or its connection queue full).
    pub dropped_qos0: AtomicU64,
    /// Messages larger than the subscriber's maximum packet size.
    pub dropped_too_large: AtomicU64,
    /// Messages still held when their (non-persistent or expired) session ended.
    pub dropped_session_ended: AtomicU64,
    /// Wills published.
    pub wills: AtomicU64,
    /// Connections closed for malformed input or a protocol violation.
    pub protocol_errors: AtomicU64,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What connections tell the router.
#[derive(Debug)]
pub(crate) enum ToRouter {
    Connect {
        conn: ConnId,
        req: ConnectReq,
        tx: mpsc::Sender<Outbound>,
        close: CancellationToken,
        reply: mpsc::OwnedPermit<Outbound>,
    },
    Publish {
        conn: ConnId,
        msg: Message,
        /// QoS 1: the packet id and the reserved space for its PUBACK.
        ack: Option<(u16, mpsc::OwnedPermit<Outbound>)>,
    },
    PubAck {
        conn: ConnId,
        pkid: u16,
    },
    Subscribe {
        conn: ConnId,
        pkid: u16,
        filters: Vec<SubRequest>,
        reply: mpsc::OwnedPermit<Outbound>,
    },
    Unsubscribe {
        conn: ConnId,
        pkid: u16,
        filters: Vec<String>,
        reply: mpsc::OwnedPermit<Outbound>,
    },
    Gone {
        conn: ConnId,
        publish_will: bool,
    },
}

/// A bound broker; [`Broker::run`] serves it.
#[derive(Debug)]
pub struct Broker {
    listener: TcpListener,
    settings: BrokerSettings,
    stats: Arc<BrokerStats>,
}

impl Broker {
    /// Binds `addr` with default settings.
    pub async fn bind(addr: SocketAddr) -> Result<Broker, BrokerError> {
        Broker::bind_with(addr, BrokerSettings::default()).await
    }

    /// Binds `addr`.
    pub async fn bind_with(
        addr: SocketAddr,
        settings: BrokerSettings,
    ) -> Result<Broker, BrokerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BrokerError::Bind { addr, source })?;
        Ok(Broker {
            listener,
            settings,
            stats: Arc::new(BrokerStats::default()),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The counters (live while it runs).
    pub fn stats(&self) -> Arc<BrokerStats> {
        self.stats.clone()
    }

    /// Serves until `shutdown`, then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let addr = self.local_addr();
        info!(%addr, "MQTT broker listening.");
        let (to_router, rx) = mpsc::channel(1024);
        let router = Router::new(
            RouterLimits {
                max_inflight: self.settings.max_inflight,
                max_queued: self.settings.max_queued,
            },
            self.stats.clone(),
        );
        let router_stop = CancellationToken::new();
        let router_task = tokio::spawn(run_router(router, rx, router_stop.clone()));
        let tracker = TaskTracker::new();
        let settings = Arc::new(self.settings);
        let mut next_conn: ConnId = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        next_conn += 1;
                        self.stats.connections.fetch_add(1, Relaxed);
                        let _ = stream.set_nodelay(true);
                        tracker.spawn(connection::run(
                            stream,
                            peer,
                            next_conn,
                            to_router.clone(),
                            settings.clone(),
                            self.stats.clone(),
                            shutdown.child_token(),
                        ));
                    }
                    Err(e) => {
                        warn!(error = %e, "Accept failed; retrying.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(to_router);
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            warn!("Some broker connections did not close in time.");
        }
        router_stop.cancel();
        let _ = router_task.await;
        info!(%addr, "MQTT broker stopped.");
    }
}

/// The router's connections: each one's outgoing queue and close signal.
#[derive(Default)]
struct Links {
    map: HashMap<ConnId, (mpsc::Sender<Outbound>, CancellationToken)>,
}

impl Outbox for Links {
    fn try_send(&mut self, conn: ConnId, out: Outbound) -> bool {
        self.map
            .get(&conn)
            .is_some_and(|(tx, _)| tx.try_send(out).is_ok())
    }

    fn close(&mut self, conn: ConnId, reason: DisconnectReason) {
        if let Some((tx, close)) = self.map.remove(&conn) {
            let _ = tx.try_send(Outbound::Disconnect(reason));
            close.cancel();
        }
    }
}

async fn run_router(mut router: Router, mut rx: mpsc::Receiver<ToRouter>, stop: CancellationToken) {
    let mut links = Links::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = tick.tick() => {
                router.tick(Instant::now(), &mut links);
                continue;
            }
            _ = stop.cancelled() => break,
        };
        match msg {
            ToRouter::Connect {
                conn,
                req,
                tx,
                close,
                reply,
            } => {
                links.map.insert(conn, (tx, close.clone()));
                let ok = router.connect(
                    conn,
                    req,
                    Instant::now(),
                    |o| {
                        reply.send(o);
                    },
                    &mut links,
                );
                if !ok {
                    links.map.remove(&conn);
                    close.cancel();
                }
            }
            ToRouter::Publish { conn, msg, ack } => {
                let matched = router.publish(conn, msg, &mut links);
                if let Some((pkid, permit)) = ack {
                    permit.send(Outbound::PubAck {
                        pkid,
                        unrouted: matched == 0,
                    });
                }
            }
            ToRouter::PubAck { conn, pkid } => router.puback(conn, pkid, &mut links),
            ToRouter::Subscribe {
                conn,
                pkid,
                filters,
                reply,
            } => router.subscribe(
                conn,
                pkid,
                filters,
                |o| {
                    reply.send(o);
                },
                &mut links,
            ),
            ToRouter::Unsubscribe {
                conn,
                pkid,
                filters,
                reply,
            } => router.unsubscribe(conn, pkid, filters, |o| {
                reply.send(o);
            }),
            ToRouter::Gone { conn, publish_will } => {
                router.connection_lost(conn, publish_will, Instant::now(), &mut links);
                links.map.remove(&conn);
            }
        }
    }
    debug!(sessions = router.sessions(), "Broker router stopped.");
}

//! The MQTT connection: one task drives rumqttc's event loop and reports what happens as
//! [`LinkEvent`]s; the uplink core publishes through a [`Publisher`].
//!
//! Packet ids: rumqttc assigns them when it writes a PUBLISH and reports
//! `Outgoing::Publish(pkid)`; requests are written in the order they were queued, so the
//! uplink's ledger matches each `Sent(pkid)` to its oldest queued message
//! ([`super::ledger::Ledger::on_sent`]). After a connection loss this driver removes the
//! publishes rumqttc would replay on its own and hands control back to the core
//! ([`LinkEvent::Down`]), which republishes every unacked message itself in order; nothing is
//! ever queued twice, so the order of `Sent` events stays unambiguous.
//!
//! The event loop is polled only in this task and never cancelled mid-write (dropping a
//! `poll()` future while it flushes could leave half a packet on the wire).
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;

/// What the connection reports to the core.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK received. `max_packet` is the broker's limit (MQTT 5), if it sent one.
    Connected {
        /// Largest packet the broker accepts.
        max_packet: Option<u32>,
    },
    /// A queued PUBLISH was written with this packet id.
    Sent(u16),
    /// PUBACK for this packet id.
    Acked(u16),
    /// PUBACK for this packet id saying no subscriber matched (MQTT 5 reason 0x10): the broker
    /// accepted the message and discarded it.
    Unrouted(u16),
    /// A message on a subscribed topic. Acks are manual: the broker redelivers it (persistent
    /// session) until `ack` is passed to [`Publisher::ack`].
    Message {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
        /// What acknowledges it.
        ack: AckToken,
    },
    /// The connection is gone. The core must reset its packet-id bookkeeping and answer
    /// `resume`; the driver then waits out the backoff and reconnects.
    Down {
        /// What happened.
        error: String,
        /// The broker refused a PUBLISH (MQTT 5 PUBACK reason code), which ended the
        /// connection; the refused packet id is the one sent but neither acked nor in `kept`.
        refused: Option<String>,
        /// Packet ids rumqttc still held unacked when the connection dropped.
        kept: Vec<u16>,
        /// Answer when ready.
        resume: oneshot::Sender<()>,
    },
}

/// Identifies a received QoS 1 message for its PUBACK (QoS 0 messages need none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    /// Packet id of the incoming PUBLISH.
    pub pkid: u16,
    /// False for QoS 0: nothing to acknowledge.
    pub needs_ack: bool,
}

/// How long the broker keeps this client's session (its subscription and the commands queued
/// for it) while the agent is away (MQTT 5 session expiry; MQTT 3.1.1 brokers keep it until
/// their own limit).
pub const SESSION_EXPIRY_S: u32 = 7 * 24 * 3600;

/// Queues requests on the connection (never blocks: the core keeps fewer requests outstanding
/// than the queue holds).
pub trait Publisher: Send + Sync {
    /// QoS 1 publish.
    fn publish(&self, topic: &str, payload: Bytes, retain: bool) -> Result<(), String>;
    /// QoS 1 subscribe.
    fn subscribe(&self, filter: &str) -> Result<(), String>;
    /// Clean disconnect (MQTT 5: the broker does not publish the last will).
    fn disconnect(&self) -> Result<(), String>;
    /// PUBACK for a received message, once it is safely handled.
    fn ack(&self, token: AckToken) -> Result<(), String>;
}

/// TLS material, PEM encoded.
#[derive(Clone)]
pub struct TlsFiles {
    /// CA certificates that sign the broker's certificate.
    pub ca: Vec<u8>,
    /// Client certificate chain and private key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Sizes only: `ferry config check` prints settings, and a private key must never be shown.
impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &format_args!("{} bytes of PEM", self.ca.len()))
            .field(
                "client",
                &self.client.as_ref().map(|(cert, _)| {
                    format!("certificate: {} bytes of PEM, key: (set)", cert.len())
                }),
            )
            .finish()
    }
}

/// Connection parameters shared by both protocol versions.
#[derive(Clone)]
pub struct LinkOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id.
    pub client_id: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// TLS, if any.
    pub tls: Option<TlsFiles>,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// Last will: topic, payload (retained, QoS 1).
    pub will: Option<(String, Vec<u8>)>,
    /// Most unacked publishes (rumqttc's inflight window).
    pub inflight: u16,
    /// Largest incoming packet accepted.
    pub max_incoming: usize,
    /// Queue length for requests.
    pub queue: usize,
}

/// Everything but the password (shown as set or not).
impl std::fmt::Debug for LinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(user, _)| (user, "(password set)")),
            )
            .field("will", &self.will.as_ref().map(|(topic, _)| topic))
            .field("inflight", &self.inflight)
            .field("max_incoming", &self.max_incoming)
            .field("queue", &self.queue)
            .finish()
    }
}

/// Starts the driver for MQTT 5 or 3.1.1.
pub fn start(
    v5: bool,
    o: &LinkOptions,
    backoff: Backoff,
    shutdown: CancellationToken,
) -> (
    Arc<dyn Publisher>,
    mpsc::Receiver<LinkEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(o.inflight as usize * 2 + 64);
    if v5 {
        let (client, el) = v5::client(o);
        let task = tokio::spawn(v5::drive(el, tx, backoff, shutdown));
        (Arc::new(client), rx, task)
    } else {
        let (client, el) = v4::client(o);
        let task = tokio::spawn(v4::drive(el, tx, backoff, shutdown));
        (Arc::new(client), rx, task)
    }
}

/// Waits for the core's go-ahead and the backoff; false if shutting down.
async fn pause(
    tx: &mpsc::Sender<LinkEvent>,
    error: String,
    refused: Option<String>,
    kept: Vec<u16>,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> bool {
    let (resume, ready) = oneshot::channel();
    if tx
        .send(LinkEvent::Down {
            error,
            refused,
            kept,
            resume,
        })
        .await
        .is_err()
    {
        return false;
    }
    let delay = backoff.next_delay();
    tokio::select! {
        _ = shutdown.cancelled() => false,
        r = async { let r = ready.await; tokio::time::sleep(delay).await; r } => r.is_ok(),
    }
}

/// Sends `ev` unless it is noise; false if the core is gone.
async fn report(tx: &mpsc::Sender<LinkEvent>, ev: Option<LinkEvent>) -> bool {
    match ev {
        Some(ev) => tx.send(ev).await.is_ok(),
        None => true,
    }
}

/// A connection error in words an operator can act on. rustls reports an untrusted broker
/// certificate as `UnknownIssuer`; a broker that refuses the client's certificate (or its
/// absence) after the TLS 1.3 handshake just closes the socket, which reaches us as a bare I/O
/// error before CONNACK.
fn explain(error: String, closed_before_connack: bool, transport: &rumqttc::Transport) -> String {
    use rumqttc::{TlsConfiguration, Transport};
    let client_auth = match transport {
        Transport::Tls(TlsConfiguration::Simple { client_auth, .. }) => client_auth.is_some(),
        _ => return error,
    };
    if error.contains("UnknownIssuer") {
        format!("{error} (the broker's certificate is not signed by a CA in uplink.ca_file)")
    } else if error.contains("CertificateRequired") {
        // The broker said so with a TLS alert instead of closing the socket.
        format!("{error} (the broker requires a client certificate: set uplink.cert_file and uplink.key_file)")
    } else if client_auth && (error.contains("UnknownCA") || error.contains("BadCertificate")) {
        format!("{error} (the broker does not trust the CA that signed uplink.cert_file)")
    } else if closed_before_connack && client_auth {
        format!("{error} (the broker closed the TLS connection before CONNACK: does it trust the CA that signed uplink.cert_file?)")
    } else if closed_before_connack {
        format!("{error} (the broker closed the TLS connection before CONNACK: if it requires a client certificate, set uplink.cert_file and uplink.key_file)")
    } else {
        error
    }
}

/// The event-loop task, the same for both protocol versions (their rumqttc types differ but
/// have the same names; each module brings `map`, `refused` and `transport`).
macro_rules! drive_fn {
    () => {
        pub(super) async fn drive(
            mut el: EventLoop,
            tx: mpsc::Sender<LinkEvent>,
            mut backoff: Backoff,
            shutdown: CancellationToken,
        ) {
            let mut connected = false;
            loop {
                let polled = tokio::select! {
                    // Only while not connected: poll() then waits in connect(), where dropping
                    // it cannot tear a packet.
                    _ = shutdown.cancelled(), if !connected => return,
                    r = el.poll() => r,
                };
                match polled {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(ev) => {
                        if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                            connected = true;
                        }
                        if !report(&tx, map(ev, &mut backoff)).await {
                            return;
                        }
                    }
                    Err(e) => {
                        let closed = matches!(&e, ConnectionError::Io(io) if matches!(
                            io.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::UnexpectedEof
                        ));
                        let error = explain(
                            e.to_string(),
                            !connected && closed,
                            &transport(&el),
                        );
                        connected = false;
                        let refused = refused(&e);
                        // Events read before the error (PUBACKs among them) still count.
                        let queued: Vec<Event> = el.state.events.drain(..).collect();
                        for ev in queued {
                            report(&tx, map(ev, &mut backoff)).await;
                        }
                        el.clean();
                        let kept = el
                            .pending
                            .iter()
                            .filter_map(|r| match r {
                                Request::Publish(p) if p.pkid != 0 => Some(p.pkid),
                                _ => None,
                            })
                            .collect();
                        // The core republishes; rumqttc must not replay on its own.
                        el.pending.retain(|r| !matches!(r, Request::Publish(_)));
                        if matches!(e, ConnectionError::RequestsDone) {
                            return;
                        }
                        if !pause(&tx, error, refused, kept, &mut backoff, &shutdown).await {
                            return;
                        }
                    }
                }
            }
        }
    };
}

/// Sets credentials and TLS from [`LinkOptions`]: the same calls on either version's
/// `MqttOptions` (different types, so a macro rather than a function).
macro_rules! credentials_and_tls {
    ($m:ident, $o:ident) => {
        if let Some((u, p)) = &$o.credentials {
            $m.set_credentials(u, p);
        }
        if let Some(t) = &$o.tls {
            $m.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca: t.ca.clone(),
                    alpn: None,
                    client_auth: t.client.clone(),
                },
            ));
        }
    };
}

/// A received PUBLISH as the event the core sees.
fn message(pkid: u16, needs_ack: bool, topic: String, payload: Bytes) -> LinkEvent {
    let ack = AckToken { pkid, needs_ack };
    LinkEvent::Message {
        topic,
        payload,
        ack,
    }
}

/// `Publisher` for either version's `AsyncClient`: `$payload` converts the payload, `$ack` is a
/// PUBLISH whose packet id is set to the one acknowledged.
macro_rules! publisher_impl {
    (|$payload:ident| $convert:expr, $ack:expr) => {
        impl Publisher for AsyncClient {
            fn publish(&self, topic: &str, $payload: Bytes, retain: bool) -> Result<(), String> {
                self.try_publish(topic, QoS::AtLeastOnce, retain, $convert)
                    .map_err(|e| e.to_string())
            }
            fn subscribe(&self, filter: &str) -> Result<(), String> {
                self.try_subscribe(filter, QoS::AtLeastOnce)
                    .map_err(|e| e.to_string())
            }
            fn disconnect(&self) -> Result<(), String> {
                self.try_disconnect().map_err(|e| e.to_string())
            }
            fn ack(&self, token: AckToken) -> Result<(), String> {
                if !token.needs_ack {
                    return Ok(());
                }
                let mut p = $ack;
                p.pkid = token.pkid;
                self.try_ack(&p).map_err(|e| e.to_string())
            }
        }
    };
}

mod v4 {
    use super::*;
    use rumqttc::{
        AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet,
        Publish, QoS, Request, Transport,
    };

    publisher_impl!(
        |payload| payload.to_vec(),
        Publish::new("", QoS::AtLeastOnce, Vec::new())
    );

    pub(super) fn client(o: &LinkOptions) -> (AsyncClient, EventLoop) {
        let mut m = MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keep_alive)
            // A persistent session: commands published while the agent is away wait at the
            // broker, and one received but not yet stored is delivered again.
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(o.inflight)
            .set_max_packet_size(o.max_incoming, o.max_incoming);
        if let Some((topic, payload)) = &o.will {
            m.set_last_will(LastWill::new(
                topic,
                payload.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        credentials_and_tls!(m, o);
        AsyncClient::new(m, o.queue)
    }

    fn refused(_: &ConnectionError) -> Option<String> {
        None // MQTT 3.1.1 PUBACKs carry no reason code
    }

    fn map(ev: Event, backoff: &mut Backoff) -> Option<LinkEvent> {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                backoff.reset();
                Some(LinkEvent::Connected { max_packet: None })
            }
            Event::Incoming(Packet::PubAck(a)) => Some(LinkEvent::Acked(a.pkid)),
            Event::Incoming(Packet::Publish(p)) => {
                let topic = p.topic;
                Some(message(p.pkid, p.qos != QoS::AtMostOnce, topic, p.payload))
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Sent(pkid)),
            _ => None,
        }
    }

    fn transport(el: &EventLoop) -> Transport {
        el.mqtt_options.transport()
    }

    drive_fn!();
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{
        AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
    };
    use rumqttc::{Outgoing, Transport};

    publisher_impl!(
        |payload| payload,
        Publish::new("", QoS::AtLeastOnce, Vec::new(), None)
    );

    pub(super) fn client(o: &LinkOptions) -> (AsyncClient, EventLoop) {
        let mut m = MqttOptions::new(&o.client_id, &o.host, o.port);
        m.set_keep_alive(o.keep_alive)
            // A persistent session: commands published while the agent is away wait at the
            // broker, and one received but not yet stored is delivered again.
            .set_clean_start(false)
            .set_manual_acks(true)
            .set_outgoing_inflight_upper_limit(o.inflight);
        let mut props = m.connect_properties().unwrap_or_default();
        props.session_expiry_interval = Some(SESSION_EXPIRY_S);
        props.max_packet_size = Some(o.max_incoming as u32);
        m.set_connect_properties(props);
        if let Some((topic, payload)) = &o.will {
            m.set_last_will(LastWill::new(
                topic,
                payload.clone(),
                QoS::AtLeastOnce,
                true,
                None,
            ));
        }
        credentials_and_tls!(m, o);
        AsyncClient::new(m, o.queue)
    }

    fn refused(e: &ConnectionError) -> Option<String> {
        match e {
            ConnectionError::MqttState(StateError::PubAckFail { reason }) => {
                Some(format!("broker refused the message: {reason:?}"))
            }
            _ => None,
        }
    }

    fn map(ev: Event, backoff: &mut Backoff) -> Option<LinkEvent> {
        match ev {
            Event::Incoming(Packet::ConnAck(c)) => {
                backoff.reset();
                Some(LinkEvent::Connected {
                    max_packet: c.properties.and_then(|p| p.max_packet_size),
                })
            }
            Event::Incoming(Packet::PubAck(a)) => Some(
                if a.reason == rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers {
                    LinkEvent::Unrouted(a.pkid)
                } else {
                    LinkEvent::Acked(a.pkid)
                },
            ),
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                Some(message(p.pkid, p.qos != QoS::AtMostOnce, topic, p.payload))
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Sent(pkid)),
            _ => None,
        }
    }

    fn transport(el: &EventLoop) -> Transport {
        el.options.transport()
    }

    drive_fn!();
}

#[cfg(test)]
mod tests {
    use super::explain;
    use rumqttc::{TlsConfiguration, Transport};

    #[test]
    fn tls_failures_get_a_hint_and_other_errors_do_not() {
        let tls = |client: bool| {
            Transport::Tls(TlsConfiguration::Simple {
                ca: Vec::new(),
                alpn: None,
                client_auth: client.then(|| (Vec::new(), Vec::new())),
            })
        };
        let reset = "I/O: Connection reset by peer (os error 104)".to_owned();
        assert_eq!(explain(reset.clone(), true, &Transport::Tcp), reset);
        assert_eq!(explain(reset.clone(), false, &tls(false)), reset);
        let e = explain(reset.clone(), true, &tls(false));
        assert!(
            e.starts_with(&reset) && e.contains("set uplink.cert_file"),
            "{e}"
        );
        let e = explain(reset.clone(), true, &tls(true));
        assert!(
            e.contains("trust the CA that signed uplink.cert_file"),
            "{e}"
        );
        let e = explain(
            "TLS: I/O: invalid peer certificate: UnknownIssuer".into(),
            false,
            &tls(false),
        );
        assert!(e.contains("not signed by a CA in uplink.ca_file"), "{e}");
        let alert = "I/O: received fatal alert: CertificateRequired".to_owned();
        let e = explain(alert.clone(), false, &tls(false));
        assert!(
            e.starts_with(&alert) && e.contains("set uplink.cert_file"),
            "{e}"
        );
        let e = explain(
            "I/O: received fatal alert: UnknownCA".into(),
            false,
            &tls(true),
        );
        assert!(e.contains("does not trust the CA"), "{e}");
    }
}

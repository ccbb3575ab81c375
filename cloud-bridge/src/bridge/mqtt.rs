//! The MQTT side: one task owns rumqttc's event loop, classifies each PUBLISH and hands it to the
//! writer; the writer acknowledges through an [`AckGate`] once the message is durable.
//!
//! Invariants:
//! - Manual acks only. A PUBACK leaves only for a message whose rows (or dead letter, or jsonl
//!   line) are committed.
//! - A packet id names a message only on the connection it arrived on. Each connection has an
//!   epoch; when it is lost the gate moves to the next epoch under its lock and drops every
//!   PUBACK still queued inside rumqttc, so a late ack can never hit a packet id the broker has
//!   since reused. The broker redelivers those messages on the new connection and the database
//!   ignores the duplicates.
//! - The session is persistent (clean start off, session expiry) with a stable client id, so
//!   messages wait in the broker while the bridge restarts. On every ConnAck the bridge
//!   subscribes again (harmless if the session kept the subscription).
//! - Shutdown: once cancelled the task forwards nothing new; the writer commits what it holds,
//!   acks it and queues a DISCONNECT behind those acks; the task ends when rumqttc has sent it.
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use rumqttc::Outgoing;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::inbound::{classify, AckToken, Content, Inbound};
use super::metrics::Metrics;
use super::MqttSettings;
use ferry_contract::EVENTS_SHARED_FILTER;

/// Largest packet we accept (the MQTT maximum); the contract bounds payloads itself.
const MAX_PACKET: u32 = 268_435_455;

/// Builds the client and its event loop from settings.
pub(crate) fn connect_options(s: &MqttSettings) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
    o.set_clean_start(false)
        .set_keep_alive(Duration::from_secs(15))
        .set_manual_acks(true)
        .set_connection_timeout(5);
    let mut props = rumqttc::v5::mqttbytes::v5::ConnectProperties::new();
    props.session_expiry_interval = Some(s.session_expiry_s);
    props.receive_maximum = Some(s.receive_maximum);
    props.max_packet_size = Some(MAX_PACKET);
    o.set_connect_properties(props);
    if let Some((u, p)) = &s.credentials {
        o.set_credentials(u, p);
    }
    if let Some(tls) = &s.tls {
        o.set_transport(rumqttc::Transport::tls(
            tls.ca.clone(),
            tls.client_auth.clone(),
            None,
        ));
    }
    // Every ack of an in-flight message must fit without blocking (see `AckGate::ack`).
    AsyncClient::new(o, usize::from(s.receive_maximum) + 64)
}

/// Acknowledges committed messages, but only on the connection they arrived on.
#[derive(Debug)]
pub(crate) struct AckGate {
    epoch: Mutex<u64>,
    client: AsyncClient,
}

impl AckGate {
    pub(crate) fn new(client: AsyncClient) -> AckGate {
        AckGate {
            epoch: Mutex::new(0),
            client,
        }
    }

    fn epoch(&self) -> u64 {
        *self.epoch.lock().expect("ack gate")
    }

    /// Queues PUBACKs for committed messages of the current connection; returns (acked, withheld).
    pub(crate) fn ack(&self, tokens: impl IntoIterator<Item = AckToken>) -> (u64, u64) {
        let epoch = self.epoch.lock().expect("ack gate");
        let (mut acked, mut withheld) = (0, 0);
        for t in tokens {
            if !t.needs_ack {
                continue;
            }
            if t.epoch != *epoch {
                withheld += 1;
                continue;
            }
            let mut p = Publish::new("", QoS::AtLeastOnce, Vec::new(), None);
            p.pkid = t.pkid;
            match self.client.try_ack(&p) {
                Ok(()) => acked += 1,
                Err(e) => {
                    // Cannot happen while the channel holds a receive-maximum of acks; the
                    // message stays unacked and is redelivered after the next reconnect.
                    warn!(pkid = t.pkid, error = %e, "PUBACK not queued; the broker will redeliver.");
                    withheld += 1;
                }
            }
        }
        (acked, withheld)
    }

    /// The connection is gone: later acks of its messages are withheld, queued ones dropped.
    fn connection_lost(&self, eventloop: &mut EventLoop) {
        let mut epoch = self.epoch.lock().expect("ack gate");
        *epoch += 1;
        // Pull whatever the writer queued into `pending`, then drop the acks there.
        eventloop.clean();
        eventloop
            .pending
            .retain(|r| !matches!(r, Request::PubAck(_) | Request::PubRec(_)));
    }

    /// Queues a DISCONNECT behind every ack queued so far.
    pub(crate) fn disconnect(&self) {
        if let Err(e) = self.client.try_disconnect() {
            debug!(error = %e, "DISCONNECT not queued.");
        }
    }
}

/// Runs the event loop until shutdown; forwards classified messages to `tx`.
pub(crate) async fn run(
    mut eventloop: EventLoop,
    gate: Arc<AckGate>,
    tx: mpsc::Sender<Inbound>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    error!(code = ?ack.code, "Broker refused the connection.");
                    continue;
                }
                backoff = Duration::from_millis(100);
                info!(
                    session_present = ack.session_present,
                    "Connected to the broker; subscribing."
                );
                if let Err(e) = gate
                    .client
                    .try_subscribe(EVENTS_SHARED_FILTER, QoS::AtLeastOnce)
                {
                    warn!(error = %e, "SUBSCRIBE not queued.");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let ok = s
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if ok {
                    info!(filter = EVENTS_SHARED_FILTER, "Subscribed.");
                    metrics.mqtt_up.store(true, Relaxed);
                } else {
                    error!(codes = ?s.return_codes, "Broker refused the subscription; nothing will be ingested.");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                metrics.messages.inc();
                if shutdown.is_cancelled() {
                    continue; // unacked: redelivered to this session next time
                }
                let inbound = inbound(&p, gate.epoch());
                if let Content::Batch(b) = &inbound.content {
                    metrics.events_received.inc_by(b.events.len() as u64);
                }
                if tx.send(inbound).await.is_err() {
                    // The writer is draining: this one stays unacked and is redelivered. Keep
                    // polling so the acks it queues, and its DISCONNECT, go out.
                    continue;
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                warn!(reason = ?d.reason_code, "Broker sent DISCONNECT.");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                info!("Disconnected from the broker.");
                metrics.mqtt_up.store(false, Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let was_up = metrics.mqtt_up.swap(false, Relaxed);
                gate.connection_lost(&mut eventloop);
                if shutdown.is_cancelled() {
                    info!(error = %e, "MQTT connection gone during shutdown.");
                    return;
                }
                if was_up {
                    metrics.mqtt_reconnects.inc();
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost; reconnecting.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn inbound(p: &Publish, epoch: u64) -> Inbound {
    let topic = String::from_utf8_lossy(&p.topic);
    Inbound {
        ack: AckToken {
            epoch,
            pkid: p.pkid,
            needs_ack: p.qos != QoS::AtMostOnce,
        },
        received_at: SystemTime::now(),
        content: classify(&topic, &p.payload),
    }
}

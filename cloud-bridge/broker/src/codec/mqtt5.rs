//! MQTT 5 packets (rumqttc's `v5::mqttbytes::v5`) to and from the broker's view.
//!
//! Invariant: the CONNACK announces what the broker does (QoS 1 at most, retain, wildcard and
//! shared subscriptions, no subscription identifiers, no topic aliases, the broker's packet limit
//! and receive maximum), and a client that uses a topic alias anyway is refused as malformed.

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::{v5, QoS as Qos5};

use super::{
    qos_of, CodecError, ConnCode, ConnectReq, DisconnectReason, Inbound, Limits, Message, Outbound,
    Qos, RetainHandling, SubCode, SubRequest, Version,
};

/// Reads one complete MQTT 5 frame.
pub(super) fn decode(frame: &mut BytesMut, max: usize) -> Result<Inbound, CodecError> {
    v5::Packet::read(frame, Some(max))
        .map_err(|e| CodecError::Malformed(e.to_string()))
        .and_then(from_v5)
}

fn topic_str(b: &[u8]) -> Result<Arc<str>, CodecError> {
    std::str::from_utf8(b)
        .map(Arc::from)
        .map_err(|_| CodecError::Malformed("topic is not UTF-8".into()))
}

fn from_v5(p: v5::Packet) -> Result<Inbound, CodecError> {
    Ok(match p {
        v5::Packet::Connect(c, will, _login) => {
            let props = c.properties.unwrap_or_default();
            let (will, will_qos2) = match will {
                Some(w) => (
                    Some(Message {
                        topic: topic_str(&w.topic)?,
                        payload: w.message,
                        qos: qos_of(w.qos as u8).unwrap_or(Qos::AtLeastOnce),
                        retain: w.retain,
                    }),
                    w.qos == Qos5::ExactlyOnce,
                ),
                None => (None, false),
            };
            Inbound::Connect(ConnectReq {
                version: Version::V5,
                client_id: c.client_id,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                session_expiry_s: props.session_expiry_interval.unwrap_or(0),
                receive_maximum: props.receive_maximum.unwrap_or(u16::MAX).max(1),
                max_packet_size: props.max_packet_size,
                will,
                will_qos2,
            })
        }
        v5::Packet::Publish(p) => {
            if p.properties
                .as_ref()
                .is_some_and(|pr| pr.topic_alias.is_some())
            {
                return Err(CodecError::Malformed(
                    "topic alias used (this broker announces none)".into(),
                ));
            }
            match qos_of(p.qos as u8) {
                Some(qos) => Inbound::Publish {
                    msg: Message {
                        topic: topic_str(&p.topic)?,
                        payload: p.payload,
                        qos,
                        retain: p.retain,
                    },
                    pkid: p.pkid,
                },
                None => Inbound::Qos2("PUBLISH with QoS 2"),
            }
        }
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(_) => Inbound::Qos2("PUBREC"),
        v5::Packet::PubRel(_) => Inbound::Qos2("PUBREL"),
        v5::Packet::PubComp(_) => Inbound::Qos2("PUBCOMP"),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubRequest {
                    filter: f.path,
                    qos: qos_of(f.qos as u8).unwrap_or(Qos::AtLeastOnce),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => RetainHandling::OnEverySubscribe,
                        v5::RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscribe,
                        v5::RetainForwardRule::Never => RetainHandling::Never,
                    },
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            publish_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    })
}

fn q5(q: Qos) -> Qos5 {
    match q {
        Qos::AtMostOnce => Qos5::AtMostOnce,
        Qos::AtLeastOnce => Qos5::AtLeastOnce,
    }
}

/// Appends `out` to `buf` in MQTT 5's encoding.
pub(super) fn encode(out: &Outbound, limits: Limits, buf: &mut BytesMut) -> Result<(), CodecError> {
    let err5 = |e: rumqttc::v5::mqttbytes::Error| CodecError::Malformed(e.to_string());
    match out {
        Outbound::ConnAck {
            session_present,
            code,
            assigned_id,
        } => {
            let code = match code {
                ConnCode::Accepted => v5::ConnectReturnCode::Success,
                ConnCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                ConnCode::QosNotSupported => v5::ConnectReturnCode::QoSNotSupported,
                ConnCode::Unavailable => v5::ConnectReturnCode::ServerUnavailable,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(limits.receive_maximum),
                max_qos: Some(1),
                retain_available: Some(1),
                max_packet_size: Some(limits.max_packet.min(u32::MAX as usize) as u32),
                assigned_client_identifier: assigned_id.clone(),
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(1),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            v5::ConnAck {
                session_present: *session_present,
                code,
                properties: Some(properties),
            }
            .write(buf)
            .map_err(err5)?;
        }
        Outbound::PubAck { pkid, unrouted } => {
            let mut a = v5::PubAck::new(*pkid, None);
            if *unrouted {
                a.reason = v5::PubAckReason::NoMatchingSubscribers;
            }
            a.write(buf).map_err(err5)?;
        }
        Outbound::Publish(d) => {
            let mut p = v5::Publish::new(d.topic.as_ref(), q5(d.qos), d.payload.clone(), None);
            p.retain = d.retain;
            p.dup = d.dup;
            p.pkid = d.pkid;
            p.write(buf).map_err(err5)?;
        }
        Outbound::SubAck { pkid, codes } => {
            let return_codes = codes
                .iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v5::SubscribeReasonCode::Success(q5(*q)),
                    SubCode::InvalidFilter => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect();
            v5::SubAck {
                pkid: *pkid,
                return_codes,
                properties: None,
            }
            .write(buf)
            .map_err(err5)?;
        }
        Outbound::UnsubAck { pkid, count } => {
            v5::UnsubAck {
                pkid: *pkid,
                reasons: vec![v5::UnsubAckReason::Success; *count],
                properties: None,
            }
            .write(buf)
            .map_err(err5)?;
        }
        Outbound::PingResp => {
            v5::PingResp::write(buf).map_err(err5)?;
        }
        Outbound::Disconnect(r) => {
            use v5::DisconnectReasonCode as C;
            let code = match r {
                DisconnectReason::ProtocolError => C::ProtocolError,
                DisconnectReason::QosNotSupported => C::QoSNotSupported,
                DisconnectReason::KeepAliveTimeout => C::KeepAliveTimeout,
                DisconnectReason::SessionTakenOver => C::SessionTakenOver,
                DisconnectReason::ShuttingDown => C::ServerShuttingDown,
                DisconnectReason::PacketTooLarge => C::PacketTooLarge,
                DisconnectReason::Malformed => C::MalformedPacket,
                DisconnectReason::TopicNameInvalid => C::TopicNameInvalid,
            };
            v5::Disconnect::new(code).write(buf).map_err(err5)?;
        }
    }
    Ok(())
}

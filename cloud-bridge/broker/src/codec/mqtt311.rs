//! MQTT 3.1.1 packets (rumqttc's `mqttbytes::v4`) to and from the broker's view.
//!
//! Invariant: 3.1.1 has no properties and no server DISCONNECT, so what the broker's view holds
//! beyond 3.1.1 is fixed here (session expiry from `clean_session`, a receive maximum of
//! `u16::MAX`, a plain PUBACK for an unrouted message, nothing written for
//! [`Outbound::Disconnect`]).

use std::sync::Arc;

use bytes::BytesMut;
use rumqttc::mqttbytes::{v4, QoS as Qos4};

use super::{
    qos_of, CodecError, ConnCode, ConnectReq, Inbound, Message, Outbound, Qos, RetainHandling,
    SubCode, SubRequest, Version,
};

/// Reads one complete 3.1.1 frame.
pub(super) fn decode(frame: &mut BytesMut, max: usize) -> Result<Inbound, CodecError> {
    v4::read(frame, max)
        .map_err(|e| CodecError::Malformed(e.to_string()))
        .and_then(from_v4)
}

fn from_v4(p: v4::Packet) -> Result<Inbound, CodecError> {
    Ok(match p {
        v4::Packet::Connect(c) => {
            let (will, will_qos2) = match c.last_will {
                Some(w) => (
                    Some(Message {
                        topic: Arc::from(w.topic.as_str()),
                        payload: w.message,
                        qos: qos_of(w.qos as u8).unwrap_or(Qos::AtLeastOnce),
                        retain: w.retain,
                    }),
                    w.qos == Qos4::ExactlyOnce,
                ),
                None => (None, false),
            };
            Inbound::Connect(ConnectReq {
                version: Version::V311,
                client_id: c.client_id,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                session_expiry_s: if c.clean_session { 0 } else { u32::MAX },
                receive_maximum: u16::MAX,
                max_packet_size: None,
                will,
                will_qos2,
            })
        }
        v4::Packet::Publish(p) => match qos_of(p.qos as u8) {
            Some(qos) => Inbound::Publish {
                msg: Message {
                    topic: Arc::from(p.topic.as_str()),
                    payload: p.payload,
                    qos,
                    retain: p.retain,
                },
                pkid: p.pkid,
            },
            None => Inbound::Qos2("PUBLISH with QoS 2"),
        },
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(_) => Inbound::Qos2("PUBREC"),
        v4::Packet::PubRel(_) => Inbound::Qos2("PUBREL"),
        v4::Packet::PubComp(_) => Inbound::Qos2("PUBCOMP"),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubRequest {
                    filter: f.path,
                    qos: qos_of(f.qos as u8).unwrap_or(Qos::AtLeastOnce),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnEverySubscribe,
                })
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect {
            publish_will: false,
        },
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    })
}

fn q4(q: Qos) -> Qos4 {
    match q {
        Qos::AtMostOnce => Qos4::AtMostOnce,
        Qos::AtLeastOnce => Qos4::AtLeastOnce,
    }
}

/// Appends `out` to `buf` in 3.1.1's encoding.
pub(super) fn encode(out: &Outbound, buf: &mut BytesMut) -> Result<(), CodecError> {
    let err = |e: rumqttc::mqttbytes::Error| CodecError::Malformed(e.to_string());
    match out {
        Outbound::ConnAck {
            session_present,
            code,
            ..
        } => {
            let code = match code {
                ConnCode::Accepted => v4::ConnectReturnCode::Success,
                ConnCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                ConnCode::QosNotSupported | ConnCode::Unavailable => {
                    v4::ConnectReturnCode::ServiceUnavailable
                }
            };
            v4::ConnAck::new(code, *session_present)
                .write(buf)
                .map_err(err)?;
        }
        Outbound::PubAck { pkid, .. } => {
            v4::PubAck::new(*pkid).write(buf).map_err(err)?;
        }
        Outbound::Publish(d) => {
            let mut p = v4::Publish::from_bytes(d.topic.as_ref(), q4(d.qos), d.payload.clone());
            p.retain = d.retain;
            p.dup = d.dup;
            p.pkid = d.pkid;
            p.write(buf).map_err(err)?;
        }
        Outbound::SubAck { pkid, codes } => {
            let codes = codes
                .iter()
                .map(|c| match c {
                    SubCode::Granted(q) => v4::SubscribeReasonCode::Success(q4(*q)),
                    SubCode::InvalidFilter => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(*pkid, codes).write(buf).map_err(err)?;
        }
        Outbound::UnsubAck { pkid, .. } => {
            v4::UnsubAck::new(*pkid).write(buf).map_err(err)?;
        }
        Outbound::PingResp => {
            v4::PingResp.write(buf).map_err(err)?;
        }
        Outbound::Disconnect(_) => {}
    }
    Ok(())
}

//! Framing and the broker's own view of MQTT packets, on top of rumqttc's packet codecs
//! (`rumqttc::mqttbytes::v4` for 3.1.1, `rumqttc::v5::mqttbytes::v5` for 5). Pure: bytes in,
//! [`Inbound`] out; [`Outbound`] in, bytes out.
//!
//! Invariants:
//! - The first packet must be CONNECT; its protocol level (4 or 5) fixes the codec for the rest
//!   of the connection.
//! - A frame is handed to the codec only once it is complete and no larger than the configured
//!   maximum, so a peer can never make the broker buffer more than one maximum-size packet.
//! - Decoding never panics the caller: anything the codec refuses (or panics on) becomes a
//!   [`CodecError`], and the connection closes.
//! - QoS 2 is not supported: a QoS 2 PUBLISH or any PUBREC/PUBREL/PUBCOMP decodes to
//!   [`Inbound::Qos2`] so the connection can refuse it by name.
//!
//! The version-specific halves are `codec/mqtt311.rs` and `codec/mqtt5.rs`: each turns its
//! rumqttc packets into [`Inbound`] and writes [`Outbound`] as its packets. Framing, the
//! first-packet rule and the panic guard are here, shared by both.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

mod mqtt311;
mod mqtt5;

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

/// Delivery guarantee the broker supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    /// At most once.
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
}

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Not a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// Larger than the broker's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Bytes the header announced.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The first packet was not CONNECT.
    #[error("the first packet is not CONNECT")]
    NotConnect,
    /// A protocol level other than 4 (3.1.1) or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
}

/// A published message as the broker keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (valid, no wildcards).
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: Qos,
    /// Retain flag as published.
    pub retain: bool,
}

/// CONNECT, both versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectReq {
    /// Protocol version.
    pub version: Version,
    /// Client id (may be empty: the broker assigns one).
    pub client_id: String,
    /// 3.1.1 clean session / 5 clean start.
    pub clean_start: bool,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// Seconds the session outlives the connection (3.1.1: `u32::MAX` without clean session,
    /// else 0; 5: the property, default 0).
    pub session_expiry_s: u32,
    /// Most unacked QoS 1 messages the client accepts (5; 3.1.1: `u16::MAX`).
    pub receive_maximum: u16,
    /// Largest packet the client accepts (5).
    pub max_packet_size: Option<u32>,
    /// The last will, if any.
    pub will: Option<Message>,
    /// The will asked for QoS 2.
    pub will_qos2: bool,
}

/// What a v5 subscriber wants done with retained messages at subscribe time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// Send them on every SUBSCRIBE.
    OnEverySubscribe,
    /// Only when the subscription is new.
    OnNewSubscribe,
    /// Never.
    Never,
}

/// One filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRequest {
    /// The subscription string (may be `$share/...`).
    pub filter: String,
    /// Requested QoS, capped at 1.
    pub qos: Qos,
    /// 5: do not send the client its own messages.
    pub no_local: bool,
    /// 5: keep the retain flag on forwarded messages.
    pub retain_as_published: bool,
    /// 5: retained messages at subscribe time.
    pub retain_handling: RetainHandling,
}

/// A packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNECT.
    Connect(ConnectReq),
    /// PUBLISH at QoS 0 or 1 (`pkid` 0 for QoS 0).
    Publish {
        /// The message (topic not validated yet).
        msg: Message,
        /// Packet id.
        pkid: u16,
    },
    /// PUBACK.
    PubAck(u16),
    /// Anything of QoS 2 (named).
    Qos2(&'static str),
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<SubRequest>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT; 5 may ask for the will to be published anyway (reason 0x04).
    Disconnect {
        /// Publish the will.
        publish_will: bool,
    },
    /// A packet a client must not send (named).
    Unexpected(&'static str),
}

/// CONNACK result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnCode {
    /// Accepted.
    Accepted,
    /// Client id refused (3.1.1 empty id without clean session).
    BadClientId,
    /// The will asked for QoS 2.
    QosNotSupported,
    /// The broker is stopping.
    Unavailable,
}

/// SUBACK result per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    /// Granted at this QoS.
    Granted(Qos),
    /// Invalid filter or share name.
    InvalidFilter,
}

/// Why the broker closes a 5 connection (3.1.1 has no DISCONNECT from the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// Protocol violation.
    ProtocolError,
    /// QoS 2 used.
    QosNotSupported,
    /// Nothing received within 1.5 keep-alives.
    KeepAliveTimeout,
    /// Another connection took the client id.
    SessionTakenOver,
    /// The broker stops.
    ShuttingDown,
    /// A packet was too large.
    PacketTooLarge,
    /// Bytes were not a valid packet.
    Malformed,
    /// A topic name was invalid.
    TopicNameInvalid,
}

/// A message on its way to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Topic.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// Delivery QoS.
    pub qos: Qos,
    /// Retain flag as delivered.
    pub retain: bool,
    /// A redelivery.
    pub dup: bool,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
}

/// A packet to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK.
    ConnAck {
        /// An earlier session was resumed.
        session_present: bool,
        /// Result.
        code: ConnCode,
        /// 5: the id the broker chose for an empty one.
        assigned_id: Option<String>,
    },
    /// PUBACK; `unrouted` is reason 0x10 (5 only; 3.1.1 gets a plain PUBACK).
    PubAck {
        /// Packet id.
        pkid: u16,
        /// No subscriber matched.
        unrouted: bool,
    },
    /// PUBLISH.
    Publish(Delivery),
    /// SUBACK.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// One per filter.
        codes: Vec<SubCode>,
    },
    /// UNSUBACK.
    UnsubAck {
        /// Packet id.
        pkid: u16,
        /// Filters in the request.
        count: usize,
    },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT (5 only; nothing is written for 3.1.1).
    Disconnect(DisconnectReason),
}

/// Broker-wide values announced in a 5 CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest packet the broker accepts.
    pub max_packet: usize,
    /// Most unacked QoS 1 publishes a client may send.
    pub receive_maximum: u16,
}

/// Length of the complete frame at the start of `buf`, `None` if more bytes are needed.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if remaining > max {
                return Err(CodecError::TooLarge {
                    size: remaining,
                    max,
                });
            }
            let total = 2 + i + remaining;
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(CodecError::Malformed(
        "remaining length longer than 4 bytes".into(),
    ))
}

/// Protocol level of a complete CONNECT frame.
fn connect_level(frame: &[u8]) -> Result<u8, CodecError> {
    if frame[0] >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    let header = 1 + frame[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
    let body = &frame[header.min(frame.len())..];
    let name_len = match body {
        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
        _ => return Err(CodecError::Malformed("CONNECT too short".into())),
    };
    body.get(2 + name_len)
        .copied()
        .ok_or_else(|| CodecError::Malformed("CONNECT too short".into()))
}

/// Splits complete packets off a connection's read buffer.
#[derive(Debug)]
pub struct Decoder {
    version: Option<Version>,
    max_packet: usize,
}

impl Decoder {
    /// A decoder that expects CONNECT first.
    pub fn new(max_packet: usize) -> Decoder {
        Decoder {
            version: None,
            max_packet,
        }
    }

    /// The connection's version, once CONNECT was decoded.
    pub fn version(&self) -> Option<Version> {
        self.version
    }

    /// The next packet in `buf`, `None` if it is incomplete.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        let Some(len) = frame_len(buf, self.max_packet)? else {
            return Ok(None);
        };
        let version = match self.version {
            Some(v) => v,
            None => {
                let v = match connect_level(&buf[..len])? {
                    4 => Version::V311,
                    5 => Version::V5,
                    l => return Err(CodecError::UnsupportedLevel(l)),
                };
                self.version = Some(v);
                v
            }
        };
        let mut frame = buf.split_to(len);
        // A zero-length DISCONNECT is valid in both versions; rumqttc's v5 reader wants a body.
        if frame[..] == [0xE0, 0x00] {
            return Ok(Some(Inbound::Disconnect {
                publish_will: false,
            }));
        }
        let max = self.max_packet;
        let decoded = catch_unwind(AssertUnwindSafe(|| match version {
            Version::V311 => mqtt311::decode(&mut frame, max),
            Version::V5 => mqtt5::decode(&mut frame, max),
        }));
        match decoded {
            Ok(r) => r.map(Some),
            Err(_) => Err(CodecError::Malformed("the packet decoder panicked".into())),
        }
    }
}

fn qos_of(q: u8) -> Option<Qos> {
    match q {
        0 => Some(Qos::AtMostOnce),
        1 => Some(Qos::AtLeastOnce),
        _ => None,
    }
}

/// Appends `out` to `buf` in `version`'s encoding.
pub fn encode(
    version: Version,
    out: &Outbound,
    limits: Limits,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    match version {
        Version::V311 => mqtt311::encode(out, buf),
        Version::V5 => mqtt5::encode(out, limits, buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::{v5, QoS as Qos5};
    const MAX: usize = 1 << 20;

    fn v5_connect(id: &str) -> BytesMut {
        let mut c = v5::Connect {
            keep_alive: 30,
            client_id: id.into(),
            clean_start: false,
            properties: None,
        };
        let mut props = v5::ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        props.receive_maximum = Some(10);
        c.properties = Some(props);
        let will = v5::LastWill::new(
            "gw/status",
            b"offline".to_vec(),
            Qos5::AtLeastOnce,
            true,
            None,
        );
        let mut buf = BytesMut::new();
        c.write(&Some(will), &None, &mut buf).unwrap();
        buf
    }

    #[test]
    fn connect_fixes_the_version_and_carries_session_and_will() {
        let mut buf = v5_connect("bridge-1");
        let mut d = Decoder::new(MAX);
        let Some(Inbound::Connect(c)) = d.next(&mut buf).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(d.version(), Some(Version::V5));
        assert_eq!(c.client_id, "bridge-1");
        assert!(!c.clean_start);
        assert_eq!((c.session_expiry_s, c.receive_maximum), (60, 10));
        let w = c.will.unwrap();
        assert_eq!((&*w.topic, w.retain), ("gw/status", true));
        assert!(buf.is_empty());

        let mut buf = BytesMut::new();
        let mut c4 = v4::Connect::new("agent");
        c4.clean_session = false;
        c4.write(&mut buf).unwrap();
        let mut d = Decoder::new(MAX);
        let Some(Inbound::Connect(c)) = d.next(&mut buf).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(c.version, Version::V311);
        assert_eq!(c.session_expiry_s, u32::MAX);
    }

    #[test]
    fn partial_frames_wait_and_oversized_ones_are_refused() {
        let full = v5_connect("x");
        let mut d = Decoder::new(MAX);
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(d.next(&mut part).unwrap(), None);
        assert_eq!(part.len(), full.len() - 1, "nothing consumed");
        // A PUBLISH announcing 2 MiB against a 1 MiB limit is refused from its header alone.
        let mut big = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x01][..]);
        let mut d = Decoder::new(MAX);
        d.version = Some(Version::V5);
        assert!(matches!(d.next(&mut big), Err(CodecError::TooLarge { .. })));
        let mut d = Decoder::new(MAX);
        let mut publish_first = BytesMut::from(&[0x30u8, 0x02, 0x00, 0x00][..]);
        assert_eq!(d.next(&mut publish_first), Err(CodecError::NotConnect));
    }

    #[test]
    fn qos2_and_zero_length_disconnect_decode_by_name() {
        let mut d = Decoder::new(MAX);
        d.version = Some(Version::V5);
        let mut buf = BytesMut::new();
        let mut p = v5::Publish::new("t", Qos5::ExactlyOnce, b"x".to_vec(), None);
        p.pkid = 7;
        p.write(&mut buf).unwrap();
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Inbound::Qos2("PUBLISH with QoS 2"))
        );
        let mut buf = BytesMut::from(&[0xE0u8, 0x00][..]);
        assert_eq!(
            d.next(&mut buf).unwrap(),
            Some(Inbound::Disconnect {
                publish_will: false
            })
        );
    }

    #[test]
    fn encoded_acks_read_back_with_the_reason() {
        let limits = Limits {
            max_packet: MAX,
            receive_maximum: 100,
        };
        let mut buf = BytesMut::new();
        encode(
            Version::V5,
            &Outbound::PubAck {
                pkid: 9,
                unrouted: true,
            },
            limits,
            &mut buf,
        )
        .unwrap();
        let v5::Packet::PubAck(a) = v5::Packet::read(&mut buf, Some(MAX)).unwrap() else {
            panic!("not a puback")
        };
        assert_eq!(
            (a.pkid, a.reason),
            (9, v5::PubAckReason::NoMatchingSubscribers)
        );
        encode(
            Version::V5,
            &Outbound::ConnAck {
                session_present: true,
                code: ConnCode::Accepted,
                assigned_id: None,
            },
            limits,
            &mut buf,
        )
        .unwrap();
        let v5::Packet::ConnAck(c) = v5::Packet::read(&mut buf, Some(MAX)).unwrap() else {
            panic!("not a connack")
        };
        let p = c.properties.unwrap();
        assert_eq!((p.max_qos, p.max_packet_size), (Some(1), Some(MAX as u32)));
        assert!(c.session_present);
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic garbage after a valid CONNECT and as the first packet.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let mut d = Decoder::new(4096);
            let mut buf = if round % 2 == 0 {
                let mut b = v5_connect("c");
                let _ = d.next(&mut b);
                BytesMut::new()
            } else {
                BytesMut::new()
            };
            let len = (next() % 64) as usize;
            for _ in 0..len {
                buf.extend_from_slice(&[next() as u8]);
            }
            // Bias toward plausible headers: a valid type nibble and a short length.
            if len >= 2 && round % 3 == 0 {
                buf[1] = (len - 2) as u8;
            }
            for _ in 0..8 {
                match d.next(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

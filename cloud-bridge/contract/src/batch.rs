//! Event batches (the payload of `.../events`) and their codecs: JSON, binary (postcard), and
//! optional deflate around either.
//!
//! Invariants (the crate header states them for the whole contract): the first byte says the
//! encoding; a binary payload is postcard's canonical form with nothing after it; a deflate stream
//! ends where the payload ends and inflates to at most [`MAX_INFLATED_LEN`] bytes of an
//! uncompressed payload; [`EventBatch::decode`] returns only batches that pass
//! [`EventBatch::validate`].

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::{
    check_device_id, check_gateway_id, check_sensor_name, check_ts_ms, reading, ContractError,
    SCHEMA_VERSION,
};

/// First byte of a binary (postcard) payload.
pub const BINARY_MAGIC: u8 = 0xFE;
/// First byte of a deflate-compressed payload.
pub const DEFLATE_MAGIC: u8 = 0xFD;

/// Most events in one batch a consumer accepts.
pub const MAX_EVENTS_PER_BATCH: usize = 100_000;
/// Largest inflated payload a consumer accepts (a compressed payload is a zip bomb otherwise).
pub const MAX_INFLATED_LEN: usize = 64 << 20;

/// One message on `.../events`: consecutive events of one boot of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// [`SCHEMA_VERSION`].
    pub v: u32,
    /// Gateway id (as in the topic).
    pub gateway: String,
    /// Device id (as in the topic).
    pub device: String,
    /// The gateway's boot number for this device: 1, 2, 3 ... in order.
    pub boot: u32,
    /// The device's random id for this boot.
    pub boot_id: u32,
    /// The events, `seq` strictly increasing.
    pub events: Vec<Event>,
}

/// One reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Sequence number within the boot.
    pub seq: u32,
    /// Sensor name from the device's Hello.
    pub sensor: String,
    /// When it was sampled, UTC milliseconds since the Unix epoch
    /// ([`MIN_TS_MS`](crate::MIN_TS_MS)..=[`MAX_TS_MS`](crate::MAX_TS_MS)).
    pub ts_ms: i64,
    /// The reading, in the sensor's unit; NaN and ±infinity included (see [`reading`]).
    #[serde(with = "reading")]
    pub value: f64,
}

/// How an [`EventBatch`] is put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Readable JSON (the default).
    #[default]
    Json,
    /// Compact binary: [`BINARY_MAGIC`] then the batch in postcard.
    Binary,
}

/// Optional payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Uncompressed (the default).
    #[default]
    None,
    /// [`DEFLATE_MAGIC`] then raw deflate of the encoded payload.
    Deflate,
}

impl EventBatch {
    /// Encodes for the wire.
    pub fn encode(&self, encoding: Encoding, compression: Compression) -> Vec<u8> {
        let plain = match encoding {
            Encoding::Json => serde_json::to_vec(self).expect("batch serializes"),
            Encoding::Binary => {
                let mut out = vec![BINARY_MAGIC];
                out.extend(postcard::to_stdvec(self).expect("batch serializes"));
                out
            }
        };
        compress(plain, compression)
    }

    /// Decodes any encoding and compression, then [`validate`](Self::validate)s.
    pub fn decode(payload: &[u8]) -> Result<EventBatch, ContractError> {
        let plain = inflate(payload)?;
        let batch: EventBatch = match plain.first() {
            Some(b'{') => serde_json::from_slice(&plain).map_err(|e| {
                // A wrong version is more useful to report than the shape error it causes.
                match serde_json::from_slice::<VersionOnly>(&plain) {
                    Ok(v) if v.v != SCHEMA_VERSION => ContractError::UnsupportedVersion(v.v),
                    _ => ContractError::Malformed(e.to_string()),
                }
            })?,
            Some(&BINARY_MAGIC) => decode_binary(&plain)?,
            Some(b) => {
                return Err(ContractError::Malformed(format!(
                    "unknown first byte 0x{b:02x}"
                )))
            }
            None => return Err(ContractError::Malformed("empty payload".into())),
        };
        batch.validate()?;
        Ok(batch)
    }

    /// Checks the contract's rules.
    pub fn validate(&self) -> Result<(), ContractError> {
        if self.v != SCHEMA_VERSION {
            return Err(ContractError::UnsupportedVersion(self.v));
        }
        let bad = |m: String| Err(ContractError::Invalid(m));
        if let Err(m) = check_gateway_id(&self.gateway) {
            return bad(format!("gateway {m}"));
        }
        if let Err(m) = check_device_id(&self.device) {
            return bad(format!("device {m}"));
        }
        if self.boot == 0 {
            return bad("boot starts at 1".into());
        }
        if self.events.is_empty() || self.events.len() > MAX_EVENTS_PER_BATCH {
            return bad(format!(
                "a batch holds 1..={MAX_EVENTS_PER_BATCH} events, this one {}",
                self.events.len()
            ));
        }
        let mut prev: Option<u32> = None;
        for (i, e) in self.events.iter().enumerate() {
            if prev.is_some_and(|p| e.seq <= p) {
                return bad(format!("events[{i}].seq {} does not increase", e.seq));
            }
            prev = Some(e.seq);
            if let Err(m) = check_sensor_name(&e.sensor) {
                return bad(format!("events[{i}].sensor {m}"));
            }
            if let Err(m) = check_ts_ms(e.ts_ms) {
                return bad(format!("events[{i}].ts_ms {m}"));
            }
        }
        Ok(())
    }

    /// Checks that the topic a batch arrived on names the same gateway and device.
    pub fn check_topic(&self, gateway: &str, device: &str) -> Result<(), ContractError> {
        if self.gateway != gateway || self.device != device {
            return Err(ContractError::TopicMismatch {
                topic: format!("{gateway}/{device}"),
                payload: format!("{}/{}", self.gateway, self.device),
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

fn compress(plain: Vec<u8>, compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => plain,
        Compression::Deflate => {
            let mut out = vec![DEFLATE_MAGIC];
            let mut z = flate2::write::DeflateEncoder::new(&mut out, flate2::Compression::fast());
            z.write_all(&plain).expect("in-memory write");
            z.finish().expect("in-memory write");
            out
        }
    }
}

/// The binary form: [`BINARY_MAGIC`], then the batch in postcard's canonical form and nothing
/// else. Offsets in errors count from the magic byte.
fn decode_binary(plain: &[u8]) -> Result<EventBatch, ContractError> {
    let body = &plain[1..];
    let (batch, rest): (EventBatch, &[u8]) = postcard::take_from_bytes(body)
        .map_err(|e| ContractError::Malformed(format!("binary: {e}")))?;
    if !rest.is_empty() {
        return Err(ContractError::Malformed(format!(
            "binary: {} byte(s) after the batch, from offset {}",
            rest.len(),
            plain.len() - rest.len()
        )));
    }
    // Re-encoding gives the canonical form; any other form of the same batch differs from it.
    let canonical = postcard::to_stdvec(&batch).expect("batch serializes");
    if canonical != body {
        let at = canonical
            .iter()
            .zip(body)
            .position(|(a, b)| a != b)
            .unwrap_or(canonical.len().min(body.len()));
        return Err(ContractError::Malformed(format!(
            "binary: not canonical at offset {} (every varint must be in its shortest form)",
            1 + at
        )));
    }
    Ok(batch)
}

fn inflate(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, ContractError> {
    let Some((&DEFLATE_MAGIC, stream)) = payload.split_first() else {
        return Ok(payload.into());
    };
    let mut out = Vec::new();
    // `bufread` consumes exactly the deflate stream from the slice: what is left is trailing.
    let mut z = flate2::bufread::DeflateDecoder::new(stream);
    (&mut z)
        .take(MAX_INFLATED_LEN as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ContractError::Compression(e.to_string()))?;
    if out.len() > MAX_INFLATED_LEN {
        return Err(ContractError::Compression(format!(
            "inflates to more than {MAX_INFLATED_LEN} bytes"
        )));
    }
    let rest = z.get_ref().len();
    if rest > 0 {
        return Err(ContractError::Compression(format!(
            "{rest} byte(s) after the end of the deflate stream, from offset {}",
            payload.len() - rest
        )));
    }
    if out.first() == Some(&DEFLATE_MAGIC) {
        return Err(ContractError::Compression("nested compression".into()));
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> EventBatch {
        EventBatch {
            v: SCHEMA_VERSION,
            gateway: "gw-1".into(),
            device: "dev/7".into(),
            boot: 2,
            boot_id: 0xdead_beef,
            events: (0..50)
                .map(|i| Event {
                    seq: 100 + i,
                    sensor: if i % 2 == 0 {
                        "temperature"
                    } else {
                        "humidity"
                    }
                    .into(),
                    ts_ms: 1_790_000_000_000 + i64::from(i) * 10,
                    value: f64::from(i) * 0.5,
                })
                .collect(),
        }
    }

    #[test]
    fn every_encoding_round_trips() {
        let b = batch();
        for enc in [Encoding::Json, Encoding::Binary] {
            for comp in [Compression::None, Compression::Deflate] {
                let wire = b.encode(enc, comp);
                assert_eq!(EventBatch::decode(&wire).unwrap(), b, "{enc:?} {comp:?}");
            }
        }
        let json = b.encode(Encoding::Json, Compression::None);
        assert_eq!(json[0], b'{');
        assert!(b.encode(Encoding::Binary, Compression::None).len() < json.len() / 2);
        assert!(b.encode(Encoding::Json, Compression::Deflate).len() < json.len() / 3);
    }

    #[test]
    fn rule_breaks_are_named() {
        let mut b = batch();
        b.events[3].seq = b.events[2].seq;
        let e = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap_err();
        assert!(e.to_string().contains("events[3].seq"), "{e}");
        let mut b = batch();
        b.v = 9;
        let e = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap_err();
        assert_eq!(e, ContractError::UnsupportedVersion(9));
        let mut b = batch();
        b.events.clear();
        assert!(matches!(b.validate(), Err(ContractError::Invalid(_))));
        assert!(matches!(
            EventBatch::decode(b"{\"v\":1}"),
            Err(ContractError::Malformed(_))
        ));
        assert!(matches!(
            EventBatch::decode(&[DEFLATE_MAGIC, 1, 2, 3]),
            Err(ContractError::Compression(_))
        ));
        assert!(batch().check_topic("gw-1", "dev/8").is_err());
    }

    #[test]
    fn json_uses_the_documented_field_names() {
        let v: serde_json::Value =
            serde_json::from_slice(&batch().encode(Encoding::Json, Compression::None)).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["boot"], 2);
        assert_eq!(v["events"][0]["sensor"], "temperature");
        assert_eq!(v["events"][0]["ts_ms"], 1_790_000_000_000_i64);
    }

    #[test]
    fn validate_applies_each_check_named_by_field() {
        // Each check is what validate applies, named by field.
        let mut b = batch();
        b.events[7].ts_ms = i64::MIN;
        let e = b.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid batch: events[7].ts_ms -9223372036854775808 is outside"),
            "{e}"
        );
        let mut b = batch();
        b.device = "d".repeat(33);
        let e = b.validate().unwrap_err().to_string();
        assert!(e.starts_with("invalid batch: device is 33 bytes"), "{e}");
    }

    #[test]
    fn readings_are_json_numbers_or_the_three_strings() {
        let mut b = batch();
        b.events.truncate(4);
        b.events[0].value = f64::NAN;
        b.events[1].value = f64::INFINITY;
        b.events[2].value = f64::NEG_INFINITY;
        b.events[3].value = -0.0;
        let json: serde_json::Value =
            serde_json::from_slice(&b.encode(Encoding::Json, Compression::None)).unwrap();
        let values: Vec<serde_json::Value> =
            (0..4).map(|i| json["events"][i]["value"].clone()).collect();
        assert_eq!(
            values,
            serde_json::json!(["NaN", "Infinity", "-Infinity", -0.0])
                .as_array()
                .unwrap()[..]
        );
        let back = EventBatch::decode(&b.encode(Encoding::Json, Compression::None)).unwrap();
        assert_eq!(back.events[0].value.to_bits(), f64::NAN.to_bits());
        assert_eq!(back.events[1].value, f64::INFINITY);
        assert_eq!(back.events[2].value, f64::NEG_INFINITY);
        assert_eq!(back.events[3].value.to_bits(), (-0.0f64).to_bits());
        // Binary carries the bits, a NaN's payload included.
        b.events[0].value = f64::from_bits(0xfff0_0000_dead_beef);
        let back = EventBatch::decode(&b.encode(Encoding::Binary, Compression::None)).unwrap();
        assert_eq!(back.events[0].value.to_bits(), 0xfff0_0000_dead_beef);
        // Only those three strings, and no null.
        let text = String::from_utf8(b.encode(Encoding::Json, Compression::None)).unwrap();
        for bad in ["\"nan\"", "\"inf\"", "\"+Infinity\"", "null", "\"1.5\""] {
            let t = text.replacen("\"Infinity\"", bad, 1);
            let e = EventBatch::decode(t.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with("malformed payload:") && e.contains(" column "),
                "{bad}: {e}"
            );
        }
    }
}

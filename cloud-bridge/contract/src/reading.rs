//! A reading's `f64` in payloads (decision D1 of issue 13). JSON (any human-readable format)
//! writes a finite value as a number and NaN, +infinity and -infinity as the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"` (protobuf's JSON mapping; JSON has no such numbers), and reads
//! both. Binary formats carry the IEEE bits. Use with `#[serde(with = "reading")]`.
//!
//! Invariant: a value read back has the bits it was written with (JSON reads any NaN as the
//! canonical quiet NaN).

use serde::{de, Deserializer, Serializer};

/// The JSON string for a non-finite value; `None` for a finite one.
pub fn non_finite_name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// Writes `v`.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    match non_finite_name(*v) {
        Some(name) if s.is_human_readable() => s.serialize_str(name),
        _ => s.serialize_f64(*v),
    }
}

/// Reads a value written by [`serialize`] (in JSON: any number, or one of the three strings).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(Reading)
    } else {
        d.deserialize_f64(Reading)
    }
}

struct Reading;

impl de::Visitor<'_> for Reading {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"a number, "NaN", "Infinity" or "-Infinity""#)
    }

    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    // JSON integers: `as` rounds to the nearest f64, which is what the decimal means.
    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

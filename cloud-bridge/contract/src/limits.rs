//! Bounds on ids, sensor names and times (decisions D2, D3 of issue 13): one definition that the
//! agent's uplink and every consumer of a batch ([`crate::EventBatch::validate`]) apply.
//!
//! Invariant: a value that passes its `check_*` is storable as is (PostgreSQL text cannot hold
//! NUL, `timestamptz` holds every time in range, a gateway id is one MQTT topic level). Each
//! error completes a sentence that starts with what was checked, so callers prefix the field.

/// Longest sensor name, bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 128;
/// Longest gateway id, bytes of UTF-8 (the agent's `[gateway] id`).
pub const MAX_GATEWAY_ID_LEN: usize = 64;
/// Longest device id, bytes of UTF-8: the device link's limit (`ferry_wire::MAX_DEVICE_ID_LEN`).
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// Earliest `ts_ms` (and `at_ms`): 0001-01-01T00:00:00.000Z.
pub const MIN_TS_MS: i64 = -62_135_596_800_000;
/// Latest `ts_ms` (and `at_ms`): 9999-12-31T23:59:59.999Z.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Checks a gateway id (D3): 1..=[`MAX_GATEWAY_ID_LEN`] bytes without `/`, `+`, `#` (it is an
/// MQTT topic level) or NUL. The error completes a sentence that starts with what was checked.
pub fn check_gateway_id(id: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_GATEWAY_ID_LEN} bytes without '/', '+', '#' or NUL");
    if id.is_empty() || id.len() > MAX_GATEWAY_ID_LEN {
        return Err(format!("is {} bytes; it {rule}", id.len()));
    }
    if let Some(c) = id.chars().find(|c| matches!(c, '/' | '+' | '#' | '\0')) {
        return Err(format!("{id:?} contains {c:?}; it {rule}"));
    }
    Ok(())
}

/// Checks a device id (D3): 1..=[`MAX_DEVICE_ID_LEN`] bytes (the device link's limit) without
/// NUL. The error completes a sentence that starts with what was checked.
pub fn check_device_id(id: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_DEVICE_ID_LEN} bytes without NUL");
    if id.is_empty() || id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!("is {} bytes; it {rule}", id.len()));
    }
    if id.contains('\0') {
        return Err(format!("{id:?} contains NUL; it {rule}"));
    }
    Ok(())
}

/// Checks a sensor name: 1..=[`MAX_NAME_LEN`] bytes without NUL.
pub fn check_sensor_name(name: &str) -> Result<(), String> {
    let rule = format!("must be 1..={MAX_NAME_LEN} bytes without NUL");
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("is {} bytes; it {rule}", name.len()));
    }
    if name.contains('\0') {
        return Err(format!("{name:?} contains NUL; it {rule}"));
    }
    Ok(())
}

/// Checks a time (D2): [`MIN_TS_MS`]..=[`MAX_TS_MS`], years 1 to 9999 UTC.
pub fn check_ts_ms(ms: i64) -> Result<(), String> {
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ms) {
        return Ok(());
    }
    Err(format!(
        "{ms} is outside {MIN_TS_MS}..={MAX_TS_MS} \
         (0001-01-01T00:00:00.000Z..=9999-12-31T23:59:59.999Z)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_names_and_times_are_bounded_with_the_reason() {
        assert!(check_gateway_id(&"g".repeat(MAX_GATEWAY_ID_LEN)).is_ok());
        assert!(check_gateway_id("gw%1 é").is_ok());
        assert_eq!(
            check_gateway_id(&"g".repeat(65)).unwrap_err(),
            "is 65 bytes; it must be 1..=64 bytes without '/', '+', '#' or NUL"
        );
        assert_eq!(
            check_gateway_id("a+b").unwrap_err(),
            "\"a+b\" contains '+'; it must be 1..=64 bytes without '/', '+', '#' or NUL"
        );
        for bad in ["", "a/b", "a#", "a\0b"] {
            assert!(check_gateway_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_device_id(&"d".repeat(MAX_DEVICE_ID_LEN)).is_ok());
        assert!(check_device_id("a/b+c#d%e").is_ok());
        assert_eq!(
            check_device_id(&"d".repeat(33)).unwrap_err(),
            "is 33 bytes; it must be 1..=32 bytes without NUL"
        );
        assert_eq!(
            check_device_id("d\0").unwrap_err(),
            "\"d\\0\" contains NUL; it must be 1..=32 bytes without NUL"
        );
        assert!(check_device_id("").is_err());
        assert!(check_sensor_name(&"s".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_sensor_name(&"s".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(check_sensor_name("t\0").is_err());
        assert!(check_ts_ms(MIN_TS_MS).is_ok() && check_ts_ms(MAX_TS_MS).is_ok());
        assert_eq!(
            check_ts_ms(MAX_TS_MS + 1).unwrap_err(),
            "253402300800000 is outside -62135596800000..=253402300799999 \
             (0001-01-01T00:00:00.000Z..=9999-12-31T23:59:59.999Z)"
        );
        assert!(check_ts_ms(MIN_TS_MS - 1).is_err());
    }
}

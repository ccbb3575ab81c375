//! Times in query strings and responses: pure parsing and formatting, no I/O.
//!
//! Accepted instants: RFC 3339 (`2026-11-24T10:00:00Z`, `...T10:00:00.5+01:00`), Unix milliseconds
//! (signed), `now`, and offsets from now (`-90s`, `-15m`, `-1h`, `-7d`, `-2w`; also `+5m`). Every
//! instant lies in the range a stored timestamp can have (D2: [`MIN_MS`]..=[`MAX_MS`], years
//! 1..=9999); one outside it, or a number too large for any arithmetic, is an error that says
//! "out of range", so arithmetic on a parsed instant never overflows. Output is always RFC 3339
//! UTC with milliseconds.

/// Earliest instant accepted: 0001-01-01T00:00:00.000Z.
pub const MIN_MS: i64 = -62_135_596_800_000;
/// Latest instant accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

fn out_of_range(s: &str) -> String {
    format!("{s:?} is out of range (0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z)")
}

/// Milliseconds in a duration like `1m`, `10s`, `250ms`, `2h`, `1d`, `1w` (integer amounts), at
/// most [`MAX_MS`] - [`MIN_MS`] (the whole range of instants).
pub fn parse_span_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a duration like 10s, 15m, 1h or 7d");
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return Err(bad()),
    };
    if num.is_empty() {
        return Err(bad());
    }
    // All digits here: a parse failure can only be a number too large for an i64.
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|v| *v <= MAX_MS - MIN_MS)
        .ok_or_else(|| format!("{s:?} is out of range (at most {} ms)", MAX_MS - MIN_MS))
}

/// An instant in Unix milliseconds; see the module header for the forms.
pub fn parse_instant(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("is empty; use RFC 3339, Unix milliseconds, `now` or e.g. -1h".into());
    }
    if t == "now" {
        return Ok(now_ms);
    }
    let in_range = |v: i64| {
        if (MIN_MS..=MAX_MS).contains(&v) {
            Ok(v)
        } else {
            Err(out_of_range(t))
        }
    };
    let (sign, digits) = match t.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.contains(|c: char| c.is_ascii_alphabetic())
        && t != digits
    {
        // An offset from now: both within range, so the sum cannot overflow.
        let span = parse_span_ms(digits).map_err(|e| {
            if e.contains("out of range") {
                out_of_range(t)
            } else {
                e
            }
        })?;
        return in_range(now_ms + sign * span);
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !t.starts_with('+') {
        // Unix milliseconds; a number too large for an i64 is out of range too.
        return match t.parse::<i64>() {
            Ok(ms) => in_range(ms),
            Err(_) => Err(out_of_range(t)),
        };
    }
    parse_rfc3339(t).and_then(in_range)
}

fn parse_rfc3339(t: &str) -> Result<i64, String> {
    let bad = || {
        format!("{t:?} is not RFC 3339 (2026-11-24T10:00:00Z), Unix milliseconds, `now` or a relative time like -1h")
    };
    let b = t.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = &t[r];
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return Err(format!("{t:?}: a date or time field is out of range"));
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let digits = &t[start..i.min(start + 3)];
        frac_ms = digits.parse::<i64>().map_err(|_| bad())? * 10_i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match &t[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(format!("{t:?}: the UTC offset is out of range"));
            }
            let m = oh * 60 + om;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    // Years 0000..=9999 (four digits): far inside i64; the caller checks the range.
    Ok(((days * 86_400 + h * 3600 + mi * 60 + sec.min(59)) - offset_min * 60) * 1000 + frac_ms)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 UTC with milliseconds: `2026-11-24T10:00:00.123Z`.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_764_000_000_000;

    #[test]
    fn forms() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z", NOW), Ok(0));
        assert_eq!(
            parse_instant("2026-11-24T10:00:00.5+01:00", NOW),
            Ok(1_795_510_800_500)
        );
        assert_eq!(
            parse_instant("2026-11-24T09:00:00.500Z", NOW),
            Ok(1_795_510_800_500)
        );
        assert_eq!(
            parse_instant("2026-11-24 09:00:00.5004Z", NOW),
            Ok(1_795_510_800_500)
        );
        assert_eq!(parse_instant("now", NOW), Ok(NOW));
        assert_eq!(parse_instant("-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_instant("-90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_instant("+5m", NOW), Ok(NOW + 300_000));
        assert_eq!(parse_instant("-2w", NOW), Ok(NOW - 2 * 604_800_000));
        assert_eq!(parse_instant("1764000000000", NOW), Ok(NOW));
        assert_eq!(parse_instant("-1", NOW), Ok(-1), "Unix ms before 1970");
        assert_eq!(parse_instant("0001-01-01T00:00:00Z", NOW), Ok(MIN_MS));
        assert_eq!(parse_instant("9999-12-31T23:59:59.999Z", NOW), Ok(MAX_MS));
        assert_eq!(parse_instant(&MIN_MS.to_string(), NOW), Ok(MIN_MS));
        for bad in [
            "",
            "yesterday",
            "-h",
            "+1",
            "-1y",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-24T10:00:00",
            "2026-11-24T25:00:00Z",
            "2026-11-24T10:00:00.Z",
            "99999999999999999999",
            "-99999999999999999999h",
            "2026-11-24T10:00:00+1:00",
        ] {
            assert!(parse_instant(bad, NOW).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_instant("-100000w", NOW),
            Ok(NOW - 100_000 * 604_800_000)
        );
        // Too far, or too large for any arithmetic: out of range, never "not a duration".
        for far in [
            "-1000000000000w",
            "-100000000000d",
            "+10000000w",
            "-99999999999999999999h",
            "-99999999999999999999999999999999ms",
            "99999999999999999999",
            "-99999999999999999999",
            "253402300800000",
            "-62135596800001",
            "0000-12-31T23:59:59Z",
            "0001-01-01T00:00:00+00:01",
        ] {
            let e = parse_instant(far, NOW).unwrap_err();
            assert_eq!(e, out_of_range(far), "{far}");
        }
    }

    #[test]
    fn spans() {
        assert_eq!(parse_span_ms("1m"), Ok(60_000));
        assert_eq!(parse_span_ms("250ms"), Ok(250));
        assert_eq!(parse_span_ms("1d"), Ok(86_400_000));
        assert!(parse_span_ms("1.5m").is_err());
        assert!(parse_span_ms("m").is_err());
        assert!(parse_span_ms("-1m").is_err());
        assert!(parse_span_ms("999999999999w")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_span_ms("1000000000000000000000000w")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_span_ms("5x").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn format() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_510_800_500), "2026-11-24T09:00:00.500Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(MIN_MS), "0001-01-01T00:00:00.000Z");
        assert_eq!(format_ms(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in MIN_MS..=MAX_MS) {
            prop_assert_eq!(parse_instant(&format_ms(ms), NOW), Ok(ms));
        }

        #[test]
        fn any_text_parses_or_errs_without_panicking(s in "\\PC{0,40}") {
            let _ = parse_instant(&s, NOW);
            let _ = parse_span_ms(&s);
        }

        #[test]
        fn parsed_instants_are_in_range(s in "[-+]?[0-9]{1,20}(ms|s|m|h|d|w)?") {
            match parse_instant(&s, NOW) {
                Ok(v) => prop_assert!((MIN_MS..=MAX_MS).contains(&v)),
                // A number is either a duration's, or an out-of-range one: never "not a duration"
                // for a valid unit.
                Err(e) => prop_assert!(
                    !s.ends_with(char::is_alphabetic) || !e.contains("not a duration"),
                    "{}: {}", s, e
                ),
            }
        }
    }
}

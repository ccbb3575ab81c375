//! Time and units, in one place: the wall clock, instants (RFC 3339, Unix milliseconds, relative
//! to now) and durations, for the config file, the API and the CLI. Pure parsing and formatting
//! on `jiff` (calendar rules, RFC 3339), apart from [`utc_now_ms`].
//!
//! The wall clock: [`utc_now_ms`] is the one function that reads it for a timestamp; durations
//! and deadlines use `Instant`, which never jumps. A clock set before 1970 reads as 0 instead of
//! failing: a wrong timestamp is data, a panic would stop ingest.
//!
//! One duration syntax ([`parse_duration`]) everywhere: a non-negative decimal number, then
//! optionally (spaces allowed) a unit `ms`, `s`, `m`/`min`, `h`, `d` or `w`; no unit means seconds
//! (`250ms`, `1.5h`, `7d`, `30`). The API works in whole milliseconds ([`parse_span_ms`]: a
//! fraction of a millisecond is dropped).
//!
//! Accepted instants: RFC 3339 (`2026-11-24T10:00:00Z`, `...T10:00:00.5+01:00`), Unix milliseconds
//! (signed), `now`, and offsets from now (`-90s`, `-15m`, `-1h`, `-7d`, `-2w`; also `+5m`). Every
//! instant lies in the range a stored timestamp can have (D2: [`MIN_MS`]..=[`MAX_MS`], years
//! 1..=9999); one outside it, or a number too large for any arithmetic, is an error that says
//! "out of range", so arithmetic on a parsed instant never overflows. Output is always RFC 3339
//! UTC with milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::civil::DateTime;
use jiff::tz::Offset;
use jiff::{SignedDuration, Timestamp};
use std::fmt::Write as _;

/// 1970-01-01T00:00:00 as a civil time. Instants are converted as civil UTC times (jiff's
/// `Timestamp` stops a day short of 9999-12-31T23:59:59.999Z, the last instant Ferry accepts).
const EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// Wall-clock time, milliseconds since the Unix epoch (UTC); 0 if the clock is before 1970.
pub fn utc_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Earliest instant accepted: 0001-01-01T00:00:00.000Z.
pub const MIN_MS: i64 = -62_135_596_800_000;
/// Latest instant accepted: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

fn out_of_range(s: &str) -> String {
    format!("{s:?} is out of range (0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999Z)")
}

/// Parses the one duration syntax (module header): `"500ms"`, `"1.5h"`, `"7d"`, `"2w"`, `"30"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_ns: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        "w" => 604_800_000_000_000,
        u => {
            return Err(format!(
            "{s:?} is not a duration: unknown unit {u:?} (use ms, s, m, h, d or w, e.g. \"500ms\", \"30s\", \"7d\")"
        ))
        }
    };
    let bad = || format!("{s:?} is not a duration like \"500ms\", \"30s\", \"1.5h\" or \"7d\"");
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(bad());
    }
    let too_big = || format!("{s:?} is out of range");
    // Exact decimal arithmetic: digits beyond a nanosecond's resolution are dropped.
    let whole: u128 = if int.is_empty() {
        0
    } else {
        int.parse::<u128>().map_err(|_| too_big())?
    };
    let frac = &frac[..frac.len().min(20)];
    let frac_ns = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| bad())? * unit_ns / 10u128.pow(frac.len() as u32)
    };
    let ns = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(frac_ns))
        .ok_or_else(too_big)?;
    let secs = u64::try_from(ns / 1_000_000_000).map_err(|_| too_big())?;
    Ok(Duration::new(secs, (ns % 1_000_000_000) as u32))
}

/// A duration ([`parse_duration`]) in whole milliseconds, at most [`MAX_MS`] - [`MIN_MS`] (the
/// whole range of instants).
pub fn parse_span_ms(s: &str) -> Result<i64, String> {
    let out_of_range = || format!("{s:?} is out of range (at most {} ms)", MAX_MS - MIN_MS);
    let d = parse_duration(s).map_err(|e| {
        if e.contains("out of range") {
            out_of_range()
        } else {
            e
        }
    })?;
    i64::try_from(d.as_millis())
        .ok()
        .filter(|v| *v <= MAX_MS - MIN_MS)
        .ok_or_else(out_of_range)
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
    if digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
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
    let field_range = || format!("{t:?}: a date or time field is out of range");
    // A leap second (`:60`) reads as `:59`.
    let civil = DateTime::new(
        y as i16,
        mo as i8,
        d as i8,
        h as i8,
        mi as i8,
        sec.min(59) as i8,
        0,
    )
    .ok()
    .filter(|_| sec <= 60)
    .ok_or_else(field_range)?;
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
    let offset_s = match &t[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(format!("{t:?}: the UTC offset is out of range"));
            }
            let m = (oh * 60 + om) as i32 * 60;
            if o.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return Err(bad()),
    };
    // jiff's civil times hold years -9999..=9999: what an offset moves outside them is outside
    // Ferry's range (years 1..=9999) too.
    let utc = civil
        .checked_sub(SignedDuration::from_secs(offset_s.into()))
        .map_err(|_| out_of_range(t))?;
    let ms = i64::try_from(utc.duration_since(EPOCH).as_millis()).map_err(|_| out_of_range(t))?;
    Ok(ms + frac_ms)
}

/// RFC 3339 UTC with milliseconds: `2026-11-24T10:00:00.123Z`.
pub fn format_ms(ms: i64) -> String {
    let mut s = format_utc(ms, 'T', true);
    s.push('Z');
    s
}

/// `YYYY-MM-DD{sep}HH:MM:SS`, with `.mmm` when `millis`, for Unix milliseconds, UTC. A time
/// beyond jiff's years -9999..=9999, which no stored sample has since schema v7 bounds them
/// (years 1..=9999), is written as its Unix milliseconds rather than as a wrong date.
///
/// One buffer, written once: the API formats a timestamp per row (1,440 per day series), and
/// this is about twice as fast as going through `DateTime` arithmetic and three `format!`s
/// (`docs/decisions/time-formatting.md`).
pub fn format_utc(ms: i64, sep: char, millis: bool) -> String {
    // A Timestamp converts to civil time by plain arithmetic; its range ends a few hours short
    // of DateTime's (9999-12-30T22:00Z), which the slower path covers.
    let c = match Timestamp::from_millisecond(ms) {
        Ok(t) => Offset::UTC.to_datetime(t),
        Err(_) => match EPOCH.checked_add(SignedDuration::from_millis(ms)) {
            Ok(c) => c,
            Err(_) => return ms.to_string(),
        },
    };
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}",
        c.year(),
        c.month(),
        c.day(),
        c.hour(),
        c.minute(),
        c.second()
    );
    if millis {
        let _ = write!(s, ".{:03}", c.millisecond());
    }
    s
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
        assert_eq!(parse_instant("-1.5h", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_instant("-.5s", NOW), Ok(NOW - 500));
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
        assert_eq!(parse_span_ms("1.5m"), Ok(90_000));
        assert_eq!(parse_span_ms("2w"), Ok(1_209_600_000));
        assert_eq!(parse_span_ms("30"), Ok(30_000), "no unit: seconds");
        assert_eq!(
            parse_span_ms("0.0005s"),
            Ok(0),
            "below a millisecond: dropped"
        );
        assert!(parse_span_ms("m").is_err());
        assert!(parse_span_ms(".").is_err());
        assert!(parse_span_ms("1.2.3s").is_err());
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
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 1.5 h "), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(
            parse_duration("1e3s").unwrap_err(),
            "\"1e3s\" is not a duration: unknown unit \"e3s\" (use ms, s, m, h, d or w, e.g. \"500ms\", \"30s\", \"7d\")"
        );
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999999w")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn the_clock_reads_milliseconds() {
        // 2020-09-13 ..= 2286: milliseconds, not seconds or microseconds.
        assert!((1_600_000_000_000..10_000_000_000_000).contains(&utc_now_ms()));
    }

    #[test]
    fn format() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_510_800_500), "2026-11-24T09:00:00.500Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(MIN_MS), "0001-01-01T00:00:00.000Z");
        assert_eq!(format_ms(MAX_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_utc(1_795_510_800_500, ' ', false),
            "2026-11-24 09:00:00"
        );
        assert_eq!(format_utc(i64::MAX, ' ', true), i64::MAX.to_string());
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
            let _ = parse_duration(&s);
        }

        #[test]
        fn format_agrees_with_jiffs_own_formatting(ms in MIN_MS..=MAX_MS) {
            let c = EPOCH.checked_add(SignedDuration::from_millis(ms)).unwrap();
            prop_assert_eq!(format_ms(ms), c.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }

        #[test]
        fn any_millisecond_formats_without_panicking(ms in proptest::num::i64::ANY) {
            let _ = format_ms(ms);
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

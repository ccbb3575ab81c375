//! The text of one cell: times, ages, sizes, sample values and the small rules every format
//! shares (absent is empty, or `-` in a table; control characters escaped in a table).
//!
//! Invariants: pure functions of their input; a sample value prints as the shortest text that
//! reads back to the same `f64` (non-finite ones as the API's words), so CSV loses nothing.

/// `YYYY-MM-DD HH:MM:SS` (with `.mmm` when `millis`) for Unix milliseconds, UTC.
pub fn fmt_utc(ms: i64, millis: bool) -> String {
    crate::time::format_utc(ms, ' ', millis)
}

/// A time cell: from Unix ms when the agent gave them, else its RFC 3339 text, else `-`.
pub(super) fn time_cell(ms: Option<i64>, text: Option<&str>, millis: bool) -> String {
    match (ms, text) {
        (Some(ms), _) => fmt_utc(ms, millis),
        (None, Some(t)) => clean(t),
        (None, None) => "-".into(),
    }
}

/// A short human duration: `850ms`, `4.2s`, `3m07s`, `2h05m`, `3d04h`; negative with a `-`.
pub fn fmt_age(ms: i64) -> String {
    if ms < 0 {
        return format!("-{}", fmt_age(ms.saturating_neg()));
    }
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `117.7 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A sample value as the shortest text that reads back to the same `f64`, or `NaN`, `Infinity`,
/// `-Infinity` (the API's words, D1); empty when absent.
pub fn fmt_value(v: Option<f64>) -> String {
    v.map(|v| {
        crate::api::model::value::non_finite(v)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    })
    .unwrap_or_default()
}

pub(super) fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

pub(super) fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Escapes control characters so a cell stays on one line of a table.
pub(super) fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(fmt_utc(0, false), "1970-01-01 00:00:00");
        assert_eq!(fmt_utc(1_764_000_000_123, true), "2025-11-24 16:00:00.123");
        assert_eq!(fmt_utc(951_782_400_000, false), "2000-02-29 00:00:00");
        assert_eq!(fmt_utc(-1, true), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(fmt_age(850), "850ms");
        assert_eq!(fmt_age(4_240), "4.2s");
        assert_eq!(fmt_age(187_000), "3m07s");
        assert_eq!(fmt_age(7_500_000), "2h05m");
        assert_eq!(fmt_age(273_600_000), "3d04h");
        assert_eq!(fmt_age(-1_500), "-1.5s");
        assert_eq!(fmt_age(i64::MIN), format!("-{}", fmt_age(i64::MAX)));
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(1_073_741_824), "1.0 GiB");
        assert_eq!(fmt_value(Some(21.5)), "21.5");
        assert_eq!(fmt_value(Some(600.0)), "600");
        assert_eq!(fmt_value(Some(0.1)), "0.1");
        assert_eq!(fmt_value(None), "");
        assert_eq!(fmt_value(Some(f64::NAN)), "NaN");
        assert_eq!(fmt_value(Some(f64::INFINITY)), "Infinity");
        assert_eq!(fmt_value(Some(f64::NEG_INFINITY)), "-Infinity");
    }
}

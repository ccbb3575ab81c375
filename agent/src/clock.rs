//! The wall clock as the agent stores and serves it: Unix milliseconds, UTC.
//!
//! The one function that reads the wall clock for a timestamp (`crate::utc_now_ms` re-exports
//! it); durations and deadlines use `Instant`, which never jumps. A clock set before 1970 reads
//! as 0 instead of failing: a wrong timestamp is data, a panic would stop ingest.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, milliseconds since the Unix epoch (UTC); 0 if the clock is before 1970.
pub fn utc_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wall_clock_in_milliseconds() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let now = utc_now_ms();
        assert!(now >= before && now - before < 60_000, "{before} {now}");
        // 2020-09-13: milliseconds, not seconds or microseconds.
        assert!((1_600_000_000_000..10_000_000_000_000).contains(&now));
    }
}

//! What the agent writes to storage: the figure an operator watches for SD-card and eMMC wear.
//!
//! The source is the kernel's own count for this process, `write_bytes` in `/proc/self/io`: every
//! byte the process caused to be sent to storage (whole 4 KiB pages for buffered writes, the exact
//! length for direct ones), whichever file it went to: the database, its WAL, the sample log. The
//! same figure is what `cargo bench --bench disk_writes` reads from outside, so the agent's
//! `ferry_store_bytes_written_total`, the daily rate in `ferry status` and the benchmark agree.
//! Where there is no `/proc` the figure is absent, never made up.

/// Bytes this process has caused to be written to storage since it started (`None` without
/// `/proc/self/io`).
pub fn process_write_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|t| write_bytes(&t))
}

/// The `write_bytes` field of a `/proc/PID/io` text.
pub fn write_bytes(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A day of writes at the rate `bytes` over `seconds` (`None` over no time).
pub fn per_day(bytes: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| bytes as f64 / seconds * 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_write_bytes_and_not_the_cancelled_or_character_counts() {
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 123456\ncancelled_write_bytes: 4096\n";
        assert_eq!(write_bytes(io), Some(123_456));
        assert_eq!(write_bytes("rchar: 1\n"), None);
        assert_eq!(write_bytes("write_bytes: lots\n"), None);
    }

    #[test]
    fn scales_a_rate_to_a_day() {
        assert_eq!(per_day(1_000, 10.0), Some(8_640_000.0));
        assert_eq!(per_day(1_000, 0.0), None);
    }

    #[test]
    fn this_process_has_a_figure_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(process_write_bytes().is_some());
        }
    }
}

//! Cost of formatting a timestamp the way the API does (`ferry_agent::time::format_ms`, once per
//! row: 1,440 times for a day's series at one-minute buckets, once or twice per device for
//! `/devices`), against jiff's own `strftime` for the same text.
//!
//! ```text
//! cargo bench -p ferry-agent --bench time_format
//! ```
//! Knob: `FERRY_BENCH_CALLS` (2,000,000 per variant and round). Figures: `docs/decisions/time-formatting.md`.
use std::hint::black_box;
use std::time::Instant;

use ferry_agent::time::format_ms;

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list
    }
    let n: i64 = std::env::var("FERRY_BENCH_CALLS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(2_000_000);
    // 2025-06-02T00:00Z and on, one sample every 28.123 s (the API bench's store spacing).
    let at = |i: i64| 1_748_822_400_000 + i * 28_123;
    let strftime = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .unwrap()
            .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    let variants: [(&str, &dyn Fn(i64) -> String); 2] = [
        ("time::format_ms", &format_ms),
        ("jiff strftime", &strftime),
    ];
    // Rounds alternate the variants so a noisy stretch of the machine hits each; best of 7.
    let mut best = [f64::MAX; 2];
    for _round in 0..7 {
        for (k, (_, f)) in variants.iter().enumerate() {
            let t = Instant::now();
            let mut bytes = 0usize;
            for i in 0..n {
                bytes += black_box(f(black_box(at(i)))).len();
            }
            best[k] = best[k].min(t.elapsed().as_nanos() as f64 / n as f64);
            assert_eq!(bytes as i64, 24 * n, "every timestamp is 24 bytes");
        }
    }
    println!("{:<18} {:>22}", "formatter", "ns/call (best of 7)");
    for ((name, _), ns) in variants.iter().zip(best) {
        println!("{name:<18} {ns:>22.0}");
    }
}

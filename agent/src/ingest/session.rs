//! What the gateway knows about the device on one link, as plain data (no I/O).
//!
//! A session starts with a welcomed Hello and names the `(device, boot)` every later message on the
//! link belongs to. It maps device ticks to UTC from the latest `(ticks, received at)` anchor (each
//! Hello and Heartbeat carries one), so clock drift between device and gateway never accumulates
//! beyond one heartbeat period.
//!
//! A sample's time is bounded (PROTOCOL.md section 5): at most [`MAX_TICK_SPAN_S`] seconds of ticks
//! from its anchor, and inside [`MIN_TS_MS`]..=[`MAX_TS_MS`]. Outside, [`Session::utc_ms`] gives
//! `None` and the sample is not stored: tick arithmetic never wraps into a nonsense date.

/// Farthest a sample's ticks may lie from the session's anchor, in seconds of ticks (365 days): far
/// more than any device ring holds, far less than what could overflow a timestamp.
pub const MAX_TICK_SPAN_S: u64 = 365 * 24 * 3600;
/// The cloud contract's time range (years 1..=9999), decided once there.
pub use ferry_contract::{MAX_TS_MS, MIN_TS_MS};

/// The welcomed device on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Device id.
    pub device_id: String,
    /// `devices.id`.
    pub device: i64,
    /// `boots.boot_no`.
    pub boot_no: i64,
    /// The device's boot id.
    pub boot_id: u32,
    tick_hz: u32,
    anchor_ticks: u64,
    anchor_utc_ms: i64,
}

impl Session {
    /// A session for a Hello sent at `ticks`, received at `utc_ms`.
    pub fn new(
        device_id: String,
        device: i64,
        boot_no: i64,
        boot_id: u32,
        tick_hz: u32,
        ticks: u64,
        utc_ms: i64,
    ) -> Self {
        Session {
            device_id,
            device,
            boot_no,
            boot_id,
            tick_hz: tick_hz.max(1),
            anchor_ticks: ticks,
            anchor_utc_ms: utc_ms,
        }
    }

    /// A newer `(ticks, received at)` pair, e.g. from a Heartbeat.
    pub fn observe(&mut self, ticks: u64, utc_ms: i64) {
        self.anchor_ticks = ticks;
        self.anchor_utc_ms = utc_ms;
    }

    /// UTC milliseconds of a device tick count; `None` when the sample is out of range (see the
    /// module header).
    pub fn utc_ms(&self, ticks: u64) -> Option<i64> {
        let hz = i128::from(self.tick_hz);
        let dt = i128::from(ticks) - i128::from(self.anchor_ticks);
        if dt.unsigned_abs() > u128::from(MAX_TICK_SPAN_S) * hz.unsigned_abs() {
            return None;
        }
        // |dt| <= 3.2e7 s x 2^32 Hz: dt * 1000 stays far inside i128.
        let ts = i128::from(self.anchor_utc_ms) + dt * 1000 / hz;
        i64::try_from(ts)
            .ok()
            .filter(|t| (MIN_TS_MS..=MAX_TS_MS).contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_map_to_utc_from_the_latest_anchor() {
        let mut s = Session::new("d".into(), 1, 1, 9, 1000, 5_000, 1_700_000_000_000);
        assert_eq!(s.utc_ms(5_000), Some(1_700_000_000_000));
        assert_eq!(
            s.utc_ms(4_000),
            Some(1_699_999_999_000),
            "samples taken before the anchor"
        );
        assert_eq!(s.utc_ms(6_500), Some(1_700_000_001_500));
        s.observe(10_000, 1_700_000_005_010); // device clock 10 ms slow over 5 s
        assert_eq!(s.utc_ms(10_000), Some(1_700_000_005_010));
        let slow = Session::new("d".into(), 1, 1, 9, 32_768, 0, 0);
        assert_eq!(slow.utc_ms(32_768 * 3), Some(3000));
    }

    /// Issue 13: ticks 2^63 after a Hello at 1,000 ticks were stored in the year -292,274,998, and
    /// `u64::MAX` 1 ms before the anchor.
    #[test]
    fn ticks_far_from_the_anchor_are_out_of_range_not_wrapped() {
        let now = 1_700_000_000_000;
        let s = Session::new("d".into(), 1, 1, 9, 1000, 1_000, now);
        assert_eq!(s.utc_ms(1 << 63), None);
        assert_eq!(s.utc_ms(u64::MAX), None);
        let span = MAX_TICK_SPAN_S * 1000;
        assert_eq!(s.utc_ms(1_000 + span), Some(now + span as i64), "the edge");
        assert_eq!(s.utc_ms(1_000 + span + 1), None);
        let late = Session::new("d".into(), 1, 1, 9, 1000, span + 5, now);
        assert_eq!(late.utc_ms(5), Some(now - span as i64), "the edge before");
        assert_eq!(late.utc_ms(4), None);
        // The fastest tick rate: the span scales with it.
        let fast = Session::new("d".into(), 1, 1, 9, u32::MAX, 0, now);
        assert_eq!(fast.utc_ms(u64::from(u32::MAX) * 2), Some(now + 2000));
        assert_eq!(fast.utc_ms(u64::MAX), None);
        // Inside the span but outside the years 1..=9999 (a gateway clock far off).
        let edge = Session::new("d".into(), 1, 1, 9, 1000, 0, MAX_TS_MS - 10);
        assert_eq!(edge.utc_ms(10), Some(MAX_TS_MS));
        assert_eq!(edge.utc_ms(11), None);
        let early = Session::new("d".into(), 1, 1, 9, 1000, 10, MIN_TS_MS);
        assert_eq!(early.utc_ms(10), Some(MIN_TS_MS));
        assert_eq!(early.utc_ms(9), None);
    }
}

//! What the gateway knows about the device on one link, as plain data (no I/O).
//!
//! A session starts with a welcomed Hello and names the `(device, boot)` every later message on the
//! link belongs to. It maps device ticks to UTC from the latest `(ticks, received at)` anchor (each
//! Hello and Heartbeat carries one), so clock drift between device and gateway never accumulates
//! beyond one heartbeat period.

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

    /// UTC milliseconds of a device tick count.
    pub fn utc_ms(&self, ticks: u64) -> i64 {
        let dt = i128::from(ticks) - i128::from(self.anchor_ticks);
        self.anchor_utc_ms + (dt * 1000 / i128::from(self.tick_hz)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_map_to_utc_from_the_latest_anchor() {
        let mut s = Session::new("d".into(), 1, 1, 9, 1000, 5_000, 1_700_000_000_000);
        assert_eq!(s.utc_ms(5_000), 1_700_000_000_000);
        assert_eq!(
            s.utc_ms(4_000),
            1_699_999_999_000,
            "samples taken before the anchor"
        );
        assert_eq!(s.utc_ms(6_500), 1_700_000_001_500);
        s.observe(10_000, 1_700_000_005_010); // device clock 10 ms slow over 5 s
        assert_eq!(s.utc_ms(10_000), 1_700_000_005_010);
        let slow = Session::new("d".into(), 1, 1, 9, 32_768, 0, 0);
        assert_eq!(slow.utc_ms(32_768 * 3), 3000);
    }
}

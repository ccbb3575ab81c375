//! Per-sensor sampling schedule.
//!
//! Each enabled sensor has an interval and a next due time. Due samples are produced in due-time
//! order (so sequence order follows time order across sensors). A device that fell far behind (more
//! than [`MAX_CATCH_UP`] intervals, e.g. after being halted in a debugger) skips ahead instead of
//! producing a burst.

use ferry_wire::MAX_SENSORS;

/// Intervals a sensor may fall behind before its schedule skips ahead.
pub const MAX_CATCH_UP: u64 = 1000;

pub(crate) struct Schedule {
    interval_ms: [u32; MAX_SENSORS],
    due_ms: [u64; MAX_SENSORS],
    count: usize,
}

impl Schedule {
    pub(crate) fn new(intervals: impl Iterator<Item = u32>, now_ms: u64) -> Self {
        let mut s = Schedule {
            interval_ms: [0; MAX_SENSORS],
            due_ms: [0; MAX_SENSORS],
            count: 0,
        };
        for (i, iv) in intervals.take(MAX_SENSORS).enumerate() {
            s.interval_ms[i] = iv;
            s.due_ms[i] = now_ms;
            s.count = i + 1;
        }
        s
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn interval(&self, sensor: usize) -> u32 {
        self.interval_ms[sensor]
    }

    /// Samples due within the next `ms` milliseconds, at most (one per enabled sensor per interval,
    /// rounded up).
    pub(crate) fn produced_within(&self, ms: u32) -> usize {
        self.interval_ms[..self.count]
            .iter()
            .filter(|&&iv| iv > 0)
            .map(|&iv| (ms as usize).div_ceil(iv as usize))
            .sum()
    }

    /// Changes an interval; the sensor is next due one new interval from now.
    pub(crate) fn set_interval(&mut self, sensor: usize, interval_ms: u32, now_ms: u64) {
        self.interval_ms[sensor] = interval_ms;
        self.due_ms[sensor] = now_ms + u64::from(interval_ms);
    }

    /// The earliest sensor due at or before `now_ms`, with its scheduled time; advances its schedule.
    pub(crate) fn next_due(&mut self, now_ms: u64) -> Option<(usize, u64)> {
        let (i, due) = (0..self.count)
            .filter(|&i| self.interval_ms[i] > 0)
            .map(|i| (i, self.due_ms[i]))
            .filter(|&(_, due)| due <= now_ms)
            .min_by_key(|&(_, due)| due)?;
        let iv = u64::from(self.interval_ms[i]);
        self.due_ms[i] = if now_ms - due > iv * MAX_CATCH_UP {
            now_ms + iv
        } else {
            due + iv
        };
        Some((i, due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_in_time_order_and_catches_up() {
        let mut s = Schedule::new([10u32, 25, 0].into_iter(), 0);
        let mut got = [(0usize, 0u64); 16];
        let mut n = 0;
        while let Some(d) = s.next_due(50) {
            got[n] = d;
            n += 1;
        }
        // sensor 0 at 0,10,..,50 (6), sensor 1 at 0,25,50 (3), sensor 2 disabled
        assert_eq!(n, 9);
        assert!(got[..n].windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(got[..n].iter().filter(|d| d.0 == 1).count(), 3);
        s.set_interval(2, 5, 50);
        assert_eq!(s.next_due(54), None);
        assert_eq!(s.next_due(55), Some((2, 55)));
    }

    #[test]
    fn skips_ahead_when_far_behind() {
        let mut s = Schedule::new([1u32].into_iter(), 0);
        assert_eq!(s.next_due(5000), Some((0, 0)));
        assert_eq!(s.next_due(5000), None);
    }
}

//! Synthetic sensors for boards without real parts (QEMU) and for the simulator.
//!
//! Values are a pure function of the channel, the scheduled time and a per-channel counter, so tests
//! can check them: `temperature` is a triangle wave 15..25 °C with a 60 s period, `humidity` 40..60 %
//! with a 90 s period, and `counter` counts the samples taken of it this boot (0, 1, 2, …), which
//! makes any gap visible.

use super::{ReadError, SensorSpec, Sensors};

/// Triangle wave in `[-1, 1]` with the given period.
fn triangle(t_ms: u64, period_ms: u64) -> f32 {
    let phase = (t_ms % period_ms) as f32 / period_ms as f32; // 0..1
    4.0 * if phase < 0.5 {
        phase - 0.25
    } else {
        0.75 - phase
    }
}

/// Channel table of [`Synthetic`]: temperature, humidity, counter.
pub const SPECS: [SensorSpec; 3] = [
    SensorSpec {
        name: "temperature",
        unit: "°C",
        default_interval_ms: 50,
        min_interval_ms: 1,
    },
    SensorSpec {
        name: "humidity",
        unit: "%",
        default_interval_ms: 50,
        min_interval_ms: 1,
    },
    SensorSpec {
        name: "counter",
        unit: "1",
        default_interval_ms: 10,
        min_interval_ms: 1,
    },
];

/// The synthetic channel set, with configurable boot intervals.
pub struct Synthetic {
    specs: [SensorSpec; 3],
    counter: u32,
}

impl Synthetic {
    /// Synthetic sensors with the default intervals of [`SPECS`].
    pub const fn new() -> Self {
        Synthetic {
            specs: SPECS,
            counter: 0,
        }
    }

    /// Synthetic sensors, every channel sampled every `interval_ms`.
    pub const fn with_interval(interval_ms: u32) -> Self {
        let mut specs = SPECS;
        let mut i = 0;
        while i < specs.len() {
            specs[i].default_interval_ms = interval_ms;
            i += 1;
        }
        Synthetic { specs, counter: 0 }
    }

    /// Expected value of the temperature channel at `t_ms` (for tests).
    pub fn temperature_at(t_ms: u64) -> f32 {
        20.0 + 5.0 * triangle(t_ms, 60_000)
    }

    /// Expected value of the humidity channel at `t_ms` (for tests).
    pub fn humidity_at(t_ms: u64) -> f32 {
        50.0 + 10.0 * triangle(t_ms, 90_000)
    }
}

impl Default for Synthetic {
    fn default() -> Self {
        Self::new()
    }
}

impl Sensors for Synthetic {
    fn specs(&self) -> &[SensorSpec] {
        &self.specs
    }

    fn read(&mut self, index: usize, t_ms: u64) -> Result<f32, ReadError> {
        match index {
            0 => Ok(Self::temperature_at(t_ms)),
            1 => Ok(Self::humidity_at(t_ms)),
            2 => {
                let v = self.counter as f32;
                self.counter += 1;
                Ok(v)
            }
            _ => Err(ReadError::Bus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_stay_in_range_and_counter_counts() {
        let mut s = Synthetic::new();
        for t in (0..200_000).step_by(777) {
            let temp = s.read(0, t).unwrap();
            let hum = s.read(1, t).unwrap();
            assert!((15.0..=25.0).contains(&temp), "{temp}");
            assert!((40.0..=60.0).contains(&hum), "{hum}");
        }
        assert_eq!(s.read(0, 30_000).unwrap(), 25.0);
        assert_eq!(s.read(0, 15_000).unwrap(), 20.0);
        assert_eq!(s.read(2, 0).unwrap(), 0.0);
        assert_eq!(s.read(2, 0).unwrap(), 1.0);
        assert_eq!(s.read(3, 0), Err(ReadError::Bus));
    }
}

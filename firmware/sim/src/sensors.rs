//! Simulated sensor channels: up to 16, named `temperature`, `humidity`, `counter`, `s3`…`s15`.
//!
//! Channels 0 and 1 follow the synthetic waves of `ferry-firmware`; every other channel is a
//! per-channel counter (0, 1, 2, … per boot), so a receiver can see gaps per channel.

use ferry_firmware::sensors::synthetic::Synthetic;
use ferry_firmware::{ReadError, SensorSpec, Sensors};
use ferry_wire::MAX_SENSORS;

const NAMES: [&str; MAX_SENSORS] = [
    "temperature",
    "humidity",
    "counter",
    "s3",
    "s4",
    "s5",
    "s6",
    "s7",
    "s8",
    "s9",
    "s10",
    "s11",
    "s12",
    "s13",
    "s14",
    "s15",
];
const UNITS: [&str; 3] = ["°C", "%", "1"];

/// `count` channels, each sampled every `interval_ms`.
pub struct SimSensors {
    specs: Vec<SensorSpec>,
    counters: [u32; MAX_SENSORS],
}

impl SimSensors {
    /// Panics if `count` is 0 or above 16 (the CLI validates first).
    pub fn new(count: usize, interval_ms: u32) -> Self {
        assert!((1..=MAX_SENSORS).contains(&count));
        let specs = (0..count)
            .map(|i| SensorSpec {
                name: NAMES[i],
                unit: UNITS[i.min(2)],
                default_interval_ms: interval_ms,
                min_interval_ms: 1,
            })
            .collect();
        SimSensors {
            specs,
            counters: [0; MAX_SENSORS],
        }
    }
}

impl Sensors for SimSensors {
    fn specs(&self) -> &[SensorSpec] {
        &self.specs
    }

    fn read(&mut self, index: usize, t_ms: u64) -> Result<f32, ReadError> {
        match index {
            0 => Ok(Synthetic::temperature_at(t_ms)),
            1 => Ok(Synthetic::humidity_at(t_ms)),
            i if i < self.specs.len() => {
                let v = self.counters[i] as f32;
                self.counters[i] += 1;
                Ok(v)
            }
            _ => Err(ReadError::Bus),
        }
    }
}

//! Sensirion SHT3x (SHT30/31/35) temperature and humidity sensor over `embedded_hal::i2c::I2c`.
//!
//! Non-blocking: [`Sht3x::start`] triggers a single-shot measurement (high repeatability, no clock
//! stretching, command `0x2400`) and [`Sht3x::read`] fetches it at least [`MEASUREMENT_MS`] later, so a
//! device never stalls its UART loop on a sensor. Each 16-bit word is followed by a CRC-8
//! (poly 0x31, init 0xFF), checked on every read.
//!
//! [`Sht3xSensors`] exposes the part as two channels (temperature in °C, relative humidity in %)
//! and measures on its own cadence; reads return the latest completed measurement.

use embedded_hal::i2c::I2c;

use super::{ReadError, SensorSpec, Sensors};

/// Default I2C address (ADDR pin low); 0x45 with ADDR high.
pub const DEFAULT_ADDRESS: u8 = 0x44;
/// Worst-case high-repeatability measurement time from the datasheet (15.5 ms), rounded up.
pub const MEASUREMENT_MS: u64 = 16;

const CMD_SINGLE_SHOT_HIGH: [u8; 2] = [0x24, 0x00];
const CMD_SOFT_RESET: [u8; 2] = [0x30, 0xA2];

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Degrees Celsius.
    pub temperature_c: f32,
    /// Relative humidity, percent.
    pub humidity_pct: f32,
}

/// Driver errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error<E> {
    /// The I2C bus reported an error (including a NACK while the measurement is still running).
    I2c(E),
    /// A CRC-8 did not match its word.
    Crc,
}

/// CRC-8 as specified by Sensirion: polynomial 0x31, init 0xFF, no reflection, no final XOR.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// SHT3x driver owning its I2C bus handle (pass a shared-bus `I2c` to share it).
pub struct Sht3x<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Sht3x<I> {
    /// A driver for the part at `address`.
    pub fn new(i2c: I, address: u8) -> Self {
        Sht3x { i2c, address }
    }

    /// Gives the bus back.
    pub fn release(self) -> I {
        self.i2c
    }

    /// Soft reset (the part needs ~1.5 ms afterwards).
    pub fn soft_reset(&mut self) -> Result<(), Error<I::Error>> {
        self.i2c
            .write(self.address, &CMD_SOFT_RESET)
            .map_err(Error::I2c)
    }

    /// Starts a single-shot measurement.
    pub fn start(&mut self) -> Result<(), Error<I::Error>> {
        self.i2c
            .write(self.address, &CMD_SINGLE_SHOT_HIGH)
            .map_err(Error::I2c)
    }

    /// Reads the result of the last [`Sht3x::start`], at least [`MEASUREMENT_MS`] after it.
    pub fn read(&mut self) -> Result<Measurement, Error<I::Error>> {
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        if crc8(&buf[0..2]) != buf[2] || crc8(&buf[3..5]) != buf[5] {
            return Err(Error::Crc);
        }
        let t = u16::from_be_bytes([buf[0], buf[1]]) as f32;
        let rh = u16::from_be_bytes([buf[3], buf[4]]) as f32;
        Ok(Measurement {
            temperature_c: -45.0 + 175.0 * t / 65535.0,
            humidity_pct: 100.0 * rh / 65535.0,
        })
    }
}

/// Channel table of [`Sht3xSensors`].
pub const SPECS: [SensorSpec; 2] = [
    SensorSpec {
        name: "temperature",
        unit: "°C",
        default_interval_ms: 1000,
        // A single-shot measurement takes up to 15.5 ms; faster would repeat the last one.
        min_interval_ms: MEASUREMENT_MS as u32,
    },
    SensorSpec {
        name: "humidity",
        unit: "%",
        default_interval_ms: 1000,
        min_interval_ms: MEASUREMENT_MS as u32,
    },
];

enum Phase {
    Idle { next_start_ms: u64 },
    Measuring { ready_ms: u64 },
}

/// An SHT3x as two [`Sensors`] channels, measuring every `period_ms` in the background.
pub struct Sht3xSensors<I> {
    part: Sht3x<I>,
    period_ms: u64,
    phase: Phase,
    latest: Result<Measurement, ReadError>,
}

impl<I: I2c> Sht3xSensors<I> {
    /// Measures every `period_ms` (at least [`MEASUREMENT_MS`]).
    pub fn new(part: Sht3x<I>, period_ms: u64) -> Self {
        Sht3xSensors {
            part,
            period_ms: period_ms.max(MEASUREMENT_MS),
            phase: Phase::Idle { next_start_ms: 0 },
            latest: Err(ReadError::NotReady),
        }
    }

    /// Gives the driver back.
    pub fn release(self) -> Sht3x<I> {
        self.part
    }
}

impl<I: I2c> Sensors for Sht3xSensors<I> {
    fn specs(&self) -> &[SensorSpec] {
        &SPECS
    }

    fn read(&mut self, index: usize, _t_ms: u64) -> Result<f32, ReadError> {
        let m = self.latest?;
        match index {
            0 => Ok(m.temperature_c),
            1 => Ok(m.humidity_pct),
            _ => Err(ReadError::Bus),
        }
    }

    fn poll(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Idle { next_start_ms } if now_ms >= next_start_ms => {
                self.phase = match self.part.start() {
                    Ok(()) => Phase::Measuring {
                        ready_ms: now_ms + MEASUREMENT_MS,
                    },
                    Err(_) => {
                        self.latest = Err(ReadError::Bus);
                        Phase::Idle {
                            next_start_ms: now_ms + self.period_ms,
                        }
                    }
                };
            }
            Phase::Measuring { ready_ms } if now_ms >= ready_ms => {
                self.latest = self.part.read().map_err(|e| match e {
                    Error::Crc => ReadError::Checksum,
                    Error::I2c(_) => ReadError::Bus,
                });
                let started = ready_ms - MEASUREMENT_MS;
                self.phase = Phase::Idle {
                    next_start_ms: started + self.period_ms,
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const A: u8 = DEFAULT_ADDRESS;

    #[test]
    fn crc8_matches_datasheet_example() {
        // Sensirion datasheet: CRC of 0xBEEF is 0x92.
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn measures_and_converts() {
        // raw T 0x6666 -> -45 + 175 * 26214/65535 = 25.0 °C; raw RH 0x8000 -> 50.0 %
        let t = [0x66, 0x66];
        let rh = [0x80, 0x00];
        let expectations = [
            Transaction::write(A, CMD_SINGLE_SHOT_HIGH.to_vec()),
            Transaction::read(A, vec![t[0], t[1], crc8(&t), rh[0], rh[1], crc8(&rh)]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut part = Sht3x::new(i2c.clone(), A);
        part.start().unwrap();
        let m = part.read().unwrap();
        assert!((m.temperature_c - 25.0).abs() < 0.01, "{m:?}");
        assert!((m.humidity_pct - 50.0).abs() < 0.01, "{m:?}");
        i2c.done();
    }

    #[test]
    fn bad_crc_is_an_error() {
        let expectations = [Transaction::read(
            A,
            vec![0x66, 0x66, 0x00, 0x80, 0x00, 0x00],
        )];
        let mut i2c = Mock::new(&expectations);
        let mut part = Sht3x::new(i2c.clone(), A);
        assert_eq!(part.read(), Err(Error::Crc));
        i2c.done();
    }

    #[test]
    fn soft_reset_sends_the_command() {
        let expectations = [Transaction::write(A, vec![0x30, 0xA2])];
        let mut i2c = Mock::new(&expectations);
        Sht3x::new(i2c.clone(), A).soft_reset().unwrap();
        i2c.done();
    }

    #[test]
    fn channels_follow_the_background_cadence() {
        let t = [0x66, 0x66];
        let rh = [0x80, 0x00];
        let frame = vec![t[0], t[1], crc8(&t), rh[0], rh[1], crc8(&rh)];
        let expectations = [
            Transaction::write(A, CMD_SINGLE_SHOT_HIGH.to_vec()),
            Transaction::read(A, frame.clone()),
            Transaction::write(A, CMD_SINGLE_SHOT_HIGH.to_vec()),
            Transaction::read(A, frame).with_error(embedded_hal::i2c::ErrorKind::Other),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut s = Sht3xSensors::new(Sht3x::new(i2c.clone(), A), 100);
        assert_eq!(s.read(0, 0), Err(ReadError::NotReady));
        s.poll(0); // start
        s.poll(10); // not ready yet: no bus traffic
        s.poll(16); // read
        assert!((s.read(0, 16).unwrap() - 25.0).abs() < 0.01);
        assert!((s.read(1, 16).unwrap() - 50.0).abs() < 0.01);
        s.poll(50); // idle until 100
        s.poll(100); // start
        s.poll(116); // read fails
        assert_eq!(s.read(0, 116), Err(ReadError::Bus));
        i2c.done();
    }
}

//! The board's sensor set: an SHT3x on I2C1 (PB6 SCL, PB9 SDA, 100 kHz), or synthetic channels when
//! no SHT3x answers at boot.
//!
//! The choice is made once, at boot, by [`init`]; the channel table (and so the wire sensor indexes
//! announced in Hello) never changes within a boot. Before touching the I2C peripheral, [`init`]
//! checks that both lines idle high (the HAL's blocking I2C code would spin forever on a bus without
//! pull-ups or with a line stuck low), freeing SDA with up to nine SCL pulses if a part was left
//! driving it by a reset in mid-transfer. The bus is then wrapped in [`ResettingI2c`], which resets
//! and re-initialises the peripheral after any failed transfer: the HAL sends no STOP after a NACK
//! or an arbitration loss, which would leave the peripheral holding the bus.

use embedded_hal::i2c::{ErrorType, Operation, SevenBitAddress};
use ferry_firmware::sensors::{
    sht3x::{self, Sht3x, Sht3xSensors},
    synthetic::Synthetic,
};
use ferry_firmware::{ReadError, SensorSpec, Sensors};
use stm32f4xx_hal::{
    gpio::{PinState, PB6, PB9},
    i2c::{self, I2c},
    pac::I2C1,
    prelude::*,
    rcc::Rcc,
    time::Hertz,
};

use crate::clock;

/// I2C clock: standard mode.
const I2C_HZ: u32 = 100_000;
/// The SHT3x measures every this many milliseconds; channel reads return the latest result.
const SHT3X_PERIOD_MS: u64 = 500;
/// Half an SCL period at 100 kHz, in core cycles at 168 MHz.
const HALF_BIT_CYCLES: u32 = 168_000_000 / (2 * I2C_HZ);

/// An I2C master that resets and re-initialises its peripheral after every failed transfer, so one
/// NACK or glitch never leaves the bus wedged for the following transfers.
pub struct ResettingI2c<I: i2c::Instance> {
    bus: Option<I2c<I>>,
    frequency: Hertz,
    rcc: Rcc,
}

impl<I: i2c::Instance> ResettingI2c<I> {
    /// Wraps `bus`; `rcc` is kept to reset and re-clock the peripheral.
    pub fn new(bus: I2c<I>, frequency: Hertz, rcc: Rcc) -> Self {
        ResettingI2c {
            bus: Some(bus),
            frequency,
            rcc,
        }
    }

    fn recover(&mut self) {
        if let Some(bus) = self.bus.take() {
            let (peripheral, pins) = bus.release();
            // `I2c::new` pulses the peripheral's RCC reset and reprograms timing.
            self.bus = Some(I2c::new(peripheral, pins, self.frequency, &mut self.rcc));
        }
    }

    fn with_bus(
        &mut self,
        f: impl FnOnce(&mut I2c<I>) -> Result<(), i2c::Error>,
    ) -> Result<(), i2c::Error> {
        // `bus` is `None` only inside `recover`, so this never reports `Bus` in practice.
        let result = self.bus.as_mut().map_or(Err(i2c::Error::Bus), f);
        if result.is_err() {
            self.recover();
        }
        result
    }
}

impl<I: i2c::Instance> ErrorType for ResettingI2c<I> {
    type Error = i2c::Error;
}

impl<I: i2c::Instance> embedded_hal::i2c::I2c for ResettingI2c<I> {
    fn read(&mut self, address: SevenBitAddress, read: &mut [u8]) -> Result<(), Self::Error> {
        self.with_bus(|bus| bus.read(address, read))
    }

    fn write(&mut self, address: SevenBitAddress, write: &[u8]) -> Result<(), Self::Error> {
        self.with_bus(|bus| bus.write(address, write))
    }

    fn write_read(
        &mut self,
        address: SevenBitAddress,
        write: &[u8],
        read: &mut [u8],
    ) -> Result<(), Self::Error> {
        self.with_bus(|bus| bus.write_read(address, write, read))
    }

    fn transaction(
        &mut self,
        address: SevenBitAddress,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        self.with_bus(|bus| embedded_hal::i2c::I2c::transaction(bus, address, operations))
    }
}

/// The sensors this board samples.
pub enum BoardSensors {
    /// Temperature and humidity from the SHT3x at 0x44.
    Sht3x(Sht3xSensors<ResettingI2c<I2C1>>),
    /// No SHT3x answered at boot: synthetic temperature, humidity and counter.
    Synthetic(Synthetic),
}

impl BoardSensors {
    /// True when no SHT3x answered at boot (`main` lights the red LED).
    pub fn is_synthetic(&self) -> bool {
        matches!(self, BoardSensors::Synthetic(_))
    }
}

impl Sensors for BoardSensors {
    fn specs(&self) -> &[SensorSpec] {
        match self {
            BoardSensors::Sht3x(s) => s.specs(),
            BoardSensors::Synthetic(s) => s.specs(),
        }
    }

    fn read(&mut self, index: usize, ticks_ms: u64) -> Result<f32, ReadError> {
        match self {
            BoardSensors::Sht3x(s) => s.read(index, ticks_ms),
            BoardSensors::Synthetic(s) => s.read(index, ticks_ms),
        }
    }

    fn poll(&mut self, now_ms: u64) {
        match self {
            BoardSensors::Sht3x(s) => s.poll(now_ms),
            BoardSensors::Synthetic(s) => s.poll(now_ms),
        }
    }
}

/// Brings up I2C1 and probes the SHT3x with a soft reset; falls back to [`Synthetic`] if the bus is
/// not usable or the part does not acknowledge. Needs the millisecond clock running. Takes `rcc`
/// for good (see [`ResettingI2c`]), so call it after every other peripheral is clocked.
pub fn init(i2c1: I2C1, scl: PB6, sda: PB9, mut rcc: Rcc) -> BoardSensors {
    let (idle, scl, sda) = free_bus(scl, sda);
    if !idle {
        return BoardSensors::Synthetic(Synthetic::new());
    }
    let frequency: Hertz = I2C_HZ.Hz();
    let bus = I2c::new(i2c1, (scl, sda), frequency, &mut rcc);
    let mut part = Sht3x::new(
        ResettingI2c::new(bus, frequency, rcc),
        sht3x::DEFAULT_ADDRESS,
    );
    match part.soft_reset() {
        Ok(()) => {
            // The datasheet allows 1.5 ms after a soft reset before the next command.
            clock::delay_ms(2);
            BoardSensors::Sht3x(Sht3xSensors::new(part, SHT3X_PERIOD_MS))
        }
        Err(_) => BoardSensors::Synthetic(Synthetic::new()),
    }
}

/// Reports whether SCL and SDA both idle high, after clocking SCL (at most nine times) to make a part
/// that was reset in mid-byte release SDA. Returns the pins as floating inputs.
fn free_bus(scl: PB6, sda: PB9) -> (bool, PB6, PB9) {
    // The internal pull-downs (~40 kOhm) lose against real bus pull-ups (a few kOhm) but pull an
    // unterminated line low, so a bus without pull-ups reads as stuck.
    let scl = scl.into_pull_down_input();
    let sda = sda.into_pull_down_input();
    clock::delay_ms(1);
    if scl.is_low() {
        return (false, scl.into_floating_input(), sda.into_floating_input());
    }
    let mut scl = scl.into_open_drain_output_in_state(PinState::High);
    for _ in 0..9 {
        if sda.is_high() {
            break;
        }
        scl.set_low();
        cortex_m::asm::delay(HALF_BIT_CYCLES);
        scl.set_high();
        cortex_m::asm::delay(HALF_BIT_CYCLES);
    }
    let scl = scl.into_pull_down_input();
    cortex_m::asm::delay(HALF_BIT_CYCLES);
    let idle = scl.is_high() && sda.is_high();
    (idle, scl.into_floating_input(), sda.into_floating_input())
}

//! Sensors as the device core sees them: a table of channels that can be read by index.
//!
//! A board composes its real drivers (e.g. [`sht3x::Sht3xSensors`]) or the [`synthetic`] set into one
//! [`Sensors`] value. Channel `i` of the table is wire sensor index `i`.

pub mod sht3x;
pub mod synthetic;

/// Static description of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SensorSpec {
    /// Name sent in the Hello sensor table.
    pub name: &'static str,
    /// Unit sent in the Hello sensor table.
    pub unit: &'static str,
    /// Sampling interval at boot, in milliseconds (0 = disabled until commanded).
    pub default_interval_ms: u32,
    /// Shortest interval the channel can be sampled at, in milliseconds (at least 1); a
    /// `SetInterval` below it (other than 0, which disables) is answered `InvalidArgument`.
    pub min_interval_ms: u32,
}

/// Longest sampling interval a `SetInterval` may set: one day. Longer ones are answered
/// `InvalidArgument` (PROTOCOL.md section 6).
pub const MAX_INTERVAL_MS: u32 = 86_400_000;

/// A reading could not be taken; the device counts it and produces no sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The bus or the part reported an error.
    Bus,
    /// The part answered with a bad checksum.
    Checksum,
    /// No measurement is available yet.
    NotReady,
}

/// The set of sensor channels a device samples.
pub trait Sensors {
    /// The channel table; its order defines the wire sensor indexes.
    fn specs(&self) -> &[SensorSpec];

    /// Reads channel `index` for the sample scheduled at `ticks_ms`.
    fn read(&mut self, index: usize, ticks_ms: u64) -> Result<f32, ReadError>;

    /// Lets drivers advance non-blocking measurements; called on every device poll.
    fn poll(&mut self, _now_ms: u64) {}
}

//! `ferry-sim`: the real `ferry-firmware` device core on the host, as N simulated devices.
//!
//! Each device is one tokio task that owns one link (a TCP connection to the agent, or the master
//! side of a pty whose slave the agent opens as a serial port) and drives a `Device` exactly as a
//! board's main loop does. Injected faults (line noise, disconnects, reboots) happen on that task,
//! so they interleave with real protocol traffic.
//!
//! Commands are answered deterministically so tests reach every status ([`COMMANDS_HELP`], also in
//! `ferry-sim --help`): `set_interval` above one day is `invalid_argument`, `identify` is
//! `unsupported`, an `opaque` payload starting with `fail` is `failed`, `reboot` is `ok` followed by
//! a new boot.
//!
//! Accounting invariant: for every device boot the report holds `generated`, the cumulative
//! `acked_next` (every seq below it was acked or dropped by the ring), `dropped` (ring overflow)
//! and `lost_on_reboot` (held unacked when the device rebooted). A correct gateway stores every
//! seq below `acked_next` except at most `dropped` of them.
#![warn(missing_docs)]

pub mod firmware;
pub mod pty;
pub mod receiver;
pub mod report;
pub mod sensors;
mod sim;

pub use firmware::SimUpdate;
pub use report::{BootReport, DeviceReport, Report};
pub use sim::{run, SimConfig, Transport, COMMANDS_HELP, OPAQUE_FAIL_PREFIX};

/// Ring capacity of simulated devices: large enough for 10,000 samples/s with 0.4 s of ack latency.
pub const SIM_RING: usize = 4096;

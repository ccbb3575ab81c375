//! A ready-made main loop for boards: drives a [`Device`] over any `embedded-io` serial port.
//!
//! The loop polls: sample due sensors, drain received bytes, let the board observe the device,
//! transmit every pending frame, then carry out command actions. It never blocks on the receive
//! side, so a polled UART with a hardware FIFO (or an interrupt-fed queue) loses nothing while the
//! device transmits.

use embedded_io::{Read, ReadReady, Write};
use ferry_wire::{CommandStatus, MAX_ENCODED_LEN, MAX_OPAQUE_LEN};

use crate::update::{NoUpdates, Updates};
use crate::{Action, Device, Sensors};

/// What a board provides besides its serial port and sensors.
pub trait Board {
    /// Milliseconds since reset; monotonic, never wraps.
    fn now_ms(&mut self) -> u64;

    /// Blinks an LED (or similar) for `duration_ms`; must not block for long.
    fn identify(&mut self, _duration_ms: u32) {}

    /// Resets the microcontroller.
    fn reboot(&mut self) -> !;

    /// Handles an opaque command; writes a reply into `reply` and returns its status and length.
    fn opaque(
        &mut self,
        _data: &[u8],
        _reply: &mut [u8; MAX_OPAQUE_LEN],
    ) -> (CommandStatus, usize) {
        (CommandStatus::Unsupported, 0)
    }

    /// Called once per loop iteration (LED blinking, watchdog feeding, ...).
    fn idle(&mut self, _now_ms: u64) {}

    /// Called once per loop iteration after sampling and receiving, before transmitting: lets a
    /// board report what the device did (samples taken, `acked_next`), e.g. on a debug UART.
    /// Must not block for long.
    fn observe<const RING: usize>(&mut self, _now_ms: u64, _device: &Device<RING>) {}
}

/// Runs a device that cannot be updated forever over `port`.
pub fn run<P, S, B, const RING: usize>(
    device: &mut Device<RING>,
    port: &mut P,
    sensors: &mut S,
    board: &mut B,
) -> !
where
    P: Read + ReadReady + Write,
    S: Sensors,
    B: Board,
{
    run_with_updates(device, port, sensors, board, &mut NoUpdates)
}

/// Runs the device forever over `port`, with firmware updates through `updates` (an
/// [`crate::update::Updater`] over the board's flash). A new image on trial that the gateway does
/// not welcome in time resets the board, and the bootloader restores the old image.
pub fn run_with_updates<P, S, B, U, const RING: usize>(
    device: &mut Device<RING>,
    port: &mut P,
    sensors: &mut S,
    board: &mut B,
    updates: &mut U,
) -> !
where
    P: Read + ReadReady + Write,
    S: Sensors,
    B: Board,
    U: Updates,
{
    let mut rx = [0u8; 64];
    let mut tx = [0u8; MAX_ENCODED_LEN];
    let mut reply = [0u8; MAX_OPAQUE_LEN];
    loop {
        let now = board.now_ms();
        device.step(now, sensors);
        while let Ok(true) = port.read_ready() {
            match port.read(&mut rx) {
                Ok(n) if n > 0 => device.receive_with(now, &rx[..n], updates),
                _ => break,
            }
        }
        board.observe(now, device);
        while let Some(n) = device.poll_transmit(now, sensors, &mut tx) {
            // A write error on a UART is a framing/noise problem on the line; the protocol's
            // retransmission recovers, so the frame is simply not sent.
            let _ = port.write_all(&tx[..n]);
        }
        while let Some(action) = device.take_action() {
            match action {
                Action::Identify { duration_ms } => board.identify(duration_ms),
                Action::Reboot => {
                    let _ = port.flush();
                    board.reboot()
                }
                Action::Opaque { id, data } => {
                    let (status, n) = board.opaque(&data, &mut reply);
                    device.complete_command(id, status, &reply[..n]);
                }
            }
        }
        if updates.poll(now) {
            device.request_reboot();
        }
        board.idle(now);
    }
}

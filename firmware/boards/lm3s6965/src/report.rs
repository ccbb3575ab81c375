//! The test report on UART1: one text line for each thing the device does that an end-to-end test
//! checks against what the gateway and the cloud recorded. The lines come from the device's own
//! state, so "acked" here means what this firmware was told, not what the gateway believes.
//!
//! Lines (numbers in decimal unless noted, `\n`-terminated):
//! - `b <boot_id hex>`: this boot starts (first line after every reset).
//! - `s <seq> <sensor> <value f32 bits, hex>`: sample `seq` was taken, in the loop pass that took
//!   it, before the loop transmits it on UART0.
//! - `a <acked_next>`: the device's `acked_next` grew; every sample below it was acked or dropped.
//! - `d <from> <to>`: samples `from..to` were evicted from a full ring (dropped, never acked).
//!
//! Evictions happen only while sampling and acks only while receiving, and both remove the oldest
//! held samples, so in one pass the evicted seqs are the `dropped` increase counted from the oldest
//! seq held at the end of the previous pass.
//!
//! Without a second `-serial` option QEMU connects UART1 to nothing and the writes cost almost
//! nothing. A connected reader must keep reading: the writes block the device loop otherwise.

use core::fmt::Write as _;

use ferry_firmware::Device;

use crate::uart::Uart;

/// Reporter state: what has been reported so far.
pub struct Report {
    uart: Uart,
    taken_next: u32,
    acked_next: u32,
    dropped: u32,
    oldest: u32,
}

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        embedded_io::Write::write_all(self, s.as_bytes()).map_err(|_| core::fmt::Error)
    }
}

impl Report {
    /// Starts the report for boot `boot_id` on `uart`.
    pub fn new(mut uart: Uart, boot_id: u32) -> Self {
        let _ = writeln!(uart, "b {boot_id:08x}");
        Report {
            uart,
            taken_next: 0,
            acked_next: 0,
            dropped: 0,
            oldest: 0,
        }
    }

    /// Reports what changed since the previous call.
    pub fn observe<const RING: usize>(&mut self, device: &Device<RING>) {
        let u = &mut self.uart;
        let dropped = device.stats().dropped;
        if dropped > self.dropped {
            let from = self.oldest;
            let _ = writeln!(u, "d {} {}", from, from + (dropped - self.dropped));
            self.dropped = dropped;
        }
        let next = device.next_seq();
        for seq in self.taken_next..next {
            // A sample evicted in the pass that took it is only in the `d` line.
            if let Some(s) = device.held(seq) {
                let _ = writeln!(u, "s {} {} {:x}", seq, s.sensor, s.value.to_bits());
            }
        }
        self.taken_next = next;
        let acked = device.acked_next();
        if acked > self.acked_next {
            let _ = writeln!(u, "a {acked}");
            self.acked_next = acked;
        }
        self.oldest = next - device.ring_depth() as u32;
    }
}

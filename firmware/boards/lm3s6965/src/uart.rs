//! Polled driver for the LM3S6965 UARTs (PL011-style), implementing `embedded-io`: UART0 carries the
//! device link, UART1 the test report (`report.rs`).
//!
//! Registers (datasheet / QEMU `stellaris` model): DR +0x00, FR +0x18 (bit 3 BUSY, bit 4 RXFE,
//! bit 5 TXFF), IBRD +0x24, FBRD +0x28, LCRH +0x2C, CTL +0x30. The 16-byte RX FIFO is drained by the
//! main loop on every pass; QEMU holds further bytes in its character backend until the FIFO has
//! room, so a polled reader loses nothing there.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

const UART0: usize = 0x4000_C000;
/// UART1 follows UART0 at +0x1000 (UART2 at +0x2000).
const UART_STRIDE: usize = 0x1000;
const DR: usize = 0x00;
const FR: usize = 0x18;
const IBRD: usize = 0x24;
const FBRD: usize = 0x28;
const LCRH: usize = 0x2C;
const CTL: usize = 0x30;
const FR_BUSY: u32 = 1 << 3;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// RCGC1: run-mode clock gating for UARTn (bit n); real silicon needs it, QEMU ignores it.
const SYSCTL_RCGC1: usize = 0x400F_E104;

/// One UART, 115200 8N1 with FIFOs.
pub struct Uart {
    base: usize,
}

impl Uart {
    /// Clocks and configures UART `n` (0..=2). Call once per UART.
    pub fn init(n: usize) -> Self {
        let uart = Uart {
            base: UART0 + n * UART_STRIDE,
        };
        // SAFETY: fixed MMIO addresses of this chip; single-threaded init before interrupts use it.
        unsafe {
            let rcgc1 = SYSCTL_RCGC1 as *mut u32;
            write_volatile(rcgc1, read_volatile(rcgc1) | 1 << n);
            write_volatile(uart.reg(CTL), 0);
            // 12.5 MHz / (16 * 115200) = 6.78 -> IBRD 6, FBRD round(0.78 * 64) = 50
            write_volatile(uart.reg(IBRD), 6);
            write_volatile(uart.reg(FBRD), 50);
            write_volatile(uart.reg(LCRH), 0x70); // 8 bits, FIFO enabled
            write_volatile(uart.reg(CTL), 0x301); // UARTEN | TXE | RXE
        }
        uart
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        (self.base + offset) as *mut u32
    }

    fn flags(&self) -> u32 {
        // SAFETY: read-only MMIO register.
        unsafe { read_volatile(self.reg(FR)) }
    }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.flags() & FR_RXFE == 0)
    }
}

impl embedded_io::Read for Uart {
    /// Blocks until at least one byte is available, then returns what the FIFO holds (up to `buf`).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.flags() & FR_RXFE != 0 {}
        let mut n = 0;
        while n < buf.len() && self.flags() & FR_RXFE == 0 {
            // SAFETY: MMIO data register; reading pops one byte (upper bits are error flags).
            buf[n] = unsafe { read_volatile(self.reg(DR)) } as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.flags() & FR_TXFF != 0 {}
        let mut n = 0;
        while n < buf.len() && self.flags() & FR_TXFF == 0 {
            // SAFETY: MMIO data register; writing pushes one byte into the TX FIFO.
            unsafe { write_volatile(self.reg(DR), u32::from(buf[n])) };
            n += 1;
        }
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        while self.flags() & FR_BUSY != 0 {}
        Ok(())
    }
}

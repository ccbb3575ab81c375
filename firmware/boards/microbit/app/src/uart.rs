//! UART0 of the nRF51822, polled, implementing `embedded-io`: the Ferry device link. On the
//! micro:bit v1 it is wired to the interface chip's USB serial port (TXD P0.24, RXD P0.25); in
//! QEMU's `microbit` machine it is the first `-serial`.
//!
//! Registers (nRF51 reference manual, UART; QEMU `hw/char/nrf51_uart.c`): TASKS_STARTRX +0x000,
//! TASKS_STARTTX +0x008, EVENTS_RXDRDY +0x108, EVENTS_TXDRDY +0x11C, ENABLE +0x500 (4),
//! PSELTXD +0x50C, PSELRXD +0x514, RXD +0x518, TXD +0x51C, BAUDRATE +0x524.
//!
//! Invariants:
//! - A received byte is taken by clearing RXDRDY first, then reading RXD: reading RXD pops the
//!   6-byte receive FIFO, and the UART raises RXDRDY again if more bytes wait. So RXDRDY set
//!   means at least one byte waits, and no byte is read twice.
//! - `init` never clears RXDRDY: a byte that arrived while the bootloader (or the previous boot)
//!   had the receiver on would otherwise wait in the FIFO without an event until the next byte.
//! - A write returns once the UART has taken every byte (TXDRDY after each), so `flush` has
//!   nothing left to wait for.
//! - No interrupt handler runs: [`Uart::wake_on_rx`] only lets a received byte end a `wfi`.

use core::convert::Infallible;
use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x4000_2000;
const TASKS_STARTRX: usize = 0x000;
const TASKS_STARTTX: usize = 0x008;
const EVENTS_RXDRDY: usize = 0x108;
const EVENTS_TXDRDY: usize = 0x11C;
const INTENSET: usize = 0x304;
const ENABLE: usize = 0x500;
const PSELRTS: usize = 0x508;
const PSELTXD: usize = 0x50C;
const PSELCTS: usize = 0x510;
const PSELRXD: usize = 0x514;
const RXD: usize = 0x518;
const TXD: usize = 0x51C;
const BAUDRATE: usize = 0x524;
const CONFIG: usize = 0x56C;
const ENABLE_UART: u32 = 4;
const BAUD_115200: u32 = 0x01D7_E000;
const INTEN_RXDRDY: u32 = 1 << 2;
/// PSEL value of an unconnected signal.
const DISCONNECTED: u32 = 0xFFFF_FFFF;
/// micro:bit v1: the interface chip's serial lines.
const TX_PIN: u32 = 24;
const RX_PIN: u32 = 25;

/// GPIO port 0: OUTSET +0x508, PIN_CNF[n] +0x700 + 4n.
const GPIO: usize = 0x5000_0000;
const GPIO_OUTSET: usize = 0x508;
const GPIO_PIN_CNF: usize = 0x700;

/// UART0 at 115200 8N1, no flow control.
pub struct Uart(());

fn reg(offset: usize) -> *mut u32 {
    (BASE + offset) as *mut u32
}

impl Uart {
    /// Configures the pins and UART0 and starts both directions. Call once.
    pub fn init() -> Uart {
        // SAFETY: fixed MMIO registers of this chip, written before anything else uses them.
        unsafe {
            // TXD idles high as an output, RXD is an input (as the reference manual asks for the
            // time the UART does not drive them).
            write_volatile((GPIO + GPIO_OUTSET) as *mut u32, 1 << TX_PIN);
            write_volatile((GPIO + GPIO_PIN_CNF + 4 * TX_PIN as usize) as *mut u32, 1);
            write_volatile((GPIO + GPIO_PIN_CNF + 4 * RX_PIN as usize) as *mut u32, 0);
            write_volatile(reg(PSELTXD), TX_PIN);
            write_volatile(reg(PSELRXD), RX_PIN);
            write_volatile(reg(PSELRTS), DISCONNECTED);
            write_volatile(reg(PSELCTS), DISCONNECTED);
            write_volatile(reg(CONFIG), 0);
            write_volatile(reg(BAUDRATE), BAUD_115200);
            write_volatile(reg(ENABLE), ENABLE_UART);
            write_volatile(reg(EVENTS_TXDRDY), 0);
            write_volatile(reg(TASKS_STARTTX), 1);
            write_volatile(reg(TASKS_STARTRX), 1);
        }
        Uart(())
    }

    fn rx_ready(&self) -> bool {
        rx_pending()
    }

    /// Lets a received byte end a `wfi`: the UART's RXDRDY interrupt is enabled (the caller
    /// enables its NVIC line and keeps interrupts masked, so no handler runs).
    pub fn wake_on_rx(&mut self) {
        // SAFETY: the UART's interrupt enable register.
        unsafe { write_volatile(reg(INTENSET), INTEN_RXDRDY) };
    }
}

/// Whether a received byte waits (RXDRDY); a read-only look that takes nothing.
pub fn rx_pending() -> bool {
    // SAFETY: read of an event register.
    unsafe { read_volatile(reg(EVENTS_RXDRDY)) != 0 }
}

impl embedded_io::ErrorType for Uart {
    type Error = Infallible;
}

impl embedded_io::ReadReady for Uart {
    fn read_ready(&mut self) -> Result<bool, Infallible> {
        Ok(self.rx_ready())
    }
}

impl embedded_io::Read for Uart {
    /// Blocks until a byte is available, then returns what the FIFO holds (up to `buf`).
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_ready() {}
        let mut n = 0;
        while n < buf.len() && self.rx_ready() {
            // SAFETY: event and data registers; the event is cleared before RXD is read (see the
            // module's invariants).
            buf[n] = unsafe {
                write_volatile(reg(EVENTS_RXDRDY), 0);
                read_volatile(reg(RXD)) as u8
            };
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Uart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        for &b in buf {
            // SAFETY: event and data registers of the started transmitter.
            unsafe {
                write_volatile(reg(EVENTS_TXDRDY), 0);
                write_volatile(reg(TXD), u32::from(b));
                while read_volatile(reg(EVENTS_TXDRDY)) == 0 {}
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

//! USART2 (PA2 TX, PA3 RX, 115200 8N1) as an `embedded-io` 0.6 port for the device runner.
//!
//! The STM32F4 USART holds a single received byte, so reception is interrupt-driven: the `USART2`
//! handler moves every byte into a lock-free single-producer/single-consumer queue
//! ([`RX_QUEUE_LEN`] − 1 bytes), and [`SerialPort`] reads from the consumer end. Bytes keep arriving
//! while the main loop is busy transmitting (blocking, byte by byte) a burst of frames.
//!
//! Invariants: the interrupt is unmasked only after the handler's state is installed, so the handler
//! always finds it; bytes lost to a full queue or a line error (overrun, framing, noise) are counted
//! in [`RX_LOST`] (readable with a debugger) and left to the protocol's framing and retransmission.

use core::cell::RefCell;
use core::convert::Infallible;
use core::sync::atomic::{AtomicU32, Ordering};

use critical_section::Mutex;
use heapless::spsc::{Consumer, Producer, Queue};
use stm32f4xx_hal::{
    gpio::{PA2, PA3},
    nb,
    pac::{self, interrupt, USART2},
    prelude::*,
    rcc::Rcc,
    serial::{self, Rx, Serial, Tx},
};

/// Capacity of the receive queue storage (it holds one byte less). The main loop drains the queue
/// once per iteration; its longest iteration is a transmit burst (a full ring replay, about a second
/// at 115200 baud), during which the gateway sends little more than an ack per frame it received.
#[cfg(not(ferry_updater))]
pub const RX_QUEUE_LEN: usize = 1024;
/// Capacity of the receive queue storage (it holds one byte less). The main loop drains the queue
/// once per iteration; its longest iteration is a transmit burst (a full ring replay, about a second
/// at 115200 baud). An image with the updater also takes firmware chunks: the gateway may send a
/// window of two 512-byte chunks (533 bytes each once framed) past the last status, plus acks,
/// which must fit while the loop transmits.
#[cfg(ferry_updater)]
pub const RX_QUEUE_LEN: usize = 2048;

/// Receive losses: one count per byte dropped on a full queue and per line error (an overrun loses
/// at least one byte).
pub static RX_LOST: AtomicU32 = AtomicU32::new(0);

/// What the `USART2` handler owns.
struct RxIsr {
    rx: Rx<USART2>,
    queue: Producer<'static, u8, RX_QUEUE_LEN>,
}

static RX_ISR: Mutex<RefCell<Option<RxIsr>>> = Mutex::new(RefCell::new(None));

/// The device's link to the gateway.
pub struct SerialPort {
    tx: Tx<USART2>,
    rx: Consumer<'static, u8, RX_QUEUE_LEN>,
}

/// Configures USART2 at 115200 8N1 and starts interrupt-driven reception.
///
/// Returns `None` if the USART rejects the configuration or this is called twice (the queue is a
/// singleton).
pub fn init(usart: USART2, tx_pin: PA2, rx_pin: PA3, rcc: &mut Rcc) -> Option<SerialPort> {
    let config = serial::config::Config::default()
        .baudrate(115_200.bps())
        .wordlength_8()
        .parity_none()
        .stopbits(serial::config::StopBits::STOP1);
    let serial: Serial<USART2> = Serial::new(usart, (tx_pin, rx_pin), config, rcc).ok()?;
    let (tx, mut rx) = serial.split();

    let queue: &'static mut Queue<u8, RX_QUEUE_LEN> =
        cortex_m::singleton!(: Queue<u8, RX_QUEUE_LEN> = Queue::new())?;
    let (producer, consumer) = queue.split();

    rx.listen(); // RXNE interrupt; an overrun raises the same interrupt.
    critical_section::with(|cs| {
        RX_ISR.borrow_ref_mut(cs).replace(RxIsr {
            rx,
            queue: producer,
        });
    });
    // SAFETY: the handler's state is installed above, so unmasking cannot break a critical section
    // that relies on the interrupt being masked (none does), and the handler finds its state.
    unsafe { cortex_m::peripheral::NVIC::unmask(pac::Interrupt::USART2) };

    Some(SerialPort { tx, rx: consumer })
}

#[interrupt]
fn USART2() {
    critical_section::with(|cs| {
        let mut state = RX_ISR.borrow_ref_mut(cs);
        let Some(state) = state.as_mut() else {
            return;
        };
        // Drain everything the USART holds; reading DR (done by the HAL also on errors) clears the
        // RXNE and error flags, so this loop ends and the interrupt does not fire again spuriously.
        loop {
            match state.rx.read() {
                Ok(byte) => {
                    if state.queue.enqueue(byte).is_err() {
                        RX_LOST.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(nb::Error::WouldBlock) => break,
                Err(nb::Error::Other(_)) => {
                    RX_LOST.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
}

impl embedded_io::ErrorType for SerialPort {
    type Error = Infallible;
}

impl embedded_io::ReadReady for SerialPort {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(self.rx.ready())
    }
}

impl embedded_io::Read for SerialPort {
    /// Blocks until at least one byte is queued (unless `buf` is empty), then drains what fits.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx.ready() {
            core::hint::spin_loop();
        }
        let mut n = 0;
        while n < buf.len() {
            match self.rx.dequeue() {
                Some(b) => {
                    buf[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    }
}

impl embedded_io::Write for SerialPort {
    /// Blocking: returns once every byte of `buf` is in the transmit register.
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        for &byte in buf {
            // Writing to an 8N1 USART cannot fail: the only error is "not empty yet".
            while embedded_hal_nb::serial::Write::write(&mut self.tx, byte).is_err() {}
        }
        Ok(buf.len())
    }

    /// Waits until the last byte has left the shift register (transmission complete).
    fn flush(&mut self) -> Result<(), Self::Error> {
        while embedded_hal_nb::serial::Write::flush(&mut self.tx).is_err() {}
        Ok(())
    }
}

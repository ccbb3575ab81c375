//! Who this device is and which boot this is.
//!
//! - `device_id`: `microbit-` and the 64-bit DEVICEID the factory programs into the FICR
//!   (0x1000_0060 low word, 0x1000_0064 high word) as 16 hex digits, high word first; stable for
//!   the chip's life. A FICR that reads all zeros or all ones (no factory data) gives
//!   [`FALLBACK_ID`].
//! - `boot_id`: 32 bits from the RNG (base 0x4000_D000: TASKS_START +0x000, TASKS_STOP +0x004,
//!   EVENTS_VALRDY +0x100, CONFIG +0x504 bit 0 bias correction, VALUE +0x508), one byte per
//!   VALRDY, so every reset, a reboot by command or an update's included, gets a fresh id.
//!   Should the RNG give nothing within a bounded wait, the microseconds TIMER0 counted meanwhile
//!   are mixed in instead (different from boot to boot only by chance).

use core::ptr::{read_volatile, write_volatile};

use crate::clock::Clock;

/// The id of a chip without factory data.
pub const FALLBACK_ID: &str = "microbit";

const FICR_DEVICEID0: usize = 0x1000_0060;
const FICR_DEVICEID1: usize = 0x1000_0064;

const RNG: usize = 0x4000_D000;
const RNG_START: usize = RNG;
const RNG_STOP: usize = RNG + 0x004;
const RNG_VALRDY: usize = RNG + 0x100;
const RNG_CONFIG: usize = RNG + 0x504;
const RNG_VALUE: usize = RNG + 0x508;

/// Writes the device id into `buf` and returns it.
pub fn device_id(buf: &mut [u8; 25]) -> &str {
    // SAFETY: reads of the factory information registers.
    let (lo, hi) = unsafe {
        (
            read_volatile(FICR_DEVICEID0 as *const u32),
            read_volatile(FICR_DEVICEID1 as *const u32),
        )
    };
    let id = u64::from(hi) << 32 | u64::from(lo);
    if id == 0 || id == u64::MAX {
        return FALLBACK_ID;
    }
    buf[..9].copy_from_slice(b"microbit-");
    for (i, b) in buf[9..].iter_mut().enumerate() {
        let nibble = (id >> (60 - 4 * i)) & 0xF;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    core::str::from_utf8(buf).unwrap_or(FALLBACK_ID)
}

/// A fresh boot id.
pub fn boot_id(clock: &mut Clock) -> u32 {
    let mut id = 0u32;
    // SAFETY: the RNG's registers; nothing else uses the RNG.
    unsafe {
        write_volatile(RNG_CONFIG as *mut u32, 1);
        write_volatile(RNG_VALRDY as *mut u32, 0);
        write_volatile(RNG_START as *mut u32, 1);
        let start = clock.now_us();
        let mut got = 0;
        // A byte takes ~170 µs on the chip with bias correction; give up after 20 ms.
        while got < 4 && clock.now_us() - start < 20_000 {
            if read_volatile(RNG_VALRDY as *const u32) != 0 {
                write_volatile(RNG_VALRDY as *mut u32, 0);
                id = id << 8 | (read_volatile(RNG_VALUE as *const u32) & 0xFF);
                got += 1;
            }
        }
        write_volatile(RNG_STOP as *mut u32, 1);
        if got < 4 {
            id ^= (clock.now_us() as u32).wrapping_mul(0x9E37_79B9);
        }
    }
    id
}

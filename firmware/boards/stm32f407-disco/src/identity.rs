//! Who this device is (`device_id`, stable) and which boot this is (`boot_id`, new on every reset).
//!
//! - `device_id` = `"f407-"` followed by 12 lowercase hex digits of a 64-bit FNV-1a hash of the
//!   96-bit factory unique device ID (17 bytes, within the protocol's 32): the same on every boot of
//!   the same chip, different across chips.
//! - `boot_id` comes from the hardware RNG (which needs the 48 MHz PLL output). Should the RNG keep
//!   failing, a counter kept in uninitialised RAM (it survives every reset but a power cycle, and
//!   starts from whatever the SRAM powers up with) is used instead, so `boot_id` still changes on
//!   every reset as PROTOCOL.md section 5 requires.

use core::fmt::Write as _;
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use ferry_wire::MAX_DEVICE_ID_LEN;
use heapless::String;
use stm32f4xx_hal::{hal_02::blocking::rng::Read as _, pac::RNG, prelude::*, rcc::Rcc};

/// Address of the 96-bit unique device ID (RM0090 section 39.1).
const UID_ADDRESS: usize = 0x1FFF_7A10;
/// RNG reads tried (resetting the peripheral between tries) before the fallback is used.
const RNG_ATTEMPTS: usize = 8;

/// The 12 bytes of the factory-programmed unique device ID.
pub fn unique_id() -> [u8; 12] {
    // SAFETY: the unique ID lives in system memory, always mapped and readable, never written.
    let words = unsafe { read_volatile(UID_ADDRESS as *const [u32; 3]) };
    let mut out = [0u8; 12];
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// 64-bit FNV-1a.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `"f407-"` + 12 hex digits of the hash of `uid`.
pub fn device_id(uid: &[u8; 12]) -> String<MAX_DEVICE_ID_LEN> {
    let mut id = String::new();
    // 17 bytes always fit in 32: the write cannot fail.
    let _ = write!(id, "f407-{:012x}", fnv1a(uid) & 0xFFFF_FFFF_FFFF);
    id
}

/// A fresh boot id from the hardware RNG, or from the reset-surviving counter if the RNG fails.
pub fn boot_id(mut rng_periph: RNG, rcc: &mut Rcc, uid: &[u8; 12]) -> u32 {
    for _ in 0..RNG_ATTEMPTS {
        // `constrain` enables, resets and starts the RNG, which also clears a seed error.
        let mut rng = rng_periph.constrain(rcc);
        let mut word = [0u8; 4];
        if rng.read(&mut word).is_ok() {
            return u32::from_le_bytes(word);
        }
        rng_periph = rng.release();
    }
    fallback_boot_id(uid)
}

/// Counter in RAM that the C runtime does not initialise: `[magic, count]`.
#[link_section = ".uninit.ferry_boot_counter"]
static mut BOOT_COUNTER: MaybeUninit<[u32; 2]> = MaybeUninit::uninit();
const BOOT_COUNTER_MAGIC: u32 = 0xB007_F407;

fn fallback_boot_id(uid: &[u8; 12]) -> u32 {
    let cell = addr_of_mut!(BOOT_COUNTER).cast::<u32>();
    // SAFETY: called once, from `main` before interrupts use anything here; the static is 8 bytes,
    // aligned for u32, and placed in NOLOAD RAM, so reading it yields whatever the previous boot
    // (or the power-up SRAM state) left there: any bit pattern is a valid u32.
    let (magic, count) = unsafe { (read_volatile(cell), read_volatile(cell.add(1))) };
    let next = if magic == BOOT_COUNTER_MAGIC {
        count.wrapping_add(1)
    } else {
        count // power-up noise
    };
    // SAFETY: as above.
    unsafe {
        write_volatile(cell, BOOT_COUNTER_MAGIC);
        write_volatile(cell.add(1), next);
    }
    // Odd multiplier: a bijection, so consecutive counts give distinct ids; the chip hash keeps two
    // boards that fall back at the same count apart.
    next.wrapping_mul(0x9E37_79B9) ^ (fnv1a(uid) as u32)
}

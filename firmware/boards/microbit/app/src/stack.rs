//! The stack's high-water mark, measured by painting: at boot every word of RAM between the end
//! of the static data and the stack pointer gets a pattern; the deepest word that lost it is how
//! far the stack ever grew. The nRF51822 has 16 KiB of RAM and signature verification alone
//! needs several KiB of stack, so the mark is kept where a test (or a person, with the opaque
//! command `stack`) can read it.
//!
//! Invariants:
//! - Painting never touches the live stack: it stops [`MARGIN`] bytes below the stack pointer
//!   read inside the painting function, whose own frame lies above that pointer.
//! - The mark is a lower bound only if the stack never overflowed into the static data (which
//!   the firmware could not detect either: Cortex-M0 has no stack limit register).

use core::ptr::{addr_of, read_volatile, write_volatile};

const PATTERN: u32 = 0x5AC3_5AC3;
/// Bytes below the stack pointer left alone while painting.
const MARGIN: usize = 64;

extern "C" {
    /// End of the static data (`.bss`, `.uninit`), from cortex-m-rt's `link.x`.
    static __sheap: u32;
    /// Initial stack pointer: the end of RAM.
    static _stack_start: u32;
}

fn bottom() -> usize {
    // Only the address of the linker symbol is taken.
    addr_of!(__sheap) as usize
}

fn top() -> usize {
    addr_of!(_stack_start) as usize
}

/// Paints the free RAM below the stack. Call once, first thing in `main`.
#[inline(never)]
pub fn paint() {
    let sp = cortex_m::register::msp::read() as usize;
    let mut at = bottom();
    while at + 4 <= sp - MARGIN {
        // SAFETY: RAM between the static data and the live stack, which nothing uses yet.
        unsafe { write_volatile(at as *mut u32, PATTERN) };
        at += 4;
    }
}

/// Bytes of stack used at the deepest so far, and bytes there are for the stack.
pub fn high_water() -> (u32, u32) {
    let mut at = bottom();
    // SAFETY: reads of RAM between the static data and the end of RAM.
    while at < top() && unsafe { read_volatile(at as *const u32) } == PATTERN {
        at += 4;
    }
    ((top() - at) as u32, (top() - bottom()) as u32)
}

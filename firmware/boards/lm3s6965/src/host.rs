//! What this board learns from the QEMU host through semihosting (the board only runs under QEMU).
//!
//! - `boot_id`: 4 bytes of the host's `/dev/urandom` (falling back to host time mixed with the
//!   elapsed-time counter), so every boot, including a reboot by command, gets a fresh id.
//! - `device_id`: `id=NAME` from the semihosting command line (`-semihosting-config ...,arg=id=NAME`
//!   or `-append id=NAME`), else `lm3s6965-qemu`.

use cortex_m_semihosting::{nr, syscall1};

/// Default device id.
pub const DEFAULT_ID: &str = "lm3s6965-qemu";

/// A fresh boot id.
pub fn boot_id() -> u32 {
    let mut bytes = [0u8; 4];
    if read_host_file(b"/dev/urandom\0", &mut bytes) {
        return u32::from_le_bytes(bytes);
    }
    // SAFETY: argument-less semihosting calls.
    let (time, clock) = unsafe { (syscall1(nr::TIME, 0), syscall1(nr::CLOCK, 0)) };
    (time as u32).wrapping_mul(0x9E37_79B9) ^ (clock as u32)
}

fn read_host_file(path_nul: &[u8], out: &mut [u8]) -> bool {
    let open = [
        path_nul.as_ptr() as usize,
        nr::open::R_BINARY,
        path_nul.len() - 1,
    ];
    // SAFETY: the parameter block and buffers outlive the calls; the host only writes into `out`.
    unsafe {
        let fd = syscall1(nr::OPEN, open.as_ptr() as usize);
        if fd as isize == -1 {
            return false;
        }
        let read = [fd, out.as_mut_ptr() as usize, out.len()];
        let not_read = syscall1(nr::READ, read.as_ptr() as usize);
        let close = [fd];
        syscall1(nr::CLOSE, close.as_ptr() as usize);
        not_read == 0
    }
}

/// Copies the device id into `buf` and returns it.
pub fn device_id(buf: &mut [u8; 128]) -> &str {
    let mut block = [buf.as_mut_ptr() as usize, buf.len()];
    // SAFETY: the host writes at most `buf.len()` bytes into `buf` and the length into `block[1]`.
    let status = unsafe { syscall1(nr::GET_CMDLINE, block.as_mut_ptr() as usize) };
    if status != 0 {
        return DEFAULT_ID;
    }
    let len = block[1].min(buf.len());
    let line = core::str::from_utf8(&buf[..len]).unwrap_or("");
    line.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .filter(|id| !id.is_empty() && id.len() <= ferry_wire::MAX_DEVICE_ID_LEN)
        .unwrap_or(DEFAULT_ID)
}

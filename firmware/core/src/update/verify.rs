//! The two checks before an image is handed to the bootloader: its SHA-256, read back from
//! flash, and the vendor's ed25519 signature over the signed message (PROTOCOL.md section 9.4).

use embedded_storage::nor_flash::ReadNorFlash;
use sha2::{Digest, Sha256};

/// SHA-256 of the first `length` bytes of `flash`, read back in small pieces; `Err` when a read
/// fails or `length` is past the end of the flash.
pub fn sha256_of<F: ReadNorFlash>(flash: &mut F, length: u32) -> Result<[u8; 32], ()> {
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64];
    let capacity = flash.capacity() as u32;
    let mut at = 0u32;
    while at < length {
        // Whole pieces keep reads aligned; the last one is cut after reading.
        let n = (buf.len() as u32).min(capacity.saturating_sub(at));
        if n == 0 {
            return Err(()); // `length` is past the end of the flash
        }
        flash.read(at, &mut buf[..n as usize]).map_err(|_| ())?;
        let take = n.min(length - at);
        hasher.update(&buf[..take as usize]);
        at += take;
    }
    Ok(hasher.finalize().into())
}

/// Whether `signature` is the ed25519 signature of `message` by `public_key` (strict
/// verification: no malleable or small-order encodings).
pub fn ed25519(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    let sig = ed25519_dalek::Signature::from_bytes(signature);
    key.verify_strict(message, &sig).is_ok()
}

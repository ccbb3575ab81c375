//! Signed firmware bundles: one file holding an image and its signed description, made offline by
//! `ferry firmware sign` with the vendor's private key, and taken by the agent's API, the CLI and
//! the MQTT downlink.
//!
//! ```text
//! ferry-bundle 1\n
//! {"version":"1.1.0","board":"microbit","length":65536,"sha256":"<64 hex>","signature":"<128 hex>","key":"<64 hex>"}\n
//! <length bytes of image>
//! ```
//!
//! Invariants:
//! - [`Bundle::parse`] accepts a bundle only when the image's SHA-256 and length are the ones
//!   described and the signature verifies with the key it names over PROTOCOL.md section 9.4's
//!   signed message: a bundle damaged or edited after signing is refused with the reason.
//! - Whether the key is one the gateway trusts is the caller's decision ([`Bundle::key`]); the
//!   device checks again with the key it carries.
//! - A bundle is identified by its image's SHA-256 (content-addressed: stored once).

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use ferry_wire::update::{
    compare_versions, signed_message, MAX_BOARD_LEN, MAX_SIGNED_LEN, MAX_VERSION_LEN,
};

/// First line of every bundle.
pub const MAGIC: &str = ferry_contract::BUNDLE_MAGIC;
/// Largest image a bundle may carry (the local API and MQTT take whole bundles).
pub const MAX_IMAGE_LEN: usize = 4 * 1024 * 1024;

/// The described part of a bundle (the MQTT contract's, as bundles also travel over MQTT).
pub use ferry_contract::BundleManifest as Manifest;

/// A parsed, self-consistent bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Its description.
    pub manifest: Manifest,
    /// The image.
    pub image: Vec<u8>,
    sha256: [u8; 32],
    signature: [u8; 64],
    key: [u8; 32],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(field: &str, s: &str) -> Result<[u8; N], String> {
    let err = || format!("\"{field}\" is not {N} bytes of hex ({} hex digits)", 2 * N);
    if s.len() != 2 * N {
        return Err(err());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(err)?, 16).map_err(|_| err())?;
    }
    Ok(out)
}

/// Why a version or board cannot be signed.
pub fn check_names(version: &str, board: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN || version.contains('\0') {
        return Err(format!(
            "version {version:?}: 1..={MAX_VERSION_LEN} bytes without NUL"
        ));
    }
    if compare_versions(version, "0").is_none() {
        return Err(format!(
            "version {version:?} is not a version: one to four dot-separated numbers (1.2.0), \
             optionally followed by -suffix or +suffix"
        ));
    }
    if board.is_empty() || board.len() > MAX_BOARD_LEN || board.contains('\0') {
        return Err(format!(
            "board {board:?}: 1..={MAX_BOARD_LEN} bytes without NUL"
        ));
    }
    Ok(())
}

impl Bundle {
    /// Signs `image` as `version` for `board`.
    pub fn sign(
        image: Vec<u8>,
        version: &str,
        board: &str,
        key: &SigningKey,
    ) -> Result<Bundle, String> {
        check_names(version, board)?;
        if image.is_empty() || image.len() > MAX_IMAGE_LEN {
            return Err(format!(
                "the image is {} bytes; 1..={MAX_IMAGE_LEN} are taken",
                image.len()
            ));
        }
        let sha256: [u8; 32] = Sha256::digest(&image).into();
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(image.len() as u32, version, board, &sha256, &mut msg)
            .ok_or("version or board out of range")?;
        let signature = key.sign(&msg[..n]).to_bytes();
        let public = key.verifying_key().to_bytes();
        Ok(Bundle {
            manifest: Manifest {
                version: version.to_owned(),
                board: board.to_owned(),
                length: image.len() as u32,
                sha256: hex(&sha256),
                signature: hex(&signature),
                key: hex(&public),
            },
            image,
            sha256,
            signature,
            key: public,
        })
    }

    /// Parses and checks a bundle file; the error says what is wrong, with the byte offset where
    /// that helps.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        let line_end = |from: usize| {
            bytes[from..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| from + i)
        };
        let first = line_end(0).filter(|&e| &bytes[..e] == MAGIC.as_bytes()).ok_or_else(|| {
            format!("not a Ferry firmware bundle: the first line must be \"{MAGIC}\" (make one with `ferry firmware sign`)")
        })?;
        let start = first + 1;
        let end =
            line_end(start).ok_or_else(|| format!("byte {start}: the manifest line has no end"))?;
        let manifest: Manifest = serde_json::from_slice(&bytes[start..end])
            .map_err(|e| format!("byte {start}: the manifest is not valid: {e}"))?;
        check_names(&manifest.version, &manifest.board)?;
        let image = bytes[end + 1..].to_vec();
        if image.len() != manifest.length as usize {
            return Err(format!(
                "byte {}: the image is {} bytes, the manifest says {}",
                end + 1,
                image.len(),
                manifest.length
            ));
        }
        if image.is_empty() || image.len() > MAX_IMAGE_LEN {
            return Err(format!(
                "the image is {} bytes; 1..={MAX_IMAGE_LEN} are taken",
                image.len()
            ));
        }
        let sha256 = unhex::<32>("sha256", &manifest.sha256)?;
        let signature = unhex::<64>("signature", &manifest.signature)?;
        let key = unhex::<32>("key", &manifest.key)?;
        // One spelling (lowercase hex) for what names the bundle and its key.
        let manifest = Manifest {
            sha256: hex(&sha256),
            signature: hex(&signature),
            key: hex(&key),
            ..manifest
        };
        let actual: [u8; 32] = Sha256::digest(&image).into();
        if actual != sha256 {
            return Err(format!(
                "the image's SHA-256 is {}, the manifest says {}: the image was changed after signing",
                hex(&actual),
                manifest.sha256
            ));
        }
        let b = Bundle {
            manifest,
            image,
            sha256,
            signature,
            key,
        };
        b.verify_with(&key)?;
        Ok(b)
    }

    /// Whether the signature verifies with `key`.
    pub fn verify_with(&self, key: &[u8; 32]) -> Result<(), String> {
        let vk = VerifyingKey::from_bytes(key)
            .map_err(|_| "the key is not an ed25519 public key".to_owned())?;
        let mut msg = [0u8; MAX_SIGNED_LEN];
        let n = signed_message(
            self.manifest.length,
            &self.manifest.version,
            &self.manifest.board,
            &self.sha256,
            &mut msg,
        )
        .ok_or("version or board out of range")?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        // Strict, as the devices verify: a signature they would refuse is refused here.
        vk.verify_strict(&msg[..n], &sig)
            .map_err(|_| "the signature does not verify: the bundle was changed after signing, or signed with another key".to_owned())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.image.len() + 400);
        out.extend_from_slice(MAGIC.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&serde_json::to_vec(&self.manifest).expect("manifest serializes"));
        out.push(b'\n');
        out.extend_from_slice(&self.image);
        out
    }

    /// SHA-256 of the image (the bundle's identity).
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The signature.
    pub fn signature(&self) -> [u8; 64] {
        self.signature
    }

    /// The key that signed it.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }
}

/// A new vendor key pair as PEM: (private key, PKCS#8; public key, SubjectPublicKeyInfo), the
/// formats `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write.
pub fn keygen() -> Result<(String, String), String> {
    let mut seed = [0u8; 32];
    getrandom(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| e.to_string())?
        .to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| e.to_string())?;
    Ok((private, public))
}

fn getrandom(out: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .map_err(|e| format!("/dev/urandom: {e}"))
}

/// Reads a private key (PKCS#8 PEM, "BEGIN PRIVATE KEY").
pub fn read_private_key(text: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(text).map_err(|e| {
        format!("not an ed25519 private key in PKCS#8 PEM (\"BEGIN PRIVATE KEY\"): {e}")
    })
}

/// Reads a public key: PEM ("BEGIN PUBLIC KEY") or 64 hex digits.
pub fn read_public_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    if t.len() == 64 {
        if let Ok(k) = unhex::<32>("key", t) {
            return Ok(k);
        }
    }
    VerifyingKey::from_public_key_pem(text)
        .map(|k| k.to_bytes())
        .map_err(|e| {
            format!("not an ed25519 public key (PEM \"BEGIN PUBLIC KEY\" or 64 hex digits): {e}")
        })
}

/// Hex of bytes (for display and the API).
pub fn to_hex(bytes: &[u8]) -> String {
    hex(bytes)
}

/// Bytes of a 64-digit hex SHA-256.
pub fn sha_from_hex(s: &str) -> Result<[u8; 32], String> {
    unhex::<32>("sha256", s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    #[test]
    fn a_signed_bundle_round_trips_and_any_change_is_refused() {
        let b = Bundle::sign(vec![7; 1000], "1.2.0", "microbit", &key()).unwrap();
        let bytes = b.to_bytes();
        assert_eq!(Bundle::parse(&bytes).unwrap(), b);
        // A byte of the image changed.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        assert!(Bundle::parse(&bad)
            .unwrap_err()
            .contains("changed after signing"));
        // The version edited (the hash still matches, the signature does not).
        let text = String::from_utf8_lossy(&bytes).replace("\"1.2.0\"", "\"9.2.0\"");
        let err = Bundle::parse(text.as_bytes()).unwrap_err();
        assert!(err.contains("signature does not verify"), "{err}");
        // Truncated.
        let err = Bundle::parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            err.contains("the image is 999 bytes, the manifest says 1000"),
            "{err}"
        );
        assert!(Bundle::parse(b"hello")
            .unwrap_err()
            .contains("not a Ferry firmware bundle"));
        // Another key verifies nothing.
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
        assert!(b.verify_with(&other).is_err());
        assert!(b.verify_with(&key().verifying_key().to_bytes()).is_ok());
    }

    #[test]
    fn names_and_keys_are_checked_with_clear_errors() {
        assert!(Bundle::sign(vec![1], "nightly", "b", &key())
            .unwrap_err()
            .contains("not a version"));
        assert!(Bundle::sign(vec![1], "1.0", "", &key())
            .unwrap_err()
            .contains("board"));
        assert!(Bundle::sign(vec![], "1.0", "b", &key())
            .unwrap_err()
            .contains("0 bytes"));
        let (private, public) = keygen().unwrap();
        let k = read_private_key(&private).unwrap();
        assert_eq!(
            read_public_key(&public).unwrap(),
            k.verifying_key().to_bytes()
        );
        assert!(read_private_key(&public).is_err());
        let hex_key = to_hex(&k.verifying_key().to_bytes());
        assert_eq!(
            read_public_key(&hex_key).unwrap(),
            k.verifying_key().to_bytes()
        );
    }
}

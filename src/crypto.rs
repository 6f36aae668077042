//! Secrets: random values, their SHA-256 digests, and sealing at rest.
//!
//! Stored secrets (the SMTP password, the client key) are sealed with XChaCha20-Poly1305
//! under a 256-bit master key kept in a file of mode 0600 beside the store, or named by
//! `--master-key-file`. Bearer secrets (API keys, tokens) are stored only as SHA-256.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Errors of loading the master key or opening a sealed value.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("master key file {0} does not hold a 64-hex-digit key")]
    KeyFormat(String),
    /// A sealed value did not open: wrong master key, or damaged data.
    #[error("a stored secret cannot be decrypted with this master key")]
    Open,
}

/// The key that seals stored secrets.
pub struct MasterKey(XChaCha20Poly1305);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads the key at `path`, creating it (mode 0600, 256 random bits) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        let err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(text.trim())
                .ok_or_else(|| CryptoError::KeyFormat(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                rand::rngs::OsRng.fill_bytes(key.as_mut());
                let text = Zeroizing::new(hex::encode(key.as_ref()));
                write_private_file(path, text.as_bytes()).map_err(err)?;
                Ok(Self(XChaCha20Poly1305::new(key.as_ref().into())))
            }
            Err(e) => Err(err(e)),
        }
    }

    fn from_hex(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(hex::decode(text).ok()?);
        (bytes.len() == KEY_LEN).then(|| Self(XChaCha20Poly1305::new(bytes.as_slice().into())))
    }

    /// Seals `plaintext`; `purpose` binds the result to its place (it cannot be moved to
    /// another field).
    pub fn seal(&self, purpose: &str, plaintext: &str) -> Sealed {
        self.seal_bytes(purpose, plaintext.as_bytes())
    }

    /// Seals bytes, as [`MasterKey::seal`].
    pub fn seal_bytes(&self, purpose: &str, plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let payload = Payload {
            msg: plaintext,
            aad: purpose.as_bytes(),
        };
        let ciphertext = self
            .0
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Sealed(STANDARD.encode(out))
    }

    /// Opens a value sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<Zeroizing<String>, CryptoError> {
        let plain = self.open_bytes(purpose, sealed)?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    /// Opens bytes sealed for `purpose`.
    pub fn open_bytes(
        &self,
        purpose: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let bytes = STANDARD.decode(&sealed.0).map_err(|_| CryptoError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(CryptoError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload {
            msg: ciphertext,
            aad: purpose.as_bytes(),
        };
        self.0
            .decrypt(XNonce::from_slice(nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

/// A sealed secret as stored: base64 of nonce and ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// A new random bearer secret: `prefix` then 256 random bits, URL-safe.
pub fn random_secret(prefix: &str) -> Zeroizing<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Zeroizing::new(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A short random identifier (not a secret): `prefix` then 64 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::rngs::OsRng.next_u64())
}

/// An identifier ordered by creation: `prefix`, 12 hex digits of milliseconds since the
/// epoch, this process's sequence number (so that ids made in one millisecond keep their
/// order), then 32 random bits (so that processes do not collide).
pub fn time_ordered_id(prefix: &str, now: std::time::SystemTime) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}{millis:012x}{sequence:08x}{:08x}",
        rand::rngs::OsRng.next_u32()
    )
}

/// The SHA-256 digest of a secret, in hex: what the store keeps instead of the secret.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Writes a new file readable by its owner only, failing if it exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        let sealed = key.seal("smtp.password", "hunter2");
        assert_eq!(*key.open("smtp.password", &sealed).unwrap(), "hunter2");
        assert!(key.open("smtp.client_key", &sealed).is_err());
        let other = MasterKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open("smtp.password", &sealed).is_err());
        let again = MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(*again.open("smtp.password", &sealed).unwrap(), "hunter2");
    }

    #[test]
    fn secrets_are_long_prefixed_and_distinct() {
        let a = random_secret("mrk_");
        let b = random_secret("mrk_");
        assert!(a.starts_with("mrk_") && a.len() == 4 + 43);
        assert_ne!(*a, *b);
        assert_eq!(digest("abc").len(), 64);
    }
}

//! Secrets: random values, their SHA-256 digests, and sealing at rest.
//!
//! Stored secrets (the SMTP password, the client key) are sealed with XChaCha20-Poly1305
//! under a 256-bit master key kept in a file of mode 0600 beside the store, or named by
//! `--master-key-file`; a key file open to others stops the start ([`check_private_file`]).
//! Bearer secrets (API keys, tokens) are stored only as SHA-256. In memory a secret is a
//! [`SecretString`] (secrecy): wiped when dropped, `[REDACTED]` under `Debug`, read only
//! through `expose_secret`.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
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
    #[error("master key file {0} does not hold keys of 64 hex digits, one per line")]
    KeyFormat(String),
    /// A file holding a secret could not be examined.
    #[error("{path}: {source}")]
    PrivateFile {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file holding a secret that others than its owner could read or replace.
    #[error("{path} holds a secret but {why}")]
    LooseFile {
        /// The file.
        path: String,
        /// Why, and the fix.
        why: String,
    },
    /// A sealed value did not open: wrong master key, or damaged data.
    #[error("a stored secret cannot be decrypted with this master key")]
    Open,
}

/// What the store's key check (a value sealed with the master key when the store was
/// created) is sealed for.
pub const KEY_CHECK_PURPOSE: &str = "mailroom.key_check";

/// The keys that seal stored secrets: a keyring whose first key seals and every key opens,
/// so that a rotation can re-seal stored values while the old ones still open. The key file
/// holds one key per line (64 hex digits), the sealing key first.
pub struct MasterKey {
    ciphers: Vec<XChaCha20Poly1305>,
    hex: Vec<SecretString>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("keys", &self.hex)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Reads the keyring at `path`, creating it (mode 0600, one key of 256 random bits)
    /// when absent. A key file open to group or others is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        check_private_file(path)?;
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &Zeroizing::new(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::from_hex(vec![new_key_hex()]);
                key.write(path)?;
                Ok(key)
            }
            Err(e) => Err(key_file_error(path, e)),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<Self, CryptoError> {
        let lines: Vec<SecretString> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(SecretString::from)
            .collect();
        let valid = !lines.is_empty()
            && lines.iter().all(|l| {
                hex::decode(l.expose_secret()).is_ok_and(|b| Zeroizing::new(b).len() == KEY_LEN)
            });
        if !valid {
            return Err(CryptoError::KeyFormat(path.display().to_string()));
        }
        Ok(Self::from_hex(lines))
    }

    fn from_hex(hex_keys: Vec<SecretString>) -> Self {
        let ciphers = hex_keys
            .iter()
            .map(|h| {
                let bytes = Zeroizing::new(hex::decode(h.expose_secret()).expect("checked hex"));
                XChaCha20Poly1305::new(bytes.as_slice().into())
            })
            .collect();
        Self {
            ciphers,
            hex: hex_keys,
        }
    }

    /// Writes the keyring to `path` (mode 0600), replacing it atomically and durably.
    fn write(&self, path: &Path) -> Result<(), CryptoError> {
        let staged = path.with_extension("new");
        let _ = std::fs::remove_file(&staged);
        let mut text = Zeroizing::new(String::new());
        for key in &self.hex {
            text.push_str(key.expose_secret());
            text.push('\n');
        }
        write_private_file(&staged, text.as_bytes()).map_err(|e| key_file_error(path, e))?;
        rename_durably(&staged, path).map_err(|e| key_file_error(path, e))
    }

    /// A keyring with a new sealing key before these keys, written to `path`: what
    /// `rotate-master-key` seals with while it re-seals the stored values.
    pub fn rotated(&self, path: &Path) -> Result<Self, CryptoError> {
        let mut hex_keys = vec![new_key_hex()];
        hex_keys.extend(self.hex.iter().cloned());
        let rotated = Self::from_hex(hex_keys);
        rotated.write(path)?;
        Ok(rotated)
    }

    /// Keeps only the sealing key, written to `path`: once every stored value is re-sealed.
    pub fn retire_old_keys(&self, path: &Path) -> Result<Self, CryptoError> {
        let current = Self::from_hex(vec![self.hex[0].clone()]);
        current.write(path)?;
        Ok(current)
    }

    /// How many keys the ring holds.
    pub fn len(&self) -> usize {
        self.ciphers.len()
    }

    /// Whether the ring is empty (never: loading refuses an empty key file).
    pub fn is_empty(&self) -> bool {
        self.ciphers.is_empty()
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
        let ciphertext = self.ciphers[0]
            .encrypt(XNonce::from_slice(&nonce), payload)
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        Sealed(STANDARD.encode(out))
    }

    /// Opens a value sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<SecretString, CryptoError> {
        let plain = self.open_bytes(purpose, sealed)?;
        std::str::from_utf8(&plain)
            .map(SecretString::from)
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
        let payload = || Payload {
            msg: ciphertext,
            aad: purpose.as_bytes(),
        };
        self.ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(XNonce::from_slice(nonce), payload()).ok())
            .map(Zeroizing::new)
            .ok_or(CryptoError::Open)
    }
}

fn new_key_hex() -> SecretString {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    secret(Zeroizing::new(hex::encode(key.as_ref())))
}

/// `text` as a secret. From `&str`, a copy of its exact length: `From<String>` may shrink
/// the buffer and leave the old one unwiped. `text` is wiped when dropped.
fn secret(text: Zeroizing<String>) -> SecretString {
    SecretString::from(text.as_str())
}

fn key_file_error(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::KeyFile {
        path: path.display().to_string(),
        source,
    }
}

/// A sealed secret as stored: base64 of nonce and ciphertext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Its size as stored, in bytes.
    pub fn stored_len(&self) -> usize {
        self.0.len()
    }

    /// It as stored (base64): what a store that keeps it in parts splits.
    pub fn as_stored(&self) -> &str {
        &self.0
    }

    /// A value [`Sealed::as_stored`] gave (joined again from its parts).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

/// A new random bearer secret: `prefix` then 256 random bits, URL-safe.
pub fn random_secret(prefix: &str) -> SecretString {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    secret(Zeroizing::new(format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(bytes.as_ref())
    )))
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

/// Refuses the file at `path`, when there is one, if it holds a secret (the master key,
/// `admin.key`) that others than its owner could read or replace ([`too_open`]), as ssh
/// refuses a loose private key: the secret may have been read already, and only the
/// operator can fix the mode or replace the secret. Starting anyway would hide the mistake.
pub fn check_private_file(path: &Path) -> Result<(), CryptoError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CryptoError::PrivateFile {
                path: path.display().to_string(),
                source,
            })
        }
    };
    let path = path.display().to_string();
    let me = nix::unistd::geteuid().as_raw();
    match too_open(&path, metadata.mode(), metadata.uid(), me) {
        Some(why) => Err(CryptoError::LooseFile { path, why }),
        None => Ok(()),
    }
}

/// Why the file at `path`, of `mode` and owned by `owner`, is too open to hold a secret for
/// a process running as `me`, and the fix (`None`: private enough). PostgreSQL's rule for
/// its key file: owned by this user and closed to group and others (as ssh wants a private
/// key), or owned by root and at most readable by its group: how Kubernetes mounts a Secret
/// for a pod with an `fsGroup` (root, that group, 0440).
fn too_open(path: &str, mode: u32, owner: u32, me: u32) -> Option<String> {
    let mode = mode & 0o777;
    if owner == me {
        (mode & 0o077 != 0).then(|| {
            format!("is open to group or others (mode {mode:04o}): run `chmod 600 {path}`")
        })
    } else if owner == 0 {
        (mode & 0o037 != 0).then(|| {
            format!(
                "is writable by its group or open to others (mode {mode:04o}): run \
                 `chmod 640 {path}` at most"
            )
        })
    } else {
        Some(format!(
            "belongs to user {owner}, neither this one ({me}) nor root, who could replace \
             it: run `chown {me} {path}` and `chmod 600 {path}`"
        ))
    }
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

/// Renames `staged` (written by [`write_private_file`], so synced) to `path`, then syncs the
/// directory: once this returns, a power cut leaves the new file under its name.
pub fn rename_durably(staged: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(staged, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_directory(dir),
        _ => sync_directory(Path::new(".")),
    }
}

/// Syncs a directory: the names of the files created, renamed or removed in it.
pub fn sync_directory(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        let sealed = key.seal("smtp.password", "hunter2");
        assert_eq!(
            key.open("smtp.password", &sealed).unwrap().expose_secret(),
            "hunter2"
        );
        assert!(key.open("smtp.client_key", &sealed).is_err());
        let other = MasterKey::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open("smtp.password", &sealed).is_err());
        let again = MasterKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(
            again
                .open("smtp.password", &sealed)
                .unwrap()
                .expose_secret(),
            "hunter2"
        );
    }

    #[test]
    fn a_rotated_keyring_opens_old_values_and_seals_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let old = MasterKey::load_or_create(&path).unwrap();
        let before = old.seal("p", "secret");
        let rotated = old.rotated(&path).unwrap();
        assert_eq!(rotated.len(), 2);
        assert_eq!(
            rotated.open("p", &before).unwrap().expose_secret(),
            "secret"
        );
        let after = rotated.seal("p", "secret");
        assert!(old.open("p", &after).is_err(), "sealed with the new key");
        let reloaded = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(
            reloaded.open("p", &before).unwrap().expose_secret(),
            "secret"
        );
        let current = reloaded.retire_old_keys(&path).unwrap();
        assert!(current.open("p", &before).is_err());
        assert_eq!(
            MasterKey::load_or_create(&path)
                .unwrap()
                .open("p", &after)
                .unwrap()
                .expose_secret(),
            "secret"
        );
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(
            MasterKey::load_or_create(&path),
            Err(CryptoError::KeyFormat(_))
        ));
    }

    #[test]
    fn a_key_file_open_to_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        MasterKey::load_or_create(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = MasterKey::load_or_create(&path).unwrap_err().to_string();
            let fix = format!("chmod 600 {}", path.display());
            assert!(error.contains(&fix), "mode {mode:o}: {error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            MasterKey::load_or_create(&path).unwrap();
        }
    }

    #[test]
    fn a_secret_file_is_its_owner_s_alone_or_root_s_shared_with_a_group() {
        let me = 10001;
        for private in [0o100600, 0o100400] {
            assert_eq!(too_open("k", private, me, me), None);
        }
        for loose in [0o644, 0o640, 0o604, 0o620, 0o660] {
            let why = too_open("k", 0o100000 | loose, me, me).expect("refused");
            assert!(why.contains("chmod 600 k"), "{loose:o}: {why}");
        }
        // A Kubernetes Secret mounted for a pod with an fsGroup: root's, group-readable.
        for shared in [0o100440, 0o100640] {
            assert_eq!(too_open("k", shared, 0, me), None);
        }
        for loose in [0o660, 0o644, 0o604] {
            assert!(
                too_open("k", 0o100000 | loose, 0, me).is_some(),
                "{loose:o}"
            );
        }
        assert!(
            too_open("k", 0o100600, 1000, me).is_some(),
            "another user's"
        );
        assert!(
            too_open("k", 0o100640, 0, 0).is_some(),
            "root's own, run as root"
        );
    }

    #[test]
    fn secrets_are_long_prefixed_and_distinct() {
        let a = random_secret("mrk_");
        let b = random_secret("mrk_");
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert!(a.starts_with("mrk_") && a.len() == 4 + 43);
        assert_ne!(a, b);
        assert_eq!(digest("abc").len(), 64);
    }
}

//! The key secrets are encrypted with at rest: 32 bytes for XChaCha20-Poly1305, taken
//! from `FAENA_SECRET_KEY` when it is set (so the key can live apart from the data, in
//! a secret manager or a Kubernetes secret), else from `<data dir>/secret.key`, which
//! the first start creates with mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};

/// The environment variable that carries the key, in base64.
pub const KEY_ENV: &str = "FAENA_SECRET_KEY";
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secret.key";

/// First byte of an encrypted record. Never the first byte of UTF-8 text, so a record
/// written in plain text by an older engine is told apart from an encrypted one.
const MAGIC: u8 = 0xFF;
const VERSION: u8 = 1;
const NONCE: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{KEY_ENV} must be 32 random bytes in base64 (make one with `openssl rand -base64 32`): {why}"
    )]
    BadEnv { why: String },
    #[error("the secret key file {path} must hold 32 bytes in base64: {why}")]
    BadFile { path: PathBuf, why: String },
    #[error("cannot read or create the secret key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret key from {from} is not the key the stored secrets were encrypted with; \
         start with the original key (in {KEY_ENV} or the data directory's {KEY_FILE})"
    )]
    WrongKey { from: KeySource },
    #[error(
        "secret `{name}` of tenant `{tenant}` does not decrypt although the key is right: \
         the record is damaged; set the secret again"
    )]
    Damaged { tenant: String, name: String },
    #[error("storage failed while reading the secrets: {0}")]
    Storage(#[from] sled::Error),
}

/// Where the key came from, for the log and for errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    File(PathBuf),
    /// Created by this start: the operator must back it up.
    Created(PathBuf),
    /// Made up for a store opened without one (tests, benchmarks).
    Generated,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => write!(f, "{KEY_ENV}"),
            KeySource::File(p) | KeySource::Created(p) => write!(f, "the key file {}", p.display()),
            KeySource::Generated => write!(f, "a generated key"),
        }
    }
}

#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    pub source: KeySource,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.source)
    }
}

fn parse(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("it decodes to {} bytes, not 32", bytes.len()))
}

impl SecretKey {
    fn from_bytes(bytes: [u8; 32], source: KeySource) -> SecretKey {
        SecretKey {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
            source,
        }
    }

    /// A fresh random key that is written nowhere.
    pub fn generate() -> SecretKey {
        SecretKey::from_bytes(rand::random(), KeySource::Generated)
    }

    /// The key of `faena serve`: `FAENA_SECRET_KEY` if set, else the data directory's
    /// key file, created on the first start.
    pub fn load(data_dir: &Path) -> Result<SecretKey, KeyError> {
        match std::env::var(KEY_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                let bytes = parse(&text).map_err(|why| KeyError::BadEnv { why })?;
                Ok(SecretKey::from_bytes(bytes, KeySource::Env))
            }
            _ => SecretKey::from_file(&data_dir.join(KEY_FILE)),
        }
    }

    /// Read the key file at `path`, or create it (mode 0600) with a new random key.
    pub fn from_file(path: &Path) -> Result<SecretKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = parse(&text).map_err(|why| KeyError::BadFile {
                    path: path.to_owned(),
                    why,
                })?;
                Ok(SecretKey::from_bytes(
                    bytes,
                    KeySource::File(path.to_owned()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::random();
                write_new_private(path, &format!("{}\n", STANDARD.encode(bytes))).map_err(io)?;
                Ok(SecretKey::from_bytes(
                    bytes,
                    KeySource::Created(path.to_owned()),
                ))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Encrypt `plain`, bound to `aad` (the record's key, so a record copied under
    /// another name does not decrypt).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand::random();
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut out = Vec::with_capacity(2 + NONCE + sealed.len());
        out.extend_from_slice(&[MAGIC, VERSION]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plain text of a sealed record; `None` if it does not decrypt with this key.
    pub fn open(&self, aad: &[u8], record: &[u8]) -> Option<Vec<u8>> {
        let rest = record.strip_prefix(&[MAGIC, VERSION])?;
        if rest.len() < NONCE {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }
}

/// Whether a stored value was sealed (rather than written in plain text by an engine
/// that did not encrypt).
pub fn is_sealed(record: &[u8]) -> bool {
    record.first() == Some(&MAGIC)
}

/// Create `path` with mode 0600 and `text`; fails if it exists (never overwrite a key).
fn write_new_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_name() {
        let key = SecretKey::generate();
        let record = key.seal(b"t\0a", b"hunter2");
        assert!(is_sealed(&record));
        assert!(!is_sealed(b"hunter2"));
        assert_eq!(key.open(b"t\0a", &record).as_deref(), Some(&b"hunter2"[..]));
        assert_eq!(key.open(b"t\0b", &record), None, "bound to its name");
        assert_eq!(SecretKey::generate().open(b"t\0a", &record), None);
        assert_eq!(key.open(b"t\0a", &record[..10]), None);
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = SecretKey::from_file(&path).unwrap();
        assert_eq!(first.source, KeySource::Created(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = SecretKey::from_file(&path).unwrap();
        assert_eq!(again.source, KeySource::File(path.clone()));
        let record = first.seal(b"k", b"v");
        assert_eq!(again.open(b"k", &record).as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_malformed_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let e = SecretKey::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("secret.key") && e.contains("5 bytes, not 32"),
            "{e}"
        );
    }
}

//! Secrets (portal passwords, API tokens) per tenant. Write-only through the API: a
//! value is handed only to a plugin granted its name, and is redacted from whatever
//! that plugin logs or reports ([`redact`]). At rest every value is sealed with
//! XChaCha20-Poly1305 under the engine's [`SecretKey`], bound to its tenant and name.

mod key;
mod private;
pub mod redact;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use key::{KEY_ENV, KEY_FILE, KeyError, KeySource, SecretKey};
pub use private::{private_dir, private_umask};
pub use redact::{Redactor, Revealed};

use crate::store::{Result, StoreError};

/// The record that tells whether the key is the one the secrets were sealed with.
/// Its first byte cannot start a tenant's name (UTF-8), so no listing meets it.
const CHECK_RECORD: &[u8] = b"\xFFkey-check";
const CHECK_TEXT: &[u8] = b"faena secrets";

#[derive(Clone)]
pub struct Secrets {
    tree: sled::Tree,
    key: Arc<SecretKey>,
    /// Values already decrypted, with their redaction matchers, so each is built once
    /// however many runs reveal it. Dropped on set and delete.
    revealed: Arc<Mutex<HashMap<Vec<u8>, Arc<Revealed>>>>,
}

fn key(tenant: &str, name: &str) -> Vec<u8> {
    let mut k = tenant.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

impl Secrets {
    /// Open the secrets in `tree` with `key`: refuse a key that is not the one they were
    /// sealed with, and seal in place any value an older engine stored in plain text.
    /// Returns how many values were sealed so.
    pub fn open(tree: sled::Tree, key: SecretKey) -> Result<(Secrets, usize), KeyError> {
        match tree.get(CHECK_RECORD)? {
            Some(check) if key.open(CHECK_RECORD, &check).as_deref() != Some(CHECK_TEXT) => {
                return Err(KeyError::WrongKey { from: key.source });
            }
            Some(_) => {}
            None => {
                // Sealed values but no check record cannot come from this engine; test
                // one so a wrong key is still named as such.
                for kv in tree.iter() {
                    let (k, v) = kv?;
                    if key::is_sealed(&v) && key.open(&k, &v).is_none() {
                        return Err(KeyError::WrongKey { from: key.source });
                    }
                }
                tree.insert(CHECK_RECORD, key.seal(CHECK_RECORD, CHECK_TEXT))?;
            }
        }
        let mut batch = sled::Batch::default();
        let mut sealed = 0;
        for kv in tree.iter() {
            let (k, v) = kv?;
            if &*k == CHECK_RECORD {
                continue;
            }
            // A damaged sealed value does not stop the engine: revealing it fails, by name.
            if !key::is_sealed(&v) {
                batch.insert(k.to_vec(), key.seal(&k, &v));
                sealed += 1;
            }
        }
        tree.apply_batch(batch)?;
        tree.flush()?;
        let secrets = Secrets {
            tree,
            key: Arc::new(key),
            revealed: Arc::default(),
        };
        Ok((secrets, sealed))
    }

    /// The key, for other records sealed at rest (webhook secrets).
    pub fn key(&self) -> Arc<SecretKey> {
        self.key.clone()
    }

    /// Where the key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.key.source
    }

    fn forget(&self, k: &[u8]) {
        self.revealed.lock().expect("secrets cache").remove(k);
    }

    pub fn set(&self, tenant: &str, name: &str, value: &str) -> Result<()> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(format!(
                "secret name `{name}`: use 1-128 letters, digits, `_`, `-` or `.`"
            )));
        }
        if value.is_empty() || value.len() > 16 * 1024 {
            return Err(StoreError::Invalid(format!(
                "secret `{name}`: the value must be 1 byte to 16 KiB"
            )));
        }
        let k = key(tenant, name);
        self.tree.insert(&k, self.key.seal(&k, value.as_bytes()))?;
        self.tree.flush()?;
        self.forget(&k);
        Ok(())
    }

    /// The value and its redaction matchers, built once per value.
    pub fn reveal(&self, tenant: &str, name: &str) -> Result<Option<Arc<Revealed>>> {
        let k = key(tenant, name);
        if let Some(r) = self.revealed.lock().expect("secrets cache").get(&k) {
            return Ok(Some(r.clone()));
        }
        let Some(record) = self.tree.get(&k)? else {
            return Ok(None);
        };
        let plain = self.key.open(&k, &record).ok_or_else(|| {
            StoreError::Storage(
                KeyError::Damaged {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                }
                .to_string(),
            )
        })?;
        let value = String::from_utf8(plain).map_err(|_| {
            StoreError::Storage(format!("secret `{name}` of tenant `{tenant}` is not UTF-8"))
        })?;
        let revealed = Arc::new(Revealed::new(value));
        self.revealed
            .lock()
            .expect("secrets cache")
            .insert(k, revealed.clone());
        Ok(Some(revealed))
    }

    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        Ok(self.reveal(tenant, name)?.map(|r| r.value().to_owned()))
    }

    pub fn delete(&self, tenant: &str, name: &str) -> Result<bool> {
        let k = key(tenant, name);
        let existed = self.tree.remove(&k)?.is_some();
        self.tree.flush()?;
        self.forget(&k);
        Ok(existed)
    }

    /// Names only, never values.
    pub fn names(&self, tenant: &str) -> Result<Vec<String>> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("secrets").unwrap()
    }

    #[test]
    fn values_are_sealed_and_read_back() {
        let tree = tree();
        let (s, sealed) = Secrets::open(tree.clone(), SecretKey::generate()).unwrap();
        assert_eq!(sealed, 0);
        s.set("t", "pw", "hunter2-hunter2").unwrap();
        let raw = tree.get(key("t", "pw")).unwrap().unwrap();
        assert!(key::is_sealed(&raw));
        assert!(!raw.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            s.get("t", "pw").unwrap().as_deref(),
            Some("hunter2-hunter2")
        );
        s.set("t", "pw", "changed-value").unwrap();
        assert_eq!(s.get("t", "pw").unwrap().as_deref(), Some("changed-value"));
        assert_eq!(s.names("t").unwrap(), vec!["pw".to_owned()]);
        assert!(s.delete("t", "pw").unwrap());
        assert_eq!(s.get("t", "pw").unwrap(), None);
    }

    #[test]
    fn plain_text_values_are_sealed_in_place_on_open() {
        let tree = tree();
        tree.insert(key("default", "old"), &b"plain-old-password"[..])
            .unwrap();
        tree.insert(key("acme", "token"), &b"tok-123456"[..])
            .unwrap();
        let key_ = SecretKey::generate();
        let (s, sealed) = Secrets::open(tree.clone(), key_.clone()).unwrap();
        assert_eq!(sealed, 2);
        for kv in tree.iter() {
            let (_, v) = kv.unwrap();
            assert!(key::is_sealed(&v));
        }
        assert_eq!(
            s.get("default", "old").unwrap().as_deref(),
            Some("plain-old-password")
        );
        assert_eq!(
            s.get("acme", "token").unwrap().as_deref(),
            Some("tok-123456")
        );
        let (_, again) = Secrets::open(tree, key_).unwrap();
        assert_eq!(again, 0, "only once");
    }

    #[test]
    fn a_wrong_key_is_refused_by_name() {
        let tree = tree();
        let (s, _) = Secrets::open(tree.clone(), SecretKey::generate()).unwrap();
        s.set("t", "pw", "hunter2").unwrap();
        let e = Secrets::open(tree.clone(), SecretKey::generate())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("not the key the stored secrets were encrypted with"),
            "{e}"
        );
        // Without the check record, a sealed value still tells.
        tree.remove(CHECK_RECORD).unwrap();
        let e = Secrets::open(tree, SecretKey::generate()).err().unwrap();
        assert!(matches!(e, KeyError::WrongKey { .. }), "{e}");
    }

    #[test]
    fn reveal_builds_matchers_once_and_set_replaces_them() {
        let (s, _) = Secrets::open(tree(), SecretKey::generate()).unwrap();
        s.set("t", "pw", "first-value-1").unwrap();
        let a = s.reveal("t", "pw").unwrap().unwrap();
        let b = s.reveal("t", "pw").unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        s.set("t", "pw", "second-value-2").unwrap();
        assert_eq!(
            s.reveal("t", "pw").unwrap().unwrap().value(),
            "second-value-2"
        );
    }
}

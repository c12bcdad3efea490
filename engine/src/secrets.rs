//! Secrets (portal passwords, API tokens) per tenant. Write-only through the API: a
//! value is handed only to a plugin granted its name, and is redacted from whatever
//! that plugin logs or reports.

use crate::store::{Result, StoreError};

#[derive(Clone)]
pub struct Secrets {
    tree: sled::Tree,
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
    pub fn new(tree: sled::Tree) -> Self {
        Secrets { tree }
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
        self.tree.insert(key(tenant, name), value.as_bytes())?;
        self.tree.flush()?;
        Ok(())
    }

    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<String>> {
        Ok(self
            .tree
            .get(key(tenant, name))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn delete(&self, tenant: &str, name: &str) -> Result<bool> {
        let existed = self.tree.remove(key(tenant, name))?.is_some();
        self.tree.flush()?;
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

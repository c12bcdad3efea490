//! Files a run produced (failure screenshots, downloads): bytes in the data directory,
//! metadata in sled, each owned by one tenant and item.

use std::path::{Path, PathBuf};

use poem_openapi::Object;
use serde::{Deserialize, Serialize};

use crate::store::{Result, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Artifact {
    pub id: String,
    pub tenant: String,
    pub job_id: Option<String>,
    pub item_id: Option<String>,
    /// The session whose call produced it (a downloaded file).
    #[serde(default)]
    pub session_id: Option<String>,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub created_at: i64,
}

/// Largest artifact accepted.
pub const MAX_ARTIFACT: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Artifacts {
    dir: PathBuf,
    tree: sled::Tree,
}

impl Artifacts {
    pub fn open(dir: &Path, tree: sled::Tree) -> Result<Artifacts> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        Ok(Artifacts {
            dir: dir.to_owned(),
            tree,
        })
    }

    /// Write the bytes, then the metadata; durable when it returns.
    pub async fn save(&self, mut meta: Artifact, data: Vec<u8>) -> Result<Artifact> {
        if data.len() > MAX_ARTIFACT {
            return Err(StoreError::Invalid(format!(
                "artifact `{}` is larger than {} MiB",
                meta.name,
                MAX_ARTIFACT >> 20
            )));
        }
        meta.id = ulid::Ulid::new().to_string();
        meta.size = data.len() as u64;
        let path = self.dir.join(&meta.id);
        let tmp = self.dir.join(format!("{}.tmp", meta.id));
        let tree = self.tree.clone();
        let record = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let io = |e: std::io::Error| StoreError::Storage(format!("artifact: {e}"));
            std::fs::write(&tmp, &data).map_err(io)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            let mut batch = sled::Batch::default();
            batch.insert(record.id.as_bytes(), serde_json::to_vec(&record)?);
            if let Some(item) = &record.item_id {
                batch.insert(
                    format!("i/{item}/{}", record.id).as_bytes(),
                    record.id.as_bytes(),
                );
            }
            if let Some(session) = &record.session_id {
                batch.insert(
                    format!("s/{session}/{}", record.id).as_bytes(),
                    record.id.as_bytes(),
                );
            }
            tree.apply_batch(batch)?;
            tree.flush()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        Ok(meta)
    }

    pub fn get(&self, id: &str) -> Result<Artifact> {
        if ulid::Ulid::from_string(id).is_err() {
            return Err(StoreError::not_found("artifact", id));
        }
        let raw = self
            .tree
            .get(id.as_bytes())?
            .ok_or_else(|| StoreError::not_found("artifact", id))?;
        Ok(serde_json::from_slice(&raw)?)
    }

    pub async fn read(&self, meta: &Artifact) -> Result<Vec<u8>> {
        tokio::fs::read(self.dir.join(&meta.id))
            .await
            .map_err(|e| StoreError::Storage(format!("artifact `{}`: {e}", meta.id)))
    }

    pub fn for_item(&self, item_id: &str) -> Result<Vec<Artifact>> {
        self.indexed(&format!("i/{item_id}/"))
    }

    /// The files a session's calls saved, oldest first.
    pub fn for_session(&self, session_id: &str) -> Result<Vec<Artifact>> {
        self.indexed(&format!("s/{session_id}/"))
    }

    fn indexed(&self, prefix: &str) -> Result<Vec<Artifact>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(prefix.as_bytes()) {
            let (_, id) = kv?;
            out.push(self.get(&String::from_utf8_lossy(&id))?);
        }
        Ok(out)
    }
}

//! Loaded plugins: described, checked against their grants, compiled and
//! pre-instantiated once (on first use when described before), kept by name and
//! version (a job runs the version it was created with).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use poem_openapi::Object;
use serde::{Deserialize, Serialize};

use super::bindings::FlowPre;
use super::grants::Grants;
use super::state::ItemState;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Needs {
    pub browser: bool,
    pub http_hosts: Vec<String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct OperationMeta {
    pub name: String,
    pub description: String,
    /// JSON Schema of the operation's input.
    pub input_schema: serde_json::Value,
    pub needs: Needs,
    /// What it needs that this engine does not grant (it cannot run until granted).
    pub not_granted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct GrantsMeta {
    pub browser: bool,
    pub http_hosts: Vec<String>,
    pub secrets: Vec<String>,
    pub memory_mib: u64,
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PluginMeta {
    pub name: String,
    pub version: String,
    pub description: String,
    pub operations: Vec<OperationMeta>,
    /// Shipped inside the faena binary (as opposed to uploaded).
    pub builtin: bool,
    /// Whether this is the version new jobs get.
    pub current: bool,
    pub grants: GrantsMeta,
    /// Other installed versions.
    pub versions: Vec<String>,
}

/// Where a loaded plugin's component is, so that workers can fetch it.
#[derive(Debug, Clone)]
pub enum Source {
    /// Inside the faena binary.
    Builtin(&'static [u8]),
    /// Uploaded and kept in the data directory.
    File(std::path::PathBuf),
    /// Given to this process only (a worker's copy, a test's).
    Bytes(Arc<[u8]>),
}

impl Source {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Source::Builtin(b) => Ok(b.to_vec()),
            Source::File(path) => std::fs::read(path),
            Source::Bytes(b) => Ok(b.to_vec()),
        }
    }
}

pub struct LoadedPlugin {
    pub meta: PluginMeta,
    /// The component's SHA-256, hex.
    pub sha256: String,
    pub source: Source,
    /// Its operations' input schemas, compiled.
    pub inputs: super::inputs::InputSchemas,
    /// Compiled on first use when the plugin was registered from a description kept
    /// earlier (see [`Described`]).
    pub pre: tokio::sync::OnceCell<FlowPre<ItemState>>,
    pub grants: Arc<Grants>,
    pub http: reqwest::Client,
}

impl LoadedPlugin {
    pub fn operation(&self, name: &str) -> Option<&OperationMeta> {
        self.meta.operations.iter().find(|o| o.name == name)
    }
}

#[derive(Default)]
struct Versions {
    current: String,
    all: BTreeMap<String, Arc<LoadedPlugin>>,
}

#[derive(Default)]
pub struct Registry {
    plugins: RwLock<BTreeMap<String, Versions>>,
}

impl Registry {
    /// Add a version; it becomes the current one if `current` (or if it is the
    /// plugin's first).
    pub fn insert(&self, plugin: LoadedPlugin, current: bool) {
        let mut map = self.plugins.write().expect("registry lock");
        let v = map.entry(plugin.meta.name.clone()).or_default();
        if current || v.all.is_empty() {
            v.current = plugin.meta.version.clone();
        }
        v.all.insert(plugin.meta.version.clone(), Arc::new(plugin));
    }

    pub fn get(&self, name: &str, version: Option<&str>) -> Option<Arc<LoadedPlugin>> {
        let map = self.plugins.read().expect("registry lock");
        let v = map.get(name)?;
        v.all.get(version.unwrap_or(&v.current)).cloned()
    }

    /// Every installed version of a plugin, in order.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let map = self.plugins.read().expect("registry lock");
        map.get(name)
            .map(|v| v.all.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn contains_version(&self, name: &str, version: &str) -> bool {
        self.get(name, Some(version)).is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.plugins
            .read()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The current version of each plugin, described.
    pub fn list(&self) -> Vec<PluginMeta> {
        let map = self.plugins.read().expect("registry lock");
        map.values()
            .filter_map(|v| {
                let p = v.all.get(&v.current)?;
                let mut meta = p.meta.clone();
                meta.current = true;
                meta.versions = v.all.keys().cloned().collect();
                Some(meta)
            })
            .collect()
    }
}

/// What a component says of itself (`describe`), kept beside the compiled code by the
/// component's SHA-256 and this engine's version: a later start registers the plugin
/// from it without compiling or starting the component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Described {
    pub name: String,
    pub version: String,
    pub description: String,
    pub operations: Vec<DescribedOperation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DescribedOperation {
    pub name: String,
    pub description: String,
    pub input_schema: String,
    pub needs: Needs,
}

impl From<super::bindings::PluginInfo> for Described {
    fn from(info: super::bindings::PluginInfo) -> Self {
        Described {
            name: info.name,
            version: info.version,
            description: info.description,
            operations: info
                .operations
                .into_iter()
                .map(|op| DescribedOperation {
                    name: op.name,
                    description: op.description,
                    input_schema: op.input_schema,
                    needs: Needs {
                        browser: op.needs.browser,
                        http_hosts: op.needs.http_hosts,
                        secrets: op.needs.secrets,
                    },
                })
                .collect(),
        }
    }
}

impl Described {
    fn path(cache_dir: &std::path::Path, sha256: &str) -> std::path::PathBuf {
        cache_dir
            .join("described")
            .join(format!("{}-{sha256}.json", env!("CARGO_PKG_VERSION")))
    }

    /// The description kept for this component, if there is a readable one.
    pub fn cached(cache_dir: &std::path::Path, sha256: &str) -> Option<Described> {
        let raw = std::fs::read(Self::path(cache_dir, sha256)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Keep the description for the next start; a cache that cannot be written only
    /// costs that start a compile.
    pub fn keep(&self, cache_dir: &std::path::Path, sha256: &str) {
        let path = Self::path(cache_dir, sha256);
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::create_dir_all(path.parent().expect("a folder"))
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(self).expect("serializes")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not keep a plugin's description");
        }
    }
}

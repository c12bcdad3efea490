//! The WebAssembly plugin runtime (wasmtime component model). Each plugin is compiled
//! and pre-instantiated once (on its first use, when this engine described the same
//! component before); each item gets a fresh instance with a memory limit, a
//! wall-clock deadline, nothing of WASI, and only the faena capabilities its plugin is
//! granted. A trap, a deadline or a denied call fails that item; the engine goes on.
//!
//! Capabilities go in three phases: grants are validated when a plugin is loaded
//! ([`grants`]), per-item state is built when an item starts ([`state`]), and each
//! host call checks them ([`host`], [`browser`], [`http`]).

pub mod bindings;
pub mod browser;
pub mod grants;
pub mod host;
pub mod http;
pub mod inputs;
mod kept;
pub mod plugin;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::{info, warn};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config as WasmConfig, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store as WasmStore,
};

use crate::artifacts::Artifacts;
use crate::config::{Config, PluginConfig};
use crate::model::{ErrorKind, ItemError};
use crate::scheduler::{Executor, RunContext};
use crate::secrets::Secrets;
use crate::store::{ClaimedItem, Outcome, Store};
use bindings::{Flow, FlowPre, PluginError};
use browser::{BrowserCtx, Chromium, ChromiumSettings};
use grants::Grants;
use host::HostCtx;
use http::HttpCtx;
use plugin::{Described, GrantsMeta, LoadedPlugin, OperationMeta};
pub use plugin::{PluginMeta, Registry, Source};
use state::ItemState;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// The component of a plugin shipped inside the binary (`noop`, `ultimus`, `gsp`).
pub fn builtin_component(name: &str) -> Option<&'static [u8]> {
    builtin::BUILTIN
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, bytes, _)| *bytes)
}

/// The SHA-256 of a component, hex: how workers check what they fetched.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Epoch tick: a busy guest yields to the scheduler this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the WebAssembly engine: {0}")]
    Engine(String),
    #[error("plugin upload: {0}")]
    Invalid(String),
    #[error("plugin `{name}`: {message}")]
    Plugin { name: String, message: String },
    #[error("plugin `{name}` version {version} is already installed")]
    Exists { name: String, version: String },
    #[error(transparent)]
    Grants(#[from] grants::GrantError),
    #[error("{0}")]
    Io(String),
}

pub struct RuntimeOptions {
    pub cache_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub plugins: BTreeMap<String, PluginConfig>,
    /// `None`: no browser on this engine.
    pub chromium: Option<ChromiumSettings>,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<ItemState>,
    registry: Registry,
    options: RuntimeOptions,
    chromium: Option<Arc<Chromium>>,
    /// `None` on a worker: its runs' files go to the engine through the run context.
    artifacts: Option<Artifacts>,
    /// `None` on a worker: secrets come with each claim and stay in memory.
    secrets: Option<Secrets>,
    stop_epoch: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_epoch.store(true, Ordering::Release);
    }
}

/// A reused instance slot is reset by writing zeros over the pages its last item
/// touched, found with Linux's `PAGEMAP_SCAN` (6.7+), up to this much; only the rest
/// is given back with `madvise`. Giving pages back on every item made each one fault
/// its pages in again and made the kernel interrupt every core that ran a thread of
/// the engine (a TLB shootdown), which cost most when the API's threads were busy.
const KEEP_RESIDENT: usize = 4 << 20;

/// Where wasmtime keeps compiled code, under the runtime's cache folder.
const COMPILED_DIR: &str = "compiled";

fn wasm_config(cache_dir: &Path) -> Result<WasmConfig, RuntimeError> {
    let mut config = WasmConfig::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(256)
        .total_core_instances(2048)
        .total_memories(1024)
        .total_tables(1024)
        .max_memory_size((grants::MAX_MEMORY_MIB << 20) as usize)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let mut cache = CacheConfig::new();
    // A folder of its own: wasmtime's cleanup deletes whatever it does not recognise in
    // its folder, and the plugins' descriptions live beside it.
    cache.with_directory(cache_dir.join(COMPILED_DIR));
    let cache = Cache::new(cache).map_err(|e| {
        RuntimeError::Engine(format!("compile cache in {}: {e}", cache_dir.display()))
    })?;
    config.cache(Some(cache));
    Ok(config)
}

impl Runtime {
    pub fn new(
        options: RuntimeOptions,
        artifacts: Option<Artifacts>,
        secrets: Option<Secrets>,
    ) -> Result<Arc<Runtime>, RuntimeError> {
        for (name, cfg) in &options.plugins {
            Grants::from_config(name, Some(cfg))?;
        }
        std::fs::create_dir_all(&options.cache_dir).map_err(|e| RuntimeError::Io(e.to_string()))?;
        // Compiled code of releases that kept it in the cache folder itself: never read
        // again, and in the way of nothing but the disk.
        let _ = std::fs::remove_dir_all(options.cache_dir.join("modules"));
        let engine = Engine::new(&wasm_config(&options.cache_dir)?)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        Flow::add_to_linker::<ItemState, wasmtime::component::HasSelf<ItemState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let stop_epoch = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop_epoch.clone());
            std::thread::Builder::new()
                .name("faena-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        }
        let chromium = options.chromium.clone().map(|s| Arc::new(Chromium::new(s)));
        Ok(Arc::new(Runtime {
            engine,
            linker,
            registry: Registry::default(),
            options,
            chromium,
            artifacts,
            secrets,
            stop_epoch,
        }))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The engine's secrets (`None` on a worker).
    pub fn secrets(&self) -> Option<&Secrets> {
        self.secrets.as_ref()
    }

    pub fn artifacts(&self) -> Option<&Artifacts> {
        self.artifacts.as_ref()
    }

    /// Stop the browser this engine launched and remove its profile (a clean stop).
    pub async fn stop_browser(&self) {
        if let Some(chromium) = &self.chromium {
            chromium.stop().await;
        }
    }

    fn new_store(&self, state: ItemState) -> WasmStore<ItemState> {
        let mut store = WasmStore::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Yield to tokio every tick: a busy guest never holds a worker thread, and the
        // wall-clock deadline (a timeout around the call) can always fire.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }

    /// Compile (or take from the cache), pre-instantiate and describe a component.
    async fn prepare(&self, bytes: &[u8]) -> Result<(FlowPre<ItemState>, Described), RuntimeError> {
        let pre = self.compile(bytes).await?;
        let info = Described::from(self.describe(&pre).await?);
        self.check_fits(&pre, &info.name).await?;
        Ok((pre, info))
    }

    /// Compile (or take from the compile cache) and pre-instantiate a component.
    async fn compile(&self, bytes: &[u8]) -> Result<FlowPre<ItemState>, RuntimeError> {
        let engine = self.engine.clone();
        let owned = bytes.to_vec();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &owned))
            .await
            .map_err(|e| RuntimeError::Engine(e.to_string()))?
            .map_err(|e| RuntimeError::Invalid(format!("not a faena plugin component: {e:#}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            RuntimeError::Invalid(format!(
                "the component imports something faena does not provide: {e:#}"
            ))
        })?;
        FlowPre::new(pre).map_err(|e| {
            RuntimeError::Invalid(format!("the component is not a faena:plugin/flow: {e:#}"))
        })
    }

    /// Describe, check grants, register as the current version. A component this
    /// engine described before (the same bytes) is registered from that description
    /// and compiled on first use: an engine that starts with many plugins, most of
    /// them idle, neither compiles nor instantiates them until it runs them.
    pub async fn load(&self, bytes: &[u8], source: Source) -> Result<PluginMeta, RuntimeError> {
        self.load_hashed(bytes, sha256_hex(bytes), source).await
    }

    async fn load_hashed(
        &self,
        bytes: &[u8],
        sha256: String,
        source: Source,
    ) -> Result<PluginMeta, RuntimeError> {
        if let Some(info) = Described::cached(&self.options.cache_dir, &sha256)
            && self.fits_unchecked(&info.name)?
        {
            return self.register(None, info, sha256, source, true);
        }
        let (pre, info) = self.prepare(bytes).await?;
        info.keep(&self.options.cache_dir, &sha256);
        self.register(Some(pre), info, sha256, source, true)
    }

    /// The plugin's pre-instantiated component, compiled (or read from the compile
    /// cache) the first time it is needed.
    async fn pre<'p>(
        &self,
        plugin: &'p LoadedPlugin,
    ) -> Result<&'p FlowPre<ItemState>, RuntimeError> {
        plugin
            .pre
            .get_or_try_init(|| async {
                let source = plugin.source.clone();
                let bytes = tokio::task::spawn_blocking(move || source.read())
                    .await
                    .map_err(|e| RuntimeError::Engine(e.to_string()))?
                    .map_err(|e| RuntimeError::Io(format!("reading the component: {e}")))?;
                // Built-in bytes are part of the binary and cannot change.
                if !matches!(plugin.source, Source::Builtin(_))
                    && sha256_hex(&bytes) != plugin.sha256
                {
                    return Err(RuntimeError::Invalid(format!(
                        "plugin `{}` {}: its component changed on disk since it was loaded",
                        plugin.meta.name, plugin.meta.version
                    )));
                }
                info!(plugin = %plugin.meta.name, version = %plugin.meta.version, "compiling on first use");
                self.compile(&bytes).await
            })
            .await
    }

    /// Load a version beside the current one without making it current (a worker's
    /// copy of the version an older job's item or a session was made with).
    pub async fn load_beside(
        &self,
        bytes: &[u8],
        source: Source,
    ) -> Result<PluginMeta, RuntimeError> {
        let (pre, info) = self.prepare(bytes).await?;
        self.register(Some(pre), info, sha256_hex(bytes), source, false)
    }

    /// Check a described component against its grants and make it the current version.
    fn register(
        &self,
        pre: Option<FlowPre<ItemState>>,
        info: Described,
        sha256: String,
        source: Source,
        current: bool,
    ) -> Result<PluginMeta, RuntimeError> {
        let builtin = matches!(source, Source::Builtin(_));
        let grants = Arc::new(Grants::from_config(
            &info.name,
            self.options.plugins.get(&info.name),
        )?);
        let name_ok = !info.name.is_empty()
            && info.name.len() <= 64
            && info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(RuntimeError::Invalid(format!(
                "plugin name `{}` is not 1-64 of a-z, 0-9, `_`, `-`",
                info.name
            )));
        }
        let mut operations = Vec::new();
        for op in info.operations {
            let input_schema =
                serde_json::from_str(&op.input_schema).map_err(|e| RuntimeError::Plugin {
                    name: info.name.clone(),
                    message: format!("operation `{}`: input schema is not JSON: {e}", op.name),
                })?;
            let not_granted =
                grants.missing(op.needs.browser, &op.needs.http_hosts, &op.needs.secrets);
            if !not_granted.is_empty() {
                warn!(plugin = %info.name, operation = %op.name, missing = ?not_granted, "operation needs capabilities that are not granted");
            }
            operations.push(OperationMeta {
                name: op.name,
                description: op.description,
                input_schema,
                needs: op.needs,
                not_granted,
            });
        }
        let meta = PluginMeta {
            name: info.name.clone(),
            version: info.version.clone(),
            description: info.description,
            operations,
            builtin,
            current: true,
            grants: GrantsMeta {
                browser: grants.browser,
                http_hosts: grants.http_hosts.iter().cloned().collect(),
                secrets: grants.secrets.iter().cloned().collect(),
                memory_mib: (grants.memory_bytes >> 20) as u64,
                deadline_secs: grants.deadline.as_secs(),
            },
            versions: vec![info.version],
        };
        let inputs = inputs::InputSchemas::compile(
            &meta.name,
            meta.operations
                .iter()
                .map(|o| (o.name.as_str(), &o.input_schema)),
        )?;
        info!(plugin = %meta.name, version = %meta.version, builtin, compiled = pre.is_some(), "plugin loaded");
        self.registry.insert(
            LoadedPlugin {
                meta: meta.clone(),
                sha256,
                source,
                inputs,
                pre: tokio::sync::OnceCell::new_with(pre),
                http: http::client(),
                grants,
            },
            current,
        );
        // The answer lists every installed version, as the plugin's description does.
        let mut meta = meta;
        meta.versions = self.registry.versions(&meta.name);
        Ok(meta)
    }

    /// Install an uploaded component: register it and keep it in the data directory,
    /// so it is loaded again at the next start. The same name and version twice is a
    /// conflict.
    pub async fn install(&self, bytes: &[u8]) -> Result<PluginMeta, RuntimeError> {
        let (pre, info) = self.prepare(bytes).await?;
        if self.registry.contains_version(&info.name, &info.version) {
            return Err(RuntimeError::Exists {
                name: info.name,
                version: info.version,
            });
        }
        if !crate::secrets::valid_name(&info.version) {
            return Err(RuntimeError::Invalid(format!(
                "plugin `{}`: version `{}` must be letters, digits, `_`, `-` and `.`",
                info.name, info.version
            )));
        }
        let dir = self.options.plugin_dir.join(&info.name);
        let file = dir.join(format!("{}.wasm", info.version));
        let owned = bytes.to_vec();
        let saved = file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let tmp = saved.with_extension("wasm.tmp");
            std::fs::write(&tmp, &owned)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &saved)
        })
        .await
        .map_err(|e| RuntimeError::Io(e.to_string()))?
        .map_err(|e| RuntimeError::Io(format!("saving the plugin: {e}")))?;
        let sha256 = sha256_hex(bytes);
        info.keep(&self.options.cache_dir, &sha256);
        self.register(Some(pre), info, sha256, Source::File(file.clone()), true)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&file);
            })
    }

    /// An instance's data with nothing granted and `memory_bytes` of memory.
    fn bare_state(&self, memory_bytes: usize) -> ItemState {
        let grants = Arc::new(Grants::default());
        ItemState::new(
            memory_bytes,
            HostCtx::new(
                "(describe)",
                crate::model::DEFAULT_TENANT,
                None,
                grants.clone(),
                self.secrets.clone(),
                self.artifacts.clone(),
                None,
            ),
            BrowserCtx::new("(describe)", false, None),
            HttpCtx::new("(describe)", grants, reqwest::Client::new()),
        )
    }

    /// Whether `name`'s memory grant is at least what `describe` starts a component
    /// with, so that a component described before needs no start to know it fits.
    fn fits_unchecked(&self, name: &str) -> Result<bool, RuntimeError> {
        let grants = Grants::from_config(name, self.options.plugins.get(name))?;
        Ok(grants.memory_bytes >= Grants::default().memory_bytes)
    }

    /// Start the component once within its own memory grant: one that cannot (a
    /// Python plugin, whose interpreter needs about 13 MiB, given less) is refused when
    /// it loads, instead of failing every item it is given.
    async fn check_fits(&self, pre: &FlowPre<ItemState>, name: &str) -> Result<(), RuntimeError> {
        if self.fits_unchecked(name)? {
            return Ok(()); // `describe` started it with that much already
        }
        let grants = Grants::from_config(name, self.options.plugins.get(name))?;
        let mut store = self.new_store(self.bare_state(grants.memory_bytes));
        pre.instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|e| RuntimeError::Plugin {
                name: name.to_owned(),
                message: format!(
                    "it cannot start within its memory grant of {} MiB (`memory_mib`): {e:#}",
                    grants.memory_bytes >> 20
                ),
            })
    }

    async fn describe(
        &self,
        pre: &FlowPre<ItemState>,
    ) -> Result<bindings::PluginInfo, RuntimeError> {
        let mut store = self.new_store(self.bare_state(Grants::default().memory_bytes));
        let call = async {
            let flow = pre.instantiate_async(&mut store).await?;
            flow.call_describe(&mut store).await
        };
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| RuntimeError::Invalid("describe did not return within 10 s".into()))?
            .map_err(|e| RuntimeError::Invalid(format!("describe failed: {e:#}")))
    }

    /// Load the built-in plugins and those uploaded earlier. Components with no kept
    /// description are described by `describe` first.
    pub async fn load_all(&self, describe: Describe) -> Result<(), RuntimeError> {
        let components = installed_components(&self.options.plugin_dir)?;
        let undescribed = components
            .iter()
            .filter(|c| Described::cached(&self.options.cache_dir, &c.sha256).is_none())
            .count();
        if let (Describe::Child { exe, json_logs }, 1..) = (&describe, undescribed) {
            // Whatever the child could not describe is described here below, with the
            // error a user sees: the child only saves this process the compiler.
            describe_in_child(exe, *json_logs, &self.options, undescribed).await;
        }
        for c in components {
            let loaded = match c.read() {
                Ok(bytes) => self.load_hashed(&bytes, c.sha256.clone(), c.source()).await,
                Err(e) => Err(e),
            };
            match (loaded, c.component) {
                (Ok(_), _) => {}
                // A built-in that does not load is this binary's defect: the start fails.
                (Err(e), Installable::Builtin(_)) => {
                    return Err(RuntimeError::Plugin {
                        name: c.name,
                        message: e.to_string(),
                    });
                }
                (Err(e), Installable::File(path)) => {
                    warn!(file = %path.display(), error = %e, "an installed plugin could not be loaded");
                }
            }
        }
        Ok(())
    }

    /// Whether jobs of `plugin`/`operation` can run here, and with which version.
    /// The current input schema of a plugin's operation, if both are installed.
    pub fn operation_schema(&self, plugin: &str, operation: &str) -> Option<serde_json::Value> {
        let p = self.registry.get(plugin, None)?;
        p.operation(operation).map(|o| o.input_schema.clone())
    }

    /// The compiled input schemas of the current version of `plugin`; `None` when it
    /// is not installed here (external workers serve it and check their own).
    pub fn input_schemas(&self, plugin: &str) -> Option<inputs::InputSchemas> {
        self.registry.get(plugin, None).map(|p| p.inputs.clone())
    }

    pub fn version_for_new_job(
        &self,
        plugin: &str,
        operation: &str,
    ) -> Result<Option<String>, String> {
        let Some(p) = self.registry.get(plugin, None) else {
            if self.options.plugins.contains_key(plugin) {
                return Ok(None); // declared in the configuration: served by external workers
            }
            return Err(format!(
                "plugin: `{plugin}` is not installed (installed: {})",
                self.registry.names().join(", ")
            ));
        };
        let Some(op) = p.operation(operation) else {
            let ops: Vec<&str> = p.meta.operations.iter().map(|o| o.name.as_str()).collect();
            return Err(format!(
                "operation: plugin `{plugin}` has no operation `{operation}` (it has: {})",
                ops.join(", ")
            ));
        };
        if !op.not_granted.is_empty() {
            return Err(format!(
                "plugin `{plugin}` operation `{operation}` needs {} — grant it under [plugins.{plugin}] in the configuration",
                op.not_granted.join(", ")
            ));
        }
        Ok(Some(p.meta.version.clone()))
    }

    /// The per-instance data of a run of `plugin`: host, browser and HTTP contexts
    /// with the plugin's grants.
    fn state(
        &self,
        plugin: &LoadedPlugin,
        tenant: &str,
        job_id: Option<String>,
        run: Option<RunContext>,
    ) -> ItemState {
        let grants = plugin.grants.clone();
        let name = &plugin.meta.name;
        ItemState::new(
            grants.memory_bytes,
            HostCtx::new(
                name,
                tenant,
                job_id,
                grants.clone(),
                self.secrets.clone(),
                self.artifacts.clone(),
                run,
            ),
            BrowserCtx::new(name, grants.browser, self.chromium.clone()),
            HttpCtx::new(name, grants.clone(), plugin.http.clone()),
        )
    }

    async fn run_item(&self, task: ClaimedItem, ctx: RunContext) -> Outcome {
        let item = &task.item;
        let Some(plugin) = self
            .registry
            .get(&item.plugin, task.plugin_version.as_deref())
        else {
            return Outcome::Failed(ItemError::application(format!(
                "plugin `{}` version {} is not installed",
                item.plugin,
                task.plugin_version.as_deref().unwrap_or("(any)")
            )));
        };
        let resource = ctx.resource().map(str::to_owned);
        let mut state = self.state(&plugin, &item.tenant, Some(item.job_id.clone()), Some(ctx));
        state.host.checkpoints = item
            .steps
            .iter()
            .map(|s| (s.name.clone(), s.state.clone()))
            .collect();
        let mut store = self.new_store(state);
        let context = bindings::Context {
            job_id: item.job_id.clone(),
            item_id: item.id.clone(),
            attempt: item.attempt,
            idempotency_key: task.idempotency_key.clone(),
            last_checkpoint: item.last_checkpoint().map(|s| bindings::Checkpoint {
                name: s.name.clone(),
                state: s.state.clone(),
            }),
            session_id: None,
            resource,
        };
        let input = item.input.to_string();
        let deadline = plugin.grants.deadline;
        let pre = match self.pre(&plugin).await {
            Ok(pre) => pre,
            Err(e) => {
                return Outcome::Failed(ItemError::application(format!(
                    "plugin `{}` could not be compiled: {e}",
                    plugin.meta.name
                )));
            }
        };
        let call = async {
            let flow = pre.instantiate_async(&mut store).await?;
            flow.call_run(&mut store, &task.operation, &input, &context)
                .await
        };
        let result = tokio::time::timeout(deadline, call).await;
        let outcome = match settle_call(result, &store, &plugin.meta.name, deadline) {
            Ok(v) => Outcome::Succeeded(v),
            Err(CallError { error, .. }) => Outcome::Failed(error),
        };
        let state = store.data_mut();
        if matches!(outcome, Outcome::Failed(_)) {
            state.save_failure_screenshots().await;
            // What the next attempt starts from, as this one left it.
            state.save_kept_state().await;
        }
        state.browser.close().await;
        // Resources left in the table (pages the guest did not drop) go with the store.
        state.table = ResourceTable::new();
        outcome
    }

    /// A fresh instance of the current version of `plugin` that lives until it is
    /// closed: a session's. Its browser context and page last as long as it does.
    pub async fn open_instance(
        &self,
        plugin: &str,
        version: Option<&str>,
        tenant: &str,
        session_id: &str,
        page: browser::SessionPage,
        link: Option<Arc<dyn host::SessionLink>>,
    ) -> Result<Instance, String> {
        let loaded = self.registry.get(plugin, version).ok_or_else(|| {
            format!(
                "plugin `{plugin}` version {} is not installed",
                version.unwrap_or("(any)")
            )
        })?;
        let mut state = self.state(&loaded, tenant, None, None);
        state.host = state.host.in_session(session_id, link);
        state.browser = state.browser.for_session(page);
        let mut store = self.new_store(state);
        let pre = self
            .pre(&loaded)
            .await
            .map_err(|e| format!("plugin `{plugin}` could not be compiled: {e}"))?;
        let flow = tokio::time::timeout(Duration::from_secs(10), pre.instantiate_async(&mut store))
            .await
            .map_err(|_| format!("plugin `{plugin}` did not start within 10 s"))?
            .map_err(|e| format!("plugin `{plugin}` could not start: {e:#}"))?;
        Ok(Instance {
            store,
            flow,
            plugin: loaded,
            session_id: session_id.to_owned(),
            calls: 0,
        })
    }
}

/// Why a call did not produce a result.
#[derive(Debug)]
pub struct CallError {
    pub error: ItemError,
    /// The instance trapped or ran past its deadline: it must not be called again.
    pub broken: bool,
}

/// Turn what a `run` call returned into its JSON result or its error.
fn settle_call(
    result: Result<wasmtime::Result<Result<String, PluginError>>, tokio::time::error::Elapsed>,
    store: &WasmStore<ItemState>,
    name: &str,
    deadline: Duration,
) -> Result<serde_json::Value, CallError> {
    let broken = |error| CallError {
        error,
        broken: true,
    };
    match result {
        Err(_) => {
            let mut e = ItemError::application(format!(
                "plugin `{name}` ran past its deadline of {} s and was stopped",
                deadline.as_secs()
            ));
            e.code = Some("deadline".into());
            Err(broken(e))
        }
        Ok(Err(trap)) => {
            let stderr = store.data().stderr_tail();
            let mut msg = format!("plugin `{name}` trapped: {}", trap.root_cause());
            if !stderr.is_empty() {
                msg.push_str(&format!(" ({stderr})"));
            }
            let mut e = ItemError::application(store.data().host.redact(&msg));
            e.code = Some("trap".into());
            Err(broken(e))
        }
        Ok(Ok(Err(err))) => Err(CallError {
            error: to_item_error(err, &store.data().host),
            broken: false,
        }),
        Ok(Ok(Ok(json))) => {
            serde_json::from_str(&store.data().host.redact(&json)).map_err(|e| CallError {
                error: ItemError::application(format!(
                    "plugin `{name}` returned a result that is not JSON: {e}"
                )),
                broken: false,
            })
        }
    }
}

impl ItemState {
    /// Keep a PNG of every open page as an artifact of the run.
    async fn save_failure_screenshots(&mut self) {
        for (i, png) in self.browser.screenshots().await.into_iter().enumerate() {
            let file = if i == 0 {
                "failure.png".to_owned()
            } else {
                format!("failure-{i}.png")
            };
            if let Err(e) = self.host.save_artifact(&file, "image/png", png).await {
                warn!(plugin = %self.host.plugin, error = %e, "could not save the failure screenshot");
            }
        }
    }
}

/// A plugin instance that serves several calls, one at a time (a session's).
pub struct Instance {
    store: WasmStore<ItemState>,
    flow: Flow,
    plugin: Arc<LoadedPlugin>,
    session_id: String,
    calls: u32,
}

impl Instance {
    pub fn plugin(&self) -> &PluginMeta {
        &self.plugin.meta
    }

    /// Run `operation` in this instance. A failed call leaves a screenshot of the
    /// page, as an artifact of the session.
    pub async fn call(
        &mut self,
        operation: &str,
        input: &serde_json::Value,
        call_id: &str,
    ) -> Result<serde_json::Value, CallError> {
        self.calls += 1;
        let context = bindings::Context {
            job_id: String::new(),
            item_id: String::new(),
            attempt: 1,
            idempotency_key: format!("faena-{}-{call_id}", self.session_id),
            last_checkpoint: None,
            session_id: Some(self.session_id.clone()),
            resource: None,
        };
        let input = input.to_string();
        let deadline = self.plugin.grants.deadline;
        let result = tokio::time::timeout(
            deadline,
            self.flow
                .call_run(&mut self.store, operation, &input, &context),
        )
        .await;
        let out = settle_call(result, &self.store, &self.plugin.meta.name, deadline);
        if out.is_err() {
            self.store.data_mut().save_failure_screenshots().await;
        }
        out
    }

    /// Whether the browser under this instance has gone away.
    pub fn browser_dead(&self) -> bool {
        self.store.data().browser.is_dead()
    }

    /// Close the browser context and drop the instance.
    pub async fn close(mut self) {
        let state = self.store.data_mut();
        state.browser.close().await;
        state.table = ResourceTable::new();
    }
}

fn to_item_error(e: PluginError, host: &HostCtx) -> ItemError {
    ItemError {
        kind: match e.kind {
            bindings::ErrorKind::Business => ErrorKind::Business,
            bindings::ErrorKind::Application => ErrorKind::Application,
        },
        message: host.redact(&e.message),
        code: e.code,
        retry_after_ms: e.retry_after_ms,
    }
}

/// Runs items of every loaded plugin.
pub struct WasmExecutor(pub Arc<Runtime>);

impl Executor for WasmExecutor {
    fn plugins(&self) -> Vec<String> {
        self.0.registry.names()
    }

    fn run(&self, task: ClaimedItem, ctx: RunContext) -> BoxFuture<'static, Outcome> {
        let rt = self.0.clone();
        Box::pin(async move { rt.run_item(task, ctx).await })
    }
}

/// Build the runtime for `faena serve`: artifacts and secrets next to the store,
/// compiled-code cache and uploaded plugins in the data directory, built-ins loaded.
pub async fn start(
    config: &Config,
    store: &Store,
    describe: Describe,
) -> Result<Arc<Runtime>, RuntimeError> {
    let rt = prepare(config, store, config.data_dir.join("cache"))?;
    rt.load_all(describe).await?;
    Ok(rt)
}

/// Where the components a start has no kept description of are compiled and described.
pub enum Describe {
    /// In this process.
    Here,
    /// In a child process of this binary (`exe`), which leaves the description and the
    /// compiled code in the caches for this one to read. Compiling leaves the compiler's
    /// code paged in and its freed memory with the allocator of the process that did
    /// it; an engine that serves for weeks after its first start should not carry that.
    Child {
        exe: PathBuf,
        /// Whether the child logs JSON lines (the engine's `--log-format json`).
        json_logs: bool,
    },
}

/// How long a child may take to compile and describe: far more than any component
/// needs, so that only a stuck child reaches it.
const DESCRIBE_CHILD_LIMIT: Duration = Duration::from_secs(600);

/// A component to load at start: built in, or installed in the plugin folder.
struct Installed {
    name: String,
    component: Installable,
    sha256: String,
}

enum Installable {
    Builtin(&'static [u8]),
    /// Read again when it is loaded: a start holds one installed component at a time.
    File(PathBuf),
}

impl Installed {
    fn source(&self) -> Source {
        match &self.component {
            Installable::Builtin(bytes) => Source::Builtin(bytes),
            Installable::File(path) => Source::File(path.clone()),
        }
    }

    /// The component's bytes, checked against the hash it was listed with.
    fn read(&self) -> Result<std::borrow::Cow<'static, [u8]>, RuntimeError> {
        match &self.component {
            Installable::Builtin(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            Installable::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| RuntimeError::Io(format!("{}: {e}", path.display())))?;
                if sha256_hex(&bytes) != self.sha256 {
                    return Err(RuntimeError::Invalid(format!(
                        "{}: the component changed on disk while the engine started",
                        path.display()
                    )));
                }
                Ok(std::borrow::Cow::Owned(bytes))
            }
        }
    }
}

/// The built-in components, then the installed ones in the order they were installed.
fn installed_components(plugin_dir: &Path) -> Result<Vec<Installed>, RuntimeError> {
    let mut all: Vec<Installed> = builtin::BUILTIN
        .iter()
        .map(|(name, bytes, sha256)| Installed {
            name: (*name).to_owned(),
            component: Installable::Builtin(bytes),
            sha256: (*sha256).to_owned(),
        })
        .collect();
    let Ok(dirs) = std::fs::read_dir(plugin_dir) else {
        return Ok(all);
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for dir in dirs.flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = f.path();
            if path.extension().is_some_and(|e| e == "wasm") {
                let modified = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, path));
            }
        }
    }
    files.sort();
    for (_, path) in files {
        let bytes = std::fs::read(&path)
            .map_err(|e| RuntimeError::Io(format!("{}: {e}", path.display())))?;
        all.push(Installed {
            name: path.display().to_string(),
            sha256: sha256_hex(&bytes),
            component: Installable::File(path),
        });
    }
    Ok(all)
}

/// What `faena` is given to describe into the caches (`faena plugin describe`).
const DESCRIBE_COMMAND: [&str; 2] = ["plugin", "describe"];

async fn describe_in_child(
    exe: &Path,
    json_logs: bool,
    options: &RuntimeOptions,
    undescribed: usize,
) {
    info!(
        plugins = undescribed,
        "describing the plugins with no kept description, in a child process"
    );
    let status = tokio::process::Command::new(exe)
        .args(DESCRIBE_COMMAND)
        .arg("--cache-dir")
        .arg(&options.cache_dir)
        .arg("--plugin-dir")
        .arg(&options.plugin_dir)
        .arg("--log-format")
        .arg(if json_logs { "json" } else { "text" })
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(DESCRIBE_CHILD_LIMIT, status).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => warn!(status = %s, "describing in a child process failed; describing here"),
        Ok(Err(e)) => {
            warn!(error = %e, exe = %exe.display(), "cannot start a child process to describe plugins; describing here")
        }
        Err(_) => warn!(
            limit_secs = DESCRIBE_CHILD_LIMIT.as_secs(),
            "the child process describing plugins did not finish; stopped it, describing here"
        ),
    }
}

/// `faena plugin describe`: compile and describe every component in `plugin_dir` and
/// built in that has no kept description, keeping both in `cache_dir` for `faena serve`.
/// A component that fails is reported and left for `faena serve` to refuse.
pub async fn describe_into_cache(
    cache_dir: PathBuf,
    plugin_dir: PathBuf,
) -> Result<(), RuntimeError> {
    let rt = Runtime::new(
        RuntimeOptions {
            cache_dir,
            plugin_dir,
            plugins: BTreeMap::new(),
            chromium: None,
        },
        None,
        None,
    )?;
    for c in installed_components(&rt.options.plugin_dir)? {
        if Described::cached(&rt.options.cache_dir, &c.sha256).is_some() {
            continue;
        }
        let prepared = match c.read() {
            Ok(bytes) => rt.prepare(&bytes).await,
            Err(e) => Err(e),
        };
        match prepared {
            Ok((_, info)) => info.keep(&rt.options.cache_dir, &c.sha256),
            Err(e) => warn!(plugin = %c.name, error = %e, "cannot describe"),
        }
    }
    Ok(())
}

/// The runtime of `config` on `store`, with no plugin loaded yet; compiled components
/// are cached in `cache_dir`.
pub fn prepare(
    config: &Config,
    store: &Store,
    cache_dir: PathBuf,
) -> Result<Arc<Runtime>, RuntimeError> {
    let artifacts = store
        .artifacts()
        .map_err(|e| RuntimeError::Io(e.to_string()))?;
    let secrets = store
        .secrets()
        .map_err(|e| RuntimeError::Io(e.to_string()))?;
    for (name, value) in &config.secrets {
        secrets
            .set(crate::model::DEFAULT_TENANT, name, value)
            .map_err(|e| RuntimeError::Io(format!("[secrets] {name}: {e}")))?;
    }
    let chromium = config.browser.enabled.then(|| ChromiumSettings {
        executable: config.browser.executable.clone(),
        endpoints: config.browser.endpoints.clone(),
        profile_dir: config.data_dir.join("chromium"),
        args: config.browser.args.clone(),
        headless: config.browser.headless,
    });
    Runtime::new(
        RuntimeOptions {
            cache_dir,
            plugin_dir: config.data_dir.join("plugins"),
            plugins: config.plugins.clone(),
            chromium,
        },
        Some(artifacts),
        Some(secrets),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_built_in_components_hashes_are_theirs() {
        assert!(!super::builtin::BUILTIN.is_empty());
        for (name, bytes, sha256) in super::builtin::BUILTIN {
            assert_eq!(super::sha256_hex(bytes), *sha256, "{name}");
        }
    }
}

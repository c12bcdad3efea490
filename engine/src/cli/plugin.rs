//! `faena plugin install FILE` (to a running engine) and `faena plugin run FILE --op OP
//! --input JSON`: one item of a plugin run here, with no server — the inner loop of
//! writing a flow. The run uses a throw-away store and the real runtime (grants,
//! settings and secrets from `--config`), prints the item's steps, logs and result as
//! they come, and saves its files (failure screenshots, downloads) to `--out`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use super::{Client, Remote};
use crate::clock::Clock;
use crate::config::{Config, Overrides};
use crate::model::{ItemStatus, JobOptions, JobStatus, NewItem, NewJob};
use crate::runtime::{Source, WasmExecutor};
use crate::scheduler::{self, SchedulerConfig};
use crate::store::Store;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Start a plugin project (a folder that builds as it is, outside any workspace).
    New {
        /// The plugin's name: a lowercase letter, then letters, digits, `-`, `_`.
        name: String,
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to write it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the plugin project in DIR (default: here): cargo for a Rust project,
    /// componentize-py for a Python one (`$FAENA_COMPONENTIZE_PY`, `DIR/.venv`, or PATH).
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Install a plugin's component (`.wasm`) on a running engine: a new plugin, or a
    /// new version of one (new jobs get it; running ones keep theirs).
    Install {
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run one item of a plugin here, with no server: steps, logs and the result are
    /// printed, files saved to `--out`.
    Run(RunArgs),
    /// Compile and describe the built-in and installed plugins that have no kept
    /// description, into the caches `faena serve` reads (it runs this on a first start).
    #[command(hide = true)]
    Describe {
        #[arg(long)]
        cache_dir: PathBuf,
        #[arg(long)]
        plugin_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The plugin's component (`.wasm`), or the name of a built-in plugin.
    pub file: String,
    /// The operation to run.
    #[arg(long)]
    pub op: String,
    /// The item's input, as JSON.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Grants, settings, secrets and browser as `faena serve` reads them
    /// (`[plugins.NAME]`, `[secrets]`, `[browser]`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the item's files (failure screenshots, downloads) are saved.
    #[arg(long, default_value = "./faena-run")]
    pub out: PathBuf,
    /// Attempts, the first included: application errors are retried at once.
    #[arg(long, default_value_t = 1)]
    pub attempts: u32,
    /// Show the browser's window while the flow drives it (needs a desktop).
    #[arg(long)]
    pub headed: bool,
}

pub async fn run_plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New { name, lang, dir } => {
            let root = match lang {
                Lang::Rust => super::scaffold::new_rust(&name, dir.as_deref())?,
                Lang::Python => super::scaffold::new_python(&name, dir.as_deref())?,
            };
            println!(
                "wrote {}: `cd {} && faena plugin build` builds it",
                root.display(),
                root.display()
            );
            Ok(())
        }
        PluginCommand::Build { dir } => {
            let dir2 = dir.clone();
            let wasm = tokio::task::spawn_blocking(move || super::scaffold::build(&dir2)).await??;
            println!("{}", wasm.display());
            Ok(())
        }
        PluginCommand::Install { file, remote } => install(&remote.client(), &file).await,
        PluginCommand::Run(args) => run(args).await,
        PluginCommand::Describe {
            cache_dir,
            plugin_dir,
        } => Ok(crate::runtime::describe_into_cache(cache_dir, plugin_dir).await?),
    }
}

async fn install(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let meta = client.upload("/api/v1/plugins", bytes).await?;
    println!(
        "installed {} {} (versions: {})",
        meta["name"].as_str().unwrap_or("?"),
        meta["version"].as_str().unwrap_or("?"),
        meta["versions"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .with_context(|| format!("--input is not JSON: {}", args.input))?;
    let scratch = tempfile::tempdir().context("cannot make a scratch directory")?;
    let mut config = Config::load(
        args.config.as_deref(),
        Overrides {
            data_dir: Some(scratch.path().to_owned()),
            ..Default::default()
        },
    )?;
    if args.headed {
        if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
            bail!(
                "--headed shows the browser's window: it needs a desktop (neither DISPLAY nor WAYLAND_DISPLAY is set)"
            );
        }
        config.browser.headless = false;
    }
    let store = Store::open(&scratch.path().join("store"), Clock::new()).await?;
    // Compiled code is kept between runs (a Python component takes seconds to compile).
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("faena");
    let rt = crate::runtime::prepare(&config, &store, cache)?;
    let (bytes, source) = if std::path::Path::new(&args.file).exists() {
        let bytes =
            std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file))?;
        (bytes.clone(), Source::Bytes(bytes.into()))
    } else if let Some(bytes) = crate::runtime::builtin_component(&args.file) {
        (bytes.to_vec(), Source::Builtin(bytes))
    } else {
        bail!(
            "{} is neither a file nor a built-in plugin (gsp, noop, sunat, ultimus, whatsapp)",
            args.file
        );
    };
    let name = rt
        .load(&bytes, source)
        .await
        .with_context(|| format!("{} is not a plugin faena can run", args.file))?
        .name;
    let version = rt
        .version_for_new_job(&name, &args.op)
        .map_err(anyhow::Error::msg)?;
    if let Some(schemas) = rt.input_schemas(&name) {
        schemas
            .check(&args.op, String::new, &input)
            .map_err(|e| anyhow::anyhow!("--input: {e}"))?;
    }
    let job = store
        .create_job(
            crate::model::DEFAULT_TENANT,
            NewJob {
                plugin: name.clone(),
                operation: args.op.clone(),
                name: Some(format!("faena plugin run {name}")),
                options: JobOptions {
                    max_attempts: args.attempts.max(1),
                    backoff_ms: 0,
                    ..Default::default()
                },
                input: None,
                start: true,
                items: vec![NewItem {
                    input,
                    reference: None,
                }],
            },
            version,
        )
        .await?;
    let item_id = format!("{}-0", job.id);
    println!("running {name} {} · item {item_id}", args.op);
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(rt.clone())),
        SchedulerConfig {
            concurrency: 1,
            ..Default::default()
        },
        stop.clone(),
    ));
    let (mut steps_seen, mut logs_seen) = (0, 0);
    let item = loop {
        let item = store.item(&item_id)?;
        for s in item.steps.iter().skip(steps_seen) {
            println!(
                "  step {} (attempt {}){}",
                s.name,
                s.attempt,
                s.state
                    .as_deref()
                    .map(|st| format!(": {st}"))
                    .unwrap_or_default()
            );
        }
        steps_seen = item.steps.len();
        let logs = store.item_logs(&item_id)?;
        for l in logs.iter().skip(logs_seen) {
            println!(
                "  {:<5} {}",
                l["level"].as_str().unwrap_or(""),
                l["message"].as_str().unwrap_or("")
            );
        }
        logs_seen = logs.len();
        if store.job(&job.id)?.status == JobStatus::Completed {
            break item;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    let _ = dispatcher.await;
    if let Some(files) = rt.artifacts() {
        for a in files.for_item(&item_id)? {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            let path = args.out.join(format!("{}-{}", a.id, a.name));
            let data = files.read(&a).await?;
            std::fs::write(&path, data)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("  file  {}", path.display());
        }
    }
    rt.stop_browser().await;
    store.close().await;
    match (item.status, item.error) {
        (ItemStatus::Succeeded, _) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&item.result.unwrap_or_default())?
            );
            Ok(())
        }
        (status, Some(e)) => bail!(
            "the item ended {status} after {} attempt(s): {} error{}: {}",
            item.attempt,
            serde_json::to_value(e.kind)?.as_str().unwrap_or(""),
            e.code.map(|c| format!(" [{c}]")).unwrap_or_default(),
            e.message
        ),
        (status, None) => bail!("the item ended {status}"),
    }
}

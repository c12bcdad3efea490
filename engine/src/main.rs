//! The `faena` binary: configuration, wiring and signals. Everything else is the library.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use faena::api::{self, AppState};
use faena::cli::{Cli, Command, LogFormat, ServeArgs};
use faena::clock::Clock;
use faena::config::{Config, Overrides};
use faena::runtime::WasmExecutor;
use faena::scheduler::{self, SchedulerConfig};
use faena::store::Store;

// sled copies and frees node buffers on every write; glibc's allocator spent a third of
// the store's time there (perf), mimalloc makes the durable path ~1.4× faster.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAENA_LOG")
        .unwrap_or_else(|_| "info,chromiumoxide=off,cranelift=warn,wasmtime=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    faena::no_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Jobs { remote, command } => faena::cli::run_jobs(&remote.client(), command)
            .await
            .map_err(Into::into),
        Command::Keys { remote, command } => faena::cli::run_keys(&remote.client(), command)
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(
        args.config.as_deref(),
        Overrides {
            data_dir: args.data_dir,
            bind: args.bind,
            port: args.port,
            concurrency: args.concurrency,
            chromium: args.chromium,
            cdp_url: args.cdp_url,
            no_browser: args.no_browser,
        },
    )?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    // Absolute from here on: the compile cache and Chromium's profile need it.
    let config = Config {
        data_dir: std::fs::canonicalize(&config.data_dir)?,
        ..config
    };
    let store = Store::open(&config.data_dir.join("store"), Clock::new())
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    for (name, plugin) in &config.plugins {
        store.set_plugin_limit(name, plugin.concurrency).await;
    }
    let shutdown = CancellationToken::new();
    let runtime = faena::runtime::start(&config, &store).await?;
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(runtime.clone())),
        SchedulerConfig {
            concurrency: config.concurrency,
        },
        shutdown.clone(),
    ));
    let sessions = faena::sessions::Sessions::start(
        store.clone(),
        runtime.clone(),
        faena::sessions::SessionsConfig {
            idle_timeout: config.session_idle_timeout,
        },
    )
    .await?;
    let state = AppState::new(store.clone(), Some(runtime.clone()))?
        .with_sessions(sessions)
        .with_rate_limit(config.rate_limit)
        .with_import_limits(config.import);
    if let Some(path) = state
        .auth
        .keys
        .bootstrap(&config.data_dir, store.clock().now_ms())?
    {
        warn!(
            path = %path.display(),
            "created the first admin key (tenant `default`); it is in {}: send it as `Authorization: Bearer <key>` and create others with POST /api/v1/keys",
            path.display()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    info!(%addr, data_dir = %config.data_dir.display(), "faena is listening: http://{addr}/docs for the API");
    // Requests and feed clients on threads of their own: however many there are, the
    // engine's tasks do not wait behind them.
    let server = api::ApiServer::start(listener, state, config.api_threads, shutdown.clone())
        .context("cannot start the HTTP server")?;
    tokio::select! {
        _ = signal() => info!("shutting down"),
        why = store.failed() => error!(%why, "storage failed; shutting down"),
    }
    shutdown.cancel();
    let _ = dispatcher.await;
    server.wait().await.context("the HTTP server failed")?;
    drop(runtime);
    Ok(())
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

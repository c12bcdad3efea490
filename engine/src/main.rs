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
use faena::store::{Store, StoreOptions};

// sled copies and frees node buffers on every write; glibc's allocator spent a third of
// the store's time there (perf), mimalloc makes the durable path ~1.4× faster.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// `cargo build --release --features dhat-heap`: a heap profile of the run, written to
// dhat-heap.json when the process ends (see docs/benchmarks.md for how to read it).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Start-up's memory given back as it is freed. mimalloc keeps freed pages for a
/// while for reuse (`purge_delay`), and an idle engine never reaches the point where it
/// would return them: start-up (compiling and describing plugins, building the API's
/// documents) frees much it never reuses. So pages are returned at once until the
/// engine is up, then the delay the store's write path is faster with comes back.
mod start_up_memory {
    /// mimalloc's `mi_option_purge_delay` (`mi_option_e`, the same in its v2 and v3);
    /// the crate does not name it, but names the option after it.
    #[cfg(not(feature = "dhat-heap"))]
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    #[cfg(not(feature = "dhat-heap"))]
    const _: () = assert!(PURGE_DELAY + 1 == libmimalloc_sys::mi_option_use_numa_nodes);

    pub struct Returning(#[allow(dead_code)] std::os::raw::c_long);

    #[cfg(not(feature = "dhat-heap"))]
    #[allow(unsafe_code)]
    pub fn begin() -> Returning {
        // SAFETY: reading and setting an option takes no pointers. Other threads may be
        // allocating: mimalloc reads an option as a plain word on each purge, as it does
        // for options it sets itself, so they see the old or the new delay.
        unsafe {
            let delay = libmimalloc_sys::mi_option_get(PURGE_DELAY);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
            Returning(delay)
        }
    }

    #[cfg(not(feature = "dhat-heap"))]
    #[allow(unsafe_code)]
    pub fn end(r: Returning) {
        // SAFETY: as above; `mi_collect` only walks mimalloc's own heaps.
        unsafe {
            libmimalloc_sys::mi_collect(true);
            libmimalloc_sys::mi_option_set(PURGE_DELAY, r.0);
        }
    }

    #[cfg(feature = "dhat-heap")]
    pub fn begin() -> Returning {
        Returning(0)
    }

    #[cfg(feature = "dhat-heap")]
    pub fn end(_: Returning) {}
}

fn init_tracing(format: LogFormat, quiet: bool) {
    // `faena plugin run` prints the item itself: only problems go to the log.
    let default = if quiet {
        "warn,chromiumoxide=off,cranelift=warn,wasmtime=warn"
    } else {
        "info,chromiumoxide=off,cranelift=warn,wasmtime=warn"
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FAENA_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { faena::no_library_backtraces() };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts")
        .block_on(run())
}

async fn run() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    faena::no_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing(
        cli.log_format,
        matches!(cli.command, Command::Plugin { .. }),
    );
    let result = match cli.command {
        Command::Serve(args) => serve(args, cli.log_format).await,
        Command::Worker(args) => faena::worker::run(args.options(), signal()).await,
        Command::Jobs { remote, command } => faena::cli::run_jobs(&remote.client(), command)
            .await
            .map_err(Into::into),
        Command::Schedules { remote, command } => {
            faena::cli::run_schedules(&remote.client(), command)
                .await
                .map_err(Into::into)
        }
        Command::Keys { remote, command } => faena::cli::run_keys(&remote.client(), command)
            .await
            .map_err(Into::into),
        Command::Plugin { command } => faena::cli::run_plugin(command).await,
        Command::Webhooks { remote, command } => {
            faena::cli::run_webhooks(&remote.client(), command)
                .await
                .map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let returning = start_up_memory::begin();
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
    let open_files = faena::raise_open_files_limit();
    let feed_cap = config.feed_limits.total as u64;
    match open_files {
        // Room for the feed's connections plus requests, the store and Chromium's pipes.
        Some(limit) if limit < feed_cap + 256 => warn!(
            open_files = limit,
            feed_connections = feed_cap,
            "the open-files limit is below [api] feed_connections plus what the engine \
             itself needs: past it no connection is accepted; raise `ulimit -n` (or \
             LimitNOFILE=) or lower feed_connections"
        ),
        Some(limit) => info!(open_files = limit, "open-files limit"),
        None => {}
    }
    // Everything this process creates (store, keys, artifacts, profiles) is its user's only.
    faena::secrets::private_umask();
    let narrowed = faena::secrets::private_dir(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (or make it private)",
            config.data_dir.display()
        )
    })?;
    if narrowed > 0 {
        warn!(
            data_dir = %config.data_dir.display(),
            entries = narrowed,
            "the data directory was open to other users; took their access away (0700 directories, 0600 files)"
        );
    }
    // Absolute from here on: the compile cache and Chromium's profile need it.
    let config = Config {
        data_dir: std::fs::canonicalize(&config.data_dir)?,
        ..config
    };
    let key = faena::secrets::SecretKey::load(&config.data_dir)?;
    if let faena::secrets::KeySource::Created(path) = &key.source {
        warn!(
            path = %path.display(),
            "created the key secrets are encrypted with; back it up (without it the stored secrets are lost), or set {} instead",
            faena::secrets::KEY_ENV
        );
    }
    let store = Store::open_with(
        &config.data_dir.join("store"),
        Clock::new(),
        StoreOptions {
            space: config.space,
            key: Some(key),
            idempotency_keep: config.idempotency_keep,
        },
    )
    .await
    .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    for (name, plugin) in &config.plugins {
        store.set_plugin_limit(name, plugin.concurrency).await;
    }
    for (name, tenant) in &config.tenants {
        store.set_tenant_limit(name, tenant.concurrency).await;
    }
    // Two stops: the dispatcher's first (it drains), the HTTP server's after it, so
    // that clients see the running items finish.
    let stop_claiming = CancellationToken::new();
    let shutdown = CancellationToken::new();
    // Plugins seen for the first time are compiled in a child process of this binary,
    // so that a first start does not leave the compiler's code and memory in the engine.
    let describe = match std::env::current_exe() {
        Ok(exe) => faena::runtime::Describe::Child {
            exe,
            json_logs: matches!(log_format, LogFormat::Json),
        },
        Err(_) => faena::runtime::Describe::Here,
    };
    let runtime = faena::runtime::start(&config, &store, describe).await?;
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
        .with_feed_limits(config.feed_limits)
        .with_cors_origins(config.cors_origins.clone())
        .map_err(anyhow::Error::msg)?
        .with_import_limits(config.import)
        .with_webhooks(Arc::new(config.webhooks.clone()));
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
    // Claims start once everything that can fail at start-up has not: an item claimed
    // and then abandoned by a failed start would cost an attempt.
    let mut dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(runtime.clone())),
        SchedulerConfig {
            concurrency: config.concurrency,
            grace: config.shutdown_grace,
        },
        stop_claiming.clone(),
    ));
    // Schedules fire from here on; they stop with the claims (a run created during
    // the drain would only wait for the next start).
    let schedules = tokio::spawn(faena::schedules::run(
        state.schedules.clone(),
        stop_claiming.clone(),
    ));
    // Webhooks follow the event log on their own tasks: a slow receiver holds up only
    // its own subscription, never the writer or the dispatcher.
    let webhooks = tokio::spawn(faena::webhooks::run(
        store.clone(),
        Arc::new(config.webhooks.clone()),
        shutdown.clone(),
    ));
    info!(%addr, data_dir = %config.data_dir.display(), "faena is listening: http://{addr}/docs for the API");
    // Requests and feed clients on threads of their own: however many there are, the
    // engine's tasks do not wait behind them.
    let server = api::ApiServer::start(listener, state, config.api_threads, shutdown.clone())
        .context("cannot start the HTTP server")?;
    start_up_memory::end(returning);
    let failure = tokio::select! {
        _ = signal() => {
            info!(grace_secs = config.shutdown_grace.as_secs(), "shutting down: running items may finish");
            None
        }
        why = store.failed() => Some(why),
        end = &mut dispatcher => Some(match end {
            Err(e) if e.is_panic() => "the dispatcher panicked".to_owned(),
            _ => "the dispatcher stopped".to_owned(),
        }),
    };
    if let Some(why) = &failure {
        // Not half-alive: /health answers 503 until the process is gone, and the exit
        // status tells a supervisor to restart it.
        error!(%why, "the engine cannot go on; stopping");
        store.shared().set_fatal(why.clone());
    }
    store.shared().set_draining();
    stop_claiming.cancel();
    let _ = schedules.await;
    if failure.is_none() && !dispatcher.is_finished() {
        tokio::select! {
            _ = &mut dispatcher => {}
            _ = signal() => warn!("second signal: stopping without waiting for running items"),
        }
    }
    // A failure during the drain is a failure too: the exit status says so.
    let failure = failure.or_else(|| store.shared().fatal());
    shutdown.cancel();
    let served = server.wait().await.context("the HTTP server failed");
    let _ = webhooks.await;
    // Sessions and the API may still hold the runtime: the browser goes explicitly,
    // so that its profile goes too.
    runtime.stop_browser().await;
    served?;
    drop(runtime);
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
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

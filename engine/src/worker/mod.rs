//! `faena worker`: runs plugins for an engine it reaches over HTTP(S). It is the
//! engine's own dispatcher ([`crate::scheduler::run_on`]) on a [`RemoteQueue`]: items
//! are claimed with a long poll under leases named `worker:NAME`, heartbeats, steps,
//! logs, artifacts and outcomes go back to the engine, fenced by the lease token. The
//! plugins are the engine's components, fetched by name and version and checked
//! against their SHA-256; grants and settings come from the engine's configuration,
//! secrets with each claim (in memory only).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod sessions;

use crate::api::{WorkerAssignment, WorkerClaimResponse, WorkerPlugin};
use crate::artifacts::Artifact;
use crate::cli::client::without_nulls;
use crate::clock::Clock;
use crate::config::PluginConfig;
use crate::model::Item;
use crate::runtime::browser::ChromiumSettings;
use crate::runtime::{Runtime, RuntimeOptions, Source, WasmExecutor};
use crate::scheduler::queue::GivenSecrets;
use crate::scheduler::{Executor, Queue, RunContext, SchedulerConfig};
use crate::store::feed::Follower;
use crate::store::{Claimed, ClaimedItem, Outcome, Result, StoreError};

/// How long one claim waits at the engine for an item.
const LONG_POLL_MS: u64 = 20_000;

/// How long a report that could not reach the engine is tried again before it is
/// given up (the lease will have expired by then, and the item runs again).
const REPORT_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub server: String,
    pub key: String,
    pub name: String,
    pub labels: Vec<String>,
    /// Plugins to run; empty: all the engine has.
    pub plugins: Vec<String>,
    pub concurrency: usize,
    pub chromium: Option<PathBuf>,
    /// Browsers elsewhere to use instead of launching one.
    pub endpoints: Vec<crate::runtime::browser::Endpoint>,
    pub no_browser: bool,
    pub data_dir: PathBuf,
    pub grace: Duration,
}

/// The engine, over HTTP, as the dispatcher's queue.
pub struct RemoteQueue {
    base: String,
    name: String,
    /// Sent with every claim: items of labelled jobs come only to workers with them.
    labels: Vec<String>,
    owner: String,
    http: reqwest::Client,
    /// The engine's clock as seen from here (leases are in its time), set again from
    /// each of its answers.
    clock: Mutex<Clock>,
    /// The secrets that came with the latest claim of each plugin.
    secrets: Mutex<HashMap<String, Arc<BTreeMap<String, String>>>>,
    /// What the last claim found, for [`Queue::woken`].
    last_claim: AtomicU8,
}

const IDLE: u8 = 0;
/// The claim succeeded: claim again for the slots still free (the claim itself waits).
const AGAIN: u8 = 1;
/// The engine could not be reached: try again in a moment.
const FAILED: u8 = 2;

impl RemoteQueue {
    pub fn new(
        base: &str,
        key: &str,
        name: &str,
        labels: &[String],
    ) -> anyhow::Result<RemoteQueue> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("--key is not a valid header value")?,
        );
        Ok(RemoteQueue {
            base: base.trim_end_matches('/').to_owned(),
            name: name.to_owned(),
            labels: labels.to_vec(),
            owner: format!("worker:{name}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            clock: Mutex::new(Clock::new()),
            secrets: Mutex::default(),
            last_claim: AtomicU8::new(IDLE),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Send a request and read its JSON answer; the engine's refusals become the
    /// store errors the dispatcher already knows (409: the lease is stale).
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        item: Option<(&str, u64)>,
    ) -> Result<T> {
        let resp = self.answer(req, item).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return serde_json::from_value(Value::Null).map_err(StoreError::from);
        }
        resp.json()
            .await
            .map_err(|e| StoreError::Storage(format!("the engine's answer: {e}")))
    }

    /// Send a request; a success comes back as it is, a refusal as a store error.
    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        item: Option<(&str, u64)>,
    ) -> Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .map_err(|e| StoreError::Storage(format!("the engine at {}: {e}", self.base)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let message = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        Err(match (status.as_u16(), item) {
            (409, Some((item, token))) => StoreError::StaleLease {
                item: item.to_owned(),
                token,
                reason: message,
            },
            (404, Some((item, _))) => StoreError::not_found("item", item),
            (409, None) => StoreError::Conflict(message),
            (400 | 422, _) => StoreError::Invalid(message),
            (401 | 403, _) => StoreError::Invalid(format!("{status}: {message}")),
            _ => StoreError::Storage(format!("the engine answered {status}: {message}")),
        })
    }

    /// [`Self::send`] for a report about an item, tried again while the engine is out
    /// of reach: what the run did must not be lost to a network blip.
    async fn report<T: DeserializeOwned>(
        &self,
        item: &str,
        token: u64,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T> {
        self.retried(item, Some((item, token)), make).await
    }

    /// [`Self::send`], tried again with backoff for up to [`REPORT_RETRY`] while the
    /// engine is out of reach; `what` names the report in the log.
    async fn retried<T: DeserializeOwned>(
        &self,
        what: &str,
        item: Option<(&str, u64)>,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let until = std::time::Instant::now() + REPORT_RETRY;
        let mut wait = Duration::from_millis(100);
        loop {
            match self.send(make(), item).await {
                Err(StoreError::Storage(e)) if std::time::Instant::now() < until => {
                    warn!(what, error = %e, "report failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                r => return r,
            }
        }
    }

    /// Set the clock from the engine's `now` in an answer to a request sent at `sent`:
    /// read as late as it can be (plus the round trip), so that a lease is thought to
    /// run out no later than it does at the engine.
    fn sync_clock(&self, now: i64, sent: std::time::Instant) {
        let rtt = sent.elapsed().as_millis() as i64;
        *self.clock.lock().expect("clock lock") = Clock::starting_at(now + rtt);
    }

    pub async fn hello(
        &self,
        labels: &[String],
        plugins: &[String],
        concurrency: usize,
        running: u32,
    ) -> Result<WorkerAssignment> {
        let sent = std::time::Instant::now();
        let a: WorkerAssignment = self
            .send(
                self.http
                    .post(self.url(&format!("/workers/{}/heartbeat", self.name)))
                    .json(&json!({
                        "labels": labels,
                        "plugins": plugins,
                        "version": env!("CARGO_PKG_VERSION"),
                        "concurrency": concurrency,
                        "running": running,
                    })),
                None,
            )
            .await?;
        self.sync_clock(a.now, sent);
        Ok(a)
    }

    /// A plugin version's component, checked against its SHA-256 (`ETag`).
    pub async fn component(&self, name: &str, version: &str) -> anyhow::Result<(Vec<u8>, String)> {
        let resp = self
            .http
            .get(self.url(&format!("/plugins/{name}/versions/{version}/component")))
            .send()
            .await?
            .error_for_status()?;
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default();
        let bytes = resp.bytes().await?.to_vec();
        let sha = crate::runtime::sha256_hex(&bytes);
        anyhow::ensure!(
            sha == etag,
            "plugin {name} {version}: the component's SHA-256 is {sha}, the engine says {etag}"
        );
        Ok((bytes, sha))
    }
}

impl Queue for RemoteQueue {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn clock(&self) -> Clock {
        *self.clock.lock().expect("clock lock")
    }

    fn woken(&self) -> BoxFuture<'_, ()> {
        // Looked at when the dispatcher waits, that is after its claim of this round.
        Box::pin(async move {
            match self.last_claim.swap(IDLE, Ordering::AcqRel) {
                AGAIN => {}
                FAILED => tokio::time::sleep(Duration::from_secs(1)).await,
                _ => std::future::pending().await,
            }
        })
    }

    /// The slots free now, for one long-polled claim of that many items.
    fn claim_slots(
        &self,
        plugins: Vec<String>,
        slots: Arc<Semaphore>,
    ) -> BoxFuture<'_, Result<(Claimed, OwnedSemaphorePermit)>> {
        let max = slots.available_permits();
        let places = slots.try_acquire_many_owned(max as u32);
        Box::pin(async move {
            let places = places.map_err(|_| StoreError::Closed)?;
            let sent = std::time::Instant::now();
            let answer: Result<WorkerClaimResponse> = self
                .send(
                    self.http
                        .post(self.url(&format!("/workers/{}/claim", self.name)))
                        .json(&json!({
                            "plugins": plugins,
                            "labels": self.labels,
                            "max": max.clamp(1, 100),
                            "wait_ms": LONG_POLL_MS,
                        })),
                    None,
                )
                .await;
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    self.last_claim.store(FAILED, Ordering::Release);
                    return Err(e);
                }
            };
            self.last_claim.store(AGAIN, Ordering::Release);
            self.sync_clock(answer.now, sent);
            let mut given = self.secrets.lock().expect("secrets lock");
            for (plugin, values) in answer.secrets {
                given.insert(plugin, Arc::new(values));
            }
            let claimed = Claimed {
                items: answer.items,
                next_due: answer.next_due,
            };
            Ok((claimed, places))
        })
    }

    fn secrets(&self, task: &ClaimedItem) -> GivenSecrets {
        Some(
            self.secrets
                .lock()
                .expect("secrets lock")
                .get(&task.item.plugin)
                .cloned()
                .unwrap_or_default(),
        )
    }

    fn heartbeat<'a>(&'a self, item: &'a str, token: u64) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            self.send::<crate::model::Lease>(
                self.http
                    .post(self.url(&format!("/items/{item}/heartbeat")))
                    .json(&json!({"token": token})),
                Some((item, token)),
            )
            .await
            .map(|l| l.expires_at)
        })
    }

    fn step<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        name: String,
        state: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = json!({"token": token, "name": name, "state": state});
            self.report::<Item>(item, token, || {
                self.http
                    .post(self.url(&format!("/items/{item}/step")))
                    .json(&without_nulls(body.clone()))
            })
            .await
            .map(drop)
        })
    }

    fn keep_state<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        state: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = bytes::Bytes::from(state.unwrap_or_default());
            self.report::<()>(item, token, || {
                self.http
                    .put(self.url(&format!("/items/{item}/state")))
                    .query(&[("token", token)])
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone())
            })
            .await
        })
    }

    fn kept_state<'a>(
        &'a self,
        item: &'a str,
        token: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let req = self
                .http
                .get(self.url(&format!("/items/{item}/state")))
                .query(&[("token", token)]);
            let resp = self.answer(req, Some((item, token))).await?;
            if resp.status() == reqwest::StatusCode::NO_CONTENT {
                return Ok(None);
            }
            let data = resp
                .bytes()
                .await
                .map_err(|e| StoreError::Storage(format!("the engine's answer: {e}")))?;
            Ok(Some(data.to_vec()))
        })
    }

    fn progress<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        data: Value,
        resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = json!({"token": token, "data": data, "resource": resource});
            self.send::<()>(
                self.http
                    .post(self.url(&format!("/items/{item}/progress")))
                    .json(&without_nulls(body.clone())),
                Some((item, token)),
            )
            .await
        })
    }

    fn log<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        level: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = json!({"token": token, "level": level, "message": message});
            self.send::<()>(
                self.http
                    .post(self.url(&format!("/items/{item}/log")))
                    .json(&without_nulls(body.clone())),
                Some((item, token)),
            )
            .await
        })
    }

    fn save_artifact<'a>(
        &'a self,
        token: u64,
        meta: Artifact,
        data: Vec<u8>,
    ) -> BoxFuture<'a, Result<Artifact>> {
        Box::pin(async move {
            let item = meta.item_id.clone().unwrap_or_default();
            let data = bytes::Bytes::from(data);
            self.report(&item, token, || {
                self.http
                    .post(self.url(&format!("/items/{item}/artifacts")))
                    .query(&[
                        ("token", token.to_string()),
                        ("name", meta.name.clone()),
                        ("content_type", meta.content_type.clone()),
                    ])
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await
        })
    }

    fn complete<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        outcome: Outcome,
        _resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = match outcome {
                Outcome::Succeeded(result) => {
                    json!({"token": token, "status": "succeeded", "result": result})
                }
                Outcome::Failed(error) => {
                    json!({"token": token, "status": "failed", "error": error})
                }
            };
            let done: Item = self
                .report(item, token, || {
                    self.http
                        .post(self.url(&format!("/items/{item}/complete")))
                        .json(&without_nulls(body.clone()))
                })
                .await?;
            tracing::debug!(item = %done.id, status = %done.status, "item finished");
            Ok(())
        })
    }

    fn release<'a>(&'a self, item: &'a str, token: u64, why: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let body = json!({"token": token, "reason": why});
            self.send::<Item>(
                self.http
                    .post(self.url(&format!("/items/{item}/release")))
                    .json(&without_nulls(body.clone())),
                Some((item, token)),
            )
            .await
            .map(drop)
        })
    }

    fn follow(&self) -> Option<Follower> {
        None
    }

    fn set_draining(&self) {}
}

/// The runtime's executor, which first fetches a plugin version it has not seen (an
/// item of a job created before the last upgrade, a plugin installed since), and
/// counts the items running for the heartbeat.
struct WorkerExecutor {
    inner: WasmExecutor,
    queue: Arc<RemoteQueue>,
    running: Arc<AtomicU32>,
}

impl Executor for WorkerExecutor {
    fn plugins(&self) -> Vec<String> {
        self.inner.plugins()
    }

    fn run(&self, task: ClaimedItem, ctx: RunContext) -> BoxFuture<'static, Outcome> {
        let (rt, queue, running) = (
            self.inner.0.clone(),
            self.queue.clone(),
            self.running.clone(),
        );
        Box::pin(async move {
            running.fetch_add(1, Ordering::Relaxed);
            let plugin = task.item.plugin.clone();
            let version = task.plugin_version.clone();
            if let Some(v) = &version
                && rt.registry().get(&plugin, Some(v)).is_none()
                && let Err(e) = fetch(&rt, &queue, &plugin, v, false).await
            {
                running.fetch_sub(1, Ordering::Relaxed);
                return Outcome::Failed(crate::model::ItemError::application(format!(
                    "worker: {e:#}"
                )));
            }
            let out = WasmExecutor(rt.clone()).run(task, ctx).await;
            running.fetch_sub(1, Ordering::Relaxed);
            out
        })
    }
}

/// Fetch and load a plugin version from the engine; `current` for the version new
/// jobs get, not for an older one an item or a session names.
async fn fetch(
    rt: &Runtime,
    queue: &RemoteQueue,
    name: &str,
    version: &str,
    current: bool,
) -> anyhow::Result<()> {
    let (bytes, sha) = queue.component(name, version).await?;
    let source = Source::Bytes(bytes.clone().into());
    let meta = if current {
        rt.load(&bytes, source).await
    } else {
        rt.load_beside(&bytes, source).await
    }
    .with_context(|| format!("plugin {name} {version}"))?;
    info!(plugin = %meta.name, version = %meta.version, sha256 = %sha, "plugin fetched from the engine");
    Ok(())
}

/// The configuration the engine grants a plugin, as the worker's runtime reads it.
fn plugin_config(p: &WorkerPlugin) -> PluginConfig {
    PluginConfig {
        browser: Some(p.grants.browser),
        http_hosts: Some(p.grants.http_hosts.clone()),
        secrets: Some(p.grants.secrets.clone()),
        memory_mib: Some(p.grants.memory_mib),
        deadline_secs: Some(p.grants.deadline_secs),
        concurrency: None,
        settings: Some(p.settings.clone()),
    }
}

/// Run as a worker until SIGTERM/SIGINT (then drain: running items may finish within
/// the grace period, the rest go back to the queue).
pub async fn run(
    opts: WorkerOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::secrets::private_umask();
    crate::secrets::private_dir(&opts.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            opts.data_dir.display()
        )
    })?;
    let data_dir = std::fs::canonicalize(&opts.data_dir)?;
    crate::model::check_labels("--labels", &opts.labels).map_err(anyhow::Error::msg)?;
    let queue = Arc::new(RemoteQueue::new(
        &opts.server,
        &opts.key,
        &opts.name,
        &opts.labels,
    )?);
    // The first report: which plugins, with which grants. Retried until the engine
    // answers (a worker may start before its engine).
    let assignment = loop {
        match queue
            .hello(&opts.labels, &opts.plugins, opts.concurrency, 0)
            .await
        {
            Ok(a) => break a,
            Err(e @ (StoreError::Invalid(_) | StoreError::Conflict(_))) => {
                anyhow::bail!("the engine refused this worker: {e}")
            }
            Err(e) => {
                warn!(error = %e, "cannot reach the engine yet; trying again");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let chromium = (!opts.no_browser).then(|| ChromiumSettings {
        executable: opts
            .chromium
            .clone()
            .unwrap_or_else(|| ChromiumSettings::default().executable),
        endpoints: opts.endpoints.clone(),
        profile_dir: data_dir.join("chromium"),
        args: Vec::new(),
        headless: true,
    });
    let rt = Runtime::new(
        RuntimeOptions {
            cache_dir: data_dir.join("cache"),
            plugin_dir: data_dir.join("plugins"),
            plugins: assignment
                .plugins
                .iter()
                .map(|p| (p.name.clone(), plugin_config(p)))
                .collect(),
            chromium,
        },
        None,
        None,
    )?;
    for p in &assignment.plugins {
        fetch(&rt, &queue, &p.name, &p.version, true).await?;
    }
    let running = Arc::new(AtomicU32::new(0));
    let shutdown = CancellationToken::new();
    let reporter = {
        let (queue, rt, running, opts, shutdown) = (
            queue.clone(),
            rt.clone(),
            running.clone(),
            opts.clone(),
            shutdown.clone(),
        );
        let every = Duration::from_millis(assignment.heartbeat_ms.max(500));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
                match queue
                    .hello(
                        &opts.labels,
                        &opts.plugins,
                        opts.concurrency,
                        running.load(Ordering::Relaxed),
                    )
                    .await
                {
                    // A plugin installed or upgraded since: load its current version.
                    Ok(a) => {
                        for p in a.plugins {
                            if rt.registry().get(&p.name, Some(&p.version)).is_none()
                                && let Err(e) = fetch(&rt, &queue, &p.name, &p.version, true).await
                            {
                                warn!(plugin = %p.name, error = %format!("{e:#}"), "cannot load a plugin");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "heartbeat to the engine failed"),
                }
            }
        })
    };
    info!(
        server = %opts.server,
        name = %opts.name,
        plugins = ?rt.registry().names(),
        concurrency = opts.concurrency,
        "worker started"
    );
    // Sessions need a browser: a worker without one leaves them to others.
    let sessions = (!opts.no_browser).then(|| {
        tokio::spawn(sessions::serve(
            rt.clone(),
            queue.clone(),
            opts.plugins.clone(),
            shutdown.clone(),
        ))
    });
    let dispatcher = tokio::spawn(crate::scheduler::run_on(
        queue.clone(),
        Arc::new(WorkerExecutor {
            inner: WasmExecutor(rt.clone()),
            queue: queue.clone(),
            running,
        }),
        SchedulerConfig {
            concurrency: opts.concurrency.max(1),
            grace: opts.grace,
        },
        shutdown.clone(),
    ));
    stop.await;
    info!("worker stopping: running items may finish");
    shutdown.cancel();
    let _ = dispatcher.await;
    let _ = reporter.await;
    if let Some(s) = sessions {
        let _ = s.await;
    }
    rt.stop_browser().await;
    Ok(())
}

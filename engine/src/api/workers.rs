//! External workers: claim items of a plugin's queue under a lease, renew it, record
//! checkpoints and complete. Every call after the claim is fenced by the lease token:
//! a stale one gets 409 and changes nothing.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use crate::model::{Item, ItemError, Lease};
use crate::store::{ClaimRequest, ClaimedItem, ItemKey, Outcome};

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ClaimBody {
    /// The worker's name; it owns the lease.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub worker: String,
    /// Claim up to this many items (default 1, at most 100).
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub max: Option<u32>,
    /// Lease length in milliseconds (default: the job's `lease_ms`).
    #[oai(validator(minimum(value = "100"), maximum(value = "3600000")))]
    pub lease_ms: Option<u64>,
    /// Claim this specific item; 409 if it is not queued.
    pub item_id: Option<String>,
    /// The worker's labels: items of jobs with `labels` go only to workers with all
    /// of them.
    #[oai(default, validator(max_items = 16))]
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClaimResponse {
    /// Empty when nothing is ready.
    pub items: Vec<ClaimedItem>,
    /// When the next item waiting for a retry becomes ready (ms since the epoch).
    pub next_due: Option<i64>,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct HeartbeatBody {
    pub token: u64,
    /// New lease length from now, in milliseconds (default: the job's `lease_ms`).
    #[oai(validator(minimum(value = "100"), maximum(value = "3600000")))]
    pub extend_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CompleteStatus {
    Succeeded,
    Failed,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CompleteBody {
    pub token: u64,
    pub status: CompleteStatus,
    /// The result, with `succeeded`.
    pub result: Option<serde_json::Value>,
    /// The error, required with `failed`.
    pub error: Option<ItemError>,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct StepBody {
    pub token: u64,
    #[oai(validator(min_length = 1, max_length = 128))]
    pub name: String,
    pub state: Option<String>,
}

fn check_lease(field: &str, ms: Option<u64>) -> ApiResult<()> {
    let range = crate::model::limits::LEASE_MS;
    match ms {
        Some(ms) if !range.contains(&ms) => Err(ApiError::invalid(format!(
            "{field}: {ms} is not between {} and {}",
            range.start(),
            range.end()
        ))),
        _ => Ok(()),
    }
}

pub struct WorkersApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Workers")]
impl WorkersApi {
    /// Claim ready items of a plugin. Returns an empty list when none is ready.
    #[oai(
        path = "/queues/:plugin/claim",
        method = "post",
        operation_id = "claim_items"
    )]
    async fn claim(
        &self,
        plugin: Path<String>,
        body: JsonBody<ClaimBody>,
    ) -> ApiResult<Json<ClaimResponse>> {
        let b = &body.0;
        if b.worker.is_empty() || b.worker.chars().count() > 128 {
            return Err(ApiError::invalid("worker: must be 1-128 characters"));
        }
        if b.max.is_some_and(|m| !(1..=100).contains(&m)) {
            return Err(ApiError::invalid("max: must be between 1 and 100"));
        }
        check_lease("lease_ms", b.lease_ms)?;
        crate::model::check_labels("labels", &b.labels).map_err(ApiError::invalid)?;
        let item = match &body.0.item_id {
            Some(id) => Some(
                ItemKey::parse(id)
                    .ok_or_else(|| ApiError::not_found(format!("item `{id}` not found")))?,
            ),
            None => None,
        };
        let claimed = self
            .state
            .store
            .claim(ClaimRequest {
                owner: format!("worker:{}", body.0.worker),
                tenant: Some(self.state.tenant()),
                plugins: vec![plugin.0],
                max: body.0.max.unwrap_or(1) as usize,
                lease_ms: body.0.lease_ms,
                labels: b.labels.clone(),
                item,
            })
            .await?;
        Ok(Json(ClaimResponse {
            items: claimed.items,
            next_due: claimed.next_due,
        }))
    }

    /// Renew a lease. 409 when the token is stale: stop working on the item.
    #[oai(
        path = "/items/:id/heartbeat",
        method = "post",
        operation_id = "heartbeat_item"
    )]
    async fn heartbeat(
        &self,
        id: Path<String>,
        body: JsonBody<HeartbeatBody>,
    ) -> ApiResult<Json<Lease>> {
        check_lease("extend_ms", body.0.extend_ms)?;
        self.state.item(&id.0)?;
        Ok(Json(
            self.state
                .store
                .heartbeat(&id.0, body.0.token, body.0.extend_ms)
                .await?,
        ))
    }

    /// Record a checkpoint; a retried item gets its last one back.
    #[oai(path = "/items/:id/step", method = "post", operation_id = "step_item")]
    async fn step(&self, id: Path<String>, body: JsonBody<StepBody>) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let StepBody { token, name, state } = body.0;
        self.state.store.step(&id.0, token, name, state).await?;
        Ok(Json(self.state.item(&id.0)?))
    }

    /// Report the outcome of a run. A failed application error is retried with
    /// backoff; a business error follows the job's failure policy.
    #[oai(
        path = "/items/:id/complete",
        method = "post",
        operation_id = "complete_item"
    )]
    async fn complete(
        &self,
        id: Path<String>,
        body: JsonBody<CompleteBody>,
    ) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let outcome = match (body.0.status, body.0.error) {
            (CompleteStatus::Succeeded, None) => {
                Outcome::Succeeded(body.0.result.unwrap_or(serde_json::Value::Null))
            }
            (CompleteStatus::Succeeded, Some(_)) => {
                return Err(ApiError::invalid(
                    "error: not allowed with status `succeeded`",
                ));
            }
            (CompleteStatus::Failed, Some(e)) => Outcome::Failed(e),
            (CompleteStatus::Failed, None) => {
                return Err(ApiError::invalid("error: required with status `failed`"));
            }
        };
        Ok(Json(
            self.state
                .store
                .complete(&id.0, body.0.token, outcome)
                .await?,
        ))
    }
}

/// The `faena worker` processes that reported to this engine, per tenant.
#[derive(Default)]
pub struct Fleet {
    workers: std::sync::Mutex<std::collections::BTreeMap<(String, String), WorkerInfo>>,
}

/// How often a worker reports; three missed reports and it is shown as gone.
pub const WORKER_HEARTBEAT_MS: u64 = 5_000;

impl Fleet {
    fn seen(&self, tenant: &str, name: &str, now: i64, hello: Option<&WorkerHello>) {
        let mut map = self.workers.lock().expect("fleet lock");
        let w = map
            .entry((tenant.to_owned(), name.to_owned()))
            .or_insert_with(|| WorkerInfo {
                name: name.to_owned(),
                labels: Vec::new(),
                plugins: Vec::new(),
                version: String::new(),
                concurrency: 0,
                running: 0,
                takes_sessions: false,
                sessions: 0,
                last_seen_at: now,
                gone: false,
            });
        w.last_seen_at = now;
        if let Some(h) = hello {
            w.labels = h.labels.clone();
            w.plugins = h.plugins.clone();
            w.version = h.version.clone();
            w.concurrency = h.concurrency;
            w.running = h.running;
        }
    }

    pub fn list(&self, tenant: &str, now: i64) -> Vec<WorkerInfo> {
        let map = self.workers.lock().expect("fleet lock");
        map.iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, w)| WorkerInfo {
                gone: now - w.last_seen_at > 3 * WORKER_HEARTBEAT_MS as i64,
                ..w.clone()
            })
            .collect()
    }
}

/// What a worker says about itself at every heartbeat.
#[derive(Debug, Clone, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct WorkerHello {
    /// Labels jobs can be routed by (e.g. the network it answers from).
    #[oai(default)]
    #[serde(default)]
    pub labels: Vec<String>,
    /// The plugins it runs; empty: every plugin the engine has.
    #[oai(default)]
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Its faena version.
    #[oai(validator(max_length = 64))]
    pub version: String,
    /// Items it runs at once.
    #[oai(validator(maximum(value = "1024")))]
    pub concurrency: u32,
    /// Items it is running now.
    #[oai(validator(maximum(value = "1024")))]
    pub running: u32,
}

/// A worker as the engine last heard from it.
#[derive(Debug, Clone, Object, serde::Serialize, Deserialize)]
pub struct WorkerInfo {
    pub name: String,
    pub labels: Vec<String>,
    pub plugins: Vec<String>,
    pub version: String,
    pub concurrency: u32,
    pub running: u32,
    /// Whether sessions may be placed on it (it has a browser and polls for them).
    #[serde(default)]
    pub takes_sessions: bool,
    /// Sessions it holds.
    #[serde(default)]
    pub sessions: u32,
    /// Milliseconds since the Unix epoch.
    pub last_seen_at: i64,
    /// No report for three heartbeat periods: its leases expire as any other.
    pub gone: bool,
}

#[derive(Debug, Object)]
pub struct WorkerList {
    pub workers: Vec<WorkerInfo>,
}

/// A plugin a worker is to run, with what the engine's configuration grants it.
#[derive(Debug, Clone, Object, serde::Serialize, Deserialize)]
pub struct WorkerPlugin {
    pub name: String,
    /// The version new jobs get; items name theirs when they are claimed.
    pub version: String,
    /// SHA-256 of the component, hex: check what `…/component` sends against it.
    pub sha256: String,
    pub grants: crate::runtime::plugin::GrantsMeta,
    pub settings: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Object, serde::Serialize, Deserialize)]
pub struct WorkerAssignment {
    pub plugins: Vec<WorkerPlugin>,
    /// Report again within this many milliseconds.
    pub heartbeat_ms: u64,
    /// The engine's clock (ms since the Unix epoch): leases are in its time.
    pub now: i64,
}

#[derive(Debug, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct WorkerClaimBody {
    /// Plugins to claim items of.
    #[oai(validator(min_items = 1, max_items = 64))]
    pub plugins: Vec<String>,
    /// The worker's labels: items of jobs with `labels` go only to workers with all
    /// of them.
    #[oai(default, validator(max_items = 16))]
    #[serde(default)]
    pub labels: Vec<String>,
    /// Claim up to this many items.
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub max: u32,
    /// When nothing is ready, wait up to this long for an item (a long poll).
    #[oai(validator(maximum(value = "30000")))]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Object, serde::Serialize, Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct WorkerClaimResponse {
    pub items: Vec<ClaimedItem>,
    pub next_due: Option<i64>,
    /// The engine's clock (ms since the Unix epoch): leases are in its time.
    pub now: i64,
    /// By plugin, the values of the secrets it is granted, for the claimed items' runs
    /// only: keep them in memory.
    pub secrets: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct LogBody {
    pub token: u64,
    #[oai(validator(max_length = 16))]
    pub level: String,
    #[oai(validator(max_length = 65536))]
    pub message: String,
}

#[derive(Debug, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ProgressBody {
    pub token: u64,
    pub data: serde_json::Value,
    /// The pool resource the run holds.
    pub resource: Option<String>,
}

#[derive(Debug, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ReleaseBody {
    pub token: u64,
    #[oai(validator(max_length = 1024))]
    pub reason: String,
}

#[derive(poem_openapi::ApiResponse)]
pub enum Done {
    #[oai(status = 204)]
    NoContent,
}

#[derive(poem_openapi::ApiResponse)]
pub enum KeptState {
    /// The kept state (opaque to clients: the engine's JSON).
    #[oai(status = 200)]
    Ok(poem_openapi::payload::Binary<Vec<u8>>),
    /// Nothing kept.
    #[oai(status = 204)]
    NoContent,
}

pub(super) fn valid_worker_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "name: `{name}` is not 1-64 of letters, digits, `_`, `-`, `.`"
        )))
    }
}

pub struct FleetApi {
    pub state: AppState,
}

impl FleetApi {
    fn now(&self) -> i64 {
        self.state.store.clock().now_ms()
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Workers")]
impl FleetApi {
    /// The `faena worker` processes of this tenant, as last heard from.
    #[oai(path = "/workers", method = "get", operation_id = "list_workers")]
    async fn list(&self) -> ApiResult<Json<WorkerList>> {
        let tenant = self.state.tenant();
        let mut workers = self.state.fleet.list(&tenant, self.now());
        if let Some(sessions) = &self.state.sessions {
            for w in &mut workers {
                if let Some(n) = sessions.held_by(&tenant, &w.name) {
                    w.takes_sessions = true;
                    w.sessions = n as u32;
                }
            }
        }
        Ok(Json(WorkerList { workers }))
    }

    /// A worker reports itself (a worker key only) and learns which plugins to run,
    /// with the grants and settings of the engine's configuration.
    #[oai(
        path = "/workers/:name/heartbeat",
        method = "post",
        operation_id = "worker_heartbeat"
    )]
    async fn heartbeat(
        &self,
        name: Path<String>,
        body: JsonBody<WorkerHello>,
    ) -> ApiResult<Json<WorkerAssignment>> {
        valid_worker_name(&name.0)?;
        let hello = body.0;
        crate::model::check_labels("labels", &hello.labels).map_err(ApiError::invalid)?;
        self.state
            .fleet
            .seen(&self.state.tenant(), &name.0, self.now(), Some(&hello));
        let registry = self.state.plugins()?.registry();
        let plugins = registry
            .names()
            .into_iter()
            .filter(|p| hello.plugins.is_empty() || hello.plugins.contains(p))
            .filter_map(|p| registry.get(&p, None))
            .map(|p| WorkerPlugin {
                name: p.meta.name.clone(),
                version: p.meta.version.clone(),
                sha256: p.sha256.clone(),
                grants: p.meta.grants.clone(),
                settings: p.grants.settings.clone(),
            })
            .collect();
        Ok(Json(WorkerAssignment {
            plugins,
            heartbeat_ms: WORKER_HEARTBEAT_MS,
            now: self.now(),
        }))
    }

    /// Claim ready items of the given plugins for this worker (a worker key only),
    /// waiting up to `wait_ms` for one when none is ready. The leases are the
    /// worker's (`worker:NAME`); the secrets its plugins are granted come along.
    #[oai(
        path = "/workers/:name/claim",
        method = "post",
        operation_id = "worker_claim"
    )]
    async fn claim(
        &self,
        name: Path<String>,
        body: JsonBody<WorkerClaimBody>,
    ) -> ApiResult<Json<WorkerClaimResponse>> {
        valid_worker_name(&name.0)?;
        let b = body.0;
        if b.plugins.is_empty() || b.plugins.len() > 64 {
            return Err(ApiError::invalid("plugins: name 1 to 64 plugins"));
        }
        if !(1..=100).contains(&b.max) {
            return Err(ApiError::invalid("max: must be between 1 and 100"));
        }
        crate::model::check_labels("labels", &b.labels).map_err(ApiError::invalid)?;
        let wait = std::time::Duration::from_millis(b.wait_ms.unwrap_or(0).min(30_000));
        let tenant = self.state.tenant();
        let store = &self.state.store;
        self.state.fleet.seen(&tenant, &name.0, self.now(), None);
        let until = tokio::time::Instant::now() + wait;
        let claimed = loop {
            let woken = store.shared().dispatch.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claimed = store
                .claim(ClaimRequest {
                    owner: format!("worker:{}", name.0),
                    tenant: Some(tenant.clone()),
                    plugins: b.plugins.clone(),
                    max: b.max as usize,
                    lease_ms: None,
                    labels: b.labels.clone(),
                    item: None,
                })
                .await?;
            let now = tokio::time::Instant::now();
            if !claimed.items.is_empty() || now >= until || store.shared().is_draining() {
                break claimed;
            }
            let due = claimed
                .next_due
                .map(|t| store.clock().instant_at(t).min(until))
                .unwrap_or(until);
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(due) => {}
            }
        };
        let mut secrets = std::collections::BTreeMap::new();
        if let Some(rt) = &self.state.runtime {
            for task in &claimed.items {
                let plugin = &task.item.plugin;
                if secrets.contains_key(plugin) {
                    continue;
                }
                let Some(p) = rt.registry().get(plugin, None) else {
                    continue;
                };
                let mut values = std::collections::BTreeMap::new();
                for s in &p.grants.secrets {
                    if let Some(v) = self.state.secrets.get(&tenant, s)? {
                        values.insert(s.clone(), v);
                    }
                }
                secrets.insert(plugin.clone(), values);
            }
        }
        Ok(Json(WorkerClaimResponse {
            items: claimed.items,
            next_due: claimed.next_due,
            now: self.now(),
            secrets,
        }))
    }

    /// A log line of a running item (fenced by its lease token).
    #[oai(path = "/items/:id/log", method = "post", operation_id = "log_item")]
    async fn log(&self, id: Path<String>, body: JsonBody<LogBody>) -> ApiResult<Done> {
        self.state.item(&id.0)?;
        let b = body.0;
        self.state
            .store
            .log(&id.0, b.token, &b.level, &b.message)
            .await?;
        Ok(Done::NoContent)
    }

    /// Progress of a running item (fenced by its lease token).
    #[oai(
        path = "/items/:id/progress",
        method = "post",
        operation_id = "progress_item"
    )]
    async fn progress(&self, id: Path<String>, body: JsonBody<ProgressBody>) -> ApiResult<Done> {
        self.state.item(&id.0)?;
        let b = body.0;
        self.state
            .store
            .progress(&id.0, b.token, b.data, b.resource)
            .await?;
        Ok(Done::NoContent)
    }

    /// Keep a running item's portal state (a plugin's `keep-state`: cookies, local
    /// storage, its HTTP cookie jar) for its next attempt; an empty body forgets it.
    /// Stored encrypted, deleted when the item ends. Worker keys only; fenced by the
    /// lease token.
    #[oai(
        path = "/items/:id/state",
        method = "put",
        operation_id = "keep_item_state"
    )]
    async fn keep_state(
        &self,
        id: Path<String>,
        token: poem_openapi::param::Query<u64>,
        data: poem_openapi::payload::Binary<Vec<u8>>,
    ) -> ApiResult<Done> {
        self.state.item(&id.0)?;
        let state = Some(data.0).filter(|d| !d.is_empty());
        self.state.store.keep_state(&id.0, token.0, state).await?;
        Ok(Done::NoContent)
    }

    /// The portal state earlier attempts of a running item kept (204 when none).
    /// Worker keys only; fenced by the lease token.
    #[oai(
        path = "/items/:id/state",
        method = "get",
        operation_id = "kept_item_state"
    )]
    async fn kept_state(
        &self,
        id: Path<String>,
        token: poem_openapi::param::Query<u64>,
    ) -> ApiResult<KeptState> {
        self.state.leased_item(&id.0, token.0)?;
        Ok(match self.state.store.kept_state(&id.0)? {
            Some(state) => KeptState::Ok(poem_openapi::payload::Binary(state)),
            None => KeptState::NoContent,
        })
    }

    /// Give a running item back to the queue without counting the attempt (the
    /// worker is shutting down).
    #[oai(
        path = "/items/:id/release",
        method = "post",
        operation_id = "release_item"
    )]
    async fn release(
        &self,
        id: Path<String>,
        body: JsonBody<ReleaseBody>,
    ) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let b = body.0;
        Ok(Json(
            self.state.store.release(&id.0, b.token, &b.reason).await?,
        ))
    }
}

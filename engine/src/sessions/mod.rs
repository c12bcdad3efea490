//! Sessions: a long-lived plugin instance with its own browser context, opened by the
//! plugin's login operation and then called, one call at a time, for as long as it
//! is used (a tax portal's inbox, listed and downloaded page by page).
//!
//! One session is active per tenant, plugin and account: opening it again returns
//! the active one. A session closes when asked, when it has been idle for the
//! configured time, when its instance breaks (trap, deadline) or its browser goes
//! away. Its record is kept in sled; a session that was open when the engine stopped
//! is marked `lost` at the next start (a portal login does not survive a restart),
//! with a `session_closed` event saying so.
//!
//! When workers that hold sessions are polling ([`relay`]), a new session is placed on
//! the one holding the fewest, and every call, screenshot and frame of it is relayed
//! to that worker; if the worker goes, its sessions close as `worker_lost`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::artifacts::Artifact;
use crate::clock::wall_ms;
use crate::model::{ItemError, kind};
use crate::runtime::browser::SessionPage;
use crate::runtime::{CallError, Instance, Runtime};
use crate::store::{Store, StoreError};

pub mod relay;
mod screencast;

pub use relay::{Command, CommandKind, Relay, Reply};
pub use screencast::{Frames, screenshot_as};

/// The operation that opens a session, unless the request names another.
pub const LOGIN: &str = "login";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum SessionState {
    /// Logging in.
    Opening,
    /// Logged in and taking calls.
    Open,
    /// Closed by a request, by the idle timeout, or because it broke.
    Closed,
    /// The login failed.
    Failed,
    /// The engine stopped while it was open: the portal session is gone.
    Lost,
}

/// A session as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Session {
    pub id: String,
    pub tenant: String,
    pub plugin: String,
    pub plugin_version: String,
    /// Whose portal login this is (a RUC and user, say); one active session each.
    pub account: String,
    pub state: SessionState,
    /// Operations a call may name.
    pub operations: Vec<String>,
    /// What the login operation returned.
    pub login: Option<Value>,
    /// Calls served, the login included.
    pub calls: u64,
    /// Milliseconds since the Unix epoch.
    pub opened_at: i64,
    pub last_activity: i64,
    pub closed_at: Option<i64>,
    /// `closed`, `idle`, `login_failed`, `broken`, `browser_lost`, `lost`.
    pub close_reason: Option<String>,
    /// The error that closed or failed it.
    pub error: Option<ItemError>,
    /// It closes after this many seconds without a call.
    pub idle_timeout_secs: u64,
    /// The worker that holds it; absent: the engine does.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// What a call returned, and the files it saved.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CallResult {
    pub result: Value,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    /// The plugin's call failed; the session stays open unless `closed`.
    #[error("{}", .error.message)]
    Call { error: ItemError, closed: bool },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub idle_timeout: Duration,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

pub(crate) struct Call {
    pub operation: String,
    pub input: Value,
    pub reply: oneshot::Sender<Result<Value, CallError>>,
}

/// An open session: the channel to the task that owns its instance.
struct Live {
    record: Mutex<Session>,
    calls: mpsc::Sender<Call>,
    /// Calls sent and not answered yet.
    busy: AtomicUsize,
    page: SessionPage,
    frames: Frames,
    /// The worker holding it, if one does.
    worker: Option<String>,
}

type Key = (String, String, String);

struct Inner {
    store: Store,
    runtime: Arc<Runtime>,
    tree: sled::Tree,
    config: SessionsConfig,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The engine's threads: a session's plugin instance runs there, not on the API's
    /// threads that open it.
    engine: tokio::runtime::Handle,
    /// Per tenant + plugin + account: the open lock (two opens of one account wait
    /// for each other) and the active session's id.
    accounts: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<String>>>>>,
    relay: Arc<Relay>,
}

#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl Sessions {
    /// Open the sessions of `store`: mark those the last run left open as lost, and
    /// start closing idle ones.
    pub async fn start(
        store: Store,
        runtime: Arc<Runtime>,
        config: SessionsConfig,
    ) -> Result<Sessions, StoreError> {
        let tree = store.tree("sessions")?;
        let mut lost = Vec::new();
        for kv in tree.iter() {
            let (_, v) = kv?;
            let mut s: Session = serde_json::from_slice(&v)?;
            if matches!(s.state, SessionState::Opening | SessionState::Open) {
                s.state = SessionState::Lost;
                s.closed_at = Some(wall_ms());
                s.close_reason = Some("lost".into());
                lost.push(s);
            }
        }
        for s in &lost {
            tree.insert(s.id.as_bytes(), serde_json::to_vec(s)?)?;
        }
        tree.flush_async().await?;
        for s in lost {
            warn!(session = %s.id, plugin = %s.plugin, account = %s.account, "session lost: the engine restarted while it was open");
            store
                .session_event(
                    &s.tenant,
                    kind::SESSION_CLOSED,
                    &s.id,
                    json!({"plugin": s.plugin, "account": s.account, "reason": "lost",
                           "message": "the engine restarted while the session was open; open it again"}),
                )
                .await?;
        }
        let sessions = Sessions {
            inner: Arc::new(Inner {
                store,
                runtime,
                tree,
                config,
                live: Mutex::default(),
                engine: tokio::runtime::Handle::current(),
                accounts: Mutex::default(),
                relay: Arc::default(),
            }),
        };
        let weak = Arc::downgrade(&sessions.inner);
        let every = (sessions.inner.config.idle_timeout / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let sessions = Sessions { inner };
                sessions.close_idle().await;
                for (tenant, lost) in sessions.inner.relay.sweep() {
                    sessions.worker_gone(&tenant, lost).await;
                }
            }
        });
        Ok(sessions)
    }

    pub fn idle_timeout(&self) -> Duration {
        self.inner.config.idle_timeout
    }

    /// Open a session of `plugin` for `account` by running its login operation, or
    /// return the account's active one. `Ok((session, true))` when newly opened.
    pub async fn open(
        &self,
        tenant: &str,
        plugin: &str,
        account: &str,
        operation: Option<&str>,
        input: Value,
    ) -> Result<(Session, bool), SessionError> {
        if account.is_empty()
            || account.chars().count() > 128
            || account.chars().any(char::is_control)
        {
            return Err(SessionError::Invalid(
                "account: must be 1-128 characters without control characters".into(),
            ));
        }
        let operation = operation.unwrap_or(LOGIN);
        let meta = self
            .inner
            .runtime
            .registry()
            .get(plugin, None)
            .ok_or_else(|| SessionError::Invalid(format!("plugin: `{plugin}` is not installed")))?
            .meta
            .clone();
        let Some(op) = meta.operations.iter().find(|o| o.name == operation) else {
            return Err(SessionError::Invalid(format!(
                "operation: plugin `{plugin}` has no operation `{operation}` to open a session with"
            )));
        };
        if !op.not_granted.is_empty() {
            return Err(SessionError::Invalid(format!(
                "plugin `{plugin}` operation `{operation}` needs {} — grant it under [plugins.{plugin}]",
                op.not_granted.join(", ")
            )));
        }
        let key = (tenant.to_owned(), plugin.to_owned(), account.to_owned());
        let slot = self
            .inner
            .accounts
            .lock()
            .expect("accounts lock")
            .entry(key)
            .or_default()
            .clone();
        let mut active = slot.lock().await;
        if let Some(id) = active.as_ref()
            && let Some(live) = self.live(id)
        {
            let s = live.record.lock().expect("session lock").clone();
            if s.state == SessionState::Open {
                return Ok((s, false));
            }
        }
        let id = ulid::Ulid::new().to_string();
        let page: SessionPage = Arc::default();
        let worker = self.inner.relay.pick(tenant, plugin);
        // Until the session is live here, a dropped request (or a failed open) must not
        // leave it held on the worker.
        let mut placed = worker.as_ref().map(|w| Placed {
            relay: self.inner.relay.clone(),
            tenant: tenant.to_owned(),
            worker: w.clone(),
            id: id.clone(),
            armed: true,
        });
        let (tx, rx) = mpsc::channel(16);
        let frames = match &worker {
            Some(w) => {
                self.open_on_worker(w, tenant, plugin, &meta.version, &id)
                    .await?;
                // A call answers within the plugin's deadline, or the worker is lost.
                let call_timeout = self
                    .inner
                    .runtime
                    .registry()
                    .get(plugin, Some(&meta.version))
                    .map_or(Duration::from_secs(300), |p| p.grants.deadline)
                    + Duration::from_secs(30);
                self.inner.engine.spawn(relay_calls(
                    self.inner.relay.clone(),
                    tenant.to_owned(),
                    w.clone(),
                    id.clone(),
                    call_timeout,
                    rx,
                ));
                Frames::remote(remote_snap(
                    self.inner.relay.clone(),
                    tenant.to_owned(),
                    w.clone(),
                    id.clone(),
                ))
            }
            None => {
                let instance = self
                    .inner
                    .runtime
                    .open_instance(plugin, Some(&meta.version), tenant, &id, page.clone(), None)
                    .await
                    .map_err(SessionError::Invalid)?;
                self.inner.engine.spawn(serve(instance, rx));
                Frames::new(page.clone())
            }
        };
        let now = wall_ms();
        let record = Session {
            id: id.clone(),
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
            plugin_version: meta.version.clone(),
            account: account.to_owned(),
            state: SessionState::Opening,
            operations: meta.operations.iter().map(|o| o.name.clone()).collect(),
            login: None,
            calls: 0,
            opened_at: now,
            last_activity: now,
            closed_at: None,
            close_reason: None,
            error: None,
            idle_timeout_secs: self.inner.config.idle_timeout.as_secs(),
            worker: worker.clone(),
        };
        self.save(&record).await?;
        let live = Arc::new(Live {
            record: Mutex::new(record),
            calls: tx,
            busy: AtomicUsize::new(0),
            frames,
            page,
            worker,
        });
        self.inner
            .live
            .lock()
            .expect("live lock")
            .insert(id.clone(), live.clone());
        if let Some(p) = placed.as_mut() {
            p.armed = false;
        }
        match self.call_live(&live, operation, input).await {
            Ok(CallResult { result, .. }) => {
                let s = {
                    let mut s = live.record.lock().expect("session lock");
                    s.state = SessionState::Open;
                    s.login = Some(result);
                    s.clone()
                };
                self.save(&s).await?;
                *active = Some(id.clone());
                info!(session = %id, %plugin, %account, worker = ?s.worker, "session opened");
                self.inner
                    .store
                    .session_event(
                        tenant,
                        kind::SESSION_OPENED,
                        &id,
                        json!({"plugin": plugin, "account": account, "operations": s.operations,
                       "worker": s.worker}),
                    )
                    .await?;
                Ok((s, true))
            }
            Err(SessionError::Call { error, .. }) => {
                self.close_live(
                    &id,
                    SessionState::Failed,
                    "login_failed",
                    Some(error.clone()),
                )
                .await?;
                Err(SessionError::Call {
                    error,
                    closed: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.inner.live.lock().expect("live lock").get(id).cloned()
    }

    /// A session of `tenant`: another tenant's is not found.
    pub fn get(&self, tenant: &str, id: &str) -> Result<Session, SessionError> {
        let not_found = || SessionError::NotFound(format!("session `{id}` not found"));
        if let Some(live) = self.live(id) {
            let s = live.record.lock().expect("session lock").clone();
            return if s.tenant == tenant {
                Ok(s)
            } else {
                Err(not_found())
            };
        }
        let raw = self
            .inner
            .tree
            .get(id.as_bytes())
            .map_err(StoreError::from)?
            .ok_or_else(not_found)?;
        let s: Session = serde_json::from_slice(&raw).map_err(StoreError::from)?;
        if s.tenant != tenant {
            return Err(not_found());
        }
        Ok(s)
    }

    /// The tenant's sessions, newest first; only open ones when `open_only`.
    pub fn list(&self, tenant: &str, open_only: bool) -> Result<Vec<Session>, SessionError> {
        let mut out = Vec::new();
        for kv in self.inner.tree.iter().rev() {
            let (k, v) = kv.map_err(StoreError::from)?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let s = match self.live(&id) {
                Some(l) => l.record.lock().expect("session lock").clone(),
                None => serde_json::from_slice(&v).map_err(StoreError::from)?,
            };
            if s.tenant == tenant
                && (!open_only || matches!(s.state, SessionState::Open | SessionState::Opening))
            {
                out.push(s);
            }
            if out.len() >= 1000 {
                break;
            }
        }
        Ok(out)
    }

    /// Run `operation` in the session; calls wait for each other.
    pub async fn invoke(
        &self,
        tenant: &str,
        id: &str,
        operation: &str,
        input: Value,
    ) -> Result<CallResult, SessionError> {
        let s = self.get(tenant, id)?;
        let live = match (s.state, self.live(id)) {
            (SessionState::Open, Some(l)) => l,
            (state, _) => {
                return Err(SessionError::Conflict(format!(
                    "session `{id}` is {}: open a new one",
                    serde_json::to_value(state)
                        .expect("serializes")
                        .as_str()
                        .unwrap_or("")
                )));
            }
        };
        if !s.operations.iter().any(|o| o == operation) {
            return Err(SessionError::Invalid(format!(
                "operation: plugin `{}` has no operation `{operation}` (it has: {})",
                s.plugin,
                s.operations.join(", ")
            )));
        }
        self.call_live(&live, operation, input).await
    }

    async fn call_live(
        &self,
        live: &Arc<Live>,
        operation: &str,
        input: Value,
    ) -> Result<CallResult, SessionError> {
        let id = live.record.lock().expect("session lock").id.clone();
        let before = self.inner.store.artifacts()?.for_session(&id)?.len();
        let (reply, answer) = oneshot::channel();
        live.busy.fetch_add(1, Ordering::AcqRel);
        let sent = live
            .calls
            .send(Call {
                operation: operation.to_owned(),
                input,
                reply,
            })
            .await;
        let out = match sent {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        live.busy.fetch_sub(1, Ordering::AcqRel);
        let s = {
            let mut s = live.record.lock().expect("session lock");
            s.calls += 1;
            s.last_activity = wall_ms();
            s.clone()
        };
        self.save(&s).await?;
        let out = out.unwrap_or_else(|| {
            Err(CallError {
                error: ItemError::application("the session's instance has stopped"),
                broken: true,
            })
        });
        match out {
            Ok(result) => {
                let artifacts = self.inner.store.artifacts()?.for_session(&id)?;
                Ok(CallResult {
                    result,
                    artifacts: artifacts.into_iter().skip(before).collect(),
                })
            }
            Err(CallError { error, broken }) => {
                let reason = match (broken, error.code.as_deref()) {
                    (false, _) => None,
                    (true, Some(BROWSER_LOST)) => Some(BROWSER_LOST),
                    (true, Some(relay::WORKER_LOST)) => Some(relay::WORKER_LOST),
                    (true, _) => Some("broken"),
                };
                if let Some(reason) = reason
                    && s.state == SessionState::Open
                {
                    self.close_live(&id, SessionState::Closed, reason, Some(error.clone()))
                        .await?;
                }
                Err(SessionError::Call {
                    error,
                    closed: reason.is_some(),
                })
            }
        }
    }

    /// Close a session of `tenant` on request.
    pub async fn close(&self, tenant: &str, id: &str) -> Result<Session, SessionError> {
        let s = self.get(tenant, id)?;
        if !matches!(s.state, SessionState::Open | SessionState::Opening) {
            return Ok(s);
        }
        self.close_live(id, SessionState::Closed, "closed", None)
            .await
    }

    async fn close_live(
        &self,
        id: &str,
        state: SessionState,
        reason: &str,
        error: Option<ItemError>,
    ) -> Result<Session, SessionError> {
        let Some(live) = self.inner.live.lock().expect("live lock").remove(id) else {
            return self.get_any(id);
        };
        let s = {
            let mut s = live.record.lock().expect("session lock");
            s.state = state;
            s.closed_at = Some(wall_ms());
            s.close_reason = Some(reason.to_owned());
            s.error = error;
            s.clone()
        };
        // Dropping the last sender ends the task, which closes the browser context
        // (on a worker: tells the worker to).
        if let Some(w) = &live.worker {
            self.inner.relay.close(&s.tenant, w, id);
        }
        drop(live);
        self.save(&s).await?;
        let key = (s.tenant.clone(), s.plugin.clone(), s.account.clone());
        let slot = self
            .inner
            .accounts
            .lock()
            .expect("accounts lock")
            .get(&key)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut active) = slot.try_lock()
            && active.as_deref() == Some(id)
        {
            *active = None;
        }
        info!(session = %id, reason, "session closed");
        self.inner
            .store
            .session_event(
                &s.tenant,
                kind::SESSION_CLOSED,
                id,
                json!({"plugin": s.plugin, "account": s.account, "reason": reason,
                       "error": s.error, "calls": s.calls}),
            )
            .await?;
        Ok(s)
    }

    fn get_any(&self, id: &str) -> Result<Session, SessionError> {
        let raw = self
            .inner
            .tree
            .get(id.as_bytes())
            .map_err(StoreError::from)?
            .ok_or_else(|| SessionError::NotFound(format!("session `{id}` not found")))?;
        Ok(serde_json::from_slice(&raw).map_err(StoreError::from)?)
    }

    async fn close_idle(&self) {
        let idle_ms = self.inner.config.idle_timeout.as_millis() as i64;
        let now = wall_ms();
        let expired: Vec<String> = self
            .inner
            .live
            .lock()
            .expect("live lock")
            .iter()
            .filter(|(_, l)| {
                let s = l.record.lock().expect("session lock");
                s.state == SessionState::Open
                    && l.busy.load(Ordering::Acquire) == 0
                    && now - s.last_activity >= idle_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Err(e) = self
                .close_live(&id, SessionState::Closed, "idle", None)
                .await
            {
                warn!(session = %id, error = %e, "could not close an idle session");
            }
        }
    }

    /// A PNG of the session's page now.
    pub async fn screenshot(&self, tenant: &str, id: &str) -> Result<Vec<u8>, SessionError> {
        let live = self.open_live(tenant, id)?;
        if let Some(w) = &live.worker {
            return remote_snap(
                self.inner.relay.clone(),
                tenant.into(),
                w.clone(),
                id.into(),
            )("png")
            .await
            .map_err(|e| SessionError::Call {
                error: ItemError::application(e),
                closed: false,
            });
        }
        let page = live.page.lock().expect("page lock").clone();
        let page =
            page.ok_or_else(|| SessionError::Conflict(format!("session `{id}` has no page open")))?;
        screencast::screenshot(&page)
            .await
            .map_err(|e| SessionError::Call {
                error: ItemError::application(e),
                closed: false,
            })
    }

    /// The live frames of an open session's page, for the screencast.
    pub fn frames(&self, tenant: &str, id: &str) -> Result<Frames, SessionError> {
        Ok(self.open_live(tenant, id)?.frames.clone())
    }

    fn open_live(&self, tenant: &str, id: &str) -> Result<Arc<Live>, SessionError> {
        let s = self.get(tenant, id)?;
        match self.live(id) {
            Some(l) if s.state == SessionState::Open => Ok(l),
            _ => Err(SessionError::Conflict(format!(
                "session `{id}` is not open"
            ))),
        }
    }

    /// The files the session's calls saved.
    pub fn artifacts(&self, tenant: &str, id: &str) -> Result<Vec<Artifact>, SessionError> {
        self.get(tenant, id)?;
        Ok(self.inner.store.artifacts()?.for_session(id)?)
    }

    /// Ask `worker` to start the session's instance, with the plugin's secrets.
    async fn open_on_worker(
        &self,
        worker: &str,
        tenant: &str,
        plugin: &str,
        version: &str,
        id: &str,
    ) -> Result<(), SessionError> {
        let mut secrets = std::collections::BTreeMap::new();
        if let (Some(p), Some(store)) = (
            self.inner.runtime.registry().get(plugin, Some(version)),
            self.inner.runtime.secrets(),
        ) {
            for name in &p.grants.secrets {
                if let Some(v) = store.get(tenant, name)? {
                    secrets.insert(name.clone(), v);
                }
            }
        }
        let mut cmd = Command::new(CommandKind::Open, id);
        cmd.tenant = Some(tenant.into());
        cmd.plugin = Some(plugin.into());
        cmd.plugin_version = Some(version.into());
        cmd.secrets = Some(secrets);
        match self
            .inner
            .relay
            .request(tenant, worker, cmd, OPEN_TIMEOUT)
            .await
        {
            None => Err(SessionError::Call {
                error: relay::worker_lost(worker),
                closed: true,
            }),
            Some(Reply {
                error: Some(error), ..
            }) => {
                self.inner.relay.close(tenant, worker, id);
                Err(SessionError::Call {
                    error,
                    closed: true,
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// A worker polls for its sessions' commands (a worker key's request).
    pub async fn worker_poll(
        &self,
        tenant: &str,
        worker: &str,
        instance: &str,
        plugins: Vec<String>,
        wait: Duration,
    ) -> (Vec<Command>, Vec<String>) {
        let (commands, held, lost) = self
            .inner
            .relay
            .poll(tenant, worker, instance, plugins, wait)
            .await;
        if let Some(lost) = lost {
            self.worker_gone(tenant, lost).await;
        }
        (commands, held)
    }

    /// A worker's answer to a command; false if nothing waits for it.
    pub fn worker_reply(&self, tenant: &str, worker: &str, reply: Reply) -> bool {
        self.inner.relay.reply(tenant, worker, reply)
    }

    /// Sessions the worker holds now, if it takes sessions.
    pub fn held_by(&self, tenant: &str, worker: &str) -> Option<usize> {
        self.inner.relay.held(tenant, worker)
    }

    /// A file a session's call saved on the worker that holds the session.
    pub async fn worker_artifact(
        &self,
        tenant: &str,
        worker: &str,
        id: &str,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> Result<Artifact, SessionError> {
        if !self.inner.relay.holds(tenant, worker, id) {
            return Err(SessionError::NotFound(format!(
                "session `{id}` is not held by worker `{worker}`"
            )));
        }
        let meta = Artifact {
            id: String::new(),
            tenant: tenant.to_owned(),
            job_id: None,
            item_id: None,
            session_id: Some(id.to_owned()),
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size: 0,
            created_at: wall_ms(),
        };
        Ok(self.inner.store.artifacts()?.save(meta, data).await?)
    }

    /// Close the sessions of a worker that went away.
    async fn worker_gone(&self, tenant: &str, lost: relay::Lost) {
        for id in lost.sessions {
            let open = self
                .live(&id)
                .is_some_and(|l| l.record.lock().expect("session lock").tenant == tenant);
            if !open {
                continue;
            }
            warn!(session = %id, worker = %lost.worker, "the worker holding the session is gone");
            if let Err(e) = self
                .close_live(
                    &id,
                    SessionState::Closed,
                    relay::WORKER_LOST,
                    Some(relay::worker_lost(&lost.worker)),
                )
                .await
            {
                warn!(session = %id, error = %e, "could not close the session");
            }
        }
    }

    async fn save(&self, s: &Session) -> Result<(), StoreError> {
        self.inner
            .tree
            .insert(s.id.as_bytes(), serde_json::to_vec(s)?)?;
        self.inner.tree.flush_async().await?;
        Ok(())
    }
}

/// The task that owns a session's instance: one call at a time, until every sender
/// is gone; then the browser context is closed.
pub(crate) async fn serve(mut instance: Instance, mut calls: mpsc::Receiver<Call>) {
    let mut n = 0u64;
    while let Some(call) = calls.recv().await {
        n += 1;
        let out = instance
            .call(&call.operation, &call.input, &n.to_string())
            .await;
        let out = match out {
            Err(mut e) if instance.browser_dead() => {
                e.error.message = format!("the browser went away: {}", e.error.message);
                e.error.code = Some(BROWSER_LOST.into());
                e.broken = true;
                Err(e)
            }
            o => o,
        };
        let broken = matches!(&out, Err(CallError { broken: true, .. }));
        let _ = call.reply.send(out);
        if broken {
            break;
        }
    }
    instance.close().await;
}

/// Relay a session's calls to the worker that holds it, one at a time, until every
/// sender is gone; then tell the worker to close it.
async fn relay_calls(
    relay: Arc<Relay>,
    tenant: String,
    worker: String,
    session: String,
    call_timeout: Duration,
    mut calls: mpsc::Receiver<Call>,
) {
    while let Some(call) = calls.recv().await {
        let mut cmd = Command::new(CommandKind::Call, &session);
        cmd.operation = Some(call.operation);
        cmd.input = Some(call.input);
        let out = match relay.request(&tenant, &worker, cmd, call_timeout).await {
            None => Err(CallError {
                error: relay::worker_lost(&worker),
                broken: true,
            }),
            Some(Reply {
                error: Some(error),
                broken,
                ..
            }) => Err(CallError { error, broken }),
            Some(r) => Ok(r.result.unwrap_or(Value::Null)),
        };
        let broken = matches!(&out, Err(CallError { broken: true, .. }));
        let _ = call.reply.send(out);
        if broken {
            break;
        }
    }
    relay.close(&tenant, &worker, &session);
}

/// A picture of a worker-held session's page, in `format` (`png` or `jpeg`).
fn remote_snap(
    relay: Arc<Relay>,
    tenant: String,
    worker: String,
    session: String,
) -> screencast::Snap {
    Arc::new(move |format: &'static str| {
        let (relay, tenant, worker, session) = (
            relay.clone(),
            tenant.clone(),
            worker.clone(),
            session.clone(),
        );
        Box::pin(async move {
            let mut cmd = Command::new(CommandKind::Screenshot, &session);
            cmd.format = Some(format.into());
            if !relay.holds(&tenant, &worker, &session) {
                return Err(SNAP_GONE.to_owned());
            }
            let reply = relay
                .request(&tenant, &worker, cmd, SNAP_TIMEOUT)
                .await
                .ok_or_else(|| format!("worker `{worker}` stopped answering"))?;
            if let Some(e) = reply.error {
                return Err(e.message);
            }
            let image = reply.image.ok_or("the worker sent no picture")?;
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(image)
                .map_err(|e| format!("the worker's picture is not base64: {e}"))
        })
    })
}

/// A session placed on a worker but not yet live in the engine: told to close if the
/// opening stops half-way.
struct Placed {
    relay: Arc<Relay>,
    tenant: String,
    worker: String,
    id: String,
    armed: bool,
}

impl Drop for Placed {
    fn drop(&mut self) {
        if self.armed {
            self.relay.close(&self.tenant, &self.worker, &self.id);
        }
    }
}

/// How long the engine waits for a worker to open a session's instance (it may have
/// to fetch and compile the plugin first), and for a picture of its page.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
const SNAP_TIMEOUT: Duration = Duration::from_secs(20);
/// What a picture request answers once the session is no longer on its worker.
pub(crate) const SNAP_GONE: &str = "the session is no longer held by its worker";

/// The close reason (and error code) of a session whose browser went away.
const BROWSER_LOST: &str = "browser_lost";

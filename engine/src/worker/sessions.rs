//! Sessions this worker holds for the engine: it polls for their commands (open,
//! call, screenshot, close), runs each session's plugin instance here with its own
//! browser context, and answers; files the calls save go to the engine. Nothing of a
//! session is written to this machine's disk. See [`crate::sessions::relay`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{RemoteQueue, fetch};
use crate::artifacts::Artifact;
use crate::model::ItemError;
use crate::runtime::Runtime;
use crate::runtime::browser::SessionPage;
use crate::runtime::host::SessionLink;
use crate::sessions::{Call, Command, CommandKind, Reply, screenshot_as};
use crate::store::StoreError;

/// A session held here: the channel to the task that owns its instance, and its page.
struct Held {
    calls: mpsc::Sender<Call>,
    page: SessionPage,
}

type HeldMap = Arc<Mutex<HashMap<String, Held>>>;

/// Poll the engine for session commands until `stop`; the sessions die with the
/// process (the engine notices: it closes them as `worker_lost`).
pub async fn serve(
    rt: Arc<Runtime>,
    queue: Arc<RemoteQueue>,
    plugins: Vec<String>,
    stop: CancellationToken,
) {
    let instance = ulid::Ulid::new().to_string();
    let held: HeldMap = Arc::default();
    loop {
        let poll = queue.session_poll(&instance, &plugins);
        let commands = tokio::select! {
            c = poll => c,
            _ = stop.cancelled() => break,
        };
        match commands {
            Ok((commands, kept)) => {
                // Sessions the engine no longer knows here (it closed them while this
                // worker was out of reach, or it restarted) go now.
                held.lock().expect("held lock").retain(|id, _| {
                    let known = kept.contains(id);
                    if !known {
                        info!(session = %id, "session dropped: the engine no longer has it here");
                    }
                    known
                });
                for cmd in commands {
                    tokio::spawn(handle(rt.clone(), queue.clone(), held.clone(), cmd));
                }
            }
            Err(e) => {
                warn!(error = %e, "session poll failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    // Closing every channel ends the instances and their browser contexts.
    held.lock().expect("held lock").clear();
}

async fn handle(rt: Arc<Runtime>, queue: Arc<RemoteQueue>, held: HeldMap, cmd: Command) {
    let id = cmd.id;
    let session = cmd.session_id.clone();
    let mut reply = Reply {
        id,
        result: None,
        error: None,
        broken: false,
        image: None,
    };
    match cmd.kind {
        CommandKind::Open => match open(&rt, &queue, cmd).await {
            Ok(h) => {
                held.lock().expect("held lock").insert(session.clone(), h);
                info!(%session, "session opened here");
            }
            Err(e) => reply.error = Some(ItemError::application(e)),
        },
        CommandKind::Call => {
            let calls = held
                .lock()
                .expect("held lock")
                .get(&session)
                .map(|h| h.calls.clone());
            let out = match calls {
                None => Err(crate::runtime::CallError {
                    error: ItemError::application("this worker does not hold the session"),
                    broken: true,
                }),
                Some(calls) => {
                    let (tx, rx) = oneshot::channel();
                    let call = Call {
                        operation: cmd.operation.unwrap_or_default(),
                        input: cmd.input.unwrap_or(Value::Null),
                        reply: tx,
                    };
                    match calls.send(call).await {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err(stopped())),
                        Err(_) => Err(stopped()),
                    }
                }
            };
            match out {
                Ok(v) => reply.result = Some(v),
                Err(e) => {
                    if e.broken {
                        held.lock().expect("held lock").remove(&session);
                    }
                    reply.error = Some(e.error);
                    reply.broken = e.broken;
                }
            }
        }
        CommandKind::Screenshot => {
            let page = held
                .lock()
                .expect("held lock")
                .get(&session)
                .and_then(|h| h.page.lock().expect("page lock").clone());
            let format = cmd.format.as_deref().unwrap_or("png");
            match page {
                None => reply.error = Some(ItemError::application("the session has no page open")),
                Some(page) => match screenshot_as(&page, format).await {
                    Ok(bytes) => {
                        reply.image = Some(base64::engine::general_purpose::STANDARD.encode(bytes))
                    }
                    Err(e) => reply.error = Some(ItemError::application(e)),
                },
            }
        }
        CommandKind::Close => {
            if held.lock().expect("held lock").remove(&session).is_some() {
                info!(%session, "session closed here");
            }
            return; // nobody waits for this one
        }
    }
    if let Err(e) = queue.session_reply(&reply).await {
        warn!(%session, command = id, error = %e, "could not answer the engine");
    }
}

fn stopped() -> crate::runtime::CallError {
    crate::runtime::CallError {
        error: ItemError::application("the session's instance has stopped"),
        broken: true,
    }
}

async fn open(rt: &Arc<Runtime>, queue: &Arc<RemoteQueue>, cmd: Command) -> Result<Held, String> {
    let (Some(tenant), Some(plugin)) = (cmd.tenant, cmd.plugin) else {
        return Err("an open command names its tenant and plugin".into());
    };
    let version = cmd.plugin_version;
    if let Some(v) = &version
        && rt.registry().get(&plugin, Some(v)).is_none()
    {
        fetch(rt, queue, &plugin, v, false)
            .await
            .map_err(|e| format!("worker: {e:#}"))?;
    }
    let link = Arc::new(Link {
        queue: queue.clone(),
        session: cmd.session_id.clone(),
        secrets: cmd.secrets.unwrap_or_default(),
    });
    let page: SessionPage = Arc::default();
    let instance = rt
        .open_instance(
            &plugin,
            version.as_deref(),
            &tenant,
            &cmd.session_id,
            page.clone(),
            Some(link),
        )
        .await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(crate::sessions::serve(instance, rx));
    Ok(Held { calls: tx, page })
}

/// A held session's secrets (from its opening, in memory) and its uploads.
struct Link {
    queue: Arc<RemoteQueue>,
    session: String,
    secrets: BTreeMap<String, String>,
}

impl SessionLink for Link {
    fn secrets(&self) -> &BTreeMap<String, String> {
        &self.secrets
    }

    fn save_artifact(
        &self,
        meta: Artifact,
        data: Vec<u8>,
    ) -> BoxFuture<'_, crate::store::Result<Artifact>> {
        Box::pin(async move {
            self.queue
                .session_artifact(&self.session, &meta.name, &meta.content_type, data)
                .await
        })
    }
}

impl RemoteQueue {
    /// Wait (up to the engine's limit) for commands of this worker's sessions.
    /// Also the sessions the engine knows this worker to hold.
    async fn session_poll(
        &self,
        instance: &str,
        plugins: &[String],
    ) -> crate::store::Result<(Vec<Command>, Vec<String>)> {
        #[derive(serde::Deserialize)]
        struct Commands {
            commands: Vec<Command>,
            sessions: Vec<String>,
        }
        let got: Commands = self
            .send(
                self.http
                    .post(self.url(&format!("/workers/{}/sessions/poll", self.name)))
                    .json(&json!({
                        "instance": instance,
                        "plugins": plugins,
                        "wait_ms": crate::sessions::relay::POLL_MS,
                    })),
                None,
            )
            .await?;
        Ok((got.commands, got.sessions))
    }

    /// Answer a command, tried again while the engine is out of reach (a lost
    /// answer costs the session: the engine gives up on it).
    async fn session_reply(&self, reply: &Reply) -> crate::store::Result<()> {
        let body = crate::cli::client::without_nulls(serde_json::to_value(reply)?);
        let url = self.url(&format!("/workers/{}/sessions/reply", self.name));
        self.retried::<Value>(&format!("session command {}", reply.id), None, || {
            self.http.post(&url).json(&body)
        })
        .await
        .map(|_| ())
    }

    async fn session_artifact(
        &self,
        session: &str,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> crate::store::Result<Artifact> {
        self.send(
            self.http
                .post(self.url(&format!(
                    "/workers/{}/sessions/{session}/artifacts",
                    self.name
                )))
                .query(&[("name", name), ("content_type", content_type)])
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(data),
            None,
        )
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("session file: {m}")),
            e => e,
        })
    }
}

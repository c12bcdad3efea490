//! Sessions held on workers. A worker that can hold sessions keeps a long poll open
//! to the engine (`POST /api/v1/workers/{name}/sessions/poll`); the engine queues
//! commands for it (open, call, screenshot, close) and the poll returns them; the
//! worker answers each with `…/sessions/reply`. The engine never dials a worker, so
//! clients keep one URL and one key and workers can sit behind NAT.
//!
//! A worker is live while it polls: one whose last poll started longer ago than
//! [`GONE_AFTER`] is dropped with every call waiting on it, and its sessions are
//! closed as `worker_lost` ([`super::Sessions`]). So is a worker that polls as a new
//! process (another `instance`) under the same name: its sessions died with the old one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::model::ItemError;

/// Longest a session poll waits for a command.
pub const POLL_MS: u64 = 10_000;
/// A worker whose last poll started this long ago is gone.
pub const GONE_AFTER: Duration = Duration::from_millis(POLL_MS + 5_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename = "SessionCommandKind", rename_all = "snake_case")]
pub enum CommandKind {
    /// Start the plugin's instance for the session (the login is the first call).
    Open,
    /// Run an operation in the session's instance.
    Call,
    /// A picture of the session's page (`format`: `png` or `jpeg`).
    Screenshot,
    /// End the session: its instance and browser context go.
    Close,
}

/// What the engine asks of a worker about one of its sessions.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(rename = "SessionCommand", skip_serializing_if_is_none)]
pub struct Command {
    /// Answer with this id.
    pub id: u64,
    pub kind: CommandKind,
    pub session_id: String,
    /// With `open`: whose session, and which plugin version.
    pub tenant: Option<String>,
    pub plugin: Option<String>,
    pub plugin_version: Option<String>,
    /// With `open`: the values of the secrets the plugin is granted. Kept in memory.
    pub secrets: Option<BTreeMap<String, String>>,
    /// With `call`.
    pub operation: Option<String>,
    pub input: Option<Value>,
    /// With `screenshot`.
    pub format: Option<String>,
}

impl Command {
    pub fn new(kind: CommandKind, session_id: &str) -> Command {
        Command {
            id: 0,
            kind,
            session_id: session_id.to_owned(),
            tenant: None,
            plugin: None,
            plugin_version: None,
            secrets: None,
            operation: None,
            input: None,
            format: None,
        }
    }
}

/// A worker's answer to one command.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(
    rename = "SessionReply",
    skip_serializing_if_is_none,
    deny_unknown_fields
)]
pub struct Reply {
    pub id: u64,
    /// What a call returned (`null` for the other commands).
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<ItemError>,
    /// The instance broke (a trap, its deadline, its browser gone): the session ends.
    #[oai(default)]
    #[serde(default)]
    pub broken: bool,
    /// A screenshot, base64.
    pub image: Option<String>,
}

/// The error of a command whose worker went away before it answered.
pub const WORKER_LOST: &str = "worker_lost";

struct Link {
    instance: String,
    /// Plugins it holds sessions of; empty: every one.
    plugins: Vec<String>,
    last_poll: Instant,
    queue: VecDeque<Command>,
    wake: Arc<Notify>,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    sessions: HashSet<String>,
}

/// A worker's sessions that are gone with it.
pub struct Lost {
    pub worker: String,
    pub sessions: Vec<String>,
}

#[derive(Default)]
pub struct Relay {
    links: Mutex<HashMap<(String, String), Link>>,
    next_id: AtomicU64,
}

impl Relay {
    /// A worker polls: note it (as a new process if `instance` changed, returning
    /// the old one's sessions) and take its queued commands, waiting up to `wait`;
    /// also the sessions the engine knows it to hold (it drops any other it has: the
    /// engine closed them while it was out of reach, or the engine restarted).
    pub async fn poll(
        &self,
        tenant: &str,
        worker: &str,
        instance: &str,
        plugins: Vec<String>,
        wait: Duration,
    ) -> (Vec<Command>, Vec<String>, Option<Lost>) {
        let key = (tenant.to_owned(), worker.to_owned());
        let (wake, lost) = {
            let mut links = self.links.lock().expect("relay lock");
            let mut lost = None;
            if links.get(&key).is_some_and(|l| l.instance != instance) {
                let old = links.remove(&key).expect("just seen");
                lost = Some(Lost {
                    worker: worker.to_owned(),
                    sessions: old.sessions.into_iter().collect(),
                });
            }
            let link = links.entry(key.clone()).or_insert_with(|| Link {
                instance: instance.to_owned(),
                plugins: Vec::new(),
                last_poll: Instant::now(),
                queue: VecDeque::new(),
                wake: Arc::new(Notify::new()),
                pending: HashMap::new(),
                sessions: HashSet::new(),
            });
            link.plugins = plugins;
            link.last_poll = Instant::now();
            (link.wake.clone(), lost)
        };
        let deadline = Instant::now() + wait;
        loop {
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (taken, held): (Vec<Command>, Vec<String>) = {
                let mut links = self.links.lock().expect("relay lock");
                match links.get_mut(&key) {
                    Some(l) => (
                        l.queue.drain(..).collect(),
                        l.sessions.iter().cloned().collect(),
                    ),
                    None => (Vec::new(), Vec::new()),
                }
            };
            if !taken.is_empty() || Instant::now() >= deadline {
                return (taken, held, lost);
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Send `cmd` to the worker and wait up to `timeout` for its answer; `None` if
    /// the worker is gone, goes before it answers, or does not answer in time (a lost
    /// answer must not hold the session's calls forever).
    pub async fn request(
        &self,
        tenant: &str,
        worker: &str,
        mut cmd: Command,
        timeout: Duration,
    ) -> Option<Reply> {
        let (tx, rx) = oneshot::channel();
        let key = (tenant.to_owned(), worker.to_owned());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut links = self.links.lock().expect("relay lock");
            let link = links.get_mut(&key)?;
            cmd.id = id;
            link.pending.insert(cmd.id, tx);
            if cmd.kind == CommandKind::Open {
                link.sessions.insert(cmd.session_id.clone());
            }
            link.queue.push_back(cmd);
            link.wake.notify_waiters();
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(answer) => answer.ok(),
            Err(_) => {
                if let Some(link) = self.links.lock().expect("relay lock").get_mut(&key) {
                    link.pending.remove(&id);
                }
                tracing::warn!(worker, command = id, "the worker did not answer in time");
                None
            }
        }
    }

    /// Tell the worker to end a session, without waiting for it.
    pub fn close(&self, tenant: &str, worker: &str, session_id: &str) {
        let mut links = self.links.lock().expect("relay lock");
        if let Some(link) = links.get_mut(&(tenant.to_owned(), worker.to_owned())) {
            link.sessions.remove(session_id);
            let mut cmd = Command::new(CommandKind::Close, session_id);
            cmd.id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            link.queue.push_back(cmd);
            link.wake.notify_waiters();
        }
    }

    /// A worker's answer; false if nothing waits for it (the worker's or the id's).
    pub fn reply(&self, tenant: &str, worker: &str, reply: Reply) -> bool {
        let mut links = self.links.lock().expect("relay lock");
        let Some(link) = links.get_mut(&(tenant.to_owned(), worker.to_owned())) else {
            return false;
        };
        match link.pending.remove(&reply.id) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Whether the worker holds this session.
    pub fn holds(&self, tenant: &str, worker: &str, session_id: &str) -> bool {
        let links = self.links.lock().expect("relay lock");
        links
            .get(&(tenant.to_owned(), worker.to_owned()))
            .is_some_and(|l| l.sessions.contains(session_id))
    }

    /// The live worker of `tenant` to place a session of `plugin` on: the one
    /// holding the fewest sessions.
    pub fn pick(&self, tenant: &str, plugin: &str) -> Option<String> {
        let now = Instant::now();
        let links = self.links.lock().expect("relay lock");
        links
            .iter()
            .filter(|((t, _), l)| {
                t == tenant
                    && now.duration_since(l.last_poll) < GONE_AFTER
                    && (l.plugins.is_empty() || l.plugins.iter().any(|p| p == plugin))
            })
            .min_by_key(|((_, name), l)| (l.sessions.len(), name.clone()))
            .map(|((_, name), _)| name.clone())
    }

    /// Sessions the worker holds now, if it takes sessions (it polls for them).
    pub fn held(&self, tenant: &str, worker: &str) -> Option<usize> {
        let now = Instant::now();
        let links = self.links.lock().expect("relay lock");
        links
            .get(&(tenant.to_owned(), worker.to_owned()))
            .filter(|l| now.duration_since(l.last_poll) < GONE_AFTER)
            .map(|l| l.sessions.len())
    }

    /// Drop the workers that stopped polling, failing the commands that wait on them;
    /// returns their sessions, by tenant.
    pub fn sweep(&self) -> Vec<(String, Lost)> {
        let now = Instant::now();
        let mut links = self.links.lock().expect("relay lock");
        let gone: Vec<(String, String)> = links
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_poll) >= GONE_AFTER)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|key| {
                let link = links.remove(&key)?;
                Some((
                    key.0,
                    Lost {
                        worker: key.1,
                        sessions: link.sessions.into_iter().collect(),
                    },
                ))
            })
            .collect()
    }
}

/// The error a session call gets when its worker went away.
pub fn worker_lost(worker: &str) -> ItemError {
    let mut e = ItemError::application(format!(
        "worker `{worker}` that held the session stopped answering; open the session again"
    ));
    e.code = Some(WORKER_LOST.into());
    e
}

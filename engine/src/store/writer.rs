//! The single writer. Every state change in the engine is a [`Command`] sent here; the
//! writer drains whatever commands are waiting, runs each in its own [`Tx`], and
//! commits the group as one `apply_batch` and one flush (group commit). Only then are
//! the callers answered and the group's events broadcast, so an acknowledged change is
//! durable and an event is never seen live before it is stored.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, warn};

use super::error::{Result, StoreError};
use super::ops::{ClaimRequest, Claimed, JobAction, Outcome};
use super::ready::Ready;
use super::tx::{Overlay, Tx};
use super::{Shared, keys::ItemKey};
use crate::clock::Clock;
use crate::model::{Event, Item, ItemStatus, Job, Lease, NewJob};

/// Most commands folded into one group; bulk creates are a group of their own anyway.
const MAX_GROUP: usize = 512;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Command {
    CreateJob {
        tenant: String,
        job: NewJob,
        plugin_version: Option<String>,
        reply: Reply<Job>,
    },
    JobAction {
        job: String,
        action: JobAction,
        reply: Reply<Job>,
    },
    Claim {
        req: ClaimRequest,
        reply: Reply<Claimed>,
    },
    Heartbeat {
        item: ItemKey,
        token: u64,
        extend_ms: Option<u64>,
        reply: Reply<Lease>,
    },
    Complete {
        item: ItemKey,
        token: u64,
        outcome: Outcome,
        reply: Reply<Item>,
    },
    Step {
        item: ItemKey,
        token: u64,
        name: String,
        state: Option<String>,
        reply: Reply<()>,
    },
    Progress {
        item: ItemKey,
        token: u64,
        data: serde_json::Value,
        reply: Reply<()>,
    },
    Log {
        item: ItemKey,
        token: u64,
        level: String,
        message: String,
        reply: Reply<()>,
    },
    Transition {
        item: ItemKey,
        to: ItemStatus,
        reason: Option<String>,
        input: Option<serde_json::Value>,
        reply: Reply<Item>,
    },
    Publish {
        tenant: String,
        kind: String,
        job_id: Option<String>,
        data: serde_json::Value,
        reply: Reply<Event>,
    },
    SetPluginLimit {
        plugin: String,
        limit: Option<u32>,
    },
    /// Commit what is pending, stop, and release the database.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

type Done = Box<dyn FnOnce(bool) + Send>;

#[derive(Default)]
struct Group {
    writes: Overlay,
    events: Vec<Event>,
    done: Vec<Done>,
}

pub(crate) struct Writer {
    pub tree: sled::Tree,
    pub ready: Ready,
    pub next_seq: u64,
    pub clock: Clock,
    pub hub: broadcast::Sender<Arc<Event>>,
    pub shared: Arc<Shared>,
    /// Items became claimable in this group: wake the dispatchers after the commit.
    pub wake: bool,
}

impl Writer {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut closing = Vec::new();
        while closing.is_empty() {
            let lease_deadline = self
                .ready
                .next_lease_expiry()
                .map(|t| self.clock.instant_at(t));
            let first = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                _ = sleep_until(lease_deadline) => None,
            };
            let mut group = Group::default();
            let mut next = first;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Shutdown { reply } => closing.push(reply),
                    cmd => self.handle(cmd, &mut group),
                }
                if group.done.len() < MAX_GROUP && closing.is_empty() {
                    next = rx.try_recv().ok();
                }
            }
            self.expire_leases(&mut group);
            if let Err(e) = self.commit(group).await {
                error!(error = %e, "storage failed; the engine stops writing");
                self.shared.set_fatal(e.to_string());
                break;
            }
        }
        // Callers still queued get `Closed` when their reply channel drops.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Command::Shutdown { reply } = cmd {
                closing.push(reply);
            }
        }
        drop(self);
        for reply in closing {
            let _ = reply.send(());
        }
    }

    async fn commit(&mut self, group: Group) -> Result<(), StoreError> {
        let Group {
            writes,
            events,
            done,
        } = group;
        let result = if writes.is_empty() {
            Ok(())
        } else {
            let mut batch = sled::Batch::default();
            let n = writes.len();
            for (k, v) in writes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            let tree = self.tree.clone();
            let started = std::time::Instant::now();
            let r = tokio::task::spawn_blocking(move || -> Result<(), sled::Error> {
                tree.apply_batch(batch)?;
                tree.flush()?;
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Storage(format!("writer task failed: {e}")))
            .and_then(|r| r.map_err(StoreError::from));
            self.shared
                .metrics
                .record_commit(n, done.len(), started.elapsed());
            r
        };
        let ok = result.is_ok();
        if ok {
            for event in events {
                // No subscriber is not an error.
                let _ = self.hub.send(Arc::new(event));
            }
        }
        for d in done {
            d(ok);
        }
        if ok && std::mem::take(&mut self.wake) {
            self.shared.dispatch.notify_waiters();
        }
        self.shared
            .metrics
            .set_depth(self.ready.depth(), self.ready.delayed_len());
        result
    }

    /// Run `f` in a fresh transaction; on success fold its writes into the group and
    /// arrange for `reply` to get the result once the group is durable.
    fn run_tx<T: Send + 'static>(
        &mut self,
        group: &mut Group,
        reply: Reply<T>,
        f: impl FnOnce(&mut Self, &mut Tx<'_>) -> Result<T>,
    ) {
        let tree = self.tree.clone();
        let now = self.clock.now_ms();
        let mut tx = Tx::new(&tree, &group.writes, self.next_seq, now);
        match f(self, &mut tx) {
            Ok(value) => {
                let (writes, events, next_seq, deltas) = tx.finish();
                self.next_seq = next_seq;
                self.shared.metrics.add_status(&deltas);
                group.writes.extend(writes);
                self.shared.metrics.record_events(&events);
                group.events.extend(events);
                group.done.push(Box::new(move |ok| {
                    let _ = reply.send(if ok {
                        Ok(value)
                    } else {
                        Err(StoreError::Storage("the commit failed".into()))
                    });
                }));
            }
            Err(e) => {
                if let StoreError::Storage(msg) = &e {
                    warn!(error = %msg, "read failed inside a command");
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    fn handle(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::CreateJob {
                tenant,
                job,
                plugin_version,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.create_job(tx, &tenant, job, plugin_version)
            }),
            Command::JobAction { job, action, reply } => {
                self.run_tx(group, reply, |w, tx| w.job_action(tx, &job, action))
            }
            Command::Claim { req, reply } => self.run_tx(group, reply, |w, tx| w.claim(tx, req)),
            Command::Heartbeat {
                item,
                token,
                extend_ms,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.heartbeat(tx, &item, token, extend_ms)
            }),
            Command::Complete {
                item,
                token,
                outcome,
                reply,
            } => self.run_tx(group, reply, |w, tx| w.complete(tx, &item, token, outcome)),
            Command::Step {
                item,
                token,
                name,
                state,
                reply,
            } => self.run_tx(group, reply, |w, tx| w.step(tx, &item, token, name, state)),
            Command::Progress {
                item,
                token,
                data,
                reply,
            } => self.run_tx(group, reply, |w, tx| w.progress(tx, &item, token, data)),
            Command::Log {
                item,
                token,
                level,
                message,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.log(tx, &item, token, &level, &message)
            }),
            Command::Transition {
                item,
                to,
                reason,
                input,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.transition(tx, &item, to, reason, input)
            }),
            Command::Publish {
                tenant,
                kind,
                job_id,
                data,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.publish(tx, &tenant, &kind, job_id, data)
            }),
            Command::SetPluginLimit { plugin, limit } => {
                self.ready.set_plugin_limit(&plugin, limit);
                self.wake = true;
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn expire_leases(&mut self, group: &mut Group) {
        let now = self.clock.now_ms();
        for key in self.ready.expired_leases(now) {
            let (reply, _rx) = oneshot::channel();
            self.run_tx(group, reply, |w, tx| w.expire_lease(tx, &key));
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

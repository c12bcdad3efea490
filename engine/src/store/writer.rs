//! The single writer. Every state change in the engine is a [`Command`] sent here; the
//! writer drains whatever commands are waiting, runs each in its own [`Tx`], and
//! commits the group as one `apply_batch` and one flush (group commit). Only then are
//! the callers answered and the group's events broadcast, so an acknowledged change is
//! durable and an event is never seen live before it is stored. While one group is
//! applied to the tree and flushed by a blocking task, the next is prepared, its
//! commands reading the first one's writes from memory (groups are applied and
//! answered in order).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{error, warn};

use super::error::{Result, StoreError};
use super::feed::{Feed, Published};
use super::idempotency::Idempotency;
use super::ops::{ClaimRequest, Claimed, JobAction, Outcome};
use super::ready::Ready;
use super::tx::{Finished, Jobs, Overlay, Tx};
use super::{Shared, keys::ItemKey};
use crate::clock::Clock;
use crate::model::{Event, Item, ItemStatus, Job, Lease, NewJob};

/// Most commands folded into one group; bulk creates are a group of their own anyway.
const MAX_GROUP: usize = 512;

/// Flushes under way at once. A second flush started while one runs often shares the
/// disk's work with it (a journal commit), so a command arriving during a flush is
/// sealed at once rather than made to wait for it; a third would only queue.
const FLUSHES_AT_ONCE: usize = 2;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

pub(crate) enum Command {
    CreateJob {
        tenant: String,
        job: NewJob,
        plugin_version: Option<String>,
        idem: Option<Idempotency>,
        /// The job, and whether it is an earlier request's (a replay).
        reply: Reply<(Job, bool)>,
    },
    JobAction {
        job: String,
        action: JobAction,
        reply: Reply<Job>,
    },
    DeleteJob {
        job: String,
        reply: Reply<Job>,
    },
    Claim {
        req: ClaimRequest,
        reply: Reply<Claimed>,
    },
    /// A claim for the free places of `slots`, run when its group is sealed.
    ClaimSlots {
        req: ClaimRequest,
        slots: Arc<Semaphore>,
        reply: Reply<(Claimed, OwnedSemaphorePermit)>,
    },
    Heartbeat {
        item: ItemKey,
        token: u64,
        extend_ms: Option<u64>,
        reply: Reply<Lease>,
    },
    /// Renew many leases at once (the dispatcher's round of renewals).
    Heartbeats {
        items: Vec<(ItemKey, u64)>,
        reply: Reply<Vec<Result<Lease>>>,
    },
    Complete {
        item: ItemKey,
        token: u64,
        outcome: Outcome,
        resource: Option<String>,
        reply: Reply<Item>,
    },
    Release {
        item: ItemKey,
        token: u64,
        why: String,
        reply: Reply<Item>,
    },
    /// Keep (or, with `None`, forget) a running item's sealed portal state.
    KeepState {
        item: ItemKey,
        token: u64,
        sealed: Option<Vec<u8>>,
        reply: Reply<()>,
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
        resource: Option<String>,
        reply: Reply<()>,
    },
    UpdatePool {
        job: String,
        pool: crate::model::PoolOptions,
        reply: Reply<Job>,
    },
    SessionEvent {
        tenant: String,
        kind: String,
        session_id: String,
        data: serde_json::Value,
        reply: Reply<Event>,
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
        publication: super::actions::Publication,
        reply: Reply<(Event, bool)>,
    },
    StageJob {
        tenant: String,
        job: NewJob,
        plugin_version: Option<String>,
        reply: Reply<String>,
    },
    StageItems {
        job: String,
        /// Item records and status index entries, keys and values.
        writes: Vec<(Vec<u8>, Vec<u8>)>,
        /// The references of these items, checked by the writer when the job's policy
        /// is not `allow`.
        references: Vec<String>,
        /// Answers the references found taken (nothing is written then).
        reply: Reply<Vec<String>>,
    },
    CommitStaged {
        job: String,
        total: u64,
        skipped: Option<crate::model::Skipped>,
        idem: Option<Idempotency>,
        reply: Reply<Job>,
    },
    DiscardStaged {
        job: String,
        from: u64,
        to: u64,
        last: bool,
        reply: Reply<()>,
    },
    SetPluginLimit {
        plugin: String,
        limit: Option<u32>,
    },
    SetTenantLimit {
        tenant: String,
        limit: Option<u32>,
    },
    /// Forget these idempotency keys if they are still past their time.
    SweepIdempotency {
        keys: Vec<Vec<u8>>,
        reply: Reply<usize>,
    },
    /// A handle on the tree, for a read that must not keep the database open between
    /// uses (the idempotency sweep).
    Tree {
        reply: oneshot::Sender<sled::Tree>,
    },
    CreateScheduledJob {
        run: super::schedules::ScheduledRun,
        reply: Reply<super::schedules::RunJob>,
    },
    ScheduleSkipped {
        tenant: String,
        schedule: crate::model::JobSchedule,
        reason: String,
        reply: Reply<()>,
    },
    /// Commit what is pending, stop, and release the database.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

type Done = Box<dyn FnOnce(bool) + Send>;

fn commit_failed() -> StoreError {
    StoreError::Storage("the commit failed".into())
}

/// A group applied to the tree and being flushed to disk.
struct Flushing {
    flush: tokio::task::JoinHandle<Result<(), sled::Error>>,
    /// The flush's outcome, once it has arrived.
    result: Option<Result<(), StoreError>>,
    events: Vec<Published>,
    done: Vec<Done>,
    wake: bool,
    writes: usize,
    started: std::time::Instant,
}

fn flush_result(
    r: Result<Result<(), sled::Error>, tokio::task::JoinError>,
) -> Result<(), StoreError> {
    r.map_err(|e| StoreError::Storage(format!("writer task failed: {e}")))
        .and_then(|r| r.map_err(StoreError::from))
}

/// Resolves when the flush under way is done, keeping its outcome for `finish`.
async fn flushed(f: Option<&mut Flushing>) {
    if let Some(f) = f
        && f.result.is_none()
    {
        f.result = Some(flush_result((&mut f.flush).await));
    }
}

#[derive(Default)]
struct Group {
    writes: Overlay,
    /// Jobs changed in this group, encoded into `writes` when it is applied.
    jobs: Jobs,
    events: Vec<Published>,
    done: Vec<Done>,
    /// Claims for free places, run as the group is sealed.
    claims: Vec<SlotClaim>,
}

type SlotClaim = (
    ClaimRequest,
    Arc<Semaphore>,
    Reply<(Claimed, OwnedSemaphorePermit)>,
);

pub(crate) struct Writer {
    pub tree: sled::Tree,
    pub ready: Ready,
    pub next_seq: u64,
    pub clock: Clock,
    pub feed: Arc<Feed>,
    pub shared: Arc<Shared>,
    /// Items became claimable in this group: wake the dispatchers after the commit.
    pub wake: bool,
    /// How long an idempotency key is remembered.
    pub idempotency_keep_ms: i64,
    /// The last group's writes while a blocking task applies them to the tree: the
    /// next group's commands run meanwhile and read through them.
    pub applying: Option<Arc<Overlay>>,
    /// Tells when that task has applied them (then the tree has them).
    pub applied: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Writer {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut closing = Vec::new();
        // The groups whose flushes are under way (oldest first), and the group open for
        // commands meanwhile. A group is sealed at once while fewer than
        // `FLUSHES_AT_ONCE` flushes are under way: a lone command does not wait for a
        // flush it is not in. Beyond that it stays open and is sealed the moment the
        // oldest flush is done, so under load a command waits for the rest of one flush
        // and its own, never also for a group sealed ahead of it still waiting its turn.
        let mut flushing: VecDeque<Flushing> = VecDeque::new();
        let mut open = Group::default();
        // A command went into the open group since it was last sealed.
        let mut pending = false;
        let mut failed = false;
        'groups: loop {
            if pending && flushing.len() < FLUSHES_AT_ONCE {
                pending = false;
                self.seal(&mut open);
                match self.apply(std::mem::take(&mut open)).await {
                    Ok(f) => flushing.push_back(f),
                    Err(e) => {
                        self.fail(&e);
                        failed = true;
                        break;
                    }
                }
            }
            if !closing.is_empty() && flushing.is_empty() {
                break;
            }
            let lease_deadline = self
                .ready
                .next_lease_expiry()
                .filter(|_| closing.is_empty())
                .map(|t| self.clock.instant_at(t));
            let room = open.done.len() < MAX_GROUP && closing.is_empty();
            tokio::select! {
                // A flushed group is answered before anything else: its callers (a
                // claim whose slots wait, say) should not also wait for more commands
                // to be prepared.
                biased;
                _ = flushed(flushing.front_mut()), if !flushing.is_empty() => {
                    if self.finish_flushed(&mut flushing).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                cmd = rx.recv(), if room => {
                    let Some(cmd) = cmd else { break };
                    let mut next = Some(cmd);
                    while let Some(cmd) = next.take() {
                        match cmd {
                            Command::Shutdown { reply } => closing.push(reply),
                            cmd => self.handle(cmd, &mut open),
                        }
                        pending = true;
                        // The disk is free again: answer its group and seal this one
                        // now; what is still waiting goes into the next.
                        if flushing
                            .front()
                            .is_some_and(|f| f.result.is_some() || f.flush.is_finished())
                        {
                            if self.finish_flushed(&mut flushing).await.is_err() {
                                failed = true;
                                break 'groups;
                            }
                            break;
                        }
                        if open.done.len() < MAX_GROUP && closing.is_empty() {
                            next = rx.try_recv().ok();
                        }
                    }
                }
                _ = sleep_until(lease_deadline) => pending = true,
            }
        }
        while let Some(f) = flushing.pop_front() {
            if self.finish(f).await.is_err() {
                failed = true;
            }
        }
        if pending && !failed {
            self.seal(&mut open);
            match self.apply(std::mem::take(&mut open)).await {
                Ok(f) => {
                    let _ = self.finish(f).await;
                }
                Err(e) => self.fail(&e),
            }
        }
        // A group never committed: its callers hear so.
        for d in std::mem::take(&mut open.done) {
            d(false);
        }
        // Callers still queued get `Closed` when their reply channel drops.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Command::Shutdown { reply } = cmd {
                closing.push(reply);
            }
        }
        self.feed.close();
        drop(self);
        for reply in closing {
            let _ = reply.send(());
        }
    }

    /// Answer the group whose flush is done. Flushed means applied first: this also
    /// stops reading its writes from memory.
    async fn finish_flushed(
        &mut self,
        flushing: &mut VecDeque<Flushing>,
    ) -> Result<(), StoreError> {
        let f = flushing.pop_front().expect("a group is flushing");
        self.finish(f).await?;
        self.wait_applied().await
    }

    fn fail(&self, e: &StoreError) {
        error!(error = %e, "storage failed; the engine stops writing");
        self.shared.set_fatal(e.to_string());
    }

    /// Wait until the last group's batch is in the tree, and stop reading it from memory.
    async fn wait_applied(&mut self) -> Result<(), StoreError> {
        if let Some(applied) = self.applied.take() {
            match applied.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StoreError::Storage(e)),
                Err(_) => return Err(StoreError::Storage("the store's apply task died".into())),
            }
        }
        self.applying = None;
        Ok(())
    }

    /// Hand the group's batch to a blocking task that applies it to the tree and then
    /// flushes; the next group is prepared meanwhile, reading this one's writes from
    /// memory until they are applied. Batches reach sled in order: this one starts once
    /// the one before is in.
    async fn apply(&mut self, group: Group) -> Result<Flushing, StoreError> {
        self.wait_applied().await?;
        let Group {
            mut writes,
            jobs,
            events,
            done,
            claims,
        } = group;
        debug_assert!(claims.is_empty(), "a group's claims run as it is sealed");
        for (id, job) in jobs {
            writes.insert(
                super::keys::job_key(&id),
                Some(super::codec::encode(&job).into()),
            );
        }
        let started = std::time::Instant::now();
        let n = writes.len() + events.len();
        let tree = self.tree.clone();
        let flush = if n == 0 {
            tokio::spawn(async { Ok(()) })
        } else {
            let writes = Arc::new(writes);
            // Events are read from the tree only, never through the overlay: they go
            // into the batch as blocks, compressed on the blocking thread.
            let texts: Vec<(u64, bytes::Bytes)> =
                events.iter().map(|e| (e.seq, e.json.clone())).collect();
            let (applied, wait) = oneshot::channel();
            self.applying = Some(writes.clone());
            self.applied = Some(wait);
            tokio::task::spawn_blocking(move || {
                let mut batch = sled::Batch::default();
                for (k, v) in writes.iter() {
                    match v {
                        Some(v) => batch.insert(k.as_slice(), v.clone()),
                        None => batch.remove(k.as_slice()),
                    }
                }
                for (k, v) in super::eventlog::blocks(texts.iter().map(|(s, t)| (*s, &t[..]))) {
                    batch.insert(k, v);
                }
                let r = tree.apply_batch(batch);
                let _ = applied.send(r.as_ref().map(drop).map_err(|e| e.to_string()));
                r?;
                tree.flush().map(drop)
            })
        };
        Ok(Flushing {
            flush,
            result: None,
            events,
            done,
            wake: std::mem::take(&mut self.wake),
            writes: n,
            started,
        })
    }

    /// Wait for a group's flush, then broadcast its events and answer its callers.
    async fn finish(&mut self, f: Flushing) -> Result<(), StoreError> {
        let Flushing {
            flush,
            result,
            events,
            done,
            wake,
            writes,
            started,
        } = f;
        let result = match result {
            Some(r) => r,
            None => flush_result(flush.await),
        };
        if writes > 0 {
            self.shared
                .metrics
                .record_commit(writes, done.len(), started.elapsed());
        }
        let ok = result.is_ok();
        if ok {
            self.feed.publish(events);
        }
        for d in done {
            d(ok);
        }
        if ok && wake {
            self.shared.dispatch.notify_waiters();
        }
        self.shared
            .metrics
            .set_depth(self.ready.depth(), self.ready.delayed_len());
        if let Err(e) = &result {
            self.fail(e);
        }
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
        match self.try_tx(group, f) {
            Ok(value) => group.done.push(Box::new(move |ok| {
                let _ = reply.send(if ok { Ok(value) } else { Err(commit_failed()) });
            })),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Run `f` in a fresh transaction and, if it succeeds, fold its writes into the
    /// group; its answer holds only once the group is durable.
    fn try_tx<T>(
        &mut self,
        group: &mut Group,
        f: impl FnOnce(&mut Self, &mut Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let tree = self.tree.clone();
        let applying = self.applying.clone();
        let now = self.clock.now_ms();
        let mut tx = Tx::new(
            &tree,
            applying.as_deref(),
            &group.writes,
            &group.jobs,
            self.next_seq,
            now,
        );
        let value = match f(self, &mut tx) {
            Ok(value) => value,
            Err(e) => {
                if let StoreError::Storage(msg) = &e {
                    warn!(error = %msg, "read failed inside a command");
                }
                return Err(e);
            }
        };
        let Finished {
            writes,
            jobs,
            events,
            next_seq,
            status_deltas,
        } = tx.finish();
        self.next_seq = next_seq;
        self.shared.metrics.add_status(&status_deltas);
        for key in writes.keys() {
            // A job record written or removed as bytes replaces the decoded one.
            if let Some(id) = super::keys::job_of_key(key) {
                group.jobs.remove(id);
            }
        }
        group.writes.extend(writes);
        for job in jobs {
            group.jobs.insert(job.id.clone(), job);
        }
        self.shared.metrics.record_events(events.len());
        group.events.extend(events);
        Ok(value)
    }

    fn handle(&mut self, cmd: Command, group: &mut Group) {
        match cmd {
            Command::CreateJob {
                tenant,
                job,
                plugin_version,
                idem,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.create_job(tx, &tenant, job, plugin_version, idem)
            }),
            Command::JobAction { job, action, reply } => {
                self.run_tx(group, reply, |w, tx| w.job_action(tx, &job, action))
            }
            Command::DeleteJob { job, reply } => {
                self.run_tx(group, reply, |w, tx| w.delete_job(tx, &job))
            }
            Command::Claim { req, reply } => self.run_tx(group, reply, |w, tx| w.claim(tx, req)),
            Command::ClaimSlots { req, slots, reply } => group.claims.push((req, slots, reply)),
            Command::Heartbeats { items, reply } => {
                // One command and one commit for a round of renewals; each lease is
                // its own transaction, so a lost one fails alone.
                let renewed: Vec<Result<Lease>> = items
                    .into_iter()
                    .map(|(item, token)| {
                        self.try_tx(group, |w, tx| w.heartbeat(tx, &item, token, None))
                    })
                    .collect();
                group.done.push(Box::new(move |ok| {
                    let _ = reply.send(if ok {
                        Ok(renewed)
                    } else {
                        Err(commit_failed())
                    });
                }));
            }
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
                resource,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.complete(tx, &item, token, outcome, resource)
            }),
            Command::Release {
                item,
                token,
                why,
                reply,
            } => self.run_tx(group, reply, |w, tx| w.release(tx, &item, token, &why)),
            Command::KeepState {
                item,
                token,
                sealed,
                reply,
            } => self.run_tx(group, reply, |w, tx| w.keep_state(tx, &item, token, sealed)),
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
                resource,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.progress(tx, &item, token, data, resource)
            }),
            Command::UpdatePool { job, pool, reply } => {
                self.run_tx(group, reply, |w, tx| w.update_pool(tx, &job, pool))
            }
            Command::SessionEvent {
                tenant,
                kind,
                session_id,
                data,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.session_event(tx, &tenant, &kind, &session_id, data)
            }),
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
            Command::Publish { publication, reply } => {
                self.run_tx(group, reply, |w, tx| w.publish(tx, publication))
            }
            Command::StageJob {
                tenant,
                job,
                plugin_version,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.stage_job(tx, &tenant, job, plugin_version)
            }),
            Command::SweepIdempotency { keys, reply } => {
                let keep = self.idempotency_keep_ms;
                self.run_tx(group, reply, |_, tx| {
                    super::idempotency::sweep(tx, keys, keep)
                })
            }
            Command::Tree { reply } => {
                let _ = reply.send(self.tree.clone());
            }
            Command::StageItems {
                job,
                writes,
                references,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.stage_items(tx, &job, writes, references)
            }),
            Command::CommitStaged {
                job,
                total,
                skipped,
                idem,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.commit_staged(tx, &job, total, skipped, idem)
            }),
            Command::DiscardStaged {
                job,
                from,
                to,
                last,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.discard_staged(tx, &job, from, to, last)
            }),
            Command::SetPluginLimit { plugin, limit } => {
                self.ready.set_plugin_limit(&plugin, limit);
                self.wake = true;
            }
            Command::SetTenantLimit { tenant, limit } => {
                self.ready.set_tenant_limit(&tenant, limit);
                self.wake = true;
            }
            Command::CreateScheduledJob { run, reply } => {
                self.run_tx(group, reply, |w, tx| w.create_scheduled_job(tx, run))
            }
            Command::ScheduleSkipped {
                tenant,
                schedule,
                reason,
                reply,
            } => self.run_tx(group, reply, |w, tx| {
                w.schedule_skipped(tx, &tenant, schedule, &reason)
            }),
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    /// The last commands of a group before it goes to the disk: leases run out, then
    /// the claims for free places take the places free now, after the completions
    /// that freed them (and, so, with the running counts those left).
    fn seal(&mut self, group: &mut Group) {
        self.expire_leases(group);
        for (mut req, slots, reply) in std::mem::take(&mut group.claims) {
            let free = slots.available_permits();
            let Ok(places) = slots.try_acquire_many_owned(free as u32) else {
                let _ = reply.send(Err(StoreError::Closed));
                continue;
            };
            if free == 0 {
                // An earlier claim of this group took them all.
                let _ = reply.send(Ok((Claimed::default(), places)));
                continue;
            }
            req.max = free;
            self.run_tx(group, reply, |w, tx| Ok((w.claim(tx, req)?, places)));
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

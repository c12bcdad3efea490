//! The built-in dispatcher: claims items for the plugins an [`Executor`] runs, runs
//! each under a lease (renewed for all runs together, see [`leases`]), and reports the
//! outcome. An item whose lease is lost (cancelled, expired, claimed again) is stopped,
//! and whatever it returns afterwards is discarded by the store's fencing.

mod context;
mod leases;
pub mod pool;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use context::RunContext;
pub use queue::Queue;

use crate::model::{ItemError, ItemStatus, PoolOptions, RATE_LIMITED, kind};
use crate::store::{ClaimedItem, Outcome, Store, StoreError};
use pool::Pools;

/// Runs items. The WebAssembly runtime implements it; so can a test.
pub trait Executor: Send + Sync + 'static {
    /// The plugins whose items this executor runs.
    fn plugins(&self) -> Vec<String>;

    /// Run one item to its outcome. The future is dropped if the item is stopped.
    fn run(&self, task: ClaimedItem, ctx: RunContext) -> BoxFuture<'static, Outcome>;
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Items run at once by this engine, across all plugins.
    pub concurrency: usize,
    /// After a shutdown is asked for, running items get this long to finish; the
    /// ones still running then are stopped and go back to the queue without using
    /// up an attempt.
    pub grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            concurrency: 8,
            grace: Duration::from_secs(30),
        }
    }
}

/// Why a run stopped early: its item left `running` (cancelled, lease lost), or the
/// engine is shutting down and the grace period is over.
const SHUTDOWN_REASON: &str = "the engine shut down before the item finished";

type Running = Arc<Mutex<Runs>>;

/// The runs under way (item → lease token and its stop), and the items the feed said
/// left `running` when no run of theirs was registered yet: a claim's answer and the
/// cancel of its item can cross, and the run registered a moment later must still stop.
#[derive(Default)]
struct Runs {
    by_item: HashMap<String, (u64, CancellationToken)>,
    left: HashMap<String, u64>,
    left_order: std::collections::VecDeque<String>,
}

/// How many unmatched "left running" events are remembered.
const LEFT_KEPT: usize = 4096;

impl Runs {
    /// Register a run; false if its item already left `running` under this lease.
    fn start(&mut self, item: &str, token: u64, cancel: CancellationToken) -> bool {
        let gone = self.left.remove(item).is_some_and(|seq| seq > token);
        self.by_item.insert(item.to_owned(), (token, cancel));
        !gone
    }

    fn remove(&mut self, item: &str) {
        self.by_item.remove(item);
    }

    /// The item left `running` at `seq`: stop its run, or (if `remember`) remember it
    /// for a run not registered yet.
    fn left_running(&mut self, item: &str, seq: u64, remember: bool) {
        match self.by_item.get(item) {
            Some((token, cancel)) => {
                if seq > *token {
                    cancel.cancel();
                }
            }
            None if !remember => {}
            None => {
                if self.left.insert(item.to_owned(), seq).is_none() {
                    self.left_order.push_back(item.to_owned());
                }
                while self.left_order.len() > LEFT_KEPT {
                    if let Some(old) = self.left_order.pop_front() {
                        self.left.remove(&old);
                    }
                }
            }
        }
    }
}

/// Start dispatching until `shutdown` is cancelled, then drain: nothing new is
/// claimed, running items get [`SchedulerConfig::grace`] to finish, and the rest are
/// stopped and given back to the queue. Resolves when every item it started has
/// finished or been given back.
pub async fn run(
    store: Store,
    executor: Arc<dyn Executor>,
    config: SchedulerConfig,
    shutdown: CancellationToken,
) {
    if config.concurrency == 0 {
        // A coordinator: workers elsewhere run every item.
        info!("concurrency is 0: this engine runs no items itself (workers do)");
        shutdown.cancelled().await;
        store.shared().set_draining();
        return;
    }
    run_on(Arc::new(store), executor, config, shutdown).await
}

/// [`run`] on any [`Queue`]: the engine's store, or an engine over HTTP (a worker).
pub async fn run_on(
    queue: Arc<dyn Queue>,
    executor: Arc<dyn Executor>,
    config: SchedulerConfig,
    shutdown: CancellationToken,
) {
    let running: Running = Arc::default();
    let leases = Arc::new(leases::Leases::default());
    let renewing = tokio::spawn(leases::renew(queue.clone(), leases.clone()));
    let pools = Pools::default();
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let freed = Arc::new(Notify::new());
    // Cancelled when the grace period is over: stops the runs still going.
    let stop_runs = CancellationToken::new();
    let watcher = queue.follow().map(|feed| {
        tokio::spawn(watch_events(
            feed,
            running.clone(),
            pools.clone(),
            stop_runs.clone(),
        ))
    });
    let mut tasks = tokio::task::JoinSet::new();
    info!(concurrency = config.concurrency, plugins = ?executor.plugins(), "dispatcher started");
    let starter = Starter {
        queue: &queue,
        executor: &executor,
        running: &running,
        leases: &leases,
        freed: &freed,
        pools: &pools,
        stop_runs: &stop_runs,
    };
    let most_claims = queue.claims_at_once().max(1);
    // Claims under way, each with the slots it holds for what it brings back, in the
    // order they were sent (the queue answers them in that order).
    let mut claims = futures_util::stream::FuturesOrdered::new();
    // Resolves when a claim may find something new. Made again as each claim is sent,
    // so that a commit after it is not missed, and only looked at while no claim is
    // under way (a worker's tells from its last claim's answer).
    let mut woken = Some(queue.woken());
    // The last claim answered found less than it asked for: the next one waits for a
    // wake, a freed slot or a retry coming due.
    let mut idle = false;
    // A slot was freed or a claim answered since the last claim was sent. A claim
    // takes the slots free when the store runs it, so a second one sent for the same
    // slots would find none.
    let mut fresh = true;
    let mut next_due = None;
    loop {
        // Read each round: plugins may be installed while the engine runs.
        let plugins = executor.plugins();
        let free = slots.available_permits();
        if fresh && !idle && free > 0 && !plugins.is_empty() && claims.len() < most_claims {
            fresh = false;
            woken = Some(queue.woken());
            claims.push_back(queue.claim_slots(plugins, slots.clone()));
            continue;
        }
        if woken.is_none() {
            woken = Some(queue.woken());
        }
        while tasks.try_join_next().is_some() {}
        let due = next_due.map(|t| queue.clock().instant_at(t));
        tokio::select! {
            Some(claimed) = claims.next(), if !claims.is_empty() => {
                fresh = true;
                match claimed {
                    Ok((claimed, permits)) => {
                        next_due = claimed.next_due;
                        idle = claimed.items.len() < permits.num_permits();
                        starter.start(&mut tasks, claimed.items, permits);
                    }
                    Err(StoreError::Closed) => break,
                    Err(e) => {
                        idle = true;
                        next_due = None;
                        match e {
                            // Claims resume when the disk has room again (the store wakes us).
                            StoreError::DiskFull { .. } => debug!(error = %e, "not claiming"),
                            e => warn!(error = %e, "claim failed"),
                        }
                    }
                }
            }
            _ = async { woken.as_mut().expect("made above").await }, if claims.is_empty() => {
                woken = None;
                idle = false;
                fresh = true;
            }
            _ = freed.notified() => {
                idle = false;
                fresh = true;
            }
            // A retry came due: claim once more (a due time past stays past, so it is
            // forgotten until a claim answers another).
            _ = async { match due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                next_due = None;
                idle = false;
                fresh = true;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // Items already claimed for this engine run in the drain like the others, rather
    // than wait out their leases.
    while let Some(claimed) = claims.next().await {
        if let Ok((claimed, permits)) = claimed {
            starter.start(&mut tasks, claimed.items, permits);
        }
    }
    queue.set_draining();
    if !tasks.is_empty() {
        info!(
            items = tasks.len(),
            grace_secs = config.grace.as_secs_f64(),
            "draining: running items may finish, nothing new starts"
        );
    }
    let drained = tokio::time::timeout(config.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            items = tasks.len(),
            "grace period over: stopping the items still running; they go back to the queue"
        );
        stop_runs.cancel();
        while tasks.join_next().await.is_some() {}
    }
    if let Some(w) = watcher {
        w.abort();
    }
    renewing.abort();
    info!("dispatcher stopped");
}

/// What the dispatcher hands each run it starts.
struct Starter<'a> {
    queue: &'a Arc<dyn Queue>,
    executor: &'a Arc<dyn Executor>,
    running: &'a Running,
    leases: &'a Arc<leases::Leases>,
    freed: &'a Arc<Notify>,
    pools: &'a Pools,
    stop_runs: &'a CancellationToken,
}

impl Starter<'_> {
    /// Start a run of each claimed item, each with one of the claim's slots.
    fn start(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        items: Vec<ClaimedItem>,
        mut permits: tokio::sync::OwnedSemaphorePermit,
    ) {
        for task in items {
            let permit = permits
                .split(1)
                .expect("a claim brings back no more items than it held slots for");
            let cancel = self.stop_runs.child_token();
            let live = self.running.lock().expect("running lock").start(
                &task.item.id,
                task.lease_token,
                cancel.clone(),
            );
            if !live {
                // Cancelled between its claim and now: it stops at once.
                cancel.cancel();
            }
            let (queue, executor, running, leases, freed, pools, stop_runs) = (
                self.queue.clone(),
                self.executor.clone(),
                self.running.clone(),
                self.leases.clone(),
                self.freed.clone(),
                self.pools.clone(),
                self.stop_runs.clone(),
            );
            tasks.spawn(async move {
                let run = Run {
                    queue: &queue,
                    running: &running,
                    leases: &leases,
                    pools: &pools,
                    shutdown: &stop_runs,
                };
                run.one(
                    &*executor,
                    task,
                    cancel,
                    Slot {
                        permit: Some(permit),
                        freed: &freed,
                    },
                )
                .await;
            });
        }
        // The slots nothing came back for are free again when `permits` drops. The
        // dispatcher is not told: it claims for them after a wake.
    }
}

/// A run's place among the engine's `concurrency`, given back when it is dropped (on
/// every path out of a run, a panic's too), and the dispatcher told.
struct Slot<'a> {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    freed: &'a Notify,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// What one run shares with the dispatcher.
struct Run<'a> {
    queue: &'a Arc<dyn Queue>,
    running: &'a Running,
    leases: &'a leases::Leases,
    pools: &'a Pools,
    /// Cancelled when a shutdown's grace period is over.
    shutdown: &'a CancellationToken,
}

impl Run<'_> {
    async fn one(
        &self,
        executor: &dyn Executor,
        task: ClaimedItem,
        cancel: CancellationToken,
        slot: Slot<'_>,
    ) {
        let queue = self.queue;
        let id = task.item.id.clone();
        let token = task.lease_token;
        let plugin = task.item.plugin.clone();
        let pool = task
            .pool
            .as_ref()
            .map(|p: &PoolOptions| self.pools.of(&task.item.job_id, p));
        let lease_left = (task.lease_expires_at - queue.clock().now_ms()).max(300) as u64;
        let ctx = RunContext::new(queue.clone(), &task, cancel.clone());
        self.leases.add(
            &id,
            token,
            Duration::from_millis(lease_left / 3),
            cancel.clone(),
            ctx.clone(),
        );
        // A pool job's run waits (its lease kept alive) for one of the pool's resources.
        let held = match &pool {
            None => None,
            Some(p) => tokio::select! {
                h = p.acquire() => Some(h),
                _ = cancel.cancelled() => {
                    self.leases.remove(&id, token);
                    self.stopped(&id, token).await;
                    return;
                }
            },
        };
        let resource = held.as_ref().map(|h| h.resource.clone());
        let ctx = ctx.with_resource(resource.clone());
        let started = std::time::Instant::now();
        let run = std::panic::AssertUnwindSafe(executor.run(task, ctx)).catch_unwind();
        let outcome = tokio::select! {
            out = run => Some(out.unwrap_or_else(|_| Outcome::Failed(ItemError::application("the executor panicked")))),
            _ = cancel.cancelled() => None,
        };
        let outcome = match (outcome, &pool, &resource) {
            // The resource refused the run: it rests alone; the item goes straight back to
            // the queue for another resource, so the plugin's wait is the resource's.
            (Some(Outcome::Failed(mut e)), Some(p), Some(r))
                if e.code.as_deref() == Some(RATE_LIMITED) =>
            {
                p.rest(r, e.retry_after_ms.take());
                Some(Outcome::Failed(e))
            }
            (o, _, _) => o,
        };
        drop(held);
        self.leases.remove(&id, token);
        // The run's duration reaches the metrics from its attempt, when the store
        // settles it (a worker's runs too): not from here, or it would count twice.
        debug!(item = %id, %plugin, took_ms = started.elapsed().as_millis() as u64, "run ended");
        let Some(outcome) = outcome else {
            self.stopped(&id, token).await;
            return;
        };
        self.running.lock().expect("running lock").remove(&id);
        // On a queue that takes the outcome when first polled (the engine's store), it
        // goes in before the slot is given back: the claim the freed slot makes then
        // follows it, often into the same commit, and sees the plugin's and tenant's
        // running counts without this item, and the slot waits for one commit per item,
        // not two. A worker's report is a request that may be retried for a while: it
        // keeps its slot until the engine has the outcome.
        let mut completing = queue.complete(&id, token, outcome, resource);
        let completed = if queue.takes_outcomes_at_once() {
            let first = futures_util::poll!(&mut completing);
            drop(slot);
            match first {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => completing.await,
            }
        } else {
            // The slot is given back as the run ends, below.
            completing.await
        };
        match completed {
            Ok(()) => {}
            Err(StoreError::StaleLease { reason, .. }) => {
                info!(item = %id, %reason, "result discarded: the lease was lost")
            }
            Err(e) => warn!(item = %id, error = %e, "could not record the outcome"),
        }
    }

    /// The run was stopped before it finished. A shutdown gives the item back to the
    /// queue (the attempt does not count); otherwise its item already left `running`.
    async fn stopped(&self, id: &str, token: u64) {
        self.running.lock().expect("running lock").remove(id);
        if !self.shutdown.is_cancelled() {
            debug!(item = %id, "run stopped");
            return;
        }
        match self.queue.release(id, token, SHUTDOWN_REASON).await {
            Ok(_) => info!(item = %id, "stopped by the shutdown; back in the queue"),
            Err(StoreError::StaleLease { .. }) => debug!(item = %id, "run stopped"),
            Err(e) => {
                warn!(item = %id, error = %e, "could not give the item back; its lease will expire")
            }
        }
    }
}

/// Stop runs whose item left `running` behind their back (job or item cancelled), and
/// keep the pools in step with their jobs.
async fn watch_events(
    mut feed: crate::store::feed::Follower,
    running: Running,
    pools: Pools,
    stop: CancellationToken,
) {
    loop {
        let published = tokio::select! {
            e = feed.recv() => e,
            _ = stop.cancelled() => return,
        };
        let published = match published {
            Some(Ok(p)) => p,
            // Missed some: heartbeats will find any lost lease.
            Some(Err(_)) => continue,
            None => return,
        };
        if let Some(moved) = &published.moved {
            if moved.from != ItemStatus::Running {
                continue;
            }
            // A run's own outcome also leaves `running`; only a stop from elsewhere (a
            // cancel, a requeue) needs remembering for a run not registered yet.
            let stopped = matches!(moved.to, ItemStatus::Cancelled | ItemStatus::Queued);
            running
                .lock()
                .expect("running lock")
                .left_running(&moved.item, published.seq, stopped);
            continue;
        }
        match &*published.kind {
            kind::JOB_UPDATED => {
                let event = published.event();
                if let (Some(job), Ok(pool)) = (
                    &event.job_id,
                    serde_json::from_value::<PoolOptions>(event.data["pool"].clone()),
                ) {
                    pools.update(job, &pool);
                }
            }
            kind::JOB_COMPLETED | kind::JOB_CANCELLED => {
                if let Some(job) = &published.job_id {
                    pools.remove(job);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod runs_tests {
    use super::*;

    #[test]
    fn a_cancel_that_comes_before_its_run_is_registered_still_stops_it() {
        let mut runs = Runs::default();
        // The cancel of item a (seq 20) is seen before its run (lease token 10) starts.
        runs.left_running("a", 20, true);
        assert!(!runs.start("a", 10, CancellationToken::new()));
        // An event of an earlier lease does not stop a later run.
        runs.left_running("b", 5, true);
        assert!(runs.start("b", 10, CancellationToken::new()));
        // A registered run is stopped at once; a run's own outcome is not remembered.
        let cancel = CancellationToken::new();
        assert!(runs.start("c", 30, cancel.clone()));
        runs.left_running("c", 31, true);
        assert!(cancel.is_cancelled());
        runs.remove("c");
        runs.left_running("d", 40, false);
        assert!(runs.start("d", 35, CancellationToken::new()));
        // What is remembered is bounded.
        for i in 0..LEFT_KEPT + 10 {
            runs.left_running(&format!("x{i}"), 1, true);
        }
        assert_eq!(runs.left.len(), LEFT_KEPT);
        assert_eq!(runs.left_order.len(), LEFT_KEPT);
    }
}

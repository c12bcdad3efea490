//! Durable state on sled: jobs, items, the status indexes and the event log, all in one
//! tree. Reads go straight to sled; every write is a command to the single [`writer`],
//! which commits concurrent commands together (group commit) and answers each caller
//! only after the flush.

mod actions;
mod codec;
pub use actions::{Publication, valid_topic};
mod create;
mod error;
mod eventlog;
mod fair;
pub mod feed;
pub mod idempotency;
mod item_record;
pub mod keys;
mod ops;
mod ready;
pub mod references;
pub mod schedules;
pub mod space;
mod staging;
mod tx;
pub mod webhooks;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{info, warn};

pub use create::with_defaults;
pub use error::{Result, StoreError};
pub use fair::TenantConfig;
pub use feed::{Feed, FeedLimits, Follower, Published};
pub use idempotency::Idempotency;
pub use keys::{Index, ItemKey};
pub use ops::{
    ClaimRequest, Claimed, ClaimedItem, ENGINE_SHUTDOWN, JobAction, MAX_ITEMS_PER_JOB, Outcome,
    backoff_ms,
};
pub use references::Screen;
pub use schedules::{LastRun, RunJob, Schedules};
pub use space::{Space, SpaceLimits};
pub use staging::CHUNK as STAGE_CHUNK;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{Event, Item, ItemStatus, Job, JobStatus, Lease, NewJob};
use ready::Ready;
use writer::{Command, Writer};

/// State shared between the writer, its handle and the dispatchers.
pub struct Shared {
    /// Notified after a commit that made items claimable or freed a slot.
    pub dispatch: Notify,
    pub metrics: Metrics,
    /// Free space of the store's disk; below the reserve the store is read-only.
    pub space: Arc<Space>,
    /// A shutdown is letting running items finish; nothing new starts.
    draining: std::sync::atomic::AtomicBool,
    fatal: Mutex<Option<String>>,
    fatal_notify: Notify,
}

impl Shared {
    /// The engine can no longer write: health turns unhealthy and `faena serve` exits
    /// with a failure status. The first reason is kept.
    pub fn set_fatal(&self, why: String) {
        self.fatal.lock().expect("fatal lock").get_or_insert(why);
        self.fatal_notify.notify_waiters();
    }

    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the engine stopped writing, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }
}

/// Settings of the store that come from the configuration.
pub struct StoreOptions {
    pub space: SpaceLimits,
    /// The key secrets are sealed with (`None`: a key file in the store's directory).
    pub key: Option<crate::secrets::SecretKey>,
    /// How long an idempotency key is remembered.
    pub idempotency_keep: std::time::Duration,
}

/// How often expired idempotency keys are looked for.
const IDEMPOTENCY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// One sweep of expired idempotency keys: found on a blocking thread from what is
/// committed, removed by the writer a chunk at a time. Answers how many went.
async fn sweep_once(tx: &mpsc::Sender<Command>, clock: Clock, keep: i64) -> Result<usize> {
    let (reply, rx) = oneshot::channel();
    tx.send(Command::Tree { reply })
        .await
        .map_err(|_| StoreError::Closed)?;
    let tree = rx.await.map_err(|_| StoreError::Closed)?;
    let mut from: Option<Vec<u8>> = None;
    let mut forgot = 0;
    loop {
        let (t, start, now) = (tree.clone(), from.clone(), clock.now_ms());
        let keys = tokio::task::spawn_blocking(move || {
            idempotency::expired_keys(&t, start.as_deref(), now, keep)
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        let last = keys.len() < idempotency::SWEEP_CHUNK;
        from = keys.last().cloned();
        if !keys.is_empty() {
            let (reply, rx) = oneshot::channel();
            tx.send(Command::SweepIdempotency { keys, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            forgot += rx.await.map_err(|_| StoreError::Closed)??;
        }
        if last {
            return Ok(forgot);
        }
    }
}

/// A day: a client that retries within it gets its first answer back.
pub const IDEMPOTENCY_KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            space: SpaceLimits::default(),
            key: None,
            idempotency_keep: IDEMPOTENCY_KEEP,
        }
    }
}

/// A cheap, cloneable handle on the store.
#[derive(Clone)]
pub struct Store {
    dir: Arc<std::path::Path>,
    db: sled::Db,
    tree: sled::Tree,
    tx: mpsc::Sender<Command>,
    feed: Arc<Feed>,
    shared: Arc<Shared>,
    clock: Clock,
    /// Owner name of this process's built-in workers; leases held under an older
    /// instance's name died with that process.
    instance: Arc<str>,
    secrets: crate::secrets::Secrets,
    idempotency_keep_ms: i64,
    webhooks: webhooks::Webhooks,
}

/// How long [`open_db`] waits for the database's lock. sled releases it from its
/// flusher thread after the last handle is dropped, not in the drop itself, so a
/// store reopened at once in the same process can find it still held for a moment.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Open sled at `path`, waiting out a lock released by a store this process just
/// closed; a lock held longer is another process using the same data directory.
fn open_db(path: &Path) -> Result<sled::Db> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY);
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::Storage(format!(
                        "{} is locked by another process (is another faena using this data directory?)",
                        path.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return Ok(r?),
        }
    }
}

/// Bytes of sled's page cache. sled's own default (1 GiB) lets the cache, and the
/// process, grow with everything written: a million-item import alone would fill it.
/// Recent items and events, the ones the engine reads, fit in far less.
const CACHE_CAPACITY: u64 = 128 << 20;

/// How many stored events one [`Store::event_texts`] call looks at, at most.
pub const SCAN_LIMIT: usize = 10_000;

/// Stored events as text, and how far the scan got.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// Each event's seq and its text.
    pub events: Vec<(u64, String)>,
    /// The seq of the last event looked at (`after` when none was).
    pub last: u64,
    /// The scan reached the newest stored event.
    pub end: bool,
}

/// A page of a listing and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub tenant: Option<String>,
    pub status: Option<JobStatus>,
    pub plugin: Option<String>,
    /// Only the jobs created by this schedule's runs.
    pub schedule: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EventFilter {
    pub tenant: Option<String>,
    pub jobs: Vec<String>,
    pub types: Vec<String>,
    /// Only events published under one of these topics (empty: any event).
    pub topics: Vec<String>,
}

impl EventFilter {
    pub fn matches(&self, e: &Event) -> bool {
        self.matches_parts(&e.tenant, &e.kind, e.job_id.as_deref(), e.topic.as_deref())
    }

    pub fn matches_parts(
        &self,
        tenant: &str,
        kind: &str,
        job_id: Option<&str>,
        topic: Option<&str>,
    ) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
            && (self.jobs.is_empty() || job_id.is_some_and(|j| self.jobs.iter().any(|x| x == j)))
            && (self.types.is_empty() || self.types.iter().any(|t| t == kind))
            && (self.topics.is_empty() || topic.is_some_and(|t| self.topics.iter().any(|x| x == t)))
    }
}

/// The fields of a stored event a filter looks at, decoded without the rest.
#[derive(serde::Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    job_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
}

impl EventHead<'_> {
    fn matches(&self, filter: &EventFilter) -> bool {
        filter.matches_parts(
            &self.tenant,
            &self.kind,
            self.job_id.as_deref(),
            self.topic.as_deref(),
        )
    }
}

impl Store {
    /// Open (or create) the store in `dir` and start its writer. Items left running by
    /// a previous process of this engine are put back in the queue (as a failed
    /// attempt); leases of external workers keep running until they expire.
    ///
    /// Secrets are sealed with the key in `dir`'s own key file (created on first open);
    /// `faena serve` passes the key of its data directory with [`Store::open_with`].
    pub async fn open(dir: &Path, clock: Clock) -> Result<Store> {
        Self::open_with(dir, clock, StoreOptions::default()).await
    }

    /// [`Store::open`] with settings from the configuration. A secrets key that is not
    /// the one the stored secrets were sealed with is refused (`None`: `dir`'s key file).
    pub async fn open_with(dir: &Path, clock: Clock, options: StoreOptions) -> Result<Store> {
        let path = dir.to_owned();
        let db = tokio::task::spawn_blocking(move || {
            space::set_aside_stale_snapshots(&path)
                .map_err(|e| StoreError::Storage(format!("{}: {e}", path.display())))?;
            open_db(&path)
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))??;
        let key = match options.key {
            Some(key) => key,
            None => crate::secrets::SecretKey::from_file(&dir.join(crate::secrets::KEY_FILE))
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
        };
        let (secrets, sealed) = crate::secrets::Secrets::open(db.open_tree("secrets")?, key)
            .map_err(|e| match e {
                crate::secrets::KeyError::Storage(e) => StoreError::from(e),
                other => StoreError::Invalid(other.to_string()),
            })?;
        if sealed > 0 {
            warn!(
                secrets = sealed,
                "encrypted {sealed} secret(s) that an older engine stored in plain text; \
                 older copies may remain in the store's free space until sled reuses it: \
                 rotate those secrets"
            );
        }
        let webhooks = webhooks::Webhooks::open(
            db.open_tree("webhooks")?,
            db.open_tree("webhook_deliveries")?,
            secrets.key(),
        );
        let tree = db.open_tree("faena")?;
        let idempotency_keep_ms =
            i64::try_from(options.idempotency_keep.as_millis()).unwrap_or(i64::MAX);
        let instance: Arc<str> = format!("engine:{}", ulid::Ulid::new()).into();
        let space = Arc::new(Space::default());
        space.set_limits(options.space);
        let shared = Arc::new(Shared {
            dispatch: Notify::new(),
            metrics: Metrics::default(),
            space: space.clone(),
            draining: Default::default(),
            fatal: Mutex::new(None),
            fatal_notify: Notify::new(),
        });
        let (ready, next_seq, dead) = {
            let tree = tree.clone();
            let shared = shared.clone();
            let now = clock.now_ms();
            tokio::task::spawn_blocking(move || recover(&tree, &shared, now))
                .await
                .map_err(|e| StoreError::Storage(e.to_string()))??
        };
        let feed = Arc::new(Feed::new(next_seq - 1, FeedLimits::default()));
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            tree: tree.clone(),
            ready,
            next_seq,
            clock,
            feed: feed.clone(),
            shared: shared.clone(),
            wake: false,
            idempotency_keep_ms,
            applying: None,
            applied: None,
        };
        let writing = tokio::spawn(writer.run(rx));
        {
            // A writer that dies (a panic) must not leave a half-alive engine that
            // answers reads and refuses every write: it is fatal.
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Err(e) = writing.await
                    && e.is_panic()
                {
                    let why = panic_message(e.into_panic());
                    tracing::error!(%why, "the store's writer panicked");
                    shared.set_fatal(format!("the store's writer panicked: {why}"));
                }
            });
        }
        {
            let shared = Arc::downgrade(&shared);
            space::watch(dir.to_owned(), &space, move |full| {
                if let (false, Some(shared)) = (full, shared.upgrade()) {
                    // Claims refused while the disk was full can go ahead now.
                    shared.dispatch.notify_waiters();
                }
            })
            .map_err(|e| StoreError::Storage(format!("{}: {e}", dir.display())))?;
        }
        let store = Store {
            dir: dir.into(),
            db,
            tree,
            tx,
            feed,
            shared,
            clock,
            instance,
            secrets,
            idempotency_keep_ms,
            webhooks,
        };
        store.sweep_idempotency_keys();
        if !dead.is_empty() {
            info!(
                items = dead.len(),
                "requeueing items left running by a previous process"
            );
        }
        for key in dead {
            // The process that held these leases is gone: expire them now.
            let item = store.item(&key.id())?;
            if let Some(lease) = item.lease {
                let _ = store
                    .complete(
                        &key.id(),
                        lease.token,
                        Outcome::Failed({
                            let mut e = crate::model::ItemError::application(
                                "the engine stopped while the item was running",
                            );
                            e.code = Some("engine_restarted".into());
                            e
                        }),
                    )
                    .await;
            }
        }
        Ok(store)
    }

    /// Forget idempotency keys past their time, now and then, for as long as the
    /// store is open.
    ///
    /// The task holds no handle on the database between sweeps (a weak sender to the
    /// writer), so a closed store is released at once and the task ends with it.
    fn sweep_idempotency_keys(&self) {
        let writer = self.tx.downgrade();
        let (clock, keep) = (self.clock, self.idempotency_keep_ms);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDEMPOTENCY_SWEEP_EVERY).await;
                let Some(tx) = writer.upgrade() else { return };
                match sweep_once(&tx, clock, keep).await {
                    Ok(0) => {}
                    Ok(n) => info!(keys = n, "forgot expired idempotency keys"),
                    Err(StoreError::Closed) => return,
                    Err(e) => warn!(error = %e, "sweeping idempotency keys failed"),
                }
            }
        });
    }

    /// Stop the writer after committing what is pending, and release the database
    /// once every other handle is dropped too.
    pub async fn close(self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// `Err(DiskFull)` while the disk is below its reserve. Routes that write outside
    /// the writer (keys, secrets) ask this first.
    pub fn writable(&self) -> Result<()> {
        self.shared.space.check()
    }

    /// Resolves when the store can no longer write (disk failure, a writer that died).
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.shared.fatal_notify.notified();
            if let Some(why) = self.shared.fatal.lock().expect("fatal lock").clone() {
                return why;
            }
            notified.await;
        }
    }

    /// The live feed of committed events.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Follow the events committed from now on.
    pub fn follow(&self) -> Follower {
        self.feed.follow(self.feed.head())
    }

    /// Artifacts of this store: files under its directory, metadata in its database.
    pub fn artifacts(&self) -> Result<crate::artifacts::Artifacts> {
        crate::artifacts::Artifacts::open(
            &self.dir.join("artifacts"),
            self.db.open_tree("artifacts")?,
        )
    }

    /// Secrets of this store, sealed with the key it was opened with.
    pub fn secrets(&self) -> Result<crate::secrets::Secrets> {
        Ok(self.secrets.clone())
    }

    /// Webhook subscriptions and their deliveries (one set per store: clones share
    /// the signal the delivery task waits on).
    pub fn webhooks(&self) -> &webhooks::Webhooks {
        &self.webhooks
    }

    pub fn keys(&self) -> Result<crate::auth::Keys> {
        Ok(crate::auth::Keys::new(self.db.open_tree("api_keys")?))
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    async fn send<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn item_key(id: &str) -> Result<ItemKey> {
        ItemKey::parse(id).ok_or_else(|| StoreError::not_found("item", id))
    }

    // ---- writes -------------------------------------------------------------------

    pub async fn create_job(
        &self,
        tenant: &str,
        job: NewJob,
        plugin_version: Option<String>,
    ) -> Result<Job> {
        Ok(self
            .create_job_once(tenant, job, plugin_version, None)
            .await?
            .0)
    }

    /// [`Store::create_job`] under an idempotency key: the job is recorded under the
    /// key in the same write, and a request with a key already answered gets that
    /// job back (`true`: a replay) without writing anything.
    pub async fn create_job_once(
        &self,
        tenant: &str,
        job: NewJob,
        plugin_version: Option<String>,
        idem: Option<Idempotency>,
    ) -> Result<(Job, bool)> {
        self.writable()?;
        let tenant = tenant.to_owned();
        self.send(|reply| Command::CreateJob {
            tenant,
            job,
            plugin_version,
            idem,
            reply,
        })
        .await
    }

    /// The answer recorded under `idem`'s key, if it is still kept; an error if the
    /// key was used with a different request.
    pub fn replayed(&self, idem: &Idempotency) -> Result<Option<serde_json::Value>> {
        let raw = self.tree.get(idem.id())?;
        idempotency::lookup(
            raw.as_deref(),
            idem,
            self.clock.now_ms(),
            self.idempotency_keep_ms,
        )
    }

    pub async fn job_action(&self, job: &str, action: JobAction) -> Result<Job> {
        if !keys::valid_job_id(job) {
            return Err(StoreError::not_found("job", job));
        }
        // Pausing and cancelling stay possible on a full disk: they stop work.
        if !matches!(action, JobAction::Pause | JobAction::Cancel) {
            self.writable()?;
        }
        let job = job.to_owned();
        self.send(|reply| Command::JobAction { job, action, reply })
            .await
    }

    /// Delete a finished, cancelled or never-started job with its items (409 for a
    /// job that may still run). Deleting frees space, so it works on a full disk.
    pub async fn delete_job(&self, job: &str) -> Result<Job> {
        if !keys::valid_job_id(job) {
            return Err(StoreError::not_found("job", job));
        }
        let job = job.to_owned();
        self.send(|reply| Command::DeleteJob { job, reply }).await
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<Claimed> {
        self.writable()?;
        self.send(|reply| Command::Claim { req, reply }).await
    }

    /// Claim items for the free places of `slots` (`req.max` is ignored), taken when
    /// the writer seals the group this claim is in; each item comes with its place.
    pub async fn claim_slots(
        &self,
        req: ClaimRequest,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Result<(Claimed, tokio::sync::OwnedSemaphorePermit)> {
        self.writable()?;
        self.send(|reply| Command::ClaimSlots { req, slots, reply })
            .await
    }

    pub async fn heartbeat(&self, item: &str, token: u64, extend_ms: Option<u64>) -> Result<Lease> {
        let item = Self::item_key(item)?;
        self.send(|reply| Command::Heartbeat {
            item,
            token,
            extend_ms,
            reply,
        })
        .await
    }

    /// Renew the leases of many running items in one commit; one answer per item, in
    /// order (an item id that is not one answers `NotFound`).
    pub async fn heartbeats(&self, items: &[(String, u64)]) -> Result<Vec<Result<Lease>>> {
        let mut keys = Vec::with_capacity(items.len());
        let mut bad = Vec::new();
        for (i, (id, token)) in items.iter().enumerate() {
            match Self::item_key(id) {
                Ok(key) => keys.push((key, *token)),
                Err(e) => bad.push((i, e)),
            }
        }
        let mut renewed = self
            .send(|reply| Command::Heartbeats { items: keys, reply })
            .await?;
        for (i, e) in bad {
            renewed.insert(i, Err(e));
        }
        Ok(renewed)
    }

    pub async fn complete(&self, item: &str, token: u64, outcome: Outcome) -> Result<Item> {
        self.complete_on(item, token, outcome, None).await
    }

    /// Finish a run that held the pool resource `resource`.
    pub async fn complete_on(
        &self,
        item: &str,
        token: u64,
        outcome: Outcome,
        resource: Option<String>,
    ) -> Result<Item> {
        let item = Self::item_key(item)?;
        self.send(|reply| Command::Complete {
            item,
            token,
            outcome,
            resource,
            reply,
        })
        .await
    }

    /// Give a running item back to the queue because this engine is shutting down;
    /// the interrupted attempt does not count.
    pub async fn release(&self, item: &str, token: u64, why: &str) -> Result<Item> {
        let item = Self::item_key(item)?;
        let why = why.to_owned();
        self.send(|reply| Command::Release {
            item,
            token,
            why,
            reply,
        })
        .await
    }

    /// Change the pool of a job that has one; durable when it returns.
    pub async fn update_pool(&self, job: &str, pool: crate::model::PoolOptions) -> Result<Job> {
        if !keys::valid_job_id(job) {
            return Err(StoreError::not_found("job", job));
        }
        self.writable()?;
        let job = job.to_owned();
        self.send(|reply| Command::UpdatePool { job, pool, reply })
            .await
    }

    /// Record an event of a session (opened, closed) on the log and the feed.
    pub async fn session_event(
        &self,
        tenant: &str,
        kind: &str,
        session_id: &str,
        data: serde_json::Value,
    ) -> Result<Event> {
        let (tenant, kind, session_id) =
            (tenant.to_owned(), kind.to_owned(), session_id.to_owned());
        self.send(|reply| Command::SessionEvent {
            tenant,
            kind,
            session_id,
            data,
            reply,
        })
        .await
    }

    /// A tree of its own for a subsystem's records (sessions), in the same database.
    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        Ok(self.db.open_tree(name)?)
    }

    /// Keep a running item's portal state across its attempts, sealed with the
    /// store's key (bound to the item's id); `None` forgets it. Fenced by the lease.
    pub async fn keep_state(&self, item: &str, token: u64, state: Option<Vec<u8>>) -> Result<()> {
        let id = item;
        let item = Self::item_key(item)?;
        if state.as_ref().is_some_and(|s| s.len() > MAX_KEPT_STATE) {
            return Err(StoreError::Invalid(format!(
                "the portal state to keep is larger than {} KiB",
                MAX_KEPT_STATE / 1024
            )));
        }
        // Not refused on a low disk: like a checkpoint, it belongs to a run under way.
        let sealed = state.map(|s| self.secrets.key().seal(kept_aad(id).as_bytes(), &s));
        self.send(|reply| Command::KeepState {
            item,
            token,
            sealed,
            reply,
        })
        .await
    }

    /// The portal state an earlier attempt of `item` kept, if any.
    pub fn kept_state(&self, item: &str) -> Result<Option<Vec<u8>>> {
        let key = Self::item_key(item)?;
        let Some(sealed) = self.tree.get(key.kept_key())? else {
            return Ok(None);
        };
        match self.secrets.key().open(kept_aad(item).as_bytes(), &sealed) {
            Some(plain) => Ok(Some(plain)),
            None => Err(StoreError::Invalid(format!(
                "the kept portal state of item {item} does not decrypt with this engine's key"
            ))),
        }
    }

    pub async fn step(
        &self,
        item: &str,
        token: u64,
        name: String,
        state: Option<String>,
    ) -> Result<()> {
        let item = Self::item_key(item)?;
        self.send(|reply| Command::Step {
            item,
            token,
            name,
            state,
            reply,
        })
        .await
    }

    pub async fn progress(
        &self,
        item: &str,
        token: u64,
        data: serde_json::Value,
        resource: Option<String>,
    ) -> Result<()> {
        let item = Self::item_key(item)?;
        self.send(|reply| Command::Progress {
            item,
            token,
            data,
            resource,
            reply,
        })
        .await
    }

    pub async fn log(&self, item: &str, token: u64, level: &str, message: &str) -> Result<()> {
        let item = Self::item_key(item)?;
        let (level, message) = (level.to_owned(), message.to_owned());
        self.send(|reply| Command::Log {
            item,
            token,
            level,
            message,
            reply,
        })
        .await
    }

    pub async fn transition(
        &self,
        item: &str,
        to: ItemStatus,
        reason: Option<String>,
        input: Option<serde_json::Value>,
    ) -> Result<Item> {
        let item = Self::item_key(item)?;
        // Cancelling an item stops work and stays possible on a full disk.
        if to != ItemStatus::Cancelled {
            self.writable()?;
        }
        self.send(|reply| Command::Transition {
            item,
            to,
            reason,
            input,
            reply,
        })
        .await
    }

    pub async fn publish(
        &self,
        tenant: &str,
        kind: &str,
        job_id: Option<String>,
        data: serde_json::Value,
    ) -> Result<Event> {
        let publication = Publication {
            tenant: tenant.to_owned(),
            kind: kind.to_owned(),
            job_id,
            topic: None,
            data,
            idem: None,
            engine: false,
        };
        Ok(self.publish_once(publication).await?.0)
    }

    /// A client's event, under its idempotency key if it has one (see
    /// [`Store::create_job_once`]); `true` when an earlier request published it.
    pub async fn publish_once(&self, publication: Publication) -> Result<(Event, bool)> {
        self.writable()?;
        self.send(|reply| Command::Publish {
            publication: Publication {
                engine: false,
                ..publication
            },
            reply,
        })
        .await
    }

    /// An event of the engine's own (one of `kind::BUILTIN`) that no command emits
    /// itself, e.g. a webhook turned off.
    pub async fn publish_engine_event(
        &self,
        tenant: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Event> {
        let publication = Publication {
            tenant: tenant.to_owned(),
            kind: kind.to_owned(),
            job_id: None,
            topic: None,
            data,
            idem: None,
            engine: true,
        };
        self.send(|reply| Command::Publish { publication, reply })
            .await
            .map(|(event, _)| event)
    }

    /// At most `limit` items of `plugin` run at once, across all workers.
    pub async fn set_plugin_limit(&self, plugin: &str, limit: Option<u32>) {
        let _ = self
            .tx
            .send(Command::SetPluginLimit {
                plugin: plugin.to_owned(),
                limit,
            })
            .await;
    }

    /// At most `limit` items of `tenant` run at once, across plugins and workers.
    pub async fn set_tenant_limit(&self, tenant: &str, limit: Option<u32>) {
        let _ = self
            .tx
            .send(Command::SetTenantLimit {
                tenant: tenant.to_owned(),
                limit,
            })
            .await;
    }

    // ---- reads --------------------------------------------------------------------

    pub fn job(&self, id: &str) -> Result<Job> {
        if !keys::valid_job_id(id) {
            return Err(StoreError::not_found("job", id));
        }
        let raw = self
            .tree
            .get(keys::job_key(id))?
            .ok_or_else(|| StoreError::not_found("job", id))?;
        codec::decode(&raw)
    }

    pub fn item(&self, id: &str) -> Result<Item> {
        let key = Self::item_key(id)?;
        let raw = self
            .tree
            .get(key.item_key())?
            .ok_or_else(|| StoreError::not_found("item", id))?;
        item_record::decode(&key, &raw)
    }

    /// Jobs, newest first. `cursor` is the last job id of the previous page. The last
    /// page has no cursor; a full page whose filter matches nothing among the next
    /// [`SCAN_LIMIT`] jobs answers one, and the page after it may be empty.
    pub fn jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Job>> {
        let upper = match cursor {
            Some(c) => keys::job_key(c),
            None => vec![keys::JOB + 1],
        };
        let mut out = Vec::new();
        // Once the page is full, whether another job of the filter follows is looked
        // for among at most SCAN_LIMIT more: past that, the page answers a cursor.
        let mut beyond = 0;
        let mut more = false;
        for kv in self.tree.range(vec![keys::JOB]..upper).rev() {
            if out.len() == limit {
                if beyond == SCAN_LIMIT {
                    more = true;
                    break;
                }
                beyond += 1;
            }
            let (_, v) = kv?;
            let job: Job = codec::decode(&v)?;
            let keep = filter.tenant.as_ref().is_none_or(|t| *t == job.tenant)
                && filter.status.is_none_or(|s| s == job.status)
                && filter.plugin.as_ref().is_none_or(|p| *p == job.plugin)
                && filter
                    .schedule
                    .as_ref()
                    .is_none_or(|s| job.schedule.as_ref().is_some_and(|js| js.id == *s));
            if keep {
                if out.len() == limit {
                    // Another job follows: the page is not the last one.
                    more = true;
                    break;
                }
                out.push(job);
            }
        }
        let next = more.then(|| out.last().map(|j| j.id.clone())).flatten();
        Ok(Page { items: out, next })
    }

    /// Items of a job in index order, optionally of one status or matching a reference
    /// fragment. `cursor` is the last index of the previous page. A page is cut short,
    /// with a cursor, once [`SCAN_LIMIT`] items were looked at (a rare status or
    /// reference in a large job).
    pub fn items(
        &self,
        job: &str,
        status: Option<ItemStatus>,
        reference: Option<&str>,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Page<Item>> {
        self.job(job)?;
        let start = cursor.map(|c| c + 1).unwrap_or(0);
        // A status with index entries walks them; any other walks the job's records.
        let (lower, prefix) = match status.and_then(Index::of) {
            Some(listed) => (
                keys::index_key(listed, job, start),
                keys::index_prefix(listed, Some(job)),
            ),
            None => (keys::item_key(job, start), keys::item_prefix(job)),
        };
        let (items, last) = self.walk_items(lower, &prefix, limit, |item| {
            Ok(status.is_none_or(|s| item.status == s)
                && reference
                    .is_none_or(|r| item.reference.as_deref().is_some_and(|x| x.contains(r))))
        })?;
        Ok(Page {
            items,
            next: last.map(|k| k.index.to_string()),
        })
    }

    /// Items of one status across all jobs (the review queue), oldest job first.
    /// `cursor` is the last item id of the previous page; a page is cut short, with a
    /// cursor, once [`SCAN_LIMIT`] items were looked at.
    pub fn items_by_status(
        &self,
        tenant: Option<&str>,
        status: ItemStatus,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<Item>> {
        let listed = Index::of(status);
        let prefix = match listed {
            Some(listed) => keys::index_prefix(listed, None),
            None => vec![keys::ITEM],
        };
        let lower = match cursor.and_then(ItemKey::parse) {
            Some(k) => {
                let mut l = match listed {
                    Some(listed) => k.index_key(listed),
                    None => k.item_key(),
                };
                l.push(0);
                l
            }
            None => prefix.clone(),
        };
        // Items of a job still being created (`staging`) are nobody's yet.
        let mut staged: Option<(String, bool)> = None;
        let (items, last) = self.walk_items(lower, &prefix, limit, |item| {
            if staged.as_ref().is_none_or(|(job, _)| *job != item.job_id) {
                let hidden = self.tree.contains_key(keys::staged_key(&item.job_id))?;
                staged = Some((item.job_id.clone(), hidden));
            }
            let hidden = staged.as_ref().is_some_and(|(_, hidden)| *hidden);
            Ok(!hidden && item.status == status && tenant.is_none_or(|t| t == item.tenant))
        })?;
        Ok(Page {
            items,
            next: last.map(|k| k.id()),
        })
    }

    /// Walks the keys under `prefix` from `lower`, each an item's record or its index
    /// entry, and answers the items `keep` accepts, at most `limit`. Stops early after
    /// [`SCAN_LIMIT`] items looked at, so a rare filter cannot hold a thread for a whole
    /// job or store; the key answered beside the page is where to go on, absent at the
    /// end.
    fn walk_items(
        &self,
        lower: Vec<u8>,
        prefix: &[u8],
        limit: usize,
        mut keep: impl FnMut(&Item) -> Result<bool>,
    ) -> Result<(Vec<Item>, Option<ItemKey>)> {
        let mut out = Vec::new();
        let mut last = None;
        for (looked, kv) in self.tree.range(lower..).enumerate() {
            let (k, v) = kv?;
            if !k.starts_with(prefix) {
                break;
            }
            if out.len() == limit || looked == SCAN_LIMIT {
                return Ok((out, last));
            }
            let key = keys::split_item_suffix(&k)
                .ok_or_else(|| StoreError::Storage("corrupt item or index key".into()))?;
            let item = if k.first() == Some(&keys::ITEM) {
                item_record::decode(&key, &v)?
            } else {
                match self.tree.get(key.item_key())? {
                    Some(raw) => item_record::decode(&key, &raw)?,
                    None => {
                        last = Some(key);
                        continue;
                    }
                }
            };
            if keep(&item)? {
                out.push(item);
            }
            last = Some(key);
        }
        Ok((out, None))
    }

    /// Stored events after `after`, matching `filter`, at most `limit`. Also returns the
    /// last seq looked at, so a caller can continue past a run of non-matching events.
    pub fn events(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<(Vec<Event>, u64)> {
        let mut out = Vec::new();
        let mut last = after;
        // Nothing comes after the largest seq (and `after + 1` must not wrap to 0).
        let Some(first) = after.checked_add(1) else {
            return Ok((out, last));
        };
        for kv in eventlog::after(&self.tree, first) {
            let (seq, v) = kv?;
            last = seq;
            let e: Event = serde_json::from_slice(&v)?;
            if filter.matches(&e) {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok((out, last))
    }

    /// The seq of the newest stored event at or before `at` that matches `filter`: 0
    /// when none does, `None` when [`SCAN_LIMIT`] events were looked at without finding
    /// one (the feed then cannot say which event of a subscription came before).
    pub fn last_match(&self, filter: &EventFilter, at: u64) -> Option<u64> {
        for (looked, kv) in eventlog::before(&self.tree, at).enumerate() {
            if looked == SCAN_LIMIT {
                return None;
            }
            let (seq, v) = kv.ok()?;
            let head: EventHead<'_> = serde_json::from_slice(&v).ok()?;
            if head.matches(filter) {
                return Some(seq);
            }
        }
        // The log's start was reached.
        Some(0)
    }

    /// Stored events after `after` matching `filter`, as stored (their JSON text), for
    /// the feed: only the fields the filter needs are decoded. At most `limit` events,
    /// and at most [`SCAN_LIMIT`] looked at, so a rare filter cannot hold a thread for
    /// the whole log; `last` says where to continue.
    pub fn event_texts(&self, after: u64, filter: &EventFilter, limit: usize) -> Result<EventPage> {
        let mut page = EventPage {
            events: Vec::new(),
            last: after,
            end: true,
        };
        let Some(first) = after.checked_add(1) else {
            return Ok(page);
        };
        for (scanned, kv) in eventlog::after(&self.tree, first).enumerate() {
            if scanned == SCAN_LIMIT || page.events.len() == limit {
                page.end = false;
                break;
            }
            let (seq, v) = kv?;
            page.last = seq;
            let head: EventHead<'_> = serde_json::from_slice(&v)?;
            if head.matches(filter) {
                let text = String::from_utf8(v)
                    .map_err(|e| StoreError::Storage(format!("event {seq}: {e}")))?;
                page.events.push((seq, text));
            }
        }
        Ok(page)
    }

    /// The newest stored event's seq (0 when there is none).
    pub fn last_seq(&self) -> Result<u64> {
        eventlog::last_seq(&self.tree)
    }

    pub fn item_logs(&self, id: &str) -> Result<Vec<serde_json::Value>> {
        let key = Self::item_key(id)?;
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(keys::log_prefix(&key.job, key.index)) {
            out.push(codec::decode(&kv?.1)?);
        }
        Ok(out)
    }

    /// Items by status across the whole store, counted from their records: every item
    /// is read (for tests and checks; the metrics keep their counts as items move).
    pub fn count_by_status(&self) -> Result<Vec<(ItemStatus, u64)>> {
        let mut counts = [0u64; ItemStatus::ALL.len()];
        for kv in self.tree.scan_prefix([keys::ITEM]) {
            let (k, v) = kv?;
            let key = keys::split_item_suffix(&k)
                .ok_or_else(|| StoreError::Storage("corrupt item key".into()))?;
            let item = item_record::decode(&key, &v)?;
            counts[item.status.code() as usize] += 1;
        }
        Ok(ItemStatus::ALL
            .iter()
            .map(|st| (*st, counts[st.code() as usize]))
            .collect())
    }
}

/// Largest portal state (cookies, local storage, HTTP jar) kept for one item.
pub const MAX_KEPT_STATE: usize = 1024 * 1024;

fn kept_aad(item: &str) -> String {
    format!("kept:{item}")
}

/// What a panicking task said, for the log and `/health`.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Rebuild the in-memory queues from the status indexes. Returns the ready state, the
/// next event seq and the items whose lease belonged to a previous engine process.
fn recover(tree: &sled::Tree, shared: &Shared, now: i64) -> Result<(Ready, u64, Vec<ItemKey>)> {
    let migrated = codec::migrate(tree)?;
    if migrated != codec::Migrated::default() {
        info!(
            records = migrated.rewritten,
            index_entries = migrated.reindexed,
            format = codec::FORMAT,
            "brought the store of an older engine to this engine's format"
        );
    }
    let unfinished = staging::discard_unfinished(tree)?;
    if unfinished > 0 {
        info!(
            jobs = unfinished,
            "removed jobs a previous process was still creating"
        );
    }
    let mut ready = Ready::default();
    let next_seq = eventlog::last_seq(tree)? + 1;
    // Running items share the open index entry with queued ones: their jobs' counts
    // say how many of a job's entries to read the record of before the rest are known
    // to be queued.
    let mut running: HashMap<String, u64> = HashMap::new();
    let mut totals = [0i64; ItemStatus::ALL.len()];
    for kv in tree.range(vec![keys::JOB]..vec![keys::JOB + 1]) {
        let job: Job = codec::decode(&kv?.1)?;
        for st in ItemStatus::ALL {
            totals[st.code() as usize] += job.counts.get(st) as i64;
        }
        if job.counts.running > 0 {
            running.insert(job.id.clone(), job.counts.running);
        }
        if matches!(job.status, JobStatus::Running | JobStatus::Paused) {
            ready.add_job(&job, job.status == JobStatus::Paused);
        }
    }
    let mut dead = Vec::new();
    for kv in tree.scan_prefix(keys::index_prefix(Index::Open, None)) {
        let (k, v) = kv?;
        let key = keys::split_item_suffix(&k).expect("status key");
        if let Some(left) = running.get_mut(key.job.as_str()).filter(|n| **n > 0) {
            let Some(raw) = tree.get(key.item_key())? else {
                continue;
            };
            let item = item_record::decode(&key, &raw)?;
            if item.status == ItemStatus::Running {
                *left -= 1;
                ready.count_running(&key);
                match item.lease {
                    Some(l) if !l.owner.starts_with("engine:") => {
                        ready.set_lease(key, l.expires_at)
                    }
                    _ => dead.push(key),
                }
                continue;
            }
        }
        ready.push(key, tx::decode_not_before(&v), now);
    }
    for (job, left) in running.iter().filter(|(_, left)| **left > 0) {
        warn!(
            job,
            missing = left,
            "the job counts more running items than its index holds"
        );
    }
    for st in ItemStatus::ALL {
        shared
            .metrics
            .set_status_count(st, totals[st.code() as usize]);
    }
    Ok((ready, next_seq, dead))
}

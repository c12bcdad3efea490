//! What each command does, inside one transaction. Every function checks everything
//! that can be refused before it changes anything, so a refusal leaves no trace in the
//! in-memory queues either.

use poem_openapi::Object;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{Result, StoreError};
use super::idempotency::{self, Idempotency};
use super::keys::{self, ItemKey};
use super::references;
use super::tx::Tx;
use super::writer::Writer;
use crate::model::{
    Actor, Attempt, ErrorKind, FailurePolicy, Item, ItemError, ItemStatus, Job, JobOptions,
    JobStatus, Lease, NewItem, NewJob, PoolOptions, RATE_LIMITED, ReferencePolicy, Step, kind,
    limits,
};

/// Largest job accepted in one request.
pub const MAX_ITEMS_PER_JOB: usize = 1_000_000;
/// The error code of an attempt a shutdown interrupted (it does not count).
pub const ENGINE_SHUTDOWN: &str = "engine_shutdown";
/// Largest checkpoint state, progress payload or log line.
pub const MAX_SMALL_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    Start,
    Pause,
    Resume,
    Cancel,
    RetryFailed,
}

/// How a run ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded(serde_json::Value),
    Failed(ItemError),
}

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Who will hold the lease: `engine:{instance}` for the built-in dispatcher, the
    /// worker's own name for external workers.
    pub owner: String,
    pub tenant: Option<String>,
    pub plugins: Vec<String>,
    pub max: usize,
    pub lease_ms: Option<u64>,
    /// Claim this item and no other (409 if it is not queued).
    pub item: Option<ItemKey>,
}

/// An item handed to a worker, with what it needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClaimedItem {
    pub item: Item,
    pub operation: String,
    pub plugin_version: Option<String>,
    /// Present the token with every heartbeat, checkpoint and completion.
    pub lease_token: u64,
    pub lease_expires_at: i64,
    /// Same for every attempt of this item.
    pub idempotency_key: String,
    /// The job's pool: the run must hold one of its resources.
    pub pool: Option<PoolOptions>,
}

#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub items: Vec<ClaimedItem>,
    /// When the next delayed item becomes claimable, if any.
    pub next_due: Option<i64>,
}

fn check_name(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{field}: `{value}` must be 1-64 characters of a-z, 0-9, `_`, `-` or `.`"
        )))
    }
}

/// `field` must lie in `range`; the message names the field, the value and the range.
fn check_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{field}: {value} is not between {} and {}",
            range.start(),
            range.end()
        )))
    }
}

fn check_options(o: &JobOptions) -> Result<()> {
    check_range("options.priority", o.priority, limits::PRIORITY)?;
    check_range("options.concurrency", o.concurrency, limits::CONCURRENCY)?;
    check_range("options.max_attempts", o.max_attempts, limits::MAX_ATTEMPTS)?;
    check_range("options.backoff_ms", o.backoff_ms, limits::BACKOFF_MS)?;
    check_range(
        "options.max_backoff_ms",
        o.max_backoff_ms,
        limits::BACKOFF_MS,
    )?;
    check_range("options.lease_ms", o.lease_ms, limits::LEASE_MS)?;
    if o.backoff_ms > o.max_backoff_ms {
        return Err(StoreError::Invalid(format!(
            "options.backoff_ms: {} is above options.max_backoff_ms ({})",
            o.backoff_ms, o.max_backoff_ms
        )));
    }
    if let Some(pool) = &o.pool {
        check_pool(pool)?;
    }
    Ok(())
}

/// `now` plus `ms`, saturating: stored durations never overflow the clock arithmetic.
pub(crate) fn after(now: i64, ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Most resources one pool may have.
pub const MAX_POOL_RESOURCES: usize = 1_000;

fn check_pool(p: &PoolOptions) -> Result<()> {
    if p.resources.is_empty() || p.resources.len() > MAX_POOL_RESOURCES {
        return Err(StoreError::Invalid(format!(
            "options.pool.resources: a pool needs 1 to {MAX_POOL_RESOURCES} resources, got {}",
            p.resources.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in p.resources.iter().enumerate() {
        let ok = !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(StoreError::Invalid(format!(
                "options.pool.resources[{i}]: `{r}` must be 1-128 visible ASCII characters"
            )));
        }
        if !seen.insert(r) {
            return Err(StoreError::Invalid(format!(
                "options.pool.resources[{i}]: `{r}` is listed twice"
            )));
        }
    }
    check_range("options.pool.concurrency", p.concurrency, 1..=1_000)?;
    check_range(
        "options.pool.rate_per_minute",
        p.rate_per_minute,
        limits::RATE_PER_MINUTE,
    )?;
    check_range(
        "options.pool.rate_limit_backoff_ms",
        p.rate_limit_backoff_ms,
        limits::BACKOFF_MS,
    )?;
    Ok(())
}

/// An item's input with the job's shared fields under it (the item's own win).
pub fn with_defaults(
    index: usize,
    input: serde_json::Value,
    defaults: Option<&serde_json::Value>,
) -> Result<serde_json::Value> {
    let Some(defaults) = defaults else {
        return Ok(input);
    };
    match (defaults, input) {
        (serde_json::Value::Object(d), serde_json::Value::Object(mut own)) => {
            for (k, v) in d {
                own.entry(k.clone()).or_insert_with(|| v.clone());
            }
            Ok(serde_json::Value::Object(own))
        }
        (serde_json::Value::Object(_), _) => Err(StoreError::Invalid(format!(
            "items[{index}].input: must be an object to take the job's `input` fields"
        ))),
        _ => Err(StoreError::Invalid(
            "input: the job's shared input must be a JSON object".into(),
        )),
    }
}

/// A new job's record, checked (name, operation, options, shared input) but without
/// items or counts: [`Writer::create_job`] and the staged creation of big imports
/// (`store::staging`) both start from it.
pub(super) fn new_job(
    now: i64,
    tenant: &str,
    new: &NewJob,
    plugin_version: Option<String>,
) -> Result<Job> {
    check_name("plugin", &new.plugin)?;
    check_name("operation", &new.operation)?;
    check_options(&new.options)?;
    if let Some(d) = &new.input
        && !d.is_object()
    {
        return Err(StoreError::Invalid(
            "input: the job's shared input must be a JSON object".into(),
        ));
    }
    Ok(Job {
        id: keys::new_job_id(),
        tenant: tenant.to_owned(),
        plugin: new.plugin.clone(),
        operation: new.operation.clone(),
        plugin_version,
        name: new.name.clone(),
        status: if new.start {
            JobStatus::Running
        } else {
            JobStatus::Pending
        },
        options: new.options.clone(),
        counts: Default::default(),
        created_at: now,
        started_at: new.start.then_some(now),
        finished_at: None,
        updated_at: now,
        resources: Default::default(),
        awaiting_review: false,
        skipped: None,
        schedule: None,
    })
}

/// The status a new job's items start in: queued when it starts at once.
pub(super) fn initial_status(job: &Job) -> ItemStatus {
    if job.status == JobStatus::Pending {
        ItemStatus::Pending
    } else {
        ItemStatus::Queued
    }
}

/// Item `index` of `job`, as it is first stored: every item of every job is made here.
pub(super) fn new_item(
    job: &Job,
    index: u64,
    it: NewItem,
    defaults: Option<&serde_json::Value>,
    now: i64,
) -> Result<Item> {
    if it.reference.as_ref().is_some_and(|r| r.len() > 256) {
        return Err(StoreError::Invalid(format!(
            "items[{index}].reference: longer than 256 characters"
        )));
    }
    Ok(Item {
        id: format!("{}-{index}", job.id),
        job_id: job.id.clone(),
        tenant: job.tenant.clone(),
        index,
        plugin: job.plugin.clone(),
        reference: it.reference,
        input: with_defaults(index as usize, it.input, defaults)?,
        status: initial_status(job),
        attempt: 0,
        max_attempts: job.options.max_attempts,
        not_before: None,
        lease: None,
        attempts: Vec::new(),
        steps: Vec::new(),
        error: None,
        result: None,
        resource: None,
        created_at: now,
        updated_at: now,
    })
}

/// Delay before retry number `attempt` (the attempt that just failed): exponential from
/// `backoff_ms`, capped, with jitter in the upper half so retries of a batch spread out,
/// and never shorter than what the plugin asked for. Every figure is clamped into
/// [`limits::BACKOFF_MS`], whatever an older record or a plugin says.
pub fn backoff_ms(
    opts: &JobOptions,
    attempt: u32,
    retry_after: Option<u64>,
    rng: &mut impl Rng,
) -> u64 {
    let opts = opts.clamped();
    let exp = opts
        .backoff_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
        .min(opts.max_backoff_ms);
    let jittered = if exp < 2 {
        exp
    } else {
        rng.random_range(exp / 2..=exp)
    };
    jittered
        .max(retry_after.unwrap_or(0))
        .min(*limits::BACKOFF_MS.end())
}

fn percentage(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        ((done as f64) * 1000.0 / total as f64).round() / 10.0
    }
}

impl Writer {
    /// Create a job whole, or answer the job an earlier request with the same
    /// idempotency key created (then `true`: a replay, nothing written).
    pub(crate) fn create_job(
        &mut self,
        tx: &mut Tx<'_>,
        tenant: &str,
        new: NewJob,
        plugin_version: Option<String>,
        idem: Option<Idempotency>,
    ) -> Result<(Job, bool)> {
        if let Some(idem) = &idem
            && let Some(earlier) = idempotency::replayed(tx, idem, self.idempotency_keep_ms)?
        {
            return Ok((serde_json::from_value(earlier)?, true));
        }
        let mut job = new_job(tx.now, tenant, &new, plugin_version)?;
        if new.items.is_empty() {
            return Err(StoreError::Invalid(
                "items: a job needs at least one item".into(),
            ));
        }
        if new.items.len() > MAX_ITEMS_PER_JOB {
            return Err(StoreError::Invalid(format!(
                "items: {} items is more than the {MAX_ITEMS_PER_JOB} one job may hold",
                new.items.len()
            )));
        }
        let policy = job.options.unique_references.unwrap_or_default();
        let mut screen = references::Screen::default();
        let mut items = Vec::with_capacity(new.items.len());
        for it in new.items {
            let admitted = policy == ReferencePolicy::Allow
                || screen.admit(it.reference.as_deref(), |r| {
                    references::taken_in_tx(tx, &job, r)
                })?;
            if admitted {
                items.push(it);
            }
        }
        if screen.count > 0 && (policy == ReferencePolicy::Reject || items.is_empty()) {
            return Err(screen.refusal());
        }
        if screen.count > 0 {
            job.skipped = Some(crate::model::Skipped {
                count: screen.count,
                references: screen.listed,
            });
        }
        let item_status = initial_status(&job);
        let n = items.len() as u64;
        *job.counts.get_mut(item_status) = n;
        for (index, it) in items.into_iter().enumerate() {
            let item = new_item(&job, index as u64, it, new.input.as_ref(), tx.now)?;
            if let Some(entry) = references::entry(&job, &item) {
                tx.put(entry, Vec::new());
            }
            tx.insert_item(&item);
        }
        tx.insert_job(job.clone());
        self.announce_job(tx, &job, n);
        if let Some(idem) = &idem {
            idempotency::record(tx, idem, serde_json::to_value(&job)?);
        }
        Ok((job, false))
    }

    /// A job's items are all stored: tell the feed, and queue them if it starts now.
    pub(super) fn announce_job(&mut self, tx: &mut Tx<'_>, job: &Job, n: u64) {
        tx.emit(
            &job.tenant,
            kind::JOB_CREATED,
            Some(&job.id),
            None,
            json!({"plugin": job.plugin, "operation": job.operation, "name": job.name, "total": n}),
        );
        if job.status == JobStatus::Running {
            tx.emit(
                &job.tenant,
                kind::JOB_STARTED,
                Some(&job.id),
                None,
                json!({"queued": n, "total": n}),
            );
            self.ready.add_job(
                &job.id,
                &job.plugin,
                &job.tenant,
                job.options.priority,
                job.options.effective_concurrency(),
                false,
            );
            self.ready.push_all(&job.id, n);
            self.wake = true;
        }
    }

    pub(crate) fn job_action(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        action: JobAction,
    ) -> Result<Job> {
        let job = tx.job(id)?;
        let refuse = |what: &str| {
            Err(StoreError::Conflict(format!(
                "job `{id}` is {}: it cannot be {what}",
                job.status
            )))
        };
        match action {
            JobAction::Start => {
                if job.status != JobStatus::Pending {
                    return refuse("started");
                }
                let pending = tx.scan_keys(&keys::status_prefix(ItemStatus::Pending, Some(id)))?;
                let mut queued = Vec::with_capacity(pending.len());
                for k in pending {
                    let key = keys::split_item_suffix(&k).expect("status key");
                    let mut item = tx.item(&key)?;
                    tx.set_status(&mut item, ItemStatus::Queued)?;
                    queued.push(key);
                }
                let now = tx.now;
                let j = tx.job_mut(id)?;
                j.status = JobStatus::Running;
                j.started_at = Some(now);
                let j = j.clone();
                tx.emit(
                    &j.tenant,
                    kind::JOB_STARTED,
                    Some(id),
                    None,
                    json!({"queued": queued.len(), "total": j.counts.total()}),
                );
                self.ready.add_job(
                    id,
                    &j.plugin,
                    &j.tenant,
                    j.options.priority,
                    j.options.effective_concurrency(),
                    false,
                );
                for key in queued {
                    self.ready.push(key, None, tx.now);
                }
                self.wake = true;
            }
            JobAction::Pause => {
                if job.status != JobStatus::Running {
                    return refuse("paused");
                }
                tx.job_mut(id)?.status = JobStatus::Paused;
                tx.emit(
                    &job.tenant,
                    kind::JOB_PAUSED,
                    Some(id),
                    None,
                    json!({"counts": job.counts}),
                );
                self.ready.set_paused(id, true);
            }
            JobAction::Resume => {
                if job.status != JobStatus::Paused {
                    return refuse("resumed");
                }
                tx.job_mut(id)?.status = JobStatus::Running;
                tx.emit(
                    &job.tenant,
                    kind::JOB_RESUMED,
                    Some(id),
                    None,
                    json!({"counts": job.counts}),
                );
                self.ready.set_paused(id, false);
                self.wake = true;
            }
            JobAction::Cancel => {
                if matches!(job.status, JobStatus::Completed | JobStatus::Cancelled) {
                    return refuse("cancelled");
                }
                let mut stopped = Vec::new();
                let mut cancelled = 0u64;
                for status in [
                    ItemStatus::Pending,
                    ItemStatus::Queued,
                    ItemStatus::Running,
                    ItemStatus::NeedsReview,
                ] {
                    for k in tx.scan_keys(&keys::status_prefix(status, Some(id)))? {
                        let key = keys::split_item_suffix(&k).expect("status key");
                        let mut item = tx.item(&key)?;
                        if status == ItemStatus::Running {
                            self.stop_running(tx, &mut item, "job cancelled")?;
                            tx.set_status(&mut item, ItemStatus::Cancelled)?;
                            tx.emit(
                                &job.tenant,
                                kind::ITEM_STATUS_CHANGED,
                                Some(id),
                                Some(&item.id),
                                json!({"from": status, "to": ItemStatus::Cancelled, "attempt": item.attempt, "reason": "job cancelled"}),
                            );
                            stopped.push(item.id.clone());
                        } else {
                            tx.set_status(&mut item, ItemStatus::Cancelled)?;
                        }
                        cancelled += 1;
                    }
                }
                let now = tx.now;
                let j = tx.job_mut(id)?;
                j.status = JobStatus::Cancelled;
                j.awaiting_review = false;
                j.finished_at = Some(now);
                let j = j.clone();
                tx.emit(
                    &j.tenant,
                    kind::JOB_CANCELLED,
                    Some(id),
                    None,
                    json!({"cancelled": cancelled, "stopped": stopped, "counts": j.counts}),
                );
                self.ready.remove_job(id);
            }
            JobAction::RetryFailed => {
                if job.status == JobStatus::Cancelled {
                    return refuse("retried");
                }
                let failed = tx.scan_keys(&keys::status_prefix(ItemStatus::Failed, Some(id)))?;
                for k in failed {
                    let key = keys::split_item_suffix(&k).expect("status key");
                    let mut item = tx.item(&key)?;
                    self.requeue(tx, &mut item, None, "retry of failed items")?;
                }
            }
        }
        tx.job(id)
    }

    /// Revoke a running item's lease and close its attempt (cancelled or lost).
    fn stop_running(&mut self, tx: &mut Tx<'_>, item: &mut Item, why: &str) -> Result<()> {
        item.lease = None;
        if let Some(a) = item.attempts.last_mut()
            && a.finished_at.is_none()
        {
            a.finished_at = Some(tx.now);
            a.outcome = Some(ItemStatus::Cancelled);
            a.error = Some(ItemError::application(why));
        }
        self.ready.finished(&ItemKey {
            job: item.job_id.clone(),
            index: item.index,
        });
        Ok(())
    }

    /// Remove a job that is finished, cancelled or was never started, with its items,
    /// their indexes and logs. A job with items that may still run must be cancelled
    /// first (cancelling stops them). Its events stay in the log: they are the audit
    /// trail, and `job_deleted` closes it.
    pub(crate) fn delete_job(&mut self, tx: &mut Tx<'_>, id: &str) -> Result<Job> {
        let job = tx.job(id)?;
        if !matches!(
            job.status,
            JobStatus::Completed | JobStatus::Cancelled | JobStatus::Pending
        ) {
            return Err(StoreError::Conflict(format!(
                "job `{id}` is {}: cancel it before deleting it",
                job.status
            )));
        }
        let mut items = 0u64;
        for st in ItemStatus::ALL {
            for k in tx.scan_keys(&keys::status_prefix(st, Some(id)))? {
                let key = keys::split_item_suffix(&k).expect("status key");
                if let Some(entry) = references::entry(&job, &tx.item(&key)?) {
                    tx.del(entry);
                }
                tx.remove_item(&key, st);
                items += 1;
            }
        }
        for k in tx.scan_keys(&keys::job_log_prefix(id))? {
            tx.del(k);
        }
        tx.remove_job(id);
        tx.emit(
            &job.tenant,
            kind::JOB_DELETED,
            Some(id),
            None,
            json!({"items": items, "status": job.status, "counts": job.counts}),
        );
        self.ready.remove_job(id);
        Ok(job)
    }

    /// Put a failed, reviewed or cancelled-then-retried item back in the queue with a
    /// fresh budget of attempts; reopens the job if it had completed.
    fn requeue(
        &mut self,
        tx: &mut Tx<'_>,
        item: &mut Item,
        reason: Option<&str>,
        by: &str,
    ) -> Result<()> {
        let from = item.status;
        let job = tx.job(&item.job_id)?;
        item.max_attempts = item.attempt + job.options.max_attempts;
        item.not_before = None;
        tx.set_status(item, ItemStatus::Queued)?;
        tx.emit(
            &item.tenant,
            kind::ITEM_STATUS_CHANGED,
            Some(&item.job_id),
            Some(&item.id),
            json!({"from": from, "to": ItemStatus::Queued, "attempt": item.attempt, "by": by, "reason": reason}),
        );
        if job.awaiting_review {
            // Work again: the job no longer waits only for a person.
            tx.job_mut(&item.job_id)?.awaiting_review = false;
        }
        if job.status == JobStatus::Completed {
            let j = tx.job_mut(&item.job_id)?;
            j.status = JobStatus::Running;
            j.finished_at = None;
            tx.emit(
                &job.tenant,
                kind::JOB_RESUMED,
                Some(&job.id),
                None,
                json!({"reason": "items sent back to the queue"}),
            );
        }
        let paused = job.status == JobStatus::Paused;
        if job.status != JobStatus::Pending {
            self.ready.add_job(
                &job.id,
                &job.plugin,
                &job.tenant,
                job.options.priority,
                job.options.effective_concurrency(),
                paused,
            );
            self.ready.push(
                ItemKey {
                    job: item.job_id.clone(),
                    index: item.index,
                },
                None,
                tx.now,
            );
            self.wake = true;
        }
        Ok(())
    }

    pub(crate) fn claim(&mut self, tx: &mut Tx<'_>, req: ClaimRequest) -> Result<Claimed> {
        let mut out = Claimed::default();
        if let Some(key) = &req.item {
            let item = tx.item(key)?;
            if req.tenant.as_ref().is_some_and(|t| *t != item.tenant) {
                return Err(StoreError::not_found("item", key.id()));
            }
            if !req.plugins.is_empty() && !req.plugins.contains(&item.plugin) {
                return Err(StoreError::Conflict(format!(
                    "item `{}` belongs to plugin `{}`, not this queue",
                    item.id, item.plugin
                )));
            }
            if item.status != ItemStatus::Queued {
                return Err(StoreError::Conflict(format!(
                    "item `{}` is {}, not queued: it cannot be claimed",
                    item.id, item.status
                )));
            }
            let job = tx.job(&item.job_id)?;
            if job.status != JobStatus::Running {
                return Err(StoreError::Conflict(format!(
                    "job `{}` is {}: its items cannot be claimed",
                    job.id, job.status
                )));
            }
            self.ready.unqueue(key, item.not_before);
            self.ready.count_running(key);
            out.items.push(self.start(tx, item, &req)?);
        } else {
            for picked in self
                .ready
                .take(&req.plugins, req.tenant.as_deref(), req.max, tx.now)
            {
                let item = tx.item(&picked.key)?;
                let tenant_ok = req.tenant.as_ref().is_none_or(|t| *t == item.tenant);
                if item.status != ItemStatus::Queued || !tenant_ok {
                    // The in-memory queue was behind (or, against its own filter, handed
                    // out another tenant's item): undo its count.
                    self.ready.finished(&picked.key);
                    if tenant_ok {
                        continue;
                    }
                    self.ready.push(picked.key, None, tx.now);
                    continue;
                }
                out.items.push(self.start(tx, item, &req)?);
            }
        }
        out.next_due = self.ready.next_due();
        Ok(out)
    }

    fn start(
        &mut self,
        tx: &mut Tx<'_>,
        mut item: Item,
        req: &ClaimRequest,
    ) -> Result<ClaimedItem> {
        let job = tx.job(&item.job_id)?;
        let lease_ms = req
            .lease_ms
            .unwrap_or(job.options.lease_ms)
            .clamp(*limits::LEASE_MS.start(), *limits::LEASE_MS.end());
        item.attempt += 1;
        item.not_before = None;
        tx.set_status(&mut item, ItemStatus::Running)?;
        let token = tx.emit(
            &item.tenant,
            kind::ITEM_STATUS_CHANGED,
            Some(&item.job_id),
            Some(&item.id),
            json!({"from": ItemStatus::Queued, "to": ItemStatus::Running, "attempt": item.attempt, "owner": req.owner}),
        );
        let expires_at = after(tx.now, lease_ms);
        item.lease = Some(Lease {
            owner: req.owner.clone(),
            token,
            expires_at,
        });
        item.attempts.push(Attempt {
            number: item.attempt,
            owner: req.owner.clone(),
            started_at: tx.now,
            finished_at: None,
            outcome: None,
            error: None,
            resource: None,
        });
        tx.put_item(&item);
        self.ready.set_lease(
            ItemKey {
                job: item.job_id.clone(),
                index: item.index,
            },
            expires_at,
        );
        Ok(ClaimedItem {
            idempotency_key: item.idempotency_key(),
            operation: job.operation,
            plugin_version: job.plugin_version,
            pool: job.options.pool,
            lease_token: token,
            lease_expires_at: expires_at,
            item,
        })
    }

    /// The item, if `token` is its current lease.
    fn leased(&self, tx: &Tx<'_>, key: &ItemKey, token: u64) -> Result<Item> {
        let item = tx.item(key)?;
        match &item.lease {
            Some(l) if item.status == ItemStatus::Running && l.token == token => Ok(item),
            Some(l) if item.status == ItemStatus::Running => Err(StoreError::StaleLease {
                item: item.id.clone(),
                token,
                reason: format!("the item was claimed again by `{}`", l.owner),
            }),
            _ => Err(StoreError::StaleLease {
                item: item.id.clone(),
                token,
                reason: format!("the item is {} and holds no lease", item.status),
            }),
        }
    }

    pub(crate) fn heartbeat(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        extend_ms: Option<u64>,
    ) -> Result<Lease> {
        let mut item = self.leased(tx, key, token)?;
        let job = tx.job(&item.job_id)?;
        let ms = extend_ms
            .unwrap_or(job.options.lease_ms)
            .clamp(*limits::LEASE_MS.start(), *limits::LEASE_MS.end());
        let lease = item.lease.as_mut().expect("leased");
        lease.expires_at = after(tx.now, ms);
        let lease = lease.clone();
        tx.put_item(&item);
        self.ready.set_lease(key.clone(), lease.expires_at);
        Ok(lease)
    }

    pub(crate) fn complete(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        outcome: Outcome,
        resource: Option<String>,
    ) -> Result<Item> {
        let item = self.leased(tx, key, token)?;
        if let Outcome::Failed(e) = &outcome
            && e.message.len() > MAX_SMALL_PAYLOAD
        {
            return Err(StoreError::Invalid(
                "error.message: longer than 64 KiB".into(),
            ));
        }
        self.settle(tx, item, outcome, resource)
    }

    pub(crate) fn expire_lease(&mut self, tx: &mut Tx<'_>, key: &ItemKey) -> Result<Item> {
        let item = tx.item(key)?;
        let Some(lease) = item.lease.clone() else {
            self.ready.clear_lease(key);
            return Err(StoreError::Conflict("no lease".into()));
        };
        if item.status != ItemStatus::Running || lease.expires_at > tx.now {
            self.ready.set_lease(key.clone(), lease.expires_at);
            return Err(StoreError::Conflict("lease still valid".into()));
        }
        let mut err = ItemError::application(format!(
            "lease of `{}` expired without a heartbeat",
            lease.owner
        ));
        err.code = Some("lease_expired".into());
        self.settle(tx, item, Outcome::Failed(err), None)
    }

    /// A run the engine stopped because it is shutting down: the item goes back to
    /// the queue at once and the interrupted attempt is given back (it stays in the
    /// item's history, marked `engine_shutdown`), so a deploy never uses up attempts.
    pub(crate) fn release(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        why: &str,
    ) -> Result<Item> {
        let mut item = self.leased(tx, key, token)?;
        let mut err = ItemError::application(why);
        err.code = Some(ENGINE_SHUTDOWN.into());
        if let Some(a) = item.attempts.last_mut() {
            a.finished_at = Some(tx.now);
            a.outcome = Some(ItemStatus::Queued);
            a.error = Some(err);
        }
        item.max_attempts = item.max_attempts.saturating_add(1);
        item.lease = None;
        item.not_before = None;
        tx.set_status(&mut item, ItemStatus::Queued)?;
        tx.emit(
            &item.tenant,
            kind::ITEM_STATUS_CHANGED,
            Some(&item.job_id),
            Some(&item.id),
            json!({"from": ItemStatus::Running, "to": ItemStatus::Queued, "attempt": item.attempt,
                   "reason": why, "code": ENGINE_SHUTDOWN}),
        );
        self.ready.finished(key);
        self.ready.push(key.clone(), None, tx.now);
        self.wake = true;
        Ok(item)
    }

    /// Close the running attempt with `outcome`: success, retry with backoff, or the
    /// job's failure policy.
    /// A run on a pool resource that the resource refused as rate limited did not
    /// happen: the item goes back to the queue at once (another resource takes it),
    /// whatever its attempts.
    fn settle(
        &mut self,
        tx: &mut Tx<'_>,
        mut item: Item,
        outcome: Outcome,
        resource: Option<String>,
    ) -> Result<Item> {
        let job = tx.job(&item.job_id)?;
        let key = ItemKey {
            job: item.job_id.clone(),
            index: item.index,
        };
        let policy = match job.options.on_failure {
            FailurePolicy::Fail => ItemStatus::Failed,
            FailurePolicy::Review => ItemStatus::NeedsReview,
        };
        let (to, error) = match outcome {
            Outcome::Succeeded(result) => {
                item.result = Some(result);
                item.error = None;
                (ItemStatus::Succeeded, None)
            }
            Outcome::Failed(err) => {
                let rate_limited = resource.is_some()
                    && err.kind == ErrorKind::Application
                    && err.code.as_deref() == Some(RATE_LIMITED);
                let retry = err.kind == ErrorKind::Application
                    && (item.attempt < item.max_attempts || rate_limited);
                let to = if retry { ItemStatus::Queued } else { policy };
                if rate_limited {
                    item.not_before = None;
                } else if retry {
                    let delay = backoff_ms(
                        &job.options,
                        item.attempt,
                        err.retry_after_ms,
                        &mut rand::rng(),
                    );
                    item.not_before = Some(after(tx.now, delay));
                }
                item.error = Some(err.clone());
                (to, Some(err))
            }
        };
        if let Some(a) = item.attempts.last_mut() {
            let ran = (tx.now - a.started_at).max(0) as u64;
            self.shared
                .metrics
                .record_run(&item.plugin, std::time::Duration::from_millis(ran));
            a.finished_at = Some(tx.now);
            a.outcome = Some(to);
            a.error = error.clone();
            a.resource = resource.clone();
        }
        if let Some(r) = &resource {
            item.resource = Some(r.clone());
            let rate_limited = error
                .as_ref()
                .is_some_and(|e| e.code.as_deref() == Some(RATE_LIMITED));
            let used = tx
                .job_mut(&item.job_id)?
                .resources
                .entry(r.clone())
                .or_default();
            match (&error, rate_limited) {
                (None, _) => used.succeeded += 1,
                (Some(_), true) => used.rate_limited += 1,
                (Some(_), false) => used.failed += 1,
            }
        }
        item.lease = None;
        tx.set_status(&mut item, to)?;
        if let Some(err) = &error {
            tx.emit(
                &item.tenant,
                kind::ITEM_FAILED,
                Some(&item.job_id),
                Some(&item.id),
                json!({"error": err, "attempt": item.attempt, "will_retry": to == ItemStatus::Queued,
                       "retry_at": item.not_before, "status": to, "reference": item.reference}),
            );
        }
        tx.emit(
            &item.tenant,
            kind::ITEM_STATUS_CHANGED,
            Some(&item.job_id),
            Some(&item.id),
            json!({"from": ItemStatus::Running, "to": to, "attempt": item.attempt}),
        );
        self.ready.finished(&key);
        self.wake = true;
        if to == ItemStatus::Queued {
            self.ready.push(key, item.not_before, tx.now);
        } else {
            self.emit_progress(tx, &item, json!({"status": to, "result": item.result}))?;
        }
        self.check_job_done(tx, &item.job_id)?;
        Ok(item)
    }

    fn emit_progress(
        &mut self,
        tx: &mut Tx<'_>,
        item: &Item,
        extra: serde_json::Value,
    ) -> Result<()> {
        let job = tx.job(&item.job_id)?;
        let c = &job.counts;
        let mut data = json!({
            "done": c.done(),
            "succeeded": c.succeeded,
            "failed": c.failed + c.needs_review,
            "total": c.total(),
            "percentage": percentage(c.done(), c.total()),
            "reference": item.reference,
        });
        if let (Some(r), Some(d)) = (&item.resource, data.as_object_mut()) {
            d.insert("resource".into(), json!(r));
        }
        if let (Some(d), serde_json::Value::Object(e)) = (data.as_object_mut(), extra) {
            d.extend(e);
        }
        tx.emit(
            &item.tenant,
            kind::ITEM_PROGRESS,
            Some(&item.job_id),
            Some(&item.id),
            data,
        );
        Ok(())
    }

    /// A job with nothing left to run completes, unless items wait for review: then
    /// it says so once, and completes when the last of them is resolved.
    fn check_job_done(&mut self, tx: &mut Tx<'_>, job_id: &str) -> Result<()> {
        let job = tx.job(job_id)?;
        if job.counts.open() > 0 || !matches!(job.status, JobStatus::Running | JobStatus::Paused) {
            return Ok(());
        }
        if job.counts.needs_review > 0 {
            if !job.awaiting_review {
                tx.job_mut(job_id)?.awaiting_review = true;
                tx.emit(
                    &job.tenant,
                    kind::JOB_AWAITING_REVIEW,
                    Some(job_id),
                    None,
                    json!({"counts": job.counts, "needs_review": job.counts.needs_review}),
                );
            }
            return Ok(());
        }
        let now = tx.now;
        let j = tx.job_mut(job_id)?;
        j.status = JobStatus::Completed;
        j.awaiting_review = false;
        j.finished_at = Some(now);
        let c = j.counts.clone();
        let duration = now - j.started_at.unwrap_or(j.created_at);
        let mut data = json!({"counts": c, "results": {
            "total": c.total(), "succeeded": c.succeeded, "failed": c.failed,
            "needs_review": c.needs_review, "cancelled": c.cancelled, "duration_ms": duration,
        }});
        if !j.resources.is_empty() {
            data["resources"] = json!(j.resources);
            data["results"]["resources_used"] = json!(
                j.resources
                    .iter()
                    .filter(|(_, u)| u.succeeded + u.failed > 0)
                    .count()
            );
        }
        tx.emit(&job.tenant, kind::JOB_COMPLETED, Some(job_id), None, data);
        self.ready.remove_job(job_id);
        Ok(())
    }

    pub(crate) fn step(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        name: String,
        state: Option<String>,
    ) -> Result<()> {
        let mut item = self.leased(tx, key, token)?;
        if name.is_empty() || name.len() > 128 {
            return Err(StoreError::Invalid(
                "step name: must be 1-128 characters".into(),
            ));
        }
        if state.as_ref().is_some_and(|s| s.len() > MAX_SMALL_PAYLOAD) {
            return Err(StoreError::Invalid(format!(
                "step `{name}`: state is larger than 64 KiB"
            )));
        }
        item.steps.push(Step {
            name: name.clone(),
            state,
            attempt: item.attempt,
            at: tx.now,
        });
        tx.put_item(&item);
        tx.emit(
            &item.tenant,
            kind::ITEM_STEP,
            Some(&item.job_id),
            Some(&item.id),
            json!({"step": name, "attempt": item.attempt}),
        );
        Ok(())
    }

    pub(crate) fn progress(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        data: serde_json::Value,
        resource: Option<String>,
    ) -> Result<()> {
        let item = self.leased(tx, key, token)?;
        if data.to_string().len() > MAX_SMALL_PAYLOAD {
            return Err(StoreError::Invalid("progress: larger than 64 KiB".into()));
        }
        let mut extra = json!({"progress": data, "status": item.status});
        if let Some(r) = resource {
            extra["resource"] = json!(r);
        }
        self.emit_progress(tx, &item, extra)
    }

    /// Change a job's pool limits (or resources) while it runs.
    pub(crate) fn update_pool(
        &mut self,
        tx: &mut Tx<'_>,
        job_id: &str,
        pool: PoolOptions,
    ) -> Result<Job> {
        check_pool(&pool)?;
        let job = tx.job(job_id)?;
        if job.options.pool.is_none() {
            return Err(StoreError::Conflict(format!(
                "job `{job_id}` has no pool: give it one when creating it"
            )));
        }
        if matches!(job.status, JobStatus::Completed | JobStatus::Cancelled) {
            return Err(StoreError::Conflict(format!(
                "job `{job_id}` is {}: its pool can no longer change",
                job.status
            )));
        }
        let now = tx.now;
        let j = tx.job_mut(job_id)?;
        j.options.pool = Some(pool.clone());
        j.updated_at = now;
        let job = j.clone();
        self.ready
            .set_concurrency(job_id, job.options.effective_concurrency());
        self.wake = true;
        tx.emit(
            &job.tenant,
            kind::JOB_UPDATED,
            Some(job_id),
            None,
            json!({"pool": pool}),
        );
        Ok(job)
    }

    /// An event of a session (opened, closed), which belongs to no job.
    pub(crate) fn session_event(
        &mut self,
        tx: &mut Tx<'_>,
        tenant: &str,
        event_kind: &str,
        session_id: &str,
        data: serde_json::Value,
    ) -> Result<crate::model::Event> {
        tx.emit_session(tenant, event_kind, session_id, data);
        Ok(tx.events.last().expect("just emitted").event())
    }

    pub(crate) fn log(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        level: &str,
        message: &str,
    ) -> Result<()> {
        let item = self.leased(tx, key, token)?;
        let message: String = message.chars().take(8 * 1024).collect();
        let line =
            json!({"level": level, "message": message, "attempt": item.attempt, "ts": tx.now});
        let seq = tx.emit(
            &item.tenant,
            kind::ITEM_LOG,
            Some(&item.job_id),
            Some(&item.id),
            line.clone(),
        );
        tx.put(
            keys::log_key(&key.job, key.index, seq),
            serde_json::to_vec(&line)?,
        );
        Ok(())
    }

    pub(crate) fn transition(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        to: ItemStatus,
        reason: Option<String>,
        input: Option<serde_json::Value>,
    ) -> Result<Item> {
        let mut item = tx.item(key)?;
        let from = item.status;
        if !from.can_transition(to, Actor::Operator) {
            return Err(StoreError::Conflict(format!(
                "item `{}` cannot go from {from} to {to}",
                item.id
            )));
        }
        if input.is_some() && to != ItemStatus::Queued {
            return Err(StoreError::Invalid(
                "input: can only be replaced when the item goes back to queued".into(),
            ));
        }
        let job = tx.job(&item.job_id)?;
        if to == ItemStatus::Queued && job.status == JobStatus::Cancelled {
            return Err(StoreError::Conflict(format!(
                "job `{}` is cancelled: its items cannot be queued again",
                job.id
            )));
        }
        if let Some(input) = input {
            item.input = input;
        }
        match to {
            ItemStatus::Queued => {
                self.requeue(tx, &mut item, reason.as_deref(), "operator")?;
                return Ok(item);
            }
            _ => {
                match from {
                    ItemStatus::Running => {
                        self.stop_running(tx, &mut item, "cancelled by an operator")?
                    }
                    ItemStatus::Queued => self.ready.unqueue(key, item.not_before),
                    _ => {}
                }
                tx.set_status(&mut item, to)?;
            }
        }
        tx.emit(
            &item.tenant,
            kind::ITEM_STATUS_CHANGED,
            Some(&item.job_id),
            Some(&item.id),
            json!({"from": from, "to": to, "attempt": item.attempt, "by": "operator", "reason": reason}),
        );
        self.emit_progress(tx, &item, json!({"status": to}))?;
        self.check_job_done(tx, &item.job_id)?;
        Ok(item)
    }

    pub(crate) fn publish(
        &mut self,
        tx: &mut Tx<'_>,
        tenant: &str,
        event_kind: &str,
        job_id: Option<String>,
        data: serde_json::Value,
        idem: Option<Idempotency>,
    ) -> Result<(crate::model::Event, bool)> {
        if let Some(idem) = &idem
            && let Some(earlier) = idempotency::replayed(tx, idem, self.idempotency_keep_ms)?
        {
            return Ok((serde_json::from_value(earlier)?, true));
        }
        check_name("type", event_kind)?;
        if kind::BUILTIN.contains(&event_kind) {
            return Err(StoreError::Invalid(format!(
                "type: `{event_kind}` is emitted by the engine itself and cannot be published"
            )));
        }
        if data.to_string().len() > MAX_SMALL_PAYLOAD {
            return Err(StoreError::Invalid("data: larger than 64 KiB".into()));
        }
        if let Some(j) = &job_id {
            let job = tx.job(j)?;
            if job.tenant != tenant {
                return Err(StoreError::not_found("job", j));
            }
        }
        tx.emit(tenant, event_kind, job_id.as_deref(), None, data);
        let event = tx.events.last().expect("just emitted").event();
        if let Some(idem) = &idem {
            idempotency::record(tx, idem, serde_json::to_value(&event)?);
        }
        Ok((event, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let opts = JobOptions {
            backoff_ms: 1_000,
            max_backoff_ms: 10_000,
            ..JobOptions::default()
        };
        let mut rng = rand::rng();
        for _ in 0..200 {
            let d1 = backoff_ms(&opts, 1, None, &mut rng);
            assert!((500..=1_000).contains(&d1), "{d1}");
            let d3 = backoff_ms(&opts, 3, None, &mut rng);
            assert!((2_000..=4_000).contains(&d3), "{d3}");
            let d9 = backoff_ms(&opts, 9, None, &mut rng);
            assert!((5_000..=10_000).contains(&d9), "{d9}");
            assert_eq!(backoff_ms(&opts, 1, Some(60_000), &mut rng), 60_000);
            assert!(backoff_ms(&opts, 200, None, &mut rng) <= 10_000);
        }
    }
}

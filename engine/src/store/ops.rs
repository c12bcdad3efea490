//! The life of a run, inside one transaction per command: claim (leases), heartbeat,
//! checkpoints, progress, logs, and the outcome that decides retry, review or failure
//! and whether the job is done. Every function checks everything that can be refused
//! before it changes anything, so a refusal leaves no trace in the in-memory queues
//! either. Making jobs is `create`, what operators do is `actions`.

use poem_openapi::Object;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{Result, StoreError};
use super::keys::{self, ItemKey};
use super::tx::Tx;
use super::writer::Writer;
use crate::model::{
    Attempt, ErrorKind, FailurePolicy, Item, ItemError, ItemStatus, JobOptions, JobStatus, Lease,
    PoolOptions, RATE_LIMITED, Step, kind, limits,
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
    /// The claimer's labels: items of jobs that need labels go only to claimers with
    /// all of them.
    pub labels: Vec<String>,
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

/// `now` plus `ms`, saturating: stored durations never overflow the clock arithmetic.
pub(crate) fn after(now: i64, ms: u64) -> i64 {
    now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
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
            if let Some(missing) = job.options.labels.iter().find(|l| !req.labels.contains(l)) {
                return Err(StoreError::Conflict(format!(
                    "item `{}` runs only where label `{missing}` is: this claimer lacks it",
                    item.id
                )));
            }
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
            for picked in self.ready.take(
                &req.plugins,
                &req.labels,
                req.tenant.as_deref(),
                req.max,
                tx.now,
            ) {
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

    pub(super) fn emit_progress(
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
    pub(super) fn check_job_done(&mut self, tx: &mut Tx<'_>, job_id: &str) -> Result<()> {
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

    pub(crate) fn keep_state(
        &mut self,
        tx: &mut Tx<'_>,
        key: &ItemKey,
        token: u64,
        sealed: Option<Vec<u8>>,
    ) -> Result<()> {
        self.leased(tx, key, token)?;
        match sealed {
            Some(s) => tx.put(key.kept_key(), s),
            None => tx.del(key.kept_key()),
        }
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
        if name.is_empty() || name.chars().count() > 128 {
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
            super::codec::encode(&line),
        );
        Ok(())
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

//! What an operator (or a client on their behalf) does to jobs and items: start,
//! pause, resume, cancel, retry, delete, move an item by hand, change a job's pool,
//! publish an event. Each checks everything it can refuse before it changes anything.

use serde_json::json;

use super::create::{check_name, check_pool};
use super::error::{Result, StoreError};
use super::idempotency::{self, Idempotency};
use super::keys::{self, Index, ItemKey};
use super::ops::{JobAction, MAX_SMALL_PAYLOAD};
use super::references;
use super::tx::Tx;
use super::writer::Writer;
use crate::model::{
    Actor, Item, ItemError, ItemStatus, Job, JobStatus, PoolOptions, ReferencePolicy, kind,
};

/// An event to append that no other command emits: a client's own, or one of the
/// engine's (`engine`) such as a webhook turned off.
pub struct Publication {
    pub tenant: String,
    pub kind: String,
    pub job_id: Option<String>,
    /// A client's topic for its event (a branch, a team, a channel).
    pub topic: Option<String>,
    pub data: serde_json::Value,
    /// The client's idempotency key, recorded with the event.
    pub idem: Option<Idempotency>,
    /// A type of `kind::BUILTIN`, which clients may not publish.
    pub engine: bool,
}

impl Writer {
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
                let pending = tx.scan_keys(&keys::index_prefix(Index::Pending, Some(id)))?;
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
                self.ready.add_job(&j, false);
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
                for listed in [Index::Pending, Index::Open, Index::NeedsReview] {
                    for k in tx.scan_keys(&keys::index_prefix(listed, Some(id)))? {
                        let key = keys::split_item_suffix(&k).expect("status key");
                        let mut item = tx.item(&key)?;
                        let status = item.status;
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
                let failed = tx.scan_keys(&keys::index_prefix(Index::Failed, Some(id)))?;
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
        // Succeeded items have no index entry: every item is found by its record.
        for k in tx.scan_keys(&keys::item_prefix(id))? {
            let key = keys::split_item_suffix(&k).expect("item key");
            let item = tx.item(&key)?;
            if let Some(entry) = references::entry(&job, &item) {
                tx.del(entry);
            }
            tx.remove_item(&key, item.status);
            items += 1;
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
        // A failed or cancelled item let go of its reference, and another may have
        // taken it since: sending this one again would place the order twice.
        if matches!(from, ItemStatus::Failed | ItemStatus::Cancelled)
            && job.options.unique_references.unwrap_or_default() != ReferencePolicy::Allow
            && let Some(reference) = item.reference.as_deref()
            && references::taken_in_tx(tx, &job, reference)?
        {
            return Err(StoreError::ReferencesTaken {
                references: vec![reference.to_owned()],
                count: 1,
            });
        }
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
            self.ready.add_job(&job, paused);
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
        publication: Publication,
    ) -> Result<(crate::model::Event, bool)> {
        let Publication {
            tenant,
            kind: event_kind,
            job_id,
            topic,
            data,
            idem,
            engine,
        } = publication;
        let (tenant, event_kind) = (tenant.as_str(), event_kind.as_str());
        if let Some(idem) = &idem
            && let Some(earlier) = idempotency::replayed(tx, idem, self.idempotency_keep_ms)?
        {
            return Ok((serde_json::from_value(earlier)?, true));
        }
        check_name("type", event_kind)?;
        match (kind::BUILTIN.contains(&event_kind), engine) {
            (true, false) => {
                return Err(StoreError::Invalid(format!(
                    "type: `{event_kind}` is emitted by the engine itself and cannot be published"
                )));
            }
            (false, true) => {
                return Err(StoreError::Invalid(format!(
                    "type: `{event_kind}` is not one of the engine's own event types"
                )));
            }
            _ => {}
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
        if let Some(t) = &topic
            && !valid_topic(t)
        {
            return Err(StoreError::Invalid(format!(
                "topic: `{t}` must be 1-128 characters of letters, digits, `_`, `-`, `.`, `:` or `/`"
            )));
        }
        tx.emit_topic(
            tenant,
            event_kind,
            job_id.as_deref(),
            topic.as_deref(),
            data,
        );
        let event = tx.events.last().expect("just emitted").event();
        if let Some(idem) = &idem {
            idempotency::record(tx, idem, serde_json::to_value(&event)?);
        }
        Ok((event, false))
    }
}

/// A topic a client may publish under.
pub fn valid_topic(topic: &str) -> bool {
    (1..=128).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b))
}

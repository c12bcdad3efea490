//! Making jobs: the checks a new job passes (names, option ranges, pools, shared
//! input, references), the records of the job and its items, and the command that
//! writes them whole. Staged imports (`store::staging`) and schedules build on the same
//! pieces.

use serde_json::json;

use super::error::{Result, StoreError};
use super::idempotency::{self, Idempotency};
use super::keys::{self, Index};
use super::ops::MAX_ITEMS_PER_JOB;
use super::references;
use super::tx::Tx;
use super::writer::Writer;
use crate::model::{
    Item, ItemStatus, Job, JobOptions, JobStatus, NewItem, NewJob, PoolOptions, ReferencePolicy,
    kind, limits,
};

pub(super) fn check_name(field: &str, value: &str) -> Result<()> {
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
    crate::model::check_labels("options.labels", &o.labels).map_err(StoreError::Invalid)?;
    Ok(())
}

/// Most resources one pool may have.
pub const MAX_POOL_RESOURCES: usize = 1_000;

pub(super) fn check_pool(p: &PoolOptions) -> Result<()> {
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

/// The index entry of a new item of `job`, the one of [`initial_status`].
pub(super) fn initial_index(job: &Job) -> Index {
    Index::of(initial_status(job)).expect("a new item is pending or queued, both indexed")
}

/// Item `index` of `job`, as it is first stored: every item of every job is made here.
pub(super) fn new_item(
    job: &Job,
    index: u64,
    it: NewItem,
    defaults: Option<&serde_json::Value>,
    now: i64,
) -> Result<Item> {
    if it
        .reference
        .as_ref()
        .is_some_and(|r| r.chars().count() > 256)
    {
        return Err(StoreError::Invalid(format!(
            "items[{index}].reference: longer than 256 characters"
        )));
    }
    // References are keys of the unique-reference index, whose parts NUL separates.
    if it
        .reference
        .as_ref()
        .is_some_and(|r| r.chars().any(char::is_control))
    {
        return Err(StoreError::Invalid(format!(
            "items[{index}].reference: control characters are not allowed"
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
            self.ready.add_job(job, false);
            self.ready.push_all(&job.id, n);
            self.wake = true;
        }
    }
}

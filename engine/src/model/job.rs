//! Jobs: one submission of a plugin operation over N items, and the options that
//! govern how its items are scheduled.

use std::collections::BTreeMap;

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};

use super::status::{ItemStatus, JobStatus};

/// What happens to an item that fails with a business error, or runs out of attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The item ends as `failed`.
    #[default]
    Fail,
    /// The item goes to `needs_review`, keeping its error, until an operator decides.
    Review,
}

/// What a job does with an item whose reference is already taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ReferencePolicy {
    /// Duplicates are accepted (each is run).
    #[default]
    Allow,
    /// The whole request is refused (409 listing the references taken); nothing is
    /// written.
    Reject,
    /// Duplicates are left out of the job and listed in its `skipped`.
    Skip,
}

/// Items a job left out when it was created, their references already taken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct Skipped {
    /// How many items were left out.
    pub count: u64,
    /// Their references (the first 100).
    pub references: Vec<String>,
}

/// The ranges job options must fall in. A request outside them is refused (422 naming
/// the field); a value stored by an older version that did not check them is clamped
/// into them where it is used, so no stored record can overflow the engine's clock
/// arithmetic. The OpenAPI validators on [`JobOptions`] state the same numbers.
pub mod limits {
    use std::ops::RangeInclusive;

    pub const PRIORITY: RangeInclusive<i32> = -1_000..=1_000;
    /// Per-job concurrency (0 means no per-job limit).
    pub const CONCURRENCY: RangeInclusive<u32> = 0..=10_000;
    pub const MAX_ATTEMPTS: RangeInclusive<u32> = 1..=100;
    /// Retry delays, and a plugin's `retry_after_ms`: at most a day.
    pub const BACKOFF_MS: RangeInclusive<u64> = 0..=86_400_000;
    /// A lease without a heartbeat: 100 ms to an hour.
    pub const LEASE_MS: RangeInclusive<u64> = 100..=3_600_000;
    /// Items one pool resource starts per minute (0: no limit).
    pub const RATE_PER_MINUTE: RangeInclusive<u32> = 0..=1_000_000;
}

/// Scheduling options of a job. Every field has a default, so `{}` is valid; an
/// unknown field is refused, so a misspelled option does not pass silently.
// Defaults per field (not for the whole struct): an absent pool has no default value
// to publish in the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[serde(default, deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct JobOptions {
    /// Higher runs first among the same tenant's jobs of one plugin (-1000 to 1000);
    /// tenants share the engine in turn whatever their jobs' priorities.
    #[oai(default, validator(minimum(value = "-1000"), maximum(value = "1000")))]
    pub priority: i32,
    /// At most this many items of this job run at once (0: no per-job limit).
    #[oai(default, validator(maximum(value = "10000")))]
    pub concurrency: u32,
    /// Attempts per item, the first included; application errors are retried until then.
    #[oai(
        default = "defaults::max_attempts",
        validator(minimum(value = "1"), maximum(value = "100"))
    )]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; each next one doubles, with jitter (at most a
    /// day, and no more than `max_backoff_ms`).
    #[oai(
        default = "defaults::backoff_ms",
        validator(maximum(value = "86400000"))
    )]
    pub backoff_ms: u64,
    /// Longest retry delay in milliseconds (at most a day).
    #[oai(
        default = "defaults::max_backoff_ms",
        validator(maximum(value = "86400000"))
    )]
    pub max_backoff_ms: u64,
    #[oai(default)]
    pub on_failure: FailurePolicy,
    /// How long a worker's lease on an item lasts without a heartbeat, in milliseconds
    /// (100 ms to an hour).
    #[oai(
        default = "defaults::lease_ms",
        validator(minimum(value = "100"), maximum(value = "3600000"))
    )]
    pub lease_ms: u64,
    /// Spread the items over these resources (sending devices, accounts), each with
    /// its own concurrency and rate limit.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolOptions>,
    /// Whether an item's `reference` must be unique among this tenant's items of the
    /// same plugin and operation that are neither failed nor cancelled: `reject` the
    /// request (409), `skip` the duplicates, or `allow` them. Absent: the operation's
    /// default (`x-faena-unique-references` in its input schema), else `allow`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_references: Option<ReferencePolicy>,
    /// Run the items only on workers that carry all these labels (e.g. `pe` for a
    /// portal that answers only from a Peruvian address); the engine's own dispatcher
    /// has none, so a labelled job waits for such a worker.
    #[oai(default, validator(max_items = 16))]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// Most labels a job may require.
pub const MAX_LABELS: usize = 16;

/// Whether `label` is a valid routing label: 1 to 32 characters of lowercase letters,
/// digits, `-`, `_` and `.`.
pub fn valid_label(label: &str) -> bool {
    (1..=32).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Check a list of routing labels, naming the first bad one by `field`.
pub fn check_labels(field: &str, labels: &[String]) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{field}: at most {MAX_LABELS} labels, got {}",
            labels.len()
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if !valid_label(l) {
            return Err(format!(
                "{field}[{i}]: `{l}` must be 1-32 characters of a-z, 0-9, `-`, `_` and `.`"
            ));
        }
    }
    Ok(())
}

/// A pool of resources a job's items are spread over. Each run holds one resource;
/// a resource that answers "rate limited" rests alone while the others go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none, default, deny_unknown_fields)]
#[serde(default, deny_unknown_fields)]
pub struct PoolOptions {
    /// The resources by id, e.g. the devices' ids the plugin sends through.
    pub resources: Vec<String>,
    /// Items one resource serves at once.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
    pub concurrency: u32,
    /// Items one resource starts per minute (0: no limit).
    #[oai(validator(maximum(value = "1000000")))]
    pub rate_per_minute: u32,
    /// How long a resource rests after "rate limited" when the plugin does not say, in
    /// milliseconds (at most a day).
    #[oai(validator(maximum(value = "86400000")))]
    pub rate_limit_backoff_ms: u64,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            resources: Vec::new(),
            concurrency: 1,
            rate_per_minute: 0,
            rate_limit_backoff_ms: 10_000,
        }
    }
}

/// The plugin error code that says "this resource is rate limited": the run did not
/// happen, the resource rests, and the attempt does not count against the item.
pub const RATE_LIMITED: &str = "rate_limited";

/// What one pool resource did for a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ResourceUse {
    /// Runs on it that succeeded.
    pub succeeded: u64,
    /// Runs on it that failed (retried or not).
    pub failed: u64,
    /// Runs it refused as rate limited.
    pub rate_limited: u64,
}

mod defaults {
    pub fn max_attempts() -> u32 {
        super::JobOptions::default().max_attempts
    }
    pub fn backoff_ms() -> u64 {
        super::JobOptions::default().backoff_ms
    }
    pub fn max_backoff_ms() -> u64 {
        super::JobOptions::default().max_backoff_ms
    }
    pub fn lease_ms() -> u64 {
        super::JobOptions::default().lease_ms
    }
}

impl JobOptions {
    /// These options with every value inside [`limits`]: what the engine uses when it
    /// computes lease expiries and retry times from a stored record.
    pub fn clamped(&self) -> JobOptions {
        let ms = |v: u64| v.clamp(*limits::BACKOFF_MS.start(), *limits::BACKOFF_MS.end());
        JobOptions {
            priority: self
                .priority
                .clamp(*limits::PRIORITY.start(), *limits::PRIORITY.end()),
            concurrency: self.concurrency.min(*limits::CONCURRENCY.end()),
            max_attempts: self
                .max_attempts
                .clamp(*limits::MAX_ATTEMPTS.start(), *limits::MAX_ATTEMPTS.end()),
            backoff_ms: ms(self.backoff_ms),
            max_backoff_ms: ms(self.max_backoff_ms),
            on_failure: self.on_failure,
            lease_ms: self
                .lease_ms
                .clamp(*limits::LEASE_MS.start(), *limits::LEASE_MS.end()),
            pool: self.pool.as_ref().map(|p| PoolOptions {
                rate_limit_backoff_ms: ms(p.rate_limit_backoff_ms),
                rate_per_minute: p.rate_per_minute.min(*limits::RATE_PER_MINUTE.end()),
                ..p.clone()
            }),
            unique_references: self.unique_references,
            labels: self.labels.clone(),
        }
    }

    /// Items of the job that may run at once: its own limit, and no more than its
    /// pool can serve.
    pub fn effective_concurrency(&self) -> u32 {
        let pool = self
            .pool
            .as_ref()
            .map(|p| (p.resources.len() as u32).saturating_mul(p.concurrency.max(1)));
        match (self.concurrency, pool) {
            (0, Some(p)) => p,
            (c, Some(p)) => c.min(p),
            (c, None) => c,
        }
    }
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            priority: 0,
            concurrency: 0,
            max_attempts: 3,
            backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            on_failure: FailurePolicy::Fail,
            lease_ms: 30_000,
            pool: None,
            unique_references: None,
            labels: Vec::new(),
        }
    }
}

/// Items of a job by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Counts {
    pub pending: u64,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub needs_review: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn get_mut(&mut self, status: ItemStatus) -> &mut u64 {
        match status {
            ItemStatus::Pending => &mut self.pending,
            ItemStatus::Queued => &mut self.queued,
            ItemStatus::Running => &mut self.running,
            ItemStatus::Succeeded => &mut self.succeeded,
            ItemStatus::Failed => &mut self.failed,
            ItemStatus::NeedsReview => &mut self.needs_review,
            ItemStatus::Cancelled => &mut self.cancelled,
        }
    }

    pub fn get(&self, status: ItemStatus) -> u64 {
        let mut copy = self.clone();
        *copy.get_mut(status)
    }

    pub fn moved(&mut self, from: ItemStatus, to: ItemStatus) {
        let f = self.get_mut(from);
        *f = f.saturating_sub(1);
        *self.get_mut(to) += 1;
    }

    pub fn total(&self) -> u64 {
        self.pending
            + self.queued
            + self.running
            + self.succeeded
            + self.failed
            + self.needs_review
            + self.cancelled
    }

    /// Items that still owe work.
    pub fn open(&self) -> u64 {
        self.pending + self.queued + self.running
    }

    /// Items that reached an outcome (done, for progress bars).
    pub fn done(&self) -> u64 {
        self.total() - self.open()
    }
}

/// A job as stored and as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub plugin: String,
    pub operation: String,
    /// Plugin version the job runs with, fixed when it is created.
    pub plugin_version: Option<String>,
    pub name: Option<String>,
    pub status: JobStatus,
    pub options: JobOptions,
    pub counts: Counts,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// Per pool resource, what it served (jobs with a pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, ResourceUse>,
    /// Nothing is left to run but items in `needs_review`: the job waits for a
    /// person, and completes when the last of them is resolved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[oai(default)]
    pub awaiting_review: bool,
    /// Items left out when the job was created, their references already taken
    /// (`unique_references: skip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
    /// The schedule run that created this job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::schedule::JobSchedule>,
}

/// One item of a new job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewItem {
    /// The operation's input for this item.
    pub input: serde_json::Value,
    /// A business reference operators search by (an order number, a phone).
    pub reference: Option<String>,
}

/// A job to create. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewJob {
    pub plugin: String,
    #[oai(default = "default_operation")]
    #[serde(default = "default_operation")]
    pub operation: String,
    pub name: Option<String>,
    #[oai(default)]
    #[serde(default)]
    pub options: JobOptions,
    /// Fields every item's input gets unless the item sets them itself, e.g. the
    /// message of a bulk send whose items are the phones.
    pub input: Option<serde_json::Value>,
    /// Queue the items at once (default), or leave the job `pending` until started.
    #[oai(default = "default_true")]
    #[serde(default = "default_true")]
    pub start: bool,
    pub items: Vec<NewItem>,
}

fn default_operation() -> String {
    "run".to_owned()
}

fn default_true() -> bool {
    true
}

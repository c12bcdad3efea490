//! Schedules: a cron pattern in an IANA time zone that creates a job from a template
//! at each of its instants, with policies for runs missed while the engine was down
//! and for a run whose previous job is still going.

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};

use super::job::{JobOptions, NewItem, NewJob};

/// What start-up does with instants that passed while the engine was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// None of them runs; the schedule goes on from its next instant.
    #[default]
    Skip,
    /// One run, now, for the latest missed instant.
    RunOnce,
}

/// What an instant does while the schedule's previous job is still pending, running
/// or paused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// No job for this instant (a `schedule_skipped` event says why).
    #[default]
    Skip,
    /// The job is created `pending` and started once the previous one ends; one run
    /// waits at most, later instants are skipped while it does.
    Queue,
    /// The job is created and runs alongside the previous one.
    Allow,
}

/// The job each run creates: what `POST /api/v1/jobs` takes, less `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct JobTemplate {
    pub plugin: String,
    #[oai(default = "default_operation")]
    #[serde(default = "default_operation")]
    pub operation: String,
    /// The name of every job it creates.
    pub name: Option<String>,
    #[oai(default)]
    #[serde(default)]
    pub options: JobOptions,
    /// Fields every item's input gets unless the item sets them itself.
    pub input: Option<serde_json::Value>,
    pub items: Vec<NewItem>,
}

impl JobTemplate {
    /// The job one run creates; `start: false` leaves it `pending` (a queued run).
    pub fn to_job(&self, start: bool) -> NewJob {
        NewJob {
            plugin: self.plugin.clone(),
            operation: self.operation.clone(),
            name: self.name.clone(),
            options: self.options.clone(),
            input: self.input.clone(),
            start,
            items: self.items.clone(),
        }
    }
}

fn default_operation() -> String {
    "run".to_owned()
}

fn default_zone() -> String {
    "UTC".to_owned()
}

/// A schedule to create. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewSchedule {
    pub name: Option<String>,
    /// Five fields: minute, hour, day of month, month, day of week (`*/15 8-18 * *
    /// MON-FRI`), read in `timezone`. A wall time that a daylight-saving change skips
    /// runs at the first minute after the gap; one that happens twice runs once.
    pub cron: String,
    /// An IANA time zone, e.g. `America/New_York` (default `UTC`).
    #[oai(default = "default_zone")]
    #[serde(default = "default_zone")]
    pub timezone: String,
    pub template: JobTemplate,
    /// Create it paused.
    #[oai(default)]
    #[serde(default)]
    pub paused: bool,
    #[oai(default)]
    #[serde(default)]
    pub missed: MissedPolicy,
    #[oai(default)]
    #[serde(default)]
    pub overlap: OverlapPolicy,
}

/// A run created `pending` behind a job still going (overlap `queue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct QueuedRun {
    /// The waiting job.
    pub job_id: String,
    /// The job it waits for.
    pub behind: String,
}

/// A schedule as stored and as the API returns it. Times are milliseconds since the
/// Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Schedule {
    pub id: String,
    pub tenant: String,
    pub name: Option<String>,
    pub cron: String,
    pub timezone: String,
    pub template: JobTemplate,
    pub paused: bool,
    pub missed: MissedPolicy,
    pub overlap: OverlapPolicy,
    pub created_at: i64,
    pub updated_at: i64,
    /// When it was last resumed: instants of a pause are not made up for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<i64>,
    /// The scheduled instant last handled (a job created, or the run skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<i64>,
    /// The job of the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_job_id: Option<String>,
    /// The next instant it fires at (absent while paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<QueuedRun>,
    /// The next instants, RFC 3339 in the schedule's zone with its offset (filled in
    /// the answer of `GET /api/v1/schedules/{id}`, empty elsewhere; not stored).
    #[serde(skip)]
    #[oai(default)]
    pub next_runs: Vec<String>,
}

impl Schedule {
    /// Instants after this one are due: nothing before its creation, its last resume
    /// or its last handled instant runs.
    pub fn cursor(&self) -> i64 {
        self.created_at
            .max(self.resumed_at.unwrap_or(i64::MIN))
            .max(self.last_run_at.unwrap_or(i64::MIN))
    }
}

/// The link from a job to the schedule run that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct JobSchedule {
    /// The schedule's id.
    pub id: String,
    /// The scheduled instant this job is the run of (milliseconds since the epoch).
    pub at: i64,
}

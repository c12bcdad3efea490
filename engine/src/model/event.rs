//! Events: the audit log and the live feed are the same records, numbered by a global
//! gap-free sequence.

use poem_openapi::Object;
use serde::{Deserialize, Serialize};

pub mod kind {
    pub const JOB_CREATED: &str = "job_created";
    pub const JOB_STARTED: &str = "job_started";
    pub const JOB_PAUSED: &str = "job_paused";
    pub const JOB_RESUMED: &str = "job_resumed";
    pub const JOB_COMPLETED: &str = "job_completed";
    pub const JOB_CANCELLED: &str = "job_cancelled";
    /// Only items in `needs_review` are left: the job waits for an operator.
    pub const JOB_AWAITING_REVIEW: &str = "job_awaiting_review";
    /// A running job's options changed (its pool's limits).
    pub const JOB_UPDATED: &str = "job_updated";
    /// An operator deleted a finished or never-started job with its items.
    pub const JOB_DELETED: &str = "job_deleted";
    pub const ITEM_STATUS_CHANGED: &str = "item_status_changed";
    pub const ITEM_STEP: &str = "item_step";
    pub const ITEM_PROGRESS: &str = "item_progress";
    pub const ITEM_FAILED: &str = "item_failed";
    pub const ITEM_LOG: &str = "item_log";
    pub const SESSION_OPENED: &str = "session_opened";
    pub const SESSION_CLOSED: &str = "session_closed";
    /// A schedule created its run's job (`job_id`; `data` names the schedule).
    pub const SCHEDULE_FIRED: &str = "schedule_fired";
    /// A schedule's instant created no job (`data.reason` says why).
    pub const SCHEDULE_SKIPPED: &str = "schedule_skipped";
    /// A webhook subscription was turned off after failing too often.
    pub const WEBHOOK_DISABLED: &str = "webhook_disabled";

    /// Types the engine emits itself; a published custom event may not use them.
    pub const BUILTIN: [&str; 19] = [
        JOB_CREATED,
        JOB_STARTED,
        JOB_PAUSED,
        JOB_RESUMED,
        JOB_COMPLETED,
        JOB_CANCELLED,
        JOB_AWAITING_REVIEW,
        JOB_UPDATED,
        JOB_DELETED,
        ITEM_STATUS_CHANGED,
        ITEM_STEP,
        ITEM_PROGRESS,
        ITEM_FAILED,
        ITEM_LOG,
        SESSION_OPENED,
        SESSION_CLOSED,
        SCHEDULE_FIRED,
        SCHEDULE_SKIPPED,
        WEBHOOK_DISABLED,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Event {
    /// Global, gap-free, increasing from 1.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub tenant: String,
    #[serde(rename = "type")]
    #[oai(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub item_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session_id: Option<String>,
    /// The topic a client published its event under (a branch, a team, a channel).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub topic: Option<String>,
    pub data: serde_json::Value,
}

//! The data model: jobs, items, events, schedules and their statuses. Stored as JSON in sled and
//! returned as-is by the API, so one definition serves both.

mod event;
mod item;
mod job;
mod schedule;
mod status;

pub use event::{Event, kind};
pub use item::{Attempt, ErrorKind, Item, ItemError, Lease, Step};
pub use job::{
    Counts, FailurePolicy, Job, JobOptions, NewItem, NewJob, PoolOptions, RATE_LIMITED,
    ReferencePolicy, ResourceUse, Skipped, check_labels, limits, valid_label,
};
pub use schedule::{
    JobSchedule, JobTemplate, MissedPolicy, NewSchedule, OverlapPolicy, QueuedRun, Schedule,
};
pub use status::{Actor, ItemStatus, JobStatus, UnknownStatus};

/// The tenant everything belongs to until API keys name another.
pub const DEFAULT_TENANT: &str = "default";

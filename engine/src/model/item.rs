//! Items: one unit of work of a job, with its attempts, checkpoints, error and result.

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};

use super::status::ItemStatus;

/// Business errors are the data's fault and are never retried; application errors
/// (portal down, timeout, trap) are retried with backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum ErrorKind {
    Business,
    Application,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ItemError {
    pub kind: ErrorKind,
    pub message: String,
    /// A machine-readable code chosen by the plugin, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For application errors: wait at least this long before the retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ItemError {
    pub fn application(message: impl Into<String>) -> Self {
        ItemError {
            kind: ErrorKind::Application,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }

    pub fn business(message: impl Into<String>) -> Self {
        ItemError {
            kind: ErrorKind::Business,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }
}

/// A worker's hold on a running item. Completion or heartbeat with another token is
/// rejected (fencing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Lease {
    pub owner: String,
    pub token: u64,
    pub expires_at: i64,
}

/// A checkpoint a plugin recorded: the step name and the state it needs to resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Step {
    pub name: String,
    pub state: Option<String>,
    pub attempt: u32,
    pub at: i64,
}

/// One run of an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Attempt {
    pub number: u32,
    pub owner: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// The status the attempt ended in.
    pub outcome: Option<ItemStatus>,
    pub error: Option<ItemError>,
    /// The pool resource that served it.
    #[serde(default)]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Item {
    /// `{job_id}-{index}`.
    pub id: String,
    pub job_id: String,
    pub tenant: String,
    pub index: u64,
    pub plugin: String,
    pub reference: Option<String>,
    pub input: serde_json::Value,
    pub status: ItemStatus,
    /// The attempt now running or last run (0 before the first).
    pub attempt: u32,
    pub max_attempts: u32,
    /// Not to be claimed before this time (retry backoff), milliseconds since the epoch.
    pub not_before: Option<i64>,
    pub lease: Option<Lease>,
    pub attempts: Vec<Attempt>,
    pub steps: Vec<Step>,
    pub error: Option<ItemError>,
    pub result: Option<serde_json::Value>,
    /// The pool resource that served the last attempt (jobs with a pool).
    #[serde(default)]
    pub resource: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Item {
    /// Stable across attempts: a flow uses it to ask the portal whether this item's
    /// order was already placed before placing it again.
    pub fn idempotency_key(&self) -> String {
        format!("faena-{}", self.id)
    }

    pub fn last_checkpoint(&self) -> Option<&Step> {
        self.steps.last()
    }
}

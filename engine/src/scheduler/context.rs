//! What a running item can do besides finishing: record checkpoints, report progress,
//! write log lines, keep files — each fenced by the item's lease token.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio_util::sync::CancellationToken;

use super::queue::{GivenSecrets, Queue};
use crate::artifacts::Artifact;
use crate::clock::Clock;
use crate::store::{ClaimedItem, Result};

#[derive(Clone)]
pub struct RunContext {
    queue: Arc<dyn Queue>,
    item: String,
    token: u64,
    cancel: CancellationToken,
    /// The pool resource this run holds (the job's pool), if any.
    resource: Option<String>,
    secrets: GivenSecrets,
    /// When the lease runs out by the queue's clock; heartbeats move it.
    lease_until: Arc<AtomicI64>,
}

impl RunContext {
    pub fn new(queue: Arc<dyn Queue>, task: &ClaimedItem, cancel: CancellationToken) -> Self {
        RunContext {
            secrets: queue.secrets(task),
            queue,
            item: task.item.id.clone(),
            token: task.lease_token,
            cancel,
            resource: None,
            lease_until: Arc::new(AtomicI64::new(task.lease_expires_at)),
        }
    }

    /// The lease was renewed until `expires_at`.
    pub fn renewed(&self, expires_at: i64) {
        self.lease_until.fetch_max(expires_at, Ordering::AcqRel);
    }

    /// Whether the lease has run out by this process's clock (the engine may already
    /// have given the item to another attempt).
    pub fn lease_lost(&self) -> bool {
        self.queue.clock().now_ms() >= self.lease_until.load(Ordering::Acquire)
    }

    pub fn with_resource(mut self, resource: Option<String>) -> Self {
        self.resource = resource;
        self
    }

    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    pub fn item_id(&self) -> &str {
        &self.item
    }

    pub fn clock(&self) -> Clock {
        self.queue.clock()
    }

    /// The secret values that came with the claim (on a worker); `None` on the
    /// engine, where the store has them.
    pub fn given_secrets(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.secrets.as_deref()
    }

    /// Persist a checkpoint before returning: a retry of this item starts from it.
    pub async fn step(&self, name: &str, state: Option<String>) -> Result<()> {
        self.queue
            .step(&self.item, self.token, name.to_owned(), state)
            .await
    }

    /// Keep the run's portal state for the item's next attempt (encrypted by the engine).
    pub async fn keep_state(&self, state: Vec<u8>) -> Result<()> {
        self.queue
            .keep_state(&self.item, self.token, Some(state))
            .await
    }

    /// The portal state an earlier attempt of this item kept.
    pub async fn kept_state(&self) -> Result<Option<Vec<u8>>> {
        self.queue.kept_state(&self.item, self.token).await
    }

    /// Publish progress; the feed shows the resource the run holds with it.
    pub async fn progress(&self, data: serde_json::Value) -> Result<()> {
        self.queue
            .progress(&self.item, self.token, data, self.resource.clone())
            .await
    }

    pub async fn log(&self, level: &str, message: &str) -> Result<()> {
        self.queue.log(&self.item, self.token, level, message).await
    }

    /// Keep a file of this run where the engine serves it.
    pub async fn save_artifact(&self, meta: Artifact, data: Vec<u8>) -> Result<Artifact> {
        self.queue.save_artifact(self.token, meta, data).await
    }

    /// Resolves when the run should stop (cancelled, lease lost, shutdown).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

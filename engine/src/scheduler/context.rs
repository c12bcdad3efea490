//! What a running item can do besides finishing: record checkpoints, report progress,
//! write log lines — each fenced by the item's lease token.

use tokio_util::sync::CancellationToken;

use crate::store::{ClaimedItem, Result, Store};

#[derive(Clone)]
pub struct RunContext {
    store: Store,
    item: String,
    token: u64,
    cancel: CancellationToken,
    /// The pool resource this run holds (the job's pool), if any.
    resource: Option<String>,
}

impl RunContext {
    pub fn new(store: Store, task: &ClaimedItem, cancel: CancellationToken) -> Self {
        RunContext {
            store,
            item: task.item.id.clone(),
            token: task.lease_token,
            cancel,
            resource: None,
        }
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

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Persist a checkpoint before returning: a retry of this item starts from it.
    pub async fn step(&self, name: &str, state: Option<String>) -> Result<()> {
        self.store
            .step(&self.item, self.token, name.to_owned(), state)
            .await
    }

    /// Publish progress; the feed shows the resource the run holds with it.
    pub async fn progress(&self, data: serde_json::Value) -> Result<()> {
        self.store
            .progress(&self.item, self.token, data, self.resource.clone())
            .await
    }

    pub async fn log(&self, level: &str, message: &str) -> Result<()> {
        self.store.log(&self.item, self.token, level, message).await
    }

    /// Resolves when the run should stop (cancelled, lease lost, shutdown).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

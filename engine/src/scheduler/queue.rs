//! Where the dispatcher gets its items and reports what they do: the engine's own
//! store, or (in `faena worker`) an engine reached over HTTP. Both speak the same lease
//! protocol: claim, heartbeat, checkpoint, complete, each fenced by the lease token.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::artifacts::Artifact;
use crate::clock::Clock;
use crate::store::feed::Follower;
use crate::store::{ClaimRequest, Claimed, ClaimedItem, Outcome, Result, Store, StoreError};

/// Secret values handed over with a claim (a worker's), by name. `None` on the engine,
/// whose runs read the store's.
pub type GivenSecrets = Option<Arc<BTreeMap<String, String>>>;

pub trait Queue: Send + Sync + 'static {
    /// Whose leases the claims take (`engine:…`, `worker:robot1`).
    fn owner(&self) -> &str;

    fn clock(&self) -> Clock;

    /// A future that resolves when a claim may find something new. Made before the
    /// claim so that a commit between the two is not missed.
    fn woken(&self) -> BoxFuture<'_, ()>;

    /// Claim ready items of `plugins` for the free places of `slots`, answered with
    /// the places it took, no fewer than the items it brings (the caller frees the
    /// rest). A worker takes the places free when it sends the claim; the engine's
    /// store as late as it can (see its implementation).
    fn claim_slots(
        &self,
        plugins: Vec<String>,
        slots: Arc<Semaphore>,
    ) -> BoxFuture<'_, Result<(Claimed, OwnedSemaphorePermit)>>;

    /// The secret values the run of `task` may read, if they came with its claim.
    fn secrets(&self, task: &ClaimedItem) -> GivenSecrets;

    /// Renew the lease; the answer is when it now runs out.
    fn heartbeat<'a>(&'a self, item: &'a str, token: u64) -> BoxFuture<'a, Result<i64>>;

    /// Renew many leases: one answer per item, in order. By default, each on its own,
    /// all at once.
    fn heartbeats<'a>(&'a self, items: &'a [(String, u64)]) -> BoxFuture<'a, Vec<Result<i64>>> {
        Box::pin(futures_util::future::join_all(
            items
                .iter()
                .map(|(item, token)| self.heartbeat(item, *token)),
        ))
    }

    fn step<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        name: String,
        state: Option<String>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Keep (or, `None`, forget) the run's portal state for its item's next attempt.
    fn keep_state<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        state: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<()>>;

    /// The portal state an earlier attempt kept.
    fn kept_state<'a>(
        &'a self,
        item: &'a str,
        token: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;

    fn progress<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        data: serde_json::Value,
        resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>>;

    fn log<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        level: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<()>>;

    /// Keep a file the run produced (a failure screenshot, a download).
    fn save_artifact<'a>(
        &'a self,
        token: u64,
        meta: Artifact,
        data: Vec<u8>,
    ) -> BoxFuture<'a, Result<Artifact>>;

    fn complete<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        outcome: Outcome,
        resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Give the item back without counting the attempt (a shutdown stopped it).
    fn release<'a>(&'a self, item: &'a str, token: u64, why: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Whether the future of [`Queue::complete`] hands the outcome over when first
    /// polled (only its commit is awaited after), in order with the claims that follow:
    /// then a run frees its slot at once. A queue over the network says no.
    fn takes_outcomes_at_once(&self) -> bool {
        false
    }

    /// How many claims the dispatcher may have under way at once. The store answers
    /// claims in commit order, so a second one, sent for slots freed while the first
    /// waits for its commit, rides in the next commit instead of waiting for the first
    /// to come back. A queue over the network long-polls one claim at a time.
    fn claims_at_once(&self) -> usize {
        1
    }

    /// The engine's events, when this queue sees them: they stop runs whose item was
    /// cancelled at once. Without them a lost lease shows at the next heartbeat.
    fn follow(&self) -> Option<Follower>;

    /// A shutdown began: nothing new starts here.
    fn set_draining(&self);
}

/// The engine's own store.
impl Queue for Store {
    fn owner(&self) -> &str {
        self.instance()
    }

    fn clock(&self) -> Clock {
        Store::clock(self)
    }

    fn woken(&self) -> BoxFuture<'_, ()> {
        let mut woken = Box::pin(self.shared().dispatch.notified());
        woken.as_mut().enable();
        woken
    }

    /// The places are taken when the writer seals the group the claim is in, not
    /// when it is sent: a run that ends while the group before is flushing still
    /// has its place claimed for in that group, with its completion, instead of
    /// waiting for the next claim after this one is answered.
    fn claim_slots(
        &self,
        plugins: Vec<String>,
        slots: Arc<Semaphore>,
    ) -> BoxFuture<'_, Result<(Claimed, OwnedSemaphorePermit)>> {
        Box::pin(Store::claim_slots(
            self,
            ClaimRequest {
                owner: self.instance().to_owned(),
                tenant: None,
                plugins,
                max: 0,
                lease_ms: None,
                labels: Vec::new(),
                item: None,
            },
            slots,
        ))
    }

    fn secrets(&self, _task: &ClaimedItem) -> GivenSecrets {
        None
    }

    fn heartbeat<'a>(&'a self, item: &'a str, token: u64) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            Store::heartbeat(self, item, token, None)
                .await
                .map(|l| l.expires_at)
        })
    }

    /// One command, one commit for the whole round.
    fn heartbeats<'a>(&'a self, items: &'a [(String, u64)]) -> BoxFuture<'a, Vec<Result<i64>>> {
        Box::pin(async move {
            match Store::heartbeats(self, items).await {
                Ok(renewed) => renewed
                    .into_iter()
                    .map(|r| r.map(|l| l.expires_at))
                    .collect(),
                Err(e) => items
                    .iter()
                    .map(|_| {
                        Err(match &e {
                            StoreError::Closed => StoreError::Closed,
                            other => StoreError::Storage(other.to_string()),
                        })
                    })
                    .collect(),
            }
        })
    }

    fn step<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        name: String,
        state: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::step(self, item, token, name, state))
    }

    fn keep_state<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        state: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::keep_state(self, item, token, state))
    }

    fn kept_state<'a>(
        &'a self,
        item: &'a str,
        _token: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { Store::kept_state(self, item) })
    }

    fn progress<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        data: serde_json::Value,
        resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::progress(self, item, token, data, resource))
    }

    fn log<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        level: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::log(self, item, token, level, message))
    }

    fn save_artifact<'a>(
        &'a self,
        _token: u64,
        meta: Artifact,
        data: Vec<u8>,
    ) -> BoxFuture<'a, Result<Artifact>> {
        Box::pin(async move { self.artifacts()?.save(meta, data).await })
    }

    fn complete<'a>(
        &'a self,
        item: &'a str,
        token: u64,
        outcome: Outcome,
        resource: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let item = self.complete_on(item, token, outcome, resource).await?;
            tracing::debug!(item = %item.id, status = %item.status, "item finished");
            Ok(())
        })
    }

    fn release<'a>(&'a self, item: &'a str, token: u64, why: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Store::release(self, item, token, why).await.map(drop) })
    }

    /// The command is queued to the writer, in order, at the first poll.
    fn takes_outcomes_at_once(&self) -> bool {
        true
    }

    fn claims_at_once(&self) -> usize {
        2
    }

    fn follow(&self) -> Option<Follower> {
        Some(Store::follow(self))
    }

    fn set_draining(&self) {
        self.shared().set_draining();
    }
}

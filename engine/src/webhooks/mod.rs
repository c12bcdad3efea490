//! Webhooks: each tenant's subscriptions (URL, event types, secret) get that tenant's
//! events POSTed, signed in the Standard Webhooks form ([`signature`]), at least once
//! and in seq order. The store's event log is the outbox and each subscription keeps a
//! durable cursor in it ([`crate::store::webhooks`]); [`run`] gives every enabled
//! subscription a task of its own ([`deliver`]), so a slow receiver delays only itself.

mod deliver;
pub mod destination;
pub mod signature;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::store::Store;

/// `[webhooks]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Hosts (`host` or `host:port`, as in the URL) that may resolve to loopback,
    /// private or other internal addresses. Everything else must be public.
    pub allow: Vec<String>,
    /// Failed calls in a row after which a subscription is turned off (default 20).
    pub max_failures: u32,
    /// Seconds one call may take, connecting included (default 10).
    pub timeout_secs: u64,
    /// Subscriptions one tenant may have (default 50).
    pub max_per_tenant: usize,
    /// The first retry's delay in milliseconds, doubled on each failure (default 1000).
    pub retry_initial_ms: u64,
    /// The longest delay between retries, in seconds (default 300).
    pub retry_max_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            allow: Vec::new(),
            max_failures: 20,
            timeout_secs: 10,
            max_per_tenant: 50,
            retry_initial_ms: 1_000,
            retry_max_secs: 300,
        }
    }
}

impl WebhookSettings {
    /// What is wrong with the settings, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.max_failures == 0 || self.timeout_secs == 0 || self.max_per_tenant == 0 {
            return Err(
                "[webhooks] max_failures, timeout_secs and max_per_tenant must each be at least 1"
                    .into(),
            );
        }
        if self.retry_initial_ms == 0 || self.retry_max_secs == 0 {
            return Err("[webhooks] retry_initial_ms and retry_max_secs must be above 0".into());
        }
        if let Some(bad) = self
            .allow
            .iter()
            .find(|a| a.trim().is_empty() || a.contains('/'))
        {
            return Err(format!(
                "[webhooks] allow: `{bad}` is not a host or host:port"
            ));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The wait after the `attempt`-th failed call of one event: doubling from
    /// `retry_initial_ms` up to `retry_max_secs`, with jitter (half to all of it) so
    /// that receivers coming back are not hit by every subscription at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let max = self.retry_max_secs.saturating_mul(1_000);
        let full = self
            .retry_initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(max);
        Duration::from_millis(rand::random_range(full / 2..=full))
    }
}

/// Deliver every enabled subscription's events until `stop`: one task per
/// subscription, started and stopped as subscriptions are created, deleted, turned
/// off or on.
pub async fn run(store: Store, settings: Arc<WebhookSettings>, stop: CancellationToken) {
    let hooks = store.webhooks().clone();
    let mut changes = hooks.changes();
    let mut tasks = JoinSet::new();
    // Subscription id → its task's stop and id.
    let mut running: HashMap<String, (CancellationToken, tokio::task::Id)> = HashMap::new();
    loop {
        changes.mark_unchanged();
        match hooks.list(None) {
            Ok(all) => {
                let on: HashMap<_, _> = all
                    .into_iter()
                    .filter(|w| w.enabled)
                    .map(|w| (w.id.clone(), w))
                    .collect();
                running.retain(|id, (token, _)| {
                    let keep = on.contains_key(id);
                    if !keep {
                        token.cancel();
                    }
                    keep
                });
                for (id, webhook) in on {
                    if running.contains_key(&id) {
                        continue;
                    }
                    info!(webhook = %id, tenant = %webhook.tenant, after = webhook.cursor, "delivering webhook events");
                    let token = stop.child_token();
                    let task = tasks.spawn(deliver::run(
                        store.clone(),
                        settings.clone(),
                        webhook,
                        token.clone(),
                    ));
                    running.insert(id, (token, task.id()));
                }
            }
            Err(e) => error!(error = %e, "reading the webhook subscriptions"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            Some(done) = tasks.join_next_with_id() => {
                let task = match done {
                    Ok((task, ())) => task,
                    Err(e) => {
                        if e.is_panic() {
                            error!("a webhook delivery task panicked; restarting it");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        e.id()
                    }
                };
                running.retain(|_, (_, t)| *t != task);
            }
        }
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let s = WebhookSettings {
            retry_initial_ms: 1_000,
            retry_max_secs: 5,
            ..Default::default()
        };
        for (attempt, full) in [(1, 1_000), (2, 2_000), (3, 4_000), (4, 5_000), (60, 5_000)] {
            let d = s.backoff(attempt).as_millis() as u64;
            assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
        }
        assert!(s.check().is_ok());
        let bad = WebhookSettings {
            max_failures: 0,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().contains("max_failures"));
    }
}

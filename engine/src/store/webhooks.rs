//! Webhook subscriptions and their recent deliveries, in sled trees of their own beside
//! the store's. The event log is the outbox: a subscription keeps a cursor (the last
//! event seq it is done with), advanced and flushed only after a 2xx, so a restart
//! resumes where delivery stopped. Secrets are sealed with the store's secrets key.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Result, StoreError};
use crate::secrets::SecretKey;

/// Deliveries kept per subscription, the newest.
pub const KEPT_DELIVERIES: usize = 100;

/// A subscription as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Webhook {
    /// `wh_` and a ULID.
    pub id: String,
    pub tenant: String,
    pub url: String,
    /// The event types sent; empty: every event of the tenant.
    pub types: Vec<String>,
    pub description: Option<String>,
    /// Turned off after `[webhooks] max_failures` failed calls in a row;
    /// `POST /api/v1/webhooks/{id}/enable` turns it back on.
    pub enabled: bool,
    /// Why it was turned off.
    pub disabled_reason: Option<String>,
    /// Failed calls since the last successful one.
    pub failures: u32,
    /// The seq of the last event this subscription is done with; delivery goes on
    /// after it.
    pub cursor: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    webhook: Webhook,
    /// The `whsec_…` secret sealed with the store's key, in base64.
    sealed_secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet: failed so far, retried with backoff.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
}

/// One event's delivery to one subscription, over all its attempts.
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Delivery {
    /// The event's seq.
    pub seq: u64,
    /// The `webhook-id` header: the same on every attempt, for the receiver to drop
    /// duplicates by.
    pub webhook_id: String,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The HTTP status of the last attempt (none: no answer came).
    pub status_code: Option<u16>,
    /// What went wrong on the last failed attempt.
    pub last_error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub first_attempt_at: i64,
    pub last_attempt_at: i64,
}

/// A subscription to create, already checked by the caller.
pub struct NewWebhook {
    pub url: String,
    pub types: Vec<String>,
    pub description: Option<String>,
    /// `whsec_…`
    pub secret: String,
}

/// The subscriptions and deliveries of one store. Clones share the change signal the
/// delivery task waits on.
#[derive(Clone)]
pub struct Webhooks {
    subs: sled::Tree,
    deliveries: sled::Tree,
    key: Arc<SecretKey>,
    changes: Arc<watch::Sender<u64>>,
    /// Held while a subscription is created, so a tenant's cap holds under
    /// concurrent creates.
    creating: Arc<std::sync::Mutex<()>>,
}

fn decode(id: &[u8], raw: &[u8]) -> Result<Stored> {
    serde_json::from_slice(raw).map_err(|e| {
        StoreError::Storage(format!(
            "webhook `{}` is unreadable: {e}",
            String::from_utf8_lossy(id)
        ))
    })
}

fn delivery_key(id: &str, seq: u64) -> Vec<u8> {
    let mut k = delivery_prefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn delivery_prefix(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

/// The secret's record is bound to its subscription: copied under another id it does
/// not open.
fn aad(id: &str) -> Vec<u8> {
    format!("webhook\0{id}").into_bytes()
}

impl Webhooks {
    pub fn open(subs: sled::Tree, deliveries: sled::Tree, key: Arc<SecretKey>) -> Webhooks {
        Webhooks {
            subs,
            deliveries,
            key,
            changes: Arc::new(watch::Sender::new(0)),
            creating: Default::default(),
        }
    }

    /// Changes when a subscription is created, deleted, turned off or on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn stored(&self, id: &str) -> Result<Option<Stored>> {
        self.subs
            .get(id.as_bytes())?
            .map(|raw| decode(id.as_bytes(), &raw))
            .transpose()
    }

    /// A new subscription that starts after event `cursor` (the head: no history).
    /// Store a new subscription of `tenant`, unless it already has `max` (409).
    pub fn create(
        &self,
        tenant: &str,
        new: NewWebhook,
        cursor: u64,
        now_ms: i64,
        max: usize,
    ) -> Result<Webhook> {
        let _creating = self.creating.lock().expect("webhook create lock");
        if self.list(Some(tenant))?.len() >= max {
            return Err(StoreError::Conflict(format!(
                "tenant `{tenant}` already has {max} webhooks (the engine's `[webhooks] \
                 max_per_tenant`); delete one first"
            )));
        }
        let id = format!("wh_{}", ulid::Ulid::new());
        let webhook = Webhook {
            id: id.clone(),
            tenant: tenant.to_owned(),
            url: new.url,
            types: new.types,
            description: new.description,
            enabled: true,
            disabled_reason: None,
            failures: 0,
            cursor,
            created_at: now_ms,
        };
        let stored = Stored {
            sealed_secret: STANDARD.encode(self.key.seal(&aad(&id), new.secret.as_bytes())),
            webhook,
        };
        self.subs
            .insert(id.as_bytes(), serde_json::to_vec(&stored)?)?;
        self.subs.flush()?;
        self.changed();
        Ok(stored.webhook)
    }

    /// Subscriptions of `tenant` (of every tenant when `None`), oldest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<Webhook>> {
        let mut out = Vec::new();
        for kv in self.subs.iter() {
            let (k, v) = kv?;
            let s = decode(&k, &v)?;
            if tenant.is_none_or(|t| t == s.webhook.tenant) {
                out.push(s.webhook);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// One of `tenant`'s subscriptions; another tenant's is not found.
    pub fn get(&self, tenant: &str, id: &str) -> Result<Webhook> {
        match self.stored(id)? {
            Some(s) if s.webhook.tenant == tenant => Ok(s.webhook),
            _ => Err(StoreError::not_found("webhook", id)),
        }
    }

    /// Delete a subscription and its deliveries; its calls stop.
    pub fn delete(&self, tenant: &str, id: &str) -> Result<()> {
        self.get(tenant, id)?;
        self.subs.remove(id.as_bytes())?;
        let mut batch = sled::Batch::default();
        for k in self.deliveries.scan_prefix(delivery_prefix(id)).keys() {
            batch.remove(k?);
        }
        self.deliveries.apply_batch(batch)?;
        self.subs.flush()?;
        self.changed();
        Ok(())
    }

    /// Turn a subscription back on: it resumes after its cursor.
    pub fn enable(&self, tenant: &str, id: &str) -> Result<Webhook> {
        self.get(tenant, id)?;
        let w = self
            .update(id, |w| {
                w.enabled = true;
                w.disabled_reason = None;
                w.failures = 0;
            })?
            .ok_or_else(|| StoreError::not_found("webhook", id))?;
        self.subs.flush()?;
        self.changed();
        Ok(w)
    }

    /// The subscription's `whsec_…` secret, unsealed.
    pub fn secret(&self, id: &str) -> Result<String> {
        let s = self
            .stored(id)?
            .ok_or_else(|| StoreError::not_found("webhook", id))?;
        let damaged = || StoreError::Storage(format!("the secret of webhook `{id}` is damaged"));
        let sealed = STANDARD.decode(&s.sealed_secret).map_err(|_| damaged())?;
        let plain = self.key.open(&aad(id), &sealed).ok_or_else(damaged)?;
        String::from_utf8(plain).map_err(|_| damaged())
    }

    /// Change a subscription in place; `None` when it is gone (deleted meanwhile).
    fn update(&self, id: &str, change: impl Fn(&mut Webhook)) -> Result<Option<Webhook>> {
        loop {
            let Some(old) = self.subs.get(id.as_bytes())? else {
                return Ok(None);
            };
            let mut s = decode(id.as_bytes(), &old)?;
            change(&mut s.webhook);
            let new = serde_json::to_vec(&s)?;
            if self
                .subs
                .compare_and_swap(id.as_bytes(), Some(&old), Some(new))?
                .is_ok()
            {
                return Ok(Some(s.webhook));
            }
        }
    }

    /// Event `seq` was delivered: the cursor moves past it, durably, before the next.
    pub async fn delivered(&self, id: &str, seq: u64) -> Result<Option<Webhook>> {
        let w = self.update(id, |w| {
            w.cursor = w.cursor.max(seq);
            w.failures = 0;
        })?;
        self.subs.flush_async().await?;
        Ok(w)
    }

    /// Events up to `seq` did not match: the cursor moves past them (not flushed:
    /// after a crash they are only looked at again).
    pub fn passed(&self, id: &str, seq: u64) -> Result<Option<Webhook>> {
        self.update(id, |w| w.cursor = w.cursor.max(seq))
    }

    /// A call failed. The `max_failures`-th in a row turns the subscription off, with
    /// `why` as the reason.
    pub fn failed(&self, id: &str, why: &str, max_failures: u32) -> Result<Option<Webhook>> {
        let w = self.update(id, |w| {
            w.failures = w.failures.saturating_add(1);
            if w.failures >= max_failures && w.enabled {
                w.enabled = false;
                w.disabled_reason = Some(format!(
                    "{} failed calls in a row (the `[webhooks] max_failures` setting); the last: {why}",
                    w.failures
                ));
            }
        })?;
        if w.as_ref().is_some_and(|w| !w.enabled) {
            self.subs.flush()?;
            self.changed();
        }
        Ok(w)
    }

    /// Record an attempt's outcome, keeping the newest [`KEPT_DELIVERIES`].
    pub fn record(&self, id: &str, delivery: &Delivery) -> Result<()> {
        let fresh = self
            .deliveries
            .insert(
                delivery_key(id, delivery.seq),
                serde_json::to_vec(delivery)?,
            )?
            .is_none();
        if fresh {
            let keys: Vec<_> = self
                .deliveries
                .scan_prefix(delivery_prefix(id))
                .keys()
                .collect::<Result<_, _>>()?;
            let mut batch = sled::Batch::default();
            for k in keys.iter().take(keys.len().saturating_sub(KEPT_DELIVERIES)) {
                batch.remove(k.clone());
            }
            self.deliveries.apply_batch(batch)?;
        }
        Ok(())
    }

    /// The recent deliveries of one of `tenant`'s subscriptions, newest first.
    pub fn deliveries(&self, tenant: &str, id: &str) -> Result<Vec<Delivery>> {
        self.get(tenant, id)?;
        let mut out = Vec::new();
        for kv in self.deliveries.scan_prefix(delivery_prefix(id)).rev() {
            let (_, v) = kv?;
            out.push(serde_json::from_slice(&v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks() -> Webhooks {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Webhooks::open(
            db.open_tree("webhooks").unwrap(),
            db.open_tree("webhook_deliveries").unwrap(),
            Arc::new(SecretKey::generate()),
        )
    }

    fn new(secret: &str) -> NewWebhook {
        NewWebhook {
            url: "http://example.com/h".into(),
            types: vec![],
            description: None,
            secret: secret.into(),
        }
    }

    #[test]
    fn a_tenants_cap_holds_under_concurrent_creates() {
        let h = hooks();
        let made: usize = std::thread::scope(|s| {
            let tries: Vec<_> = (0..8)
                .map(|_| s.spawn(|| h.create("t", new("whsec_x"), 0, 1, 3).is_ok()))
                .collect();
            tries.into_iter().map(|t| t.join().unwrap() as usize).sum()
        });
        assert_eq!(made, 3);
        assert_eq!(h.list(Some("t")).unwrap().len(), 3);
        assert!(h.create("u", new("whsec_x"), 0, 1, 3).is_ok(), "per tenant");
    }

    #[test]
    fn the_secret_is_sealed_and_tenants_are_apart() {
        let h = hooks();
        let w = h
            .create(
                "acme",
                new("whsec_c2VjcmV0LXZhbHVlLTEyMzQ1Njc4OTAxMg=="),
                7,
                1,
                10,
            )
            .unwrap();
        assert!(w.id.starts_with("wh_") && w.cursor == 7 && w.enabled);
        let raw = h.subs.get(w.id.as_bytes()).unwrap().unwrap();
        assert!(
            !String::from_utf8_lossy(&raw).contains("c2VjcmV0"),
            "sealed at rest"
        );
        assert_eq!(
            h.secret(&w.id).unwrap(),
            "whsec_c2VjcmV0LXZhbHVlLTEyMzQ1Njc4OTAxMg=="
        );
        assert!(matches!(
            h.get("other", &w.id),
            Err(StoreError::NotFound { .. })
        ));
        assert!(h.list(Some("other")).unwrap().is_empty());
        assert!(h.delete("other", &w.id).is_err());
        assert_eq!(h.list(Some("acme")).unwrap().len(), 1);
    }

    #[test]
    fn failures_turn_it_off_and_enable_turns_it_on() {
        let h = hooks();
        let w = h.create("t", new("whsec_x"), 0, 1, 10).unwrap();
        let mut changes = h.changes();
        changes.mark_unchanged();
        for _ in 0..2 {
            assert!(h.failed(&w.id, "HTTP 500", 3).unwrap().unwrap().enabled);
        }
        let off = h.failed(&w.id, "HTTP 500", 3).unwrap().unwrap();
        assert!(!off.enabled && off.disabled_reason.unwrap().contains("HTTP 500"));
        assert!(changes.has_changed().unwrap());
        let on = h.enable("t", &w.id).unwrap();
        assert!(on.enabled && on.failures == 0 && on.disabled_reason.is_none());
        h.delete("t", &w.id).unwrap();
        assert!(
            h.failed(&w.id, "x", 3).unwrap().is_none(),
            "gone stays gone"
        );
        assert!(h.subs.get(w.id.as_bytes()).unwrap().is_none());
    }

    #[test]
    fn only_the_newest_deliveries_are_kept() {
        let h = hooks();
        let w = h.create("t", new("whsec_x"), 0, 1, 10).unwrap();
        let d = |seq| Delivery {
            seq,
            webhook_id: format!("evt_{seq}"),
            event_type: "job_completed".into(),
            state: DeliveryState::Delivered,
            attempts: 1,
            status_code: Some(200),
            last_error: None,
            first_attempt_at: 0,
            last_attempt_at: 0,
        };
        for seq in 1..=(KEPT_DELIVERIES as u64 + 5) {
            h.record(&w.id, &d(seq)).unwrap();
            h.record(&w.id, &d(seq)).unwrap();
        }
        let kept = h.deliveries("t", &w.id).unwrap();
        assert_eq!(kept.len(), KEPT_DELIVERIES);
        assert_eq!(kept[0].seq, KEPT_DELIVERIES as u64 + 5, "newest first");
        assert_eq!(kept.last().unwrap().seq, 6);
    }
}

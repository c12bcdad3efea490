//! One subscription's delivery: read its tenant's events after its cursor (from the
//! feed's memory, or from the store when they have left it), POST each matching one
//! until a 2xx, retrying with backoff, then move the cursor durably and go on.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::Url;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{WebhookSettings, destination, signature};
use crate::store::webhooks::{Delivery, DeliveryState, Webhook};
use crate::store::{EventFilter, Store, StoreError};

/// Events read from the feed's memory at a time.
const FEED_BATCH: usize = 256;
/// Matching events read from the store at a time, when the feed no longer holds them.
const STORE_BATCH: usize = 64;
/// How far past non-matching events the cursor may move before it is written.
const SAVE_PASSED: u64 = 1_024;

/// An event to send.
struct Pending {
    seq: u64,
    kind: String,
    /// The event's JSON as stored: the body of the call.
    body: Bytes,
}

/// The next events after a cursor.
struct Page {
    events: Vec<Pending>,
    /// The last seq looked at, matching or not.
    scanned: u64,
    /// Nothing after `scanned` had been published when the page was read.
    caught_up: bool,
}

/// What went wrong with one call.
struct Failure {
    status: Option<u16>,
    message: String,
}

enum Flow {
    Delivered,
    /// Cancelled, deleted, or turned off: this task ends.
    Stop,
}

struct Worker {
    store: Store,
    settings: Arc<WebhookSettings>,
    hook: Webhook,
    url: Url,
    key: Vec<u8>,
    /// A client that connects only to the addresses it was built for.
    client: Option<(Vec<SocketAddr>, reqwest::Client)>,
}

/// Deliver `hook`'s events until `stop`, or until it is deleted or turned off.
pub(super) async fn run(
    store: Store,
    settings: Arc<WebhookSettings>,
    hook: Webhook,
    stop: CancellationToken,
) {
    let hooks = store.webhooks().clone();
    let ready = store
        .webhooks()
        .secret(&hook.id)
        .map_err(|e| e.to_string())
        .and_then(|s| signature::secret_key(&s))
        .and_then(|key| Ok((key, destination::parse(&hook.url).map_err(|e| e.0)?)));
    let (key, url) = match ready {
        Ok(ready) => ready,
        Err(why) => {
            // Nothing can be sent: turn it off, saying why, rather than retry forever.
            error!(webhook = %hook.id, %why, "webhook cannot be delivered");
            let _ = hooks.failed(&hook.id, &why, 1);
            return;
        }
    };
    let filter = EventFilter {
        tenant: Some(hook.tenant.clone()),
        types: hook.types.clone(),
        ..Default::default()
    };
    let mut cursor = hook.cursor;
    let mut saved = cursor;
    let mut follower = store.feed().follow(cursor);
    let mut worker = Worker {
        store,
        settings,
        hook,
        url,
        key,
        client: None,
    };
    loop {
        let page = match next_page(&worker.store, cursor, &filter) {
            Ok(page) => page,
            Err(e) => {
                error!(webhook = %worker.hook.id, error = %e, "reading events for a webhook");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        for event in &page.events {
            match worker.deliver(event, &stop).await {
                Flow::Delivered => (cursor, saved) = (event.seq, event.seq),
                Flow::Stop => return,
            }
        }
        cursor = cursor.max(page.scanned);
        // Pages of events for other tenants and types go by without a call: give the
        // runtime a turn between them.
        tokio::task::yield_now().await;
        if cursor - saved >= SAVE_PASSED {
            match hooks.passed(&worker.hook.id, cursor) {
                Ok(Some(_)) => saved = cursor,
                Ok(None) => return,
                Err(e) => warn!(webhook = %worker.hook.id, error = %e, "saving a webhook's cursor"),
            }
        }
        if page.caught_up {
            follower.set_cursor(cursor);
            tokio::select! {
                more = follower.ready() => if !more { return },
                _ = stop.cancelled() => return,
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}

/// The events after `cursor` that `filter` takes, and how far they were looked for.
/// Only published events are read: those are flushed, so a crash cannot take back
/// an event that was sent.
fn next_page(store: &Store, cursor: u64, filter: &EventFilter) -> Result<Page, StoreError> {
    let head = store.feed().head();
    if cursor >= head {
        return Ok(Page {
            events: Vec::new(),
            scanned: cursor,
            caught_up: true,
        });
    }
    let mut out = Vec::new();
    if store
        .feed()
        .read_after(cursor, FEED_BATCH, &mut out)
        .is_ok()
    {
        let scanned = out.last().map_or(cursor, |p| p.seq);
        let events = out
            .iter()
            .filter(|p| {
                filter.matches_parts(&p.tenant, &p.kind, p.job_id.as_deref(), p.topic.as_deref())
            })
            .map(|p| Pending {
                seq: p.seq,
                kind: p.kind.to_string(),
                body: p.json.clone(),
            })
            .collect();
        return Ok(Page {
            events,
            scanned,
            caught_up: scanned >= head,
        });
    }
    #[derive(serde::Deserialize)]
    struct Head {
        seq: u64,
        #[serde(rename = "type")]
        kind: String,
    }
    let page = store.event_texts(cursor, filter, STORE_BATCH)?;
    let mut events = Vec::with_capacity(page.events.len());
    for (_, text) in page.events {
        let head_of: Head = serde_json::from_str(&text)?;
        if head_of.seq <= head {
            events.push(Pending {
                seq: head_of.seq,
                kind: head_of.kind,
                body: Bytes::from(text),
            });
        }
    }
    Ok(Page {
        events,
        scanned: page.last.min(head),
        caught_up: false,
    })
}

/// An error and its causes, for the deliveries list (reqwest's own message alone
/// says only "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Worker {
    /// Send one event until it is delivered, or the subscription stops.
    async fn deliver(&mut self, event: &Pending, stop: &CancellationToken) -> Flow {
        let hooks = self.store.webhooks().clone();
        let id = self.hook.id.clone();
        let now = self.store.clock().now_ms();
        let mut record = Delivery {
            seq: event.seq,
            webhook_id: format!("evt_{}", event.seq),
            event_type: event.kind.clone(),
            state: DeliveryState::Pending,
            attempts: 0,
            status_code: None,
            last_error: None,
            first_attempt_at: now,
            last_attempt_at: now,
        };
        loop {
            record.attempts += 1;
            let result = tokio::select! {
                r = self.call(&record.webhook_id, &event.body) => r,
                _ = stop.cancelled() => return Flow::Stop,
            };
            record.last_attempt_at = self.store.clock().now_ms();
            self.store.metrics().record_webhook(result.is_ok());
            match result {
                Ok(status) => {
                    record.state = DeliveryState::Delivered;
                    record.status_code = Some(status);
                    if let Err(e) = hooks.record(&id, &record) {
                        warn!(webhook = %id, error = %e, "recording a webhook delivery");
                    }
                    // The receiver has it: only the cursor is retried (with backoff)
                    // until the store can write again, not the call.
                    let mut pause = std::time::Duration::from_secs(1);
                    loop {
                        match hooks.delivered(&id, event.seq).await {
                            Ok(Some(_)) => return Flow::Delivered,
                            Ok(None) => return Flow::Stop,
                            Err(e) => {
                                error!(webhook = %id, error = %e, "saving a webhook's cursor");
                                tokio::select! {
                                    _ = tokio::time::sleep(pause) => {}
                                    _ = stop.cancelled() => return Flow::Stop,
                                }
                                pause = (pause * 2).min(std::time::Duration::from_secs(60));
                            }
                        }
                    }
                }
                Err(failure) => {
                    record.status_code = failure.status;
                    record.last_error = Some(failure.message.clone());
                    if let Err(e) = hooks.record(&id, &record) {
                        warn!(webhook = %id, error = %e, "recording a webhook delivery");
                    }
                    match hooks.failed(&id, &failure.message, self.settings.max_failures) {
                        Ok(Some(w)) if w.enabled => {}
                        Ok(Some(w)) => {
                            self.disabled(&w).await;
                            return Flow::Stop;
                        }
                        Ok(None) => return Flow::Stop,
                        Err(e) => error!(webhook = %id, error = %e, "counting a webhook failure"),
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.settings.backoff(record.attempts)) => {}
                _ = stop.cancelled() => return Flow::Stop,
            }
        }
    }

    /// Say in the log and in the tenant's events that the subscription was turned off.
    async fn disabled(&self, w: &Webhook) {
        let reason = w.disabled_reason.clone().unwrap_or_default();
        warn!(webhook = %w.id, tenant = %w.tenant, %reason, "webhook turned off");
        let data = serde_json::json!({"webhook_id": w.id, "url": w.url, "reason": reason});
        if let Err(e) = self
            .store
            .publish_engine_event(&w.tenant, crate::model::kind::WEBHOOK_DISABLED, data)
            .await
        {
            warn!(webhook = %w.id, error = %e, "publishing webhook_disabled");
        }
    }

    /// One signed POST: the status of a 2xx answer, or what went wrong.
    async fn call(&mut self, webhook_id: &str, body: &Bytes) -> Result<u16, Failure> {
        let failure = |message: String| Failure {
            status: None,
            message,
        };
        // Checked again on every call: the name may resolve elsewhere now.
        let addrs = destination::resolve(&self.url, &self.settings.allow)
            .await
            .map_err(|e| failure(format!("destination refused: {e}")))?;
        let client = self.client(addrs).map_err(|e| failure(chain(&e)))?;
        let timestamp = self.store.clock().now_ms() / 1_000;
        let signature = signature::sign(&self.key, webhook_id, timestamp, body);
        let answer = client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::USER_AGENT,
                concat!("faena/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| failure(chain(&e)))?;
        let status = answer.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(Failure {
                status: Some(status.as_u16()),
                message: format!("the receiver answered {status}"),
            })
        }
    }

    /// A client pinned to `addrs` (kept while the name resolves to the same ones). It
    /// follows no redirect (a redirect could lead anywhere) and uses no proxy (a proxy
    /// would resolve the name itself).
    fn client(&mut self, addrs: Vec<SocketAddr>) -> reqwest::Result<reqwest::Client> {
        if let Some((pinned, client)) = &self.client
            && *pinned == addrs
        {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(self.settings.timeout())
            .connect_timeout(self.settings.timeout());
        if let Some(host) = self.url.host_str()
            && host.parse::<std::net::IpAddr>().is_err()
            && !host.starts_with('[')
        {
            builder = builder.resolve_to_addrs(host, &addrs);
        }
        let client = builder.build()?;
        self.client = Some((addrs, client.clone()));
        Ok(client)
    }
}

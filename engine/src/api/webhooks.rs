//! `/api/v1/webhooks`: a tenant's subscriptions (create, list, inspect, delete, turn
//! back on) and each one's recent deliveries. Admins change them; any key of the
//! tenant reads them. The secret is shown once, in the create answer.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::error::ErrorCode;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use crate::store::webhooks::{Delivery, NewWebhook, Webhook};
use crate::webhooks::{destination, signature};

/// A subscription to create.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewWebhookBody {
    /// Where events are POSTed: an `http://` URL whose host resolves to public
    /// addresses (or is in the engine's `[webhooks] allow`).
    pub url: String,
    /// Event types to send, e.g. `["job_completed"]`; left out or empty: all of the
    /// tenant's events.
    pub types: Option<Vec<String>>,
    /// The signing secret, `whsec_` and 24–64 bytes in base64; left out: one is
    /// generated.
    pub secret: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CreatedWebhook {
    pub webhook: Webhook,
    /// The signing secret. Shown this once: keep it where the receiver verifies
    /// signatures.
    pub secret: String,
}

#[derive(Debug, Object)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Object)]
pub struct DeliveryList {
    /// Newest first; the last 100 events of the subscription.
    pub deliveries: Vec<Delivery>,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Created(Json<CreatedWebhook>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    NoContent,
}

/// Event type names: what the engine emits and what `POST /api/v1/events` takes.
fn valid_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

pub struct WebhooksApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Webhooks")]
impl WebhooksApi {
    /// Subscribe a URL to the tenant's events, from now on (no history is sent).
    /// Each event is POSTed as its JSON with `webhook-id` (the same on every retry),
    /// `webhook-timestamp` and `webhook-signature` (Standard Webhooks, HMAC-SHA256).
    #[oai(path = "/webhooks", method = "post", operation_id = "create_webhook")]
    async fn create(&self, body: JsonBody<NewWebhookBody>) -> ApiResult<Created> {
        let body = body.0;
        let settings = self.state.webhooks.clone();
        let tenant = self.state.tenant();
        let url = destination::parse(body.url.trim())
            .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
        let mut types = body.types.unwrap_or_default();
        types.sort();
        types.dedup();
        if let Some(bad) = types.iter().find(|t| !valid_type(t)) {
            return Err(ApiError::invalid(format!(
                "types: `{bad}` is not an event type (1-64 letters, digits, `_`, `-`, `.` or `:`)"
            )));
        }
        if types.len() > 100 {
            return Err(ApiError::invalid("types: at most 100"));
        }
        // Measured as sent, as the OpenAPI schema says, before trimming.
        if body
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 200)
        {
            return Err(ApiError::invalid("description: at most 200 characters"));
        }
        let description = body.description.map(|d| d.trim().to_owned());
        let secret = match body.secret {
            Some(s) => {
                signature::secret_key(&s).map_err(|e| ApiError::invalid(format!("secret: {e}")))?;
                s
            }
            None => signature::new_secret(),
        };
        let hooks = self.state.store.webhooks();
        if hooks.list(Some(&tenant))?.len() >= settings.max_per_tenant {
            return Err(ApiError::Conflict(super::error::body(
                ErrorCode::Conflict,
                format!(
                    "tenant `{tenant}` already has {} webhooks (the engine's `[webhooks] \
                     max_per_tenant`); delete one first",
                    settings.max_per_tenant
                ),
            )));
        }
        destination::resolve(&url, &settings.allow)
            .await
            .map_err(|e| ApiError::invalid(format!("url: {e}")))?;
        self.state.store.writable()?;
        let store = &self.state.store;
        let webhook = hooks.create(
            &tenant,
            NewWebhook {
                url: url.to_string(),
                types,
                description: description.filter(|d| !d.is_empty()),
                secret: secret.clone(),
            },
            store.feed().head(),
            store.clock().now_ms(),
            settings.max_per_tenant,
        )?;
        tracing::info!(webhook = %webhook.id, %tenant, url = %webhook.url, "webhook created");
        Ok(Created::Created(Json(CreatedWebhook { webhook, secret })))
    }

    /// The tenant's subscriptions, oldest first (never their secrets).
    #[oai(path = "/webhooks", method = "get", operation_id = "list_webhooks")]
    async fn list(&self) -> ApiResult<Json<WebhookList>> {
        Ok(Json(WebhookList {
            webhooks: self
                .state
                .store
                .webhooks()
                .list(Some(&self.state.tenant()))?,
        }))
    }

    /// A subscription: whether it is on, why not, its failures and cursor.
    #[oai(path = "/webhooks/:id", method = "get", operation_id = "get_webhook")]
    async fn get(&self, id: Path<String>) -> ApiResult<Json<Webhook>> {
        Ok(Json(
            self.state
                .store
                .webhooks()
                .get(&self.state.tenant(), &id.0)?,
        ))
    }

    /// Delete a subscription and its deliveries; calls to it stop.
    #[oai(
        path = "/webhooks/:id",
        method = "delete",
        operation_id = "delete_webhook"
    )]
    async fn delete(&self, id: Path<String>) -> ApiResult<Deleted> {
        self.state
            .store
            .webhooks()
            .delete(&self.state.tenant(), &id.0)?;
        tracing::info!(webhook = %id.0, "webhook deleted");
        Ok(Deleted::NoContent)
    }

    /// Turn a subscription back on after failures turned it off. Delivery resumes
    /// with the event it stopped at; nothing in between is skipped.
    #[oai(
        path = "/webhooks/:id/enable",
        method = "post",
        operation_id = "enable_webhook"
    )]
    async fn enable(&self, id: Path<String>) -> ApiResult<Json<Webhook>> {
        self.state.store.writable()?;
        Ok(Json(
            self.state
                .store
                .webhooks()
                .enable(&self.state.tenant(), &id.0)?,
        ))
    }

    /// The subscription's recent deliveries, newest first: per event its attempts,
    /// the last status code and error.
    #[oai(
        path = "/webhooks/:id/deliveries",
        method = "get",
        operation_id = "list_webhook_deliveries"
    )]
    async fn deliveries(&self, id: Path<String>) -> ApiResult<Json<DeliveryList>> {
        Ok(Json(DeliveryList {
            deliveries: self
                .state
                .store
                .webhooks()
                .deliveries(&self.state.tenant(), &id.0)?,
        }))
    }
}

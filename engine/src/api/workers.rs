//! External workers: claim items of a plugin's queue under a lease, renew it, record
//! checkpoints and complete. Every call after the claim is fenced by the lease token:
//! a stale one gets 409 and changes nothing.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use crate::model::{Item, ItemError, Lease};
use crate::store::{ClaimRequest, ClaimedItem, ItemKey, Outcome};

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ClaimBody {
    /// The worker's name; it owns the lease.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub worker: String,
    /// Claim up to this many items (default 1, at most 100).
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub max: Option<u32>,
    /// Lease length in milliseconds (default: the job's `lease_ms`).
    #[oai(validator(minimum(value = "100"), maximum(value = "3600000")))]
    pub lease_ms: Option<u64>,
    /// Claim this specific item; 409 if it is not queued.
    pub item_id: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClaimResponse {
    /// Empty when nothing is ready.
    pub items: Vec<ClaimedItem>,
    /// When the next item waiting for a retry becomes ready (ms since the epoch).
    pub next_due: Option<i64>,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct HeartbeatBody {
    pub token: u64,
    /// New lease length from now, in milliseconds (default: the job's `lease_ms`).
    #[oai(validator(minimum(value = "100"), maximum(value = "3600000")))]
    pub extend_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum CompleteStatus {
    Succeeded,
    Failed,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CompleteBody {
    pub token: u64,
    pub status: CompleteStatus,
    /// The result, with `succeeded`.
    pub result: Option<serde_json::Value>,
    /// The error, required with `failed`.
    pub error: Option<ItemError>,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct StepBody {
    pub token: u64,
    #[oai(validator(min_length = 1, max_length = 128))]
    pub name: String,
    pub state: Option<String>,
}

fn check_lease(field: &str, ms: Option<u64>) -> ApiResult<()> {
    let range = crate::model::limits::LEASE_MS;
    match ms {
        Some(ms) if !range.contains(&ms) => Err(ApiError::invalid(format!(
            "{field}: {ms} is not between {} and {}",
            range.start(),
            range.end()
        ))),
        _ => Ok(()),
    }
}

pub struct WorkersApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Workers")]
impl WorkersApi {
    /// Claim ready items of a plugin. Returns an empty list when none is ready.
    #[oai(
        path = "/queues/:plugin/claim",
        method = "post",
        operation_id = "claim_items"
    )]
    async fn claim(
        &self,
        plugin: Path<String>,
        body: JsonBody<ClaimBody>,
    ) -> ApiResult<Json<ClaimResponse>> {
        let b = &body.0;
        if b.worker.is_empty() || b.worker.len() > 128 {
            return Err(ApiError::invalid("worker: must be 1-128 characters"));
        }
        if b.max.is_some_and(|m| !(1..=100).contains(&m)) {
            return Err(ApiError::invalid("max: must be between 1 and 100"));
        }
        check_lease("lease_ms", b.lease_ms)?;
        let item = match &body.0.item_id {
            Some(id) => Some(
                ItemKey::parse(id)
                    .ok_or_else(|| ApiError::not_found(format!("item `{id}` not found")))?,
            ),
            None => None,
        };
        let claimed = self
            .state
            .store
            .claim(ClaimRequest {
                owner: format!("worker:{}", body.0.worker),
                tenant: Some(self.state.tenant()),
                plugins: vec![plugin.0],
                max: body.0.max.unwrap_or(1) as usize,
                lease_ms: body.0.lease_ms,
                item,
            })
            .await?;
        Ok(Json(ClaimResponse {
            items: claimed.items,
            next_due: claimed.next_due,
        }))
    }

    /// Renew a lease. 409 when the token is stale: stop working on the item.
    #[oai(
        path = "/items/:id/heartbeat",
        method = "post",
        operation_id = "heartbeat_item"
    )]
    async fn heartbeat(
        &self,
        id: Path<String>,
        body: JsonBody<HeartbeatBody>,
    ) -> ApiResult<Json<Lease>> {
        check_lease("extend_ms", body.0.extend_ms)?;
        self.state.item(&id.0)?;
        Ok(Json(
            self.state
                .store
                .heartbeat(&id.0, body.0.token, body.0.extend_ms)
                .await?,
        ))
    }

    /// Record a checkpoint; a retried item gets its last one back.
    #[oai(path = "/items/:id/step", method = "post", operation_id = "step_item")]
    async fn step(&self, id: Path<String>, body: JsonBody<StepBody>) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let StepBody { token, name, state } = body.0;
        self.state.store.step(&id.0, token, name, state).await?;
        Ok(Json(self.state.item(&id.0)?))
    }

    /// Report the outcome of a run. A failed application error is retried with
    /// backoff; a business error follows the job's failure policy.
    #[oai(
        path = "/items/:id/complete",
        method = "post",
        operation_id = "complete_item"
    )]
    async fn complete(
        &self,
        id: Path<String>,
        body: JsonBody<CompleteBody>,
    ) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let outcome = match (body.0.status, body.0.error) {
            (CompleteStatus::Succeeded, None) => {
                Outcome::Succeeded(body.0.result.unwrap_or(serde_json::Value::Null))
            }
            (CompleteStatus::Succeeded, Some(_)) => {
                return Err(ApiError::invalid(
                    "error: not allowed with status `succeeded`",
                ));
            }
            (CompleteStatus::Failed, Some(e)) => Outcome::Failed(e),
            (CompleteStatus::Failed, None) => {
                return Err(ApiError::invalid("error: required with status `failed`"));
            }
        };
        Ok(Json(
            self.state
                .store
                .complete(&id.0, body.0.token, outcome)
                .await?,
        ))
    }
}

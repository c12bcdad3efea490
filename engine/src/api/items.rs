//! `/api/v1/items`: one item in full, retry, manual transitions, and the cross-job
//! listing by status that the review queue uses.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::jobs::{ItemPage, Tag, limit};
use crate::model::{Item, ItemStatus};

/// An item with everything an operator looks at.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ItemDetail {
    #[oai(flatten)]
    pub item: Item,
    /// Log lines the plugin wrote, oldest first.
    pub logs: Vec<serde_json::Value>,
    /// Files the runs produced (failure screenshots, downloads).
    pub artifacts: Vec<crate::artifacts::Artifact>,
}

#[derive(Debug, Object, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct TransitionRequest {
    /// The status to move to. Allowed: any unfinished item to `cancelled`;
    /// `failed` or `needs_review` to `queued`; `needs_review` to `failed`.
    pub to: ItemStatus,
    /// Why, for the audit log.
    pub reason: Option<String>,
    /// Corrected input, only when moving to `queued`.
    pub input: Option<serde_json::Value>,
}

pub struct ItemsApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Items")]
impl ItemsApi {
    /// Items of one status across all jobs, oldest job first (e.g. the review queue).
    #[oai(path = "/items", method = "get", operation_id = "list_items")]
    async fn list(
        &self,
        status: Query<ItemStatus>,
        /// `next_cursor` of the previous page.
        #[oai(validator(min_length = 1))]
        cursor: Query<Option<String>>,
        /// Page size (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<ItemPage>> {
        let page = self.state.store.items_by_status(
            Some(&self.state.tenant()),
            status.0,
            cursor.0.as_deref(),
            self::limit(limit.0, 1000)?,
        )?;
        Ok(Json(ItemPage {
            items: page.items,
            next_cursor: page.next,
        }))
    }

    /// An item: input, status, attempts, step timeline, logs, error and result.
    #[oai(path = "/items/:id", method = "get", operation_id = "get_item")]
    async fn get(&self, id: Path<String>) -> ApiResult<Json<ItemDetail>> {
        let item = self.state.item(&id.0)?;
        let logs = self.state.store.item_logs(&id.0)?;
        let artifacts = self.state.artifacts.for_item(&id.0)?;
        Ok(Json(ItemDetail {
            item,
            logs,
            artifacts,
        }))
    }

    /// Send a `failed` or `needs_review` item back to the queue.
    #[oai(
        path = "/items/:id/retry",
        method = "post",
        operation_id = "retry_item"
    )]
    async fn retry(&self, id: Path<String>) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        let item = self
            .state
            .store
            .transition(&id.0, ItemStatus::Queued, Some("retry".into()), None)
            .await?;
        Ok(Json(item))
    }

    /// Move an item by hand. An illegal move is refused with 409 and changes nothing.
    #[oai(
        path = "/items/:id/transition",
        method = "post",
        operation_id = "transition_item"
    )]
    async fn transition(
        &self,
        id: Path<String>,
        body: JsonBody<TransitionRequest>,
    ) -> ApiResult<Json<Item>> {
        self.state.item(&id.0)?;
        if body
            .0
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > 2048)
        {
            return Err(ApiError::invalid("reason: longer than 2048 characters"));
        }
        let TransitionRequest { to, reason, input } = body.0;
        if let Some(input) = &input {
            // A fixed input is checked like a new one (the job's shared fields were
            // merged into each item when it was created, so this is the whole input).
            let item = self.state.item(&id.0)?;
            let job = self.state.job(&item.job_id)?;
            let probe = crate::model::NewJob {
                plugin: job.plugin,
                operation: job.operation,
                name: None,
                options: Default::default(),
                input: None,
                start: false,
                items: Vec::new(),
            };
            self.state.input_check(&probe)(
                "input",
                &crate::model::NewItem {
                    input: input.clone(),
                    reference: None,
                },
            )
            .map_err(|e| ApiError::invalid(e.replacen("input.input", "input", 1)))?;
        }
        Ok(Json(
            self.state
                .store
                .transition(&id.0, to, reason, input)
                .await?,
        ))
    }
}

//! `/api/v1/jobs`: create (with items, in one atomic write), list, inspect, and the
//! job-level actions.

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use crate::model::{Item, ItemStatus, Job, JobStatus, NewJob};
use crate::store::{JobAction, JobFilter};

#[derive(Tags)]
pub enum Tag {
    /// Jobs and their items.
    Jobs,
    /// Single items: inspect, retry, move by hand.
    Items,
    /// External workers: claim, heartbeat, complete.
    Workers,
    /// The event log.
    Events,
    /// Liveness.
    Health,
    /// Installed portal flows.
    Plugins,
    /// Write-only values granted to plugins.
    Secrets,
}

#[derive(Debug, Object)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
pub struct ItemPage {
    pub items: Vec<Item>,
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Created(Json<Job>),
}

pub struct JobsApi {
    pub state: AppState,
}

pub(super) fn limit(limit: Option<u32>, max: u32) -> ApiResult<usize> {
    match limit {
        None => Ok(100.min(max) as usize),
        Some(0) => Err(ApiError::bad_request("limit: must be at least 1")),
        Some(n) if n > max => Err(ApiError::bad_request(format!("limit: at most {max}"))),
        Some(n) => Ok(n as usize),
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Jobs")]
impl JobsApi {
    /// Create a job with its items. All items are written in one atomic, durable
    /// write; the job starts at once unless `start` is false.
    #[oai(path = "/jobs", method = "post", operation_id = "create_job")]
    async fn create(&self, body: JsonBody<NewJob>) -> ApiResult<Created> {
        let tenant = self.state.tenant();
        let version = self
            .state
            .plugin_version(&body.0.plugin, &body.0.operation)?;
        let job = self.state.store.create_job(tenant, body.0, version).await?;
        Ok(Created::Created(Json(job)))
    }

    /// List jobs, newest first.
    #[oai(path = "/jobs", method = "get", operation_id = "list_jobs")]
    async fn list(
        &self,
        /// Only jobs in this status.
        status: Query<Option<JobStatus>>,
        /// Only jobs of this plugin.
        plugin: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1-1000 (default 100).
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<JobPage>> {
        let filter = JobFilter {
            tenant: Some(self.state.tenant().to_owned()),
            status: status.0,
            plugin: plugin.0,
        };
        if let Some(c) = &cursor.0
            && !crate::store::keys::valid_job_id(c)
        {
            return Err(ApiError::bad_request(format!(
                "cursor: `{c}` is not a job id"
            )));
        }
        let page =
            self.state
                .store
                .jobs(&filter, cursor.0.as_deref(), self::limit(limit.0, 1000)?)?;
        Ok(Json(JobPage {
            jobs: page.items,
            next_cursor: page.next,
        }))
    }

    /// One job with its counts by item status.
    #[oai(path = "/jobs/:id", method = "get", operation_id = "get_job")]
    async fn get(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        Ok(Json(self.state.job(&id.0)?))
    }

    /// Items of a job in order, filtered by status or by reference.
    #[oai(
        path = "/jobs/:id/items",
        method = "get",
        operation_id = "list_job_items"
    )]
    async fn items(
        &self,
        id: Path<String>,
        status: Query<Option<ItemStatus>>,
        /// Only items whose reference contains this text.
        q: Query<Option<String>>,
        cursor: Query<Option<String>>,
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<ItemPage>> {
        self.state.job(&id.0)?;
        let cursor = cursor
            .0
            .map(|c| {
                c.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("cursor: `{c}` is not an item index"))
                })
            })
            .transpose()?;
        let page = self.state.store.items(
            &id.0,
            status.0,
            q.0.as_deref(),
            cursor,
            self::limit(limit.0, 1000)?,
        )?;
        Ok(Json(ItemPage {
            items: page.items,
            next_cursor: page.next,
        }))
    }

    /// Queue the items of a `pending` job.
    #[oai(path = "/jobs/:id/start", method = "post", operation_id = "start_job")]
    async fn start(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.action(&id.0, JobAction::Start).await
    }

    /// Stop claiming new items; running ones finish.
    #[oai(path = "/jobs/:id/pause", method = "post", operation_id = "pause_job")]
    async fn pause(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.action(&id.0, JobAction::Pause).await
    }

    #[oai(
        path = "/jobs/:id/resume",
        method = "post",
        operation_id = "resume_job"
    )]
    async fn resume(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.action(&id.0, JobAction::Resume).await
    }

    /// Cancel every item that has not finished; running items are stopped.
    #[oai(
        path = "/jobs/:id/cancel",
        method = "post",
        operation_id = "cancel_job"
    )]
    async fn cancel(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.action(&id.0, JobAction::Cancel).await
    }

    /// Send every `failed` item back to the queue with a fresh budget of attempts.
    #[oai(path = "/jobs/:id/retry", method = "post", operation_id = "retry_job")]
    async fn retry(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.action(&id.0, JobAction::RetryFailed).await
    }
}

impl JobsApi {
    async fn action(&self, id: &str, action: JobAction) -> ApiResult<Json<Job>> {
        self.state.job(id)?;
        Ok(Json(self.state.store.job_action(id, action).await?))
    }
}

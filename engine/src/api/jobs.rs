//! `/api/v1/jobs`: create (with items, in one atomic write), list, inspect, and the
//! job-level actions.

use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiResponse, Multipart, Object, OpenApi, Tags};

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::idempotency::Fingerprint;
use crate::import;
use crate::model::{Item, ItemStatus, Job, JobStatus, NewItem, NewJob, PoolOptions};
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
    /// Long-lived logged-in plugin instances: open, call, watch, close.
    Sessions,
    /// API keys: each belongs to one tenant and has one role.
    Keys,
    /// Cron schedules that create jobs.
    Schedules,
    /// The tenant's events POSTed to its URLs, signed (Standard Webhooks).
    Webhooks,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last one. A full page of a
    /// rare filter can have a cursor and the next page be empty: after a full page, a
    /// bounded number of further jobs is looked at.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ItemPage {
    pub items: Vec<Item>,
    /// Pass as `cursor` to get the next page; absent on the last one. A page filtered
    /// by a rare status or reference can hold fewer than `limit` items, even none, and
    /// still have a cursor: each page looks at a bounded number of items.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum Created {
    /// The job. With `Idempotency-Replayed: true` it is the job an earlier request
    /// with the same `Idempotency-Key` created, and nothing new was written.
    #[oai(status = 201)]
    Created(
        Json<Job>,
        #[oai(header = "Idempotency-Replayed")] Option<bool>,
    ),
}

/// A spreadsheet to turn into a job.
#[derive(Debug, Multipart)]
#[oai(deny_unknown_fields)]
pub struct ImportForm {
    /// The file: CSV (comma or semicolon separated) or XLSX (the first sheet), with a
    /// header row.
    pub file: Upload,
    pub plugin: String,
    /// Default `run`.
    pub operation: Option<String>,
    pub name: Option<String>,
    /// Job options as JSON text, e.g. `{"on_failure": "review"}`.
    pub options: Option<String>,
    /// Queue the items at once (default true).
    pub start: Option<bool>,
    /// Rows with the same value in this column become one item.
    pub group_by: Option<String>,
    /// The column used as each item's reference (default: `group_by`).
    pub reference: Option<String>,
    /// Column renames as JSON text: `{"Codigo": "product_code"}`.
    pub mapping: Option<String>,
    /// Fields every item's input gets, as JSON text: `{"text": "…"}`.
    pub input: Option<String>,
}

pub struct JobsApi {
    pub state: AppState,
}

/// The answer an earlier request with the same idempotency key got.
fn replay(earlier: serde_json::Value) -> ApiResult<Created> {
    let job = serde_json::from_value(earlier)
        .map_err(|e| ApiError::internal(format!("a recorded answer cannot be read: {e}")))?;
    Ok(Created::Created(Json(job), Some(true)))
}

/// SHA-256 of a whole file, read from its start; the file is left at its start.
fn file_digest(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    use sha2::Digest;
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(file, &mut hasher)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(hasher.finalize().to_vec())
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
    ///
    /// With an `Idempotency-Key` header (1-255 visible ASCII characters, kept a day by
    /// default), a retry of the same request answers the job the first one created
    /// (`Idempotency-Replayed: true`) instead of creating another; the same key with a
    /// different request is refused (422), and while the first is still being answered
    /// a second one gets 409. With `options.unique_references` (or the operation's
    /// default) an item whose `reference` is already taken refuses the request (409
    /// `reference_taken`, listing them) or is left out (listed in `skipped`).
    #[oai(path = "/jobs", method = "post", operation_id = "create_job")]
    async fn create(
        &self,
        body: JsonBody<NewJob>,
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$")
        )]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Created> {
        let (idem, _claim) = self
            .state
            .idempotency(idempotency_key.0, || {
                Fingerprint::new("POST /api/v1/jobs").json(&body.0).finish()
            })?
            .unzip();
        if let Some(idem) = &idem
            && let Some(earlier) = self.state.store.replayed(idem)?
        {
            return replay(earlier);
        }
        let tenant = self.state.tenant();
        let mut job = body.0;
        let version = self.state.plugin_version(&job.plugin, &job.operation)?;
        self.state.check_inputs(&job)?;
        self.state.reference_default(&mut job);
        let (job, replayed) = self
            .state
            .store
            .create_job_once(&tenant, job, version, idem)
            .await?;
        Ok(Created::Created(Json(job), replayed.then_some(true)))
    }

    /// Create a job from a spreadsheet (CSV or XLSX, first sheet): one item per row, or
    /// per group of rows. The operation may declare its grouping, required columns and
    /// whole-number columns (`x-faena-import` in its input schema; `group_by` and
    /// `reference` here override it). Every problem is reported by row and column,
    /// and a file with any creates nothing (422). The file is read as a stream, within
    /// the `[import]` limits on bytes, rows and cells (413 past them); the job appears
    /// whole once every row is stored.
    ///
    /// `Idempotency-Key` and `options.unique_references` work as they do when a job is
    /// created from JSON; the key covers the file and every field of the form.
    #[oai(path = "/jobs/import", method = "post", operation_id = "import_job")]
    async fn import(
        &self,
        form: ImportForm,
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$")
        )]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Created> {
        // The upload is already on disk (a temporary file); it is read from there as
        // a stream, on a blocking thread.
        let file_name = form.file.file_name().unwrap_or("upload").to_owned();
        let mut file = form.file.into_file().into_std().await;
        let fingerprint = match &idempotency_key.0 {
            None => String::new(),
            Some(_) => {
                let fields = serde_json::json!([
                    form.plugin,
                    form.operation,
                    form.name,
                    form.options,
                    form.start,
                    form.group_by,
                    form.reference,
                    form.mapping,
                    form.input,
                ]);
                let (hashed, digest) = tokio::task::spawn_blocking(move || {
                    let digest = file_digest(&mut file);
                    (file, digest)
                })
                .await
                .map_err(|e| ApiError::internal(format!("reading the upload failed: {e}")))?;
                file = hashed;
                Fingerprint::new("POST /api/v1/jobs/import")
                    .json(&fields)
                    .part(&digest.map_err(|e| {
                        ApiError::bad_request(format!("file: the upload cannot be read ({e})"))
                    })?)
                    .finish()
            }
        };
        let (idem, claim) = self
            .state
            .idempotency(idempotency_key.0, || fingerprint)?
            .unzip();
        if let Some(idem) = &idem
            && let Some(earlier) = self.state.store.replayed(idem)?
        {
            return replay(earlier);
        }
        self.state.store.writable()?;
        let json_field = |field: &str, text: &Option<String>| -> ApiResult<serde_json::Value> {
            match text {
                None => Ok(serde_json::Value::Null),
                Some(t) => serde_json::from_str(t)
                    .map_err(|e| ApiError::bad_request(format!("{field}: not JSON: {e}"))),
            }
        };
        let options = match json_field("options", &form.options)? {
            serde_json::Value::Null => Default::default(),
            v => serde_json::from_value(v)
                .map_err(|e| ApiError::bad_request(format!("options: {e}")))?,
        };
        let mapping = match json_field("mapping", &form.mapping)? {
            serde_json::Value::Null => Default::default(),
            v => serde_json::from_value(v).map_err(|e| {
                ApiError::bad_request(format!("mapping: an object of column names: {e}"))
            })?,
        };
        let operation = form.operation.clone().unwrap_or_else(|| "run".into());
        // What the plugin's operation declares (`x-faena-import`), unless the form
        // says otherwise.
        let defaults = self
            .state
            .runtime
            .as_ref()
            .and_then(|rt| rt.operation_schema(&form.plugin, &operation))
            .map(|schema| import::ImportDefaults::from_schema(&schema))
            .unwrap_or_default();
        let spec = import::ImportSpec {
            group_by: form.group_by.or(defaults.group_by),
            mapping,
            required: defaults.required,
            reference: form.reference.or(defaults.reference),
            positive_integer: defaults.positive_integer,
        };
        let job = NewJob {
            plugin: form.plugin,
            operation,
            name: form.name.or(Some(file_name.clone())),
            options,
            input: match json_field("input", &form.input)? {
                serde_json::Value::Null => None,
                v => Some(v),
            },
            start: form.start.unwrap_or(true),
            items: Vec::new(),
        };
        let mut job = job;
        let plugin_version = self.state.plugin_version(&job.plugin, &job.operation)?;
        let check = self.state.input_check(&job);
        self.state.reference_default(&mut job);
        let request = import::Request {
            tenant: self.state.tenant(),
            job,
            plugin_version,
            upload: import::Upload {
                file_name: file_name.clone(),
                file,
            },
            spec,
            limits: self.state.import,
            check: std::sync::Arc::new(move |item: &NewItem| check("", item)),
            idem,
            hold: claim.map(|c| Box::new(c) as Box<dyn std::any::Any + Send>),
        };
        match import::create_job(self.state.store.clone(), request).await {
            Ok(job) => Ok(Created::Created(Json(job), None)),
            Err(import::ImportFailed::Invalid(e)) => {
                Err(ApiError::invalid(format!("{file_name}: {e}")))
            }
            Err(import::ImportFailed::TooLarge(e)) => {
                Err(ApiError::too_large(format!("{file_name}: {e}")))
            }
            Err(import::ImportFailed::Store(e)) => Err(e.into()),
        }
    }

    /// List jobs, newest first.
    #[oai(path = "/jobs", method = "get", operation_id = "list_jobs")]
    async fn list(
        &self,
        /// Only jobs in this status.
        status: Query<Option<JobStatus>>,
        /// Only jobs of this plugin.
        plugin: Query<Option<String>>,
        /// Only jobs created by this schedule's runs.
        schedule: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        #[oai(validator(pattern = "^[0-7][0-9A-HJKMNP-TV-Z]{25}$"))]
        cursor: Query<Option<String>>,
        /// Page size (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<JobPage>> {
        let filter = JobFilter {
            tenant: Some(self.state.tenant()),
            status: status.0,
            plugin: plugin.0,
            schedule: schedule.0,
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
        /// `next_cursor` of the previous page.
        #[oai(validator(pattern = "^[0-9]{1,19}$"))]
        cursor: Query<Option<String>>,
        /// Page size (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
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

    /// Delete a job that is completed, cancelled or was never started, with its items
    /// and their logs (its events stay in the log, closed by `job_deleted`). A job
    /// that may still run answers 409: cancel it first (cancelling stops its running
    /// items).
    #[oai(path = "/jobs/:id", method = "delete", operation_id = "delete_job")]
    async fn delete(&self, id: Path<String>) -> ApiResult<Json<Job>> {
        self.state.job(&id.0)?;
        Ok(Json(self.state.store.delete_job(&id.0).await?))
    }

    /// Change the pool of a job that has one — its resources, per-resource
    /// concurrency and rate — while it runs; the next item that starts follows it.
    #[oai(
        path = "/jobs/:id/pool",
        method = "put",
        operation_id = "update_job_pool"
    )]
    async fn update_pool(
        &self,
        id: Path<String>,
        body: JsonBody<PoolOptions>,
    ) -> ApiResult<Json<Job>> {
        self.state.job(&id.0)?;
        Ok(Json(self.state.store.update_pool(&id.0, body.0).await?))
    }
}

impl JobsApi {
    async fn action(&self, id: &str, action: JobAction) -> ApiResult<Json<Job>> {
        self.state.job(id)?;
        Ok(Json(self.state.store.job_action(id, action).await?))
    }
}

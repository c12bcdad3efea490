//! HTTP: the REST API (poem-openapi, spec at `/openapi.json`, Swagger UI at `/docs`),
//! the WebSocket feed, `/health` and `/metrics`. Servers take a bound listener and a
//! shutdown future, so tests bind port 0 and stop cleanly.

mod body;
mod cors;
pub mod error;
mod events;
mod fanout;
mod feed_doc;
mod feed_limits;
mod idempotency;
mod items;
mod jobs;
mod keys;
mod plugins;
mod relay;
mod schedules;
mod sessions;
mod spec;
mod webhooks;
mod workers;
mod ws;
mod wsproto;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::Data;
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};

pub use error::{ApiError, ApiResult, ErrorBody, ErrorCode};
pub use events::EventPage;
pub use feed_limits::{FeedConnectionLimits, Refused as FeedConnectionRefused};
pub use items::{ItemDetail, TransitionRequest};
pub use jobs::{ItemPage, JobPage};
pub use workers::{
    ClaimResponse, CompleteStatus, WorkerAssignment, WorkerClaimBody, WorkerClaimResponse,
    WorkerHello, WorkerInfo, WorkerPlugin,
};
pub use ws::{RESERVED_TYPES, refuse_feed};

use crate::artifacts::Artifacts;
use crate::auth::{self, Auth, Caller, Limiter, RateLimit};
use crate::model::{Item, Job};
use crate::runtime::Runtime;
use crate::secrets::Secrets;
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The plugin runtime; without it any plugin name is accepted (external workers).
    pub runtime: Option<Arc<Runtime>>,
    pub artifacts: Artifacts,
    pub secrets: Secrets,
    /// Sessions (they need the plugin runtime).
    pub sessions: Option<crate::sessions::Sessions>,
    /// API keys and their rate limit.
    pub auth: Auth,
    /// How large a spreadsheet import may be.
    pub import: crate::import::ImportLimits,
    /// Cron schedules that create jobs; [`crate::schedules::run`] fires them.
    pub schedules: crate::schedules::Scheduler,
    /// The feed's channels, shared by the WebSocket connections.
    fanout: Arc<fanout::Fanout>,
    /// The feed's open connections, under their caps.
    feed_slots: Arc<feed_limits::FeedSlots>,
    /// Idempotency keys of requests being answered.
    in_flight: Arc<idempotency::InFlight>,
    /// Browser origins other than the engine's own that may call the API.
    cors: cors::CorsOrigins,
    /// Where webhooks may go, and how many a tenant may have.
    pub webhooks: Arc<crate::webhooks::WebhookSettings>,
    /// The `faena worker` processes that reported here.
    pub fleet: Arc<workers::Fleet>,
}

impl AppState {
    pub fn new(store: Store, runtime: Option<Arc<Runtime>>) -> Result<Self, StoreError> {
        Ok(AppState {
            artifacts: store.artifacts()?,
            secrets: store.secrets()?,
            auth: Auth {
                keys: store.keys()?,
                limiter: Arc::new(Limiter::new(RateLimit::default())),
            },
            fanout: {
                let seeder = store.clone();
                fanout::Fanout::with_seed(
                    store.feed().clone(),
                    Some(Box::new(move |filter, at| seeder.last_match(filter, at))),
                )
            },
            feed_slots: feed_limits::FeedSlots::new(FeedConnectionLimits::default()),
            import: Default::default(),
            in_flight: Default::default(),
            cors: Default::default(),
            schedules: crate::schedules::Scheduler::new(
                store.clone(),
                schedules::job_check(runtime.clone()),
            )?,
            webhooks: Default::default(),
            fleet: Default::default(),
            store,
            runtime,
            sessions: None,
        })
    }

    /// Limit each key to `limit`.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.auth.limiter = Arc::new(Limiter::new(limit));
        self
    }

    /// Let pages from these origins call the API (`scheme://host[:port]` each).
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Result<Self, String> {
        self.cors = cors::CorsOrigins::new(origins)?;
        Ok(self)
    }

    /// Cap the feed's connections (per key and in all) and its stalled writes.
    pub fn with_feed_limits(mut self, limits: FeedConnectionLimits) -> Self {
        self.feed_slots = feed_limits::FeedSlots::new(limits);
        self
    }

    /// The feed's connections open now: of the API key `key_id`, and in all.
    pub fn feed_connections(&self, key_id: &str) -> (usize, usize) {
        self.feed_slots.open(key_id)
    }

    pub fn with_import_limits(mut self, limits: crate::import::ImportLimits) -> Self {
        self.import = limits;
        self
    }

    pub fn with_webhooks(mut self, settings: Arc<crate::webhooks::WebhookSettings>) -> Self {
        self.webhooks = settings;
        self
    }

    pub fn with_sessions(mut self, sessions: crate::sessions::Sessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// The caller's tenant. Every route but the public ones runs behind
    /// [`auth::authenticate`], which sets the caller; outside a request there is no
    /// tenant and nothing matches.
    pub fn tenant(&self) -> String {
        match auth::caller() {
            Some(c) => c.tenant,
            None => {
                debug_assert!(
                    false,
                    "a tenant was asked for outside an authenticated request"
                );
                String::new()
            }
        }
    }

    /// The caller of the request being served.
    pub fn caller(&self) -> ApiResult<Caller> {
        auth::caller().ok_or_else(|| ApiError::internal("no caller for this request"))
    }

    pub fn job(&self, id: &str) -> ApiResult<Job> {
        let job = self.store.job(id)?;
        if job.tenant != self.tenant() {
            return Err(ApiError::not_found(format!("job `{id}` not found")));
        }
        Ok(job)
    }

    pub fn item(&self, id: &str) -> ApiResult<Item> {
        let item = self.store.item(id)?;
        if item.tenant != self.tenant() {
            return Err(ApiError::not_found(format!("item `{id}` not found")));
        }
        Ok(item)
    }

    /// The caller's item, if it is running under the lease `token` (409 otherwise).
    pub fn leased_item(&self, id: &str, token: u64) -> ApiResult<Item> {
        let item = self.item(id)?;
        if item.status != crate::model::ItemStatus::Running
            || item.lease.as_ref().map(|l| l.token) != Some(token)
        {
            return Err(crate::store::StoreError::StaleLease {
                item: id.to_owned(),
                token,
                reason: "the item is not running under this lease".into(),
            }
            .into());
        }
        Ok(item)
    }

    /// 422 naming the item and the field when an item's input (with the job's shared
    /// fields) does not match its operation's JSON Schema.
    pub fn check_inputs(&self, job: &crate::model::NewJob) -> ApiResult<()> {
        let check = self.input_check(job);
        for (i, item) in job.items.iter().enumerate() {
            check(&format!("items[{i}]"), item).map_err(ApiError::invalid)?;
        }
        Ok(())
    }

    /// A job that does not say how unique its references must be gets its operation's
    /// default (`x-faena-unique-references` in the input schema).
    pub fn reference_default(&self, job: &mut crate::model::NewJob) {
        reference_default_for(self.runtime.as_ref(), job);
    }

    /// The check of one item of `job` against its operation's JSON Schema, with the
    /// job's shared fields merged in first; the message starts with `label` (empty:
    /// `input…`, for an importer that names the row itself).
    pub fn input_check(
        &self,
        job: &crate::model::NewJob,
    ) -> impl Fn(&str, &crate::model::NewItem) -> Result<(), String> + Send + Sync + 'static {
        input_check_for(self.runtime.as_ref(), job)
    }

    /// The plugin version a new job runs with; 422 when it cannot run here.
    pub fn plugin_version(&self, plugin: &str, operation: &str) -> ApiResult<Option<String>> {
        match &self.runtime {
            None => Ok(None),
            Some(rt) => rt
                .version_for_new_job(plugin, operation)
                .map_err(ApiError::invalid),
        }
    }
}

/// [`AppState::reference_default`], for callers without an `AppState` (schedules).
pub fn reference_default_for(runtime: Option<&Arc<Runtime>>, job: &mut crate::model::NewJob) {
    if job.options.unique_references.is_some() {
        return;
    }
    job.options.unique_references = runtime
        .and_then(|rt| rt.operation_schema(&job.plugin, &job.operation))
        .and_then(|schema| {
            serde_json::from_value(schema.get("x-faena-unique-references")?.clone()).ok()
        });
}

/// [`AppState::input_check`] with the runtime given (the schedules check their runs
/// with it outside a request).
fn input_check_for(
    runtime: Option<&Arc<Runtime>>,
    job: &crate::model::NewJob,
) -> impl Fn(&str, &crate::model::NewItem) -> Result<(), String> + Send + Sync + 'static {
    let schemas = runtime.and_then(|rt| rt.input_schemas(&job.plugin));
    let (operation, shared) = (job.operation.clone(), job.input.clone());
    move |label, item| {
        let Some(schemas) = &schemas else {
            return Ok(());
        };
        let input = match &shared {
            None => std::borrow::Cow::Borrowed(&item.input),
            Some(shared) => std::borrow::Cow::Owned(
                crate::store::with_defaults(0, item.input.clone(), Some(shared)).map_err(|e| {
                    match e {
                        // The job's own `input` is wrong: that message names it.
                        crate::store::StoreError::Invalid(m) if m.starts_with("input") => m,
                        _ => format!(
                            "{label}.input: must be an object to take the job's `input` fields"
                        ),
                    }
                })?,
            ),
        };
        schemas.check(&operation, || label.to_owned(), &input)
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Health {
    /// `ok`; `read_only` while the store's disk is below its reserve (reads go on,
    /// new work is refused); `draining` while a shutdown lets running items finish;
    /// `failed` when the engine can no longer write (it exits to be restarted).
    pub status: String,
    pub version: String,
    /// The newest event's seq.
    pub last_seq: u64,
    /// Free bytes on the store's disk at the last reading.
    pub disk_free_bytes: u64,
    /// Why the engine is not `ok`.
    pub reason: Option<String>,
}

#[derive(ApiResponse)]
enum HealthResponse {
    /// Alive (`/health`) or ready to take work (`/ready`).
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// Failed (`/health`), or draining or failed (`/ready`).
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

struct HealthApi {
    state: AppState,
}

impl HealthApi {
    fn health(&self) -> Health {
        let shared = self.state.store.shared();
        let space = &shared.space;
        let (status, reason) = if let Some(why) = shared.fatal() {
            ("failed", Some(why))
        } else if shared.is_draining() {
            (
                "draining",
                Some("shutting down: running items finish, none start".into()),
            )
        } else if space.is_read_only() {
            ("read_only", space.check().err().map(|e| e.to_string()))
        } else {
            ("ok", None)
        };
        Health {
            status: status.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            last_seq: self.state.store.last_seq().unwrap_or(0),
            disk_free_bytes: space.free_bytes(),
            reason,
        }
    }
}

#[OpenApi(tag = "jobs::Tag::Health")]
impl HealthApi {
    /// Liveness and the head of the event log: 503 once the engine can no longer
    /// write (a supervisor restarts it). A full disk or a drain is still alive.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health_route(&self) -> HealthResponse {
        let h = self.health();
        if h.status == "failed" {
            HealthResponse::Unavailable(Json(h))
        } else {
            HealthResponse::Ok(Json(h))
        }
    }

    /// Readiness for a load balancer: 503 while the engine drains or has failed. A full
    /// disk stays ready (status `read_only`): operators need the API then, to cancel and
    /// delete, and there is no other coordinator to send them to.
    #[oai(path = "/ready", method = "get", operation_id = "ready")]
    async fn ready(&self) -> HealthResponse {
        let h = self.health();
        if h.status == "ok" || h.status == "read_only" {
            HealthResponse::Ok(Json(h))
        } else {
            HealthResponse::Unavailable(Json(h))
        }
    }
}

#[handler]
fn metrics(state: Data<&AppState>) -> Response {
    let mut text = state.store.metrics().render();
    state.store.shared().space.render(&mut text);
    let (_, feed) = state.feed_slots.open("");
    text.push_str(&format!(
        "# HELP faena_feed_connections Open feed (WebSocket) connections.\n\
         # TYPE faena_feed_connections gauge\nfaena_feed_connections {feed}\n"
    ));
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

/// Largest request body accepted (a 100,000-item job is about 10 MB of JSON).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

pub fn openapi(state: &AppState) -> OpenApiService<impl OpenApi, ()> {
    let s = || state.clone();
    OpenApiService::new(
        (
            HealthApi { state: s() },
            jobs::JobsApi { state: s() },
            items::ItemsApi { state: s() },
            workers::WorkersApi { state: s() },
            workers::FleetApi { state: s() },
            relay::RelayApi { state: s() },
            events::EventsApi { state: s() },
            plugins::PluginsApi { state: s() },
            sessions::SessionsApi { state: s() },
            keys::KeysApi { state: s() },
            schedules::SchedulesApi { state: s() },
            webhooks::WebhooksApi { state: s() },
        ),
        "faena",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Durable jobs for business web portals. Events stream over the WebSocket at `/ws`.",
    )
}

/// Every route of the engine.
pub fn app(state: AppState) -> impl Endpoint {
    let api = openapi(&state);
    let doc = Arc::new(spec::document(&api.spec()));
    let ui = api.swagger_ui();
    let cors = state.cors.clone();
    let served = doc.clone();
    let served_nulls = doc.clone();
    let feed_doc = Arc::new(feed_doc::asyncapi(&doc));
    Route::new()
        .at(
            "/asyncapi.json",
            get(poem::endpoint::make_sync(move |req| {
                let (host, https) = host_of(&req);
                Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(spec::asyncapi_with_server(&feed_doc, host, https))
            })),
        )
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |req| {
                let (host, https) = host_of(&req);
                Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(spec::with_server(&served, host, https))
            })),
        )
        .nest("/docs", ui)
        .at("/metrics", get(metrics))
        .at("/ws", get(ws::feed))
        .at("/ws/jobs/:id", get(ws::job_feed))
        .at("/ws/sessions/:id/screencast", get(sessions::screencast))
        .nest("/", api)
        .around(auth::authenticate)
        .around(crate::dashboard::serve)
        .around(limit_body)
        .around(idempotency::refuse_unreadable_key)
        .around(move |next, req| allow_on_405(next, req, doc.clone()))
        .catch_all_error(error::json_errors)
        .data(state.auth.clone())
        .data(spec::Served(served_nulls))
        .data(state)
        // Outermost: a preflight carries no key, so it is answered before `authenticate`.
        .with_if(!cors.is_empty(), cors)
}

/// Whether every entry is an origin a browser sends (for the configuration).
pub fn check_cors_origins(origins: &[String]) -> Result<(), String> {
    cors::CorsOrigins::new(origins.to_vec()).map(drop)
}

/// The engine's address as the client reached it: the `Host`, and whether a proxy in
/// front took it over TLS (`X-Forwarded-Proto: https`).
fn host_of(req: &poem::Request) -> (Option<&str>, bool) {
    let https = req
        .header("x-forwarded-proto")
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    (req.header(poem::http::header::HOST), https)
}

/// A 405 says which methods the path has (`Allow`, as RFC 9110 asks).
async fn allow_on_405<E: Endpoint>(
    next: E,
    req: poem::Request,
    doc: Arc<serde_json::Value>,
) -> poem::Result<Response> {
    let path = req.uri().path().to_owned();
    let answer = next.call(req).await.map(poem::IntoResponse::into_response);
    let mut resp = match answer {
        Err(e) if e.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED => {
            error::json_errors(e).await
        }
        Ok(r) if r.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED => r,
        other => return other,
    };
    if let Some(allow) = spec::allowed_methods(&doc, &path)
        && let Ok(v) = poem::http::HeaderValue::from_str(&allow)
    {
        resp.headers_mut().insert(poem::http::header::ALLOW, v);
    }
    Ok(resp)
}

/// The route that takes spreadsheets, under its own limit (`[import] max_bytes`).
const IMPORT_PATH: &str = "/api/v1/jobs/import";

/// Refuse a body over its limit with 413: a declared one before reading it, a chunked
/// one (no `Content-Length`) as soon as it passes the limit. JSON bodies are held in
/// memory, up to [`MAX_BODY`]; an import is spooled to a file by the multipart reader,
/// so it is counted as it streams through instead of buffered here.
async fn limit_body<E: Endpoint>(next: E, mut req: poem::Request) -> poem::Result<Response> {
    use tokio::io::AsyncReadExt;
    let import = match req.uri().path() {
        IMPORT_PATH => req.data::<AppState>().map(|s| s.import.max_bytes),
        _ => None,
    };
    let limit = import.unwrap_or(MAX_BODY as u64);
    let too_large = move || {
        let message = match import {
            Some(_) => format!(
                "the upload is larger than the {} MiB an import may be (the `[import] max_bytes` setting)",
                limit >> 20
            ),
            None => format!("the request body is larger than {} MiB", limit >> 20),
        };
        poem::Error::from_string(message, poem::http::StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = req
        .header(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = declared.is_none()
        && req
            .headers()
            .contains_key(poem::http::header::TRANSFER_ENCODING);
    match declared {
        Some(n) if n > limit => return Err(too_large()),
        _ if chunked && import.is_some() => {
            let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let body = counted(req.take_body(), limit, over.clone());
            req.set_body(body);
            let answer = next.call(req).await;
            if over.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(too_large());
            }
            return answer.map(poem::IntoResponse::into_response);
        }
        _ if chunked => {
            let mut body = Vec::new();
            req.take_body()
                .into_async_read()
                .take(limit + 1)
                .read_to_end(&mut body)
                .await
                .map_err(|e| {
                    poem::Error::from_string(
                        format!("reading the request body: {e}"),
                        poem::http::StatusCode::BAD_REQUEST,
                    )
                })?;
            if body.len() as u64 > limit {
                return Err(too_large());
            }
            req.set_body(body);
        }
        _ => {}
    }
    next.call(req).await.map(poem::IntoResponse::into_response)
}

/// `body`, failing once more than `limit` bytes have come through (and saying so in
/// `over`, for the 413).
fn counted(
    body: poem::Body,
    limit: u64,
    over: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> poem::Body {
    use futures_util::StreamExt;
    let mut seen = 0u64;
    poem::Body::from_bytes_stream(body.into_bytes_stream().map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            over.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(std::io::Error::other("the upload is over its limit"));
        }
        Ok(chunk)
    }))
}

/// The HTTP server's threads: how many (default half the cores, at least one), and
/// their nice value (0–19, default 10). When the machine is busy the engine's threads
/// get the CPU first (at 10 about nine tenths of it), so a crowd of feed clients slows
/// its own delivery rather than the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiThreads {
    pub threads: usize,
    pub nice: i32,
}

impl Default for ApiThreads {
    fn default() -> Self {
        ApiThreads {
            threads: std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            nice: 10,
        }
    }
}

/// The HTTP server on threads of its own. However many requests and feed connections
/// there are, their tasks never queue in front of the engine's (the store's writer,
/// the dispatcher, the plugins): the two share the CPU as threads, not one run queue.
pub struct ApiServer {
    threads: Option<tokio::runtime::Runtime>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ApiServer {
    /// Serve on `listener` until `shutdown` is cancelled.
    pub fn start(
        listener: tokio::net::TcpListener,
        state: AppState,
        threads: ApiThreads,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<ApiServer> {
        let listener = listener.into_std()?;
        let ApiThreads { threads, nice } = threads;
        let threads_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("faena-api")
            .on_thread_start(move || {
                if nice > 0 {
                    // Linux: the calling thread's own nice value. Lowering one's own
                    // priority needs no privilege; should it fail, the threads keep the
                    // engine's priority.
                    let _ =
                        rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice);
                }
            })
            .enable_all()
            .build()?;
        let task = threads_rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            serve(listener, state, async move { shutdown.cancelled().await }).await
        });
        Ok(ApiServer {
            threads: Some(threads_rt),
            task,
        })
    }

    /// Wait for the server to stop (after `shutdown`), then let its threads go.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let result = (&mut self.task).await;
        drop(self);
        result.map_err(std::io::Error::other)?
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // A runtime may not be dropped from async code; its tasks are done or abandoned.
        if let Some(rt) = self.threads.take() {
            rt.shutdown_background();
        }
    }
}

/// Serve `app` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = PatientAcceptor {
        inner: TcpAcceptor::from_tokio(listener)?,
        warned: None,
    };
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(5)))
        .await
}

/// How long the server waits after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bytes a connection's socket may hold that were not sent yet (`TCP_NOTSENT_LOWAT`).
/// Without it the kernel grows a socket's send buffer to megabytes for a client that
/// does not read, and the engine's write completes into it: the bytes sit in kernel
/// memory and the engine never learns that the client stalled. With it a write to
/// such a client waits, and the feed's stall timeout lets the client go. What is in
/// flight (sent, not yet acknowledged) is not counted, so a fast link stays fast.
const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Accepts the server's connections. poem's server retries a failed `accept` at once:
/// out of file descriptors (EMFILE), the connection stays in the listen backlog and the
/// accept loop spins a whole core. This one waits [`ACCEPT_BACKOFF`] after a failure,
/// as hyper's and axum's servers do: the engine keeps its CPU and takes the connection
/// once a descriptor is free. Each accepted socket gets [`NOTSENT_LOWAT`].
struct PatientAcceptor {
    inner: TcpAcceptor,
    /// When the last failure was logged: once in a while is enough.
    warned: Option<std::time::Instant>,
}

impl Acceptor for PatientAcceptor {
    type Io = <TcpAcceptor as Acceptor>::Io;

    fn local_addr(&self) -> Vec<poem::web::LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(
        &mut self,
    ) -> std::io::Result<(
        Self::Io,
        poem::web::LocalAddr,
        poem::web::RemoteAddr,
        poem::http::uri::Scheme,
    )> {
        loop {
            match self.inner.accept().await {
                Ok(conn) => {
                    // Should it fail, the socket keeps the kernel's default.
                    let _ = socket2::SockRef::from(&conn.0).set_tcp_notsent_lowat(NOTSENT_LOWAT);
                    return Ok(conn);
                }
                Err(e) => {
                    if self
                        .warned
                        .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
                    {
                        self.warned = Some(std::time::Instant::now());
                        tracing::warn!(
                            error = %e,
                            "cannot accept connections (out of file descriptors? see \
                             `ulimit -n` and [api] feed_connections); retrying"
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

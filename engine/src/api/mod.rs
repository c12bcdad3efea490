//! HTTP: the REST API (poem-openapi, spec at `/openapi.json`, Swagger UI at `/docs`),
//! the WebSocket feed, `/health` and `/metrics`. Servers take a bound listener and a
//! shutdown future, so tests bind port 0 and stop cleanly.

mod body;
pub mod error;
mod events;
mod fanout;
mod items;
mod jobs;
mod keys;
mod plugins;
mod sessions;
mod workers;
mod ws;
mod wsproto;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, Response, Route, get, handler};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService};

pub use error::{ApiError, ApiResult, ErrorBody};
pub use events::EventPage;
pub use items::{ItemDetail, TransitionRequest};
pub use jobs::{ItemPage, JobPage};
pub use workers::{ClaimResponse, CompleteStatus};
pub use ws::RESERVED_TYPES;

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
    /// The feed's channels, shared by the WebSocket connections.
    fanout: Arc<fanout::Fanout>,
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
            fanout: fanout::Fanout::new(store.feed().clone()),
            import: Default::default(),
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

    pub fn with_import_limits(mut self, limits: crate::import::ImportLimits) -> Self {
        self.import = limits;
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

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// The newest event's seq.
    pub last_seq: u64,
}

#[derive(ApiResponse)]
enum HealthResponse {
    #[oai(status = 200)]
    Ok(Json<Health>),
}

struct HealthApi {
    state: AppState,
}

#[OpenApi(tag = "jobs::Tag::Health")]
impl HealthApi {
    /// Liveness and the head of the event log.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self) -> ApiResult<HealthResponse> {
        Ok(HealthResponse::Ok(Json(Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            last_seq: self.state.store.last_seq()?,
        })))
    }
}

#[handler]
fn metrics(state: Data<&AppState>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.store.metrics().render())
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
            events::EventsApi { state: s() },
            plugins::PluginsApi { state: s() },
            sessions::SessionsApi { state: s() },
            keys::KeysApi { state: s() },
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
    let spec = spec_with_security(&api.spec());
    let ui = api.swagger_ui();
    Route::new()
        .at(
            "/openapi.json",
            get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(spec.clone())
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
        .catch_all_error(error::json_errors)
        .data(state.auth.clone())
        .data(state)
}

/// The generated document plus what the middleware adds to every route: the bearer
/// scheme (so generated clients send the key), the 401, 403 and 429 answers of
/// [`auth::authenticate`], and 413/415 for bodies too large or of the wrong type.
fn spec_with_security(spec: &str) -> String {
    use serde_json::{Value, json};
    let mut doc: Value = serde_json::from_str(spec).expect("poem-openapi writes JSON");
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An API key (`fk_…`). The first start writes an admin key to `<data dir>/admin.key`."}
    });
    doc["security"] = json!([{"bearer": []}]);
    let error = |what: &str| {
        json!({"description": what,
               "content": {"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    let mut limited = error("Over the key's rate limit; retry after `Retry-After` seconds.");
    limited["headers"] =
        json!({"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}});
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, ops) in paths.iter_mut() {
            for (method, op) in ops.as_object_mut().into_iter().flatten() {
                let m = poem::http::Method::from_bytes(method.to_uppercase().as_bytes());
                let Ok(m) = m else { continue };
                if auth::required_role(&m, path).is_none() {
                    op["security"] = json!([]);
                    continue;
                }
                let has_body = op.get("requestBody").is_some();
                let responses = &mut op["responses"];
                if has_body {
                    responses["413"] = error("The body is larger than the engine accepts.");
                    responses["415"] =
                        error("The body's content type is not one this operation takes.");
                }
                responses["401"] = error("No API key, or an unknown or revoked one.");
                responses["403"] = error("The key's role does not allow this.");
                responses["429"] = limited.clone();
            }
        }
    }
    doc.to_string()
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
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(5)))
        .await
}

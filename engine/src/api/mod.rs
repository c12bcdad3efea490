//! HTTP: the REST API (poem-openapi, spec at `/openapi.json`, Swagger UI at `/docs`),
//! the WebSocket feed, `/health` and `/metrics`. Servers take a bound listener and a
//! shutdown future, so tests bind port 0 and stop cleanly.

mod body;
pub mod error;
mod events;
mod items;
mod jobs;
mod plugins;
mod sessions;
mod workers;
mod ws;

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
use crate::model::{DEFAULT_TENANT, Item, Job};
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
}

impl AppState {
    pub fn new(store: Store, runtime: Option<Arc<Runtime>>) -> Result<Self, StoreError> {
        Ok(AppState {
            artifacts: store.artifacts()?,
            secrets: store.secrets()?,
            store,
            runtime,
            sessions: None,
        })
    }

    pub fn with_sessions(mut self, sessions: crate::sessions::Sessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    pub fn tenant(&self) -> &str {
        DEFAULT_TENANT
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
    let spec = api.spec_endpoint();
    let ui = api.swagger_ui();
    Route::new()
        .at("/openapi.json", spec)
        .nest("/docs", ui)
        .at("/metrics", get(metrics))
        .at("/ws", get(ws::feed))
        .at("/ws/jobs/:id", get(ws::job_feed))
        .at("/ws/sessions/:id/screencast", get(sessions::screencast))
        .nest("/", api)
        .around(crate::dashboard::serve)
        .around(limit_body)
        .catch_all_error(error::json_errors)
        .data(state)
}

/// Refuse a declared body over [`MAX_BODY`] with 413 before reading it.
async fn limit_body<E: Endpoint>(next: E, req: poem::Request) -> poem::Result<Response> {
    let declared = req
        .header(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(poem::Error::from_string(
            format!("the request body is larger than {} MiB", MAX_BODY >> 20),
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
        ));
    }
    next.call(req).await.map(poem::IntoResponse::into_response)
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

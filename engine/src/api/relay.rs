//! The worker side of sessions held on workers (worker keys only): a long poll for
//! the commands of the worker's sessions, the answers, and the files their calls
//! save. See [`crate::sessions::relay`].

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{Object, OpenApi};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use super::plugins::ArtifactSaved;
use super::sessions::sessions;
use super::workers::{Done, valid_worker_name};
use crate::sessions::{Command, Reply};

#[derive(Debug, Object, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct SessionPoll {
    /// This worker process (a fresh id at each start): sessions of an earlier process
    /// under the same name are gone, and are closed as `worker_lost`.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub instance: String,
    /// Plugins it holds sessions of; empty: every plugin.
    #[oai(default, validator(max_items = 64))]
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Wait up to this long for a command (at most 10000).
    #[oai(validator(maximum(value = "10000")))]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Object, serde::Serialize, Deserialize)]
pub struct SessionCommands {
    pub commands: Vec<Command>,
    /// The sessions the engine knows this worker to hold: drop any other.
    pub sessions: Vec<String>,
}

pub struct RelayApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Workers")]
impl RelayApi {
    /// Take the commands for this worker's sessions (open, call, screenshot, close),
    /// waiting up to `wait_ms` for one. A worker that stops polling is gone: its
    /// sessions are closed as `worker_lost`.
    #[oai(
        path = "/workers/:name/sessions/poll",
        method = "post",
        operation_id = "worker_session_poll"
    )]
    async fn poll(
        &self,
        name: Path<String>,
        body: JsonBody<SessionPoll>,
    ) -> ApiResult<Json<SessionCommands>> {
        valid_worker_name(&name.0)?;
        let b = body.0;
        if b.instance.is_empty() || b.instance.len() > 64 {
            return Err(ApiError::invalid("instance: 1-64 characters"));
        }
        let wait = std::time::Duration::from_millis(
            b.wait_ms.unwrap_or(0).min(crate::sessions::relay::POLL_MS),
        );
        let (commands, held) = sessions(&self.state)?
            .worker_poll(&self.state.tenant(), &name.0, &b.instance, b.plugins, wait)
            .await;
        Ok(Json(SessionCommands {
            commands,
            sessions: held,
        }))
    }

    /// The answer to one command.
    #[oai(
        path = "/workers/:name/sessions/reply",
        method = "post",
        operation_id = "worker_session_reply"
    )]
    async fn reply(&self, name: Path<String>, body: JsonBody<Reply>) -> ApiResult<Done> {
        valid_worker_name(&name.0)?;
        let id = body.0.id;
        if sessions(&self.state)?.worker_reply(&self.state.tenant(), &name.0, body.0) {
            Ok(Done::NoContent)
        } else {
            Err(ApiError::not_found(format!(
                "no command {id} of worker `{}` waits for an answer",
                name.0
            )))
        }
    }

    /// Keep a file a call of a session this worker holds saved (a download).
    #[oai(
        path = "/workers/:name/sessions/:id/artifacts",
        method = "post",
        operation_id = "worker_session_artifact"
    )]
    async fn artifact(
        &self,
        name: Path<String>,
        id: Path<String>,
        #[oai(name = "name")] file: Query<String>,
        content_type: Query<String>,
        data: Binary<Vec<u8>>,
    ) -> ApiResult<ArtifactSaved> {
        valid_worker_name(&name.0)?;
        if file.0.is_empty() || file.0.len() > 255 || content_type.0.len() > 255 {
            return Err(ApiError::invalid("name and content_type: 1-255 characters"));
        }
        self.state.store.writable()?;
        let saved = sessions(&self.state)?
            .worker_artifact(
                &self.state.tenant(),
                &name.0,
                &id.0,
                &file.0,
                &content_type.0,
                data.0,
            )
            .await?;
        Ok(ArtifactSaved::Created(Json(saved)))
    }
}

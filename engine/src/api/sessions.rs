//! `/api/v1/sessions`: open (the plugin's login), call, inspect, watch, close; and
//! `/ws/sessions/{id}/screencast`, the live view as binary JPEG frames.

use poem::web::websocket::{Message, WebSocket};
use poem::web::{Data, Path as WsPath};
use poem::{IntoResponse, handler};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::error::ErrorCode;
use super::error::{ApiError, ApiResult, body as error_body};
use super::jobs::Tag;
use crate::artifacts::Artifact;
use crate::model::ErrorKind;
use crate::sessions::{CallResult, Session, SessionError, Sessions};

/// A session to open: the plugin's login operation runs with `input`.
#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct OpenSession {
    pub plugin: String,
    /// Whose login (a RUC and user, say); one active session per tenant, plugin and
    /// account.
    pub account: String,
    /// The operation that logs in (default `login`).
    pub operation: Option<String>,
    #[oai(default)]
    #[serde(default)]
    pub input: serde_json::Value,
}

#[derive(Debug, Object, Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct Invoke {
    pub operation: String,
    #[oai(default)]
    #[serde(default)]
    pub input: serde_json::Value,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SessionList {
    pub sessions: Vec<Session>,
}

#[derive(ApiResponse)]
pub enum Opened {
    /// Logged in: a new session.
    #[oai(status = 201)]
    Created(Json<Session>),
    /// The account already had an active session: this one.
    #[oai(status = 200)]
    Existing(Json<Session>),
}

#[derive(ApiResponse)]
pub enum Png {
    #[oai(status = 200, content_type = "image/png")]
    Ok(Binary<Vec<u8>>),
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound(m) => ApiError::not_found(m),
            SessionError::Invalid(m) => ApiError::invalid(m),
            SessionError::Conflict(m) => ApiError::Conflict(error_body(ErrorCode::Conflict, m)),
            SessionError::Store(e) => e.into(),
            SessionError::Call { error, closed } => {
                let mut message = error.message.clone();
                if let Some(code) = &error.code {
                    message = format!("{message} [{code}]");
                }
                if closed {
                    message.push_str(" (the session is closed)");
                }
                match error.kind {
                    ErrorKind::Business => {
                        ApiError::Invalid(error_body(ErrorCode::Business, message))
                    }
                    ErrorKind::Application => {
                        ApiError::BadGateway(error_body(ErrorCode::Portal, message))
                    }
                }
            }
        }
    }
}

pub struct SessionsApi {
    pub state: AppState,
}

impl SessionsApi {
    fn sessions(&self) -> ApiResult<&Sessions> {
        sessions(&self.state)
    }
}

pub(super) fn sessions(state: &AppState) -> ApiResult<&Sessions> {
    state.sessions.as_ref().ok_or_else(|| {
        ApiError::Unavailable(error_body(
            ErrorCode::Unavailable,
            "this engine runs no plugins, so it has no sessions",
        ))
    })
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Sessions")]
impl SessionsApi {
    /// Open a session: log in with the plugin's login operation in a long-lived
    /// instance with its own browser context. If the account already has an active
    /// session, that one is returned (200) and nobody logs in twice.
    #[oai(path = "/sessions", method = "post", operation_id = "open_session")]
    async fn open(&self, req: JsonBody<OpenSession>) -> ApiResult<Opened> {
        let r = req.0;
        let (s, created) = self
            .sessions()?
            .open(
                &self.state.tenant(),
                &r.plugin,
                &r.account,
                r.operation.as_deref(),
                r.input,
            )
            .await?;
        Ok(if created {
            Opened::Created(Json(s))
        } else {
            Opened::Existing(Json(s))
        })
    }

    /// Sessions of this tenant, newest first.
    #[oai(path = "/sessions", method = "get", operation_id = "list_sessions")]
    async fn list(
        &self,
        /// Only sessions that are open (or logging in).
        open: Query<Option<bool>>,
    ) -> ApiResult<Json<SessionList>> {
        Ok(Json(SessionList {
            sessions: self
                .sessions()?
                .list(&self.state.tenant(), open.0.unwrap_or(false))?,
        }))
    }

    /// A session: its state, last activity and the operations it takes.
    #[oai(path = "/sessions/:id", method = "get", operation_id = "get_session")]
    async fn get(&self, id: Path<String>) -> ApiResult<Json<Session>> {
        Ok(Json(self.sessions()?.get(&self.state.tenant(), &id.0)?))
    }

    /// Run an operation in the session, after any call already running in it. A
    /// failed call answers 422 (business) or 502 (portal); the session stays open
    /// unless its instance broke.
    #[oai(
        path = "/sessions/:id/invoke",
        method = "post",
        operation_id = "invoke_session"
    )]
    async fn invoke(&self, id: Path<String>, req: JsonBody<Invoke>) -> ApiResult<Json<CallResult>> {
        let r = req.0;
        Ok(Json(
            self.sessions()?
                .invoke(&self.state.tenant(), &id.0, &r.operation, r.input)
                .await?,
        ))
    }

    /// Close the session and its browser context.
    #[oai(
        path = "/sessions/:id",
        method = "delete",
        operation_id = "close_session"
    )]
    async fn close(&self, id: Path<String>) -> ApiResult<Json<Session>> {
        Ok(Json(
            self.sessions()?.close(&self.state.tenant(), &id.0).await?,
        ))
    }

    /// A PNG of the session's page now.
    #[oai(
        path = "/sessions/:id/screenshot",
        method = "get",
        operation_id = "session_screenshot"
    )]
    async fn screenshot(&self, id: Path<String>) -> ApiResult<Png> {
        Ok(Png::Ok(Binary(
            self.sessions()?
                .screenshot(&self.state.tenant(), &id.0)
                .await?,
        )))
    }

    /// Files the session's calls saved (downloads), oldest first.
    #[oai(
        path = "/sessions/:id/artifacts",
        method = "get",
        operation_id = "list_session_artifacts"
    )]
    async fn artifacts(&self, id: Path<String>) -> ApiResult<Json<Vec<Artifact>>> {
        Ok(Json(
            self.sessions()?.artifacts(&self.state.tenant(), &id.0)?,
        ))
    }
}

/// `/ws/sessions/{id}/screencast`: binary JPEG frames of the session's page while it
/// changes, until the client leaves or the session closes.
#[handler]
pub async fn screencast(
    ws: WebSocket,
    state: Data<&AppState>,
    WsPath(id): WsPath<String>,
) -> poem::Result<poem::Response> {
    let state = state.0.clone();
    let frames = sessions(&state)
        .and_then(|s| Ok(s.frames(&state.tenant(), &id)?))
        .map_err(api_to_poem)?;
    let mut rx = frames
        .subscribe()
        .await
        .map_err(|m| api_to_poem(ApiError::Conflict(error_body(ErrorCode::Conflict, m))))?;
    Ok(ws
        .config(super::ws::socket_config())
        .on_upgrade(move |socket| async move {
            use futures_util::{SinkExt, StreamExt};
            let (mut sink, mut stream) = socket.split();
            loop {
                tokio::select! {
                    frame = rx.recv() => match frame {
                        Ok(jpeg) => {
                            if sink.send(Message::Binary(jpeg.to_vec())).await.is_err() {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        _ => {}
                    },
                }
            }
            let _ = sink.close().await;
        })
        .into_response())
}

fn api_to_poem(e: ApiError) -> poem::Error {
    poem::Error::from_response(poem::IntoResponse::into_response(e))
}

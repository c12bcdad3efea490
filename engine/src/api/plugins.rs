//! `/api/v1/plugins` (list, describe, install an uploaded component), `/api/v1/artifacts`
//! (files runs produced) and `/api/v1/secrets` (write-only values plugins are granted).

use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::AppState;
use super::body::JsonBody;
use super::error::ErrorCode;
use super::error::{ApiError, ApiResult, body};
use super::jobs::Tag;
use crate::artifacts::Artifact;
use crate::runtime::{PluginMeta, RuntimeError};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PluginList {
    pub plugins: Vec<PluginMeta>,
}

#[derive(ApiResponse)]
pub enum Installed {
    #[oai(status = 201)]
    Created(Json<PluginMeta>),
}

#[derive(ApiResponse)]
pub enum ArtifactSaved {
    #[oai(status = 201)]
    Created(Json<Artifact>),
}

#[derive(ApiResponse)]
pub enum Component {
    /// The component's bytes (`application/octet-stream`: generated clients read that
    /// as a file; `application/wasm` they drop).
    #[oai(status = 200)]
    Ok(Binary<Vec<u8>>, #[oai(header = "etag")] String),
}

#[derive(ApiResponse)]
pub enum ArtifactBody {
    /// The file, with its content type.
    #[oai(status = 200)]
    Ok(
        Binary<Vec<u8>>,
        #[oai(header = "content-type")] String,
        #[oai(header = "content-disposition")] String,
    ),
}

#[derive(Debug, Object, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct SecretValue {
    pub value: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SecretNames {
    pub names: Vec<String>,
}

#[derive(ApiResponse)]
pub enum Done {
    #[oai(status = 204)]
    NoContent,
}

pub struct PluginsApi {
    pub state: AppState,
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Exists { .. } => {
                ApiError::Conflict(body(ErrorCode::Conflict, e.to_string()))
            }
            RuntimeError::Invalid(_) | RuntimeError::Plugin { .. } | RuntimeError::Grants(_) => {
                ApiError::invalid(e.to_string())
            }
            RuntimeError::Engine(_) | RuntimeError::Io(_) => {
                ApiError::Internal(body(ErrorCode::Internal, e.to_string()))
            }
        }
    }
}

impl super::AppState {
    /// The plugin runtime; 503 on an engine built without one.
    pub(super) fn plugins(&self) -> ApiResult<&std::sync::Arc<crate::runtime::Runtime>> {
        self.runtime.as_ref().ok_or_else(|| {
            ApiError::Unavailable(body(ErrorCode::Unavailable, "this engine runs no plugins"))
        })
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Plugins")]
impl PluginsApi {
    /// Installed plugins (current versions), their operations and input schemas.
    #[oai(path = "/plugins", method = "get", operation_id = "list_plugins")]
    async fn list(&self) -> ApiResult<Json<PluginList>> {
        Ok(Json(PluginList {
            plugins: self.state.plugins()?.registry().list(),
        }))
    }

    /// One plugin: operations, input JSON schemas, what it needs and what it is granted.
    #[oai(path = "/plugins/:name", method = "get", operation_id = "get_plugin")]
    async fn get(&self, name: Path<String>) -> ApiResult<Json<PluginMeta>> {
        self.state
            .plugins()?
            .registry()
            .list()
            .into_iter()
            .find(|p| p.name == name.0)
            .map(Json)
            .ok_or_else(|| ApiError::not_found(format!("plugin `{}` not found", name.0)))
    }

    /// The component of an installed plugin version, as workers fetch it. The `ETag` is its SHA-256, hex, in quotes.
    #[oai(
        path = "/plugins/:name/versions/:version/component",
        method = "get",
        operation_id = "get_plugin_component"
    )]
    async fn component(&self, name: Path<String>, version: Path<String>) -> ApiResult<Component> {
        let p = self
            .state
            .plugins()?
            .registry()
            .get(&name.0, Some(&version.0))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "plugin `{}` version {} is not installed",
                    name.0, version.0
                ))
            })?;
        let source = p.source.clone();
        let bytes = tokio::task::spawn_blocking(move || source.read())
            .await
            .map_err(|e| ApiError::Internal(body(ErrorCode::Internal, e.to_string())))?
            .map_err(|e| ApiError::Internal(body(ErrorCode::Internal, e.to_string())))?;
        Ok(Component::Ok(Binary(bytes), format!("\"{}\"", p.sha256)))
    }

    /// Install a plugin component (`application/wasm`). It becomes the version new
    /// jobs get; running jobs keep theirs.
    #[oai(path = "/plugins", method = "post", operation_id = "install_plugin")]
    async fn install(&self, component: Binary<Vec<u8>>) -> ApiResult<Installed> {
        if component.0.is_empty() {
            return Err(ApiError::invalid(
                "the body is empty: send a WebAssembly component",
            ));
        }
        self.state.store.writable()?;
        let meta = self.state.plugins()?.install(&component.0).await?;
        Ok(Installed::Created(Json(meta)))
    }

    /// Download an artifact (a failure screenshot, a downloaded file).
    #[oai(
        path = "/artifacts/:id",
        method = "get",
        operation_id = "get_artifact",
        tag = "Tag::Items"
    )]
    async fn artifact(&self, id: Path<String>) -> ApiResult<ArtifactBody> {
        let meta = self.state.artifacts.get(&id.0)?;
        if meta.tenant != self.state.tenant() {
            return Err(ApiError::not_found(format!(
                "artifact `{}` not found",
                id.0
            )));
        }
        let data = self.state.artifacts.read(&meta).await?;
        let name: String = meta
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"')
            .collect();
        Ok(ArtifactBody::Ok(
            Binary(data),
            meta.content_type.clone(),
            format!("inline; filename=\"{name}\""),
        ))
    }

    /// Keep a file a running item produced (a failure screenshot, a download),
    /// fenced by its lease token.
    #[oai(
        path = "/items/:id/artifacts",
        method = "post",
        operation_id = "save_item_artifact",
        tag = "Tag::Workers"
    )]
    async fn save_artifact(
        &self,
        id: Path<String>,
        token: poem_openapi::param::Query<u64>,
        name: poem_openapi::param::Query<String>,
        content_type: poem_openapi::param::Query<String>,
        data: poem_openapi::payload::Binary<Vec<u8>>,
    ) -> ApiResult<ArtifactSaved> {
        let item = self.state.leased_item(&id.0, token.0)?;
        if name.0.is_empty() || name.0.len() > 255 || content_type.0.len() > 255 {
            return Err(ApiError::invalid("name and content_type: 1-255 characters"));
        }
        let meta = crate::artifacts::Artifact {
            id: String::new(),
            tenant: item.tenant.clone(),
            job_id: Some(item.job_id.clone()),
            item_id: Some(item.id.clone()),
            session_id: None,
            name: name.0,
            content_type: content_type.0,
            size: 0,
            created_at: self.state.store.clock().now_ms(),
        };
        self.state.store.writable()?;
        Ok(ArtifactSaved::Created(Json(
            self.state.artifacts.save(meta, data.0).await?,
        )))
    }

    /// Artifacts of an item.
    #[oai(
        path = "/items/:id/artifacts",
        method = "get",
        operation_id = "list_item_artifacts",
        tag = "Tag::Items"
    )]
    async fn item_artifacts(&self, id: Path<String>) -> ApiResult<Json<Vec<Artifact>>> {
        self.state.item(&id.0)?;
        Ok(Json(self.state.artifacts.for_item(&id.0)?))
    }

    /// Names of the tenant's secrets (never their values).
    #[oai(
        path = "/secrets",
        method = "get",
        operation_id = "list_secrets",
        tag = "Tag::Secrets"
    )]
    async fn secrets(&self) -> ApiResult<Json<SecretNames>> {
        Ok(Json(SecretNames {
            names: self.state.secrets.names(&self.state.tenant())?,
        }))
    }

    /// Set a secret; plugins granted its name can read it.
    #[oai(
        path = "/secrets/:name",
        method = "put",
        operation_id = "set_secret",
        tag = "Tag::Secrets"
    )]
    async fn set_secret(
        &self,
        name: Path<String>,
        value: JsonBody<SecretValue>,
    ) -> ApiResult<Done> {
        self.state.store.writable()?;
        self.state
            .secrets
            .set(&self.state.tenant(), &name.0, &value.0.value)?;
        Ok(Done::NoContent)
    }

    #[oai(
        path = "/secrets/:name",
        method = "delete",
        operation_id = "delete_secret",
        tag = "Tag::Secrets"
    )]
    async fn delete_secret(&self, name: Path<String>) -> ApiResult<Done> {
        if self.state.secrets.delete(&self.state.tenant(), &name.0)? {
            Ok(Done::NoContent)
        } else {
            Err(ApiError::not_found(format!(
                "secret `{}` not found",
                name.0
            )))
        }
    }
}

//! `/api/v1/keys`: create, list and revoke API keys (admins only). An admin manages its
//! own tenant's keys; an admin of the `default` tenant also those of other tenants.

use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::AppState;
use super::body::JsonBody;
use super::error::ErrorCode;
use super::error::{ApiError, ApiResult};
use super::jobs::Tag;
use crate::auth::{ApiKey, Role};

#[derive(Debug, Object, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewKey {
    /// What the key is for, e.g. `purchasing robot`.
    pub name: String,
    pub role: Role,
    /// The tenant it belongs to (default: the caller's). Only an admin of the
    /// `default` tenant may name another.
    pub tenant: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CreatedKey {
    pub key: ApiKey,
    /// The bearer token. Shown this once: only its hash is stored.
    pub token: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

#[derive(ApiResponse)]
pub enum Created {
    #[oai(status = 201)]
    Created(Json<CreatedKey>),
}

#[derive(ApiResponse)]
pub enum Revoked {
    #[oai(status = 204)]
    NoContent,
}

pub struct KeysApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Keys")]
impl KeysApi {
    /// Create a key. The answer holds its token, which is never shown again.
    #[oai(path = "/keys", method = "post", operation_id = "create_key")]
    async fn create(&self, body: JsonBody<NewKey>) -> ApiResult<Created> {
        let caller = self.state.caller()?;
        let tenant = body.0.tenant.unwrap_or_else(|| caller.tenant.clone());
        if tenant != caller.tenant && !caller.is_engine_admin() {
            return Err(ApiError::forbidden(format!(
                "a key of tenant `{}` cannot create keys for tenant `{tenant}`",
                caller.tenant
            )));
        }
        self.state.store.writable()?;
        let now = self.state.store.clock().now_ms();
        let (key, token) = self
            .state
            .auth
            .keys
            .create(&tenant, body.0.role, &body.0.name, now)?;
        tracing::info!(key = %key.id, tenant = %key.tenant, role = key.role.as_str(), by = %caller.key_id, "API key created");
        Ok(Created::Created(Json(CreatedKey { key, token })))
    }

    /// Keys of the caller's tenant (of every tenant for an admin of `default`).
    #[oai(path = "/keys", method = "get", operation_id = "list_keys")]
    async fn list(&self) -> ApiResult<Json<KeyList>> {
        let caller = self.state.caller()?;
        let tenant = (!caller.is_engine_admin()).then_some(caller.tenant.as_str());
        Ok(Json(KeyList {
            keys: self.state.auth.keys.list(tenant)?,
        }))
    }

    /// Revoke a key; it stops working at once. A key cannot revoke itself.
    #[oai(path = "/keys/:id", method = "delete", operation_id = "revoke_key")]
    async fn revoke(&self, id: Path<String>) -> ApiResult<Revoked> {
        let caller = self.state.caller()?;
        let not_found = || ApiError::not_found(format!("key `{}` not found", id.0));
        let key = self.state.auth.keys.get(&id.0)?.ok_or_else(not_found)?;
        if key.tenant != caller.tenant && !caller.is_engine_admin() {
            return Err(not_found());
        }
        if key.id == caller.key_id {
            return Err(ApiError::Conflict(super::error::body(
                ErrorCode::Conflict,
                "a key cannot revoke itself; use another admin key",
            )));
        }
        self.state.auth.keys.revoke(&key.id)?;
        tracing::info!(key = %key.id, tenant = %key.tenant, by = %caller.key_id, "API key revoked");
        Ok(Revoked::NoContent)
    }
}

//! API keys, tenants and roles.
//!
//! Every request but `/health`, the OpenAPI document and the dashboard's static files
//! carries a bearer key (`Authorization: Bearer fk_…`, or `?token=` where a browser
//! cannot set a header: WebSockets and `<img>`). A key belongs to one tenant and has one
//! role; the [`authenticate`] middleware finds it, checks the role the route needs and
//! the key's rate, and runs the request with its [`Caller`] in a task-local, which
//! [`crate::api::AppState::tenant`] reads — so every handler sees only its tenant.
//!
//! Keys are stored as SHA-256 hashes of the whole token; the token is shown once, when
//! it is created. The first start creates an admin key of the `default` tenant and
//! writes it to `<data dir>/admin.key` (mode 0600): there is no default password.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};
use poem_openapi::{Enum, Object};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::api::error::ErrorCode;
use crate::model::DEFAULT_TENANT;
use crate::store::{Result, StoreError};

/// What a key may do. Each role may do what the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Enum,
)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum Role {
    /// A `faena worker`: claims and reports its tenant's items, fetches plugins and the
    /// secrets granted to them with its claims; reads nothing else.
    Worker,
    /// Read everything of its tenant, follow the feed.
    Viewer,
    /// Also create and drive jobs, items and sessions; run external workers.
    Operator,
    /// Also manage secrets, keys and webhooks; in the `default` tenant, install plugins and keys
    /// for other tenants.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A stored key. `hash` is the SHA-256 of the whole token, hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    id: String,
    name: String,
    tenant: String,
    role: Role,
    created_at: i64,
    hash: String,
}

/// A key as the API shows it (never the token or its hash).
#[derive(Debug, Clone, Serialize, Deserialize, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub role: Role,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl From<StoredKey> for ApiKey {
    fn from(k: StoredKey) -> Self {
        ApiKey {
            id: k.id,
            name: k.name,
            tenant: k.tenant,
            role: k.role,
            created_at: k.created_at,
        }
    }
}

/// Who is calling: the key, its tenant and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: String,
    pub tenant: String,
    pub role: Role,
}

impl Caller {
    /// An admin of the `default` tenant: administers the engine itself.
    pub fn is_engine_admin(&self) -> bool {
        self.role == Role::Admin && self.tenant == DEFAULT_TENANT
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The caller of the request being served, if it went through [`authenticate`].
pub fn caller() -> Option<Caller> {
    CALLER.try_with(Clone::clone).ok()
}

/// Run `f` as `caller` (what [`authenticate`] does; also for in-process callers).
pub async fn scope<F: std::future::Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

const TOKEN_PREFIX: &str = "fk_";

fn hash(token: &str) -> String {
    crate::runtime::sha256_hex(token.as_bytes())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compare without an early exit, so the time taken says nothing about the hash.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Tenant names: 1-64 lowercase letters, digits, `-` or `_`.
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
}

/// The keys, in their own sled tree (id → record).
#[derive(Clone)]
pub struct Keys {
    tree: sled::Tree,
}

impl Keys {
    pub fn new(tree: sled::Tree) -> Self {
        Keys { tree }
    }

    /// A new key; the token is returned once and only its hash is kept.
    pub fn create(
        &self,
        tenant: &str,
        role: Role,
        name: &str,
        now_ms: i64,
    ) -> Result<(ApiKey, String)> {
        if !valid_tenant(tenant) {
            return Err(StoreError::Invalid(format!(
                "tenant `{tenant}`: use 1-64 lowercase letters, digits, `-` or `_`"
            )));
        }
        // The length is the one the OpenAPI schema promises: of the name as sent.
        let too_long = name.chars().count() > 100;
        let name = name.trim();
        if name.is_empty() || too_long {
            return Err(StoreError::Invalid(
                "name: give the key a name of 1-100 characters".into(),
            ));
        }
        let id = format!("k{}", random_hex(6));
        let token = format!("{TOKEN_PREFIX}{id}_{}", random_hex(24));
        let key = StoredKey {
            id: id.clone(),
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            role,
            created_at: now_ms,
            hash: hash(&token),
        };
        let value = serde_json::to_vec(&key).expect("a key serializes");
        self.tree.insert(id.as_bytes(), value)?;
        self.tree.flush()?;
        Ok((key.into(), token))
    }

    fn stored(&self, id: &str) -> Result<Option<StoredKey>> {
        Ok(match self.tree.get(id.as_bytes())? {
            Some(v) => Some(
                serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Storage(format!("key `{id}` is unreadable: {e}")))?,
            ),
            None => None,
        })
    }

    /// The caller a token stands for, or `None` for an unknown or revoked one.
    pub fn verify(&self, token: &str) -> Result<Option<Caller>> {
        let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
            return Ok(None);
        };
        let Some((id, _)) = rest.split_once('_') else {
            return Ok(None);
        };
        Ok(self.stored(id)?.and_then(|k| {
            same(&k.hash, &hash(token)).then_some(Caller {
                key_id: k.id,
                tenant: k.tenant,
                role: k.role,
            })
        }))
    }

    pub fn get(&self, id: &str) -> Result<Option<ApiKey>> {
        Ok(self.stored(id)?.map(ApiKey::from))
    }

    /// Keys of `tenant` (of every tenant when `None`), oldest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>> {
        let mut keys = Vec::new();
        for kv in self.tree.iter() {
            let (_, v) = kv?;
            let k: StoredKey = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Storage(format!("a key is unreadable: {e}")))?;
            if tenant.is_none_or(|t| t == k.tenant) {
                keys.push(ApiKey::from(k));
            }
        }
        keys.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(keys)
    }

    /// Revoke a key: it stops working at once.
    pub fn revoke(&self, id: &str) -> Result<bool> {
        let existed = self.tree.remove(id.as_bytes())?.is_some();
        self.tree.flush()?;
        Ok(existed)
    }

    /// On a store with no keys at all, create an admin key of the `default` tenant and
    /// write its token to `<data_dir>/admin.key` (readable by its owner only). Returns
    /// the file's path when it did.
    pub fn bootstrap(&self, data_dir: &Path, now_ms: i64) -> anyhow::Result<Option<PathBuf>> {
        if !self.tree.is_empty() {
            return Ok(None);
        }
        let (_, token) = self.create(DEFAULT_TENANT, Role::Admin, "first admin key", now_ms)?;
        let path = data_dir.join("admin.key");
        write_private(&path, &format!("{token}\n"))?;
        Ok(Some(path))
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Per-key request rate: a token bucket of `burst` requests refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_sec: 100.0,
            burst: 200.0,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every key seen since start.
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `key`'s bucket, or say how long until one is there.
    pub fn take(&self, key: &str) -> std::result::Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("limiter lock");
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.limit.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limit.per_sec).min(self.limit.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tokens) / self.limit.per_sec,
            ))
        }
    }
}

/// What the authentication middleware needs.
#[derive(Clone)]
pub struct Auth {
    pub keys: Keys,
    pub limiter: Arc<Limiter>,
}

/// The role a request needs, or `None` for the public routes.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    let public = path == "/health"
        || path == "/ready"
        || path == "/openapi.json"
        || path == "/asyncapi.json"
        || path == "/docs"
        || path.starts_with("/docs/");
    if public {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD || method == Method::OPTIONS;
    let admin = path.starts_with("/api/v1/keys")
        || (path.starts_with("/api/v1/secrets") && !read)
        || (path.starts_with("/api/v1/webhooks") && !read)
        || (path == "/api/v1/plugins" && !read);
    Some(if admin {
        Role::Admin
    } else if read {
        Role::Viewer
    } else {
        Role::Operator
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerCall {
    /// Only worker keys (a worker's registration and claims, which carry secrets).
    WorkerOnly,
    /// Worker keys and, as for any route, keys with the role it needs.
    Shared,
}

/// Whether a request is part of the worker protocol, and for whom.
fn worker_protocol(method: &Method, path: &str) -> Option<WorkerCall> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        // A kept portal state is a logged-in session: only the worker running the item
        // reads or replaces it (a lease token is no secret: viewers see it).
        (&Method::GET | &Method::PUT, ["", "api", "v1", "items", _, "state"])
        | (&Method::POST, ["", "api", "v1", "workers", _, "heartbeat" | "claim"])
        | (&Method::POST, ["", "api", "v1", "workers", _, "sessions", "poll" | "reply"])
        | (&Method::POST, ["", "api", "v1", "workers", _, "sessions", _, "artifacts"]) => {
            Some(WorkerCall::WorkerOnly)
        }
        (
            &Method::POST,
            [
                "",
                "api",
                "v1",
                "items",
                _,
                "heartbeat" | "step" | "complete" | "log" | "progress" | "artifacts" | "release",
            ],
        ) => Some(WorkerCall::Shared),
        (&Method::GET, ["", "api", "v1", "plugins", _, "versions", _, "component"]) => {
            Some(WorkerCall::Shared)
        }
        _ => None,
    }
}

fn token_of(req: &Request) -> Option<String> {
    if let Some(v) = req.header(header::AUTHORIZATION) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_owned());
    }
    req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    })
}

fn refuse(status: StatusCode, code: ErrorCode, message: String) -> Response {
    let mut resp = crate::api::error::json_response(status, code, &message);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// [`refuse`], or for a WebSocket upgrade the feed's way of refusing: the handshake
/// completes and the connection closes at once with a code and reason a browser can
/// read (4401, 4403), where a refused handshake shows only 1006.
fn refuse_for(req: &Request, status: StatusCode, code: ErrorCode, message: String) -> Response {
    crate::api::refuse_feed(req, status, &message).unwrap_or_else(|| refuse(status, code, message))
}

/// The middleware: 401 without a valid key, 403 for a role too low, 429 with
/// `Retry-After` over the key's rate; otherwise the request runs as its [`Caller`].
pub async fn authenticate<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let Some(needed) = required_role(req.method(), req.uri().path()) else {
        return next.call(req).await.map(IntoResponse::into_response);
    };
    let auth = req
        .data::<Auth>()
        .cloned()
        .expect("the API is served with its Auth");
    let Some(token) = token_of(&req) else {
        return Ok(refuse_for(
            &req,
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "this needs an API key: send `Authorization: Bearer <key>` (the first start \
             writes an admin key to <data dir>/admin.key)"
                .into(),
        ));
    };
    let caller = match auth.keys.verify(&token) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Ok(refuse_for(
                &req,
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "the API key is unknown or was revoked".into(),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "reading API keys");
            return Ok(refuse_for(
                &req,
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            ));
        }
    };
    if let Err(wait) = auth.limiter.take(&caller.key_id) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = refuse_for(
            &req,
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "key `{}` is over its rate of {} requests per second; retry after {secs} s",
                caller.key_id, auth.limiter.limit.per_sec
            ),
        );
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from_str(&secs.to_string()).expect("digits"),
        );
        return Ok(resp);
    }
    let worker_call = worker_protocol(req.method(), req.uri().path());
    if caller.role == Role::Worker && worker_call.is_none() {
        return Ok(refuse_for(
            &req,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "key `{}` is a worker key: it may only claim and report items and fetch plugins",
                caller.key_id
            ),
        ));
    }
    if worker_call == Some(WorkerCall::WorkerOnly) && caller.role != Role::Worker {
        return Ok(refuse_for(
            &req,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "this is for `faena worker`: it needs a key with the worker role; key `{}` is {}",
                caller.key_id,
                caller.role.as_str()
            ),
        ));
    }
    if caller.role < needed && caller.role != Role::Worker {
        return Ok(refuse_for(
            &req,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!(
                "this needs the {} role; key `{}` is {} {}",
                needed.as_str(),
                caller.key_id,
                if caller.role == Role::Admin {
                    "an"
                } else {
                    "a"
                },
                caller.role.as_str()
            ),
        ));
    }
    let path = req.uri().path();
    if path == "/metrics" && caller.tenant != DEFAULT_TENANT {
        return Ok(refuse_for(
            &req,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the metrics count every tenant's work: they need a key of the `default` tenant".into(),
        ));
    }
    if path == "/api/v1/plugins" && req.method() == Method::POST && !caller.is_engine_admin() {
        return Ok(refuse_for(
            &req,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "plugins are shared by every tenant: installing one needs an admin key of the \
             `default` tenant"
                .into(),
        ));
    }
    scope(caller, next.call(req))
        .await
        .map(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        let db = sled::Config::new().temporary(true).open().unwrap();
        Keys::new(db.open_tree("keys").unwrap())
    }

    #[test]
    fn a_token_verifies_until_revoked_and_only_its_hash_is_stored() {
        let keys = keys();
        let (key, token) = keys.create("acme", Role::Operator, "robot", 1).unwrap();
        assert!(token.starts_with("fk_"));
        let caller = keys.verify(&token).unwrap().unwrap();
        assert_eq!(caller.tenant, "acme");
        assert_eq!(caller.role, Role::Operator);
        let raw = keys.tree.get(key.id.as_bytes()).unwrap().unwrap();
        let raw = String::from_utf8(raw.to_vec()).unwrap();
        assert!(!raw.contains(&token[key.id.len() + 4..]), "{raw}");
        assert!(raw.contains(&hash(&token)));

        // A wrong secret with the right id, garbage, another scheme: no caller.
        let forged = format!("fk_{}_{}", key.id, "0".repeat(48));
        assert_eq!(keys.verify(&forged).unwrap(), None);
        assert_eq!(keys.verify("nonsense").unwrap(), None);
        assert_eq!(keys.verify("fk_").unwrap(), None);

        assert!(keys.revoke(&key.id).unwrap());
        assert_eq!(keys.verify(&token).unwrap(), None);
    }

    #[test]
    fn bad_tenants_and_names_are_refused() {
        let keys = keys();
        for t in ["", "Acme", "a b", &"x".repeat(65)] {
            let e = keys.create(t, Role::Viewer, "k", 1).unwrap_err();
            assert!(e.to_string().contains("tenant"), "{e}");
        }
        let e = keys.create("acme", Role::Viewer, "  ", 1).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        // 101 characters as sent is over the schema's 100 even if trimming would fit it.
        let padded = format!("\u{b}{}", "x".repeat(100));
        let e = keys.create("acme", Role::Viewer, &padded, 1).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
        assert!(keys.list(None).unwrap().is_empty(), "nothing written");
        let (key, _) = keys
            .create("acme", Role::Viewer, &"x".repeat(100), 1)
            .unwrap();
        assert_eq!(key.name.len(), 100);
    }

    #[test]
    fn bootstrap_writes_one_admin_key_once() {
        let keys = keys();
        let dir = tempfile::tempdir().unwrap();
        let path = keys.bootstrap(dir.path(), 1).unwrap().unwrap();
        let token = std::fs::read_to_string(&path).unwrap();
        let caller = keys.verify(token.trim()).unwrap().unwrap();
        assert!(caller.is_engine_admin());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(keys.bootstrap(dir.path(), 2).unwrap(), None);
        assert_eq!(keys.list(None).unwrap().len(), 1);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let l = Limiter::new(RateLimit {
            per_sec: 10.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            l.take("a").unwrap();
        }
        let wait = l.take("a").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another key has its own bucket.
        l.take("b").unwrap();
    }

    #[test]
    fn roles_by_route() {
        let r = |m: Method, p: &str| required_role(&m, p);
        assert_eq!(r(Method::GET, "/health"), None);
        assert_eq!(r(Method::GET, "/ready"), None);
        assert_eq!(r(Method::GET, "/openapi.json"), None);
        assert_eq!(r(Method::GET, "/api/v1/jobs"), Some(Role::Viewer));
        assert_eq!(r(Method::GET, "/ws"), Some(Role::Viewer));
        assert_eq!(r(Method::GET, "/metrics"), Some(Role::Viewer));
        assert_eq!(r(Method::POST, "/api/v1/jobs"), Some(Role::Operator));
        assert_eq!(
            r(Method::POST, "/api/v1/sessions/s/invoke"),
            Some(Role::Operator)
        );
        assert_eq!(r(Method::GET, "/api/v1/secrets"), Some(Role::Viewer));
        assert_eq!(r(Method::PUT, "/api/v1/secrets/x"), Some(Role::Admin));
        assert_eq!(r(Method::POST, "/api/v1/plugins"), Some(Role::Admin));
        assert_eq!(r(Method::GET, "/api/v1/keys"), Some(Role::Admin));
    }
}

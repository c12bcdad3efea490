//! A whole engine for end-to-end tests: store, plugin runtime (with Chromium when
//! asked), scheduler and API on a 127.0.0.1 listener, in a temporary directory.

#![allow(dead_code)] // each test file uses its own part of this

pub mod process;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use faena::api::{self, AppState};
use faena::auth::{RateLimit, Role};
use faena::clock::Clock;
use faena::config::PluginConfig;
use faena::model::{Item, Job, JobStatus};
use faena::runtime::browser::ChromiumSettings;
use faena::runtime::{Runtime, RuntimeOptions, WasmExecutor};
use faena::scheduler::{self, SchedulerConfig};
use faena::sessions::{Sessions, SessionsConfig};
use faena::store::Store;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub struct Engine {
    pub store: Store,
    pub runtime: Arc<Runtime>,
    pub sessions: Sessions,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// An admin key of the `default` tenant.
    pub key: String,
    /// A client that sends [`Engine::key`].
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start an engine with these plugin grants, running `concurrency` items at once.
pub async fn start(
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
    concurrency: usize,
) -> Engine {
    start_with(plugins, browser, concurrency, Duration::from_secs(3600)).await
}

/// [`start`], with sessions closing after `session_idle` without a call.
pub async fn start_with(
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
    concurrency: usize,
    session_idle: Duration,
) -> Engine {
    start_limited(
        plugins,
        browser,
        concurrency,
        session_idle,
        RateLimit::default(),
    )
    .await
}

/// [`start_with`], each API key limited to `rate`.
pub async fn start_limited(
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
    concurrency: usize,
    session_idle: Duration,
    rate: RateLimit,
) -> Engine {
    start_full(
        plugins,
        browser,
        concurrency,
        session_idle,
        rate,
        Vec::new(),
    )
    .await
}

/// [`start`], with pages of `cors_origins` allowed to call the API.
pub async fn start_cors(
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
    concurrency: usize,
    cors_origins: Vec<String>,
) -> Engine {
    start_full(
        plugins,
        browser,
        concurrency,
        Duration::from_secs(3600),
        RateLimit::default(),
        cors_origins,
    )
    .await
}

async fn start_full(
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
    concurrency: usize,
    session_idle: Duration,
    rate: RateLimit,
    cors_origins: Vec<String>,
) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), Clock::new())
        .await
        .unwrap();
    let runtime = Runtime::new(
        RuntimeOptions {
            cache_dir: dir.path().join("cache"),
            plugin_dir: dir.path().join("plugins"),
            plugins,
            chromium: browser.then(|| ChromiumSettings {
                profile_dir: dir.path().join("chromium"),
                ..ChromiumSettings::default()
            }),
        },
        Some(store.artifacts().unwrap()),
        Some(store.secrets().unwrap()),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(runtime.clone())),
        SchedulerConfig {
            concurrency,
            grace: std::time::Duration::ZERO,
        },
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sessions = Sessions::start(
        store.clone(),
        runtime.clone(),
        SessionsConfig {
            idle_timeout: session_idle,
        },
    )
    .await
    .unwrap();
    let state = AppState::new(store.clone(), Some(runtime.clone()))
        .unwrap()
        .with_sessions(sessions.clone())
        .with_rate_limit(rate)
        .with_cors_origins(cors_origins)
        .unwrap();
    let (_, key) = state
        .auth
        .keys
        .create("default", Role::Admin, "tests", 0)
        .unwrap();
    let stop = shutdown.clone();
    tokio::spawn(api::serve(listener, state, async move {
        stop.cancelled().await
    }));
    Engine {
        http: client(&key),
        key,
        store,
        runtime,
        sessions,
        url,
        shutdown,
        dir,
    }
}

impl Engine {
    pub async fn load(&self, component: &[u8]) {
        self.runtime
            .load(component, faena::runtime::Source::Bytes(component.into()))
            .await
            .unwrap();
    }

    /// Where this engine's Chromium keeps its profiles (unique to the test).
    pub fn chromium_dir(&self) -> String {
        self.dir.path().join("chromium").display().to_string()
    }

    pub fn secret(&self, name: &str, value: &str) {
        self.store
            .secrets()
            .unwrap()
            .set("default", name, value)
            .unwrap();
    }

    /// `ws://…{path}` with the key as `token`.
    pub fn ws_url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!(
            "{}{path}{sep}token={}",
            self.url.replacen("http://", "ws://", 1),
            self.key
        )
    }

    /// A key of another role or tenant.
    pub fn new_key(&self, tenant: &str, role: Role) -> String {
        self.store
            .keys()
            .unwrap()
            .create(tenant, role, "tests", 0)
            .unwrap()
            .1
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn item(&self, id: &str) -> Item {
        self.store.item(id).unwrap()
    }

    /// Wait until `done(job)` holds, at most `secs`.
    pub async fn wait_job(&self, id: &str, secs: u64, done: impl Fn(&Job) -> bool) -> Job {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.store.job(id).unwrap();
            if done(&j) {
                return j;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job did not get there in {secs} s: {j:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_finished(&self, id: &str, secs: u64) -> Job {
        self.wait_job(id, secs, |j| {
            matches!(j.status, JobStatus::Completed | JobStatus::Cancelled)
        })
        .await
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client that sends `key` as its bearer token.
pub fn client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A feed client subscribed to one job from the beginning of the log.
pub async fn follow_job(e: &Engine, job: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(e.ws_url("/ws"))
        .await
        .unwrap();
    let sub = serde_json::json!({"type": "subscribe", "jobs": [job], "types": [], "after": 0});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    ws
}

/// Read feed events until `last(event)` holds; returns them all (acks and pongs left out).
pub async fn events_until(ws: &mut Ws, secs: u64, last: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!("the feed did not deliver the end in {secs} s; got {out:#?}")
            })
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v.get("seq").is_none() {
            continue;
        }
        let end = last(&v);
        out.push(v);
        if end {
            return out;
        }
    }
}

/// Fetch an artifact and check that it is a real PNG.
pub async fn assert_png(e: &Engine, artifact: &str) {
    let resp = e
        .http
        .get(format!("{}/api/v1/artifacts/{artifact}", e.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    let png = resp.bytes().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "a real PNG"
    );
}

/// Install the component of a project `faena plugin new permits` wrote (at `wasm`) on a
/// fresh engine with `faena plugin install`, run one job of it through the API, and
/// check that its result's greeting is `greeting`.
pub async fn installed_project_runs(wasm: &std::path::Path, greeting: &str) {
    let e = start(BTreeMap::new(), false, 2).await;
    let out = tokio::process::Command::new(process::faena_bin())
        .arg("plugin")
        .arg("install")
        .arg(wasm)
        .args(["--server", &e.url, "--key", &e.key])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("installed permits"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            serde_json::json!({"plugin": "permits", "operation": "run", "items": [{"input": {"name": "Ana"}}]}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    e.wait_finished(&id, 60).await;
    let item = e.item(&format!("{id}-0"));
    assert_eq!(
        item.result.as_ref().map(|r| r["greeting"].clone()),
        Some(serde_json::json!(greeting)),
        "{item:?}"
    );
}

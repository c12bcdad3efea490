//! Webhooks in-process: a receiver on 127.0.0.1 that checks every signature with its
//! own HMAC code gets each `job_completed` of a batch once, although it answers 500 at
//! first; internal destinations and other tenants are refused; failures turn a
//! subscription off and `enable` resumes it where it stopped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::api::{Api, assert_error};
use common::*;
use faena::api::AppState;
use faena::auth::Role;
use faena::store::{Outcome, Store};
use faena::webhooks::WebhookSettings;
use hmac::{Hmac, Mac};
use poem::http::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const SECRET_BYTES: [u8; 24] = *b"the-receivers-own-secret";

fn secret() -> String {
    format!("whsec_{}", STANDARD.encode(SECRET_BYTES))
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    signed: bool,
    answered: u16,
    body: Value,
}

/// A webhook receiver: answers 500 to its first `fail_first` requests, then 200.
struct Receiver {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    fail_first: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The Standard Webhooks check, written here apart from the engine's code.
fn verify(headers: &poem::http::HeaderMap, body: &[u8]) -> (String, bool) {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&SECRET_BYTES).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let fresh = ts.parse::<i64>().is_ok_and(|t| (t - now).abs() < 300);
    let signed = fresh && sig.split(' ').any(|s| s == expected);
    (id, signed)
}

async fn receiver(fail_first: usize) -> Receiver {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let fail = Arc::new(AtomicUsize::new(fail_first));
    let seen = Arc::new(AtomicUsize::new(0));
    let ep = {
        let (calls, fail) = (calls.clone(), fail.clone());
        poem::endpoint::make(move |req: poem::Request| {
            let (calls, fail, seen) = (calls.clone(), fail.clone(), seen.clone());
            async move {
                let headers = req.headers().clone();
                let body = req.into_body().into_vec().await.unwrap();
                let (id, signed) = verify(&headers, &body);
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let answered = if n < fail.load(Ordering::SeqCst) {
                    500
                } else {
                    200
                };
                calls.lock().unwrap().push(Call {
                    id,
                    signed,
                    answered,
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
                poem::Response::builder()
                    .status(StatusCode::from_u16(answered).unwrap())
                    .finish()
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    let until = stop.clone();
    tokio::spawn(
        poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            ep,
            async move { until.cancelled().await },
            None,
        ),
    );
    Receiver {
        url,
        calls,
        fail_first: fail,
        stop,
    }
}

impl Receiver {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Wait (up to `secs`) until `done` holds of the calls so far.
    async fn until(&self, secs: u64, what: &str, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen in {secs}s; calls: {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn settings(allow: &[&str], max_failures: u32) -> WebhookSettings {
    WebhookSettings {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        max_failures,
        retry_initial_ms: 20,
        retry_max_secs: 1,
        ..Default::default()
    }
}

/// The API as an admin of `default`, with webhooks delivered by their task.
fn app(store: &Store, settings: WebhookSettings, stop: &CancellationToken) -> (AppState, Api) {
    let settings = Arc::new(settings);
    tokio::spawn(faena::webhooks::run(
        store.clone(),
        settings.clone(),
        stop.clone(),
    ));
    let state = AppState::new(store.clone(), None)
        .unwrap()
        .with_webhooks(settings);
    (state.clone(), Api::new(state))
}

async fn wait_webhook(api: &Api, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_get(api, &format!("/api/v1/webhooks/{id}"), what, done).await
}

/// `GET path` until its answer is `done` (at most 30 s).
async fn wait_get(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, w) = api.get(path).await;
        assert_eq!(st, StatusCode::OK, "{w}");
        if done(&w) {
            return w;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {w}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_completed_arrives_once_signed_through_500s() {
    const JOBS: usize = 8;
    const FAILS: usize = 4;
    let e = engine(
        Some(executor("noop", |_, _| async {
            Outcome::Succeeded(json!({}))
        })),
        4,
    )
    .await;
    let stop = CancellationToken::new();
    let (_, api) = app(&e.store, settings(&["127.0.0.1"], 100), &stop);
    let rx = receiver(FAILS).await;
    let (st, created) = api
        .post(
            "/api/v1/webhooks",
            json!({"url": rx.url, "types": ["job_completed"], "secret": secret(),
                   "description": "completions"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert_eq!(created["secret"], secret());
    let hook = created["webhook"]["id"].as_str().unwrap().to_owned();

    let mut jobs = BTreeSet::new();
    for j in 0..JOBS {
        let items: Vec<Value> = (0..3).map(|i| json!({"input": {"j": j, "i": i}})).collect();
        let (st, job) = api
            .post("/api/v1/jobs", json!({"plugin": "noop", "items": items}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{job}");
        jobs.insert(job["id"].as_str().unwrap().to_owned());
    }
    for id in &jobs {
        wait_finished(&e.store, id, 30).await;
    }
    let (_, events) = api
        .get("/api/v1/events?type=job_completed&limit=1000")
        .await;
    let expected: BTreeSet<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ev| format!("evt_{}", ev["seq"]))
        .collect();
    assert_eq!(expected.len(), JOBS, "{events}");

    rx.until(60, "every job_completed delivered", |calls| {
        let ok: BTreeSet<_> = calls
            .iter()
            .filter(|c| c.answered == 200)
            .map(|c| c.id.clone())
            .collect();
        ok == expected
    })
    .await;
    // A moment more: a duplicate would show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = rx.calls();
    assert!(calls.iter().all(|c| c.signed), "a bad signature: {calls:?}");
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls.iter().filter(|c| c.answered == 200) {
        *delivered.entry(c.id.clone()).or_default() += 1;
        assert_eq!(c.body["type"], "job_completed", "{:?}", c.body);
        assert!(
            jobs.contains(c.body["job_id"].as_str().unwrap()),
            "{:?}",
            c.body
        );
        assert_eq!(
            c.id,
            format!("evt_{}", c.body["seq"]),
            "the id names the event"
        );
    }
    assert!(
        delivered.values().all(|n| *n == 1),
        "delivered twice: {delivered:?}"
    );
    let ids: BTreeSet<_> = calls.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, expected, "nothing outside the batch's completions");
    let failed = calls.iter().filter(|c| c.answered == 500).count();
    assert_eq!(failed, FAILS);
    // The first event was retried with the same id until it went through.
    assert!(
        calls[..=FAILS].iter().all(|c| c.id == calls[0].id),
        "{calls:?}"
    );

    let (st, list) = api
        .get(&format!("/api/v1/webhooks/{hook}/deliveries"))
        .await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), JOBS, "{list}");
    assert!(
        deliveries
            .iter()
            .all(|d| d["state"] == "delivered" && d["status_code"] == 200)
    );
    let first = deliveries.last().unwrap();
    assert_eq!(first["attempts"], FAILS + 1, "{first}");
    assert!(
        first["last_error"].as_str().unwrap().contains("500"),
        "{first}"
    );
    let w = wait_webhook(&api, &hook, "cursor at the last completion", |w| {
        w["failures"] == 0
    })
    .await;
    assert!(
        w["enabled"].as_bool().unwrap() && w.get("secret").is_none(),
        "{w}"
    );
    let (_, metrics) = api.send(api.cli.get("/metrics")).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains(&format!(
            "faena_webhook_deliveries_total{{result=\"failed\"}} {FAILS}"
        )) && metrics.contains(&format!(
            "faena_webhook_deliveries_total{{result=\"delivered\"}} {JOBS}"
        )),
        "{metrics}"
    );
    println!(
        "webhooks: {JOBS} job_completed events, {} calls ({failed} answered 500), each id delivered once",
        calls.len()
    );
    stop.cancel();
    e.stop().await;
}

#[tokio::test]
async fn internal_destinations_and_other_tenants_are_refused() {
    let e = engine(None, 1).await;
    let stop = CancellationToken::new();
    let (state, api) = app(&e.store, settings(&[], 20), &stop);
    for url in [
        "http://10.0.0.1/",
        "http://localhost:1/",
        "http://169.254.169.254/latest",
        "http://[::1]:8080/",
    ] {
        let resp = api.post("/api/v1/webhooks", json!({"url": url})).await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid", "url:");
    }
    let resp = api
        .post("/api/v1/webhooks", json!({"url": "ftp://example.com/"}))
        .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid", "url:");
    let resp = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://93.184.216.34/", "secret": "hunter2"}),
        )
        .await;
    assert_error(
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "secret:",
    );
    let resp = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://93.184.216.34/", "types": ["a b"]}),
        )
        .await;
    assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid", "types:");
    let resp = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://93.184.216.34/", "secrets": "x"}),
        )
        .await;
    assert_error(&resp, StatusCode::BAD_REQUEST, "bad_request", "secrets");
    let (_, list) = api.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "nothing written by a refusal");

    // A public address needs no allowlist; the secret is generated and shown once.
    let (st, created) = api
        .post(
            "/api/v1/webhooks",
            json!({"url": "http://93.184.216.34/hook"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let (_, list) = api.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(!list.to_string().contains("whsec_"), "{list}");
    // Sealed at rest: the store's tree does not hold it in the clear.
    let secret = created["secret"].as_str().unwrap();
    let tree = e.store.tree("webhooks").unwrap();
    for kv in tree.iter() {
        let (_, v) = kv.unwrap();
        assert!(!String::from_utf8_lossy(&v).contains(&secret[6..]));
    }

    let key = |tenant: &str, role| state.auth.keys.create(tenant, role, "t", 0).unwrap().1;
    let theirs = Api::with_key(state.clone(), &key("acme", Role::Admin));
    for path in [
        format!("/api/v1/webhooks/{id}"),
        format!("/api/v1/webhooks/{id}/deliveries"),
    ] {
        assert_error(
            &theirs.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            &id,
        );
    }
    let resp = theirs.delete(&format!("/api/v1/webhooks/{id}")).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found", &id);
    let resp = theirs
        .post(&format!("/api/v1/webhooks/{id}/enable"), json!({}))
        .await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found", &id);
    let (_, list) = theirs.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
    // Viewers read, only admins change.
    let viewer = Api::with_key(state.clone(), &key("default", Role::Viewer));
    assert_eq!(
        viewer.get(&format!("/api/v1/webhooks/{id}")).await.0,
        StatusCode::OK
    );
    let operator = Api::with_key(state.clone(), &key("default", Role::Operator));
    let resp = operator
        .post("/api/v1/webhooks", json!({"url": "http://93.184.216.34/"}))
        .await;
    assert_error(&resp, StatusCode::FORBIDDEN, "forbidden", "admin");
    assert_eq!(
        api.delete(&format!("/api/v1/webhooks/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.get(&format!("/api/v1/webhooks/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        &id,
    );
    stop.cancel();
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_turn_it_off_and_enable_resumes_where_it_stopped() {
    let e = engine(None, 1).await;
    let stop = CancellationToken::new();
    let (_, api) = app(&e.store, settings(&["127.0.0.1"], 3), &stop);
    let rx = receiver(usize::MAX).await;
    let (st, created) = api
        .post(
            "/api/v1/webhooks",
            json!({"url": rx.url, "secret": secret()}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let (st, note) = api
        .post("/api/v1/events", json!({"type": "note", "data": {"n": 1}}))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{note}");
    let seq = note["seq"].as_u64().unwrap();

    let off = wait_webhook(&api, &id, "turned off", |w| w["enabled"] == false).await;
    let reason = off["disabled_reason"].as_str().unwrap();
    assert!(
        reason.contains("3 failed calls") && reason.contains("500"),
        "{off}"
    );
    assert_eq!(off["cursor"].as_u64().unwrap(), seq - 1, "{off}");
    let (_, list) = api.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
    let d = &list["deliveries"][0];
    assert_eq!(
        (d["seq"].as_u64(), d["attempts"].as_u64()),
        (Some(seq), Some(3)),
        "{list}"
    );
    assert_eq!(
        (d["state"].as_str(), d["status_code"].as_u64()),
        (Some("pending"), Some(500))
    );
    // The subscription is turned off first, and its event published after.
    let disabled = wait_get(
        &api,
        "/api/v1/events?type=webhook_disabled",
        "the webhook_disabled event",
        |l| !l["events"].as_array().is_none_or(|e| e.is_empty()),
    )
    .await;
    assert_eq!(
        disabled["events"][0]["data"]["webhook_id"],
        id.as_str(),
        "{disabled}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.calls().len(), 3, "no call once it is off");

    rx.fail_first.store(0, Ordering::SeqCst);
    let (st, on) = api
        .post(&format!("/api/v1/webhooks/{id}/enable"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{on}");
    assert_eq!(
        (on["enabled"].as_bool(), on["failures"].as_u64()),
        (Some(true), Some(0))
    );
    let note_id = format!("evt_{seq}");
    rx.until(30, "the note after enable", |calls| {
        calls.iter().any(|c| c.id == note_id && c.answered == 200)
    })
    .await;
    let w = wait_webhook(&api, &id, "cursor past the note", |w| {
        w["cursor"].as_u64() >= Some(seq)
    })
    .await;
    assert_eq!(w["failures"], 0, "{w}");
    stop.cancel();
    e.stop().await;
}

/// The document declares the new routes and still validates.
#[tokio::test]
async fn openapi_declares_the_webhook_routes() {
    let e = engine(None, 1).await;
    let stop = CancellationToken::new();
    let (_, api) = app(&e.store, settings(&[], 20), &stop);
    let (_, spec) = api.get("/openapi.json").await;
    for (path, method) in [
        ("/api/v1/webhooks", "post"),
        ("/api/v1/webhooks", "get"),
        ("/api/v1/webhooks/{id}", "get"),
        ("/api/v1/webhooks/{id}", "delete"),
        ("/api/v1/webhooks/{id}/enable", "post"),
        ("/api/v1/webhooks/{id}/deliveries", "get"),
    ] {
        assert!(
            spec["paths"][path].get(method).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        spec["components"]["schemas"]["NewWebhookBody"]["additionalProperties"],
        false
    );
    let file = e.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the spec:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stop.cancel();
    e.stop().await;
}

//! Hostile options and records: every option bounded before it is stored, unknown
//! fields refused, a record an older version wrote with an overflowing value read
//! without stopping the store, a job that cannot run deleted, and health that says
//! when the engine can no longer write.

mod common;

use common::api::{Api, assert_error};
use common::*;
use faena::api::AppState;
use faena::model::{ErrorKind, ItemError, ItemStatus};
use faena::store::{ClaimRequest, Outcome};
use poem::http::StatusCode;
use serde_json::{Value, json};

async fn setup() -> (Engine, Api) {
    let e = engine(None, 1).await;
    let api = Api::new(AppState::new(e.store.clone(), None).unwrap());
    (e, api)
}

fn job_with(options: Value) -> Value {
    json!({"plugin": "ext", "items": [{"input": {"n": 1}}], "options": options})
}

#[tokio::test]
async fn options_out_of_range_are_refused_naming_the_field() {
    let (e, api) = setup().await;
    for (options, field) in [
        (
            json!({"lease_ms": 9_223_372_036_854_775_807u64}),
            "options.lease_ms",
        ),
        (json!({"lease_ms": u64::MAX}), "options.lease_ms"),
        (json!({"lease_ms": 99}), "options.lease_ms"),
        (
            json!({"backoff_ms": 9_223_372_036_854_775_000u64, "max_backoff_ms": u64::MAX}),
            "options.backoff_ms",
        ),
        (
            json!({"max_backoff_ms": 86_400_001}),
            "options.max_backoff_ms",
        ),
        (json!({"priority": i32::MAX}), "options.priority"),
        (json!({"priority": -1001}), "options.priority"),
        (json!({"concurrency": 10_001}), "options.concurrency"),
        (json!({"max_attempts": 0}), "options.max_attempts"),
        (
            json!({"pool": {"resources": ["a"], "rate_limit_backoff_ms": u64::MAX}}),
            "options.pool.rate_limit_backoff_ms",
        ),
        (
            json!({"pool": {"resources": ["a"], "rate_per_minute": 2_000_000}}),
            "options.pool.rate_per_minute",
        ),
    ] {
        let resp = api.post("/api/v1/jobs", job_with(options.clone())).await;
        assert_error(&resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid", field);
    }
    // A misspelled option, or field, is an error that names it, not a silent default.
    for (body, name) in [
        (job_with(json!({"max_attemps": 5})), "max_attemps"),
        (
            json!({"plugin": "ext", "itmes": [], "items": [{"input": {}}]}),
            "itmes",
        ),
        (
            json!({"plugin": "ext", "items": [{"input": {}, "ref": "OC-1"}]}),
            "ref",
        ),
        (
            job_with(json!({"pool": {"resources": ["a"], "concurency": 2}})),
            "concurency",
        ),
    ] {
        let resp = api.post("/api/v1/jobs", body).await;
        assert_error(&resp, StatusCode::BAD_REQUEST, "bad_request", name);
    }
    // Nothing was written by any of them.
    let (_, jobs) = api.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    // The bounds are in the spec, and so is the refusal of unknown fields.
    let (_, spec) = api.get("/openapi.json").await;
    let opts = &spec["components"]["schemas"]["JobOptions"];
    assert_eq!(opts["properties"]["lease_ms"]["maximum"], 3_600_000.0);
    assert_eq!(opts["properties"]["priority"]["minimum"], -1000.0);
    assert_eq!(opts["additionalProperties"], false);
    assert_eq!(
        spec["components"]["schemas"]["NewJob"]["additionalProperties"],
        false
    );
    e.stop().await;
}

/// A job written by an older version that did not bound its options — a lease and a
/// backoff near `i64::MAX` — is claimed, renewed and retried with its values clamped;
/// the store keeps taking writes for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_record_from_an_older_version_is_clamped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let job = store
        .create_job("default", new_job("old", vec![json!(0)]), None)
        .await
        .unwrap();
    store.close().await;
    // What the older version stored: the options as they came.
    {
        let db = raw_db(dir.path());
        let tree = db.open_tree("faena").unwrap();
        let key = [b"j".as_slice(), job.id.as_bytes()].concat();
        assert!(tree.get(&key).unwrap().is_some());
        // Older versions wrote JSON records, which this one still reads.
        let mut record = serde_json::to_value(&job).unwrap();
        record["options"]["lease_ms"] = json!(9_223_372_036_854_775_807u64);
        record["options"]["backoff_ms"] = json!(u64::MAX);
        record["options"]["max_backoff_ms"] = json!(u64::MAX);
        tree.insert(&key, serde_json::to_vec(&record).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let store = open_store(dir.path()).await;
    let now = store.clock().now_ms();
    let req = ClaimRequest {
        owner: "worker:old".into(),
        tenant: None,
        plugins: vec!["old".into()],
        max: 1,
        lease_ms: None,
        labels: Vec::new(),
        item: None,
    };
    let claimed = store.claim(req.clone()).await.unwrap().items.remove(0);
    assert!(
        claimed.lease_expires_at > now && claimed.lease_expires_at <= now + 3_600_000 + 5_000,
        "the lease is clamped to an hour: {}",
        claimed.lease_expires_at - now
    );
    let lease = store
        .heartbeat(&claimed.item.id, claimed.lease_token, None)
        .await
        .unwrap();
    assert!(lease.expires_at <= store.clock().now_ms() + 3_600_000);
    let item = store
        .complete(
            &claimed.item.id,
            claimed.lease_token,
            Outcome::Failed(ItemError {
                kind: ErrorKind::Application,
                message: "portal down".into(),
                code: None,
                retry_after_ms: Some(u64::MAX),
            }),
        )
        .await
        .unwrap();
    assert_eq!(item.status, ItemStatus::Queued);
    let wait = item.not_before.unwrap() - store.clock().now_ms();
    assert!(
        (0..=86_400_000).contains(&wait),
        "the retry waits at most a day: {wait} ms"
    );
    // The writer is alive: other jobs are created and claimed as usual.
    let other = store
        .create_job("other", new_job("old", vec![json!(1)]), None)
        .await
        .unwrap();
    let mut req = req;
    req.tenant = Some("other".into());
    let next = store.claim(req).await.unwrap().items.remove(0);
    assert_eq!(next.item.job_id, other.id);
    assert!(store.shared().fatal().is_none());
    store.close().await;
}

#[tokio::test]
async fn a_job_is_deleted_once_it_cannot_run() {
    let (e, api) = setup().await;
    let (st, job) = api
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": {"n": 1}}, {"input": {"n": 2}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{job}");
    let id = job["id"].as_str().unwrap();
    let resp = api.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_error(&resp, StatusCode::CONFLICT, "conflict", "cancel it");
    let (st, _) = api
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, deleted) = api.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(st, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["id"], id);
    let (st, _) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = api.get(&format!("/api/v1/items/{id}-0")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let resp = api.delete(&format!("/api/v1/jobs/{id}")).await;
    assert_error(&resp, StatusCode::NOT_FOUND, "not_found", id);
    // The audit trail stays, closed by the deletion.
    let (_, events) = api.get(&format!("/api/v1/events?after=0&job={id}")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"job_deleted"), "{kinds:?}");
    assert_eq!(e.store.metrics().status_count(ItemStatus::Cancelled), 0);
    e.stop().await;
}

#[tokio::test]
async fn health_and_readiness_say_when_the_engine_cannot_write() {
    let (e, api) = setup().await;
    let (st, h) = api.get("/health").await;
    assert_eq!((st, h["status"].clone()), (StatusCode::OK, json!("ok")));
    let (st, _) = api.get("/ready").await;
    assert_eq!(st, StatusCode::OK);
    e.store.shared().set_fatal("the disk failed".into());
    let (st, h) = api.get("/health").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{h}");
    assert_eq!(h["status"], "failed");
    assert_eq!(h["reason"], "the disk failed");
    let (st, _) = api.get("/ready").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    e.stop().await;
}

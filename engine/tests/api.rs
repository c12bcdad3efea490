//! The REST API in-process (poem's TestClient): every route of the contract, its
//! errors, and that a refused request writes nothing.

mod common;

use common::api::{Api, assert_error};
use common::*;
use faena::api::AppState;
use faena::auth::Role;
use poem::http::StatusCode;
use serde_json::{Value, json};

async fn setup() -> (Engine, Api) {
    let e = engine(None, 1).await;
    let api = Api::new(AppState::new(e.store.clone(), None).unwrap());
    (e, api)
}

#[tokio::test]
async fn jobs_create_list_paginate_and_inspect() {
    let (e, api) = setup().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (st, job) = api
            .post("/api/v1/jobs", json!({"plugin": "ext", "name": format!("batch {i}"), "items": [
                {"input": {"n": 1}, "reference": "OC-1"}, {"input": {"n": 2}, "reference": "OC-2"}]}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{job}");
        assert_eq!(job["counts"]["queued"], 2);
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let (st, page) = api.get("/api/v1/jobs?limit=2").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["jobs"][0]["id"], ids[2], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = api
        .get(&format!("/api/v1/jobs?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page2["jobs"][0]["id"], ids[0]);
    assert!(page2["next_cursor"].is_null());
    let (_, filtered) = api.get("/api/v1/jobs?status=completed").await;
    assert_eq!(filtered["jobs"].as_array().unwrap().len(), 0);

    let (st, job) = api.get(&format!("/api/v1/jobs/{}", ids[0])).await;
    assert_eq!(
        (st, job["name"].clone()),
        (StatusCode::OK, json!("batch 0"))
    );
    let (_, items) = api
        .get(&format!("/api/v1/jobs/{}/items?limit=1", ids[0]))
        .await;
    assert_eq!(items["items"][0]["reference"], "OC-1");
    let (_, items) = api
        .get(&format!(
            "/api/v1/jobs/{}/items?cursor={}",
            ids[0],
            items["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items["items"][0]["reference"], "OC-2");
    let (_, items) = api
        .get(&format!(
            "/api/v1/jobs/{}/items?q=OC-2&status=queued",
            ids[0]
        ))
        .await;
    assert_eq!(items["items"].as_array().unwrap().len(), 1);
    let (st, item) = api.get(&format!("/api/v1/items/{}-1", ids[0])).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(item["input"], json!({"n": 2}));
    assert!(item["logs"].is_array());
    e.stop().await;
}

#[tokio::test]
async fn bad_input_is_named_and_writes_nothing() {
    let (e, api) = setup().await;
    assert_error(
        &api.post("/api/v1/jobs", json!({"plugin": "ext", "items": []}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "items",
    );
    assert_error(
        &api.post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "options": {"max_attempts": 0}, "items": [{"input": 1}]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "max_attempts",
    );
    assert_error(
        &api.post("/api/v1/jobs", json!({"plugin": "ext"})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "items",
    );
    assert_error(
        &api.post(
            "/api/v1/jobs",
            json!({"plugin": "no spaces", "items": [{"input": 1}]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "plugin",
    );
    let raw = api
        .send(
            api.cli
                .post("/api/v1/jobs")
                .content_type("application/json")
                .body("{\"plugin\":"),
        )
        .await;
    assert_error(&raw, StatusCode::BAD_REQUEST, "bad_request", "EOF");
    let typed = api
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": 1}], "options": {"priority": "high"}}),
        )
        .await;
    assert_error(
        &typed,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "options.priority",
    );
    assert_error(
        &api.get("/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
    );
    assert_error(
        &api.get("/api/v1/jobs/../../etc").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "",
    );
    assert_error(
        &api.get("/api/v1/items/garbage").await,
        StatusCode::NOT_FOUND,
        "not_found",
        "garbage",
    );
    assert_error(
        &api.get("/api/v1/jobs?status=bogus").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "status",
    );
    assert_error(
        &api.get("/api/v1/jobs?limit=0").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit",
    );
    assert_error(
        &api.get("/api/v1/jobs?cursor=zzz").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "cursor",
    );
    let too_big = api
        .send(
            api.cli
                .post("/api/v1/jobs")
                .content_type("application/json")
                .header("content-length", "999999999")
                .body("{}"),
        )
        .await;
    assert_error(
        &too_big,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "larger",
    );
    let (_, page) = api.get("/api/v1/jobs").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 0);
    let (_, events) = api.get("/api/v1/events").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 0);
    e.stop().await;
}

#[tokio::test]
async fn external_worker_claim_heartbeat_step_complete() {
    let (e, api) = setup().await;
    let (_, job) = api
        .post("/api/v1/jobs", json!({"plugin": "ext", "options": {"on_failure": "review"}, "items": [{"input": 1}, {"input": 2}]}))
        .await;
    let jid = job["id"].as_str().unwrap();
    let item0 = format!("{jid}-0");
    let (st, c) = api
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w1", "item_id": item0}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    let token = c["items"][0]["lease_token"].as_u64().unwrap();
    assert_eq!(c["items"][0]["idempotency_key"], format!("faena-{item0}"));
    // Claiming the same item twice: 409.
    assert_error(
        &api.post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w2", "item_id": item0}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "running",
    );
    assert_error(
        &api.post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w2", "max": 1000}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "max",
    );
    assert_error(
        &api.post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w2", "lease_ms": 1}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "lease_ms",
    );
    // Another plugin's queue has nothing; an empty claim is not an error.
    let (st, none) = api
        .post("/api/v1/queues/other/claim", json!({"worker": "w2"}))
        .await;
    assert_eq!(
        (st, none["items"].as_array().unwrap().len()),
        (StatusCode::OK, 0)
    );

    let (st, lease) = api
        .post(
            &format!("/api/v1/items/{item0}/heartbeat"),
            json!({"token": token, "extend_ms": 60000}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{lease}");
    assert_eq!(lease["owner"], "worker:w1");
    assert_error(
        &api.post(
            &format!("/api/v1/items/{item0}/heartbeat"),
            json!({"token": token + 99}),
        )
        .await,
        StatusCode::CONFLICT,
        "stale_lease",
        "stale",
    );
    let (st, item) = api
        .post(
            &format!("/api/v1/items/{item0}/step"),
            json!({"token": token, "name": "login_ok", "state": "{\"page\":1}"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(item["steps"][0]["name"], "login_ok");
    assert_error(
        &api.post(
            &format!("/api/v1/items/{item0}/complete"),
            json!({"token": token, "status": "failed"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "error",
    );
    assert_error(
        &api.post(
            &format!("/api/v1/items/{item0}/complete"),
            json!({"token": token + 1, "status": "succeeded"}),
        )
        .await,
        StatusCode::CONFLICT,
        "stale_lease",
        "stale",
    );
    let (st, item) = api
        .post(
            &format!("/api/v1/items/{item0}/complete"),
            json!({"token": token, "status": "succeeded", "result": {"request_id": "RQ-1"}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{item}");
    assert_eq!(
        (item["status"].clone(), item["result"]["request_id"].clone()),
        (json!("succeeded"), json!("RQ-1"))
    );

    // The second item fails with a business error: review, then an operator requeues it.
    let (_, c) = api
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w1", "max": 5}),
        )
        .await;
    let item1 = c["items"][0]["item"]["id"].as_str().unwrap().to_owned();
    let t1 = c["items"][0]["lease_token"].as_u64().unwrap();
    let (_, item) = api
        .post(&format!("/api/v1/items/{item1}/complete"), json!({"token": t1, "status": "failed", "error": {"kind": "business", "message": "unknown supplier 20100"}}))
        .await;
    assert_eq!(item["status"], "needs_review");
    let (_, review) = api.get("/api/v1/items?status=needs_review").await;
    assert_eq!(review["items"][0]["id"], item1);
    assert_eq!(
        review["items"][0]["error"]["message"],
        "unknown supplier 20100"
    );
    assert_error(
        &api.post(
            &format!("/api/v1/items/{item0}/transition"),
            json!({"to": "queued"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        "succeeded",
    );
    let (st, moved) = api
        .post(
            &format!("/api/v1/items/{item1}/transition"),
            json!({"to": "queued", "reason": "fixed", "input": 3}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{moved}");
    assert_eq!(
        (moved["status"].clone(), moved["input"].clone()),
        (json!("queued"), json!(3))
    );
    let (_, job) = api.get(&format!("/api/v1/jobs/{jid}")).await;
    assert_eq!(job["status"], "running");
    e.stop().await;
}

#[tokio::test]
async fn job_actions_and_retry() {
    let (e, api) = setup().await;
    let (_, job) = api
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "start": false, "items": [{"input": 1}]}),
        )
        .await;
    let jid = job["id"].as_str().unwrap();
    assert_eq!(job["status"], "pending");
    let (_, none) = api
        .post("/api/v1/queues/ext/claim", json!({"worker": "w"}))
        .await;
    assert_eq!(
        none["items"].as_array().unwrap().len(),
        0,
        "pending jobs are not claimable"
    );
    assert_error(
        &api.post(&format!("/api/v1/jobs/{jid}/resume"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "pending",
    );
    let (st, job) = api
        .post(&format!("/api/v1/jobs/{jid}/start"), json!({}))
        .await;
    assert_eq!(
        (st, job["status"].clone()),
        (StatusCode::OK, json!("running"))
    );
    let (_, c) = api
        .post("/api/v1/queues/ext/claim", json!({"worker": "w"}))
        .await;
    let t = c["items"][0]["lease_token"].as_u64().unwrap();
    let id = c["items"][0]["item"]["id"].as_str().unwrap().to_owned();
    api.post(
        &format!("/api/v1/items/{id}/complete"),
        json!({"token": t, "status": "failed", "error": {"kind": "business", "message": "no"}}),
    )
    .await;
    let (_, job) = api.get(&format!("/api/v1/jobs/{jid}")).await;
    assert_eq!(
        (job["status"].clone(), job["counts"]["failed"].clone()),
        (json!("completed"), json!(1))
    );
    let (st, job) = api
        .post(&format!("/api/v1/jobs/{jid}/retry"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (job["status"].clone(), job["counts"]["queued"].clone()),
        (json!("running"), json!(1))
    );
    let (_, job) = api
        .post(&format!("/api/v1/jobs/{jid}/cancel"), json!({}))
        .await;
    assert_eq!(
        (job["status"].clone(), job["counts"]["cancelled"].clone()),
        (json!("cancelled"), json!(1))
    );
    assert_error(
        &api.post(&format!("/api/v1/jobs/{jid}/retry"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
        "cancelled",
    );
    e.stop().await;
}

#[tokio::test]
async fn events_query_publish_health_metrics() {
    let (e, api) = setup().await;
    let (_, job) = api
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": 1}]}),
        )
        .await;
    let jid = job["id"].as_str().unwrap();
    let (st, ev) = api
        .post(
            "/api/v1/events",
            json!({"type": "invoice_sent", "job_id": jid, "data": {"n": 1}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{ev}");
    assert_eq!(ev["seq"], 3);
    assert_error(
        &api.post("/api/v1/events", json!({"type": "job_completed"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "job_completed",
    );
    assert_error(
        &api.post("/api/v1/events", json!({"type": "lagged"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "lagged",
    );
    assert_error(
        &api.post(
            "/api/v1/events",
            json!({"type": "x", "job_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "job",
    );
    let (_, page) = api.get("/api/v1/events?after=1").await;
    let kinds: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["job_started", "invoice_sent"]);
    let (_, page) = api
        .get(&format!("/api/v1/events?type=invoice_sent&job={jid}"))
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], 3);
    let (st, h) = api.get("/health").await;
    assert_eq!(
        (st, h["status"].clone(), h["last_seq"].clone()),
        (StatusCode::OK, json!("ok"), json!(3))
    );
    let (st, m) = api.get("/metrics").await;
    assert_eq!(st, StatusCode::OK);
    let m = m.as_str().unwrap();
    assert!(m.contains("faena_items{status=\"queued\"} 1"), "{m}");
    assert!(m.contains("faena_queue_depth{plugin=\"ext\"} 1"), "{m}");
    assert!(m.contains("faena_commit_seconds_bucket"), "{m}");
    let (st, _) = api.get("/docs/").await;
    assert_eq!(st, StatusCode::OK);
    e.stop().await;
}

/// `/openapi.json` checked by a real validator (openapi-spec-validator from PyPI).
#[tokio::test]
async fn openapi_spec_validates() {
    let (e, api) = setup().await;
    let (st, spec) = api.get("/openapi.json").await;
    assert_eq!(st, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}/items",
        "/api/v1/items/{id}/transition",
        "/api/v1/queues/{plugin}/claim",
        "/api/v1/events",
        "/api/v1/schedules",
        "/api/v1/schedules/{id}",
        "/api/v1/schedules/{id}/pause",
        "/api/v1/schedules/{id}/resume",
        "/health",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the spec"
        );
    }
    let file = e.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the spec (install it with `pip install openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    e.stop().await;
}

/// What client generators need of the document, and what the engine does to match it.
#[tokio::test]
async fn the_document_is_what_generators_read_and_the_engine_keeps_to_it() {
    let (e, api) = setup().await;
    let (_, spec) = api
        .send(
            api.cli
                .get("/openapi.json")
                .header("host", "faena.example:8443"),
        )
        .await;
    assert_eq!(spec["servers"][0]["url"], "http://faena.example:8443");
    let text = spec.to_string();
    assert!(
        !text.contains("\"allOf\""),
        "no allOf wrapping: generators drop such models"
    );
    for format in ["uint32", "uint64", "int64", "\"uint\""] {
        assert!(!text.contains(format), "{format} maps to no plain number");
    }
    // Shared schemas are split: the request side leaves defaulted fields optional, the
    // response side has them all.
    let schemas = &spec["components"]["schemas"];
    let required = |name: &str| -> Vec<String> {
        serde_json::from_value(schemas[name]["required"].clone()).unwrap_or_default()
    };
    assert!(required("JobOptions").contains(&"on_failure".to_owned()));
    assert!(!required("JobOptionsInput").contains(&"on_failure".to_owned()));
    assert_eq!(
        schemas["NewJob"]["properties"]["options"]["$ref"],
        "#/components/schemas/JobOptionsInput"
    );
    assert!(schemas["JobOptionsInput"]["properties"]["on_failure"]["default"].is_null());
    // Every code an error carries is listed.
    let codes: Vec<String> = serde_json::from_value(schemas["ErrorCode"]["enum"].clone()).unwrap();
    for code in [
        "unauthorized",
        "forbidden",
        "rate_limited",
        "method_not_allowed",
        "unsupported_media_type",
        "business",
        "portal",
        "reference_taken",
    ] {
        assert!(
            codes.contains(&code.to_owned()),
            "{code} missing from {codes:?}"
        );
    }
    // The import's JSON parts are typed.
    let form = &spec["paths"]["/api/v1/jobs/import"]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert_eq!(
        form["schema"]["properties"]["options"]["$ref"],
        "#/components/schemas/JobOptionsInput"
    );
    assert_eq!(
        form["encoding"]["options"]["contentType"],
        "application/json"
    );

    // 405 says what the path takes.
    let resp = api.cli.put("/api/v1/jobs").send().await;
    assert_eq!(resp.0.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.0.headers()["allow"], "GET, HEAD, POST");
    // null where the document has no null is refused, naming the field.
    assert_error(
        &api.post("/api/v1/events", json!({"type": "note", "job_id": null}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "job_id: null",
    );
    assert_error(
        &api.post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": {}, "reference": null}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "items[0].reference: null",
    );
    // null inside an item's free-form input is the item's business.
    let (st, _) = api
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": {"note": null}}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // Bounds the document declares.
    assert_error(
        &api.get("/api/v1/jobs?limit=0").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit",
    );
    assert_error(
        &api.get("/api/v1/jobs?cursor=").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "cursor",
    );
    // Custom events under a topic, listed by topic; the answer is one of the typed
    // events of the document (a custom one, with its topic).
    let (st, ev) = api
        .post(
            "/api/v1/events",
            json!({"type": "alert", "topic": "branch/lima", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{ev}");
    api.post(
        "/api/v1/events",
        json!({"type": "alert", "topic": "branch/cusco"}),
    )
    .await;
    let (_, page) = api.get("/api/v1/events?topic=branch/lima").await;
    assert_eq!(page["events"], json!([ev]));
    assert!(schemas["Event"]["oneOf"].as_array().unwrap().len() > 19);
    assert_error(
        &api.post("/api/v1/events", json!({"type": "alert", "topic": "a b"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "topic",
    );
    // The largest seq has nothing after it (it must not wrap around to the start).
    let (st, page) = api.get(&format!("/api/v1/events?after={}", u64::MAX)).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["events"], json!([]));
    // An Idempotency-Key that is not text is refused, not ignored.
    let resp = api
        .send(
            api.cli
                .post("/api/v1/events")
                .header(
                    "idempotency-key",
                    poem::http::HeaderValue::from_bytes(b"k\xe9y").unwrap(),
                )
                .body_json(&json!({"type": "note"})),
        )
        .await;
    assert_error(
        &resp,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "Idempotency-Key",
    );
    e.stop().await;
}

#[tokio::test]
async fn spreadsheet_import_groups_rows_and_refuses_bad_files_whole() {
    use poem::test::{TestForm, TestFormField};
    let (e, api) = setup().await;
    let csv = "consultora_code;consultora_name;product_code;quantity\nC1;Ana;P1;2\nC2;Bea;P7;1\nC1;Ana;P3;4\n";
    let form = TestForm::new()
        .field(
            TestFormField::bytes(csv.as_bytes().to_vec())
                .name("file")
                .filename("orders.csv"),
        )
        .text("plugin", "gsp")
        .text("group_by", "consultora_code")
        .text("options", r#"{"on_failure": "review"}"#);
    let (st, job) = api
        .send(api.cli.post("/api/v1/jobs/import").multipart(form))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{job}");
    assert_eq!(
        (job["counts"]["queued"].clone(), job["name"].clone()),
        (json!(2), json!("orders.csv"))
    );
    assert_eq!(job["options"]["on_failure"], "review");
    let (_, items) = api
        .get(&format!(
            "/api/v1/jobs/{}/items",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items["items"][0]["reference"], "C1");
    assert_eq!(
        items["items"][0]["input"]["rows"].as_array().unwrap().len(),
        2
    );

    let bad = "code,qty\nA,1\n,2\nB\n";
    let form = TestForm::new()
        .field(
            TestFormField::bytes(bad.as_bytes().to_vec())
                .name("file")
                .filename("bad.csv"),
        )
        .text("plugin", "gsp")
        .text("group_by", "code");
    let resp = api
        .send(api.cli.post("/api/v1/jobs/import").multipart(form))
        .await;
    assert_error(
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "row 4: has 1 cells where the header has 2",
    );
    let form = TestForm::new()
        .field(
            TestFormField::bytes(b"code,qty\nA,1\n,2\n".to_vec())
                .name("file")
                .filename("bad.csv"),
        )
        .text("plugin", "gsp")
        .text("group_by", "code");
    let resp = api
        .send(api.cli.post("/api/v1/jobs/import").multipart(form))
        .await;
    assert_error(
        &resp,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "row 3, column `code`: is empty",
    );
    let (_, page) = api.get("/api/v1/jobs").await;
    assert_eq!(
        page["jobs"].as_array().unwrap().len(),
        1,
        "the bad files created nothing"
    );
    e.stop().await;
}

/// 100,000 items in one request: one atomic write, answered once it is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_creates_100k_items() {
    let (e, api) = setup().await;
    let items: Vec<Value> = (0..100_000)
        .map(|i| json!({"input": {"phone": format!("+51{i:09}")}, "reference": format!("{i}")}))
        .collect();
    let started = std::time::Instant::now();
    let (st, job) = api
        .post("/api/v1/jobs", json!({"plugin": "bulk", "items": items}))
        .await;
    println!("100,000 items over the API in {:?}", started.elapsed());
    assert_eq!(st, StatusCode::CREATED, "{job}");
    assert_eq!(job["counts"]["queued"], 100_000);
    let (_, events) = api.get("/api/v1/events").await;
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        2,
        "job_created and job_started"
    );
    let (_, last) = api
        .get(&format!(
            "/api/v1/items/{}-99999",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(last["reference"], "99999");
    e.stop().await;
}

async fn revoke(api: &Api, id: &str) -> (StatusCode, Value) {
    api.send(api.cli.delete(format!("/api/v1/keys/{id}"))).await
}

/// Every route but `/health` and the API description needs a key; each role may do
/// what it should and no more; keys are created, listed and revoked by admins.
#[tokio::test]
async fn keys_and_roles_guard_every_route() {
    let e = engine(None, 1).await;
    let state = AppState::new(e.store.clone(), None).unwrap();
    let keys = state.auth.keys.clone();
    let key = |tenant: &str, role| keys.create(tenant, role, "t", 0).unwrap().1;
    let as_key = |k: &str| Api::with_key(state.clone(), k);
    let anonymous = as_key("");

    // No key: 401 with the scheme named, except the public routes.
    let resp = anonymous.cli.get("/api/v1/jobs").send().await;
    resp.assert_status(StatusCode::UNAUTHORIZED);
    resp.assert_header("www-authenticate", "Bearer");
    for path in ["/api/v1/jobs", "/metrics", "/ws", "/api/v1/keys"] {
        assert_error(
            &anonymous.get(path).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "API key",
        );
    }
    assert_eq!(anonymous.get("/health").await.0, StatusCode::OK);
    assert_eq!(anonymous.get("/openapi.json").await.0, StatusCode::OK);
    for bad in ["fk_k000000000000_00", "Basic abc", "nonsense"] {
        assert_error(
            &as_key(bad).get("/api/v1/jobs").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or was revoked",
        );
    }

    // A viewer reads; it may not create.
    let viewer = as_key(&key("default", Role::Viewer));
    assert_eq!(viewer.get("/api/v1/jobs").await.0, StatusCode::OK);
    let job = json!({"plugin": "ext", "items": [{"input": 1}]});
    assert_error(
        &viewer.post("/api/v1/jobs", job.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "operator",
    );
    // An operator runs jobs; secrets, keys and plugins are for admins.
    let operator = as_key(&key("default", Role::Operator));
    assert_eq!(
        operator.post("/api/v1/jobs", job.clone()).await.0,
        StatusCode::CREATED
    );
    let put_secret = operator
        .send(
            operator
                .cli
                .put("/api/v1/secrets/portal_password")
                .body_json(&json!({"value": "s3cret"})),
        )
        .await;
    assert_error(&put_secret, StatusCode::FORBIDDEN, "forbidden", "admin");
    assert_error(
        &operator
            .post("/api/v1/keys", json!({"name": "x", "role": "admin"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "admin",
    );
    assert_eq!(
        e.store.keys().unwrap().list(None).unwrap().len(),
        2,
        "nothing written"
    );

    // An admin of another tenant manages its own tenant only, and installs no plugins.
    let acme_admin = as_key(&key("acme", Role::Admin));
    assert_error(
        &acme_admin
            .post(
                "/api/v1/keys",
                json!({"name": "x", "role": "viewer", "tenant": "default"}),
            )
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "tenant `default`",
    );
    let install = acme_admin
        .send(
            acme_admin
                .cli
                .post("/api/v1/plugins")
                .content_type("application/wasm")
                .body(b"\0asm".to_vec()),
        )
        .await;
    assert_error(
        &install,
        StatusCode::FORBIDDEN,
        "forbidden",
        "`default` tenant",
    );
    assert_error(
        &acme_admin.get("/metrics").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "every tenant",
    );
    assert_eq!(viewer.get("/metrics").await.0, StatusCode::OK);
    let (st, made) = acme_admin
        .post(
            "/api/v1/keys",
            json!({"name": "acme robot", "role": "operator"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    assert_eq!(made["key"]["tenant"], "acme");
    let (_, listed) = acme_admin.get("/api/v1/keys").await;
    let tenants: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["acme", "acme"], "{listed}");
    assert!(
        listed.to_string().find("fk_").is_none(),
        "no token is ever listed"
    );

    // The engine's admin creates a key for a tenant, which works until revoked.
    let root_key = key("default", Role::Admin);
    let root = as_key(&root_key);
    let (st, made) = root
        .post(
            "/api/v1/keys",
            json!({"name": "globex viewer", "role": "viewer", "tenant": "globex"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{made}");
    let token = made["token"].as_str().unwrap();
    let id = made["key"]["id"].as_str().unwrap();
    assert_eq!(as_key(token).get("/api/v1/jobs").await.0, StatusCode::OK);
    let (st, listed) = root.get("/api/v1/keys").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 6, "{listed}");
    assert_error(
        &root
            .post("/api/v1/keys", json!({"name": "x", "role": "owner"}))
            .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "role",
    );
    assert_error(
        &root
            .post(
                "/api/v1/keys",
                json!({"name": "x", "role": "viewer", "tenant": "Not A Tenant"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "tenant",
    );
    assert_eq!(revoke(&root, id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &as_key(token).get("/api/v1/jobs").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "revoked",
    );
    // Another tenant's admin cannot see or revoke the engine's keys.
    let root_id = root_key.split('_').nth(1).unwrap();
    assert_eq!(revoke(&acme_admin, root_id).await.0, StatusCode::NOT_FOUND);
    assert_error(
        &revoke(&root, root_id).await,
        StatusCode::CONFLICT,
        "conflict",
        "itself",
    );

    // The API description tells generated clients to send the key.
    let (_, spec) = anonymous.get("/openapi.json").await;
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(spec["security"], json!([{"bearer": []}]));
    assert_eq!(spec["paths"]["/health"]["get"]["security"], json!([]));
    assert!(spec["paths"]["/api/v1/jobs"]["post"]["responses"]["429"].is_object());
    e.stop().await;
}

/// A tenant's key sees and touches nothing of another tenant: jobs, items, events,
/// artifacts, secrets and the worker queue.
#[tokio::test]
async fn a_tenant_sees_nothing_of_another() {
    let e = engine(None, 1).await;
    let state = AppState::new(e.store.clone(), None).unwrap();
    let key = |tenant: &str| {
        state
            .auth
            .keys
            .create(tenant, Role::Admin, "t", 0)
            .unwrap()
            .1
    };
    let ours = Api::with_key(state.clone(), &key("default"));
    let theirs = Api::with_key(state.clone(), &key("acme"));

    let (_, job) = ours
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": {"n": 1}, "reference": "OC-1"}]}),
        )
        .await;
    let jid = job["id"].as_str().unwrap().to_owned();
    let (_, items) = ours.get(&format!("/api/v1/jobs/{jid}/items")).await;
    let iid = items["items"][0]["id"].as_str().unwrap().to_owned();
    let artifact = state
        .artifacts
        .save(
            faena::artifacts::Artifact {
                id: String::new(),
                tenant: "default".into(),
                job_id: Some(jid.clone()),
                item_id: Some(iid.clone()),
                session_id: None,
                name: "receipt.txt".into(),
                content_type: "text/plain".into(),
                size: 0,
                created_at: 0,
            },
            b"ours".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(
        ours.get(&format!("/api/v1/artifacts/{}", artifact.id))
            .await
            .0,
        StatusCode::OK
    );
    let put = ours
        .cli
        .put("/api/v1/secrets/portal_password")
        .body_json(&json!({"value": "s3cret"}));
    assert_eq!(ours.send(put).await.0, StatusCode::NO_CONTENT);

    // Reads: 404 for what is named, empty lists for the rest.
    for path in [
        format!("/api/v1/jobs/{jid}"),
        format!("/api/v1/jobs/{jid}/items"),
        format!("/api/v1/items/{iid}"),
        format!("/api/v1/items/{iid}/artifacts"),
        format!("/api/v1/artifacts/{}", artifact.id),
    ] {
        assert_error(
            &theirs.get(&path).await,
            StatusCode::NOT_FOUND,
            "not_found",
            "not found",
        );
    }
    let (_, jobs) = theirs.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]));
    let (_, queued) = theirs.get("/api/v1/items?status=queued").await;
    assert_eq!(queued["items"], json!([]));
    let (_, events) = theirs.get("/api/v1/events").await;
    assert_eq!(events["events"], json!([]), "{events}");
    let (_, secrets) = theirs.get("/api/v1/secrets").await;
    assert_eq!(secrets["names"], json!([]));

    // Writes: 404, and nothing changes.
    for path in [
        format!("/api/v1/jobs/{jid}/cancel"),
        format!("/api/v1/jobs/{jid}/pause"),
        format!("/api/v1/items/{iid}/retry"),
    ] {
        assert_eq!(
            theirs.post(&path, json!({})).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        theirs
            .post(
                &format!("/api/v1/items/{iid}/transition"),
                json!({"to": "cancelled"})
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_error(
        &theirs
            .post(
                "/api/v1/events",
                json!({"type": "note", "job_id": jid, "data": {}}),
            )
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        "job",
    );
    let (st, claimed) = theirs
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "acme-1", "lease_ms": 5000}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["items"], json!([]), "another tenant's item");
    let job_now = e.store.job(&jid).unwrap();
    assert_eq!(job_now.counts.queued, 1, "untouched: {job_now:?}");

    // Their own job is theirs alone.
    let (st, mine) = theirs
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": 2}]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(mine["tenant"], "acme");
    let (_, listed) = ours.get("/api/v1/jobs").await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["jobs"][0]["id"], jid.as_str());
    let (_, events) = theirs.get("/api/v1/events").await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|ev| ev["job_id"] == mine["id"]),
        "{events}"
    );
    e.stop().await;
}

/// Over its rate a key gets 429 with `Retry-After`; other keys go on.
#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after() {
    let e = engine(None, 1).await;
    let state = AppState::new(e.store.clone(), None)
        .unwrap()
        .with_rate_limit(faena::auth::RateLimit {
            per_sec: 0.5,
            burst: 3.0,
        });
    let key = |name: &str| {
        state
            .auth
            .keys
            .create("default", Role::Viewer, name, 0)
            .unwrap()
            .1
    };
    let busy = Api::with_key(state.clone(), &key("busy"));
    let calm = Api::with_key(state.clone(), &key("calm"));
    for _ in 0..3 {
        assert_eq!(busy.get("/api/v1/jobs").await.0, StatusCode::OK);
    }
    let resp = busy.cli.get("/api/v1/jobs").send().await;
    resp.assert_status(StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.0.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value =
        serde_json::from_str(&resp.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("retry after"));
    assert_eq!(calm.get("/api/v1/jobs").await.0, StatusCode::OK);
    // The public routes are not counted.
    assert_eq!(busy.get("/health").await.0, StatusCode::OK);
    e.stop().await;
}

/// A page on a listed origin may call the API: its preflight is answered before any
/// key is asked for, and every answer (a 401 too) carries the CORS headers a browser
/// needs to let the page read it. Other origins get nothing of the kind.
#[tokio::test]
async fn pages_of_a_listed_origin_may_call_the_api() {
    let e = engine(None, 1).await;
    let state = AppState::new(e.store.clone(), None)
        .unwrap()
        .with_cors_origins(vec!["http://app.example:3000".into()])
        .unwrap();
    let (_, key) = state
        .auth
        .keys
        .create("default", Role::Operator, "t", 0)
        .unwrap();
    let api = Api::with_key(state.clone(), "");
    let app = "http://app.example:3000";
    let preflight = api
        .cli
        .options("/api/v1/jobs")
        .header("origin", app)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await;
    preflight.assert_status_is_ok();
    preflight.assert_header("access-control-allow-origin", app);
    let allowed = preflight
        .0
        .headers()
        .get("access-control-allow-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key"), "{allowed}");

    let created = api
        .cli
        .post("/api/v1/jobs")
        .header("origin", app)
        .header("authorization", format!("Bearer {key}"))
        .body_json(&json!({"plugin": "ext", "items": [{"input": 1}]}))
        .send()
        .await;
    created.assert_status(StatusCode::CREATED);
    created.assert_header("access-control-allow-origin", app);
    let exposed = created
        .0
        .headers()
        .get("access-control-expose-headers")
        .unwrap()
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("retry-after") && exposed.contains("idempotency-replayed"),
        "{exposed}"
    );
    // A refused key is readable by the page, not a bare network error.
    let refused = api
        .cli
        .get("/api/v1/jobs")
        .header("origin", app)
        .send()
        .await;
    refused.assert_status(StatusCode::UNAUTHORIZED);
    refused.assert_header("access-control-allow-origin", app);

    // An origin not listed, and an engine that lists none: no CORS headers at all.
    let other = api
        .cli
        .options("/api/v1/jobs")
        .header("origin", "http://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await;
    assert!(
        other
            .0
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let plain = Api::with_key(AppState::new(e.store.clone(), None).unwrap(), &key);
    let resp = plain
        .cli
        .get("/api/v1/jobs")
        .header("origin", app)
        .send()
        .await;
    resp.assert_status_is_ok();
    assert!(
        resp.0
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // The configuration takes origins only.
    for bad in [
        "app.example",
        "https://app.example/path",
        "ftp://app.example",
    ] {
        assert!(
            AppState::new(e.store.clone(), None)
                .unwrap()
                .with_cors_origins(vec![bad.into()])
                .is_err(),
            "{bad}"
        );
    }
}

/// `PUT` a kept portal state as `api`.
async fn put_state(api: &Api, path: &str, body: &'static [u8]) -> StatusCode {
    api.cli
        .put(path)
        .content_type("application/octet-stream")
        .body(body)
        .send()
        .await
        .0
        .status()
}

/// `GET` a kept portal state as `api`: the status and the raw body.
async fn get_state(api: &Api, path: &str) -> (StatusCode, Vec<u8>) {
    let resp = api.cli.get(path).send().await.0;
    let status = resp.status();
    (
        status,
        resp.into_body().into_bytes().await.unwrap().to_vec(),
    )
}

/// A running item's kept portal state through the worker protocol: only worker keys
/// read or replace it (a viewer sees the lease token, so the token alone is no
/// credential), it is sealed at rest, a stale lease gets 409, and it is gone once the
/// item ends — completed, or its job cancelled.
#[tokio::test]
async fn kept_portal_state_is_for_the_worker_holding_the_lease() {
    let e = engine(None, 1).await;
    let state = AppState::new(e.store.clone(), None).unwrap();
    let keys = state.auth.keys.clone();
    let key = |role| keys.create("default", role, "t", 0).unwrap().1;
    let admin = Api::with_key(state.clone(), &key(Role::Admin));
    let viewer = Api::with_key(state.clone(), &key(Role::Viewer));
    let worker = Api::with_key(state.clone(), &key(Role::Worker));
    let (_, job) = admin
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ext", "items": [{"input": 1}, {"input": 2}]}),
        )
        .await;
    let jid = job["id"].as_str().unwrap().to_owned();
    // Claimed through the queue route (a worker key claims through its own, with
    // secrets, which this test does not need); the lease is what the state hangs on.
    let (st, c) = admin
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w1", "max": 2}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{c}");
    let lease = |i: usize| {
        (
            c["items"][i]["item"]["id"].as_str().unwrap().to_owned(),
            c["items"][i]["lease_token"].as_u64().unwrap(),
        )
    };
    let (item, token) = lease(0);
    let path = |token: u64| format!("/api/v1/items/{item}/state?token={token}");
    let cookie = b"portal_sid=7f3c9d2e-secret-session";

    // Nothing kept yet: 204.
    assert_eq!(
        get_state(&worker, &path(token)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put_state(&worker, &path(token), cookie).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_state(&worker, &path(token)).await,
        (StatusCode::OK, cookie.to_vec())
    );
    // Viewers and admins get 403 with the very token a viewer can read.
    for api in [&viewer, &admin] {
        assert_eq!(get_state(api, &path(token)).await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            put_state(api, &path(token), b"planted=1").await,
            StatusCode::FORBIDDEN
        );
    }
    // A stale token: 409, and nothing changes.
    assert_eq!(
        get_state(&worker, &path(token + 1)).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        put_state(&worker, &path(token + 1), b"planted=1").await,
        StatusCode::CONFLICT
    );
    assert_eq!(e.store.kept_state(&item).unwrap().unwrap(), cookie.to_vec());
    // Sealed at rest: the value is nowhere in the database in the clear.
    let clear = e
        .store
        .tree("faena")
        .unwrap()
        .iter()
        .any(|kv| kv.unwrap().1.windows(cookie.len()).any(|w| w == cookie));
    assert!(!clear, "the kept cookie is stored in the clear");

    // Completed: gone, and the route answers 409 for the finished item.
    let (st, body) = worker
        .post(
            &format!("/api/v1/items/{item}/complete"),
            json!({"token": token, "status": "succeeded", "result": {}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(e.store.kept_state(&item).unwrap(), None);
    assert_eq!(
        get_state(&worker, &path(token)).await.0,
        StatusCode::CONFLICT
    );

    // The other item keeps a state, then its job is cancelled: gone too.
    let (other, other_token) = lease(1);
    let other_path = format!("/api/v1/items/{other}/state?token={other_token}");
    assert_eq!(
        put_state(&worker, &other_path, b"sid=2").await,
        StatusCode::NO_CONTENT
    );
    assert!(e.store.kept_state(&other).unwrap().is_some());
    let (st, body) = admin
        .post(&format!("/api/v1/jobs/{jid}/cancel"), json!({}))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(e.store.kept_state(&other).unwrap(), None);
}

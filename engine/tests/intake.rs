//! Intake a client can retry: `Idempotency-Key` on the routes that create, unique
//! references per tenant, plugin and operation, and jobs that wait for a person.

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

/// A POST with an `Idempotency-Key`: status, body and whether it was a replay.
async fn post_with_key(
    api: &Api,
    path: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Value, bool) {
    let resp = api
        .cli
        .post(path)
        .header("Idempotency-Key", key)
        .body_json(body)
        .send()
        .await;
    let status = resp.0.status();
    let replayed = resp
        .0
        .headers()
        .get("Idempotency-Replayed")
        .is_some_and(|v| v == "true");
    let text = resp.0.into_body().into_string().await.unwrap();
    (status, serde_json::from_str(&text).unwrap(), replayed)
}

/// The API as an operator of another tenant, `acme`.
fn acme_operator(e: &Engine) -> Api {
    let state = AppState::new(e.store.clone(), None).unwrap();
    let (_, key) = state
        .auth
        .keys
        .create("acme", Role::Operator, "t", 0)
        .unwrap();
    Api::with_key(state, &key)
}

async fn job_count(api: &Api) -> usize {
    let (_, page) = api.get("/api/v1/jobs?limit=1000").await;
    page["jobs"].as_array().unwrap().len()
}

fn order_batch(refs: &[&str]) -> Value {
    json!({"plugin": "ext", "name": "orders", "items": refs.iter().map(|r| json!({"input": {"order": r}, "reference": r})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_retried_create_answers_the_first_job_and_survives_a_restart() {
    let (e, api) = setup().await;
    let body = order_batch(&["OC-1", "OC-2"]);
    let (st, first, replayed) = post_with_key(&api, "/api/v1/jobs", "erp-batch-7", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert!(!replayed, "the first answer is no replay");
    let (st, again, replayed) = post_with_key(&api, "/api/v1/jobs", "erp-batch-7", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{again}");
    assert!(replayed, "the second answer says it is a replay");
    assert_eq!(again, first, "the same answer, whole");
    assert_eq!(job_count(&api).await, 1, "one job");

    // The same key with another request is refused, and writes nothing.
    let other = order_batch(&["OC-9"]);
    let (st, refused, _) = post_with_key(&api, "/api/v1/jobs", "erp-batch-7", &other).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{refused}"
    );
    // A key is the tenant's own: another tenant's same key is another request.
    let acme = acme_operator(&e);
    let (st, theirs, replayed) = post_with_key(&acme, "/api/v1/jobs", "erp-batch-7", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{theirs}");
    assert!(!replayed);
    assert_ne!(theirs["id"], first["id"]);
    // Keys that are not keys.
    for bad in ["", &"k".repeat(256), "with space"] {
        let (st, msg, _) = post_with_key(&api, "/api/v1/jobs", bad, &body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "`{bad}`: {msg}");
    }
    assert_eq!(job_count(&api).await, 1, "still one job of `default`");

    // The engine stops between the two posts: the key was stored with the job.
    drop((api, acme));
    let dir = e.stop().await;
    let store = open_store(dir.path()).await;
    let api = Api::new(AppState::new(store.clone(), None).unwrap());
    let (st, after, replayed) = post_with_key(&api, "/api/v1/jobs", "erp-batch-7", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{after}");
    assert!(replayed);
    assert_eq!(after, first);
    assert_eq!(job_count(&api).await, 1);
    store.close().await;
}

#[tokio::test(start_paused = true)]
async fn an_idempotency_key_is_forgotten_after_its_time() {
    let (_e, api) = setup().await;
    let (st, first, _) = post_with_key(&api, "/api/v1/jobs", "k", &order_batch(&["OC-1"])).await;
    assert_eq!(st, StatusCode::CREATED);
    // Past the day a key is kept (and past the sweeps that run meanwhile), the key is
    // free for another request.
    tokio::time::sleep(std::time::Duration::from_secs(25 * 3600)).await;
    let (st, second, replayed) =
        post_with_key(&api, "/api/v1/jobs", "k", &order_batch(&["OC-2"])).await;
    assert_eq!(st, StatusCode::CREATED, "{second}");
    assert!(!replayed);
    assert_ne!(second["id"], first["id"]);
}

#[tokio::test]
async fn requests_with_one_key_at_once_make_one_job() {
    let (_e, api) = setup().await;
    let api = std::sync::Arc::new(api);
    let body = order_batch(&["OC-1"]);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (api, body) = (api.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_with_key(&api, "/api/v1/jobs", "same", &body).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (st, answer, _) = t.await.unwrap();
        match st {
            StatusCode::CREATED => {
                ids.insert(answer["id"].as_str().unwrap().to_owned());
            }
            StatusCode::CONFLICT => assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("being answered"),
                "{answer}"
            ),
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(ids.len(), 1, "every created answer names one job");
    assert_eq!(job_count(&api).await, 1);
}

/// A gsp import of `csv` whose items take their reference from its `code` column.
fn orders_form(csv: &str) -> poem::test::TestForm {
    poem::test::TestForm::new()
        .field(
            poem::test::TestFormField::bytes(csv.as_bytes().to_vec())
                .name("file")
                .filename("orders.csv"),
        )
        .text("plugin", "gsp")
        .text("reference", "code")
}

#[tokio::test]
async fn a_retried_import_or_event_is_made_once() {
    let (_e, api) = setup().await;
    let csv = "code;product\nC1;P1\nC2;P2\n";
    let import = |csv: &str, key: &str| {
        api.cli
            .post("/api/v1/jobs/import")
            .header("Idempotency-Key", key)
            .multipart(orders_form(csv))
            .send()
    };
    let first = import(csv, "upload-1").await;
    first.assert_status(StatusCode::CREATED);
    let first: Value = first.json().await.value().deserialize();
    let again = import(csv, "upload-1").await;
    again.assert_status(StatusCode::CREATED);
    again.assert_header("Idempotency-Replayed", "true");
    let again: Value = again.json().await.value().deserialize();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(job_count(&api).await, 1);
    // Another file under the same key.
    let other = import("code;product\nC3;P3\n", "upload-1").await;
    other.assert_status(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(job_count(&api).await, 1);

    let event = json!({"type": "invoice_sent", "data": {"invoice": "F-1"}});
    let (st, e1, r1) = post_with_key(&api, "/api/v1/events", "inv-F-1", &event).await;
    let (st2, e2, r2) = post_with_key(&api, "/api/v1/events", "inv-F-1", &event).await;
    assert_eq!(
        (st, st2, r1, r2),
        (StatusCode::CREATED, StatusCode::CREATED, false, true)
    );
    assert_eq!(e1, e2, "the same event, same seq");
    let (_, stored) = api.get("/api/v1/events?type=invoice_sent").await;
    assert_eq!(stored["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_spec_declares_the_idempotency_key() {
    let (_e, api) = setup().await;
    let (_, spec) = api.get("/openapi.json").await;
    for path in ["/api/v1/jobs", "/api/v1/jobs/import", "/api/v1/events"] {
        let params = spec["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has parameters"));
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
            "{path}: {params:?}"
        );
        let created = &spec["paths"][path]["post"]["responses"]["201"];
        assert!(
            created["headers"].as_object().is_some_and(|h| h
                .keys()
                .any(|k| k.eq_ignore_ascii_case("Idempotency-Replayed"))),
            "{path}: {created}"
        );
    }
    let policy = &spec["components"]["schemas"]["ReferencePolicy"]["enum"];
    assert_eq!(policy, &json!(["allow", "reject", "skip"]));
}

/// Claim the items of `plugin`'s queue and fail `reference`'s for good (the others
/// succeed).
async fn fail_reference(api: &Api, plugin: &str, reference: &str) {
    let (_, claimed) = api
        .post(
            &format!("/api/v1/queues/{plugin}/claim"),
            json!({"worker": "w", "max": 100}),
        )
        .await;
    let mut found = false;
    for c in claimed["items"].as_array().unwrap() {
        let id = c["item"]["id"].as_str().unwrap();
        let token = c["lease_token"].as_u64().unwrap();
        let body = if c["item"]["reference"] == reference {
            found = true;
            json!({"token": token, "status": "failed", "error": {"kind": "business", "message": "refused"}})
        } else {
            json!({"token": token, "status": "succeeded", "result": {}})
        };
        let (st, item) = api
            .post(&format!("/api/v1/items/{id}/complete"), body)
            .await;
        assert_eq!(st, StatusCode::OK, "{item}");
    }
    assert!(found, "{reference} was claimed: {claimed}");
}

#[tokio::test]
async fn unique_references_refuse_or_skip_what_is_taken() {
    let (e, api) = setup().await;
    let with = |refs: &[&str], policy: &str| {
        let mut b = order_batch(refs);
        b["options"] = json!({"unique_references": policy});
        b
    };
    let (st, first) = api
        .post("/api/v1/jobs", order_batch(&["OC-1", "OC-2"]))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{first}");

    // reject: 409 listing the taken ones, nothing written.
    let refused = api
        .post("/api/v1/jobs", with(&["OC-2", "OC-3", "OC-1"], "reject"))
        .await;
    assert_error(&refused, StatusCode::CONFLICT, "reference_taken", "OC-2");
    assert_eq!(refused.1["references"], json!(["OC-2", "OC-1"]));
    assert_eq!(job_count(&api).await, 1);
    // A reference repeated inside one request is taken by its first item.
    let twice = api
        .post("/api/v1/jobs", with(&["OC-5", "OC-5"], "reject"))
        .await;
    assert_error(&twice, StatusCode::CONFLICT, "reference_taken", "OC-5");

    // skip: the duplicates are left out and listed.
    let (st, skipping) = api
        .post("/api/v1/jobs", with(&["OC-1", "OC-3", "OC-3"], "skip"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{skipping}");
    assert_eq!(skipping["counts"]["queued"], 1);
    assert_eq!(
        skipping["skipped"],
        json!({"count": 2, "references": ["OC-1", "OC-3"]})
    );
    let (_, items) = api
        .get(&format!(
            "/api/v1/jobs/{}/items",
            skipping["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items["items"][0]["reference"], "OC-3");
    assert_eq!(
        items["items"][0]["id"],
        format!("{}-0", skipping["id"].as_str().unwrap())
    );
    // Nothing left to create: refused, naming them.
    let all_taken = api
        .post("/api/v1/jobs", with(&["OC-1", "OC-2"], "skip"))
        .await;
    assert_error(&all_taken, StatusCode::CONFLICT, "reference_taken", "OC-1");

    // Unique per plugin and operation: another plugin may use the same reference.
    let mut other_plugin = with(&["OC-1"], "reject");
    other_plugin["plugin"] = json!("ext2");
    let (st, _) = api.post("/api/v1/jobs", other_plugin).await;
    assert_eq!(st, StatusCode::CREATED);
    let mut other_op = with(&["OC-1"], "reject");
    other_op["operation"] = json!("cancel_order");
    let (st, _) = api.post("/api/v1/jobs", other_op).await;
    assert_eq!(st, StatusCode::CREATED);

    // A failed order can be sent again; so can one whose job was cancelled.
    let mut placed = with(&["OC-7"], "reject");
    placed["plugin"] = json!("ext3");
    let (st, first_try) = api.post("/api/v1/jobs", placed.clone()).await;
    assert_eq!(st, StatusCode::CREATED);
    let again = api.post("/api/v1/jobs", placed.clone()).await;
    assert_error(&again, StatusCode::CONFLICT, "reference_taken", "OC-7");
    fail_reference(&api, "ext3", "OC-7").await;
    let (st, retry) = api.post("/api/v1/jobs", placed).await;
    assert_eq!(st, StatusCode::CREATED, "{retry}");
    // The failed item let go of OC-7 and the new job holds it: sending the failed one
    // again would place the order twice, by item or by job.
    let first_try = first_try["id"].as_str().unwrap();
    for path in [
        format!("/api/v1/items/{first_try}-0/retry"),
        format!("/api/v1/jobs/{first_try}/retry"),
    ] {
        let refused = api.post(&path, json!({})).await;
        assert_error(&refused, StatusCode::CONFLICT, "reference_taken", "OC-7");
    }
    let (_, item) = api.get(&format!("/api/v1/items/{first_try}-0")).await;
    assert_eq!(item["status"], "failed", "{item}");
    // A reference is one line of text.
    let bad = api
        .post("/api/v1/jobs", with(&["OC\u{0}1"], "reject"))
        .await;
    assert_error(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        "control characters",
    );
    let (st, _) = api
        .post(
            &format!("/api/v1/jobs/{}/cancel", skipping["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, again) = api.post("/api/v1/jobs", with(&["OC-3"], "reject")).await;
    assert_eq!(st, StatusCode::CREATED, "{again}");
    // allow is today's behaviour.
    let (st, _) = api.post("/api/v1/jobs", with(&["OC-2"], "allow")).await;
    assert_eq!(st, StatusCode::CREATED);

    // Another tenant's references are its own.
    let acme = acme_operator(&e);
    let (st, theirs) = acme.post("/api/v1/jobs", with(&["OC-2"], "reject")).await;
    assert_eq!(st, StatusCode::CREATED, "{theirs}");
}

#[tokio::test]
async fn an_imported_spreadsheet_twice_is_refused_or_skipped_by_reference() {
    let (_e, api) = setup().await;
    let import = |csv: &str, policy: &str| {
        let form =
            orders_form(csv).text("options", format!(r#"{{"unique_references": "{policy}"}}"#));
        api.cli.post("/api/v1/jobs/import").multipart(form).send()
    };
    let csv = "code;product\nC1;P1\nC2;P2\nC3;P3\n";
    let first = import(csv, "reject").await;
    first.assert_status(StatusCode::CREATED);
    let refused = import(csv, "reject").await;
    refused.assert_status(StatusCode::CONFLICT);
    let body: Value = refused.json().await.value().deserialize();
    assert_eq!(body["error"], "reference_taken");
    assert_eq!(body["references"], json!(["C1", "C2", "C3"]));
    assert_eq!(
        job_count(&api).await,
        1,
        "nothing of the refused import stays"
    );
    let with_new_row = format!("{csv}C4;P4\n");
    let skipping = import(&with_new_row, "skip").await;
    skipping.assert_status(StatusCode::CREATED);
    let job: Value = skipping.json().await.value().deserialize();
    assert_eq!(job["counts"]["queued"], 1);
    assert_eq!(job["skipped"]["count"], 3);
    let (_, items) = api
        .get(&format!(
            "/api/v1/jobs/{}/items",
            job["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items["items"].as_array().unwrap().len(), 1);
    assert_eq!(items["items"][0]["reference"], "C4");
}

#[tokio::test]
async fn a_job_waiting_for_review_completes_when_the_last_item_is_resolved() {
    let (_e, api) = setup().await;
    let mut body = order_batch(&["OC-1", "OC-2", "OC-3"]);
    body["options"] = json!({"on_failure": "review"});
    let (_, job) = api.post("/api/v1/jobs", body).await;
    let id = job["id"].as_str().unwrap().to_owned();
    // OC-1 succeeds, OC-2 and OC-3 are refused by the portal: review.
    let (_, claimed) = api
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w", "max": 10}),
        )
        .await;
    for c in claimed["items"].as_array().unwrap() {
        let item = c["item"]["id"].as_str().unwrap();
        let token = c["lease_token"].as_u64().unwrap();
        let body = if c["item"]["reference"] == "OC-1" {
            json!({"token": token, "status": "succeeded", "result": {}})
        } else {
            json!({"token": token, "status": "failed", "error": {"kind": "business", "message": "unknown supplier"}})
        };
        let (st, _) = api
            .post(&format!("/api/v1/items/{item}/complete"), body)
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (_, waiting) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (
            waiting["status"].clone(),
            waiting["awaiting_review"].clone()
        ),
        (json!("running"), json!(true)),
        "{waiting}"
    );
    let types = |events: &Value| -> Vec<String> {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .filter(|t| t.starts_with("job_"))
            .collect()
    };
    let (_, events) = api.get(&format!("/api/v1/events?job={id}")).await;
    assert_eq!(
        types(&events),
        ["job_created", "job_started", "job_awaiting_review"]
    );

    // One is sent back and succeeds: the job still waits for the other.
    let (st, _) = api
        .post(
            &format!("/api/v1/items/{id}-1/transition"),
            json!({"to": "queued"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["awaiting_review"], false, "working again: {job}");
    let (_, claimed) = api
        .post(
            "/api/v1/queues/ext/claim",
            json!({"worker": "w", "max": 10}),
        )
        .await;
    let token = claimed["items"][0]["lease_token"].as_u64().unwrap();
    api.post(
        &format!("/api/v1/items/{id}-1/complete"),
        json!({"token": token, "status": "succeeded", "result": {}}),
    )
    .await;
    let (_, job) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (job["status"].clone(), job["awaiting_review"].clone()),
        (json!("running"), json!(true))
    );

    // The operator gives up on the last one: now the job is complete.
    let (st, _) = api
        .post(
            &format!("/api/v1/items/{id}-2/transition"),
            json!({"to": "failed", "reason": "supplier unknown"}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, done) = api.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["awaiting_review"], false);
    let (_, events) = api.get(&format!("/api/v1/events?job={id}")).await;
    assert_eq!(
        types(&events),
        [
            "job_created",
            "job_started",
            "job_awaiting_review",
            "job_awaiting_review",
            "job_completed"
        ]
    );
    let completed = events["events"].as_array().unwrap().last().unwrap();
    assert_eq!(completed["data"]["results"]["succeeded"], 2);
    assert_eq!(completed["data"]["results"]["needs_review"], 0);
}

//! The ultimus and gsp flows end to end: the real plugins, in real headless Chromium,
//! against the local portal simulators, through the engine's API and feed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Engine;
use faena::config::PluginConfig;
use faena::model::{ItemStatus, JobStatus};
use faena_tests::portals::{self, Knobs, Portals, gsp, ultimus};
use serde_json::{Value, json};

fn grants(portal_url: &str, secrets: &[&str]) -> PluginConfig {
    PluginConfig {
        browser: Some(true),
        secrets: Some(secrets.iter().map(|s| (*s).to_owned()).collect()),
        settings: Some(BTreeMap::from([(
            "portal_url".to_owned(),
            portal_url.to_owned(),
        )])),
        ..Default::default()
    }
}

/// An engine running ultimus and gsp against fresh simulators.
async fn setup(concurrency: usize) -> (Engine, Portals) {
    let portals = portals::serve(0).await.unwrap();
    let e = common::start(
        BTreeMap::from([
            (
                "ultimus".to_owned(),
                grants(&portals.url, &["ultimus_user", "ultimus_password"]),
            ),
            (
                "gsp".to_owned(),
                grants(&portals.url, &["gsp_supervisor", "gsp_password"]),
            ),
        ]),
        true,
        concurrency,
    )
    .await;
    for name in ["ultimus", "gsp"] {
        e.load(faena::runtime::builtin_component(name).unwrap())
            .await;
    }
    e.secret("ultimus_user", ultimus::USER);
    e.secret("ultimus_password", ultimus::PASSWORD);
    e.secret("gsp_supervisor", gsp::SUPERVISOR);
    e.secret("gsp_password", gsp::PASSWORD);
    (e, portals)
}

fn purchase_order(number: &str, supplier: &str) -> Value {
    json!({
        "order_number": number,
        "supplier_ruc": supplier,
        "cost_center": "CC-200",
        "currency": "USD",
        "description": "Spare parts for line 3",
        "lines": [
            {"description": "Bearing 6204", "quantity": 4, "unit_price": 12.5},
            {"description": "V-belt A42", "quantity": "2", "unit_price": "30"}
        ]
    })
}

async fn failure_png(e: &Engine, item: &str) {
    let list = e.get(&format!("/api/v1/items/{item}/artifacts")).await;
    let png = list
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "failure.png")
        .unwrap_or_else(|| panic!("no failure screenshot for {item}: {list}"));
    common::assert_png(e, png["id"].as_str().unwrap()).await;
}

/// An OC with an unknown supplier waits in review with the portal's message; the
/// operator fixes it and queues it again; it succeeds, once. A feed client sees every
/// step of that, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ultimus_review_then_fix_then_success() {
    let (e, portals) = setup(2).await;
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({
                "plugin": "ultimus",
                "items": [
                    {"input": purchase_order("OC-2026-0101", "20999999999"), "reference": "OC-2026-0101"},
                    {"input": purchase_order("OC-2026-0102", "20512345678"), "reference": "OC-2026-0102"}
                ],
                "options": {"on_failure": "review", "max_attempts": 3, "backoff_ms": 200}
            }),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let mut feed = common::follow_job(&e, &job_id).await;
    let bad = format!("{job_id}-0");
    let good = format!("{job_id}-1");

    e.wait_job(&job_id, 120, |j| j.counts.open() == 0).await;
    let item = e.item(&bad);
    assert_eq!(item.status, ItemStatus::NeedsReview);
    let err = item.error.clone().unwrap();
    assert_eq!(err.code.as_deref(), Some("unknown-supplier"), "{err:?}");
    assert!(err.message.contains("20999999999"), "{}", err.message);
    assert_eq!(item.attempt, 1, "a business error is not retried");
    failure_png(&e, &bad).await;
    let ok = e.item(&good);
    assert_eq!(ok.status, ItemStatus::Succeeded, "{:?}", ok.error);
    let result = ok.result.unwrap();
    assert!(
        result["request_id"]
            .as_str()
            .unwrap()
            .starts_with("PR-2026-")
    );
    assert!(result["incident_id"].as_str().unwrap().starts_with("INC-"));

    // The operator corrects the supplier and sends the item back to the queue.
    let (status, moved) = e
        .post(
            &format!("/api/v1/items/{bad}/transition"),
            json!({"to": "queued", "reason": "supplier tax id corrected",
                   "input": purchase_order("OC-2026-0101", "20100070970")}),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    let done = e.wait_finished(&job_id, 120).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.counts.succeeded, 2);
    let fixed = e.item(&bad);
    assert_eq!(fixed.status, ItemStatus::Succeeded, "{:?}", fixed.error);
    assert!(fixed.steps.iter().any(|s| s.name == "submitted"));
    assert_eq!(
        portals.submissions("ultimus"),
        BTreeMap::from([
            ("OC-2026-0101".to_owned(), 1),
            ("OC-2026-0102".to_owned(), 1)
        ]),
        "each OC submitted exactly once (the refused one never got through)"
    );

    // The feed told the whole story, in order, with no gap.
    let events = common::events_until(&mut feed, 30, |v| {
        v["type"] == "job_completed" && v["data"]["counts"]["succeeded"] == 2
    })
    .await;
    let seqs: Vec<u64> = events.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let story: Vec<String> = events
        .iter()
        .filter(|v| v["item_id"] == bad.as_str() || v["item_id"].is_null())
        .map(|v| match v["type"].as_str().unwrap() {
            "item_status_changed" => format!("→{}", v["data"]["to"].as_str().unwrap()),
            other => other.to_owned(),
        })
        .collect();
    let expected = [
        "job_created",
        "job_started",
        "→running",
        "item_failed",
        "→needs_review",
        "job_awaiting_review",
        "→queued",
        "→running",
        "→succeeded",
        "job_completed",
    ];
    let mut rest = story.iter();
    for want in expected {
        assert!(
            rest.any(|got| got == want),
            "the feed lacks `{want}` in order; it had {story:?}"
        );
    }
}

fn xlsx(rows: &[Vec<String>]) -> Vec<u8> {
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            match v.parse::<f64>() {
                Ok(n) if c == 3 => sheet.write_number(r as u32, c as u16, n).map(|_| ()),
                _ => sheet.write_string(r as u32, c as u16, v).map(|_| ()),
            }
            .unwrap();
        }
    }
    book.save_to_buffer().unwrap()
}

/// `orders` consultants (C00101, C00102, ...) with 1–3 products each, plus four bad
/// orders: two unknown products, one out of stock, one unknown consultant.
fn gsp_sheet(orders: usize) -> Vec<u8> {
    let mut rows = vec![
        [
            "consultora_code",
            "consultora_name",
            "product_code",
            "quantity",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut row = |code: &str, product: &str, quantity: usize| {
        rows.push(vec![
            code.to_owned(),
            format!("Consultant {code}"),
            product.to_owned(),
            quantity.to_string(),
        ]);
    };
    for i in 0..orders {
        let code = format!("C{:05}", 101 + i);
        for p in 0..(1 + i % 3) {
            let mut n = 1 + (i * 7 + p * 3) as u32 % 49;
            if gsp::out_of_stock(n) {
                n += 1;
            }
            row(&code, &format!("P{n:03}"), 1 + (i + p) % 5);
        }
    }
    row("C09001", "P001", 1);
    row("C09001", "P999", 2);
    row("C09002", "P777", 1);
    row("C09003", "P013", 1);
    row("C99999", "P001", 1);
    xlsx(&rows)
}

async fn import(e: &Engine, file: Vec<u8>, name: &str, options: Value) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("plugin", "gsp")
        .text("options", options.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(file).file_name(name.to_owned()),
        );
    let resp = e
        .http
        .post(format!("{}/api/v1/jobs/import", e.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// A spreadsheet of a few hundred orders against a portal that now and then answers
/// 503 and twice fails right after saving an order: every good order is placed
/// exactly once, every bad one fails at once with the portal's reason and a
/// screenshot, and the counts add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gsp_spreadsheet_batch_places_each_order_once() {
    let orders: usize = std::env::var("FAENA_GSP_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let (e, portals) = setup(4).await;
    portals.set_knobs(
        "gsp",
        Knobs {
            fail_rate: 0.005,
            fail_after_save: 2,
            ..Knobs::default()
        },
    );
    // An order loads about twelve pages, so one attempt in sixteen meets a 503; five
    // attempts make a good order failing them all a one-in-a-million event.
    let (status, job) = import(
        &e,
        gsp_sheet(orders),
        "orders.xlsx",
        json!({"max_attempts": 5, "backoff_ms": 100, "max_backoff_ms": 1000}),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        job["counts"]["queued"],
        orders + 4,
        "one item per consultant"
    );
    let job_id = job["id"].as_str().unwrap().to_owned();

    let done = e.wait_finished(&job_id, 1200).await;
    assert_eq!(done.status, JobStatus::Completed);
    let failed = e
        .get(&format!("/api/v1/jobs/{job_id}/items?status=failed"))
        .await;
    assert_eq!(
        (done.counts.succeeded as usize, done.counts.failed),
        (orders, 4),
        "failed items: {failed:#}"
    );

    let placed = portals.submissions("gsp");
    assert_eq!(placed.len(), orders, "one order per good consultant");
    assert!(
        placed.values().all(|n| *n == 1),
        "an order placed twice: {placed:?}"
    );
    let recovered = e
        .get(&format!(
            "/api/v1/jobs/{job_id}/items?status=succeeded&limit=1000"
        ))
        .await["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["result"]["recovered"] == true)
        .count();
    assert_eq!(
        recovered, 2,
        "both orders saved behind a 502 were found, not placed again"
    );

    let mut codes: Vec<(String, String)> = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            // A random 503 may come first; the business error itself is final.
            assert_eq!(i["error"]["kind"], "business", "{i}");
            assert!(
                i["attempt"].as_u64().unwrap() < 5,
                "business errors are not retried: {i}"
            );
            (
                i["reference"].as_str().unwrap().to_owned(),
                i["error"]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("C09001", "unknown-product"),
            ("C09002", "unknown-product"),
            ("C09003", "out-of-stock"),
            ("C99999", "unknown-consultant"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    failure_png(&e, failed["items"][0]["id"].as_str().unwrap()).await;
    let one = e.item(&format!("{job_id}-0"));
    let steps: Vec<&str> = one.steps.iter().map(|s| s.name.as_str()).collect();
    for s in [
        "login_ok",
        "consultant_selected",
        "cycle_selected",
        "cart_open",
        "products_added",
        "completed",
    ] {
        assert!(steps.contains(&s), "checkpoint {s} missing: {steps:?}");
    }
}

/// A bad spreadsheet names every problem by row and column and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_spreadsheet_creates_nothing() {
    let (e, _portals) = setup(1).await;
    let rows: Vec<Vec<String>> = [
        [
            "consultora_code",
            "consultora_name",
            "product_code",
            "quantity",
        ],
        ["C00001", "Ana", "P001", "2"],
        ["C00001", "Ana", "", "1"],
        ["C00002", "Bea", "P002", "lots"],
    ]
    .iter()
    .map(|r| r.map(String::from).to_vec())
    .collect();
    let (status, body) = import(&e, xlsx(&rows), "orders.xlsx", json!({})).await;
    assert_eq!(status, 422, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("row 3, column `product_code`: is empty")
            && message.contains("row 4, column `quantity`: `lots` is not a whole number"),
        "{message}"
    );
    let jobs = e.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"], json!([]), "nothing was written");
}

/// The portal expires the session mid-flow: each attempt fails as an application
/// error and is retried; once the portal behaves, a retry places the order once. A
/// redesigned page fails with a screenshot of what the flow saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gsp_session_expiry_and_layout_change() {
    let (e, portals) = setup(2).await;
    portals.set_knobs(
        "gsp",
        Knobs {
            session_requests: Some(9),
            ..Knobs::default()
        },
    );
    let order = json!({"consultora_code": "C00042", "rows": [
        {"product_code": "P001", "quantity": 1},
        {"product_code": "P002", "quantity": 2},
        {"product_code": "P003", "quantity": 3}
    ]});
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "gsp", "items": [{"input": order, "reference": "C00042"}],
                   "options": {"max_attempts": 3, "backoff_ms": 100}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let item_id = format!("{job_id}-0");
    e.wait_finished(&job_id, 180).await;
    let item = e.item(&item_id);
    assert_eq!(item.status, ItemStatus::Failed);
    assert_eq!(item.attempt, 3, "application errors are retried");
    assert_eq!(
        item.error.as_ref().unwrap().code.as_deref(),
        Some("session-expired")
    );
    assert!(portals.submissions("gsp").is_empty());

    portals.set_knobs("gsp", Knobs::default());
    let (status, body) = e
        .post(&format!("/api/v1/items/{item_id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    e.wait_finished(&job_id, 180).await;
    assert_eq!(e.item(&item_id).status, ItemStatus::Succeeded);
    assert_eq!(portals.submissions("gsp")["C00042"], 1);

    portals.set_knobs(
        "gsp",
        Knobs {
            layout: 2,
            ..Knobs::default()
        },
    );
    let (_, job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "gsp", "items": [{"input": {"consultora_code": "C00043", "rows": [{"product_code": "P001", "quantity": 1}]}}],
                   "options": {"max_attempts": 1}}),
        )
        .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    e.wait_finished(&job_id, 120).await;
    let item = e.item(&format!("{job_id}-0"));
    assert_eq!(item.status, ItemStatus::Failed);
    let err = item.error.unwrap();
    assert_eq!(
        err.code.as_deref(),
        Some("selector_not_found"),
        "{}",
        err.message
    );
    failure_png(&e, &item.id).await;
}

/// Pause holds a batch without losing anything, resume carries on, cancel stops it:
/// no item runs after the cancel, and no order is ever placed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gsp_pause_resume_cancel_mid_batch() {
    let (e, portals) = setup(2).await;
    let (status, job) = import(
        &e,
        gsp_sheet(40),
        "orders.xlsx",
        json!({"max_attempts": 3, "backoff_ms": 100}),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    e.wait_job(&id, 120, |j| j.counts.succeeded >= 4).await;

    let (status, _) = e.post(&format!("/api/v1/jobs/{id}/pause"), json!({})).await;
    assert_eq!(status, 200);
    let paused = e
        .wait_job(&id, 60, |j| {
            j.status == JobStatus::Paused && j.counts.running == 0
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = e.store.job(&id).unwrap();
    assert_eq!(
        still.counts, paused.counts,
        "nothing ran while the job was paused"
    );

    let (status, _) = e
        .post(&format!("/api/v1/jobs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 200);
    e.wait_job(&id, 120, |j| {
        j.counts.succeeded >= paused.counts.succeeded + 4
    })
    .await;

    let (status, _) = e
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let cancelled = e
        .wait_job(&id, 60, |j| {
            j.status == JobStatus::Cancelled && j.counts.running == 0
        })
        .await;
    assert!(cancelled.counts.cancelled > 0, "{:?}", cancelled.counts);
    assert!(cancelled.counts.succeeded < 40);
    let placed = portals.submissions("gsp");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        portals.submissions("gsp"),
        placed,
        "nothing reached the portal after the cancel"
    );
    assert!(placed.values().all(|n| *n == 1), "{placed:?}");
    assert!(placed.len() as u64 >= cancelled.counts.succeeded);
}

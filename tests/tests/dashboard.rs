//! The dashboard in real headless Chromium (driven by chromiumoxide): upload a
//! spreadsheet and watch its progress reach 100 %, open a failed item and see its
//! screenshot, send a review item back to the queue, see an event arrive live, watch
//! a session's live view, pause a schedule. Then a frontend on another origin (CORS)
//! creates a job and follows it on the feed. Each page is saved as a PNG under
//! `target/dashboard-screenshots/`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chromiumoxide::Page;
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::ScreenshotParams;
use faena::config::PluginConfig;
use faena::model::ItemStatus;
use faena_tests::portals::{self, gsp, sunat, ultimus};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn grants(url: &str, secrets: &[&str]) -> PluginConfig {
    PluginConfig {
        browser: Some(true),
        secrets: Some(secrets.iter().map(|s| (*s).to_owned()).collect()),
        settings: Some(BTreeMap::from([("portal_url".to_owned(), url.to_owned())])),
        ..Default::default()
    }
}

fn shots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(page: &Page, name: &str) {
    let path = shots_dir().join(format!("{name}.png"));
    page.save_screenshot(ScreenshotParams::builder().build(), &path)
        .await
        .unwrap();
}

/// Evaluate `js` until it returns `true`, at most `secs`.
async fn until(page: &Page, secs: u64, what: &str, js: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ok = page
            .evaluate(js)
            .await
            .ok()
            .and_then(|r| r.into_value::<bool>().ok())
            .unwrap_or(false);
        if ok {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let body: String = page
                .evaluate("document.body.innerText")
                .await
                .ok()
                .and_then(|r| r.into_value().ok())
                .unwrap_or_default();
            let name: String = what
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            shot(page, &format!("timeout-{name}")).await;
            panic!("the dashboard did not show {what} within {secs} s; it shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn eval(page: &Page, js: &str) -> Value {
    page.evaluate(js)
        .await
        .unwrap()
        .into_value()
        .unwrap_or(Value::Null)
}

/// Go to a dashboard route and wait for its page to be drawn.
async fn visit(page: &Page, hash: &str, ready: &str) {
    eval(page, &format!("location.hash = {}", json!(hash))).await;
    until(page, 20, hash, ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_batch_from_the_dashboard() {
    let p = portals::serve(0).await.unwrap();
    // A frontend of the team's own, on another origin the engine lists.
    let frontend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frontend_origin = format!("http://{}", frontend.local_addr().unwrap());
    let e = common::start_cors(
        BTreeMap::from([
            (
                "gsp".to_owned(),
                grants(&p.url, &["gsp_supervisor", "gsp_password"]),
            ),
            (
                "ultimus".to_owned(),
                grants(&p.url, &["ultimus_user", "ultimus_password"]),
            ),
            ("sunat".to_owned(), grants(&p.url, &["sunat_password"])),
        ]),
        true,
        2,
        vec![frontend_origin.clone()],
    )
    .await;
    for name in ["gsp", "ultimus", "sunat", "noop"] {
        e.load(faena::runtime::builtin_component(name).unwrap())
            .await;
    }
    e.secret("gsp_supervisor", gsp::SUPERVISOR);
    e.secret("gsp_password", gsp::PASSWORD);
    e.secret("ultimus_user", ultimus::USER);
    e.secret("ultimus_password", ultimus::PASSWORD);
    e.secret("sunat_password", sunat::PASSWORD);

    // The operator's own browser.
    let profile = tempfile::tempdir().unwrap();
    let (browser, mut handler) = Browser::launch(
        BrowserConfig::builder()
            .chrome_executable("/usr/bin/chromium")
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1440, 1000)
            .viewport(Viewport {
                width: 1440,
                height: 1000,
                ..Viewport::default()
            })
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page(format!("{}/#/jobs", e.url)).await.unwrap();

    // Without a key the dashboard asks for one; a wrong one is refused with the
    // engine's message, an operator's key opens the dashboard.
    until(
        &page,
        20,
        "the sign-in form",
        "!!document.querySelector('form.signin #api-key')",
    )
    .await;
    shot(&page, "signin").await;
    let sign_in = |key: &str| {
        format!(
            "(() => {{ document.querySelector('#api-key').value = {}; document.querySelector('form.signin button').click(); }})()",
            json!(key)
        )
    };
    eval(&page, &sign_in("fk_nobody_0000")).await;
    until(&page, 10, "the refusal", "document.querySelector('form.signin .error')?.textContent.includes('unknown or was revoked')").await;
    let operator = e.new_key("default", faena::auth::Role::Operator);
    eval(&page, &sign_in(&operator)).await;
    until(&page, 20, "the jobs page", "!!document.querySelector('#jobs') && document.querySelector('#feed-state').classList.contains('live')").await;

    // Upload a spreadsheet: four orders, one naming a product the portal does not have.
    let csv = "consultora_code,product_code,quantity\nC00101,P001,2\nC00101,P002,1\nC00102,P003,1\nC00103,P999,1\nC00104,P004,3\n";
    eval(&page, "document.querySelector('#create').open = true").await;
    eval(
        &page,
        &format!(
            "(() => {{ const s = document.querySelector('#new-plugin'); s.value = 'gsp'; s.dispatchEvent(new Event('change'));
               const dt = new DataTransfer(); dt.items.add(new File([{}], 'orders.csv', {{type: 'text/csv'}}));
               const f = document.querySelector('#new-file'); f.files = dt.files; f.dispatchEvent(new Event('change'));
               document.querySelector('#new-upload').click(); }})()",
            json!(csv)
        ),
    )
    .await;
    until(
        &page,
        20,
        "the new job",
        "location.hash.startsWith('#/jobs/') && !!document.querySelector('#job-progress')",
    )
    .await;
    let job_id = eval(
        &page,
        "document.querySelector('#job-progress').dataset.jobId",
    )
    .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    // The progress bar follows the feed up to 100 %.
    until(
        &page,
        120,
        "100 %",
        "document.querySelector('#job-progress .pct')?.dataset.pct === '100'",
    )
    .await;
    until(
        &page,
        10,
        "the finished items",
        "document.querySelectorAll('#items tr[data-status=succeeded]').length === 3",
    )
    .await;
    shot(&page, "job").await;
    let job = e.store.job(&job_id).unwrap();
    assert_eq!((job.counts.succeeded, job.counts.failed), (3, 1));

    // The jobs list shows it done, with its counts.
    visit(
        &page,
        "#/jobs",
        "!!document.querySelector(`#jobs tr[data-job-id]`)",
    )
    .await;
    until(&page, 10, "the job at 100 %", &format!("document.querySelector('#jobs tr[data-job-id=\"{job_id}\"] .pct')?.dataset.pct === '100'")).await;
    shot(&page, "jobs").await;

    // Open the failed item: its error and the screenshot of the portal's page.
    visit(
        &page,
        &format!("#/jobs/{job_id}?status=failed"),
        "document.querySelectorAll('#items tr[data-status=failed]').length === 1",
    )
    .await;
    eval(
        &page,
        "document.querySelector('#items tr[data-status=failed] a').click()",
    )
    .await;
    until(
        &page,
        10,
        "the failed item",
        "!!document.querySelector('#item-error')",
    )
    .await;
    let error = eval(&page, "document.querySelector('#item-error').innerText").await;
    assert!(error.as_str().unwrap().contains("P999"), "{error}");
    until(
        &page,
        10,
        "the screenshot",
        "[...document.querySelectorAll('img.shot')].some(i => i.complete && i.naturalWidth > 100)",
    )
    .await;
    assert!(
        eval(&page, "document.querySelectorAll('#item-steps li').length")
            .await
            .as_u64()
            .unwrap()
            >= 2
    );
    shot(&page, "item").await;

    // A search in a large job finds an item past the first pages the engine looks at:
    // the page follows the cursor of a listing cut short.
    let n = faena::store::SCAN_LIMIT + 5;
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"reference": format!("R-{i}"), "input": {}}))
        .collect();
    let (status, big) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "noop", "start": false, "items": items}),
        )
        .await;
    assert_eq!(status, 201, "{big}");
    let last = format!("R-{}", n - 1);
    visit(
        &page,
        &format!("#/jobs/{}?q={last}", big["id"].as_str().unwrap()),
        &format!("[...document.querySelectorAll('#items tr[data-item-id] a')].some(a => a.textContent === '{last}')"),
    )
    .await;
    assert_eq!(
        eval(
            &page,
            "document.querySelectorAll('#items tr[data-item-id]').length"
        )
        .await,
        json!(1)
    );

    // A purchase order the portal refuses waits for review; send it back from the queue.
    let (status, review_job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "ultimus", "options": {"on_failure": "review"}, "items": [{
                "reference": "OC-9001",
                "input": {"order_number": "OC-9001", "supplier_ruc": "20999999999", "cost_center": "CC-200",
                          "currency": "USD", "description": "Toner", "lines": [{"description": "Toner", "quantity": 2, "unit_price": 10}]}
            }]}),
        )
        .await;
    assert_eq!(status, 201, "{review_job}");
    let review_item = format!("{}-0", review_job["id"].as_str().unwrap());
    // Nothing left but the item in review: the job waits for a person, and says so.
    let review_job_id = review_job["id"].as_str().unwrap();
    visit(
        &page,
        &format!("#/jobs/{review_job_id}"),
        "!!document.querySelector('#job-progress')",
    )
    .await;
    until(
        &page,
        60,
        "the job marked as awaiting review",
        "!!document.querySelector('h1 .status.awaiting_review')",
    )
    .await;
    visit(&page, "#/review", "!!document.querySelector('#review')").await;
    until(
        &page,
        60,
        "the item to review",
        &format!("!!document.querySelector('#review tr[data-item-id=\"{review_item}\"]')"),
    )
    .await;
    until(
        &page,
        10,
        "the badge",
        "document.querySelector('#review-count').textContent === '1'",
    )
    .await;
    shot(&page, "review").await;
    eval(&page, &format!("document.querySelector('#review tr[data-item-id=\"{review_item}\"] button.requeue').click()")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while e.item(&review_item).attempt < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not queued again: {:?}",
            e.item(&review_item)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let item = e.item(&review_item);
    assert_ne!(item.status, ItemStatus::Pending);

    // Live events: a job created elsewhere shows up at once.
    visit(
        &page,
        "#/events?type=job_created",
        "!!document.querySelector('#events')",
    )
    .await;
    let (_, noop) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "noop", "name": "from elsewhere", "items": [{"input": {}}]}),
        )
        .await;
    let noop_id = noop["id"].as_str().unwrap();
    until(&page, 10, "the live event", &format!("[...document.querySelectorAll('#events tr[data-type=job_created]')].some(r => r.innerText.includes('{noop_id}'))")).await;
    let stats = eval(&page, "document.querySelector('#events-stats').innerText").await;
    assert!(stats.as_str().unwrap().contains("gaps 0"), "{stats}");
    // Drop the feed connection: the page reconnects and catches up without a gap.
    eval(&page, "feed.ws.close()").await;
    let (_, after) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "noop", "name": "while away", "items": [{"input": {}}]}),
        )
        .await;
    let after_id = after["id"].as_str().unwrap();
    until(&page, 20, "the event sent while away", &format!("[...document.querySelectorAll('#events tr[data-type=job_created]')].some(r => r.innerText.includes('{after_id}'))")).await;
    let stats = eval(&page, "document.querySelector('#events-stats').innerText").await;
    let stats = stats.as_str().unwrap();
    assert!(
        stats.contains("reconnects 1") && stats.contains("gaps 0"),
        "{stats}"
    );
    // Chromium agreed on permessage-deflate: the events above came compressed.
    assert_eq!(
        eval(&page, "feed.ws.extensions").await,
        json!("permessage-deflate; client_no_context_takeover")
    );
    visit(
        &page,
        "#/events",
        "document.querySelectorAll('#events tbody tr').length > 10",
    )
    .await;
    shot(&page, "events").await;

    // A session's live view.
    let (status, s) = e
        .post("/api/v1/sessions", json!({"plugin": "sunat", "account": "demo", "input": {"ruc": sunat::RUC, "user": sunat::USER}}))
        .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["id"].as_str().unwrap();
    visit(
        &page,
        "#/sessions",
        &format!("!!document.querySelector('#sessions tr[data-session-id=\"{sid}\"]')"),
    )
    .await;
    visit(
        &page,
        &format!("#/sessions/{sid}"),
        "!!document.querySelector('#session-view')",
    )
    .await;
    until(&page, 20, "the live view", "document.querySelector('#session-view').complete && document.querySelector('#session-view').naturalWidth > 100").await;
    shot(&page, "session").await;

    visit(
        &page,
        "#/plugins",
        "document.querySelectorAll('section[data-plugin]').length >= 4",
    )
    .await;
    shot(&page, "plugins").await;

    // A schedule is listed with its next run; pausing it from the list sticks.
    let (status, schedule) = e
        .post(
            "/api/v1/schedules",
            json!({"name": "weekday orders", "cron": "0 8 * * MON-FRI", "timezone": "America/Lima",
                   "template": {"plugin": "ultimus", "items": [{"reference": "OC-9100", "input": {
                       "order_number": "OC-9100", "supplier_ruc": "20100070970", "cost_center": "CC-200",
                       "currency": "USD", "description": "Toner",
                       "lines": [{"description": "Toner", "quantity": 1, "unit_price": 10}]}}]}}),
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    let row = format!(
        "#schedules tr[data-schedule-id=\"{}\"]",
        schedule["id"].as_str().unwrap()
    );
    visit(
        &page,
        "#/schedules",
        &format!("!!document.querySelector('{row}')"),
    )
    .await;
    shot(&page, "schedules").await;
    eval(
        &page,
        &format!("document.querySelector('{row} button').click()"),
    )
    .await;
    until(
        &page,
        20,
        "the schedule paused",
        &format!("document.querySelector('{row} .status').textContent === 'paused'"),
    )
    .await;
    let paused = e
        .get(&format!(
            "/api/v1/schedules/{}",
            schedule["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(paused["paused"], true, "{paused}");

    // A worker that reported shows in the Workers section with its labels.
    let (_, worker_key) = e
        .post(
            "/api/v1/keys",
            json!({"name": "robot", "role": "worker", "tenant": "default"}),
        )
        .await;
    let hello = common::client(worker_key["token"].as_str().unwrap())
        .post(format!("{}/api/v1/workers/robot1/heartbeat", e.url))
        .json(&json!({"version": "test", "concurrency": 2, "running": 1,
                      "labels": ["pe"], "plugins": ["gsp"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    visit(
        &page,
        "#/workers",
        "!!document.querySelector('#workers tr[data-worker=\"robot1\"] .status.live')",
    )
    .await;
    let row = eval(
        &page,
        "document.querySelector('#workers tr[data-worker=\"robot1\"]').textContent",
    )
    .await;
    assert!(row.as_str().unwrap().contains("1 / 2"), "{row}");
    shot(&page, "workers").await;
    // The team's frontend, on its own origin, creates a job with the key it was given
    // and follows it on the feed to its end.
    let html = CROSS_ORIGIN_PAGE
        .replace("ENGINE_URL", &e.url)
        .replace("API_KEY", &e.key);
    tokio::spawn(
        poem::Server::new_with_acceptor(poem::listener::TcpAcceptor::from_tokio(frontend).unwrap())
            .run(poem::Route::new().at(
                "/",
                poem::get(poem::endpoint::make_sync(move |_| {
                    poem::web::Html(html.clone())
                })),
            )),
    );
    page.goto(&frontend_origin).await.unwrap();
    until(
        &page,
        60,
        "the other origin's page to follow its job to the end",
        "document.title.startsWith('done') || document.title.startsWith('failed')",
    )
    .await;
    assert_eq!(eval(&page, "document.title").await, json!("done:3"));
    for name in [
        "jobs",
        "job",
        "item",
        "review",
        "events",
        "session",
        "plugins",
        "schedules",
        "workers",
    ] {
        let png = std::fs::read(shots_dir().join(format!("{name}.png"))).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png"
        );
    }
}

/// A page of another origin: creates a `noop` job over REST (a preflighted request:
/// JSON with a key and an idempotency key) and follows it on the feed.
const CROSS_ORIGIN_PAGE: &str = r#"<!doctype html><title>loading</title><script>
(async () => {
  const engine = 'ENGINE_URL', key = 'API_KEY';
  try {
    const r = await fetch(engine + '/api/v1/jobs', { method: 'POST', headers: {
      'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json', 'Idempotency-Key': 'frontend-1' },
      body: JSON.stringify({ plugin: 'noop', items: [{ input: {} }, { input: {} }, { input: {} }] }) });
    if (r.status !== 201) { document.title = 'failed:' + r.status; return; }
    const job = await r.json();
    const ws = new WebSocket(engine.replace('http', 'ws') + '/ws?token=' + encodeURIComponent(key));
    ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', jobs: [job.id], types: [], after: 0 }));
    ws.onmessage = (m) => {
      const ev = JSON.parse(m.data);
      if (ev.type === 'job_completed') document.title = 'done:' + ev.data.results.succeeded;
    };
  } catch (e) { document.title = 'failed:' + e; }
})();
</script>"#;

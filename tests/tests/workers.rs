//! Scale-out: one engine that runs nothing itself (`concurrency = 0`) and `faena worker`
//! processes, each with its own Chromium, placing gsp orders against the simulator.
//! A worker killed mid-batch loses nothing; a worker frozen past its lease and thawed
//! places nothing twice; a worker key reaches nothing but the worker protocol; jobs go
//! to the workers with their labels; an engine spreads its contexts over a fleet of
//! browser endpoints and carries on when one dies.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::process::{Chrome, Faena, Worker, free_port};
use faena_tests::portals::{self, gsp};
use serde_json::{Value, json};

/// gsp's grants, settings and secrets against the simulator at `portal`.
fn gsp_grants(portal: &str) -> String {
    format!(
        "[plugins.gsp]\nbrowser = true\nsecrets = [\"gsp_supervisor\", \"gsp_password\"]\n\
         settings = {{ portal_url = \"{portal}\" }}\n\
         [secrets]\ngsp_supervisor = \"{}\"\ngsp_password = \"{}\"\n",
        gsp::SUPERVISOR,
        gsp::PASSWORD,
    )
}

/// A coordinator-only engine granting gsp the browser and its secrets.
async fn coordinator(dir: &Path, portal: &str) -> Faena {
    Faena::configured(
        dir,
        &format!(
            "concurrency = 0\n[browser]\nenabled = false\n{}",
            gsp_grants(portal)
        ),
    )
    .await
}

async fn key(faena: &Faena, role: &str, tenant: &str) -> String {
    let (_, resp) = faena
        .post(
            "/api/v1/keys",
            &json!({"name": format!("{role} of {tenant}"), "role": role, "tenant": tenant}),
        )
        .await;
    resp["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{resp}"))
        .to_owned()
}

fn orders(n: usize, first: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let code = format!("C{:05}", first + i);
            json!({"reference": code, "input": {"consultora_code": code,
                   "rows": [{"product_code": format!("P{:03}", 1 + i % 12), "quantity": 1 + i % 3}]}})
        })
        .collect()
}

async fn submit(faena: &Faena, items: Vec<Value>, lease_ms: u64) -> String {
    let (status, job) = faena
        .post(
            "/api/v1/jobs",
            &json!({"plugin": "gsp", "items": items,
                    "options": {"max_attempts": 10, "backoff_ms": 200, "max_backoff_ms": 1000,
                                "lease_ms": lease_ms}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

async fn finished(faena: &Faena, id: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let j = faena.job(id).await;
        if j["status"] == "completed" {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not finish: {j}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait (up to 5 minutes) until the job's counts are `ok` with it: `(succeeded, running)`.
async fn until_counts(faena: &Faena, id: &str, ok: impl Fn(u64, u64) -> bool, every_ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let j = faena.job(id).await;
        let count = |s: &str| j["counts"][s].as_u64().unwrap();
        if ok(count("succeeded"), count("running")) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress: {j}");
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}

/// The job finished with every order succeeded, and the portal placed each exactly once.
async fn each_placed_once(faena: &Faena, id: &str, gsp: &gsp::Gsp, orders: usize) {
    let job = finished(faena, id, 600).await;
    assert_eq!(job["counts"]["succeeded"], orders, "{job}");
    let placed = placed(gsp);
    assert_eq!(placed.len(), orders, "every order placed");
    let twice: Vec<_> = placed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "placed twice: {twice:?}");
}

/// Every item of the job, with its attempts.
async fn items(faena: &Faena, id: &str) -> Vec<Value> {
    let page = faena
        .get(&format!("/api/v1/jobs/{id}/items?limit=1000"))
        .await;
    let mut out = Vec::new();
    for it in page["items"].as_array().unwrap() {
        out.push(
            faena
                .get(&format!("/api/v1/items/{}", it["id"].as_str().unwrap()))
                .await,
        );
    }
    out
}

fn owners(item: &Value) -> Vec<String> {
    item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["owner"].as_str().unwrap().to_owned())
        .collect()
}

/// Orders the simulator placed, by consultant.
fn placed(gsp: &gsp::Gsp) -> BTreeMap<String, usize> {
    gsp.orders
        .lock()
        .unwrap()
        .iter()
        .fold(BTreeMap::new(), |mut m, o| {
            *m.entry(o.consultant.clone()).or_default() += 1;
            m
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_batch_and_a_killed_one_loses_nothing() {
    const ORDERS: usize = 40;
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faena = coordinator(dir.path(), &portals.url).await;
    let k = key(&faena, "worker", "default").await;
    let mut robot1 = Worker::start(
        &faena.url,
        &k,
        "robot1",
        &dir.path().join("w1"),
        &["--concurrency", "2"],
    );
    let _robot2 = Worker::start(
        &faena.url,
        &k,
        "robot2",
        &dir.path().join("w2"),
        &["--concurrency", "2"],
    );
    let id = submit(&faena, orders(ORDERS, 5_000), 3_000).await;

    // Killed once it has done some of the work, while it holds items.
    until_counts(&faena, &id, |done, running| done >= 8 && running > 0, 100).await;
    robot1.kill();

    each_placed_once(&faena, &id, &portals.gsp, ORDERS).await;

    // Both did work; an item robot1 held when it died was finished by robot2.
    let items = items(&faena, &id).await;
    let by = |w: &str| {
        items
            .iter()
            .filter(|i| owners(i).last().map(String::as_str) == Some(w))
            .count()
    };
    assert!(by("worker:robot1") > 0 && by("worker:robot2") > 0);
    assert!(
        items.iter().any(|i| {
            let o = owners(i);
            o.len() >= 2 && o[o.len() - 2] == "worker:robot1" && o[o.len() - 1] == "worker:robot2"
        }),
        "no item moved from the killed worker to the other"
    );

    // The dead worker is shown as gone; the live one is not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = faena.get("/api/v1/workers").await;
        let gone = |name: &str| {
            list["workers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["name"] == name)
                .map(|w| w["gone"] == true)
        };
        if gone("robot1") == Some(true) {
            assert_eq!(gone("robot2"), Some(false), "{list}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "workers: {ORDERS} orders on 2 workers, one killed (SIGKILL): 0 lost, 0 placed twice; \
         robot1 finished {}, robot2 {}",
        by("worker:robot1"),
        by("worker:robot2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_lease_places_nothing_twice() {
    const ORDERS: usize = 8;
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faena = coordinator(dir.path(), &portals.url).await;
    let k = key(&faena, "worker", "default").await;
    let robot1 = Worker::start(
        &faena.url,
        &k,
        "robot1",
        &dir.path().join("w1"),
        &["--concurrency", "1"],
    );
    let id = submit(&faena, orders(ORDERS, 6_000), 2_000).await;

    // Frozen in the middle of an item, thawed after another worker took it over.
    until_counts(&faena, &id, |done, running| done >= 1 && running == 1, 50).await;
    robot1.freeze();
    let _robot2 = Worker::start(
        &faena.url,
        &k,
        "robot2",
        &dir.path().join("w2"),
        &["--concurrency", "1"],
    );
    // Thawed once the engine has given the frozen attempt up and robot2 runs the item
    // (robot2 first starts: it fetches and compiles the plugins).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let taken_over = items(&faena, &id).await.iter().any(|i| {
            let o = owners(i);
            o.len() >= 2 && o[0] == "worker:robot1" && o.contains(&"worker:robot2".to_owned())
        });
        if taken_over {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no item was taken over"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    robot1.thaw();

    each_placed_once(&faena, &id, &portals.gsp, ORDERS).await;
    // What robot1 did after it woke up was refused, not recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !robot1.log().contains("lease") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "robot1 did not notice its lost lease:\n{}",
            robot1.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_key_reaches_only_the_worker_protocol_of_its_tenant() {
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faena = coordinator(dir.path(), &portals.url).await;
    let worker = common::client(&key(&faena, "worker", "default").await);
    let other = common::client(&key(&faena, "worker", "acme").await);
    let url = |p: &str| format!("{}/api/v1{p}", faena.url);
    let status = |r: reqwest::Response| r.status().as_u16();

    // Reads and writes outside the protocol are refused.
    for path in ["/jobs", "/secrets", "/keys", "/workers", "/events"] {
        assert_eq!(
            status(worker.get(url(path)).send().await.unwrap()),
            403,
            "{path}"
        );
    }
    let put = worker
        .put(url("/secrets/gsp_password"))
        .json(&json!({"value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(put), 403);
    // The protocol's own routes are for worker keys only.
    let (admin_claim, _) = faena
        .post(
            "/api/v1/workers/x/claim",
            &json!({"plugins": ["gsp"], "max": 1}),
        )
        .await;
    assert_eq!(admin_claim, 403);

    // The component a worker fetches is the engine's, by its SHA-256.
    let hello: Value = worker
        .post(url("/workers/w/heartbeat"))
        .json(&json!({"version": "test", "concurrency": 1, "running": 0, "plugins": ["gsp"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gsp_plugin = &hello["plugins"][0];
    assert_eq!(gsp_plugin["name"], "gsp", "{hello}");
    assert_eq!(gsp_plugin["settings"]["portal_url"], portals.url.as_str());
    let resp = worker
        .get(url(&format!(
            "/plugins/gsp/versions/{}/component",
            gsp_plugin["version"].as_str().unwrap()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(etag, gsp_plugin["sha256"].as_str().unwrap());
    assert_eq!(faena::runtime::sha256_hex(&bytes), etag);

    // Another tenant's worker finds nothing of this tenant's, and cannot touch it.
    let id = submit(&faena, orders(1, 7_000), 30_000).await;
    let item = format!("{id}-0");
    let none: Value = other
        .post(url("/workers/w/claim"))
        .json(&json!({"plugins": ["gsp"], "max": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["items"], json!([]), "{none}");
    let r = other
        .post(url(&format!("/items/{item}/heartbeat")))
        .json(&json!({"token": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);

    // This tenant's worker gets the item, with the secrets gsp is granted.
    let got: Value = worker
        .post(url("/workers/w/claim"))
        .json(&json!({"plugins": ["gsp"], "max": 10, "wait_ms": 2000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["items"][0]["item"]["id"], item.as_str(), "{got}");
    assert_eq!(got["secrets"]["gsp"]["gsp_password"], gsp::PASSWORD);
    let token = got["items"][0]["lease_token"].as_u64().unwrap();
    // A stale token changes nothing; the right one completes.
    let stale = worker
        .post(url(&format!("/items/{item}/complete")))
        .json(&json!({"token": token + 1, "status": "succeeded", "result": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(stale), 409);
    let ok = worker
        .post(url(&format!("/items/{item}/complete")))
        .json(&json!({"token": token, "status": "succeeded", "result": {"order_id": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(status(ok), 200);
    let attempts = faena.get(&format!("/api/v1/items/{item}")).await;
    assert_eq!(attempts["attempts"][0]["owner"], "worker:w", "{attempts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_jobs_run_only_on_workers_with_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    // This engine runs items itself too: a labelled job must still pass it by.
    let faena =
        Faena::configured(dir.path(), "concurrency = 2\n[browser]\nenabled = false\n").await;
    let k = key(&faena, "worker", "default").await;
    let args = ["--no-browser", "--plugins", "noop", "--concurrency", "2"];
    let _lima = Worker::start(
        &faena.url,
        &k,
        "lima",
        &dir.path().join("lima"),
        &[&args[..], &["--labels", "pe,office"]].concat(),
    );
    let _plain = Worker::start(&faena.url, &k, "plain", &dir.path().join("plain"), &args);
    let job = |labels: Value| {
        json!({"plugin": "noop", "options": {"labels": labels},
               "items": (0..12).map(|i| json!({"input": {"n": i}})).collect::<Vec<_>>()})
    };
    let (status, pe) = faena.post("/api/v1/jobs", &job(json!(["pe"]))).await;
    assert_eq!(status, 201, "{pe}");
    let (_, plain) = faena.post("/api/v1/jobs", &job(json!([]))).await;
    let (_, chile) = faena.post("/api/v1/jobs", &job(json!(["cl"]))).await;
    let (bad, refused) = faena.post("/api/v1/jobs", &job(json!(["Peru!"]))).await;
    assert_eq!(bad, 422, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("labels[0]"),
        "{refused}"
    );

    let pe = pe["id"].as_str().unwrap();
    finished(&faena, pe, 120).await;
    for item in items(&faena, pe).await {
        assert_eq!(owners(&item), ["worker:lima"], "{item}");
    }
    // The unlabelled job may run anywhere; it ran, by whoever was free.
    finished(&faena, plain["id"].as_str().unwrap(), 120).await;
    // Nobody carries `cl`: its items wait, untouched by the engine and both workers.
    let chile = faena.job(chile["id"].as_str().unwrap()).await;
    assert_eq!(chile["counts"]["queued"], 12, "{chile}");
    assert_eq!(chile["status"], "running", "{chile}");
    let workers = faena.get("/api/v1/workers").await;
    let lima = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "lima")
        .unwrap_or_else(|| panic!("{workers}"));
    assert_eq!(lima["labels"], json!(["pe", "office"]), "{workers}");
}

/// The most portal pages each browser showed at once, polled until `stop` is set.
fn watch_pages(
    chromes: Vec<(&'static str, u16)>,
    portal: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<&'static str, usize>> {
    tokio::spawn(async move {
        let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            for (name, port) in &chromes {
                let Some(n) = portal_pages(*port, &portal).await else {
                    continue;
                };
                let max = seen.entry(*name).or_default();
                *max = (*max).max(n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    })
}

/// The pages the browser listening on `port` shows of `portal` now (`None`: it does
/// not answer).
async fn portal_pages(port: u16, portal: &str) -> Option<usize> {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
        .await
        .ok()?;
    let list: Value = resp.json().await.ok()?;
    Some(list.as_array().map_or(0, |l| {
        l.iter()
            .filter(|t| t["url"].as_str().is_some_and(|u| u.starts_with(portal)))
            .count()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_spreads_contexts_over_browser_endpoints_and_outlives_one() {
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let mut a = Chrome::start(pa, dir.path());
    let b = Chrome::start(pb, dir.path());
    a.ready().await;
    b.ready().await;
    let faena = Faena::configured(
        dir.path(),
        &format!(
            "concurrency = 4\n[browser]\nendpoints = [{{ url = \"{}\", capacity = 2 }}, \
             {{ url = \"{}\", capacity = 2 }}]\n{}",
            a.url(),
            b.url(),
            gsp_grants(&portals.url)
        ),
    )
    .await;
    let browsers = vec![("a", pa), ("b", pb)];

    // Four at once over two endpoints of two: both carry pages; one is killed
    // mid-batch and the batch finishes on the other, each order placed once.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_pages(browsers.clone(), portals.url.clone(), stop.clone());
    let id = submit(&faena, orders(12, 9_000), 30_000).await;
    until_counts(&faena, &id, |done, running| done >= 3 && running > 0, 100).await;
    a.kill();
    each_placed_once(&faena, &id, &portals.gsp, 12).await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    assert!(
        seen.get("a").is_some_and(|n| *n >= 1),
        "a was used: {seen:?}"
    );
    assert!(
        seen.get("b").is_some_and(|n| *n >= 1),
        "b was used: {seen:?}"
    );
    assert!(seen.values().all(|n| *n <= 2), "capacity held: {seen:?}");

    // The endpoint comes back on its own address: the engine uses it again.
    let a = Chrome::start(pa, dir.path());
    a.ready().await;
    tokio::time::sleep(Duration::from_secs(6)).await; // past the time it is left alone
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_pages(browsers, portals.url.clone(), stop.clone());
    let id = submit(&faena, orders(8, 9_100), 30_000).await;
    let job = finished(&faena, &id, 300).await;
    assert_eq!(job["counts"]["succeeded"], 8, "{job}");
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    assert!(
        seen.get("a").is_some_and(|n| *n >= 1),
        "a is used again: {seen:?}"
    );
    assert_eq!(placed(&portals.gsp).len(), 20);
    // Each order's context goes once its outcome is in (disposed of after it, not
    // before): no page of the portal stays open in either browser.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = (
            portal_pages(pa, &portals.url).await,
            portal_pages(pb, &portals.url).await,
        );
        if left == (Some(0), Some(0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pages left open: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(a);
}

/// A sunat session opened through a coordinator-only engine lands on a worker; its
/// calls, downloads and screenshots are relayed; when that worker dies the session
/// closes as `worker_lost`, and opening the account again lands on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_on_a_worker_and_moves_when_the_worker_dies() {
    use faena_tests::portals::sunat;
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faena = Faena::configured(
        dir.path(),
        &format!(
            "concurrency = 0\n[browser]\nenabled = false\n[plugins.sunat]\nbrowser = true\n\
             secrets = [\"sunat_password\"]\nsettings = {{ portal_url = \"{}\" }}\n\
             [secrets]\nsunat_password = \"{}\"\n",
            portals.url,
            sunat::PASSWORD,
        ),
    )
    .await;
    let k = key(&faena, "worker", "default").await;
    let mut robots = BTreeMap::new();
    for name in ["robot1", "robot2"] {
        let w = Worker::start(&faena.url, &k, name, &dir.path().join(name), &[]);
        robots.insert(name.to_owned(), w);
    }
    // Both take sessions once they have started (and compiled their plugins).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let w = faena.get("/api/v1/workers").await;
        let ready = w["workers"].as_array().map_or(0, |l| {
            l.iter().filter(|w| w["takes_sessions"] == true).count()
        });
        if ready == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{w}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open = json!({"plugin": "sunat", "account": "20123456789/FAENA01",
                      "input": {"ruc": sunat::RUC, "user": sunat::USER}});
    let (status, s) = faena.post("/api/v1/sessions", &open).await;
    assert_eq!(status, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_owned();
    let holder = s["worker"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"))
        .to_owned();
    assert!(robots.contains_key(&holder), "{s}");
    assert_eq!(s["login"]["logged_in"], true, "{s}");
    // One active session per account, whichever worker holds it.
    let (status, same) = faena.post("/api/v1/sessions", &open).await;
    assert_eq!((status, &same["id"]), (200, &s["id"]), "{same}");

    let (status, listed) = faena
        .post(
            &format!("/api/v1/sessions/{id}/invoke"),
            &json!({"operation": "list_inbox", "input": {"page": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["result"]["messages"].as_array().unwrap().len(), 10);
    let (status, got) = faena
        .post(
            &format!("/api/v1/sessions/{id}/invoke"),
            &json!({"operation": "download", "input": {"message_id": 4}}),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["artifacts"][0]["session_id"], id.as_str(), "{got}");
    let artifact = got["result"]["artifact_id"].as_str().unwrap();
    let bytes = faena
        .client()
        .get(format!("{}/api/v1/artifacts/{artifact}", faena.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], &sunat::attachment(4).unwrap().2[..]);
    let png = faena
        .client()
        .get(format!("{}/api/v1/sessions/{id}/screenshot", faena.url))
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), 200);
    assert!(png.bytes().await.unwrap().starts_with(b"\x89PNG"));
    // The live view: JPEG frames relayed from the worker.
    let admin = std::fs::read_to_string(faena.data.join("admin.key")).unwrap();
    let (mut cast, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws/sessions/{id}/screencast?token={}",
        faena.url.replacen("http://", "ws://", 1),
        admin.trim()
    ))
    .await
    .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(15), async {
        use futures_util::StreamExt;
        loop {
            if let tokio_tungstenite::tungstenite::Message::Binary(b) =
                cast.next().await.unwrap().unwrap()
            {
                return b;
            }
        }
    })
    .await
    .expect("a frame of the live view");
    assert!(frame.starts_with(&[0xFF, 0xD8]), "a JPEG frame");
    drop(cast);
    let workers = faena.get("/api/v1/workers").await;
    let held = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == holder.as_str())
        .unwrap()["sessions"]
        .clone();
    assert_eq!(held, 1, "{workers}");

    // The holder dies: the session closes as worker_lost.
    robots.get_mut(&holder).unwrap().kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let closed = loop {
        let s = faena.get(&format!("/api/v1/sessions/{id}")).await;
        if s["state"] != "open" {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "still open: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(closed["close_reason"], "worker_lost", "{closed}");
    let events = faena
        .get("/api/v1/events?type=session_closed&limit=10")
        .await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["session_id"] == id.as_str() && e["data"]["reason"] == "worker_lost"),
        "{events}"
    );

    // Opening the account again lands on the live worker.
    let (status, again) = faena.post("/api/v1/sessions", &open).await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["worker"], holder.as_str(), "{again}");
    assert_ne!(again["id"], id.as_str());
    let (status, listed) = faena
        .post(
            &format!("/api/v1/sessions/{}/invoke", again["id"].as_str().unwrap()),
            &json!({"operation": "list_inbox", "input": {"page": 3}}),
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["result"]["messages"].as_array().unwrap().len(), 5);

    // That worker is cut off past the engine's patience (frozen): its session closes
    // as worker_lost; when it comes back it drops the session the engine gave up on,
    // rather than holding its browser context forever.
    let second = again["id"].as_str().unwrap().to_owned();
    let other = robots.get(again["worker"].as_str().unwrap()).unwrap();
    other.freeze();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = faena.get(&format!("/api/v1/sessions/{second}")).await;
        if s["state"] != "open" {
            assert_eq!(s["close_reason"], "worker_lost", "{s}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still open: {s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    other.thaw();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !other.log().contains("session dropped") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker kept the session: {}",
            other.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Portal state kept across attempts when the attempts run on a worker: the worker
/// keeps it through the engine (which seals it) and gets it back for the retry. The
/// first attempt files a permit request and dies before its checkpoint; the retry is
/// still logged in to the same portal session, finds the request in that session's
/// list, and files nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_the_portal_session_across_attempts() {
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let faena = Faena::configured(
        dir.path(),
        "concurrency = 0\n[browser]\nenabled = false\n[plugins.probe]\nbrowser = true\n",
    )
    .await;
    let resp = faena
        .client()
        .post(format!("{}/api/v1/plugins", faena.url))
        .header("content-type", "application/octet-stream")
        .body(std::fs::read(faena_tests::guests::PROBE).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let k = key(&faena, "worker", "default").await;
    let _robot = Worker::start(
        &faena.url,
        &k,
        "robot",
        &dir.path().join("robot"),
        &["--plugins", "probe", "--concurrency", "1"],
    );
    let (status, job) = faena
        .post(
            "/api/v1/jobs",
            &json!({"plugin": "probe", "operation": "permit",
                    "items": [{"input": {"url": portals.url, "address": "Av. Brasil 300", "floors": "4",
                                         "crash_after_submit": true}}],
                    "options": {"max_attempts": 3, "backoff_ms": 0}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    finished(&faena, id, 120).await;
    let item = &items(&faena, id).await[0];
    assert_eq!(item["status"], "succeeded", "{item}");
    assert_eq!(item["result"]["recovered"], true, "{item}");
    assert_eq!(item["result"]["attempt"], 2, "{item}");
    assert_eq!(owners(item), ["worker:robot", "worker:robot"], "{item}");
    assert_eq!(
        *portals.permits.logins.lock().unwrap(),
        1,
        "the retry kept the session"
    );
    assert_eq!(portals.permits.filed.lock().unwrap().len(), 1);
}

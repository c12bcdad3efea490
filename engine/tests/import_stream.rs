//! Spreadsheet imports as a stream: a million-row CSV through the real HTTP server
//! (its own threads, a 127.0.0.1 listener) while `/health` and the job list are polled,
//! the limits that refuse a file with 413 and write nothing, and a job left half
//! created by a process that died, removed at the next start.
//!
//! `cargo test -p faena --test import_stream -- --nocapture` prints the figures (the
//! million rows take over a minute in a debug build); the row count can be lowered
//! with `FAENA_IMPORT_ROWS` for a quick run.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use faena::api::{ApiServer, ApiThreads, AppState};
use faena::auth::Role;
use faena::import::ImportLimits;
use faena::model::{NewItem, NewJob};
use faena::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

// The engine's own allocator, so the memory figures are the engine's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Server {
    store: Store,
    url: String,
    key: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<ApiServer>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(limits: ImportLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = common::open_store(&dir.path().join("store")).await;
        let state = AppState::new(store.clone(), None)
            .unwrap()
            .with_import_limits(limits);
        let (_, key) = state
            .auth
            .keys
            .create("default", Role::Admin, "tests", 0)
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server =
            ApiServer::start(listener, state, ApiThreads::default(), shutdown.clone()).unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        // A fresh connection per request: an upload refused midway leaves its
        // connection closed by the server, and a pooled one could be taken for the
        // next request before the client saw it close.
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        Server {
            store,
            url,
            key,
            http,
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Upload `path` as `name`; `chunked` sends it without a declared length.
    async fn import(&self, path: &std::path::Path, name: &str, chunked: bool) -> (u16, Value) {
        self.try_import(path, name, chunked)
            .await
            .expect("the import is answered")
    }

    /// [`Server::import`]; `None` when the connection failed before an answer.
    async fn try_import(
        &self,
        path: &std::path::Path,
        name: &str,
        chunked: bool,
    ) -> Option<(u16, Value)> {
        let file = tokio::fs::File::open(path).await.unwrap();
        let len = file.metadata().await.unwrap().len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let part = if chunked {
            reqwest::multipart::Part::stream(body)
        } else {
            reqwest::multipart::Part::stream_with_length(body, len)
        };
        let form = reqwest::multipart::Form::new()
            .part("file", part.file_name(name.to_owned()))
            .text("plugin", "whatsapp")
            .text("input", r#"{"text": "hola"}"#);
        let resp = self
            .http
            .post(format!("{}/api/v1/jobs/import", self.url))
            .multipart(form)
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn jobs(&self) -> Vec<Value> {
        let page: Value = self
            .http
            .get(format!("{}/api/v1/jobs", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["jobs"].as_array().unwrap().clone()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.wait().await.unwrap();
        }
        self.store.close().await;
    }
}

/// Send `head` (no body) and read the whole answer.
async fn raw_answer(url: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let mut n = 0;
    while !String::from_utf8_lossy(&answer[..n]).contains("max_bytes") {
        match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer[n..])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => panic!("reading the answer: {e}"),
        }
    }
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

/// A CSV of `rows` orders, written to disk row by row.
fn orders_csv(dir: &std::path::Path, rows: usize, last: Option<&str>) -> std::path::PathBuf {
    let path = dir.join("orders.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "order,phone,amount").unwrap();
    for i in 0..rows {
        writeln!(out, "OC-{i},+51{i:09},{}", i % 997 + 1).unwrap();
    }
    if let Some(line) = last {
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    path
}

/// `VmHWM` (peak resident memory) and `VmRSS` of this process, in MiB: the engine
/// runs inside the test process.
fn memory_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_become_a_million_items_while_health_keeps_answering() {
    let rows: usize = std::env::var("FAENA_IMPORT_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // As `faena serve` does at start.
    faena::no_transparent_huge_pages();
    let s = Server::start(ImportLimits::default()).await;
    let files = tempfile::tempdir().unwrap();
    let path = orders_csv(files.path(), rows, None);
    let size = std::fs::metadata(&path).unwrap().len();
    let (hwm_before, _) = memory_mib();

    // Health and the job list, polled throughout from another client.
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let (http, url, done) = (s.http.clone(), s.url.clone(), done.clone());
        tokio::spawn(async move {
            let (mut latencies, mut partial) = (Vec::new(), Vec::new());
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let health = http.get(format!("{url}/health")).send().await.unwrap();
                assert_eq!(health.status(), 200, "health answers during the import");
                latencies.push(t.elapsed());
                let page: Value = http
                    .get(format!("{url}/api/v1/jobs"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                for job in page["jobs"].as_array().unwrap() {
                    if job["counts"]["queued"] != json!(rows) {
                        partial.push(job.clone());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (latencies, partial)
        })
    };
    let started = Instant::now();
    let (status, job) = s.import(&path, "orders.csv", false).await;
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (mut latencies, partial) = poller.await.unwrap();
    latencies.sort();
    let polls = latencies.len();
    let at = |q: f64| latencies[((polls - 1) as f64 * q) as usize].as_millis();
    let (hwm, rss) = memory_mib();

    assert_eq!(status, 201, "{job}");
    assert_eq!(
        job["counts"]["queued"],
        json!(rows),
        "every row became an item"
    );
    assert!(polls > 0, "health was asked during the import");
    assert!(
        partial.is_empty(),
        "a job seen before it was whole: {partial:?}"
    );
    let id = job["id"].as_str().unwrap();
    let last = s
        .store
        .items(id, None, None, Some(rows as u64 - 2), 10)
        .unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.items[0].input["order"], format!("OC-{}", rows - 1));
    assert_eq!(
        last.items[0].input["text"], "hola",
        "the job's shared input"
    );
    assert_eq!(s.jobs().await.len(), 1);
    eprintln!(
        "import: {rows} rows ({} MiB CSV) in {:.1} s; test process (engine in-process) \
         VmHWM {hwm} MiB (before the import {hwm_before} MiB), VmRSS after {rss} MiB; \
         /health asked {polls} times: median {} ms, p99 {} ms, worst {} ms",
        size >> 20,
        took.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_past_a_limit_are_refused_with_413_and_leave_nothing() {
    let s = Server::start(ImportLimits {
        max_bytes: 256 * 1024,
        max_rows: 2_500,
        max_cells: 1_000_000,
    })
    .await;
    let files = tempfile::tempdir().unwrap();
    // 3,000 rows: past the row limit, under the byte limit.
    let path = orders_csv(files.path(), 3_000, None);
    assert!(std::fs::metadata(&path).unwrap().len() < 256 * 1024);
    let (status, body) = s.import(&path, "orders.csv", false).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("more than 2500 rows (the `[import] max_rows` setting)"),
        "{body}"
    );
    // Past the byte limit, declared: refused before a byte of the body is read (only
    // the head is sent, so the answer cannot be lost to a reset connection).
    let head = format!(
        "POST /api/v1/jobs/import HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n",
        s.key,
        256 * 1024 + 1
    );
    let answer = raw_answer(&s.url, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("`[import] max_bytes`"), "{answer}");
    // Streamed without a length: refused once it passes the limit. The server stops
    // reading there, so the client may see its connection reset instead of the 413.
    let path = orders_csv(files.path(), 12_000, None);
    assert!(std::fs::metadata(&path).unwrap().len() > 256 * 1024);
    if let Some((status, body)) = s.try_import(&path, "orders.csv", true).await {
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"], "payload_too_large");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("`[import] max_bytes`"),
            "{body}"
        );
    }
    // Under the limits, a bad last row refuses everything before it too.
    let path = orders_csv(files.path(), 2_400, Some("OC-x,+51,1,extra"));
    let (status, body) = s.import(&path, "orders.csv", true).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("row 2402: has 4 cells where the header has 3"),
        "{body}"
    );
    assert!(s.jobs().await.is_empty(), "nothing was created");
    let queued = s
        .store
        .items_by_status(None, faena::model::ItemStatus::Queued, None, 10)
        .unwrap();
    assert!(queued.items.is_empty(), "no item was left behind");
    s.stop().await;
}

#[tokio::test]
async fn a_job_left_half_created_is_invisible_and_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_store(dir.path()).await;
    let new = NewJob {
        plugin: "whatsapp".into(),
        operation: "run".into(),
        name: None,
        options: Default::default(),
        input: None,
        start: true,
        items: Vec::new(),
    };
    let item = |i: u64| NewItem {
        input: json!({"phone": format!("+51{i:09}")}),
        reference: None,
    };
    let id = store.stage_job("default", new.clone(), None).await.unwrap();
    store
        .stage_items(
            &id,
            0,
            (0..1_500).map(item).collect(),
            &mut Default::default(),
        )
        .await
        .unwrap();
    store
        .stage_items(
            &id,
            1_500,
            (1_500..2_000).map(item).collect(),
            &mut Default::default(),
        )
        .await
        .unwrap();
    assert!(store.job(&id).is_err(), "no job before the commit");
    let filter = faena::store::JobFilter::default();
    assert!(store.jobs(&filter, None, 10).unwrap().items.is_empty());
    let queued = store
        .items_by_status(None, faena::model::ItemStatus::Queued, None, 10)
        .unwrap();
    assert!(queued.items.is_empty(), "staged items are nobody's");
    // A commit that does not match what was written is refused.
    assert!(store.commit_staged(&id, 2_001, None, None).await.is_err());
    // The process dies here: nothing commits the job.
    store.close().await;

    let store = common::open_store(dir.path()).await;
    assert!(store.job(&id).is_err());
    assert!(
        store.item(&format!("{id}-0")).is_err(),
        "its items went with it"
    );
    assert!(
        store.commit_staged(&id, 2_000, None, None).await.is_err(),
        "nothing is left to commit"
    );
    // A whole one commits, and a refused one is discarded by its creator.
    let id = store.stage_job("default", new.clone(), None).await.unwrap();
    store
        .stage_items(&id, 0, (0..3).map(item).collect(), &mut Default::default())
        .await
        .unwrap();
    let job = store.commit_staged(&id, 3, None, None).await.unwrap();
    assert_eq!(job.counts.queued, 3);
    assert_eq!(store.job(&id).unwrap().counts.queued, 3);
    let gone = store.stage_job("default", new, None).await.unwrap();
    store
        .stage_items(
            &gone,
            0,
            (0..2_500).map(item).collect(),
            &mut Default::default(),
        )
        .await
        .unwrap();
    store.discard_staged(&gone, 2_500).await.unwrap();
    assert!(store.item(&format!("{gone}-2499")).is_err());
    assert!(store.commit_staged(&gone, 2_500, None, None).await.is_err());
    let counts = store.count_by_status().unwrap();
    let queued = counts
        .iter()
        .find(|(s, _)| *s == faena::model::ItemStatus::Queued)
        .unwrap()
        .1;
    assert_eq!(queued, 3, "only the committed job's items are counted");
    store.close().await;
}

/// A child process that dies with the test, even one that fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real binary, killed with SIGKILL while it writes a 200,000-row import: the next
/// start finds the job's marker and removes it with every chunk under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_import_leaves_no_partial_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut faena = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_faena"))
            .args(["serve", "--no-browser", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .env("FAENA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while reqwest::get(format!("{url}/health")).await.is_err() {
        assert!(Instant::now() < deadline, "faena did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    let http = reqwest::Client::new();
    let writes = || async {
        let text = http
            .get(format!("{url}/metrics"))
            .bearer_auth(key.trim())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("faena_commit_writes_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = writes().await;
    let path = orders_csv(dir.path(), 200_000, None);
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(&path).unwrap()).file_name("o.csv"),
        )
        .text("plugin", "noop")
        .text("start", "false");
    let upload = tokio::spawn(
        http.post(format!("{url}/api/v1/jobs/import"))
            .bearer_auth(key.trim())
            .multipart(form)
            .send(),
    );
    // Kill once some chunks are on disk and before the file is done.
    while writes().await < before + 20_000 {
        if upload.is_finished() {
            let resp = upload.await.unwrap().unwrap();
            panic!(
                "the import ended before the kill: {} {}",
                resp.status(),
                resp.text().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    faena.0.kill().unwrap();
    faena.0.wait().unwrap();
    let _ = upload.await;

    let store_dir = data.join("store");
    {
        let db = common::raw_db(&store_dir);
        let tree = db.open_tree("faena").unwrap();
        assert_eq!(tree.scan_prefix(b"c").count(), 1, "a job being created");
        assert!(
            tree.scan_prefix(b"i").count() >= 10_000,
            "some of its items"
        );
        assert_eq!(tree.scan_prefix(b"j").count(), 0, "and no job");
    }
    let mut store = None;
    for _ in 0..100 {
        // With the key `faena serve` sealed its secrets with, in the data directory.
        let key = faena::secrets::SecretKey::from_file(&data.join("secret.key")).unwrap();
        let options = faena::store::StoreOptions {
            key: Some(key),
            ..Default::default()
        };
        match Store::open_with(&store_dir, faena::clock::Clock::new(), options).await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let store = store.expect("the store opens again");
    let filter = faena::store::JobFilter::default();
    assert!(store.jobs(&filter, None, 10).unwrap().items.is_empty());
    assert!(
        store
            .count_by_status()
            .unwrap()
            .iter()
            .all(|(_, n)| *n == 0),
        "no item of it is left"
    );
    store.close().await;
    let db = common::raw_db(&store_dir);
    let tree = db.open_tree("faena").unwrap();
    assert_eq!(tree.scan_prefix(b"c").count(), 0, "the marker is gone");
    assert_eq!(tree.scan_prefix(b"i").count(), 0, "and its items");
}

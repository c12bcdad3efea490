//! Hostile input over real HTTP: the whole OpenAPI surface fuzzed by schemathesis with
//! every check, on data that fits the document and data that does not (no 5xx, every
//! answer documented and matching its schema, what the document forbids refused and
//! what it allows taken, 405 with `Allow`), and bodies over the limit refused with 413
//! whether their length is declared or not.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use faena::auth::RateLimit;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// schemathesis from PyPI, which `scripts/test` installs into `target/test-venv`.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("FAENA_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv/bin/schemathesis")
        });
    assert!(
        path.exists(),
        "{} is missing: run the suite with scripts/test, which installs schemathesis",
        path.display()
    );
    path
}

fn out_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_off_its_schema() {
    // A limit the fuzzer does not reach: it should exercise the routes, not the bucket
    // (429 is documented on every route all the same).
    let e = common::start_limited(
        BTreeMap::new(),
        false,
        2,
        Duration::from_secs(3600),
        RateLimit {
            per_sec: 100_000.0,
            burst: 100_000.0,
        },
    )
    .await;
    e.load(faena::runtime::builtin_component("noop").unwrap())
        .await;
    let har = out_dir().join("requests.har");
    let _ = std::fs::remove_file(&har);
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis/schemathesis.toml");
    let out = tokio::process::Command::new(schemathesis())
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", e.url))
        .args(["--header", &format!("Authorization: Bearer {}", e.key)])
        // Every check (the default), on positive and negative data (the default mode).
        .args(["--mode", "all"])
        .args([
            "--max-examples",
            "25",
            "--workers",
            "1",
            "--seed",
            "20261201",
        ])
        .args(["--max-time", "240", "--no-color", "--report", "har"])
        .arg("--report-har-path")
        .arg(&har)
        .current_dir(out_dir())
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    std::fs::write(out_dir().join("report.txt"), report.as_bytes()).unwrap();

    // Every request it made and what came back, from its own recording.
    let recorded: Value = serde_json::from_slice(&std::fs::read(&har).unwrap()).unwrap();
    let entries = recorded["log"]["entries"].as_array().unwrap();
    let statuses: Vec<u64> = entries
        .iter()
        .map(|en| en["response"]["status"].as_u64().unwrap())
        .collect();
    let server_errors: Vec<&Value> = entries
        .iter()
        .filter(|en| en["response"]["status"].as_u64().unwrap() >= 500)
        .collect();
    let mut by_status = BTreeMap::<u64, usize>::new();
    for s in &statuses {
        *by_status.entry(*s).or_default() += 1;
    }
    println!(
        "schemathesis: {} requests, answers by status {by_status:?}, {} answered 5xx",
        statuses.len(),
        server_errors.len()
    );
    assert!(
        server_errors.is_empty(),
        "5xx answers: {:#?}",
        &server_errors[..server_errors.len().min(3)]
    );
    assert!(
        !report.contains("Failures:"),
        "schemathesis found failures (target/schemathesis/report.txt):\n{report}"
    );
    // A connection the engine dropped, or a phase that could not run, is an error.
    assert!(
        !report.contains("Errors:"),
        "schemathesis met errors (target/schemathesis/report.txt):\n{report}"
    );
    assert!(
        statuses.len() > 2_000,
        "schemathesis made only {} requests:\n{report}",
        statuses.len()
    );
    assert!(
        by_status.keys().any(|s| (200..300).contains(s)),
        "some requests got through: {by_status:?}"
    );
}

/// Raw HTTP/1.1: the status line of what the engine answers to `head` (and no body).
async fn status_of(url: &str, head: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_and_write_nothing() {
    let e = common::start(BTreeMap::new(), false, 1).await;
    e.load(faena::runtime::builtin_component("noop").unwrap())
        .await;
    let big = faena::api::MAX_BODY + 1;

    // Declared too large: refused before a byte of it is read.
    for (path, content_type) in [
        ("/api/v1/jobs", "application/json"),
        ("/api/v1/jobs/import", "multipart/form-data; boundary=x"),
        ("/api/v1/plugins", "application/wasm"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {big}\r\n\r\n",
            e.key
        );
        let status = status_of(&e.url, &head).await;
        assert!(status.contains(" 413 "), "{path}: {status}");
    }

    // Streamed without a length: refused once it passes the limit.
    let chunk = bytes::Bytes::from(vec![b'0'; 1 << 20]);
    let chunks = big.div_ceil(chunk.len());
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let resp = e
        .http
        .post(format!("{}/api/v1/plugins", e.url))
        .header("content-type", "application/wasm")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("MiB"), "{body}");

    // A small body streamed the same way still works: the limit is the only change.
    // (A new connection: the server closes the one whose body it stopped reading.)
    let items = json!({"plugin": "noop", "items": [{"input": {"n": 1}}]}).to_string();
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(items))]);
    let resp = common::client(&e.key)
        .post(format!("{}/api/v1/jobs", e.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Nothing of the refused bodies was written.
    let jobs = e.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    let plugins = e.get("/api/v1/plugins").await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 1, "{plugins}");
}

/// An item whose input does not match its operation's JSON Schema is refused before
/// anything is stored, naming the item and the field; the job's shared `input` counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_break_the_operation_schema_are_refused() {
    let grants = BTreeMap::from([(
        "whatsapp".to_owned(),
        faena::config::PluginConfig {
            secrets: Some(vec!["whatsapp_token".into()]),
            ..Default::default()
        },
    )]);
    let e = common::start(grants, false, 1).await;
    e.load(faena::runtime::builtin_component("whatsapp").unwrap())
        .await;
    let send = |items: Value, input: Value| json!({"plugin": "whatsapp", "operation": "send", "items": items, "input": input});
    for (body, names) in [
        (
            send(
                json!([{"input": {"phone": "+51900000001", "text": "hi"}},
                       {"input": {"phone": 51900000002u64, "text": "hi"}}]),
                Value::Null,
            ),
            "items[1].input.phone",
        ),
        (
            send(json!([{"input": {"phone": "+51900000001"}}]), Value::Null),
            "items[0].input",
        ),
        (
            send(
                json!([{"input": {"phone": "+51900000001"}}]),
                json!({"text": ""}),
            ),
            "items[0].input.text",
        ),
    ] {
        let (status, err) = e.post("/api/v1/jobs", body).await;
        assert_eq!(status, 422, "{err}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.starts_with(names), "`{msg}` should name {names}");
    }
    let (status, ok) = e
        .post(
            "/api/v1/jobs",
            send(
                json!([{"input": {"phone": "+51900000001"}}]),
                json!({"text": "hello"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{ok}");
    let jobs = e.get("/api/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    // An operator's fixed input is checked the same way.
    let item = format!("{}-0", ok["id"].as_str().unwrap());
    let (status, err) = e
        .post(
            &format!("/api/v1/items/{item}/transition"),
            json!({"to": "queued", "input": {"phone": 5, "text": "x"}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.starts_with("input.phone: "), "{msg}");
}

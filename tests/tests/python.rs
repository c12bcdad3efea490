//! Python plugins, built with componentize-py (which `scripts/test` installs into
//! `target/test-venv`): the gsp flow in Python installed over the API and run in real
//! Chromium against the simulator, a hostile Python guest that fails only its own
//! items, and `faena plugin new --lang python` built and run outside the repository.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use faena::config::PluginConfig;
use faena::model::{ErrorKind, ItemStatus};
use faena_tests::portals::{self, Knobs, gsp};
use serde_json::{Value, json};

/// [`faena_tests::python::build`], off the runtime's threads.
async fn build(app: &'static str, out: PathBuf) -> Vec<u8> {
    tokio::task::spawn_blocking(move || faena_tests::python::build(app, &out))
        .await
        .unwrap()
}

async fn install(e: &common::Engine, wasm: Vec<u8>) -> Value {
    let resp = e
        .http
        .post(format!("{}/api/v1/plugins", e.url))
        .header("content-type", "application/octet-stream")
        .body(wasm)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

async fn items(e: &common::Engine, job: &str) -> Vec<Value> {
    e.get(&format!("/api/v1/jobs/{job}/items?limit=100")).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn order(consultant: &str, lines: &[(&str, u32)]) -> Value {
    json!({
        "consultora_code": consultant,
        "rows": lines.iter().map(|(p, q)| json!({"product_code": p, "quantity": q})).collect::<Vec<_>>(),
    })
}

/// gsp-python (examples/plugin-python) goes in through `POST /api/v1/plugins` like any
/// component and places orders in real Chromium: each once, the one the portal saved
/// but answered with an error found again by the retry, the unknown consultant refused
/// as a business error with a screenshot. The hostile Python guest, in the same engine
/// at the same time, fails only its own items: an endless loop at its deadline, an
/// unbounded allocation at its memory limit, exceptions with their kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugins_run_in_the_engine_beside_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let gsp_wasm = build("examples/plugin-python", tmp.path().join("gsp-python.wasm")).await;
    let hostile_wasm = build(
        "tests/guests/python-hostile",
        tmp.path().join("python-hostile.wasm"),
    )
    .await;
    let portals = portals::serve(0).await.unwrap();
    let e = common::start(
        BTreeMap::from([
            (
                "gsp-python".to_owned(),
                PluginConfig {
                    browser: Some(true),
                    secrets: Some(vec!["gsp_supervisor".into(), "gsp_password".into()]),
                    settings: Some(BTreeMap::from([(
                        "portal_url".to_owned(),
                        portals.url.clone(),
                    )])),
                    ..Default::default()
                },
            ),
            (
                "python-hostile".to_owned(),
                PluginConfig {
                    deadline_secs: Some(5),
                    memory_mib: Some(64),
                    browser: Some(true),
                    http_hosts: Some(vec![portals.url.trim_start_matches("http://").to_owned()]),
                    ..Default::default()
                },
            ),
        ]),
        true,
        4,
    )
    .await;
    e.secret("gsp_supervisor", gsp::SUPERVISOR);
    e.secret("gsp_password", gsp::PASSWORD);
    let installed = install(&e, gsp_wasm).await;
    assert_eq!(installed["name"], "gsp-python", "{installed}");
    install(&e, hostile_wasm).await;
    // The first order confirmed is saved but answered with an error page.
    portals.set_knobs(
        "gsp",
        Knobs {
            fail_after_save: 1,
            ..Knobs::default()
        },
    );

    let (status, hostile) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "python-hostile", "operation": "echo", "items": [{"input": {"n": 1}}],
                   "options": {"max_attempts": 1}}),
        )
        .await;
    assert_eq!(status, 201, "{hostile}");
    let mut hostile_jobs = vec![hostile["id"].as_str().unwrap().to_owned()];
    for op in ["loop", "alloc", "raise", "business", "sdk"] {
        let (status, job) = e
            .post(
                "/api/v1/jobs",
                json!({"plugin": "python-hostile", "operation": op, "items": [{"input": {"url": portals.url}}],
                       "options": {"max_attempts": 1}}),
            )
            .await;
        assert_eq!(status, 201, "{job}");
        hostile_jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "gsp-python", "items": [
                {"input": order("C00042", &[("P001", 2), ("P002", 1)]), "reference": "C00042"},
                {"input": order("C00043", &[("P010", 5)]), "reference": "C00043"},
                {"input": order("C99999", &[("P001", 1)]), "reference": "C99999"}
            ], "options": {"max_attempts": 3, "backoff_ms": 100}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    e.wait_finished(&job_id, 240).await;
    let done = items(&e, &job_id).await;
    let by_ref = |r: &str| {
        done.iter()
            .find(|i| i["reference"] == r)
            .unwrap_or_else(|| panic!("no item {r}: {done:?}"))
            .clone()
    };
    let mut recovered = 0;
    for r in ["C00042", "C00043"] {
        let item = by_ref(r);
        assert_eq!(item["status"], "succeeded", "{item}");
        assert!(
            item["result"]["order_id"]
                .as_str()
                .unwrap()
                .starts_with("ORD-"),
            "{item}"
        );
        recovered += usize::from(item["result"]["recovered"] == true);
    }
    assert_eq!(
        recovered, 1,
        "the order saved behind an error page was found, not placed again"
    );
    let submissions = portals.submissions("gsp");
    assert_eq!(submissions.get("C00042"), Some(&1), "{submissions:?}");
    assert_eq!(submissions.get("C00043"), Some(&1), "{submissions:?}");
    let refused = by_ref("C99999");
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["error"]["kind"], "business", "{refused}");
    assert_eq!(refused["error"]["code"], "unknown-consultant", "{refused}");
    assert_eq!(refused["attempt"], 1, "{refused}");
    let files = e
        .get(&format!(
            "/api/v1/items/{}/artifacts",
            refused["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(files[0]["name"], "failure.png", "{files}");

    for id in &hostile_jobs {
        e.wait_finished(id, 120).await;
    }
    let outcome = |i: usize| e.item(&format!("{}-0", hostile_jobs[i]));
    let echo = outcome(0);
    assert_eq!(echo.status, ItemStatus::Succeeded, "{:?}", echo.error);
    assert_eq!(echo.result.unwrap(), json!({"n": 1}));
    let looped = outcome(1).error.expect("the loop fails");
    assert_eq!(
        looped.code.as_deref(),
        Some("deadline"),
        "{}",
        looped.message
    );
    let alloc = outcome(2).error.expect("the allocation fails");
    assert_eq!(alloc.kind, ErrorKind::Application);
    assert!(alloc.message.contains("MemoryError"), "{}", alloc.message);
    let raised = outcome(3).error.expect("the exception fails");
    assert_eq!(raised.kind, ErrorKind::Application);
    assert!(
        raised.message.contains("ValueError: boom"),
        "{}",
        raised.message
    );
    let business = outcome(4).error.expect("the business error fails");
    assert_eq!(
        (business.kind, business.code.as_deref()),
        (ErrorKind::Business, Some("bad-data"))
    );
    // The SDK's wrappers reach the host: a 303 seen as it is, its cookie in the jar and
    // sent back, cookies set on the page, a dialog answered and listed.
    let sdk = outcome(5);
    assert_eq!(sdk.status, ItemStatus::Succeeded, "{:?}", sdk.error);
    let r = sdk.result.unwrap();
    assert_eq!(r["status"], 303, "{r}");
    assert_eq!(r["location"], "/permits/api/whoami", "{r}");
    assert_eq!(r["whoami"]["user"], "arq.vera", "{r}");
    assert_eq!(r["jar"], json!(["permits_sid"]), "{r}");
    assert!(
        r["page_cookies"]
            .as_array()
            .unwrap()
            .contains(&json!("probe")),
        "{r}"
    );
    assert_eq!(r["dialogs"], json!(["alert: hi from python"]), "{r}");
}

/// `faena plugin new NAME --lang python` writes a project that builds outside this
/// repository (the SDK and the WIT beside `app.py`), `faena plugin build` builds it
/// with componentize-py, the component runs here, and `faena plugin install` puts it
/// on an engine that runs its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_project_builds_and_runs_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let tool = faena_tests::python::componentize_py();
    let faena = |args: &[&str]| {
        common::process::faena_in(
            dir.path(),
            &[("FAENA_COMPONENTIZE_PY", tool.as_os_str())],
            args,
        )
    };
    let (ok, out) = faena(&["plugin", "new", "permits", "--lang", "python"]);
    assert!(ok, "{out}");
    let (ok, out) = faena(&["plugin", "build", "permits"]);
    assert!(ok, "{out}");
    let wasm = common::process::built_component(&out);
    assert!(wasm.ends_with("dist/permits.wasm"), "{out}");
    let (ok, out) = faena(&[
        "plugin",
        "run",
        &wasm,
        "--op",
        "run",
        "--input",
        r#"{"name":"Ana"}"#,
    ]);
    assert!(
        ok && out.contains("hello Ana") && out.contains("step greeted"),
        "{out}"
    );
    let (ok, out) = faena(&[
        "plugin",
        "run",
        &wasm,
        "--op",
        "run",
        "--input",
        r#"{"name":" "}"#,
    ]);
    assert!(
        !ok && out.contains("business") && out.contains("bad-input"),
        "{out}"
    );
    // Too little memory for CPython is refused when the plugin loads, naming the grant.
    std::fs::write(
        dir.path().join("small.toml"),
        "[plugins.permits]\nmemory_mib = 8\n",
    )
    .unwrap();
    let (ok, out) = faena(&[
        "plugin",
        "run",
        &wasm,
        "--op",
        "run",
        "--config",
        "small.toml",
    ]);
    assert!(!ok && out.contains("memory_mib"), "{out}");
    common::installed_project_runs(&dir.path().join(&wasm), "hello Ana").await;
}

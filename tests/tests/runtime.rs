//! The plugin runtime with real components: every capability, the sandbox against
//! hostile guests, and a browser flow in real headless Chromium.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Engine;
use faena::config::PluginConfig;
use faena::model::{ErrorKind, Item, ItemStatus, JobOptions, JobStatus, NewItem, NewJob};
use faena::store::EventFilter;
use faena_tests::guests::PROBE;
use serde_json::{Value, json};

async fn engine(grants: PluginConfig, browser: bool) -> Engine {
    let e = common::start(BTreeMap::from([("probe".to_owned(), grants)]), browser, 4).await;
    e.load(&std::fs::read(PROBE).unwrap()).await;
    e
}

/// Run one item of `operation` to its end; one attempt, failures fail.
async fn run_one(e: &Engine, operation: &str, input: Value) -> Item {
    run_with(e, operation, input, 1).await
}

async fn run_with(e: &Engine, operation: &str, input: Value, max_attempts: u32) -> Item {
    let job = e
        .store
        .create_job(
            "default",
            NewJob {
                input: None,
                plugin: "probe".into(),
                operation: operation.into(),
                name: None,
                options: JobOptions {
                    max_attempts,
                    backoff_ms: 0,
                    ..Default::default()
                },
                start: true,
                items: vec![NewItem {
                    input,
                    reference: None,
                }],
            },
            e.runtime.version_for_new_job("probe", operation).unwrap(),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let j = e.store.job(&job.id).unwrap();
        if j.status == JobStatus::Completed {
            return e.store.item(&format!("{}-0", job.id)).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{operation} did not finish: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn local_server() -> (String, faena_tests::pages::PageServer) {
    let server = faena_tests::pages::serve().await;
    (server.host.clone(), server)
}

/// A retry sees the checkpoints of every earlier attempt, not only the last one: an
/// attempt that stopped early does not hide that an earlier one got further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sees_the_checkpoints_of_every_earlier_attempt() {
    let e = engine(PluginConfig::default(), false).await;
    let item = run_with(&e, "stages", json!({}), 3).await;
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.error);
    let r = item.result.unwrap();
    assert_eq!(r["checkpoints"], json!(["login", "submitted", "login"]));
    assert_eq!(r["last"], "login");
    assert_eq!(r["passed_submitted"], true);
    assert_eq!(r["submitted_state"], "ref-77");
    assert_eq!(r["login_state"], "from attempt 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uses_every_granted_capability() {
    let (host, _stop) = local_server().await;
    let e = engine(
        PluginConfig {
            http_hosts: Some(vec![host.clone()]),
            secrets: Some(vec!["probe_token".into()]),
            ..Default::default()
        },
        false,
    )
    .await;
    let secret = "s3cr3t-value-42";
    e.store
        .secrets()
        .unwrap()
        .set("default", "probe_token", secret)
        .unwrap();
    let item = run_one(
        &e,
        "capabilities",
        json!({"url": format!("http://{host}/ping")}),
    )
    .await;
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.error);
    let r = item.result.clone().unwrap();
    assert_eq!(
        (
            r["status"].clone(),
            r["body"].clone(),
            r["token_len"].clone()
        ),
        (json!(200), json!("pong"), json!(secret.len()))
    );
    assert_eq!(item.steps[0].name, "logged_in");
    let artifact = e
        .store
        .artifacts()
        .unwrap()
        .get(r["artifact"].as_str().unwrap())
        .unwrap();
    assert_eq!(artifact.item_id.as_deref(), Some(item.id.as_str()));
    let note = e.store.artifacts().unwrap().read(&artifact).await.unwrap();
    assert_eq!(
        String::from_utf8(note).unwrap(),
        "hello; the token was ***",
        "text artifacts are redacted"
    );
    // The log line carried the secret: it is stored redacted, and no event holds it.
    let logs = e.store.item_logs(&item.id).unwrap();
    assert!(
        logs.iter().any(|l| l["message"] == "using token ***"),
        "{logs:?}"
    );
    // So are its upper-cased and dash-stripped copies, in logs and in the result.
    assert!(
        logs.iter()
            .any(|l| l["message"] == "shouted ***, stripped ***"),
        "{logs:?}"
    );
    assert_eq!(r["copies"], json!(["***", "***"]));
    let events = e
        .store
        .events(0, &EventFilter::default(), usize::MAX)
        .unwrap()
        .0;
    assert!(
        events
            .iter()
            .any(|ev| ev.kind == "item_progress" && ev.data["progress"]["stage"] == "halfway")
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(secret), "a secret leaked into the event log");
    // Over the API, the item shows its artifact.
    let detail: Value = e
        .http
        .get(format!("{}/api/v1/items/{}", e.url, item.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["artifacts"][0]["name"], "note.txt");
}

/// Each hostile guest fails only its own item, with an error that says what happened,
/// and the next item of a well-behaved operation succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_fail_alone() {
    let (host, _stop) = local_server().await;
    let (other, _stop2) = local_server().await;
    let e = engine(
        PluginConfig {
            http_hosts: Some(vec![host.clone()]),
            memory_mib: Some(64),
            deadline_secs: Some(2),
            ..Default::default()
        },
        false,
    )
    .await;
    let cases: Vec<(&str, Value, ErrorKind, &str)> = vec![
        ("loop", json!({}), ErrorKind::Application, "deadline"),
        ("alloc", json!({}), ErrorKind::Application, "trapped"),
        (
            "read-file",
            json!({"path": "/etc/passwd"}),
            ErrorKind::Business,
            "could not read the file",
        ),
        (
            "socket",
            json!({"addr": other}),
            ErrorKind::Business,
            "could not connect",
        ),
        (
            "http",
            json!({"url": format!("http://{other}/ping")}),
            ErrorKind::Business,
            "may not reach",
        ),
        (
            "secret",
            json!({"name": "probe_token"}),
            ErrorKind::Business,
            "not granted",
        ),
        (
            "panic",
            json!({}),
            ErrorKind::Application,
            "probe panicked on purpose",
        ),
    ];
    let runs = cases
        .iter()
        .map(|(op, input, _, _)| run_one(&e, op, input.clone()));
    let items = futures_util::future::join_all(runs).await;
    for ((op, _, kind, says), item) in cases.iter().zip(items) {
        assert_eq!(item.status, ItemStatus::Failed, "{op}: {:?}", item.result);
        let err = item.error.unwrap();
        assert_eq!(err.kind, *kind, "{op}: {}", err.message);
        assert!(
            err.message.contains(says),
            "{op}: `{}` should say `{says}`",
            err.message
        );
    }
    let ok = run_one(&e, "echo", json!({"after": "hostile"})).await;
    assert_eq!(ok.status, ItemStatus::Succeeded);
    assert_eq!(ok.result.unwrap()["input"]["after"], "hostile");
    let granted = run_one(&e, "http", json!({"url": format!("http://{host}/ping")})).await;
    assert_eq!(granted.result.unwrap()["status"], 200);
}

/// A browser plugin fills a form on a local page in real headless Chromium; a failing
/// one leaves a PNG screenshot that can be fetched through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_flow_in_chromium_and_failure_screenshot() {
    let (host, _stop) = local_server().await;
    let e = engine(
        PluginConfig {
            browser: Some(true),
            ..Default::default()
        },
        true,
    )
    .await;
    let item = run_one(
        &e,
        "form",
        json!({"url": format!("http://{host}/form"), "name": "Ana", "kind": "urgent"}),
    )
    .await;
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.error);
    assert_eq!(item.result.unwrap()["done"], "Saved Ana as urgent");

    let bad = run_one(&e, "missing", json!({"url": format!("http://{host}/form")})).await;
    assert_eq!(bad.status, ItemStatus::Failed);
    let err = bad.error.unwrap();
    assert_eq!(err.code.as_deref(), Some("timeout"), "{}", err.message);
    // It says what it waited for and where the page is instead: its URL and title.
    assert!(
        err.message.contains("`#never-there` did not appear")
            && err
                .message
                .contains(&format!("http://{host}/form (\"Purchase request\")")),
        "{}",
        err.message
    );

    // A form the browser refuses to submit fails at once, as the data's fault, with
    // the field and the browser's own message; it is not retried.
    let refused = run_one(
        &e,
        "form",
        json!({"url": format!("http://{host}/constrained"), "name": "Ana", "kind": "urgent"}),
    )
    .await;
    assert_eq!(refused.status, ItemStatus::Failed);
    assert_eq!(refused.attempt, 1, "a business error is not retried");
    let err = refused.error.unwrap();
    assert_eq!(
        (err.kind, err.code.as_deref()),
        (faena::model::ErrorKind::Business, Some("invalid_form")),
        "{}",
        err.message
    );
    assert!(err.message.contains("field `qty`"), "{}", err.message);
    assert!(err.message.contains("valid value"), "{}", err.message);
    let list: Value = e
        .http
        .get(format!("{}/api/v1/items/{}/artifacts", e.url, bad.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["name"], "failure.png", "{list}");
    common::assert_png(&e, list[0]["id"].as_str().unwrap()).await;

    // Without the grant, the same operation is refused before it runs.
    let denied = engine(PluginConfig::default(), true).await;
    let why = denied
        .runtime
        .version_for_new_job("probe", "form")
        .unwrap_err();
    assert!(
        why.contains("the browser") && why.contains("[plugins.probe]"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_listed_and_uploaded_through_the_api() {
    let e = engine(PluginConfig::default(), false).await;
    let client = e.http.clone();
    let list: Value = client
        .get(format!("{}/api/v1/plugins", e.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let probe = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "probe")
        .unwrap();
    assert!(
        probe["operations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "form" && o["needs"]["browser"] == true)
    );
    // The same version again is a conflict; garbage is refused with a reason.
    let again = client
        .post(format!("{}/api/v1/plugins", e.url))
        .header("content-type", "application/octet-stream")
        .body(std::fs::read(PROBE).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    let garbage = client
        .post(format!("{}/api/v1/plugins", e.url))
        .header("content-type", "application/octet-stream")
        .body(b"\0asm not really".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 422);
    let body: Value = garbage.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a faena plugin component"),
        "{body}"
    );
}

/// Chromium dies in the middle of a flow: the item fails with an application error,
/// is retried, and the retry runs on a newly launched browser; the dead one's profile
/// is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_browser_is_replaced_and_the_item_retried() {
    let (host, pages) = local_server().await;
    let e = engine(
        PluginConfig {
            browser: Some(true),
            ..Default::default()
        },
        true,
    )
    .await;
    let job = e
        .store
        .create_job(
            "default",
            NewJob {
                input: None,
                plugin: "probe".into(),
                operation: "form".into(),
                name: None,
                options: JobOptions { max_attempts: 3, backoff_ms: 10, max_backoff_ms: 10, ..Default::default() },
                start: true,
                items: vec![NewItem { input: json!({"url": format!("http://{host}/slow"), "name": "Ana", "kind": "normal"}), reference: None }],
            },
            e.runtime.version_for_new_job("probe", "form").unwrap(),
        )
        .await
        .unwrap();
    let id = format!("{}-0", job.id);
    // Wait until the first attempt is inside the slow page load (the page answers after
    // two seconds), then kill the browser.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if pages.slow_loads.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first attempt never reached the slow page"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-f", &e.chromium_dir()])
        .status()
        .unwrap();
    assert!(killed.success(), "chromium was running");
    // Generous: a relaunch on a loaded 2-core machine takes seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let item = loop {
        let item = e.store.item(&id).unwrap();
        if !item.status.is_open() {
            break item;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the item never finished: {item:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.attempts);
    assert_eq!(item.result.unwrap()["done"], "Saved Ana as normal");
    let first = item.attempts[0]
        .error
        .as_ref()
        .expect("the first attempt failed");
    assert_eq!(first.kind, ErrorKind::Application, "{}", first.message);
    // The dead browser's profile went with it: only the new one's is left.
    let profiles = std::fs::read_dir(e.chromium_dir()).unwrap().count();
    assert_eq!(profiles, 1, "profiles in {}", e.chromium_dir());
}

/// The example plugin, installed through the API like a team would, runs: a good
/// input succeeds, a bad one goes to review, a flaky one succeeds on its retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugin_installs_and_runs() {
    let e = engine(PluginConfig::default(), false).await;
    let client = e.http.clone();
    let resp = client
        .post(format!("{}/api/v1/plugins", e.url))
        .header("content-type", "application/wasm")
        .body(std::fs::read(faena_tests::guests::PLUGIN_HELLO).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let meta: Value = resp.json().await.unwrap();
    assert_eq!(
        (meta["name"].clone(), meta["builtin"].clone()),
        (json!("hello"), json!(false))
    );
    // An input its schema refuses (`name` with `minLength: 1`) never reaches the
    // plugin: the job is refused whole, naming the item and the field.
    let resp = client
        .post(format!("{}/api/v1/jobs", e.url))
        .json(&json!({"plugin": "hello", "items": [{"input": {"name": "Ana"}}, {"input": {"name": ""}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("items[1].input.name"),
        "{err}"
    );
    let resp = client
        .post(format!("{}/api/v1/jobs", e.url))
        .json(
            &json!({"plugin": "hello", "options": {"on_failure": "review", "backoff_ms": 10},
            "items": [{"input": {"name": "Ana"}}, {"input": {"name": "Bo", "flaky": true}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let job: Value = resp.json().await.unwrap();
    assert_eq!(
        job["plugin_version"], "0.1.0",
        "the job keeps the version it was created with"
    );
    let id = job["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j: Value = client
            .get(format!("{}/api/v1/jobs/{id}", e.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "completed" {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (
            job["counts"]["succeeded"].clone(),
            job["counts"]["needs_review"].clone()
        ),
        (json!(2), json!(0))
    );
    let flaky = e.store.item(&format!("{id}-1")).unwrap();
    assert_eq!(flaky.attempts.len(), 2);
    assert_eq!(flaky.result.unwrap()["greeting"], "hello, Bo");
}

/// The commands in the example plugin's doc, run as they are written: its build command
/// in the repository (into the folder the suite builds guests in, so nothing is built
/// twice) and its install command from a folder holding `target/` and `data/admin.key`,
/// only the engine's address put in place of `localhost:8080`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_plugins_doc_commands_work_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let doc: String = std::fs::read_to_string(root.join("examples/plugin-hello/src/lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let quoted = |after: &str| -> String {
        let from = doc
            .find(after)
            .unwrap_or_else(|| panic!("`{after}` in the doc"))
            + after.len();
        let rest = &doc[from..];
        rest[..rest.find('`').unwrap()].to_owned()
    };
    let build = quoted("Build it with `");
    let install = format!("curl{}", quoted("`curl"));
    assert!(build.starts_with("cargo build"), "{build}");
    assert!(install.contains("data/admin.key"), "{install}");

    // PLUGIN_HELLO is `<wasm target>/wasm32-wasip2/release/faena_example_hello.wasm`.
    let wasm_target = std::path::Path::new(faena_tests::guests::PLUGIN_HELLO)
        .ancestors()
        .nth(3)
        .unwrap()
        .to_owned();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(&build).current_dir(root);
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let out = cmd.env("CARGO_TARGET_DIR", &wasm_target).output().unwrap();
    assert!(
        out.status.success(),
        "{build}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let e = common::start(BTreeMap::new(), false, 2).await;
    let here = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&wasm_target, here.path().join("target")).unwrap();
    std::fs::create_dir(here.path().join("data")).unwrap();
    std::fs::write(here.path().join("data/admin.key"), &e.key).unwrap();
    let address = e.url.trim_start_matches("http://");
    let install = install.replace("localhost:8080", address);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{install} -sS -w '\\n%{{http_code}}'"))
        .current_dir(here.path())
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && answer.ends_with("\n201"),
        "{install}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answer.contains(r#""name":"hello""#), "{answer}");
    let job = e
        .http
        .post(format!("{}/api/v1/jobs", e.url))
        .json(&json!({"plugin": "hello", "items": [{"input": {"name": "Ana"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 201);
}

/// `faena plugin run`: one item here with no server, its steps and result printed,
/// a failure's kind and code in the error and the exit status; `faena plugin install`
/// puts the component on a running engine with the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_run_and_install_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let faena = |args: &[&str]| {
        let out = std::process::Command::new(common::process::faena_bin())
            .args(args)
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = faena(&["plugin", "run", PROBE, "--op", "stages", "--attempts", "3"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("step submitted (attempt 1): ref-77"), "{out}");
    let printed: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(printed["passed_submitted"], true, "{out}");

    let (ok, out, err) = faena(&[
        "plugin",
        "run",
        PROBE,
        "--op",
        "fail",
        "--input",
        r#"{"kind":"business"}"#,
    ]);
    assert!(!ok, "{out}");
    assert!(err.contains("business error [bad-data]: bad data"), "{err}");
    let (ok, _, err) = faena(&["plugin", "run", PROBE, "--op", "nope"]);
    assert!(!ok && err.contains("has no operation `nope`"), "{err}");
    let (ok, _, err) = faena(&["plugin", "run", PROBE, "--op", "echo", "--input", "{bad"]);
    assert!(!ok && err.contains("--input is not JSON"), "{err}");
    // A built-in plugin by name.
    let (ok, out, err) = faena(&[
        "plugin",
        "run",
        "noop",
        "--op",
        "run",
        "--input",
        r#"{"a":1}"#,
    ]);
    assert!(ok && out.contains("\"a\": 1"), "{out}{err}");

    let e = engine(PluginConfig::default(), false).await;
    let hello = faena_tests::guests::PLUGIN_HELLO;
    let (ok, out, err) = faena(&[
        "plugin", "install", hello, "--server", &e.url, "--key", &e.key,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("installed hello"), "{out}");
    let (ok, _, err) = faena(&[
        "plugin", "install", hello, "--server", &e.url, "--key", &e.key,
    ]);
    assert!(
        !ok && err.contains("409") || err.contains("already"),
        "{err}"
    );
}

/// `faena plugin new` writes a project that builds outside this repository (its own
/// crate, the SDK and WIT beside it), `faena plugin build` builds it, the component
/// runs here, and `faena plugin install` puts it on an engine that runs its jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_project_builds_and_runs_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let faena = |args: &[&str]| common::process::faena_in(dir.path(), &[], args);
    let (ok, out) = faena(&["plugin", "new", "permits"]);
    assert!(ok, "{out}");
    let (ok, out) = faena(&["plugin", "new", "permits"]);
    assert!(!ok && out.contains("exists already"), "{out}");
    let (ok, out) = faena(&["plugin", "new", "Bad Name"]);
    assert!(!ok && out.contains("is not a plugin name"), "{out}");
    let (ok, out) = faena(&["plugin", "build", "permits"]);
    assert!(ok, "{out}");
    let wasm = common::process::built_component(&out);
    assert!(
        wasm.ends_with("permits/target/wasm32-wasip2/release/permits.wasm"),
        "{out}"
    );
    let (ok, out) = faena(&[
        "plugin",
        "run",
        &wasm,
        "--op",
        "run",
        "--input",
        r#"{"name":"Ana"}"#,
    ]);
    assert!(ok && out.contains("hello, Ana"), "{out}");
    let (ok, out) = faena(&[
        "plugin",
        "run",
        &wasm,
        "--op",
        "run",
        "--input",
        r#"{"name":""}"#,
    ]);
    assert!(!ok && out.contains("--input"), "{out}");
    common::installed_project_runs(&dir.path().join(&wasm), "hello, Ana").await;
}

/// A portal whose request list shows only what the current login session filed: the
/// first attempt files a request and dies before its checkpoint; the retry, which kept
/// the portal session (`keep_state`), finds the request in that session's list and
/// does not file it again. Without keeping the state, the retry signs in afresh, finds
/// nothing and files a second request — the duplicate this prevents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_keeps_the_portal_session_and_finds_what_it_filed() {
    let portals = faena_tests::portals::serve(0).await.unwrap();
    let e = engine(
        PluginConfig {
            browser: Some(true),
            ..Default::default()
        },
        true,
    )
    .await;
    let input = |keep: bool, address: &str, floors: &str| {
        json!({"url": portals.url, "address": address, "floors": floors,
               "crash_after_submit": true, "keep_state": keep})
    };
    let kept = run_with(&e, "permit", input(true, "Av. Arequipa 120", "3"), 3).await;
    assert_eq!(kept.status, ItemStatus::Succeeded, "{:?}", kept.error);
    let result = kept.result.clone().unwrap();
    assert_eq!(result["recovered"], true, "{result}");
    assert_eq!(result["attempt"], 2, "{result}");
    // The page's local storage came back too, before the portal's scripts ran.
    assert_eq!(result["draft"], "from attempt 1", "{result}");
    let key = kept.idempotency_key();
    assert_eq!(portals.submissions("permits").get(&key), Some(&1));
    assert_eq!(
        *portals.permits.logins.lock().unwrap(),
        1,
        "the retry kept the session"
    );
    let filed = portals.permits.filed.lock().unwrap().clone();
    assert_eq!(filed.len(), 1);
    assert_eq!(
        (
            filed[0].kind.as_str(),
            filed[0].use_.as_str(),
            filed[0].floors
        ),
        ("extension", "residential", 3)
    );
    // The kept state (sealed: no cookie value in the clear) is gone with the item.
    assert_eq!(e.store.kept_state(&kept.id).unwrap(), None);

    // The control: the same crash without keeping the portal session files twice.
    let lost = run_with(&e, "permit", input(false, "Jr. Cusco 45", "2"), 3).await;
    assert_eq!(lost.status, ItemStatus::Succeeded, "{:?}", lost.error);
    assert_eq!(lost.result.clone().unwrap()["recovered"], false);
    assert_eq!(
        portals.submissions("permits").get(&lost.idempotency_key()),
        Some(&2)
    );

    // A number the form's `step` refuses fails at once, as the data's fault, with the
    // browser's message: no retry, nothing filed.
    let before = portals.permits.filed.lock().unwrap().len();
    let refused = run_with(&e, "permit", input(true, "Calle Lima 9", "2.5"), 3).await;
    assert_eq!(refused.status, ItemStatus::Failed);
    assert_eq!(refused.attempt, 1);
    let err = refused.error.unwrap();
    assert_eq!(
        (err.kind, err.code.as_deref()),
        (ErrorKind::Business, Some("invalid_form")),
        "{}",
        err.message
    );
    assert!(err.message.contains("field `floors`"), "{}", err.message);
    assert_eq!(portals.permits.filed.lock().unwrap().len(), before);
}

/// The HTTP capability's cookie jar and redirects: a form login answered with a 303
/// that sets the session cookie is seen as it is without following, the cookie goes
/// back on the next request, and a followed login lands on the page it redirects to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keeps_cookies_and_can_stop_at_a_redirect() {
    let portals = faena_tests::portals::serve(0).await.unwrap();
    let host = portals.url.trim_start_matches("http://").to_owned();
    let e = engine(
        PluginConfig {
            http_hosts: Some(vec![host]),
            ..Default::default()
        },
        false,
    )
    .await;
    let item = run_one(&e, "http-session", json!({"url": portals.url})).await;
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.error);
    let r = item.result.unwrap();
    assert_eq!(r["login_status"], 303, "{r}");
    assert_eq!(r["location"], "/permits/api/whoami", "{r}");
    assert_eq!(r["set_cookie"], true, "{r}");
    assert_eq!(r["whoami_status"], 200, "{r}");
    assert_eq!(r["whoami"], "{\"user\":\"arq.vera\"}", "{r}");
    assert_eq!(r["followed_status"], 200, "{r}");
    assert_eq!(r["jar"], json!(["permits_sid"]), "{r}");
}

/// Every page call, once, in real Chromium, each checked by what the page saw: texts,
/// counts, visibility, checkbox and radio, a select by its label, a file upload, a key
/// press, dialogs answered OK then Cancel, hover, waits on text and URL, cookies, back
/// and reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_calls_do_what_they_say() {
    let (host, _stop) = local_server().await;
    let e = engine(
        PluginConfig {
            browser: Some(true),
            ..Default::default()
        },
        true,
    )
    .await;
    let url = format!("http://{host}/calls");
    let item = run_one(&e, "page-calls", json!({ "url": url })).await;
    assert_eq!(item.status, ItemStatus::Succeeded, "{:?}", item.error);
    let r = item.result.unwrap();
    assert_eq!(r["title"], "Calls");
    assert_eq!(r["rows"], json!(["one", "two", "three"]));
    assert_eq!(r["count"], 3);
    assert_eq!(r["visible"], json!([true, false]));
    assert_eq!(r["checked"], json!([true, true]));
    assert!(
        r["radio_uncheck"]
            .as_str()
            .unwrap()
            .contains("radio button"),
        "{r}"
    );
    assert!(
        r["no_label"]
            .as_str()
            .unwrap()
            .contains("no option labelled `Cusco`"),
        "{r}"
    );
    assert_eq!(r["submenu"], true);
    assert!(
        r["waited"]
            .as_str()
            .unwrap()
            .contains("did not come to show `never`"),
        "{r}"
    );
    assert_eq!(r["has_html"], true);
    assert!(
        r["cookies"]
            .as_array()
            .unwrap()
            .contains(&json!("probe=42")),
        "{r}"
    );
    let log = r["log"].as_str().unwrap();
    for line in [
        "office ARE-02",
        "file note.txt text/plain hello file",
        "enter RUC 2055",
        "confirm true",
        "confirm false",
        "late",
    ] {
        assert!(log.contains(line), "`{line}` not in the page's log: {log}");
    }
    assert_eq!(
        r["dialogs"],
        json!(["confirm: Delete it?", "confirm: Delete it?"])
    );
    assert_eq!(r["back"], url);
    assert_eq!(r["reloaded"], true, "reload loads the page again");
}

/// A component built against the WIT as first released (before functions were added
/// to it) still loads and runs its items, browser included: the WIT only grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_the_first_wit_still_runs() {
    let (host, _stop) = local_server().await;
    let e = common::start(
        BTreeMap::from([(
            "first-wit".to_owned(),
            PluginConfig {
                browser: Some(true),
                ..Default::default()
            },
        )]),
        true,
        2,
    )
    .await;
    e.load(&std::fs::read(faena_tests::guests::FIRST_WIT).unwrap())
        .await;
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "first-wit", "operation": "echo",
                   "items": [{"input": {"n": 1}}, {"input": {"url": format!("http://{host}/calls")}}]}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    e.wait_finished(&id, 60).await;
    let plain = e.item(&format!("{id}-0"));
    assert_eq!(plain.status, ItemStatus::Succeeded, "{:?}", plain.error);
    assert_eq!(
        plain.result.unwrap(),
        json!({"input": {"n": 1}, "title": null})
    );
    assert_eq!(plain.steps[0].name, "echoed");
    let paged = e.item(&format!("{id}-1"));
    assert_eq!(paged.status, ItemStatus::Succeeded, "{:?}", paged.error);
    assert_eq!(paged.result.unwrap()["title"], "Calls");
}

/// Redirects the HTTP capability follows stay inside the grants, as the first request
/// does (`denied`), credentials the plugin set are not carried to another host, and a
/// chain longer than five stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_redirects_stay_inside_the_grants() {
    let portals = faena_tests::portals::serve(0).await.unwrap();
    let (other, _stop) = local_server().await;
    let portal = portals.url.trim_start_matches("http://").to_owned();
    let bounce = |to: &str| {
        reqwest::Url::parse_with_params(
            &format!("{}/permits/api/bounce", portals.url),
            [("to", to)],
        )
        .unwrap()
        .to_string()
    };
    let granted = |hosts: Vec<String>| PluginConfig {
        http_hosts: Some(hosts),
        ..Default::default()
    };
    // Only the portal is granted: a redirect to the other host is refused as denied.
    let e = engine(granted(vec![portal.clone()]), false).await;
    let out = run_one(
        &e,
        "http-get",
        json!({"url": bounce(&format!("http://{other}/ping"))}),
    )
    .await;
    let err = out.error.expect("the redirect is refused");
    assert_eq!(
        (err.kind, err.code.as_deref()),
        (ErrorKind::Business, Some("denied")),
        "{}",
        err.message
    );
    // Six hops on the portal itself: more than five.
    let mut url = format!("{}/permits/api/whoami", portals.url);
    for _ in 0..6 {
        url = bounce(&url);
    }
    let out = run_one(&e, "http-get", json!({"url": url})).await;
    let err = out.error.expect("too many redirects");
    assert!(err.message.contains("more than 5 times"), "{}", err.message);

    // Both granted: followed, but the plugin's Authorization and Cookie headers stay
    // with the portal.
    let e = engine(granted(vec![portal, other.clone()]), false).await;
    let out = run_one(
        &e,
        "http-get",
        json!({"url": bounce(&format!("http://{other}/headers")),
               "headers": {"authorization": "Bearer portal-token", "cookie": "sid=1", "x-trace": "t1"}}),
    )
    .await;
    assert_eq!(out.status, ItemStatus::Succeeded, "{:?}", out.error);
    let r = out.result.unwrap();
    let sent: Vec<String> = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert!(sent.contains(&"x-trace".to_owned()), "{sent:?}");
    assert!(!sent.contains(&"authorization".to_owned()), "{sent:?}");
    assert!(!sent.contains(&"cookie".to_owned()), "{sent:?}");
}

/// A first start compiles and describes the plugins in a child process of the binary
/// (so that the serving engine never runs the compiler) and keeps what it learned; a
/// later start reads it. An installed component that cannot be described is still
/// refused by the engine itself, by its file, and the others serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_describes_plugins_in_a_child_and_a_later_start_reads_them() {
    use common::process::Faena;
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("engine/plugins/broken/1.0.0.wasm");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(&broken, b"not a component").unwrap();
    let mut faena = Faena::configured(dir.path(), "[browser]\nenabled = false\n").await;
    let log_path = faena.data.join("faena.log");
    let log = plain_log(&log_path);
    // Five built-ins and the broken one; the child's own report names the broken file.
    assert!(
        log.contains("in a child process") && log.contains("plugins=6"),
        "{log}"
    );
    assert!(log.contains("cannot describe"), "the child reports: {log}");
    // The engine itself compiled none of them: each was registered from the child's
    // description, and nothing was described here.
    for name in ["noop", "ultimus", "gsp", "sunat", "whatsapp"] {
        let loaded = format!("plugin loaded plugin={name} ");
        assert!(
            log.lines()
                .any(|l| l.contains(&loaded) && l.contains("compiled=false")),
            "{name} registered from its description: {log}"
        );
    }
    assert!(!log.contains("describing here"), "{log}");
    assert!(
        log.contains("an installed plugin could not be loaded") && log.contains("1.0.0.wasm"),
        "{log}"
    );
    let described = std::fs::read_dir(faena.data.join("cache/described"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    assert_eq!(described, 5, "one description per built-in");
    let plugins = faena.get("/api/v1/plugins").await;
    let names: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["noop", "ultimus", "gsp", "sunat", "whatsapp"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    // The serving engine compiles on first use, from the code the child left.
    let (status, job) = faena
        .post(
            "/api/v1/jobs",
            &json!({"plugin": "noop", "items": [{"input": {"n": 1}}]}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while faena.job(id).await["status"] != "completed" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            faena.job(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(faena.job(id).await["counts"]["succeeded"], 1);
    assert!(plain_log(&log_path).contains("compiling on first use plugin=noop"));
    assert!(faena.terminate(30).await.success());

    // A later start: only the broken component is still without a description.
    std::fs::write(&log_path, b"").unwrap();
    let config = dir.path().join("faena.toml");
    let url = faena.url.clone();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    drop(faena);
    let faena = Faena::start(&config, &dir.path().join("engine"), port);
    faena.ready().await;
    let log = plain_log(&log_path);
    assert!(log.contains("plugins=1"), "{log}");
    let plugins = faena.get("/api/v1/plugins").await;
    assert_eq!(plugins["plugins"].as_array().unwrap().len(), 5, "{plugins}");
}

/// The engine's log without its colours.
fn plain_log(path: &std::path::Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap();
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}

//! Generated clients against a live engine: the Python client of openapi-python-client
//! and the TypeScript ones of openapi-typescript (+ openapi-fetch) and
//! @hey-api/openapi-ts are generated from the engine's `/openapi.json`, a warning of
//! any generator fails the test, and the programs in `examples/clients/` run against
//! the engine (a job created, its items paged, one read and cancelled, the job run
//! and retried, and 401/404/409/422 as typed errors).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `program` in `dir`; its output, or a failure saying what it printed.
async fn run(dir: &Path, program: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    assert!(
        program.exists(),
        "{} is missing: run the suite with scripts/test, which installs it",
        program.display()
    );
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
    let printed = text(&out);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{printed}",
        program.display()
    );
    printed
}

/// What a generator printed, with no warning in it.
fn no_warnings(generator: &str, printed: &str) {
    let lower = printed.to_lowercase();
    assert!(
        !lower.contains("warn") && !lower.contains("unable") && !printed.contains('⚠'),
        "{generator} warned:\n{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_python_and_typescript_clients_work_against_the_engine() {
    let e = common::start(BTreeMap::new(), false, 2).await;
    e.load(faena::runtime::builtin_component("noop").unwrap())
        .await;
    let out = root().join("target/clients");
    std::fs::create_dir_all(&out).unwrap();
    let spec = out.join("openapi.json");
    let doc = reqwest::get(format!("{}/openapi.json", e.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&spec, &doc).unwrap();
    let spec = spec.to_str().unwrap();
    let env = [
        ("FAENA_URL", e.url.as_str()),
        ("FAENA_API_KEY", e.key.as_str()),
    ];

    // Python.
    let venv = root().join("target/test-venv/bin");
    let python_dir = root().join("examples/clients/python");
    let generated = out.join("python");
    let printed = run(
        &python_dir,
        &venv.join("openapi-python-client"),
        &[
            "generate",
            "--path",
            spec,
            "--output-path",
            generated.to_str().unwrap(),
            "--overwrite",
            "--config",
            "config.yaml",
        ],
        &[],
    )
    .await;
    no_warnings("openapi-python-client", &printed);
    let models = std::fs::read_dir(generated.join("faena_client/models"))
        .unwrap()
        .count();
    let schemas =
        serde_json::from_slice::<serde_json::Value>(&doc).unwrap()["components"]["schemas"]
            .as_object()
            .unwrap()
            .len();
    // Every schema a model (the package's `__init__.py` besides; the multipart form
    // of the import adds its own).
    assert!(
        models > schemas,
        "{models} model files for {schemas} schemas: the generator dropped some"
    );
    let pythonpath = generated.to_str().unwrap().to_owned();
    let mut py_env = env.to_vec();
    py_env.push(("PYTHONPATH", &pythonpath));
    let printed = run(&python_dir, &venv.join("python"), &["example.py"], &py_env).await;
    println!("{printed}");
    assert!(printed.contains("python client: ok"), "{printed}");

    // TypeScript: both generators, compiled with the programs (a type error fails the
    // build), then run.
    let ts = root().join("examples/clients/typescript");
    let bin = ts.join("node_modules/.bin");
    let printed = run(
        &ts,
        &bin.join("openapi-typescript"),
        &[spec, "-o", "src/generated/schema.d.ts"],
        &[],
    )
    .await;
    no_warnings("openapi-typescript", &printed);
    let printed = run(
        &ts,
        &bin.join("openapi-ts"),
        &["-i", spec, "-o", "src/generated/hey"],
        &[],
    )
    .await;
    no_warnings("@hey-api/openapi-ts", &printed);
    run(&ts, &bin.join("tsc"), &["-p", "."], &[]).await;
    let node = PathBuf::from("/usr/bin/env");
    for (program, done) in [
        ("dist/openapi-fetch.js", "openapi-fetch client: ok"),
        ("dist/hey-api.js", "hey-api client: ok"),
    ] {
        let printed = run(&ts, &node, &["node", program], &env).await;
        println!("{printed}");
        assert!(printed.contains(done), "{printed}");
    }
    drop(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_document_is_valid_asyncapi_with_every_event_type() {
    let e = common::start(BTreeMap::new(), false, 1).await;
    let dir = root().join("tests/asyncapi");
    assert!(
        dir.join("node_modules/@asyncapi/parser").exists(),
        "tests/asyncapi is not installed: run the suite with scripts/test"
    );
    let printed = run(
        &dir,
        Path::new("/usr/bin/env"),
        &["node", "validate.mjs", &format!("{}/asyncapi.json", e.url)],
        &[],
    )
    .await;
    println!("{printed}");
    assert!(printed.contains("valid: AsyncAPI 3.0.0"), "{printed}");
    let doc: serde_json::Value = reqwest::get(format!("{}/asyncapi.json", e.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = doc["components"]["messages"].as_object().unwrap();
    for name in [
        "subscribe",
        "ping",
        "subscribed",
        "pong",
        "lagged",
        "error",
        "CustomEvent",
    ] {
        assert!(messages.contains_key(name), "{name} missing");
    }
    for kind in faena::model::kind::BUILTIN {
        let described = messages.values().any(|m| {
            let schema = m["payload"]["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
                .map(|n| &doc["components"]["schemas"][n]);
            schema.is_some_and(|s| s["properties"]["type"]["enum"][0] == kind)
        });
        assert!(described, "no message for {kind}");
    }
    assert!(
        doc["servers"]["engine"]["host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    drop(e);
}

//! Python plugins of this repository, built for the tests and benchmarks with
//! componentize-py (which `scripts/test` and `scripts/bench` install into
//! `target/test-venv`), the repository's Python SDK and its WIT.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The componentize-py to build with: `$FAENA_COMPONENTIZE_PY`, or the one in
/// `target/test-venv`.
pub fn componentize_py() -> PathBuf {
    std::env::var_os("FAENA_COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-venv/bin/componentize-py"))
}

/// Build the Python app in `app` (a folder of this repository whose `app.py` defines
/// `WitWorld`) into `out`; the component's bytes.
pub fn build(app: &str, out: &Path) -> Vec<u8> {
    let done = std::process::Command::new(componentize_py())
        .arg("-d")
        .arg(root().join("wit"))
        .args(["-w", "flow", "componentize", "-p"])
        .arg(root().join(app))
        .arg("-p")
        .arg(root().join("plugins/sdk-python"))
        .args(["app", "-o"])
        .arg(out)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/test and scripts/bench install componentize-py into target/test-venv)",
                componentize_py().display()
            )
        });
    assert!(
        done.status.success(),
        "componentize-py failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    std::fs::read(out).unwrap()
}

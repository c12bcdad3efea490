//! `faena plugin new NAME [--lang rust|python]` writes a plugin project that builds
//! where it is, outside this repository, with a copy of the SDK and the WIT it was
//! built against, as this binary carries them: for Rust its own crate (no workspace to
//! inherit from), for Python an `app.py` beside the `faena` package. `faena plugin
//! build [DIR]` builds either (cargo for `wasm32-wasip2`, or componentize-py) and says
//! where the component is.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The SDK and the WIT, as this binary was built with them.
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_ERROR: &str = include_str!("../../../plugins/sdk/src/error.rs");
const SDK_PAGE: &str = include_str!("../../../plugins/sdk/src/page.rs");
const WIT: &str = include_str!("../../../wit/faena-plugin.wit");
/// For the versions of the SDK's dependencies.
const WORKSPACE: &str = include_str!("../../../Cargo.toml");
/// The Python SDK, and the componentize-py it is built with.
const PY_SDK: [(&str, &str); 4] = [
    (
        "faena/__init__.py",
        include_str!("../../../plugins/sdk-python/faena/__init__.py"),
    ),
    (
        "faena/errors.py",
        include_str!("../../../plugins/sdk-python/faena/errors.py"),
    ),
    (
        "faena/http.py",
        include_str!("../../../plugins/sdk-python/faena/http.py"),
    ),
    (
        "faena/page.py",
        include_str!("../../../plugins/sdk-python/faena/page.py"),
    ),
];
const PY_REQUIREMENTS: &str = include_str!("../../../plugins/sdk-python/requirements.txt");

/// The componentize-py the SDK is tested with, as its requirements pin it.
fn componentize_py_version() -> &'static str {
    PY_REQUIREMENTS
        .lines()
        .find_map(|l| l.trim().strip_prefix("componentize-py=="))
        .expect("plugins/sdk-python/requirements.txt pins componentize-py")
}

/// Whether `name` is a plugin name a crate can have too: a lowercase letter, then
/// lowercase letters, digits, `-` or `_`, at most 64.
fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// A dependency's line as the workspace has it (`[workspace.dependencies]`): its
/// version, features and default features.
fn dependency(krate: &str) -> anyhow::Result<String> {
    let doc: toml::Table = toml::from_str(WORKSPACE).context("the workspace manifest")?;
    let dep = doc["workspace"]["dependencies"]
        .get(krate)
        .with_context(|| format!("no {krate} in the workspace"))?;
    Ok(format!("{krate} = {dep}"))
}

/// Where a new project goes, checked: a valid name, a folder that does not exist.
fn new_root(name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if !valid_name(name) {
        bail!(
            "`{name}` is not a plugin name: a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 64)"
        );
    }
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if root.exists() {
        bail!("{} exists already: choose another place", root.display());
    }
    Ok(root)
}

fn write_all<'a>(
    root: &Path,
    files: impl IntoIterator<Item = (&'a str, String)>,
) -> anyhow::Result<()> {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub fn new_rust(name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = new_root(name, dir)?;
    let (serde, serde_json, wit_bindgen) = (
        dependency("serde")?,
        dependency("serde_json")?,
        dependency("wit-bindgen")?,
    );
    let sdk_manifest = format!(
        r#"[package]
name = "faena-plugin-sdk"
description = "Write a faena portal flow as one Rust file"
version = "{sdk}"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
{serde}
{serde_json}
{wit_bindgen}
"#,
        sdk = env!("CARGO_PKG_VERSION"),
    );
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK this project was made with, kept beside it (`faena plugin new` wrote it).
faena-plugin-sdk = {{ path = "sdk" }}

# A project of its own, even inside another workspace.
[workspace]

[profile.release]
opt-level = "s"
strip = true
"#
    );
    let files: [(&str, String); 9] = [
        ("Cargo.toml", manifest),
        (
            ".cargo/config.toml",
            "[build]\ntarget = \"wasm32-wasip2\"\n".into(),
        ),
        (".gitignore", "/target\n/faena-run\n".into()),
        ("src/lib.rs", flow_template(name)),
        ("README.md", readme(name)),
        ("sdk/Cargo.toml", sdk_manifest),
        (
            "sdk/src/lib.rs",
            SDK_LIB.replace(r#"path: "../../wit""#, r#"path: "wit""#),
        ),
        ("sdk/src/error.rs", SDK_ERROR.into()),
        ("sdk/src/page.rs", SDK_PAGE.into()),
    ];
    write_all(
        &root,
        files
            .into_iter()
            .chain([("sdk/wit/faena-plugin.wit", WIT.to_owned())]),
    )?;
    Ok(root)
}

/// A Python project: `app.py`, the `faena` package and the WIT beside it, a
/// `pyproject.toml` that names it, and the componentize-py pin.
pub fn new_python(name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let root = new_root(name, dir)?;
    let pyproject = format!(
        "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\
         # The plugin runs on the CPython inside the component; this only builds it.\n\
         dependencies = [\"componentize-py=={v}\"]\n",
        v = componentize_py_version()
    );
    let files = [
        ("app.py", py_template(name)),
        ("pyproject.toml", pyproject),
        ("requirements.txt", PY_REQUIREMENTS.to_owned()),
        (
            ".gitignore",
            "/dist\n/faena-run\n/.venv\n__pycache__/\n".into(),
        ),
        ("README.md", py_readme(name)),
        ("wit/faena-plugin.wit", WIT.to_owned()),
    ];
    write_all(
        &root,
        files
            .into_iter()
            .chain(PY_SDK.iter().map(|(p, t)| (*p, (*t).to_owned()))),
    )?;
    Ok(root)
}

fn py_template(name: &str) -> String {
    format!(
        r#""""{name}: a faena portal flow."""

from faena import BusinessError, Context, Operation, Plugin, export, step


class Flow(Plugin):
    name = "{name}"
    version = "0.1.0"
    description = "Greets someone (replace with your portal flow)"
    operations = [
        Operation(
            "run",
            "Greet someone by name",
            {{
                "type": "object",
                "required": ["name"],
                "properties": {{"name": {{"type": "string", "minLength": 1}}}},
            }},
            # browser=True, http_hosts=["portal.example.com"], secrets=["portal_password"],
        )
    ]

    def run(self, operation: str, input: dict, ctx: Context):
        if operation != "run":
            raise BusinessError(f"{name} has no operation `{{operation}}`")
        name = input.get("name", "").strip()
        if not name:
            raise BusinessError("input.name: a name is required", code="bad-input")
        step("greeted", name)
        return {{"greeting": f"hello {{name}}", "attempt": ctx.attempt}}


WitWorld = export(Flow)
"#
    )
}

fn py_readme(name: &str) -> String {
    format!(
        "# {name}\n\nA faena plugin in Python.\n\n```sh\n\
         python3 -m venv .venv && .venv/bin/pip install -r requirements.txt   # once: componentize-py\n\
         faena plugin build                 # dist/{name}.wasm\n\
         faena plugin run dist/{name}.wasm --op run --input '{{\"name\": \"Ana\"}}'\n\
         faena plugin install dist/{name}.wasm --server http://127.0.0.1:8080 --key \"$KEY\"\n```\n\n\
         `faena/` is the faena Python SDK and `wit/` the interface this project was made with.\n\
         Import what you use at the top of `app.py`: componentize-py runs it once when it\n\
         builds, and the component has no files to import from when it runs.\n"
    )
}

/// The componentize-py to build with: `$FAENA_COMPONENTIZE_PY`, the project's
/// `.venv`, or the one on `PATH`.
fn componentize_py(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("FAENA_COMPONENTIZE_PY") {
        return PathBuf::from(p);
    }
    let venv = dir.join(".venv/bin/componentize-py");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("componentize-py")
}

/// Build the Python project in `dir` with componentize-py; the component's path.
fn build_python(dir: &Path) -> anyhow::Result<PathBuf> {
    let name = std::fs::read_to_string(dir.join("pyproject.toml"))
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|d| d.get("project")?.get("name")?.as_str().map(str::to_owned))
        .or_else(|| {
            std::fs::canonicalize(dir)
                .ok()?
                .file_name()?
                .to_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "plugin".into());
    if !dir.join("wit").is_dir() || !dir.join("faena").is_dir() {
        bail!(
            "{} has app.py but no wit/ or faena/ beside it (`faena plugin new NAME --lang python` writes both)",
            dir.display()
        );
    }
    let tool = componentize_py(dir);
    let version = std::process::Command::new(&tool).arg("--version").output();
    match version {
        Err(_) => bail!(
            "componentize-py is not installed: `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt` in {} (or put componentize-py {} on PATH)",
            dir.display(),
            componentize_py_version()
        ),
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stdout);
            if !said.contains(componentize_py_version()) {
                eprintln!(
                    "warning: {} is {}; the SDK is tested with {}",
                    tool.display(),
                    said.trim(),
                    componentize_py_version()
                );
            }
        }
    }
    let out = PathBuf::from("dist").join(format!("{name}.wasm"));
    std::fs::create_dir_all(dir.join("dist"))
        .with_context(|| format!("cannot create {}", dir.join("dist").display()))?;
    let status = std::process::Command::new(&tool)
        .args([
            "-d",
            "wit",
            "-w",
            "flow",
            "componentize",
            "-p",
            ".",
            "app",
            "-o",
        ])
        .arg(&out)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !status.success() {
        bail!("componentize-py could not build {}", dir.display());
    }
    Ok(dir.join(out))
}

fn flow_template(name: &str) -> String {
    format!(
        r#"//! The `{name}` portal flow. Try it with `faena plugin build` and
//! `faena plugin run target/wasm32-wasip2/release/{file}.wasm --op run --input '{{"name": "Ana"}}'`;
//! install it on an engine with `faena plugin install … --server URL --key KEY`.

use faena_plugin_sdk::serde_json::{{Value, json}};
use faena_plugin_sdk::{{Context, Error, Info, Operation, Plugin, Result, export, step}};

struct Flow;

impl Plugin for Flow {{
    fn info() -> Info {{
        Info::new("{name}", env!("CARGO_PKG_VERSION"), "What this flow does").operation(
            Operation::new(
                "run",
                "One item: greet `name`",
                json!({{
                    "type": "object",
                    "required": ["name"],
                    "properties": {{"name": {{"type": "string", "minLength": 1}}}}
                }}),
            ),
            // .browser() for a page, .secret("portal_password"), .http("portal.example.com")
        )
    }}

    fn run(_operation: &str, input: Value, ctx: &Context) -> Result<Value> {{
        let Some(name) = input["name"].as_str().filter(|n| !n.is_empty()) else {{
            // Bad data: never retried; the item fails or waits for review.
            return Err(Error::business("input.name: a non-empty string is required"));
        }};
        // A retry sees what earlier attempts recorded: look before doing it twice.
        if !ctx.passed("greeted") {{
            step("greeted", Some(name))?;
        }}
        Ok(json!({{"greeting": format!("hello, {{name}}"), "attempt": ctx.attempt}}))
    }}
}}

export!(Flow);
"#,
        file = name.replace('-', "_"),
    )
}

fn readme(name: &str) -> String {
    format!(
        "# {name}\n\nA faena plugin.\n\n```sh\nrustup target add wasm32-wasip2   # once\n\
         faena plugin build                 # target/wasm32-wasip2/release/{file}.wasm\n\
         faena plugin run target/wasm32-wasip2/release/{file}.wasm --op run --input '{{\"name\": \"Ana\"}}'\n\
         faena plugin install target/wasm32-wasip2/release/{file}.wasm --server http://127.0.0.1:8080 --key \"$KEY\"\n```\n\n\
         `sdk/` is the faena plugin SDK and `sdk/wit/` the interface this project was made with.\n",
        file = name.replace('-', "_"),
    )
}

/// Build the plugin project in `dir`: a Rust crate for `wasm32-wasip2`, or a Python
/// app with componentize-py. The component's path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() && dir.join("app.py").exists() {
        return build_python(dir);
    }
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "no plugin project in {}: {} is missing",
            dir.display(),
            manifest.display()
        )
    })?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", manifest.display()))?;
    let Some(name) = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{} has no [package] name", manifest.display());
    };
    // The project's own target folder, whatever the environment says: the component
    // is then where this says it is.
    let status = std::process::Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .status()
        .context("cannot run cargo (is Rust installed?)")?;
    if !status.success() {
        bail!(
            "cargo could not build {} (a missing target? `rustup target add wasm32-wasip2`)",
            dir.display()
        );
    }
    let wasm = dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !wasm.exists() {
        bail!("cargo built, but {} is not there", wasm.display());
    }
    Ok(wasm)
}

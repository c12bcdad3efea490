//! `faena plugin new NAME` writes a plugin project that builds where it is, outside
//! this repository: its own crate (no workspace to inherit from) with a copy of the
//! SDK and the WIT it was built against, as this binary carries them. `faena plugin
//! build [DIR]` builds it for `wasm32-wasip2` and says where the component is.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The SDK and the WIT, as this binary was built with them.
const SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");
const SDK_ERROR: &str = include_str!("../../../plugins/sdk/src/error.rs");
const SDK_PAGE: &str = include_str!("../../../plugins/sdk/src/page.rs");
const WIT: &str = include_str!("../../../wit/faena-plugin.wit");
/// For the versions of the SDK's dependencies.
const WORKSPACE: &str = include_str!("../../../Cargo.toml");

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

pub fn new_rust(name: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if !valid_name(name) {
        bail!(
            "`{name}` is not a plugin name: a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 64)"
        );
    }
    let root = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if root.exists() {
        bail!("{} exists already: choose another place", root.display());
    }
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
    for (path, text) in files
        .iter()
        .chain([("sdk/wit/faena-plugin.wit", WIT.to_owned())].iter())
    {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
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

/// Build the plugin project in `dir` for `wasm32-wasip2`; the component's path.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
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

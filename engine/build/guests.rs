// Shared by engine/build.rs and tests/build.rs (via `include!`): build guest crates
// for wasm32-wasip2 with a nested cargo, the way wasmtime's test-programs do.
//
// The nested build uses its own target directory under the workspace's target/, so
// it never waits on the lock the outer cargo holds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Build the crates in `dirs` (relative to the workspace root) and return, for each,
/// its directory name and the path of the built component.
fn build_guests(dirs: &[&str]) -> Vec<(String, PathBuf)> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join("wasm"),
        None => root.join("target").join("wasm"),
    };
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let mut packages = Vec::new();
    for dir in dirs {
        let path = root.join(dir);
        println!("cargo:rerun-if-changed={}", path.display());
        let name = package_name(&path.join("Cargo.toml"));
        let short = Path::new(dir).file_name().unwrap().to_string_lossy().into_owned();
        packages.push((short, name));
    }
    // The SDK is a dependency of every guest.
    println!("cargo:rerun-if-changed={}", root.join("plugins/sdk").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target);
    for (_, name) in &packages {
        cmd.args(["-p", name]);
    }
    // What the outer cargo sets for the host build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_PROFILE_") || key.starts_with("CARGO_CFG_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd.output().expect("cargo runs");
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
            "\nThe guest target is missing: run `rustup target add wasm32-wasip2`."
        } else {
            ""
        };
        panic!("building the plugins for wasm32-wasip2 failed:\n{stderr}{hint}");
    }
    packages
        .into_iter()
        .map(|(short, name)| {
            let file = target
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_")));
            assert!(file.exists(), "{} was not built", file.display());
            (short, file)
        })
        .collect()
}

fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    text.lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("name")
                .map(|rest| rest.trim_start_matches([' ', '=']).trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{} has no package name", manifest.display()))
}

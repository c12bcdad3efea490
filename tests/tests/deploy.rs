//! The deployment files in `deploy/` are what docs/deploy.md tells users to copy: every
//! Kubernetes manifest parses, and every `faena` command line in them (container
//! arguments, systemd `ExecStart=`) uses a subcommand and flags the CLI has.

mod common;

use std::path::{Path, PathBuf};

use common::process::faena_bin;
use serde::Deserialize as _;
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no files in deploy/{sub}");
    out
}

/// Check that `faena ARGS` names a subcommand whose help lists every `--flag` used.
fn check_command(file: &Path, args: &[String]) {
    let sub = &args[0];
    let help = std::process::Command::new(faena_bin())
        .args([sub.as_str(), "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}: `faena {sub}` is not a command",
        file.display()
    );
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{}: `faena {sub}` has no {flag}",
            file.display()
        );
    }
}

#[test]
fn kubernetes_manifests_parse_and_their_faena_commands_exist() {
    let mut commands = 0;
    for file in files("kubernetes") {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{}: no {field}", file.display());
            }
            assert!(doc["metadata"]["name"].is_string(), "{}", file.display());
            let containers = doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            for c in containers {
                let image = c["image"].as_str().unwrap_or("");
                if !image.contains("/faena") {
                    continue;
                }
                let args: Vec<String> = c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect();
                check_command(&file, &args);
                commands += 1;
            }
        }
    }
    assert!(commands >= 2, "an engine and a worker");
}

#[test]
fn systemd_units_have_their_sections_and_faena_commands_exist() {
    for file in files("systemd") {
        let text = std::fs::read_to_string(&file).unwrap();
        for section in ["[Unit]", "[Service]", "[Install]"] {
            assert!(text.contains(section), "{}: no {section}", file.display());
        }
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{}: no ExecStart", file.display()));
        let mut words = exec.split_whitespace();
        assert!(words.next().unwrap().ends_with("/faena"));
        let args: Vec<String> = words.map(str::to_owned).collect();
        check_command(&file, &args);
    }
}

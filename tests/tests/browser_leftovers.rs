//! No Chromium is left behind: a real `faena serve` that launched Chromium for a gsp
//! order is killed with SIGKILL, and its browser (every process of it) goes too; the
//! next start removes the stale profile and a Chromium a killed engine could not take
//! with it; a clean stop leaves no profile.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faena_tests::portals::{self, gsp};
use rustix::process::{Pid, Signal};
use serde_json::{Value, json};

/// The `faena` binary of this build (`cargo build -p faena` makes it).
fn faena_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("faena");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p faena`",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Processes whose command line names a profile under `root` (anywhere in it:
/// Chromium's child processes rewrite theirs into one string).
fn with_profile_under(root: &Path) -> Vec<i32> {
    let needle = format!("--user-data-dir={}/", root.display());
    let needle = needle.as_bytes();
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// Live processes (not zombies) of the process group `pgid`.
fn in_group(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the `(comm)` field: state, ppid, pgrp.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Bytes in the files under `path`.
fn size(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |d| {
        d.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => size(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

fn profiles(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Wait up to `secs` for `done`; how long it took, or `None` if it never held.
async fn within(secs: u64, done: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done().then(|| start.elapsed())
}

struct Faena {
    child: Child,
    url: String,
    data: PathBuf,
}

impl Faena {
    async fn start(config: &Path, data: &Path, port: u16) -> Faena {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("faena.log"))
            .unwrap();
        let child = Command::new(faena_bin())
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let faena = Faena {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while reqwest::get(format!("{}/health", faena.url)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "faena did not start: {}",
                faena.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        faena
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("faena.log")).unwrap_or_default()
    }

    /// One gsp order, run to the end: the engine has a Chromium once it returns.
    async fn order(&self, code: &str) {
        let key = std::fs::read_to_string(self.data.join("admin.key")).unwrap();
        let client = common::client(key.trim());
        let resp = client
            .post(format!("{}/api/v1/jobs", self.url))
            .json(
                &json!({"plugin": "gsp", "items": [{"input": {"consultora_code": code,
                "rows": [{"product_code": "P001", "quantity": 1}]}}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let id = resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job: Value = client
                .get(format!("{}/api/v1/jobs/{id}", self.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "completed" {
                assert_eq!(job["counts"]["succeeded"], 1, "{job}\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "the order did not finish: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A child of the test, killed and reaped however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process_group(Pid::from_child(&self.0), Signal::KILL);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Faena {
    /// However the test ends, it leaves no engine and no Chromium of its own behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in with_profile_under(&self.data.join("chromium")) {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_chromium_left_after_sigkill_of_the_engine() {
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data = std::fs::canonicalize(&data).unwrap();
    let profiles_dir = data.join("chromium");
    let port = free_port();
    let config = dir.path().join("faena.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nport = {port}\nconcurrency = 1\n\
             [plugins.gsp]\nbrowser = true\nsecrets = [\"gsp_supervisor\", \"gsp_password\"]\n\
             settings = {{ portal_url = \"{}\" }}\n\
             [secrets]\ngsp_supervisor = \"{}\"\ngsp_password = \"{}\"\n",
            portals.url,
            gsp::SUPERVISOR,
            gsp::PASSWORD,
            data = data.display().to_string(),
        ),
    )
    .unwrap();

    // An engine with a live Chromium: its processes, and the group its browser leads.
    let mut faena = Faena::start(&config, &data, port).await;
    faena.order("C00001").await;
    let running = with_profile_under(&profiles_dir);
    assert!(!running.is_empty(), "Chromium is not running");
    let browser = running
        .iter()
        .copied()
        .find(|&pid| {
            rustix::process::getpgid(Pid::from_raw(pid)).is_ok_and(|g| g.as_raw_pid() == pid)
        })
        .expect("the browser leads a process group of its own");
    let group = in_group(browser);
    assert_eq!(profiles(&profiles_dir).len(), 1, "one profile per browser");
    let profile_bytes = size(&profiles_dir);

    // SIGKILL: nothing of that Chromium survives.
    faena.child.kill().unwrap();
    faena.child.wait().unwrap();
    let gone = within(30, || {
        with_profile_under(&profiles_dir).is_empty() && in_group(browser).is_empty()
    })
    .await;
    assert!(
        gone.is_some(),
        "Chromium outlived the engine: {:?} with the profile, {:?} in its group",
        with_profile_under(&profiles_dir),
        in_group(browser)
    );
    assert_eq!(
        profiles(&profiles_dir).len(),
        1,
        "a killed engine cannot remove its profile; the next start does"
    );

    // A Chromium that a killed engine could not take with it (as without `setpriv`),
    // on a profile of its own: the next start kills it and removes every profile.
    let stray = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--remote-debugging-port=0",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profiles_dir.join("stray").display()
        ))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let stray = Reaped(stray);
    let stray_pid = stray.0.id() as i32;
    assert!(
        within(30, || profiles_dir.join("stray").is_dir())
            .await
            .is_some(),
        "the stray Chromium did not start"
    );
    let mut faena = Faena::start(&config, &data, port).await;
    let stray_gone = within(30, || in_group(stray_pid).is_empty()).await;
    assert!(stray_gone.is_some(), "the stray Chromium survived a start");
    assert!(
        with_profile_under(&profiles_dir).is_empty(),
        "a start leaves leftovers running"
    );
    assert_eq!(
        profiles(&profiles_dir),
        Vec::<String>::new(),
        "stale profiles"
    );

    // A clean stop (SIGTERM) takes the browser and its profile.
    faena.order("C00002").await;
    assert_eq!(profiles(&profiles_dir).len(), 1);
    rustix::process::kill_process(Pid::from_child(&faena.child), Signal::TERM).unwrap();
    let status = faena.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", faena.log());
    assert!(with_profile_under(&profiles_dir).is_empty());
    assert_eq!(
        profiles(&profiles_dir),
        Vec::<String>::new(),
        "a clean stop left a profile"
    );
    println!(
        "browser leftovers: {} Chromium processes ({} in the browser's group) gone {:?} after SIGKILL of the engine; its profile of {:.1} MB and a stray Chromium gone at the next start",
        running.len(),
        group.len(),
        gone.unwrap(),
        profile_bytes as f64 / 1e6
    );
}

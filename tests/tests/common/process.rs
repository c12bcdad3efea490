//! A real `faena serve` process, for tests about what happens to the process itself:
//! kills, signals, a full disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `faena` binary the workspace's test build made (an integration test of the
/// engine crate makes cargo build it), or the one `FAENA_BIN` names (where several
/// checkouts share one target directory, each its own copy).
pub fn faena_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FAENA_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("faena");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p faena` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Faena {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl Faena {
    /// Start one on a free port with its data in `dir/engine` and `settings` (TOML,
    /// after `data_dir` and `port`) in `dir/faena.toml`, and wait until it answers.
    pub async fn configured(dir: &Path, settings: &str) -> Faena {
        let data = dir.join("engine");
        std::fs::create_dir_all(&data).unwrap();
        let port = free_port();
        let config = dir.join("faena.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nport = {port}\n{settings}",
                data.display().to_string()
            ),
        )
        .unwrap();
        let faena = Faena::start(&config, &data, port);
        faena.ready().await;
        faena
    }

    pub fn start(config: &Path, data: &Path, port: u16) -> Faena {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("faena.log"))
            .unwrap();
        let child = Command::new(faena_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Faena {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_owned(),
        }
    }

    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while reqwest::get(format!("{}/health", self.url)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "faena did not start; see {}",
                self.data.join("faena.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and the Chromium it launched (which SIGKILL leaves behind).
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        kill_chromium(&self.data);
    }

    /// SIGTERM, as systemd and Kubernetes stop a service; then wait (up to `secs`)
    /// for the process to exit and return its status.
    pub async fn terminate(&mut self, secs: u64) -> std::process::ExitStatus {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child pid"),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "faena did not exit {secs}s after SIGTERM; see {}",
                self.data.join("faena.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client with the admin key the first start wrote to the data directory.
    pub fn client(&self) -> reqwest::Client {
        let key = std::fs::read_to_string(self.data.join("admin.key"))
            .expect("the first start writes an admin key");
        super::client(key.trim())
    }

    /// `GET {path}` (under the engine's address) with the admin key, as JSON.
    pub async fn get(&self, path: &str) -> Value {
        self.client()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST {path}` with a JSON body and the admin key: the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .client()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/api/v1/jobs/{id}")).await
    }
}

impl Drop for Faena {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_chromium(&self.data);
    }
}

/// Kill the Chromium processes whose profile lives in this data directory.
pub fn kill_chromium(data: &Path) {
    let _ = Command::new("pkill")
        .args(["-9", "-f"])
        .arg(data.join("chromium").display().to_string())
        .status();
}

/// A real `faena worker` process with its own data directory (and Chromium).
pub struct Worker {
    pub child: Child,
    pub name: String,
    pub data: PathBuf,
}

impl Worker {
    pub fn start(server: &str, key: &str, name: &str, data: &Path, args: &[&str]) -> Worker {
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("worker.log"))
            .unwrap();
        let child = Command::new(faena_bin())
            .args(["worker", "--server", server, "--key", key, "--name", name])
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker {
            child,
            name: name.to_owned(),
            data: data.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("worker.log")).unwrap_or_default()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).expect("a child pid"),
            signal,
        )
        .unwrap();
    }

    /// SIGKILL, and the Chromium it launched.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        kill_chromium(&self.data);
    }

    /// SIGSTOP: the process is frozen (its Chromium is not).
    pub fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_chromium(&self.data);
    }
}

/// A Chromium started by hand with its DevTools on a port: a browser endpoint of a
/// fleet, as Chrome with `--remote-debugging-port` or a grid node offers one.
pub struct Chrome {
    pub port: u16,
    profile: PathBuf,
    child: Child,
}

impl Chrome {
    pub fn start(port: u16, dir: &Path) -> Chrome {
        let profile = dir.join(format!("chrome-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("/usr/bin/chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Chrome {
            port,
            profile,
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait until its DevTools answer.
    pub async fn ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{}/json/version", self.url()))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Chromium did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its open pages' URLs.
    pub async fn pages(&self) -> Vec<String> {
        let Ok(resp) = reqwest::get(format!("{}/json/list", self.url())).await else {
            return Vec::new();
        };
        let list: Value = resp.json().await.unwrap_or(Value::Null);
        list.as_array()
            .map(|l| {
                l.iter()
                    .filter(|t| t["type"] == "page")
                    .filter_map(|t| t["url"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGKILL, with every process of its profile.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("pkill")
            .args(["-9", "-f"])
            .arg(self.profile.display().to_string())
            .status();
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `faena ARGS` in `dir` (its compile cache there too, and `env` set): whether it
/// succeeded, and what it printed (stdout, then stderr).
pub fn faena_in(dir: &Path, env: &[(&str, &std::ffi::OsStr)], args: &[&str]) -> (bool, String) {
    let out = Command::new(faena_bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The component's path that `faena plugin build` printed.
pub fn built_component(out: &str) -> String {
    out.lines()
        .find(|l| l.ends_with(".wasm"))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_owned()
}

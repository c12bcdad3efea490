//! The `workers` section: no-op items through `faena worker` processes against the
//! engine's own dispatcher, all real processes of the release binary on loopback,
//! and the engine's CPU per item each way (from /proc, the engine process only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The release `faena` next to this benchmark (`scripts/bench` builds it).
fn faena_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/faena");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p faena --bins` (scripts/bench does)",
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

/// CPU seconds (user + system) a process has used, from /proc.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    super::stat_cpu_seconds(&stat)
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct RemoteRun {
    pub rate: f64,
    /// Engine CPU per completed item, µs.
    pub engine_cpu_us: f64,
}

async fn wait_job(http: &reqwest::Client, url: &str, key: &str, id: &str) {
    loop {
        let j: Value = http
            .get(format!("{url}/api/v1/jobs/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match j["status"].as_str() {
            Some("completed") => return,
            Some("running" | "pending") => {}
            _ => panic!("the benchmark's job did not complete: {j}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(http: &reqwest::Client, url: &str, key: &str, n: usize) -> String {
    let items: Vec<Value> = (0..n).map(|i| json!({"input": {"n": i}})).collect();
    let j: Value = http
        .post(format!("{url}/api/v1/jobs"))
        .bearer_auth(key)
        .json(&json!({"plugin": "noop", "items": items}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    j["id"]
        .as_str()
        .unwrap_or_else(|| panic!("job refused: {j}"))
        .to_owned()
}

/// `n` no-op items through `workers` worker processes (concurrency 32 each) against
/// a coordinator-only engine, or, with no workers, through the engine's own
/// dispatcher at concurrency 32.
pub async fn remote_throughput(n: usize, workers: usize) -> RemoteRun {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("engine");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let config = dir.path().join("faena.toml");
    let concurrency = if workers == 0 { 32 } else { 0 };
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nport = {port}\nconcurrency = {concurrency}\n[browser]\nenabled = false\n\
             [api]\nrate_limit_per_sec = 1000000\nrate_limit_burst = 1000000\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let engine = Command::new(faena_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = engine.id();
    let mut procs = Procs(vec![engine]);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    while http.get(format!("{url}/health")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = read_key(&data.join("admin.key")).await;
    let worker_key: Value = http
        .post(format!("{url}/api/v1/keys"))
        .bearer_auth(&admin)
        .json(&json!({"name": "bench workers", "role": "worker"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let worker_key = worker_key["token"].as_str().unwrap().to_owned();
    for i in 0..workers {
        let wdir = dir.path().join(format!("w{i}"));
        procs.0.push(
            Command::new(faena_bin())
                .args(["worker", "--server", &url, "--key", &worker_key])
                .args(["--name", &format!("bench{i}"), "--no-browser"])
                .args(["--plugins", "noop", "--concurrency", "32", "--data-dir"])
                .arg(&wdir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Warm up: every worker has loaded the plugin and claims.
    let warm = submit(&http, &url, &admin, 200 * workers.max(1)).await;
    wait_job(&http, &url, &admin, &warm).await;

    let cpu0 = process_cpu_seconds(pid);
    let t0 = Instant::now();
    let id = submit(&http, &url, &admin, n).await;
    wait_job(&http, &url, &admin, &id).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds(pid) - cpu0;
    drop(procs);
    RemoteRun {
        rate: n as f64 / elapsed,
        engine_cpu_us: cpu * 1e6 / n as f64,
    }
}

async fn read_key(path: &Path) -> String {
    loop {
        if let Ok(k) = std::fs::read_to_string(path) {
            return k.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

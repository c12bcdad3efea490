//! The engine at its edges, as a real `faena serve` process: a deploy (SIGTERM) drains
//! running items without using up attempts, and a full disk makes the store read-only
//! instead of stopping it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::process::{Faena, free_port};
use faena::clock::Clock;
use faena::model::ItemStatus;
use faena::store::{Store, StoreOptions};
use faena_tests::portals;
use serde_json::{Value, json};

/// A data directory with the probe test plugin installed, and a config for it.
fn setup(dir: &Path, extra: &str) -> (PathBuf, PathBuf, u16) {
    let data = dir.join("data");
    let plugins = data.join("plugins").join("probe");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(faena_tests::guests::PROBE, plugins.join("probe.wasm")).unwrap();
    let port = free_port();
    let config = dir.join("faena.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nport = {port}\nconcurrency = 4\n\
             [browser]\nenabled = false\n{extra}"
        ),
    )
    .unwrap();
    (config, data, port)
}

async fn post(f: &Faena, path: &str, body: Value) -> (u16, Value) {
    let r = f
        .client()
        .post(format!("{}{path}", f.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(f: &Faena, path: &str) -> (u16, Value) {
    let r = f
        .client()
        .get(format!("{}{path}", f.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Wait (up to `secs`) until `done` holds for the job.
async fn wait_job(f: &Faena, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let job = f.job(id).await;
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not get there in {secs}s: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The store of a stopped engine, opened directly (with its secrets key) to look at
/// what it left.
async fn open_store(data: &Path) -> Store {
    let key = faena::secrets::SecretKey::from_file(&data.join("secret.key")).unwrap();
    let options = StoreOptions {
        key: Some(key),
        ..Default::default()
    };
    Store::open_with(&data.join("store"), Clock::new(), options)
        .await
        .unwrap()
}

/// SIGTERM while items run: those that finish within the grace period are recorded as
/// done, and the process exits cleanly; nothing counts as a lost attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_items_finish() {
    let portals = portals::serve(0).await.unwrap();
    portals.gsp.portal.knobs.lock().unwrap().slow_ms = 1_500;
    let host = portals.url.trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (config, data, port) = setup(
        dir.path(),
        &format!("[plugins.probe]\nhttp_hosts = [\"{host}\"]\n[shutdown]\ngrace_secs = 30\n"),
    );
    let mut f = Faena::start(&config, &data, port);
    f.ready().await;
    let url = format!("{}/gsp/login", portals.url);
    let items: Vec<Value> = (0..4).map(|_| json!({"input": {"url": url}})).collect();
    let (status, job) = post(
        &f,
        "/api/v1/jobs",
        json!({"plugin": "probe", "operation": "http", "items": items,
               "options": {"max_attempts": 1}}),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&f, &id, 60, |j| j["counts"]["running"] == 4).await;
    let status = f.terminate(60).await;
    assert!(status.success(), "a drained shutdown exits 0: {status}");

    let store = open_store(&data).await;
    let job = store.job(&id).unwrap();
    assert_eq!(job.counts.succeeded, 4, "{job:?}");
    for i in 0..4 {
        let item = store.item(&format!("{id}-{i}")).unwrap();
        assert_eq!(item.attempts.len(), 1, "{item:?}");
        assert!(item.error.is_none(), "{item:?}");
    }
    store.close().await;
}

/// SIGTERM with items that outlast the grace period: they are stopped and given back
/// to the queue, and with `max_attempts: 1` they still have their attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_period_gives_items_back() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data, port) = setup(
        dir.path(),
        "[plugins.probe]\ndeadline_secs = 600\n[shutdown]\ngrace_secs = 1\n",
    );
    let mut f = Faena::start(&config, &data, port);
    f.ready().await;
    let (status, job) = post(
        &f,
        "/api/v1/jobs",
        json!({"plugin": "probe", "operation": "loop", "items": [{"input": {}}, {"input": {}}],
               "options": {"max_attempts": 1}}),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_job(&f, &id, 60, |j| j["counts"]["running"] == 2).await;
    let started = std::time::Instant::now();
    let status = f.terminate(60).await;
    println!(
        "SIGTERM to exit with two endless items and a 1 s grace: {:?}",
        started.elapsed()
    );
    assert!(status.success(), "{status}");

    let store = open_store(&data).await;
    for i in 0..2 {
        let item = store.item(&format!("{id}-{i}")).unwrap();
        assert_eq!(item.status, ItemStatus::Queued, "{item:?}");
        let a = &item.attempts[0];
        assert_eq!(
            a.error.as_ref().and_then(|e| e.code.as_deref()),
            Some(faena::store::ENGINE_SHUTDOWN),
            "{item:?}"
        );
        assert!(
            item.attempt < item.max_attempts,
            "the interrupted attempt was given back: {item:?}"
        );
    }
    store.close().await;
}

/// A tmpfs for the data directory, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    fn new(dir: &Path, mib: u64) -> SmallDisk {
        let mount = dir.join("disk");
        std::fs::create_dir_all(&mount).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CAP_SYS_ADMIN): this test runs as CI does"
        );
        SmallDisk { mount }
    }

    fn free(&self) -> u64 {
        faena::store::space::free_bytes(&self.mount).unwrap()
    }

    /// Fill the disk until `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.mount.join("filler");
        let size = self.free().saturating_sub(leave);
        let f = std::fs::File::create(&filler).unwrap();
        // tmpfs allocates on write: write real bytes, not a hole.
        let chunk = vec![7u8; 1 << 20];
        let mut w = std::io::BufWriter::new(f);
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
            left -= n as u64;
        }
        std::io::Write::flush(&mut w).unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
    }
}

async fn wait_health(f: &Faena, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h: Value = reqwest::get(format!("{}/health", f.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if h["status"] == status {
            return h;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never said {status}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A disk that fills up: writes answer 507, reads and the feed go on, writes come
/// back by themselves when space is freed, and nothing acknowledged is lost. A start
/// on a store that an interrupted snapshot left an empty file in opens without help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_read_only_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path(), 96);
    let (config, data, port) = setup(
        &disk.mount,
        "[store]\nreserve_mib = 24\nwarn_mib = 48\n[shutdown]\ngrace_secs = 5\n",
    );
    let mut f = Faena::start(&config, &data, port);
    f.ready().await;
    let noop = |n: usize| json!({"plugin": "noop", "items": (0..n).map(|i| json!({"input": {"n": i}})).collect::<Vec<_>>()});
    let (status, first) = post(&f, "/api/v1/jobs", noop(50)).await;
    assert_eq!(status, 201, "{first}");
    let first = first["id"].as_str().unwrap().to_owned();
    wait_job(&f, &first, 60, |j| j["status"] == "completed").await;

    let filler = disk.fill(12 << 20);
    let h = wait_health(&f, "read_only").await;
    println!("disk full: {h}");
    let (status, refused) = post(&f, "/api/v1/jobs", noop(1)).await;
    assert_eq!(status, 507, "{refused}");
    assert_eq!(refused["error"], "insufficient_storage", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{refused}"
    );
    let (status, refused) = post(&f, "/api/v1/events", json!({"type": "note", "data": {}})).await;
    assert_eq!(status, 507, "{refused}");
    // Reads go on; readiness says why it is not taking work; the gauge says so too.
    let (status, job) = get(&f, &format!("/api/v1/jobs/{first}")).await;
    assert_eq!(
        (status, job["counts"]["succeeded"].as_u64()),
        (200, Some(50))
    );
    let (status, events) = get(&f, &format!("/api/v1/events?after=0&job={first}")).await;
    assert_eq!(status, 200, "{events}");
    // Still ready: operators need the API on a full disk (to cancel, to delete).
    let ready = reqwest::get(format!("{}/ready", f.url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "read_only", "{ready}");
    let metrics = f
        .client()
        .get(format!("{}/metrics", f.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("faena_store_read_only 1"), "{metrics}");
    assert!(metrics.contains("faena_disk_free_bytes "), "{metrics}");

    // Space comes back: writes resume with nobody touching the engine.
    std::fs::remove_file(&filler).unwrap();
    wait_health(&f, "ok").await;
    let (status, second) = post(&f, "/api/v1/jobs", noop(20)).await;
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    wait_job(&f, &second, 60, |j| j["status"] == "completed").await;
    assert!(f.terminate(30).await.success());

    // A start while the disk is full again: up, read-only, every acknowledged job there.
    let filler = disk.fill(12 << 20);
    // What a start on a full disk used to leave behind: an empty snapshot in progress.
    std::fs::write(
        data.join("store").join("snap.FFFFFFFFFFFFFFF0.generating"),
        b"",
    )
    .unwrap();
    f = Faena::start(&config, &data, port);
    f.ready().await;
    wait_health(&f, "read_only").await;
    for id in [&first, &second] {
        let (status, job) = get(&f, &format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["status"], "completed", "{job}");
    }
    let (status, _) = post(&f, "/api/v1/jobs", noop(1)).await;
    assert_eq!(status, 507);
    std::fs::remove_file(&filler).unwrap();
    wait_health(&f, "ok").await;
    let (status, third) = post(&f, "/api/v1/jobs", noop(5)).await;
    assert_eq!(status, 201, "{third}");
    assert!(f.terminate(30).await.success());
    let log = std::fs::read_to_string(data.join("faena.log")).unwrap();
    assert!(log.contains("set aside an incomplete snapshot"), "{log}");
}

/// A client whose create timed out retries it after the engine was SIGKILLed in
/// between: the key was stored with the job, so the retry answers that job and no
/// second one is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_across_a_sigkill_answers_the_first_job() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data, port) = setup(dir.path(), "");
    let mut f = Faena::start(&config, &data, port);
    f.ready().await;
    let body = json!({"plugin": "probe", "operation": "loop", "start": false,
                      "items": [{"input": {}, "reference": "OC-1"}]});
    let create = |f: &Faena| {
        f.client()
            .post(format!("{}/api/v1/jobs", f.url))
            .header("Idempotency-Key", "po-2026-0042")
            .json(&body)
            .send()
    };
    let first = create(&f).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    f.kill();
    let mut f = Faena::start(&config, &data, port);
    f.ready().await;
    let again = create(&f).await.unwrap();
    assert_eq!(again.status(), 201);
    let replayed = again.headers().get("idempotency-replayed").cloned();
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first);
    assert_eq!(replayed.unwrap(), "true");
    let jobs: Value = f
        .client()
        .get(format!("{}/api/v1/jobs", f.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
    f.kill();
}

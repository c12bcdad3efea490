//! Feed connection limits against a real `faena serve` process: 2,000 WebSocket
//! clients that subscribe to everything and never read while a batch of the `noop`
//! plugin pours out events. The engine keeps serving (a reader gets its whole stream,
//! `/health` answers), the per-key and global caps refuse the excess with 429 naming
//! the cap, a closed connection gives its place back, and the stalled ones are cut
//! loose after the stall timeout. The engine's RSS is printed at each stage (run with
//! `--nocapture`; figures in docs/reliability.md).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

const PER_KEY: usize = 1_000;
/// Two keys' worth of stalled clients and one reader.
const TOTAL: usize = 2 * PER_KEY + 1;
const ITEMS: usize = 1_000;
const STALL_SECS: u64 = 5;

/// The `faena` binary of this build (`cargo build -p faena`).
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

/// `faena serve` in its own process, so its RSS is its own.
struct Faena {
    child: Child,
    url: String,
    admin: reqwest::Client,
    data: PathBuf,
}

impl Faena {
    async fn start(dir: &Path, api: &str) -> Faena {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("faena.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nport = {port}\nconcurrency = 8\n[browser]\nenabled = false\n[api]\n{api}",
                data.display().to_string()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(data.join("faena.log")).unwrap();
        // `FAENA_TEST_NOFILE=soft:hard` starts the engine under that open-files limit.
        let mut cmd = match std::env::var("FAENA_TEST_NOFILE") {
            Ok(limit) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={limit}")).arg(faena_bin());
                c
            }
            Err(_) => Command::new(faena_bin()),
        };
        let child = cmd
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(120);
        while reqwest::get(format!("{url}/health")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "faena did not start; see {}",
                data.join("faena.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
        Faena {
            child,
            url,
            admin: common::client(key.trim()),
            data,
        }
    }

    /// A new viewer key's token.
    async fn key(&self, name: &str) -> String {
        let resp = self
            .admin
            .post(format!("{}/api/v1/keys", self.url))
            .json(&json!({"name": name, "role": "viewer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    fn ws_url(&self, token: &str) -> String {
        format!("{}/ws?token={token}", self.url.replacen("http", "ws", 1))
    }

    /// The engine's resident memory, in MB.
    fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }

    async fn open_feed_connections(&self) -> usize {
        let text = self
            .admin
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("faena_feed_connections "))
            .and_then(|n| n.parse().ok())
            .expect("faena_feed_connections in /metrics")
    }
}

impl Drop for Faena {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's TCP buffer memory, machine-wide, in MB (`/proc/net/sockstat`): where a
/// stalled connection's unread bytes sit, outside any process's RSS.
fn kernel_tcp_mb() -> f64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap();
    let pages: f64 = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|n| n.parse().ok())
        .expect("TCP mem in /proc/net/sockstat");
    pages * 4096.0 / 1e6
}

type Ws = common::Ws;

/// Connect and subscribe; `Err` carries the HTTP status and body of a refusal.
async fn subscribe(url: String, sub: Value) -> Result<Ws, (u16, String)> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, _)) => {
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

/// `n` clients of `token` subscribed to everything from the start, 64 connecting at once.
async fn stalled_clients(f: &Faena, token: &str, n: usize) -> Vec<Ws> {
    let url = f.ws_url(token);
    futures_util::stream::iter(0..n)
        .map(|_| subscribe(url.clone(), json!({"type": "subscribe", "after": 0})))
        .buffer_unordered(64)
        .map(|r| r.unwrap_or_else(|e| panic!("under the caps, refused: {e:?}")))
        .collect()
        .await
}

/// Read until `job_completed`: the seqs of the events that came.
async fn read_to_the_end(mut ws: Ws) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("the reader's feed went quiet before job_completed")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if let Some(seq) = v["seq"].as_u64() {
            seqs.push(seq);
            if v["type"] == "job_completed" {
                return seqs;
            }
        }
    }
}

async fn until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done().await {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_stalled_feed_clients_are_capped_bounded_and_cut_loose() {
    let dir = tempfile::tempdir().unwrap();
    // The rate limit is out of the way here: this is about the connection caps.
    let f = Faena::start(
        dir.path(),
        &format!(
            "rate_limit_per_sec = 1000000\nfeed_connections_per_key = {PER_KEY}\n\
             feed_connections = {TOTAL}\nfeed_stall_timeout_secs = {STALL_SECS}\n"
        ),
    )
    .await;
    let (a, b, c) = (f.key("a").await, f.key("b").await, f.key("c").await);
    let resp = f
        .admin
        .post(format!("{}/api/v1/jobs", f.url))
        .json(&json!({"plugin": "noop", "name": "stalled", "start": false,
                      "items": (0..ITEMS).map(|n| json!({"input": {"n": n}})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let (rss_idle, kernel_idle) = (f.rss_mb(), kernel_tcp_mb());

    let started = Instant::now();
    let mut stalled_a = stalled_clients(&f, &a, PER_KEY).await;
    let stalled_b = stalled_clients(&f, &b, PER_KEY).await;
    eprintln!(
        "{} stalled clients connected in {:.1} s",
        2 * PER_KEY,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(f.open_feed_connections().await, 2 * PER_KEY);
    let rss_connected = f.rss_mb();

    // Past the key's cap: 429, naming it.
    let all = json!({"type": "subscribe", "after": 0});
    let (status, body) = subscribe(f.ws_url(&a), all.clone()).await.err().unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("feed_connections_per_key"), "{body}");
    assert!(body.contains("too_many_connections"), "{body}");
    // A closed connection gives its place back.
    drop(stalled_a.pop());
    until("the closed connection's place is free", 30, async || {
        f.open_feed_connections().await == 2 * PER_KEY - 1
    })
    .await;
    stalled_a.push(subscribe(f.ws_url(&a), all.clone()).await.unwrap());

    // The reader takes the last place; past the engine's cap: 429, naming it.
    let reader = subscribe(
        f.ws_url(&c),
        json!({"type": "subscribe", "jobs": [id], "after": 0}),
    )
    .await
    .unwrap();
    let (status, body) = subscribe(f.ws_url(&c), all.clone()).await.err().unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("[api] feed_connections)"), "{body}");
    let reader = tokio::spawn(read_to_the_end(reader));

    // The batch runs; the engine keeps answering while 2,000 clients do not read.
    let started = Instant::now();
    let resp = f
        .admin
        .post(format!("{}/api/v1/jobs/{id}/start", f.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut rss_peak = f.rss_mb();
    let mut health_checks = 0;
    loop {
        let health = tokio::time::timeout(
            Duration::from_secs(10),
            reqwest::get(format!("{}/health", f.url)),
        )
        .await
        .expect("/health answered during the batch")
        .unwrap();
        assert_eq!(health.status(), 200);
        health_checks += 1;
        rss_peak = rss_peak.max(f.rss_mb());
        let j: Value = f
            .admin
            .get(format!("{}/api/v1/jobs/{id}", f.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if j["status"] == "completed" {
            assert_eq!(j["counts"]["succeeded"], ITEMS);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "{j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let batch = started.elapsed();
    let got = reader.await.unwrap();
    let head = f
        .admin
        .get(format!("{}/health", f.url))
        .send()
        .await
        .unwrap();
    let head: Value = head.json().await.unwrap();
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = f
            .admin
            .get(format!(
                "{}/api/v1/events?job={id}&after={after}&limit=1000",
                f.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        after = events.last().unwrap()["seq"].as_u64().unwrap();
        log.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
    }
    assert!(
        got == log,
        "the reader got every event of the job once, in order"
    );
    let (rss_stalled, kernel_stalled) = (f.rss_mb(), kernel_tcp_mb());
    let per_conn = |mb: f64| (mb - rss_idle) * 1024.0 / (2 * PER_KEY) as f64;
    eprintln!(
        "batch of {ITEMS} items ({} events of the job, head {}) in {:.1} s with {} stalled \
         clients; /health answered {health_checks} times",
        log.len(),
        head["last_seq"],
        batch.as_secs_f64(),
        2 * PER_KEY
    );
    eprintln!("engine RSS: idle {rss_idle:.0} MB");
    eprintln!(
        "  2,000 connected and subscribed: {rss_connected:.0} MB ({:.0} KB a connection)",
        per_conn(rss_connected)
    );
    eprintln!(
        "  peak during the batch: {rss_peak:.0} MB ({:.0} KB a connection)",
        per_conn(rss_peak)
    );
    eprintln!(
        "  after the batch, 2,000 stalled: {rss_stalled:.0} MB ({:.0} KB a connection)",
        per_conn(rss_stalled)
    );
    eprintln!(
        "kernel TCP buffers (machine-wide, both ends): {kernel_idle:.0} MB before, \
         {kernel_stalled:.0} MB with 2,000 stalled ({:.0} KB a connection)",
        (kernel_stalled - kernel_idle) * 1e3 / (2 * PER_KEY) as f64
    );

    // The stalled clients' sockets are full: each is cut loose after the stall timeout
    // (the test still holds every one of them open).
    let cut = Instant::now();
    let mut open = usize::MAX;
    until("every stalled connection cut loose", 60, async || {
        let now = f.open_feed_connections().await;
        if now != open {
            eprintln!(
                "{now} feed connections open {:.1} s after the batch",
                cut.elapsed().as_secs_f64()
            );
            open = now;
        }
        now == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "all cut loose: engine RSS {:.0} MB, kernel TCP buffers {:.0} MB",
        f.rss_mb(),
        kernel_tcp_mb()
    );
    drop((stalled_a, stalled_b));
}

/// Why connections fail to open: 2,000 clients of one key connecting as fast as they
/// can, 256 at a time, against an engine with its default settings (or `[api]` settings
/// from `FAENA_TEST_API`, and an open-files limit from `FAENA_TEST_NOFILE`). Prints
/// each outcome and how many had it. Not part of the suite; run it with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an experiment: prints why connections fail under given limits"]
async fn why_connections_fail_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let api = std::env::var("FAENA_TEST_API").unwrap_or_default();
    let f = Faena::start(dir.path(), &api.replace(';', "\n")).await;
    let token = f.key("crowd").await;
    let url = f.ws_url(&token);
    let started = Instant::now();
    let outcomes: Vec<Result<Ws, (u16, String)>> = futures_util::stream::iter(0..2_000)
        .map(|_| {
            let url = url.clone();
            async move {
                let connect = subscribe(url, json!({"type": "subscribe", "after": 0}));
                tokio::time::timeout(Duration::from_secs(10), connect)
                    .await
                    .unwrap_or_else(|_| Err((0, "no answer in 10 s".into())))
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for o in &outcomes {
        let what = match o {
            Ok(_) => "open".to_owned(),
            Err((status, body)) => {
                let body: Value = serde_json::from_str(body).unwrap_or(json!(body));
                let reason = body["error"]
                    .as_str()
                    .map_or(body.to_string(), str::to_owned);
                format!("{status} {reason}")
            }
        };
        *counts.entry(what).or_default() += 1;
    }
    eprintln!(
        "2,000 connects in {:.1} s: {counts:?}; engine log: {}",
        started.elapsed().as_secs_f64(),
        f.data.join("faena.log").display()
    );
    drop(outcomes);
}

//! `cargo bench -p faena-tests --bench engine` (or `scripts/bench`): the engine's own
//! figures on this machine, each as min / median / max over `FAENA_BENCH_RUNS` runs
//! (default 3). Nothing here asserts a time: it prints.
//!
//! - store: create → claim → complete of no-op items by in-process workers, every
//!   completion acknowledged only after it is flushed to disk
//! - engine: the same through the dispatcher and the real `noop` WebAssembly plugin,
//!   and enqueue → start latency at a steady rate below capacity
//! - instantiate + run: one fresh instance of the `noop` component and one call
//! - fan-out: an event published to 100 and 1,000 WebSocket subscribers
//! - overload: the engine's throughput with 1,000 WebSocket clients following the
//!   batch, against none, in the same run: browser-like clients (permessage-deflate)
//!   at nice 19 as browsers elsewhere would take none of the engine's CPU, clients that
//!   do not compress, and browser-like ones at the engine's own priority
//! - browser: a form flow in Chromium, fresh context per item vs fresh browser per item
//! - gsp: orders per minute of the real gsp plugin against the portal simulator at
//!   concurrency 1, 2 and 4, where an order's time goes, its CPU (the machine's, split
//!   into Chromium, the engine and the portal simulator, which runs on threads of its
//!   own), and (in runs of their own) the most memory (PSS) Chromium holds;
//!   `FAENA_BENCH_CHROMIUM_ARGS` adds flags
//! - python: the gsp flow written in Python (examples/plugin-python, built with
//!   componentize-py) against the Rust gsp plugin, orders per minute in the same run
//! - workers: no-op items through 1 and 2 `faena worker` processes against the
//!   engine's own dispatcher, and the engine's CPU per item each way

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faena::api::{self, AppState};
use faena::clock::Clock;
use faena::config::PluginConfig;
use faena::model::{JobOptions, JobStatus, NewItem, NewJob};
use faena::runtime::browser::ChromiumSettings;
use faena::runtime::{Runtime, RuntimeOptions, WasmExecutor};
use faena::scheduler::{self, Executor, RunContext, SchedulerConfig};
use faena::store::{ClaimRequest, Outcome, Store};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

// Under a folder of its own: a file beside this one would be a bench target too.
#[path = "engine/workers.rs"]
mod workers;

// The same allocator as the `faena` binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn runs() -> usize {
    std::env::var("FAENA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Print a row; with `FAENA_BENCH_JSON=FILE`, also append it to FILE as a JSON line
/// (`bench/compare.py` reads them for its side-by-side table).
fn row(what: &str, unit: &str, values: Vec<f64>) {
    if let Ok(path) = std::env::var("FAENA_BENCH_JSON") {
        use std::io::Write;
        let line = json!({"name": what, "unit": unit, "values": values});
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("FAENA_BENCH_JSON={path}: {e}"));
        writeln!(f, "{line}").unwrap();
    }
    let (min, med, max) = stats(values);
    println!("{what:<58} {min:>11.1} {med:>11.1} {max:>11.1}  {unit}");
}

/// Single-item jobs per second in the enqueue→start measurement
/// (`FAENA_BENCH_LATENCY_RATE`, default 500).
fn latency_rate() -> u64 {
    std::env::var("FAENA_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

fn job(plugin: &str, n: usize) -> NewJob {
    NewJob {
        plugin: plugin.into(),
        operation: "run".into(),
        name: None,
        options: JobOptions::default(),
        input: None,
        start: true,
        items: (0..n)
            .map(|i| NewItem {
                input: json!({"n": i}),
                reference: None,
            })
            .collect(),
    }
}

async fn open_store(dir: &std::path::Path) -> Store {
    Store::open(&dir.join("store"), Clock::new()).await.unwrap()
}

async fn runtime(
    dir: &std::path::Path,
    store: &Store,
    plugins: BTreeMap<String, PluginConfig>,
    browser: bool,
) -> Arc<Runtime> {
    let rt = Runtime::new(
        RuntimeOptions {
            cache_dir: dir.join("cache"),
            plugin_dir: dir.join("plugins"),
            plugins,
            chromium: browser.then(|| ChromiumSettings {
                profile_dir: dir.join("chromium"),
                // To compare Chromium flags: FAENA_BENCH_CHROMIUM_ARGS="--flag --other".
                args: std::env::var("FAENA_BENCH_CHROMIUM_ARGS")
                    .map(|a| a.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                ..ChromiumSettings::default()
            }),
        },
        Some(store.artifacts().unwrap()),
        Some(store.secrets().unwrap()),
    )
    .unwrap();
    rt.load_all(faena::runtime::Describe::Here).await.unwrap();
    rt
}

/// Items/s for create → claim → complete with durable acknowledgement.
async fn store_throughput(n: usize, workers: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let t0 = Instant::now();
    store
        .create_job("default", job("bench", n), None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let claimed = store
                    .claim(ClaimRequest {
                        owner: format!("worker:{w}"),
                        tenant: None,
                        plugins: vec!["bench".into()],
                        max: 64,
                        lease_ms: None,
                        labels: Vec::new(),
                        item: None,
                    })
                    .await
                    .unwrap();
                if claimed.items.is_empty() {
                    break;
                }
                let done = claimed.items.iter().map(|c| {
                    store.complete(&c.item.id, c.lease_token, Outcome::Succeeded(Value::Null))
                });
                for r in futures_util::future::join_all(done).await {
                    r.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    store.close().await;
    n as f64 / secs
}

/// One run of the noop plugin through the whole engine.
struct EngineRun {
    /// Items/s, from the job's request to its completion.
    rate: f64,
    /// Of that, the job's creation (durable, all its items at once, before any runs).
    created_ms: f64,
    /// Commands acknowledged per group commit while the job ran.
    per_commit: f64,
    /// CPU µs per item of the whole process (the store's threads, the runs, the
    /// dispatcher), creation included.
    cpu_us: f64,
}

/// A row of the engine's figures: its name, its unit, and where a run keeps it.
type Figure = (&'static str, &'static str, fn(&EngineRun) -> f64);

/// Items/s of the noop plugin through the whole engine.
async fn engine_throughput(n: usize, concurrency: usize) -> EngineRun {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let rt = runtime(dir.path(), &store, BTreeMap::new(), false).await;
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(rt.clone())),
        SchedulerConfig {
            concurrency,
            ..Default::default()
        },
        stop.clone(),
    ));
    let t0 = Instant::now();
    let process_cpu = || stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let cpu0 = process_cpu();
    let j = store
        .create_job("default", job("noop", n), None)
        .await
        .unwrap();
    let created_ms = t0.elapsed().as_secs_f64() * 1000.0;
    // Group commits and the commands they carried so far, from one rendering.
    let commits = || -> (f64, f64) {
        let text = store.metrics().render();
        let counter = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        (
            counter("faena_commits_total "),
            counter("faena_commit_commands_total "),
        )
    };
    let (commits0, commands0) = commits();
    loop {
        if store.job(&j.id).unwrap().status == JobStatus::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let cpu_us = (process_cpu() - cpu0) / n as f64 * 1e6;
    let (commits1, commands1) = commits();
    let per_commit = (commands1 - commands0) / (commits1 - commits0).max(1.0);
    stop.cancel();
    dispatcher.await.unwrap();
    store.close().await;
    EngineRun {
        rate,
        created_ms,
        per_commit,
        cpu_us,
    }
}

/// The noop plugin's executor, noting when each run begins: the start the latency
/// measures is the plugin being called, not an event about it.
struct Timed {
    inner: WasmExecutor,
    base: Instant,
    started: tokio::sync::mpsc::UnboundedSender<f64>,
}

impl Executor for Timed {
    fn plugins(&self) -> Vec<String> {
        self.inner.plugins()
    }

    fn run(
        &self,
        task: faena::store::ClaimedItem,
        ctx: RunContext,
    ) -> futures_util::future::BoxFuture<'static, Outcome> {
        if let Some(sent) = task.item.input["t"].as_u64() {
            let now = self.base.elapsed().as_micros() as f64;
            let _ = self.started.send((now - sent as f64) / 1000.0);
        }
        self.inner.run(task, ctx)
    }
}

/// Enqueue → start latencies (ms) of single-item jobs submitted at `rate` per second:
/// from the request to the plugin being called, the job's commit (durable before the
/// answer) included.
async fn enqueue_to_start(count: usize, rate: u64) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let rt = runtime(dir.path(), &store, BTreeMap::new(), false).await;
    let stop = CancellationToken::new();
    // Each item carries its submission time (µs since `base`) in its input, so a start
    // is matched to its submission however the two race.
    let base = Instant::now();
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(Timed {
            inner: WasmExecutor(rt.clone()),
            base,
            started,
        }),
        SchedulerConfig {
            concurrency: 16,
            ..Default::default()
        },
        stop.clone(),
    ));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..count {
        tick.tick().await;
        let store = store.clone();
        tokio::spawn(async move {
            let mut one = job("noop", 1);
            one.items[0].input = json!({"t": base.elapsed().as_micros() as u64});
            store.create_job("default", one, None).await.unwrap();
        });
    }
    let mut lat = Vec::with_capacity(count);
    while lat.len() < count {
        lat.push(starts.recv().await.unwrap());
    }
    stop.cancel();
    dispatcher.await.unwrap();
    store.close().await;
    lat
}

/// Milliseconds of a 4 KiB write and `fdatasync` in a fresh file beside the store's,
/// `n` times: the floor under any durable commit on this disk.
fn fsync_latencies(n: usize) -> Vec<f64> {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let block = vec![7u8; 4096];
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

/// Microseconds per fresh instance of the noop component plus one call.
async fn instantiate_and_run(calls: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let rt = runtime(dir.path(), &store, BTreeMap::new(), false).await;
    store
        .create_job("default", job("noop", 1), None)
        .await
        .unwrap();
    let task = store
        .claim(ClaimRequest {
            owner: "bench".into(),
            tenant: None,
            plugins: vec!["noop".into()],
            max: 1,
            lease_ms: Some(3_600_000),
            labels: Vec::new(),
            item: None,
        })
        .await
        .unwrap()
        .items
        .remove(0);
    let exec = WasmExecutor(rt.clone());
    let ctx = RunContext::new(Arc::new(store.clone()), &task, CancellationToken::new());
    for _ in 0..50 {
        exec.run(task.clone(), ctx.clone()).await;
    }
    let t0 = Instant::now();
    for _ in 0..calls {
        let out = exec.run(task.clone(), ctx.clone()).await;
        assert!(matches!(out, Outcome::Succeeded(_)));
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / calls as f64;
    store.close().await;
    us
}

/// The API of `store` on a 127.0.0.1 listener until `stop`, on its own threads as
/// `faena serve` runs it, and a viewer key. One key serves every subscriber, so no
/// bucket: these measure the feed.
async fn serve_feed(
    store: &Store,
    runtime: Option<Arc<Runtime>>,
    stop: &CancellationToken,
) -> (std::net::SocketAddr, String, api::ApiServer) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(store.clone(), runtime)
        .unwrap()
        .with_rate_limit(faena::auth::RateLimit {
            per_sec: 1e9,
            burst: 1e9,
        });
    let (_, key) = state
        .auth
        .keys
        .create("default", faena::auth::Role::Viewer, "bench", 0)
        .unwrap();
    let server =
        api::ApiServer::start(listener, state, api::ApiThreads::default(), stop.clone()).unwrap();
    (addr, key, server)
}

/// Feed clients on threads of their own, as browsers in another process would be:
/// they share the machine's cores with the engine, not its run queue. With `nice` above
/// 0 they take the CPU the engine leaves, as browsers on other machines take none.
struct ClientThreads(Option<tokio::runtime::Runtime>);

impl ClientThreads {
    fn new(nice: i32) -> Self {
        ClientThreads(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("bench-clients")
                .on_thread_start(move || {
                    if nice > 0 {
                        // The calling thread's own nice value (Linux).
                        let me = Some(rustix::thread::gettid());
                        rustix::process::setpriority_process(me, nice).expect("renice");
                    }
                })
                .enable_all()
                .build()
                .unwrap(),
        ))
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("running").spawn(f)
    }
}

impl Drop for ClientThreads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A feed client that costs as little as a client can, so that the figure is the
/// engine's: it reads its socket 64 KiB at a time and walks the frames, counting
/// events without parsing them. (tungstenite's client parses and validates every
/// message; with 1,000 of them on the same two cores they took more CPU than the feed's
/// server side.) With `deflate` it offers permessage-deflate as browsers do and counts
/// compressed frames as events without inflating them: inflating is the browser's
/// work, on its own machine. (That the compressed events are right is for the tests:
/// `engine/tests/ws.rs` and the dashboard's in Chromium.)
struct RawFollower {
    io: tokio::net::TcpStream,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    pos: usize,
    /// Bytes read from the socket.
    received: u64,
}

/// What [`RawFollower::frame`] found.
#[derive(PartialEq)]
enum Frame {
    /// An event; whether it is known to be `job_completed` (compressed ones are not
    /// looked into).
    Event {
        completed: bool,
    },
    Other,
}

impl RawFollower {
    /// Connect, upgrade, subscribe with `sub` and wait for `subscribed`.
    async fn connect(
        addr: std::net::SocketAddr,
        key: &str,
        sub: &Value,
        deflate: bool,
    ) -> RawFollower {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut io = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect (raise `ulimit -n`?)");
        io.set_nodelay(true).unwrap();
        let offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /ws?token={key} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        io.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::with_capacity(64 * 1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                io.read_buf(&mut buf).await.unwrap() > 0,
                "handshake cut short"
            );
        };
        assert!(buf.starts_with(b"HTTP/1.1 101"), "no upgrade: {buf:?}");
        let agreed = buf[..end].windows(18).any(|w| w == b"permessage-deflate");
        assert_eq!(agreed, deflate, "permessage-deflate agreed on");
        buf.drain(..end);
        // A client's frame is masked (and may go uncompressed).
        let payload = sub.to_string().into_bytes();
        let mask = [0x1f, 0x2e, 0x3d, 0x4c];
        let mut frame = vec![0x81, 0x80 | 126];
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        io.write_all(&frame).await.unwrap();
        let mut client = RawFollower {
            io,
            buf,
            pos: 0,
            received: 0,
        };
        loop {
            if let Some(head) = client.subscribed() {
                assert!(head, "the first message is `subscribed`");
                return client;
            }
            client.read_more().await;
        }
    }

    /// Whether the first message is whole and is `subscribed`.
    fn subscribed(&mut self) -> Option<bool> {
        let (header, len) = self.next_len()?;
        let body = &self.buf[self.pos + header..self.pos + header + len];
        let ok = body.windows(19).any(|w| w == br#""type":"subscribed""#);
        self.pos += header + len;
        Some(ok)
    }

    /// The header length and payload length of the next frame, if it is all here.
    fn next_len(&self) -> Option<(usize, usize)> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return None;
        }
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        (b.len() >= header + len).then_some((header, len))
    }

    /// The next whole frame in the buffer, if there is one.
    fn frame(&mut self) -> Option<Frame> {
        let (header, len) = self.next_len()?;
        let at = self.pos;
        self.pos += header + len;
        if self.buf[at] & 0x40 != 0 {
            // Compressed: only the channel's events are.
            return Some(Frame::Event { completed: false });
        }
        let body = &self.buf[at + header..at + header + len.min(96)];
        Some(if body.starts_with(b"{\"seq\"") {
            Frame::Event {
                completed: body.windows(22).any(|w| w == br#""type":"job_completed""#),
            }
        } else {
            Frame::Other
        })
    }

    async fn read_more(&mut self) {
        use tokio::io::AsyncReadExt;
        // Keep the unread part and read more after it.
        self.buf.drain(..self.pos);
        self.pos = 0;
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        let n = self.io.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "feed closed");
        self.received += n as u64;
    }

    /// Read until `target` events came (a number that may only be known later), or a
    /// plain `job_completed`: how many came, whether the last was `job_completed`,
    /// and when the last one arrived.
    async fn until(
        &mut self,
        mut target: tokio::sync::watch::Receiver<usize>,
    ) -> (usize, bool, Instant) {
        let mut events = 0;
        let mut completed = false;
        let mut at = Instant::now();
        // A fixed target comes with its sender gone.
        let mut may_change = target.has_changed().is_ok();
        loop {
            while let Some(f) = self.frame() {
                if let Frame::Event { completed: c } = f {
                    events += 1;
                    completed = c;
                    if c {
                        return (events, true, at);
                    }
                }
            }
            if events >= *target.borrow_and_update() {
                return (events, completed, at);
            }
            tokio::select! {
                () = self.read_more() => at = Instant::now(),
                changed = target.changed(), if may_change => may_change = changed.is_ok(),
            }
        }
    }
}

type Subscriber =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A feed client as a browser would be: it reads many small messages. tungstenite's
/// default 128 KiB read buffer is zeroed before every read, which would make the
/// clients, not the engine, the cost these benches measure.
async fn subscriber(url: &str) -> Subscriber {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("connect (raise `ulimit -n`?)")
        .0
}

/// The feed clients of an overload run.
#[derive(Clone, Copy)]
struct FeedClients {
    count: usize,
    /// They agree on permessage-deflate, as browsers do.
    deflate: bool,
    /// The nice value of their threads.
    nice: i32,
}

const NO_CLIENTS: FeedClients = FeedClients {
    count: 0,
    deflate: false,
    nice: 0,
};

/// Items/s of `n` noop items through the engine with WebSocket clients on the feed:
/// 90 % following the job's progress (one event per finished item), 10 % following
/// every event of the job. Clients read in their own tasks, as a browser would; the
/// figure is the engine's, timed from start to `completed` in the store.
async fn throughput_under_feed(n: usize, feed_clients: FeedClients) -> FeedRun {
    let FeedClients {
        count: clients,
        deflate,
        nice,
    } = feed_clients;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let rt = runtime(dir.path(), &store, BTreeMap::new(), false).await;
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(rt.clone())),
        SchedulerConfig {
            concurrency: 32,
            ..Default::default()
        },
        stop.clone(),
    ));
    let (addr, key, server) = serve_feed(&store, Some(rt.clone()), &stop).await;
    let mut pending = job("noop", n);
    pending.start = false;
    let j = store.create_job("default", pending, None).await.unwrap();
    let threads = ClientThreads::new(nice);
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    // How many events a follower of every event of the job gets: known at the end.
    let (every_event_total, every_event_target) = tokio::sync::watch::channel(usize::MAX);
    let mut readers = Vec::new();
    for i in 0..clients {
        let every_event = i % 10 == 9;
        let (types, target) = if every_event {
            (json!([]), every_event_target.clone())
        } else {
            // One event per item and the completion.
            (
                json!(["item_progress", "job_completed"]),
                tokio::sync::watch::channel(n + 1).1,
            )
        };
        let sub = json!({"type": "subscribe", "jobs": [j.id], "types": types, "after": 0});
        let ready = ready.clone();
        let key = key.clone();
        readers.push(threads.spawn(async move {
            let mut client = RawFollower::connect(addr, &key, &sub, deflate).await;
            ready.wait().await;
            let (events, completed, at) = client.until(target).await;
            if !every_event {
                assert_eq!(events, n + 1, "events received by a progress follower");
                assert!(
                    deflate || completed,
                    "a plain follower ends at job_completed"
                );
            }
            (at, client.received)
        }));
    }
    ready.wait().await;
    let feed_cpu = || thread_cpu_seconds("faena-api");
    let clients_cpu = || thread_cpu_seconds("bench-clients");
    let (cpu0, clients0, all0) = (feed_cpu(), clients_cpu(), thread_cpu_seconds(""));
    let t0 = Instant::now();
    store
        .job_action(&j.id, faena::store::JobAction::Start)
        .await
        .unwrap();
    while store.job(&j.id).unwrap().status != JobStatus::Completed {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let batch = t0.elapsed();
    if clients > 0 {
        let filter = faena::store::EventFilter {
            jobs: vec![j.id.clone()],
            ..Default::default()
        };
        let total = store.events(0, &filter, usize::MAX).unwrap().0.len();
        every_event_total.send_replace(total);
    }
    let mut last = t0 + batch;
    let mut received = 0;
    for r in readers {
        let (at, bytes) = r.await.unwrap();
        last = last.max(at);
        received += bytes;
    }
    let run = FeedRun {
        rate: n as f64 / batch.as_secs_f64(),
        delivered_late_ms: (last - (t0 + batch)).as_secs_f64() * 1e3,
        feed_cpu: feed_cpu() - cpu0,
        clients_cpu: clients_cpu() - clients0,
        engine_cpu_us: (thread_cpu_seconds("")
            - all0
            - (feed_cpu() - cpu0)
            - (clients_cpu() - clients0))
            * 1e6
            / n as f64,
        received_mb: received as f64 / 1e6,
    };
    stop.cancel();
    dispatcher.await.unwrap();
    server.wait().await.unwrap();
    store.close().await;
    run
}

struct FeedRun {
    /// Items/s from start to `completed` in the store.
    rate: f64,
    /// How long after that the last client had every event.
    delivered_late_ms: f64,
    /// CPU seconds of the API's threads (the feed's server side) until then.
    feed_cpu: f64,
    /// CPU seconds of the clients' threads (the browsers' side, here on the same
    /// cores).
    clients_cpu: f64,
    /// CPU µs per item of every other thread: the engine's.
    engine_cpu_us: f64,
    /// What the clients read from their sockets, all together.
    received_mb: f64,
}

/// Fan-out latency (ms) of `events` events published at `rate`/s to `subs` subscribers.
async fn fanout(subs: usize, events: usize, rate: u64) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let stop = CancellationToken::new();
    let (addr, key, server) = serve_feed(&store, None, &stop).await;
    let base = Instant::now();
    let threads = ClientThreads::new(0);
    let mut clients = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(subs + 1));
    for _ in 0..subs {
        let ready = ready.clone();
        let url = format!("ws://{addr}/ws?token={key}");
        clients.push(threads.spawn(async move {
            let mut ws = subscriber(&url).await;
            let sub = json!({"type": "subscribe", "types": ["bench"], "after": u64::MAX / 2});
            ws.send(Message::Text(sub.to_string().into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap(); // subscribed
            ready.wait().await;
            let mut lat = Vec::with_capacity(events);
            while lat.len() < events {
                let Some(Ok(Message::Text(t))) = ws.next().await else {
                    break;
                };
                let v: Value = serde_json::from_str(&t).unwrap();
                if let Some(sent) = v["data"]["t"].as_u64() {
                    lat.push((base.elapsed().as_micros() as u64 - sent) as f64 / 1000.0);
                }
            }
            lat
        }));
    }
    ready.wait().await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for _ in 0..events {
        tick.tick().await;
        let t = base.elapsed().as_micros() as u64;
        store
            .publish("default", "bench", None, json!({"t": t}))
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    stop.cancel();
    server.wait().await.unwrap();
    store.close().await;
    all
}

/// Seconds per form flow in Chromium: one engine (one browser, fresh context per item),
/// or a fresh engine and browser per item.
async fn browser_flow(items: usize, fresh_browser: bool) -> f64 {
    let page = faena_tests::pages::serve().await;
    let grants = BTreeMap::from([(
        "probe".to_owned(),
        PluginConfig {
            browser: Some(true),
            ..Default::default()
        },
    )]);
    let probe = std::fs::read(faena_tests::guests::PROBE).unwrap();
    let input =
        json!({"url": format!("http://{}/form", page.host), "name": "Ana", "kind": "urgent"});
    let one = |rt: Arc<Runtime>, store: Store| {
        let input = input.clone();
        async move {
            let version = rt.version_for_new_job("probe", "form").unwrap();
            let mut new = job("probe", 1);
            new.operation = "form".into();
            new.items[0].input = input;
            store.create_job("default", new, version).await.unwrap();
            let task = store
                .claim(ClaimRequest {
                    owner: "bench".into(),
                    tenant: None,
                    plugins: vec!["probe".into()],
                    max: 1,
                    lease_ms: None,
                    labels: Vec::new(),
                    item: None,
                })
                .await
                .unwrap()
                .items
                .remove(0);
            let ctx = RunContext::new(Arc::new(store.clone()), &task, CancellationToken::new());
            let out = WasmExecutor(rt).run(task, ctx).await;
            assert!(matches!(out, Outcome::Succeeded(_)), "{out:?}");
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut total = Duration::ZERO;
    if fresh_browser {
        for i in 0..items {
            let d = dir.path().join(format!("rt{i}"));
            let rt = runtime(&d, &store, grants.clone(), true).await;
            rt.load(&probe, faena::runtime::Source::Bytes(probe.clone().into()))
                .await
                .unwrap();
            let t0 = Instant::now();
            one(rt.clone(), store.clone()).await;
            total += t0.elapsed();
            drop(rt);
        }
    } else {
        let rt = runtime(dir.path(), &store, grants.clone(), true).await;
        rt.load(&probe, faena::runtime::Source::Bytes(probe.clone().into()))
            .await
            .unwrap();
        one(rt.clone(), store.clone()).await; // launches Chromium
        let t0 = Instant::now();
        for _ in 0..items {
            one(rt.clone(), store.clone()).await;
        }
        total = t0.elapsed();
    }
    store.close().await;
    total.as_secs_f64() / items as f64
}

/// An order of `products` lines for consultant number `i`.
fn gsp_order(i: usize, products: usize) -> NewItem {
    let rows: Vec<Value> = (0..products)
        .map(|p| json!({"product_code": format!("P{:03}", 1 + (i + p) % 12), "quantity": 1 + p}))
        .collect();
    let code = format!("C{:05}", 1 + i);
    NewItem {
        input: json!({"consultora_code": code, "rows": rows}),
        reference: Some(code),
    }
}

/// gsp orders per minute through the whole engine at `concurrency`, after one warm-up
/// order (Chromium's launch is not counted); and the mean milliseconds per stage.
async fn gsp_orders(orders: usize, concurrency: usize, measure: Measure) -> GspRun {
    gsp_orders_of("gsp", None, orders, concurrency, measure).await
}

/// What a gsp run measures: its pace, or (sampling as it goes, which costs CPU) the
/// most memory Chromium holds.
#[derive(Clone, Copy, PartialEq)]
enum Measure {
    Pace,
    Memory,
}

impl Measure {
    fn memory(self) -> bool {
        self == Measure::Memory
    }
}

/// The gsp example flow in Python, built with componentize-py (`scripts/bench`
/// installs it into target/test-venv).
fn gsp_python() -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    faena_tests::python::build(
        "examples/plugin-python",
        &out.path().join("gsp-python.wasm"),
    )
}

/// [`gsp_orders`] for `plugin`, loaded from `component` when it is not built in.
async fn gsp_orders_of(
    plugin: &str,
    component: Option<&[u8]>,
    orders: usize,
    concurrency: usize,
    measure: Measure,
) -> GspRun {
    use faena_tests::portals::gsp;
    let portals = PortalThreads::start();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let grants = BTreeMap::from([(
        plugin.to_owned(),
        PluginConfig {
            browser: Some(true),
            secrets: Some(vec!["gsp_supervisor".into(), "gsp_password".into()]),
            settings: Some(BTreeMap::from([("portal_url".into(), portals.url.clone())])),
            ..Default::default()
        },
    )]);
    let rt = runtime(dir.path(), &store, grants, true).await;
    if let Some(bytes) = component {
        rt.load(bytes, faena::runtime::Source::Bytes(bytes.to_vec().into()))
            .await
            .unwrap();
    }
    let secrets = store.secrets().unwrap();
    secrets
        .set("default", "gsp_supervisor", gsp::SUPERVISOR)
        .unwrap();
    secrets
        .set("default", "gsp_password", gsp::PASSWORD)
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(rt.clone())),
        SchedulerConfig {
            concurrency,
            ..Default::default()
        },
        stop.clone(),
    ));
    let version = rt.version_for_new_job(plugin, "run").unwrap();
    let run = |items: Vec<NewItem>| {
        let store = store.clone();
        let version = version.clone();
        async move {
            let mut new = job(plugin, 0);
            new.items = items;
            new.options.max_attempts = 1;
            let j = store.create_job("default", new, version).await.unwrap();
            loop {
                let now = store.job(&j.id).unwrap();
                if now.status == JobStatus::Completed {
                    assert_eq!(now.counts.succeeded, now.counts.total(), "{now:?}");
                    return j.id;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    run(vec![gsp_order(90_000 % 20_000, 2)]).await;
    // Reading every Chromium process's smaps walks its page tables: on two cores that
    // took about a twentieth of the CPU the orders ran on. A timed run does not sample.
    let sampling = CancellationToken::new();
    let peak = measure
        .memory()
        .then(|| tokio::spawn(peak_chromium_pss(sampling.clone())));
    let cpu0 = CpuMark::now();
    let t0 = Instant::now();
    let id = run((0..orders).map(|i| gsp_order(i, 3)).collect()).await;
    let per_minute = orders as f64 * 60.0 / t0.elapsed().as_secs_f64();
    let cpu = CpuMark::now().since(cpu0).per(orders);
    sampling.cancel();
    let chromium_mb = match peak {
        Some(peak) => Some(peak.await.unwrap() as f64 / 1024.0),
        None => None,
    };
    // Mean time from the start of the run (or the previous stage) to each stage.
    let mut stages: Vec<(String, f64)> = Vec::new();
    for i in 0..orders {
        let item = store.item(&format!("{id}-{i}")).unwrap();
        let mut last = item.attempts[0].started_at;
        for (k, step) in item.steps.iter().enumerate() {
            if stages.len() <= k {
                stages.push((step.name.clone(), 0.0));
            }
            stages[k].1 += (step.at - last) as f64 / orders as f64;
            last = step.at;
        }
    }
    stop.cancel();
    dispatcher.await.unwrap();
    drop(rt);
    store.close().await;
    GspRun {
        per_minute,
        stages,
        chromium_mb,
        cpu,
    }
}

/// The portal simulator on threads of its own (named `portal`), as a separate process
/// serves it to Playwright: its CPU is then told apart from the engine's.
struct PortalThreads {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortalThreads {
    fn start() -> Self {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("portal".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("portal")
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let portals = faena_tests::portals::serve(0).await.unwrap();
                    url_tx.send(portals.url.clone()).unwrap();
                    let _ = stopped.await;
                    drop(portals);
                });
            })
            .unwrap();
        PortalThreads {
            url: url_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for PortalThreads {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU seconds used so far: by the whole machine (busy time, every process), by this
/// process, and by its portal threads.
#[derive(Clone, Copy)]
struct CpuMark {
    machine: f64,
    process: f64,
    portal: f64,
}

impl CpuMark {
    fn now() -> Self {
        CpuMark {
            machine: machine_busy_seconds(),
            process: stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap()),
            portal: thread_cpu_seconds("portal"),
        }
    }

    fn since(self, before: CpuMark) -> CpuMark {
        CpuMark {
            machine: self.machine - before.machine,
            process: self.process - before.process,
            portal: self.portal - before.portal,
        }
    }

    fn per(self, n: usize) -> CpuMark {
        let n = n as f64;
        CpuMark {
            machine: self.machine / n,
            process: self.process / n,
            portal: self.portal / n,
        }
    }

    /// The engine's share: this process but its portal threads.
    fn engine(self) -> f64 {
        self.process - self.portal
    }

    /// Everything outside this process: Chromium's processes (and whatever else ran).
    fn browser(self) -> f64 {
        self.machine - self.process
    }
}

/// One figure of a [`CpuMark`], by name in the bench's rows.
type CpuPart = fn(&CpuMark) -> f64;

/// Busy CPU seconds of the whole machine since boot, from `/proc/stat` (user, nice,
/// system, irq and softirq time; not idle, I/O wait or time stolen by a hypervisor).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = stat
        .lines()
        .next()
        .expect("/proc/stat starts with the cpu line");
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (f[0] + f[1] + f[2] + f[5] + f[6]) / USER_HZ
}

/// What one [`gsp_orders_of`] run measured.
struct GspRun {
    per_minute: f64,
    /// Mean milliseconds to each stage.
    stages: Vec<(String, f64)>,
    /// The most memory Chromium's processes held together (PSS, so pages they share
    /// count once) while the orders ran, in a [`Measure::Memory`] run.
    chromium_mb: Option<f64>,
    /// CPU seconds per order over the timed orders.
    cpu: CpuMark,
}

/// The peak, until `stop`, of the summed PSS (KiB) of this process's descendants: the
/// Chromium the benchmark's engine started, sampled every 100 ms.
async fn peak_chromium_pss(stop: CancellationToken) -> u64 {
    let mut peak = 0;
    loop {
        peak = peak.max(
            tokio::task::spawn_blocking(descendants_pss_kb)
                .await
                .unwrap(),
        );
        tokio::select! {
            _ = stop.cancelled() => return peak,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn descendants_pss_kb() -> u64 {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = 0;
    let mut todo = children
        .get(&std::process::id())
        .cloned()
        .unwrap_or_default();
    while let Some(pid) = todo.pop() {
        todo.extend(children.get(&pid).into_iter().flatten());
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Messages per second of a whatsapp bulk send through the whole engine, over
/// `devices` devices of the gateway simulator (each sends one message at a time and
/// takes `latency_ms` per message).
async fn bulk_send(messages: usize, devices: usize, latency_ms: u64) -> f64 {
    use faena_tests::portals::{self, whatsapp};
    let portals = portals::serve(0).await.unwrap();
    portals.whatsapp.set_knobs(whatsapp::WaKnobs {
        latency_ms,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let grants = BTreeMap::from([(
        "whatsapp".to_owned(),
        PluginConfig {
            http_hosts: Some(vec![portals.url.trim_start_matches("http://").to_owned()]),
            secrets: Some(vec!["whatsapp_token".into()]),
            settings: Some(BTreeMap::from([(
                "api_url".into(),
                format!("{}/whatsapp", portals.url),
            )])),
            ..Default::default()
        },
    )]);
    let rt = runtime(dir.path(), &store, grants, false).await;
    store
        .secrets()
        .unwrap()
        .set("default", "whatsapp_token", whatsapp::TOKEN)
        .unwrap();
    let stop = CancellationToken::new();
    let dispatcher = tokio::spawn(scheduler::run(
        store.clone(),
        Arc::new(WasmExecutor(rt.clone())),
        SchedulerConfig {
            concurrency: 32,
            ..Default::default()
        },
        stop.clone(),
    ));
    let version = rt.version_for_new_job("whatsapp", "send").unwrap();
    let mut new = job("whatsapp", 0);
    new.operation = "send".into();
    new.input = Some(json!({"text": "Su pedido llega el lunes."}));
    new.items = (0..messages)
        .map(|i| NewItem {
            input: json!({"phone": format!("+5197{i:06}1")}),
            reference: None,
        })
        .collect();
    new.options.pool = Some(faena::model::PoolOptions {
        resources: (1..=devices).map(|d| format!("dev-{d}")).collect(),
        ..Default::default()
    });
    let t0 = Instant::now();
    let j = store.create_job("default", new, version).await.unwrap();
    loop {
        let now = store.job(&j.id).unwrap();
        if now.status == JobStatus::Completed {
            assert_eq!(now.counts.succeeded, messages as u64, "{now:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = messages as f64 / t0.elapsed().as_secs_f64();
    assert_eq!(portals.whatsapp.per_phone().len(), messages);
    stop.cancel();
    dispatcher.await.unwrap();
    drop(rt);
    store.close().await;
    rate
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!(
        "{} cores, {cpu}, {mem} GiB",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )
}

#[allow(unsafe_code)]
fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { faena::no_library_backtraces() };
    faena::no_transparent_huge_pages();
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = runs();
        println!("faena benchmarks — {} — {n} runs each", machine());
        println!("{:<58} {:>11} {:>11} {:>11}", "", "min", "median", "max");
        if want("store") {
            let v = futures_vec(n, || store_throughput(50_000, 8)).await;
            row(
                "store: create→claim→complete, durable (50k items, 8 workers)",
                "items/s",
                v,
            );
        }
        if want("engine") {
            let mut runs = Vec::new();
            for _ in 0..n {
                runs.push(engine_throughput(20_000, 32).await);
            }
            let figures: [Figure; 4] = [
                (
                    "engine: noop plugin end to end (20k items, concurrency 32)",
                    "items/s",
                    |r| r.rate,
                ),
                ("engine: of which creating the job (20k items)", "ms", |r| {
                    r.created_ms
                }),
                ("engine: commands per group commit while it runs", "", |r| {
                    r.per_commit
                }),
                ("engine: CPU per item, whole process", "µs", |r| r.cpu_us),
            ];
            for (name, unit, figure) in figures {
                row(name, unit, runs.iter().map(figure).collect());
            }
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..n {
                let mut lat = enqueue_to_start(2_000, latency_rate()).await;
                p50.push(percentile(&mut lat, 0.50));
                p99.push(percentile(&mut lat, 0.99));
            }
            row(
                &format!(
                    "engine: enqueue→start p50 (single-item jobs at {}/s)",
                    latency_rate()
                ),
                "ms",
                p50,
            );
            row("engine: enqueue→start p99", "ms", p99);
            let mut fsync = Vec::new();
            for _ in 0..n {
                fsync.push(percentile(&mut fsync_latencies(500), 0.99));
            }
            row("disk: 4 KiB write + fdatasync p99", "ms", fsync);
        }
        if want("overload") {
            // Browsers, elsewhere: compressed, and at nice 19 here so they take only
            // the CPU the engine leaves. Then clients that do not compress, and
            // compressing ones competing with the engine at its own priority.
            let configs = [
                ("1,000 browsers (compressed, nice 19)", true, 19),
                ("1,000 uncompressed clients (nice 19)", false, 19),
                ("1,000 browsers at the engine's priority", true, 0),
            ];
            let mut quiet = Vec::new();
            let mut busy: Vec<Vec<FeedRun>> = configs.iter().map(|_| Vec::new()).collect();
            for _ in 0..n {
                quiet.push(throughput_under_feed(10_000, NO_CLIENTS).await);
                for (runs, &(_, deflate, nice)) in busy.iter_mut().zip(&configs) {
                    let clients = FeedClients {
                        count: 1_000,
                        deflate,
                        nice,
                    };
                    runs.push(throughput_under_feed(10_000, clients).await);
                }
            }
            let figures = |runs: &[FeedRun], f: fn(&FeedRun) -> f64| -> Vec<f64> {
                runs.iter().map(f).collect()
            };
            row(
                "overload: noop items/s, no feed clients (10k items)",
                "items/s",
                figures(&quiet, |r| r.rate),
            );
            row(
                "overload: engine CPU per item, no feed clients",
                "µs",
                figures(&quiet, |r| r.engine_cpu_us),
            );
            for (i, (runs, &(clients, ..))) in busy.iter().zip(&configs).enumerate() {
                row(
                    &format!("overload: noop items/s, {clients}"),
                    "items/s",
                    figures(runs, |r| r.rate),
                );
                let ratio = runs.iter().zip(&quiet).map(|(b, q)| b.rate / q.rate);
                row(
                    &format!("overload: {clients} / none"),
                    "ratio",
                    ratio.collect(),
                );
                if i == configs.len() - 1 {
                    break;
                }
                row(
                    &format!("overload: {clients}: all delivered, after the batch"),
                    "ms",
                    figures(runs, |r| r.delivered_late_ms),
                );
                row(
                    &format!("overload: {clients}: CPU of the feed's server side"),
                    "core-s",
                    figures(runs, |r| r.feed_cpu),
                );
                row(
                    &format!("overload: {clients}: engine CPU per item"),
                    "µs",
                    figures(runs, |r| r.engine_cpu_us),
                );
                row(
                    &format!("overload: {clients}: CPU of the clients"),
                    "core-s",
                    figures(runs, |r| r.clients_cpu),
                );
                row(
                    &format!("overload: {clients}: bytes the clients read"),
                    "MB",
                    figures(runs, |r| r.received_mb),
                );
            }
        }
        if want("instantiate") {
            let v = futures_vec(n, || instantiate_and_run(5_000)).await;
            row("runtime: fresh noop instance + one call", "µs/item", v);
        }
        if want("fanout") {
            for subs in [100, 1_000] {
                let mut p50 = Vec::new();
                let mut p99 = Vec::new();
                for _ in 0..n {
                    let mut lat = fanout(subs, 200, 50).await;
                    p50.push(percentile(&mut lat, 0.50));
                    p99.push(percentile(&mut lat, 0.99));
                }
                row(
                    &format!("feed: fan-out to {subs} subscribers p50 (50 events/s)"),
                    "ms",
                    p50,
                );
                row(
                    &format!("feed: fan-out to {subs} subscribers p99"),
                    "ms",
                    p99,
                );
            }
        }
        if want("workers") {
            let mut own = Vec::new();
            let mut remote: Vec<Vec<workers::RemoteRun>> = vec![Vec::new(), Vec::new()];
            for _ in 0..n {
                own.push(workers::remote_throughput(20_000, 0).await);
                for (w, runs) in remote.iter_mut().enumerate() {
                    runs.push(workers::remote_throughput(20_000, w + 1).await);
                }
            }
            let rates = |r: &[workers::RemoteRun]| r.iter().map(|r| r.rate).collect::<Vec<_>>();
            let cpu =
                |r: &[workers::RemoteRun]| r.iter().map(|r| r.engine_cpu_us).collect::<Vec<_>>();
            row(
                "workers: noop items/s, engine's own dispatcher (20k, c=32)",
                "items/s",
                rates(&own),
            );
            row(
                "workers: engine CPU per item, own dispatcher",
                "µs",
                cpu(&own),
            );
            for (w, runs) in remote.iter().enumerate() {
                row(
                    &format!(
                        "workers: noop items/s through {} worker(s) (c=32 each)",
                        w + 1
                    ),
                    "items/s",
                    rates(runs),
                );
                row(
                    &format!("workers: engine CPU per item, {} worker(s)", w + 1),
                    "µs",
                    cpu(runs),
                );
            }
            // On paper: a gsp order reports about eight times what a no-op item does
            // (claim and completion, plus six checkpoints, its logs and heartbeats).
            let per_item = stats(cpu(&remote[0])).1;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let orders_per_s = cores * 1e6 / (per_item * 8.0);
            row(
                "workers: browser workers per coordinator (on paper, 40/min each)",
                "workers",
                vec![orders_per_s / (40.0 / 60.0)],
            );
        }
        if want("browser") {
            let ctx = futures_vec(n, || browser_flow(10, false)).await;
            let fresh = futures_vec(n, || browser_flow(5, true)).await;
            let ratio: Vec<f64> = fresh.iter().zip(&ctx).map(|(f, c)| f / c).collect();
            row(
                "browser: form flow, fresh context per item",
                "ms/item",
                ctx.iter().map(|s| s * 1000.0).collect(),
            );
            row(
                "browser: form flow, fresh browser per item",
                "ms/item",
                fresh.iter().map(|s| s * 1000.0).collect(),
            );
            row("browser: fresh browser / fresh context", "ratio", ratio);
        }
        if want("whatsapp") {
            for latency in [20, 0] {
                let mut by_devices = Vec::new();
                for devices in [1, 5] {
                    let v = futures_vec(n, || bulk_send(2_000, devices, latency)).await;
                    row(
                        &format!(
                            "whatsapp: 2,000 messages, {devices} device(s), {latency} ms each"
                        ),
                        "msg/s",
                        v.clone(),
                    );
                    by_devices.push(v);
                }
                let ratio: Vec<f64> = by_devices[1]
                    .iter()
                    .zip(&by_devices[0])
                    .map(|(five, one)| five / one)
                    .collect();
                row(
                    &format!("whatsapp: 5 devices / 1 device, {latency} ms each"),
                    "ratio",
                    ratio,
                );
            }
        }
        if want("gsp") {
            for concurrency in [1, 2, 4] {
                let mut rates = Vec::new();
                let mut memory = Vec::new();
                let mut stages = Vec::new();
                let mut cpu = Vec::new();
                for _ in 0..n {
                    let r = gsp_orders(8 * concurrency, concurrency, Measure::Pace).await;
                    rates.push(r.per_minute);
                    stages = r.stages;
                    cpu.push(r.cpu);
                }
                // Memory in runs of their own, each context opened twice per slot.
                for _ in 0..n {
                    let r = gsp_orders(2 * concurrency, concurrency, Measure::Memory).await;
                    memory.extend(r.chromium_mb);
                }
                row(
                    &format!("gsp: orders of 3 products, concurrency {concurrency}"),
                    "orders/min",
                    rates,
                );
                row(
                    &format!("gsp: Chromium peak PSS, concurrency {concurrency}"),
                    "MB",
                    memory,
                );
                // Where an order's CPU goes: with both cores busy, this is what the
                // pace is made of.
                let parts: [(&str, CpuPart); 4] = [
                    ("whole machine", |c| c.machine),
                    ("Chromium", |c| c.browser()),
                    ("engine", |c| c.engine()),
                    ("portal", |c| c.portal),
                ];
                for (part, of) in parts {
                    row(
                        &format!("gsp: CPU per order, {part}, concurrency {concurrency}"),
                        "ms",
                        cpu.iter().map(|c| of(c) * 1e3).collect(),
                    );
                }
                let breakdown: Vec<String> = stages
                    .iter()
                    .map(|(name, ms)| format!("{name} {ms:.0}"))
                    .collect();
                println!("    ms to each stage (last run): {}", breakdown.join(", "));
            }
        }
        if want("python") {
            let component = gsp_python();
            for concurrency in [1, 2, 4] {
                let (mut rust, mut python, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..n {
                    let orders = 8 * concurrency;
                    let r = gsp_orders_of("gsp", None, orders, concurrency, Measure::Pace)
                        .await
                        .per_minute;
                    let p = gsp_orders_of(
                        "gsp-python",
                        Some(&component),
                        orders,
                        concurrency,
                        Measure::Pace,
                    )
                    .await
                    .per_minute;
                    rust.push(r);
                    python.push(p);
                    ratio.push(p / r);
                }
                row(
                    &format!("gsp in Rust, concurrency {concurrency}"),
                    "orders/min",
                    rust,
                );
                row(
                    &format!("gsp in Python, concurrency {concurrency}"),
                    "orders/min",
                    python,
                );
                row(
                    &format!("gsp Python / Rust, concurrency {concurrency}"),
                    "ratio",
                    ratio,
                );
            }
        }
    });
}

async fn futures_vec<F, Fut>(n: usize, f: F) -> Vec<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f().await);
    }
    out
}

/// CPU seconds (user + system) used so far by this process's threads whose name
/// starts with `prefix`, from /proc.
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        total += stat_cpu_seconds(&stat);
    }
    total
}

/// Clock ticks per second of the times in `/proc` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds in a `/proc/…/stat` line.
fn stat_cpu_seconds(stat: &str) -> f64 {
    let close = stat
        .rfind(')')
        .expect("a stat line names its command in parentheses");
    // Fields after the name: state is the 3rd field of the line, utime the 14th.
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    (utime + stime) / USER_HZ
}

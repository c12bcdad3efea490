//! The WebSocket feed over a real listener.

mod common;

use std::time::Duration;

use common::*;
use faena::api::{self, AppState};
use faena::auth::Role;
use faena::model::JobStatus;
use faena::store::{EventFilter, JobAction, Outcome};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The API of `e` on a 127.0.0.1 listener, and a viewer key of the `default` tenant.
struct Server {
    base: String,
    key: String,
}

impl Server {
    /// `ws://…{path}` with the key.
    fn at(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}token={}", self.base, self.key)
    }
}

async fn serve(e: &Engine) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = e.shutdown.clone();
    let state = AppState::new(e.store.clone(), None).unwrap();
    let (_, key) = state
        .auth
        .keys
        .create("default", Role::Viewer, "feed tests", 0)
        .unwrap();
    tokio::spawn(api::serve(listener, state, async move {
        shutdown.cancelled().await
    }));
    Server {
        base: format!("ws://{addr}"),
        key,
    }
}

/// The seqs of every stored event of `job`, in order.
fn stored_seqs(e: &Engine, job: &str) -> Vec<u64> {
    let filter = EventFilter {
        jobs: vec![job.to_owned()],
        ..Default::default()
    };
    let (events, _) = e.store.events(0, &filter, usize::MAX).unwrap();
    events.iter().map(|e| e.seq).collect()
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("feed went quiet")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// A client that drops mid-job and reconnects with `after` sees every event of the job
/// exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_after_misses_nothing_and_repeats_nothing() {
    let exec = executor("slow", |_, ctx| async move {
        ctx.step("working", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        Outcome::Succeeded(json!(null))
    });
    let e = engine(Some(exec), 4).await;
    let url = serve(&e).await;
    let mut new = new_job("slow", (0..200).map(|i| json!(i)).collect());
    new.start = false;
    let job = e.store.create_job("default", new, None).await.unwrap();

    let mut ws = connect(&url.at("/ws")).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "jobs": [job.id], "after": 0}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    e.store.job_action(&job.id, JobAction::Start).await.unwrap();
    let mut got: Vec<u64> = Vec::new();
    // Each event's `prev`: the one before it on this subscription.
    let mut prevs: Vec<Option<u64>> = Vec::new();
    while got.len() < 150 {
        let m = next_json(&mut ws).await;
        got.push(m["seq"].as_u64().expect("an event"));
        prevs.push(m["prev"].as_u64());
    }
    drop(ws); // gone mid-job
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = *got.last().unwrap();
    let mut ws = connect(&url.at("/ws")).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    send(
        &mut ws,
        json!({"type": "subscribe", "jobs": [job.id], "after": after}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    loop {
        let m = next_json(&mut ws).await;
        got.push(m["seq"].as_u64().expect("an event"));
        prevs.push(m["prev"].as_u64());
        if m["type"] == "job_completed" {
            break;
        }
    }
    let stored = stored_seqs(&e, &job.id);
    assert_eq!(got, stored, "every event of the job exactly once, in order");
    // `prev` links them across the reconnect: the first after `after: 0` says 0, each
    // next one the seq before it, although other jobs' events lie between.
    let expected: Vec<Option<u64>> = std::iter::once(Some(0))
        .chain(got.iter().map(|&s| Some(s)))
        .take(got.len())
        .collect();
    assert_eq!(
        prevs, expected,
        "prev names the previous event of the subscription"
    );
    assert_eq!(e.store.job(&job.id).unwrap().status, JobStatus::Completed);
    // The one-job shorthand replays the same history.
    let mut one = connect(&url.at(&format!("/ws/jobs/{}", job.id))).await;
    assert_eq!(next_json(&mut one).await["type"], "subscribed");
    let first = next_json(&mut one).await;
    assert_eq!(
        (first["seq"].as_u64(), first["type"].clone()),
        (Some(stored[0]), json!("job_created"))
    );
    e.stop().await;
}

/// A client that stops reading is told it lagged and is caught up from the store with
/// no gap; a client reading at the same time is not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_lags_alone_and_catches_up() {
    let e = engine(None, 1).await;
    let url = serve(&e).await;
    let mut slow = connect(&url.at("/ws")).await;
    send(&mut slow, json!({"type": "subscribe", "after": 0})).await;
    let mut fast = connect(&url.at("/ws")).await;
    send(
        &mut fast,
        json!({"type": "subscribe", "types": ["bulk"], "after": 0}),
    )
    .await;
    assert_eq!(next_json(&mut fast).await["type"], "subscribed");

    let total: u64 = 40_000;
    // 40 MB: more than the feed keeps in memory (`FeedLimits`), so the slow client
    // falls out of it.
    let padding = "x".repeat(1_000);
    let publisher = {
        let store = e.store.clone();
        tokio::spawn(async move {
            for chunk in 0..(total / 1_000) {
                let futs = (0..1_000).map(|i| {
                    store.publish(
                        "default",
                        "bulk",
                        None,
                        json!({"n": chunk * 1_000 + i, "pad": padding}),
                    )
                });
                for r in futures_util::future::join_all(futs).await {
                    r.unwrap();
                }
            }
        })
    };
    // The fast client reads everything while the slow one reads nothing.
    let mut last = 0;
    for _ in 0..total {
        let m = next_json(&mut fast).await;
        if m["type"] == "lagged" {
            continue;
        }
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "fast client: no gap");
        last = seq;
    }
    publisher.await.unwrap();

    let mut saw_lagged = false;
    let mut last = 0;
    assert_eq!(next_json(&mut slow).await["type"], "subscribed");
    while last < total {
        let m = next_json(&mut slow).await;
        if m["type"] == "lagged" {
            saw_lagged = true;
            assert_eq!(m["next"].as_u64().unwrap(), last + 1);
            continue;
        }
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "slow client: no gap, no duplicate");
        last = seq;
    }
    assert!(
        saw_lagged,
        "a client {total} events behind is told it lagged"
    );
    e.stop().await;
}

/// A subscription whose `after` lies beyond the log (a seq from elsewhere) starts at
/// the head and still gets every live event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_beyond_the_head_starts_live() {
    let e = engine(None, 1).await;
    let url = serve(&e).await;
    e.store
        .publish("default", "before", None, json!({}))
        .await
        .unwrap();
    let mut ws = connect(&url.at("/ws")).await;
    send(&mut ws, json!({"type": "subscribe", "after": 1_000_000})).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (
            ack["type"].clone(),
            ack["after"].clone(),
            ack["head"].clone()
        ),
        (json!("subscribed"), json!(1), json!(1))
    );
    e.store
        .publish("default", "after", None, json!({"n": 2}))
        .await
        .unwrap();
    let ev = next_json(&mut ws).await;
    assert_eq!(
        (ev["type"].clone(), ev["seq"].clone()),
        (json!("after"), json!(2))
    );
    e.stop().await;
}

/// The feed needs a key, and a tenant's subscriber gets its own events only — on `/ws`
/// with no filter and on `/ws/jobs/{id}` naming another tenant's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_needs_a_key_and_shows_a_tenant_only_its_events() {
    let e = engine(None, 1).await;
    let url = serve(&e).await;
    // Refused with a close code and reason a browser can read, not a failed handshake.
    for (url, code, says) in [
        (format!("{}/ws", url.base), 4401, "needs an API key"),
        (
            format!("{}/ws?token=fk_nope", url.base),
            4401,
            "unknown or was revoked",
        ),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), code);
                assert!(frame.reason.contains(says), "{}", frame.reason);
            }
            other => panic!("a feed without a valid key: {other:?}"),
        }
    }
    let acme = Server {
        base: url.base.clone(),
        key: e
            .store
            .keys()
            .unwrap()
            .create("acme", Role::Viewer, "acme feed", 0)
            .unwrap()
            .1,
    };
    let theirs = e
        .store
        .create_job("default", new_job("ext", vec![json!(1)]), None)
        .await
        .unwrap();
    let mut all = connect(&acme.at("/ws")).await;
    send(&mut all, json!({"type": "subscribe", "after": 0})).await;
    assert_eq!(next_json(&mut all).await["type"], "subscribed");
    let mut named = connect(&acme.at(&format!("/ws/jobs/{}", theirs.id))).await;
    let ours = e
        .store
        .create_job("acme", new_job("ext", vec![json!(2)]), None)
        .await
        .unwrap();
    e.store
        .publish("default", "not_for_acme", None, json!({}))
        .await
        .unwrap();
    e.store
        .publish("acme", "for_acme", None, json!({}))
        .await
        .unwrap();
    // Everything acme's subscriber receives is acme's, up to its last event.
    loop {
        let ev = next_json(&mut all).await;
        assert_eq!(ev["tenant"], "acme", "{ev}");
        if ev["type"] == "for_acme" {
            break;
        }
        assert_eq!(ev["job_id"], ours.id.as_str(), "{ev}");
    }
    // The feed of another tenant's job stays silent.
    let quiet = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let ev = next_json(&mut named).await;
            if ev.get("seq").is_some() {
                return ev;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "acme saw {quiet:?}");
    e.stop().await;
}

/// A plain request to the feed is refused with a JSON error naming what is expected,
/// and a client message over the limit closes that connection only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_a_websocket_handshake_is_refused() {
    let e = engine(None, 1).await;
    let url = serve(&e).await;
    let http = url.at("/ws").replacen("ws://", "http://", 1);
    let resp = reqwest::get(&http).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("WebSocket upgrade"),
        "{body}"
    );

    let mut big = connect(&url.at("/ws")).await;
    let mut fine = connect(&url.at("/ws")).await;
    send(&mut fine, json!({"type": "subscribe", "after": 0})).await;
    assert_eq!(next_json(&mut fine).await["type"], "subscribed");
    let jobs: Vec<String> = (0..20_000).map(|i| format!("job-{i:020}")).collect();
    // The server may close it while the client is still writing.
    let sub = json!({"type": "subscribe", "jobs": jobs}).to_string();
    let _ = big.send(Message::Text(sub.into())).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a 500 KB message closes its connection");
    send(&mut fine, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut fine).await["type"], "pong");
    e.stop().await;
}

/// A browser's side of permessage-deflate, over a plain socket: it offers the
/// extension, compresses its own messages, and inflates the server's compressed ones
/// through one inflater kept for the connection (context takeover).
struct DeflateClient {
    io: tokio::net::TcpStream,
    buf: Vec<u8>,
    inflate: flate2::Decompress,
    /// Server messages that came compressed.
    compressed: usize,
}

const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

impl DeflateClient {
    async fn connect(server: &Server, path: &str) -> DeflateClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server.base.trim_start_matches("ws://");
        let mut io = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path}?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
            server.key
        );
        io.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                io.read_buf(&mut buf).await.unwrap() > 0,
                "handshake cut short"
            );
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains(
                "sec-websocket-extensions: permessage-deflate; client_no_context_takeover"
            ),
            "{head}"
        );
        buf.drain(..end);
        DeflateClient {
            io,
            buf,
            inflate: flate2::Decompress::new(false),
            compressed: 0,
        }
    }

    /// Send `v` compressed, masked, as a browser does.
    async fn send(&mut self, v: Value) {
        use flate2::{Compress, Compression, FlushCompress};
        use tokio::io::AsyncWriteExt;
        let mut body = Vec::with_capacity(1024);
        Compress::new(Compression::default(), false)
            .compress_vec(v.to_string().as_bytes(), &mut body, FlushCompress::Sync)
            .unwrap();
        body.truncate(body.len() - SYNC_TAIL.len());
        let mask = [7, 1, 8, 2];
        assert!(body.len() < 126);
        let mut frame = vec![0xC1, 0x80 | body.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.io.write_all(&frame).await.unwrap();
    }

    async fn next_json(&mut self) -> Value {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((first, payload)) = self.frame() {
                assert_eq!(first & 0xBF, 0x81, "a final text frame from the server");
                let text = if first & 0x40 != 0 {
                    self.compressed += 1;
                    self.inflated(&payload)
                } else {
                    payload
                };
                return serde_json::from_slice(&text).unwrap();
            }
            let read =
                tokio::time::timeout(Duration::from_secs(30), self.io.read_buf(&mut self.buf))
                    .await
                    .expect("feed went quiet")
                    .unwrap();
            assert!(read > 0, "feed closed");
        }
    }

    /// One whole frame from the buffer: its first byte and payload.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, header) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < header + len {
            return None;
        }
        let first = b[0];
        let payload = b[header..header + len].to_vec();
        self.buf.drain(..header + len);
        Some((first, payload))
    }

    fn inflated(&mut self, body: &[u8]) -> Vec<u8> {
        let input = [body, &SYNC_TAIL[..]].concat();
        let start = self.inflate.total_in();
        let mut out = Vec::with_capacity(body.len() * 8 + 64);
        while ((self.inflate.total_in() - start) as usize) < input.len() {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let done = (self.inflate.total_in() - start) as usize;
            self.inflate
                .decompress_vec(&input[done..], &mut out, flate2::FlushDecompress::Sync)
                .expect("the server's compressed message inflates");
        }
        out
    }
}

/// A client that offers permessage-deflate, as browsers do, gets the job's events
/// compressed, through one inflater, in order and complete: from before the job
/// starts, and when it joins in the middle with `after` (the rest of what it joined
/// plain, then compressed). Its own messages may come compressed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_offers_compression_gets_every_event_compressed_in_order() {
    let exec = executor("slow", |_, ctx| async move {
        ctx.step("working", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        Outcome::Succeeded(json!(null))
    });
    let e = engine(Some(exec), 8).await;
    let url = serve(&e).await;
    let mut new = new_job("slow", (0..300).map(|i| json!(i)).collect());
    new.start = false;
    let job = e.store.create_job("default", new, None).await.unwrap();

    let mut early = DeflateClient::connect(&url, "/ws").await;
    early
        .send(json!({"type": "subscribe", "jobs": [job.id], "after": 0}))
        .await;
    assert_eq!(early.next_json().await["type"], "subscribed");
    e.store.job_action(&job.id, JobAction::Start).await.unwrap();
    let mut got = Vec::new();
    let mut late: Option<(DeflateClient, u64)> = None;
    let mut pongs = 0;
    loop {
        let m = early.next_json().await;
        if m["type"] == "pong" {
            pongs += 1;
            continue;
        }
        got.push(m["seq"].as_u64().expect("an event"));
        if got.len() == 200 {
            // A ping in the middle of the stream is answered plain.
            early.send(json!({"type": "ping"})).await;
            let mut c = DeflateClient::connect(&url, "/ws").await;
            let after = got[got.len() - 1];
            c.send(json!({"type": "subscribe", "jobs": [job.id], "after": after}))
                .await;
            late = Some((c, after));
        }
        if m["type"] == "job_completed" {
            break;
        }
    }
    let stored = stored_seqs(&e, &job.id);
    assert_eq!(got, stored, "every event of the job exactly once, in order");
    assert_eq!(pongs, 1);
    assert!(
        early.compressed > stored.len() / 2,
        "{} of {} events came compressed",
        early.compressed,
        stored.len()
    );

    let (mut late, after) = late.expect("joined");
    assert_eq!(late.next_json().await["type"], "subscribed");
    let mut rest = Vec::new();
    loop {
        let m = late.next_json().await;
        rest.push(m["seq"].as_u64().expect("an event"));
        if m["type"] == "job_completed" {
            break;
        }
    }
    let want: Vec<u64> = stored.iter().copied().filter(|&s| s > after).collect();
    assert_eq!(
        rest, want,
        "the late client: the rest, exactly once, in order"
    );
    assert!(
        late.compressed > 0,
        "the late client got compressed events too"
    );
    e.stop().await;
}

/// A custom `alert` event of the `default` tenant, numbered `n`, under `topic`.
fn publish(topic: Option<&str>, n: u64) -> faena::store::Publication {
    faena::store::Publication {
        tenant: "default".into(),
        kind: "alert".into(),
        job_id: None,
        topic: topic.map(str::to_owned),
        data: json!({"n": n}),
        idem: None,
        engine: false,
    }
}

/// Custom events under topics: a subscription to topics gets only those, with `prev`
/// linking them, and `GET /api/v1/events?topic=` lists them alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_to_topics_gets_only_their_events() {
    let e = engine(None, 1).await;
    let url = serve(&e).await;
    // Some before the subscription: the first one it gets names the last of its own.
    let mut lima_seqs = Vec::new();
    for n in 0..3 {
        e.store
            .publish_once(publish(Some("branch/cusco"), n))
            .await
            .unwrap();
        let (ev, _) = e
            .store
            .publish_once(publish(Some("branch/lima"), n))
            .await
            .unwrap();
        lima_seqs.push(ev.seq);
    }
    let head = e.store.last_seq().unwrap();
    let mut ws = connect(&url.at("/ws")).await;
    send(
        &mut ws,
        json!({"type": "subscribe", "topics": ["branch/lima"], "after": head}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    for n in 3..6 {
        e.store
            .publish_once(publish(Some("branch/cusco"), n))
            .await
            .unwrap();
        e.store.publish_once(publish(None, n)).await.unwrap();
        let (ev, _) = e
            .store
            .publish_once(publish(Some("branch/lima"), n))
            .await
            .unwrap();
        lima_seqs.push(ev.seq);
    }
    let mut prev = lima_seqs[2];
    for expected in &lima_seqs[3..] {
        let ev = next_json(&mut ws).await;
        assert_eq!(ev["topic"], "branch/lima", "{ev}");
        assert_eq!(ev["seq"].as_u64(), Some(*expected), "{ev}");
        assert_eq!(ev["prev"].as_u64(), Some(prev), "{ev}");
        prev = *expected;
    }
    // A topic that breaks the rules is refused, naming it.
    let refused = e.store.publish_once(publish(Some("no spaces"), 0)).await;
    assert!(format!("{refused:?}").contains("topic"), "{refused:?}");
    // The log, by topic.
    let filter = EventFilter {
        topics: vec!["branch/lima".into()],
        ..Default::default()
    };
    let (events, _) = e.store.events(0, &filter, 100).unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), lima_seqs);
    e.stop().await;
}

/// A subscription costs a request of the key's rate (a new one may read the store): past
/// the rate the feed says so and keeps the connection and its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_again_and_again_is_held_to_the_keys_rate() {
    let e = engine(None, 1).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(e.store.clone(), None)
        .unwrap()
        .with_rate_limit(faena::auth::RateLimit {
            per_sec: 0.001,
            burst: 3.0,
        });
    let (_, key) = state
        .auth
        .keys
        .create("default", Role::Viewer, "feed tests", 0)
        .unwrap();
    let shutdown = e.shutdown.clone();
    tokio::spawn(api::serve(listener, state, async move {
        shutdown.cancelled().await
    }));
    // The handshake takes one request, each subscription one more.
    let mut ws = connect(&format!("ws://{addr}/ws?token={key}")).await;
    for topic in ["a", "b"] {
        send(&mut ws, json!({"type": "subscribe", "topics": [topic]})).await;
        assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    }
    send(&mut ws, json!({"type": "subscribe", "topics": ["c"]})).await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("rate"),
        "{refused}"
    );
    // Still connected, still subscribed to `b`.
    e.store.publish_once(publish(Some("b"), 0)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["topic"], "b");
    e.stop().await;
}

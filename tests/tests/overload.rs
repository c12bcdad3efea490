//! Overload: 1,000 WebSocket clients on one engine while a batch of the real `noop`
//! plugin runs and the API takes requests. Dashboards following progress, detail views
//! following every event, and clients that stopped reading altogether: every reader
//! gets its whole stream in order, the stalled ones hold nobody up, and the API keeps
//! answering. (How much throughput the feed costs is a benchmark figure:
//! `scripts/bench overload`.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ITEMS: usize = 500;
const PROGRESS_CLIENTS: usize = 900;
const DETAIL_CLIENTS: usize = 90;
const STALLED_CLIENTS: usize = 10;

async fn subscribe(e: &common::Engine, sub: Value) -> common::Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(e.ws_url("/ws"))
        .await
        .expect("connect (is `ulimit -n` above 2,100?)");
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    ws
}

/// Read until `job_completed`; the seqs of what arrived (acks, pongs and `lagged`
/// notices left out).
async fn read_to_the_end(mut ws: common::Ws) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("the feed went quiet before job_completed")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        let Some(seq) = v["seq"].as_u64() else {
            continue;
        };
        let kind = v["type"].as_str().unwrap().to_owned();
        let end = kind == "job_completed";
        got.push((seq, kind));
        if end {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_feed_clients_do_not_stall_the_engine_or_each_other() {
    // One key for all the clients here, so its bucket is out of the way: this is about
    // the feed, not the rate limit (a key's 1,000 connects in a second would get 429).
    let e = common::start_limited(
        BTreeMap::new(),
        false,
        8,
        Duration::from_secs(3600),
        faena::auth::RateLimit {
            per_sec: 1e9,
            burst: 1e9,
        },
    )
    .await;
    e.load(faena::runtime::builtin_component("noop").unwrap())
        .await;
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "noop", "name": "overload", "start": false,
                   "items": (0..ITEMS).map(|n| json!({"input": {"n": n}})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    // Clients that subscribe and never read: their sockets fill up and they fall
    // behind; the engine must not wait for them.
    let mut stalled = Vec::new();
    for _ in 0..STALLED_CLIENTS {
        stalled.push(subscribe(&e, json!({"type": "subscribe", "after": 0})).await);
    }
    // Progress bars: one event per finished item. Detail views: everything of the job.
    let mut readers = Vec::new();
    for i in 0..PROGRESS_CLIENTS + DETAIL_CLIENTS {
        let types = if i < PROGRESS_CLIENTS {
            json!(["item_progress", "job_completed"])
        } else {
            json!([])
        };
        let ws = subscribe(
            &e,
            json!({"type": "subscribe", "jobs": [id], "types": types, "after": 0}),
        )
        .await;
        readers.push(tokio::spawn(read_to_the_end(ws)));
    }

    // The batch runs while the API keeps taking requests.
    let (status, _) = e.post(&format!("/api/v1/jobs/{id}/start"), json!({})).await;
    assert_eq!(status, 200);
    let mut answered = 0;
    loop {
        let j = e.get(&format!("/api/v1/jobs/{id}")).await;
        let (status, _) = e
            .post(
                "/api/v1/jobs",
                json!({"plugin": "noop", "items": [{"input": {"side": answered}}]}),
            )
            .await;
        assert_eq!(status, 201, "the API answered during the batch");
        answered += 1;
        if j["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = e.wait_finished(&id, 120).await;
    assert_eq!(job.counts.succeeded as usize, ITEMS);

    // The job's events in the log: what each kind of reader should have seen.
    let mut log = Vec::new();
    let mut after = 0;
    loop {
        let page = e
            .get(&format!("/api/v1/events?job={id}&after={after}&limit=1000"))
            .await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        after = events.last().unwrap()["seq"].as_u64().unwrap();
        log.extend(events.into_iter().map(|ev| {
            (
                ev["seq"].as_u64().unwrap(),
                ev["type"].as_str().unwrap().to_owned(),
            )
        }));
    }
    let progress: Vec<(u64, String)> = log
        .iter()
        .filter(|(_, k)| k == "item_progress" || k == "job_completed")
        .cloned()
        .collect();
    assert_eq!(
        progress
            .iter()
            .filter(|(_, k)| k == "item_progress")
            .count(),
        ITEMS
    );
    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.await.unwrap();
        let want = if i < PROGRESS_CLIENTS {
            &progress
        } else {
            &log
        };
        assert_eq!(
            got.len(),
            want.len(),
            "client {i} got {} of {} events",
            got.len(),
            want.len()
        );
        assert!(&got == want, "client {i}: every event once, in order");
    }

    // A stalled client that starts reading again is caught up from the log.
    let first = stalled.remove(0);
    drop(stalled);
    let mut first = first;
    let mut last_seq = 0;
    let head = e.get("/health").await["last_seq"].as_u64().unwrap();
    while last_seq < head {
        let msg = tokio::time::timeout(Duration::from_secs(60), first.next())
            .await
            .expect("the stalled client is served again")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if let Some(seq) = v["seq"].as_u64() {
            assert_eq!(seq, last_seq + 1, "no gap after catching up");
            last_seq = seq;
        }
    }
}

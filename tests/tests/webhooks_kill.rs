//! Webhooks across a crash: a batch of no-op jobs runs while a receiver on 127.0.0.1
//! takes its `job_completed` events (answering 500 for a while, before and after the
//! crash), the `faena` process is killed with SIGKILL mid-batch and started again. The
//! receiver ends up with every completion, each correctly signed; an id comes twice
//! only if its call was cut by the kill.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::process::{Faena, free_port};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const JOBS: usize = 40;
const ITEMS: usize = 300;
const KEY: [u8; 32] = *b"receiver-secret-for-the-kill-tst";

#[derive(Default)]
struct Seen {
    /// webhook-id → times answered 200.
    delivered: BTreeMap<String, usize>,
    refused: usize,
    bad_signatures: Vec<String>,
}

/// Answers 500 to the next `fail` calls, 200 to the rest; checks each signature.
async fn receiver(seen: Arc<Mutex<Seen>>, fail: Arc<AtomicUsize>) -> String {
    let ep = poem::endpoint::make(move |req: poem::Request| {
        let (seen, fail) = (seen.clone(), fail.clone());
        async move {
            let h = |n: &str| req.header(n).unwrap_or_default().to_owned();
            let (id, ts, sig) = (
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
            );
            let body = req.into_body().into_vec().await.unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).unwrap();
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(&body);
            let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
            let event: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            if sig != expected || id != format!("evt_{}", event["seq"]) {
                seen.bad_signatures.push(id.clone());
            }
            let refuse = fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refuse {
                seen.refused += 1;
                return poem::Response::builder()
                    .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                    .finish();
            }
            *seen.delivered.entry(id).or_default() += 1;
            poem::Response::builder().finish()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/faena", listener.local_addr().unwrap());
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(ep));
    url
}

async fn get(f: &Faena, path: &str) -> Value {
    f.client()
        .get(format!("{}{path}", f.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_completion_reaches_the_receiver_across_a_sigkill() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fail = Arc::new(AtomicUsize::new(3));
    let hook_url = receiver(seen.clone(), fail.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let config = dir.path().join("faena.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nport = {port}\nconcurrency = 8\n[browser]\nenabled = false\n\
             [webhooks]\nallow = [\"127.0.0.1\"]\nretry_initial_ms = 100\nretry_max_secs = 1\n",
            data = data.display().to_string(),
        ),
    )
    .unwrap();
    let mut faena = Faena::start(&config, &data, port);
    faena.ready().await;
    let resp = faena
        .client()
        .post(format!("{}/api/v1/webhooks", faena.url))
        .json(&json!({"url": hook_url, "types": ["job_completed"],
                      "secret": format!("whsec_{}", STANDARD.encode(KEY))}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let hook: Value = resp.json().await.unwrap();
    let hook = hook["webhook"]["id"].as_str().unwrap().to_owned();

    // Half the jobs start now; the other half wait and start after the restart, so
    // completions are delivered on both sides of the kill whatever the timing.
    let mut jobs = BTreeSet::new();
    let mut later = Vec::new();
    for j in 0..JOBS {
        let items: Vec<Value> = (0..ITEMS)
            .map(|i| json!({"input": {"j": j, "i": i}}))
            .collect();
        let start = j < JOBS / 2;
        let resp = faena
            .client()
            .post(format!("{}/api/v1/jobs", faena.url))
            .json(&json!({"plugin": "noop", "items": items, "start": start}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let job: Value = resp.json().await.unwrap();
        let id = job["id"].as_str().unwrap().to_owned();
        if !start {
            later.push(id.clone());
        }
        jobs.insert(id);
    }

    // Kill once some completions went through and others have not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().delivered.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    faena.kill();
    let before_kill = seen.lock().unwrap().delivered.len();
    // The receiver is down for a while after the restart too.
    fail.store(4, Ordering::SeqCst);
    faena = Faena::start(&config, &data, port);
    faena.ready().await;
    let mut running = 0;
    for id in jobs.iter().filter(|id| !later.contains(id)) {
        running += usize::from(faena.job(id).await["status"] != "completed");
    }
    for id in &later {
        let resp = faena
            .client()
            .post(format!("{}/api/v1/jobs/{id}/start", faena.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "start {id}");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    for id in &jobs {
        while faena.job(id).await["status"] != "completed" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let events = get(&faena, "/api/v1/events?type=job_completed&limit=1000").await;
    let expected: BTreeSet<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("evt_{}", e["seq"]))
        .collect();
    assert_eq!(expected.len(), JOBS, "one completion per job: {events}");
    loop {
        let got: BTreeSet<String> = seen.lock().unwrap().delivered.keys().cloned().collect();
        if got == expected {
            break;
        }
        assert!(
            got.is_subset(&expected),
            "ids outside the batch: {:?}",
            got.difference(&expected).collect::<Vec<_>>()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing after the restart: {:?}",
            expected.difference(&got).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = get(&faena, &format!("/api/v1/webhooks/{hook}")).await;
    assert_eq!(w["enabled"], true, "{w}");
    let seen = seen.lock().unwrap();
    assert!(
        seen.bad_signatures.is_empty(),
        "bad signatures: {:?}",
        seen.bad_signatures
    );
    let twice: Vec<_> = seen.delivered.iter().filter(|(_, n)| **n > 1).collect();
    // One call in flight per subscription: only that one can be repeated by a kill.
    assert!(
        twice.len() <= 1 && twice.iter().all(|(_, n)| **n == 2),
        "{twice:?}"
    );
    assert!(
        seen.refused >= 7,
        "the receiver refused {} calls",
        seen.refused
    );
    println!(
        "webhooks across SIGKILL: {JOBS} jobs ({running} of the started ones unfinished at the kill), \
         {before_kill} completions delivered before it, all {} after; {} refused with 500, \
         {} delivered twice across the kill: {twice:?}",
        expected.len(),
        seen.refused,
        twice.len()
    );
}

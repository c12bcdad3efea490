//! Bulk send with the whatsapp flow: the real plugin, through the HTTP capability
//! only, spread over a pool of sending devices of the local gateway simulator.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use faena::config::PluginConfig;
use faena::model::{ItemStatus, JobStatus};
use faena_tests::portals::{self, whatsapp};
use serde_json::{Value, json};

const PHONES: usize = 2_000;
const TEXT: &str = "Estimada clienta: su pedido de la campaña 17 llega el lunes.";

/// 2,000 phones: most valid, every 100th malformed, every 200th (and two more ending
/// in 000) without WhatsApp.
fn phones() -> Vec<String> {
    (0..PHONES)
        .map(|i| {
            if i % 100 == 7 {
                format!("+51{i}")
            } else if i % 200 == 50 {
                format!("+51990{:03}000", i / 200)
            } else {
                format!("+5198{i:07}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_send_spreads_over_devices_and_sends_each_phone_once() {
    let portals = portals::serve(0).await.unwrap();
    let host = portals.url.trim_start_matches("http://").to_owned();
    let e = common::start(
        BTreeMap::from([(
            "whatsapp".to_owned(),
            PluginConfig {
                http_hosts: Some(vec![host]),
                secrets: Some(vec!["whatsapp_token".into()]),
                settings: Some(BTreeMap::from([(
                    "api_url".to_owned(),
                    format!("{}/whatsapp", portals.url),
                )])),
                ..Default::default()
            },
        )]),
        false,
        16,
    )
    .await;
    e.load(faena::runtime::builtin_component("whatsapp").unwrap())
        .await;
    e.secret("whatsapp_token", whatsapp::TOKEN);
    // dev-3 takes 5 messages a second and answers 429 past that; dev-2 is slow; 1 %
    // of requests fail with 503 before sending.
    portals.whatsapp.set_knobs(whatsapp::WaKnobs {
        latency_ms: 5,
        slow: BTreeMap::from([("dev-2".into(), 40)]),
        rate_per_sec: BTreeMap::from([("dev-3".into(), 5)]),
        fail_rate: 0.01,
    });

    let phones = phones();
    let invalid: BTreeSet<&String> = phones
        .iter()
        .filter(|p| !whatsapp::valid_phone(p) || !whatsapp::on_whatsapp(p))
        .collect();
    assert_eq!(invalid.len(), 32);
    let devices: Vec<String> = (1..=5).map(|n| format!("dev-{n}")).collect();
    let items: Vec<Value> = phones
        .iter()
        .map(|p| json!({"input": {"phone": p}, "reference": p}))
        .collect();
    let (status, job) = e
        .post(
            "/api/v1/jobs",
            json!({
                "plugin": "whatsapp",
                "operation": "send",
                "name": "campaign 17 notice",
                "input": {"text": TEXT},
                "items": items,
                "options": {"max_attempts": 5, "backoff_ms": 50,
                            "pool": {"resources": devices, "concurrency": 2}},
            }),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["counts"]["queued"], PHONES);
    let id = job["id"].as_str().unwrap().to_owned();
    let mut feed = common::follow_job(&e, &id).await;

    // Raise the per-device concurrency while the job runs.
    e.wait_job(&id, 120, |j| j.counts.done() >= 300).await;
    let raised = e
        .http
        .put(format!("{}/api/v1/jobs/{id}/pool", e.url))
        .json(&json!({"resources": devices, "concurrency": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(raised.status(), 200);

    let events = common::events_until(&mut feed, 300, |ev| ev["type"] == "job_completed").await;
    let job = e.wait_finished(&id, 10).await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.counts.succeeded as usize, PHONES - invalid.len());
    assert_eq!(job.counts.failed as usize, invalid.len());
    assert_eq!(job.options.pool.as_ref().unwrap().concurrency, 4);

    // The gateway sent each valid phone the message exactly once.
    let sent = portals.whatsapp.per_phone();
    assert_eq!(sent.len(), PHONES - invalid.len());
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert!(sent.keys().all(|p| !invalid.contains(p)));
    assert!(
        portals.whatsapp.rate_limited() > 0,
        "dev-3 was rate limited"
    );

    // Every device served; the rate-limited one rested while the others went on.
    let per_device = portals.whatsapp.per_device();
    assert_eq!(per_device.len(), 5, "{per_device:?}");
    let used = &job.resources;
    assert!(used["dev-3"].rate_limited > 0, "{used:?}");
    assert!(
        per_device["dev-3"] < per_device["dev-1"],
        "dev-3 sent less: {per_device:?}"
    );
    for (device, n) in &per_device {
        assert_eq!(used[device].succeeded, u64::from(*n), "{device}: {used:?}");
    }

    // Each item records the device that served it.
    let items = e.store.items(&id, None, None, None, PHONES).unwrap().items;
    for it in &items {
        let device = it.resource.as_deref().expect("a device");
        assert!(devices.iter().any(|d| d == device));
        if it.status == ItemStatus::Succeeded {
            assert_eq!(it.result.as_ref().unwrap()["device"], device);
        }
    }

    // The feed: started, per-phone progress with the device and running totals,
    // per-phone failures, and the totals at the end.
    assert_eq!(events[0]["type"], "job_created");
    assert!(events.iter().any(|ev| ev["type"] == "job_started"));
    assert!(events.iter().any(|ev| ev["type"] == "job_updated"));
    let finished: Vec<&Value> = events
        .iter()
        .filter(|ev| {
            ev["type"] == "item_progress"
                && matches!(ev["data"]["status"].as_str(), Some("succeeded" | "failed"))
        })
        .collect();
    assert_eq!(finished.len(), PHONES);
    let mut done = 0;
    for ev in &finished {
        done += 1;
        assert_eq!(ev["data"]["done"], done, "running totals in order");
        assert_eq!(ev["data"]["total"], PHONES);
        assert!(ev["data"]["resource"].as_str().unwrap().starts_with("dev-"));
    }
    let refused: BTreeSet<String> = events
        .iter()
        .filter(|ev| ev["type"] == "item_failed" && ev["data"]["will_retry"] == false)
        .map(|ev| ev["data"]["reference"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        refused,
        invalid
            .iter()
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>()
    );
    let end = events.last().unwrap();
    assert_eq!(end["data"]["results"]["total"], PHONES);
    assert_eq!(end["data"]["results"]["succeeded"], PHONES - invalid.len());
    assert_eq!(end["data"]["results"]["failed"], invalid.len());
    assert_eq!(end["data"]["results"]["resources_used"], 5);
    assert!(
        end["data"]["resources"]["dev-3"]["rate_limited"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pool_is_refused_and_nothing_is_written() {
    let e = common::start(BTreeMap::new(), false, 2).await;
    e.load(faena::runtime::builtin_component("noop").unwrap())
        .await;
    for (options, field) in [
        (json!({"pool": {"resources": []}}), "options.pool.resources"),
        (
            json!({"pool": {"resources": ["dev-1", "dev-1"]}}),
            "options.pool.resources[1]",
        ),
        (
            json!({"pool": {"resources": ["dev-1"], "concurrency": 0}}),
            "options.pool.concurrency",
        ),
    ] {
        let (status, body) = e
            .post(
                "/api/v1/jobs",
                json!({"plugin": "noop", "items": [{"input": {}}], "options": options}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
    let (status, body) = e
        .post(
            "/api/v1/jobs",
            json!({"plugin": "noop", "input": [1], "items": [{"input": {}}]}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("input"),
        "{body}"
    );
    let jobs = e.get("/api/v1/jobs").await;
    assert!(jobs["jobs"].as_array().unwrap().is_empty());
}

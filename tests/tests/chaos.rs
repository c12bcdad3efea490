//! Crash safety: a gsp batch against the simulator while the `faena` process is killed
//! with SIGKILL at random moments and started again, and Chromium is killed under it.
//! At the end every item is final, none is lost, and the portal placed each order
//! exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::process::{Faena, free_port, kill_chromium};
use faena_tests::portals::{self, gsp};
use rand::Rng;
use serde_json::{Value, json};

const ORDERS: usize = 150;
const KILLS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_again_and_again_no_order_is_lost_or_placed_twice() {
    let portals = portals::serve(0).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let config = dir.path().join("faena.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nport = {port}\nconcurrency = 3\n\
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
    let mut faena = Faena::start(&config, &data, port);
    faena.ready().await;

    let items: Vec<Value> = (0..ORDERS)
        .map(|i| {
            let code = format!("C{:05}", 3_000 + i);
            json!({"reference": code, "input": {"consultora_code": code,
                   "rows": [{"product_code": format!("P{:03}", 1 + i % 12), "quantity": 1 + i % 3}]}})
        })
        .collect();
    // Without a key the engine answers nothing but its health.
    let anonymous = reqwest::get(format!("{}/api/v1/jobs", faena.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let resp = faena
        .client()
        .post(format!("{}/api/v1/jobs", faena.url))
        .json(&json!({"plugin": "gsp", "name": "chaos", "items": items,
                      "options": {"max_attempts": 20, "backoff_ms": 200, "max_backoff_ms": 2000, "lease_ms": 3000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    // "Created" means durable: killed right after the answer, the job is there.
    faena.kill();
    faena = Faena::start(&config, &data, port);
    faena.ready().await;
    let after = faena.job(&id).await;
    let total: u64 = after["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, ORDERS, "{after}");

    let mut kills = 1;
    let mut chromium_kills = 0;
    let mut rng = rand::rng();
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(2_000..8_000))).await;
        let j = faena.job(&id).await;
        if j["status"] == "completed" {
            break;
        }
        if kills == 3 && chromium_kills == 0 {
            // Chromium dies under a running engine: faena starts another.
            kill_chromium(&data);
            chromium_kills += 1;
            continue;
        }
        faena.kill();
        kills += 1;
        faena = Faena::start(&config, &data, port);
        faena.ready().await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    let job = loop {
        let j = faena.job(&id).await;
        if j["status"] == "completed" {
            break j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch did not finish: {j}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let counts = &job["counts"];
    assert_eq!(counts["succeeded"], ORDERS, "{job}");

    // The portal placed each order exactly once.
    let placed: BTreeMap<String, usize> =
        portals
            .gsp
            .orders
            .lock()
            .unwrap()
            .iter()
            .fold(BTreeMap::new(), |mut m, o| {
                *m.entry(o.consultant.clone()).or_default() += 1;
                m
            });
    assert_eq!(placed.len(), ORDERS, "every order placed");
    let twice: Vec<_> = placed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "placed twice: {twice:?}");
    println!(
        "chaos: {ORDERS} orders, faena killed {kills} times (SIGKILL), Chromium killed {chromium_kills} time(s): 0 lost, 0 placed twice"
    );
}

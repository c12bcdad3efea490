//! Fair share across tenants and jobs: a small job of one tenant runs while another
//! tenant's large batch is under way, priority orders a tenant's own jobs, and a
//! tenant's cap holds for the built-in dispatcher and for external workers alike.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use faena::model::{JobOptions, JobStatus};
use faena::store::{ClaimRequest, Outcome, Store};
use serde_json::json;

/// Each item takes a couple of milliseconds, like a tiny plugin call.
const ITEM_MS: u64 = 2;

fn job_of(items: usize, priority: i32) -> faena::model::NewJob {
    let mut job = new_job("work", (0..items).map(|i| json!(i)).collect());
    job.options = JobOptions {
        priority,
        ..Default::default()
    };
    job
}

/// Running items per tenant now, and the most seen at once.
type Gauge = Arc<Mutex<HashMap<String, (u32, u32)>>>;

fn sleepy(gauge: Gauge) -> Arc<dyn faena::scheduler::Executor> {
    executor("work", move |task, _ctx| {
        let gauge = gauge.clone();
        async move {
            let tenant = task.item.tenant.clone();
            {
                let mut g = gauge.lock().unwrap();
                let (now, max) = g.entry(tenant.clone()).or_default();
                *now += 1;
                *max = (*max).max(*now);
            }
            tokio::time::sleep(Duration::from_millis(ITEM_MS)).await;
            gauge.lock().unwrap().get_mut(&tenant).unwrap().0 -= 1;
            Outcome::Succeeded(json!(null))
        }
    })
}

async fn run_small_job(store: &Store) -> Duration {
    let started = Instant::now();
    let job = store.create_job("b", job_of(5, 0), None).await.unwrap();
    let done = wait_finished(store, &job.id, 60).await;
    assert_eq!(done.counts.succeeded, 5);
    started.elapsed()
}

/// The production report: tenant B's 5-item job waited for all of tenant A's batch.
/// Now B's items all finish while most of A's are still queued, even with A's job at
/// priority 100 (priority orders a tenant's own jobs, not tenants).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_runs_beside_another_tenants_batch() {
    const BIG: u64 = 3000;
    let e = engine(Some(sleepy(Gauge::default())), 4).await;
    let alone = run_small_job(&e.store).await;

    let started = Instant::now();
    let big = e
        .store
        .create_job("a", job_of(BIG as usize, 100), None)
        .await
        .unwrap();
    wait_job(&e.store, &big.id, 60, |j| j.counts.succeeded >= 20).await;
    let beside = run_small_job(&e.store).await;
    let a = e.store.job(&big.id).unwrap();
    assert!(
        a.counts.queued > BIG / 2,
        "B's job finished only after most of A's batch: {:?}",
        a.counts
    );
    let a_done = wait_finished(&e.store, &big.id, 120).await;
    let batch = started.elapsed();
    assert_eq!(a_done.counts.succeeded, BIG);
    eprintln!(
        "fairness: B's 5 items alone {:.3} s; beside A's {BIG}-item batch {:.3} s \
         ({} of A's items still queued then); A's batch took {:.2} s in all",
        alone.as_secs_f64(),
        beside.as_secs_f64(),
        a.counts.queued,
        batch.as_secs_f64()
    );
    e.stop().await;
}

/// With `[tenants.a] concurrency = 2`, never more than two of A's items run at once,
/// and the engine's other slots go to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cap_holds_and_leaves_room_for_others() {
    let gauge = Gauge::default();
    let e = engine(Some(sleepy(gauge.clone())), 6).await;
    e.store.set_tenant_limit("a", Some(2)).await;
    let a1 = e.store.create_job("a", job_of(100, 0), None).await.unwrap();
    let a2 = e.store.create_job("a", job_of(100, 5), None).await.unwrap();
    wait_job(&e.store, &a1.id, 60, |j| j.counts.succeeded >= 5).await;
    let b = e.store.create_job("b", job_of(40, 0), None).await.unwrap();
    for id in [&a1.id, &a2.id, &b.id] {
        assert_eq!(
            wait_finished(&e.store, id, 60).await.status,
            JobStatus::Completed
        );
    }
    let g = gauge.lock().unwrap().clone();
    eprintln!("fairness: most running at once per tenant: {g:?}");
    assert_eq!(g["a"].1, 2, "A reached its cap of 2 and never passed it");
    assert!(g["b"].1 > 2, "B used the slots A could not: {g:?}");
    e.stop().await;
}

fn claim(tenant: Option<&str>, max: usize) -> ClaimRequest {
    ClaimRequest {
        owner: "worker:test".into(),
        tenant: tenant.map(str::to_owned),
        plugins: vec!["work".into()],
        max,
        lease_ms: None,
        labels: Vec::new(),
        item: None,
    }
}

/// External workers' batched claims follow the same order and caps: tenants in turn,
/// a tenant's higher-priority job first, a tenant-scoped claim only its own items.
#[tokio::test]
async fn batched_claims_take_tenants_in_turn_and_priority_within_a_tenant() {
    let e = engine(None, 1).await;
    let low = e.store.create_job("a", job_of(50, 0), None).await.unwrap();
    let high = e.store.create_job("a", job_of(3, 5), None).await.unwrap();
    let other = e.store.create_job("b", job_of(10, 0), None).await.unwrap();
    let got = e.store.claim(claim(None, 8)).await.unwrap();
    let jobs: Vec<&str> = got.items.iter().map(|c| c.item.job_id.as_str()).collect();
    let (h, o, l) = (high.id.as_str(), other.id.as_str(), low.id.as_str());
    assert_eq!(jobs, [h, o, h, o, h, o, l, o]);

    // A worker with a key of tenant b sees only b's work, even with a's queued first.
    let got = e.store.claim(claim(Some("b"), 100)).await.unwrap();
    assert_eq!(got.items.len(), 6);
    assert!(got.items.iter().all(|c| c.item.tenant == "b"));

    // a has 4 running; with a cap of 5 one more may start, then none until one ends.
    e.store.set_tenant_limit("a", Some(5)).await;
    let got = e.store.claim(claim(None, 10)).await.unwrap();
    assert_eq!(got.items.len(), 1);
    assert!(
        e.store
            .claim(claim(None, 10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let c = &got.items[0];
    e.store
        .complete(&c.item.id, c.lease_token, Outcome::Succeeded(json!(null)))
        .await
        .unwrap();
    assert_eq!(e.store.claim(claim(None, 10)).await.unwrap().items.len(), 1);
    e.stop().await;
}

/// A job with labels goes only to claimers that carry all of them, also after a
/// restart rebuilds the queues from the store.
#[tokio::test]
async fn labelled_jobs_go_only_to_claimers_with_their_labels() {
    async fn claim(store: &Store, labels: &[&str]) -> faena::store::Result<faena::store::Claimed> {
        store
            .claim(ClaimRequest {
                owner: "worker:w".into(),
                tenant: None,
                plugins: vec!["work".into()],
                labels: labels.iter().map(|l| l.to_string()).collect(),
                max: 2,
                lease_ms: None,
                item: None,
            })
            .await
    }
    let dir = tempfile::tempdir().unwrap();
    for reopened in [false, true] {
        let store = open_store(dir.path()).await;
        if !reopened {
            for tenant in ["a", "b"] {
                let mut job = new_job("work", vec![json!(1), json!(2)]);
                job.options.labels = vec!["pe".into(), "office".into()];
                store.create_job(tenant, job, None).await.unwrap();
            }
        }
        assert!(claim(&store, &[]).await.unwrap().items.is_empty());
        assert!(claim(&store, &["pe"]).await.unwrap().items.is_empty());
        // One tenant's job now, the other's after the restart.
        let got = claim(&store, &["office", "x", "pe"]).await.unwrap();
        assert_eq!(got.items.len(), 2, "{got:?}");
        drop(store);
    }
}

//! The store and scheduler together: transitions with their events, leases and
//! fencing, crash recovery, retries under paused time, pause/resume/cancel.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use faena::model::{ErrorKind, FailurePolicy, ItemError, ItemStatus, JobOptions, JobStatus, kind};
use faena::store::{ClaimRequest, EventFilter, ItemKey, Outcome, StoreError};
use serde_json::json;

fn all_events(store: &faena::store::Store) -> Vec<faena::model::Event> {
    store
        .events(0, &EventFilter::default(), usize::MAX)
        .unwrap()
        .0
}

fn claim_req(_store: &faena::store::Store, plugin: &str, max: usize) -> ClaimRequest {
    ClaimRequest {
        owner: "worker:test".into(),
        tenant: None,
        plugins: vec![plugin.into()],
        max,
        lease_ms: None,
        labels: Vec::new(),
        item: None,
    }
}

/// Replaying the event log gives back exactly the stored item statuses and job counts,
/// and seqs run 1..=N with no gap: each change was written with its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_log_agrees_with_state() {
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let exec = executor("mix", move |task, _ctx| {
        let c = c.clone();
        async move {
            *c.lock().unwrap() += 1;
            let n = task.item.input["n"].as_u64().unwrap();
            match n % 4 {
                0 => Outcome::Succeeded(json!({"n": n})),
                1 => Outcome::Failed(ItemError::business(format!("bad data {n}"))),
                2 if task.item.attempt == 1 => {
                    Outcome::Failed(ItemError::application("portal down"))
                }
                2 => Outcome::Succeeded(json!({"retried": true})),
                _ => Outcome::Failed(ItemError::application("always down")),
            }
        }
    });
    let e = engine(Some(exec), 8).await;
    let mut job = new_job("mix", (0..40).map(|n| json!({"n": n})).collect());
    job.options = JobOptions {
        max_attempts: 2,
        backoff_ms: 5,
        max_backoff_ms: 20,
        on_failure: FailurePolicy::Review,
        ..Default::default()
    };
    let job = e.store.create_job("default", job, None).await.unwrap();
    // Items waiting for review keep the job open: it waits for a person.
    let done = wait_job(&e.store, &job.id, 30, |j| j.awaiting_review).await;
    assert_eq!(done.status, JobStatus::Running);
    assert_eq!(done.counts.open(), 0);
    assert_eq!(done.counts.succeeded, 20);
    assert_eq!(done.counts.needs_review, 20);

    let events = all_events(&e.store);
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev.seq, i as u64 + 1, "gap-free sequence");
    }
    // Rebuild statuses: job_started queues every item, then item_status_changed moves them.
    let mut status = [ItemStatus::Pending; 40];
    for ev in &events {
        match ev.kind.as_str() {
            k if k == kind::JOB_STARTED => status.iter_mut().for_each(|s| *s = ItemStatus::Queued),
            k if k == kind::ITEM_STATUS_CHANGED => {
                let idx = ItemKey::parse(ev.item_id.as_ref().unwrap()).unwrap().index as usize;
                let from: ItemStatus = serde_json::from_value(ev.data["from"].clone()).unwrap();
                let to: ItemStatus = serde_json::from_value(ev.data["to"].clone()).unwrap();
                assert_eq!(
                    status[idx], from,
                    "event {} starts where the item was",
                    ev.seq
                );
                status[idx] = to;
            }
            _ => {}
        }
    }
    for (i, st) in status.iter().enumerate() {
        let item = e.store.item(&format!("{}-{i}", job.id)).unwrap();
        assert_eq!(item.status, *st, "item {i}");
    }
    assert!(!events.iter().any(|e| e.kind == kind::JOB_COMPLETED));
    let waiting = events
        .iter()
        .rfind(|e| e.kind == kind::JOB_AWAITING_REVIEW)
        .unwrap();
    assert_eq!(waiting.data["needs_review"], 20);
    // Item 2 failed once then succeeded; its attempts and error history show it.
    let item2 = e.store.item(&format!("{}-2", job.id)).unwrap();
    assert_eq!(item2.attempts.len(), 2);
    assert_eq!(
        item2.attempts[0].error.as_ref().unwrap().kind,
        ErrorKind::Application
    );
    assert_eq!(item2.status, ItemStatus::Succeeded);
    // Business errors are not retried.
    let item1 = e.store.item(&format!("{}-1", job.id)).unwrap();
    assert_eq!(item1.attempts.len(), 1);
    assert_eq!(item1.status, ItemStatus::NeedsReview);
    assert_eq!(item1.error.as_ref().unwrap().message, "bad data 1");
    e.stop().await;
}

#[tokio::test]
async fn claim_twice_and_stale_tokens_are_refused() {
    let e = engine(None, 1).await;
    let job = e
        .store
        .create_job("default", new_job("ext", vec![json!(1)]), None)
        .await
        .unwrap();
    let id = format!("{}-0", job.id);
    let mut req = claim_req(&e.store, "ext", 1);
    req.item = ItemKey::parse(&id);
    let first = e.store.claim(req.clone()).await.unwrap();
    assert_eq!(first.items.len(), 1);
    let token = first.items[0].lease_token;
    let err = e.store.claim(req).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref m) if m.contains("running")),
        "{err}"
    );

    // A stale token changes nothing.
    let before = e.store.item(&id).unwrap();
    let err = e
        .store
        .complete(&id, token + 1, Outcome::Succeeded(json!(null)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err}");
    assert!(matches!(
        e.store.heartbeat(&id, token + 1, None).await.unwrap_err(),
        StoreError::StaleLease { .. }
    ));
    assert!(matches!(
        e.store
            .step(&id, token + 1, "x".into(), None)
            .await
            .unwrap_err(),
        StoreError::StaleLease { .. }
    ));
    assert_eq!(e.store.item(&id).unwrap(), before);

    // The right token works once; after that it is stale too.
    e.store
        .step(&id, token, "login_ok".into(), Some("{}".into()))
        .await
        .unwrap();
    e.store
        .complete(&id, token, Outcome::Succeeded(json!({"ok": true})))
        .await
        .unwrap();
    let err = e
        .store
        .complete(&id, token, Outcome::Succeeded(json!(null)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }), "{err}");
    let item = e.store.item(&id).unwrap();
    assert_eq!(item.status, ItemStatus::Succeeded);
    assert_eq!(item.steps[0].name, "login_ok");
    assert_eq!(e.store.job(&job.id).unwrap().status, JobStatus::Completed);
    e.stop().await;
}

/// A claim for a dispatcher's free places takes the places free when it runs, brings
/// back no more items than that, and claims nothing when no place is free (the
/// dispatcher frees the places nothing came back for).
#[tokio::test]
async fn a_claim_for_free_places_takes_those_free_when_it_runs() {
    let e = engine(None, 1).await;
    let job = e
        .store
        .create_job(
            "default",
            new_job("ext", (0..3).map(|i| json!(i)).collect()),
            None,
        )
        .await
        .unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(5));
    let held = slots.clone().try_acquire_many_owned(5).unwrap();
    let (none, places) = e
        .store
        .claim_slots(claim_req(&e.store, "ext", 0), slots.clone())
        .await
        .unwrap();
    assert!(none.items.is_empty());
    assert_eq!(places.num_permits(), 0);
    assert_eq!(e.store.job(&job.id).unwrap().counts.queued, 3);

    // Two places free again: two items, each with its place.
    drop(places);
    let mut held = held;
    drop(held.split(2).unwrap());
    let (two, places) = e
        .store
        .claim_slots(claim_req(&e.store, "ext", 0), slots.clone())
        .await
        .unwrap();
    assert_eq!(two.items.len(), 2);
    assert_eq!(places.num_permits(), 2);
    assert_eq!(slots.available_permits(), 0);

    // All five free, one item left: the claim holds all five, for one item.
    drop(places);
    drop(held);
    let (one, places) = e
        .store
        .claim_slots(claim_req(&e.store, "ext", 0), slots.clone())
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    assert_eq!(places.num_permits(), 5);
    let counts = e.store.job(&job.id).unwrap().counts;
    assert_eq!((counts.queued, counts.running), (0, 3));
    e.stop().await;
}

/// A process dies with items running; reopening the same directory puts its own items
/// back at once and an external worker's when its lease expires. Each lost run counts
/// as a failed attempt, and the old lease token stays rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_after_crash_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut new = new_job("ext", vec![json!(0), json!(1)]);
    new.options.backoff_ms = 1;
    new.options.max_backoff_ms = 1;
    let job = store.create_job("default", new, None).await.unwrap();
    let mut req = claim_req(&store, "ext", 1);
    req.owner = store.instance().to_owned(); // the built-in dispatcher's own lease
    let internal = store.claim(req).await.unwrap().items.remove(0);
    let mut req = claim_req(&store, "ext", 1);
    req.lease_ms = Some(400);
    let external = store.claim(req).await.unwrap().items.remove(0);
    // "Crash": nothing is finished, the handles just go away.
    store.close().await;

    let store = open_store(dir.path()).await;
    let a = store.item(&internal.item.id).unwrap();
    assert_eq!(
        a.status,
        ItemStatus::Queued,
        "own lease died with the process"
    );
    assert_eq!(
        a.attempts[0].error.as_ref().unwrap().code.as_deref(),
        Some("engine_restarted")
    );
    let b = store.item(&external.item.id).unwrap();
    assert_eq!(
        b.status,
        ItemStatus::Running,
        "the external worker may still be alive"
    );
    // The writer expires it on its own timer; a loaded machine may be late to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let b = loop {
        let b = store.item(&external.item.id).unwrap();
        if b.status != ItemStatus::Running || std::time::Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(b.status, ItemStatus::Queued, "expired lease puts it back");
    assert_eq!(
        b.attempts[0].error.as_ref().unwrap().code.as_deref(),
        Some("lease_expired")
    );
    let err = store
        .complete(
            &external.item.id,
            external.lease_token,
            Outcome::Succeeded(json!(null)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleLease { .. }));
    // Both run again and the job completes.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let claimed = store.claim(claim_req(&store, "ext", 10)).await.unwrap();
    assert_eq!(claimed.items.len(), 2);
    for c in claimed.items {
        assert_eq!(c.item.attempt, 2);
        assert_eq!(
            c.idempotency_key,
            format!("faena-{}", c.item.id),
            "stable across attempts"
        );
        store
            .complete(&c.item.id, c.lease_token, Outcome::Succeeded(json!(null)))
            .await
            .unwrap();
    }
    assert_eq!(store.job(&job.id).unwrap().status, JobStatus::Completed);
    store.close().await;
}

/// Retries wait an exponential backoff with jitter: measured in tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s = starts.clone();
    let exec = executor("flaky", move |task, _| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(tokio::time::Instant::now());
            if task.item.attempt < 4 {
                Outcome::Failed(ItemError::application("portal timeout"))
            } else {
                Outcome::Succeeded(json!({"attempt": task.item.attempt}))
            }
        }
    });
    let e = engine(Some(exec), 2).await;
    let mut new = new_job("flaky", vec![json!({})]);
    new.options = JobOptions {
        max_attempts: 5,
        backoff_ms: 1_000,
        max_backoff_ms: 3_000,
        ..Default::default()
    };
    let job = e.store.create_job("default", new, None).await.unwrap();
    let done = wait_finished(&e.store, &job.id, 60).await;
    assert_eq!(done.counts.succeeded, 1);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 4);
    let gaps: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // Retry n waits between half and all of min(1000 * 2^(n-1), 3000) ms.
    let bounds = [(500, 1_000), (1_000, 2_000), (1_500, 3_000)];
    for (gap, (lo, hi)) in gaps.iter().zip(bounds) {
        assert!((lo..=hi + 20).contains(gap), "gaps {gaps:?}");
    }
    let item = e.store.item(&format!("{}-0", job.id)).unwrap();
    assert_eq!(item.attempts.len(), 4);
    e.stop().await;
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_into_the_failure_policy() {
    let exec = executor("down", |_, _| async {
        Outcome::Failed(ItemError::application("down"))
    });
    let e = engine(Some(exec), 2).await;
    for (policy, expect) in [
        (FailurePolicy::Fail, ItemStatus::Failed),
        (FailurePolicy::Review, ItemStatus::NeedsReview),
    ] {
        let mut new = new_job("down", vec![json!({})]);
        new.options = JobOptions {
            max_attempts: 3,
            backoff_ms: 10,
            on_failure: policy,
            ..Default::default()
        };
        let job = e.store.create_job("default", new, None).await.unwrap();
        let done = wait_job(&e.store, &job.id, 60, |j| j.counts.open() == 0).await;
        // A failed job is complete; one whose item waits for review is not.
        assert_eq!(
            (done.status, done.awaiting_review),
            match policy {
                FailurePolicy::Fail => (JobStatus::Completed, false),
                FailurePolicy::Review => (JobStatus::Running, true),
            }
        );
        let item = e.store.item(&format!("{}-0", job.id)).unwrap();
        assert_eq!(item.status, expect);
        assert_eq!(item.attempts.len(), 3);
        assert_eq!(item.error.unwrap().message, "down");
    }
    // Each attempt is one run in the metrics, counted once.
    let m = e.store.metrics().render();
    assert!(
        m.contains("faena_run_seconds_count{plugin=\"down\"} 6"),
        "{m}"
    );
    e.stop().await;
}

/// Pause stops new claims (running items finish), resume continues, cancel stops the
/// running items and cancels the rest; a result reported after cancel is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_cancel() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let stopped = Arc::new(Mutex::new(0));
    let st = stopped.clone();
    /// Counts runs that ended without finishing: the engine stops a run by dropping it.
    struct Unfinished(Arc<Mutex<i32>>, bool);
    impl Drop for Unfinished {
        fn drop(&mut self) {
            if !self.1 {
                *self.0.lock().unwrap() += 1;
            }
        }
    }
    let exec = executor("gated", move |_, _ctx| {
        let (g, st) = (g.clone(), st.clone());
        async move {
            let mut guard = Unfinished(st, false);
            g.acquire().await.unwrap().forget();
            guard.1 = true;
            Outcome::Succeeded(json!(null))
        }
    });
    let e = engine(Some(exec), 2).await;
    let job = e
        .store
        .create_job(
            "default",
            new_job("gated", (0..10).map(|i| json!(i)).collect()),
            None,
        )
        .await
        .unwrap();
    wait_job(&e.store, &job.id, 10, |j| j.counts.running == 2).await;

    e.store
        .job_action(&job.id, faena::store::JobAction::Pause)
        .await
        .unwrap();
    gate.add_permits(2);
    let j = wait_job(&e.store, &job.id, 10, |j| j.counts.succeeded == 2).await;
    assert_eq!(j.status, JobStatus::Paused);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let j = e.store.job(&job.id).unwrap();
    assert_eq!(
        (j.counts.running, j.counts.queued),
        (0, 8),
        "nothing claimed while paused"
    );
    assert!(
        e.store
            .job_action(&job.id, faena::store::JobAction::Pause)
            .await
            .is_err(),
        "pause twice is a conflict"
    );

    e.store
        .job_action(&job.id, faena::store::JobAction::Resume)
        .await
        .unwrap();
    gate.add_permits(3);
    wait_job(&e.store, &job.id, 10, |j| {
        j.counts.succeeded == 5 && j.counts.running == 2
    })
    .await;

    let j = e
        .store
        .job_action(&job.id, faena::store::JobAction::Cancel)
        .await
        .unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(
        (j.counts.cancelled, j.counts.succeeded, j.counts.running),
        (5, 5, 0)
    );
    // The two running items were told to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while *stopped.lock().unwrap() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "running items were not stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(10);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let j = e.store.job(&job.id).unwrap();
    assert_eq!(
        (j.counts.cancelled, j.counts.succeeded),
        (5, 5),
        "nothing ran after cancel"
    );
    assert!(
        e.store
            .job_action(&job.id, faena::store::JobAction::Resume)
            .await
            .is_err()
    );
    e.stop().await;
}

/// Runs longer than their lease keep it: the dispatcher renews every running item's
/// lease together, so none expires and each run sees its lease moved on; the renewed
/// leases are in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_items_keep_short_leases_renewed_together() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let exec = executor("slow", move |_, ctx| {
        let g = g.clone();
        async move {
            g.acquire().await.unwrap().forget();
            Outcome::Succeeded(json!({"lease_lost": ctx.lease_lost()}))
        }
    });
    let e = engine(Some(exec), 3).await;
    let mut job = new_job("slow", (0..3).map(|i| json!(i)).collect());
    job.options.lease_ms = 300;
    let job = e.store.create_job("default", job, None).await.unwrap();
    wait_job(&e.store, &job.id, 10, |j| j.counts.running == 3).await;
    let first: Vec<i64> = (0..3)
        .map(|i| {
            let item = e.store.item(&format!("{}-{i}", job.id)).unwrap();
            item.lease.unwrap().expires_at
        })
        .collect();
    // Five lease lengths.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for (i, before) in first.iter().enumerate() {
        let item = e.store.item(&format!("{}-{i}", job.id)).unwrap();
        assert_eq!(item.status, ItemStatus::Running, "item {i}");
        assert_eq!(item.attempts.len(), 1, "item {i} never expired");
        // Renewed, and (above) never expired. Not compared with the clock: a renewal
        // is read back once the flush before it is done, and on a loaded disk (the
        // other suites running beside this one) a flush has taken seconds.
        let lease = item.lease.unwrap();
        assert!(
            lease.expires_at > *before,
            "item {i}: lease {} renewed past {before}",
            lease.expires_at
        );
    }
    gate.add_permits(3);
    let j = wait_job(&e.store, &job.id, 10, |j| j.counts.succeeded == 3).await;
    assert_eq!(j.status, JobStatus::Completed);
    for i in 0..3 {
        let item = e.store.item(&format!("{}-{i}", job.id)).unwrap();
        assert_eq!(item.result.unwrap()["lease_lost"], false, "item {i}");
    }
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_moves_review_items_back_and_the_job_waits_for_them() {
    let e = engine(None, 1).await;
    let mut new = new_job("ext", vec![json!({"supplier": "bad"})]);
    new.options.on_failure = FailurePolicy::Review;
    let job = e.store.create_job("default", new, None).await.unwrap();
    let c = e
        .store
        .claim(claim_req(&e.store, "ext", 1))
        .await
        .unwrap()
        .items
        .remove(0);
    let id = c.item.id.clone();
    e.store
        .complete(
            &id,
            c.lease_token,
            Outcome::Failed(ItemError::business("unknown supplier")),
        )
        .await
        .unwrap();
    let waiting = e.store.job(&job.id).unwrap();
    assert_eq!(
        (waiting.status, waiting.awaiting_review),
        (JobStatus::Running, true),
        "a job whose items wait for a person is not complete"
    );
    let item = e.store.item(&id).unwrap();
    assert_eq!(item.status, ItemStatus::NeedsReview);

    // Illegal moves change nothing.
    for to in [
        ItemStatus::Succeeded,
        ItemStatus::Running,
        ItemStatus::Pending,
    ] {
        let err = e.store.transition(&id, to, None, None).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{to}: {err}");
    }
    assert_eq!(e.store.item(&id).unwrap(), item);

    let moved = e
        .store
        .transition(
            &id,
            ItemStatus::Queued,
            Some("supplier fixed".into()),
            Some(json!({"supplier": "good"})),
        )
        .await
        .unwrap();
    assert_eq!(moved.status, ItemStatus::Queued);
    assert_eq!(moved.input, json!({"supplier": "good"}));
    let reopened = e.store.job(&job.id).unwrap();
    assert_eq!(
        (reopened.status, reopened.awaiting_review),
        (JobStatus::Running, false),
        "the job works again"
    );
    let c = e
        .store
        .claim(claim_req(&e.store, "ext", 1))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(c.item.attempt, 2);
    e.store
        .complete(
            &c.item.id,
            c.lease_token,
            Outcome::Succeeded(json!({"request_id": 7})),
        )
        .await
        .unwrap();
    let j = e.store.job(&job.id).unwrap();
    assert_eq!(
        (j.status, j.counts.succeeded, j.counts.needs_review),
        (JobStatus::Completed, 1, 0)
    );
    e.stop().await;
}

/// 100,000 items in one call: one atomic write, two events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_create_of_100k_items() {
    let e = engine(None, 1).await;
    let n = 100_000;
    let new = new_job(
        "bulk",
        (0..n)
            .map(|i| json!({"phone": format!("+51{i:09}")}))
            .collect(),
    );
    let started = std::time::Instant::now();
    let job = e.store.create_job("default", new, None).await.unwrap();
    println!("created {n} items in {:?}", started.elapsed());
    assert_eq!(job.counts.queued, n as u64);
    assert_eq!(e.store.job(&job.id).unwrap().counts.total(), n as u64);
    assert_eq!(
        e.store.item(&format!("{}-99999", job.id)).unwrap().input["phone"],
        "+51000099999"
    );
    assert_eq!(all_events(&e.store).len(), 2);
    let page = e
        .store
        .items(&job.id, Some(ItemStatus::Queued), None, Some(49_999), 10)
        .unwrap();
    assert_eq!(page.items[0].index, 50_000);
    // Survives a restart with its queue.
    let dir = e.stop().await;
    let store = open_store(dir.path()).await;
    let claimed = store.claim(claim_req(&store, "bulk", 100)).await.unwrap();
    assert_eq!(claimed.items.len(), 100);
    assert_eq!(claimed.items[0].item.index, 0);
    store.close().await;
}

/// A refused command leaves nothing behind, even when it shares a commit with others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_write_nothing() {
    let e = engine(None, 1).await;
    let good = new_job("ok", vec![json!(1)]);
    let mut bad = new_job("ok", vec![json!(1)]);
    bad.options.max_attempts = 0;
    let mut bad_plugin = new_job("Bad Plugin!", vec![json!(1)]);
    bad_plugin.options = JobOptions::default();
    let (a, b, c) = tokio::join!(
        e.store.create_job("default", good, None),
        e.store.create_job("default", bad, None),
        e.store.create_job("default", bad_plugin, None),
    );
    a.unwrap();
    assert!(matches!(b.unwrap_err(), StoreError::Invalid(m) if m.contains("max_attempts")));
    assert!(matches!(c.unwrap_err(), StoreError::Invalid(m) if m.contains("plugin")));
    let jobs = e.store.jobs(&Default::default(), None, 10).unwrap();
    assert_eq!(jobs.items.len(), 1);
    assert_eq!(all_events(&e.store).len(), 2);
    e.stop().await;
}

/// sled lets go of its lock from a background thread after the store is closed: a
/// store reopened at once waits for it instead of failing, while a directory held by
/// a store that is still open is refused with a message saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_reopens_at_once_and_an_open_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = faena::clock::Clock::new();
    for jobs in 0..10 {
        let store = faena::store::Store::open(dir.path(), clock).await.unwrap();
        assert_eq!(
            store
                .jobs(&Default::default(), None, 100)
                .unwrap()
                .items
                .len(),
            jobs
        );
        store
            .create_job("default", new_job("ok", vec![json!(1)]), None)
            .await
            .unwrap();
        store.close().await;
    }
    let held = faena::store::Store::open(dir.path(), clock).await.unwrap();
    let Err(e) = faena::store::Store::open(dir.path(), clock).await else {
        panic!("a second store opened on a directory in use");
    };
    let why = e.to_string();
    assert!(why.contains(&dir.path().display().to_string()), "{why}");
    assert!(why.contains("another faena"), "{why}");
    held.close().await;
}

/// Status index entries of a store that is not open: the entry's code byte, and the
/// item index at the key's end.
fn index_entries(dir: &std::path::Path) -> Vec<(u8, u64)> {
    let db = raw_db(dir);
    let tree = db.open_tree("faena").unwrap();
    tree.scan_prefix(b"s")
        .map(|kv| {
            let k = kv.unwrap().0;
            let index = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
            (k[1], index)
        })
        .collect()
}

/// Succeeded items have no status index entry, and queued and running items share one:
/// listings by each status still find exactly their items, in a job and across jobs,
/// and a restart tells the running items (leases kept) from the queued ones (a retry's
/// `not_before` kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_status_is_listed_and_recovered_through_the_smaller_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let mut new = new_job("lst", (0..6).map(|n| json!(n)).collect());
    new.options.max_attempts = 2;
    new.options.backoff_ms = 600_000;
    new.options.max_backoff_ms = 600_000;
    let job = store.create_job("default", new, None).await.unwrap();
    let mut req = claim_req(&store, "lst", 4);
    req.lease_ms = Some(600_000);
    let claimed = store.claim(req).await.unwrap().items;
    let token = |i: u64| {
        let c = claimed.iter().find(|c| c.item.index == i).unwrap();
        c.lease_token
    };
    let id = |i: u64| format!("{}-{i}", job.id);
    store
        .complete(&id(0), token(0), Outcome::Succeeded(json!("ok")))
        .await
        .unwrap();
    store
        .complete(&id(1), token(1), Outcome::Failed(ItemError::business("no")))
        .await
        .unwrap();
    store
        .complete(
            &id(3),
            token(3),
            Outcome::Failed(ItemError::application("down")),
        )
        .await
        .unwrap();
    // Item 2 runs, 3 waits for its retry, 4 and 5 were never claimed.
    let listed = |store: &faena::store::Store, status| -> (Vec<u64>, Vec<u64>) {
        let in_job = store.items(&job.id, Some(status), None, None, 100).unwrap();
        let across = store.items_by_status(None, status, None, 100).unwrap();
        assert_eq!(in_job.next, None);
        assert_eq!(across.next, None);
        (
            in_job.items.iter().map(|i| i.index).collect(),
            across.items.iter().map(|i| i.index).collect(),
        )
    };
    let expect = [
        (ItemStatus::Succeeded, vec![0]),
        (ItemStatus::Failed, vec![1]),
        (ItemStatus::Running, vec![2]),
        (ItemStatus::Queued, vec![3, 4, 5]),
        (ItemStatus::NeedsReview, vec![]),
    ];
    for (status, indexes) in &expect {
        assert_eq!(listed(&store, *status), (indexes.clone(), indexes.clone()));
    }
    store.close().await;

    let open = ItemStatus::Queued.code();
    assert_eq!(
        index_entries(dir.path()),
        [
            (open, 2),
            (open, 3),
            (open, 4),
            (open, 5),
            (ItemStatus::Failed.code(), 1)
        ],
        "no entry for the succeeded item, one open entry for each queued or running one"
    );

    let store = open_store(dir.path()).await;
    for (status, indexes) in &expect {
        assert_eq!(listed(&store, *status), (indexes.clone(), indexes.clone()));
    }
    // Only 4 and 5 are claimable: 2 still holds its lease, 3 waits for its retry.
    let again = store.claim(claim_req(&store, "lst", 10)).await.unwrap();
    let indexes: Vec<u64> = again.items.iter().map(|c| c.item.index).collect();
    assert_eq!(indexes, [4, 5]);
    let retry_at = store.item(&id(3)).unwrap().not_before.unwrap();
    assert_eq!(again.next_due, Some(retry_at));
    store
        .complete(&id(2), token(2), Outcome::Succeeded(json!("late")))
        .await
        .unwrap();
    assert_eq!(store.job(&job.id).unwrap().counts.running, 2);
    store.close().await;
}

/// A listing by a rare status in a large job stops after `SCAN_LIMIT` items looked at
/// and answers a cursor to go on from, instead of reading the whole job at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_a_rare_status_is_cut_short_with_a_cursor() {
    let e = engine(None, 1).await;
    let n = faena::store::SCAN_LIMIT as u64 + 5;
    let job = e
        .store
        .create_job("default", new_job("big", vec![json!(0); n as usize]), None)
        .await
        .unwrap();
    let mut req = claim_req(&e.store, "big", 1);
    req.item = Some(ItemKey {
        job: job.id.clone(),
        index: n - 1,
    });
    let last = e.store.claim(req).await.unwrap().items.remove(0);
    e.store
        .complete(
            &last.item.id,
            last.lease_token,
            Outcome::Succeeded(json!(1)),
        )
        .await
        .unwrap();
    let first = e
        .store
        .items(&job.id, Some(ItemStatus::Succeeded), None, None, 10)
        .unwrap();
    assert!(first.items.is_empty());
    let cursor = first.next.expect("a cursor to go on from");
    assert_eq!(cursor, (faena::store::SCAN_LIMIT - 1).to_string());
    let second = e
        .store
        .items(
            &job.id,
            Some(ItemStatus::Succeeded),
            None,
            Some(cursor.parse().unwrap()),
            10,
        )
        .unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].id, last.item.id);
    assert_eq!(second.next, None);
    let across = e
        .store
        .items_by_status(None, ItemStatus::Succeeded, None, 10)
        .unwrap();
    assert!(across.items.is_empty());
    let across = e
        .store
        .items_by_status(None, ItemStatus::Succeeded, across.next.as_deref(), 10)
        .unwrap();
    assert_eq!(across.items.len(), 1);
    e.stop().await;
}

/// A page of jobs has a cursor exactly when another job of the filter follows: the
/// last page, even a full one, has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_page_of_jobs_has_no_cursor_even_when_full() {
    let e = engine(None, 1).await;
    let mut mine = Vec::new();
    for i in 0..5 {
        let tenant = if i % 2 == 0 { "acme" } else { "other" };
        let job = e
            .store
            .create_job(tenant, new_job("p", vec![json!(i)]), None)
            .await
            .unwrap();
        if tenant == "acme" {
            mine.push(job.id);
        }
    }
    mine.reverse(); // newest first
    let acme = faena::store::JobFilter {
        tenant: Some("acme".into()),
        ..Default::default()
    };
    let all = e.store.jobs(&acme, None, 3).unwrap();
    let ids: Vec<_> = all.items.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids, mine);
    assert_eq!(all.next, None, "three of three: the last page");
    let first = e.store.jobs(&acme, None, 2).unwrap();
    assert_eq!(first.items.len(), 2);
    let cursor = first.next.expect("a third job follows");
    let second = e.store.jobs(&acme, Some(&cursor), 2).unwrap();
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.items[0].id, mine[2]);
    assert_eq!(second.next, None);
    let everyone = e.store.jobs(&Default::default(), None, 5).unwrap();
    assert_eq!((everyone.items.len(), everyone.next), (5, None));
}

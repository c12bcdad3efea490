//! A data directory written by the last release whose records were JSON (store format
//! 1; `fixtures/make-store-format-1.sh` shows how it was made) opens on this engine:
//! its records are rewritten as MessagePack at start, everything reads back as it was
//! written, an idempotency key and a unique reference still hold, and its queued work
//! runs to the end.

mod common;

use std::path::{Path, PathBuf};

use faena::clock::Clock;
use faena::model::{ErrorKind, ItemStatus, JobStatus};
use faena::store::{ClaimRequest, Idempotency, Index, JobFilter, Outcome, Store, StoreOptions};
use serde_json::json;

fn unpack(into: &Path) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-format-1.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", fixture.display());
    into.join("data")
}

/// The store's own records (jobs `j`, items `i`, logs `l`), each JSON or not.
fn records_are_json(store: &Path) -> Vec<bool> {
    let db = common::raw_db(store);
    let tree = db.open_tree("faena").unwrap();
    let mut out = Vec::new();
    for prefix in [b"j", b"i", b"l"] {
        for kv in tree.scan_prefix(prefix) {
            out.push(kv.unwrap().1.first() == Some(&b'{'));
        }
    }
    out
}

/// The keys under `prefix` of a closed store: `s` for status index entries (`s`, the
/// entry's code, the item's job and index), `i` for item records.
fn keys_under(store: &Path, prefix: &[u8]) -> Vec<Vec<u8>> {
    let db = common::raw_db(store);
    let tree = db.open_tree("faena").unwrap();
    tree.scan_prefix(prefix)
        .map(|kv| kv.unwrap().0.to_vec())
        .collect()
}

/// Every item has the status index entry its status asks for and no other: none when
/// succeeded, the one open entry when queued or running. `entries` and `items` were read
/// from the closed store (index entries, item keys); `store` is it opened again.
fn assert_index_matches_records(entries: &[Vec<u8>], items: &[Vec<u8>], store: &Store) {
    let mut expected = Vec::new();
    for k in items {
        let job = std::str::from_utf8(&k[1..27]).unwrap();
        let index = u64::from_be_bytes(k[27..].try_into().unwrap());
        let item = store.item(&format!("{job}-{index}")).unwrap();
        if let Some(listed) = Index::of(item.status) {
            let mut entry = vec![b's', listed.code()];
            entry.extend_from_slice(&k[1..]);
            expected.push(entry);
        }
    }
    expected.sort();
    assert_eq!(entries, expected);
}

async fn open(data: &Path) -> Store {
    let key = faena::secrets::SecretKey::from_file(&data.join("secret.key")).unwrap();
    let options = StoreOptions {
        key: Some(key),
        // The fixture's answers were recorded long before this test runs.
        idempotency_keep: std::time::Duration::from_secs(100 * 365 * 86_400),
        ..Default::default()
    };
    Store::open_with(&data.join("store"), Clock::new(), options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_json_records_is_read_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let data = unpack(dir.path());
    let before = records_are_json(&data.join("store"));
    assert!(before.len() >= 10, "the fixture holds jobs, items and logs");
    assert!(before.iter().all(|json| *json), "written as JSON");
    // Format 1 had an entry per status, succeeded items' too.
    let succeeded = ItemStatus::Succeeded.code();
    assert!(
        keys_under(&data.join("store"), b"s")
            .iter()
            .any(|k| k[1] == succeeded)
    );

    let store = open(&data).await;
    let jobs = store.jobs(&JobFilter::default(), None, 10).unwrap().items;
    assert_eq!(jobs.len(), 3, "{jobs:#?}");
    let orders = jobs
        .iter()
        .find(|j| j.name.as_deref() == Some("orders"))
        .unwrap();
    assert_eq!(orders.status, JobStatus::Running);
    assert_eq!(
        (
            orders.counts.succeeded,
            orders.counts.failed,
            orders.counts.queued
        ),
        (1, 1, 1)
    );
    assert!(jobs.iter().any(|j| j.status == JobStatus::Paused));
    assert!(jobs.iter().any(|j| j.status == JobStatus::Pending));

    let items = store.items(&orders.id, None, None, None, 10).unwrap().items;
    let placed = &items[0];
    assert_eq!(placed.status, ItemStatus::Succeeded);
    assert_eq!(placed.reference.as_deref(), Some("OC-1"));
    assert_eq!(placed.input, json!({"n": 1, "price": 12.5}));
    assert_eq!(placed.result, Some(json!({"order": "PO-77"})));
    assert_eq!(placed.attempts.len(), 2);
    let first = &placed.attempts[0];
    assert_eq!(first.owner, "worker:robot-1");
    assert_eq!(first.outcome, Some(ItemStatus::Queued));
    let err = first.error.as_ref().unwrap();
    assert_eq!(
        (err.kind, err.message.as_str(), err.code.as_deref()),
        (ErrorKind::Application, "portal down", Some("http_503"))
    );
    let steps: Vec<_> = placed.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["login", "submitted"]);
    assert_eq!(
        placed.steps[1].state.as_deref(),
        Some(r#"{"order":"PO-77"}"#)
    );
    let logs = store.item_logs(&placed.id).unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0]["message"], "logged in as compras");
    assert_eq!(items[1].status, ItemStatus::Failed);
    assert_eq!(items[1].error.as_ref().unwrap().kind, ErrorKind::Business);
    // Events stay the JSON the feed sent.
    let (events, _) = store.events(0, &Default::default(), 1000).unwrap();
    let stored_one_by_one = events.len() as u64;
    assert!(
        events.iter().any(
            |e| e.item_id.as_deref() == Some(placed.id.as_str()) && e.data["to"] == "succeeded"
        ),
        "the item's history is there"
    );

    // The request answered under its idempotency key is remembered: the key with
    // another request is refused...
    let other = Idempotency::new("default", "order-batch-1", "another request".into());
    let refused = store.replayed(&other).unwrap_err();
    assert!(
        refused.to_string().contains("different request"),
        "{refused}"
    );
    // ...and a reference taken is still taken.
    let mut again = faena::model::NewJob {
        plugin: "noop".into(),
        operation: "run".into(),
        name: None,
        options: Default::default(),
        input: None,
        start: true,
        items: vec![faena::model::NewItem {
            input: json!({"n": 1}),
            reference: Some("OC-1".into()),
        }],
    };
    again.options.unique_references = Some(faena::model::ReferencePolicy::Reject);
    let taken = store.create_job("default", again, None).await.unwrap_err();
    assert!(taken.to_string().contains("OC-1"), "{taken}");

    // The queued item runs to the end; the job completes.
    let claimed = store
        .claim(ClaimRequest {
            owner: "worker:robot-2".into(),
            tenant: None,
            plugins: vec!["noop".into()],
            max: 10,
            lease_ms: None,
            labels: Vec::new(),
            item: None,
        })
        .await
        .unwrap();
    assert_eq!(claimed.items.len(), 1, "only the orders job runs");
    let c = &claimed.items[0];
    assert_eq!(c.item.reference.as_deref(), Some("OC-3"));
    store
        .complete(
            &c.item.id,
            c.lease_token,
            Outcome::Succeeded(json!({"order": "PO-78"})),
        )
        .await
        .unwrap();
    assert_eq!(store.job(&orders.id).unwrap().status, JobStatus::Completed);
    store.close().await;

    // Every record is MessagePack now, and reads the same after another start.
    let after = records_are_json(&data.join("store"));
    assert_eq!(after.len(), before.len(), "the same records");
    assert!(after.iter().all(|json| !*json), "rewritten: {after:?}");
    let (entries, keys) = (
        keys_under(&data.join("store"), b"s"),
        keys_under(&data.join("store"), b"i"),
    );
    let store = open(&data).await;
    assert_index_matches_records(&entries, &keys, &store);
    let again = store.items(&orders.id, None, None, None, 10).unwrap().items;
    assert_eq!(again[0], items[0]);
    assert_eq!(again[2].result, Some(json!({"order": "PO-78"})));
    // The events stored one by one and those written since, in blocks, read as one log
    // with no seq missing, from the start and from inside it; the next continues it.
    let (events, _) = store.events(0, &Default::default(), 1000).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() as u64 > stored_one_by_one, "{seqs:?}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == faena::model::kind::JOB_COMPLETED
                && e.job_id.as_deref() == Some(orders.id.as_str()))
    );
    let (tail, _) = store
        .events(stored_one_by_one - 1, &Default::default(), 1000)
        .unwrap();
    assert_eq!(tail[..], events[stored_one_by_one as usize - 1..]);
    assert_eq!(store.last_seq().unwrap(), seqs.len() as u64);
    store.close().await;
}

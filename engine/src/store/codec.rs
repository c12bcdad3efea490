//! How the store's own records are written: MessagePack (rmp-serde), fields by name so
//! that a field added later, or one skipped when empty, still reads back.
//!
//! Format 1 (engines before MessagePack) wrote every record as JSON. A JSON record
//! always starts with `{`, which as the first byte of MessagePack is a positive integer,
//! never a record: [`decode`] tells the two apart by that byte, so a data directory is
//! readable while [`migrate`] rewrites it and after a migration a crash cut short.
//!
//! Events stay JSON: the feed sends each one as the text it was stored as. Format 3
//! stores them in compressed blocks (`eventlog`); the single events formats 1 and 2
//! wrote are read as they are, so going to 3 rewrites nothing but the marker, and an
//! engine of format 2 refuses the blocks it could not read.
//!
//! Format 4 gives succeeded items no status index entry, and queued and running items
//! one shared entry (`keys::Index`): going to 4 removes the succeeded entries and moves
//! the running ones. Its item records also leave out what their key says and use
//! short names (`item_record`); older item records read as they are.

use serde::{Serialize, de::DeserializeOwned};

use super::error::{Result, StoreError};
use super::keys::{self, Index};
use crate::model::ItemStatus;

/// The store's format: 2 is MessagePack records, 3 events in blocks, 4 the status
/// index without succeeded items.
pub const FORMAT: u32 = 4;

/// Where the format is recorded, in the `faena` tree (no record prefix is `v`).
pub const FORMAT_KEY: &[u8] = b"v";

/// Prefixes of the records [`migrate`] rewrites. Events (`e`) stay JSON; status index
/// entries, references and kept portal state were never JSON.
const RECORDS: [u8; 6] = [
    keys::JOB,
    keys::ITEM,
    keys::LOG,
    keys::STAGED,
    keys::IDEMPOTENCY,
    keys::SCHEDULE_RUN,
];

/// Records rewritten per batch by [`migrate`].
const MIGRATE_CHUNK: u64 = 4096;

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("a record serializes to MessagePack")
}

pub fn decode<T: DeserializeOwned>(raw: &[u8]) -> Result<T> {
    if is_json(raw) {
        return Ok(serde_json::from_slice(raw)?);
    }
    rmp_serde::from_slice(raw).map_err(|e| StoreError::Storage(format!("corrupt record: {e}")))
}

fn is_json(raw: &[u8]) -> bool {
    raw.first() == Some(&b'{')
}

/// The format the tree is in: absent means format 1, or a new, empty tree.
pub fn stored_format(tree: &sled::Tree) -> Result<u32> {
    Ok(match tree.get(FORMAT_KEY)? {
        Some(v) => u32::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| StoreError::Storage("corrupt store format marker".into()))?,
        ),
        None => 1,
    })
}

/// What [`migrate`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// JSON records rewritten as MessagePack.
    pub rewritten: u64,
    /// Status index entries removed (succeeded) or moved (running).
    pub reindexed: u64,
}

/// Set in the marker, beside the format a migration started from, while it runs: an
/// older engine reads a format newer than its own and refuses the half-migrated store,
/// and the next start of this one finishes the migration.
const MIGRATING: u32 = 1 << 31;

/// Bring the tree to [`FORMAT`]: every JSON record rewritten as MessagePack and the
/// status index brought to format 4, a chunk per batch, then the format recorded. Each
/// step can be cut short by a crash and run again. A store of a newer format than this
/// engine knows is refused rather than misread.
pub fn migrate(tree: &sled::Tree) -> Result<Migrated> {
    let mut format = stored_format(tree)?;
    if format & MIGRATING != 0 && format & !MIGRATING < FORMAT {
        format &= !MIGRATING;
    } else if format < FORMAT {
        tree.insert(FORMAT_KEY, &(format | MIGRATING).to_be_bytes())?;
        tree.flush()?;
    }
    if format > FORMAT {
        return Err(StoreError::Storage(format!(
            "the store is in format {format}, newer than this engine's {FORMAT}: \
             run the faena release that wrote it"
        )));
    }
    if format == FORMAT {
        return Ok(Migrated::default());
    }
    // Format 2's records are already MessagePack; only format 1's are rewritten.
    let rewritten = if format < 2 { rewrite_json(tree)? } else { 0 };
    let reindexed = if format < 4 { reindex(tree)? } else { 0 };
    tree.insert(FORMAT_KEY, &FORMAT.to_be_bytes())?;
    tree.flush()?;
    Ok(Migrated {
        rewritten,
        reindexed,
    })
}

/// The status index of formats 1 to 3, one entry per status, brought to format 4's:
/// succeeded entries removed, running ones moved to the open entry they share with
/// queued ones.
fn reindex(tree: &sled::Tree) -> Result<u64> {
    let mut changed: u64 = 0;
    for status in [ItemStatus::Running, ItemStatus::Succeeded] {
        let mut batch = sled::Batch::default();
        let mut pending: u64 = 0;
        let listed = Index::of(status);
        for kv in tree.scan_prefix([keys::STATUS, status.code()]) {
            let (k, _) = kv?;
            if let Some(listed) = listed {
                let mut moved = k.to_vec();
                moved[1] = listed.code();
                batch.insert(moved, Vec::new());
            }
            batch.remove(k);
            pending += 1;
            if pending == MIGRATE_CHUNK {
                tree.apply_batch(std::mem::take(&mut batch))?;
                changed += pending;
                pending = 0;
            }
        }
        tree.apply_batch(batch)?;
        changed += pending;
    }
    Ok(changed)
}

/// Every JSON record rewritten as MessagePack, a chunk per batch.
fn rewrite_json(tree: &sled::Tree) -> Result<u64> {
    let mut rewritten: u64 = 0;
    for prefix in RECORDS {
        let mut batch = sled::Batch::default();
        let mut pending: u64 = 0;
        for kv in tree.scan_prefix([prefix]) {
            let (k, v) = kv?;
            if !is_json(&v) {
                continue;
            }
            let value: serde_json::Value = serde_json::from_slice(&v)?;
            batch.insert(k, encode(&value));
            pending += 1;
            if pending == MIGRATE_CHUNK {
                tree.apply_batch(std::mem::take(&mut batch))?;
                rewritten += pending;
                pending = 0;
            }
        }
        tree.apply_batch(batch)?;
        rewritten += pending;
    }
    Ok(rewritten)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::Item;

    /// An item as the API shows it, for the record tests here and in `item_record`.
    pub(in crate::store) fn item() -> Item {
        Item {
            id: "01JX0000000000000000000000-3".into(),
            job_id: "01JX0000000000000000000000".into(),
            tenant: "acme".into(),
            index: 3,
            plugin: "gsp".into(),
            reference: Some("OC-3".into()),
            input: serde_json::json!({
                "n": -3, "big": u64::MAX, "pi": 3.25, "list": [1, "two", null, {"x": true}]
            }),
            status: ItemStatus::Queued,
            attempt: 1,
            max_attempts: 3,
            not_before: None,
            lease: None,
            attempts: vec![],
            steps: vec![],
            error: None,
            result: None,
            resource: None,
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn records_round_trip_and_json_still_reads() {
        let it = item();
        let packed = encode(&it);
        assert!(!is_json(&packed));
        assert!(packed.len() < serde_json::to_vec(&it).unwrap().len());
        assert_eq!(decode::<Item>(&packed).unwrap(), it);
        let json = serde_json::to_vec(&it).unwrap();
        assert_eq!(decode::<Item>(&json).unwrap(), it);
        assert!(matches!(
            decode::<Item>(b"\xc1garbage"),
            Err(StoreError::Storage(m)) if m.contains("corrupt record")
        ));
    }

    #[test]
    fn migrate_rewrites_json_records_once_and_leaves_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("faena").unwrap();
        let it = item();
        let key = keys::item_key(&it.job_id, it.index);
        tree.insert(&key, serde_json::to_vec(&it).unwrap()).unwrap();
        tree.insert(keys::event_key(1), &b"{\"seq\":1}"[..])
            .unwrap();
        assert_eq!(stored_format(&tree).unwrap(), 1);
        assert_eq!(
            migrate(&tree).unwrap(),
            Migrated {
                rewritten: 1,
                reindexed: 0
            }
        );
        assert_eq!(stored_format(&tree).unwrap(), FORMAT);
        let raw = tree.get(&key).unwrap().unwrap();
        assert!(!is_json(&raw));
        assert_eq!(decode::<Item>(&raw).unwrap(), it);
        assert_eq!(
            tree.get(keys::event_key(1)).unwrap().unwrap().as_ref(),
            b"{\"seq\":1}"
        );
        assert_eq!(migrate(&tree).unwrap(), Migrated::default());
        tree.insert(FORMAT_KEY, &(FORMAT + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(migrate(&tree), Err(StoreError::Storage(m)) if m.contains("newer")));
    }

    /// A status index entry of format 3 and before: an entry per status.
    fn entry_of_status(status: ItemStatus, job: &str, index: u64) -> Vec<u8> {
        let mut k = vec![keys::STATUS, status.code()];
        k.extend_from_slice(job.as_bytes());
        k.extend_from_slice(&index.to_be_bytes());
        k
    }

    #[test]
    fn migrate_drops_succeeded_entries_and_moves_running_ones_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("faena").unwrap();
        let job = "01JX0000000000000000000000";
        let entry = |status: ItemStatus, index: u64| entry_of_status(status, job, index);
        // Format 3: one entry per status; a queued item keeps its `not_before`.
        let not_before = 1_700_000_000_000i64.to_be_bytes();
        tree.insert(entry(ItemStatus::Queued, 0), &not_before[..])
            .unwrap();
        tree.insert(entry(ItemStatus::Running, 1), &b""[..])
            .unwrap();
        // More succeeded entries than one batch holds.
        for index in 2..(2 + MIGRATE_CHUNK + 10) {
            tree.insert(entry(ItemStatus::Succeeded, index), &b""[..])
                .unwrap();
        }
        tree.insert(entry(ItemStatus::Failed, 9_999), &b""[..])
            .unwrap();
        tree.insert(FORMAT_KEY, &3u32.to_be_bytes()).unwrap();
        assert_eq!(
            migrate(&tree).unwrap(),
            Migrated {
                rewritten: 0,
                reindexed: 1 + MIGRATE_CHUNK + 10
            }
        );
        let left: Vec<(Vec<u8>, Vec<u8>)> = tree
            .scan_prefix([keys::STATUS])
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!(
            left,
            vec![
                (keys::index_key(Index::Open, job, 0), not_before.to_vec()),
                (keys::index_key(Index::Open, job, 1), Vec::new()),
                (keys::index_key(Index::Failed, job, 9_999), Vec::new()),
            ]
        );
        assert_eq!(stored_format(&tree).unwrap(), FORMAT);
    }

    #[test]
    fn a_migration_cut_short_is_refused_by_older_engines_and_finished_by_this_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("faena").unwrap();
        let job = "01JX0000000000000000000000";
        let running = entry_of_status(ItemStatus::Running, job, 5);
        tree.insert(&running, &b""[..]).unwrap();
        // What a crash in the middle of going from format 3 leaves.
        tree.insert(FORMAT_KEY, &(3 | MIGRATING).to_be_bytes())
            .unwrap();
        assert!(
            stored_format(&tree).unwrap() > 3,
            "an engine of format 3 reads a newer format and refuses the store"
        );
        assert_eq!(migrate(&tree).unwrap().reindexed, 1);
        assert_eq!(stored_format(&tree).unwrap(), FORMAT);
        assert!(tree.get(&running).unwrap().is_none());
        assert!(
            tree.get(keys::index_key(Index::Open, job, 5))
                .unwrap()
                .is_some()
        );
    }
}

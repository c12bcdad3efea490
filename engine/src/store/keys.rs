//! Key layout of the one sled tree. Everything lives in a single tree so that a group
//! of transitions is one `apply_batch`: atomic across records, indexes and events.
//!
//! | prefix | key                                | value                        |
//! |--------|------------------------------------|------------------------------|
//! | `j`    | job id (26-byte ULID)              | job (MessagePack, `codec`)   |
//! | `i`    | job id, item index (u64 BE)        | item (MessagePack)           |
//! | `s`    | index byte (`Index`), job id, item index | `not_before` (i64 BE) or "" |
//! | `e`    | seq (u64 BE) of the block's first  | events, a block (`eventlog`) |
//! | `l`    | job id, item index, seq (u64 BE)   | log line (MessagePack)       |
//! | `c`    | job id                             | a job being created in chunks (`staging`) |
//! | `k`    | tenant, 0, client key              | an answered request (`idempotency`) |
//! | `r`    | tenant, plugin, operation, reference, 0, item id | "" (`references`) |
//! | `t`    | schedule id                        | its latest run: instant and job (`schedules`) |
//! | `p`    | job id, item index                 | kept portal state, sealed    |
//! | `v`    | (the key is `v`)                   | the store's format (u32 BE, `codec::FORMAT`) |
//!
//! Events are JSON, the text the feed sends, in compressed blocks; every other record
//! is MessagePack.

use crate::model::ItemStatus;

pub const JOB: u8 = b'j';
pub const ITEM: u8 = b'i';
pub const STATUS: u8 = b's';
pub const EVENT: u8 = b'e';
pub const LOG: u8 = b'l';
pub const STAGED: u8 = b'c';
pub const IDEMPOTENCY: u8 = b'k';
pub const REFERENCE: u8 = b'r';
pub const SCHEDULE_RUN: u8 = b't';
/// An item's kept portal state (sealed), while the item lives.
pub const KEPT: u8 = b'p';

pub const JOB_ID_LEN: usize = 26;

/// A new job id. Monotonic, even within one millisecond, so listing jobs by key is
/// listing them by creation.
pub fn new_job_id() -> String {
    static IDS: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut ids = IDS.lock().expect("id generator lock");
    let generator = ids.get_or_insert_with(ulid::Generator::new);
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// A parsed item id: `{job_id}-{index}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub job: String,
    pub index: u64,
}

impl ItemKey {
    pub fn parse(id: &str) -> Option<ItemKey> {
        let (job, index) = id.split_once('-')?;
        if !valid_job_id(job) {
            return None;
        }
        Some(ItemKey {
            job: job.to_owned(),
            index: index.parse().ok()?,
        })
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.job, self.index)
    }

    pub fn item_key(&self) -> Vec<u8> {
        item_key(&self.job, self.index)
    }

    pub fn kept_key(&self) -> Vec<u8> {
        kept_key(&self.job, self.index)
    }

    pub fn index_key(&self, index: Index) -> Vec<u8> {
        index_key(index, &self.job, self.index)
    }
}

/// The status index (`s`): which entry an item has, by its status. Succeeded items,
/// most of any store, have none: they are found by their records (`i`), and counted
/// by their job. Queued and running items share one entry, so a claim writes only the
/// item. An item's status is its record's; an index entry says where to look.
///
/// The bytes are the statuses' codes of format 3, which had an entry per status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    Pending,
    /// Queued or running: the value is a queued item's `not_before`, as it was when it
    /// was last queued (a claim leaves it).
    Open,
    Failed,
    NeedsReview,
    Cancelled,
}

impl Index {
    /// The entry of an item in `status`, if it has one.
    pub fn of(status: ItemStatus) -> Option<Index> {
        match status {
            ItemStatus::Pending => Some(Index::Pending),
            ItemStatus::Queued | ItemStatus::Running => Some(Index::Open),
            ItemStatus::Succeeded => None,
            ItemStatus::Failed => Some(Index::Failed),
            ItemStatus::NeedsReview => Some(Index::NeedsReview),
            ItemStatus::Cancelled => Some(Index::Cancelled),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Index::Pending => ItemStatus::Pending.code(),
            Index::Open => ItemStatus::Queued.code(),
            Index::Failed => ItemStatus::Failed.code(),
            Index::NeedsReview => ItemStatus::NeedsReview.code(),
            Index::Cancelled => ItemStatus::Cancelled.code(),
        }
    }
}

pub fn valid_job_id(id: &str) -> bool {
    id.len() == JOB_ID_LEN && ulid::Ulid::from_string(id).is_ok()
}

pub fn job_key(job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN);
    k.push(JOB);
    k.extend_from_slice(job.as_bytes());
    k
}

/// The job id of a job record's key.
pub fn job_of_key(key: &[u8]) -> Option<&str> {
    match key.split_first() {
        Some((&JOB, id)) if id.len() == JOB_ID_LEN => std::str::from_utf8(id).ok(),
        _ => None,
    }
}

pub fn staged_key(job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN);
    k.push(STAGED);
    k.extend_from_slice(job.as_bytes());
    k
}

pub fn kept_key(job: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN + 8);
    k.push(KEPT);
    k.extend_from_slice(job.as_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn item_prefix(job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN + 8);
    k.push(ITEM);
    k.extend_from_slice(job.as_bytes());
    k
}

pub fn item_key(job: &str, index: u64) -> Vec<u8> {
    let mut k = item_prefix(job);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn index_prefix(index: Index, job: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + JOB_ID_LEN + 8);
    k.push(STATUS);
    k.push(index.code());
    if let Some(job) = job {
        k.extend_from_slice(job.as_bytes());
    }
    k
}

pub fn index_key(index: Index, job: &str, item: u64) -> Vec<u8> {
    let mut k = index_prefix(index, Some(job));
    k.extend_from_slice(&item.to_be_bytes());
    k
}

/// The job and index at the end of an `i` or `s` key.
pub fn split_item_suffix(key: &[u8]) -> Option<ItemKey> {
    if key.len() < JOB_ID_LEN + 8 {
        return None;
    }
    let tail = &key[key.len() - JOB_ID_LEN - 8..];
    let job = std::str::from_utf8(&tail[..JOB_ID_LEN]).ok()?.to_owned();
    let index = u64::from_be_bytes(tail[JOB_ID_LEN..].try_into().ok()?);
    Some(ItemKey { job, index })
}

pub fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn event_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

pub fn log_key(job: &str, index: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN + 16);
    k.push(LOG);
    k.extend_from_slice(job.as_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Every log line of every item of `job`.
pub fn job_log_prefix(job: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN);
    k.push(LOG);
    k.extend_from_slice(job.as_bytes());
    k
}

pub fn log_prefix(job: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + JOB_ID_LEN + 8);
    k.push(LOG);
    k.extend_from_slice(job.as_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_ids_round_trip_and_reject_garbage() {
        let job = new_job_id();
        let key = ItemKey {
            job: job.clone(),
            index: 42,
        };
        assert_eq!(ItemKey::parse(&key.id()), Some(key.clone()));
        assert_eq!(split_item_suffix(&key.item_key()), Some(key.clone()));
        assert_eq!(split_item_suffix(&key.index_key(Index::Open)), Some(key));
        for bad in [
            "",
            "x-1",
            &job,
            &format!("{job}-"),
            &format!("{job}-x"),
            "../../etc-1",
        ] {
            assert_eq!(ItemKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn job_ids_increase_within_a_millisecond() {
        let ids: Vec<String> = (0..1000).map(|_| new_job_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn item_keys_sort_by_index() {
        let job = new_job_id();
        assert!(item_key(&job, 2) < item_key(&job, 10));
        assert!(event_key(9) < event_key(10));
    }
}

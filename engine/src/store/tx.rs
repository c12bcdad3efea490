//! A scratch transaction over the writer's current group: reads see the group's
//! uncommitted writes (and the group before, while it is being applied to the tree),
//! writes stay private until the command succeeds. A rejected command is dropped with
//! its `Tx`, so nothing partial reaches the batch.

use std::collections::HashMap;

use sled::IVec;

use super::codec;
use super::error::{Result, StoreError};
use super::feed::Published;
use super::item_record;
use super::keys::{self, Index, ItemKey};
use crate::model::{Event, Item, ItemStatus, Job};

pub(crate) type Overlay = HashMap<Vec<u8>, Option<IVec>>;

/// Jobs changed by the group's earlier commands, kept decoded: a job's counts change
/// with every transition of its items, and the record is encoded once per group, when
/// the group is applied, not once per command.
pub(crate) type Jobs = HashMap<String, Job>;

/// What a successful command leaves for its group.
pub(crate) struct Finished {
    pub writes: Overlay,
    /// Jobs this command changed (their records are not in `writes`).
    pub jobs: Vec<Job>,
    pub events: Vec<Published>,
    pub next_seq: u64,
    pub status_deltas: [i64; ItemStatus::ALL.len()],
}

pub(crate) struct Tx<'a> {
    tree: &'a sled::Tree,
    /// The group before, still being applied to the tree.
    applying: Option<&'a Overlay>,
    base: &'a Overlay,
    base_jobs: &'a Jobs,
    pub writes: Overlay,
    pub events: Vec<Published>,
    /// Jobs read or changed in this command, written once at the end.
    jobs: HashMap<String, (Job, bool)>,
    /// Items changed in this command, encoded once at the end however often changed.
    items: HashMap<Vec<u8>, Item>,
    pub next_seq: u64,
    pub now: i64,
    /// Items gained or lost per status, for the metrics once the command succeeds.
    pub status_deltas: [i64; ItemStatus::ALL.len()],
}

impl<'a> Tx<'a> {
    pub fn new(
        tree: &'a sled::Tree,
        applying: Option<&'a Overlay>,
        base: &'a Overlay,
        base_jobs: &'a Jobs,
        next_seq: u64,
        now: i64,
    ) -> Self {
        Tx {
            tree,
            applying,
            base,
            base_jobs,
            writes: Overlay::new(),
            events: Vec::new(),
            jobs: HashMap::new(),
            items: HashMap::new(),
            next_seq,
            now,
            status_deltas: [0; ItemStatus::ALL.len()],
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        if let Some(item) = self.items.get(key) {
            return Ok(Some(item_record::encode(item).into()));
        }
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.base.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.applying.and_then(|a| a.get(key)) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?)
    }

    pub fn put(&mut self, key: Vec<u8>, value: impl Into<IVec>) {
        self.items.remove(&key);
        self.writes.insert(key, Some(value.into()));
    }

    pub fn del(&mut self, key: Vec<u8>) {
        self.items.remove(&key);
        self.writes.insert(key, None);
    }

    /// Keys under `prefix`, merged from the tree and both overlays, in order.
    pub fn scan_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut keys: std::collections::BTreeSet<Vec<u8>> = std::collections::BTreeSet::new();
        for kv in self.tree.scan_prefix(prefix) {
            keys.insert(kv?.0.to_vec());
        }
        for overlay in self.applying.into_iter().chain([self.base, &self.writes]) {
            for (k, v) in overlay {
                if k.starts_with(prefix) {
                    if v.is_some() {
                        keys.insert(k.clone());
                    } else {
                        keys.remove(k);
                    }
                }
            }
        }
        // A key removed in `base` but written again in `writes` is present.
        keys.retain(|k| !matches!(self.writes.get(k), Some(None)));
        // Items changed in this command are neither in the tree nor the overlays yet.
        keys.extend(self.items.keys().filter(|k| k.starts_with(prefix)).cloned());
        Ok(keys.into_iter().collect())
    }

    fn load_job(&mut self, id: &str) -> Result<&mut (Job, bool)> {
        if !self.jobs.contains_key(id) {
            let key = keys::job_key(id);
            let job = match (self.writes.contains_key(&key), self.base_jobs.get(id)) {
                (false, Some(job)) => job.clone(),
                _ => {
                    let raw = self
                        .get(&key)?
                        .ok_or_else(|| StoreError::not_found("job", id))?;
                    codec::decode(&raw)?
                }
            };
            self.jobs.insert(id.to_owned(), (job, false));
        }
        Ok(self.jobs.get_mut(id).expect("just loaded"))
    }

    /// The job, to change: it is written back when the command succeeds.
    pub fn job_mut(&mut self, id: &str) -> Result<&mut Job> {
        let now = self.now;
        let entry = self.load_job(id)?;
        entry.1 = true;
        entry.0.updated_at = now;
        Ok(&mut entry.0)
    }

    pub fn job(&mut self, id: &str) -> Result<Job> {
        Ok(self.load_job(id)?.0.clone())
    }

    /// Delete the job record (its items are removed with [`Tx::remove_item`]).
    pub fn remove_job(&mut self, id: &str) {
        self.jobs.remove(id);
        self.del(keys::job_key(id));
    }

    /// Delete an item and its status index entry.
    pub fn remove_item(&mut self, key: &ItemKey, status: ItemStatus) {
        self.status_deltas[status.code() as usize] -= 1;
        if let Some(index) = Index::of(status) {
            self.del(key.index_key(index));
        }
        self.del(key.item_key());
        self.del(key.kept_key());
    }

    pub fn insert_job(&mut self, job: Job) {
        self.jobs.insert(job.id.clone(), (job, true));
    }

    pub fn item(&self, key: &ItemKey) -> Result<Item> {
        if let Some(item) = self.items.get(&key.item_key()) {
            return Ok(item.clone());
        }
        let raw = self
            .get(&key.item_key())?
            .ok_or_else(|| StoreError::not_found("item", key.id()))?;
        item_record::decode(key, &raw)
    }

    pub fn put_item(&mut self, item: &Item) {
        let key = keys::item_key(&item.job_id, item.index);
        self.writes.remove(&key);
        self.items.insert(key, item.clone());
    }

    /// Write a new item and its status index entry (no counts: the caller sets them).
    pub fn insert_item(&mut self, item: &Item) {
        self.put_item(item);
        self.status_deltas[item.status.code() as usize] += 1;
        if let Some(index) = Index::of(item.status) {
            self.put(
                keys::index_key(index, &item.job_id, item.index),
                index_value(item),
            );
        }
    }

    /// Move an item to `to`: status index, the job's counts and the item record.
    pub fn set_status(&mut self, item: &mut Item, to: ItemStatus) -> Result<()> {
        let from = item.status;
        self.status_deltas[from.code() as usize] -= 1;
        self.status_deltas[to.code() as usize] += 1;
        item.status = to;
        item.updated_at = self.now;
        match (Index::of(from), Index::of(to)) {
            // Claimed: the open entry stays as it is.
            (Some(was), Some(is)) if was == is && to != ItemStatus::Queued => {}
            (was, is) => {
                if let Some(was) = was.filter(|was| Some(*was) != is) {
                    self.del(keys::index_key(was, &item.job_id, item.index));
                }
                if let Some(is) = is {
                    // Queued again after a run: the entry keeps its new `not_before`.
                    self.put(
                        keys::index_key(is, &item.job_id, item.index),
                        index_value(item),
                    );
                }
            }
        }
        self.job_mut(&item.job_id)?.counts.moved(from, to);
        self.put_item(item);
        if !to.is_open() {
            // The portal state kept across attempts ends with the item (an operator's
            // retry later starts a fresh portal session).
            self.del(keys::kept_key(&item.job_id, item.index));
        }
        Ok(())
    }

    /// Append an event; returns its seq.
    pub fn emit(
        &mut self,
        tenant: &str,
        kind: &str,
        job_id: Option<&str>,
        item_id: Option<&str>,
        data: serde_json::Value,
    ) -> u64 {
        let about = About {
            job_id,
            item_id,
            ..About::default()
        };
        self.append(tenant, kind, about, data)
    }

    /// Append a client's event, under its topic if it has one; returns its seq.
    pub fn emit_topic(
        &mut self,
        tenant: &str,
        kind: &str,
        job_id: Option<&str>,
        topic: Option<&str>,
        data: serde_json::Value,
    ) -> u64 {
        let about = About {
            job_id,
            topic,
            ..About::default()
        };
        self.append(tenant, kind, about, data)
    }

    /// Append an event of a session; returns its seq.
    pub fn emit_session(
        &mut self,
        tenant: &str,
        kind: &str,
        session_id: &str,
        data: serde_json::Value,
    ) -> u64 {
        let about = About {
            session_id: Some(session_id),
            ..About::default()
        };
        self.append(tenant, kind, about, data)
    }

    fn append(
        &mut self,
        tenant: &str,
        kind: &str,
        about: About<'_>,
        data: serde_json::Value,
    ) -> u64 {
        let About {
            job_id,
            item_id,
            session_id,
            topic,
        } = about;
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = Event {
            seq,
            ts: self.now,
            tenant: tenant.to_owned(),
            kind: kind.to_owned(),
            job_id: job_id.map(str::to_owned),
            item_id: item_id.map(str::to_owned),
            session_id: session_id.map(str::to_owned),
            topic: topic.map(str::to_owned),
            data,
        };
        // Serialized once: the same text is stored (in the group's event blocks, written
        // by the writer) and sent to every subscriber.
        self.events.push(Published::new(&event));
        seq
    }

    /// The command's writes with its items encoded, and the jobs it changed.
    pub fn finish(mut self) -> Finished {
        for (key, item) in std::mem::take(&mut self.items) {
            self.writes
                .insert(key, Some(item_record::encode(&item).into()));
        }
        let jobs = self
            .jobs
            .into_values()
            .filter_map(|(job, dirty)| dirty.then_some(job))
            .collect();
        Finished {
            writes: self.writes,
            jobs,
            events: self.events,
            next_seq: self.next_seq,
            status_deltas: self.status_deltas,
        }
    }
}

/// The status index keeps a queued item's `not_before`, so start-up can rebuild the
/// ready queues without reading every item.
fn index_value(item: &Item) -> IVec {
    match (item.status, item.not_before) {
        (ItemStatus::Queued, Some(t)) => IVec::from(&t.to_be_bytes()[..]),
        _ => IVec::default(),
    }
}

pub fn decode_not_before(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

/// What an event is about, besides its tenant and type.
#[derive(Default)]
struct About<'a> {
    job_id: Option<&'a str>,
    item_id: Option<&'a str>,
    session_id: Option<&'a str>,
    topic: Option<&'a str>,
}

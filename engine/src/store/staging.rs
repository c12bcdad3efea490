//! Jobs too big for one command (a spreadsheet of a million rows): the job is written in
//! chunks under a "being created" marker (`c` + job id), so other writes interleave
//! between the chunks, and it becomes a job — listed, claimable, on the feed — only with
//! its final commit. Until then its items are reachable by nobody: no job record points
//! at them, no event names them and the ready queues do not hold them. A refused import
//! is discarded chunk by chunk; a process that dies midway leaves the marker, and the
//! next start removes what it guards ([`discard_unfinished`]).

use serde::{Deserialize, Serialize};

use super::Store;
use super::create::{initial_index, initial_status, new_item, new_job};
use super::error::{Result, StoreError};
use super::idempotency::{self, Idempotency};
use super::keys::{self, ItemKey};
use super::ops::MAX_ITEMS_PER_JOB;
use super::references::{self, Screen};
use super::tx::Tx;
use super::writer::{Command, Writer};
use crate::model::{Job, NewItem, NewJob, ReferencePolicy, Skipped};

/// Items written or removed per command, so that one import never holds the writer
/// for long.
pub const CHUNK: usize = 1_000;

/// What the marker keeps: the job as it will be, and the shared input its items get.
#[derive(Debug, Serialize, Deserialize)]
struct Staged {
    job: Job,
    input: Option<serde_json::Value>,
}

fn staged(tx: &Tx<'_>, id: &str) -> Result<Staged> {
    let raw = tx
        .get(&keys::staged_key(id))?
        .ok_or_else(|| StoreError::not_found("job being created", id))?;
    super::codec::decode(&raw)
}

impl Writer {
    /// Check the job and leave its marker; its items follow with [`Writer::stage_items`].
    pub(crate) fn stage_job(
        &mut self,
        tx: &mut Tx<'_>,
        tenant: &str,
        new: NewJob,
        plugin_version: Option<String>,
    ) -> Result<String> {
        let job = new_job(tx.now, tenant, &new, plugin_version)?;
        let id = job.id.clone();
        let marker = Staged {
            job,
            input: new.input,
        };
        tx.put(keys::staged_key(&id), super::codec::encode(&marker));
        Ok(id)
    }

    /// Store a chunk of a job being created: its items and status index entries, made
    /// and serialized by the caller ([`Store::stage_items`]), so the writer only checks
    /// the marker is there and copies them. The status counts move only at the commit.
    ///
    /// The references were screened against what was committed; they are looked at
    /// again here, where writes not yet committed are seen too. Answers the ones found
    /// taken, and then writes nothing.
    pub(crate) fn stage_items(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        writes: Vec<(Vec<u8>, Vec<u8>)>,
        references: Vec<String>,
    ) -> Result<Vec<String>> {
        let marker = staged(tx, id)?;
        if marker.job.options.unique_references.unwrap_or_default() != ReferencePolicy::Allow {
            let mut taken = Vec::new();
            for r in references {
                if references::taken_in_tx(tx, &marker.job, &r)? {
                    taken.push(r);
                }
            }
            if !taken.is_empty() {
                return Ok(taken);
            }
        }
        for (k, v) in writes {
            tx.put(k, v);
        }
        Ok(Vec::new())
    }

    /// Make the job real: its record, its counts, its events, its queue — one write.
    pub(crate) fn commit_staged(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        total: u64,
        skipped: Option<Skipped>,
        idem: Option<Idempotency>,
    ) -> Result<Job> {
        if let Some(idem) = &idem
            && idempotency::replayed(tx, idem, self.idempotency_keep_ms)?.is_some()
        {
            // The API holds a key for as long as its import runs, so this is the last
            // line only, should a caller of the store not.
            return Err(StoreError::Conflict(format!(
                "Idempotency-Key: `{}`: another request with this key created its job first",
                idem.key
            )));
        }
        let Staged { mut job, .. } = staged(tx, id)?;
        let complete = total > 0
            && tx.get(&keys::item_key(id, total - 1))?.is_some()
            && tx.get(&keys::item_key(id, total))?.is_none();
        if !complete {
            return Err(StoreError::Conflict(format!(
                "job `{id}`: the {total} items to commit are not the ones written"
            )));
        }
        let status = initial_status(&job);
        *job.counts.get_mut(status) = total;
        job.updated_at = tx.now;
        tx.status_deltas[status.code() as usize] += total as i64;
        job.skipped = skipped;
        tx.del(keys::staged_key(id));
        tx.insert_job(job.clone());
        self.announce_job(tx, &job, total);
        if let Some(idem) = &idem {
            idempotency::record(tx, idem, serde_json::to_value(&job)?);
        }
        Ok(job)
    }

    /// Remove items `from..to` of a job being created, and with `last` its marker.
    pub(crate) fn discard_staged(
        &mut self,
        tx: &mut Tx<'_>,
        id: &str,
        from: u64,
        to: u64,
        last: bool,
    ) -> Result<()> {
        let job = staged(tx, id)?.job;
        let listed = initial_index(&job);
        for index in from..to {
            let key = ItemKey {
                job: id.to_owned(),
                index,
            };
            if let Ok(item) = tx.item(&key)
                && let Some(entry) = references::entry(&job, &item)
            {
                tx.del(entry);
            }
            tx.del(keys::item_key(id, index));
            tx.del(keys::index_key(listed, id, index));
        }
        if last {
            tx.del(keys::staged_key(id));
        }
        Ok(())
    }
}

impl Store {
    /// Begin a job whose items come in chunks; nobody sees it before
    /// [`Store::commit_staged`]. Answers its id.
    pub async fn stage_job(
        &self,
        tenant: &str,
        job: NewJob,
        plugin_version: Option<String>,
    ) -> Result<String> {
        let tenant = tenant.to_owned();
        self.send(|reply| Command::StageJob {
            tenant,
            job,
            plugin_version,
            reply,
        })
        .await
    }

    /// Store the next chunk of a job being created, its items numbered from `first`
    /// (at most [`CHUNK`] a call keeps other writers waiting least). The items are made
    /// and serialized on a blocking thread of the caller's, not by the writer, which
    /// every tenant's changes wait for.
    ///
    /// Under a `skip` or `reject` policy the items' references are screened first
    /// (`screen` carries what earlier chunks met): skipped items are left out, and a
    /// taken reference under `reject` writes nothing more (the caller refuses the job
    /// at the end, listing them). Answers how many items were written.
    pub async fn stage_items(
        &self,
        job: &str,
        first: u64,
        items: Vec<NewItem>,
        screen: &mut Screen,
    ) -> Result<u64> {
        // A disk that fills during a long import stops it (and the staged chunks are
        // discarded) before sled meets ENOSPC.
        self.writable()?;
        let raw = self
            .tree
            .get(keys::staged_key(job))?
            .ok_or_else(|| StoreError::not_found("job being created", job))?;
        let marker: Staged = super::codec::decode(&raw)?;
        if first + items.len() as u64 > MAX_ITEMS_PER_JOB as u64 {
            return Err(StoreError::Invalid(format!(
                "items: more than the {MAX_ITEMS_PER_JOB} one job may hold"
            )));
        }
        let now = self.clock.now_ms();
        let policy = marker.job.options.unique_references.unwrap_or_default();
        let tree = self.tree.clone();
        let mut screened = std::mem::take(screen);
        let (writes, references, n, screened) = tokio::task::spawn_blocking(move || {
            let mut kept = Vec::with_capacity(items.len());
            for it in items {
                let admitted = policy == ReferencePolicy::Allow
                    || screened.admit(it.reference.as_deref(), |r| {
                        references::taken_in_tree(&tree, &marker.job, r)
                    })?;
                if admitted {
                    kept.push(it);
                }
            }
            if policy == ReferencePolicy::Reject && screened.count > 0 {
                // Refused in the end: nothing more is written, the rest is only read
                // to list every reference taken.
                return Ok::<_, StoreError>((Vec::new(), Vec::new(), 0, screened));
            }
            let listed = initial_index(&marker.job);
            let mut writes = Vec::with_capacity(kept.len() * 3);
            let mut references = Vec::new();
            let n = kept.len() as u64;
            for (i, it) in kept.into_iter().enumerate() {
                let index = first + i as u64;
                let item = new_item(&marker.job, index, it, marker.input.as_ref(), now)?;
                if let Some(entry) = references::entry(&marker.job, &item) {
                    writes.push((entry, Vec::new()));
                    references.extend(item.reference.clone());
                }
                writes.push((
                    keys::item_key(&item.job_id, index),
                    super::item_record::encode(&item),
                ));
                writes.push((keys::index_key(listed, &item.job_id, index), Vec::new()));
            }
            Ok((writes, references, n, screened))
        })
        .await
        .map_err(|e| StoreError::Storage(format!("making a chunk of items failed: {e}")))??;
        *screen = screened;
        if n == 0 {
            return Ok(0);
        }
        let job = job.to_owned();
        let taken = self
            .send(|reply| Command::StageItems {
                job,
                writes,
                references,
                reply,
            })
            .await?;
        if !taken.is_empty() {
            // Taken between the screening and the write, by a request the screening
            // could not see yet.
            return Err(StoreError::ReferencesTaken {
                count: taken.len() as u64,
                references: taken,
            });
        }
        Ok(n)
    }

    /// The job with its `total` items, visible and (if it starts now) queued.
    /// `skipped`: what a `skip` policy left out; `idem`: the request's idempotency
    /// key, recorded with the job.
    pub async fn commit_staged(
        &self,
        job: &str,
        total: u64,
        skipped: Option<Skipped>,
        idem: Option<Idempotency>,
    ) -> Result<Job> {
        self.writable()?;
        let job = job.to_owned();
        self.send(|reply| Command::CommitStaged {
            job,
            total,
            skipped,
            idem,
            reply,
        })
        .await
    }

    /// Remove a job being created and the `written` items it has, chunk by chunk.
    pub async fn discard_staged(&self, job: &str, written: u64) -> Result<()> {
        let mut from = 0;
        loop {
            let to = (from + CHUNK as u64).min(written);
            let last = to == written;
            let job = job.to_owned();
            self.send(|reply| Command::DiscardStaged {
                job,
                from,
                to,
                last,
                reply,
            })
            .await?;
            if last {
                return Ok(());
            }
            from = to;
        }
    }
}

/// At start-up, before the queues are rebuilt: remove every job a previous process was
/// still creating, and its items. Answers how many there were.
pub(super) fn discard_unfinished(tree: &sled::Tree) -> Result<usize> {
    let mut markers = Vec::new();
    for kv in tree.scan_prefix([keys::STAGED]) {
        let (k, v) = kv?;
        let marker: Staged = super::codec::decode(&v)?;
        markers.push((k, marker.job));
    }
    for (marker, job) in &markers {
        let listed = initial_index(job);
        let mut batch = sled::Batch::default();
        let mut n: usize = 0;
        for kv in tree.scan_prefix(keys::item_prefix(&job.id)) {
            let (k, v) = kv?;
            if let Some(key) = keys::split_item_suffix(&k) {
                if let Ok(item) = super::item_record::decode(&key, &v)
                    && let Some(entry) = references::entry(job, &item)
                {
                    batch.remove(entry);
                }
                batch.remove(key.index_key(listed));
            }
            batch.remove(k);
            n += 1;
            if n.is_multiple_of(CHUNK * 10) {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        batch.remove(marker.clone());
        tree.apply_batch(batch)?;
    }
    if !markers.is_empty() {
        tree.flush()?;
    }
    Ok(markers.len())
}

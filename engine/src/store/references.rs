//! Unique references: an item's business reference (an order number) can be made
//! unique per tenant, plugin and operation, so a re-exported order or a spreadsheet
//! uploaded twice is refused or left out instead of being placed again. Every item
//! with a reference has an index entry (`r` keys); a reference is taken while one of
//! its items is neither failed nor cancelled, so a failed order can be sent again.

use std::collections::HashSet;

use super::error::{Result, StoreError};
use super::keys::{ItemKey, REFERENCE};
use super::tx::Tx;
pub use crate::model::ReferencePolicy;
use crate::model::{Item, ItemStatus, Job};

/// Most references listed in a refusal or on a job; the count says how many in all.
pub const MAX_LISTED: usize = 100;

fn prefix(job: &Job, reference: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(
        4 + job.tenant.len() + job.plugin.len() + job.operation.len() + reference.len(),
    );
    k.push(REFERENCE);
    for part in [&job.tenant, &job.plugin, &job.operation] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(reference.as_bytes());
    k.push(0);
    k
}

/// The index entry of `item` of `job`, if it has a reference.
pub fn entry(job: &Job, item: &Item) -> Option<Vec<u8>> {
    let reference = item.reference.as_deref()?;
    let mut k = prefix(job, reference);
    k.extend_from_slice(item.id.as_bytes());
    Some(k)
}

fn item_of(entry: &[u8]) -> Option<ItemKey> {
    let id = entry.rsplit(|b| *b == 0).next()?;
    ItemKey::parse(std::str::from_utf8(id).ok()?)
}

/// Whether one of the index `entries` names an item that holds its reference (neither
/// failed nor cancelled), the items read with `item` (`None`: gone).
fn any_holder<K: AsRef<[u8]>>(
    entries: impl IntoIterator<Item = Result<K>>,
    item: impl Fn(&ItemKey) -> Result<Option<Item>>,
) -> Result<bool> {
    for entry in entries {
        let Some(key) = item_of(entry?.as_ref()) else {
            continue;
        };
        if item(&key)?
            .is_some_and(|i| !matches!(i.status, ItemStatus::Failed | ItemStatus::Cancelled))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `reference` is taken for `job`'s tenant, plugin and operation, as the
/// writer sees it (its uncommitted group included).
pub(super) fn taken_in_tx(tx: &Tx<'_>, job: &Job, reference: &str) -> Result<bool> {
    any_holder(
        tx.scan_keys(&prefix(job, reference))?.into_iter().map(Ok),
        |key| match tx.item(key) {
            Ok(item) => Ok(Some(item)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        },
    )
}

/// [`taken_in_tx`] on what is committed, for work prepared outside the writer (the
/// writer checks again).
pub(super) fn taken_in_tree(tree: &sled::Tree, job: &Job, reference: &str) -> Result<bool> {
    any_holder(
        tree.scan_prefix(prefix(job, reference))
            .keys()
            .map(|k| k.map_err(StoreError::from)),
        |key| match tree.get(key.item_key())? {
            Some(raw) => Ok(Some(super::item_record::decode(key, &raw)?)),
            None => Ok(None),
        },
    )
}

/// References met so far in one request, and what the policy did with them.
#[derive(Debug, Default)]
pub struct Screen {
    seen: HashSet<String>,
    /// References refused (reject) or left out (skip), the first [`MAX_LISTED`].
    pub listed: Vec<String>,
    /// How many were refused or left out in all.
    pub count: u64,
}

impl Screen {
    /// Whether the item with `reference` may go in: false when it repeats one of this
    /// request's or is `taken` elsewhere (then it is listed).
    pub fn admit(
        &mut self,
        reference: Option<&str>,
        taken: impl FnOnce(&str) -> Result<bool>,
    ) -> Result<bool> {
        let Some(r) = reference else { return Ok(true) };
        let duplicate = self.seen.contains(r) || taken(r)?;
        if duplicate {
            self.count += 1;
            if self.listed.len() < MAX_LISTED {
                self.listed.push(r.to_owned());
            }
            return Ok(false);
        }
        self.seen.insert(r.to_owned());
        Ok(true)
    }

    /// The refusal of a request under `reject`.
    pub fn refusal(&self) -> StoreError {
        StoreError::ReferencesTaken {
            references: self.listed.clone(),
            count: self.count,
        }
    }
}

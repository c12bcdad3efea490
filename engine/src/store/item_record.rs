//! How an item is stored. An item is written at creation, at its claim and at its
//! outcome, and each write logs the whole record: it is most of what a store writes.
//! So the record leaves out what its key already says (job, index, and the id made of
//! them) and names its fields with one or two letters. Records written by format 2 and
//! 3 engines (the API's names, with the id) still read: every short name has the long
//! one as an alias, and what the key says is taken from the key.
//!
//! Both structs below list every field of [`Item`] and are built by destructuring it,
//! so a field added to `Item` does not compile until it is stored.

use serde::{Deserialize, Serialize};

use super::codec;
use super::error::Result;
use super::keys::ItemKey;
use crate::model::{Attempt, Item, ItemError, ItemStatus, Lease, Step};

#[derive(Serialize)]
struct Out<'a> {
    #[serde(rename = "t")]
    tenant: &'a str,
    #[serde(rename = "p")]
    plugin: &'a str,
    #[serde(rename = "r")]
    reference: &'a Option<String>,
    #[serde(rename = "i")]
    input: &'a serde_json::Value,
    #[serde(rename = "s")]
    status: ItemStatus,
    #[serde(rename = "a")]
    attempt: u32,
    #[serde(rename = "m")]
    max_attempts: u32,
    #[serde(rename = "n")]
    not_before: Option<i64>,
    #[serde(rename = "l")]
    lease: &'a Option<Lease>,
    #[serde(rename = "at")]
    attempts: &'a [Attempt],
    #[serde(rename = "st")]
    steps: &'a [Step],
    #[serde(rename = "e")]
    error: &'a Option<ItemError>,
    #[serde(rename = "re")]
    result: &'a Option<serde_json::Value>,
    #[serde(rename = "rs")]
    resource: &'a Option<String>,
    #[serde(rename = "c")]
    created_at: i64,
    #[serde(rename = "u")]
    updated_at: i64,
}

#[derive(Deserialize)]
struct In {
    #[serde(rename = "t", alias = "tenant")]
    tenant: String,
    #[serde(rename = "p", alias = "plugin")]
    plugin: String,
    #[serde(rename = "r", alias = "reference")]
    reference: Option<String>,
    #[serde(rename = "i", alias = "input")]
    input: serde_json::Value,
    #[serde(rename = "s", alias = "status")]
    status: ItemStatus,
    #[serde(rename = "a", alias = "attempt")]
    attempt: u32,
    #[serde(rename = "m", alias = "max_attempts")]
    max_attempts: u32,
    #[serde(rename = "n", alias = "not_before")]
    not_before: Option<i64>,
    #[serde(rename = "l", alias = "lease")]
    lease: Option<Lease>,
    #[serde(rename = "at", alias = "attempts")]
    attempts: Vec<Attempt>,
    #[serde(rename = "st", alias = "steps")]
    steps: Vec<Step>,
    #[serde(rename = "e", alias = "error")]
    error: Option<ItemError>,
    #[serde(rename = "re", alias = "result")]
    result: Option<serde_json::Value>,
    #[serde(rename = "rs", alias = "resource", default)]
    resource: Option<String>,
    #[serde(rename = "c", alias = "created_at")]
    created_at: i64,
    #[serde(rename = "u", alias = "updated_at")]
    updated_at: i64,
}

/// The record of `item`, stored under its item key.
pub fn encode(item: &Item) -> Vec<u8> {
    let Item {
        id: _,
        job_id: _,
        index: _,
        tenant,
        plugin,
        reference,
        input,
        status,
        attempt,
        max_attempts,
        not_before,
        lease,
        attempts,
        steps,
        error,
        result,
        resource,
        created_at,
        updated_at,
    } = item;
    codec::encode(&Out {
        tenant,
        plugin,
        reference,
        input,
        status: *status,
        attempt: *attempt,
        max_attempts: *max_attempts,
        not_before: *not_before,
        lease,
        attempts,
        steps,
        error,
        result,
        resource,
        created_at: *created_at,
        updated_at: *updated_at,
    })
}

/// The item stored under `key`'s item key as `raw`.
pub fn decode(key: &ItemKey, raw: &[u8]) -> Result<Item> {
    let In {
        tenant,
        plugin,
        reference,
        input,
        status,
        attempt,
        max_attempts,
        not_before,
        lease,
        attempts,
        steps,
        error,
        result,
        resource,
        created_at,
        updated_at,
    } = codec::decode(raw)?;
    Ok(Item {
        id: key.id(),
        job_id: key.job.clone(),
        index: key.index,
        tenant,
        plugin,
        reference,
        input,
        status,
        attempt,
        max_attempts,
        not_before,
        lease,
        attempts,
        steps,
        error,
        result,
        resource,
        created_at,
        updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field filled, nested records too.
    fn item() -> Item {
        let mut it = codec::tests::item();
        it.status = ItemStatus::Failed;
        it.attempt = 2;
        it.not_before = Some(7);
        it.lease = Some(Lease {
            owner: "worker:a".into(),
            token: 9,
            expires_at: 11,
        });
        it.attempts = vec![Attempt {
            number: 1,
            started_at: 1,
            finished_at: Some(2),
            owner: "worker:a".into(),
            outcome: Some(ItemStatus::Queued),
            error: Some(ItemError::application("down")),
            resource: Some("r1".into()),
        }];
        it.steps = vec![Step {
            name: "login".into(),
            state: Some("page 2".into()),
            attempt: 1,
            at: 1,
        }];
        it.error = Some(ItemError::business("no"));
        it.result = Some(serde_json::json!({"order": "PO-1"}));
        it.resource = Some("r1".into());
        it
    }

    fn key() -> ItemKey {
        ItemKey::parse("01JX0000000000000000000000-3").unwrap()
    }

    #[test]
    fn an_item_round_trips_without_what_its_key_says() {
        let it = item();
        let raw = encode(&it);
        assert_eq!(decode(&key(), &raw).unwrap(), it);
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(&it.job_id), "the job id is the key's");
        assert!(!text.contains("max_attempts"));
        assert!(raw.len() < codec::encode(&it).len());
    }

    #[test]
    fn records_of_older_engines_read_named_as_the_api_names_them() {
        let it = item();
        // Formats 2 and 3: the item as the API names it, MessagePack; format 1: JSON.
        assert_eq!(decode(&key(), &codec::encode(&it)).unwrap(), it);
        assert_eq!(
            decode(&key(), &serde_json::to_vec(&it).unwrap()).unwrap(),
            it
        );
        // A record from before pool resources had no `resource`.
        let mut old = serde_json::to_value(&it).unwrap();
        old.as_object_mut().unwrap().remove("resource");
        let read = decode(&key(), &codec::encode(&old)).unwrap();
        assert_eq!(read.resource, None);
    }
}

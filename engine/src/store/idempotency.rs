//! Idempotency keys: a client that retries a request with the same `Idempotency-Key`
//! gets the first answer again instead of a second job or event. The key is recorded
//! in the same write as what the request created, so an acknowledged request is
//! remembered across a crash; a key is kept for a configured time, then swept.

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::keys::IDEMPOTENCY;
use super::tx::Tx;

/// Longest key a client may send.
pub const MAX_KEY_LEN: usize = 255;

/// What a request with an idempotency key asks of the store.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The client's key, as sent (for messages).
    pub key: String,
    /// Where the record lives: tenant and key.
    pub(super) store_key: Vec<u8>,
    /// A digest of the route and the request body: the same key with another request
    /// is refused.
    pub fingerprint: String,
}

impl Idempotency {
    pub fn new(tenant: &str, key: &str, fingerprint: String) -> Idempotency {
        let mut store_key = Vec::with_capacity(2 + tenant.len() + key.len());
        store_key.push(IDEMPOTENCY);
        store_key.extend_from_slice(tenant.as_bytes());
        store_key.push(0);
        store_key.extend_from_slice(key.as_bytes());
        Idempotency {
            key: key.to_owned(),
            store_key,
            fingerprint,
        }
    }

    /// The key in the store: also what names a request in flight.
    pub fn id(&self) -> &[u8] {
        &self.store_key
    }
}

/// A request answered, as kept under its key.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Recorded {
    fingerprint: String,
    /// When it was answered (ms since the epoch).
    at: i64,
    /// The answer's body.
    response: serde_json::Value,
}

/// The stored answer for `idem` if its key was used within `keep_ms` of `now`; an
/// error if it was used with another request.
pub(super) fn lookup(
    raw: Option<&[u8]>,
    idem: &Idempotency,
    now: i64,
    keep_ms: i64,
) -> Result<Option<serde_json::Value>> {
    let Some(raw) = raw else { return Ok(None) };
    let rec: Recorded = super::codec::decode(raw)?;
    if now.saturating_sub(rec.at) > keep_ms {
        return Ok(None);
    }
    if rec.fingerprint != idem.fingerprint {
        return Err(StoreError::Invalid(format!(
            "Idempotency-Key: `{}` was already used with a different request; use a new key",
            idem.key
        )));
    }
    Ok(Some(rec.response))
}

/// Inside a command: the earlier answer, if any (see [`lookup`]).
pub(super) fn replayed(
    tx: &Tx<'_>,
    idem: &Idempotency,
    keep_ms: i64,
) -> Result<Option<serde_json::Value>> {
    let raw = tx.get(&idem.store_key)?;
    lookup(raw.as_deref(), idem, tx.now, keep_ms)
}

/// Remember `response` as the answer to `idem`, in the command's own write.
pub(super) fn record(tx: &mut Tx<'_>, idem: &Idempotency, response: serde_json::Value) {
    let rec = Recorded {
        fingerprint: idem.fingerprint.clone(),
        at: tx.now,
        response,
    };
    tx.put(idem.store_key.clone(), super::codec::encode(&rec));
}

/// Most keys one sweep command removes, so that it never holds the writer for long.
pub(super) const SWEEP_CHUNK: usize = 5_000;

fn expired(raw: &[u8], now: i64, keep_ms: i64) -> bool {
    super::codec::decode::<Recorded>(raw)
        .map(|r| now.saturating_sub(r.at) > keep_ms)
        .unwrap_or(true)
}

/// Keys past their time, up to [`SWEEP_CHUNK`], after `from` (exclusive): read from
/// what is committed, outside the writer, which checks each again before removing it.
pub(super) fn expired_keys(
    tree: &sled::Tree,
    from: Option<&[u8]>,
    now: i64,
    keep_ms: i64,
) -> Result<Vec<Vec<u8>>> {
    let start = match from {
        Some(k) => std::ops::Bound::Excluded(k.to_vec()),
        None => std::ops::Bound::Included(vec![IDEMPOTENCY]),
    };
    let mut keys = Vec::new();
    for kv in tree.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)) {
        let (k, v) = kv?;
        if k.first() != Some(&IDEMPOTENCY) {
            break;
        }
        if expired(&v, now, keep_ms) {
            keys.push(k.to_vec());
            if keys.len() == SWEEP_CHUNK {
                break;
            }
        }
    }
    Ok(keys)
}

/// Remove those of `keys` that are still past their time, inside a writer command
/// (a key answered again since is kept).
pub(super) fn sweep(tx: &mut Tx<'_>, keys: Vec<Vec<u8>>, keep_ms: i64) -> Result<usize> {
    let mut removed = 0;
    for k in keys {
        if let Some(v) = tx.get(&k)?
            && expired(&v, tx.now, keep_ms)
        {
            tx.del(k);
            removed += 1;
        }
    }
    Ok(removed)
}

//! The `Idempotency-Key` header of the routes that create (jobs, imports, events): a
//! client that retries gets the first answer again, marked `Idempotency-Replayed:
//! true`. The store records the key with what the request created; here the key is
//! read, the request is fingerprinted, and two requests with one key at once are kept
//! apart (the second is told to retry).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ErrorCode;
use super::error::{ApiError, ApiResult};
use crate::store::Idempotency;
use crate::store::idempotency::MAX_KEY_LEN;

/// Keys of requests being answered right now.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<Vec<u8>>>);

/// Held while a request with a key is answered; the key is free again when dropped.
pub struct Claim {
    keys: Arc<InFlight>,
    key: Vec<u8>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.keys
            .0
            .lock()
            .expect("in-flight lock")
            .remove(&self.key);
    }
}

/// A digest of what makes a request this request: its route and its parts.
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new(route: &str) -> Self {
        let mut h = Sha256::new();
        h.update(route.as_bytes());
        Fingerprint(h)
    }

    /// Add one part; parts are length-prefixed, so `("ab", "c")` is not `("a", "bc")`.
    pub fn part(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    pub fn json<T: serde::Serialize>(self, value: &T) -> Self {
        self.part(&serde_json::to_vec(value).expect("a request body serializes"))
    }

    pub fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl AppState {
    /// The request's idempotency, from its `Idempotency-Key` header (`None`: no key),
    /// claimed for as long as the returned guard lives: 409 while another request with
    /// the same key is being answered.
    pub fn idempotency(
        &self,
        key: Option<String>,
        fingerprint: impl FnOnce() -> String,
    ) -> ApiResult<Option<(Idempotency, Claim)>> {
        let Some(key) = key else { return Ok(None) };
        let ok = !key.is_empty()
            && key.len() <= MAX_KEY_LEN
            && key.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        let idem = Idempotency::new(&self.tenant(), &key, fingerprint());
        let claimed = self
            .in_flight
            .0
            .lock()
            .expect("in-flight lock")
            .insert(idem.id().to_vec());
        if !claimed {
            return Err(ApiError::Conflict(super::error::body(
                ErrorCode::Conflict,
                format!(
                    "Idempotency-Key: a request with `{key}` is being answered; retry when it is"
                ),
            )));
        }
        let claim = Claim {
            keys: self.in_flight.clone(),
            key: idem.id().to_vec(),
        };
        Ok(Some((idem, claim)))
    }
}

/// A request whose `Idempotency-Key` is not text: poem reads such a header as absent,
/// which would run the request without the protection its client asked for.
pub(super) async fn refuse_unreadable_key<E: poem::Endpoint>(
    next: E,
    req: poem::Request,
) -> poem::Result<poem::Response> {
    if req
        .headers()
        .get_all("idempotency-key")
        .iter()
        .any(|v| v.to_str().is_err())
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        ))
        .into());
    }
    next.call(req).await.map(poem::IntoResponse::into_response)
}

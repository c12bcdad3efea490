//! `/api/v1/events`: query the stored event log, and publish custom events into it.

use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::AppState;
use super::body::JsonBody;
use super::error::{ApiError, ApiResult};
use super::idempotency::Fingerprint;
use super::jobs::{Tag, limit};
use super::ws::RESERVED_TYPES;
use crate::model::Event;
use crate::store::{EventFilter, Publication};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// Pass as `after` to continue; the last seq looked at, even if it did not match.
    pub next_after: u64,
}

#[derive(Debug, Object, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct PublishBody {
    /// A type of your own (not one the engine emits), e.g. `invoice_sent`.
    #[oai(rename = "type", validator(min_length = 1, max_length = 64))]
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: Option<String>,
    /// A topic of your choosing (a branch, a team, a channel), 1-128 letters, digits,
    /// `_`, `-`, `.`, `:` or `/`: feed subscriptions and `GET /api/v1/events` can ask
    /// for only the events of their topics.
    pub topic: Option<String>,
    #[oai(default)]
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(ApiResponse)]
pub enum Published {
    /// The event. With `Idempotency-Replayed: true` it is the one an earlier request
    /// with the same `Idempotency-Key` published, and nothing new was written.
    #[oai(status = 201)]
    Created(
        Json<Event>,
        #[oai(header = "Idempotency-Replayed")] Option<bool>,
    ),
}

pub struct EventsApi {
    pub state: AppState,
}

#[OpenApi(prefix_path = "/api/v1", tag = "Tag::Events")]
impl EventsApi {
    /// Stored events after a seq, oldest first.
    #[oai(path = "/events", method = "get", operation_id = "list_events")]
    async fn list(
        &self,
        /// Only events with a larger seq (default 0: from the start).
        after: Query<Option<u64>>,
        /// Only events of this job.
        job: Query<Option<String>>,
        /// Only events of this type.
        #[oai(name = "type")]
        kind: Query<Option<String>>,
        /// Only events published under this topic.
        topic: Query<Option<String>>,
        /// Page size (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "10000")))]
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<EventPage>> {
        let filter = EventFilter {
            tenant: Some(self.state.tenant()),
            jobs: job.0.into_iter().collect(),
            types: kind.0.into_iter().collect(),
            topics: topic.0.into_iter().collect(),
        };
        let (events, next_after) = self.state.store.events(
            after.0.unwrap_or(0),
            &filter,
            self::limit(limit.0, 10_000)?,
        )?;
        Ok(Json(EventPage { events, next_after }))
    }

    /// Append a custom event to the log; it is fanned out like any other. A retry
    /// with the same `Idempotency-Key` answers the event the first request published.
    #[oai(path = "/events", method = "post", operation_id = "publish_event")]
    async fn publish(
        &self,
        body: JsonBody<PublishBody>,
        #[oai(
            name = "Idempotency-Key",
            validator(min_length = 1, max_length = 255, pattern = "^[!-~]+$")
        )]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Published> {
        let (idem, _claim) = self
            .state
            .idempotency(idempotency_key.0, || {
                Fingerprint::new("POST /api/v1/events")
                    .json(&body.0)
                    .finish()
            })?
            .unzip();
        if RESERVED_TYPES.contains(&body.0.kind.as_str()) {
            return Err(ApiError::invalid(format!(
                "type: `{}` is a message type of the feed itself",
                body.0.kind
            )));
        }
        let PublishBody {
            kind,
            job_id,
            topic,
            data,
        } = body.0;
        let (event, replayed) = self
            .state
            .store
            .publish_once(Publication {
                tenant: self.state.tenant(),
                kind,
                job_id,
                topic,
                data,
                idem,
                engine: false,
            })
            .await?;
        Ok(Published::Created(Json(event), replayed.then_some(true)))
    }
}

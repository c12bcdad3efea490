//! The feed's contract, machine-readable: every event type with the schema of its
//! `data`, as OpenAPI schemas (`Event` is a `oneOf` of them, so `GET /api/v1/events`
//! is typed) and as an AsyncAPI 3.0 document for `/ws` and `/ws/jobs/{id}`, served at
//! `/asyncapi.json`, with the messages a client sends (subscribe, ping) and the ones it
//! receives (subscribed, pong, lagged, error, the events).
//!
//! The payloads are written here by hand, next to the list of types in
//! [`crate::model::kind`]: the engine builds them as JSON where it emits them. Each
//! declares the fields every emitter sends and leaves room for more
//! (`additionalProperties` is open), so adding a field is not a breaking change.

use serde_json::{Map, Value, json};

use super::spec::{SCHEMAS, reachable, refs_in};
use crate::model::kind;

fn r(name: &str) -> Value {
    json!({"$ref": format!("{SCHEMAS}{name}")})
}

fn int() -> Value {
    json!({"type": "integer"})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn object(props: Value, required: &[&str]) -> Value {
    let mut o = json!({"type": "object", "properties": props});
    // OpenAPI 3.0 wants at least one name in a `required`.
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    o
}

/// Each engine event type: what it means, and the schema of its `data`.
fn builtin() -> Vec<(&'static str, &'static str, Value)> {
    let counts = || r("Counts");
    let status = || r("ItemStatus");
    vec![
        (
            kind::JOB_CREATED,
            "A job was created.",
            object(
                json!({"plugin": string(), "operation": string(), "name": {"type": "string", "nullable": true}, "total": int()}),
                &["plugin", "operation", "total"],
            ),
        ),
        (
            kind::JOB_STARTED,
            "A job's items were queued.",
            object(
                json!({"queued": int(), "total": int()}),
                &["queued", "total"],
            ),
        ),
        (
            kind::JOB_PAUSED,
            "A job was paused: no more of its items start.",
            object(json!({"counts": counts()}), &["counts"]),
        ),
        (
            kind::JOB_RESUMED,
            "A paused job runs again, or a completed one has items sent back to the queue.",
            object(json!({"counts": counts(), "reason": string()}), &[]),
        ),
        (
            kind::JOB_COMPLETED,
            "Every item of a job finished.",
            object(
                json!({"counts": counts(), "results": object(json!({
                "total": int(), "succeeded": int(), "failed": int(), "needs_review": int(),
                "cancelled": int(), "duration_ms": int(), "resources_used": int()}),
                &["total", "succeeded", "failed", "needs_review", "cancelled", "duration_ms"]),
                "resources": {"type": "object", "additionalProperties": r("ResourceUse")}}),
                &["counts", "results"],
            ),
        ),
        (
            kind::JOB_CANCELLED,
            "A job was cancelled: its unfinished items were cancelled, running ones stopped.",
            object(
                json!({"cancelled": int(), "counts": counts(),
                       "stopped": {"type": "array", "items": string(),
                                   "description": "The running items that were stopped."}}),
                &["counts"],
            ),
        ),
        (
            kind::JOB_AWAITING_REVIEW,
            "Only items in `needs_review` are left: the job waits for an operator.",
            object(
                json!({"counts": counts(), "needs_review": int()}),
                &["counts", "needs_review"],
            ),
        ),
        (
            kind::JOB_UPDATED,
            "A running job's pool changed.",
            object(json!({"pool": r("PoolOptions")}), &["pool"]),
        ),
        (
            kind::JOB_DELETED,
            "A finished or never-started job was deleted with its items.",
            object(
                json!({"items": int(), "status": r("JobStatus"), "counts": counts()}),
                &["items", "status"],
            ),
        ),
        (
            kind::ITEM_STATUS_CHANGED,
            "An item moved from one status to another.",
            object(
                json!({"from": status(), "to": status(), "attempt": int(), "owner": string(),
                   "by": string(), "reason": {"type": "string", "nullable": true}}),
                &["from", "to", "attempt"],
            ),
        ),
        (
            kind::ITEM_STEP,
            "A running item reached a named step of its flow.",
            object(
                json!({"step": string(), "attempt": int()}),
                &["step", "attempt"],
            ),
        ),
        (
            kind::ITEM_PROGRESS,
            "A job's progress after one of its items moved.",
            object(
                json!({"done": int(), "succeeded": int(), "failed": int(), "total": int(),
                   "percentage": {"type": "number"}, "reference": {"type": "string", "nullable": true},
                   "resource": string(), "status": status()}),
                &["done", "succeeded", "failed", "total"],
            ),
        ),
        (
            kind::ITEM_FAILED,
            "An attempt of an item failed; `will_retry` says whether another follows.",
            object(
                json!({"error": object(json!({"kind": r("ErrorKind"), "message": string(),
                       // Stored as null by earlier versions.
                       "code": {"type": "string", "nullable": true},
                       "retry_after_ms": {"type": "integer", "nullable": true}}), &["kind", "message"]),
                   "attempt": int(), "will_retry": {"type": "boolean"}}),
                &["error", "attempt", "will_retry"],
            ),
        ),
        (
            kind::ITEM_LOG,
            "A line an item's flow logged.",
            object(
                json!({"level": string(), "message": string(), "attempt": int(), "ts": int()}),
                &["level", "message"],
            ),
        ),
        (
            kind::SESSION_OPENED,
            "A session logged in and is ready for calls.",
            object(
                json!({"plugin": string(), "account": string(), "operations": {"type": "array", "items": string()}}),
                &["plugin", "account"],
            ),
        ),
        (
            kind::SESSION_CLOSED,
            "A session closed; `reason` says why (`closed`, `idle`, `failed`, `lost`).",
            object(
                json!({"plugin": string(), "account": string(), "reason": string(), "message": string(),
                   "calls": int()}),
                &["plugin", "account", "reason"],
            ),
        ),
        (
            kind::SCHEDULE_FIRED,
            "A schedule created its run's job (`job_id`).",
            object(
                json!({"schedule_id": string(), "scheduled_at": int()}),
                &["schedule_id", "scheduled_at"],
            ),
        ),
        (
            kind::SCHEDULE_SKIPPED,
            "A schedule's instant created no job; `reason` says why.",
            object(
                json!({"schedule_id": string(), "scheduled_at": int(), "reason": string()}),
                &["schedule_id", "scheduled_at"],
            ),
        ),
        (
            kind::WEBHOOK_DISABLED,
            "A webhook subscription was turned off after failing too often.",
            object(
                json!({"webhook_id": string(), "url": string(), "reason": string()}),
                &["webhook_id"],
            ),
        ),
    ]
}

/// `job_created` → `JobCreatedEvent`.
fn schema_name(kind: &str) -> String {
    let mut name: String = kind
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect();
    name.push_str("Event");
    name
}

/// The fields every event has, around its type and data.
fn event_schema(kind: Option<&str>, description: &str, data: Value) -> Value {
    let kind_schema = match kind {
        Some(k) => json!({"type": "string", "enum": [k]}),
        None => {
            // Any type but the engine's own (and the feed's message types).
            let taken: Vec<&str> = kind::BUILTIN
                .iter()
                .chain(super::RESERVED_TYPES.iter())
                .copied()
                .collect();
            json!({"type": "string", "pattern": format!("^(?!({})$)[a-z0-9_.-]{{1,64}}$", taken.join("|"))})
        }
    };
    let mut props = json!({
        "seq": {"type": "integer", "minimum": 1, "description": "Global, gap-free, increasing from 1."},
        "ts": {"type": "integer", "description": "Milliseconds since the Unix epoch."},
        "tenant": string(),
        "type": kind_schema,
        "job_id": string(),
        "item_id": string(),
        "session_id": string(),
        "data": data,
    });
    if kind.is_none() {
        props["topic"] = json!({"type": "string", "pattern": "^[A-Za-z0-9_.:/-]{1,128}$", "description":
            "The publisher's topic (a branch, a team, a channel): subscriptions and `GET /api/v1/events` filter on it."});
    }
    json!({"type": "object", "description": description, "properties": props,
           "required": ["seq", "ts", "tenant", "type", "data"]})
}

/// Put the event schemas in an OpenAPI document and make `Event` their `oneOf`.
pub fn add_to_openapi(doc: &mut Value) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    let mut variants = Vec::new();
    for (kind, description, data) in builtin() {
        let name = schema_name(kind);
        schemas.insert(name.clone(), event_schema(Some(kind), description, data));
        variants.push(r(&name));
    }
    schemas.insert(
        "CustomEvent".into(),
        event_schema(
            None,
            "An event a client published (`POST /api/v1/events`).",
            json!({"description": "Whatever the publisher sent."}),
        ),
    );
    variants.push(r("CustomEvent"));
    schemas.insert(
        "Event".into(),
        json!({"description": "An event of the log and the feed: one of the engine's types, or a client's own.",
               "oneOf": variants}),
    );
}

/// OpenAPI 3.0's `nullable` in JSON Schema terms, for the AsyncAPI document.
fn to_json_schema(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(t) = map.get("type").cloned()
            {
                map.insert("type".into(), json!([t, "null"]));
            }
            map.values_mut().for_each(to_json_schema);
        }
        Value::Array(list) => list.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// The AsyncAPI document of the feed, with the schemas it uses taken from `openapi`
/// (the served OpenAPI document, events included).
pub fn asyncapi(openapi: &Value) -> Value {
    let all = &openapi["components"]["schemas"];
    let mut messages = Map::new();
    let mut message = |name: &str, summary: &str, payload: Value| {
        messages.insert(
            name.to_owned(),
            json!({"name": name, "title": name, "summary": summary, "contentType": "application/json",
                   "payload": payload}),
        );
    };
    message(
        "subscribe",
        "Follow the events matching these filters after `after` (empty filters: all of the key's tenant). \
         Sending it again replaces the subscription.",
        json!({"type": "object", "required": ["type"], "additionalProperties": false, "properties": {
            "type": {"type": "string", "const": "subscribe"},
            "jobs": {"type": "array", "items": string(), "description": "Only events of these jobs."},
            "types": {"type": "array", "items": string(), "description": "Only events of these types."},
            "topics": {"type": "array", "items": string(), "description": "Only custom events of these topics."},
            "after": {"type": "integer", "minimum": 0, "default": 0,
                      "description": "The last seq the client has: every matching event after it is sent, none twice."}}}),
    );
    message(
        "ping",
        "Ask for a pong (WebSocket pings are answered too).",
        json!({"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "const": "ping"}}}),
    );
    message(
        "subscribed",
        "The subscription starts after `after` (the client's, or the head if it was beyond); `head` is the newest seq then.",
        json!({"type": "object", "required": ["type", "after", "head"], "properties": {
            "type": {"type": "string", "const": "subscribed"}, "after": int(), "head": int()}}),
    );
    message(
        "pong",
        "The answer to a ping.",
        json!({"type": "object", "required": ["type"], "properties": {"type": {"type": "string", "const": "pong"}}}),
    );
    message(
        "lagged",
        "The client read too slowly to be served from memory: what follows comes from the store, from `next` on, \
         with nothing skipped.",
        json!({"type": "object", "required": ["type", "next"], "properties": {
            "type": {"type": "string", "const": "lagged"}, "next": int()}}),
    );
    message(
        "error",
        "A message the engine could not take, or a failure reading the log.",
        json!({"type": "object", "required": ["type", "message"], "properties": {
            "type": {"type": "string", "const": "error"}, "message": string()}}),
    );
    // Events on the feed carry `prev`, for a client to check that it missed nothing.
    let prev = json!({"type": "integer", "minimum": 0, "description":
        "The seq of the previous event of this subscription (no event matching it lies between `prev` and \
         `seq`); absent when the engine does not know it. A client that has seen up to S and gets an event \
         with `prev` > S has missed events: subscribe again with `after` = S."});
    let mut event_names = Vec::new();
    let mut wanted = Vec::new();
    for (kind, description, _) in builtin()
        .into_iter()
        .map(|(k, d, data)| (Some(k), d, data))
        .chain([(None, "An event a client published.", Value::Null)])
    {
        let name = kind.map_or("CustomEvent".to_owned(), schema_name);
        let mut schema = all[&name].clone();
        schema["properties"]["prev"] = prev.clone();
        refs_in(&schema, &mut wanted);
        let schema_ref = format!("Feed{name}");
        message(
            &name,
            description,
            json!({"$ref": format!("#/components/schemas/{schema_ref}")}),
        );
        event_names.push((name, schema_ref, schema));
    }
    let mut schemas: Map<String, Value> = match all.as_object() {
        Some(components) => reachable(components, wanted)
            .into_iter()
            .map(|name| {
                let s = all[&name].clone();
                (name, s)
            })
            .collect(),
        None => Map::new(),
    };
    for (_, schema_ref, schema) in &event_names {
        schemas.insert(schema_ref.clone(), schema.clone());
    }
    let mut doc = json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "faena feed",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live events of a faena engine over WebSocket. Authenticate with \
                `Authorization: Bearer <key>` or `?token=<key>` (browsers). A refused key completes the \
                handshake and closes at once with code 4401 (no key, or an unknown or revoked one), the \
                reason in words; over the key's rate or the feed's connection caps \
                the handshake itself is refused with HTTP 429. Events are JSON text messages, one per message; \
                their `seq` is global and increasing, `prev` links the events of one subscription.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "feed": {
                "address": "/ws",
                "description": "Every event of the key's tenant the subscription matches. Nothing is sent before a `subscribe`.",
                "messages": {},
            },
            "job": {
                "address": "/ws/jobs/{id}",
                "description": "One job's events, subscribed from the start (or `?after=`) without a message.",
                "parameters": {"id": {"description": "The job's id."}},
                "messages": {},
            },
        },
        "operations": {
            "subscribe": {"action": "send", "channel": {"$ref": "#/channels/feed"},
                          "summary": "Subscribe, or change the subscription.",
                          "messages": [{"$ref": "#/channels/feed/messages/subscribe"}]},
            "ping": {"action": "send", "channel": {"$ref": "#/channels/feed"},
                     "messages": [{"$ref": "#/channels/feed/messages/ping"}]},
            "receiveFeed": {"action": "receive", "channel": {"$ref": "#/channels/feed"},
                            "summary": "What the engine sends on the feed.",
                            "messages": []},
            "receiveJob": {"action": "receive", "channel": {"$ref": "#/channels/job"},
                           "summary": "What the engine sends on a job's feed.",
                           "messages": []},
        },
        "components": {"messages": messages, "schemas": schemas},
    });
    let received: Vec<String> = ["subscribed", "pong", "lagged", "error"]
        .iter()
        .map(|s| s.to_string())
        .chain(event_names.iter().map(|(n, _, _)| n.clone()))
        .collect();
    for (channel, names) in [
        (
            "feed",
            ["subscribe", "ping"]
                .iter()
                .map(|s| s.to_string())
                .chain(received.iter().cloned())
                .collect::<Vec<_>>(),
        ),
        ("job", received.clone()),
    ] {
        for name in names {
            doc["channels"][channel]["messages"][&name] =
                json!({"$ref": format!("#/components/messages/{name}")});
        }
    }
    for (op, channel) in [("receiveFeed", "feed"), ("receiveJob", "job")] {
        doc["operations"][op]["messages"] = received
            .iter()
            .map(|n| json!({"$ref": format!("#/channels/{channel}/messages/{n}")}))
            .collect();
    }
    to_json_schema(&mut doc);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_event_type_has_a_schema() {
        let described: Vec<&str> = builtin().iter().map(|(k, _, _)| *k).collect();
        for k in kind::BUILTIN {
            assert!(described.contains(&k), "{k} has no schema");
        }
        assert_eq!(schema_name("item_status_changed"), "ItemStatusChangedEvent");
    }
}

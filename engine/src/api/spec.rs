//! The OpenAPI document as served. poem-openapi generates it from the handlers; this
//! adds what the middleware does on every route (the bearer key, 401/403/429, 413/415,
//! 405 with `Allow`) and reshapes what client generators stumble on:
//! - a `$ref` wrapped in `allOf` to carry a description or default (generators such as
//!   openapi-python-client drop the whole model) becomes a plain `$ref`;
//! - unsigned and 64-bit integer formats (`uint32`, `int64`, …) become plain integers
//!   with `minimum: 0` where unsigned: no generator knows `uint*`, and `int64` turns
//!   into BigInt in TypeScript while every value the engine sends fits a double;
//! - a schema both sent and received is split: the response keeps every field it
//!   always has as required, the request (`…Input`) keeps its fields optional and
//!   says the default in words. A `default` keyword makes openapi-typescript treat a
//!   field as always present, which is true of a response and false of a request;
//! - the import's JSON form fields are typed as the objects they carry.

use serde_json::{Map, Value, json};

use crate::auth;

/// Request bodies parsed with `deny_unknown_fields`, by schema name.
const STRICT_BODIES: &[&str] = &[
    "NewJob",
    "NewItem",
    "JobOptions",
    "PoolOptions",
    "ClaimBody",
    "HeartbeatBody",
    "StepBody",
    "CompleteBody",
    "PublishBody",
    "NewKey",
    "TransitionRequest",
    "SecretValue",
    "OpenSession",
    "Invoke",
    "NewSchedule",
    "JobTemplate",
    "NewWebhookBody",
    "WorkerHello",
    "WorkerClaimBody",
    "LogBody",
    "ProgressBody",
    "ReleaseBody",
    "SessionPoll",
    "SessionReply",
];

pub(super) const SCHEMAS: &str = "#/components/schemas/";

/// The document clients read, from poem-openapi's `spec` (JSON text). `servers` is
/// left out: [`with_server`] fills it in per request.
pub fn document(spec: &str) -> Value {
    let mut doc: Value = serde_json::from_str(spec).expect("poem-openapi writes JSON");
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "An API key (`fk_…`). The first start writes an admin key to `<data dir>/admin.key`."}
    });
    doc["security"] = json!([{"bearer": []}]);
    if let Some(schemas) = doc["components"]["schemas"].as_object_mut() {
        for name in STRICT_BODIES {
            if let Some(schema) = schemas.get_mut(*name) {
                schema["additionalProperties"] = json!(false);
            }
        }
    }
    super::feed_doc::add_to_openapi(&mut doc);
    unwrap_ref_all_of(&mut doc);
    plain_integers(&mut doc);
    type_import_form(&mut doc);
    declare_checks(&mut doc);
    examples(&mut doc);
    split_requests_from_responses(&mut doc);
    middleware_answers(&mut doc);
    links(&mut doc);
    one_tag_each(&mut doc);
    doc
}

/// The document with a `servers` entry naming the engine as the client reached it
/// (the `Host` of the request, behind a proxy its `X-Forwarded-Proto`).
pub fn with_server(doc: &Value, host: Option<&str>, https: bool) -> String {
    let mut doc = doc.clone();
    let url = match host.filter(|h| valid_host(h)) {
        Some(h) => format!("{}://{h}", if https { "https" } else { "http" }),
        None => "/".to_owned(),
    };
    doc["servers"] = json!([{"url": url, "description": "This engine"}]);
    doc.to_string()
}

/// The AsyncAPI document of the feed, with a server naming the engine as the client
/// reached it.
pub fn asyncapi_with_server(doc: &Value, host: Option<&str>, https: bool) -> String {
    let mut doc = doc.clone();
    if let Some(h) = host.filter(|h| valid_host(h)) {
        doc["servers"] = json!({"engine": {"host": h, "protocol": if https { "wss" } else { "ws" },
                                          "description": "This engine"}});
    }
    doc.to_string()
}

/// A `Host` header fit to put in the document (no spaces, quotes or paths).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// `{"allOf": [{"$ref": X}], "description": …, "default": …}` → `{"$ref": X,
/// "description": …}`. The default goes: for a request it is said in the description
/// (see [`split_requests_from_responses`]), for a response the field is required.
fn unwrap_ref_all_of(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(parts)) = map.get("allOf")
                && let Some(reference) = parts.first().and_then(|p| p.get("$ref")).cloned()
                && parts[1..]
                    .iter()
                    .all(|p| p.as_object().is_some_and(|o| !o.contains_key("$ref")))
            {
                let default = map
                    .get("default")
                    .cloned()
                    .or_else(|| parts[1..].iter().find_map(|p| p.get("default")).cloned());
                let description = map.get("description").cloned().or_else(|| {
                    parts[1..]
                        .iter()
                        .find_map(|p| p.get("description"))
                        .cloned()
                });
                map.clear();
                map.insert("$ref".into(), reference);
                if let Some(d) = description {
                    map.insert("description".into(), d);
                }
                if let Some(d) = default {
                    map.insert("default".into(), d);
                }
                return;
            }
            for child in map.values_mut() {
                unwrap_ref_all_of(child);
            }
        }
        Value::Array(list) => list.iter_mut().for_each(unwrap_ref_all_of),
        _ => {}
    }
}

/// Integer formats generators map to plain numbers; bounds as integers.
fn plain_integers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("type").and_then(Value::as_str) == Some("integer") {
                let format = map.get("format").and_then(Value::as_str).map(str::to_owned);
                if let Some(f) = format.as_deref() {
                    if f.starts_with("uint") {
                        map.remove("format");
                        let below_zero = map
                            .get("minimum")
                            .and_then(Value::as_f64)
                            .is_none_or(|m| m < 0.0);
                        if below_zero {
                            map.insert("minimum".into(), json!(0));
                        }
                        if f == "uint64" && !map.contains_key("maximum") {
                            map.insert("maximum".into(), json!(u64::MAX));
                        }
                    } else if f == "int64" {
                        map.remove("format");
                        map.entry("minimum").or_insert(json!(i64::MIN));
                        map.entry("maximum").or_insert(json!(i64::MAX));
                    }
                }
                for bound in ["minimum", "maximum", "default"] {
                    if let Some(n) = map
                        .get(bound)
                        .filter(|v| v.is_f64())
                        .and_then(Value::as_f64)
                        && n.fract() == 0.0
                        && n.abs() < 9.0e15
                    {
                        map.insert(bound.into(), json!(n as i64));
                    }
                }
            }
            for child in map.values_mut() {
                plain_integers(child);
            }
        }
        Value::Array(list) => list.iter_mut().for_each(plain_integers),
        _ => {}
    }
}

/// The import's `options`, `mapping` and `input` parts carry JSON: declare them as the
/// objects they are, sent as `application/json` parts.
fn type_import_form(doc: &mut Value) {
    let media = &mut doc["paths"]["/api/v1/jobs/import"]["post"]["requestBody"]["content"]["multipart/form-data"];
    if media.is_null() {
        return;
    }
    // Parts other than these are refused.
    media["schema"]["additionalProperties"] = json!(false);
    let props = &mut media["schema"]["properties"];
    props["options"] = json!({"$ref": format!("{SCHEMAS}JobOptions"),
        "description": "Job options, as for `POST /api/v1/jobs`."});
    props["mapping"] = json!({"type": "object", "additionalProperties": {"type": "string"},
        "description": "Column renames, e.g. `{\"Codigo\": \"product_code\"}`."});
    props["input"] = json!({"type": "object",
        "description": "Fields every item's input gets, e.g. `{\"text\": \"…\"}`."});
    media["encoding"] = json!({
        "options": {"contentType": "application/json"},
        "mapping": {"contentType": "application/json"},
        "input": {"contentType": "application/json"},
    });
}

/// A name the engine takes for plugins, operations and event types.
const NAME: &str = "^[a-z0-9_.-]{1,64}$";

/// What the handlers check of request fields beyond their types, declared where the
/// handler's own check (with its own message) does not come from a poem validator.
/// The schemathesis test holds the two together: a value the document allows that
/// the engine refuses as malformed, or one it forbids that the engine takes, fails it.
fn checks() -> Vec<(&'static str, &'static str, Value)> {
    let name = || json!({"pattern": NAME});
    vec![
        ("NewJob", "plugin", name()),
        ("NewJob", "operation", name()),
        ("JobTemplate", "plugin", name()),
        ("JobTemplate", "operation", name()),
        ("OpenSession", "plugin", name()),
        ("OpenSession", "operation", name()),
        ("Invoke", "operation", name()),
        ("PublishBody", "type", name()),
        (
            "PublishBody",
            "topic",
            json!({"pattern": "^[A-Za-z0-9_.:/-]{1,128}$"}),
        ),
        ("NewItem", "reference", json!({"maxLength": 256})),
        ("NewKey", "name", json!({"minLength": 1, "maxLength": 100})),
        ("NewKey", "tenant", json!({"pattern": "^[a-z0-9_-]{1,64}$"})),
        (
            "NewSchedule",
            "name",
            json!({"minLength": 1, "maxLength": 200}),
        ),
        ("NewSchedule", "cron", json!({"minLength": 1})),
        ("NewSchedule", "timezone", json!({"minLength": 1})),
        (
            "OpenSession",
            "account",
            json!({"minLength": 1, "maxLength": 128}),
        ),
        ("TransitionRequest", "reason", json!({"maxLength": 2048})),
        (
            "NewWebhookBody",
            "url",
            json!({"format": "uri", "pattern": "^https?://"}),
        ),
        ("NewWebhookBody", "description", json!({"maxLength": 200})),
        (
            "SecretValue",
            "value",
            json!({"minLength": 1, "maxLength": 16384}),
        ),
    ]
}

fn declare_checks(doc: &mut Value) {
    let checks = checks();
    let schemas = &mut doc["components"]["schemas"];
    for (schema, field, extra) in &checks {
        for name in [schema.to_string(), format!("{schema}Input")] {
            if let Some(prop) = schemas
                .get_mut(&name)
                .and_then(|s| s.get_mut("properties"))
                .and_then(|p| p.get_mut(*field))
                .and_then(Value::as_object_mut)
            {
                for (k, v) in extra.as_object().into_iter().flatten() {
                    prop.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let form = &mut doc["paths"]["/api/v1/jobs/import"]["post"]["requestBody"]["content"]["multipart/form-data"]
        ["schema"]["properties"];
    for field in ["plugin", "operation"] {
        if let Some(prop) = form.get_mut(field).and_then(Value::as_object_mut) {
            prop.insert("pattern".into(), json!(NAME));
        }
    }
}

/// Examples of the bodies users write most, shown by Swagger UI and used first by
/// tools that generate requests. `noop` is a plugin every engine has.
fn examples(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let set = |schemas: &mut Value, name: &str, example: Value| {
        if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            s.insert("example".into(), example);
        }
    };
    set(
        schemas,
        "NewJob",
        json!({"plugin": "noop", "name": "orders of the week",
               "items": [{"input": {"order": "PO-1001"}, "reference": "PO-1001"},
                         {"input": {"order": "PO-1002"}, "reference": "PO-1002"}],
               "options": {"on_failure": "review", "max_attempts": 3}}),
    );
    set(
        schemas,
        "NewSchedule",
        json!({"name": "weekday mailbox check", "cron": "*/15 8-18 * * MON-FRI",
               "timezone": "America/Lima",
               "template": {"plugin": "noop", "items": [{"input": {}}]}}),
    );
    set(
        schemas,
        "PublishBody",
        json!({"type": "invoice_sent", "data": {"invoice": "F001-42"}}),
    );
    set(
        schemas,
        "NewKey",
        json!({"name": "branch dashboard", "role": "viewer"}),
    );
}

/// Names of the component schemas `v` refers to, directly.
pub(super) fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix(SCHEMAS)
            {
                out.push(name.to_owned());
            }
            map.values().for_each(|c| refs_in(c, out));
        }
        Value::Array(list) => list.iter().for_each(|c| refs_in(c, out)),
        _ => {}
    }
}

/// Every schema reachable from `roots`, through the components.
pub(super) fn reachable(schemas: &Map<String, Value>, roots: Vec<String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut todo = roots;
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        if let Some(s) = schemas.get(&name) {
            refs_in(s, &mut todo);
        }
        seen.push(name);
    }
    seen
}

fn rename_refs(v: &mut Value, renames: &[(String, String)]) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix(SCHEMAS)
                && let Some((_, to)) = renames.iter().find(|(from, _)| from == name)
            {
                *r = format!("{SCHEMAS}{to}");
            }
            map.values_mut().for_each(|c| rename_refs(c, renames));
        }
        Value::Array(list) => list.iter_mut().for_each(|c| rename_refs(c, renames)),
        _ => {}
    }
}

/// A request-side schema: fields stay optional, and a default is said in words.
fn as_request(schema: &mut Value) {
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for prop in props.values_mut() {
        let Some(p) = prop.as_object_mut() else {
            continue;
        };
        if let Some(default) = p.remove("default") {
            let shown = match &default {
                Value::Object(o) if o.is_empty() => None,
                Value::Object(_) => None,
                Value::Array(a) if a.is_empty() => Some("none".to_owned()),
                Value::Null => None,
                other => Some(format!("`{other}`")),
            };
            if let Some(shown) = shown {
                let text = p
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .trim_end()
                    .to_owned();
                let text = if text.is_empty() {
                    format!("Default {shown}.")
                } else if text.to_lowercase().contains("default") {
                    text
                } else {
                    format!("{text} Default {shown}.")
                };
                p.insert("description".into(), json!(text));
            }
        }
    }
}

/// A response-side schema: a field with a default is always sent, so it is required.
fn as_response(schema: &mut Value) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let always: Vec<String> = props
        .iter()
        .filter(|(_, p)| p.get("default").is_some())
        .map(|(k, _)| k.clone())
        .collect();
    if always.is_empty() {
        return;
    }
    let required = schema
        .as_object_mut()
        .expect("a schema with properties is an object")
        .entry("required")
        .or_insert_with(|| json!([]));
    if let Some(list) = required.as_array_mut() {
        for name in always {
            if !list.iter().any(|r| r == &json!(name)) {
                list.push(json!(name));
            }
        }
    }
}

/// See the module's comment: schemas used on both sides get a request twin
/// (`…Input`), request bodies refer to the twins.
fn split_requests_from_responses(doc: &mut Value) {
    let mut request_roots = Vec::new();
    let mut response_roots = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for ops in paths.values() {
            for op in ops.as_object().into_iter().flat_map(|o| o.values()) {
                if let Some(body) = op.get("requestBody") {
                    refs_in(body, &mut request_roots);
                }
                if let Some(params) = op.get("parameters") {
                    refs_in(params, &mut request_roots);
                }
                if let Some(responses) = op.get("responses") {
                    refs_in(responses, &mut response_roots);
                }
            }
        }
    }
    let Some(schemas) = doc["components"]["schemas"].as_object_mut() else {
        return;
    };
    let requests = reachable(schemas, request_roots);
    let responses = reachable(schemas, response_roots);
    // Only object schemas with defaults differ between the two sides; enums and the
    // rest are shared as they are.
    let differs = |name: &String| {
        schemas
            .get(name)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .is_some_and(|p| p.values().any(|f| f.get("default").is_some()))
    };
    let both: Vec<String> = requests
        .iter()
        .filter(|n| responses.contains(n) && differs(n))
        .cloned()
        .collect();
    // A twin is needed for a shared schema with defaults, and for every request-side
    // schema on the way to one (its references change).
    let mut twins: Vec<String> = both.clone();
    loop {
        let more: Vec<String> = requests
            .iter()
            .filter(|n| responses.contains(n) && !twins.contains(n))
            .filter(|n| {
                let mut r = Vec::new();
                refs_in(&schemas[n.as_str()], &mut r);
                r.iter().any(|x| twins.contains(x))
            })
            .cloned()
            .collect();
        if more.is_empty() {
            break;
        }
        twins.extend(more);
    }
    let renames: Vec<(String, String)> = twins
        .iter()
        .map(|n| (n.clone(), format!("{n}Input")))
        .collect();
    for (from, to) in &renames {
        let mut twin = schemas[from.as_str()].clone();
        rename_refs(&mut twin, &renames);
        if let Some(title) = twin.get_mut("title") {
            *title = json!(to);
        }
        schemas.insert(to.clone(), twin);
    }
    for name in &requests {
        let name = renames
            .iter()
            .find(|(f, _)| f == name)
            .map_or(name.clone(), |(_, t)| t.clone());
        if let Some(s) = schemas.get_mut(&name) {
            if !twins.iter().any(|t| format!("{t}Input") == name) {
                rename_refs(s, &renames);
            }
            as_request(s);
        }
    }
    for name in &responses {
        if let Some(s) = schemas.get_mut(name) {
            as_response(s);
        }
    }
    // Request bodies and parameters refer to the twins.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for ops in paths.values_mut() {
            for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                if let Some(body) = op.get_mut("requestBody") {
                    rename_refs(body, &renames);
                    if let Some(schema) = body.pointer_mut("/content/multipart~1form-data/schema") {
                        as_request(schema);
                    }
                }
            }
        }
    }
}

/// What the middleware answers on every route: 401/403/429 of
/// [`auth::authenticate`], 413/415 for a body too large or of the wrong type.
fn middleware_answers(doc: &mut Value) {
    let error = |what: &str| {
        json!({"description": what,
               "content": {"application/json; charset=utf-8": {"schema": {"$ref": format!("{SCHEMAS}ErrorBody")}}}})
    };
    let mut limited = error("Over the key's rate limit; retry after `Retry-After` seconds.");
    limited["headers"] = json!({"Retry-After": {"schema": {"type": "integer", "minimum": 0}, "description": "Seconds to wait."}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        for (method, op) in ops.as_object_mut().into_iter().flatten() {
            let m = poem::http::Method::from_bytes(method.to_uppercase().as_bytes());
            let Ok(m) = m else { continue };
            if auth::required_role(&m, path).is_none() {
                op["security"] = json!([]);
                continue;
            }
            let has_body = op.get("requestBody").is_some();
            let responses = &mut op["responses"];
            if has_body {
                responses["413"] = error("The body is larger than the engine accepts.");
                responses["415"] =
                    error("The body's content type is not one this operation takes.");
            }
            responses["401"] = error("No API key, or an unknown or revoked one.");
            responses["403"] = error("The key's role does not allow this.");
            responses["429"] = limited.clone();
        }
    }
}

/// The served document, for the request extractors.
#[derive(Clone)]
pub struct Served(pub std::sync::Arc<Value>);

impl Served {
    /// An error naming the first member of `value` that is `null` where the request
    /// schema `name` (its `…Input` twin if it has one) does not allow null.
    pub fn refuse_nulls(&self, name: &str, value: &Value) -> Result<(), String> {
        let schemas = &self.0["components"]["schemas"];
        let schema = match schemas.get(format!("{name}Input")) {
            Some(twin) => twin,
            None => &schemas[name],
        };
        nulls(schemas, schema, value, "", 0)
    }
}

fn nulls(
    schemas: &Value,
    schema: &Value,
    value: &Value,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > 32 {
        return Ok(());
    }
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &schemas[r.trim_start_matches(SCHEMAS)],
        None => schema,
    };
    let at = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::Object(members) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, member) in members {
                let Some(member_schema) = props.and_then(|p| p.get(key)).or(extra) else {
                    continue;
                };
                let typed =
                    member_schema.get("type").is_some() || member_schema.get("$ref").is_some();
                let nullable = member_schema.get("nullable") == Some(&Value::Bool(true));
                if member.is_null() && typed && !nullable {
                    return Err(format!(
                        "{}: null is not allowed here; leave the field out instead",
                        at(key)
                    ));
                }
                nulls(schemas, member_schema, member, &at(key), depth + 1)?;
            }
        }
        Value::Array(list) => {
            if let Some(items) = schema.get("items") {
                for (i, v) in list.iter().enumerate() {
                    nulls(schemas, items, v, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// OpenAPI links from what creates a record to what reads and changes it: generated
/// clients and tools that follow them (schemathesis' stateful phase among them) go
/// from `create_job` to `get_job` with the id it answered.
fn links(doc: &mut Value) {
    // (creating operation's path, its statuses, the path prefix it leads to, the id's
    // place in its answer)
    let from: [(&str, &str, &[&str], &str, &str); 7] = [
        ("/api/v1/jobs", "post", &["201"], "/api/v1/jobs/{id}", "/id"),
        (
            "/api/v1/jobs/import",
            "post",
            &["201"],
            "/api/v1/jobs/{id}",
            "/id",
        ),
        (
            "/api/v1/schedules",
            "post",
            &["201"],
            "/api/v1/schedules/{id}",
            "/id",
        ),
        (
            "/api/v1/webhooks",
            "post",
            &["201"],
            "/api/v1/webhooks/{id}",
            "/webhook/id",
        ),
        (
            "/api/v1/sessions",
            "post",
            &["200", "201"],
            "/api/v1/sessions/{id}",
            "/id",
        ),
        (
            "/api/v1/keys",
            "post",
            &["201"],
            "/api/v1/keys/{id}",
            "/key/id",
        ),
        (
            "/api/v1/jobs/{id}/items",
            "get",
            &["200"],
            "/api/v1/items/{id}",
            "/items/0/id",
        ),
    ];
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, method, statuses, prefix, pointer) in from {
        let targets: Vec<(String, String)> = paths
            .iter()
            .filter(|(p, _)| *p == prefix || p.starts_with(&format!("{prefix}/")))
            .flat_map(|(_, ops)| ops.as_object().into_iter().flat_map(|o| o.values()))
            .filter_map(|op| op.get("operationId")?.as_str().map(str::to_owned))
            .map(|id| (id, format!("$response.body#{pointer}")))
            .collect();
        let Some(op) = paths.get_mut(path).and_then(|o| o.get_mut(method)) else {
            continue;
        };
        for status in statuses {
            let Some(response) = op["responses"].get_mut(*status) else {
                continue;
            };
            let links: Map<String, Value> = targets
                .iter()
                .map(|(target, expr)| {
                    (
                        target.clone(),
                        json!({"operationId": target, "parameters": {"id": expr}}),
                    )
                })
                .collect();
            response["links"] = Value::Object(links);
        }
    }
}

/// An operation's own tag, not also its group's: generators file an operation under
/// its first tag, and secrets belong under Secrets, an item's screenshots under Items.
fn one_tag_each(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|ops| ops.values_mut())
    {
        if let Some(tags) = op.get_mut("tags").and_then(Value::as_array_mut)
            && tags.len() > 1
        {
            let own = tags.pop().expect("more than one");
            *tags = vec![own];
        }
    }
}

/// The methods the document has for a request path, for `Allow` on a 405.
pub fn allowed_methods(doc: &Value, path: &str) -> Option<String> {
    let paths = doc["paths"].as_object()?;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let (_, ops) = paths.iter().find(|(template, _)| {
        let t: Vec<&str> = template.split('/').collect();
        t.len() == segments.len()
            && t.iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
    })?;
    let mut methods: Vec<String> = ops.as_object()?.keys().map(|m| m.to_uppercase()).collect();
    if methods.iter().any(|m| m == "GET") {
        methods.push("HEAD".into());
    }
    methods.sort();
    Some(methods.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enum_ref_in_all_of_becomes_a_plain_ref() {
        let mut v = json!({"properties": {"to": {"allOf": [{"$ref": "#/components/schemas/S"},
            {"description": "d", "default": "x"}], "description": "d"}}});
        unwrap_ref_all_of(&mut v);
        assert_eq!(
            v["properties"]["to"],
            json!({"$ref": "#/components/schemas/S", "description": "d", "default": "x"})
        );
    }

    #[test]
    fn unsigned_formats_become_a_minimum() {
        let mut v = json!({"a": {"type": "integer", "format": "uint32", "maximum": 10.0},
                           "b": {"type": "integer", "format": "int64"},
                           "c": {"type": "integer", "format": "int32", "minimum": -5.0}});
        plain_integers(&mut v);
        assert_eq!(
            v["a"],
            json!({"type": "integer", "minimum": 0, "maximum": 10})
        );
        assert_eq!(
            v["b"],
            json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX})
        );
        assert_eq!(
            v["c"],
            json!({"type": "integer", "format": "int32", "minimum": -5})
        );
    }

    #[test]
    fn allow_lists_the_methods_of_the_matching_path() {
        let doc = json!({"paths": {"/api/v1/jobs/{id}": {"get": {}, "delete": {}},
                                   "/api/v1/jobs": {"get": {}, "post": {}}}});
        assert_eq!(
            allowed_methods(&doc, "/api/v1/jobs/j1").as_deref(),
            Some("DELETE, GET, HEAD")
        );
        assert_eq!(
            allowed_methods(&doc, "/api/v1/jobs").as_deref(),
            Some("GET, HEAD, POST")
        );
        assert_eq!(allowed_methods(&doc, "/api/v1/nope"), None);
    }

    #[test]
    fn a_host_header_with_a_path_or_quote_is_not_put_in_the_document() {
        assert!(valid_host("127.0.0.1:8080"));
        assert!(valid_host("[::1]:8080"));
        assert!(!valid_host("evil\"/x"));
        assert!(!valid_host(""));
    }
}

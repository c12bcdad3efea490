//! whatsapp: a bulk-messaging gateway's HTTP JSON API, like the ones these teams send
//! through. `POST /whatsapp/v1/messages` with a bearer token and
//! `{"device", "to", "text"}` sends a text through one of the account's devices (a
//! phone: one message at a time, `latency_ms` each). Invalid numbers are refused,
//! devices can be slow or rate limited (429 with `Retry-After`), and a share of
//! requests fail with 503 before anything is sent. An `Idempotency-Key` header makes a
//! repeated request answer the first one's message instead of sending again.
//!
//! `GET /whatsapp/admin/sent` shows what was sent, per phone and per device, so tests
//! can prove no phone got the message twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poem::http::{HeaderMap, StatusCode};
use poem::web::{Data, Json};
use poem::{EndpointExt, Response, get, handler, post};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub const TOKEN: &str = "wa-demo-token";
/// Devices `dev-1` to `dev-{DEVICES}` belong to the account.
pub const DEVICES: u32 = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WaKnobs {
    /// Time one device takes to send a message, in milliseconds.
    pub latency_ms: u64,
    /// Devices slower than that: device → milliseconds per message.
    pub slow: BTreeMap<String, u64>,
    /// Rate-limited devices: device → messages per second it accepts.
    pub rate_per_sec: BTreeMap<String, u32>,
    /// Share of requests (0.0–1.0) answered 503 before sending.
    pub fail_rate: f64,
}

impl Default for WaKnobs {
    fn default() -> Self {
        WaKnobs {
            latency_ms: 5,
            slow: BTreeMap::new(),
            rate_per_sec: BTreeMap::new(),
            fail_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    pub id: String,
    pub device: String,
    pub to: String,
    pub text: String,
}

#[derive(Default)]
struct State {
    knobs: WaKnobs,
    sent: Vec<Sent>,
    by_key: HashMap<String, usize>,
    /// Per device, when its last accepted messages started (for the rate limit).
    recent: HashMap<String, Vec<Instant>>,
    rate_limited: u64,
}

pub struct Whatsapp {
    state: Mutex<State>,
    /// One message at a time per device.
    devices: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Whatsapp {
    pub fn new() -> Arc<Whatsapp> {
        Arc::new(Whatsapp {
            state: Mutex::default(),
            devices: Mutex::default(),
        })
    }

    pub fn set_knobs(&self, knobs: WaKnobs) {
        self.state.lock().unwrap().knobs = knobs;
    }

    /// Messages sent, per phone.
    pub fn per_phone(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for s in &self.state.lock().unwrap().sent {
            *out.entry(s.to.clone()).or_default() += 1;
        }
        out
    }

    /// Messages sent, per device.
    pub fn per_device(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for s in &self.state.lock().unwrap().sent {
            *out.entry(s.device.clone()).or_default() += 1;
        }
        out
    }

    /// Requests refused with 429.
    pub fn rate_limited(&self) -> u64 {
        self.state.lock().unwrap().rate_limited
    }

    pub fn reset(&self) {
        *self.state.lock().unwrap() = State::default();
    }
}

/// Whether `to` is a Peruvian mobile number: `+51` and nine digits starting with 9.
pub fn valid_phone(to: &str) -> bool {
    to.strip_prefix("+51").is_some_and(|n| {
        n.len() == 9 && n.starts_with('9') && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Valid numbers ending in `000` have no WhatsApp account.
pub fn on_whatsapp(to: &str) -> bool {
    !to.ends_with("000")
}

pub fn routes(w: Arc<Whatsapp>) -> poem::endpoint::BoxEndpoint<'static> {
    poem::Route::new()
        .at("/v1/messages", post(send))
        .at("/admin/knobs", post(set_knobs).get(get_knobs))
        .at("/admin/sent", get(sent))
        .at("/admin/reset", post(reset))
        .data(w)
        .boxed()
}

fn answer(status: StatusCode, body: Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

#[derive(Deserialize)]
struct Message {
    device: String,
    to: String,
    text: String,
}

#[handler]
async fn send(Data(w): Data<&Arc<Whatsapp>>, headers: &HeaderMap, body: poem::Body) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": "unauthorized", "message": "a valid bearer token is required"}),
        );
    }
    let bytes = body.into_vec().await.unwrap_or_default();
    let msg: Message = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": "bad_request", "message": e.to_string()}),
            );
        }
    };
    let device_ok = msg
        .device
        .strip_prefix("dev-")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| (1..=DEVICES).contains(&n));
    if !device_ok {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown_device", "message": format!("device `{}` is not on this account", msg.device)}),
        );
    }
    if !valid_phone(&msg.to) {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_number", "message": format!("`{}` is not a valid mobile number", msg.to)}),
        );
    }
    if msg.text.is_empty() || msg.text.len() > 4096 {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_text", "message": "text must be 1-4096 bytes"}),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (latency, fail) = {
        let mut st = w.state.lock().unwrap();
        if let Some(i) = key.as_ref().and_then(|k| st.by_key.get(k)) {
            let s = &st.sent[*i];
            return answer(
                StatusCode::OK,
                json!({"id": s.id, "status": "sent", "device": s.device, "duplicate": true}),
            );
        }
        if let Some(limit) = st.knobs.rate_per_sec.get(&msg.device).copied() {
            let now = Instant::now();
            let recent = st.recent.entry(msg.device.clone()).or_default();
            recent.retain(|t| now.duration_since(*t) < Duration::from_secs(1));
            if recent.len() as u32 >= limit {
                st.rate_limited += 1;
                let mut r = answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "rate_limited", "message": format!("device `{}` accepts {limit} messages a second", msg.device)}),
                );
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                return r;
            }
            recent.push(now);
        }
        let latency = st
            .knobs
            .slow
            .get(&msg.device)
            .copied()
            .unwrap_or(st.knobs.latency_ms);
        let fail =
            st.knobs.fail_rate > 0.0 && rand::rng().random_bool(st.knobs.fail_rate.clamp(0.0, 1.0));
        (latency, fail)
    };
    if fail {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable", "message": "the gateway is busy, try again"}),
        );
    }
    if !on_whatsapp(&msg.to) {
        return answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error": "not_on_whatsapp", "message": format!("`{}` has no WhatsApp account", msg.to)}),
        );
    }
    let lock = w
        .devices
        .lock()
        .unwrap()
        .entry(msg.device.clone())
        .or_default()
        .clone();
    let _device = lock.lock().await;
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let mut st = w.state.lock().unwrap();
    if let Some(i) = key.as_ref().and_then(|k| st.by_key.get(k)) {
        let s = &st.sent[*i];
        return answer(
            StatusCode::OK,
            json!({"id": s.id, "status": "sent", "device": s.device, "duplicate": true}),
        );
    }
    let id = format!("wamid.{:016x}", rand::rng().random::<u64>());
    st.sent.push(Sent {
        id: id.clone(),
        device: msg.device.clone(),
        to: msg.to.clone(),
        text: msg.text,
    });
    if let Some(k) = key {
        let i = st.sent.len() - 1;
        st.by_key.insert(k, i);
    }
    answer(
        StatusCode::OK,
        json!({"id": id, "status": "sent", "device": msg.device}),
    )
}

#[handler]
async fn set_knobs(Data(w): Data<&Arc<Whatsapp>>, body: poem::Body) -> Response {
    let bytes = body.into_vec().await.unwrap_or_default();
    match serde_json::from_slice::<WaKnobs>(&bytes) {
        Ok(k) => {
            w.set_knobs(k.clone());
            answer(StatusCode::OK, json!(k))
        }
        Err(e) => answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "bad_request", "message": format!("knobs: {e}")}),
        ),
    }
}

#[handler]
fn get_knobs(Data(w): Data<&Arc<Whatsapp>>) -> Json<WaKnobs> {
    Json(w.state.lock().unwrap().knobs.clone())
}

#[handler]
fn sent(Data(w): Data<&Arc<Whatsapp>>) -> Json<Value> {
    let total = w.state.lock().unwrap().sent.len();
    Json(json!({
        "total": total,
        "phones": w.per_phone(),
        "devices": w.per_device(),
        "rate_limited": w.rate_limited(),
    }))
}

#[handler]
fn reset(Data(w): Data<&Arc<Whatsapp>>) -> StatusCode {
    w.reset();
    StatusCode::NO_CONTENT
}

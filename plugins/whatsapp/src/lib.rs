//! whatsapp: send one text message through a bulk-messaging gateway's HTTP API.
//!
//! Runs as a job whose items are the phones and whose pool is the account's sending
//! devices: each item gets one device (`Context::resource`) and sends through it. The
//! gateway's answers map to faena's outcomes: an invalid number or one without
//! WhatsApp is a business error (never retried); 429 is `rate_limited` (that device
//! rests, another one takes the phone); 5xx and timeouts are retried. The item's
//! idempotency key goes as the `Idempotency-Key` header, so a retry after a lost
//! answer never sends twice.
//!
//! Setting: `api_url` (e.g. `http://127.0.0.1:8090/whatsapp`). Secret: `whatsapp_token`.

use faena_plugin_sdk::serde_json::{self, Value, json};
use faena_plugin_sdk::{
    Context, Error, Info, Operation, Plugin, Result, export, http, required_setting, secret,
};

struct Whatsapp;

fn send(input: &Value, ctx: &Context) -> Result<Value> {
    let phone = input["phone"]
        .as_str()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            Error::business("input.phone: a phone number is required").code("bad-input")
        })?;
    let text = input["text"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::business("input.text: the message text is required").code("bad-input")
        })?;
    let device = ctx.resource.as_deref().ok_or_else(|| {
        Error::business(
            "no sending device: give the job a pool of devices (options.pool.resources)",
        )
        .code("no-device")
    })?;
    let base = required_setting("api_url")?;
    let token = secret("whatsapp_token")?;
    let auth = format!("Bearer {token}");
    let resp = http::post_json(
        &format!("{}/v1/messages", base.trim_end_matches('/')),
        &[
            ("authorization", &auth),
            ("idempotency-key", &ctx.idempotency_key),
        ],
        &json!({"device": device, "to": phone, "text": text}),
    )?;
    let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or("").to_owned();
    let code = body["error"].as_str().unwrap_or("").to_owned();
    match resp.status {
        200..=299 => Ok(json!({
            "phone": phone,
            "device": device,
            "message_id": body["id"],
            "duplicate": body["duplicate"].as_bool().unwrap_or(false),
        })),
        429 => {
            let secs = resp
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            Err(
                Error::application(format!("device {device} is rate limited: {message}"))
                    .code("rate_limited")
                    .retry_after_ms(secs * 1000),
            )
        }
        400 | 422 => Err(
            Error::business(format!("{phone}: {message}")).code(if code.is_empty() {
                "refused"
            } else {
                &code
            }),
        ),
        401 | 403 => Err(
            Error::business(format!("the gateway refused the token: {message}"))
                .code("unauthorized"),
        ),
        s => Err(
            Error::application(format!("the gateway answered {s}: {message}")).code(
                if code.is_empty() {
                    "gateway-error"
                } else {
                    &code
                },
            ),
        ),
    }
}

impl Plugin for Whatsapp {
    fn info() -> Info {
        Info::new(
            "whatsapp",
            env!("CARGO_PKG_VERSION"),
            "Sends text messages through a WhatsApp bulk-messaging gateway, one phone per item, spread over the account's devices",
        )
        .operation(
            Operation::new(
                "send",
                "Send `text` to `phone` through the device the pool assigns",
                json!({
                    "type": "object",
                    "required": ["phone", "text"],
                    "properties": {
                        "phone": {"type": "string", "description": "E.164, e.g. +51987654321"},
                        "text": {"type": "string", "minLength": 1, "maxLength": 4096}
                    },
                    "x-faena-import": {"required": ["phone"], "reference": "phone"}
                }),
            )
            .secret("whatsapp_token"),
        )
    }

    fn run(operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        match operation {
            "send" => send(&input, ctx),
            other => Err(Error::business(format!(
                "whatsapp has no operation `{other}`"
            ))),
        }
    }
}

export!(Whatsapp);

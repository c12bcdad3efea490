//! ultimus: submit one purchase order (OC) into the purchase-request workflow portal.
//!
//! Log in, fill the purchase-request form (order number, supplier tax id, cost centre,
//! currency, description, lines), send it and capture the request and incident ids.
//! A refusal by the portal (an unknown supplier, say) is a business error: with the
//! job's `on_failure: review` the item waits in `needs_review` with the portal's
//! message until an operator fixes it and queues it again. Every retry first looks the
//! order number up in the portal, so an order is never sent twice.
//!
//! Settings: `portal_url`. Secrets: `ultimus_user`, `ultimus_password`.

use faena_plugin_sdk::serde_json::{Value, json};
use faena_plugin_sdk::{
    Context, Error, Info, Operation, Page, Plugin, Result, export, required_setting, secret, step,
};

const PAGE_MS: u32 = 20_000;
/// Lines the portal's form has.
const MAX_LINES: usize = 10;

struct Ultimus;

struct Line {
    description: String,
    quantity: String,
    unit_price: String,
}

struct PurchaseOrder {
    number: String,
    supplier: String,
    cost_centre: String,
    currency: String,
    description: String,
    lines: Vec<Line>,
}

/// A field as text: strings as they are, numbers written out.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse(input: &Value) -> Result<PurchaseOrder> {
    let bad = |m: String| Error::business(m).code("bad-input");
    let field =
        |name: &str| text(&input[name]).ok_or_else(|| bad(format!("input.{name}: is required")));
    let lines = input["lines"]
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("input.lines: at least one line is required".into()))?;
    if lines.len() > MAX_LINES {
        return Err(bad(format!(
            "input.lines: the portal takes at most {MAX_LINES} lines, this order has {}",
            lines.len()
        )));
    }
    let lines = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let get = |name: &str| {
                text(&l[name]).ok_or_else(|| bad(format!("input.lines[{i}].{name}: is required")))
            };
            Ok(Line {
                description: get("description")?,
                quantity: get("quantity")?,
                unit_price: get("unit_price")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PurchaseOrder {
        number: field("order_number")?,
        supplier: field("supplier_ruc")?,
        cost_centre: field("cost_center")?,
        currency: text(&input["currency"]).unwrap_or_else(|| "PEN".into()),
        description: text(&input["description"]).unwrap_or_default(),
        lines,
    })
}

/// Which page the portal shows, against what the flow expects.
fn arrive(page: &Page, expected: &[&str]) -> Result<String> {
    let view = page.evaluate("document.body ? (document.body.dataset.page || '') : ''")?;
    let view = view.as_str().unwrap_or("").to_owned();
    if expected.contains(&view.as_str()) {
        return Ok(view);
    }
    let message = page.text("#error").unwrap_or_default();
    Err(match view.as_str() {
        "login" => Error::application("the portal session expired").code("session-expired"),
        "unavailable" => Error::application(format!("the portal is unavailable: {message}"))
            .code("unavailable")
            .retry_after_ms(2_000),
        _ => Error::application(format!(
            "expected the {} page, the portal shows `{view}`: {message}",
            expected.join(" or ")
        ))
        .code("unexpected-page"),
    })
}

fn submit(po: &PurchaseOrder, ctx: &Context) -> Result<Value> {
    let base = required_setting("portal_url")?;
    let base = base.trim_end_matches('/');
    let user = secret("ultimus_user")?;
    let password = secret("ultimus_password")?;
    let page = Page::open()?;
    page.goto(&format!("{base}/ultimus/login"))?;
    arrive(&page, &["login"])?;
    page.fill_all(&[("#username", &user), ("#password", &password)])?;
    page.click_and_wait("#login", PAGE_MS)?;
    if arrive(&page, &["request-form", "login"])? == "login" {
        let why = page.text("#error").unwrap_or_default();
        return Err(
            Error::business(format!("the portal refused the login: {why}")).code("login-refused"),
        );
    }
    step("logged_in", None)?;

    // An earlier attempt may have got through. Every retry looks: the last checkpoint
    // alone cannot tell, since a retry that failed before `sending` records earlier
    // steps after it.
    if ctx.attempt > 1 {
        page.goto(&format!("{base}/ultimus/requests?reference={}", po.number))?;
        arrive(&page, &["requests"])?;
        let found = page.evaluate(&format!(
            "(() => {{ const r = [...document.querySelectorAll('#requests tr[data-reference]')].find(r => r.dataset.reference === {});
               return r ? [r.querySelector('.request-id').textContent, r.querySelector('.incident-id').textContent] : null; }})()",
            faena_plugin_sdk::serde_json::to_string(&po.number).expect("strings serialize")
        ))?;
        if let Some([request, incident]) = found.as_array().map(Vec::as_slice) {
            let (request, incident) = (
                text(request).unwrap_or_default(),
                text(incident).unwrap_or_default(),
            );
            step("submitted", Some(&request))?;
            return Ok(json!({
                "order_number": po.number,
                "request_id": request,
                "incident_id": incident,
                "recovered": true,
            }));
        }
        page.goto(&format!("{base}/ultimus/requests/new"))?;
        arrive(&page, &["request-form"])?;
    }

    page.fill_all(&[
        ("#order-number", &po.number),
        ("#supplier-tax-id", &po.supplier),
        ("#description", &po.description),
    ])?;
    page.select("#cost-center", &po.cost_centre)
        .map_err(|e| e.context("cost centre"))?;
    page.select("#currency", &po.currency)
        .map_err(|e| e.context("currency"))?;
    for (i, line) in po.lines.iter().enumerate() {
        let n = i + 1;
        page.fill_all(&[
            (&format!("#line-{n}-description"), &line.description),
            (&format!("#line-{n}-quantity"), &line.quantity),
            (&format!("#line-{n}-unit-price"), &line.unit_price),
        ])?;
    }
    step("sending", None)?;
    page.click_and_wait("#submit", PAGE_MS)?;
    if arrive(&page, &["confirmation", "request-form"])? == "request-form" {
        let why = page.text("#error")?;
        let code = if why.contains("Unknown supplier") {
            "unknown-supplier"
        } else {
            "refused"
        };
        return Err(Error::business(why).code(code));
    }
    let request = page.text("#request-id")?.trim().to_owned();
    let incident = page.text("#incident-id")?.trim().to_owned();
    let total = page.text("#total")?.trim().to_owned();
    step("submitted", Some(&request))?;
    Ok(json!({
        "order_number": po.number,
        "request_id": request,
        "incident_id": incident,
        "total": total,
        "currency": po.currency,
        "recovered": false,
    }))
}

impl Plugin for Ultimus {
    fn info() -> Info {
        Info::new(
            "ultimus",
            env!("CARGO_PKG_VERSION"),
            "Submits purchase orders into the ultimus purchase-request workflow",
        )
        .operation(
            Operation::new(
                "run",
                "Submit one purchase order; returns the request and incident ids",
                json!({
                    "type": "object",
                    "required": ["order_number", "supplier_ruc", "cost_center", "lines"],
                    "properties": {
                        "order_number": {"type": "string", "minLength": 1},
                        "supplier_ruc": {"type": "string", "pattern": "^[0-9]{11}$"},
                        "cost_center": {"type": "string"},
                        "currency": {"type": "string", "enum": ["PEN", "USD"]},
                        "description": {"type": "string"},
                        "lines": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_LINES,
                            "items": {
                                "type": "object",
                                "required": ["description", "quantity", "unit_price"],
                                "properties": {
                                    "description": {"type": "string"},
                                    "quantity": {"type": ["number", "string"]},
                                    "unit_price": {"type": ["number", "string"]}
                                }
                            }
                        }
                    }
                }),
            )
            .browser()
            .secret("ultimus_user")
            .secret("ultimus_password"),
        )
    }

    fn run(operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        match operation {
            "run" => submit(&parse(&input)?, ctx),
            other => Err(Error::business(format!(
                "ultimus has no operation `{other}`"
            ))),
        }
    }
}

export!(Ultimus);

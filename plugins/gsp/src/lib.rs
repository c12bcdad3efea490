//! gsp: place one consultant's order in the supplier ordering portal.
//!
//! Log in as the supervisor, search and select the consultant, choose the campaign
//! cycle, open the cart, add each product, confirm. Each stage is a checkpoint
//! (`login_ok`, `consultant_selected`, `cycle_selected`, `cart_open`,
//! `products_added`, `completed`). The order carries the item's idempotency key in
//! its note, so every retry looks the order up in the portal's list before placing it
//! again: an order is never placed twice.
//!
//! Settings: `portal_url` (e.g. `http://127.0.0.1:8090`), optional `cycle`.
//! Secrets: `gsp_supervisor`, `gsp_password`.

use faena_plugin_sdk::serde_json::{self, Value, json};
use faena_plugin_sdk::{
    Context, Error, Info, Operation, Page, Plugin, Result, export, required_setting, secret,
    setting, step,
};

/// How long one page may take to load.
const PAGE_MS: u32 = 20_000;
const MAX_QUANTITY: u64 = 999;

struct Gsp;

struct Order {
    consultant: String,
    cycle: Option<String>,
    lines: Vec<(String, u64)>,
}

fn parse(input: &Value) -> Result<Order> {
    let bad = |m: String| Error::business(m).code("bad-input");
    let consultant = input["consultora_code"]
        .as_str()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("input.consultora_code: a consultant code is required".into()))?;
    let rows = input["rows"]
        .as_array()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("input.rows: at least one product line is required".into()))?;
    let mut lines = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let code = row["product_code"]
            .as_str()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "input.rows[{i}].product_code: a product code is required"
                ))
            })?;
        let quantity = match &row["quantity"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .ok_or_else(|| {
            bad(format!(
                "input.rows[{i}].quantity: a whole number from 1 to {MAX_QUANTITY} is required"
            ))
        })?;
        lines.push((code.to_uppercase(), quantity));
    }
    let cycle = input["cycle"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| setting("cycle"))
        .filter(|c| !c.is_empty());
    Ok(Order {
        consultant: consultant.to_uppercase(),
        cycle,
        lines,
    })
}

/// Which page the portal shows, checked against what the flow expects. The portal
/// sends an expired session back to its login page and answers maintenance with an
/// `unavailable` page: both are application errors, retried with backoff.
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
            "expected the {} page, the portal shows `{view}` ({}): {message}",
            expected.join(" or "),
            page.url().unwrap_or_default()
        ))
        .code("unexpected-page"),
    })
}

fn login(page: &Page, base: &str) -> Result<()> {
    let supervisor = secret("gsp_supervisor")?;
    let password = secret("gsp_password")?;
    page.goto(&format!("{base}/gsp/login"))?;
    arrive(page, &["login"])?;
    page.fill_all(&[("#supervisor", &supervisor), ("#password", &password)])?;
    page.click_and_wait("#login", PAGE_MS)?;
    if arrive(page, &["consultants", "login"])? == "login" {
        // Never retried: retrying a refused password locks the account.
        let why = page.text("#error").unwrap_or_default();
        return Err(
            Error::business(format!("the portal refused the login: {why}")).code("login-refused"),
        );
    }
    Ok(())
}

/// The order an earlier attempt placed, found by the idempotency key in its note.
fn placed_order(page: &Page, base: &str, order: &Order, key: &str) -> Result<Option<String>> {
    page.goto(&format!(
        "{base}/gsp/orders?consultant={}",
        order.consultant
    ))?;
    arrive(page, &["orders"])?;
    let key = serde_json::to_string(key).expect("strings serialize");
    let found = page.evaluate(&format!(
        "(() => {{ const r = [...document.querySelectorAll('#orders tr[data-note]')].find(r => r.dataset.note === {key});
           return r ? r.querySelector('.order-id').textContent.trim() : null; }})()"
    ))?;
    Ok(found.as_str().map(str::to_owned))
}

fn place(order: &Order, ctx: &Context) -> Result<Value> {
    let base = required_setting("portal_url")?;
    let base = base.trim_end_matches('/');
    let page = Page::open()?;
    login(&page, base)?;
    step("login_ok", None)?;

    let result = |order_id: &str, cycle: &str, recovered: bool| {
        json!({
            "order_id": order_id,
            "consultant": order.consultant,
            "cycle": cycle,
            "products": order.lines.len(),
            "recovered": recovered,
        })
    };
    // Any retry looks first: an earlier attempt may have confirmed the order, and the
    // last checkpoint alone cannot tell (a retry that failed before getting as far
    // records earlier steps after it).
    if ctx.attempt > 1
        && let Some(id) = placed_order(&page, base, order, &ctx.idempotency_key)?
    {
        step("completed", Some(&id))?;
        let cycle = order.cycle.clone().unwrap_or_default();
        return Ok(result(&id, &cycle, true));
    }

    page.goto(&format!("{base}/gsp/consultants"))?;
    arrive(&page, &["consultants"])?;
    page.fill("#consultant-code", &order.consultant)?;
    page.click_and_wait("#search", PAGE_MS)?;
    arrive(&page, &["consultants"])?;
    if page.exists("#error")? {
        let why = page.text("#error")?;
        return Err(Error::business(why).code("unknown-consultant"));
    }
    page.click_and_wait("#select-consultant", PAGE_MS)?;
    arrive(&page, &["cycle"])?;
    step("consultant_selected", Some(&order.consultant))?;

    if let Some(cycle) = &order.cycle {
        page.select("#cycle", cycle)
            .map_err(|e| e.context("campaign cycle"))?;
    }
    let cycle = page.evaluate("document.querySelector('#cycle').value")?;
    let cycle = cycle.as_str().unwrap_or("").to_owned();
    page.click_and_wait("#choose-cycle", PAGE_MS)?;
    arrive(&page, &["summary"])?;
    step("cycle_selected", Some(&cycle))?;

    page.click_and_wait("#open-cart", PAGE_MS)?;
    arrive(&page, &["cart"])?;
    step("cart_open", None)?;

    for (code, quantity) in &order.lines {
        page.fill("#product-code", code)?;
        page.fill("#quantity", &quantity.to_string())?;
        page.click_and_wait("#add", PAGE_MS)?;
        arrive(&page, &["cart"])?;
        if page.exists("#error")? {
            let why = page.text("#error")?;
            let code_of = if why.contains("out of stock") {
                "out-of-stock"
            } else if why.contains("does not exist") {
                "unknown-product"
            } else {
                "line-refused"
            };
            return Err(Error::business(why).code(code_of));
        }
        if !page.exists(&format!("#cart-lines tr[data-code=\"{code}\"]"))? {
            return Err(Error::application(format!(
                "product {code} is not in the cart after adding it"
            )));
        }
    }
    step(
        "products_added",
        Some(&format!("{} products", order.lines.len())),
    )?;

    page.fill("#note", &ctx.idempotency_key)?;
    page.click_and_wait("#confirm", PAGE_MS)?;
    arrive(&page, &["confirmation"])?;
    let order_id = page.text("#order-id")?.trim().to_owned();
    step("completed", Some(&order_id))?;
    Ok(result(&order_id, &cycle, false))
}

impl Plugin for Gsp {
    fn info() -> Info {
        Info::new(
            "gsp",
            env!("CARGO_PKG_VERSION"),
            "Places consultant orders in the gsp supplier ordering portal",
        )
        .operation(
            Operation::new(
                "run",
                "Place one consultant's order: rows of product code and quantity",
                json!({
                    "type": "object",
                    "required": ["consultora_code", "rows"],
                    "properties": {
                        "consultora_code": {"type": "string", "minLength": 1},
                        "consultora_name": {"type": "string"},
                        "cycle": {"type": "string", "description": "campaign cycle; default: the `cycle` setting, else the portal's current one"},
                        "rows": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["product_code", "quantity"],
                                "properties": {
                                    "product_code": {"type": "string", "minLength": 1},
                                    "quantity": {"type": ["integer", "string"]}
                                }
                            }
                        }
                    },
                    "x-faena-import": {
                        "group_by": "consultora_code",
                        "required": ["consultora_code", "product_code", "quantity"],
                        "positive_integer": ["quantity"]
                    }
                }),
            )
            .browser()
            .secret("gsp_supervisor")
            .secret("gsp_password"),
        )
    }

    fn run(operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        match operation {
            "run" => place(&parse(&input)?, ctx),
            other => Err(Error::business(format!("gsp has no operation `{other}`"))),
        }
    }
}

export!(Gsp);

//! ultimus: a purchase-request workflow portal. Log in, fill the purchase-request form
//! (supplier tax id, cost centre, currency, lines with amounts), get a confirmation
//! page with a request id and an incident id. An unknown supplier is refused with an
//! error message on the page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use poem::http::StatusCode;
use poem::web::{Data, Form, Query};
use poem::{EndpointExt, Request, Response, get, handler};
use serde::{Deserialize, Serialize};

use super::{Portal, admin_routes, esc, ok_page, page, redirect};

pub const USER: &str = "compras";
pub const PASSWORD: &str = "ultimus-demo";

/// Registered suppliers: tax id (RUC) and name.
pub const SUPPLIERS: &[(&str, &str)] = &[
    ("20100070970", "Supermercados Peruanos S.A."),
    ("20512345678", "Ferretería Industrial del Sur S.A.C."),
    ("20601234567", "Servicios Técnicos Andinos S.R.L."),
    ("20100130204", "Distribuidora Norte E.I.R.L."),
    ("20331898008", "Transportes Lima Express S.A."),
];

pub const COST_CENTRES: &[(&str, &str)] = &[
    ("CC-100", "Operations"),
    ("CC-200", "Maintenance"),
    ("CC-300", "Administration"),
    ("CC-400", "Logistics"),
];

pub const LINES: usize = 10;

/// A purchase request the portal accepted.
#[derive(Debug, Clone, Serialize)]
pub struct PurchaseRequest {
    pub request_id: String,
    pub incident_id: String,
    pub reference: String,
    pub supplier: String,
    pub cost_centre: String,
    pub currency: String,
    pub total: f64,
    pub user: String,
}

pub struct Ultimus {
    pub portal: Arc<Portal>,
    pub requests: Mutex<Vec<PurchaseRequest>>,
}

impl Ultimus {
    pub fn new() -> Arc<Ultimus> {
        Arc::new(Ultimus {
            portal: Portal::new("ultimus"),
            requests: Mutex::new(Vec::new()),
        })
    }
}

/// Element ids by layout: the redesigned layout (2) renames them.
fn id(layout: u8, field: &str) -> &str {
    if layout != 2 {
        return field;
    }
    match field {
        "order-number" => "oc-number",
        "supplier-tax-id" => "ruc-proveedor",
        "cost-center" => "centro-costo",
        "currency" => "moneda",
        "description" => "glosa",
        "submit" => "enviar",
        other => other,
    }
}

pub fn routes(u: Arc<Ultimus>) -> poem::endpoint::BoxEndpoint<'static> {
    poem::Route::new()
        .at("/login", get(login_page).post(login))
        .at("/requests/new", get(new_request))
        .at("/requests", get(list_requests).post(submit))
        .nest(
            "/admin",
            admin_routes(u.portal.clone(), {
                let u = u.clone();
                move || u.requests.lock().unwrap().clear()
            })
            .at("/requests", get(admin_requests)),
        )
        .data(u)
        .boxed()
}

#[derive(Deserialize)]
struct LoginQuery {
    expired: Option<String>,
}

fn login_form(message: Option<&str>) -> Response {
    let msg = message
        .map(|m| format!("<p id=\"error\">{}</p>", esc(m)))
        .unwrap_or_default();
    ok_page(
        "ultimus",
        "login",
        "Sign in",
        &format!(
            "{msg}<form method=\"post\" action=\"/ultimus/login\">\
             <label for=\"username\">User</label><input id=\"username\" name=\"username\" autocomplete=\"username\">\
             <label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\">\
             <button id=\"login\" type=\"submit\">Sign in</button></form>"
        ),
    )
}

#[handler]
async fn login_page(Data(u): Data<&Arc<Ultimus>>, Query(q): Query<LoginQuery>) -> Response {
    if let Some(r) = u.portal.gate().await {
        return r;
    }
    login_form(
        q.expired
            .is_some()
            .then_some("Your session has expired. Sign in again."),
    )
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[handler]
async fn login(Data(u): Data<&Arc<Ultimus>>, Form(c): Form<Credentials>) -> Response {
    if let Some(r) = u.portal.gate().await {
        return r;
    }
    if c.username != USER || c.password != PASSWORD {
        return login_form(Some("Invalid user or password."));
    }
    let cookie = u.portal.login(&c.username);
    let mut r = redirect("/ultimus/requests/new");
    r.headers_mut()
        .insert(poem::http::header::SET_COOKIE, cookie.parse().unwrap());
    r
}

fn options(list: &[(&str, &str)], selected: &str) -> String {
    list.iter()
        .map(|(v, label)| {
            let sel = if *v == selected { " selected" } else { "" };
            format!("<option value=\"{v}\"{sel}>{v} {}</option>", esc(label))
        })
        .collect()
}

fn request_form(layout: u8, values: &HashMap<String, String>, error: Option<&str>) -> Response {
    let v = |k: &str| esc(values.get(k).map(String::as_str).unwrap_or(""));
    let error = error
        .map(|e| format!("<div id=\"error\" class=\"error\">{}</div>", esc(e)))
        .unwrap_or_default();
    let mut lines = String::from(
        "<table id=\"lines\"><tr><th>#</th><th>Description</th><th>Quantity</th><th>Unit price</th></tr>",
    );
    for i in 1..=LINES {
        lines.push_str(&format!(
            "<tr><td>{i}</td><td><input id=\"line-{i}-description\" name=\"line{i}_description\" value=\"{}\"></td>\
             <td><input id=\"line-{i}-quantity\" name=\"line{i}_quantity\" value=\"{}\"></td>\
             <td><input id=\"line-{i}-unit-price\" name=\"line{i}_unit_price\" value=\"{}\"></td></tr>",
            v(&format!("line{i}_description")),
            v(&format!("line{i}_quantity")),
            v(&format!("line{i}_unit_price")),
        ));
    }
    lines.push_str("</table>");
    let body = format!(
        "{error}<form method=\"post\" action=\"/ultimus/requests\">\
         <label>Purchase order number</label><input id=\"{}\" name=\"reference\" value=\"{}\">\
         <label>Supplier tax id (RUC)</label><input id=\"{}\" name=\"supplier\" value=\"{}\">\
         <label>Cost centre</label><select id=\"{}\" name=\"cost_centre\"><option value=\"\">Choose…</option>{}</select>\
         <label>Currency</label><select id=\"{}\" name=\"currency\">{}</select>\
         <label>Description</label><textarea id=\"{}\" name=\"description\">{}</textarea>\
         {lines}<button id=\"{}\" type=\"submit\">Send for approval</button></form>",
        id(layout, "order-number"),
        v("reference"),
        id(layout, "supplier-tax-id"),
        v("supplier"),
        id(layout, "cost-center"),
        options(
            COST_CENTRES,
            values.get("cost_centre").map(String::as_str).unwrap_or("")
        ),
        id(layout, "currency"),
        options(
            &[("PEN", "Soles"), ("USD", "Dollars")],
            values.get("currency").map(String::as_str).unwrap_or("PEN")
        ),
        id(layout, "description"),
        v("description"),
        id(layout, "submit"),
    );
    ok_page("ultimus", "request-form", "New purchase request", &body)
}

#[handler]
async fn new_request(Data(u): Data<&Arc<Ultimus>>, req: &Request) -> Response {
    if let Some(r) = u.portal.gate().await {
        return r;
    }
    if let Err(r) = u.portal.session(req) {
        return r;
    }
    request_form(u.portal.knobs().layout, &HashMap::new(), None)
}

/// What is wrong with a submitted form, in the portal's words.
fn validate(f: &HashMap<String, String>) -> Result<f64, String> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    if get("reference").is_empty() {
        return Err("The purchase order number is required.".into());
    }
    let supplier = get("supplier");
    if supplier.len() != 11 || !supplier.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "The supplier tax id `{supplier}` must have 11 digits."
        ));
    }
    if !SUPPLIERS.iter().any(|(ruc, _)| *ruc == supplier) {
        return Err(format!(
            "Unknown supplier tax id {supplier}: it is not registered as a supplier."
        ));
    }
    if !COST_CENTRES.iter().any(|(c, _)| *c == get("cost_centre")) {
        return Err("Choose a cost centre.".into());
    }
    if !["PEN", "USD"].contains(&get("currency")) {
        return Err("Choose a currency.".into());
    }
    let mut total = 0.0;
    let mut lines = 0;
    for i in 1..=LINES {
        let d = get(&format!("line{i}_description"));
        let q = get(&format!("line{i}_quantity"));
        let p = get(&format!("line{i}_unit_price"));
        if d.is_empty() && q.is_empty() && p.is_empty() {
            continue;
        }
        let q: f64 = q
            .parse()
            .ok()
            .filter(|q: &f64| *q > 0.0)
            .ok_or(format!("Line {i}: the quantity must be a positive number."))?;
        let p: f64 = p
            .parse()
            .ok()
            .filter(|p: &f64| *p >= 0.0)
            .ok_or(format!("Line {i}: the unit price must be a number."))?;
        if d.is_empty() {
            return Err(format!("Line {i}: the description is required."));
        }
        total += q * p;
        lines += 1;
    }
    if lines == 0 {
        return Err("A purchase request needs at least one line.".into());
    }
    Ok(total)
}

#[handler]
async fn submit(
    Data(u): Data<&Arc<Ultimus>>,
    req: &Request,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = u.portal.gate().await {
        return r;
    }
    let (_, session) = match u.portal.session(req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let layout = u.portal.knobs().layout;
    let total = match validate(&f) {
        Ok(t) => t,
        Err(e) => return request_form(layout, &f, Some(&e)),
    };
    let reference = f["reference"].trim().to_owned();
    let saved = {
        let mut requests = u.requests.lock().unwrap();
        let n = requests.len() + 1;
        let r = PurchaseRequest {
            request_id: format!("PR-2026-{n:06}"),
            incident_id: format!("INC-{:07}", 4_000 + n),
            reference: reference.clone(),
            supplier: f["supplier"].trim().to_owned(),
            cost_centre: f["cost_centre"].clone(),
            currency: f["currency"].clone(),
            total,
            user: session.user,
        };
        requests.push(r.clone());
        r
    };
    u.portal.count(&reference);
    if u.portal.take_fail_after_save() {
        return page(
            StatusCode::BAD_GATEWAY,
            "ultimus",
            "error",
            "Bad gateway",
            "<p id=\"error\">The server took too long to answer.</p>",
        );
    }
    ok_page(
        "ultimus",
        "confirmation",
        "Purchase request sent",
        &format!(
            "<p>Purchase order <b id=\"reference\">{}</b> was sent for approval.</p>\
             <p>Request: <b id=\"request-id\">{}</b></p><p>Incident: <b id=\"incident-id\">{}</b></p>\
             <p>Total: <span id=\"total\">{:.2}</span> {}</p><a href=\"/ultimus/requests/new\">New request</a>",
            esc(&saved.reference),
            saved.request_id,
            saved.incident_id,
            saved.total,
            saved.currency
        ),
    )
}

#[derive(Deserialize)]
struct ListQuery {
    reference: Option<String>,
}

/// The requests sent, optionally for one purchase order number: how a flow checks
/// whether an earlier attempt already got through.
#[handler]
async fn list_requests(
    Data(u): Data<&Arc<Ultimus>>,
    req: &Request,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = u.portal.gate().await {
        return r;
    }
    if let Err(r) = u.portal.session(req) {
        return r;
    }
    let rows: String = u
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| q.reference.as_ref().is_none_or(|x| *x == r.reference))
        .map(|r| {
            format!(
                "<tr data-reference=\"{}\"><td class=\"request-id\">{}</td><td class=\"incident-id\">{}</td><td>{}</td><td>{:.2} {}</td></tr>",
                esc(&r.reference),
                r.request_id,
                r.incident_id,
                r.supplier,
                r.total,
                r.currency
            )
        })
        .collect();
    ok_page(
        "ultimus",
        "requests",
        "Purchase requests",
        &format!(
            "<table id=\"requests\"><tr><th>Request</th><th>Incident</th><th>Supplier</th><th>Total</th></tr>{rows}</table>"
        ),
    )
}

#[handler]
fn admin_requests(Data(u): Data<&Arc<Ultimus>>) -> Response {
    super::json(&*u.requests.lock().unwrap())
}

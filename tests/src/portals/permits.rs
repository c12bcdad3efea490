//! permits: a municipal building-permits portal. An applicant logs in and files a
//! request through a form with a select its own script fills, radio buttons, a number
//! of whole floors (an HTML `step` constraint) and a declaration to tick. The list of
//! requests shows only those filed in the current login session, as such portals do:
//! a flow can find what it filed earlier only if it comes back in the same session.
//! `/permits/api/*` is the same portal for HTTP clients: a form login answered with a
//! 303 that sets the session cookie.

use std::sync::{Arc, Mutex};

use poem::http::StatusCode;
use poem::web::{Data, Form, Path};
use poem::{EndpointExt, Request, Response, get, handler};
use serde::{Deserialize, Serialize};

use super::{Portal, admin_routes, esc, json, ok_page, page, redirect};

pub const APPLICANT: &str = "arq.vera";
pub const PASSWORD: &str = "permits-demo";
pub const KINDS: &[(&str, &str)] = &[
    ("new", "New building"),
    ("extension", "Extension"),
    ("demolition", "Demolition"),
];

/// A request the portal filed.
#[derive(Debug, Clone, Serialize)]
pub struct Filed {
    pub permit_id: String,
    pub session: String,
    pub address: String,
    pub kind: String,
    pub use_: String,
    pub floors: u32,
    pub note: String,
}

pub struct Permits {
    pub portal: Arc<Portal>,
    pub filed: Mutex<Vec<Filed>>,
    /// Logins, so a test can tell a retry that kept its session from one that signed
    /// in again.
    pub logins: Mutex<u32>,
}

impl Permits {
    pub fn new() -> Arc<Permits> {
        Arc::new(Permits {
            portal: Portal::new("permits"),
            filed: Mutex::new(Vec::new()),
            logins: Mutex::new(0),
        })
    }
}

pub fn routes(p: Arc<Permits>) -> poem::endpoint::BoxEndpoint<'static> {
    poem::Route::new()
        .at("/login", get(login_page).post(login))
        .at("/requests", get(requests))
        .at("/requests/new", get(new_form).post(file))
        .at("/requests/:id", get(filed_page))
        .at("/api/login", poem::post(api_login))
        .at("/api/whoami", get(whoami))
        .at("/api/bounce", get(bounce))
        .nest(
            "/admin",
            admin_routes(p.portal.clone(), {
                let p = p.clone();
                move || {
                    p.filed.lock().unwrap().clear();
                    *p.logins.lock().unwrap() = 0;
                }
            })
            .at("/logins", get(admin_logins)),
        )
        .data(p)
        .boxed()
}

#[handler]
async fn login_page() -> Response {
    login_form(None)
}

fn login_form(message: Option<&str>) -> Response {
    let error = message
        .map(|m| format!("<p id=\"error\">{}</p>", esc(m)))
        .unwrap_or_default();
    ok_page(
        "permits",
        "login",
        "Applicant sign in",
        &format!(
            "{error}<form method=\"post\" action=\"/permits/login\">\
             <label>User</label><input id=\"user\" name=\"user\">\
             <label>Password</label><input id=\"password\" name=\"password\" type=\"password\">\
             <button id=\"login\" type=\"submit\">Sign in</button></form>"
        ),
    )
}

#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

fn sign_in(p: &Permits, c: &Credentials, then: &str) -> Option<Response> {
    if c.user != APPLICANT || c.password != PASSWORD {
        return None;
    }
    *p.logins.lock().unwrap() += 1;
    let cookie = p.portal.login(&c.user);
    let mut r = redirect(then);
    r.headers_mut()
        .insert(poem::http::header::SET_COOKIE, cookie.parse().unwrap());
    Some(r)
}

#[handler]
async fn login(Data(p): Data<&Arc<Permits>>, Form(c): Form<Credentials>) -> Response {
    if let Some(r) = p.portal.gate().await {
        return r;
    }
    sign_in(p, &c, "/permits/requests")
        .unwrap_or_else(|| login_form(Some("Wrong user or password.")))
}

#[handler]
async fn requests(Data(p): Data<&Arc<Permits>>, req: &Request) -> Response {
    let (sid, _) = match p.portal.session(req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let rows: String = p
        .filed
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.session == sid)
        .map(|f| {
            format!(
                "<tr data-note=\"{}\"><td class=\"permit-id\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.note),
                esc(&f.permit_id),
                esc(&f.address),
                esc(&f.kind)
            )
        })
        .collect();
    ok_page(
        "permits",
        "requests",
        "My requests (this session)",
        &format!(
            "<table id=\"requests\">{rows}</table><a id=\"new\" href=\"/permits/requests/new\">File a new request</a>"
        ),
    )
}

#[handler]
async fn new_form(Data(p): Data<&Arc<Permits>>, req: &Request) -> Response {
    if let Err(r) = p.portal.session(req) {
        return r;
    }
    let kinds = serde_json::to_string(KINDS).expect("serializes");
    ok_page(
        "permits",
        "new",
        "New permit request",
        &format!(
            "<form method=\"post\" action=\"/permits/requests/new\">\
             <label>Address</label><input id=\"address\" name=\"address\" required>\
             <label>Kind</label><select id=\"kind\" name=\"kind\" required></select>\
             <fieldset><legend>Use</legend>\
             <label><input type=\"radio\" name=\"use\" value=\"residential\" id=\"use-residential\" required> Residential</label>\
             <label><input type=\"radio\" name=\"use\" value=\"commercial\" id=\"use-commercial\"> Commercial</label></fieldset>\
             <label>Floors</label><input id=\"floors\" name=\"floors\" type=\"number\" min=\"1\" max=\"40\" step=\"1\" required>\
             <label>Reference (optional)</label><input id=\"note\" name=\"note\">\
             <label><input type=\"checkbox\" id=\"declaration\" name=\"declaration\" value=\"yes\" required> \
             I declare the information is true</label>\
             <button id=\"file\" type=\"submit\">File request</button></form>\
             <script>setTimeout(() => {{ const s = document.getElementById('kind');\
               for (const [v, t] of {kinds}) s.add(new Option(t, v)); }}, 150);</script>"
        ),
    )
}

#[derive(Deserialize)]
struct Request_ {
    address: String,
    kind: String,
    #[serde(rename = "use")]
    use_: String,
    floors: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    declaration: String,
}

#[handler]
async fn file(Data(p): Data<&Arc<Permits>>, req: &Request, Form(f): Form<Request_>) -> Response {
    if let Some(r) = p.portal.gate().await {
        return r;
    }
    let (sid, _) = match p.portal.session(req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let floors = f
        .floors
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=40).contains(n));
    let (Some(floors), true, true) = (
        floors,
        f.declaration == "yes",
        KINDS.iter().any(|(k, _)| *k == f.kind),
    ) else {
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "permits",
            "new",
            "New permit request",
            "<p id=\"error\">The request is incomplete.</p>",
        );
    };
    let permit_id = {
        let mut filed = p.filed.lock().unwrap();
        let id = format!("PRM-{:05}", filed.len() + 1);
        filed.push(Filed {
            permit_id: id.clone(),
            session: sid,
            address: f.address.clone(),
            kind: f.kind,
            use_: f.use_,
            floors,
            note: f.note.clone(),
        });
        id
    };
    p.portal.count(if f.note.is_empty() {
        &f.address
    } else {
        &f.note
    });
    if p.portal.take_fail_after_save() {
        return page(
            StatusCode::BAD_GATEWAY,
            "permits",
            "error",
            "Bad gateway",
            "<p id=\"error\">The request timed out.</p>",
        );
    }
    redirect(&format!("/permits/requests/{permit_id}"))
}

#[handler]
async fn filed_page(
    Data(p): Data<&Arc<Permits>>,
    req: &Request,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = p.portal.session(req) {
        return r;
    }
    let found = p.filed.lock().unwrap().iter().any(|f| f.permit_id == id);
    if !found {
        return page(
            StatusCode::NOT_FOUND,
            "permits",
            "error",
            "Not found",
            "<p id=\"error\">No such request.</p>",
        );
    }
    ok_page(
        "permits",
        "filed",
        "Request filed",
        &format!(
            "<p>Your request number is <b id=\"permit-id\">{}</b>.</p>",
            esc(&id)
        ),
    )
}

#[handler]
async fn api_login(Data(p): Data<&Arc<Permits>>, Form(c): Form<Credentials>) -> Response {
    sign_in(p, &c, "/permits/api/whoami").unwrap_or_else(|| {
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body("wrong user or password")
    })
}

#[handler]
async fn whoami(Data(p): Data<&Arc<Permits>>, req: &Request) -> Response {
    match p.portal.session(req) {
        Ok((_, s)) => json(&serde_json::json!({"user": s.user})),
        Err(_) => Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .body("not signed in"),
    }
}

#[derive(Deserialize)]
struct Bounce {
    to: String,
}

/// A redirect to wherever `to` says (a portal's single sign-on hop, say).
#[handler]
async fn bounce(poem::web::Query(b): poem::web::Query<Bounce>) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(poem::http::header::LOCATION, b.to)
        .finish()
}

#[handler]
async fn admin_logins(Data(p): Data<&Arc<Permits>>) -> Response {
    json(&serde_json::json!({"logins": *p.logins.lock().unwrap()}))
}

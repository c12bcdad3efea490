//! Local simulators of the portals faena's flows drive: server-rendered HTML with
//! login, cookies and server-side state, on 127.0.0.1 only.
//!
//! Every portal counts each submission per reference (`GET /{portal}/admin/submissions`)
//! so tests can prove that nothing was placed twice, and has knobs
//! (`POST /{portal}/admin/knobs`, JSON) for slowness, random failures, sessions that
//! expire mid-flow, a changed layout and a failure right after a submission was saved.

// A handler's `Err` is the page it answers with instead (a redirect to the login):
// boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod gsp;
pub mod permits;
pub mod sunat;
pub mod ultimus;
pub mod whatsapp;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::http::{StatusCode, header};
use poem::{Request, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How a portal misbehaves. Every field may be left out of a knobs request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Added to every page, in milliseconds.
    pub slow_ms: u64,
    /// Share of page requests (0.0–1.0) answered with a 503 maintenance page.
    pub fail_rate: f64,
    /// A session expires after this many requests (a login starts a new one).
    pub session_requests: Option<u32>,
    /// 2: the pages' element ids change, as after a portal redesign.
    pub layout: u8,
    /// The next N submissions are saved but answered with a 502 error page, as when
    /// the portal's front end times out after its back end committed.
    pub fail_after_save: u32,
    /// A session expires this many milliseconds after its login.
    pub session_ttl_ms: Option<u64>,
}

/// One logged-in browser session of a portal.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub user: String,
    pub requests: u32,
    pub started: Option<std::time::Instant>,
    /// Portal-specific state (selected consultant, cart...).
    pub data: BTreeMap<String, String>,
    pub cart: Vec<(String, u32)>,
}

/// State shared by the handlers of one portal.
pub struct Portal {
    pub name: &'static str,
    pub knobs: Mutex<Knobs>,
    pub sessions: Mutex<HashMap<String, Session>>,
    /// Submissions per reference.
    pub submissions: Mutex<BTreeMap<String, u32>>,
}

impl Portal {
    pub fn new(name: &'static str) -> Arc<Portal> {
        Arc::new(Portal {
            name,
            knobs: Mutex::new(Knobs::default()),
            sessions: Mutex::new(HashMap::new()),
            submissions: Mutex::new(BTreeMap::new()),
        })
    }

    fn cookie_name(&self) -> String {
        format!("{}_sid", self.name)
    }

    pub fn knobs(&self) -> Knobs {
        self.knobs.lock().unwrap().clone()
    }

    pub fn count(&self, reference: &str) {
        *self
            .submissions
            .lock()
            .unwrap()
            .entry(reference.to_owned())
            .or_default() += 1;
    }

    /// Slowness and random failures, applied before every page.
    pub async fn gate(&self) -> Option<Response> {
        let knobs = self.knobs();
        if knobs.slow_ms > 0 {
            tokio::time::sleep(Duration::from_millis(knobs.slow_ms)).await;
        }
        if knobs.fail_rate > 0.0 && rand::rng().random_bool(knobs.fail_rate.clamp(0.0, 1.0)) {
            return Some(self.unavailable());
        }
        None
    }

    pub fn unavailable(&self) -> Response {
        page(
            StatusCode::SERVICE_UNAVAILABLE,
            self.name,
            "unavailable",
            "Service unavailable",
            "<p id=\"error\">The portal is under maintenance. Try again in a few minutes.</p>",
        )
    }

    /// Start a session for `user`; returns the Set-Cookie header value.
    pub fn login(&self, user: &str) -> String {
        let sid = format!("{:032x}", rand::rng().random::<u128>());
        self.sessions.lock().unwrap().insert(
            sid.clone(),
            Session {
                user: user.to_owned(),
                started: Some(std::time::Instant::now()),
                ..Session::default()
            },
        );
        format!(
            "{}={sid}; Path=/{}; HttpOnly; SameSite=Lax",
            self.cookie_name(),
            self.name
        )
    }

    fn sid(&self, req: &Request) -> Option<String> {
        let name = self.cookie_name();
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The request's session, counting the request; `Err` is the redirect to the login
    /// page (no session, or it expired).
    pub fn session(&self, req: &Request) -> Result<(String, Session), Response> {
        let expired = || redirect(&format!("/{}/login?expired=1", self.name));
        let sid = self.sid(req).ok_or_else(expired)?;
        let knobs = self.knobs();
        let (limit, ttl) = (knobs.session_requests, knobs.session_ttl_ms);
        let mut sessions = self.sessions.lock().unwrap();
        let Some(s) = sessions.get_mut(&sid) else {
            return Err(expired());
        };
        s.requests += 1;
        let too_old = ttl.is_some_and(|ms| {
            s.started
                .is_some_and(|t| t.elapsed() > Duration::from_millis(ms))
        });
        if too_old || limit.is_some_and(|l| s.requests > l) {
            sessions.remove(&sid);
            return Err(expired());
        }
        Ok((sid, s.clone()))
    }

    pub fn update(&self, sid: &str, f: impl FnOnce(&mut Session)) {
        if let Some(s) = self.sessions.lock().unwrap().get_mut(sid) {
            f(s);
        }
    }

    pub fn reset(&self) {
        *self.knobs.lock().unwrap() = Knobs::default();
        self.sessions.lock().unwrap().clear();
        self.submissions.lock().unwrap().clear();
    }

    /// Take one "saved but answered with an error" from the knobs, if any is left.
    pub fn take_fail_after_save(&self) -> bool {
        let mut k = self.knobs.lock().unwrap();
        if k.fail_after_save > 0 {
            k.fail_after_save -= 1;
            true
        } else {
            false
        }
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .finish()
}

const STYLE: &str = "body{font-family:sans-serif;margin:0;background:#f4f5f7}\
header{background:#22395a;color:#fff;padding:10px 20px;font-weight:bold}\
main{padding:20px;max-width:900px}label{display:block;margin:8px 0 2px}\
input,select,textarea{padding:4px;min-width:220px}button{margin-top:10px;padding:6px 14px}\
#error,.error{color:#a40000;background:#fde8e8;padding:8px;border:1px solid #e0a0a0}\
table{border-collapse:collapse;margin:10px 0}td,th{border:1px solid #ccc;padding:4px 8px}";

/// A whole HTML page. `view` goes to `<body data-page>`, which flows use to know
/// where they are.
pub fn page(status: StatusCode, portal: &str, view: &str, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · {portal}</title>\
         <style>{STYLE}</style></head><body data-page=\"{view}\"><header>{portal}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>"
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(html)
}

pub fn ok_page(portal: &str, view: &str, title: &str, body: &str) -> Response {
    page(StatusCode::OK, portal, view, title, body)
}

pub fn json<T: Serialize>(value: &T) -> Response {
    Response::builder()
        .content_type("application/json")
        .body(serde_json::to_string(value).expect("serializes"))
}

/// The portals, running; they stop when this is dropped.
pub struct Portals {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub ultimus: Arc<ultimus::Ultimus>,
    pub gsp: Arc<gsp::Gsp>,
    pub sunat: Arc<sunat::Sunat>,
    pub whatsapp: Arc<whatsapp::Whatsapp>,
    pub permits: Arc<permits::Permits>,
    stop: CancellationToken,
}

impl Drop for Portals {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Portals {
    /// The submissions a portal counted, by reference.
    pub fn submissions(&self, portal: &str) -> BTreeMap<String, u32> {
        let p = match portal {
            "ultimus" => &self.ultimus.portal,
            "gsp" => &self.gsp.portal,
            "sunat" => &self.sunat.portal,
            "permits" => &self.permits.portal,
            other => panic!("no portal {other}"),
        };
        p.submissions.lock().unwrap().clone()
    }

    pub fn set_knobs(&self, portal: &str, knobs: Knobs) {
        let p = match portal {
            "ultimus" => &self.ultimus.portal,
            "gsp" => &self.gsp.portal,
            "sunat" => &self.sunat.portal,
            "permits" => &self.permits.portal,
            other => panic!("no portal {other}"),
        };
        *p.knobs.lock().unwrap() = knobs;
    }
}

/// Serve both portals on `127.0.0.1:port` (0: any free port).
pub async fn serve(port: u16) -> std::io::Result<Portals> {
    let ultimus = ultimus::Ultimus::new();
    let gsp = gsp::Gsp::new();
    let sunat = sunat::Sunat::new();
    let whatsapp = whatsapp::Whatsapp::new();
    let permits = permits::Permits::new();
    let app = poem::Route::new()
        .nest("/ultimus", ultimus::routes(ultimus.clone()))
        .nest("/gsp", gsp::routes(gsp.clone()))
        .nest("/sunat", sunat::routes(sunat.clone()))
        .nest("/whatsapp", whatsapp::routes(whatsapp.clone()))
        .nest("/permits", permits::routes(permits.clone()))
        .at(
            "/",
            poem::endpoint::make_sync(|_| {
                poem::web::Html(
                    "<html><body><a href=\"/ultimus/login\">ultimus</a> · <a href=\"/gsp/login\">gsp</a> · <a href=\"/sunat/login\">sunat</a> · <a href=\"/permits/login\">permits</a> · whatsapp API at /whatsapp/v1/messages</body></html>",
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let url = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener)?;
    tokio::spawn(async move {
        poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, async move { s.cancelled().await }, None)
            .await
    });
    Ok(Portals {
        url,
        ultimus,
        gsp,
        sunat,
        whatsapp,
        permits,
        stop,
    })
}

/// The admin routes every portal has: knobs, submissions, reset (which also runs
/// `on_reset`, for the portal's own records).
pub fn admin_routes(
    portal: Arc<Portal>,
    on_reset: impl Fn() + Send + Sync + 'static,
) -> poem::Route {
    use poem::{EndpointExt, get, post};
    let p1 = portal.clone();
    let p2 = portal.clone();
    let p3 = portal;
    poem::Route::new()
        .at(
            "/knobs",
            post(poem::endpoint::make(move |mut req: Request| {
                let p = p1.clone();
                async move {
                    let body = req.take_body().into_vec().await.unwrap_or_default();
                    match serde_json::from_slice::<Knobs>(&body) {
                        Ok(k) => {
                            *p.knobs.lock().unwrap() = k.clone();
                            json(&k)
                        }
                        Err(e) => Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .body(format!("knobs: {e}")),
                    }
                }
            }))
            .get(poem::endpoint::make_sync({
                let p = p2.clone();
                move |_| json(&p.knobs())
            })),
        )
        .at(
            "/submissions",
            get(poem::endpoint::make_sync(move |_| {
                json(&*p2.submissions.lock().unwrap())
            })),
        )
        .at(
            "/reset",
            post(poem::endpoint::make_sync(move |_| {
                p3.reset();
                on_reset();
                StatusCode::NO_CONTENT
            }))
            .map_to_response(),
        )
}

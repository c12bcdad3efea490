//! The operator dashboard: one page and its script and style, embedded in the binary
//! and served at `/`. It uses only the public REST API and the WebSocket feed.

use poem::http::{Method, StatusCode, header};
use poem::{Endpoint, IntoResponse, Request, Response};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

fn asset(content_type: &str, body: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-content-type-options", "nosniff")
        .body(body)
}

/// Answer `GET /` and `GET /ui/{file}` with the dashboard; pass anything else on. (The
/// API is nested at `/`, so the dashboard goes in front of the router.)
pub async fn serve<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        let path = req.uri().path();
        if path == "/" {
            return Ok(index());
        }
        if let Some(name) = path.strip_prefix("/ui/") {
            return Ok(file(name));
        }
    }
    next.call(req).await.map(IntoResponse::into_response)
}

fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'"
            .parse()
            .expect("a valid header"),
    );
    r
}

fn file(name: &str) -> Response {
    match name {
        "app.js" => asset("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => asset("text/css; charset=utf-8", STYLE),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .content_type("application/json")
            .body(r#"{"error":"not_found","message":"no such dashboard file"}"#),
    }
}

//! A tiny local web server for runtime tests and benchmarks: a purchase-request form,
//! its confirmation page, and a `/ping` for HTTP calls. Listens on 127.0.0.1 only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use poem::web::{Data, Form, Html};
use poem::{EndpointExt, Route, get, handler, post};
use tokio_util::sync::CancellationToken;

#[handler]
fn ping() -> &'static str {
    "pong"
}

/// The request's header names, as JSON: what a client sent.
#[handler]
fn headers(req: &poem::Request) -> poem::web::Json<Vec<String>> {
    poem::web::Json(
        req.headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect(),
    )
}

const FORM: &str = r#"<html><head><title>Purchase request</title></head><body><h1>Purchase request</h1>
    <form method="post" action="/submit">
      <input id="name" name="name"><select id="kind" name="kind">
      <option value="normal">Normal</option><option value="urgent">Urgent</option></select>
      <button id="submit" type="submit">Send</button></form></body></html>"#;

#[handler]
fn form_page() -> Html<&'static str> {
    Html(FORM)
}

/// The form with a quantity the browser checks itself: a whole number of at least 1,
/// prefilled with one it refuses, as a portal's form can be.
#[handler]
fn constrained_form() -> Html<String> {
    Html(FORM.replace(
        "<button",
        r#"<input id="qty" name="qty" type="number" min="1" step="1" value="1.5"><button"#,
    ))
}

/// A page with one of each thing the page capability's calls act on: each control
/// writes what it received into `#log`, so a test reads back what the calls did. The
/// link to the next page lies inside the window but clipped by a scrolling box: a
/// click scrolls it into view first.
const CALLS: &str = r#"<html><head><title>Calls</title></head><body>
    <div style="height: 40px; overflow: auto"><div style="height: 200px"></div><a id="next" href="/ping">next</a></div>
    <ul><li class="row">one</li><li class="row">two</li><li class="row">three</li></ul>
    <p id="hidden" style="display:none">hidden</p>
    <label><input type="checkbox" id="agree"> agree</label>
    <label><input type="radio" name="size" id="small" value="s"> small</label>
    <label><input type="radio" name="size" id="large" value="l"> large</label>
    <select id="office"><option value="">-</option><option value="LIM-01">Lima centre</option><option value="ARE-02">Arequipa</option></select>
    <input type="file" id="doc">
    <input id="search" onkeydown="if (event.key === 'Enter') log('enter ' + this.value)">
    <button id="delete" onclick="log('confirm ' + confirm('Delete it?'))">Delete</button>
    <div id="menu" onmouseover="document.getElementById('submenu').style.display='block'">Menu</div>
    <div id="submenu" style="display:none">Submenu</div>
    <pre id="log"></pre>
    <script>
      function log(line) { document.getElementById('log').textContent += line + '\n'; }
      document.getElementById('doc').addEventListener('change', async e => {
        const f = e.target.files[0]; log('file ' + f.name + ' ' + f.type + ' ' + (await f.text()));
      });
      document.getElementById('office').addEventListener('change', e => log('office ' + e.target.value));
      setTimeout(() => log('late'), 300);
    </script></body></html>"#;

#[handler]
fn calls_page() -> Html<&'static str> {
    Html(CALLS)
}

/// The form, after a two-second wait (a slow portal).
#[handler]
async fn slow_form(started: Data<&Arc<AtomicUsize>>) -> Html<&'static str> {
    started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    Html(FORM)
}

#[derive(serde::Deserialize)]
struct Submitted {
    name: String,
    kind: String,
}

#[handler]
fn submit(Form(f): Form<Submitted>) -> Html<String> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    Html(format!(
        "<html><body><p id=\"done\">Saved {} as {}</p></body></html>",
        esc(&f.name),
        esc(&f.kind)
    ))
}

/// A running page server; stops when dropped.
pub struct PageServer {
    /// `127.0.0.1:PORT`
    pub host: String,
    /// Loads of `/slow` begun so far.
    pub slow_loads: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn serve() -> PageServer {
    let slow_loads = Arc::new(AtomicUsize::new(0));
    let app = Route::new()
        .at("/ping", get(ping))
        .at("/headers", get(headers))
        .at("/form", get(form_page))
        .at("/constrained", get(constrained_form))
        .at("/calls", get(calls_page))
        .at("/slow", get(slow_form))
        .at("/submit", post(submit))
        .data(slow_loads.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let host = format!("127.0.0.1:{}", listener.local_addr().expect("bound").port());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).expect("acceptor");
    tokio::spawn(async move {
        poem::Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, async move { s.cancelled().await }, None)
            .await
    });
    PageServer {
        host,
        slow_loads,
        stop,
    }
}

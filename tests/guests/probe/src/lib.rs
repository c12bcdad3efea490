//! Test guest. Well-behaved operations call each capability; hostile ones try what
//! the sandbox must stop. Each hostile operation returns what it managed to do, so a
//! test can tell "stopped" from "allowed".

use faena_plugin_sdk::serde_json::{Value, json};
use faena_plugin_sdk::{Context, Error, Info, Operation, Page, Plugin, Result, export, http};

struct Probe;

fn s<'a>(input: &'a Value, key: &str) -> &'a str {
    input[key].as_str().unwrap_or_default()
}

impl Plugin for Probe {
    fn info() -> Info {
        let any = json!({"type": "object"});
        let mut info = Info::new("probe", "1.0.0", "Exercises the host and the sandbox");
        for name in [
            "echo",
            "loop",
            "alloc",
            "read-file",
            "socket",
            "panic",
            "fail",
            "stages",
        ] {
            info = info.operation(Operation::new(name, name, any.clone()));
        }
        info.operation(
            Operation::new("capabilities", "every host call", any.clone()).secret("probe_token"),
        )
        .operation(Operation::new("http", "one request", any.clone()))
        .operation(Operation::new("secret", "read a secret", any.clone()))
        .operation(Operation::new("form", "fill a form", any.clone()).browser())
        .operation(Operation::new("missing", "wait for what never comes", any.clone()).browser())
        .operation(Operation::new("permit", "file a permit request", any.clone()).browser())
        .operation(Operation::new("page-calls", "every page call", any.clone()).browser())
        .operation(Operation::new(
            "http-session",
            "log in over HTTP",
            any.clone(),
        ))
        .operation(Operation::new("http-get", "one GET, with headers", any))
    }

    fn run(operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        match operation {
            // Attempt 1 gets far (`login`, `submitted`) and fails; attempt 2 fails
            // right after `login`; attempt 3 tells what it sees of both.
            "stages" => {
                if ctx.attempt < 3 {
                    let state = format!("from attempt {}", ctx.attempt);
                    faena_plugin_sdk::step("login", Some(&state))?;
                    if ctx.attempt == 1 {
                        faena_plugin_sdk::step("submitted", Some("ref-77"))?;
                    }
                    return Err(Error::application("portal hiccup"));
                }
                Ok(json!({
                    "checkpoints": ctx.checkpoints.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    "last": ctx.last_checkpoint.as_ref().map(|c| c.name.clone()),
                    "passed_submitted": ctx.passed("submitted"),
                    "submitted_state": ctx.state_of("submitted"),
                    "login_state": ctx.state_of("login"),
                }))
            }
            "echo" => {
                Ok(json!({"input": input, "attempt": ctx.attempt, "key": ctx.idempotency_key}))
            }
            "capabilities" => {
                faena_plugin_sdk::log("starting");
                let resumed = ctx.last_checkpoint.as_ref().map(|c| c.name.clone());
                faena_plugin_sdk::step("logged_in", Some("{\"session\":1}"))?;
                faena_plugin_sdk::progress(&json!({"stage": "halfway"}))?;
                let token = faena_plugin_sdk::secret("probe_token")?;
                faena_plugin_sdk::log(&format!("using token {token}"));
                // Careless copies a plugin might report: they are redacted too.
                let shouted = token.to_uppercase();
                let stripped = token.replace('-', "");
                faena_plugin_sdk::log(&format!("shouted {shouted}, stripped {stripped}"));
                let note = format!("hello; the token was {token}");
                let artifact =
                    faena_plugin_sdk::save_artifact("note.txt", "text/plain", note.as_bytes())?;
                let resp = http::get(s(&input, "url"))?;
                Ok(json!({
                    "token_len": token.len(),
                    "copies": [shouted, stripped],
                    "artifact": artifact,
                    "status": resp.status,
                    "body": String::from_utf8_lossy(&resp.body),
                    "resumed_from": resumed,
                }))
            }
            "http" => {
                let resp = http::get(s(&input, "url"))?;
                Ok(json!({"status": resp.status}))
            }
            "secret" => Ok(json!({"len": faena_plugin_sdk::secret(s(&input, "name"))?.len()})),
            "form" => {
                let page = Page::open()?;
                page.goto(s(&input, "url"))?;
                page.fill("#name", s(&input, "name"))?;
                page.select("#kind", s(&input, "kind"))?;
                page.click("#submit")?;
                page.wait_for("#done", 5_000)?;
                Ok(json!({"done": page.text("#done")?, "url": page.url()?}))
            }
            "missing" => {
                let page = Page::open()?;
                page.goto(s(&input, "url"))?;
                page.wait_for("#never-there", 500)?;
                Ok(json!({}))
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                loop {
                    chunks.push(vec![1u8; 16 << 20]);
                    if chunks.len() > 1_000 {
                        return Ok(json!({"allocated_mib": chunks.len() * 16}));
                    }
                }
            }
            "read-file" => match std::fs::read_to_string(s(&input, "path")) {
                Ok(text) => Ok(json!({"read": text.len()})),
                Err(e) => Err(Error::business(format!("could not read the file: {e}"))),
            },
            "socket" => match std::net::TcpStream::connect(s(&input, "addr")) {
                Ok(_) => Ok(json!({"connected": true})),
                Err(e) => Err(Error::business(format!("could not connect: {e}"))),
            },
            "permit" => permit(&input, ctx),
            "http-get" => {
                let headers = input["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let resp = http::send(&http::Request {
                    method: "GET".into(),
                    url: s(&input, "url").into(),
                    headers,
                    body: None,
                    timeout_ms: None,
                })?;
                Ok(json!({"status": resp.status, "body": String::from_utf8_lossy(&resp.body)}))
            }
            "page-calls" => page_calls(s(&input, "url")),
            "http-session" => {
                let base = s(&input, "url");
                let login = http::Request {
                    method: "POST".into(),
                    url: format!("{base}/permits/api/login"),
                    headers: vec![(
                        "content-type".into(),
                        "application/x-www-form-urlencoded".into(),
                    )],
                    body: Some(b"user=arq.vera&password=permits-demo".to_vec()),
                    timeout_ms: None,
                };
                let first = http::send_no_redirect(&login)?;
                let header = |r: &http::Response, name: &str| {
                    r.headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                };
                let whoami = http::get(&format!("{base}/permits/api/whoami"))?;
                let followed = http::send(&login)?;
                Ok(json!({
                    "login_status": first.status,
                    "location": header(&first, "location"),
                    "set_cookie": header(&first, "set-cookie").is_some(),
                    "whoami_status": whoami.status,
                    "whoami": String::from_utf8_lossy(&whoami.body),
                    "followed_status": followed.status,
                    "jar": http::cookies().iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                }))
            }
            "panic" => panic!("probe panicked on purpose"),
            "fail" => Err(match s(&input, "kind") {
                "business" => Error::business("bad data").code("bad-data"),
                _ => Error::application("portal down"),
            }),
            other => Err(Error::business(format!("unknown operation `{other}`"))),
        }
    }
}

/// File a permit request in the permits simulator, the way a portal flow that keeps
/// its portal session does: a retry looks the request up in the session's own list
/// before filing again. `crash_after_submit`: the first attempt dies (a trap) right
/// after the portal accepted the request, before its checkpoint.
fn permit(input: &Value, ctx: &Context) -> Result<Value> {
    let keep = input["keep_state"].as_bool().unwrap_or(true);
    if keep {
        faena_plugin_sdk::keep_state()?;
    }
    let base = s(input, "url");
    let page = Page::open()?;
    page.goto(&format!("{base}/permits/requests"))?;
    if page.url()?.contains("/login") {
        page.fill_all(&[("#user", "arq.vera"), ("#password", "permits-demo")])?;
        page.click_and_wait("#login", 10_000)?;
        page.evaluate(&format!(
            "localStorage.setItem('draft', 'from attempt {}')",
            ctx.attempt
        ))?;
        faena_plugin_sdk::step("logged_in", None)?;
    }
    let key = &ctx.idempotency_key;
    if ctx.attempt > 1 {
        let draft = page.evaluate("localStorage.getItem('draft')")?;
        let found = page.evaluate(&format!(
            "(() => {{ const r = [...document.querySelectorAll('#requests tr')].find(r => r.dataset.note === {});
               return r ? r.querySelector('.permit-id').textContent : null; }})()",
            faena_plugin_sdk::serde_json::to_string(key).expect("strings serialize")
        ))?;
        if let Some(id) = found.as_str() {
            faena_plugin_sdk::step("filed", Some(id))?;
            return Ok(
                json!({"permit": id, "recovered": true, "attempt": ctx.attempt, "draft": draft}),
            );
        }
    }
    page.click_and_wait("#new", 10_000)?;
    page.fill("#address", s(input, "address"))?;
    page.wait_for("#kind option", 5_000)?;
    page.select_label("#kind", "Extension")?;
    page.check("#use-residential", true)?;
    page.fill("#floors", s(input, "floors"))?;
    page.fill("#note", key)?;
    page.check("#declaration", true)?;
    page.click_and_wait("#file", 10_000)?;
    let id = page.text("#permit-id")?;
    if input["crash_after_submit"].as_bool() == Some(true) && ctx.attempt == 1 {
        panic!("crashed after the portal filed {id}");
    }
    faena_plugin_sdk::step("filed", Some(&id))?;
    Ok(json!({"permit": id, "recovered": false, "attempt": ctx.attempt}))
}

/// Each page call once on the test server's `/calls` page; what the page saw comes
/// back for the test to check.
fn page_calls(url: &str) -> Result<Value> {
    let page = Page::open()?;
    page.goto(url)?;
    let title = page.title()?;
    let rows = page.texts("li.row")?;
    let count = page.count("li.row")?;
    let visible = (page.is_visible("li.row")?, page.is_visible("#hidden")?);
    page.check("#agree", true)?;
    page.check("#large", true)?;
    let radio_uncheck = page.check("#large", false).err().map(|e| e.message);
    let checked = page.evaluate(
        "[document.querySelector('#agree').checked, document.querySelector('#large').checked]",
    )?;
    page.select_label("#office", "Arequipa")?;
    let no_label = page
        .select_label("#office", "Cusco")
        .err()
        .map(|e| e.message);
    page.upload("#doc", "note.txt", "text/plain", b"hello file")?;
    page.fill("#search", "RUC 2055")?;
    page.press("#search", "Enter")?;
    page.click("#delete")?;
    page.dismiss_dialogs(true);
    page.click("#delete")?;
    page.hover("#menu")?;
    let submenu = page.is_visible("#submenu")?;
    page.wait_for_text("#log", "late", 5_000)?;
    let waited = page
        .wait_for_text("#log", "never", 300)
        .err()
        .map(|e| e.message);
    let html = page.content()?;
    page.set_cookies(&[faena_plugin_sdk::Cookie {
        name: "probe".into(),
        value: "42".into(),
        domain: "127.0.0.1".into(),
        path: "/".into(),
        expires: None,
        http_only: false,
        secure: false,
    }])?;
    let cookies: Vec<String> = page
        .cookies()?
        .iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect();
    let log = page.text("#log")?;
    page.click_and_wait("#next", 5_000)?;
    page.wait_for_url("/ping", 5_000)?;
    page.go_back()?;
    let back = page.url()?;
    page.evaluate("window.__beforeReload = 1")?;
    page.reload()?;
    let reloaded =
        page.evaluate("window.__beforeReload === undefined && location.pathname === '/calls'")?;
    Ok(json!({
        "title": title, "rows": rows, "count": count, "visible": [visible.0, visible.1],
        "radio_uncheck": radio_uncheck, "checked": checked, "no_label": no_label,
        "submenu": submenu, "waited": waited, "has_html": html.contains("<pre id=\"log\">"),
        "cookies": cookies, "log": log, "back": back, "reloaded": reloaded,
        "dialogs": page.dialogs(),
    }))
}

export!(Probe);

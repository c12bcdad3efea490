//! sunat: a logged-in session to a tax authority's electronic mailbox.
//!
//! Run as a session: `login` signs in once (RUC and user from the input, the password
//! from the secret `sunat_password`); `list_inbox` reads one page of notices;
//! `download` saves a notice's attachment (PDF or ZIP) as an artifact. The instance
//! lives as long as the session, so the login is kept here: when the portal lets the
//! session expire, the next call signs in again by itself and says so (`relogins`).
//!
//! Setting: `portal_url` (e.g. `http://127.0.0.1:8090`).

use std::sync::Mutex;

use faena_plugin_sdk::serde_json::{Value, json};
use faena_plugin_sdk::{
    Context, Error, Info, Operation, Page, Plugin, Result, export, log, required_setting, secret,
};

const PAGE_MS: u32 = 20_000;

struct Sunat;

struct Login {
    ruc: String,
    user: String,
}

/// The session's login, kept across calls by the long-lived instance.
static LOGIN: Mutex<Option<Login>> = Mutex::new(None);
static RELOGINS: Mutex<u32> = Mutex::new(0);

fn view(page: &Page) -> Result<String> {
    let v = page.evaluate("document.body ? (document.body.dataset.page || '') : ''")?;
    Ok(v.as_str().unwrap_or("").to_owned())
}

fn sign_in(page: &Page, base: &str, login: &Login) -> Result<()> {
    let password = secret("sunat_password")?;
    page.goto(&format!("{base}/sunat/login"))?;
    if view(page)? != "login" {
        return Err(
            Error::application("the portal did not show its login page").code("unexpected-page")
        );
    }
    page.fill_all(&[
        ("#ruc", &login.ruc),
        ("#usuario", &login.user),
        ("#clave", &password),
    ])?;
    page.click_and_wait("#ingresar", PAGE_MS)?;
    match view(page)?.as_str() {
        "buzon" => Ok(()),
        "login" => {
            let why = page.text("#error").unwrap_or_default();
            Err(
                Error::business(format!("the portal refused the login: {why}"))
                    .code("login-refused"),
            )
        }
        "unavailable" => Err(Error::application("the portal is unavailable").code("unavailable")),
        other => Err(
            Error::application(format!("unexpected page `{other}` after the login"))
                .code("unexpected-page"),
        ),
    }
}

/// Open `path` in the session; if the portal's session expired, sign in again and retry.
fn visit(page: &Page, base: &str, path: &str, expected: &str) -> Result<()> {
    for attempt in 0..2 {
        page.goto(&format!("{base}{path}"))?;
        let v = view(page)?;
        if v == expected {
            return Ok(());
        }
        if v == "login" && attempt == 0 {
            let guard = LOGIN.lock().expect("login lock");
            let login = guard.as_ref().ok_or_else(|| {
                Error::business("not logged in: open the session with `login` first")
                    .code("not-logged-in")
            })?;
            log("the portal session expired; signing in again");
            sign_in(page, base, login)?;
            *RELOGINS.lock().expect("relogins lock") += 1;
            continue;
        }
        let message = page.text("#error").unwrap_or_default();
        return Err(match v.as_str() {
            "no-message" => Error::business(message).code("no-such-message"),
            "unavailable" => Error::application("the portal is unavailable").code("unavailable"),
            _ => Error::application(format!(
                "expected the {expected} page, the portal shows `{v}`: {message}"
            ))
            .code("unexpected-page"),
        });
    }
    Err(Error::application("the portal keeps asking for the login").code("session-expired"))
}

fn text_field(input: &Value, name: &str) -> Result<String> {
    input[name]
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| Error::business(format!("input.{name}: required")).code("bad-input"))
}

fn login(input: &Value) -> Result<Value> {
    let base = required_setting("portal_url")?;
    let ruc = text_field(input, "ruc")?;
    if ruc.len() != 11 || !ruc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            Error::business(format!("input.ruc: `{ruc}` is not an 11-digit RUC")).code("bad-input"),
        );
    }
    let login = Login {
        ruc,
        user: text_field(input, "user")?,
    };
    let page = Page::open()?;
    sign_in(&page, &base, &login)?;
    let result = json!({"ruc": login.ruc, "user": login.user, "logged_in": true});
    *LOGIN.lock().expect("login lock") = Some(login);
    Ok(result)
}

fn list_inbox(input: &Value) -> Result<Value> {
    let base = required_setting("portal_url")?;
    let n = match &input["page"] {
        Value::Null => 1,
        v => v
            .as_u64()
            .filter(|p| *p >= 1)
            .ok_or_else(|| Error::business("input.page: a page number from 1").code("bad-input"))?,
    };
    let page = Page::open()?;
    visit(&page, &base, &format!("/sunat/buzon?page={n}"), "buzon")?;
    let messages = page.evaluate(
        "[...document.querySelectorAll('tr.mensaje')].map(r => ({
            id: Number(r.dataset.id),
            date: r.querySelector('.fecha').innerText.trim(),
            subject: r.querySelector('.asunto').innerText.trim(),
            attachment: r.querySelector('.adjunto').innerText.trim(),
        }))",
    )?;
    let shown: u64 = page.text("#pagina")?.trim().parse().unwrap_or(n);
    let pages: u64 = page.text("#paginas")?.trim().parse().unwrap_or(shown);
    Ok(json!({
        "page": shown,
        "pages": pages,
        "messages": messages,
        "relogins": *RELOGINS.lock().expect("relogins lock"),
    }))
}

fn download(input: &Value) -> Result<Value> {
    let base = required_setting("portal_url")?;
    let id = input["message_id"].as_u64().ok_or_else(|| {
        Error::business("input.message_id: a message id is required").code("bad-input")
    })?;
    let page = Page::open()?;
    visit(&page, &base, &format!("/sunat/buzon/{id}"), "mensaje")?;
    let href = page
        .attribute("#adjunto", "href")?
        .ok_or_else(|| Error::application(format!("message {id} shows no attachment link")))?;
    let file = page.text("#adjunto")?.trim().to_owned();
    let subject = page.text("h1")?.trim().to_owned();
    let artifact = page.download(&href, &file)?;
    Ok(json!({
        "message_id": id,
        "subject": subject,
        "file": file,
        "artifact_id": artifact,
        "relogins": *RELOGINS.lock().expect("relogins lock"),
    }))
}

impl Plugin for Sunat {
    fn info() -> Info {
        let needs = |op: Operation| op.browser().secret("sunat_password");
        Info::new(
            "sunat",
            env!("CARGO_PKG_VERSION"),
            "A logged-in session to the SUNAT electronic mailbox: list notices, download attachments",
        )
        .operation(needs(Operation::new(
            "login",
            "Sign in with RUC and user (the password is the secret `sunat_password`); opens the session",
            json!({
                "type": "object",
                "required": ["ruc", "user"],
                "properties": {
                    "ruc": {"type": "string", "pattern": "^[0-9]{11}$"},
                    "user": {"type": "string", "minLength": 1}
                }
            }),
        )))
        .operation(needs(Operation::new(
            "list_inbox",
            "One page of the inbox: id, date, subject and attachment of each notice",
            json!({"type": "object", "properties": {"page": {"type": "integer", "minimum": 1}}}),
        )))
        .operation(needs(Operation::new(
            "download",
            "Save a notice's attachment as an artifact",
            json!({"type": "object", "required": ["message_id"], "properties": {"message_id": {"type": "integer", "minimum": 1}}}),
        )))
    }

    fn run(operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        if ctx.session_id.is_none() {
            return Err(Error::business(
                "sunat runs in a session: open one with POST /api/v1/sessions",
            )
            .code("needs-session"));
        }
        match operation {
            "login" => login(&input),
            "list_inbox" => list_inbox(&input),
            "download" => download(&input),
            other => Err(Error::business(format!("sunat has no operation `{other}`"))),
        }
    }
}

export!(Sunat);

//! `faena:plugin/browser` for a running item. DOM work is one `Runtime.evaluate` per
//! call, with the selector passed as a JSON string literal (never spliced raw).

use base64::Engine as _;
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, EventDomContentEventFired,
};
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::listeners::EventStream;
use chromiumoxide::page::ScreenshotParams;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tracing::warn;
use wasmtime::component::Resource;

use super::state::KeptCookie;
use super::{COMMAND_TIMEOUT, PageHandle};
use crate::runtime::bindings::PluginError;
use crate::runtime::bindings::faena::plugin::browser::{Host, HostPage};
use crate::runtime::bindings::faena::plugin::types::Cookie;
use crate::runtime::state::ItemState;

type Res<T> = wasmtime::Result<Result<T, PluginError>>;

fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn not_found(selector: &str) -> PluginError {
    let mut e = PluginError::app(format!("no element matches `{selector}`"));
    e.code = Some("selector_not_found".into());
    e
}

/// Evaluate `expr` in the page, awaiting promises; the value comes back as JSON.
async fn eval(page: &Page, expr: String) -> Result<Value, PluginError> {
    let params = EvaluateParams::builder()
        .expression(expr)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .map_err(|e| PluginError::app(format!("evaluate: {e}")))?;
    let resp = tokio::time::timeout(COMMAND_TIMEOUT, page.execute(params))
        .await
        .map_err(|_| PluginError::app("the browser did not answer in time"))?
        .map_err(|e| PluginError::app(format!("browser: {e}")))?;
    if let Some(ex) = &resp.result.exception_details {
        let text = ex
            .exception
            .as_ref()
            .and_then(|o| o.description.clone())
            .unwrap_or_else(|| ex.text.clone());
        return Err(PluginError::app(format!("script error: {text}")));
    }
    Ok(resp.result.result.value.clone().unwrap_or(Value::Null))
}

/// Where the page is, for an error that says what it shows instead.
async fn whereabouts(page: &Page) -> String {
    match eval(page, "[location.href, document.title]".into()).await {
        Ok(Value::Array(v)) => {
            let url = v.first().and_then(Value::as_str).unwrap_or("");
            match v.get(1).and_then(Value::as_str) {
                Some(title) if !title.is_empty() => format!("the page is {url} (\"{title}\")"),
                _ => format!("the page is {url}"),
            }
        }
        _ => "the page did not answer".into(),
    }
}

/// Click the element `selector` matches, the way a user would: the mouse pressed and
/// released at its centre, scrolled into view first when that centre is not the
/// element's (outside the window, clipped by a scrolling box, under a fixed header).
/// One evaluation finds the element, scrolls it and answers where it is (and, given
/// `mark`, marks the document, see [`Mark`]); answers the page's address before the
/// click. chromiumoxide's own element click took about ten round trips and waited for
/// a rendered frame to learn whether the element was in view.
///
/// A click that submits a form the browser refuses (HTML constraint validation: a
/// required field left empty, a number off its `step`) fails at once with the business
/// error that says so, with the field and the browser's own message: the browser shows
/// that message only in a bubble, and without this the flow would wait for a page that
/// never comes and retry what no retry can fix. The click is still made, so the failure
/// screenshot shows the message.
async fn click(page: &Page, selector: &str, mark: Option<&str>) -> Result<String, PluginError> {
    let js = format!(
        "(() => {{ {mark} let el; try {{ el = document.querySelector({s}); }} catch (e) {{}} if (!el) return {{missing: true}};
           let refused = null;
           const form = el.type === 'submit' ? el.form : null;
           if (form && !form.noValidate && !el.formNoValidate) {{
             const bad = [...form.elements].find(x => x.willValidate && !x.checkValidity());
             if (bad) refused = {{field: bad.name || bad.id || bad.tagName.toLowerCase(), message: bad.validationMessage}};
           }}
           const centre = () => {{ const b = [...el.getClientRects()].find(b => b.width * b.height > 1);
             return b ? [b.left + b.width / 2, b.top + b.height / 2] : null; }};
           let at = centre();
           const hit = at && document.elementFromPoint(at[0], at[1]);
           if (at && !(hit && (hit === el || el.contains(hit)))) {{
             el.scrollIntoView({{block: 'center', inline: 'center', behavior: 'instant'}});
             at = centre();
           }}
           return {{href: location.href, refused, at}};
         }})()",
        mark = mark.map(set_mark).unwrap_or_default(),
        s = lit(selector)
    );
    let found = eval(page, js).await?;
    if found.get("missing").is_some() {
        return Err(not_found(selector));
    }
    let href = found["href"].as_str().unwrap_or_default().to_owned();
    let refused = found["refused"].as_object().map(|bad| {
        let field = bad.get("field").and_then(Value::as_str).unwrap_or("");
        let message = bad.get("message").and_then(Value::as_str).unwrap_or("");
        let mut e = PluginError::business(format!(
            "the browser refused to submit the form of `{selector}`: field `{field}`: {message}"
        ));
        e.code = Some("invalid_form".into());
        e
    });
    let at = match found["at"].as_array().map(|a| {
        let n = |i: usize| a.get(i).and_then(Value::as_f64);
        (n(0), n(1))
    }) {
        Some((Some(x), Some(y))) => chromiumoxide::layout::Point { x, y },
        _ => {
            return Err(refused.unwrap_or_else(|| {
                PluginError::app(format!(
                    "clicking `{selector}` failed: the element has no visible box"
                ))
            }));
        }
    };
    let clicked = match tokio::time::timeout(COMMAND_TIMEOUT, page.click(at)).await {
        Ok(Ok(_)) => Ok(href),
        Ok(Err(e)) => Err(PluginError::app(format!(
            "clicking `{selector}` failed: {e}"
        ))),
        Err(_) => Err(PluginError::app(format!("clicking `{selector}` timed out"))),
    };
    match refused {
        Some(e) => Err(e),
        None => clicked,
    }
}

impl ItemState {
    fn page(&self, handle: &Resource<PageHandle>) -> wasmtime::Result<Page> {
        self.host.check_lease()?;
        Ok(self.table.get(handle)?.page.clone())
    }
}

impl Host for ItemState {
    async fn open_page(&mut self) -> Res<Resource<PageHandle>> {
        if !self.browser.granted {
            warn!(plugin = %self.browser.plugin, "denied: browser not granted");
            return Ok(Err(PluginError::denied(format!(
                "the browser is not granted to plugin `{}`",
                self.browser.plugin
            ))));
        }
        match self.browser.open_page().await {
            Ok(page) => Ok(Ok(self.table.push(PageHandle { page })?)),
            Err(e) => Ok(Err(PluginError::app(e))),
        }
    }

    async fn keep_state(&mut self) -> Res<()> {
        Ok(self.keep_state().await)
    }
}

/// The document a navigation starts from: its address, and the mark it was given.
struct Mark {
    from: String,
    nonce: String,
    /// The page's `DOMContentLoaded` events from before the mark on: a wait for the
    /// next document checks as soon as one has loaded, not at its next poll.
    loaded: Option<EventStream<EventDomContentEventFired>>,
}

/// The page's `DOMContentLoaded` events from now on; without them (the browser's
/// connection is going) a wait only polls.
async fn loaded_events(page: &Page) -> Option<EventStream<EventDomContentEventFired>> {
    tokio::time::timeout(
        COMMAND_TIMEOUT,
        page.event_listener::<EventDomContentEventFired>(),
    )
    .await
    .ok()
    .and_then(Result::ok)
}

/// The statement that gives the current document the mark `nonce` (see [`Mark`]).
fn set_mark(nonce: &str) -> String {
    format!("window.__faenaMark = {};", lit(nonce))
}

/// Mark the current document with a mark of its own (a document restored from the
/// back/forward cache still carries an earlier one) and note its address.
async fn mark_document(page: &Page) -> Result<Mark, PluginError> {
    let loaded = loaded_events(page).await;
    let nonce = ulid::Ulid::new().to_string();
    let from = eval(page, format!("{} location.href", set_mark(&nonce))).await?;
    Ok(Mark {
        from: from.as_str().unwrap_or_default().to_owned(),
        nonce,
        loaded,
    })
}

/// Wait, at most `timeout_ms`, until the marked document has been replaced by one that
/// has loaded: a new document, or (going back, which may restore an earlier document as
/// it was) one at another address.
async fn new_document(
    page: &Page,
    mark: Mark,
    timeout_ms: u32,
    after: &str,
) -> Result<(), PluginError> {
    let js = format!(
        "(window.__faenaMark !== {} || location.href !== {}) && document.readyState !== 'loading'",
        lit(&mark.nonce),
        lit(&mark.from)
    );
    wait_until(
        page,
        js,
        timeout_ms,
        &format!("no new page loaded after {after}"),
        mark.loaded,
    )
    .await
}

/// How often a wait checks its condition. An event in `wake` makes it check at once.
const POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// Wait, at most `timeout_ms`, until `js` evaluates to true; `what` says what was
/// awaited when it does not. Checks every [`POLL`], and at once on each event of
/// `wake`: a poll alone left a page that had loaded waiting for the rest of the
/// interval, at every navigation of a flow.
async fn wait_until(
    page: &Page,
    js: String,
    timeout_ms: u32,
    what: &str,
    mut wake: Option<EventStream<EventDomContentEventFired>>,
) -> Result<(), PluginError> {
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms.into());
    loop {
        // While a navigation is under way the evaluation may fail: keep polling.
        if let Ok(Value::Bool(true)) = eval(page, js.clone()).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let mut e = PluginError::app(format!(
                "{what} within {timeout_ms} ms; {}",
                whereabouts(page).await
            ));
            e.code = Some("timeout".into());
            return Err(e);
        }
        match wake.as_mut() {
            Some(events) => tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                event = events.next() => if event.is_none() {
                    wake = None; // the page is gone: the next check says so
                },
            },
            None => tokio::time::sleep(POLL).await,
        }
    }
}

/// The element `selector` matches, found through the DOM domain, for the calls that act
/// on the element itself (a key press, a hover).
async fn find(page: &Page, selector: &str) -> Result<chromiumoxide::Element, PluginError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, page.find_element(selector)).await {
        Err(_) => Err(PluginError::app("the browser did not answer in time")),
        Ok(Err(_)) => Err(not_found(selector)),
        Ok(Ok(el)) => Ok(el),
    }
}

/// Run `body` (JavaScript using `el`) on the element `selector` matches; a missing
/// element is [`not_found`].
async fn on_element(page: &Page, selector: &str, body: &str) -> Result<Value, PluginError> {
    let js = format!(
        "(() => {{ const el = document.querySelector({s}); if (!el) return {{missing: true}}; return {{value: (() => {{ {body} }})()}}; }})()",
        s = lit(selector)
    );
    let v = eval(page, js).await?;
    if v.get("missing").is_some() {
        return Err(not_found(selector));
    }
    Ok(v.get("value").cloned().unwrap_or(Value::Null))
}

impl HostPage for ItemState {
    async fn goto(&mut self, h: Resource<PageHandle>, url: String) -> Res<()> {
        let page = self.page(&h)?;
        Ok(
            match tokio::time::timeout(COMMAND_TIMEOUT, page.goto(url.as_str())).await {
                Err(_) => Err(PluginError::app(format!("loading {url} timed out"))),
                Ok(Err(e)) => Err(PluginError::app(format!("loading {url} failed: {e}"))),
                Ok(Ok(_)) => Ok(()),
            },
        )
    }

    async fn fill(&mut self, h: Resource<PageHandle>, selector: String, value: String) -> Res<()> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({s}); if (!el) return false; el.focus(); el.value = {v};
               el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            s = lit(&selector),
            v = lit(&value)
        );
        Ok(match eval(&page, js).await {
            Ok(Value::Bool(true)) => Ok(()),
            Ok(_) => Err(not_found(&selector)),
            Err(e) => Err(e),
        })
    }

    async fn click(&mut self, h: Resource<PageHandle>, selector: String) -> Res<()> {
        let page = self.page(&h)?;
        Ok(click(&page, &selector, None).await.map(drop))
    }

    async fn click_and_wait(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        timeout_ms: u32,
    ) -> Res<()> {
        let page = self.page(&h)?;
        // Listening before the click, marking the document in the click's own look-up.
        let loaded = loaded_events(&page).await;
        let nonce = ulid::Ulid::new().to_string();
        let from = match click(&page, &selector, Some(&nonce)).await {
            Ok(from) => from,
            Err(e) => return Ok(Err(e)),
        };
        let mark = Mark {
            from,
            nonce,
            loaded,
        };
        Ok(new_document(&page, mark, timeout_ms, &format!("clicking `{selector}`")).await)
    }

    async fn select(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        value: String,
    ) -> Res<()> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({s}); if (!el) return 'missing';
               if (![...el.options].some(o => o.value === {v})) return 'no-option';
               el.value = {v}; el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}})); return 'ok'; }})()",
            s = lit(&selector),
            v = lit(&value)
        );
        Ok(match eval(&page, js).await {
            Ok(v) if v == "ok" => Ok(()),
            Ok(v) if v == "no-option" => Err(PluginError::business(format!(
                "`{selector}` has no option `{value}`"
            ))),
            Ok(_) => Err(not_found(&selector)),
            Err(e) => Err(e),
        })
    }

    async fn wait_for(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        timeout_ms: u32,
    ) -> Res<()> {
        let page = self.page(&h)?;
        let js = format!("!!document.querySelector({})", lit(&selector));
        let what = format!("`{selector}` did not appear");
        Ok(wait_until(&page, js, timeout_ms, &what, None).await)
    }

    async fn exists(&mut self, h: Resource<PageHandle>, selector: String) -> Res<bool> {
        let page = self.page(&h)?;
        Ok(eval(
            &page,
            format!("!!document.querySelector({})", lit(&selector)),
        )
        .await
        .map(|v| v == Value::Bool(true)))
    }

    async fn text(&mut self, h: Resource<PageHandle>, selector: String) -> Res<String> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({}); return el ? (el.innerText ?? el.textContent) : null; }})()",
            lit(&selector)
        );
        Ok(match eval(&page, js).await {
            Ok(Value::String(s)) => Ok(s),
            Ok(_) => Err(not_found(&selector)),
            Err(e) => Err(e),
        })
    }

    async fn attribute(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        name: String,
    ) -> Res<Option<String>> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({}); return el ? [el.getAttribute({})] : null; }})()",
            lit(&selector),
            lit(&name)
        );
        Ok(match eval(&page, js).await {
            Ok(Value::Array(v)) => Ok(v.first().and_then(|x| x.as_str()).map(str::to_owned)),
            Ok(_) => Err(not_found(&selector)),
            Err(e) => Err(e),
        })
    }

    async fn screenshot(&mut self, h: Resource<PageHandle>) -> Res<Vec<u8>> {
        let page = self.page(&h)?;
        let params = ScreenshotParams::builder()
            .format(CaptureScreenshotFormat::Png)
            .full_page(true)
            .build();
        Ok(
            match tokio::time::timeout(COMMAND_TIMEOUT, page.screenshot(params)).await {
                Ok(Ok(png)) => Ok(png),
                Ok(Err(e)) => Err(PluginError::app(format!("screenshot failed: {e}"))),
                Err(_) => Err(PluginError::app("screenshot timed out")),
            },
        )
    }

    async fn url(&mut self, h: Resource<PageHandle>) -> Res<String> {
        let page = self.page(&h)?;
        Ok(match page.url().await {
            Ok(u) => Ok(u.unwrap_or_default()),
            Err(e) => Err(PluginError::app(format!("browser: {e}"))),
        })
    }

    async fn download(
        &mut self,
        h: Resource<PageHandle>,
        url: String,
        name: String,
    ) -> Res<String> {
        if let Err(e) = self.host_running() {
            return Ok(Err(e));
        }
        let page = self.page(&h)?;
        // Fetched inside the page, so the portal sees the session's cookies.
        let js = format!(
            "(async () => {{ const r = await fetch({u}, {{credentials: 'include'}});
               const b = new Uint8Array(await r.arrayBuffer()); let s = '';
               for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode.apply(null, b.subarray(i, i + 0x8000));
               return {{status: r.status, type: r.headers.get('content-type'), data: btoa(s)}}; }})()",
            u = lit(&url)
        );
        let v = match eval(&page, js).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        let status = v["status"].as_u64().unwrap_or(0);
        if !(200..300).contains(&status) {
            return Ok(Err(PluginError::app(format!(
                "download of {url} answered {status}"
            ))));
        }
        let data = match base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap_or(""))
        {
            Ok(d) => d,
            Err(e) => return Ok(Err(PluginError::app(format!("download of {url}: {e}")))),
        };
        let content_type = v["type"]
            .as_str()
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok(self
            .host
            .save_artifact(&name, &content_type, data)
            .await
            .map(|a| a.id)
            .map_err(|e| PluginError::app(e.to_string())))
    }

    async fn evaluate(&mut self, h: Resource<PageHandle>, expression: String) -> Res<String> {
        let page = self.page(&h)?;
        Ok(eval(&page, expression).await.map(|v| json!(v).to_string()))
    }

    async fn cookies(&mut self, _h: Resource<PageHandle>) -> Res<Vec<Cookie>> {
        Ok(self
            .browser
            .cookies()
            .await
            .map(|c| c.iter().map(KeptCookie::to_wit).collect())
            .map_err(PluginError::app))
    }

    async fn set_cookies(&mut self, _h: Resource<PageHandle>, cookies: Vec<Cookie>) -> Res<()> {
        self.host.check_lease()?;
        let kept: Result<Vec<KeptCookie>, String> =
            cookies.iter().map(KeptCookie::from_wit).collect();
        Ok(match kept {
            Ok(kept) => match self.browser.set_cookies(&kept).await {
                Ok(refused) if refused.is_empty() => Ok(()),
                Ok(refused) => Err(PluginError::business(format!(
                    "the browser refused cookies: {}",
                    refused.join("; ")
                ))),
                Err(e) => Err(PluginError::app(e)),
            },
            Err(e) => Err(PluginError::business(e)),
        })
    }

    async fn title(&mut self, h: Resource<PageHandle>) -> Res<String> {
        let page = self.page(&h)?;
        Ok(eval(&page, "document.title".into())
            .await
            .map(|v| v.as_str().unwrap_or("").to_owned()))
    }

    async fn content(&mut self, h: Resource<PageHandle>) -> Res<String> {
        let page = self.page(&h)?;
        Ok(eval(&page, "document.documentElement.outerHTML".into())
            .await
            .map(|v| v.as_str().unwrap_or("").to_owned()))
    }

    async fn count(&mut self, h: Resource<PageHandle>, selector: String) -> Res<u32> {
        let page = self.page(&h)?;
        let js = format!("document.querySelectorAll({}).length", lit(&selector));
        Ok(eval(&page, js)
            .await
            .map(|v| v.as_u64().unwrap_or(0) as u32))
    }

    async fn texts(&mut self, h: Resource<PageHandle>, selector: String) -> Res<Vec<String>> {
        let page = self.page(&h)?;
        let js = format!(
            "[...document.querySelectorAll({})].map(el => el.innerText ?? el.textContent)",
            lit(&selector)
        );
        Ok(eval(&page, js).await.map(|v| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| t.as_str().unwrap_or("").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        }))
    }

    async fn is_visible(&mut self, h: Resource<PageHandle>, selector: String) -> Res<bool> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({}); if (!el) return false;
               const s = getComputedStyle(el); return s.visibility !== 'hidden' && s.display !== 'none' && el.getClientRects().length > 0; }})()",
            lit(&selector)
        );
        Ok(eval(&page, js).await.map(|v| v == Value::Bool(true)))
    }

    async fn check(&mut self, h: Resource<PageHandle>, selector: String, checked: bool) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        let body = format!(
            "if (el.type !== 'checkbox' && el.type !== 'radio') return 'not-checkable';
             if (el.type === 'radio' && !{checked}) return 'radio';
             if (el.checked !== {checked}) el.click();
             return el.checked === {checked} ? 'ok' : 'refused';"
        );
        Ok(match on_element(&page, &selector, &body).await {
            Ok(v) if v == "ok" => Ok(()),
            Ok(v) if v == "not-checkable" => Err(PluginError::business(format!(
                "`{selector}` is not a checkbox or a radio button"
            ))),
            Ok(v) if v == "radio" => Err(PluginError::business(format!(
                "`{selector}` is a radio button: choose another one of its group instead of unchecking it"
            ))),
            Ok(_) => Err(PluginError::app(format!(
                "`{selector}` did not change when clicked (disabled, or the page prevents it)"
            ))),
            Err(e) => Err(e),
        })
    }

    async fn select_label(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        label: String,
    ) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        let body = format!(
            "const o = [...(el.options || [])].find(o => o.label.trim() === {l} || o.text.trim() === {l});
             if (!o) return 'no-option';
             el.value = o.value; el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}})); return 'ok';",
            l = lit(label.trim())
        );
        Ok(match on_element(&page, &selector, &body).await {
            Ok(v) if v == "ok" => Ok(()),
            Ok(_) => Err(PluginError::business(format!(
                "`{selector}` has no option labelled `{label}`"
            ))),
            Err(e) => Err(e),
        })
    }

    async fn press(&mut self, h: Resource<PageHandle>, selector: String, key: String) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        let el = match find(&page, &selector).await {
            Ok(el) => el,
            Err(e) => return Ok(Err(e)),
        };
        let pressed = async {
            el.focus().await?;
            el.press_key(&key).await
        };
        Ok(match tokio::time::timeout(COMMAND_TIMEOUT, pressed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(PluginError::business(format!(
                "pressing `{key}` in `{selector}` failed: {e}"
            ))),
            Err(_) => Err(PluginError::app(format!("pressing `{key}` timed out"))),
        })
    }

    async fn upload(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        name: String,
        content_type: String,
        data: Vec<u8>,
    ) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        // Built inside the page (not a path on the browser's disk), so it works the same
        // with a browser on another machine.
        let body = format!(
            "if (el.type !== 'file') return 'not-file';
             const b = atob({d}); const bytes = new Uint8Array(b.length);
             for (let i = 0; i < b.length; i++) bytes[i] = b.charCodeAt(i);
             const dt = new DataTransfer(); dt.items.add(new File([bytes], {n}, {{type: {t}}}));
             el.files = dt.files;
             el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}}));
             return 'ok';",
            d = lit(&base64::engine::general_purpose::STANDARD.encode(&data)),
            n = lit(&name),
            t = lit(&content_type)
        );
        Ok(match on_element(&page, &selector, &body).await {
            Ok(v) if v == "ok" => Ok(()),
            Ok(_) => Err(PluginError::business(format!(
                "`{selector}` is not a file input"
            ))),
            Err(e) => Err(e),
        })
    }

    async fn reload(&mut self, h: Resource<PageHandle>) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        let mark = match mark_document(&page).await {
            Ok(mark) => mark,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = eval(&page, "setTimeout(() => location.reload(), 0)".into()).await {
            return Ok(Err(e));
        }
        Ok(new_document(&page, mark, COMMAND_TIMEOUT.as_millis() as u32, "reloading").await)
    }

    async fn go_back(&mut self, h: Resource<PageHandle>) -> Res<()> {
        self.host.check_lease()?;
        let page = self.page(&h)?;
        let mark = match mark_document(&page).await {
            Ok(mark) => mark,
            Err(e) => return Ok(Err(e)),
        };
        match eval(
            &page,
            "history.length > 1 ? (setTimeout(() => history.back(), 0), true) : false".into(),
        )
        .await
        {
            Ok(Value::Bool(true)) => {}
            Ok(_) => {
                return Ok(Err(PluginError::business(
                    "the page has no history to go back to",
                )));
            }
            Err(e) => return Ok(Err(e)),
        }
        Ok(new_document(
            &page,
            mark,
            COMMAND_TIMEOUT.as_millis() as u32,
            "going back",
        )
        .await)
    }

    async fn wait_for_url(
        &mut self,
        h: Resource<PageHandle>,
        part: String,
        timeout_ms: u32,
    ) -> Res<()> {
        let page = self.page(&h)?;
        let js = format!("location.href.includes({})", lit(&part));
        let what = format!("the URL did not come to contain `{part}`");
        Ok(wait_until(&page, js, timeout_ms, &what, None).await)
    }

    async fn wait_for_text(
        &mut self,
        h: Resource<PageHandle>,
        selector: String,
        text: String,
        timeout_ms: u32,
    ) -> Res<()> {
        let page = self.page(&h)?;
        let js = format!(
            "(() => {{ const el = document.querySelector({}); return !!el && (el.innerText ?? el.textContent).includes({}); }})()",
            lit(&selector),
            lit(&text)
        );
        let what = format!("`{selector}` did not come to show `{text}`");
        Ok(wait_until(&page, js, timeout_ms, &what, None).await)
    }

    async fn hover(&mut self, h: Resource<PageHandle>, selector: String) -> Res<()> {
        let page = self.page(&h)?;
        let el = match find(&page, &selector).await {
            Ok(el) => el,
            Err(e) => return Ok(Err(e)),
        };
        Ok(
            match tokio::time::timeout(COMMAND_TIMEOUT, el.hover()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(PluginError::app(format!(
                    "hovering over `{selector}` failed: {e}"
                ))),
                Err(_) => Err(PluginError::app(format!(
                    "hovering over `{selector}` timed out"
                ))),
            },
        )
    }

    async fn dialogs(&mut self, _h: Resource<PageHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.browser.dialogs())
    }

    async fn dismiss_dialogs(
        &mut self,
        _h: Resource<PageHandle>,
        dismiss: bool,
    ) -> wasmtime::Result<()> {
        self.browser.dismiss_dialogs(dismiss);
        Ok(())
    }

    async fn drop(&mut self, h: Resource<PageHandle>) -> wasmtime::Result<()> {
        // The page itself closes with the item's context.
        self.table.delete(h)?;
        Ok(())
    }
}

impl ItemState {
    fn host_running(&self) -> Result<(), PluginError> {
        if self.host.run.is_some() || self.host.session_id.is_some() {
            Ok(())
        } else {
            Err(PluginError::denied(
                "downloads are only available while running an item or a session call",
            ))
        }
    }
}

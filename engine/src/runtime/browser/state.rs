//! A browser context's portal state (cookies, local storage): read out of a context to
//! be kept across an item's attempts, and put back into the next attempt's context.

use chromiumoxide::cdp::browser_protocol::network::{
    Cookie as CdpCookie, CookieParam, CookieSameSite, TimeSinceEpoch,
};
use chromiumoxide::cdp::browser_protocol::page::AddScriptToEvaluateOnNewDocumentParams;
use chromiumoxide::cdp::browser_protocol::storage::{GetCookiesParams, SetCookiesParams};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{BrowserCtx, COMMAND_TIMEOUT};
use crate::runtime::bindings::faena::plugin::types::Cookie;

/// A cookie as kept: what CDP needs to set it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptCookie {
    pub name: String,
    pub value: String,
    pub domain: String,
    pub path: String,
    /// Unix seconds; none for a session cookie.
    #[serde(default)]
    pub expires: Option<f64>,
    #[serde(default)]
    pub http_only: bool,
    #[serde(default)]
    pub secure: bool,
    #[serde(default)]
    pub same_site: Option<String>,
}

/// One origin's local storage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginStorage {
    pub origin: String,
    pub items: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BrowserState {
    #[serde(default)]
    pub cookies: Vec<KeptCookie>,
    #[serde(default)]
    pub storage: Vec<OriginStorage>,
}

impl From<&CdpCookie> for KeptCookie {
    fn from(c: &CdpCookie) -> Self {
        KeptCookie {
            name: c.name.clone(),
            value: c.value.clone(),
            domain: c.domain.clone(),
            path: c.path.clone(),
            expires: (!c.session && c.expires > 0.0).then_some(c.expires),
            http_only: c.http_only,
            secure: c.secure,
            same_site: c
                .same_site
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.as_str().map(str::to_owned)),
        }
    }
}

impl KeptCookie {
    /// The cookie as CDP sets it. A host-only cookie (a domain without a leading dot)
    /// is set by URL and no domain: with one, Chromium would make it a domain cookie,
    /// and refuses `__Host-` cookies outright.
    fn param(&self) -> CookieParam {
        let mut p = CookieParam::new(self.name.clone(), self.value.clone());
        if self.domain.starts_with('.') {
            p.domain = Some(self.domain.clone());
        } else {
            let scheme = if self.secure { "https" } else { "http" };
            p.url = Some(format!("{scheme}://{}{}", self.domain, self.path));
        }
        p.path = Some(self.path.clone());
        p.http_only = Some(self.http_only);
        p.secure = Some(self.secure);
        p.expires = self.expires.map(TimeSinceEpoch::new);
        p.same_site = self
            .same_site
            .as_ref()
            .and_then(|s| serde_json::from_value::<CookieSameSite>(serde_json::json!(s)).ok());
        p
    }

    fn same(&self, other: &KeptCookie) -> bool {
        self.name == other.name && self.domain == other.domain && self.path == other.path
    }

    pub fn to_wit(&self) -> Cookie {
        Cookie {
            name: self.name.clone(),
            value: self.value.clone(),
            domain: self.domain.clone(),
            path: self.path.clone(),
            expires: self.expires.map(|e| e as i64),
            http_only: self.http_only,
            secure: self.secure,
        }
    }

    pub fn from_wit(c: &Cookie) -> Result<KeptCookie, String> {
        if c.name.is_empty() || c.domain.is_empty() {
            return Err(format!(
                "cookie `{}`: a name and a domain are required",
                c.name
            ));
        }
        Ok(KeptCookie {
            name: c.name.clone(),
            value: c.value.clone(),
            domain: c.domain.clone(),
            path: if c.path.is_empty() {
                "/".into()
            } else {
                c.path.clone()
            },
            expires: c.expires.map(|e| e as f64),
            http_only: c.http_only,
            secure: c.secure,
            same_site: None,
        })
    }
}

/// The script that puts kept local storage back, once per tab, before the portal's own
/// scripts run on each of the kept origins.
fn storage_script(storage: &[OriginStorage]) -> String {
    let data: serde_json::Map<String, serde_json::Value> = storage
        .iter()
        .map(|o| (o.origin.clone(), serde_json::json!(o.items)))
        .collect();
    format!(
        "(() => {{ const kept = {}; const items = kept[location.origin]; if (!items) return;
           try {{ if (sessionStorage.getItem('__faena_restored')) return;
             for (const [k, v] of items) localStorage.setItem(k, v);
             sessionStorage.setItem('__faena_restored', '1'); }} catch (e) {{}} }})()",
        serde_json::Value::Object(data)
    )
}

impl BrowserCtx {
    /// The cookies of this run's context (none before a page was opened).
    pub async fn cookies(&self) -> Result<Vec<KeptCookie>, String> {
        let Some(ctx) = &self.context else {
            return Ok(Vec::new());
        };
        let params = GetCookiesParams {
            browser_context_id: Some(ctx.id.clone()),
        };
        let got = tokio::time::timeout(COMMAND_TIMEOUT, ctx.browser.execute(params))
            .await
            .map_err(|_| "the browser did not answer in time".to_owned())?
            .map_err(|e| format!("reading cookies: {e}"))?;
        Ok(got.result.cookies.iter().map(KeptCookie::from).collect())
    }

    /// Set cookies one by one (Chromium refuses a whole batch for one bad cookie);
    /// the ones it refused, with why.
    pub async fn set_cookies(&self, cookies: &[KeptCookie]) -> Result<Vec<String>, String> {
        let Some(ctx) = &self.context else {
            return Err("no page is open".into());
        };
        let mut refused = Vec::new();
        for cookie in cookies {
            let mut params = SetCookiesParams::new(vec![cookie.param()]);
            params.browser_context_id = Some(ctx.id.clone());
            match tokio::time::timeout(COMMAND_TIMEOUT, ctx.browser.execute(params)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => refused.push(format!("{} ({}): {e}", cookie.name, cookie.domain)),
                Err(_) => return Err("the browser did not answer in time".into()),
            }
        }
        Ok(refused)
    }

    /// What this run's portal state is now, for keeping: the context's cookies and the
    /// local storage of its pages' origins, over what was restored into it (a cookie
    /// that could not be restored, or a run that never opened a page, keeps what an
    /// earlier attempt left).
    pub async fn capture(&self) -> BrowserState {
        let mut state = self.restore.clone();
        if self.context.is_none() {
            return state;
        }
        match self.cookies().await {
            Ok(live) => {
                let mut cookies = live;
                for lost in &self.unrestored {
                    if !cookies.iter().any(|c| c.same(lost)) {
                        cookies.push(lost.clone());
                    }
                }
                state.cookies = cookies;
            }
            Err(e) => warn!(plugin = %self.plugin, error = %e, "cookies could not be read to keep"),
        }
        for page in &self.pages {
            let js = "(() => { try { return [location.origin, Object.entries(localStorage)]; } catch (e) { return null; } })()";
            let Ok(Ok(v)) = tokio::time::timeout(COMMAND_TIMEOUT, page.evaluate(js)).await else {
                continue;
            };
            let Some(Ok((origin, items))) = v
                .value()
                .cloned()
                .map(serde_json::from_value::<(String, Vec<(String, String)>)>)
            else {
                continue;
            };
            if origin == "null" || !origin.starts_with("http") {
                continue;
            }
            state.storage.retain(|o| o.origin != origin);
            state.storage.push(OriginStorage { origin, items });
        }
        state
    }

    /// Put kept state back: cookies into the context now (or when it is created), local
    /// storage into every page opened from now on.
    pub async fn restore(&mut self, state: BrowserState) {
        self.restore = state;
        if self.context.is_some() {
            self.restore_cookies().await;
        }
    }

    async fn restore_cookies(&mut self) {
        let cookies = self.restore.cookies.clone();
        let refused = match self.set_cookies(&cookies).await {
            Ok(refused) => refused,
            Err(e) => vec![e],
        };
        if refused.is_empty() {
            return;
        }
        warn!(plugin = %self.plugin, refused = ?refused, "kept cookies the browser refused");
        // Kept as they were for the next attempt; this one goes on without them.
        self.unrestored = cookies;
    }

    /// Called for a context just created and each page just opened. What cannot be
    /// put back is logged: the run goes on without it.
    pub(super) async fn apply_restore(&mut self, page: &chromiumoxide::Page, first: bool) {
        if first && !self.restore.cookies.is_empty() {
            self.restore_cookies().await;
        }
        if !self.restore.storage.is_empty() {
            let params =
                AddScriptToEvaluateOnNewDocumentParams::new(storage_script(&self.restore.storage));
            if let Err(e) = tokio::time::timeout(COMMAND_TIMEOUT, page.execute(params)).await {
                warn!(plugin = %self.plugin, error = %e, "kept local storage could not be put back");
            }
        }
    }
}

//! A browser context's portal state (cookies, local storage): read out of a context to
//! be kept across an item's attempts, and put back into the next attempt's context.

use chromiumoxide::cdp::browser_protocol::network::{
    Cookie as CdpCookie, CookieParam, CookieSameSite, TimeSinceEpoch,
};
use chromiumoxide::cdp::browser_protocol::page::AddScriptToEvaluateOnNewDocumentParams;
use chromiumoxide::cdp::browser_protocol::storage::{GetCookiesParams, SetCookiesParams};
use serde::{Deserialize, Serialize};

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
    fn param(&self) -> CookieParam {
        let mut p = CookieParam::new(self.name.clone(), self.value.clone());
        p.domain = Some(self.domain.clone());
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

    pub async fn set_cookies(&self, cookies: &[KeptCookie]) -> Result<(), String> {
        let Some(ctx) = &self.context else {
            return Err("no page is open".into());
        };
        if cookies.is_empty() {
            return Ok(());
        }
        let mut params = SetCookiesParams::new(cookies.iter().map(KeptCookie::param).collect());
        params.browser_context_id = Some(ctx.id.clone());
        tokio::time::timeout(COMMAND_TIMEOUT, ctx.browser.execute(params))
            .await
            .map_err(|_| "the browser did not answer in time".to_owned())?
            .map_err(|e| format!("setting cookies: {e}"))?;
        Ok(())
    }

    /// What this run's context holds now, for keeping; `None` when it never opened
    /// a page (what an earlier attempt kept then stays as it was).
    pub async fn capture(&self) -> Option<BrowserState> {
        self.context.as_ref()?;
        let cookies = self.cookies().await.ok()?;
        let mut storage: Vec<OriginStorage> = self.restore.storage.clone();
        for page in &self.pages {
            let js = "(() => { try { return [location.origin, Object.entries(localStorage)]; } catch (e) { return null; } })()";
            let Ok(Some(v)) = page.evaluate(js).await.map(|r| r.value().cloned()) else {
                continue;
            };
            let Ok((origin, items)) = serde_json::from_value::<(String, Vec<(String, String)>)>(v)
            else {
                continue;
            };
            if origin == "null" || !origin.starts_with("http") {
                continue;
            }
            storage.retain(|o| o.origin != origin);
            storage.push(OriginStorage { origin, items });
        }
        Some(BrowserState { cookies, storage })
    }

    /// Put kept state back: cookies into the context now (or when it is created), local
    /// storage into every page opened from now on.
    pub async fn restore(&mut self, state: BrowserState) -> Result<(), String> {
        self.restore = state;
        if self.context.is_some() {
            self.set_cookies(&self.restore.cookies.clone()).await?;
        }
        Ok(())
    }

    /// Called for a context just created and each page just opened.
    pub(super) async fn apply_restore(
        &self,
        page: &chromiumoxide::Page,
        first: bool,
    ) -> Result<(), String> {
        if first {
            self.set_cookies(&self.restore.cookies).await?;
        }
        if !self.restore.storage.is_empty() {
            let params =
                AddScriptToEvaluateOnNewDocumentParams::new(storage_script(&self.restore.storage));
            tokio::time::timeout(COMMAND_TIMEOUT, page.execute(params))
                .await
                .map_err(|_| "the browser did not answer in time".to_owned())?
                .map_err(|e| format!("restoring local storage: {e}"))?;
        }
        Ok(())
    }
}

//! The `http` interface: requests to hosts granted to the plugin, matched exactly on
//! host and port; redirects are followed here, hop by hop, only within the grant, and
//! each run has its own cookie jar.

mod host;

use std::sync::Arc;

use super::grants::Grants;

/// Largest response body handed to a guest.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Most redirects one request follows.
pub const MAX_REDIRECTS: usize = 5;

pub struct HttpCtx {
    pub plugin: String,
    pub grants: Arc<Grants>,
    pub client: reqwest::Client,
    /// Cookies the granted hosts set during this run (kept across attempts when the
    /// plugin asks for `keep-state`).
    pub jar: cookie_store::CookieStore,
}

impl HttpCtx {
    pub fn new(plugin: &str, grants: Arc<Grants>, client: reqwest::Client) -> Self {
        HttpCtx {
            plugin: plugin.to_owned(),
            grants,
            client,
            jar: cookie_store::CookieStore::default(),
        }
    }

    /// The jar as JSON (session cookies included: a portal's login usually is one).
    pub fn save_jar(&self) -> Option<String> {
        let mut out = Vec::new();
        cookie_store::serde::json::save_incl_expired_and_nonpersistent(&self.jar, &mut out).ok()?;
        String::from_utf8(out).ok()
    }

    pub fn load_jar(&mut self, json: &str) {
        if let Ok(jar) = cookie_store::serde::json::load_all(json.as_bytes()) {
            self.jar = jar;
        }
    }
}

/// One client per plugin. It never follows redirects itself: [`host`] does, so that
/// every hop is checked against the grants and passes through the run's cookie jar.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("the HTTP client builds")
}

//! The `http` interface: requests to hosts granted to the plugin, matched exactly on
//! host and port; redirects are followed only within the grant.

mod host;

use std::sync::Arc;

use super::grants::Grants;

/// Largest response body handed to a guest.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

pub struct HttpCtx {
    pub plugin: String,
    pub grants: Arc<Grants>,
    pub client: reqwest::Client,
}

/// One client per plugin: its redirect policy enforces that plugin's grants.
pub fn client_for(grants: Arc<Grants>) -> reqwest::Client {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if grants.allows_url(attempt.url()) {
            attempt.follow()
        } else {
            let msg = format!("redirect to {} is outside the granted hosts", attempt.url());
            attempt.error(msg)
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("the HTTP client builds")
}

//! An item's portal state kept across its attempts (`browser.keep-state`): the browser
//! context's cookies and local storage and the HTTP cookie jar, saved at every
//! checkpoint and when an attempt fails, sealed by the engine, deleted with the item.

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::bindings::PluginError;
use super::browser::state::BrowserState;
use super::state::ItemState;

#[derive(Debug, Default, Serialize, Deserialize)]
struct PortalState {
    #[serde(default)]
    browser: BrowserState,
    /// The HTTP cookie jar, as `cookie_store` writes it.
    #[serde(default)]
    http: Option<String>,
}

impl ItemState {
    /// Start keeping this item's portal state; a retry gets back what earlier attempts
    /// kept. A session's context lives across its calls already: nothing to do there.
    pub async fn keep_state(&mut self) -> Result<(), PluginError> {
        let Some(run) = &self.host.run else {
            if self.host.session_id.is_some() {
                return Ok(());
            }
            return Err(PluginError::denied(
                "keep-state is only available while running an item",
            ));
        };
        if self.keeping {
            return Ok(());
        }
        let kept = run.kept_state().await.map_err(|e| {
            PluginError::app(format!("reading the portal state kept for this item: {e}"))
        })?;
        self.keeping = true;
        let Some(bytes) = kept else {
            return Ok(());
        };
        let state: PortalState = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(plugin = %self.host.plugin, error = %e, "the kept portal state cannot be read; starting without it");
                return Ok(());
            }
        };
        if let Some(jar) = &state.http {
            self.http.load_jar(jar);
        }
        self.browser
            .restore(state.browser)
            .await
            .map_err(PluginError::app)
    }

    /// Save the portal state as it is now, if the plugin asked to keep it.
    pub async fn save_kept_state(&mut self) -> Result<(), PluginError> {
        let (true, Some(run)) = (self.keeping, &self.host.run) else {
            return Ok(());
        };
        let browser = match self.browser.capture().await {
            Some(b) => b,
            None => self.browser.restored().clone(),
        };
        let state = PortalState {
            browser,
            http: self.http.save_jar(),
        };
        let bytes = serde_json::to_vec(&state).expect("portal state serializes");
        run.keep_state(bytes).await.map_err(|e| match e {
            crate::store::StoreError::Invalid(m) => {
                let mut e = PluginError::business(m);
                e.code = Some("state_too_large".into());
                e
            }
            other => PluginError::app(format!("keeping the portal state: {other}")),
        })
    }
}

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
        let kept = match run.kept_state().await {
            Ok(kept) => kept,
            // Sealed under another key, say: a fresh portal session, not a failed item.
            Err(crate::store::StoreError::Invalid(why)) => {
                self.host
                    .note(&format!(
                        "the kept portal state cannot be used ({why}); starting without it"
                    ))
                    .await;
                None
            }
            Err(e) => {
                return Err(PluginError::app(format!(
                    "reading the portal state kept for this item: {e}"
                )));
            }
        };
        self.keeping = true;
        let Some(bytes) = kept else {
            return Ok(());
        };
        let state: PortalState = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                self.host
                    .note(&format!(
                        "the kept portal state cannot be read ({e}); starting without it"
                    ))
                    .await;
                return Ok(());
            }
        };
        if let Some(jar) = &state.http {
            self.http.load_jar(jar);
        }
        self.browser.restore(state.browser).await;
        Ok(())
    }

    /// Save the portal state as it is now, if the plugin asked to keep it. A state
    /// that cannot be kept (too large, the engine out of reach) does not fail the run:
    /// the item's log says so, and the next attempt starts from what was kept before.
    pub async fn save_kept_state(&mut self) {
        let (true, Some(run)) = (self.keeping, &self.host.run) else {
            return;
        };
        let state = PortalState {
            browser: self.browser.capture().await,
            http: self.http.save_jar(),
        };
        let bytes = serde_json::to_vec(&state).expect("portal state serializes");
        if let Err(e) = run.keep_state(bytes).await {
            self.host
                .note(&format!("the portal state could not be kept: {e}"))
                .await;
        }
    }
}

impl super::host::HostCtx {
    /// A warning in the item's log (and the engine's).
    async fn note(&self, message: &str) {
        warn!(plugin = %self.plugin, "{message}");
        if let Some(run) = &self.run {
            let _ = run.log("warn", message).await;
        }
    }
}

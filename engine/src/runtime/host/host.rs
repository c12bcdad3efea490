//! `faena:plugin/host` for a running item.

use std::sync::Arc;

use tracing::{debug, info, warn};

use super::HostCtx;
use crate::runtime::bindings::PluginError;
use crate::runtime::bindings::faena::plugin::host::{Host, Level};
use crate::runtime::bindings::faena::plugin::types;
use crate::runtime::state::ItemState;
use crate::store::StoreError;

fn store_error(e: StoreError) -> PluginError {
    match e {
        StoreError::StaleLease { .. } => {
            PluginError::app("the run lost its lease (cancelled or expired); stop")
        }
        StoreError::Invalid(m) => PluginError::business(m),
        other => PluginError::app(other.to_string()),
    }
}

/// Where a call that records something goes.
enum Running<'a> {
    Item(&'a crate::scheduler::RunContext),
    /// A session's call: checkpoints and progress are only logged (a session has no
    /// item to keep them on, and nothing retries it).
    Session(&'a str),
}

impl HostCtx {
    fn running(&self, what: &str) -> Result<Running<'_>, PluginError> {
        if let Some(run) = &self.run {
            return Ok(Running::Item(run));
        }
        if let Some(session) = &self.session_id {
            return Ok(Running::Session(session));
        }
        Err(PluginError::denied(format!(
            "{what} is only available while running an item or a session call"
        )))
    }
}

impl types::Host for ItemState {}

impl Host for ItemState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let message = self.host.redact(&message);
        let plugin = &self.host.plugin;
        match level {
            Level::Debug => debug!(%plugin, "{message}"),
            Level::Info => info!(%plugin, "{message}"),
            Level::Warn | Level::Error => warn!(%plugin, "{message}"),
        }
        if let Some(run) = &self.host.run {
            let level = match level {
                Level::Debug => "debug",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Error => "error",
            };
            // A log line that cannot be stored (lease lost) is not the guest's problem.
            let _ = run.log(level, &message).await;
        }
        Ok(())
    }

    async fn step(
        &mut self,
        name: String,
        state: Option<String>,
    ) -> wasmtime::Result<Result<(), PluginError>> {
        if matches!(self.host.running("step"), Ok(Running::Item(_))) {
            // A checkpoint is where a retry resumes: the portal session goes with it,
            // saved first so that a retry that sees the checkpoint has the session too.
            self.save_kept_state().await;
        }
        let run = match self.host.running("step") {
            Ok(Running::Item(r)) => r,
            Ok(Running::Session(session)) => {
                debug!(plugin = %self.host.plugin, %session, step = %name, "session step");
                return Ok(Ok(()));
            }
            Err(e) => return Ok(Err(e)),
        };
        let state = state.map(|s| self.host.redact(&s));
        Ok(run.step(&name, state).await.map_err(store_error))
    }

    async fn checkpoints(&mut self) -> wasmtime::Result<Vec<types::Checkpoint>> {
        Ok(self
            .host
            .checkpoints
            .iter()
            .map(|(name, state)| types::Checkpoint {
                name: name.clone(),
                state: state.clone(),
            })
            .collect())
    }

    async fn progress(&mut self, data: String) -> wasmtime::Result<Result<(), PluginError>> {
        let run = match self.host.running("progress") {
            Ok(Running::Item(r)) => r,
            Ok(Running::Session(session)) => {
                debug!(plugin = %self.host.plugin, %session, "session progress: {}", self.host.redact(&data));
                return Ok(Ok(()));
            }
            Err(e) => return Ok(Err(e)),
        };
        let data = self.host.redact(&data);
        let value: serde_json::Value = match serde_json::from_str(&data) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(PluginError::business(format!(
                    "progress: not JSON: {e}"
                ))));
            }
        };
        Ok(run.progress(value).await.map_err(store_error))
    }

    async fn save_artifact(
        &mut self,
        name: String,
        content_type: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<String, PluginError>> {
        if let Err(e) = self.host.running("save-artifact") {
            return Ok(Err(e));
        }
        Ok(self
            .host
            .save_artifact(&name, &content_type, data)
            .await
            .map(|a| a.id)
            .map_err(store_error))
    }

    async fn secret(&mut self, name: String) -> wasmtime::Result<Result<String, PluginError>> {
        if !self.host.grants.secrets.contains(&name) {
            warn!(plugin = %self.host.plugin, secret = %name, "denied: secret not granted");
            return Ok(Err(PluginError::denied(format!(
                "secret `{name}` is not granted to plugin `{}`",
                self.host.plugin
            ))));
        }
        let given = match (&self.host.run, &self.host.session_link) {
            (Some(run), _) => run.given_secrets().map(|g| g.get(&name).cloned()),
            (None, Some(link)) => Some(link.secrets().get(&name).cloned()),
            (None, None) => None,
        };
        let revealed = match (given, &self.host.secrets) {
            (Some(given), _) => Ok(given.map(|v| Arc::new(crate::secrets::Revealed::new(v)))),
            (None, Some(secrets)) => secrets.reveal(&self.host.tenant, &name),
            (None, None) => Ok(None),
        };
        match revealed {
            Ok(Some(revealed)) => {
                let value = revealed.value().to_owned();
                self.host.revealed.add(revealed);
                Ok(Ok(value))
            }
            Ok(None) => Ok(Err(PluginError::business(format!(
                "secret `{name}` is granted but not set for this tenant"
            )))),
            Err(e) => Ok(Err(store_error(e))),
        }
    }

    async fn setting(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.host.grants.settings.get(&name).cloned())
    }
}

//! The `host` interface: logs, checkpoints, progress, artifacts and secrets. The
//! context is built per item; a `describe` call gets one with no item, for which
//! everything but logging is refused.

#[expect(
    clippy::module_inception,
    reason = "every interface module keeps its trait impl in host.rs; this interface is named host too"
)]
mod host;

use std::sync::Arc;

use super::grants::Grants;
use crate::artifacts::{Artifact, Artifacts};
use crate::scheduler::RunContext;
use crate::secrets::{Redactor, Secrets};

/// What a session held on a worker reaches the engine through: the secrets that came
/// with its opening (in memory only) and the upload of the files its calls save.
pub trait SessionLink: Send + Sync {
    fn secrets(&self) -> &std::collections::BTreeMap<String, String>;
    fn save_artifact(
        &self,
        meta: Artifact,
        data: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'_, crate::store::Result<Artifact>>;
}

pub struct HostCtx {
    pub plugin: String,
    pub tenant: String,
    pub job_id: Option<String>,
    pub grants: Arc<Grants>,
    /// The engine's secrets; `None` on a worker, whose runs get theirs with the claim.
    pub secrets: Option<Secrets>,
    /// Where the engine keeps files; `None` on a worker, whose runs send theirs to the
    /// engine through their context.
    pub artifacts: Option<Artifacts>,
    /// The running item; `None` while describing the plugin or in a session.
    pub run: Option<RunContext>,
    /// The session this instance serves, if it is a session's.
    pub session_id: Option<String>,
    /// A session held on a worker: its secrets and where its files go.
    pub session_link: Option<Arc<dyn SessionLink>>,
    /// The checkpoints earlier attempts of the running item recorded (name, state).
    pub checkpoints: Vec<(String, Option<String>)>,
    /// Secret values handed to the guest in this run, redacted from what it reports.
    revealed: Redactor,
}

impl HostCtx {
    pub fn new(
        plugin: &str,
        tenant: &str,
        job_id: Option<String>,
        grants: Arc<Grants>,
        secrets: Option<Secrets>,
        artifacts: Option<Artifacts>,
        run: Option<RunContext>,
    ) -> Self {
        HostCtx {
            plugin: plugin.to_owned(),
            tenant: tenant.to_owned(),
            job_id,
            grants,
            secrets,
            artifacts,
            run,
            session_id: None,
            session_link: None,
            checkpoints: Vec::new(),
            revealed: Redactor::default(),
        }
    }

    /// The context of a session's long-lived instance; `link` for one a worker holds
    /// for the engine.
    pub fn in_session(mut self, session_id: &str, link: Option<Arc<dyn SessionLink>>) -> Self {
        self.session_id = Some(session_id.to_owned());
        self.session_link = link;
        self
    }

    /// Stop the guest (a trap) before it touches a page or sends a request once its
    /// item's lease has run out by this process's clock: a process that was stopped
    /// (SIGSTOP, a frozen VM) past its lease wakes up to find another worker on its
    /// item, and whatever it submitted now would be submitted twice.
    pub fn check_lease(&self) -> wasmtime::Result<()> {
        match &self.run {
            Some(run) if run.lease_lost() => Err(wasmtime::Error::msg(
                "the item's lease ran out while this run was held up; another attempt has it",
            )),
            _ => Ok(()),
        }
    }

    /// Replace every secret value this run has seen, in its common shapes (case,
    /// separators, base64, …; see [`crate::secrets::redact`]), with `***`.
    pub fn redact(&self, text: &str) -> String {
        self.revealed.redact(text)
    }

    /// Save an artifact of the running item (also used for failure screenshots). Text
    /// artifacts are redacted like logs; binary ones (images, archives) are kept as is.
    pub async fn save_artifact(
        &self,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
    ) -> crate::store::Result<Artifact> {
        let texty = content_type.starts_with("text/")
            || ["json", "xml", "csv", "javascript"]
                .iter()
                .any(|t| content_type.contains(t));
        let data = match String::from_utf8(data) {
            Ok(text) if texty && !self.revealed.is_empty() => self.redact(&text).into_bytes(),
            Ok(text) => text.into_bytes(),
            Err(e) => e.into_bytes(),
        };
        let meta = Artifact {
            id: String::new(),
            tenant: self.tenant.clone(),
            job_id: self.job_id.clone(),
            item_id: self.run.as_ref().map(|r| r.item_id().to_owned()),
            session_id: self.session_id.clone(),
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size: 0,
            created_at: match &self.run {
                Some(r) => r.clock().now_ms(),
                None => crate::clock::wall_ms(),
            },
        };
        // The engine keeps them itself; a worker sends its runs' to the engine.
        match (&self.artifacts, &self.run, &self.session_link) {
            (Some(artifacts), _, _) => artifacts.save(meta, data).await,
            (None, Some(run), _) => run.save_artifact(meta, data).await,
            (None, None, Some(link)) => link.save_artifact(meta, data).await,
            (None, None, None) => Err(crate::store::StoreError::Invalid(
                "artifacts are kept only for items and sessions".into(),
            )),
        }
    }
}

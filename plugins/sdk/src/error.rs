//! Typed errors: business (the data is wrong; never retried) or application (the
//! portal or network failed; retried with backoff).

use crate::bindings::faena::plugin::types::{ErrorKind, PluginError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub code: Option<String>,
    pub retry_after_ms: Option<u64>,
}

pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    pub fn business(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Business,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }

    pub fn application(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Application,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// Prefix the message with what was being done.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Error {
            kind: e.kind,
            message: e.message,
            code: e.code,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        PluginError {
            kind: e.kind,
            message: e.message,
            code: e.code,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

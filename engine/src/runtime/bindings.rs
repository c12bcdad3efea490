//! The one `bindgen!` site: host bindings of the `faena:plugin/flow` world. Every
//! import is async and may trap (outer error); WIT `result`s are the plugin's domain
//! errors (inner error).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "flow",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "faena:plugin/browser.page": super::browser::PageHandle,
    },
});

pub use self::faena::plugin::types::{Checkpoint, ErrorKind};

impl PluginError {
    pub fn denied(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::Business,
            message: message.into(),
            code: Some("denied".into()),
            retry_after_ms: None,
        }
    }

    pub fn app(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::Application,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }

    pub fn business(message: impl Into<String>) -> Self {
        PluginError {
            kind: ErrorKind::Business,
            message: message.into(),
            code: None,
            retry_after_ms: None,
        }
    }
}

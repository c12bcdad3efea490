//! Write a faena portal flow as one Rust file: implement [`Plugin`], call [`export!`].
//!
//! ```ignore
//! use faena_plugin_sdk::{export, Context, Info, Operation, Plugin, Result};
//! use serde_json::{json, Value};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn info() -> Info {
//!         Info::new("hello", env!("CARGO_PKG_VERSION"), "Says hello")
//!             .operation(Operation::new("run", "Greets someone", json!({"type": "object"})))
//!     }
//!
//!     fn run(_operation: &str, input: Value, _ctx: &Context) -> Result<Value> {
//!         Ok(json!({ "greeting": format!("hello {}", input["name"]) }))
//!     }
//! }
//!
//! export!(Hello);
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "flow",
        pub_export_macro: true,
        export_macro_name: "export_flow",
        default_bindings_module: "faena_plugin_sdk::bindings",
    });
}

mod error;
pub mod page;

pub use bindings::faena::plugin::types::{Checkpoint, Cookie};
pub use error::{Error, Result};
pub use page::Page;
pub use serde_json;

use bindings::faena::plugin::{host, types};

/// What a plugin is and which operations it offers.
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    pub operations: Vec<Operation>,
}

impl Info {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            operations: Vec::new(),
        }
    }

    pub fn operation(mut self, op: Operation) -> Self {
        self.operations.push(op);
        self
    }
}

/// One operation, its input schema and what it needs from the host.
pub struct Operation {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
    pub browser: bool,
    pub http_hosts: Vec<String>,
    pub secrets: Vec<String>,
}

impl Operation {
    pub fn new(name: &str, description: &str, input_schema: serde_json::Value) -> Self {
        Operation {
            name: name.into(),
            description: description.into(),
            input_schema,
            browser: false,
            http_hosts: Vec::new(),
            secrets: Vec::new(),
        }
    }

    pub fn browser(mut self) -> Self {
        self.browser = true;
        self
    }

    pub fn http_host(mut self, host: &str) -> Self {
        self.http_hosts.push(host.into());
        self
    }

    pub fn secret(mut self, name: &str) -> Self {
        self.secrets.push(name.into());
        self
    }
}

/// Where this run stands: ids, attempt, idempotency key and the checkpoints of the
/// earlier attempts.
pub struct Context {
    pub job_id: String,
    pub item_id: String,
    pub attempt: u32,
    pub idempotency_key: String,
    /// The last checkpoint an earlier attempt recorded (the last of `checkpoints`).
    pub last_checkpoint: Option<Checkpoint>,
    /// Every checkpoint earlier attempts recorded, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// The session this call runs in, if it runs in one.
    pub session_id: Option<String>,
    /// The pool resource (a sending device...) this run was given, if the job has a pool.
    pub resource: Option<String>,
}

impl Context {
    /// Whether any earlier attempt recorded the step `name` (not only the last one:
    /// an attempt that failed earlier in the flow does not hide what another did).
    pub fn passed(&self, name: &str) -> bool {
        self.checkpoints.iter().any(|c| c.name == name)
    }

    /// The state the latest earlier attempt to record step `name` saved with it.
    pub fn state_of(&self, name: &str) -> Option<&str> {
        self.checkpoints
            .iter()
            .rev()
            .find(|c| c.name == name)
            .and_then(|c| c.state.as_deref())
    }
}

/// A portal flow. `run` gets the item's input as JSON and returns its result as JSON.
pub trait Plugin {
    fn info() -> Info;
    fn run(operation: &str, input: serde_json::Value, ctx: &Context) -> Result<serde_json::Value>;
}

/// Record a checkpoint; durable when this returns. A retried item finds it in
/// [`Context::checkpoints`] (and, if it was the last, in [`Context::last_checkpoint`]).
pub fn step(name: &str, state: Option<&str>) -> Result<()> {
    host::step(name, state).map_err(Error::from)
}

pub fn progress(data: &serde_json::Value) -> Result<()> {
    host::progress(&data.to_string()).map_err(Error::from)
}

pub fn secret(name: &str) -> Result<String> {
    host::secret(name).map_err(Error::from)
}

/// A plain setting from this plugin's configuration (`[plugins.NAME.settings]`).
pub fn setting(name: &str) -> Option<String> {
    host::setting(name)
}

/// A setting the plugin cannot work without; its absence is an application error
/// naming the setting.
pub fn required_setting(name: &str) -> Result<String> {
    setting(name).filter(|v| !v.is_empty()).ok_or_else(|| {
        Error::application(format!(
            "setting `{name}` is not configured for this plugin (`[plugins.<name>.settings]`)"
        ))
        .code("missing-setting")
    })
}

/// Keep this item's portal state (browser cookies and local storage, the HTTP cookie
/// jar) across its attempts: a retry starts logged in where the last attempt was, so it
/// can look up what that attempt submitted in portals whose lists are per session. Call
/// it before [`Page::open`]. Saved, encrypted, at every [`step`] and when an attempt
/// fails; deleted when the item ends.
pub fn keep_state() -> Result<()> {
    bindings::faena::plugin::browser::keep_state().map_err(Error::from)
}

pub fn save_artifact(name: &str, content_type: &str, data: &[u8]) -> Result<String> {
    host::save_artifact(name, content_type, data).map_err(Error::from)
}

pub fn log(message: &str) {
    host::log(host::Level::Info, message)
}

pub fn warn(message: &str) {
    host::log(host::Level::Warn, message)
}

pub mod http {
    //! HTTP to the hosts this plugin is granted.
    pub use crate::bindings::faena::plugin::http::{Request, Response, SendOptions};
    use crate::{Cookie, Error, Result};

    /// Send a request; redirects are followed (within the grants) and cookies go
    /// through the item's jar.
    pub fn send(request: &Request) -> Result<Response> {
        crate::bindings::faena::plugin::http::send(request).map_err(Error::from)
    }

    /// Send a request without following redirects: a 3xx comes back as it is.
    pub fn send_no_redirect(request: &Request) -> Result<Response> {
        crate::bindings::faena::plugin::http::send_with(
            request,
            SendOptions {
                follow_redirects: false,
            },
        )
        .map_err(Error::from)
    }

    /// The cookies in the item's jar.
    pub fn cookies() -> Vec<Cookie> {
        crate::bindings::faena::plugin::http::cookies()
    }

    pub fn post_json(
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<Response> {
        let mut h: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        h.push(("content-type".into(), "application/json".into()));
        send(&Request {
            method: "POST".into(),
            url: url.into(),
            headers: h,
            body: Some(body.to_string().into_bytes()),
            timeout_ms: None,
        })
    }

    pub fn get(url: &str) -> Result<Response> {
        send(&Request {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        })
    }
}

#[doc(hidden)]
pub fn __describe<P: Plugin>() -> types::PluginInfo {
    let info = P::info();
    types::PluginInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        operations: info
            .operations
            .into_iter()
            .map(|op| types::Operation {
                name: op.name,
                description: op.description,
                input_schema: op.input_schema.to_string(),
                needs: types::Capabilities {
                    browser: op.browser,
                    http_hosts: op.http_hosts,
                    secrets: op.secrets,
                },
            })
            .collect(),
    }
}

#[doc(hidden)]
pub fn __run<P: Plugin>(
    operation: String,
    input: String,
    ctx: types::Context,
) -> Result<String, types::PluginError> {
    let input: serde_json::Value = serde_json::from_str(&input).map_err(|e| {
        types::PluginError::from(Error::business(format!("input is not JSON: {e}")))
    })?;
    let ctx = Context {
        job_id: ctx.job_id,
        item_id: ctx.item_id,
        attempt: ctx.attempt,
        idempotency_key: ctx.idempotency_key,
        last_checkpoint: ctx.last_checkpoint,
        checkpoints: host::checkpoints(),
        session_id: ctx.session_id,
        resource: ctx.resource,
    };
    P::run(&operation, input, &ctx)
        .map(|v| v.to_string())
        .map_err(types::PluginError::from)
}

/// Export a [`Plugin`] as the component's `faena:plugin/flow` world.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        struct __FaenaGuest;
        impl $crate::bindings::Guest for __FaenaGuest {
            fn describe() -> $crate::bindings::faena::plugin::types::PluginInfo {
                $crate::__describe::<$plugin>()
            }
            fn run(
                operation: ::std::string::String,
                input: ::std::string::String,
                context: $crate::bindings::faena::plugin::types::Context,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::faena::plugin::types::PluginError> {
                $crate::__run::<$plugin>(operation, input, context)
            }
        }
        $crate::bindings::export_flow!(__FaenaGuest with_types_in $crate::bindings);
    };
}

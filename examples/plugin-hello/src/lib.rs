//! A plugin to read. It greets someone, records a checkpoint, and shows the two kinds
//! of failure: a business error (bad input: never retried, goes to review or fails)
//! and an application error (retried with backoff). To start your own outside this
//! repository, `faena plugin new NAME` writes a project that builds where it is.
//!
//! Build it with `cargo build --release --target wasm32-wasip2 -p faena-example-hello`
//! and install it with an admin key of the `default` tenant (the first start writes one
//! to `data/admin.key`):
//! `curl -X POST --data-binary @target/wasm32-wasip2/release/faena_example_hello.wasm
//!  -H 'content-type: application/wasm' -H "Authorization: Bearer $(cat data/admin.key)"
//!  localhost:8080/api/v1/plugins`.

use faena_plugin_sdk::serde_json::{Value, json};
use faena_plugin_sdk::{Context, Error, Info, Operation, Plugin, Result, export, step};

struct Hello;

impl Plugin for Hello {
    fn info() -> Info {
        Info::new("hello", env!("CARGO_PKG_VERSION"), "Greets someone by name").operation(
            Operation::new(
                "run",
                "Greet `name`; `flaky: true` fails the first attempt",
                json!({
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "flaky": {"type": "boolean"}
                    }
                }),
            ),
        )
    }

    fn run(_operation: &str, input: Value, ctx: &Context) -> Result<Value> {
        let Some(name) = input["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err(
                Error::business("input.name: a non-empty string is required").code("bad-input"),
            );
        };
        if input["flaky"] == json!(true) && ctx.attempt == 1 {
            return Err(Error::application("the portal is down, try again").retry_after_ms(100));
        }
        step("greeted", None)?;
        Ok(json!({"greeting": format!("hello, {name}"), "attempt": ctx.attempt}))
    }
}

export!(Hello);

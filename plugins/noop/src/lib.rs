//! Does nothing and succeeds at once: what tests and benchmarks measure the engine's
//! own overhead with.

use faena_plugin_sdk::serde_json::{Value, json};
use faena_plugin_sdk::{Context, Info, Operation, Plugin, Result, export};

struct Noop;

impl Plugin for Noop {
    fn info() -> Info {
        Info::new(
            "noop",
            env!("CARGO_PKG_VERSION"),
            "Succeeds at once, echoing its input",
        )
        .operation(Operation::new(
            "run",
            "Return the input unchanged",
            json!({}),
        ))
    }

    fn run(_operation: &str, input: Value, _ctx: &Context) -> Result<Value> {
        Ok(input)
    }
}

export!(Noop);

//! A plugin built against `wit/faena-plugin.wit` as it stood before functions were
//! added to it (a copy is kept beside this crate), with the bindings alone, no SDK: the
//! engine must keep loading and running components like it. Its one operation records
//! a checkpoint, opens a page when asked, and echoes its input.

wit_bindgen::generate!({
    path: "wit",
    world: "flow",
});

use faena::plugin::types::{Capabilities, Operation};
use faena::plugin::{browser, host};

struct FirstWit;

impl Guest for FirstWit {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "first-wit".into(),
            version: "0.1.0".into(),
            description: "Built against the first release of the WIT".into(),
            operations: vec![Operation {
                name: "echo".into(),
                description: "Echo the input, after a checkpoint (and a page, if `url` is given)"
                    .into(),
                input_schema: r#"{"type": "object"}"#.into(),
                needs: Capabilities {
                    browser: false,
                    http_hosts: Vec::new(),
                    secrets: Vec::new(),
                },
            }],
        }
    }

    fn run(_operation: String, input: String, context: Context) -> Result<String, PluginError> {
        host::step("echoed", Some(&format!("attempt {}", context.attempt)))?;
        let mut title = String::new();
        if let Some(url) = input
            .split('"')
            .skip_while(|s| *s != "url")
            .nth(2)
            .filter(|u| u.starts_with("http"))
        {
            let page = browser::open_page()?;
            page.goto(url)?;
            title = page.evaluate("document.title")?;
        }
        Ok(format!(
            r#"{{"input": {input}, "title": {}}}"#,
            if title.is_empty() {
                "null".into()
            } else {
                title
            }
        ))
    }
}

export!(FirstWit);

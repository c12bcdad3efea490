//! Item inputs checked against their operation's JSON Schema before anything is
//! stored. Each operation's schema is compiled once, when its plugin is loaded (a
//! schema that does not compile refuses the plugin, naming it); a job or an import
//! with an input that does not match is refused with the item and the field named.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::RuntimeError;

/// Compiled input schemas of one plugin version, by operation.
#[derive(Clone, Default)]
pub struct InputSchemas {
    by_operation: BTreeMap<String, Arc<jsonschema::Validator>>,
}

impl InputSchemas {
    /// Compile the schemas of `plugin`'s operations.
    pub fn compile<'a>(
        plugin: &str,
        operations: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    ) -> Result<Self, RuntimeError> {
        let mut by_operation = BTreeMap::new();
        for (name, schema) in operations {
            let validator = jsonschema::options()
                .should_validate_formats(false)
                .build(schema)
                .map_err(|e| RuntimeError::Plugin {
                    name: plugin.to_owned(),
                    message: format!(
                        "operation `{name}`: input schema is not a valid JSON Schema: {e}"
                    ),
                })?;
            by_operation.insert(name.to_owned(), Arc::new(validator));
        }
        Ok(InputSchemas { by_operation })
    }

    /// Check one item's input; the error names the item (`label()`, e.g. `items[3]`,
    /// made only on failure) and the field at fault.
    pub fn check(
        &self,
        operation: &str,
        label: impl FnOnce() -> String,
        input: &serde_json::Value,
    ) -> Result<(), String> {
        let Some(validator) = self.by_operation.get(operation) else {
            return Ok(());
        };
        match validator.iter_errors(input).next() {
            None => Ok(()),
            Some(e) => {
                let label = label();
                let head = if label.is_empty() {
                    "input".to_owned()
                } else {
                    format!("{label}.input")
                };
                Err(format!(
                    "{head}{}: {e}",
                    dotted(&e.instance_path().to_string())
                ))
            }
        }
    }
}

/// A JSON pointer (`/lines/0/qty`) as a field path (`.lines[0].qty`).
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> InputSchemas {
        let schema = json!({
            "type": "object",
            "required": ["phone", "text"],
            "properties": {
                "phone": {"type": "string"},
                "text": {"type": "string", "minLength": 1},
                "lines": {"type": "array", "items": {"type": "object",
                          "properties": {"qty": {"type": "integer", "minimum": 1}}}}
            },
            "x-faena-import": {"required": ["phone"]}
        });
        InputSchemas::compile("whatsapp", [("send", &schema)]).unwrap()
    }

    #[test]
    fn a_bad_input_names_the_item_and_the_field() {
        let s = schemas();
        assert!(
            s.check(
                "send",
                || "items[0]".into(),
                &json!({"phone": "+51", "text": "hi"})
            )
            .is_ok()
        );
        let e = s
            .check(
                "send",
                || "items[3]".into(),
                &json!({"phone": 51, "text": "hi"}),
            )
            .unwrap_err();
        assert!(e.starts_with("items[3].input.phone: "), "{e}");
        assert!(e.contains("string"), "{e}");
        let e = s
            .check("send", || "items[0]".into(), &json!({"phone": "+51"}))
            .unwrap_err();
        assert!(
            e.starts_with("items[0].input: ") && e.contains("text"),
            "{e}"
        );
        let e = s
            .check(
                "send",
                || "row 7".into(),
                &json!({"phone": "+51", "text": "x", "lines": [{"qty": 1}, {"qty": 0}]}),
            )
            .unwrap_err();
        assert!(e.starts_with("row 7.input.lines[1].qty: "), "{e}");
        let e = s
            .check("send", String::new, &json!({"phone": 1, "text": "x"}))
            .unwrap_err();
        assert!(e.starts_with("input.phone: "), "{e}");
        // An operation without a compiled schema takes anything.
        assert!(s.check("other", || "items[0]".into(), &json!(1)).is_ok());
    }

    #[test]
    fn a_schema_that_does_not_compile_names_the_plugin() {
        let bad = json!({"type": "no-such-type"});
        let Err(e) = InputSchemas::compile("permits", [("file", &bad)]) else {
            panic!("a bad schema compiled");
        };
        let e = e.to_string();
        assert!(e.contains("permits") && e.contains("file"), "{e}");
    }
}

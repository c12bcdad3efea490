//! Builds the built-in plugins for wasm32-wasip2 and embeds them in the binary.

include!("build/guests.rs");

/// Plugins shipped inside the `faena` binary.
const BUILTIN: &[&str] = &[
    "plugins/noop",
    "plugins/ultimus",
    "plugins/gsp",
    "plugins/sunat",
    "plugins/whatsapp",
];

fn main() {
    let built = build_guests(BUILTIN);
    let mut code = String::from(
        "/// Built-in plugin components, embedded at build time: (name, component bytes).\npub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for (name, path) in &built {
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_plugins.rs");
    std::fs::write(out, code).unwrap();
}

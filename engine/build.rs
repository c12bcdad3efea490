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
        "/// Built-in plugin components, embedded at build time: (name, component bytes,\n/// their SHA-256 in hex).\npub const BUILTIN: &[(&str, &[u8], &str)] = &[\n",
    );
    for (name, path) in &built {
        // Hashed here, not at each start: hashing them would page in every built-in
        // component of the binary, and an engine compiles only the ones it runs.
        use sha2::Digest;
        let digest = sha2::Sha256::digest(std::fs::read(path).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        code.push_str(&format!(
            "    ({name:?}, include_bytes!({:?}), {hex:?}),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_plugins.rs");
    std::fs::write(out, code).unwrap();
}

//! Builds the test guests for wasm32-wasip2 and exposes their paths to the tests.

include!("../engine/build/guests.rs");

fn main() {
    let built = build_guests(&[
        "tests/guests/probe",
        "tests/guests/first-wit",
        "examples/plugin-hello",
    ]);
    let mut code = String::new();
    for (name, path) in &built {
        code.push_str(&format!(
            "/// Path of the built `{name}` test guest.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string()
        ));
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(out, code).unwrap();
}

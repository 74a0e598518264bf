//! Renders the API's OpenAPI document, `docs/openapi.yaml` (its one
//! source), as the JSON the node serves at `GET /openapi.json`
//! (`src/openapi.rs`). A spec that is not valid YAML, or has a key JSON
//! cannot hold, fails the build.

use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let yaml_path = Path::new(&manifest).join("../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", yaml_path.display());
    let yaml = std::fs::read_to_string(&yaml_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", yaml_path.display()));
    let spec: serde_json::Value = serde_norway::from_str(&yaml).unwrap_or_else(|e| {
        panic!(
            "{} is not a JSON-shaped YAML document: {e}",
            yaml_path.display()
        )
    });
    let json = serde_json::to_vec(&spec).expect("a JSON value serialises");
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("openapi.json");
    std::fs::write(&out, json).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

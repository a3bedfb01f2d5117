//! Validating `--json` outputs against their JSON Schema files (docs/schemas/<verb>.schema.json).
//!
//! The validator is Debian's python3-jsonschema (Draft 2020-12, format checks on), run as a child
//! process: a schema error or an invalid document fails the test with every error listed. A
//! missing validator fails too (scripts/install-deps.sh installs it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// docs/schemas of this checkout.
pub fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas")
}

/// The schema file of `name` (`diag` → docs/schemas/diag.schema.json).
pub fn schema_path(name: &str) -> PathBuf {
    schema_dir().join(format!("{name}.schema.json"))
}

const VALIDATE: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
doc = json.load(sys.stdin)
v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
errors = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
for e in errors:
    print("at /" + "/".join(str(p) for p in e.absolute_path) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

/// Errors of `doc` against schema `name` (empty: valid). Panics when the validator cannot run or
/// the schema itself is not a valid Draft 2020-12 schema.
pub fn schema_errors(name: &str, doc: &Value) -> Vec<String> {
    let path = schema_path(name);
    assert!(path.is_file(), "no schema file {}", path.display());
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", VALIDATE])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (Debian's, with python3-jsonschema) runs");
    child.stdin.take().unwrap().write_all(doc.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.code() {
        Some(0) => Vec::new(),
        Some(1) if !stdout.is_empty() => stdout.lines().map(str::to_string).collect(),
        _ => panic!(
            "the schema validator failed on {} (python3-jsonschema installed? schema valid?):\n{}{}",
            path.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts that `doc` validates against schema `name`.
pub fn assert_schema(name: &str, doc: &Value) {
    let errors = schema_errors(name, doc);
    assert!(
        errors.is_empty(),
        "{name} output does not match docs/schemas/{name}.schema.json:\n{}\n{doc:#}",
        errors.join("\n")
    );
}

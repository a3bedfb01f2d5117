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

/// Every verb of the `pppgate` binary (leaf subcommands, as `pppgate help` lists them). A test
/// (radius-helper/tests/json_schemas.rs) keeps this list equal to the binary's own.
pub const VERBS: &[&str] = &[
    "config check",
    "db migrate",
    "db status",
    "apply",
    "reconcile",
    "routes add",
    "routes del",
    "routes list",
    "routes apply",
    "pbr add",
    "pbr del",
    "pbr list",
    "pbr check",
    "connection add",
    "connection set",
    "connection show",
    "sysctl check",
    "sysctl ensure",
    "janitor",
    "radius checkrad",
    "radius exec simultaneous-use",
    "session kill",
    "session list",
    "session show",
    "collect",
    "final-flush",
    "diag",
    "metrics",
    "guard",
    "completions",
    "wg init",
    "wg tenant add",
    "wg tenant show",
    "wg tenant list",
    "wg tenant del",
    "wg router add",
    "wg router show",
    "wg router list",
    "wg router del",
    "wg router config",
    "wg subnet info",
    "wg status",
    "wg reconcile",
    "wg rotate-key",
];

/// The verb an argument list runs (`["--json", "wg", "router", "add", "--tenant", "1"]` →
/// `wg router add`): the longest verb of [`VERBS`] its words start with, options skipped.
pub fn verb_of(args: &[String]) -> Option<&'static str> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--config" || a == "-c" {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            if words.is_empty() {
                i += 1;
                continue;
            }
            break;
        }
        words.push(a.as_str());
        i += 1;
    }
    VERBS
        .iter()
        .copied()
        .filter(|v| {
            let vw: Vec<&str> = v.split(' ').collect();
            words.len() >= vw.len() && words[..vw.len()] == vw[..]
        })
        .max_by_key(|v| v.len())
}

/// The schema file name of a verb: `wg router add` → `wg-router-add`.
pub fn schema_name(verb: &str) -> String {
    verb.replace(' ', "-")
}

//! The documentation stays true to the binary: every verb `pppgate --help` lists has a section in
//! pppgate(8), and the README names the two commands that exist.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn verbs() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pppgate")).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut in_cmds = false;
    let mut v = Vec::new();
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_cmds = true;
            continue;
        }
        if in_cmds {
            if line.trim().is_empty() {
                break;
            }
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                v.push(name);
            }
        }
    }
    v
}

#[test]
fn every_verb_has_a_man_page_section() {
    let man = std::fs::read_to_string(repo().join("packaging/man/pppgate.8")).unwrap();
    let verbs = verbs();
    assert!(verbs.len() >= 10, "unexpected --help output: {verbs:?}");
    for v in verbs {
        assert!(man.lines().any(|l| l.starts_with(&format!(".SS {v}"))), "pppgate(8) has no section for `{v}`");
    }
}

#[test]
fn readme_commands_exist() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for s in ["scripts/lab-demo.sh", "scripts/test-all.sh"] {
        assert!(readme.contains(s), "README does not name {s}");
        assert!(repo().join(s).exists(), "{s} does not exist");
    }
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/test-all.sh"), ".ci/run must call the README's test command");
}

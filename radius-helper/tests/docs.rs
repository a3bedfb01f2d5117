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
    for s in ["scripts/lab-demo.sh", "scripts/test-all.sh", "scripts/fuzz.sh"] {
        assert!(readme.contains(s), "README does not name {s}");
        assert!(repo().join(s).exists(), "{s} does not exist");
    }
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci.contains("scripts/test-all.sh"), ".ci/run must call the README's test command");
}

// ---------------------------------------------------------------------------------------------
// docs/requirements.md
// ---------------------------------------------------------------------------------------------

/// The statuses docs/requirements.md defines; the last two need no test.
const STATUSES: [&str; 5] = ["CI", "partial", "deviation", "no test", "open"];

/// Checks the rule tables of `text` (docs/requirements.md) against the source tree at `root`:
/// numbers unique, five cells, a known status, a test unless the status is "no test" or "open",
/// and every named test (`path::function`) a `fn` in that file. Returns the rule numbers and the
/// problems found.
fn check_requirements(text: &str, root: &std::path::Path) -> (std::collections::BTreeSet<u32>, Vec<String>) {
    let mut ids = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if !line.starts_with("| R") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 7 {
            problems.push(format!("line {n}: {} cells, want 5 (a '|' inside a cell?)", cells.len().saturating_sub(2)));
            continue;
        }
        let Some(id) = cells[1].strip_prefix('R').and_then(|d| d.parse::<u32>().ok()) else {
            problems.push(format!("line {n}: {:?} is not a rule number", cells[1]));
            continue;
        };
        if !ids.insert(id) {
            problems.push(format!("line {n}: R{id} is listed twice"));
        }
        let Some(status) = STATUSES.iter().find(|s| cells[5].starts_with(*s)) else {
            problems.push(format!("line {n}: R{id} has an unknown status {:?}", cells[5]));
            continue;
        };
        let tests: Vec<&str> = cells[4].split('`').skip(1).step_by(2).collect();
        if tests.is_empty() && !matches!(*status, "no test" | "open") {
            problems.push(format!("line {n}: R{id} is {status:?} but names no test"));
        }
        for t in tests {
            let Some((path, name)) = t.split_once("::") else {
                problems.push(format!("line {n}: R{id}: {t:?} is not path::function"));
                continue;
            };
            match std::fs::read_to_string(root.join(path)) {
                Ok(src) if src.contains(&format!("fn {name}(")) => {}
                Ok(_) => problems.push(format!("line {n}: R{id}: {path} has no fn {name}")),
                Err(e) => problems.push(format!("line {n}: R{id}: {path}: {e}")),
            }
        }
    }
    (ids, problems)
}

/// Source files under `dir` with one of `exts`, build output and hidden directories left out.
fn source_files(dir: &std::path::Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                source_files(&p, exts, out);
            }
        } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
}

/// Words `<letter><three digits>` standing alone in `line` (a rule number such as R103).
fn numbered_words(line: &str, letter: char) -> Vec<String> {
    let b: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    for i in 0..b.len() {
        let alone_before = i == 0 || !b[i - 1].is_alphanumeric();
        let digits = b.get(i + 1..i + 4).is_some_and(|d| d.iter().all(char::is_ascii_digit));
        let alone_after = b.get(i + 4).is_none_or(|c| !c.is_alphanumeric());
        if b[i] == letter && alone_before && digits && alone_after {
            out.push(b[i..i + 4].iter().collect());
        }
    }
    out
}

#[test]
fn requirements_name_existing_tests() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("docs/requirements.md")).unwrap();
    let (ids, problems) = check_requirements(&text, &root);
    assert!(problems.is_empty(), "docs/requirements.md:\n{}", problems.join("\n"));
    assert!(ids.len() >= 50, "only {} rules parsed from docs/requirements.md", ids.len());

    // The code cites these numbers, and only numbers that exist; comments no longer cite the
    // source documents (not in the repository) directly.
    let mut files = Vec::new();
    for d in ["shim", "policy-core", "pppd-plugin", "radius-helper", "src", "tests", "scripts", "benches"] {
        source_files(&root.join(d), &["rs", "sh"], &mut files);
    }
    files.push(root.join("build.rs"));
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut bad = Vec::new();
    let mut cited = 0;
    for f in &files {
        let Ok(src) = std::fs::read_to_string(f) else { continue };
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        for (n, line) in src.lines().enumerate() {
            for r in numbered_words(line, 'R') {
                cited += 1;
                if !ids.contains(&r[1..].parse().unwrap()) {
                    bad.push(format!("{rel}:{}: cites {r}, which docs/requirements.md does not list", n + 1));
                }
            }
            let comment = line.trim_start().starts_with("//");
            let legacy = numbered_words(line, 'B').into_iter().chain(numbered_words(line, 'D')).next();
            let section = line.contains('§') && !line.contains("RFC");
            let seed = line.to_lowercase().contains("seed 00");
            if comment && (legacy.is_some() || seed || section) && f.extension().is_some_and(|x| x == "rs") {
                bad.push(format!("{rel}:{}: cites a source document; cite docs/requirements.md's number", n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(cited >= 10, "only {cited} requirement citations found in the code");
}

#[test]
fn the_requirements_check_finds_renamed_tests_and_bad_rows() {
    let root = repo();
    let doc = "| ID | Rule | Source | Tests | Status |\n|---|---|---|---|---|\n\
        | R1 | ok | x | `radius-helper/tests/docs.rs::readme_commands_exist` | CI |\n\
        | R2 | renamed | x | `radius-helper/tests/docs.rs::readme_commands_exist_renamed` | CI |\n\
        | R3 | no test yet | x | — | no test |\n\
        | R4 | untested but claims CI | x | — | CI |\n\
        | R1 | twice | x | — | open |\n\
        | R5 | a | b | c | list|show | CI |\n";
    let (ids, problems) = check_requirements(doc, &root);
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("has no fn readme_commands_exist_renamed"));
    assert!(problems[1].contains("R4 is \"CI\" but names no test"));
    assert!(problems[2].contains("R1 is listed twice"));
    assert!(problems[3].contains("7 cells, want 5"), "{}", problems[3]);
    assert_eq!(numbered_words("see R103, (R2) and xR104 R1055; B167 §3", 'R'), ["R103"]);
}

//! The codebase's own rules, checked on the source tree (no privileges, no build of anything):
//! SQL lives only under `policy-core/src/db/`.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Statements and clauses that only SQL has, written the way pppgate writes SQL (upper case).
const SQL_WORDS: [&str; 12] = [
    "SELECT ",
    "INSERT INTO",
    "UPDATE ",
    "DELETE FROM",
    "WITH ",
    "RETURNING ",
    "CREATE TABLE",
    "ALTER TABLE",
    "TRUNCATE ",
    "ON CONFLICT",
    "LOCK TABLE",
    "pg_advisory",
];

/// SQL found in the production code of a file: lines that are not comments, before its unit
/// tests (`#[cfg(test)]`), that hold an SQL word inside a string literal.
fn sql_lines(text: &str) -> Vec<(usize, String)> {
    let mut hits = Vec::new();
    let mut in_raw = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // Inside a string literal: after an odd number of quotes on the line, or inside a raw
        // string that spans lines. Good enough for this codebase's formatting; errs on finding.
        let raw_opens = line.matches("r#\"").count();
        let raw_closes = line.matches("\"#").count();
        let stringy = in_raw || line.contains('"');
        if stringy && SQL_WORDS.iter().any(|w| line.contains(w)) {
            hits.push((i + 1, line.trim().to_string()));
        }
        if raw_opens > raw_closes {
            in_raw = true;
        } else if raw_closes > raw_opens {
            in_raw = false;
        }
    }
    hits
}

#[test]
fn sql_lives_only_under_policy_core_src_db() {
    let root = repo();
    let db = root.join("policy-core/src/db");
    let mut files = Vec::new();
    for krate in ["shim/src", "policy-core/src", "pppd-plugin/src", "radius-helper/src"] {
        rust_files(&root.join(krate), &mut files);
    }
    assert!(files.len() > 20, "found only {} source files under {}", files.len(), root.display());
    let mut found = Vec::new();
    for f in files.iter().filter(|f| !f.starts_with(&db)) {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in sql_lines(&text) {
            found.push(format!("{}:{n}: {line}", f.strip_prefix(&root).unwrap().display()));
        }
    }
    assert!(found.is_empty(), "SQL outside policy-core/src/db/ (move it into a db module):\n{}", found.join("\n"));
}

#[test]
fn the_sql_scan_finds_what_it_looks_for() {
    let src = "fn f(c: &mut Client) {\n    c.execute(\"DELETE FROM t WHERE id = $1\", &[]);\n}\n\
               const Q: &str = r#\"\nWITH x AS (SELECT 1)\nSELECT * FROM x\n\"#;\n\
               // SELECT in a comment is fine\n\
               #[cfg(test)]\nmod tests { const T: &str = \"SELECT 1\"; }\n";
    let hits: Vec<usize> = sql_lines(src).into_iter().map(|(n, _)| n).collect();
    assert_eq!(hits, vec![2, 5, 6]);
}

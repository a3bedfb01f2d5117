//! The fuzz corpora as regression tests (R810): every file under `fuzz/corpus/<target>/` — the
//! seeds from the real formats and every minimized finding — goes through the same function its
//! cargo-fuzz target calls (`policy_core::fuzz`), on the stable toolchain, in every
//! `cargo test`. docs/fuzzing.md describes the targets and the long runs (scripts/fuzz.sh).

use std::fs;
use std::path::{Path, PathBuf};

use policy_core::fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut v: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

/// Replays `fuzz/corpus/<name>/` through the target's body; names every file that panics.
fn replay(name: &str) {
    let (_, body) = TARGETS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(corpus.len() >= 3, "fuzz/corpus/{name} holds {} files; the seeds are missing", corpus.len());
    let failed: Vec<String> = corpus
        .iter()
        .filter(|f| {
            let data = fs::read(f).unwrap();
            std::panic::catch_unwind(|| body(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(failed.is_empty(), "fuzz target {name} fails on: {failed:#?}");
    println!("{name}: {} corpus files replayed", corpus.len());
}

#[test]
fn mapping_corpus_replays() {
    replay("mapping");
}

#[test]
fn radius_env_corpus_replays() {
    replay("radius_env");
}

#[test]
fn checkrad_args_corpus_replays() {
    replay("checkrad_args");
}

#[test]
fn config_corpus_replays() {
    replay("config");
}

#[test]
fn cli_ids_corpus_replays() {
    replay("cli_ids");
}

#[test]
fn sql_facts_corpus_replays() {
    replay("sql_facts");
}

#[test]
fn accounting_spool_corpus_replays() {
    replay("accounting_spool");
}

#[test]
fn accounting_state_corpus_replays() {
    replay("accounting_state");
}

/// The fuzz package, the shared bodies and this test name the same targets: each
/// `fuzz/fuzz_targets/<name>.rs` calls `policy_core::fuzz::<name>` and nothing else, is a
/// `[[bin]]` of fuzz/Cargo.toml, has a corpus and a replay test above.
#[test]
fn every_fuzz_target_calls_its_shared_body_and_has_a_corpus_replay() {
    let dir = fuzz_dir();
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let this = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus.rs")).unwrap();
    let mut on_disk: Vec<String> = files(&dir.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut declared: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    declared.sort();
    assert_eq!(on_disk, declared, "fuzz/fuzz_targets/ and policy_core::fuzz::TARGETS differ");
    for (name, _) in TARGETS {
        let src = fs::read_to_string(dir.join("fuzz_targets").join(format!("{name}.rs"))).unwrap();
        assert!(
            src.contains(&format!("policy_core::fuzz::{name}(data)")),
            "fuzz_targets/{name}.rs must call policy_core::fuzz::{name}"
        );
        assert_eq!(src.matches("policy_core::").count(), 1, "fuzz_targets/{name}.rs must call the shared body only");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
        assert!(this.contains(&format!("replay(\"{name}\")")), "no replay test for {name}");
        assert!(dir.join("corpus").join(name).is_dir(), "fuzz/corpus/{name} is missing");
    }
}

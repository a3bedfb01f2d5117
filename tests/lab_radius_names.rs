//! Login-name conformance in the lab VM (issue 16; R513, R514): 121 names — every printable
//! ASCII character in some name, spaces, `'` `"` `\` `%` `=`, UTF-8 from four scripts, 64-,
//! 250-, 253- and 254-byte names — through `pppgate connection add`, real FreeRADIUS 3.2 with
//! rlm_sql postgresql, and (for the names in the scenario's DIAL list; all of them in the long
//! run) real pppd with `plugin radius.so` + pppgate.so over real L2TP.
//! Scenario: `tests/lab/scenarios/radius-names.sh`. The list of names and outcomes is printed.
//!
//! CI runs the short form (every name refused or checked against FreeRADIUS, 9 names dialled);
//! `long_run_dials_every_accepted_name` (`#[ignore]`d; `PPPGATE_LAB_LONG=1 scripts/test-all.sh`
//! runs it) dials all of them (tests/lab/README.md, "CI and the long run").
//!
//! `cargo build --release --workspace && cargo test --release --test lab_radius_names`;
//! `PPPGATE_LAB_REREAD=<run directory>` re-reads a finished run instead of booting the VM (the harness's `Lab::run`)
//! (the long run's directory too: then both tests check it).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pppgate_lab::{Lab, LabOptions, LabRun};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run_with(all: bool) -> Result<LabRun, String> {
    let mut opts = LabOptions::default().timeout(if all { Duration::from_secs(7200) } else { TIMEOUT });
    if all {
        opts.env.push(("NAMES_DIAL".into(), "all".into()));
    }
    let t = Instant::now();
    let r = Lab::run("radius-names", &opts).map_err(|e| e.to_string());
    eprintln!("radius-names (dial {}): {:.0} s wall", if all { "all" } else { "subset" }, t.elapsed().as_secs_f64());
    r
}

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    match RUN.get_or_init(|| run_with(false)) {
        Ok(run) => run,
        Err(e) => panic!("the radius-names lab run failed: {e}"),
    }
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Prints the list and checks every name's outcome; returns (refused, ok, dialled).
fn check(run: &LabRun) -> (usize, usize, usize) {
    let f = &run.facts;
    assert_eq!(f.expect("names.status"), "ok", "see {}", run.path("cases/names.log").display());
    let n = f.expect_i64("names.count") as usize;
    assert!(n >= 100, "at least 100 logins");
    let table = std::fs::read_to_string(run.path("names.tsv")).unwrap();
    let (mut refused, mut ok, mut dialled, mut failed) = (0, 0, 0, Vec::new());
    println!("{:>3}  {:<8} {:<40} detail", "#", "outcome", "name");
    for line in table.lines() {
        let cols: Vec<&str> = line.splitn(4, '\t').collect();
        let name = String::from_utf8_lossy(&unhex(cols[1])).into_owned();
        let shown = if name.len() > 40 {
            format!("{}… ({} bytes)", name.chars().take(30).collect::<String>(), name.len())
        } else {
            format!("{name:?}")
        };
        println!("{:>3}  {:<8} {:<40} {}", cols[0], cols[2], shown, cols[3]);
        match cols[2] {
            "refused" => {
                refused += 1;
                assert!(
                    cols[3].starts_with("exit=65 lines=1 "),
                    "{name:?}: refusal must be one line, exit 65: {}",
                    cols[3]
                );
                assert!(cols[3].contains("invalid login"), "{name:?}: {}", cols[3]);
            }
            "ok" => {
                ok += 1;
                if cols[3].starts_with("dialled") {
                    dialled += 1;
                }
            }
            _ => failed.push(format!("{name:?}: {}", cols[3])),
        }
    }
    println!("{n} names: {refused} refused at connection add, {ok} ok ({dialled} dialled over L2TP)");
    assert!(failed.is_empty(), "names that neither were refused nor worked:\n{}", failed.join("\n"));
    assert_eq!(refused + ok, n);
    (refused, ok, dialled)
}

fn print_durations(r: &LabRun) {
    let f = &r.facts;
    println!(
        "durations (guest clock): setup {} s, connection add {} s, FreeRADIUS {} s, dialling {} names {} s, \
         scenario {} s; VM {:.0} s",
        f.expect("names.setup_s"),
        f.expect("names.add_s"),
        f.expect("names.radius_s"),
        f.expect("names.dialled"),
        f.expect("names.dial_s"),
        f.expect("names.total_s"),
        r.elapsed.as_secs_f64()
    );
}

#[test]
fn every_name_is_refused_at_connection_add_or_works_end_to_end() {
    let r = run();
    let (refused, ok, dialled) = check(r);
    assert!(refused > 0 && ok > 0);
    assert!(dialled >= 9, "the dial subset ran: {dialled}");
    assert_eq!(dialled, r.facts.expect_i64("names.dialled") as usize, "every name of the dial list was dialled");
    print_durations(r);
}

#[test]
#[ignore = "long run: dials every accepted name (PPPGATE_LAB_LONG=1, tests/lab/README.md)"]
fn long_run_dials_every_accepted_name() {
    let r = run_with(true).unwrap_or_else(|e| panic!("the radius-names long run failed: {e}"));
    let (_, ok, dialled) = check(&r);
    assert_eq!(ok, dialled, "every accepted name dialled");
    print_durations(&r);
}

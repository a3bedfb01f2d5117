//! Session identity in the lab VM (issue 16): a clock stepped back and forward by an hour during
//! live sessions, with a hang-up and a connect while it is back (R411), PostgreSQL restarted with
//! `pg_ctl restart -m fast` under a collector commit (R412), and the accounting directory full at
//! ip-down (R413) — real pppd + pppgate.so over real L2TP. One run of
//! `tests/lab/scenarios/identity.sh`; the VM time and each case's are printed.
//!
//! `cargo build --release --workspace && cargo test --release --test lab_identity`;
//! `PPPGATE_LAB_REREAD=<run directory>` re-reads a finished run instead of booting the VM (the harness's `Lab::run`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pppgate_lab::{Lab, LabOptions, LabRun};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        let t = Instant::now();
        let r = Lab::run("identity", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string());
        eprintln!("identity lab run: {:.0} s wall", t.elapsed().as_secs_f64());
        if let Ok(run) = &r {
            let cases: Vec<String> = ["clock", "pgrestart", "diskfull"]
                .iter()
                .map(|c| format!("{c} {} ms", run.facts.get(&format!("{c}.wall_ms")).unwrap_or("?")))
                .collect();
            eprintln!("identity: VM {:.0} s; {}", run.elapsed.as_secs_f64(), cases.join(", "));
        }
        r
    });
    match r {
        Ok(run) => run,
        Err(e) => panic!("the identity lab run failed: {e}"),
    }
}

#[track_caller]
fn case_ok(name: &str) -> &'static LabRun {
    let r = run();
    assert_eq!(
        r.facts.expect(&format!("{name}.status")),
        "ok",
        "case {name} failed; see {}",
        r.path(&format!("cases/{name}.log")).display()
    );
    r
}

/// "rx tx stopped" from SQL against pppd's "rx tx": equal figures, session closed.
#[track_caller]
fn final_figures_exact(sql: &str, pppd: &str) {
    assert_ne!(pppd, "none", "pppd logged no final figures");
    assert_eq!(sql, format!("{pppd} true"), "SQL vs pppd's own final figures");
}

/// A step of about `secs` seconds (the guest's `date -s` works in whole seconds).
#[track_caller]
fn shifted_by(fact: &str, secs: i64) {
    let got: i64 = fact.parse().unwrap_or_else(|_| panic!("not a number: {fact:?}"));
    assert!((got - secs).abs() <= 5, "the kernel's boot time moved by {got} s, not by about {secs} s");
}

#[track_caller]
fn number(fact: &str) -> u64 {
    fact.parse().unwrap_or_else(|_| panic!("not a number: {fact:?}"))
}

#[test]
fn a_clock_stepped_back_and_forward_leaves_live_sessions_valid_and_counted() {
    let f = &case_ok("clock").facts;
    // The sessions carry the clock-proof identity, and the steps moved what START_TS is compared
    // with (the boot time): without both, "VALID after the step" would prove nothing.
    assert_eq!(f.expect("clock.mapping_identity"), "2", "START_TICKS and BOOT_ID in the mapping");
    shifted_by(f.expect("clock.back_btime_shift"), -3600);
    shifted_by(f.expect("clock.forward_btime_shift"), 3600);
    assert_eq!(f.expect("clock.before_validity"), "valid valid");
    assert_eq!(f.expect("clock.before_in_full"), "yes yes");

    // Back: alice and eve (both up before the step).
    assert_eq!(f.expect("clock.back_validity"), "valid valid", "a step back must not make a session pid_reused");
    assert_eq!(f.expect("clock.back_reconcile_rc"), "0");
    assert_eq!(f.expect("clock.back_in_full"), "yes yes", "reconcile kept the policy");
    assert_eq!(f.expect("clock.back_collect_rc"), "0");
    assert_eq!(f.expect("clock.back_read"), "2", "the collector counts on");
    assert_eq!(f.expect("clock.back_not_valid"), "0");
    assert_eq!(f.expect("clock.back_vanished"), "0");
    assert_eq!(f.expect("clock.back_alice_sql"), f.expect("clock.back_alice_kernel"), "SQL = alice's interface");
    // eve hung up while the clock was back; bob connected then.
    final_figures_exact(f.expect("clock.eve_sql"), f.expect("clock.eve_pppd"));
    assert_eq!(f.expect("clock.bob_in_full"), "yes", "a session that connects while the clock is back is policed");
    assert_eq!(f.expect("clock.back_bob_collect_rc"), "0");
    assert_eq!(f.expect("clock.back_bob_read"), "2", "alice and bob");

    // Forward: alice and bob (bob started while the clock was back).
    assert_eq!(f.expect("clock.forward_validity"), "valid valid");
    assert_eq!(f.expect("clock.forward_reconcile_rc"), "0");
    assert_eq!(f.expect("clock.forward_in_full"), "yes yes", "reconcile kept the policy");
    assert_eq!(f.expect("clock.forward_collect_rc"), "0");
    assert_eq!(f.expect("clock.forward_read"), "2", "the collector counts on");
    assert_eq!(f.expect("clock.forward_not_valid"), "0");
    assert_eq!(f.expect("clock.forward_vanished"), "0", "nothing closed as vanished");
    final_figures_exact(f.expect("clock.bob_sql"), f.expect("clock.bob_pppd"));
    final_figures_exact(f.expect("clock.alice_sql"), f.expect("clock.alice_pppd"));

    // SQL's times: the three sessions closed, none stopping before its start, in either table.
    assert_eq!(f.expect("clock.sessions_closed"), "3");
    assert_eq!(f.expect("clock.stop_before_start"), "0");
    assert!(number(f.expect("clock.radacct_closed")) >= 3, "pppgate's radacct rows (mode auto) are closed");
    assert_eq!(f.expect("clock.radacct_negative"), "0", "no radacct stop or update before its start");
}

#[test]
fn pg_restart_during_a_collector_commit_takes_the_outage_path() {
    let f = &case_ok("pgrestart").facts;
    assert_eq!(f.expect("pg.collect_rc"), "69");
    assert_eq!(f.expect("pg.db_status"), "unavailable");
    assert_eq!(f.expect("pg.log_lines"), "1", "one log line");
    assert_eq!(f.expect("pg.marker"), "1", "the outage marker");
    assert!(number(f.expect("pg.spooled")) >= 1, "the run's batch is spooled");
    assert_eq!(f.expect("pg.after_collect_rc"), "0");
    assert!(number(f.expect("pg.replayed")) >= 1, "the spooled batch was replayed");
    assert_eq!(f.expect("pg.spooled_after"), "0");
    assert_eq!(f.expect("pg.marker_after"), "0");
    assert_eq!(f.expect("pg.quiet_collect_rc"), "0");
    assert_eq!(format!("{} false", f.expect("pg.kernel")), f.expect("pg.sql"), "totals exact after recovery");
}

#[test]
fn a_full_accounting_dir_at_ip_down_loses_no_final_figures() {
    let f = &case_ok("diskfull").facts;
    assert_eq!(f.expect("full.reserved"), "1", "ip-up reserved the final record");
    assert_eq!(f.expect("full.spooled_before"), "0");
    assert_eq!(f.expect("full.free_kb"), "0", "the directory was full at ip-down");
    let line = f.expect("full.plugin_line");
    assert!(line.contains("final accounting"), "the plugin's final flush ran: {line}");
    assert_eq!(f.expect("full.committed_at_ip_down"), "0", "PostgreSQL was down at ip-down: {line}");
    assert_eq!(f.expect("full.reserves_after"), "0", "ip-down wrote its record into the reservation");
    let on_disk = number(f.expect("full.markers")) + number(f.expect("full.spooled"));
    assert_eq!(on_disk, 1, "the final figures on disk after ip-down (marker or spooled batch): {line}");
    let pppd = f.expect("full.pppd");
    assert_ne!(f.expect("full.sql_before"), format!("{pppd} true"), "SQL did not have the figures before recovery");
    assert_eq!(f.expect("full.collect_rc"), "0");
    final_figures_exact(f.expect("full.sql"), pppd);
}

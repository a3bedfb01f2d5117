//! Session identity in the lab VM (issue 16): a clock stepped back and forward by an hour during
//! live sessions (R411), PostgreSQL restarted with `pg_ctl restart -m fast` under a collector
//! commit (R412), and the accounting directory full at ip-down (R413) — real pppd + pppgate.so
//! over real L2TP. One run of `tests/lab/scenarios/identity.sh`; durations are printed.
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

#[test]
fn a_clock_stepped_back_and_forward_leaves_live_sessions_valid_and_counted() {
    let f = &case_ok("clock").facts;
    assert_eq!(f.expect("clock.before_validity"), "valid");
    assert_eq!(f.expect("clock.back_validity"), "valid", "a step back must not make the session pid_reused");
    assert_eq!(f.expect("clock.back_reconcile_rc"), "0");
    assert_eq!(f.expect("clock.back_in_full"), "yes", "reconcile kept the policy");
    assert_eq!(f.expect("clock.back_collect_rc"), "0");
    assert_eq!(f.expect("clock.back_read"), "1", "the collector counts on");
    assert_eq!(f.expect("clock.back_vanished"), "0");
    assert_eq!(f.expect("clock.forward_validity"), "valid");
    assert_eq!(f.expect("clock.forward_vanished"), "0", "nothing closed as vanished");
    assert_eq!(f.expect("clock.stop_before_start"), "0");
    assert_eq!(f.expect("clock.radacct_negative"), "0");
    final_figures_exact(f.expect("clock.bob_sql"), f.expect("clock.bob_pppd"));
    final_figures_exact(f.expect("clock.alice_sql"), f.expect("clock.alice_pppd"));
}

#[test]
fn pg_restart_during_a_collector_commit_takes_the_outage_path() {
    let f = &case_ok("pgrestart").facts;
    assert_eq!(f.expect("pg.collect_rc"), "69");
    assert_eq!(f.expect("pg.db_status"), "unavailable");
    assert_eq!(f.expect("pg.log_lines"), "1", "one log line");
    assert_eq!(f.expect("pg.marker"), "1", "the outage marker");
    assert_eq!(f.expect("pg.after_collect_rc"), "0");
    assert_eq!(format!("{} false", f.expect("pg.kernel")), f.expect("pg.sql"), "totals exact after recovery");
    assert_eq!(f.expect("pg.marker_after"), "0");
}

#[test]
fn a_full_accounting_dir_at_ip_down_loses_no_final_figures() {
    let f = &case_ok("diskfull").facts;
    assert_eq!(f.expect("full.reserved"), "1", "ip-up reserved the final record");
    assert_eq!(f.expect("full.free_kb"), "0", "the directory was full at ip-down");
    let line = f.expect("full.plugin_line");
    assert!(line.contains("final accounting"), "the plugin's final flush ran: {line}");
    assert_eq!(f.expect("full.committed_at_ip_down"), "0", "PostgreSQL was down at ip-down: {line}");
    assert_eq!(f.expect("full.reserves_after"), "0", "ip-down wrote its record into the reservation");
    let pppd = f.expect("full.pppd");
    assert_ne!(f.expect("full.sql_before"), format!("{pppd} true"), "SQL did not have the figures before recovery");
    assert_eq!(f.expect("full.collect_rc"), "0");
    final_figures_exact(f.expect("full.sql"), pppd);
}

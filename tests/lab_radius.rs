//! Sessions and RADIUS end to end in the lab VM: a real FreeRADIUS 3.2 with rlm_sql postgresql
//! and pppgate's packaging/freeradius wiring, real pppd with `plugin radius.so` and pppgate.so
//! over real L2TP, the same PostgreSQL for both.
//!
//! All tests share one run of `tests/lab/scenarios/radius-simul.sh` (one VM boot). A run that
//! cannot boot, times out or fails its setup makes every test here fail.
//!
//! Needs root, qemu-system-x86, linux-image-amd64, freeradius, freeradius-postgresql,
//! freeradius-utils and the release artifacts:
//! `cargo build --release --workspace && cargo test --release --test lab_radius`.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN
        .get_or_init(|| Lab::run("radius-simul", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string()));
    match r {
        Ok(run) => run,
        Err(e) => panic!("the radius-simul lab run failed: {e}"),
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

#[test]
fn freeradius_is_3_2() {
    assert!(run().facts.expect("radius.freeradius").contains("3.2"), "{}", run().facts.expect("radius.freeradius"));
}

#[test]
fn login_over_l2tp_writes_a_radacct_row_and_a_valid_mapping() {
    let f = &case_ok("login_simul_crash").facts;
    assert_eq!(f.expect("login.radacct_framed_ip"), f.expect("login.client_ip"));
    assert_eq!(f.expect("login.mapping_validity"), "valid");
}

#[test]
fn second_login_is_rejected_while_the_first_is_live() {
    let f = &case_ok("login_simul_crash").facts;
    assert_eq!(f.expect("simul.second_radclient"), "reject");
    assert!(f.expect_i64("simul.second_dial_rejected") >= 1, "the second L2TP dial got no Access-Reject");
    assert!(f.expect_i64("simul.second_dial_hook") >= 1, "the reject did not come from pppgate_simul");
    assert_eq!(f.expect("simul.second_dial_up"), "no");
    assert_eq!(f.expect("simul.open_rows_after_second"), "1", "the live session's row must stay open");
}

#[test]
fn sigkilled_pppd_does_not_lock_the_user_out() {
    let f = &case_ok("login_simul_crash").facts;
    assert_eq!(f.expect("crash.open_rows_after_kill"), "1", "SIGKILL sends no Accounting-Stop");
    assert_eq!(f.expect("crash.next_login"), "accept");
    assert_eq!(f.expect("crash.row_cause"), "Lost-Carrier", "closed by the on-demand janitor");
}

#[test]
fn ghost_mapping_does_not_count_as_live() {
    let f = &case_ok("ghost_mapping").facts;
    assert_eq!(f.expect("ghost.validity"), "process_gone");
    assert_eq!(f.expect("ghost.login"), "accept");
    assert_eq!(f.expect("ghost.row_cause"), "Lost-Carrier");
}

#[test]
fn session_kill_ends_the_session_and_radius_so_sends_the_stop() {
    let f = &case_ok("session_kill").facts;
    assert_eq!(f.expect("kill.exit"), "0");
    assert_eq!(f.expect("kill.outcome"), "terminated");
    assert_eq!(f.expect("kill.pppd_gone"), "yes");
    assert_eq!(f.expect("kill.mapping_left"), "0", "pppgate.so removed its mapping on ip-down");
    assert!(f.expect_i64("kill.acct_stop_seen") >= 1, "FreeRADIUS saw no Accounting-Stop");
    assert_eq!(f.expect("kill.janitor_closed"), "0", "the Stop closed the row, not the janitor");
    let cause = f.expect("kill.row_cause");
    assert!(cause != "open" && cause != "Lost-Carrier", "row closed by radius.so's Stop, got {cause}");
    assert_eq!(f.expect("kill.audit"), "session-kill panel 0");
    assert_eq!(f.expect("kill.bad_id_exit"), "65");
}

#[test]
fn postgres_down_fails_closed_and_the_janitor_stays_quiet() {
    let f = &case_ok("postgres_down").facts;
    assert_eq!(f.expect("pgdown.login"), "reject");
    assert_eq!(f.expect("pgdown.hook_exit"), "2", "rlm_exec fail");
    assert_eq!(f.expect("pgdown.hook_output"), "pppgate: database unavailable (fail closed)");
    assert_eq!(f.expect("pgdown.janitor_exits"), "69 69 69");
    assert_eq!(f.expect("pgdown.janitor_log_lines"), "1", "one log line per outage");
    assert_eq!(f.expect("pgup.janitor_exit"), "0");
    assert_eq!(f.expect("pgup.recovered_lines"), "1");
    assert_eq!(f.expect("pgup.login"), "accept");
}

//! Accounting end to end over real L2TP (docs/accounting.md): the collector run inside the lab
//! VM against a real pppd session through `libpppgate.so`, and ip-down's final flush from the
//! plugin. SQL must hold exactly what the LNS interface counted.
//!
//! Needs root, qemu-system-x86, linux-image-amd64 and the release artifacts:
//! `cargo build --release --workspace && cargo test --release --test lab_accounting`.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| Lab::run("accounting", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string()));
    match r {
        Ok(run) => run,
        Err(e) => panic!("the accounting lab run failed: {e}"),
    }
}

fn kernel(run: &LabRun, step: &str) -> (i64, i64) {
    (run.facts.expect_i64(&format!("{step}.kernel_rx")), run.facts.expect_i64(&format!("{step}.kernel_tx")))
}

#[test]
fn collector_and_ip_down_flush_put_exactly_the_interface_counters_into_sql() {
    let run = run();
    run.expect_case("session");
    let f = &run.facts;
    for step in ["live1", "live2"] {
        assert_eq!(f.expect(&format!("{step}.collect_rc")), "0", "{step}: collector exit code");
        let (rx, tx) = kernel(run, step);
        assert!(rx > 0 && tx > 0, "{step}: the pings moved the counters ({rx}, {tx})");
        assert_eq!(kernel(run, &format!("{step}.after")), (rx, tx), "{step}: the interface was not quiet around the collector run");
        assert_eq!(f.expect(&format!("{step}.sql")), format!("{rx} {tx} false"), "{step}: pppgate_sessions vs the interface");
        assert_eq!(f.expect(&format!("{step}.usage")), format!("{rx} {tx}"), "{step}: vpn_usage vs the interface");
        assert_eq!(f.expect(&format!("{step}.spooled")), "0");
    }
    // No RADIUS accounting in this lab: in mode auto the session's last entry writes pppgate's
    // own row, closed.
    let (rx, tx) = kernel(run, "final");
    assert!(rx > kernel(run, "live2").0, "the last pings moved the counters");
    assert!(f.expect("final.plugin_line").contains("Committed"), "plugin: {}", f.expect("final.plugin_line"));
    assert_eq!(f.expect("final.sql"), format!("{rx} {tx} true"), "ip-down closed the session with the interface's last counters");
    assert_eq!(f.expect("final.usage"), format!("{rx} {tx}"));
    let own = f.expect("final.radacct");
    assert!(own.starts_with("pppgate:lns-1:") && own.ends_with(&format!(" {rx} {tx} true")), "radacct: {own}");
    // A later collector run neither re-reads nor re-counts the closed session.
    assert_eq!(f.expect("after.collect_rc"), "0");
    for k in ["sql", "usage", "radacct"] {
        assert_eq!(f.expect(&format!("after.{k}")), f.expect(&format!("final.{k}")), "{k} changed after the session ended");
    }
}

fn run_radius() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| Lab::run("accounting-radius", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string()));
    match r {
        Ok(run) => run,
        Err(e) => panic!("the accounting-radius lab run failed: {e}"),
    }
}

#[test]
fn radius_so_row_is_bound_by_session_identity_and_gets_the_interface_counters() {
    let run = run_radius();
    run.expect_case("radius");
    let f = &run.facts;
    // FreeRADIUS stores radius.so's unexpanded `%lX...%hX` with `%` escaped as `=25`.
    assert!(f.expect("radius.session_id").contains("=25lX"), "radius.so's Acct-Session-Id is the malformed one: {}", f.expect("radius.session_id"));
    assert_eq!(f.expect("radius.framed_ip_matches_stale"), "t", "the stale row carries the same address");
    let live = f.expect("live.kernel");
    assert_eq!(f.expect("live.kernel_after"), live, "the interface was not quiet around the collector run");
    assert_eq!(f.expect("live.collect_rc"), "0");
    assert_eq!(f.expect("live.binding"), "radius true", "bound to radius.so's row of this session");
    assert_eq!(f.expect("live.row"), format!("{live} true"), "radius.so's row holds the interface's counters");
    // (The on-demand janitor closed it at login; accounting never wrote octets into it.)
    assert!(f.expect("live.stale").starts_with("-1 "), "the stale row of the earlier session got no octets: {}", f.expect("live.stale"));
    assert_eq!(f.expect("live.sessions"), live);

    let fin = f.expect("final.kernel");
    assert!(f.expect("final.plugin_line").contains("Committed"), "plugin: {}", f.expect("final.plugin_line"));
    assert_eq!(f.expect("final.sessions"), format!("{fin} true"), "ip-down closed pppgate_sessions with the last counters");
    assert_eq!(f.expect("final.usage"), fin);
    assert_eq!(f.expect("final.own_rows"), "0", "pppgate never writes its own row while radius.so accounts");
    // radius.so's Stop closed its row with pppd's own statistics, which count from IPCP-up (the
    // interface's counters also hold the NCP negotiation): radius.so's figures, not pppgate's.
    let stats = f.expect("final.pppd_stats");
    let n: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(n.len(), 6, "pppd's line: {stats}");
    let (sent, received) = (n[1], n[4]);
    let row = f.expect("final.row");
    let cause = row.rsplit(' ').next().unwrap();
    assert_eq!(row, format!("{received} {sent} {cause}"), "radius.so's Stop values in its row");
    assert_ne!(cause, "-", "radius.so's Stop closed its row with a cause: {row}");
}

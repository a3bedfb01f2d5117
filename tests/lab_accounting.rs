//! Accounting end to end over real L2TP (docs/accounting.md): the collector run inside the lab
//! VM against a real pppd session through `libpppgate.so`, and ip-down's final flush from the
//! plugin. SQL must hold exactly what the LNS interface counted since IPCP came up, and after
//! the session exactly pppd's own final statistics — also through a PostgreSQL outage.
//!
//! Needs root, qemu-system-x86, linux-image-amd64 and the release artifacts:
//! `cargo build --release --workspace && cargo test --release --test lab_accounting`.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun, Root};

const TIMEOUT: Duration = Duration::from_secs(900);

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r =
        RUN.get_or_init(|| Lab::run("accounting", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string()));
    match r {
        Ok(run) => run,
        Err(e) => panic!("the accounting lab run failed: {e}"),
    }
}

fn kernel(run: &LabRun, step: &str) -> (i64, i64) {
    (run.facts.expect_i64(&format!("{step}.kernel_rx")), run.facts.expect_i64(&format!("{step}.kernel_tx")))
}

fn pair(s: &str) -> (i64, i64) {
    let mut it = s.split_whitespace().map(|v| v.parse::<i64>().unwrap_or_else(|_| panic!("not a number pair: {s:?}")));
    (it.next().unwrap(), it.next().unwrap())
}

/// The mapping's RX_BASE/TX_BASE: the interface's counters when IPCP came up.
fn base(run: &LabRun, step: &str) -> (i64, i64) {
    let b = run.facts.expect(&format!("{step}.base"));
    assert!(!b.contains("none"), "{step}: the plugin wrote no IPCP-up base into the mapping: {b}");
    pair(b)
}

/// pppd's own final statistics as (received, sent) = (rx, tx) from the LNS's view.
fn pppd_stats(run: &LabRun, step: &str) -> (i64, i64) {
    let stats = run.facts.expect(&format!("{step}.pppd_stats"));
    let n: Vec<&str> = stats.split_whitespace().collect();
    assert_eq!(n.len(), 6, "pppd's line: {stats}");
    (n[4].parse().unwrap(), n[1].parse().unwrap())
}

const XFER: i64 = 5_000_000;

#[test]
fn collector_and_ip_down_flush_put_exactly_pppds_own_figures_into_sql() {
    let run = run();
    run.expect_case("session");
    let f = &run.facts;
    let (brx, btx) = base(run, "session");
    // The negotiation before IPCP-up moved the counters; they are not the user's traffic.
    assert!(brx > 0 && btx > 0, "LCP/IPCP frames before IPCP-up: base {brx} {btx}");
    assert_eq!(f.expect_i64("xfer.up_bytes"), XFER, "the upload arrived whole");
    assert_eq!(f.expect_i64("xfer.down_bytes"), XFER, "the download arrived whole");
    for step in ["live1", "live2"] {
        assert_eq!(f.expect(&format!("{step}.collect_rc")), "0", "{step}: collector exit code");
        let (rx, tx) = kernel(run, step);
        assert_eq!(
            f.expect(&format!("{step}.after")),
            format!("{rx} {tx}"),
            "{step}: the interface never stood still around a collector run"
        );
        let (urx, utx) = (rx - brx, tx - btx);
        assert!(urx > 0 && utx > 0, "{step}: traffic moved the counters ({rx}, {tx})");
        assert_eq!(
            f.expect(&format!("{step}.sql")),
            format!("{urx} {utx} false"),
            "{step}: pppgate_sessions = interface − IPCP-up base"
        );
        assert_eq!(f.expect(&format!("{step}.usage")), format!("{urx} {utx}"), "{step}: vpn_usage");
        assert_eq!(f.expect(&format!("{step}.spooled")), "0");
    }
    let (rx2, tx2) = pair(f.expect("live2.sql"));
    assert!(rx2 >= XFER && tx2 >= XFER, "5 MB each way are in SQL: {rx2} {tx2}");

    // After disconnect: SQL holds pppd's own final statistics, exactly.
    let (prx, ptx) = pppd_stats(run, "final");
    let (krx, ktx) = kernel(run, "final");
    assert!(
        prx >= rx2 && ptx >= tx2 && prx <= krx - brx && ptx <= ktx - btx,
        "pppd {prx} {ptx} vs interface {krx} {ktx} base {brx} {btx}"
    );
    assert!(f.expect("final.plugin_line").contains("Committed"), "plugin: {}", f.expect("final.plugin_line"));
    assert_eq!(f.expect("final.sql"), format!("{prx} {ptx} true"), "ip-down closed the session with pppd's figures");
    assert_eq!(f.expect("final.usage"), format!("{prx} {ptx}"));
    // No RADIUS accounting in this lab: in mode auto pppgate owns the radacct row, closed.
    let own = f.expect("final.radacct");
    assert!(own.starts_with("pppgate:lns-1:") && own.ends_with(&format!(" {prx} {ptx} true")), "radacct: {own}");
    // A later collector run neither re-reads nor re-counts the closed session.
    assert_eq!(f.expect("after.collect_rc"), "0");
    for k in ["sql", "usage", "radacct"] {
        assert_eq!(
            f.expect(&format!("after.{k}")),
            f.expect(&format!("final.{k}")),
            "{k} changed after the session ended"
        );
    }
}

#[test]
fn postgres_down_from_mid_session_until_after_disconnect_loses_nothing() {
    let run = run();
    run.expect_case("outage");
    let f = &run.facts;
    let (brx, btx) = base(run, "outage");
    let (u0rx, u0tx) = pair(f.expect("outage.usage_before"));
    // While PostgreSQL was up, the session was counted live.
    assert_eq!(f.expect("outage.live.collect_rc"), "0");
    let (rx, tx) = kernel(run, "outage.live");
    assert_eq!(f.expect("outage.live.sql"), format!("{} {} false", rx - brx, tx - btx));
    // Down: the collector exits 69 (EX_UNAVAILABLE) and spools; ip-down spools too.
    assert_eq!(f.expect_i64("outage.xfer.up_bytes"), XFER);
    assert_eq!(f.expect_i64("outage.xfer.down_bytes"), XFER);
    assert_eq!(f.expect("outage.down.collect_rc"), "69", "collector with the database down");
    assert!(f.expect_i64("outage.down.spooled") >= 1, "the live batch is in the spool");
    assert!(
        f.expect("outage.plugin_line").contains("Spooled"),
        "ip-down's flush was spooled: {}",
        f.expect("outage.plugin_line")
    );
    assert!(f.expect_i64("outage.spooled_after_down") >= 1);
    // Back: one run later SQL equals pppd's own statistics exactly.
    let (prx, ptx) = pppd_stats(run, "outage");
    assert!(prx >= XFER && ptx >= XFER, "pppd counted the 5 MB each way: {prx} {ptx}");
    assert_eq!(f.expect("outage.back.collect_rc"), "0");
    assert_eq!(f.expect("outage.back.spooled"), "0", "the spool was replayed");
    assert_eq!(f.expect("outage.back.sql"), format!("{prx} {ptx} true"), "pppgate_sessions after the outage");
    assert_eq!(
        f.expect("outage.back.usage"),
        format!("{} {}", u0rx + prx, u0tx + ptx),
        "vpn_usage grew by exactly pppd's figures"
    );
    let own = f.expect("outage.back.radacct");
    assert!(own.ends_with(&format!(" {prx} {ptx} true")), "radacct: {own}");
    assert_eq!(f.expect("outage.again.collect_rc"), "0");
    for k in ["sql", "usage", "radacct", "spooled"] {
        assert_eq!(
            f.expect(&format!("outage.again.{k}")),
            f.expect(&format!("outage.back.{k}")),
            "a second run changed {k}"
        );
    }
}

#[test]
fn crossing_the_quota_restricts_within_one_collector_run_and_raising_it_restores() {
    let run = run();
    run.expect_case("quota");
    let f = &run.facts;
    assert_eq!(f.expect("quota.set_before"), "full_v4");
    assert_eq!(f.expect("quota.pings_before"), "3", "FULL: the far side answers");
    assert_eq!(f.expect_i64("quota.xfer.up_bytes"), XFER);
    assert!(f.expect_i64("quota.used") > 3_000_000, "usage is over the 3 MB quota: {}", f.expect("quota.used"));
    assert_eq!(f.expect("quota.cross.collect_rc"), "0");
    assert_eq!(f.expect("quota.changes"), r#"[{"over":true}]"#, "the run that counted the bytes saw the crossing");
    assert_eq!(f.expect("quota.set_over"), "restricted_v4", "re-applied in the same collector run");
    assert_eq!(f.expect("quota.pings_over"), "0", "RESTRICTED: packets to the far side are dropped");
    assert_eq!(f.expect("quota.garden"), "garden", "the walled garden (tcp/80) still answers");
    assert_eq!(f.expect("quota.raise.collect_rc"), "0");
    assert_eq!(f.expect("quota.raise_changes"), r#"[{"over":false}]"#);
    assert_eq!(f.expect("quota.set_raised"), "full_v4", "raised quota: FULL again in the same run");
    assert_eq!(f.expect("quota.pings_raised"), "3", "the far side answers again");
}

fn run_radius() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        Lab::run("accounting-radius", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string())
    });
    match r {
        Ok(run) => run,
        Err(e) => panic!("the accounting-radius lab run failed: {e}"),
    }
}

#[test]
fn radius_so_row_is_bound_by_session_identity_and_agrees_with_pppd_at_the_end() {
    let run = run_radius();
    run.expect_case("radius");
    let f = &run.facts;
    let sid = f.expect("radius.session_id");
    match run.root {
        // pppd 2.4.9: FreeRADIUS stores radius.so's unexpanded `%lX...%hX` with `%` escaped as `=25`.
        Root::Bookworm => {
            assert!(sid.contains("=25lX"), "radius.so 2.4.9's Acct-Session-Id is the malformed one: {sid}")
        }
        // pppd 2.5.2's radius.so formats it (hex digits only); the row is still found by identity.
        Root::Trixie => assert!(
            !sid.is_empty() && sid.chars().all(|c| c.is_ascii_hexdigit()),
            "radius.so 2.5.2's Acct-Session-Id is well-formed: {sid}"
        ),
    }
    assert_eq!(f.expect("radius.framed_ip_matches_stale"), "t", "the stale row carries the same address");
    let live = f.expect("live.kernel");
    assert_eq!(f.expect("live.kernel_after"), live, "the interface never stood still around a collector run");
    assert_eq!(f.expect("live.collect_rc"), "0");
    let (krx, ktx) = pair(live);
    let (brx, btx) = base(run, "radius");
    let user = format!("{} {}", krx - brx, ktx - btx);
    assert_eq!(f.expect("live.binding"), "radius true", "bound to radius.so's row of this session");
    assert_eq!(
        f.expect("live.row"),
        format!("{user} true"),
        "radius.so's row holds the interface's counters since IPCP-up"
    );
    // (The on-demand janitor closed it at login; accounting never wrote octets into it.)
    assert!(
        f.expect("live.stale").starts_with("-1 "),
        "the stale row of the earlier session got no octets: {}",
        f.expect("live.stale")
    );
    assert_eq!(f.expect("live.sessions"), user);

    assert!(f.expect("final.plugin_line").contains("Committed"), "plugin: {}", f.expect("final.plugin_line"));
    assert_eq!(f.expect("final.own_rows"), "0", "pppgate never writes its own row while radius.so accounts");
    // pppgate's final figures and radius.so's Stop agree: both are pppd's own statistics.
    let (prx, ptx) = pppd_stats(run, "final");
    assert_eq!(
        f.expect("final.sessions"),
        format!("{prx} {ptx} true"),
        "ip-down closed pppgate_sessions with pppd's figures"
    );
    assert_eq!(f.expect("final.usage"), format!("{prx} {ptx}"));
    let row = f.expect("final.row");
    let cause = row.rsplit(' ').next().unwrap();
    assert_eq!(row, format!("{prx} {ptx} {cause}"), "radius.so's Stop values in its row");
    assert_ne!(cause, "-", "radius.so's Stop closed its row with a cause: {row}");
}

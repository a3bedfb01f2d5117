//! Accounting past 4 GiB each way over real L2TP (docs/accounting.md, "Counter edge cases"):
//! 4.3 GB up and 4.3 GB down through one session, then SQL must hold pppd's own final figures —
//! on pppd 2.5.2 its 64-bit statistics exactly; on pppd 2.4.9, whose statistics are 32 bits wide
//! and wrap, the extension against the interface's 64-bit counters.
//!
//! Part of the long lab run (`scripts/lab-matrix.sh`, both roots), not of CI: under TCG the
//! transfers take many minutes (figures printed). Run one with
//! `PPPGATE_LAB_ROOT=trixie cargo test --release --test lab_accounting_4g -- --ignored`;
//! `PPPGATE_LAB_BIG_BYTES` changes the size.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun, Root};

const FOUR_GIB: u64 = 1 << 32;

fn big_bytes() -> u64 {
    std::env::var("PPPGATE_LAB_BIG_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(4_300_000_000)
}

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        let opts =
            LabOptions::default().timeout(Duration::from_secs(4 * 3600)).env("BIG_BYTES", &big_bytes().to_string());
        Lab::run("accounting-4g", &opts).map_err(|e| e.to_string())
    });
    match r {
        Ok(run) => run,
        Err(e) => panic!("the accounting-4g lab run failed: {e}"),
    }
}

fn nums(run: &LabRun, key: &str) -> Vec<u64> {
    let v = run.facts.expect(key);
    v.split_whitespace()
        .filter(|w| *w != "true" && *w != "false")
        .map(|w| w.parse().unwrap_or_else(|_| panic!("{key}={v}: not numbers")))
        .collect()
}

/// pppd's "Sent N bytes, received M bytes" as (received, sent) = (rx, tx) on the LNS.
fn pppd_figures(run: &LabRun) -> (u64, u64) {
    let s = run.facts.expect("final.pppd_stats");
    let w: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(w.len(), 6, "pppd's line: {s}");
    (w[4].parse().unwrap(), w[1].parse().unwrap())
}

#[test]
#[ignore = "long lab run (scripts/lab-matrix.sh): 4.3 GB each way under TCG"]
fn a_session_past_4_gib_each_way_ends_with_pppds_own_figures_in_sql() {
    let run = run();
    let f = &run.facts;
    let (up_ms, down_ms) = (f.expect_i64("up.ms"), f.expect_i64("down.ms"));
    let (up, down) = (nums(run, "up.bytes")[0], nums(run, "down.bytes")[0]);
    eprintln!(
        "accounting-4g ({} root): up {up} bytes in {:.0} s ({:.1} MB/s), down {down} bytes in {:.0} s ({:.1} MB/s), VM {:.0} s",
        run.root,
        up_ms as f64 / 1000.0,
        up as f64 / up_ms as f64 / 1000.0,
        down_ms as f64 / 1000.0,
        down as f64 / down_ms as f64 / 1000.0,
        run.elapsed.as_secs_f64()
    );
    assert!(up >= big_bytes() && down >= big_bytes(), "the transfers arrived whole: up {up}, down {down}");

    let base = nums(run, "big.base");
    let live = nums(run, "live.kernel");
    assert_eq!(f.expect("live.collect_rc"), "0");
    let live_sql = nums(run, "live.sql");
    assert_eq!(
        live_sql,
        vec![live[0] - base[0], live[1] - base[1]],
        "live: SQL holds the interface's 64-bit counters since IPCP-up"
    );
    assert!(live_sql.iter().all(|v| *v > FOUR_GIB), "both directions passed 4 GiB: {live_sql:?}");

    let (prx, ptx) = pppd_figures(run);
    let fin = nums(run, "final.sql");
    let kernel = nums(run, "final.kernel");
    let (krx, ktx) = (kernel[0] - base[0], kernel[1] - base[1]);
    match run.root {
        Root::Trixie => {
            // pppd 2.5.2: 64-bit statistics, taken as they are.
            assert!(prx > FOUR_GIB && ptx > FOUR_GIB, "pppd 2.5.2's own figures are 64-bit: {prx} {ptx}");
            assert_eq!(fin, vec![prx, ptx], "SQL = pppd 2.5.2's own final figures");
        }
        Root::Bookworm => {
            // pppd 2.4.9: 32-bit statistics that wrapped; extended against the interface.
            assert!(prx < FOUR_GIB && ptx < FOUR_GIB, "pppd 2.4.9's figures are 32 bits: {prx} {ptx}");
            assert_eq!((fin[0] % FOUR_GIB, fin[1] % FOUR_GIB), (prx, ptx), "SQL ≡ pppd 2.4.9's figures mod 2^32");
            assert!(
                fin[0].abs_diff(krx) < 1 << 20 && fin[1].abs_diff(ktx) < 1 << 20,
                "{fin:?} vs the interface {krx} {ktx}"
            );
        }
    }
    // No packet moved after the settle: pppd's figure is the interface's.
    assert_eq!((fin[0], fin[1]), (krx, ktx), "SQL = the interface's counters since IPCP-up at ip-down");
    assert_eq!(f.expect("final.sql"), format!("{} {} true", fin[0], fin[1]), "closed at ip-down");
    assert_eq!(nums(run, "final.usage"), vec![fin[0], fin[1]], "vpn_usage grew by exactly the session");
    assert_eq!(f.expect("final.radacct"), format!("{} {}", fin[0], fin[1]), "pppgate's radacct row");
    assert!(f.expect("final.plugin_line").contains("Committed"), "{}", f.expect("final.plugin_line"));
    assert_eq!(f.expect("after.collect_rc"), "0");
    assert_eq!(f.expect("after.sql"), f.expect("final.sql"), "a collector run after the session changes nothing");
    assert_eq!(f.expect("after.usage"), f.expect("final.usage"));
}

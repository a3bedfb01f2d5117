//! Kernel tests of the accounting collector: TUN interfaces named pppN in a namespace of the
//! test's own, a real PostgreSQL per test, the real `pppgate` binary. They need root and fail
//! (never skip) without it; see tests/support/mod.rs.

mod support;

use std::net::Ipv4Addr;

use support::{Lab, Peer};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn client(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, n)
}

/// SQL's view of one session equals the kernel's counters, exactly.
#[track_caller]
fn assert_sql_matches_kernel(lab: &Lab, peer: &Peer, conn: i64) {
    let k = peer.counters();
    assert_eq!(lab.session_totals(&peer.session_key()), Some(k), "pppgate_sessions vs kernel");
    assert_eq!(lab.usage(conn), k, "vpn_usage vs kernel");
}

#[test]
fn deltas_are_correct_across_runs() {
    let lab = Lab::new("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(10, 1000);
    p.tx(5, 500);
    let r1 = lab.collect().ok();
    assert_eq!(r1["sessions"]["read"], 1);
    assert_eq!(r1["sessions"]["new"], 1);
    assert_sql_matches_kernel(&lab, &p, conn);
    let (rx1, tx1) = p.counters();
    assert!(rx1 >= 10_000, "rx {rx1}");
    assert_eq!(r1["batch"]["delta"]["rx"], rx1);

    p.rx(7, 300);
    p.tx(3, 100);
    let r2 = lab.collect().ok();
    let (rx2, tx2) = p.counters();
    assert_eq!(r2["batch"]["delta"]["rx"], rx2 - rx1);
    assert_eq!(r2["batch"]["delta"]["tx"], tx2 - tx1);
    assert_sql_matches_kernel(&lab, &p, conn);
    let own = lab.own_radacct(&p.session_key()).expect("pppgate-owned radacct row");
    assert_eq!((own.0, own.1, own.2), (rx2, tx2, false));

    // Nothing moved: a run changes no totals.
    let before = lab.snapshot();
    let r3 = lab.collect().ok();
    assert_eq!(r3["batch"]["delta"]["rx"], 0);
    assert_eq!(lab.snapshot(), before);
    assert_eq!(r3["replay"]["commit_statements"], 1, "one statement per batch");
    assert_eq!(lab.spool_records(), 0);
}

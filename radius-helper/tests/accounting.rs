//! Kernel tests of the accounting collector: TUN interfaces named pppN in a namespace of the
//! test's own, a real PostgreSQL per test, the real `pppgate` binary. They need root and fail
//! (never skip) without it; the harness is pppgate-testkit's `AcctLab` and `Peer`.

use std::net::Ipv4Addr;

use policy_core::mapping::Mapping;
use pppgate_testkit::{member_is, render_elem, AcctLab as Lab, Peer, NAS_IP};

/// A lab running this build's `pppgate` with `accounting.radacct = radacct`.
fn new_lab(radacct: &str) -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_pppgate"), radacct)
}

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
    let lab = new_lab("own");
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
    assert!(rx1 >= 10_000 && tx1 >= 5 * 528, "the kernel counted the traffic: rx {rx1} tx {tx1}");
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

#[test]
fn db_outage_spools_then_catches_up_exactly_and_logs_once() {
    let lab = new_lab("own");
    let c1 = lab.add_connection("alice", None, "month");
    let c2 = lab.add_connection("bob", None, "day");
    let mut p1 = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut p2 = Peer::spawn(&lab.ns, "ppp1", LOCAL, client(3));
    lab.write_mapping(&p1.mapping(c1, None));
    lab.write_mapping(&p2.mapping(c2, None));
    p1.rx(3, 1000);
    lab.collect().ok();

    // Journal entries (issue 12): read from a socket standing in for journald's.
    let jdir = tempfile::tempdir().unwrap();
    let jsock = jdir.path().join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&jsock).unwrap();
    journal.set_nonblocking(true).unwrap();
    let jenv = [(policy_core::journal::SOCKET_ENV, jsock.to_str().unwrap())];
    let events = || {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = journal.recv(&mut buf) {
            let e = policy_core::journal::decode(&buf[..n]).expect("a native-protocol datagram");
            let get = |k: &str| e.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone()).unwrap_or_default();
            v.push((get("PPPGATE_EVENT"), get("PPPGATE_COMPONENT"), get("PPPGATE_BATCHES"), get("MESSAGE_ID")));
        }
        v
    };

    lab.pg.stop();
    let mut outage_lines = 0;
    for i in 1..=3 {
        p1.rx(4, 900);
        p2.tx(2, 400);
        p2.rx(1, 1400);
        if i == 3 {
            // The two spooled batches have waited a day: more than 2 x the interim interval.
            let day_ago = format!("@{}", policy_core::lock::now_unix() - 86_400);
            for e in std::fs::read_dir(lab.acct_dir.join("spool")).unwrap().flatten() {
                if e.file_name().to_string_lossy().ends_with(".batch") {
                    let st =
                        std::process::Command::new("touch").arg("-m").arg("-d").arg(&day_ago).arg(e.path()).status();
                    assert!(st.unwrap().success());
                }
            }
        }
        let r = lab.cli.run_env(&["--json", "collect"], &jenv);
        assert_eq!(r.code, Some(69), "run {i} with the database down: {r:?}");
        let j = r.json();
        assert_eq!(j["db"]["status"], "unavailable");
        assert_eq!(j["db"]["first"], i == 1);
        assert_eq!(lab.spool_records(), i, "the spool grows by one record per run");
        outage_lines += r.stderr.lines().filter(|l| l.contains("database unavailable")).count();
        if i > 1 {
            assert!(
                r.stderr.lines().all(|l| l.contains("accounting spool growing")),
                "later runs of one outage log nothing but the spool's growth: {}",
                r.stderr
            );
        }
        let ev = events();
        let want: Vec<(String, String, String, String)> = match i {
            1 => vec![(
                "db_outage_begin".into(),
                "accounting".into(),
                String::new(),
                policy_core::journal::Event::DbOutageBegin.message_id().into(),
            )],
            2 => vec![],
            _ => vec![(
                "spool_growing".into(),
                String::new(),
                "3".into(),
                policy_core::journal::Event::SpoolGrowing.message_id().into(),
            )],
        };
        assert_eq!(ev, want, "journal entries of run {i}");
    }
    assert_eq!(outage_lines, 1, "one log line per outage, not per run");
    assert!(lab.acct_dir.join("sql-outage.accounting").exists());

    lab.pg.start();
    let r = lab.cli.run_env(&["--json", "collect"], &jenv).expect_code(0).json();
    let ev = events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].0.as_str(), ev[0].1.as_str()), ("db_outage_end", "accounting"));
    assert_eq!(r["replay"]["records_applied"], 4);
    assert_eq!(r["replay"]["commit_statements"], 1, "four spooled records merged into one statement");
    assert_sql_matches_kernel(&lab, &p1, c1);
    assert_sql_matches_kernel(&lab, &p2, c2);
    assert_eq!(lab.spool_records(), 0);
    assert!(!lab.acct_dir.join("sql-outage.accounting").exists());

    let before = lab.snapshot();
    lab.collect().ok();
    assert_eq!(lab.snapshot(), before, "a second run changes nothing");
}

/// Runs once, moves counters, kills the collector at `point`, runs again: SQL must equal the
/// kernel exactly, and a further run must change nothing.
fn crash_and_recover(point: &str) -> serde_json::Value {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(5, 1200);
    lab.collect().ok();
    if point == "replay-mid-delete" {
        // Two records pending from an outage, so the replay commits a chunk of three.
        lab.pg.stop();
        for _ in 0..2 {
            p.rx(2, 800);
            assert_eq!(lab.collect().code, Some(69));
        }
        lab.pg.start();
    }
    p.rx(6, 700);
    p.tx(4, 300);
    let r = lab.collect_crashing_at(point);
    assert_eq!(r.signal, Some(9), "the collector must die at {point}: {r:?}");
    p.rx(1, 100);
    let after = lab.collect().ok();
    assert_sql_matches_kernel(&lab, &p, conn);
    assert_eq!(lab.spool_records(), 0);
    let before = lab.snapshot();
    lab.collect().ok();
    assert_eq!(lab.snapshot(), before, "after recovery a run changes nothing");
    after
}

#[test]
fn crash_after_read() {
    let r = crash_and_recover("after-read");
    assert_eq!(r["rolled_forward"], 0);
}

#[test]
fn crash_after_spool() {
    let r = crash_and_recover("after-spool");
    assert_eq!(r["rolled_forward"], 1, "the state is rolled forward from the journal record");
    assert_eq!(r["replay"]["records_applied"], 2);
}

#[test]
fn crash_after_state() {
    let r = crash_and_recover("after-state");
    assert_eq!(r["rolled_forward"], 0);
    assert_eq!(r["replay"]["records_applied"], 2);
}

#[test]
fn crash_after_commit() {
    let r = crash_and_recover("after-commit");
    assert_eq!(r["replay"]["records_already_applied"], 1, "the committed batch is recognised and skipped");
    assert_eq!(r["replay"]["records_applied"], 1);
}

#[test]
fn crash_during_replay() {
    let r = crash_and_recover("replay-mid-delete");
    assert_eq!(r["replay"]["records_already_applied"], 2);
    assert_eq!(r["replay"]["records_applied"], 1);
}

#[test]
fn new_pppd_on_the_same_interface_name_is_a_new_session() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p1 = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p1.mapping(conn, None));
    p1.rx(20, 1000);
    lab.collect().ok();
    let old = p1.counters();
    let old_key = p1.session_key();
    p1.kill();
    // The next session on ppp0 has fewer octets than the last one had.
    let mut p2 = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    assert_ne!(p2.session_key(), old_key);
    lab.write_mapping(&p2.mapping(conn, None));
    p2.rx(2, 500);
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["new"], 1);
    assert_eq!(r["sessions"]["backwards"], 0);
    let new = p2.counters();
    assert_eq!(lab.session_totals(&p2.session_key()), Some(new));
    assert_eq!(lab.session_totals(&old_key), Some(old));
    assert_eq!(lab.usage(conn), (old.0 + new.0, old.1 + new.1));
}

#[test]
fn recreated_interface_under_the_same_pppd_counts_its_new_counters() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(20, 1000);
    lab.collect().ok();
    let first = p.counters();
    let idx = p.ifindex();
    p.recreate();
    assert_ne!(p.ifindex(), idx);
    p.rx(3, 400);
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["recreated"], 1);
    let now = p.counters();
    let expect = (first.0 + now.0, first.1 + now.1);
    assert_eq!(lab.session_totals(&p.session_key()), Some(expect));
    assert_eq!(lab.usage(conn), expect);
}

#[test]
fn counters_going_backwards_are_a_reset_without_negative_usage() {
    use policy_core::accounting::state::State;
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(10, 1000);
    lab.collect().ok();
    let usage0 = lab.usage(conn);
    // Make the kernel's counters look lower than the last reading.
    let path = lab.acct_dir.join("state");
    let mut st = State::decode(&std::fs::read(&path).unwrap()).unwrap();
    let s = st.sessions.get_mut(&p.session_key()).unwrap();
    s.baseline.rx += 1_000_000;
    std::fs::write(&path, st.encode()).unwrap();
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["backwards"], 1);
    assert!(r["batch"]["delta"]["rx"] == 0);
    assert_eq!(lab.usage(conn), usage0, "no negative usage");
    // Counting resumes from the reading taken at the reset.
    let before = p.counters();
    p.rx(4, 250);
    lab.collect().ok();
    let after = p.counters();
    assert_eq!(lab.usage(conn).0, usage0.0 + (after.0 - before.0));
}

#[test]
fn truncated_last_record_is_moved_aside_and_nothing_intact_is_lost() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(3, 1000);
    lab.collect().ok();
    lab.pg.stop();
    for _ in 0..3 {
        p.rx(2, 600);
        assert_eq!(lab.collect().code, Some(69));
    }
    let mut names: Vec<_> = std::fs::read_dir(lab.acct_dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "batch"))
        .collect();
    names.sort();
    let last = names.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    std::fs::write(last, &bytes[..bytes.len() / 2]).unwrap();
    lab.pg.start();
    p.rx(1, 100);
    let r = lab.collect();
    assert_eq!(r.code, Some(65), "{r:?}");
    assert!(r.stderr.contains("moved aside") && r.stderr.contains("truncated"), "{}", r.stderr);
    assert_eq!(lab.bad_files(), 1);
    assert_eq!(r.json()["replay"]["records_applied"], 3);
    // Totals are absolute: the newer record covers what the truncated one held.
    assert_sql_matches_kernel(&lab, &p, conn);
    assert_eq!(lab.collect().code, Some(0), "the bad file is reported once");
}

#[test]
fn garbage_in_the_spool_is_moved_aside() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(3, 1000);
    lab.collect().ok();
    std::fs::write(lab.acct_dir.join("spool/00000000000000000042.batch"), b"\x7fELF garbage").unwrap();
    std::fs::write(lab.acct_dir.join("spool/README"), b"hello").unwrap();
    p.rx(2, 700);
    let r = lab.collect();
    assert_eq!(r.code, Some(65), "{r:?}");
    assert_eq!(lab.bad_files(), 2);
    assert_sql_matches_kernel(&lab, &p, conn);
    // The batch numbering moved past the unreadable file's number.
    assert!(r.json()["batch"]["seq"].as_u64().unwrap() > 42);
}

#[test]
fn spool_from_a_newer_pppgate_is_refused_and_left_alone() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(3, 1000);
    lab.collect().ok();
    let newer = policy_core::accounting::codec::encode(
        "pppgate-acct-batch",
        policy_core::accounting::spool::BATCH_VERSION + 1,
        b"{\"whatever\":1}",
    );
    let path = lab.acct_dir.join("spool/00000000000000000007.batch");
    std::fs::write(&path, &newer).unwrap();
    let state_before = std::fs::read(lab.acct_dir.join("state")).unwrap();
    let sql_before = lab.snapshot();
    p.rx(2, 500);
    let r = lab.pppgate(&["collect"], None);
    assert_eq!(r.code, Some(65), "{r:?}");
    assert!(r.stderr.contains("newer pppgate"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one clear line: {}", r.stderr);
    assert_eq!(std::fs::read(&path).unwrap(), newer, "the newer record is untouched");
    assert_eq!(std::fs::read(lab.acct_dir.join("state")).unwrap(), state_before);
    assert_eq!(lab.spool_records(), 1);
    assert_eq!(lab.snapshot(), sql_before);
}

#[test]
fn schema_too_old_exits_78_and_keeps_the_spool() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    lab.pg.client().execute("DELETE FROM pppgate_schema WHERE version = 3", &[]).unwrap();
    p.rx(3, 1000);
    let r = lab.pppgate(&["collect"], None);
    assert_eq!(r.code, Some(78), "{r:?}");
    assert!(r.stderr.contains("pppgate db migrate"), "{}", r.stderr);
    assert_eq!(lab.spool_records(), 1);
    assert_eq!(lab.pppgate(&["db", "migrate"], None).code, Some(0));
    lab.collect().ok();
    assert_sql_matches_kernel(&lab, &p, conn);
}

#[test]
fn busy_lock_exits_75() {
    let lab = new_lab("own");
    let _held = policy_core::lock::Lock::try_acquire(&lab.collector_lock, "test").unwrap();
    let r = lab.pppgate(&["collect"], None);
    assert_eq!(r.code, Some(75), "{r:?}");
}

#[test]
fn quota_crossing_is_reported_once() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", Some(5000), "month");
    let other = lab.add_connection("bob", Some(1_000_000), "day");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut q = Peer::spawn(&lab.ns, "ppp1", LOCAL, client(3));
    lab.write_mapping(&p.mapping(conn, None));
    lab.write_mapping(&q.mapping(other, None));
    p.rx(2, 1000);
    q.rx(2, 1000);
    let r = lab.collect().ok();
    assert_eq!(r["quota_changes"], serde_json::json!([]));
    p.rx(4, 1000);
    let r = lab.collect().ok();
    let changes = r["quota_changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{r}");
    assert_eq!(changes[0]["connection_id"], conn);
    assert_eq!(changes[0]["over"], true);
    // The same collector run re-applied the policy: the session is RESTRICTED now (read back from
    // the kernel), its neighbour untouched.
    assert_eq!(nft_sets_of(&lab, client(2)), vec!["restricted_v4"], "over quota → restricted in the same run");
    assert!(nft_sets_of(&lab, client(3)).is_empty(), "a session whose quota did not change is not touched");
    p.rx(1, 1000);
    let r = lab.collect().ok();
    assert_eq!(r["quota_changes"], serde_json::json!([]), "reported once, not every run");
    // The panel raises the quota: un-crossed.
    lab.pg.client().execute("UPDATE vpn_connections SET quota_bytes = 100000000 WHERE id = $1", &[&conn]).unwrap();
    let r = lab.collect().ok();
    assert_eq!(r["quota_changes"][0]["over"], false);
    assert_eq!(nft_sets_of(&lab, client(2)), vec!["full_v4"], "quota raised → FULL again in the same run");
}

/// The pppgate state sets holding `ip`, as `nft` lists them in the lab's namespace.
fn nft_sets_of(lab: &Lab, ip: std::net::Ipv4Addr) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns.name, "nft", "-j", "list", "table", "inet", "pppgate"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut sets = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set") else { continue };
        let name = set["name"].as_str().unwrap();
        if !name.ends_with("_v4") || name.starts_with("garden") {
            continue;
        }
        let ip = ip.to_string();
        if set["elem"].as_array().is_some_and(|e| e.iter().any(|x| member_is(&render_elem(x), &ip))) {
            sets.push(name.to_string());
        }
    }
    sets
}

#[test]
fn final_flush_commits_and_closes_the_session() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(5, 1000);
    lab.collect().ok();
    p.rx(3, 333);
    p.tx(2, 222);
    let r = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    assert_eq!(r["outcome"]["outcome"], "committed");
    assert_sql_matches_kernel(&lab, &p, conn);
    let own = lab.own_radacct(&p.session_key()).unwrap();
    assert_eq!((own.0, own.1), p.counters());
    assert!(own.2, "pppgate's own radacct row is closed");
    let mut c = lab.pg.client();
    let stop: Option<String> = c
        .query_one("SELECT stop_time::text FROM pppgate_sessions WHERE session_key = $1", &[&p.session_key()])
        .unwrap()
        .get(0);
    assert!(stop.is_some());
    // ip-down removes the mapping; the collector must not count anything again.
    lab.remove_mapping("ppp0");
    let before = lab.snapshot();
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["read"], 0);
    assert_eq!(lab.snapshot(), before);
}

#[test]
fn final_flush_while_the_collector_holds_the_lock_defers_without_double_counting() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(5, 1000);
    lab.collect().ok();
    p.rx(4, 500);
    let held = policy_core::lock::Lock::try_acquire(&lab.collector_lock, "collect").unwrap();
    let t = std::time::Instant::now();
    let r = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    let waited = t.elapsed();
    assert_eq!(r["outcome"]["outcome"], "deferred");
    assert!(waited.as_millis() >= 1400 && waited.as_millis() < 4000, "bounded wait: {waited:?}");
    assert_eq!(std::fs::read_dir(lab.acct_dir.join("final")).unwrap().count(), 1);
    drop(held);
    // The mapping is still VALID (ip-down has not removed it yet): the session must be counted
    // once, through the marker.
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["closed_final"], 1);
    assert_eq!(r["sessions"]["read"], 0);
    assert_sql_matches_kernel(&lab, &p, conn);
    assert_eq!(std::fs::read_dir(lab.acct_dir.join("final")).unwrap().count(), 0);
    let before = lab.snapshot();
    p.rx(1, 100);
    lab.collect().ok();
    assert_eq!(lab.snapshot(), before, "a closed session is not opened again by its stale mapping");
}

#[test]
fn final_flush_with_the_database_down_is_spooled() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(5, 1000);
    lab.collect().ok();
    p.rx(2, 900);
    lab.pg.stop();
    let r = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    assert_eq!(r["outcome"]["outcome"], "spooled");
    assert!(r["elapsed_ms"].as_f64().unwrap() < 5000.0);
    let fin = p.counters();
    lab.remove_mapping("ppp0");
    lab.pg.start();
    lab.collect().ok();
    assert_eq!(lab.session_totals(&p.session_key()), Some(fin));
    assert_eq!(lab.usage(conn), fin);
    assert!(lab.own_radacct(&p.session_key()).unwrap().2);
}

#[test]
fn final_flush_killed_after_its_marker_loses_nothing() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(5, 1000);
    lab.collect().ok();
    p.rx(2, 900);
    let r = lab.pppgate(&["final-flush", "--ppp-if", "ppp0"], Some("final-after-marker"));
    assert_eq!(r.signal, Some(9), "{r:?}");
    lab.collect().ok();
    assert_sql_matches_kernel(&lab, &p, conn);
    assert!(lab.own_radacct(&p.session_key()).unwrap().2);
}

#[test]
fn radius_row_is_found_by_session_identity_and_updated_not_duplicated() {
    let lab = new_lab("auto");
    let conn = lab.add_connection("bob", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut c = lab.pg.client();
    let ins =
        "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, framedipaddress)
               VALUES ('%lX6b01f7fd%hX', $1, $2, $3::text::inet, to_timestamp($4), $5::text::inet) RETURNING radacctid";
    let ip = client(2).to_string();
    let start = p.start_ts as f64;
    // The session's row (radius.so's malformed Acct-Session-Id, shared by the others).
    let ours: i64 = c.query_one(ins, &[&"r-ours", &"bob", &NAS_IP, &(start + 1.0), &ip]).unwrap().get(0);
    // A stale open row of an earlier session, another NAS's row, another user's row.
    c.query_one(ins, &[&"r-stale", &"bob", &NAS_IP, &(start - 3600.0), &ip]).unwrap();
    c.query_one(ins, &[&"r-other-nas", &"bob", &"192.0.2.99", &(start + 1.0), &ip]).unwrap();
    c.query_one(ins, &[&"r-other-user", &"carol", &NAS_IP, &(start + 1.0), &"10.0.1.9"]).unwrap();
    lab.write_mapping(&p.mapping(conn, Some(p.start_ts + 1)));
    p.rx(6, 1000);
    p.tx(2, 100);
    lab.collect().ok();
    let k = p.counters();
    let rows = c
        .query("SELECT acctuniqueid, acctinputoctets, acctoutputoctets, acctupdatetime IS NOT NULL FROM radacct ORDER BY acctuniqueid", &[])
        .unwrap();
    let got: Vec<(String, Option<i64>, Option<i64>, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        vec![
            ("r-other-nas".into(), None, None, false),
            ("r-other-user".into(), None, None, false),
            ("r-ours".into(), Some(k.0), Some(k.1), true),
            ("r-stale".into(), None, None, false),
        ]
    );
    let b = c
        .query_one("SELECT radacct_owner, radacct_id FROM pppgate_sessions WHERE session_key = $1", &[&p.session_key()])
        .unwrap();
    assert_eq!((b.get::<_, Option<String>>(0), b.get::<_, Option<i64>>(1)), (Some("radius".into()), Some(ours)));
    // ip-down: pppgate closes its own record, never radius.so's row.
    p.rx(1, 100);
    lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    let k = p.counters();
    let r = c
        .query_one("SELECT acctinputoctets, acctstoptime IS NULL FROM radacct WHERE radacctid = $1", &[&ours])
        .unwrap();
    assert_eq!((r.get::<_, Option<i64>>(0), r.get::<_, bool>(1)), (Some(k.0), true));
    assert_eq!(
        c.query_one("SELECT count(*) FROM radacct WHERE acctuniqueid LIKE 'pppgate:%'", &[]).unwrap().get::<_, i64>(0),
        0
    );
    assert_eq!(lab.session_totals(&p.session_key()), Some(k));
}

#[test]
fn auto_mode_without_a_radius_row_waits_then_owns_the_row() {
    let lab = new_lab("auto");
    let conn = lab.add_connection("dave", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let now = policy_core::lock::now_unix();
    lab.write_mapping(&p.mapping(conn, Some(now)));
    p.rx(3, 1000);
    lab.collect().ok();
    assert_eq!(lab.own_radacct(&p.session_key()), None, "radius.so's row may still come within the grace period");
    assert_eq!(lab.session_totals(&p.session_key()), Some(p.counters()));
    p.rx(1, 1000);
    lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    let own = lab.own_radacct(&p.session_key()).expect("the last entry writes pppgate's own row");
    assert_eq!((own.0, own.1, own.2), (p.counters().0, p.counters().1, true));
}

#[test]
fn canonical_name_vpn_accounting_collector_runs_the_collector() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(2, 1000);
    let link = lab.env.root().join("vpn-accounting-collector");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pppgate"), &link).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns.name])
        .arg(&link)
        .arg("-c")
        .arg(&lab.config)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_sql_matches_kernel(&lab, &p, conn);
}

#[test]
fn final_flush_prefers_the_interface_counters_and_falls_back_to_pppds() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let other = lab.add_connection("bob", None, "month");
    let mut a = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut b = Peer::spawn(&lab.ns, "ppp1", LOCAL, client(3));
    lab.write_mapping(&a.mapping(conn, None));
    lab.write_mapping(&b.mapping(other, None));
    a.rx(4, 1000);
    b.rx(4, 1000);
    lab.collect().ok();
    a.rx(2, 700);
    // pppd's figures are ignored while the session's interface can be read.
    lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0", "--rx-bytes", "1", "--tx-bytes", "1"], None).ok();
    assert_sql_matches_kernel(&lab, &a, conn);
    // The interface is gone: pppd's figures are all there is.
    let (rx, tx) = b.counters();
    let b_key = b.session_key();
    b.kill();
    let (frx, ftx) = (rx + 5000, tx + 7);
    let r = lab
        .pppgate(
            &[
                "--json",
                "final-flush",
                "--ppp-if",
                "ppp1",
                "--rx-bytes",
                &frx.to_string(),
                "--tx-bytes",
                &ftx.to_string(),
            ],
            None,
        )
        .ok();
    assert_eq!(r["outcome"]["outcome"], "committed");
    assert_eq!(lab.session_totals(&b_key), Some((frx, ftx)));
    assert_eq!(lab.usage(other), (frx, ftx));
}

/// With RX_BASE/TX_BASE (the plugin's reading at IPCP-up) the session counts from there, like
/// pppd; at ip-down pppd's own figure is the truth even when the interface moved a packet more
/// after pppd took it, and even when the database was down from mid-session to after the end.
#[test]
fn a_session_with_an_ipcp_up_base_ends_on_pppds_own_figure_through_an_outage() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    // LCP/IPCP before IPCP-up: on the interface, not the user's traffic.
    p.rx(3, 60);
    p.tx(2, 40);
    let (brx, btx) = p.counters();
    assert!(brx > 0 && btx > 0, "the negotiation moved the counters: {brx} {btx}");
    let mapping = Mapping { counters_base: Some((brx as u64, btx as u64)), ..p.mapping(conn, None) };
    lab.write_mapping(&mapping);

    p.rx(10, 1000);
    p.tx(4, 700);
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["new"], 1);
    let (rx1, tx1) = p.counters();
    assert_eq!(lab.session_totals(&p.session_key()), Some((rx1 - brx, tx1 - btx)), "counted from the base");
    assert_eq!(lab.usage(conn), (rx1 - brx, tx1 - btx));

    // The database goes away mid-session and comes back only after the session ended.
    lab.pg.stop();
    p.rx(6, 900);
    p.tx(5, 300);
    let r = lab.collect();
    assert_eq!(r.code, Some(69), "{r:?}");
    assert_eq!(r.json()["db"]["status"], "unavailable");
    p.rx(2, 500);
    let (rx2, tx2) = p.counters();
    // pppd's figure: one 52-byte packet reached the interface after pppd took its statistics.
    let (prx, ptx) = (rx2 - brx - 52, tx2 - btx);
    let r = lab
        .pppgate(
            &[
                "--json",
                "final-flush",
                "--ppp-if",
                "ppp0",
                "--rx-bytes",
                &prx.to_string(),
                "--tx-bytes",
                &ptx.to_string(),
                "--wraps-32",
            ],
            None,
        )
        .ok();
    assert_eq!(r["outcome"]["outcome"], "spooled", "{r}");
    lab.remove_mapping("ppp0");
    lab.pg.start();
    lab.collect().ok();
    assert_eq!(lab.session_totals(&p.session_key()), Some((prx, ptx)), "pppgate_sessions holds pppd's figure");
    assert_eq!(lab.usage(conn), (prx, ptx));
    let own = lab.own_radacct(&p.session_key()).unwrap();
    assert_eq!(own, (prx, ptx, true), "pppgate's radacct row closed with pppd's figure");
    let before = lab.snapshot();
    lab.collect().ok();
    assert_eq!(lab.snapshot(), before, "a second run changes nothing");
    assert_eq!(lab.spool_records(), 0);
}

/// SQLSTATE 57P01 ("terminating connection due to administrator command": what a
/// `pg_ctl restart -m fast` or `pg_terminate_backend` sends) arriving in the middle of the
/// collector's commit is the database being unavailable: exit 69, `db.status` unavailable, the
/// outage marker, one log line; the record stays spooled and the totals are exact after recovery.
/// The commit is held inside the server by a lock on the batch table, so the terminate lands
/// during that very statement.
#[test]
fn admin_shutdown_during_a_commit_takes_the_outage_path() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    lab.write_mapping(&p.mapping(conn, None));
    p.rx(3, 1000);
    lab.collect().ok();
    p.rx(4, 900);
    let mut locker = lab.pg.client();
    let mut hold = locker.transaction().unwrap();
    hold.batch_execute("LOCK TABLE pppgate_acct_batches IN ACCESS EXCLUSIVE MODE").unwrap();
    let (r, terminated) = std::thread::scope(|s| {
        let run = s.spawn(|| lab.collect());
        let mut killer = lab.pg.client();
        let mut terminated = 0;
        while terminated == 0 && !run.is_finished() {
            terminated = killer
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO pppgate_acct_batches%'",
                    &[],
                )
                .unwrap()
                .len();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (run.join().unwrap(), terminated)
    });
    hold.rollback().unwrap();
    assert_eq!(terminated, 1, "the collector's commit was terminated inside the server: {r:?}");
    assert_eq!(r.code, Some(69), "{r:?}");
    assert_eq!(r.json()["db"]["status"], "unavailable", "{}", r.stdout);
    assert_eq!(r.stderr.lines().filter(|l| l.contains("database unavailable")).count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("cannot be committed"), "{}", r.stderr);
    assert!(lab.acct_dir.join("sql-outage.accounting").exists(), "the outage marker");
    assert_eq!(lab.spool_records(), 1);

    let r = lab.collect().ok();
    assert_eq!(r["replay"]["records_applied"], 2, "the spooled record and this run's");
    assert_sql_matches_kernel(&lab, &p, conn);
    assert!(!lab.acct_dir.join("sql-outage.accounting").exists());
    assert_eq!(lab.spool_records(), 0);
}

/// The wall clock stepped back an hour between a session's start and its end: the session came
/// up at "now + 1 h" by the clock of then, its readings and its stop are at "now". Stop times are
/// never before the start, durations never negative, update times never before the start.
#[test]
fn a_clock_stepped_back_gives_no_stop_before_start() {
    let lab = new_lab("own");
    let conn = lab.add_connection("alice", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let up = policy_core::lock::now_unix() + 3600;
    lab.write_mapping(&p.mapping(conn, Some(up)));
    p.rx(3, 1000);
    lab.collect().ok();
    p.rx(1, 500);
    lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    assert_sql_matches_kernel(&lab, &p, conn);
    let mut c = lab.pg.client();
    let row = c
        .query_one(
            "SELECT extract(epoch FROM acctstarttime)::bigint, extract(epoch FROM acctstoptime)::bigint,
                    extract(epoch FROM acctupdatetime)::bigint, acctsessiontime
               FROM radacct WHERE acctuniqueid = 'pppgate:' || $1",
            &[&p.session_key()],
        )
        .unwrap();
    let (start, stop, update, dur): (i64, Option<i64>, i64, Option<i64>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(start, up);
    let stop = stop.expect("the row is closed");
    assert!(stop >= start, "stop {stop} before start {start}");
    assert!(update >= start, "update {update} before start {start}");
    assert_eq!(dur, Some(stop - start));
    let row = c
        .query_one(
            "SELECT extract(epoch FROM start_time)::bigint, extract(epoch FROM stop_time)::bigint
               FROM pppgate_sessions WHERE session_key = $1",
            &[&p.session_key()],
        )
        .unwrap();
    let (s, e): (i64, Option<i64>) = (row.get(0), row.get(1));
    assert!(e.expect("closed") >= s, "pppgate_sessions stop before start");
}

/// radius.so's row is bound by NAS address, framed IP and start window, not by the user name:
/// radacct holds the login as pppd rendered it and rlm_sql escaped it (`jürgen` →
/// `jM-CM-=3Crgen`, lab), which never equals the raw login. Bound, updated, and no second
/// (pppgate-owned) row even at the final flush in mode `auto`.
#[test]
fn radius_row_is_bound_whatever_the_name_rendering() {
    let lab = new_lab("auto");
    let conn = lab.add_connection("jürgen", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut c = lab.pg.client();
    let ip = client(2).to_string();
    let ours: i64 = c
        .query_one(
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, framedipaddress)
             VALUES ('=25lX6b01f7fd=25hX', 'r-ours', 'jM-CM-=3Crgen', $1::text::inet, to_timestamp($2), $3::text::inet)
             RETURNING radacctid",
            &[&NAS_IP, &(p.start_ts as f64 + 1.0), &ip],
        )
        .unwrap()
        .get(0);
    lab.write_mapping(&p.mapping(conn, Some(p.start_ts + 1)));
    p.rx(6, 1000);
    p.tx(2, 100);
    lab.collect().ok();
    p.rx(1, 100);
    lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None).ok();
    let k = p.counters();
    let r =
        c.query_one("SELECT acctinputoctets, acctoutputoctets FROM radacct WHERE radacctid = $1", &[&ours]).unwrap();
    assert_eq!((r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)), (Some(k.0), Some(k.1)));
    assert_eq!(c.query_one("SELECT count(*) FROM radacct", &[]).unwrap().get::<_, i64>(0), 1, "no second row");
    let b = c
        .query_one("SELECT radacct_owner, radacct_id FROM pppgate_sessions WHERE session_key = $1", &[&p.session_key()])
        .unwrap();
    assert_eq!((b.get::<_, Option<String>>(0), b.get::<_, Option<i64>>(1)), (Some("radius".into()), Some(ours)));
}

/// A small tmpfs mounted over the accounting directory for one test, unmounted on drop.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> SmallTmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        SmallTmpfs(dir.into())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` to the last page: one big file until ENOSPC, then one-byte
/// files (a page each on tmpfs) until not even that fits. Returns the filler files.
fn fill_to_the_last_page(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::io::Write;
    let big = dir.join("filler");
    let mut f = std::fs::File::create(&big).unwrap();
    let page = vec![0xa5u8; 4096];
    loop {
        match f.write(&page) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc_enospc()), "filling: {e}");
                break;
            }
        }
    }
    let _ = f.sync_all();
    let mut files = vec![big];
    for i in 0.. {
        let p = dir.join(format!("filler.{i}"));
        let r = std::fs::File::create(&p).and_then(|mut f| f.write_all(b"x").and_then(|()| f.sync_all()));
        files.push(p);
        if r.is_err() {
            break;
        }
    }
    // Not one more byte fits anywhere in the file system.
    let probe = dir.join("probe");
    let r = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"x").and_then(|()| f.sync_all()));
    assert!(r.is_err(), "the file system still has room");
    let _ = std::fs::remove_file(&probe);
    files
}

/// [`fill_to_the_last_page`] with filler names of a second round.
fn fill_to_the_last_page_again(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let sub = dir.join("filler-again");
    std::fs::create_dir_all(&sub).ok();
    let mut files = fill_to_the_last_page(&sub);
    files.push(sub);
    files
}

fn libc_enospc() -> i32 {
    28
}

/// R413: with the accounting directory full to the last page at ip-down, the final figures
/// still reach SQL once space is back — because ip-up reserved the final record's blocks
/// (`final-flush --reserve`, what the plugin does). A second session without a reservation, in
/// the same full directory, loses its final marker (so the test can tell the difference).
#[test]
fn final_flush_into_a_full_accounting_dir_reaches_sql_after_recovery() {
    let lab = new_lab("own");
    let _fs = SmallTmpfs::mount(&lab.acct_dir, "512k");
    let conn = lab.add_connection("alice", None, "month");
    let conn2 = lab.add_connection("bob", None, "month");
    let mut p = Peer::spawn(&lab.ns, "ppp0", LOCAL, client(2));
    let mut q = Peer::spawn(&lab.ns, "ppp1", LOCAL, client(3));
    lab.write_mapping(&p.mapping(conn, None));
    lab.write_mapping(&q.mapping(conn2, None));
    let r = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0", "--reserve"], None).ok();
    assert!(r["reserved"].as_str().is_some_and(|s| s.contains("/final/.reserve.")), "{r}");
    p.rx(5, 1000);
    q.rx(5, 1000);
    lab.collect().ok();
    p.rx(3, 700);
    p.tx(2, 300);
    q.rx(3, 700);

    let fillers = fill_to_the_last_page(&lab.acct_dir);
    let fin = p.counters();
    let out = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp0"], None);
    eprintln!("final-flush on a full disk: code {:?}; stderr: {}", out.code, out.stderr.trim());
    let markers: Vec<String> = std::fs::read_dir(lab.acct_dir.join("final"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    // Either the whole flush went through (trimming the reservation to the marker's size freed
    // the pages the journal record needed) or it stopped after the marker; never neither.
    let committed = out.code == Some(0);
    assert!(committed || markers.len() == 1, "neither committed nor a marker: {out:?} {markers:?}");
    eprintln!("full disk at ip-down: {}", if committed { "flush committed" } else { "marker kept for recovery" });
    // Full again to the last page (the first flush freed what its reservation held beyond the
    // marker), then the unreserved session's ip-down.
    let mut fillers = fillers;
    fillers.extend(fill_to_the_last_page_again(&lab.acct_dir));
    let out2 = lab.pppgate(&["--json", "final-flush", "--ppp-if", "ppp1"], None);
    assert_ne!(out2.code, Some(0), "without a reservation the marker cannot be written: {out2:?}");
    let markers_after = std::fs::read_dir(lab.acct_dir.join("final"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(markers_after, markers.len(), "no marker for the unreserved session");

    // ip-down removes the mapping; later the disk has room again and the collector runs.
    lab.remove_mapping("ppp0");
    for f in fillers {
        let _ = std::fs::remove_file(&f);
        let _ = std::fs::remove_dir(&f);
    }
    let r = lab.collect().ok();
    assert_eq!(r["sessions"]["closed_final"], markers.len(), "{r}");
    assert_eq!(lab.session_totals(&p.session_key()), Some(fin), "final figures in pppgate_sessions");
    assert_eq!(lab.usage(conn), fin, "final figures in vpn_usage");
    assert!(lab.own_radacct(&p.session_key()).unwrap().2, "radacct row closed");
    let left: Vec<String> = std::fs::read_dir(lab.acct_dir.join("final"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "marker consumed, reservation used up: {left:?}");
}

//! The janitor, checkrad and the Simultaneous-Use logic against a real PostgreSQL, with live
//! sessions made of real processes and TUN `pppN` links in a network namespace per test.
//! Needs root; fails (never skips) without it.

use policy_core::janitor::{self, NoAccountingState, Scope, StaleReason, Verdict};
use policy_core::radius::{self, CheckradArgs, HookVerdict, Presence};
use pppgate_testkit::*;

const NAS_A: &str = "192.0.2.1";
const NAS_B: &str = "192.0.2.2";

fn run_all(env: &DbEnv, identity: &str, ip: &str) -> janitor::Report {
    let cfg = env.config(identity, ip);
    let mut c = env.db.client();
    janitor::run(&cfg, &mut c, &Scope::All, &NoAccountingState, false).unwrap()
}

fn run_login(env: &DbEnv, login: &[u8]) -> janitor::Report {
    let cfg = env.config("lns-a", NAS_A);
    let mut c = env.db.client();
    janitor::run(&cfg, &mut c, &Scope::Login(login.to_vec()), &NoAccountingState, false).unwrap()
}

#[test]
fn never_closes_a_valid_session() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    // Older than the grace period, so only the mapping protects it.
    let live = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "=25lX6b01f7fd=25hX");
    let stale = env.db.acct_row("bob", NAS_A, Some("198.51.100.11"), 3600, "=25lX6b01f7fd=25hX");

    let r = run_all(&env, "lns-a", NAS_A);
    assert!(env.db.is_open(live), "the live session's row was closed: {r:#?}");
    assert!(!env.db.is_open(stale));
    assert_eq!((r.radacct.live, r.radacct.closed), (1, 1), "{r:#?}");
    let (cause, time, span) = env.db.closed_fields(stale);
    assert_eq!(cause.as_deref(), Some("Lost-Carrier"));
    assert_eq!(time, span, "acctsessiontime is stop - start");
    assert!(time.unwrap() >= 3600);

    // The same again (and the on-demand path): still untouched.
    run_all(&env, "lns-a", NAS_A);
    let r = run_login(&env, b"alice");
    assert!(env.db.is_open(live));
    assert_eq!(r.online_rows(), 1);
    assert!(matches!(r.rows[0].verdict, Verdict::Live { .. }));
}

#[test]
fn ghost_mapping_with_dead_pid_is_not_live() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    // Interface and address still there; the pppd is gone.
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", dead_pid(), policy_core::lock::now_unix() - 100);
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 60, "x");
    let r = run_login(&env, b"alice");
    assert!(!env.db.is_open(row), "{r:#?}");
    assert_eq!(r.online_rows(), 0);
}

#[test]
fn ghost_mapping_with_reused_pid_is_not_live() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let other = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    // The PID is alive but belongs to a process that started at another time.
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", other.pid(), other.start_ts() - 300);
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 60, "x");
    run_all(&env, "lns-a", NAS_A);
    assert!(!env.db.is_open(row));
}

#[test]
fn mapping_whose_interface_is_gone_or_has_another_peer_is_not_live() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let bob = env.db.connection("bob");
    let p1 = StandIn::sleeper();
    let p2 = StandIn::sleeper();
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", p1.pid(), p1.start_ts());
    ppp_link("ppp1", "10.255.0.1", "198.51.100.99");
    write_mapping(&env.sessions_dir(), bob, "ppp1", "198.51.100.11", p2.pid(), p2.start_ts());
    let a = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 60, "x");
    let b = env.db.acct_row("bob", NAS_A, Some("198.51.100.11"), 60, "x");
    run_all(&env, "lns-a", NAS_A);
    assert!(!env.db.is_open(a));
    assert!(!env.db.is_open(b));
}

#[test]
fn two_nas_on_one_database_close_only_their_own_rows() {
    private_netns();
    let env = DbEnv::new();
    env.db.connection("alice");
    let a1 = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 3600, "x");
    let b1 = env.db.acct_row("alice", NAS_B, Some("198.51.100.10"), 3600, "x");
    let b2 = env.db.acct_row("carol", NAS_B, Some("198.51.100.12"), 7200, "y");

    let ra = run_all(&env, "lns-a", NAS_A);
    assert!(!env.db.is_open(a1));
    assert!(env.db.is_open(b1) && env.db.is_open(b2), "NAS A touched NAS B's rows: {ra:#?}");
    assert_eq!(ra.radacct.closed, 1);

    // The on-demand path for alice on NAS A sees B's row but leaves it alone.
    let r = run_login(&env, b"alice");
    assert!(env.db.is_open(b1));
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.rows[0].verdict, Verdict::OtherNasStale);

    let rb = run_all(&env, "lns-b", NAS_B);
    assert!(!env.db.is_open(b1) && !env.db.is_open(b2));
    assert_eq!(rb.radacct.closed, 2);
}

#[test]
fn mix_of_live_and_stale_rows() {
    private_netns();
    let env = DbEnv::new();
    let dir = env.sessions_dir();
    let alice = env.db.connection("alice");
    let bob = env.db.connection("bob");
    let obrien = env.db.connection("o'brien");
    let pa = StandIn::sleeper();
    let pb = StandIn::sleeper();
    let po = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    ppp_link("ppp1", "10.255.0.1", "198.51.100.11");
    ppp_link("ppp2", "10.255.0.1", "198.51.100.12");
    // alice reconnected after a crash and got the same address: her pppd started "now".
    write_mapping(&dir, alice, "ppp0", "198.51.100.10", pa.pid(), pa.start_ts());
    write_mapping(&dir, bob, "ppp1", "198.51.100.11", pb.pid(), pb.start_ts());
    write_mapping(&dir, obrien, "ppp2", "198.51.100.12", po.pid(), po.start_ts());
    let alice_old = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 4 * 3600, "s");
    let alice_new = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 0, "s");
    let bob_live = env.db.acct_row("bob", NAS_A, Some("198.51.100.11"), 0, "s");
    let bob_other_ip = env.db.acct_row("bob", NAS_A, Some("198.51.100.50"), 500, "s");
    // rlm_sql stores o'brien as o=27brien.
    let obrien_live = env.db.acct_row("o=27brien", NAS_A, Some("198.51.100.12"), 0, "s");
    let raw_obrien = env.db.acct_row("o'brien", NAS_A, Some("198.51.100.12"), 500, "s");
    let young = env.db.acct_row("dave", NAS_A, Some("198.51.100.13"), 2, "s");
    let other_nas = env.db.acct_row("erin", NAS_B, Some("198.51.100.14"), 9000, "s");
    // pppgate_sessions: one live (same if/ip/pid), one ghost.
    env.db.pppgate_session("k-live", "lns-a", bob, "bob", "ppp1", "198.51.100.11", pb.pid(), 30);
    env.db.pppgate_session("k-ghost", "lns-a", bob, "bob", "ppp1", "198.51.100.11", dead_pid(), 3000);
    env.db.pppgate_session("k-other-nas", "lns-b", bob, "bob", "ppp9", "198.51.100.11", dead_pid(), 3000);

    let r = run_all(&env, "lns-a", NAS_A);
    let open: Vec<bool> = [alice_old, alice_new, bob_live, bob_other_ip, obrien_live, raw_obrien, young, other_nas]
        .iter()
        .map(|id| env.db.is_open(*id))
        .collect();
    assert_eq!(open, vec![false, true, true, false, true, false, true, true], "{r:#?}");
    let old = r.rows.iter().find(|x| x.row.radacctid == alice_old).unwrap();
    assert_eq!(old.verdict, Verdict::Stale { reason: StaleReason::StartedBeforeLiveSession });
    assert_eq!(r.radacct.live, 3);
    assert_eq!(r.radacct.too_young, 1);
    assert!(env.db.session_open("k-live"));
    assert!(!env.db.session_open("k-ghost"));
    assert!(env.db.session_open("k-other-nas"));
}

#[test]
fn dry_run_changes_nothing() {
    private_netns();
    let env = DbEnv::new();
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 3600, "x");
    let cfg = env.config("lns-a", NAS_A);
    let mut c = env.db.client();
    let r = janitor::run(&cfg, &mut c, &Scope::All, &NoAccountingState, true).unwrap();
    assert_eq!((r.radacct.stale, r.radacct.closed), (1, 0));
    assert!(env.db.is_open(row));
}

#[test]
fn on_demand_janitor_touches_only_that_login() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let bob = env.db.connection("bob");
    let a = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 3600, "x");
    let b = env.db.acct_row("bob", NAS_A, Some("198.51.100.11"), 3600, "x");
    let pppd = StandIn::sleeper();
    ppp_link("ppp3", "10.255.0.1", "198.51.100.13");
    write_mapping(&env.sessions_dir(), alice, "ppp3", "198.51.100.13", pppd.pid(), pppd.start_ts());
    env.db.pppgate_session("alice-ghost", "lns-a", alice, "alice", "ppp1", "198.51.100.10", dead_pid(), 3600);
    env.db.pppgate_session("alice-live", "lns-a", alice, "alice", "ppp3", "198.51.100.13", pppd.pid(), 20);
    env.db.pppgate_session("bob-ghost", "lns-a", bob, "bob", "ppp2", "198.51.100.11", dead_pid(), 3600);
    let r = run_login(&env, b"alice");
    assert!(!env.db.is_open(a));
    assert!(env.db.is_open(b));
    assert_eq!(r.scope, "login");
    assert!(!env.db.session_open("alice-ghost"));
    assert!(env.db.session_open("alice-live"), "{r:#?}");
    assert!(env.db.session_open("bob-ghost"));
    assert_eq!((r.sessions.live, r.sessions.closed), (1, 1));
}

#[test]
fn final_counters_from_the_accounting_state_are_used() {
    struct State;
    impl janitor::CounterSource for State {
        fn final_counters(&self, s: &janitor::EndedSession<'_>) -> Option<janitor::FinalUsage> {
            (s.username == Some("alice")).then_some(janitor::FinalUsage {
                input_octets: 5000,
                output_octets: 50,
                last_seen: None,
            })
        }
    }
    private_netns();
    let env = DbEnv::new();
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 3600, "x");
    let cfg = env.config("lns-a", NAS_A);
    janitor::run(&cfg, &mut env.db.client(), &Scope::All, &State, false).unwrap();
    let r = env
        .db
        .client()
        .query_one("SELECT acctinputoctets, acctoutputoctets FROM radacct WHERE radacctid = $1", &[&row])
        .unwrap();
    // Never lower than what interim updates stored (acct_row stores 100/200).
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (5000, 200));
}

#[test]
fn simultaneous_use_rejects_a_live_session_and_accepts_after_a_crash() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config("lns-a", NAS_A);
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "x");

    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(1), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Reject, "{r:#?}");
    // Without a limit the hook only cleans up.
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", None, &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Ok);
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(2), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Ok);

    // pppd dies without an Accounting-Stop (SIGKILL): the row is still open...
    drop(pppd);
    // ...but too young to judge for START_GRACE_S, then stale.
    env.db
        .client()
        .execute("UPDATE radacct SET acctstarttime = now() - interval '30 seconds' WHERE radacctid = $1", &[&row])
        .unwrap();
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(1), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Ok, "{r:#?}");
    assert!(!env.db.is_open(row));
}

#[test]
fn other_nas_rows_count_by_heartbeat() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config("lns-a", NAS_A);
    env.db.connection("alice");
    let b = env.db.acct_row("alice", NAS_B, Some("198.51.100.10"), 7200, "x");
    env.db.set_update_age(b, 60);
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(1), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Reject);
    // 3 × 300 s without a heartbeat: stale, not counted, and still not closed by NAS A.
    env.db.set_update_age(b, 901);
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(1), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Ok);
    assert!(env.db.is_open(b));
}

#[test]
fn rows_before_a_nas_reload_do_not_count() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config("lns-a", NAS_A);
    let b = env.db.acct_row("alice", NAS_B, Some("198.51.100.10"), 600, "x");
    env.db.set_update_age(b, 10);
    env.db
        .client()
        .execute("INSERT INTO nasreload VALUES ($1::text::inet, now() - interval '1 minute')", &[&NAS_B])
        .unwrap();
    let r = radius::simultaneous_use(&cfg, &mut env.db.client(), b"alice", Some(1), &NoAccountingState).unwrap();
    assert_eq!(r.verdict, HookVerdict::Ok, "{r:#?}");
}

fn checkrad(env: &DbEnv, nas_ip: &str, user: &str, session_id: &str) -> radius::CheckradReport {
    let cfg = env.config("lns-a", NAS_A);
    let args = CheckradArgs {
        nas_type: "pppgate".into(),
        nas_ip: nas_ip.into(),
        nas_port: "0".into(),
        user: user.into(),
        session_id: session_id.into(),
    };
    radius::checkrad(&cfg, &mut env.db.client(), &args, &NoAccountingState).unwrap()
}

#[test]
fn checkrad_for_this_nas_answers_from_valid_mappings_and_zaps_stale_rows() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("o'brien");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let live = env.db.acct_row("o=27brien", NAS_A, Some("198.51.100.10"), 0, "=25lX6b01f7fd=25hX");
    let stale = env.db.acct_row("o=27brien", NAS_A, Some("198.51.100.77"), 600, "=25lX6b01f7fd=25hX");

    // Both rows share the broken Acct-Session-Id; one is live.
    let r = checkrad(&env, NAS_A, "o=27brien", "=25lX6b01f7fd=25hX");
    assert_eq!(r.presence, Presence::Online, "{r:#?}");
    assert!(env.db.is_open(live));
    assert!(!env.db.is_open(stale), "checkrad zaps the stale row of this NAS");

    drop(pppd);
    env.db
        .client()
        .execute("UPDATE radacct SET acctstarttime = now() - interval '1 minute' WHERE radacctid = $1", &[&live])
        .unwrap();
    let r = checkrad(&env, NAS_A, "o=27brien", "=25lX6b01f7fd=25hX");
    assert_eq!(r.presence, Presence::Stale);
    assert!(!env.db.is_open(live));
    // A row that no longer exists is not online.
    assert_eq!(checkrad(&env, NAS_A, "nobody", "nothing").presence, Presence::Stale);
}

#[test]
fn checkrad_for_another_nas_goes_by_heartbeat_and_modifies_nothing() {
    private_netns();
    let env = DbEnv::new();
    let b = env.db.acct_row("alice", NAS_B, Some("198.51.100.10"), 7200, "sid");
    env.db.set_update_age(b, 100);
    assert_eq!(checkrad(&env, NAS_B, "alice", "sid").presence, Presence::Online);
    env.db.set_update_age(b, 1000);
    assert_eq!(checkrad(&env, NAS_B, "alice", "sid").presence, Presence::Stale);
    assert!(env.db.is_open(b));
}

#[test]
fn on_demand_path_without_framed_address_falls_back_to_the_full_scan() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row("alice", NAS_A, None, 30, "x");
    let r = run_login(&env, b"alice");
    assert!(env.db.is_open(row), "{r:#?}");
    assert_eq!(r.online_rows(), 1);
}

#[test]
fn address_labels_that_are_not_the_device_name_still_find_the_session() {
    private_netns();
    let env = DbEnv::new();
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    run(&["ip", "tuntap", "add", "dev", "ppp0", "mode", "tun"]);
    run(&["ip", "addr", "add", "10.255.0.9/32", "dev", "ppp0", "label", "ppp0:x"]);
    run(&["ip", "addr", "add", "10.255.0.1", "peer", "198.51.100.10/32", "dev", "ppp0"]);
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "x");
    run_login(&env, b"alice");
    run_all(&env, "lns-a", NAS_A);
    assert!(env.db.is_open(row));
}

#[test]
fn address_snapshot_agrees_with_the_full_link_snapshot() {
    private_netns();
    for i in 0..20 {
        ppp_link(&format!("ppp{i}"), "10.255.0.1", &format!("198.51.100.{}", 10 + i));
    }
    run(&["ip", "tuntap", "add", "dev", "ppp99", "mode", "tun"]);
    let full = policy_core::kernel::links::LinkSnapshot::read().unwrap();
    let fast = policy_core::kernel::links::LinkSnapshot::read_addresses().unwrap();
    for i in 0..20 {
        let n = format!("ppp{i}");
        assert_eq!(fast.peer_of(&n), full.peer_of(&n), "{n}");
    }
    // No address: absent from the address snapshot, which the VALID check treats like a missing
    // interface — either way not VALID.
    assert!(fast.peer_of("ppp99").is_none());
    assert_eq!(full.peer_of("ppp99").map(|p| p.len()), Some(0));
}

/// R513 (issue 16, defects 1–2): logins whose radacct name differs from the login — `jürgen`
/// (pppd renders it `jM-CM-<rgen`, stored `jM-CM-=3Crgen`) and `x"y` (FreeRADIUS quotes it,
/// stored `x=5C=22y`). With their names as the real chain stored them, the global janitor keeps
/// the live rows, the hook (given the User-Name radius.so sent) counts them and rejects a second
/// login, checkrad (given the stored name) answers online; after the sessions end, each is
/// closed and no other user's row is touched.
#[test]
fn names_as_the_real_chain_stores_them_keep_live_sessions_live() {
    use policy_core::radius::sqlname::{pppd_user_name, sql_username};
    private_netns();
    let env = DbEnv::new();
    let dir = env.sessions_dir();
    let cases = [("jürgen", "jM-CM-=3Crgen", "198.51.100.20"), ("x\"y", "x=5C=22y", "198.51.100.21")];
    let bystander = env.db.acct_row("carol", NAS_A, Some("198.51.100.99"), 0, "c");
    let mut procs = Vec::new();
    let mut rows = Vec::new();
    for (i, (login, stored, ip)) in cases.iter().enumerate() {
        assert_eq!(sql_username(login.as_bytes()), *stored, "the lab's radacct value");
        let conn = env.db.connection(login);
        let p = StandIn::sleeper();
        let ifname = format!("ppp{i}");
        ppp_link(&ifname, "10.255.0.1", ip);
        write_mapping(&dir, conn, &ifname, ip, p.pid(), p.start_ts());
        procs.push(p);
        rows.push(env.db.acct_row(stored, NAS_A, Some(ip), 30, "=25lX6b01f7fd=25hX"));
    }
    let r = run_all(&env, "lns-a", NAS_A);
    assert!(rows.iter().all(|id| env.db.is_open(*id)), "a live row was closed: {r:#?}");
    assert_eq!(r.radacct.live, 2, "{r:#?}");
    let cfg = env.config("lns-a", NAS_A);
    for (i, (login, stored, _)) in cases.iter().enumerate() {
        let user_name = pppd_user_name(login.as_bytes());
        let s = radius::simultaneous_use(&cfg, &mut env.db.client(), &user_name, Some(1), &NoAccountingState).unwrap();
        assert_eq!(s.verdict, HookVerdict::Reject, "second login of {login:?}: {s:#?}");
        assert!(s.janitor.connection_id.is_some(), "the hook found the connection of {login:?}");
        assert_eq!(checkrad(&env, NAS_A, stored, "=25lX6b01f7fd=25hX").presence, Presence::Online);
        assert!(env.db.is_open(rows[i]));
    }
    drop(procs);
    for (i, (login, _, _)) in cases.iter().enumerate() {
        let s = radius::simultaneous_use(
            &cfg,
            &mut env.db.client(),
            &pppd_user_name(login.as_bytes()),
            Some(1),
            &NoAccountingState,
        )
        .unwrap();
        assert_eq!(s.verdict, HookVerdict::Ok, "{login:?} after its session ended: {s:#?}");
        assert!(!env.db.is_open(rows[i]), "{login:?}'s stale row closed");
    }
    assert!(env.db.is_open(bystander), "another user's row is untouched");
}

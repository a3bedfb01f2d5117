//! The engine (`policy::engine::converge`, `gate`, `disconnect`, the SQL-down cleanup) against
//! the recording backend: pure, no root. Covers apply and verify, the order of changes, fault
//! injection at every step of every state transition (a failure leaves the session at least as
//! restricted as before, and the next converge finishes the job), and a backend that silently
//! drops a change (verification catches it).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use policy_core::config::Config;
use policy_core::kernel::recording::{Call, FakeKernel, Recording};
use policy_core::kernel::{Member, NftSet, OwnedRoute, OwnedRule, Shaping};
use policy_core::mapping::{LiveSession, Mapping};
use policy_core::policy::engine::{self, converge};
use policy_core::policy::model::{
    decide, ConnectionFacts, PbrSpec, Policy, PolicyState, QuotaPeriod, RouteSpec, Status,
};
use policy_core::policy::planner::{Desired, DesiredSession, Scope};
use policy_core::Error;

fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
[database]
dsn = "host=/nonexistent dbname=x user=x"
[nas]
identity = "lns-test"
ip = "192.0.2.1"
[paths]
sessions_dir = "{d}/sessions"
apply_lock = "{d}/apply.lock"
[policy]
walled_garden = ["198.51.100.53/32:tcp:8080", "198.51.100.54/32"]
[connect]
apply_window_fallback_s = 2
"#,
        d = dir.display()
    );
    Config::from_toml(&dir.join("pppgate.toml"), &text).expect("config")
}

fn facts(id: i64) -> ConnectionFacts {
    ConnectionFacts {
        id,
        customer_id: None,
        login: format!("user{id}"),
        status: Status::Claimed,
        rate_down_kbit: Some(8000),
        rate_up_kbit: Some(2000),
        quota_bytes: None,
        quota_period: QuotaPeriod::Month,
        expires_at: None,
        manual_block: false,
        customer_blocked: false,
        used_bytes: 0,
        db_now: 1_700_000_000,
        routes: vec![RouteSpec { dst: "192.168.50.0/24".parse().unwrap(), gateway: None, table: None, metric: None }],
        pbr: vec![PbrSpec {
            name: "ktn".into(),
            table: 100,
            via: Ipv4Addr::new(10, 100, 0, 40),
            dev: "wg0".into(),
            priority: 100,
        }],
    }
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, n + 1)
}

/// Session `n`'s nft member: its address on interface index 10 + n.
fn member(n: u8) -> Member {
    Member::new(10 + u32::from(n), ip(n))
}

/// Session `n` on `ppp<n>`; no pppd pid (so TERMINATE signals nobody in a test).
fn session(n: u8, policy: Policy) -> DesiredSession {
    DesiredSession {
        ifname: format!("ppp{n}"),
        ifindex: member(n).ifindex,
        client_ip: ip(n),
        connection_id: n as i64,
        pppd_pid: None,
        policy,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum S {
    Gated,
    Full,
    Restricted,
    Blocked,
    Terminate,
}

const STATES: [S; 5] = [S::Gated, S::Full, S::Restricted, S::Blocked, S::Terminate];

fn policy(s: S) -> Policy {
    let mut f = facts(1);
    match s {
        S::Gated => return Policy::gated(),
        S::Full => {}
        S::Restricted => f.expires_at = Some(0),
        S::Blocked => f.manual_block = true,
        S::Terminate => f.status = Status::Disabled,
    }
    let p = decide(Some(&f));
    assert_eq!(format!("{:?}", p.state), format!("{s:?}"));
    p
}

fn desired(sessions: Vec<DesiredSession>) -> Desired {
    Desired { sessions, subnet_pbr: vec![] }
}

fn fresh() -> Recording {
    Recording::with_interfaces(["ppp1", "ppp2", "wg0"])
}

/// The kernel without policy-routing default routes of tables no rule points at.
fn without_orphan_table_defaults(k: &FakeKernel) -> FakeKernel {
    let mut k = k.clone();
    let tables: BTreeSet<u32> = k.rules.iter().map(|u| u.table).collect();
    k.routes.retain(|r| !(r.dst.prefix_len() == 0 && r.table != 254 && !tables.contains(&r.table)));
    k
}

fn with_kernel(k: &FakeKernel) -> Recording {
    let mut r = Recording::new();
    r.kernel = k.clone();
    r
}

/// How much an address may pass: 0 nothing (no set, pending or blocked: the drop rules win),
/// 1 the walled garden, 2 everything.
fn openness(k: &FakeKernel, m: Member) -> u8 {
    let sets = k.nft.sets_of(m);
    if sets.is_empty() || sets.contains(&NftSet::Pending) || sets.contains(&NftSet::Blocked) {
        return 0;
    }
    if sets.contains(&NftSet::Full) {
        2
    } else {
        1
    }
}

fn state_openness(s: S) -> u8 {
    match s {
        S::Full => 2,
        S::Restricted => 1,
        _ => 0,
    }
}

/// A kernel where session 1 is in state `s` (gated: the connect gate only).
fn kernel_in(s: S, cfg: &Config) -> FakeKernel {
    let mut r = fresh();
    engine::gate(&mut r, cfg, member(1)).unwrap();
    if s != S::Gated {
        let d = desired(vec![session(1, policy(s))]);
        converge(&mut r, cfg, &d, &Scope::of(&d.sessions), false).unwrap();
    }
    r.kernel
}

#[test]
fn connect_applies_in_order_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    engine::gate(&mut r, &cfg, member(1)).unwrap();
    assert_eq!(r.kernel.nft.sets_of(member(1)), BTreeSet::from([NftSet::Pending]));
    r.clear_calls();

    let d = desired(vec![session(1, policy(S::Full))]);
    let out = converge(&mut r, &cfg, &d, &Scope::of(&d.sessions), false).unwrap();
    assert!(out.applied);
    println!("{:#?}", out.steps);
    let muts: Vec<Call> = r.mutations().into_iter().cloned().collect();
    assert!(matches!(muts[0], Call::NftEnsureBase(_)));
    assert!(matches!(muts[1], Call::SysctlEnsure(_)));
    assert_eq!(muts[2], Call::TcSet("ppp1".into(), Shaping { down_kbit: Some(8000), up_kbit: Some(2000) }));
    let routes_rules: Vec<&Call> = muts[3..muts.len() - 1].iter().collect();
    assert_eq!(routes_rules.len(), 3, "the route, the table's default route, the rule: {routes_rules:?}");
    // The gate is released last, in the same transaction that opens the session.
    match muts.last().unwrap() {
        Call::NftCommit(changes) => {
            assert_eq!(changes.len(), 2);
            assert!(changes.iter().any(|c| c.set == NftSet::Pending && !c.add));
            assert!(changes.iter().any(|c| c.set == NftSet::Full && c.add));
        }
        other => panic!("last change is {other:?}"),
    }
    let k = &r.kernel;
    assert_eq!(k.nft.sets_of(member(1)), BTreeSet::from([NftSet::Full]));
    assert!(k.tc.ifbs.contains("pgi-ppp1"));
    assert!(k.routes.contains(&OwnedRoute {
        dst: "192.168.50.0/24".parse().unwrap(),
        gateway: None,
        dev: "ppp1".into(),
        table: 254,
        metric: None
    }));
    assert!(k.rules.contains(&OwnedRule { from: "100.64.0.2/32".parse().unwrap(), table: 100, priority: 100 }));
    assert!(k.sysctl.ip_forward);

    // Converged: the next run reads and changes nothing (ensure_base and sysctl are idempotent
    // probes; nothing else).
    r.clear_calls();
    let out = converge(&mut r, &cfg, &d, &Scope::of(&d.sessions), false).unwrap();
    assert!(out.plan.is_empty());
    let muts: Vec<&Call> =
        r.mutations().into_iter().filter(|c| !matches!(c, Call::NftEnsureBase(_) | Call::SysctlEnsure(_))).collect();
    assert!(muts.is_empty(), "{muts:?}");
}

#[test]
fn dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    let d = desired(vec![session(1, policy(S::Full)), session(2, policy(S::Restricted))]);
    let out = converge(&mut r, &cfg, &d, &Scope::All, true).unwrap();
    assert!(!out.applied);
    assert!(!out.plan.is_empty());
    assert!(r.mutations().is_empty(), "{:?}", r.mutations());
    assert_eq!(r.kernel, fresh().kernel);
}

#[test]
fn a_failure_anywhere_leaves_the_session_no_more_open_and_the_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut cases = 0;
    for from in STATES {
        let start = kernel_in(from, &cfg);
        let before = openness(&start, member(1));
        assert_eq!(before, state_openness(from), "{from:?}");
        for to in STATES {
            let d = desired(vec![session(1, policy(to))]);
            let scope = Scope::of(&d.sessions);
            // How many changes the transition makes when nothing fails.
            let mut clean = with_kernel(&start);
            converge(&mut clean, &cfg, &d, &scope, false).unwrap();
            let n = clean.mutations().len();
            for k in 0..n {
                let mut r = with_kernel(&start);
                let mut seen = 0;
                let mut first_commit_done = false;
                r.fail_when(move |c| {
                    if !c.is_mutation() {
                        return false;
                    }
                    seen += 1;
                    seen == k + 1
                });
                let err = converge(&mut r, &cfg, &d, &scope, false).expect_err("the injected failure surfaces");
                assert!(matches!(err, Error::Netlink { .. }), "{err}");
                let failed_at = r.calls.iter().filter(|c| c.is_mutation()).nth(k).cloned().unwrap();
                for c in r.calls.iter().filter(|c| c.is_mutation()).take(k) {
                    if matches!(c, Call::NftCommit(_)) {
                        first_commit_done = true;
                    }
                }
                let after = openness(&r.kernel, member(1));
                assert!(
                    after <= before,
                    "{from:?} → {to:?}, failing change #{k} ({failed_at:?}): openness {before} → {after}"
                );
                if first_commit_done && state_openness(to) < before {
                    assert_eq!(after, state_openness(to), "{from:?} → {to:?}: restricted first, before anything else");
                }
                // The next run (the fault gone) finishes the job.
                r.heal();
                converge(&mut r, &cfg, &d, &scope, false)
                    .unwrap_or_else(|e| panic!("{from:?} → {to:?} after fault #{k}: {e}"));
                assert_eq!(r.kernel.nft.sets_of(member(1)), BTreeSet::from([NftSet::for_state(policy(to).state)]));
                assert_eq!(
                    without_orphan_table_defaults(&r.kernel),
                    without_orphan_table_defaults(&clean.kernel),
                    "{from:?} → {to:?} after fault #{k}: same end state as without it"
                );
                if r.kernel != clean.kernel {
                    // A fault between removing the session's policy-routing rule and its table's
                    // default route leaves that default orphaned: a session-scope read looks only
                    // into the tables its sessions' rules point at (so its cost does not grow
                    // with the box), and reconcile removes it.
                    let mut c = with_kernel(&clean.kernel);
                    converge(&mut r, &cfg, &d, &Scope::All, false).unwrap();
                    converge(&mut c, &cfg, &d, &Scope::All, false).unwrap();
                    assert_eq!(r.kernel, c.kernel, "{from:?} → {to:?} after fault #{k}: reconcile removes the orphan");
                }
                cases += 1;
            }
        }
    }
    println!("{cases} injected failures, every one fail-closed and recovered");
    assert!(cases > 40);
}

#[test]
fn a_change_the_kernel_silently_drops_is_a_verify_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    type Pred = fn(&Call) -> bool;
    let drops: Vec<(&str, Pred)> = vec![
        ("route add", |c| matches!(c, Call::RouteAdd(r) if r.table == 254)),
        ("rule add", |c| matches!(c, Call::RuleAdd(_))),
        ("tc set", |c| matches!(c, Call::TcSet(..))),
        ("nft transaction", |c| matches!(c, Call::NftCommit(_))),
    ];
    for (what, pred) in drops {
        let mut r = fresh();
        engine::gate(&mut r, &cfg, member(1)).unwrap();
        r.drop_when(pred);
        let d = desired(vec![session(1, policy(S::Full))]);
        let err = converge(&mut r, &cfg, &d, &Scope::of(&d.sessions), false).expect_err(what);
        match &err {
            Error::Verify(residue) => {
                println!("{what} dropped → {err}");
                assert!(residue.contains(what), "{what}: {residue}");
            }
            other => panic!("{what}: expected a verify error, got {other}"),
        }
        assert_eq!(err.exit_code(), policy_core::ExitCode::Internal);
        // Healed, the next run converges.
        r.heal();
        converge(&mut r, &cfg, &d, &Scope::of(&d.sessions), false).unwrap();
    }
}

#[test]
fn session_scope_touches_only_its_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    let both = desired(vec![session(1, policy(S::Full)), session(2, policy(S::Full))]);
    converge(&mut r, &cfg, &both, &Scope::All, false).unwrap();
    r.clear_calls();
    let one = desired(vec![session(1, policy(S::Blocked))]);
    converge(&mut r, &cfg, &one, &Scope::of(&one.sessions), false).unwrap();
    for c in r.mutations() {
        let text = format!("{c:?}");
        assert!(!text.contains("ppp2") && !text.contains("100.64.0.3"), "touched session 2: {text}");
    }
    assert_eq!(r.kernel.nft.sets_of(member(2)), BTreeSet::from([NftSet::Full]));
    assert_eq!(r.kernel.tc.shaping.get("ppp2"), Some(&Shaping { down_kbit: Some(8000), up_kbit: Some(2000) }));
    // Session 2 still uses table 100, so its default route stays.
    assert!(r.kernel.routes.iter().any(|x| x.table == 100));
    assert_eq!(r.kernel.rules.len(), 1);
}

/// Session 2 connects wanting the route session 1 holds (both want 192.168.50.0/24): the
/// session-scope read does not look for it (no table read), the add finds it held and leaves it
/// with ppp1, and verification, told of the holder, passes. Session 1's route is not touched.
#[test]
fn a_route_another_session_holds_stays_with_it_when_found_at_add_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    let first = desired(vec![session(1, policy(S::Full))]);
    converge(&mut r, &cfg, &first, &Scope::of(&first.sessions), false).unwrap();
    let holder: Vec<OwnedRoute> = r.kernel.routes.iter().filter(|x| x.table == 254).cloned().collect();
    assert_eq!(holder.len(), 1);
    assert_eq!(holder[0].dev, "ppp1");
    r.clear_calls();
    let second = desired(vec![session(2, policy(S::Full))]);
    for _ in 0..2 {
        converge(&mut r, &cfg, &second, &Scope::of(&second.sessions), false).unwrap();
        let now: Vec<OwnedRoute> = r.kernel.routes.iter().filter(|x| x.table == 254).cloned().collect();
        assert_eq!(now, holder, "the route stays with ppp1");
    }
    for c in r.mutations() {
        assert!(!matches!(c, Call::RouteAdd(_) | Call::RouteDel(_)), "no route changed: {c:?}");
    }
    assert_eq!(r.kernel.nft.sets_of(member(2)), BTreeSet::from([NftSet::Full]));
    // Once session 1 is gone, session 2's next apply takes the route.
    engine::disconnect(&mut r, "ppp1", member(1)).unwrap();
    converge(&mut r, &cfg, &second, &Scope::of(&second.sessions), false).unwrap();
    assert!(r.kernel.routes.iter().any(|x| x.table == 254 && x.dev == "ppp2"));
}

#[test]
fn disconnect_keeps_going_past_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    let d = desired(vec![session(1, policy(S::Full))]);
    converge(&mut r, &cfg, &d, &Scope::All, false).unwrap();
    r.fail_when(|c| matches!(c, Call::TcClear(_)));
    let err = engine::disconnect(&mut r, "ppp1", member(1)).expect_err("the tc failure is reported");
    assert!(err.to_string().contains("cleanup of ppp1 incomplete"), "{err}");
    // Everything else went.
    assert!(r.kernel.nft.sets_of(member(1)).is_empty());
    assert!(r.kernel.routes.is_empty(), "{:?}", r.kernel.routes);
    assert!(r.kernel.rules.is_empty());
    r.heal();
    engine::disconnect(&mut r, "ppp1", member(1)).unwrap();
    assert!(r.kernel.tc.shaping.is_empty() && r.kernel.tc.ifbs.is_empty());
}

#[test]
fn gate_creates_the_table_under_the_lock_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    assert!(!r.kernel.nft_table);
    engine::gate(&mut r, &cfg, member(1)).unwrap();
    assert!(r.kernel.nft_table);
    assert_eq!(r.kernel.nft.sets_of(member(1)), BTreeSet::from([NftSet::Pending]));
    assert!(cfg.paths.apply_lock.exists(), "the table was created under the apply lock");
    // With the lock held by someone else the gate cannot create the table: the address is
    // refused (fail closed), after the bounded wait.
    let mut r = fresh();
    let _held = policy_core::lock::Lock::try_acquire(&cfg.paths.apply_lock, "test").unwrap();
    let t = std::time::Instant::now();
    let err = engine::gate(&mut r, &cfg, member(1)).expect_err("no table and no lock");
    println!("gate without table and lock: {err} after {:?}", t.elapsed());
    assert!(matches!(err, Error::Locked { .. }));
    assert!(r.kernel.nft.sets_of(member(1)).is_empty());
}

#[test]
fn sql_down_cleanup_removes_only_gone_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut r = fresh();
    let d = desired(vec![session(1, policy(S::Full)), session(2, policy(S::Restricted))]);
    converge(&mut r, &cfg, &d, &Scope::All, false).unwrap();
    let live = Mapping {
        connection_id: 1,
        ppp_if: "ppp1".into(),
        client_ip: ip(1),
        start_ts: 1,
        pppd_pid: 4242,
        session_id: None,
        up_ts: None,
        counters_base: None,
        process: None,
    };
    let before = r.kernel.clone();
    policy_core::policy::apply::remove_gone_sessions(
        &cfg,
        &mut r,
        &[LiveSession { mapping: live, ifindex: member(1).ifindex }],
        false,
    )
    .unwrap();
    assert_eq!(r.kernel.nft.sets_of(member(1)), before.nft.sets_of(member(1)), "live session untouched");
    assert_eq!(r.kernel.tc.shaping.get("ppp1"), before.tc.shaping.get("ppp1"));
    assert_eq!(r.kernel.routes, before.routes, "session 1's routes (and its table route) stay");
    assert!(r.kernel.nft.sets_of(member(2)).is_empty(), "gone session removed");
    assert!(!r.kernel.tc.shaping.contains_key("ppp2") && !r.kernel.tc.ifbs.contains("pgi-ppp2"));
    assert_eq!(PolicyState::Full, policy(S::Full).state);
}

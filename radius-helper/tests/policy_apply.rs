//! `pppgate apply` / `reconcile` / `connection set` / `routes` / `pbr` end to end: the real
//! binary, a real PostgreSQL (one per test), fake VALID sessions, each test in a network
//! namespace of its own. Every assertion reads the kernel back with the real tools (`nft -j`,
//! `tc`, `ip -j`), never with pppgate's own readers.
//!
//! Needs root. Without it every test fails (loudly), none is skipped.

use std::collections::BTreeSet;
use std::time::Duration;

use policy_core::kernel::{OwnedRoute, OwnedRule, Shaping};
use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

struct World {
    pg: PgServer,
    env: TestEnv,
    cli: Cli,
}

/// A private network namespace, a private PostgreSQL and a config pointing into a temp dir.
fn world() -> World {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cli = env.cli(BIN);
    World { pg, env, cli }
}

impl World {
    fn conn(&self, login: &str, down: Option<u32>, up: Option<u32>) -> i64 {
        add_connection(&self.pg, login, "CLAIMED", None, down, up)
    }
    fn tun(&self, ifname: &str, conn: i64, ip: &str) -> FakeSession {
        SessionBuilder::tun(ifname, conn, ip).build(&self.env.sessions_dir)
    }
    fn sql(&self, q: &str) -> String {
        self.pg.psql(q)
    }
}

fn sets(ip: &str) -> BTreeSet<String> {
    nft_sets_of(ip)
}

fn only(set: &str) -> BTreeSet<String> {
    BTreeSet::from([set.to_string()])
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

fn shaping(down: Option<u32>, up: Option<u32>) -> Shaping {
    Shaping { down_kbit: down, up_kbit: up }
}

fn route(dst: &str, dev: &str, table: u32, metric: Option<u32>) -> OwnedRoute {
    OwnedRoute { dst: dst.parse().unwrap(), gateway: None, dev: dev.into(), table, metric }
}

fn routes_on(dev: &str) -> BTreeSet<OwnedRoute> {
    tool_routes().into_iter().filter(|r| r.dev == dev).collect()
}

fn rule(from: &str, table: u32, priority: u32) -> OwnedRule {
    OwnedRule { from: from.parse().unwrap(), table, priority }
}

/// The wg0 stand-in policy routing points at (a veth; the build kernel has no WireGuard).
fn wg0() {
    veth("wg0", "wg0p", None);
    run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
}

// ---------------------------------------------------------------------------------------------
// apply for one, several and all sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn apply_one_connection_installs_its_policy_and_nothing_else() {
    let w = world();
    let a = w.conn("alice", Some(8000), Some(2000));
    let b = w.conn("bob", Some(4000), None);
    add_route(&w.pg, a, "192.168.50.0/24", None);
    add_route(&w.pg, a, "192.168.51.0/24", Some(100));
    let sa = w.tun("ppp0", a, "100.64.0.2");
    let sb = w.tun("ppp1", b, "100.64.0.3");

    let out = w.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    println!("{}", out.stdout);
    assert!(out.stdout.contains("ppp0 100.64.0.2 connection 1: FULL"), "{}", out.stdout);
    assert_eq!(sets(&sa.ip()), only("full_v4"));
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(2000)));
    assert_eq!(
        routes_on("ppp0"),
        BTreeSet::from([route("192.168.50.0/24", "ppp0", 254, None), route("192.168.51.0/24", "ppp0", 100, None)])
    );
    // Bob's session is not touched by an apply for Alice.
    assert_eq!(sets(&sb.ip()), none());
    assert_eq!(tool_shaping("ppp1"), Shaping::default());
    assert_eq!(run(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(), "1");

    // Idempotent: a second apply has nothing to do and changes nothing.
    let before = kernel_dump();
    let again = w.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    assert_eq!(kernel_dump(), before);

    // A connection without a live session is reported, not an error.
    let c = w.conn("carol", None, None);
    let out = w.cli.ok(&["apply", "--connection-id", &c.to_string()]);
    assert!(out.stdout.contains(&format!("connection {c}: no live session")), "{}", out.stdout);
}

/// Everything of one session as the real tools print it: set memberships, the qdiscs, classes
/// and ingress filter of its interface and of its upload IFB (with the IFB's index: recreated
/// devices show), its routes in every table and its rules.
fn session_state(dev: &str, ip: &str) -> String {
    let ifb = format!("pgi-{dev}");
    let mut s = format!("sets {:?}\n", sets(ip));
    for d in [dev, ifb.as_str()] {
        if !link_names().iter().any(|n| n == d) {
            s.push_str(&format!("{d}: absent\n"));
            continue;
        }
        s.push_str(&run(&["ip", "-o", "link", "show", d]).split(':').take(2).collect::<Vec<_>>().join(":"));
        s.push('\n');
        for what in [&["qdisc", "show"][..], &["-d", "class", "show"][..], &["filter", "show"][..]] {
            let mut args = vec!["tc"];
            args.extend_from_slice(what);
            args.extend_from_slice(&["dev", d]);
            s.push_str(&run(&args));
        }
        s.push_str(&run(&["tc", "filter", "show", "dev", d, "ingress"]));
    }
    s.push_str(&format!("routes {:?}\n", routes_on(dev)));
    let from = format!("{ip}/32");
    s.push_str(&format!(
        "rules {:?}\n",
        tool_rules().into_iter().filter(|r| r.from.to_string() == from).collect::<Vec<_>>()
    ));
    s
}

/// What is shared or nobody's session: the nft table's chains and rules with their handles (a
/// rebuild would show), the policy-routing tables' default routes, every rule that is not a
/// session's, the link list and the forwarding sysctls.
fn shared_state(session_ips: &[&str]) -> String {
    let mut s = String::new();
    for line in run(&["nft", "-a", "list", "table", "inet", "pppgate"]).lines() {
        // Set elements are the sessions' (compared per session); counters move with traffic.
        let t = line.trim_start();
        if !line.contains("elements") && !t.starts_with(|c: char| c.is_ascii_digit()) && !t.starts_with('"') {
            s.push_str(line.split("counter packets").next().unwrap_or(line));
            s.push('\n');
        }
    }
    s.push_str(&format!(
        "table defaults {:?}\n",
        tool_routes().into_iter().filter(|r| r.dst.prefix_len() == 0).collect::<Vec<_>>()
    ));
    let sessions: Vec<String> = session_ips.iter().map(|ip| format!("{ip}/32")).collect();
    s.push_str(&format!(
        "other rules {:?}\n",
        tool_rules().into_iter().filter(|r| !sessions.contains(&r.from.to_string())).collect::<Vec<_>>()
    ));
    s.push_str(&run(&[
        "sysctl",
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ]));
    s
}

/// A session-scope apply (what the plugin does at connect, and `apply --connection-id`) on a box
/// with other sessions' routes (main and another table), policy-routing rules sharing a table,
/// up- and download shaping and set members: every object of the other sessions and everything
/// shared reads back exactly as before, while the applied session's own objects did change.
#[test]
fn session_scope_apply_touches_no_other_session() {
    let w = world();
    wg0();
    let ids: Vec<i64> = (0..4).map(|i| w.conn(&format!("user{i}"), Some(8000 + i * 1000), Some(2000))).collect();
    for (i, id) in ids.iter().enumerate() {
        add_route(&w.pg, *id, &format!("192.168.{}.0/24", 50 + i), None);
        add_route(&w.pg, *id, &format!("192.168.{}.0/24", 60 + i), Some(100));
        w.sql(&format!(
            "INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority) VALUES ('p{i}', {id}, 100, '10.100.0.40', 'wg0', {})",
            100 + i
        ));
    }
    // One of the others is restricted (its address in another set, no routes).
    w.sql(&format!("UPDATE vpn_connections SET expires_at = now() - interval '1 day' WHERE id = {}", ids[3]));
    let sessions: Vec<FakeSession> =
        ids.iter().enumerate().map(|(i, id)| w.tun(&format!("ppp{i}"), *id, &format!("100.64.0.{}", 2 + i))).collect();
    let ips: Vec<String> = sessions.iter().map(|s| s.ip()).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    w.cli.ok(&["reconcile"]);
    assert_eq!(sets(&ips[1]), only("full_v4"));
    assert_eq!(sets(&ips[3]), only("restricted_v4"));
    assert_eq!(tool_shaping("ppp1"), shaping(Some(9000), Some(2000)));

    let others = || -> Vec<String> { (1..4).map(|i| session_state(&format!("ppp{i}"), &ips[i])).collect() };
    let before = others();
    let shared_before = shared_state(&ip_refs);
    let mine_before = session_state("ppp0", &ips[0]);

    // 1. Rates, a route and the policy-routing priority of session 0 change.
    let a = ids[0];
    w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = 6000, rate_up_kbit = 1000 WHERE id = {a}"));
    w.sql(&format!("UPDATE vpn_routes SET destination = '192.168.70.0/24' WHERE connection_id = {a} AND destination = '192.168.50.0/24'"));
    w.sql(&format!("UPDATE pbr_rules SET priority = 150 WHERE connection_id = {a}"));
    let out = w.cli.ok(&["--json", "apply", "--connection-id", &a.to_string()]).json();
    assert!(!out["plan"]["ops"].as_array().unwrap().is_empty(), "{out}");
    let mine = session_state("ppp0", &ips[0]);
    assert_ne!(mine, mine_before, "the applied session changed");
    assert_eq!(tool_shaping("ppp0"), shaping(Some(6000), Some(1000)));
    assert!(routes_on("ppp0").contains(&route("192.168.70.0/24", "ppp0", 254, None)));
    assert_eq!(others(), before, "other sessions untouched by a rate/route/rule change");
    assert_eq!(shared_state(&ip_refs), shared_before, "shared objects untouched");

    // 2. Blocked: its shaping, IFB, routes and rule go; the shared table's default stays (the
    //    others' rules still point at it).
    w.sql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {a}"));
    w.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    assert_eq!(sets(&ips[0]), only("blocked_v4"));
    assert!(leftovers("ppp0", &ips[0]).iter().all(|l| l.contains("blocked_v4")), "{:?}", leftovers("ppp0", &ips[0]));
    assert_eq!(others(), before, "other sessions untouched by a block");
    assert_eq!(shared_state(&ip_refs), shared_before, "shared objects untouched");

    // 3. The session goes (the plugin's ip-down, in-process): the others still read the same.
    let mut b = policy_core::kernel::Netlink::new().unwrap();
    let idx = policy_core::kernel::links::ifindex("ppp0").unwrap().expect("ppp0 exists");
    let member = policy_core::kernel::Member::new(idx, ips[0].parse().unwrap());
    policy_core::policy::engine::disconnect(&mut b, "ppp0", member).unwrap();
    assert!(leftovers("ppp0", &ips[0]).is_empty(), "{:?}", leftovers("ppp0", &ips[0]));
    assert_eq!(others(), before, "other sessions untouched by a disconnect");
    assert_eq!(shared_state(&ip_refs), shared_before, "shared objects untouched");
    drop(sessions);
}

#[test]
fn apply_for_a_customer_and_for_everything() {
    let w = world();
    let cust = add_customer(&w.pg, "acme");
    let other = add_customer(&w.pg, "other");
    let c1 = add_connection(&w.pg, "acme-1", "CLAIMED", Some(cust), Some(5000), None);
    let c2 = add_connection(&w.pg, "acme-2", "PREPROVISIONED", Some(cust), Some(1000), Some(1000));
    let c3 = add_connection(&w.pg, "other-1", "CLAIMED", Some(other), None, None);
    w.sql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {c3}"));
    let c4 = add_connection(&w.pg, "loner", "CLAIMED", None, None, None);
    let s1 = w.tun("ppp1", c1, "100.64.0.11");
    let s2 = w.tun("ppp2", c2, "100.64.0.12");
    let s3 = w.tun("ppp3", c3, "100.64.0.13");
    let s4 = w.tun("ppp4", c4, "100.64.0.14");

    let out = w.cli.ok(&["apply", "--customer-id", &cust.to_string()]);
    println!("{}", out.stdout);
    assert_eq!(sets(&s1.ip()), only("full_v4"));
    assert_eq!(sets(&s2.ip()), only("restricted_v4"), "PREPROVISIONED (unclaimed) is the walled garden");
    assert_eq!(tool_shaping("ppp1"), shaping(Some(5000), None));
    assert_eq!(tool_shaping("ppp2"), shaping(Some(1000), Some(1000)), "speed applies in RESTRICTED too");
    assert_eq!(sets(&s3.ip()), none(), "another customer's session is not touched");
    assert_eq!(sets(&s4.ip()), none());

    let out = w.cli.ok(&["apply", "--reconcile-all"]);
    println!("{}", out.stdout);
    assert_eq!(sets(&s3.ip()), only("blocked_v4"));
    assert_eq!(sets(&s4.ip()), only("full_v4"));
    assert_eq!(sets(&s1.ip()), only("full_v4"));
    assert_eq!(sets(&s2.ip()), only("restricted_v4"));
    // The same as `pppgate reconcile`: nothing left to do.
    let out = w.cli.ok(&["reconcile"]);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    w.cli.run(&["apply", "--customer-id", "999999"]).expect_code(65);
    w.cli.run(&["apply", "--customer-id", "1", "--connection-id", "1"]).expect_code(64);
}

// ---------------------------------------------------------------------------------------------
// policy changes through `connection set` and SQL
// ---------------------------------------------------------------------------------------------

#[test]
fn speed_change_applies_at_once_in_place() {
    let w = world();
    let a = w.conn("alice", Some(8000), Some(2000));
    let _s = w.tun("ppp0", a, "100.64.0.2");
    w.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(2000)));
    let qdisc_before = root_qdisc("ppp0").unwrap();

    let id = a.to_string();
    w.cli.ok(&["connection", "set", &id, "--down-kbit", "20000"]);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(20000), Some(2000)));
    assert_eq!(w.sql(&format!("SELECT rate_down_kbit FROM vpn_connections WHERE id = {a}")), "20000");
    let qdisc_after = root_qdisc("ppp0").unwrap();
    assert_eq!(qdisc_before["handle"], qdisc_after["handle"], "the rate changed in place, same root qdisc");

    w.cli.ok(&["connection", "set", &id, "--up-kbit", "none"]);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(20000), None));
    assert!(!link_names().contains(&"pgi-ppp0".to_string()), "upload IFB removed");
    assert!(!has_ingress("ppp0"));

    w.cli.ok(&["connection", "set", &id, "--down-kbit", "none", "--up-kbit", "3000"]);
    assert_eq!(tool_shaping("ppp0"), shaping(None, Some(3000)));
    assert_ne!(root_qdisc("ppp0").map(|q| q["kind"].clone()), Some("tbf".into()));
    assert_eq!(sets("100.64.0.2"), only("full_v4"), "speed changes do not touch membership");
}

#[test]
fn full_restricted_full_by_expiry_quota_and_claim() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let s = w.tun("ppp0", a, "100.64.0.2");
    let id = a.to_string();
    w.cli.ok(&["apply", "--connection-id", &id]);
    let full = |why: &str| {
        assert_eq!(sets(&s.ip()), only("full_v4"), "{why}");
        assert_eq!(
            routes_on("ppp0"),
            BTreeSet::from([route("192.168.50.0/24", "ppp0", 254, None)]),
            "{why}: routes in FULL"
        );
    };
    let restricted = |why: &str| {
        assert_eq!(sets(&s.ip()), only("restricted_v4"), "{why}");
        assert!(routes_on("ppp0").is_empty(), "{why}: no per-user routes in RESTRICTED");
        assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), None), "{why}: speed stays");
    };
    full("start");

    // Expiry (database clock).
    let past = (policy_core::lock::now_unix() - 60).to_string();
    let out = w.cli.ok(&["connection", "set", &id, "--expires-at", &past]);
    assert!(out.stdout.contains("RESTRICTED (Expired)"), "{}", out.stdout);
    restricted("expired");
    w.cli.ok(&["connection", "set", &id, "--expires-at", "none"]);
    full("expiry lifted");

    // Quota: usage rows as the collector writes them.
    w.cli.ok(&["connection", "set", &id, "--quota-bytes", "1000000"]);
    full("under quota");
    w.sql(&format!(
        "INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out) VALUES ({a}, current_date, 600000, 400000)"
    ));
    let out = w.cli.ok(&["apply", "--connection-id", &id]);
    assert!(out.stdout.contains("RESTRICTED (QuotaExceeded)"), "{}", out.stdout);
    restricted("quota used up");
    // Last month's usage does not count in a monthly period.
    w.sql(&format!("UPDATE vpn_usage SET day = date_trunc('month', current_date)::date - 1 WHERE connection_id = {a}"));
    w.cli.ok(&["apply", "--connection-id", &id]);
    full("new month");
    w.cli.ok(&["connection", "set", &id, "--quota-bytes", "none"]);

    // Unclaimed = PREPROVISIONED.
    let out = w.cli.ok(&["connection", "set", &id, "--status", "PREPROVISIONED"]);
    assert!(out.stdout.contains("RESTRICTED (Unclaimed)"), "{}", out.stdout);
    restricted("unclaimed");
    w.cli.ok(&["connection", "set", &id, "--status", "CLAIMED"]);
    full("claimed");
}

#[test]
fn manual_and_customer_block() {
    let w = world();
    let cust = add_customer(&w.pg, "acme");
    let a = add_connection(&w.pg, "alice", "CLAIMED", Some(cust), Some(8000), Some(1000));
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let s = w.tun("ppp0", a, "100.64.0.2");
    let id = a.to_string();
    w.cli.ok(&["apply", "--connection-id", &id]);
    assert_eq!(sets(&s.ip()), only("full_v4"));

    w.cli.ok(&["connection", "set", &id, "--block"]);
    assert_eq!(sets(&s.ip()), only("blocked_v4"));
    assert_eq!(tool_shaping("ppp0"), Shaping::default(), "nothing passes: no shaping kept");
    assert!(!link_names().contains(&"pgi-ppp0".to_string()));
    assert!(routes_on("ppp0").is_empty());

    w.cli.ok(&["connection", "set", &id, "--unblock"]);
    assert_eq!(sets(&s.ip()), only("full_v4"));
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(1000)));
    assert_eq!(routes_on("ppp0").len(), 1);

    w.sql(&format!("UPDATE customers SET blocked = true WHERE id = {cust}"));
    let out = w.cli.ok(&["apply", "--customer-id", &cust.to_string()]);
    assert!(out.stdout.contains("BLOCKED (CustomerBlocked)"), "{}", out.stdout);
    assert_eq!(sets(&s.ip()), only("blocked_v4"));
    w.sql(&format!(
        "UPDATE vpn_connections SET status = 'SUSPENDED' WHERE id = {a}; UPDATE customers SET blocked = false"
    ));
    let out = w.cli.ok(&["apply", "--connection-id", &id]);
    assert!(out.stdout.contains("BLOCKED (Suspended)"), "{}", out.stdout);
    assert_eq!(sets(&s.ip()), only("blocked_v4"));
}

#[test]
fn terminate_signals_the_session_and_reconcile_cleans_up() {
    let w = world();
    let a = w.conn("disabled-soon", Some(8000), Some(1000));
    let b = w.conn("unclaimed-soon", None, None);
    let c = w.conn("deleted-soon", None, None);
    let d = w.conn("stays", None, None);
    let mut sa = w.tun("ppp0", a, "100.64.0.2");
    let mut sb = w.tun("ppp1", b, "100.64.0.3");
    let mut sc = w.tun("ppp2", c, "100.64.0.4");
    let mut sd = w.tun("ppp3", d, "100.64.0.5");
    w.cli.ok(&["reconcile"]);
    assert_eq!(sets(&sa.ip()), only("full_v4"));

    let out = w.cli.ok(&["connection", "set", &a.to_string(), "--status", "DISABLED"]);
    assert!(out.stdout.contains("terminated session on ppp0"), "{}", out.stdout);
    let st = sa.wait_exit(Duration::from_secs(5)).expect("the session's process ended");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(15), "pppd gets SIGTERM (its own down path)");
    // Blocked until it is gone; nothing else kept.
    assert_eq!(sets(&sa.ip()), only("blocked_v4"));
    assert_eq!(tool_shaping("ppp0"), Shaping::default());

    w.sql(&format!(
        "UPDATE vpn_connections SET status = 'UNCLAIMED' WHERE id = {b}; DELETE FROM vpn_connections WHERE id = {c}"
    ));
    let out = w.cli.ok(&["reconcile"]);
    println!("{}", out.stdout);
    for s in [&mut sb, &mut sc] {
        let st = s.wait_exit(Duration::from_secs(5)).expect("terminated");
        assert_eq!(st.signal(), Some(15));
    }
    assert!(sd.alive(), "a session SQL allows is not signalled");

    // pppd would now remove its interface; the processes are gone: nothing may stay behind.
    w.cli.ok(&["reconcile"]);
    for (ifname, ip) in [("ppp0", "100.64.0.2"), ("ppp1", "100.64.0.3"), ("ppp2", "100.64.0.4")] {
        assert_eq!(leftovers(ifname, ip), Vec::<String>::new(), "{ifname}");
    }
    assert_eq!(sets(&sd.ip()), only("full_v4"));
}

// ---------------------------------------------------------------------------------------------
// gone sessions, drift, malformed mappings
// ---------------------------------------------------------------------------------------------

#[test]
fn gone_sessions_leave_nothing_behind() {
    let w = world();
    wg0();
    let mut ids = Vec::new();
    for (i, login) in ["a", "b", "c"].iter().enumerate() {
        let id = w.conn(login, Some(8000), Some(2000));
        add_route(&w.pg, id, &format!("192.168.{}.0/24", 50 + i), None);
        w.sql(&format!(
            "INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority) VALUES ('p{i}', {id}, 100, '10.100.0.40', 'wg0', {})",
            100 + i
        ));
        ids.push(id);
    }
    let mut sa = w.tun("ppp0", ids[0], "100.64.0.2");
    let sb = w.tun("ppp1", ids[1], "100.64.0.3");
    let sc = w.tun("ppp2", ids[2], "100.64.0.4");
    w.cli.ok(&["reconcile"]);
    for s in [&sa, &sb, &sc] {
        assert_eq!(sets(&s.ip()), only("full_v4"));
        assert!(!leftovers(&s.ifname, &s.ip()).is_empty(), "state installed");
    }
    assert_eq!(tool_rules().len(), 3);

    sa.kill(); // pppd died; its interface is still there
    sb.delete_interface(); // the link went away; pppd still runs
    let out = w.cli.ok(&["reconcile"]);
    println!("{}", out.stdout);
    assert_eq!(leftovers("ppp0", "100.64.0.2"), Vec::<String>::new());
    assert_eq!(leftovers("ppp1", "100.64.0.3"), Vec::<String>::new());
    assert_eq!(sets(&sc.ip()), only("full_v4"), "the live session keeps its state");
    assert_eq!(tool_shaping("ppp2"), shaping(Some(8000), Some(2000)));
    assert_eq!(tool_rules(), BTreeSet::from([rule("100.64.0.4/32", 100, 102)]));
    assert!(
        tool_routes().iter().any(|r| r.table == 100 && r.dev == "wg0"),
        "the table's default route stays while used"
    );

    // The last session goes: the table's default route goes too.
    drop(sc);
    w.cli.ok(&["reconcile"]);
    assert!(tool_routes().is_empty(), "{:?}", tool_routes());
    assert!(tool_rules().is_empty());
    assert!(nft_members().values().all(|m| m.is_empty()), "{:?}", nft_members());
}

#[test]
fn drift_is_restored_by_reconcile() {
    let w = world();
    wg0();
    let a = w.conn("alice", Some(8000), Some(2000));
    add_route(&w.pg, a, "192.168.50.0/24", None);
    w.sql(&format!(
        "INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority) VALUES ('ktn', {a}, 100, '10.100.0.40', 'wg0', 100)"
    ));
    let s = w.tun("ppp0", a, "100.64.0.2");
    w.cli.ok(&["reconcile"]);
    let good = (nft_members(), tool_shaping("ppp0"), tool_routes(), tool_rules());
    assert_eq!(good.1, shaping(Some(8000), Some(2000)));
    assert_eq!(good.2.len(), 2);
    assert_eq!(good.3.len(), 1);

    // Each kind of drift alone, then all at once.
    type Drift = (&'static str, fn());
    let drifts: Vec<Drift> = vec![
        ("set element deleted", || {
            run(&["nft", "delete", "element", "inet", "pppgate", "full_v4", "{ \"ppp0\" . 100.64.0.2 }"]);
        }),
        ("stray element added", || {
            run(&["nft", "add", "element", "inet", "pppgate", "full_v4", "{ \"ppp0\" . 100.64.9.9 }"]);
        }),
        ("double membership", || {
            run(&["nft", "add", "element", "inet", "pppgate", "blocked_v4", "{ \"ppp0\" . 100.64.0.2 }"]);
        }),
        ("root qdisc deleted", || {
            run(&["tc", "qdisc", "del", "dev", "ppp0", "root"]);
        }),
        ("ingress deleted", || {
            run(&["tc", "qdisc", "del", "dev", "ppp0", "ingress"]);
        }),
        ("ifb deleted", || {
            run(&["ip", "link", "del", "pgi-ppp0"]);
        }),
        ("shaping rate changed", || {
            run(&[
                "tc", "qdisc", "change", "dev", "ppp0", "root", "handle", "2:", "tbf", "rate", "1mbit", "burst",
                "4000", "limit", "24000",
            ]);
        }),
        ("route deleted", || {
            run(&["ip", "route", "del", "192.168.50.0/24", "dev", "ppp0"]);
        }),
        ("table route deleted", || {
            run(&["ip", "route", "del", "default", "table", "100"]);
        }),
        ("rule deleted", || {
            run(&["ip", "rule", "del", "from", "100.64.0.2", "lookup", "100"]);
        }),
        ("stray route and rule", || {
            run(&["ip", "route", "add", "10.77.0.0/16", "dev", "ppp0", "proto", "77"]);
            run(&["ip", "rule", "add", "from", "100.64.7.7", "lookup", "100", "priority", "300", "protocol", "77"]);
        }),
        ("table deleted", || {
            run(&["nft", "delete", "table", "inet", "pppgate"]);
        }),
    ];
    for (what, drift) in &drifts {
        drift();
        assert_ne!((nft_members(), tool_shaping("ppp0"), tool_routes(), tool_rules()), good, "{what}: drift happened");
        let out = w.cli.ok(&["reconcile"]);
        println!("{what}:\n{}", out.stdout);
        assert_eq!((nft_members(), tool_shaping("ppp0"), tool_routes(), tool_rules()), good, "{what}: restored");
    }
    // (The rate cannot be changed once the root qdisc is gone.)
    for (_, drift) in drifts.iter().filter(|(w, _)| *w != "shaping rate changed") {
        drift();
    }
    w.cli.ok(&["reconcile"]);
    assert_eq!((nft_members(), tool_shaping("ppp0"), tool_routes(), tool_rules()), good, "all at once: restored");
    assert_eq!(sets(&s.ip()), only("full_v4"));
}

/// Upgrade from a version that shaped with HTB: a live session still carries HTB `1:` with
/// class `1:10` and a pfifo leaf on its interface and its IFB. `session show` reads it at its
/// rates, one reconcile rewrites it as TBF at the same rates without touching its membership,
/// and the next reconcile has nothing to do.
#[test]
fn reconcile_rewrites_the_htb_layout_of_earlier_versions_as_tbf() {
    let w = world();
    let a = w.conn("alice", Some(8000), Some(2000));
    let s = w.tun("ppp0", a, "100.64.0.2");
    w.cli.ok(&["reconcile"]);
    let good = (nft_members(), tool_shaping("ppp0"));
    assert_eq!(good.1, shaping(Some(8000), Some(2000)));
    for (dev, rate) in [("ppp0", "8mbit"), ("pgi-ppp0", "2mbit")] {
        run(&["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"]);
        run(&["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", rate, "ceil", rate]);
        run(&["tc", "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", "16"]);
    }
    assert_eq!(htb_rate("ppp0"), Some(8_000_000));
    assert_eq!(tool_shaping("ppp0"), shaping(None, None), "no TBF left");
    let show = w.cli.ok(&["--json", "session", "show", &a.to_string()]).json();
    let k = &show["sessions"][0]["kernel"]["shaping"];
    assert_eq!(
        (k["down_kbit"].as_u64(), k["up_kbit"].as_u64()),
        (Some(8000), Some(2000)),
        "shown at its rates: {show}"
    );

    let out = w.cli.ok(&["reconcile", "--json"]);
    println!("{}", out.stdout);
    assert_eq!((nft_members(), tool_shaping("ppp0")), good, "rewritten as TBF at the same rates");
    assert_eq!((htb_rate("ppp0"), htb_rate("pgi-ppp0")), (None, None));
    assert_eq!(sets(&s.ip()), only("full_v4"));
    let plan = w.cli.ok(&["reconcile", "--dry-run"]);
    assert!(!plan.stdout.contains("tc set"), "converged: {}", plan.stdout);
}

#[test]
fn malformed_mapping_is_reported_and_fails_closed() {
    let w = world();
    let a = w.conn("alice", Some(8000), Some(2000));
    let b = w.conn("bob", None, None);
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let sa = w.tun("ppp0", a, "100.64.0.2");
    let sb = w.tun("ppp1", b, "100.64.0.3");
    w.cli.ok(&["reconcile"]);
    assert_eq!(sets(&sa.ip()), only("full_v4"));

    // ppp0's mapping is damaged (half-written by something else, or edited by hand).
    std::fs::write(sa.mapping_path(), "CONNECTION_ID=1; rm -rf /\nPPP_IF=ppp0\n").unwrap();
    // A stray garbage file too.
    std::fs::write(w.env.sessions_dir.join("ppp9.env"), "garbage").unwrap();
    // Reported, yet the run converged (R811): exit 0.
    let out = w.cli.run(&["reconcile"]).expect_code(0);
    println!("{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("malformed mapping (ignored, not a session)"), "{}", out.stdout);
    assert!(out.stdout.contains("ppp0.env") && out.stdout.contains("ppp9.env"), "{}", out.stdout);
    // Fail closed: a session whose mapping cannot be read is no session; its state is removed and
    // the default drop catches its traffic.
    assert_eq!(leftovers("ppp0", "100.64.0.2"), Vec::<String>::new());
    assert_eq!(sets(&sb.ip()), only("full_v4"), "other sessions are unaffected");
    let json = w.cli.run(&["--json", "reconcile"]).expect_code(0).json();
    assert_eq!(json["malformed"].as_array().unwrap().len(), 2);
    assert_eq!(json["converged"], true);
    assert!(w.env.sessions_dir.join("ppp9.env").exists(), "a malformed file is reported, never removed");
}

/// R511: the mapping file of a pppd that died without its ip-down (SIGKILL) is removed by
/// reconcile together with the session's policy — only when the pppd is provably gone by process
/// identity (START_TICKS + BOOT_ID), never a live session's.
#[test]
fn mappings_of_sigkilled_pppds_are_removed_with_their_policy_never_a_live_one() {
    let w = world();
    let a = w.conn("alice", Some(8000), Some(2000));
    let b = w.conn("bob", None, None);
    let c = w.conn("carol", None, None);
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let mut sa = w.tun("ppp0", a, "100.64.0.2");
    let sb = w.tun("ppp1", b, "100.64.0.3");
    w.cli.ok(&["reconcile"]);
    assert_eq!(sets(&sa.ip()), only("full_v4"));
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(2000)));

    // A live process whose START_TICKS differ from the mapping's: pppd's PID reused.
    let other = StandIn::sleeper();
    ppp_link("ppp2", "100.64.0.1", "100.64.0.4");
    let reused = write_mapping(&w.env.sessions_dir, c, "ppp2", "100.64.0.4", other.pid(), other.start_ts() - 3600);
    assert!(reused.process.is_some());
    // A mapping of an older pppgate (no START_TICKS/BOOT_ID) naming a live process that started
    // at another time: a clock step looks the same, so it is not provably gone and stays.
    ppp_link("ppp3", "100.64.0.1", "100.64.0.5");
    let mut old = write_mapping(&w.env.sessions_dir, c, "ppp3", "100.64.0.5", other.pid(), other.start_ts() - 3600);
    old.process = None;
    old.write_atomic(&w.env.sessions_dir).unwrap();

    // pppd of ppp0 dies by SIGKILL: no ip-down, its interface (TUN here) still there.
    sa.kill();
    assert!(sa.mapping_path().exists());
    let j = w.cli.ok(&["--json", "reconcile", "--dry-run"]).json();
    let would: BTreeSet<String> =
        j["removed_mappings"].as_array().unwrap().iter().map(|m| m["ppp_if"].as_str().unwrap().to_string()).collect();
    assert_eq!(would, BTreeSet::from(["ppp0".to_string(), "ppp2".to_string()]), "{j:#}");
    assert_eq!(j["converged"], false, "a dry run with work to do is not converged");
    assert!(sa.mapping_path().exists(), "a dry run removes nothing");

    let j = w.cli.ok(&["--json", "reconcile"]).json();
    println!("{j:#}");
    assert_eq!(j["converged"], true);
    let removed = j["removed_mappings"].as_array().unwrap();
    assert_eq!(removed.len(), 2, "{j:#}");
    assert_eq!(removed[0]["ppp_if"], "ppp0");
    assert_eq!(removed[0]["gone"], "no_process");
    assert_eq!(removed[0]["connection_id"], a);
    assert_eq!(removed[1]["ppp_if"], "ppp2");
    assert_eq!(removed[1]["gone"], "pid_reused");
    // Read back: the files, and the kernel state of the dead session.
    assert!(!sa.mapping_path().exists(), "the SIGKILLed pppd's mapping is removed");
    assert!(!w.env.sessions_dir.join("ppp2.env").exists(), "the reused PID's mapping is removed");
    assert!(w.env.sessions_dir.join("ppp3.env").exists(), "not provably gone: kept");
    assert_eq!(leftovers("ppp0", "100.64.0.2"), Vec::<String>::new(), "its policy is removed too");
    assert!(sb.mapping_path().exists(), "a live session's mapping is never removed");
    assert!(sb.is_valid());
    assert_eq!(sets(&sb.ip()), only("full_v4"), "the live session keeps its state");
    // Nothing left to do: the next run converges with nothing removed.
    let j = w.cli.ok(&["--json", "reconcile"]).json();
    assert_eq!(j["removed_mappings"], serde_json::json!([]));
    assert_eq!(j["converged"], true);
    let j = w.cli.ok(&["--json", "reconcile", "--dry-run"]).json();
    assert_eq!(j["converged"], true, "{j:#}");

    // The same without SQL: the kernel-side half removes them too (exit 69: not converged).
    let mut sb = sb;
    sb.kill();
    w.pg.stop();
    let j = w.cli.run(&["--json", "reconcile"]).expect_code(69).json();
    assert_eq!(j["converged"], false);
    assert_eq!(j["removed_mappings"][0]["ppp_if"], "ppp1", "{j:#}");
    assert!(!sb.mapping_path().exists());
    assert_eq!(leftovers("ppp1", "100.64.0.3"), Vec::<String>::new());
    w.pg.start();
    drop(other);
}

/// R811: reconcile's exit code says whether it converged: 0 converged (also with malformed
/// mapping files, reported); 69 SQL unreachable (only the gone half done; 0 with `--boot`, the
/// report still says not converged); 65 SQL facts refused (nothing applied); 75 lock busy.
#[test]
fn reconcile_exit_codes_say_whether_it_converged() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    let sa = w.tun("ppp0", a, "100.64.0.2");
    let j = w.cli.ok(&["--json", "reconcile"]).json();
    assert_eq!(j["converged"], true);
    std::fs::write(w.env.sessions_dir.join("ppp9.env"), "garbage").unwrap();
    let j = w.cli.run(&["--json", "reconcile"]).expect_code(0).json();
    assert_eq!((j["converged"].clone(), j["malformed"].as_array().unwrap().len()), (serde_json::json!(true), 1));

    w.pg.stop();
    let j = w.cli.run(&["--json", "reconcile"]).expect_code(69).json();
    assert_eq!(j["converged"], false);
    assert!(j["sql_unavailable"].is_string());
    let j = w.cli.run(&["--json", "reconcile", "--boot"]).expect_code(0).json();
    assert_eq!(j["converged"], false, "--boot exits 0 without SQL but says it did not converge");
    let out = w.cli.run(&["reconcile"]).expect_code(69);
    assert!(out.stdout.contains("not converged"), "{}", out.stdout);
    // The DB Down Boot's unit logs it: one line (besides the malformed file written above),
    // nothing claiming "nothing to do" (lab_boot).
    let out = w.cli.run(&["reconcile", "--boot"]).expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.starts_with("malformed mapping")).collect();
    assert_eq!(lines.len(), 1, "{}", out.stdout);
    assert!(lines[0].starts_with("not converged: SQL unavailable ("), "{}", out.stdout);
    w.pg.start();

    // SQL asks for what cannot be applied: refused as a whole, nothing changes.
    w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = 2000000000 WHERE id = {a}"));
    w.cli.run(&["reconcile"]).expect_code(65);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), None), "nothing applied");
    w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = 4000 WHERE id = {a}"));
    let j = w.cli.ok(&["--json", "reconcile"]).json();
    assert_eq!(j["converged"], true);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(4000), None));

    let _held = hold_lock(&w.env.apply_lock);
    w.cli.run(&["reconcile"]).expect_code(75);
    assert_eq!(sets(&sa.ip()), only("full_v4"));
}

// ---------------------------------------------------------------------------------------------
// the single-writer lock and crashes
// ---------------------------------------------------------------------------------------------

#[test]
fn busy_lock_exits_75_and_changes_nothing() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    let _s = w.tun("ppp0", a, "100.64.0.2");
    w.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = 16000 WHERE id = {a}"));
    let holder = hold_lock(&w.env.apply_lock);
    let before = kernel_dump();
    let id = a.to_string();
    for args in [
        vec!["apply", "--connection-id", id.as_str()],
        vec!["apply", "--reconcile-all"],
        vec!["reconcile"],
        vec!["connection", "set", id.as_str(), "--up-kbit", "1000"],
        vec!["routes", "add", "--connection-id", id.as_str(), "--dst", "10.9.0.0/16"],
    ] {
        let out = w.cli.run(&args).expect_code(75);
        assert!(out.stderr.contains("is busy"), "{args:?}: {}", out.stderr);
    }
    assert_eq!(kernel_dump(), before, "nothing changed while the lock was held");
    // The SQL changes stay; the next run applies them.
    assert_eq!(w.sql(&format!("SELECT rate_up_kbit FROM vpn_connections WHERE id = {a}")), "1000");
    drop(holder);
    w.cli.ok(&["reconcile"]);
    assert_eq!(tool_shaping("ppp0"), shaping(Some(16000), Some(1000)));
    assert!(routes_on("ppp0").contains(&route("10.9.0.0/16", "ppp0", 254, None)));
}

#[test]
fn break_stale_lock_ends_an_old_holder_but_not_a_young_one() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    let _s = w.tun("ppp0", a, "100.64.0.2");

    // A young holder: --break-stale-lock refuses (busy, 75) and the holder lives.
    let mut young = hold_lock(&w.env.apply_lock);
    std::fs::write(
        &w.env.apply_lock,
        format!("pid={} since={} what=apply\n", young.0.id(), policy_core::lock::now_unix()),
    )
    .unwrap();
    let out = w.cli.run(&["reconcile", "--break-stale-lock"]).expect_code(75);
    assert!(out.stderr.contains("not older than the TTL"), "{}", out.stderr);
    assert!(matches!(young.0.try_wait(), Ok(None)), "the young holder was not signalled");
    drop(young);

    // An old holder (TTL is 60 s in the test config): signalled, lock taken, work done.
    let mut old = hold_lock(&w.env.apply_lock);
    let since = policy_core::lock::now_unix() - 3600;
    std::fs::write(&w.env.apply_lock, format!("pid={} since={since} what=stuck-apply\n", old.0.id())).unwrap();
    let before = kernel_dump();
    // Each finding of the stale holder is a `lock_stale` journal entry (issue 12), read here from
    // a datagram socket standing in for journald's.
    let jdir = tempfile::tempdir().unwrap();
    let jsock = jdir.path().join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&jsock).unwrap();
    journal.set_nonblocking(true).unwrap();
    let jenv = [(policy_core::journal::SOCKET_ENV, jsock.to_str().unwrap())];
    w.cli.run_env(&["reconcile"], &jenv).expect_code(75);
    assert_eq!(kernel_dump(), before);
    let out = w.cli.run_env(&["reconcile", "--break-stale-lock"], &jenv).expect_code(0);
    assert!(out.stderr.contains("ALERT: broke stale apply lock"), "{}", out.stderr);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = journal.recv(&mut buf) {
        entries.push(policy_core::journal::decode(&buf[..n]).expect("a native-protocol datagram"));
    }
    assert_eq!(entries.len(), 2, "found busy, then broken: {entries:#?}");
    for (e, broken) in entries.iter().zip(["false", "true"]) {
        let get = |k: &str| e.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MESSAGE_ID"), Some(policy_core::journal::Event::LockStale.message_id()));
        assert_eq!(get("PPPGATE_EVENT"), Some("lock_stale"));
        assert_eq!(get("PPPGATE_HOLDER_PID"), Some(old.0.id().to_string().as_str()));
        assert_eq!(get("PPPGATE_HOLDER"), Some("stuck-apply"));
        assert_eq!(get("PPPGATE_TTL_S"), Some("60"));
        assert_eq!(get("PPPGATE_BROKEN"), Some(broken));
        assert!(get("PPPGATE_HELD_S").unwrap().parse::<u64>().unwrap() >= 3600);
    }
    let st = old.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(15), "the stale holder got SIGTERM");
    assert_eq!(sets("100.64.0.2"), only("full_v4"));
    let holder = std::fs::read_to_string(&w.env.apply_lock).unwrap();
    assert!(holder.contains("what=reconcile"), "the lock file names the new holder: {holder}");
}

#[test]
fn crash_mid_apply_stays_restricted_and_reconcile_converges() {
    let w = world();
    let cfg = w.env.config();
    let a = w.conn("alice", Some(8000), Some(2000));
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let s = w.tun("ppp0", a, "100.64.0.2");
    // The connect gate, as pppgate.so's address hook sets it before the interface is up.
    let mut k = policy_core::kernel::Netlink::new().unwrap();
    policy_core::policy::engine::gate(&mut k, &cfg, s.member()).unwrap();
    assert_eq!(sets(&s.ip()), only("connect_pending_v4"));

    let id = a.to_string();
    let out = w.cli.run_env(&["apply", "--connection-id", &id], &[("PPPGATE_TEST_CRASH_AT", "apply:after-tc")]);
    assert_eq!(out.signal, Some(9), "killed at the crash point: {out:?}");
    // Shaping went in, but the gate was not released: the session is still GATED.
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(2000)));
    assert_eq!(sets(&s.ip()), only("connect_pending_v4"), "at least as restricted as before");
    assert!(routes_on("ppp0").is_empty());
    // The kernel released the dead writer's lock; the next reconcile converges.
    let out = w.cli.ok(&["reconcile"]);
    println!("{}", out.stdout);
    assert_eq!(sets(&s.ip()), only("full_v4"));
    assert_eq!(routes_on("ppp0").len(), 1);

    // FULL → BLOCKED, killed right after the restricting transaction: blocked already, the
    // shaping it no longer needs is still there; reconcile finishes.
    w.sql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {a}"));
    let out = w.cli.run_env(&["apply", "--connection-id", &id], &[("PPPGATE_TEST_CRASH_AT", "apply:after-nft")]);
    assert_eq!(out.signal, Some(9));
    assert_eq!(sets(&s.ip()), only("blocked_v4"));
    w.cli.ok(&["reconcile"]);
    assert_eq!(tool_shaping("ppp0"), Shaping::default());
    assert!(routes_on("ppp0").is_empty());

    // BLOCKED → FULL, killed after the first route: nothing opened yet.
    w.sql(&format!("UPDATE vpn_connections SET manual_block = false WHERE id = {a}"));
    let out = w.cli.run_env(&["apply", "--connection-id", &id], &[("PPPGATE_TEST_CRASH_AT", "apply:after-route")]);
    assert_eq!(out.signal, Some(9));
    assert_eq!(sets(&s.ip()), only("blocked_v4"));
    w.cli.ok(&["reconcile"]);
    assert_eq!(sets(&s.ip()), only("full_v4"));
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), Some(2000)));
}

// ---------------------------------------------------------------------------------------------
// dry run, JSON, SQL down
// ---------------------------------------------------------------------------------------------

#[test]
fn dry_run_changes_nothing_and_prints_the_plan() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    add_route(&w.pg, a, "192.168.50.0/24", None);
    let _s = w.tun("ppp0", a, "100.64.0.2");
    let id = a.to_string();

    // Before anything exists (no table yet) and after.
    for round in 0..2 {
        let before = kernel_dump();
        let out = w.cli.ok(&["apply", "--connection-id", &id, "--dry-run"]);
        assert!(out.stdout.contains("would: tc set ppp0 down 8000kbit up unlimited"), "{}", out.stdout);
        assert!(out.stdout.contains("would: route add 192.168.50.0/24 dev ppp0"), "{}", out.stdout);
        // The member is the address bound to its interface (index varies): `add 100.64.0.2 (if N) full_v4`.
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("would: nft transaction: add 100.64.0.2 (if ") && l.ends_with(") full_v4")),
            "{}",
            out.stdout
        );
        let out = w.cli.ok(&["reconcile", "--dry-run"]);
        assert!(out.stdout.contains("would: "), "{}", out.stdout);
        let j = w.cli.ok(&["--json", "apply", "--connection-id", &id, "--dry-run"]).json();
        assert_eq!(j["applied"], false);
        assert_eq!(j["plan"]["ops"].as_array().unwrap().len(), 3, "{j}");
        assert_eq!(kernel_dump(), before, "round {round}: a dry run changes nothing");
        if round == 0 {
            assert!(!nft_table_exists(), "not even the table");
            // Something unrelated exists; the dry run still reports the plan for our session.
            w.cli.ok(&["apply", "--connection-id", &w.conn("bob", None, None).to_string()]);
        }
    }
    // A dry run needs no lock either.
    let _held = hold_lock(&w.env.apply_lock);
    w.cli.ok(&["reconcile", "--dry-run"]);
}

#[test]
fn json_outputs_parse() {
    let w = world();
    wg0();
    let a = w.conn("alice", Some(8000), None);
    let s = w.tun("ppp0", a, "100.64.0.2");
    let id = a.to_string();

    let j = w.cli.ok(&["--json", "apply", "--connection-id", &id]).json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["sessions"][0]["state"], "FULL");
    assert_eq!(j["sessions"][0]["ifname"], "ppp0");
    assert_eq!(j["sessions"][0]["down_kbit"], 8000);
    assert!(j["steps"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().starts_with("nft transaction")));

    let j = w.cli.ok(&["--json", "reconcile"]).json();
    assert!(j["plan"]["ops"].as_array().unwrap().is_empty(), "{j}");
    assert_eq!(j["malformed"], serde_json::json!([]));

    let j = w.cli.ok(&["--json", "routes", "add", "--connection-id", &id, "--dst", "10.10.0.0/24"]).json();
    assert_eq!(j["changed"], true);
    let j = w.cli.ok(&["--json", "routes", "list"]).json();
    assert_eq!(j[0]["destination"], "10.10.0.0/24");
    assert_eq!(j[0]["connection_id"], a);

    w.cli.ok(&[
        "--json",
        "pbr",
        "add",
        "ktn",
        "--connection-id",
        &id,
        "--table",
        "ktn",
        "--via",
        "10.100.0.40",
        "--dev",
        "wg0",
        "--priority",
        "100",
    ]);
    let j = w.cli.ok(&["--json", "pbr", "list"]).json();
    assert_eq!(j[0]["name"], "ktn");
    assert_eq!(j[0]["table"], 100);
    let j = w.cli.ok(&["--json", "pbr", "check", &s.ip()]).json();
    assert_eq!(j["table"], 100);
    assert_eq!(j["gateway"], "10.100.0.40");
    assert_eq!(j["dev"], "wg0");

    let j = w.cli.ok(&["--json", "connection", "show", &id]).json();
    assert_eq!(j["policy"]["state"], "FULL");
    assert_eq!(j["facts"]["login"], "alice");
    let j = w.cli.ok(&["--json", "connection", "add", "--login", "zed"]).json();
    assert!(j["id"].as_i64().unwrap() > a);
    let j = w.cli.ok(&["--json", "db", "status"]).json();
    assert_eq!(j["version"], policy_core::db::migrate::LATEST);
}

#[test]
fn sql_unavailable_keeps_live_sessions_and_removes_gone_ones() {
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    let b = w.conn("bob", Some(4000), Some(1000));
    let sa = w.tun("ppp0", a, "100.64.0.2");
    let mut sb = w.tun("ppp1", b, "100.64.0.3");
    w.cli.ok(&["reconcile"]);
    sb.kill();
    w.pg.stop();
    let out = w.cli.run(&["reconcile"]).expect_code(69);
    assert!(out.stdout.contains("SQL unavailable"), "{}", out.stdout);
    assert_eq!(sets(&sa.ip()), only("full_v4"), "live sessions exactly as they were");
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), None));
    assert_eq!(leftovers("ppp1", "100.64.0.3"), Vec::<String>::new(), "gone sessions are removed without SQL");
    w.cli.ok(&["reconcile", "--boot"]);
    w.cli.run(&["apply", "--connection-id", &a.to_string()]).expect_code(69);
    w.pg.start();
    w.cli.ok(&["reconcile"]);
}

// ---------------------------------------------------------------------------------------------
// bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_input_exits_65_and_applies_nothing() {
    let w = world();
    wg0();
    let a = w.conn("alice", Some(8000), None);
    let _s = w.tun("ppp0", a, "100.64.0.2");
    let id = a.to_string();
    w.cli.ok(&["apply", "--connection-id", &id]);
    let before = kernel_dump();
    let sql_before = w.sql("SELECT row_to_json(c)::text FROM vpn_connections c ORDER BY id");
    let routes_before = w.sql("SELECT count(*) FROM vpn_routes");
    let twenty = "12345678901234567890";

    let cases: Vec<Vec<&str>> = vec![
        // CIDRs
        vec!["routes", "add", "--connection-id", &id, "--dst", "10.0.0.1/24"],
        vec!["routes", "add", "--connection-id", &id, "--dst", "300.0.0.0/24"],
        vec!["routes", "add", "--connection-id", &id, "--dst", "10.0.0.0/33"],
        vec!["routes", "add", "--connection-id", &id, "--dst", "not-a-net"],
        vec!["routes", "add", "--connection-id", &id, "--dst", "0.0.0.0/0"],
        vec![
            "pbr",
            "add",
            "x",
            "--from",
            "10.0.0.1/8",
            "--table",
            "100",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "100",
        ],
        // a gateway a point-to-point link cannot reach
        vec!["routes", "add", "--connection-id", &id, "--dst", "10.20.0.0/24", "--gateway", "10.9.9.9"],
        // unknown ids
        vec!["apply", "--connection-id", "999999"],
        vec!["connection", "set", "999999", "--down-kbit", "1000"],
        vec!["routes", "add", "--connection-id", "999999", "--dst", "10.20.0.0/24"],
        vec![
            "pbr",
            "add",
            "y",
            "--connection-id",
            "999999",
            "--table",
            "100",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "100",
        ],
        // ids that are not plain positive integers
        vec!["apply", "--connection-id", "1; rm -rf /"],
        vec!["apply", "--connection-id=-1"],
        vec!["apply", "--connection-id", "-1"],
        vec!["apply", "--connection-id", "0x10"],
        vec!["apply", "--connection-id", ""],
        vec!["apply", "--connection-id", twenty],
        vec!["apply", "--connection-id", "0"],
        vec!["apply", "--connection-id", "01"],
        vec!["apply", "--customer-id", "1 OR 1=1"],
        vec!["connection", "set", "1; rm -rf /", "--down-kbit", "1000"],
        vec!["connection", "set", "-1", "--down-kbit", "1000"],
        vec!["connection", "show", twenty],
        vec!["routes", "list", "--connection-id", "0x10"],
        // routing tables
        vec!["routes", "add", "--connection-id", &id, "--dst", "10.20.0.0/24", "--table", "nosuch"],
        vec!["routes", "add", "--connection-id", &id, "--dst", "10.20.0.0/24", "--table", "local"],
        vec![
            "pbr",
            "add",
            "z",
            "--connection-id",
            &id,
            "--table",
            "nosuch",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "100",
        ],
        vec![
            "pbr",
            "add",
            "z",
            "--connection-id",
            &id,
            "--table",
            "main",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "100",
        ],
        vec![
            "pbr",
            "add",
            "z",
            "--connection-id",
            &id,
            "--table",
            "100",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "0",
        ],
        vec![
            "pbr",
            "add",
            "bad name!",
            "--connection-id",
            &id,
            "--table",
            "100",
            "--via",
            "10.100.0.40",
            "--dev",
            "wg0",
            "--priority",
            "100",
        ],
        // rates
        vec!["connection", "set", &id, "--down-kbit", "0"],
        vec!["connection", "set", &id, "--down-kbit", "999999999"],
        vec!["connection", "set", &id, "--up-kbit", "-5"],
        vec!["connection", "set", &id, "--up-kbit", "1e3"],
        vec!["connection", "set", &id, "--down-kbit", "7"],
        vec!["connection", "set", &id, "--status", "ACTIVE"],
    ];
    let mut failures = Vec::new();
    for args in &cases {
        let out = w.cli.run(args);
        println!("{:<90} → {:?} {}", format!("{args:?}"), out.code, out.stderr.trim());
        if out.code != Some(65) {
            failures.push(format!("{args:?}: exit {:?}, stderr {}", out.code, out.stderr.trim()));
        }
    }
    assert!(failures.is_empty(), "expected exit 65:\n{}", failures.join("\n"));
    assert_eq!(kernel_dump(), before, "nothing applied");
    assert_eq!(w.sql("SELECT row_to_json(c)::text FROM vpn_connections c ORDER BY id"), sql_before, "nothing stored");
    assert_eq!(w.sql("SELECT count(*) FROM vpn_routes"), routes_before);
    assert_eq!(w.sql("SELECT count(*) FROM pbr_rules"), "0");

    // Absurd values written to SQL directly (a panel that does not validate): refused at apply,
    // nothing applied.
    for rate in ["2000000000", "3"] {
        w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = {rate} WHERE id = {a}"));
        let out = w.cli.run(&["apply", "--connection-id", &id]).expect_code(65);
        assert!(out.stderr.contains("rate"), "{}", out.stderr);
        w.cli.run(&["reconcile"]).expect_code(65);
        assert_eq!(kernel_dump(), before, "rate {rate}: nothing applied");
    }
    w.sql(&format!("UPDATE vpn_connections SET rate_down_kbit = 8000 WHERE id = {a}"));
    // A route via an address other than the peer, written to SQL directly.
    w.sql(&format!(
        "INSERT INTO vpn_routes (connection_id, destination, gateway) VALUES ({a}, '10.30.0.0/24', '10.9.9.9')"
    ));
    w.cli.run(&["apply", "--connection-id", &id]).expect_code(65);
    assert_eq!(kernel_dump(), before);
    w.sql(&format!("DELETE FROM vpn_routes WHERE connection_id = {a}"));
    // A per-user route in table `local` (the CLI refuses it; the schema does not), written to SQL
    // directly. (PBR into default/main/local the schema itself refuses.)
    w.sql(&format!("INSERT INTO vpn_routes (connection_id, destination, table_id) VALUES ({a}, '10.30.0.0/24', 255)"));
    let out = w.cli.run(&["apply", "--connection-id", &id]).expect_code(65);
    assert!(out.stderr.contains("local"), "{}", out.stderr);
    w.cli.run(&["reconcile"]).expect_code(65);
    assert_eq!(kernel_dump(), before, "route in table local: nothing applied");
}

// ---------------------------------------------------------------------------------------------
// routes and pbr verbs
// ---------------------------------------------------------------------------------------------

#[test]
fn routes_verbs_are_idempotent_for_several_sessions() {
    let w = world();
    let a = w.conn("alice", None, None);
    let b = w.conn("bob", None, None);
    let sa = w.tun("ppp0", a, "100.64.0.2");
    let _sb = w.tun("ppp1", b, "100.64.0.3");
    let (ia, ib) = (a.to_string(), b.to_string());
    w.cli.ok(&["reconcile"]);

    let out = w.cli.ok(&["routes", "add", "--connection-id", &ia, "--dst", "10.10.0.0/24"]);
    assert!(out.stdout.contains("stored"), "{}", out.stdout);
    let out = w.cli.ok(&["routes", "add", "--connection-id", &ia, "--dst", "10.10.0.0/24"]);
    assert!(out.stdout.contains("already present"), "{}", out.stdout);
    // Via the peer itself: the same as a device route on the point-to-point link.
    w.cli.ok(&["routes", "add", "--connection-id", &ia, "--dst", "10.11.0.0/24", "--gateway", &sa.ip()]);
    w.cli.ok(&["routes", "add", "--connection-id", &ib, "--dst", "10.20.0.0/24", "--table", "ktn", "--metric", "5"]);
    w.cli.ok(&["routes", "add", "--connection-id", &ib, "--dst", "10.21.0.0/24", "--table", "200"]);
    let want = BTreeSet::from([
        route("10.10.0.0/24", "ppp0", 254, None),
        route("10.11.0.0/24", "ppp0", 254, None),
        route("10.20.0.0/24", "ppp1", 100, Some(5)),
        route("10.21.0.0/24", "ppp1", 200, None),
    ]);
    assert_eq!(tool_routes(), want);
    let list = w.cli.ok(&["--json", "routes", "list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 4);
    let list = w.cli.ok(&["--json", "routes", "list", "--connection-id", &ib]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let text = w.cli.ok(&["routes", "list"]).stdout;
    assert!(text.contains(&format!("connection {b} 10.20.0.0/24 via peer table 100 metric 5")), "{text}");

    // `routes apply` for everything at once restores both sessions' routes.
    run(&["ip", "route", "del", "10.10.0.0/24", "dev", "ppp0"]);
    run(&["ip", "route", "del", "10.20.0.0/24", "dev", "ppp1", "table", "100"]);
    let out = w.cli.ok(&["routes", "apply"]);
    println!("{}", out.stdout);
    assert_eq!(tool_routes(), want);
    let out = w.cli.ok(&["routes", "apply"]);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    // …and for one connection.
    run(&["ip", "route", "del", "10.21.0.0/24", "dev", "ppp1", "table", "200"]);
    w.cli.ok(&["routes", "apply", "--connection-id", &ib]);
    assert_eq!(tool_routes(), want);

    let out = w.cli.ok(&["routes", "del", "--connection-id", &ia, "--dst", "10.10.0.0/24"]);
    assert!(out.stdout.contains("removed"), "{}", out.stdout);
    let out = w.cli.ok(&["routes", "del", "--connection-id", &ia, "--dst", "10.10.0.0/24"]);
    assert!(out.stdout.contains("was not there"), "{}", out.stdout);
    w.cli.ok(&["routes", "del", "--connection-id", &ib, "--dst", "10.20.0.0/24", "--table", "ktn"]);
    assert_eq!(
        tool_routes(),
        BTreeSet::from([route("10.11.0.0/24", "ppp0", 254, None), route("10.21.0.0/24", "ppp1", 200, None)])
    );

    // Stored only, applied later.
    w.cli.ok(&["routes", "add", "--connection-id", &ia, "--dst", "10.12.0.0/24", "--no-apply"]);
    assert!(!tool_routes().contains(&route("10.12.0.0/24", "ppp0", 254, None)));
    w.cli.ok(&["routes", "apply", "--connection-id", &ia]);
    assert!(tool_routes().contains(&route("10.12.0.0/24", "ppp0", 254, None)));

    // Metric 0 is what the kernel reports as no metric: it must verify and stay converged.
    w.cli.ok(&["routes", "add", "--connection-id", &ia, "--dst", "10.13.0.0/24", "--metric", "0"]);
    assert!(tool_routes().contains(&route("10.13.0.0/24", "ppp0", 254, None)));
    let out = w.cli.ok(&["reconcile"]);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);

    // Another connection cannot take a destination a live session already routes.
    let out = w.cli.run(&["routes", "add", "--connection-id", &ib, "--dst", "10.13.0.0/24"]).expect_code(65);
    assert!(out.stderr.contains(&format!("connection {a} already routes")), "{}", out.stderr);
    // Written to SQL directly anyway: the first session keeps it, runs stay converged.
    add_route(&w.pg, b, "10.13.0.0/24", None);
    w.cli.ok(&["routes", "apply", "--connection-id", &ib]);
    let out = w.cli.ok(&["reconcile"]);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
    assert!(tool_routes().contains(&route("10.13.0.0/24", "ppp0", 254, None)));
}

#[test]
fn two_sessions_of_one_connection_with_a_route() {
    // The same login online twice (no Simultaneous-Use limit): both sessions get the policy; a
    // per-user route can go through only one link, and the plan must still converge.
    let w = world();
    let a = w.conn("alice", Some(8000), None);
    add_route(&w.pg, a, "10.10.0.0/24", None);
    let s0 = w.tun("ppp0", a, "100.64.0.2");
    let s1 = w.tun("ppp1", a, "100.64.0.3");
    let out = w.cli.run(&["apply", "--connection-id", &a.to_string()]);
    println!("{}\n{}", out.stdout, out.stderr);
    let out = out.expect_code(0);
    assert!(out.stdout.contains("ppp0") && out.stdout.contains("ppp1"));
    assert_eq!(sets(&s0.ip()), only("full_v4"));
    assert_eq!(sets(&s1.ip()), only("full_v4"));
    assert_eq!(tool_shaping("ppp0"), shaping(Some(8000), None));
    assert_eq!(tool_shaping("ppp1"), shaping(Some(8000), None));
    let r: Vec<OwnedRoute> = tool_routes().into_iter().filter(|r| r.dst.to_string() == "10.10.0.0/24").collect();
    assert_eq!(r.len(), 1, "one route for the destination: {r:?}");
    w.cli.ok(&["reconcile"]);
    let out = w.cli.ok(&["reconcile"]);
    assert!(out.stdout.contains("nothing to do"), "{}", out.stdout);
}

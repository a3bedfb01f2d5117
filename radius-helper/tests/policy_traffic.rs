//! Packets through the policy engine, driven only through the `pppgate` CLI (plus the connect
//! gate, which pppgate.so sets in-process before an interface is up). Topology, all created by
//! each test:
//!
//! ```text
//!  client ns (one per session)       gateway ns (the test thread; pppgate runs here)         internet ns
//!  eth0 100.64.x.y peer 100.64.0.1 <─veth─> pppN 100.64.0.1 peer 100.64.x.y
//!                                           wan0 198.51.100.1/24 <──────veth──────> eth0 198.51.100.2/24
//!                                           default via 198.51.100.2                   .53 (garden tcp 8080, udp 53)
//!                                                                                      .54 (garden, any protocol)
//!                                           wg0 10.100.0.1/24 <───veth───> "MikroTik" ns eth0 10.100.0.40/24
//! ```
//!
//! What passes is proven where it arrives: nft counters in the internet and MikroTik namespaces
//! count the packets that reach them from each client address.

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::Duration;

use pppgate_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

struct Lab {
    pg: PgServer,
    env: TestEnv,
    cli: Cli,
    inet: NetNs,
    _servers: Vec<Bg>,
}

/// Far-side counters: packets arriving (prerouting) from each client address, plus the
/// walled-garden violations a RESTRICTED address could commit.
fn probe_ruleset(clients: &[&str], restricted: Option<&str>) -> String {
    let mut t =
        String::from("table ip probe {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n");
    for ip in clients {
        t.push_str(&format!("  ip saddr {ip} counter comment \"from-{ip}\"\n"));
    }
    if let Some(r) = restricted {
        t.push_str(&format!(
            "  ip saddr {r} ip daddr != {{ 198.51.100.53, 198.51.100.54 }} counter comment \"outside-garden\"\n"
        ));
        t.push_str(&format!(
            "  ip saddr {r} ip daddr 198.51.100.53 meta l4proto tcp tcp dport != 8080 counter comment \"wrong-port\"\n"
        ));
    }
    t.push_str(" }\n}\n");
    t
}

fn lab(clients: &[&str], restricted: Option<&str>) -> Lab {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cli = env.cli(BIN);
    let inet = NetNs::new("in");
    veth("wan0", "eth0", Some(&inet));
    run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "wan0"]);
    no_gso(&[], "wan0");
    for a in ["198.51.100.2/24", "198.51.100.53/24", "198.51.100.54/24"] {
        inet.run(&["ip", "addr", "add", a, "dev", "eth0"]);
    }
    no_gso(&["ip", "netns", "exec", &inet.name], "eth0");
    inet.run(&["ip", "route", "add", "100.64.0.0/10", "via", "198.51.100.1"]);
    run(&["ip", "route", "add", "default", "via", "198.51.100.2", "dev", "wan0"]);
    // The box is a router before pppgate ever runs (pppgate also ensures it).
    run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    inet.nft_load(&probe_ruleset(clients, restricted));
    let servers = vec![
        inet.spawn(&["socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo ok"]),
        inet.spawn(&["socat", "TCP-LISTEN:9090,fork,reuseaddr", "SYSTEM:echo ok"]),
    ];
    inet.wait_listening(8080);
    inet.wait_listening(9090);
    Lab { pg, env, cli, inet, _servers: servers }
}

impl Lab {
    fn session(&self, ifname: &str, conn: i64, ip: &str) -> FakeSession {
        SessionBuilder::veth(ifname, conn, ip).build(&self.env.sessions_dir)
    }
    fn far(&self, ip: &str) -> u64 {
        ns_counter(&self.inet, "ip", "probe", &format!("from-{ip}"))
    }
}

#[test]
fn states_decide_what_passes() {
    let (full, restricted, blocked, gated) = ("100.64.0.2", "100.64.0.3", "100.64.0.4", "100.64.0.5");
    let l = lab(&[full, restricted, blocked, gated], Some(restricted));
    let a = add_connection(&l.pg, "full", "CLAIMED", None, None, None);
    let b = add_connection(&l.pg, "unclaimed", "PREPROVISIONED", None, None, None);
    let c = add_connection(&l.pg, "blocked", "CLAIMED", None, None, None);
    l.pg.psql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {c}"));
    let d = add_connection(&l.pg, "connecting", "CLAIMED", None, None, None);
    let sa = l.session("ppp0", a, full);
    let sb = l.session("ppp1", b, restricted);
    let sc = l.session("ppp2", c, blocked);
    let sd = l.session("ppp3", d, gated);

    // Before pppgate's table exists everything is forwarded (the topology works).
    expect_all(vec![tcp(sd.client(), gated, "198.51.100.2", 8080, true)]);

    // The connect gate, as pppgate.so's address hook sets it; d's ip-up has not run yet.
    let cfg = l.env.config();
    let mut k = policy_core::kernel::Netlink::new().unwrap();
    policy_core::policy::engine::gate(&mut k, &cfg, sd.member()).unwrap();
    for id in [a, b, c] {
        l.cli.ok(&["apply", "--connection-id", &id.to_string()]);
    }
    assert_eq!(nft_sets_of(full), ["full_v4".to_string()].into());
    assert_eq!(nft_sets_of(restricted), ["restricted_v4".to_string()].into());
    assert_eq!(nft_sets_of(blocked), ["blocked_v4".to_string()].into());
    assert_eq!(nft_sets_of(gated), ["connect_pending_v4".to_string()].into());

    let before: BTreeMap<&str, u64> = [full, restricted, blocked, gated].iter().map(|ip| (*ip, l.far(ip))).collect();
    expect_all(vec![
        // FULL: anything.
        ping(sa.client(), full, "198.51.100.2", true),
        tcp(sa.client(), full, "198.51.100.2", 8080, true),
        tcp(sa.client(), full, "198.51.100.53", 9090, true),
        // RESTRICTED: the walled garden only, by address, protocol and port.
        tcp(sb.client(), restricted, "198.51.100.53", 8080, true),
        tcp(sb.client(), restricted, "198.51.100.53", 9090, false),
        ping(sb.client(), restricted, "198.51.100.53", false),
        ping(sb.client(), restricted, "198.51.100.54", true),
        tcp(sb.client(), restricted, "198.51.100.54", 9090, true),
        tcp(sb.client(), restricted, "198.51.100.2", 8080, false),
        ping(sb.client(), restricted, "198.51.100.2", false),
        // BLOCKED and GATED: nothing, not even the garden.
        ping(sc.client(), blocked, "198.51.100.2", false),
        tcp(sc.client(), blocked, "198.51.100.53", 8080, false),
        ping(sd.client(), gated, "198.51.100.54", false),
        tcp(sd.client(), gated, "198.51.100.53", 8080, false),
    ]);
    let after: BTreeMap<&str, u64> = [full, restricted, blocked, gated].iter().map(|ip| (*ip, l.far(ip))).collect();
    println!("far-side packets: {:?}", after.iter().map(|(k, v)| (k, v - before[k])).collect::<Vec<_>>());
    assert!(after[full] > before[full], "FULL reached the internet");
    assert!(after[restricted] > before[restricted], "RESTRICTED reached the garden");
    assert_eq!(after[blocked], before[blocked], "BLOCKED: nothing arrived");
    assert_eq!(after[gated], before[gated], "GATED: nothing arrived");
    assert_eq!(ns_counter(&l.inet, "ip", "probe", "outside-garden"), 0, "RESTRICTED never left the garden");
    assert_eq!(ns_counter(&l.inet, "ip", "probe", "wrong-port"), 0);

    // d's ip-up: the apply releases the gate; a blocks by the panel: cut at once.
    l.cli.ok(&["apply", "--connection-id", &d.to_string()]);
    l.cli.ok(&["connection", "set", &a.to_string(), "--block"]);
    let before_a = l.far(full);
    expect_all(vec![
        tcp(sd.client(), gated, "198.51.100.2", 8080, true),
        tcp(sa.client(), full, "198.51.100.2", 8080, false),
        ping(sa.client(), full, "198.51.100.54", false),
    ]);
    assert_eq!(l.far(full), before_a, "blocked: nothing more arrived");
    // And back: claim the unclaimed one; it leaves the garden.
    l.cli.ok(&["connection", "set", &b.to_string(), "--status", "CLAIMED"]);
    expect_all(vec![tcp(sb.client(), restricted, "198.51.100.2", 9090, true)]);
}

fn iperf_kbit(client: &NetNs, src: &str, reverse: bool, secs: u32) -> f64 {
    let secs = secs.to_string();
    let mut args = vec!["iperf3", "-c", "198.51.100.2", "-B", src, "-J", "-O", "1", "-t", &secs];
    if reverse {
        args.push("-R");
    }
    let v: Value = serde_json::from_str(&client.run(&args)).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("bits_per_second") / 1e3
}

#[test]
fn speed_set_through_the_cli_is_what_tcp_gets() {
    let ip = "100.64.0.2";
    let l = lab(&[ip], None);
    let a = add_connection(&l.pg, "alice", "CLAIMED", None, None, None);
    let s = l.session("ppp0", a, ip);
    l.cli.ok(&["apply", "--connection-id", &a.to_string()]);
    let _server = l.inet.spawn(&["iperf3", "-s", "-B", "198.51.100.2"]);
    l.inet.wait_listening(5201);
    let unshaped = iperf_kbit(s.client(), ip, true, 2);
    println!("unshaped download: {:.0} kbit/s", unshaped);

    let id = a.to_string();
    let mut failures = Vec::new();
    for (down, up) in [(2_000u32, 1_000u32), (10_000, 5_000), (40_000, 20_000)] {
        l.cli.ok(&["connection", "set", &id, "--down-kbit", &down.to_string(), "--up-kbit", &up.to_string()]);
        assert_eq!(tool_shaping("ppp0"), policy_core::kernel::Shaping { down_kbit: Some(down), up_kbit: Some(up) });
        let d = iperf_kbit(s.client(), ip, true, 4);
        let u = iperf_kbit(s.client(), ip, false, 4);
        for (dir, want, got) in [("down", down, d), ("up", up, u)] {
            let dev = (got - f64::from(want)) / f64::from(want) * 100.0;
            println!("{dir:>4}: `connection set --{dir}-kbit {want}` → TCP measured {got:>8.0} kbit/s ({dev:+.1}%)");
            if dev.abs() > 15.0 {
                failures.push(format!("{dir} at {want} kbit/s measured {got:.0} ({dev:+.1}%)"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Unlimited again.
    l.cli.ok(&["connection", "set", &id, "--down-kbit", "none", "--up-kbit", "none"]);
    let d = iperf_kbit(s.client(), ip, true, 2);
    println!("unlimited again: {d:.0} kbit/s");
    assert!(d > 100_000.0, "no shaping left: {d:.0} kbit/s");
}

/// The "MikroTik" next hop behind wg0, counting what arrives from each client.
fn mikrotik(clients: &[&str]) -> NetNs {
    let mt = NetNs::new("mt");
    veth("wg0", "eth0", Some(&mt));
    run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
    mt.run(&["ip", "addr", "add", "10.100.0.40/24", "dev", "eth0"]);
    mt.nft_load(&probe_ruleset(clients, None));
    mt
}

/// `ip -j route get DST from SRC iif DEV` as (table, gateway, dev).
fn ip_route_get(dst: &str, src: &str, iif: &str) -> (String, String, String) {
    let v = json(&["ip", "-j", "route", "get", dst, "from", src, "iif", iif]);
    let r = &v[0];
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("main").to_string();
    (s("table"), r.get("gateway").and_then(Value::as_str).unwrap_or("").to_string(), s("dev"))
}

#[test]
fn policy_routing_sends_sessions_to_the_next_hop() {
    let (a_ip, b_ip, c_ip) = ("100.64.0.2", "100.64.1.2", "100.64.0.3");
    let l = lab(&[a_ip, b_ip, c_ip], None);
    let mt = mikrotik(&[a_ip, b_ip, c_ip]);
    let a = add_connection(&l.pg, "alice", "CLAIMED", None, None, None);
    let b = add_connection(&l.pg, "bob", "CLAIMED", None, None, None);
    let c = add_connection(&l.pg, "carol", "CLAIMED", None, None, None);
    let sa = l.session("ppp0", a, a_ip);
    let sb = l.session("ppp1", b, b_ip);
    let sc = l.session("ppp2", c, c_ip);
    l.cli.ok(&["reconcile"]);
    let dst = "203.0.113.10";
    let counts = |ip: &str| (l.far(ip), ns_counter(&mt, "ip", "probe", &format!("from-{ip}")));
    // Sends 20 datagrams from a client; returns (arrived at the default gateway, at the next hop).
    let send = |s: &FakeSession| {
        let (f0, m0) = counts(&s.ip());
        udp_burst(s.client(), &s.ip(), dst, 9, 20);
        sleep(Duration::from_millis(200));
        let (f1, m1) = counts(&s.ip());
        (f1 - f0, m1 - m0)
    };
    assert_eq!(send(&sa), (20, 0), "no policy routing yet: the default path");

    // By connection.
    l.cli.ok(&[
        "pbr",
        "add",
        "ktn",
        "--connection-id",
        &a.to_string(),
        "--table",
        "ktn",
        "--via",
        "10.100.0.40",
        "--dev",
        "wg0",
        "--priority",
        "100",
    ]);
    // By source subnet.
    l.cli.ok(&[
        "pbr",
        "add",
        "branch",
        "--from",
        "100.64.1.0/24",
        "--table",
        "200",
        "--via",
        "10.100.0.40",
        "--dev",
        "wg0",
        "--priority",
        "110",
    ]);
    let (via_default, via_mt) = send(&sa);
    println!("alice (pbr by connection): {via_default} at the default gateway, {via_mt} at the next hop");
    assert_eq!((via_default, via_mt), (0, 20));
    assert_eq!(send(&sb), (0, 20), "bob (pbr by subnet) goes to the next hop");
    assert_eq!(send(&sc), (20, 0), "carol has no policy routing");
    let rules = tool_rules();
    println!("rules: {rules:?}");
    assert_eq!(rules.len(), 2);

    // `pbr check` answers what the kernel's own lookup says.
    for (s, table) in [(&sa, "100"), (&sb, "200"), (&sc, "main")] {
        let j = l.cli.ok(&["--json", "pbr", "check", &s.ip(), "--dst", dst]).json();
        let kernel = ip_route_get(dst, &s.ip(), &s.ifname);
        println!("pbr check {}: {j}  ip route get: {kernel:?}", s.ip());
        let ours = (
            if j["table"] == 254 { "main".to_string() } else { j["table"].to_string() },
            j["gateway"].as_str().unwrap_or("").to_string(),
            j["dev"].as_str().unwrap_or("").to_string(),
        );
        assert_eq!(ours, kernel, "pbr check agrees with ip route get");
        assert_eq!(ours.0, table);
        assert_eq!(j["iif"], Value::String(s.ifname.clone()), "the session's interface by default");
    }
    let text = l.cli.ok(&["pbr", "check", a_ip, "--dst", dst]).stdout;
    assert!(text.contains("via 10.100.0.40 dev wg0 table 100"), "{text}");

    // A "restart": rules and the tables' routes lost; reconcile restores them.
    for r in tool_rules() {
        run(&[
            "ip",
            "rule",
            "del",
            "from",
            &r.from.to_string(),
            "lookup",
            &r.table.to_string(),
            "priority",
            &r.priority.to_string(),
        ]);
    }
    run(&["ip", "route", "flush", "table", "100"]);
    assert_eq!(send(&sa), (20, 0), "without the rules: the default path");
    l.cli.ok(&["reconcile"]);
    assert_eq!(tool_rules().len(), 2);
    assert_eq!(send(&sa), (0, 20), "restored");
    assert_eq!(send(&sb), (0, 20));

    // Removing the rules: the default path again, and nothing of them left.
    l.cli.ok(&["pbr", "del", "ktn"]);
    assert_eq!(send(&sa), (20, 0), "after pbr del: the default path");
    assert!(tool_rules().iter().all(|r| r.table != 100));
    assert!(
        tool_routes().iter().all(|r| r.table != 100),
        "table 100's default route went with its last rule: {:?}",
        tool_routes()
    );
    l.cli.ok(&["pbr", "del", "branch"]);
    assert_eq!(send(&sb), (20, 0));
    assert!(tool_rules().is_empty());
    assert!(tool_routes().is_empty(), "{:?}", tool_routes());
    let out = l.cli.ok(&["pbr", "del", "branch"]);
    assert!(out.stdout.contains("was not there"), "{}", out.stdout);
    drop(mt);
}

//! Kernel tests of the routes, rules and sysctl backends, each in its own network namespace;
//! assertions read the kernel back with `ip -j` and /proc via `cat`.

use std::collections::BTreeSet;

use policy_core::kernel::{
    OwnedRoute, OwnedRule, RouteQuery, Routes, RoutesNetlink, Rules, RulesNetlink, Sysctl, SysctlProc,
};
use pppgate_testkit::*;

fn veth(name: &str, addr: &str) {
    let peer = format!("{name}p");
    run(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
    run(&["ip", "link", "set", name, "up"]);
    run(&["ip", "link", "set", &peer, "up"]);
    run(&["ip", "addr", "add", addr, "dev", name]);
}

fn all_routes_text() -> String {
    run(&["ip", "route", "show", "table", "all"])
}

fn route(dst: &str, gw: Option<&str>, dev: &str, table: u32, metric: Option<u32>) -> OwnedRoute {
    OwnedRoute { dst: dst.parse().unwrap(), gateway: gw.map(|g| g.parse().unwrap()), dev: dev.into(), table, metric }
}

/// A session-scope read returns exactly what the query names — the interfaces' routes in every
/// table, wanted destinations through any device, the named tables' default routes — and nothing
/// else of ours or anybody's; read back against `ip route`.
#[test]
fn scoped_route_reads_return_only_what_was_asked() {
    private_netns();
    for (i, dev) in ["ppp0", "ppp1", "ppp2", "wg0"].iter().enumerate() {
        veth(dev, &format!("10.{i}.0.1/24"));
    }
    run(&["ip", "route", "add", "192.168.0.0/24", "dev", "ppp0", "proto", "static"]);
    let mut routes = RoutesNetlink::new().unwrap();
    let mine =
        [route("192.168.50.0/24", None, "ppp0", 254, None), route("192.168.51.0/24", None, "ppp0", 100, Some(7))];
    let wanted_elsewhere = route("192.168.60.0/24", None, "ppp1", 254, None);
    let table_default = route("0.0.0.0/0", Some("10.3.0.2"), "wg0", 100, None);
    let others = [
        route("192.168.61.0/24", None, "ppp1", 254, None),
        route("192.168.70.0/24", None, "ppp2", 100, None),
        route("0.0.0.0/0", Some("10.3.0.3"), "wg0", 200, None),
    ];
    for r in mine.iter().chain([&wanted_elsewhere, &table_default]).chain(others.iter()) {
        routes.add(r).unwrap();
    }
    assert_eq!(tool_routes().len(), 7);
    let q = RouteQuery {
        ifnames: BTreeSet::from(["ppp0".to_string(), "ppp9".to_string()]),
        dsts: BTreeSet::from([("192.168.60.0/24".parse().unwrap(), 254), ("192.168.99.0/24".parse().unwrap(), 254)]),
        table_defaults: BTreeSet::from([100, 300]),
    };
    let got: BTreeSet<OwnedRoute> = routes.read_scoped(&q).unwrap().into_iter().collect();
    let want: BTreeSet<OwnedRoute> = mine.iter().cloned().chain([wanted_elsewhere, table_default]).collect();
    assert_eq!(got, want);
    // The default implementation (read everything, filter) agrees.
    let all: BTreeSet<OwnedRoute> = routes.read().unwrap().into_iter().filter(|r| q.wants(r)).collect();
    assert_eq!(all, want);
    assert!(RouteQuery::default().ifnames.is_empty() && routes.read_scoped(&RouteQuery::default()).unwrap().is_empty());
}

/// A session-scope add (`add_unless_held`): a free key is added; a key pppgate holds through
/// another interface stays there and is reported, in any table and with the same metric only; a
/// foreign route with the key is replaced as `add` replaces it; our own route on the same
/// interface is replaced in place. Read back with `ip route`.
#[test]
fn adding_unless_held_leaves_another_interfaces_route_and_replaces_a_foreign_one() {
    private_netns();
    veth("ppp0", "10.0.0.1/24");
    veth("ppp1", "10.1.0.1/24");
    let mut routes = RoutesNetlink::new().unwrap();
    let held = route("192.168.60.0/24", None, "ppp0", 254, None);
    let held_100 = route("192.168.61.0/24", None, "ppp0", 100, Some(5));
    routes.add(&held).unwrap();
    routes.add(&held_100).unwrap();
    run(&["ip", "route", "add", "192.168.70.0/24", "dev", "ppp0", "proto", "static"]);
    // Free: added.
    let free = route("192.168.50.0/24", None, "ppp1", 254, None);
    assert_eq!(routes.add_unless_held(&free).unwrap(), None);
    // Held by ppp0: left there, reported.
    assert_eq!(routes.add_unless_held(&route("192.168.60.0/24", None, "ppp1", 254, None)).unwrap(), Some(held.clone()));
    assert_eq!(
        routes.add_unless_held(&route("192.168.61.0/24", None, "ppp1", 100, Some(5))).unwrap(),
        Some(held_100.clone())
    );
    // Another metric is another key: added beside it.
    let other_metric = route("192.168.61.0/24", None, "ppp1", 100, Some(6));
    assert_eq!(routes.add_unless_held(&other_metric).unwrap(), None);
    // A foreign route (protocol static) with the key: replaced, as `add` does.
    let over_foreign = route("192.168.70.0/24", None, "ppp1", 254, None);
    assert_eq!(routes.add_unless_held(&over_foreign).unwrap(), None);
    // Our own route on the same interface: replaced in place (a new gateway).
    veth("wg0", "10.3.0.1/24");
    routes.add(&route("10.9.0.0/24", Some("10.3.0.2"), "wg0", 254, None)).unwrap();
    let moved = route("10.9.0.0/24", Some("10.3.0.3"), "wg0", 254, None);
    assert_eq!(routes.add_unless_held(&moved).unwrap(), None);
    let want: BTreeSet<OwnedRoute> = [held, held_100, free, other_metric, over_foreign, moved].into_iter().collect();
    assert_eq!(tool_routes(), want, "{}", all_routes_text());
    assert!(!all_routes_text().contains("proto static"), "{}", all_routes_text());
}

/// With many interfaces the rp_filter values come from one RTM_GETNETCONF dump named through the
/// address dump: the same answers and the same writes as the per-file path, read back from /proc.
#[test]
fn sysctl_of_many_interfaces_from_netconf() {
    private_netns();
    let mut script = String::new();
    for i in 0..40 {
        script.push_str(&format!(
            "tuntap add dev ppp{i} mode tun\naddr add 100.64.0.1 peer 100.65.0.{}/32 dev ppp{i}\nlink set ppp{i} up\n",
            i + 2
        ));
    }
    ip_batch(&script);
    // ppp40 exists without an IPv4 address: the dump cannot name it, its file is read instead.
    run(&["ip", "tuntap", "add", "dev", "ppp40", "mode", "tun"]);
    run(&["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]);
    for i in (0..41).filter(|i| i % 3 == 0) {
        run(&["sysctl", "-q", "-w", &format!("net.ipv4.conf.ppp{i}.rp_filter=1")]);
    }
    run(&["sysctl", "-q", "-w", "net.ipv4.conf.ppp1.rp_filter=2"]);
    let mut names: Vec<String> = (0..41).map(|i| format!("ppp{i}")).collect();
    names.push("ppp99".into());
    let mut s = SysctlProc::new();
    let r = s.read(&names).unwrap();
    let strict: Vec<String> = (0..41).filter(|i| i % 3 == 0).map(|i| format!("ppp{i}")).collect();
    let mut got = r.strict_interfaces();
    got.sort();
    let mut want = strict.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(r.rp_filter.get("ppp1"), Some(&2));
    assert_eq!(r.rp_filter.len(), 41, "every existing interface, not the missing one");
    s.ensure(&names).unwrap();
    for i in 0..41 {
        let v = cat(&format!("/proc/sys/net/ipv4/conf/ppp{i}/rp_filter"));
        let want = if i % 3 == 0 || i == 1 { "2" } else { "0" };
        assert_eq!(v, want, "ppp{i}");
    }
    assert!(s.read(&names).unwrap().ok());
}

#[test]
fn routes_add_read_delete() {
    private_netns();
    veth("ppp0", "10.0.0.1/24");
    veth("ppp1", "10.1.0.1/24");
    // Foreign routes, including ones with the same destination as ours.
    run(&["ip", "route", "add", "192.168.50.0/24", "dev", "ppp1", "table", "100", "proto", "static"]);
    run(&["ip", "route", "add", "198.51.100.0/24", "via", "10.1.0.2", "dev", "ppp1"]);

    let mut routes = RoutesNetlink::new().unwrap();
    assert!(routes.read().unwrap().is_empty(), "no route of ours yet");
    let ours = vec![
        route("192.168.50.0/24", None, "ppp0", 254, None),
        route("192.168.60.0/24", Some("10.0.0.2"), "ppp0", 100, Some(10)),
        route("0.0.0.0/0", Some("10.1.0.2"), "ppp1", 1000, None),
        route("203.0.113.7/32", None, "ppp1", 70000, Some(5)),
    ];
    for r in &ours {
        routes.add(r).unwrap();
    }
    let want: BTreeSet<OwnedRoute> = ours.iter().cloned().collect();
    assert_eq!(tool_routes(), want);
    assert_eq!(routes.read().unwrap().into_iter().collect::<BTreeSet<_>>(), want);

    // Idempotent; a changed gateway replaces the route with the same key.
    for r in &ours {
        routes.add(r).unwrap();
    }
    assert_eq!(tool_routes(), want);
    routes.add(&route("192.168.60.0/24", Some("10.0.0.3"), "ppp0", 100, Some(10))).unwrap();
    let t = tool_routes();
    assert_eq!(t.len(), 4);
    assert!(t.contains(&route("192.168.60.0/24", Some("10.0.0.3"), "ppp0", 100, Some(10))));

    // Errors: a missing device, host bits.
    assert!(routes.add(&route("192.168.70.0/24", None, "ppp9", 254, None)).is_err());
    assert!(routes.add(&route("192.168.70.1/24", None, "ppp0", 254, None)).is_err());

    // Delete, twice; foreign routes stay.
    for r in routes.read().unwrap() {
        routes.del(&r).unwrap();
        routes.del(&r).unwrap();
    }
    assert!(tool_routes().is_empty());
    let text = all_routes_text();
    assert!(text.contains("192.168.50.0/24 dev ppp1 table 100 proto static"), "{text}");
    assert!(text.contains("198.51.100.0/24 via 10.1.0.2 dev ppp1"), "{text}");
    // A foreign route with our key is not deleted by our del (protocol must match).
    run(&["ip", "route", "add", "192.168.80.0/24", "dev", "ppp0"]);
    routes.del(&route("192.168.80.0/24", None, "ppp0", 254, None)).unwrap();
    assert!(all_routes_text().contains("192.168.80.0/24 dev ppp0"));

    // A route whose device vanished is gone; deleting it is fine.
    let r = route("192.168.90.0/24", None, "ppp1", 254, None);
    routes.add(&r).unwrap();
    run(&["ip", "link", "del", "ppp1"]);
    routes.del(&r).unwrap();
    assert!(tool_routes().is_empty());
}

#[test]
fn rules_add_read_delete() {
    private_netns();
    run(&["ip", "rule", "add", "from", "100.64.0.2", "lookup", "100", "priority", "1000"]);
    let before = run(&["ip", "rule", "show"]);
    let mut rules = RulesNetlink::new().unwrap();
    assert!(rules.read().unwrap().is_empty());
    let ours = vec![
        OwnedRule { from: "100.64.0.2/32".parse().unwrap(), table: 100, priority: 1000 },
        OwnedRule { from: "100.64.1.0/24".parse().unwrap(), table: 1000, priority: 1001 },
        OwnedRule { from: "0.0.0.0/0".parse().unwrap(), table: 200, priority: 30000 },
    ];
    for r in &ours {
        rules.add(r).unwrap();
        rules.add(r).unwrap();
    }
    let want: BTreeSet<OwnedRule> = ours.iter().cloned().collect();
    assert_eq!(tool_rules(), want, "each rule once");
    assert_eq!(rules.read().unwrap().into_iter().collect::<BTreeSet<_>>(), want);
    for r in &ours {
        rules.del(r).unwrap();
        rules.del(r).unwrap();
    }
    assert!(tool_rules().is_empty());
    assert_eq!(run(&["ip", "rule", "show"]), before, "the foreign rule with the same key stays");
}

fn cat(path: &str) -> String {
    run(&["cat", path]).trim().to_string()
}

#[test]
fn sysctl_in_a_namespace() {
    private_netns();
    veth("ppp0", "10.0.0.1/24");
    veth("ppp1", "10.1.0.1/24");
    run(&[
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=0",
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=0",
    ]);
    run(&["sysctl", "-q", "-w", "net.ipv4.conf.ppp0.rp_filter=1", "net.ipv4.conf.ppp1.rp_filter=0"]);
    let names = vec!["ppp0".to_string(), "ppp1".to_string(), "ppp7".to_string()];
    let mut s = SysctlProc::new();
    let r = s.read(&names).unwrap();
    assert!(!r.ok());
    assert!(!r.ip_forward);
    assert_eq!(r.rp_filter_all, 1);
    assert_eq!(r.strict_interfaces(), vec!["ppp0", "ppp1"], "ppp1 is strict through all=1");
    s.ensure(&names).unwrap();
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), "1");
    assert_eq!(cat("/proc/sys/net/ipv4/conf/all/rp_filter"), "2");
    assert_eq!(cat("/proc/sys/net/ipv4/conf/default/rp_filter"), "0", "0 stays 0");
    assert_eq!(cat("/proc/sys/net/ipv4/conf/ppp0/rp_filter"), "2");
    assert_eq!(cat("/proc/sys/net/ipv4/conf/ppp1/rp_filter"), "0", "0 stays 0");
    let r = s.read(&names).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.rp_filter.get("ppp1"), Some(&2));
    assert!(!r.rp_filter.contains_key("ppp7"));
    s.ensure(&names).unwrap();
    assert_eq!(cat("/proc/sys/net/ipv4/conf/all/rp_filter"), "2");
}

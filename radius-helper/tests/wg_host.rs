//! WireGuard on the build machine (its kernel has no WireGuard module): the server interface is
//! Debian's wireguard-go in a namespace, driven by `pppgate wg reconcile` through the UAPI socket;
//! two tenants × two routers are Linux namespaces configured from the generated wg-quick configs
//! (`wg-quick strip` + `wg setconf`, tools we did not write). Handshakes happen, `wg status
//! --json` matches `wg show dump`, and a peer removed out of band comes back with reconcile.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pppgate_testkit::{wait_until, Cli, DbEnv, NetNs, WgSection};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

/// `PPPGATE_WG_KERNEL=1`: kernel WireGuard instead of wireguard-go, for the server (pppgate's
/// generic netlink backend) and the routers (`ip link add … type wireguard`). The build
/// machines' kernel has no WireGuard; the lab scenario `wireguard` (tests/lab_wireguard.rs) runs
/// this test binary inside the VM, whose Debian kernel has it.
fn kernel_mode() -> bool {
    std::env::var("PPPGATE_WG_KERNEL").is_ok_and(|v| v == "1")
}

fn backend() -> &'static str {
    if kernel_mode() {
        "kernel"
    } else {
        "userspace"
    }
}
const SERVER_IP: &str = "198.18.0.1";

fn wg_config(env: &DbEnv, ifname: &str) -> PathBuf {
    let endpoint = format!("{SERVER_IP}:51820");
    let wg = WgSection { interface: ifname, endpoint: &endpoint, backend: Some(backend()), ..Default::default() };
    env.env.add_wireguard(&env.config_path("lns-a", "192.0.2.1"), &wg)
}

/// Removes the UAPI socket files of our wireguard-go instances (namespace teardown SIGKILLs them,
/// which leaves the files in /var/run/wireguard).
struct Sockets(Vec<String>);

impl Drop for Sockets {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = fs::remove_file(format!("/var/run/wireguard/{n}.sock"));
        }
    }
}

struct Router {
    id: u32,
    ns: NetNs,
    ifname: String,
    address: String,
    public_key: String,
}

/// `wg show IF dump` peers: public key → (latest handshake, rx, tx, allowed ips).
fn dump(ns: &NetNs, ifname: &str) -> BTreeMap<String, (i64, u64, u64, String)> {
    let text = ns.run(&["wg", "show", ifname, "dump"]);
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), (f[4].parse().unwrap(), f[5].parse().unwrap(), f[6].parse().unwrap(), f[3].to_string()))
        })
        .collect()
}

fn ping(ns: &NetNs, dst: &str) -> bool {
    ns.output(&["ping", "-c", "1", "-W", "2", dst]).status.success()
}

fn load_router(r: &Router, conf: &str, dir: &Path) {
    let path = dir.join(format!("{}.conf", r.ifname));
    fs::write(&path, conf).unwrap();
    let stripped = pppgate_testkit::run(&["wg-quick", "strip", path.to_str().unwrap()]);
    let sp = dir.join(format!("{}.stripped", r.ifname));
    fs::write(&sp, stripped).unwrap();
    if kernel_mode() {
        r.ns.run(&["ip", "link", "add", &r.ifname, "type", "wireguard"]);
    } else {
        r.ns.run(&["wireguard-go", &r.ifname]);
        assert!(
            wait_until(Duration::from_secs(5), || Path::new(&format!("/var/run/wireguard/{}.sock", r.ifname)).exists())
        );
    }
    r.ns.run(&["wg", "setconf", &r.ifname, sp.to_str().unwrap()]);
    let addr = conf.lines().find_map(|l| l.strip_prefix("Address = ")).unwrap();
    r.ns.run(&["ip", "address", "add", addr, "dev", &r.ifname]);
    r.ns.run(&["ip", "link", "set", &r.ifname, "up"]);
    // As wg-quick does: a route into the tunnel for every allowed network the address does not
    // already cover (the tenant subnet is the address's own prefix).
    let allowed = conf.lines().find_map(|l| l.strip_prefix("AllowedIPs = ")).unwrap();
    for n in allowed.split(',').map(str::trim).skip(1) {
        r.ns.run(&["ip", "route", "replace", n, "dev", &r.ifname]);
    }
}

/// Adds router `i` of `tenant` with its underlay (a veth from the server namespace).
fn add_router(c: &Cli, srv: &NetNs, tag: u32, i: u32, tenant: u32) -> Router {
    let ns = NetNs::new(&format!("wgr{i}"));
    let (a, b) = (format!("wu{tag}{i}"), format!("wd{tag}{i}"));
    srv.run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns.name]);
    srv.run(&["ip", "address", "add", &format!("172.31.{i}.1/24"), "dev", &a]);
    srv.run(&["ip", "link", "set", &a, "up"]);
    ns.run(&["ip", "address", "add", &format!("172.31.{i}.2/24"), "dev", &b]);
    ns.run(&["ip", "link", "set", &b, "up"]);
    ns.run(&["ip", "route", "add", &format!("{SERVER_IP}/32"), "via", &format!("172.31.{i}.1")]);
    let j = c
        .run(&[
            "--json",
            "wg",
            "router",
            "add",
            "--tenant",
            &tenant.to_string(),
            "--router",
            &i.to_string(),
            "--keepalive",
            "0",
        ])
        .ok();
    Router {
        id: i,
        ns,
        ifname: format!("wgr{tag}{i}"),
        address: j["router"]["address"].as_str().unwrap().to_string(),
        public_key: j["router"]["public_key"].as_str().unwrap().to_string(),
    }
}

#[test]
fn userspace_server_two_tenants_two_routers_each() {
    let env = DbEnv::new();
    let tag = std::process::id() % 10000;
    let sifname = format!("wgs{tag}");
    let cfg = wg_config(&env, &sifname);
    let _sockets = Sockets(std::iter::once(sifname.clone()).chain((1..=4).map(|i| format!("wgr{tag}{i}"))).collect());
    let srv = NetNs::new("wgsrv");
    srv.run(&["ip", "address", "add", &format!("{SERVER_IP}/32"), "dev", "lo"]);
    let c = Cli { bin: BIN.into(), config: cfg.clone(), env: Vec::new(), netns: Some(srv.name.clone()) };
    c.ok(&["wg", "init"]);

    let routers: Vec<Router> =
        [(1u32, 1u32), (2, 1), (3, 2), (4, 2)].into_iter().map(|(i, t)| add_router(&c, &srv, tag, i, t)).collect();

    // The server interface from SQL: wireguard-go started, 4 peers, the two gateways.
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["backend"], backend());
    assert_eq!(rep["reconcile"]["created_interface"], true);
    assert_eq!(rep["reconcile"]["peers"], 4);
    let addrs = srv.run(&["ip", "-4", "-o", "address", "show", "dev", &sifname]);
    assert!(addrs.contains("10.100.0.1/16") && addrs.contains("10.101.0.1/16"), "{addrs}");
    // Steady: a second run changes nothing.
    let again = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(
        (again["reconcile"]["peers_set"].as_u64(), again["reconcile"]["peers_removed"].as_u64()),
        (Some(0), Some(0))
    );

    for r in &routers {
        let conf = c.ok(&["wg", "router", "config", &r.id.to_string(), "--format", "wg-quick"]).stdout;
        load_router(r, &conf, env.dir());
    }
    // Handshakes: each router reaches its tenant's gateway through the tunnel.
    for r in &routers {
        let gw = if r.address.starts_with("10.100.") { "10.100.0.1" } else { "10.101.0.1" };
        assert!(ping(&r.ns, gw), "router {} cannot reach {gw}", r.id);
    }
    let d = dump(&srv, &sifname);
    for r in &routers {
        let (hs, rx, tx, allowed) = &d[&r.public_key];
        assert!(*hs > 0 && *rx > 0 && *tx > 0, "router {}: {:?}", r.id, d[&r.public_key]);
        assert_eq!(allowed, &format!("{}/32", r.address));
    }
    // The concentrator reaches every router (management).
    for r in &routers {
        assert!(ping(&srv, &r.address), "server cannot reach router {}", r.id);
    }

    // wg status --json against wg show dump, read right after (no keepalives: figures stand still).
    let st = c.run(&["--json", "wg", "status"]).ok();
    let d = dump(&srv, &sifname);
    let now: i64 = st["now"].as_i64().unwrap();
    assert_eq!(st["routers_up"], 4);
    for r in st["routers"].as_array().unwrap() {
        let pk = r["public_key"].as_str().unwrap();
        let (hs, rx, tx, _) = d[pk];
        assert_eq!(r["status"], "up");
        assert_eq!(r["rx_bytes"].as_u64(), Some(rx), "{r}");
        assert_eq!(r["tx_bytes"].as_u64(), Some(tx), "{r}");
        let age = r["handshake_age_s"].as_i64().unwrap();
        assert!((age - (now - hs)).abs() <= 2, "handshake age {age} vs dump {hs} at {now}");
        assert!(r["endpoint"].as_str().unwrap().starts_with("172.31."), "{r}");
    }
    let sql: String = env.db.psql("SELECT string_agg(status, ',' ORDER BY router_id) FROM wg_routers");
    assert_eq!(sql, "up,up,up,up");

    // Out of band: a peer removed behind pppgate's back comes back with reconcile.
    let victim = &routers[2];
    srv.run(&["wg", "set", &sifname, "peer", &victim.public_key, "remove"]);
    assert!(!dump(&srv, &sifname).contains_key(&victim.public_key));
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["peers_set"], 1);
    let d = dump(&srv, &sifname);
    assert_eq!(d[&victim.public_key].3, format!("{}/32", victim.address));
    // The concentrator lost the session and the router's endpoint with the peer; the router
    // keeps sending on its old session until WireGuard gives up on it (~15 s without answers) and
    // handshakes anew: the tunnel is back within that, driven by the router's own traffic.
    assert!(
        wait_until(Duration::from_secs(40), || ping(&victim.ns, "10.101.0.1")),
        "router 3 does not come back after reconcile restored its peer"
    );
    assert!(ping(&srv, &victim.address), "the concentrator reaches router 3 again");
    // A stray peer is removed; a deleted router's peer goes with --apply.
    srv.run(&[
        "wg",
        "set",
        &sifname,
        "peer",
        "2CoB8gm8iQ2+bxBEy1bFqjm5Mx6V3PHFIwGbY6WVAWE=",
        "allowed-ips",
        "10.250.0.9/32",
    ]);
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["peers_removed"], 1);
    c.ok(&["wg", "router", "del", "4", "--apply"]);
    assert!(!dump(&srv, &sifname).contains_key(&routers[3].public_key));
    let _: Value = c.run(&["--json", "wg", "status"]).ok();
    // Namespaces (and the wireguard-go processes in them) go first, then the socket files.
    drop(routers);
    drop(srv);
}

/// ICMP echo requests this namespace received so far (`Icmp: InEchos` of /proc/net/snmp, which
/// is per network namespace): what reached the far side, counted there.
fn in_echos(ns: &NetNs) -> u64 {
    let snmp = ns.run(&["cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "InEchos").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Sends 3 echo requests from `from` to `dst` and returns how many arrived at `far`.
fn delivered(from: &NetNs, dst: &str, far: &NetNs) -> u64 {
    let before = in_echos(far);
    let _ = from.output(&["ping", "-c", "3", "-i", "0.2", "-W", "1", dst]);
    in_echos(far) - before
}

fn drops(srv: &NetNs) -> (u64, u64, u64) {
    let v = srv.json(&["nft", "-j", "list", "table", "inet", "pppgate_wg"]);
    let mut d = (0, 0, 0);
    for it in v["nftables"].as_array().unwrap() {
        let r = &it["rule"];
        let Some(c) = r["comment"].as_str() else { continue };
        let n = r["expr"].as_array().unwrap().iter().find_map(|e| e["counter"]["packets"].as_u64()).unwrap_or(0);
        match c {
            "cross_tenant" => d.0 = n,
            "into_tenant" => d.1 = n,
            "out_of_tenant" => d.2 = n,
            _ => {}
        }
    }
    d
}

/// R906, tenant isolation, with packets counted where they would arrive: routers of one tenant reach
/// each other (intra_tenant) and not those of another, even when a router sends into the tunnel
/// on purpose; PPP clients and other networks do not reach routers, the management network does;
/// tunnel addresses do not transit. Removing the table lets the cross-tenant ping through (the
/// test can fail) and reconcile puts it back.
#[test]
fn tenant_isolation_counted_at_the_far_side() {
    let env = DbEnv::new();
    let tag = std::process::id() % 10000 + 1;
    let sifname = format!("wgs{tag}");
    let cfg = wg_config(&env, &sifname);
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("{text}management_nets = [\"172.30.0.0/24\"]\n")).unwrap();
    let _sockets = Sockets(std::iter::once(sifname.clone()).chain((1..=3).map(|i| format!("wgr{tag}{i}"))).collect());
    let srv = NetNs::new("wgsrv");
    srv.run(&["ip", "address", "add", &format!("{SERVER_IP}/32"), "dev", "lo"]);
    srv.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let c = Cli { bin: BIN.into(), config: cfg.clone(), env: Vec::new(), netns: Some(srv.name.clone()) };
    c.ok(&["wg", "init"]);
    let routers: Vec<Router> =
        [(1u32, 1u32), (2, 1), (3, 2)].into_iter().map(|(i, t)| add_router(&c, &srv, tag, i, t)).collect();
    // A management host and a "client" network behind other interfaces of the concentrator.
    let side = |name: &str, i: u32| {
        let ns = NetNs::new(name);
        let (a, b) = (format!("wm{tag}{i}"), format!("wn{tag}{i}"));
        srv.run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &ns.name]);
        srv.run(&["ip", "address", "add", &format!("172.{i}.0.1/24"), "dev", &a]);
        srv.run(&["ip", "link", "set", &a, "up"]);
        ns.run(&["ip", "address", "add", &format!("172.{i}.0.2/24"), "dev", &b]);
        ns.run(&["ip", "link", "set", &b, "up"]);
        ns.run(&["ip", "route", "add", "default", "via", &format!("172.{i}.0.1")]);
        ns
    };
    let mgmt = side("mgmt", 30);
    let client = side("cl", 29);

    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["isolation_written"], true, "{rep}");
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["isolation_written"], false, "steady: {rep}");
    for r in &routers {
        let conf = c.ok(&["wg", "router", "config", &r.id.to_string(), "--format", "wg-quick"]).stdout;
        assert!(conf.contains("172.30.0.0/24"), "the management network goes into the tunnel: {conf}");
        load_router(r, &conf, env.dir());
        let gw = if r.address.starts_with("10.100.") { "10.100.0.1" } else { "10.101.0.1" };
        assert!(wait_until(Duration::from_secs(10), || ping(&r.ns, gw)), "router {} cannot reach {gw}", r.id);
    }
    let (r1, r2, r3) = (&routers[0], &routers[1], &routers[2]);
    // Routers 1 and 3 send and accept everything of 10/8 in the tunnel (RouterOS scripts found in
    // the wild use 0.0.0.0/0; a router's owner controls that side), router 1 the client network
    // too: only the concentrator stands between the tenants.
    let server_pub = srv.run(&["wg", "show", &sifname, "public-key"]);
    for (r, extra) in [(r1, ",172.29.0.0/24"), (r3, "")] {
        let allowed = format!("10.0.0.0/8,172.30.0.0/24{extra}");
        r.ns.run(&["wg", "set", &r.ifname, "peer", server_pub.trim(), "allowed-ips", &allowed]);
        r.ns.run(&["ip", "route", "replace", "10.0.0.0/8", "dev", &r.ifname]);
    }
    r1.ns.run(&["ip", "route", "replace", "172.29.0.0/24", "dev", &r1.ifname]);

    let mut figures = Vec::new();
    let mut check = |what: &str, got: u64, want: u64| {
        figures.push(format!("{what}: {got} of 3"));
        assert_eq!(got, want, "{what}");
    };
    check("same tenant, router 1 -> router 2", delivered(&r1.ns, &r2.address, &r2.ns), 3);
    let d0 = drops(&srv);
    check("cross tenant, router 1 -> router 3", delivered(&r1.ns, &r3.address, &r3.ns), 0);
    check("cross tenant, router 3 -> router 1", delivered(&r3.ns, &r1.address, &r1.ns), 0);
    let d1 = drops(&srv);
    assert!(d1.0 >= d0.0 + 3, "cross_tenant counted the router-1 packets: {d0:?} -> {d1:?}");
    check("client network -> router 1", delivered(&client, &r1.address, &r1.ns), 0);
    let d2 = drops(&srv);
    assert!(d2.1 >= d1.1 + 3, "into_tenant counted: {d1:?} -> {d2:?}");
    check("management -> router 3", delivered(&mgmt, &r3.address, &r3.ns), 3);
    assert!(ping(&mgmt, &r3.address), "management gets the answers");
    check("router 1 (tunnel address) -> client network", delivered(&r1.ns, "172.29.0.2", &client), 0);
    let d3 = drops(&srv);
    assert!(d3.2 >= d2.2 + 3, "out_of_tenant counted: {d2:?} -> {d3:?}");
    assert!(ping(&srv, &r1.address) && ping(&srv, &r3.address), "the concentrator reaches every router");

    // Without the table the same cross-tenant ping arrives: what the rules stop is real.
    srv.run(&["nft", "delete", "table", "inet", "pppgate_wg"]);
    check("cross tenant without the table", delivered(&r1.ns, &r3.address, &r3.ns), 3);
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["isolation_written"], true, "reconcile restores the table: {rep}");
    check("cross tenant after reconcile", delivered(&r1.ns, &r3.address, &r3.ns), 0);

    // intra_tenant = false: the same tenant's routers no longer reach each other.
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, text.replace("[wireguard]\n", "[wireguard]\nintra_tenant = false\n")).unwrap();
    let rep = c.run(&["--json", "wg", "reconcile"]).ok();
    assert_eq!(rep["reconcile"]["isolation_written"], true, "{rep}");
    check("same tenant, intra_tenant off", delivered(&r1.ns, &r2.address, &r2.ns), 0);
    eprintln!("tenant isolation (echo requests arrived at the far side):\n  {}", figures.join("\n  "));
    drop(routers);
    drop((mgmt, client, srv));
}

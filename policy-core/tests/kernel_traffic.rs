//! Real packets through the real backends. Topology, all created by the test:
//!
//! ```text
//!  client ns                     gateway ns (the test thread; our backends)        internet ns
//!  eth0 100.64.0.2..6/24  <──veth──>  ppp0 100.64.0.1/24   wan0 198.51.100.1/24  <──veth──>  eth0 198.51.100.2/24
//!                                                                                             .53 (garden tcp 8080, udp 53)
//!                                                                                             .54 (garden, any protocol)
//! ```
//!
//! Client addresses: .2 FULL, .3 RESTRICTED, .4 BLOCKED, .5 GATED (connect_pending), .6 in no set.
//! What passes is proven at the far side: an nft table in the internet namespace counts the
//! packets that arrive from each client address.

use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use policy_core::config::GardenEntry;
use policy_core::kernel::{Member, Netlink, Nft, NftSet, SetChange, Shaping, Sysctl, Tc};
use pppgate_testkit::*;
use serde_json::Value;

struct Topology {
    client: NetNs,
    inet: NetNs,
    _servers: Vec<Bg>,
}

fn topology() -> Topology {
    private_netns();
    let client = NetNs::new("cl");
    let inet = NetNs::new("in");
    run(&["ip", "link", "add", "ppp0", "type", "veth", "peer", "name", "eth0", "netns", &client.name]);
    run(&["ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", &inet.name]);
    run(&["ip", "addr", "add", "100.64.0.1/24", "dev", "ppp0"]);
    run(&["ip", "addr", "add", "198.51.100.1/24", "dev", "wan0"]);
    for d in ["ppp0", "wan0"] {
        no_gso(&[], d);
        run(&["ip", "link", "set", d, "up"]);
    }
    for i in 2..=6 {
        client.run(&["ip", "addr", "add", &format!("100.64.0.{i}/24"), "dev", "eth0"]);
    }
    for a in ["198.51.100.2/24", "198.51.100.53/24", "198.51.100.54/24"] {
        inet.run(&["ip", "addr", "add", a, "dev", "eth0"]);
    }
    for ns in [&client, &inet] {
        let pre = ["ip", "netns", "exec", ns.name.as_str()];
        no_gso(&pre, "eth0");
        ns.run(&["ip", "link", "set", "eth0", "up"]);
    }
    client.run(&["ip", "route", "add", "default", "via", "100.64.0.1"]);
    inet.run(&["ip", "route", "add", "100.64.0.0/24", "via", "198.51.100.1"]);

    // Far-side counters: packets arriving per client address, and per port for the garden host.
    let mut probe =
        String::from("table ip probe {\n chain input {\n  type filter hook input priority 0; policy accept;\n");
    for i in 2..=6 {
        probe.push_str(&format!("  ip saddr 100.64.0.{i} counter comment \"from{i}\"\n"));
    }
    probe.push_str(
        "  ip saddr 100.64.0.3 ip daddr != { 198.51.100.53, 198.51.100.54 } counter comment \"from3_outside_garden\"\n",
    );
    probe.push_str(
        "  ip saddr 100.64.0.3 tcp dport != 8080 ip daddr 198.51.100.53 counter comment \"from3_wrong_port\"\n",
    );
    probe.push_str(" }\n}\n");
    let path = std::env::temp_dir().join(format!("{}-probe.nft", inet.name));
    std::fs::write(&path, probe).unwrap();
    inet.run(&["nft", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);

    let servers = vec![
        inet.spawn(&["socat", "TCP-LISTEN:8080,fork,reuseaddr", "SYSTEM:echo ok"]),
        inet.spawn(&["socat", "TCP-LISTEN:9090,fork,reuseaddr", "SYSTEM:echo ok"]),
        // The client side may also be a server (for inbound tests).
        client.spawn(&["socat", "TCP-LISTEN:7070,fork,reuseaddr", "SYSTEM:echo ok"]),
    ];
    // Wait until the listeners are up.
    for _ in 0..100 {
        let l = inet.run(&["ss", "-ltn"]);
        let c = client.run(&["ss", "-ltn"]);
        if l.contains(":8080") && l.contains(":9090") && c.contains(":7070") {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    Topology { client, inet, _servers: servers }
}

fn garden() -> Vec<GardenEntry> {
    ["198.51.100.53/32:tcp:8080", "198.51.100.53/32:udp:53", "198.51.100.54/32"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// A client address on the gateway's `ppp0` (every client of this topology is behind it).
fn on_ppp0(ip: &str) -> Member {
    let idx = policy_core::kernel::links::ifindex("ppp0").unwrap().expect("ppp0 exists");
    Member::new(idx, ip.parse().unwrap())
}

fn far_counter(inet: &NetNs, comment: &str) -> u64 {
    ns_counter(inet, "ip", "probe", comment)
}

#[test]
fn policy_sets_decide_what_passes() {
    let t = topology();
    let mut k = Netlink::new().unwrap();
    k.sysctl.ensure(&["ppp0".to_string()]).unwrap();
    assert!(k.sysctl.read(&["ppp0".to_string()]).unwrap().ip_forward);

    // Before pppgate's table exists everything is forwarded (sanity check of the topology).
    expect_all(vec![tcp(&t.client, "100.64.0.6", "198.51.100.2", 8080, true)]);

    k.nft.ensure_base(&garden()).unwrap();
    k.nft
        .commit(&[
            SetChange::new(NftSet::Full, on_ppp0("100.64.0.2"), true),
            SetChange::new(NftSet::Restricted, on_ppp0("100.64.0.3"), true),
            SetChange::new(NftSet::Blocked, on_ppp0("100.64.0.4"), true),
            SetChange::new(NftSet::Pending, on_ppp0("100.64.0.5"), true),
        ])
        .unwrap();
    let base: Vec<u64> = (2..=6).map(|i| far_counter(&t.inet, &format!("from{i}"))).collect();

    let c = &t.client;
    expect_all(vec![
        // FULL: anything.
        ping(c, "100.64.0.2", "198.51.100.2", true),
        tcp(c, "100.64.0.2", "198.51.100.2", 8080, true),
        tcp(c, "100.64.0.2", "198.51.100.53", 9090, true),
        // RESTRICTED: the garden only, by address/protocol/port.
        tcp(c, "100.64.0.3", "198.51.100.53", 8080, true),
        tcp(c, "100.64.0.3", "198.51.100.53", 9090, false),
        ping(c, "100.64.0.3", "198.51.100.53", false),
        ping(c, "100.64.0.3", "198.51.100.54", true),
        tcp(c, "100.64.0.3", "198.51.100.54", 9090, true),
        tcp(c, "100.64.0.3", "198.51.100.2", 8080, false),
        ping(c, "100.64.0.3", "198.51.100.2", false),
        // BLOCKED, GATED, unknown: nothing.
        ping(c, "100.64.0.4", "198.51.100.2", false),
        tcp(c, "100.64.0.4", "198.51.100.53", 8080, false),
        ping(c, "100.64.0.5", "198.51.100.54", false),
        tcp(c, "100.64.0.5", "198.51.100.53", 8080, false),
        ping(c, "100.64.0.6", "198.51.100.54", false),
        tcp(c, "100.64.0.6", "198.51.100.53", 8080, false),
        // Inbound: to FULL yes; to RESTRICTED not even from the garden host (new flows); to
        // BLOCKED/GATED/unknown no.
        tcp(&t.inet, "198.51.100.2", "100.64.0.2", 7070, true),
        tcp(&t.inet, "198.51.100.53", "100.64.0.3", 7070, false),
        tcp(&t.inet, "198.51.100.2", "100.64.0.4", 7070, false),
        tcp(&t.inet, "198.51.100.2", "100.64.0.5", 7070, false),
        tcp(&t.inet, "198.51.100.2", "100.64.0.6", 7070, false),
    ]);

    // The far side saw traffic from FULL and RESTRICTED only, and RESTRICTED only at the garden.
    let after: Vec<u64> = (2..=6).map(|i| far_counter(&t.inet, &format!("from{i}"))).collect();
    println!(
        "far-side packets per client .2..=.6: {:?}",
        after.iter().zip(&base).map(|(a, b)| a - b).collect::<Vec<_>>()
    );
    assert!(after[0] > base[0], "FULL reached the internet");
    assert!(after[1] > base[1], "RESTRICTED reached the garden");
    assert_eq!(after[2], base[2], "BLOCKED: nothing arrived");
    assert_eq!(after[3], base[3], "GATED: nothing arrived");
    assert_eq!(after[4], base[4], "unknown: nothing arrived");
    assert_eq!(far_counter(&t.inet, "from3_outside_garden"), 0);
    assert_eq!(far_counter(&t.inet, "from3_wrong_port"), 0);
    // Our drop counters at the gateway agree.
    for c in [
        "blocked_from",
        "pending_from",
        "unpoliced_from",
        "restricted_from",
        "blocked_to",
        "pending_to",
        "unpoliced_to",
    ] {
        assert!(nft_counter(c) > 0, "{c} counted drops");
    }

    // Live state changes: BLOCKED → FULL and FULL → BLOCKED in one transaction.
    k.nft
        .commit(&[
            SetChange::new(NftSet::Blocked, on_ppp0("100.64.0.4"), false),
            SetChange::new(NftSet::Full, on_ppp0("100.64.0.4"), true),
            SetChange::new(NftSet::Full, on_ppp0("100.64.0.2"), false),
            SetChange::new(NftSet::Blocked, on_ppp0("100.64.0.2"), true),
        ])
        .unwrap();
    expect_all(vec![
        tcp(c, "100.64.0.4", "198.51.100.2", 8080, true),
        tcp(c, "100.64.0.2", "198.51.100.2", 8080, false),
    ]);
}

#[test]
fn established_flow_loses_access_when_demoted() {
    // A session that was FULL keeps a TCP connection open; after it becomes RESTRICTED the old
    // conntrack entry must not carry traffic either way.
    let t = topology();
    let mut k = Netlink::new().unwrap();
    k.sysctl.ensure(&[]).unwrap();
    k.nft.ensure_base(&garden()).unwrap();
    let m = on_ppp0("100.64.0.2");
    k.nft.commit(&[SetChange::new(NftSet::Full, m, true)]).unwrap();
    // A slow stream from the internet to the client over one connection.
    let _src =
        t.inet.spawn(&["socat", "TCP-LISTEN:6060,reuseaddr", "SYSTEM:while true; do echo tick; sleep 0.1; done"]);
    sleep(Duration::from_millis(300));
    let mut rx = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client.name,
            "socat",
            "-u",
            "TCP:198.51.100.2:6060,bind=100.64.0.2",
            "OPEN:/dev/null",
        ])
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(800));
    let before = nft_counter("restricted_to");
    k.nft.commit(&[SetChange::new(NftSet::Full, m, false), SetChange::new(NftSet::Restricted, m, true)]).unwrap();
    sleep(Duration::from_millis(800));
    let dropped = nft_counter("restricted_to") - before;
    println!("reply packets of the old flow dropped after demotion: {dropped}");
    assert!(dropped > 0, "the established non-garden flow was cut");
    let _ = rx.kill();
    let _ = rx.wait();
}

struct Measured {
    bits_per_second: f64,
}

fn iperf(t: &Topology, reverse: bool, secs: u32) -> Measured {
    let mut args = vec!["iperf3", "-c", "198.51.100.2", "-B", "100.64.0.2", "-J", "-O", "1"];
    let secs = secs.to_string();
    args.extend_from_slice(&["-t", &secs]);
    if reverse {
        args.push("-R");
    }
    let v: Value = serde_json::from_str(&t.client.run(&args)).unwrap();
    Measured { bits_per_second: v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() }
}

#[test]
fn shaped_tcp_measures_the_configured_rate() {
    let t = topology();
    let mut k = Netlink::new().unwrap();
    k.sysctl.ensure(&["ppp0".to_string()]).unwrap();
    k.nft.ensure_base(&garden()).unwrap();
    k.nft.commit(&[SetChange::new(NftSet::Full, on_ppp0("100.64.0.2"), true)]).unwrap();
    let _server = t.inet.spawn(&["iperf3", "-s", "-B", "198.51.100.2"]);
    for _ in 0..100 {
        if t.inet.run(&["ss", "-ltn"]).contains(":5201") {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    let unshaped = iperf(&t, true, 2);
    println!("unshaped download: {:.1} Mbit/s", unshaped.bits_per_second / 1e6);

    let mut failures = Vec::new();
    for (down, up) in [(1_000u32, 1_000u32), (10_000, 5_000), (100_000, 50_000)] {
        let s = Shaping { down_kbit: Some(down), up_kbit: Some(up) };
        let t0 = Instant::now();
        k.tc.set("ppp0", &s).unwrap();
        let took = t0.elapsed();
        assert_eq!(k.tc.read_one("ppp0").unwrap(), s);
        let d = iperf(&t, true, 4).bits_per_second / 1e3;
        let u = iperf(&t, false, 4).bits_per_second / 1e3;
        for (dir, want, got) in [("down", down, d), ("up", up, u)] {
            let dev = (got - f64::from(want)) / f64::from(want) * 100.0;
            println!("{dir:>4}: configured {want:>7} kbit/s, measured {got:>9.0} kbit/s ({dev:+.1}%)  [tc set took {took:?}]");
            if dev.abs() > 15.0 {
                failures.push(format!("{dir} at {want} kbit/s measured {got:.0} ({dev:+.1}%)"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A rate change during a transfer: the flow continues and speeds up.
    k.tc.set("ppp0", &Shaping { down_kbit: Some(4_000), up_kbit: None }).unwrap();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client.name,
            "iperf3",
            "-c",
            "198.51.100.2",
            "-B",
            "100.64.0.2",
            "-J",
            "-R",
            "-t",
            "6",
            "-i",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(3000));
    k.tc.set("ppp0", &Shaping { down_kbit: Some(16_000), up_kbit: None }).unwrap();
    let out = std::io::Read::bytes(child.stdout.take().unwrap()).map(|b| b.unwrap()).collect::<Vec<u8>>();
    child.wait().unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let rates: Vec<f64> = v["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap() / 1e6)
        .collect();
    println!("per-second Mbit/s across a 4 → 16 Mbit/s change at t=3 s: {rates:.1?}");
    assert!(rates.len() >= 6);
    assert!(rates[1] < 5.0 && rates[5] > 12.0, "the same flow sped up: {rates:?}");
    assert!(rates.iter().all(|r| *r > 1.0), "no stall: {rates:?}");
}

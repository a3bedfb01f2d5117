//! Connect-path kernel work, pppgate's backends against the same duties done with the tools
//! (the kernel half of ../shared/bench/shell-hook-baseline.sh: gate, move to FULL, HTB rate, a
//! route, ungate; then the ip-down half). Figures only; nothing is asserted.
//!
//! Needs root: it runs in a network namespace of its own.
//! `cargo run --release -p policy-core --example kernel_bench [iterations]`

use std::process::Command;
use std::time::{Duration, Instant};

use policy_core::kernel::{Member, Netlink, Nft, NftSet, OwnedRoute, Routes, SetChange, Shaping, Tc};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run tool");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!("median {:>8.0} µs  p90 {:>8.0} µs  (n={})", us(v[v.len() / 2]), us(v[v.len() * 9 / 10]), v.len())
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("kernel_bench needs root (unshare CLONE_NEWNET)");
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&["ip", "link", "add", "ppp0", "type", "veth", "peer", "name", "ppp0p"]);
    sh(&["ip", "link", "set", "ppp0", "up"]);
    sh(&["ip", "link", "set", "ppp0p", "up"]);
    // A second shaped session keeps the kernel's ingress static key enabled, as on a live box.
    sh(&["ip", "link", "add", "ppp1", "type", "veth", "peer", "name", "ppp1p"]);
    sh(&["ip", "link", "set", "ppp1", "up"]);

    let mut k = Netlink::new().expect("netlink");
    k.nft.ensure_base(&[]).expect("ensure_base");
    k.tc.set("ppp1", &Shaping { down_kbit: Some(1000), up_kbit: Some(1000) }).expect("tc");
    let ifindex = policy_core::kernel::links::ifindex("ppp0").expect("lookup").expect("ppp0 exists");
    let ip = Member::new(ifindex, "100.64.0.2".parse().unwrap());
    let route = OwnedRoute {
        dst: "192.168.50.0/24".parse().unwrap(),
        gateway: None,
        dev: "ppp0".into(),
        table: 254,
        metric: None,
    };

    for (label, up) in [("down only (as the shell hook)", None), ("down + up (IFB)", Some(2000))] {
        let (mut up_t, mut down_t, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let t0 = Instant::now();
            k.nft.commit(&[SetChange::new(NftSet::Pending, ip, true)]).unwrap();
            let _ = k.nft.sets_of(ip).unwrap();
            k.tc.set("ppp0", &Shaping { down_kbit: Some(8000), up_kbit: up }).unwrap();
            k.routes.add(&route).unwrap();
            k.nft
                .commit(&[SetChange::new(NftSet::Full, ip, true), SetChange::new(NftSet::Pending, ip, false)])
                .unwrap();
            let t1 = Instant::now();
            k.nft.commit(&[SetChange::new(NftSet::Full, ip, false)]).unwrap();
            k.tc.clear("ppp0").unwrap();
            k.routes.del(&route).unwrap();
            let t2 = Instant::now();
            up_t.push(t1 - t0);
            down_t.push(t2 - t1);
            total.push(t2 - t0);
        }
        println!("pppgate backends, {label}:");
        println!("  up   {}", stats(up_t));
        println!("  down {}", stats(down_t));
        println!("  both {}", stats(total));
    }

    let m = (n / 10).max(5);
    let mut total = Vec::new();
    for _ in 0..m {
        let t0 = Instant::now();
        sh(&["nft", "add", "element", "inet", "pppgate", "connect_pending_v4", "{ 100.64.0.2 }"]);
        sh(&["nft", "add", "element", "inet", "pppgate", "full_v4", "{ 100.64.0.2 }"]);
        sh(&["tc", "qdisc", "replace", "dev", "ppp0", "root", "handle", "1:", "htb", "default", "10"]);
        sh(&["tc", "class", "replace", "dev", "ppp0", "parent", "1:", "classid", "1:10", "htb", "rate", "8000kbit"]);
        sh(&["ip", "route", "replace", "192.168.50.0/24", "dev", "ppp0"]);
        sh(&["nft", "delete", "element", "inet", "pppgate", "connect_pending_v4", "{ 100.64.0.2 }"]);
        sh(&["nft", "delete", "element", "inet", "pppgate", "full_v4", "{ 100.64.0.2 }"]);
        sh(&["tc", "qdisc", "del", "dev", "ppp0", "root"]);
        sh(&["ip", "route", "del", "192.168.50.0/24", "dev", "ppp0"]);
        total.push(t0.elapsed());
    }
    println!("the same kernel duties with nft/tc/ip processes (no SQL, no lock):");
    println!("  both {}", stats(total));
}

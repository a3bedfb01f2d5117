//! Where a full kernel read goes on a box with many sessions: builds N TUN stand-ins named pppN
//! (download + upload shaping on each, a route on every tenth) in a network namespace of its
//! own, then times each reader and each piece of the tc read. Figures only, for profiling.
//!
//! Needs root. `cargo run --release -p policy-core --example scale_probe [N]`

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use policy_core::kernel::links::{self, LinkSnapshot};
use policy_core::kernel::netlink::{Family, MsgBuilder, Socket, NLM_F_DUMP};
use policy_core::kernel::{Netlink, Nft, OwnedRoute, Routes, Rules, Shaping, Sysctl, Tc};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("run tool");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn ip_batch(script: &str) {
    let mut c = Command::new("ip").args(["-batch", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success());
}

fn time<T>(label: &str, mut f: impl FnMut() -> T) -> T {
    let mut v = Vec::new();
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        out = Some(f());
        v.push(t.elapsed());
    }
    v.sort();
    println!("  {label:<48} {:>9.2} ms (median of 3)", v[1].as_secs_f64() * 1e3);
    out.unwrap()
}

fn dump_bytes(label: &str, req: impl Fn() -> MsgBuilder) {
    let mut s = Socket::open(Family::Route).unwrap();
    s.strict();
    let msgs = time(label, || s.dump("probe", req()).unwrap());
    let bytes: usize = msgs.iter().map(|(_, p)| p.len() + 16).sum();
    println!("  {:<48} {} messages, {:.1} MB", "", msgs.len(), bytes as f64 / 1e6);
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("needs root (unshare CLONE_NEWNET)");
    sh(&["ip", "link", "set", "lo", "up"]);
    let t = Instant::now();
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "tuntap add dev ppp{i} mode tun\naddr add 100.64.0.1 peer 100.{}.{}.{}/32 dev ppp{i}\nlink set ppp{i} up\n",
            65 + (i >> 16),
            (i >> 8) & 255,
            i & 255
        ));
    }
    ip_batch(&script);
    println!("{n} TUN devices in {:?}", t.elapsed());
    let mut k = Netlink::new().unwrap();
    k.nft.ensure_base(&[]).unwrap();
    let t = Instant::now();
    let mut per = Vec::new();
    for i in 0..n {
        let t1 = Instant::now();
        k.tc.set(&format!("ppp{i}"), &Shaping { down_kbit: Some(8000 + i as u32 % 10), up_kbit: Some(2000) }).unwrap();
        per.push(t1.elapsed());
        if i % 10 == 0 {
            k.routes
                .add(&OwnedRoute {
                    dst: format!("10.{}.{}.0/24", 100 + (i >> 8), i & 255).parse().unwrap(),
                    gateway: None,
                    dev: format!("ppp{i}"),
                    table: 254,
                    metric: None,
                })
                .unwrap();
        }
    }
    let last: Vec<Duration> = per[per.len().saturating_sub(50)..].to_vec();
    println!("shaping installed in {:?}; the last 50 tc.set (IFB create) median {:.2} ms", t.elapsed(), {
        let mut l = last.clone();
        l.sort();
        l[l.len() / 2].as_secs_f64() * 1e3
    });
    println!("readers at {n} sessions:");
    time("tc.read (all)", || k.tc.read().unwrap());
    time("routes.read (all ours)", || k.routes.read().unwrap());
    time("rules.read", || k.rules.read().unwrap());
    time("nft.read", || k.nft.read().unwrap());
    let names: Vec<String> = (0..n).map(|i| format!("ppp{i}")).collect();
    time("sysctl.read (per interface files)", || k.sysctl.read(&names).unwrap());
    time("LinkSnapshot::read (links+stats+addrs)", || LinkSnapshot::read().unwrap());
    time("LinkSnapshot::read_addresses", || LinkSnapshot::read_addresses().unwrap());
    time("tc.read_one(ppp7)", || k.tc.read_one("ppp7").unwrap());
    println!("pieces:");
    let ifi = || links::ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0);
    dump_bytes("link dump, no stats", || {
        MsgBuilder::new(links::RTM_GETLINK, NLM_F_DUMP).bytes(&ifi()).attr_u32(29, 1 << 3)
    });
    dump_bytes("link dump, no stats, kind ifb", || {
        MsgBuilder::new(links::RTM_GETLINK, NLM_F_DUMP)
            .bytes(&ifi())
            .attr_u32(29, 1 << 3)
            .nest_start(links::IFLA_LINKINFO)
            .attr_str(links::IFLA_INFO_KIND, "ifb")
            .nest_end()
    });
    dump_bytes("qdisc dump", || MsgBuilder::new(38, NLM_F_DUMP).bytes(&[0u8; 20]));
    dump_bytes("address dump", || {
        let mut ifa = [0u8; 8];
        ifa[0] = libc::AF_INET as u8;
        MsgBuilder::new(links::RTM_GETADDR, NLM_F_DUMP).bytes(&ifa)
    });
    dump_bytes("netconf dump (ipv4)", || {
        let mut ncm = [0u8; 4];
        ncm[0] = libc::AF_INET as u8;
        MsgBuilder::new(82, NLM_F_DUMP).bytes(&ncm)
    });
}

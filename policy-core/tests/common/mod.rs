//! Shared helpers of the kernel tests: private network namespaces, named namespaces for packet
//! topologies, and running the real tools (nft, tc, ip) to read the kernel back.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces). Without it they fail
//! loudly; they never skip.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Moves the calling test thread into a new, empty network namespace with `lo` up. Every socket
/// the test opens afterwards, and every tool it runs, lives in that namespace.
pub fn private_netns() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!(
            "kernel test needs root to create a network namespace (unshare(CLONE_NEWNET) failed: {e}); \
             run `cargo test` as root — these tests must not be skipped"
        );
    }
    run(&["ip", "link", "set", "lo", "up"]);
}

/// Runs a program and returns its stdout; panics with its stderr when it fails.
pub fn run(args: &[&str]) -> String {
    let out = output(args);
    if !out.status.success() {
        panic!(
            "{:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn output(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e} (is the tool installed?)", args))
}

/// Runs a program whose stdout is JSON.
pub fn json(args: &[&str]) -> Value {
    let out = run(args);
    if out.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{:?} printed no JSON ({e}): {out}", args))
}

/// A named network namespace (`ip netns add`), deleted on drop. Names are unique per process
/// and test, so tests run in parallel.
pub struct NetNs {
    pub name: String,
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("pgt{}-{}-{tag}", std::process::id(), NS_COUNTER.fetch_add(1, Ordering::SeqCst));
        let out = output(&["ip", "netns", "add", &name]);
        if !out.status.success() {
            panic!(
                "kernel test needs root to create network namespace {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = NetNs { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        v
    }

    pub fn run(&self, args: &[&str]) -> String {
        run(&self.argv(args))
    }

    pub fn output(&self, args: &[&str]) -> Output {
        output(&self.argv(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        json(&self.argv(args))
    }

    /// Starts a background process in the namespace; it is killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Bg {
        let argv = self.argv(args);
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", args));
        Bg(child)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
                }
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A background process, killed on drop.
pub struct Bg(pub std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nft -j list table inet pppgate` as a list of the objects in it.
pub fn nft_objects() -> Vec<Value> {
    let v = json(&["nft", "-j", "list", "table", "inet", "pppgate"]);
    v["nftables"].as_array().cloned().unwrap_or_default()
}

/// The members of one nft set as the nft tool prints them (addresses, prefixes, concatenations
/// rendered as text).
pub fn nft_set_elems(set: &str) -> Vec<String> {
    for o in nft_objects() {
        if let Some(s) = o.get("set") {
            if s["name"] == set {
                return s.get("elem").and_then(Value::as_array).map(|a| a.iter().map(render_elem).collect()).unwrap_or_default();
            }
        }
    }
    panic!("set {set} not in nft's listing");
}

pub fn render_elem(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                format!("{}/{}", p["addr"].as_str().unwrap(), p["len"])
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", render_elem(&r[0]), render_elem(&r[1]))
            } else if let Some(c) = o.get("concat") {
                c.as_array().unwrap().iter().map(render_elem).collect::<Vec<_>>().join(" . ")
            } else if let Some(el) = o.get("elem") {
                render_elem(&el["val"])
            } else {
                e.to_string()
            }
        }
        _ => e.to_string(),
    }
}

/// Packet count of the rule carrying `comment` (its counter).
pub fn nft_counter(comment: &str) -> u64 {
    for o in nft_objects() {
        if let Some(r) = o.get("rule") {
            if r.get("comment").and_then(Value::as_str) == Some(comment) {
                for e in r["expr"].as_array().unwrap() {
                    if let Some(c) = e.get("counter") {
                        return c["packets"].as_u64().unwrap();
                    }
                }
            }
        }
    }
    panic!("no counter rule with comment {comment}");
}

/// Parses a tc rate such as `10Mbit`, `512Kbit`, `1Gbit`, `800bit` into bit/s.
pub fn parse_tc_rate(s: &str) -> u64 {
    let (num, mult) = if let Some(n) = s.strip_suffix("Gbit") {
        (n, 1e9)
    } else if let Some(n) = s.strip_suffix("Mbit") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("Kbit") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("bit") {
        (n, 1.0)
    } else {
        panic!("unknown tc rate {s:?}")
    };
    (num.parse::<f64>().unwrap_or_else(|_| panic!("bad tc rate {s:?}")) * mult).round() as u64
}

/// An HTB class as `tc -s -d class show` prints it (iproute2 6.1 prints HTB classes as text even
/// with -j).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcClass {
    pub classid: String,
    pub rate_bit: u64,
    pub ceil_bit: u64,
    pub linklayer: Option<String>,
    pub sent_bytes: u64,
    pub sent_packets: u64,
}

pub fn tc_classes(dev: &str) -> Vec<TcClass> {
    let text = run(&["tc", "-s", "-d", "class", "show", "dev", dev]);
    let mut out: Vec<TcClass> = Vec::new();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| toks.iter().position(|t| *t == k).and_then(|i| toks.get(i + 1)).copied();
        if toks.first() == Some(&"class") {
            out.push(TcClass {
                classid: toks[2].to_string(),
                rate_bit: after("rate").map(parse_tc_rate).unwrap_or(0),
                ceil_bit: after("ceil").map(parse_tc_rate).unwrap_or(0),
                linklayer: after("linklayer").map(str::to_string),
                sent_bytes: 0,
                sent_packets: 0,
            });
        } else if toks.first() == Some(&"Sent") {
            if let Some(c) = out.last_mut() {
                c.sent_bytes = toks[1].parse().unwrap();
                c.sent_packets = toks[3].parse().unwrap();
            }
        }
    }
    out
}

/// `tc -j qdisc show dev <dev>` (with -s for counters).
pub fn tc_qdiscs(dev: &str) -> Vec<Value> {
    json(&["tc", "-s", "-j", "qdisc", "show", "dev", dev]).as_array().cloned().unwrap_or_default()
}

/// Interface names present (`ip -j link show`).
pub fn link_names() -> Vec<String> {
    json(&["ip", "-j", "link", "show"]).as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect()
}

//! Connectivity checks run in namespaces (ping, TCP connects) and far-side packet counters.

use std::process::{Child, Stdio};

use serde_json::Value;

use crate::kernel::counter_in;
use crate::netns::NetNs;

/// A connectivity check started in a namespace: ping or TCP connect from a source address.
pub struct Check {
    pub label: String,
    pub expect: bool,
    child: Child,
}

/// Two pings from `src` to `dst` (passes when a reply came back).
pub fn ping(ns: &NetNs, src: &str, dst: &str, expect: bool) -> Check {
    let child = ns
        .command(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, dst])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");
    Check { label: format!("ping {src} → {dst}"), expect, child }
}

/// A TCP connect from `src` to `dst:port` reading what the server says (passes when the
/// server's "ok" arrived: servers are `socat ... SYSTEM:echo ok`).
pub fn tcp(ns: &NetNs, src: &str, dst: &str, port: u16, expect: bool) -> Check {
    let child = ns
        .command(&["socat", "-T2", "-u", &format!("TCP:{dst}:{port},bind={src},connect-timeout=1"), "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn socat");
    Check { label: format!("tcp {src} → {dst}:{port}"), expect, child }
}

/// `count` UDP datagrams from `src` to `dst:port`, one each (it only makes packets for far-side
/// counters to count; nothing needs to answer).
pub fn udp_burst(ns: &NetNs, src: &str, dst: &str, port: u16, count: u32) {
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  s.bind((sys.argv[1], 0))\n\
                  for _ in range(int(sys.argv[4])): s.sendto(b'x', (sys.argv[2], int(sys.argv[3])))\n";
    let out = ns
        .command(&["python3", "-c", script, src, dst, &port.to_string(), &count.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("udp burst");
    assert!(out.status.success(), "udp burst from {src}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs checks in parallel and asserts each one's outcome; prints one line per check.
pub fn expect_all(checks: Vec<Check>) {
    let mut failures = Vec::new();
    for c in checks {
        let out = c.child.wait_with_output().expect("check finished");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let passed = out.status.success() && (c.label.starts_with("ping") || stdout.contains("ok"));
        println!("{:<48} {}", c.label, if passed { "passes" } else { "blocked" });
        if passed != c.expect {
            failures.push(format!(
                "{}: expected {}, got {}",
                c.label,
                if c.expect { "pass" } else { "drop" },
                if passed { "pass" } else { "drop" }
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Packet count of the rule with `comment` in nft table `family name` inside `ns`.
pub fn ns_counter(ns: &NetNs, family: &str, table: &str, comment: &str) -> u64 {
    let v: Value = ns.json(&["nft", "-j", "list", "table", family, table]);
    let objs = v["nftables"].as_array().cloned().unwrap_or_default();
    counter_in(&objs, comment).unwrap_or_else(|| panic!("no counter {comment} in {family} {table} of {}", ns.name))
}

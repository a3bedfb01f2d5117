//! A TUN "ppp" link whose counters a test moves on command: `tunpeer.py` owns the device (so
//! carrier is up), writes packets into it (rx, from the client) or sends datagrams through it
//! (tx, to the client), and plays pppd: its own pid and start time are the mapping's
//! PPPD_PID/START_TS. For accounting tests, which need exact interface counters.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

use policy_core::mapping::Mapping;

use crate::env::NAS_IDENTITY;
use crate::netns::NetNs;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/tunpeer.py");

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The TUN helper standing in for one pppd, killed on drop.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub ns: String,
    pub ifname: String,
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
    pub pid: u32,
    pub start_ts: i64,
}

impl Peer {
    /// A link `ifname` in `ns` carrying `local peer PEER/32`, up.
    pub fn spawn(ns: &NetNs, ifname: &str, local: Ipv4Addr, peer: Ipv4Addr) -> Peer {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-u", SCRIPT])
            .args([ifname, &peer.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SCRIPT} (python3 installed?): {e}"));
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read tunpeer.py");
        assert!(line.starts_with("ready"), "tunpeer.py did not start: {line:?}");
        let pid = child.id();
        let start_ts = policy_core::procfs::process_start_epoch(pid).expect("read /proc").expect("helper is running");
        let mut p =
            Peer { child, stdin, stdout, ns: ns.name.clone(), ifname: ifname.into(), local, peer, pid, start_ts };
        p.configure();
        p
    }

    fn configure(&mut self) {
        let peer = format!("{}/32", self.peer);
        ip(&["-n", &self.ns, "addr", "add", &self.local.to_string(), "peer", &peer, "dev", &self.ifname]);
        ip(&["-n", &self.ns, "link", "set", &self.ifname, "up"]);
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to tunpeer.py");
        self.stdin.flush().expect("flush");
        let mut out = String::new();
        self.stdout.read_line(&mut out).expect("read tunpeer.py");
        assert!(out.starts_with("ok"), "tunpeer {line}: {out:?}");
        out
    }

    /// Packets from the client: the interface's rx grows by count*size.
    pub fn rx(&mut self, count: u32, size: u32) {
        self.cmd(&format!("rx {count} {size}"));
    }

    /// `count` UDP datagrams (to port 9) from the client with source `src` (forged or not) to
    /// `dst`; returns the nanoseconds the writes took.
    pub fn send(&mut self, src: Ipv4Addr, dst: Ipv4Addr, count: u32, size: u32) -> u64 {
        let out = self.cmd(&format!("send {src} {dst} {count} {size}"));
        out.split_whitespace().nth(3).and_then(|v| v.parse().ok()).expect("send answers with its duration")
    }

    /// Packets to the client.
    pub fn tx(&mut self, count: u32, size: u32) {
        let out = self.cmd(&format!("tx {count} {size}"));
        assert_eq!(out.trim(), format!("ok tx {count}"), "the device counted every packet");
    }

    /// A new TUN device of the same name under the same process (new ifindex).
    pub fn recreate(&mut self) {
        self.cmd("recreate");
        self.configure();
    }

    pub fn mapping(&self, connection_id: i64, up_ts: Option<i64>) -> Mapping {
        Mapping {
            connection_id,
            ppp_if: self.ifname.clone(),
            client_ip: self.peer,
            start_ts: self.start_ts,
            pppd_pid: self.pid,
            session_id: None,
            up_ts,
            counters_base: None,
            process: crate::session::identity_at(self.pid, self.start_ts),
        }
    }

    /// The accounting session key of this session on a [`crate::TestEnv`]'s default NAS.
    pub fn session_key(&self) -> String {
        format!("{NAS_IDENTITY}:{}:{}:{}", self.ifname, self.pid, self.start_ts)
    }

    /// The interface's (rx_bytes, tx_bytes), read back with iproute2 (not with pppgate's code).
    pub fn counters(&self) -> (i64, i64) {
        link_counters(&self.ns, &self.ifname)
    }

    pub fn ifindex(&self) -> u64 {
        let out = ip(&["-n", &self.ns, "-j", "link", "show", "dev", &self.ifname]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
        v[0]["ifindex"].as_u64().expect("ifindex")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (rx_bytes, tx_bytes) of `ifname` in namespace `ns`, read with iproute2.
pub fn link_counters(ns: &str, ifname: &str) -> (i64, i64) {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let s = &v[0]["stats64"];
    (s["rx"]["bytes"].as_i64().expect("rx bytes"), s["tx"]["bytes"].as_i64().expect("tx bytes"))
}

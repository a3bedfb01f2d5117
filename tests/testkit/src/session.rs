//! Fake sessions: what pppd + pppgate.so leave behind for a live session, without PPP (the build
//! kernel has none): a live process standing in for pppd (its start time is START_TS), an
//! interface `pppN` carrying `local peer CLIENT_IP`, and the mapping file written with
//! `Mapping::write_atomic`. [`SessionBuilder::build`] checks the result is VALID by
//! `policy_core::mapping::valid_sessions`, the one definition pppgate uses.
//!
//! The interface is either a veth whose other end sits in a client namespace (packets can flow:
//! the client side gets `CLIENT_IP peer LOCAL` and a default route), or a TUN device (cheap, no
//! traffic) — [`tun_farm`] makes thousands of those at once for benchmarks.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use policy_core::mapping::{valid_sessions, Mapping};
use policy_core::procfs;

use crate::netns::{ip_batch, no_gso, run, NetNs};

/// The concentrator's own address on every session link (as pppd's `local` option).
pub const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// veth to a client namespace of its own; traffic flows.
    Veth,
    /// TUN device nobody reads; no traffic.
    Tun,
}

/// Builds a [`FakeSession`].
#[derive(Debug, Clone)]
pub struct SessionBuilder {
    ifname: String,
    connection_id: i64,
    client_ip: Ipv4Addr,
    local_ip: Ipv4Addr,
    kind: LinkKind,
    gso_off: bool,
}

impl SessionBuilder {
    /// A session on a veth `ifname` whose other end (`eth0`) is in a new client namespace.
    pub fn veth(ifname: &str, connection_id: i64, client_ip: &str) -> SessionBuilder {
        SessionBuilder {
            ifname: ifname.into(),
            connection_id,
            client_ip: client_ip.parse().expect("client ip"),
            local_ip: LOCAL_IP,
            kind: LinkKind::Veth,
            gso_off: true,
        }
    }

    /// A session on a TUN device `ifname`.
    pub fn tun(ifname: &str, connection_id: i64, client_ip: &str) -> SessionBuilder {
        SessionBuilder { kind: LinkKind::Tun, ..Self::veth(ifname, connection_id, client_ip) }
    }

    pub fn local_ip(mut self, ip: &str) -> SessionBuilder {
        self.local_ip = ip.parse().expect("local ip");
        self
    }

    /// Keeps segmentation offload on (default: off, so shaping meters wire-sized packets).
    pub fn keep_gso(mut self) -> SessionBuilder {
        self.gso_off = false;
        self
    }

    /// Creates the interface, the process and the mapping in `sessions_dir`, in the current
    /// network namespace, and checks the session is VALID.
    pub fn build(self, sessions_dir: &Path) -> FakeSession {
        let ifname = self.ifname.as_str();
        let local = self.local_ip.to_string();
        let client = self.client_ip.to_string();
        let client_ns = match self.kind {
            LinkKind::Veth => {
                let ns = NetNs::new("cl");
                run(&["ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", &ns.name]);
                run(&["ip", "addr", "add", &local, "peer", &format!("{client}/32"), "dev", ifname]);
                ns.run(&["ip", "addr", "add", &client, "peer", &format!("{local}/32"), "dev", "eth0"]);
                if self.gso_off {
                    no_gso(&[], ifname);
                    no_gso(&["ip", "netns", "exec", &ns.name], "eth0");
                }
                run(&["ip", "link", "set", ifname, "up"]);
                ns.run(&["ip", "link", "set", "eth0", "up"]);
                ns.run(&["ip", "route", "add", "default", "via", &local, "dev", "eth0"]);
                Some(ns)
            }
            LinkKind::Tun => {
                run(&["ip", "tuntap", "add", "dev", ifname, "mode", "tun"]);
                run(&["ip", "addr", "add", &local, "peer", &format!("{client}/32"), "dev", ifname]);
                run(&["ip", "link", "set", ifname, "up"]);
                None
            }
        };
        let process = spawn_standin();
        let pid = process.id();
        let start_ts = procfs::process_start_epoch(pid).expect("read /proc").expect("stand-in process is alive");
        let now = policy_core::lock::now_unix();
        let mapping = Mapping {
            connection_id: self.connection_id,
            ppp_if: self.ifname.clone(),
            client_ip: self.client_ip,
            start_ts,
            pppd_pid: pid,
            session_id: Some(format!("test:{}:{pid}:{now}", self.ifname)),
            up_ts: Some(now),
            counters_base: None,
            process: identity_at(pid, start_ts),
        };
        mapping.write_atomic(sessions_dir).expect("write mapping");
        let s = FakeSession {
            ifname: self.ifname,
            client_ip: self.client_ip,
            local_ip: self.local_ip,
            connection_id: self.connection_id,
            mapping,
            client: client_ns,
            process: Some(process),
            sessions_dir: sessions_dir.to_path_buf(),
        };
        assert!(s.is_valid(), "fake session on {} is not VALID by mapping::valid_sessions", s.ifname);
        s
    }
}

/// A process standing in for pppd: alive until killed, start time readable in /proc.
fn spawn_standin() -> Child {
    Command::new("sleep")
        .arg("1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

/// A live fake session. Dropping it kills its process (the interface goes with the test's
/// namespace; the client namespace is deleted).
pub struct FakeSession {
    pub ifname: String,
    pub client_ip: Ipv4Addr,
    pub local_ip: Ipv4Addr,
    pub connection_id: i64,
    pub mapping: Mapping,
    /// The client's namespace (veth sessions).
    pub client: Option<NetNs>,
    process: Option<Child>,
    sessions_dir: PathBuf,
}

impl FakeSession {
    pub fn pid(&self) -> u32 {
        self.mapping.pppd_pid
    }

    pub fn ip(&self) -> String {
        self.client_ip.to_string()
    }

    /// The session's nft member: its address bound to its interface's current index.
    pub fn member(&self) -> policy_core::kernel::Member {
        let idx = policy_core::kernel::links::ifindex(&self.ifname)
            .expect("look up the interface")
            .unwrap_or_else(|| panic!("{} does not exist", self.ifname));
        policy_core::kernel::Member::new(idx, self.client_ip)
    }

    /// The client namespace (panics for TUN sessions).
    pub fn client(&self) -> &NetNs {
        self.client.as_ref().expect("a veth session has a client namespace")
    }

    /// Whether pppgate's own definition counts this session as VALID now.
    pub fn is_valid(&self) -> bool {
        let (valid, _) = valid_sessions(&self.sessions_dir).expect("scan sessions dir");
        valid.contains(&self.mapping)
    }

    /// SIGKILLs the stand-in process (pppd died) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Waits for the process to end by itself (e.g. after pppgate signalled it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let p = self.process.as_mut()?;
        loop {
            if let Ok(Some(st)) = p.try_wait() {
                self.process = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the stand-in process is still running.
    pub fn alive(&mut self) -> bool {
        match self.process.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Deletes the session interface (the link went away).
    pub fn delete_interface(&self) {
        run(&["ip", "link", "del", &self.ifname]);
    }

    /// The mapping file's path.
    pub fn mapping_path(&self) -> PathBuf {
        self.mapping.path_in(&self.sessions_dir)
    }
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Many TUN sessions at once, for benchmarks: interfaces and addresses through `ip -batch`,
/// mappings written with `Mapping::write_atomic`. Sessions share a pool of stand-in processes
/// (the machine's pid_max is small); each mapping still names a live process whose start time is
/// its START_TS, so VALID costs exactly what it costs with one pppd per session.
pub struct TunFarm {
    pub mappings: Vec<Mapping>,
    procs: Vec<Child>,
}

/// Creates `n` TUN sessions `ppp<first>`…: connection ids `first_conn`…, client addresses from
/// 100.64.0.0/10 counting up from 100.65.0.1, `procs` stand-in processes.
pub fn tun_farm(sessions_dir: &Path, first: usize, n: usize, first_conn: i64, procs: usize) -> TunFarm {
    let procs: Vec<Child> = (0..procs.max(1)).map(|_| spawn_standin()).collect();
    let starts: Vec<(u32, i64)> =
        procs.iter().map(|p| (p.id(), procfs::process_start_epoch(p.id()).expect("/proc").expect("alive"))).collect();
    let base = u32::from(Ipv4Addr::new(100, 65, 0, 1));
    let mut script = String::new();
    let mut mappings = Vec::with_capacity(n);
    let now = policy_core::lock::now_unix();
    for i in 0..n {
        let ifname = format!("ppp{}", first + i);
        let ip = Ipv4Addr::from(base + (first + i) as u32);
        script.push_str(&format!(
            "tuntap add dev {ifname} mode tun\naddr add {LOCAL_IP} peer {ip}/32 dev {ifname}\nlink set {ifname} up\n"
        ));
        let (pid, start_ts) = starts[i % starts.len()];
        mappings.push(Mapping {
            connection_id: first_conn + i as i64,
            ppp_if: ifname.clone(),
            client_ip: ip,
            start_ts,
            pppd_pid: pid,
            session_id: Some(format!("bench:{ifname}:{pid}:{now}")),
            up_ts: Some(now),
            counters_base: None,
            process: identity_at(pid, start_ts),
        });
    }
    ip_batch(&script);
    for m in &mappings {
        m.write_atomic(sessions_dir).expect("write mapping");
    }
    TunFarm { mappings, procs }
}

impl Drop for TunFarm {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// A TUN device named like a PPP link carrying `local peer PEER/32`, in the current namespace:
/// a link without a session (no process, no mapping), for tests that assemble sessions by hand.
pub fn ppp_link(ifname: &str, local: &str, peer: &str) {
    run(&["ip", "tuntap", "add", "dev", ifname, "mode", "tun"]);
    run(&["ip", "addr", "add", local, "peer", &format!("{peer}/32"), "dev", ifname]);
    run(&["ip", "link", "set", ifname, "up"]);
}

/// A live process standing in for pppd (its pid and start time go into a mapping), killed on
/// drop.
pub struct StandIn {
    pub child: Child,
}

impl StandIn {
    pub fn sleeper() -> StandIn {
        StandIn { child: spawn_standin() }
    }

    /// A process that ignores SIGTERM (a hung pppd).
    pub fn term_ignorer() -> StandIn {
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh");
        // Let the shell install its trap before anyone signals it.
        std::thread::sleep(Duration::from_millis(300));
        StandIn { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's start time as START_TS (Unix seconds, from /proc).
    pub fn start_ts(&self) -> i64 {
        procfs::process_start_epoch(self.pid()).expect("read /proc").expect("stand-in process is running")
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pid that existed and is gone now.
pub fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("spawn true");
    let pid = c.id();
    c.wait().expect("wait for true");
    pid
}

/// The START_TICKS/BOOT_ID a mapping for `pid` started at Unix time `start_ts` carries: the
/// process's own when `start_ts` is its start time, else ticks that say `start_ts` (a test
/// describing a PID reused since), `None` when the process is gone.
pub fn identity_at(pid: u32, start_ts: i64) -> Option<procfs::ProcessIdentity> {
    let mut id = procfs::identity(pid).expect("read /proc")?;
    let actual = procfs::process_start_epoch(pid).expect("read /proc")?;
    if (actual - start_ts).abs() > procfs::START_TS_TOLERANCE {
        let boot = procfs::boot_time().expect("read /proc/stat");
        id.start_ticks = ((start_ts - boot).max(0) * procfs::ticks_per_second()) as u64;
    }
    Some(id)
}

/// Writes a mapping (no SESSION_ID, UP_TS one second after START_TS) with
/// `Mapping::write_atomic` and returns it; nothing checks it is VALID.
pub fn write_mapping(dir: &Path, conn: i64, ifname: &str, ip: &str, pid: u32, start_ts: i64) -> Mapping {
    let m = Mapping {
        connection_id: conn,
        ppp_if: ifname.into(),
        client_ip: ip.parse::<Ipv4Addr>().expect("client ip"),
        start_ts,
        pppd_pid: pid,
        session_id: None,
        up_ts: Some(start_ts + 1),
        counters_base: None,
        process: identity_at(pid, start_ts),
    };
    m.write_atomic(dir).expect("write mapping");
    m
}

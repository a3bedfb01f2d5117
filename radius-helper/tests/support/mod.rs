//! Kernel-test harness: a network namespace per test, TUN "ppp" interfaces driven by a python
//! helper that also plays pppd (its PID and start time are the mapping's PPPD_PID/START_TS), and
//! a PostgreSQL cluster per test (initdb into a temp dir, unix socket only).
//!
//! These tests need root, network namespaces, /dev/net/tun, python3 and PostgreSQL 15 binaries.
//! When any of that is missing they fail with a message saying what is missing: they never pass
//! by skipping.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use policy_core::mapping::Mapping;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const NAS_IDENTITY: &str = "lns-test";
pub const NAS_IP: &str = "192.0.2.1";

pub fn pppgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pppgate")
}

/// Fails the test loudly unless it can do kernel work.
pub fn require_kernel_test_env() {
    let euid = nix::unistd::Uid::effective();
    assert!(
        euid.is_root(),
        "kernel tests need root (they create network namespaces and TUN devices); run them as root in CI"
    );
    assert!(Path::new("/dev/net/tun").exists(), "kernel tests need /dev/net/tun");
    assert!(Path::new(PG_BIN).join("initdb").exists(), "kernel tests need PostgreSQL 15 binaries in {PG_BIN}");
    let py = Command::new("python3").arg("-c").arg("import fcntl, struct").status();
    assert!(py.is_ok_and(|s| s.success()), "kernel tests need python3");
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = format!("pgt{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        // No IPv6 autoconfiguration traffic on the test interfaces.
        run(Command::new("ip").args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]));
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The TUN helper standing in for one pppd.
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
    pub fn spawn(ns: &Netns, ifname: &str, local: Ipv4Addr, peer: Ipv4Addr) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tunpeer.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-u"])
            .arg(&script)
            .args([ifname, &peer.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tunpeer.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "tunpeer.py did not start: {line:?}");
        let pid = child.id();
        let start_ts = policy_core::procfs::process_start_epoch(pid).unwrap().expect("helper is running");
        let mut p =
            Peer { child, stdin, stdout, ns: ns.name.clone(), ifname: ifname.into(), local, peer, pid, start_ts };
        p.configure();
        p
    }

    fn configure(&mut self) {
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &self.local.to_string(),
            "peer",
            &format!("{}/32", self.peer),
            "dev",
            &self.ifname,
        ]);
        ip(&["-n", &self.ns, "link", "set", &self.ifname, "up"]);
    }

    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        assert!(out.starts_with("ok"), "tunpeer {line}: {out:?}");
        out
    }

    /// Packets from the client: the interface's rx grows by count*size.
    pub fn rx(&mut self, count: u32, size: u32) {
        self.cmd(&format!("rx {count} {size}"));
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
        }
    }

    pub fn session_key(&self) -> String {
        format!("{NAS_IDENTITY}:{}:{}:{}", self.ifname, self.pid, self.start_ts)
    }

    /// The interface's (rx_bytes, tx_bytes), read back with iproute2 (not with pppgate's code).
    pub fn counters(&self) -> (i64, i64) {
        counters(&self.ns, &self.ifname)
    }

    pub fn ifindex(&self) -> u64 {
        let out = ip(&["-n", &self.ns, "-j", "link", "show", "dev", &self.ifname]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["ifindex"].as_u64().unwrap()
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

pub fn counters(ns: &str, ifname: &str) -> (i64, i64) {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v[0]["stats64"];
    (s["rx"]["bytes"].as_i64().unwrap(), s["tx"]["bytes"].as_i64().unwrap())
}

/// A PostgreSQL cluster of the test's own: unix socket in its directory, no TCP.
pub struct Pg {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub sock: PathBuf,
    durable: bool,
}

fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args);
    c
}

impl Pg {
    /// initdb + start. `durable`: keep fsync on (benchmarks); tests turn it off for speed.
    pub fn start_new(durable: bool) -> Pg {
        let dir = tempfile::Builder::new().prefix("pppgate-pg-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()));
        let initdb = format!("{PG_BIN}/initdb");
        run(&mut as_postgres(&[
            &initdb,
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        let pg = Pg { dir, data, sock, durable };
        pg.start();
        pg.psql("CREATE DATABASE pppgate");
        pg
    }

    pub fn start(&self) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let mut opts = format!("-c listen_addresses= -k {} -c max_connections=20", self.sock.display());
        if !self.durable {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        // Extra server options for investigations (e.g. auto_explain), never needed by a test.
        if let Ok(extra) = std::env::var("PPPGATE_TEST_PG_OPTS") {
            opts.push(' ');
            opts.push_str(&extra);
        }
        let log = self.dir.path().join("pg.log");
        run(&mut as_postgres(&[
            &pg_ctl,
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]));
    }

    pub fn stop(&self) {
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        run(&mut as_postgres(&[&pg_ctl, "-D", self.data.to_str().unwrap(), "-m", "fast", "-w", "stop"]));
    }

    pub fn dsn(&self) -> String {
        format!("host={} dbname=pppgate user=postgres", self.sock.display())
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn(), postgres::NoTls).expect("connect to the test database")
    }

    fn psql(&self, sql: &str) {
        let psql = format!("{PG_BIN}/psql");
        run(&mut as_postgres(&[&psql, "-h", self.sock.to_str().unwrap(), "-d", "postgres", "-qAtc", sql]));
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Ok(to) = std::env::var("PPPGATE_TEST_PG_KEEP_LOG") {
            let _ = std::fs::copy(self.dir.path().join("pg.log"), to);
        }
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let _ = as_postgres(&[&pg_ctl, "-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The result of running the binary.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
    #[track_caller]
    pub fn ok(&self) -> serde_json::Value {
        assert_eq!(self.code, Some(0), "expected success: {self:?}");
        self.json()
    }
}

/// One test's world: database, namespace, config, directories.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub pg: Pg,
    pub ns: Netns,
    pub config: PathBuf,
    pub sessions_dir: PathBuf,
    pub acct_dir: PathBuf,
    pub collector_lock: PathBuf,
}

impl Lab {
    /// `radacct`: the accounting.radacct mode (auto, radius, own, off).
    pub fn new(radacct: &str) -> Lab {
        Lab::with_pg(radacct, Pg::start_new(false))
    }

    pub fn with_pg(radacct: &str, pg: Pg) -> Lab {
        require_kernel_test_env();
        let tmp = tempfile::Builder::new().prefix("pppgate-acct-").tempdir().unwrap();
        let sessions_dir = tmp.path().join("sessions");
        let acct_dir = tmp.path().join("accounting");
        let collector_lock = tmp.path().join("collector.lock");
        std::fs::create_dir(&sessions_dir).unwrap();
        let config = tmp.path().join("pppgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[database]
dsn = "{dsn}"
connect_timeout_ms = 1000

[nas]
identity = "{NAS_IDENTITY}"
ip = "{NAS_IP}"

[paths]
sessions_dir = "{s}"
accounting_dir = "{a}"
collector_lock = "{l}"
apply_lock = "{t}/apply.lock"
audit_log = "{t}/audit.log"
run_dir = "{t}/run"
state_dir = "{t}/state"

[accounting]
radacct = "{radacct}"
"#,
                dsn = pg.dsn(),
                s = sessions_dir.display(),
                a = acct_dir.display(),
                l = collector_lock.display(),
                t = tmp.path().display(),
            ),
        )
        .unwrap();
        let lab = Lab { tmp, pg, ns: Netns::new(), config, sessions_dir, acct_dir, collector_lock };
        let out = lab.pppgate(&["db", "migrate"], None);
        assert_eq!(out.code, Some(0), "db migrate: {out:?}");
        lab
    }

    pub fn pppgate(&self, args: &[&str], crash_at: Option<&str>) -> Ran {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name, pppgate_bin(), "-c"]).arg(&self.config).args(args);
        c.env("PPPGATE_LOG", "info");
        match crash_at {
            Some(p) => c.env("PPPGATE_TEST_CRASH_AT", p),
            None => c.env_remove("PPPGATE_TEST_CRASH_AT"),
        };
        let out = c.output().expect("run pppgate");
        use std::os::unix::process::ExitStatusExt;
        Ran {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    pub fn collect(&self) -> Ran {
        self.pppgate(&["--json", "collect"], None)
    }

    pub fn collect_crashing_at(&self, point: &str) -> Ran {
        self.pppgate(&["--json", "collect"], Some(point))
    }

    pub fn add_connection(&self, login: &str, quota: Option<i64>, period: &str) -> i64 {
        let mut c = self.pg.client();
        c.query_one(
            "INSERT INTO vpn_connections (subaccount_login, status, quota_bytes, quota_period) VALUES ($1, 'CLAIMED', $2, $3) RETURNING id",
            &[&login, &quota, &period],
        )
        .unwrap()
        .get(0)
    }

    pub fn write_mapping(&self, m: &Mapping) {
        m.write_atomic(&self.sessions_dir).unwrap();
    }

    pub fn remove_mapping(&self, ifname: &str) {
        Mapping::remove(&self.sessions_dir, ifname).unwrap();
    }

    /// (bytes_in, bytes_out) of pppgate_sessions for the key, if the row exists.
    pub fn session_totals(&self, key: &str) -> Option<(i64, i64)> {
        let mut c = self.pg.client();
        c.query_opt("SELECT bytes_in, bytes_out FROM pppgate_sessions WHERE session_key = $1", &[&key])
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    /// Sum of vpn_usage for a connection.
    pub fn usage(&self, connection_id: i64) -> (i64, i64) {
        let mut c = self.pg.client();
        let r = c
            .query_one(
                "SELECT COALESCE(sum(bytes_in), 0)::bigint, COALESCE(sum(bytes_out), 0)::bigint FROM vpn_usage WHERE connection_id = $1",
                &[&connection_id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    }

    /// Octets of pppgate's own radacct row for the session.
    pub fn own_radacct(&self, key: &str) -> Option<(i64, i64, bool)> {
        let mut c = self.pg.client();
        c.query_opt(
            "SELECT acctinputoctets, acctoutputoctets, acctstoptime IS NOT NULL FROM radacct WHERE acctuniqueid = $1",
            &[&format!("pppgate:{key}")],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    /// Everything accounting wrote, as text, to compare "nothing changed".
    pub fn snapshot(&self) -> String {
        let mut c = self.pg.client();
        let mut s = String::new();
        for q in [
            "SELECT connection_id::text || ' ' || day::text || ' ' || bytes_in::text || ' ' || bytes_out::text FROM vpn_usage ORDER BY 1",
            "SELECT session_key || ' ' || bytes_in::text || ' ' || bytes_out::text || ' ' || COALESCE(stop_time::text, '-') FROM pppgate_sessions ORDER BY 1",
            "SELECT acctuniqueid || ' ' || COALESCE(acctinputoctets, -1)::text || ' ' || COALESCE(acctoutputoctets, -1)::text || ' ' || COALESCE(acctstoptime::text, '-') FROM radacct ORDER BY 1",
        ] {
            for r in c.query(q, &[]).unwrap() {
                s.push_str(r.get::<_, &str>(0));
                s.push('\n');
            }
        }
        s
    }

    pub fn spool_records(&self) -> usize {
        std::fs::read_dir(self.acct_dir.join("spool"))
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".batch")).count())
            .unwrap_or(0)
    }

    pub fn bad_files(&self) -> usize {
        std::fs::read_dir(self.acct_dir.join("spool/bad")).map(|rd| rd.count()).unwrap_or(0)
    }
}

//! Test support for the session/RADIUS host tests: a real PostgreSQL per test binary, a fresh
//! database per test, private network namespaces with TUN `pppN` links, live stand-in pppd
//! processes, and mapping files.
//!
//! These tests need root (namespaces, runuser) and PostgreSQL 15's server binaries. Without them
//! they fail loudly; they never skip.

#![allow(dead_code)]

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use policy_core::config::Config;
use policy_core::mapping::Mapping;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Runs a program; panics with its output when it fails.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e} (is it installed?)"));
    if !out.status.success() {
        panic!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

pub struct PgServer {
    pub base: PathBuf,
    pub socket_dir: PathBuf,
}

static SERVER: OnceLock<PgServer> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The PostgreSQL of this test binary, started on first use: initdb (trust auth) in a temp
/// directory, unix socket only, run as `postgres`. It is started with a parent-death signal from
/// a thread that never ends, so it goes away with the test process.
pub fn server() -> &'static PgServer {
    SERVER.get_or_init(|| {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "these tests need root (they start PostgreSQL as user postgres and create network namespaces)"
        );
        assert!(Path::new(PG_BIN).join("postgres").exists(), "PostgreSQL 15 server binaries missing in {PG_BIN}");
        let tmp = std::env::temp_dir();
        // Leftovers of earlier, killed test runs.
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("pppgate-test-pg-").and_then(|p| p.parse::<u32>().ok()) {
                    if !pid_alive(pid) {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let base = tmp.join(format!("pppgate-test-pg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let pg = nix::unistd::User::from_name("postgres").unwrap().expect("user postgres exists");
        nix::unistd::chown(&base, Some(pg.uid), Some(pg.gid)).unwrap();
        let data = base.join("data");
        run(&[
            "runuser",
            "-u",
            "postgres",
            "--",
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let log = base.join("postgres.log");
        let (tx, rx) = std::sync::mpsc::channel();
        let base2 = base.clone();
        std::thread::spawn(move || {
            let logf = fs::File::create(&log).unwrap();
            let child = Command::new("setpriv")
                .args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--pdeathsig", "INT", "--"])
                .arg(format!("{PG_BIN}/postgres"))
                .arg("-D")
                .arg(base2.join("data"))
                .arg("-k")
                .arg(&base2)
                .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .spawn()
                .expect("start postgres");
            tx.send(child.id()).unwrap();
            // This thread is postgres's parent for the parent-death signal: it must outlive every
            // test, so it parks for the life of the process.
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        let _pid = rx.recv().unwrap();
        let srv = PgServer { socket_dir: base.clone(), base };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if srv.admin().is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not come up: {}",
                fs::read_to_string(srv.base.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        srv
    })
}

impl PgServer {
    pub fn dsn(&self, db: &str) -> String {
        format!("host={} dbname={db} user=postgres", self.socket_dir.display())
    }

    pub fn admin(&self) -> Result<postgres::Client, postgres::Error> {
        postgres::Client::connect(&self.dsn("postgres"), postgres::NoTls)
    }
}

/// A fresh database with pppgate's schema (FreeRADIUS's tables included).
pub struct TestDb {
    pub name: String,
    pub dsn: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let srv = server();
        let name = format!("t{}_{}", std::process::id(), DB_COUNTER.fetch_add(1, Ordering::SeqCst));
        srv.admin().unwrap().batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        let db = TestDb { dsn: srv.dsn(&name), name };
        let mut c = db.client();
        policy_core::db::migrate::migrate(&mut c).unwrap();
        db
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.dsn, postgres::NoTls).unwrap()
    }

    /// A vpn_connections row; returns its id.
    pub fn connection(&self, login: &str) -> i64 {
        self.client()
            .query_one(
                "INSERT INTO vpn_connections (subaccount_login, status) VALUES ($1, 'CLAIMED') RETURNING id",
                &[&login],
            )
            .unwrap()
            .get(0)
    }

    /// An open radacct row as rlm_sql writes it; `age_s` before the database's now. Returns its id.
    pub fn acct_row(&self, user: &str, nas: &str, ip: Option<&str>, age_s: i64, session_id: &str) -> i64 {
        let unique = format!("u{}", DB_COUNTER.fetch_add(1, Ordering::SeqCst));
        self.client()
            .query_one(
                "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, nasportid, framedipaddress,
                                      acctstarttime, acctupdatetime, acctinputoctets, acctoutputoctets, framedprotocol)
                 VALUES ($1, $2, $3, $4::text::inet, '0', $5::text::inet, now() - make_interval(secs => $6), NULL, 100, 200, 'PPP')
                 RETURNING radacctid",
                &[&session_id, &unique, &user, &nas, &ip, &(age_s as f64)],
            )
            .unwrap()
            .get(0)
    }

    pub fn set_update_age(&self, radacctid: i64, age_s: i64) {
        self.client()
            .execute(
                "UPDATE radacct SET acctupdatetime = now() - make_interval(secs => $2) WHERE radacctid = $1",
                &[&radacctid, &(age_s as f64)],
            )
            .unwrap();
    }

    pub fn is_open(&self, radacctid: i64) -> bool {
        let r = self
            .client()
            .query_one("SELECT acctstoptime IS NULL FROM radacct WHERE radacctid = $1", &[&radacctid])
            .unwrap();
        r.get(0)
    }

    /// (terminate cause, session time, stop - start in s) of a closed row.
    pub fn closed_fields(&self, radacctid: i64) -> (Option<String>, Option<i64>, Option<i64>) {
        let r = self
            .client()
            .query_one(
                "SELECT acctterminatecause, acctsessiontime,
                        extract(epoch FROM acctstoptime - acctstarttime)::bigint
                 FROM radacct WHERE radacctid = $1",
                &[&radacctid],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn pppgate_session(
        &self,
        key: &str,
        nas: &str,
        conn: i64,
        login: &str,
        ifname: &str,
        ip: &str,
        pid: u32,
        age_s: i64,
    ) {
        self.client()
            .execute(
                "INSERT INTO pppgate_sessions (session_key, nas_identity, connection_id, username, ppp_if, client_ip, pppd_pid, start_time)
                 VALUES ($1, $2, $3, $4, $5, $6::text::inet, $7, now() - make_interval(secs => $8))",
                &[&key, &nas, &conn, &login, &ifname, &ip, &(pid as i32), &(age_s as f64)],
            )
            .unwrap();
    }

    pub fn session_open(&self, key: &str) -> bool {
        self.client()
            .query_one("SELECT stop_time IS NULL FROM pppgate_sessions WHERE session_key = $1", &[&key])
            .unwrap()
            .get(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
}

impl Env {
    pub fn new() -> Env {
        Env { dir: tempfile::tempdir().unwrap(), db: TestDb::new() }
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// A configuration of NAS `identity`/`ip` on this database (one file per NAS).
    pub fn config_path(&self, identity: &str, ip: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{identity}.toml"));
        let text = format!(
            r#"[database]
dsn = "{dsn}"
connect_timeout_ms = 2000

[nas]
identity = "{identity}"
ip = "{ip}"

[paths]
sessions_dir = "{sessions}"
run_dir = "{run}"
state_dir = "{run}/state"
audit_log = "{audit}"
apply_lock = "{lock}"
"#,
            dsn = self.db.dsn,
            sessions = self.sessions_dir().display(),
            run = self.dir.path().join("run").display(),
            audit = self.dir.path().join("log/audit.log").display(),
            lock = self.dir.path().join("apply.lock").display(),
        );
        fs::write(&path, text).unwrap();
        path
    }

    pub fn config(&self, identity: &str, ip: &str) -> Config {
        Config::load(&self.config_path(identity, ip)).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces, links and stand-in pppd processes

/// Moves the calling test thread into a new network namespace (`unshare(CLONE_NEWNET)`): the
/// links it creates and the programs it starts live there and nowhere else.
pub fn private_netns() {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
        panic!("test needs root to create a network namespace (unshare(CLONE_NEWNET): {e}); it must not be skipped");
    }
    run(&["ip", "link", "set", "lo", "up"]);
}

/// A TUN device named like a PPP link, with `peer` as its point-to-point peer address.
pub fn ppp_link(ifname: &str, local: &str, peer: &str) {
    run(&["ip", "tuntap", "add", "dev", ifname, "mode", "tun"]);
    run(&["ip", "addr", "add", local, "peer", &format!("{peer}/32"), "dev", ifname]);
    run(&["ip", "link", "set", ifname, "up"]);
}

/// A live stand-in for pppd, killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn sleeper() -> Proc {
        Proc { child: Command::new("sleep").arg("3600").spawn().unwrap() }
    }

    /// A process that ignores SIGTERM (a hung pppd).
    pub fn term_ignorer() -> Proc {
        let p =
            Proc { child: Command::new("sh").args(["-c", "trap '' TERM; while :; do sleep 1; done"]).spawn().unwrap() };
        // Let the shell install its trap before anyone signals it.
        std::thread::sleep(Duration::from_millis(300));
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start_ts(&self) -> i64 {
        policy_core::procfs::process_start_epoch(self.pid()).unwrap().expect("process is running")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pid that existed and is gone now.
pub fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

pub fn write_mapping(dir: &Path, conn: i64, ifname: &str, ip: &str, pid: u32, start_ts: i64) -> Mapping {
    let m = Mapping {
        connection_id: conn,
        ppp_if: ifname.into(),
        client_ip: ip.parse::<Ipv4Addr>().unwrap(),
        start_ts,
        pppd_pid: pid,
        session_id: None,
        up_ts: Some(start_ts + 1),
        counters_base: None,
    };
    m.write_atomic(dir).unwrap();
    m
}

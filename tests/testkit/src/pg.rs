//! A private PostgreSQL server per test.
//!
//! Each [`PgServer`] is a postmaster of its own (unix socket in its temp dir, no TCP listener,
//! trust authentication, `fsync=off`), so a test may stop and start it (SQL unavailable → exit 69)
//! without disturbing others. `initdb` (~1–3 s on the build machine) runs once per test process
//! into a template that is migrated with pppgate's own migrations
//! (`policy_core::db::migrate::migrate`); each server starts from a copy of it on tmpfs (~0.2 s:
//! measured cheaper than a database per test in one shared server, and each test may stop its
//! own server).
//!
//! Cleanup: `Drop` stops the server and removes its directory. Because a test process can die
//! without running destructors (and the template lives in a static), a tiny reaper shell watches
//! the test process and removes what is left when it exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use postgres::{Client, NoTls};
use tempfile::TempDir;

/// Where Debian's PostgreSQL 15 binaries live.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn pg_bin(name: &str) -> String {
    format!("{PG_BIN}/{name}")
}

struct Template {
    // Kept for the process's lifetime (statics are never dropped; the reaper removes it).
    _dir: TempDir,
    /// `initdb` only.
    base: PathBuf,
    /// `initdb` + pppgate's migrations.
    migrated: PathBuf,
}

static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();

fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("this test needs root (it runs PostgreSQL as the postgres user and creates network namespaces); it must not be skipped");
    }
}

fn postgres_ids() -> (nix::unistd::Uid, nix::unistd::Gid) {
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no postgres user: install postgresql-15 (the tests need {PG_BIN})"));
    (u.uid, u.gid)
}

/// A temp dir owned by the postgres user (initdb and the server write into it).
/// Data directories live on tmpfs when there is one: copying a template there takes ~50 ms,
/// on the build machine's disk under load ~1 s.
fn postgres_tempdir(prefix: &str) -> TempDir {
    let shm = Path::new("/dev/shm");
    let d = if shm.is_dir() {
        tempfile::Builder::new().prefix(prefix).tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix(prefix).tempdir()
    }
    .expect("create a temp dir");
    let (uid, gid) = postgres_ids();
    nix::unistd::chown(d.path(), Some(uid), Some(gid)).expect("chown temp dir to postgres");
    d
}

/// A command run as the postgres user through `CommandExt::uid/gid`: no PAM stack (a su-like
/// wrapper's PAM session touches the controlling terminal, and a backgrounded test run would be
/// stopped by SIGTTOU).
fn postgres_command(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = postgres_ids();
    let mut c = Command::new(program);
    c.uid(uid.as_raw()).gid(gid.as_raw()).current_dir("/").stdin(Stdio::null());
    c
}

fn as_postgres(args: &[&str]) -> Result<String, String> {
    let out =
        postgres_command(args[0]).args(&args[1..]).output().map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} failed ({}): {}{}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Removes `dir` (stopping a server on `data` first) once this test process has exited. Runs as
/// the postgres user, who owns both.
fn spawn_reaper(data: Option<&Path>, dir: &Path) -> Option<Child> {
    let script = r#"while [ -d "/proc/$0" ]; do sleep 1; done
if [ -n "$1" ]; then "$3/pg_ctl" -D "$1" -m immediate stop >/dev/null 2>&1; fi
rm -rf "$2""#;
    postgres_command("sh")
        .args(["-c", script, &std::process::id().to_string()])
        .arg(data.map(|d| d.as_os_str()).unwrap_or_default())
        .arg(dir)
        .arg(PG_BIN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn server_options(socket_dir: &Path, durable: bool) -> String {
    let mut o =
        format!("-c listen_addresses= -k {} -c shared_buffers=32MB -c max_connections=50", socket_dir.display());
    if !durable {
        o.push_str(" -c fsync=off -c full_page_writes=off");
    }
    // Extra server options for investigations (e.g. auto_explain), never needed by a test.
    if let Ok(extra) = std::env::var("PPPGATE_TEST_PG_OPTS") {
        o.push(' ');
        o.push_str(&extra);
    }
    o
}

fn pg_ctl_start(data: &Path, socket_dir: &Path, log: &Path, durable: bool) -> Result<(), String> {
    as_postgres(&[
        &pg_bin("pg_ctl"),
        "-D",
        &data.display().to_string(),
        "-l",
        &log.display().to_string(),
        "-o",
        &server_options(socket_dir, durable),
        "-w",
        "-t",
        "60",
        "start",
    ])
    .map(|_| ())
    .map_err(|e| format!("{e}\nserver log:\n{}", std::fs::read_to_string(log).unwrap_or_default()))
}

fn pg_ctl_stop(data: &Path, mode: &str) -> Result<(), String> {
    as_postgres(&[&pg_bin("pg_ctl"), "-D", &data.display().to_string(), "-m", mode, "-w", "-t", "60", "stop"])
        .map(|_| ())
}

fn dsn_for(socket_dir: &Path) -> String {
    format!("host={} port=5432 user=postgres dbname=postgres", socket_dir.display())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().map_err(|e| format!("cannot run cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("cp -a {} {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr)))
    }
}

fn build_template() -> Result<Template, String> {
    if !Path::new(&pg_bin("initdb")).exists() {
        return Err(format!("{} is missing: install postgresql-15", pg_bin("initdb")));
    }
    let dir = postgres_tempdir("pppgate-testkit-pgtpl-");
    let _ = spawn_reaper(None, dir.path());
    let base = dir.path().join("base");
    as_postgres(&[
        &pg_bin("initdb"),
        "-D",
        &base.display().to_string(),
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        // 1 MB WAL segments instead of 16: a smaller template to copy per test.
        "--wal-segsize=1",
    ])?;
    let migrated = dir.path().join("migrated");
    copy_dir(&base, &migrated)?;
    pg_ctl_start(&migrated, dir.path(), &dir.path().join("template.log"), false)?;
    let result = (|| {
        let mut c =
            Client::connect(&dsn_for(dir.path()), NoTls).map_err(|e| format!("connect to template server: {e}"))?;
        policy_core::db::migrate::migrate(&mut c)
            .map_err(|e| format!("migrate template: {}", policy_core::error::one_line(&e)))?;
        Ok::<(), String>(())
    })();
    // A clean shutdown, so copies start without crash recovery.
    let stopped = pg_ctl_stop(&migrated, "fast");
    result?;
    stopped?;
    Ok(Template { _dir: dir, base, migrated })
}

fn template() -> &'static Template {
    require_root();
    match TEMPLATE.get_or_init(build_template) {
        Ok(t) => t,
        Err(e) => panic!("cannot prepare the PostgreSQL template for tests: {e}"),
    }
}

/// A running (or stopped) private PostgreSQL server.
pub struct PgServer {
    dir: TempDir,
    data: PathBuf,
    running: AtomicBool,
    durable: bool,
    reaper: Option<Child>,
}

impl PgServer {
    /// A server with pppgate's schema (all migrations applied), started.
    pub fn new() -> PgServer {
        Self::from_template(&template().migrated, false)
    }

    /// A server with an empty database (`initdb` only), started: for migration tests.
    pub fn new_unmigrated() -> PgServer {
        Self::from_template(&template().base, false)
    }

    /// A migrated server with fsync and synchronous commits on, as in production: for benchmarks
    /// whose figures include commits.
    pub fn new_durable() -> PgServer {
        Self::from_template(&template().migrated, true)
    }

    fn from_template(src: &Path, durable: bool) -> PgServer {
        let dir = postgres_tempdir("pppgate-testkit-pg-");
        let data = dir.path().join("data");
        copy_dir(src, &data).unwrap_or_else(|e| panic!("{e}"));
        let reaper = spawn_reaper(Some(&data), dir.path());
        let s = PgServer { dir, data, running: AtomicBool::new(false), durable, reaper };
        s.start();
        s
    }

    /// The libpq connection string (no password: trust authentication on a private socket).
    pub fn dsn(&self) -> String {
        dsn_for(self.dir.path())
    }

    /// The directory holding the server's socket (also `host=` in the DSN).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Starts the server on its data directory (again, after [`PgServer::stop`]).
    pub fn start(&self) {
        if self.is_running() {
            return;
        }
        pg_ctl_start(&self.data, self.dir.path(), &self.log_path(), self.durable)
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"));
        self.running.store(true, Ordering::SeqCst);
    }

    /// Stops the server (immediate shutdown: clients see the connection drop); data stays.
    pub fn stop(&self) {
        if !self.is_running() {
            return;
        }
        pg_ctl_stop(&self.data, "immediate").unwrap_or_else(|e| panic!("cannot stop PostgreSQL: {e}"));
        self.running.store(false, Ordering::SeqCst);
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Runs SQL through `psql` (stop on the first error) and returns its unaligned, tuples-only
    /// output; panics when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("psql failed: {e}\nSQL: {sql}"))
    }

    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_bin("psql"))
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A driver connection (for bulk setup; the code under test opens its own).
    pub fn client(&self) -> Client {
        Client::connect(&self.dsn(), NoTls).unwrap_or_else(|e| panic!("connect to the test PostgreSQL: {e}"))
    }
}

impl Default for PgServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // A copy of the server log for investigations (`PPPGATE_TEST_PG_KEEP_LOG=/path`).
        if let Ok(to) = std::env::var("PPPGATE_TEST_PG_KEEP_LOG") {
            let _ = std::fs::copy(self.log_path(), to);
        }
        if self.is_running() {
            let _ = pg_ctl_stop(&self.data, "immediate");
        }
        if let Some(mut r) = self.reaper.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

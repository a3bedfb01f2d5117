//! A configuration whose every path lives in the test's temp dir, and a runner for the `pppgate`
//! binary under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The walled garden tests use unless they say otherwise: a portal on tcp 8080 and DNS on one
/// host, and a whole second host.
pub const DEFAULT_GARDEN: [&str; 3] = ["198.51.100.53/32:tcp:8080", "198.51.100.53/32:udp:53", "198.51.100.54/32"];

/// The NAS identity and address of a [`TestEnv`]'s configuration unless the options say otherwise.
pub const NAS_IDENTITY: &str = "lns-test";
pub const NAS_IP: &str = "192.0.2.1";

/// A test's own filesystem world: config file, sessions dir, locks, run dir (outage markers),
/// accounting dir, audit log and rt_tables, all inside one temp dir (removed on drop).
pub struct TestEnv {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub sessions_dir: PathBuf,
    pub apply_lock: PathBuf,
    pub collector_lock: PathBuf,
    pub run_dir: PathBuf,
    /// pppgate's persistent state (last-run records of the timer jobs).
    pub state_dir: PathBuf,
    /// node_exporter's textfile directory (`metrics.textfile_dir`): the timer jobs write their
    /// `pppgate_*.prom` files here.
    pub metrics_dir: PathBuf,
    pub accounting_dir: PathBuf,
    pub audit_log: PathBuf,
    pub rt_tables: PathBuf,
    dsn: String,
    options: EnvOptions,
}

/// Options of a [`TestEnv`]'s configuration.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    pub garden: Vec<String>,
    pub lock_ttl_s: u64,
    pub max_rate_kbit: u32,
    pub client_pool: Vec<String>,
    /// Extra rt_tables entries (id → name); `main`, `local`, `default` are always there.
    pub rt_tables: BTreeMap<u32, String>,
    pub nas_identity: String,
    pub nas_ip: String,
    pub connect_timeout_ms: u64,
    /// `accounting.radacct` (auto, radius, own, off); `None` leaves the default.
    pub radacct: Option<String>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        EnvOptions {
            garden: DEFAULT_GARDEN.iter().map(|s| s.to_string()).collect(),
            lock_ttl_s: 60,
            max_rate_kbit: 10_000_000,
            client_pool: vec!["100.64.0.0/10".into()],
            rt_tables: BTreeMap::from([(100, "ktn".to_string()), (200, "isp2".to_string())]),
            nas_identity: NAS_IDENTITY.into(),
            nas_ip: NAS_IP.into(),
            connect_timeout_ms: 2000,
            radacct: None,
        }
    }
}

impl TestEnv {
    /// An environment for the database at `dsn` with the default options.
    pub fn new(dsn: &str) -> TestEnv {
        Self::with(dsn, EnvOptions::default())
    }

    pub fn with(dsn: &str, o: EnvOptions) -> TestEnv {
        // On tmpfs when there is one, like /run on a concentrator (an fsync there costs nothing).
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("pppgate-env-").tempdir_in(shm)
        } else {
            tempfile::Builder::new().prefix("pppgate-env-").tempdir()
        }
        .expect("temp dir");
        let root = dir.path();
        let run = root.join("run");
        let sessions_dir = run.join("vpn-sessions");
        let apply_lock = run.join("vpn-policy-apply.lock");
        let collector_lock = run.join("vpn-accounting-collector.lock");
        let run_dir = run.join("pppgate");
        let state_dir = root.join("var/lib/pppgate");
        let metrics_dir = root.join("var/lib/prometheus/node-exporter");
        let accounting_dir = root.join("var/lib/vpn-accounting");
        let audit_log = root.join("var/log/pppgate/audit.log");
        let rt_tables = root.join("etc/iproute2/rt_tables");
        for d in [
            &sessions_dir,
            &accounting_dir,
            &metrics_dir,
            &audit_log.parent().unwrap().to_path_buf(),
            &rt_tables.parent().unwrap().to_path_buf(),
        ] {
            std::fs::create_dir_all(d).expect("create env dirs");
        }
        let mut rt = String::from("255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n");
        for (id, name) in &o.rt_tables {
            rt.push_str(&format!("{id}\t{name}\n"));
        }
        std::fs::write(&rt_tables, rt).expect("write rt_tables");
        let config_path = root.join("etc/pppgate.toml");
        let env = TestEnv {
            dir,
            config_path,
            sessions_dir,
            apply_lock,
            collector_lock,
            run_dir,
            state_dir,
            metrics_dir,
            accounting_dir,
            audit_log,
            rt_tables,
            dsn: dsn.to_string(),
            options: o,
        };
        std::fs::write(&env.config_path, env.render(&env.options.nas_identity, &env.options.nas_ip))
            .expect("write config");
        env
    }

    /// The configuration text for NAS `identity`/`ip` with this environment's paths.
    fn render(&self, identity: &str, ip: &str) -> String {
        let o = &self.options;
        let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            r#"# Written by pppgate-testkit: every path inside {root}.
[database]
dsn = "{dsn}"
connect_timeout_ms = {connect_timeout}
statement_timeout_ms = 30000

[nas]
identity = "{identity}"
ip = "{ip}"

[paths]
sessions_dir = "{sessions}"
apply_lock = "{apply_lock}"
collector_lock = "{collector_lock}"
run_dir = "{run_dir}"
state_dir = "{state_dir}"
accounting_dir = "{accounting}"
audit_log = "{audit}"
rt_tables = "{rt}"

[policy]
walled_garden = [{garden}]
lock_ttl_s = {ttl}
max_rate_kbit = {max_rate}
client_pool = [{pool}]

[metrics]
textfile_dir = "{metrics}"
"#,
            root = self.root().display(),
            dsn = self.dsn,
            connect_timeout = o.connect_timeout_ms,
            sessions = self.sessions_dir.display(),
            apply_lock = self.apply_lock.display(),
            collector_lock = self.collector_lock.display(),
            run_dir = self.run_dir.display(),
            state_dir = self.state_dir.display(),
            metrics = self.metrics_dir.display(),
            accounting = self.accounting_dir.display(),
            audit = self.audit_log.display(),
            rt = self.rt_tables.display(),
            garden = list(&o.garden),
            ttl = o.lock_ttl_s,
            max_rate = o.max_rate_kbit,
            pool = list(&o.client_pool),
        );
        if let Some(mode) = &o.radacct {
            text.push_str(&format!("\n[accounting]\nradacct = \"{mode}\"\n"));
        }
        text
    }

    /// Another configuration file in this environment, for a second NAS on the same database and
    /// the same paths (`<identity>.toml` next to the main one); returns its path.
    pub fn config_path_for_nas(&self, identity: &str, ip: &str) -> PathBuf {
        let path = self.root().join(format!("etc/{identity}.toml"));
        std::fs::write(&path, self.render(identity, ip)).expect("write config");
        path
    }

    /// [`TestEnv::config_path_for_nas`], loaded.
    pub fn config_for_nas(&self, identity: &str, ip: &str) -> policy_core::config::Config {
        let p = self.config_path_for_nas(identity, ip);
        policy_core::config::Config::load(&p)
            .unwrap_or_else(|e| panic!("test config does not load: {}", policy_core::error::one_line(&e)))
    }

    pub fn dsn(&self) -> &str {
        &self.dsn
    }

    /// The configuration as pppgate loads it (panics when it does not validate).
    pub fn config(&self) -> policy_core::config::Config {
        policy_core::config::Config::load(&self.config_path)
            .unwrap_or_else(|e| panic!("test config does not load: {}", policy_core::error::one_line(&e)))
    }

    /// A runner for the `pppgate` binary at `bin` with this environment's config.
    pub fn cli(&self, bin: impl Into<PathBuf>) -> Cli {
        Cli { bin: bin.into(), config: self.config_path.clone(), env: Vec::new(), netns: None }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Appends a `[wireguard]` section to the configuration file at `config` (one of this
    /// environment's), with the master key at `etc/wg-master.key` and the lock under `run/` of
    /// this environment; returns `config`.
    pub fn add_wireguard(&self, config: &Path, wg: &WgSection) -> PathBuf {
        let mut text = std::fs::read_to_string(config).expect("read config");
        text.push_str(&format!("\n[wireguard]\ninterface = \"{}\"\nendpoint = \"{}\"\n", wg.interface, wg.endpoint));
        if let Some(backend) = wg.backend {
            text.push_str(&format!("backend = \"{backend}\"\n"));
        }
        text.push_str(&format!(
            "master_key_file = \"{}\"\nlock_file = \"{}\"\n{}",
            self.root().join("etc/wg-master.key").display(),
            self.root().join("run").join(wg.lock.unwrap_or("wg.lock")).display(),
            wg.extra
        ));
        std::fs::write(config, text).expect("write config");
        config.to_path_buf()
    }
}

/// A test configuration's `[wireguard]` section ([`TestEnv::add_wireguard`]).
#[derive(Default)]
pub struct WgSection<'a> {
    pub interface: &'a str,
    pub endpoint: &'a str,
    /// `backend = "…"` when set (the configuration's default otherwise).
    pub backend: Option<&'a str>,
    /// The lock file's name under `run/` (default `wg.lock`).
    pub lock: Option<&'a str>,
    /// Further lines of the section, each ending in a newline.
    pub extra: &'a str,
}

/// Runs the `pppgate` binary with `--config`.
#[derive(Debug, Clone)]
pub struct Cli {
    pub bin: PathBuf,
    pub config: PathBuf,
    /// Extra environment for every run (`PPPGATE_LOG` is `warn` unless set here).
    pub env: Vec<(String, String)>,
    /// A named network namespace to run the binary in (`ip netns exec`); `None`: the caller's.
    pub netns: Option<String>,
}

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct CliOut {
    pub args: Vec<String>,
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Cli {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("PPPGATE_TEST_CRASH_AT").env("PPPGATE_LOG", "warn");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> CliOut {
        self.run_env(args, &[])
    }

    /// Runs with extra environment variables for this run only.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> CliOut {
        let mut c = self.command(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let t0 = Instant::now();
        let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        use std::os::unix::process::ExitStatusExt;
        CliOut {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t0.elapsed(),
        }
    }

    /// Runs and asserts exit 0; returns the output.
    pub fn ok(&self, args: &[&str]) -> CliOut {
        self.run(args).expect_code(0)
    }
}

impl CliOut {
    /// Asserts the exit code (with the whole output in the message).
    pub fn expect_code(self, code: i32) -> CliOut {
        assert_eq!(
            self.code,
            Some(code),
            "pppgate {:?}: expected exit {code}, got {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit 0 and returns stdout as JSON.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code,
            Some(0),
            "pppgate {:?}: expected success, got {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.code,
            self.signal,
            self.stdout,
            self.stderr
        );
        self.json()
    }

    /// stdout as JSON (panics when it does not parse). The document must match its verb's schema
    /// (docs/schemas/<verb>.schema.json): every test that reads a `--json` output checks it.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("pppgate {:?} printed no JSON ({e}):\n{}", self.args, self.stdout));
        if let Some(verb) = crate::schema::verb_of(&self.args) {
            let name = crate::schema::schema_name(verb);
            if let Some(dir) = std::env::var_os("PPPGATE_JSON_CAPTURE") {
                let d = std::path::Path::new(&dir).join(&name);
                let _ = std::fs::create_dir_all(&d);
                let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
                let _ = std::fs::write(d.join(format!("{}-{n}.json", std::process::id())), &self.stdout);
            }
            if crate::schema::schema_path(&name).is_file() {
                crate::schema::assert_schema(&name, &v);
            }
        }
        v
    }
}

/// A private PostgreSQL (migrated) and a [`TestEnv`] on it: what the session/RADIUS tests start
/// from. Further NAS configurations on the same database and paths: [`DbEnv::config_path`].
pub struct DbEnv {
    pub env: TestEnv,
    pub db: crate::pg::PgServer,
}

impl DbEnv {
    pub fn new() -> DbEnv {
        let db = crate::pg::PgServer::new();
        DbEnv { env: TestEnv::new(&db.dsn()), db }
    }

    /// The environment's temp dir.
    pub fn dir(&self) -> &Path {
        self.env.root()
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.env.sessions_dir.clone()
    }

    /// A configuration file of NAS `identity`/`ip` on this database (one file per NAS).
    pub fn config_path(&self, identity: &str, ip: &str) -> PathBuf {
        self.env.config_path_for_nas(identity, ip)
    }

    pub fn config(&self, identity: &str, ip: &str) -> policy_core::config::Config {
        self.env.config_for_nas(identity, ip)
    }
}

impl Default for DbEnv {
    fn default() -> Self {
        Self::new()
    }
}

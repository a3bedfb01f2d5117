//! `/etc/pppgate/pppgate.toml`, loaded once and validated into a typed [`Config`].
//!
//! Unknown keys are errors (`deny_unknown_fields`). The database password never lives here: it
//! comes from a separate secrets file that must not be readable by group or others. Validation
//! collects every problem, so `pppgate config check` can print all of them, one per line.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::trust::{self, Sensitivity};

pub const DEFAULT_PATH: &str = "/etc/pppgate/pppgate.toml";

/// Hard cap of the connect path's apply window (R112: at most 15 s).
pub const APPLY_WINDOW_CAP: Duration = Duration::from_secs(15);
/// Fallback apply window when the SQL setting cannot be read quickly (R112: 10 s).
pub const APPLY_WINDOW_FALLBACK: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    database: RawDatabase,
    nas: RawNas,
    #[serde(default)]
    paths: RawPaths,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    connect: RawConnect,
    #[serde(default)]
    accounting: RawAccounting,
    #[serde(default)]
    janitor: RawJanitor,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    diag: RawDiag,
    wireguard: Option<RawWireguard>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    dsn: String,
    secrets_file: Option<PathBuf>,
    connect_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    pooler: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNas {
    identity: String,
    ip: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    sessions_dir: Option<PathBuf>,
    apply_lock: Option<PathBuf>,
    collector_lock: Option<PathBuf>,
    accounting_dir: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    rt_tables: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    walled_garden: Option<Vec<String>>,
    lock_ttl_s: Option<u64>,
    max_rate_kbit: Option<u32>,
    client_pool: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnect {
    apply_window_fallback_s: Option<u64>,
    settings_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccounting {
    radacct: Option<String>,
    interim_interval_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJanitor {
    heartbeat_multiple: Option<u32>,
    terminate_cause: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    textfile_dir: Option<PathBuf>,
    per_session: Option<bool>,
    per_session_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiag {
    pppd: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    xl2tpd_conf: Option<PathBuf>,
    pppd_options: Option<Vec<PathBuf>>,
    freeradius_dir: Option<PathBuf>,
    systemd: Option<String>,
    systemctl: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWireguard {
    interface: Option<String>,
    endpoint: Option<String>,
    listen_port: Option<u32>,
    master_key_file: Option<PathBuf>,
    backend: Option<String>,
    router_interface: Option<String>,
    router_listen_port: Option<u32>,
    keepalive_s: Option<u32>,
    dns: Option<Vec<String>>,
    mtu: Option<u32>,
    handshake_up_s: Option<u64>,
    address_quarantine_s: Option<u64>,
    intra_tenant: Option<bool>,
    management_nets: Option<Vec<String>>,
    lock_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    db_password: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub database: DatabaseConfig,
    pub nas: NasConfig,
    pub paths: Paths,
    pub policy: PolicyConfig,
    pub connect: ConnectConfig,
    pub accounting: AccountingConfig,
    pub janitor: JanitorConfig,
    pub metrics: MetricsConfig,
    pub diag: DiagConfig,
    /// `[wireguard]`: present when this concentrator provisions WireGuard for tenants.
    pub wireguard: Option<crate::wg::WgConfig>,
}

#[derive(Clone)]
pub struct DatabaseConfig {
    /// Parsed DSN, password (from the secrets file) already applied.
    pub pg: postgres::Config,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// Where the password came from (`pppgate diag` checks its trust).
    pub secrets_file: Option<PathBuf>,
    /// The DSN names a connection pooler (pgbouncer in session mode) in front of PostgreSQL:
    /// pppgate's per-connection settings are sent with SET after connecting, as poolers do not
    /// forward startup options (docs/ARCHITECTURE.md, "Warm SQL").
    pub pooler: bool,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // postgres::Config's Debug redacts the password; keep it that way.
        f.debug_struct("DatabaseConfig")
            .field("pg", &self.pg)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("secrets_file", &self.secrets_file)
            .field("pooler", &self.pooler)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct NasConfig {
    /// This node's identity (NAS-Identifier); used in audit lines and pppgate-owned rows.
    pub identity: String,
    /// NAS-IP-Address as FreeRADIUS stores it in radacct.nasipaddress.
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub sessions_dir: PathBuf,
    pub apply_lock: PathBuf,
    pub collector_lock: PathBuf,
    pub accounting_dir: PathBuf,
    pub audit_log: PathBuf,
    pub rt_tables: PathBuf,
    /// pppgate's volatile state (outage markers, connect events): /run/pppgate.
    pub run_dir: PathBuf,
    /// pppgate's persistent state (last-run records, connect statistics): /var/lib/pppgate.
    pub state_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            sessions_dir: "/run/vpn-sessions".into(),
            apply_lock: "/run/vpn-policy-apply.lock".into(),
            collector_lock: "/run/vpn-accounting-collector.lock".into(),
            accounting_dir: "/var/lib/vpn-accounting".into(),
            audit_log: "/var/log/pppgate/audit.log".into(),
            rt_tables: "/etc/iproute2/rt_tables".into(),
            run_dir: "/run/pppgate".into(),
            state_dir: "/var/lib/pppgate".into(),
        }
    }
}

/// One walled-garden destination: a network and optionally a protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GardenEntry {
    pub net: Ipv4Net,
    pub proto: Option<L4Proto>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

impl FromStr for GardenEntry {
    type Err = String;
    /// `CIDR`, `CIDR:proto` or `CIDR:proto:port` (e.g. `198.51.100.53/32:udp:53`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut parts = s.split(':');
        let net = parse_ipv4_net(parts.next().unwrap_or(""))?;
        let proto = match parts.next() {
            None => None,
            Some("tcp") => Some(L4Proto::Tcp),
            Some("udp") => Some(L4Proto::Udp),
            Some(p) => return Err(format!("unknown protocol {p:?} (tcp or udp)")),
        };
        let port = match parts.next() {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|v| *v != 0).ok_or_else(|| format!("bad port {p:?}"))?),
        };
        if parts.next().is_some() {
            return Err("too many ':' fields".into());
        }
        Ok(GardenEntry { net, proto, port })
    }
}

impl serde::Serialize for GardenEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for GardenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.net)?;
        if let Some(p) = self.proto {
            write!(f, ":{}", p.name())?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Parses `a.b.c.d/len` or a bare address (as /32); rejects host bits set (`10.0.0.1/24`).
pub fn parse_ipv4_net(s: &str) -> std::result::Result<Ipv4Net, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty network".into());
    }
    let net = if s.contains('/') {
        Ipv4Net::from_str(s).map_err(|_| format!("{s:?} is not an IPv4 CIDR"))?
    } else {
        let a = Ipv4Addr::from_str(s).map_err(|_| format!("{s:?} is not an IPv4 address"))?;
        Ipv4Net::new(a, 32).expect("32 is a valid prefix")
    };
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub walled_garden: Vec<GardenEntry>,
    /// A lock holder older than this is reported as stale.
    pub lock_ttl: Duration,
    /// Rates above this are refused as absurd.
    pub max_rate_kbit: u32,
    /// Address pools clients get; used by reconcile to recognise pppgate-managed addresses.
    pub client_pool: Vec<Ipv4Net>,
}

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub apply_window_fallback: Duration,
    pub settings_timeout: Duration,
}

/// Where the collector writes session octets in radacct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RadacctMode {
    /// Update the open row radius.so's accounting created; if there is none, write our own.
    Auto,
    /// Only update rows radius.so created.
    Radius,
    /// pppgate owns the session's radacct row (no RADIUS accounting in use).
    Own,
    /// Do not touch radacct (pppgate's own usage table only).
    Off,
}

#[derive(Debug, Clone)]
pub struct AccountingConfig {
    pub radacct: RadacctMode,
    pub interim_interval: Duration,
}

/// Prometheus metrics (docs/operations.md).
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// node_exporter's textfile-collector directory; the timer runs write their `.prom` files
    /// there when it exists. `None`: never written.
    pub textfile_dir: Option<PathBuf>,
    /// Per-session byte counters (label `ppp_if`, `connection_id`).
    pub per_session: bool,
    /// Above this many VALID sessions the per-session series are left out entirely (a
    /// predictable cardinality bound; `pppgate_session_series_suppressed` says so).
    pub per_session_max: usize,
}

/// Where `pppgate diag` looks for the rest of the stack.
#[derive(Debug, Clone)]
pub struct DiagConfig {
    pub pppd: PathBuf,
    /// pppd's plugin directory; `None`: /usr/lib/pppd/<version pppd reports>.
    pub plugin_dir: Option<PathBuf>,
    pub xl2tpd_conf: PathBuf,
    /// pppd option files that must load the plugin; empty: every `pppoptfile` of xl2tpd.conf.
    pub pppd_options: Vec<PathBuf>,
    pub freeradius_dir: PathBuf,
    /// Whether timers are checked through systemctl.
    pub systemd: SystemdMode,
    pub systemctl: PathBuf,
}

/// `diag.systemd`: check timers when systemd is PID 1 (`auto`), always, or never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdMode {
    Auto,
    Always,
    Never,
}

impl Default for DiagConfig {
    fn default() -> Self {
        DiagConfig {
            pppd: "/usr/sbin/pppd".into(),
            plugin_dir: None,
            xl2tpd_conf: "/etc/xl2tpd/xl2tpd.conf".into(),
            pppd_options: Vec::new(),
            freeradius_dir: "/etc/freeradius/3.0".into(),
            systemd: SystemdMode::Auto,
            systemctl: "/bin/systemctl".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct JanitorConfig {
    /// Another NAS's open row is stale when its acctupdatetime is older than this many interim
    /// intervals.
    pub heartbeat_multiple: u32,
    pub terminate_cause: String,
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

impl Config {
    /// Reads and validates `path`; every problem is reported in the error. The file must pass
    /// the trust rule ([`crate::trust`]): root's (or ours), not writable by group/others, no
    /// writable directory or symlink on the way. Any failure to read it is a configuration error
    /// (exit 78), a missing file included.
    pub fn load(path: &Path) -> Result<Config> {
        let text = trust::read_trusted_to_string(path, Sensitivity::Config)
            .map_err(|e| Error::Config { path: path.into(), problems: vec![file_problem(path, &e)] })?;
        Self::from_toml(path, &text)
    }

    /// Validates configuration text; `path` is used for messages. The secrets file it names is
    /// read from disk (under the trust rule). Each `[section]` is checked by its own function
    /// below; every problem of every section is collected, so one run of `config check` names
    /// them all.
    pub fn from_toml(path: &Path, text: &str) -> Result<Config> {
        Self::from_toml_with(path, text, &load_secrets)
    }

    /// [`Config::from_toml`] with the secrets file read by `secrets` (path → db_password), so the
    /// `config` fuzz target and its corpus replay run the whole validation without touching the
    /// disk; they pass [`parse_secrets`] over text of their own.
    pub fn from_toml_with(
        path: &Path,
        text: &str,
        secrets: &dyn Fn(&Path) -> std::result::Result<Option<String>, String>,
    ) -> Result<Config> {
        let fail = |problems: Vec<String>| Error::Config { path: path.into(), problems };
        let raw: RawConfig = toml::from_str(text).map_err(|e| fail(vec![toml_problem(&e)]))?;
        let mut problems = Vec::new();
        let p = &mut problems;
        let database = database_section(raw.database, secrets, p);
        let nas = nas_section(raw.nas, p);
        let paths = paths_section(raw.paths, p);
        let policy = policy_section(raw.policy, p);
        let connect = connect_section(raw.connect, p);
        let accounting = accounting_section(raw.accounting, p);
        let janitor = janitor_section(raw.janitor, p);
        let metrics = metrics_section(raw.metrics, p);
        let diag = diag_section(raw.diag, p);
        let wireguard = raw.wireguard.map(|w| wireguard_section(w, p));
        match (database, nas) {
            (Some(database), Some(nas)) if problems.is_empty() => Ok(Config {
                source: path.into(),
                database,
                nas,
                paths,
                policy,
                connect,
                accounting,
                janitor,
                metrics,
                diag,
                wireguard,
            }),
            _ => Err(fail(problems)),
        }
    }
}

/// `[database]`: the DSN (no password in it; the password comes from the secrets file) and the
/// timeouts. `None` when the DSN cannot be used (the problem is recorded).
fn database_section(
    raw: RawDatabase,
    secrets: &dyn Fn(&Path) -> std::result::Result<Option<String>, String>,
    problems: &mut Vec<String>,
) -> Option<DatabaseConfig> {
    let mut pg = match postgres::Config::from_str(&raw.dsn) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.push(format!("database.dsn: not a valid PostgreSQL connection string ({e})"));
            None
        }
    };
    if let Some(c) = &pg {
        if c.get_password().is_some() {
            problems.push("database.dsn: contains a password; put it in the secrets file (db_password)".into());
        }
        if c.get_hosts().is_empty() {
            problems.push("database.dsn: no host (use host=/var/run/postgresql for the local socket)".into());
        }
        if c.get_dbname().is_none() {
            problems.push("database.dsn: no dbname".into());
        }
    }
    if let Some(secrets_path) = &raw.secrets_file {
        match secrets(secrets_path) {
            Ok(pw) => {
                if let (Some(pw), Some(c)) = (pw, pg.as_mut()) {
                    c.password(pw);
                }
            }
            Err(p) => problems.push(p),
        }
    }
    let connect_timeout = ms(raw.connect_timeout_ms, 2000);
    let statement_timeout = ms(raw.statement_timeout_ms, 5000);
    if connect_timeout.is_zero() || connect_timeout > Duration::from_secs(60) {
        problems.push("database.connect_timeout_ms: must be between 1 and 60000".into());
    }
    if statement_timeout.is_zero() || statement_timeout > Duration::from_secs(600) {
        problems.push("database.statement_timeout_ms: must be between 1 and 600000".into());
    }
    Some(DatabaseConfig {
        pg: pg?,
        connect_timeout,
        statement_timeout,
        secrets_file: raw.secrets_file,
        pooler: raw.pooler.unwrap_or(false),
    })
}

/// `[nas]`: this concentrator's identity (as FreeRADIUS's `nasname`/radacct know it) and address.
fn nas_section(raw: RawNas, problems: &mut Vec<String>) -> Option<NasConfig> {
    let identity = raw.identity.trim().to_string();
    if identity.is_empty()
        || identity.len() > 64
        || !identity.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        problems.push(format!("nas.identity: {:?} must be 1-64 characters of [A-Za-z0-9._-]", raw.identity));
    }
    match IpAddr::from_str(raw.ip.trim()) {
        Ok(IpAddr::V4(ip)) if !ip.is_unspecified() => Some(NasConfig { identity, ip }),
        _ => {
            problems.push(format!("nas.ip: {:?} is not an IPv4 address", raw.ip));
            None
        }
    }
}

/// `[paths]`: every path pppgate writes or reads at run time; absolute, defaults per DESIGN.md.
fn paths_section(p: RawPaths, problems: &mut Vec<String>) -> Paths {
    let d = Paths::default();
    let paths = Paths {
        sessions_dir: p.sessions_dir.unwrap_or(d.sessions_dir),
        apply_lock: p.apply_lock.unwrap_or(d.apply_lock),
        collector_lock: p.collector_lock.unwrap_or(d.collector_lock),
        accounting_dir: p.accounting_dir.unwrap_or(d.accounting_dir),
        audit_log: p.audit_log.unwrap_or(d.audit_log),
        rt_tables: p.rt_tables.unwrap_or(d.rt_tables),
        run_dir: p.run_dir.unwrap_or(d.run_dir),
        state_dir: p.state_dir.unwrap_or(d.state_dir),
    };
    for (name, v) in [
        ("paths.sessions_dir", &paths.sessions_dir),
        ("paths.apply_lock", &paths.apply_lock),
        ("paths.collector_lock", &paths.collector_lock),
        ("paths.accounting_dir", &paths.accounting_dir),
        ("paths.audit_log", &paths.audit_log),
        ("paths.rt_tables", &paths.rt_tables),
        ("paths.run_dir", &paths.run_dir),
        ("paths.state_dir", &paths.state_dir),
    ] {
        if !v.is_absolute() {
            problems.push(format!("{name}: {} is not an absolute path", v.display()));
        }
    }
    paths
}

/// `[policy]`: the walled garden, the client pool, the apply lock's TTL and the rate ceiling.
fn policy_section(raw: RawPolicy, problems: &mut Vec<String>) -> PolicyConfig {
    let mut walled_garden = Vec::new();
    for (i, g) in raw.walled_garden.unwrap_or_default().iter().enumerate() {
        match g.parse::<GardenEntry>() {
            Ok(e) => walled_garden.push(e),
            Err(e) => problems.push(format!("policy.walled_garden[{i}]: {e}")),
        }
    }
    let mut client_pool = Vec::new();
    for (i, n) in raw.client_pool.unwrap_or_default().iter().enumerate() {
        match parse_ipv4_net(n) {
            Ok(net) => client_pool.push(net),
            Err(e) => problems.push(format!("policy.client_pool[{i}]: {e}")),
        }
    }
    let lock_ttl = Duration::from_secs(raw.lock_ttl_s.unwrap_or(120));
    if lock_ttl.is_zero() {
        problems.push("policy.lock_ttl_s: must be positive".into());
    }
    let max_rate_kbit = raw.max_rate_kbit.unwrap_or(10_000_000);
    if max_rate_kbit == 0 || max_rate_kbit > 100_000_000 {
        problems.push("policy.max_rate_kbit: must be between 1 and 100000000".into());
    }
    PolicyConfig { walled_garden, lock_ttl, max_rate_kbit, client_pool }
}

/// `[connect]`: the plugin's apply window fallback (R112) and its settings read timeout.
fn connect_section(raw: RawConnect, problems: &mut Vec<String>) -> ConnectConfig {
    let apply_window_fallback =
        Duration::from_secs(raw.apply_window_fallback_s.unwrap_or(APPLY_WINDOW_FALLBACK.as_secs()));
    if apply_window_fallback.is_zero() || apply_window_fallback > APPLY_WINDOW_CAP {
        problems.push(format!("connect.apply_window_fallback_s: must be between 1 and {}", APPLY_WINDOW_CAP.as_secs()));
    }
    let settings_timeout = ms(raw.settings_timeout_ms, 200);
    if settings_timeout.is_zero() || settings_timeout > Duration::from_secs(2) {
        problems.push("connect.settings_timeout_ms: must be between 1 and 2000".into());
    }
    ConnectConfig { apply_window_fallback, settings_timeout }
}

/// `[accounting]`: who writes radacct and the interim interval.
fn accounting_section(raw: RawAccounting, problems: &mut Vec<String>) -> AccountingConfig {
    let radacct = match raw.radacct.as_deref().unwrap_or("auto") {
        "auto" => RadacctMode::Auto,
        "radius" => RadacctMode::Radius,
        "own" => RadacctMode::Own,
        "off" => RadacctMode::Off,
        other => {
            problems.push(format!("accounting.radacct: {other:?} is not one of auto, radius, own, off"));
            RadacctMode::Auto
        }
    };
    let interim_interval = Duration::from_secs(raw.interim_interval_s.unwrap_or(300));
    if interim_interval < Duration::from_secs(10) {
        problems.push("accounting.interim_interval_s: must be at least 10".into());
    }
    AccountingConfig { radacct, interim_interval }
}

/// `[janitor]`: when an open radacct row counts as stale, and the cause it is closed with.
fn janitor_section(raw: RawJanitor, problems: &mut Vec<String>) -> JanitorConfig {
    let heartbeat_multiple = raw.heartbeat_multiple.unwrap_or(3);
    if !(2..=100).contains(&heartbeat_multiple) {
        problems.push("janitor.heartbeat_multiple: must be between 2 and 100".into());
    }
    let terminate_cause = raw.terminate_cause.unwrap_or_else(|| "Lost-Carrier".into());
    if terminate_cause.is_empty() || !terminate_cause.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        problems.push(format!("janitor.terminate_cause: {terminate_cause:?} is not a RADIUS cause name"));
    }
    JanitorConfig { heartbeat_multiple, terminate_cause }
}

/// `[metrics]`: the node_exporter textfile directory (empty: none) and the per-session series.
fn metrics_section(raw: RawMetrics, problems: &mut Vec<String>) -> MetricsConfig {
    let textfile_dir = match raw.textfile_dir {
        None => Some(PathBuf::from("/var/lib/prometheus/node-exporter")),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => {
            if !p.is_absolute() {
                problems.push(format!("metrics.textfile_dir: {} is not an absolute path", p.display()));
            }
            Some(p)
        }
    };
    let per_session_max = raw.per_session_max.unwrap_or(2000);
    if per_session_max == 0 || per_session_max > 100_000 {
        problems.push("metrics.per_session_max: must be between 1 and 100000".into());
    }
    MetricsConfig { textfile_dir, per_session: raw.per_session.unwrap_or(true), per_session_max }
}

/// `[diag]`: where `pppgate diag` looks for pppd, its options, xl2tpd, FreeRADIUS and systemd.
fn diag_section(raw: RawDiag, problems: &mut Vec<String>) -> DiagConfig {
    let dd = DiagConfig::default();
    let diag = DiagConfig {
        pppd: raw.pppd.unwrap_or(dd.pppd),
        plugin_dir: raw.plugin_dir,
        xl2tpd_conf: raw.xl2tpd_conf.unwrap_or(dd.xl2tpd_conf),
        pppd_options: raw.pppd_options.unwrap_or_default(),
        freeradius_dir: raw.freeradius_dir.unwrap_or(dd.freeradius_dir),
        systemd: match raw.systemd.as_deref().unwrap_or("auto") {
            "auto" => SystemdMode::Auto,
            "always" => SystemdMode::Always,
            "never" => SystemdMode::Never,
            other => {
                problems.push(format!("diag.systemd: {other:?} is not one of auto, always, never"));
                SystemdMode::Auto
            }
        },
        systemctl: raw.systemctl.unwrap_or(dd.systemctl),
    };
    let mut diag_paths: Vec<(String, &PathBuf)> = vec![
        ("diag.pppd".into(), &diag.pppd),
        ("diag.xl2tpd_conf".into(), &diag.xl2tpd_conf),
        ("diag.freeradius_dir".into(), &diag.freeradius_dir),
        ("diag.systemctl".into(), &diag.systemctl),
    ];
    if let Some(p) = &diag.plugin_dir {
        diag_paths.push(("diag.plugin_dir".into(), p));
    }
    for (i, p) in diag.pppd_options.iter().enumerate() {
        diag_paths.push((format!("diag.pppd_options[{i}]"), p));
    }
    for (name, v) in diag_paths {
        if !v.is_absolute() {
            problems.push(format!("{name}: {} is not an absolute path", v.display()));
        }
    }
    diag
}

/// `[wireguard]`: checked by the WireGuard module, which owns its meaning ([`crate::wg::WgConfig`]).
fn wireguard_section(w: RawWireguard, problems: &mut Vec<String>) -> crate::wg::WgConfig {
    crate::wg::WgConfig::from_raw(
        crate::wg::RawWgConfig {
            interface: w.interface,
            endpoint: w.endpoint,
            listen_port: w.listen_port,
            master_key_file: w.master_key_file,
            backend: w.backend,
            router_interface: w.router_interface,
            router_listen_port: w.router_listen_port,
            keepalive_s: w.keepalive_s,
            dns: w.dns,
            mtu: w.mtu,
            handshake_up_s: w.handshake_up_s,
            address_quarantine_s: w.address_quarantine_s,
            intra_tenant: w.intra_tenant,
            management_nets: w.management_nets,
            lock_file: w.lock_file,
        },
        problems,
    )
}

fn toml_problem(e: &toml::de::Error) -> String {
    // toml's message spans several lines with a source excerpt; keep the first line and position.
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => format!("syntax: {msg} (at byte {})", span.start),
        None => format!("syntax: {msg}"),
    }
}

/// Reads the secrets file (TOML, owned by root or the current user, not readable by
/// group/others) and returns its db_password.
fn load_secrets(path: &Path) -> std::result::Result<Option<String>, String> {
    let text = trust::read_trusted_to_string(path, Sensitivity::Secret)
        .map_err(|e| format!("database.secrets_file: {}", file_problem(path, &e)))?;
    parse_secrets(path, &text)
}

/// Parses the secrets file's text (`db_password = "..."`, unknown keys refused); `path` is for
/// the message.
pub fn parse_secrets(path: &Path, text: &str) -> std::result::Result<Option<String>, String> {
    let raw: RawSecrets =
        toml::from_str(text).map_err(|e| format!("database.secrets_file: {}: {}", path.display(), toml_problem(&e)))?;
    Ok(raw.db_password)
}

/// One line for a file that could not be read or is not trusted.
fn file_problem(wanted: &Path, e: &Error) -> String {
    match e {
        Error::Read { path, source } if path == wanted => format!("cannot read {}: {source}", path.display()),
        Error::Read { path, source } => {
            format!("cannot read {} ({}: {source})", wanted.display(), path.display())
        }
        other => crate::error::one_line(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = r#"
[database]
dsn = "host=/var/run/postgresql dbname=radius user=pppgate"

[nas]
identity = "lns-1"
ip = "192.0.2.1"

[policy]
walled_garden = ["198.51.100.53/32:udp:53", "198.51.100.80:tcp:80", "203.0.113.0/24"]
"#;

    fn load(text: &str) -> Result<Config> {
        Config::from_toml(Path::new("/test.toml"), text)
    }

    fn problems(text: &str) -> Vec<String> {
        match load(text) {
            Err(Error::Config { problems, .. }) => problems,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_with_canonical_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.nas.identity, "lns-1");
        assert_eq!(c.nas.ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(c.paths.sessions_dir, PathBuf::from("/run/vpn-sessions"));
        assert_eq!(c.paths.apply_lock, PathBuf::from("/run/vpn-policy-apply.lock"));
        assert_eq!(c.paths.accounting_dir, PathBuf::from("/var/lib/vpn-accounting"));
        assert_eq!(c.walled_garden_len(), 3);
        assert_eq!(c.policy.walled_garden[1].port, Some(80));
        assert_eq!(c.policy.walled_garden[2].proto, None);
        assert_eq!(c.database.pg.get_dbname(), Some("radius"));
        assert_eq!(c.connect.apply_window_fallback, APPLY_WINDOW_FALLBACK);
    }

    impl Config {
        fn walled_garden_len(&self) -> usize {
            self.policy.walled_garden.len()
        }
    }

    #[test]
    fn unknown_key_is_refused() {
        let p = problems(&format!("{GOOD}\n[nas2]\nx = 1\n"));
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("unknown field"), "{p:?}");
        let p = problems(&GOOD.replace("identity = \"lns-1\"", "identity = \"lns-1\"\nidentiti = \"x\""));
        assert!(p[0].contains("unknown field `identiti`"), "{p:?}");
    }

    #[test]
    fn bad_dsn_is_refused() {
        let p = problems(&GOOD.replace("host=/var/run/postgresql dbname=radius user=pppgate", "host='unterminated"));
        assert!(p[0].starts_with("database.dsn: not a valid"), "{p:?}");
        let p = problems(&GOOD.replace("user=pppgate", "user=pppgate password=hunter2"));
        assert!(p[0].contains("contains a password"), "{p:?}");
        assert!(!p[0].contains("hunter2"));
    }

    #[test]
    fn every_problem_is_reported() {
        let text = GOOD
            .replace("ip = \"192.0.2.1\"", "ip = \"not-an-ip\"")
            .replace("identity = \"lns-1\"", "identity = \"bad id!\"")
            .replace("\"198.51.100.80:tcp:80\"", "\"10.0.0.1/24\", \"1.2.3.4:icmp\"");
        let p = problems(&text);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|x| x.starts_with("nas.ip")));
        assert!(p.iter().any(|x| x.starts_with("nas.identity")));
        assert!(p.iter().any(|x| x.contains("host bits set")));
        assert!(p.iter().any(|x| x.contains("unknown protocol")));
    }

    #[test]
    fn world_readable_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.toml");
        let mut f = fs::File::create(&secrets).unwrap();
        writeln!(f, "db_password = \"s3cret\"").unwrap();
        let text = GOOD.replace("user=pppgate\"", &format!("user=pppgate\"\nsecrets_file = \"{}\"", secrets.display()));
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o644)).unwrap();
        let p = problems(&text);
        assert!(p[0].contains("mode 0644"), "{p:?}");
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(problems(&text)[0].contains("mode 0640"));
        fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
        let c = load(&text).unwrap();
        assert_eq!(c.database.pg.get_password(), Some(&b"s3cret"[..]));
        // The password never shows up in Debug output.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn missing_secrets_file_is_a_problem() {
        let text = GOOD.replace("user=pppgate\"", "user=pppgate\"\nsecrets_file = \"/nonexistent/s.toml\"");
        assert!(problems(&text)[0].contains("cannot read /nonexistent/s.toml"));
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/etc/pppgate.toml");
        // from_toml: the checkout's own ownership and modes are not the point here.
        let c = Config::from_toml(&path, &fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(c.nas.identity, "lns-1");
        assert_eq!(c.policy.walled_garden.len(), 3);
        assert_eq!(c.accounting.radacct, RadacctMode::Auto);
    }

    #[test]
    fn garden_entry_round_trips() {
        for s in ["198.51.100.53/32:udp:53", "203.0.113.0/24", "10.1.2.3/32:tcp"] {
            assert_eq!(s.parse::<GardenEntry>().unwrap().to_string(), s);
        }
        assert!("10.0.0.0/33".parse::<GardenEntry>().is_err());
        assert!("10.0.0.0/8:tcp:0".parse::<GardenEntry>().is_err());
        assert!("10.0.0.0/8:tcp:70000".parse::<GardenEntry>().is_err());
    }
}

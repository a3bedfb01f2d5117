//! `pppgate diag`: every fact an operator would otherwise collect by hand from nft, tc, ip,
//! /run/vpn-sessions, radacct and the journal, checked at once. Each check says ok, warn or fail,
//! gives a one-line finding, and the command to look deeper (docs/operations.md lists them).
//!
//! The checks only read: no lock is taken, nothing is written, the policy check is a dry-run
//! reconcile. A check that cannot be performed (no database for a database-backed check) is a
//! `warn` saying so; the database check itself fails in that case.
//!
//! Exit codes of `pppgate diag` ([`Report::exit_code`]): 0 every check ok, 1 warnings but no
//! failure, 2 at least one failure (Nagios' OK/WARNING/CRITICAL, so a monitoring plugin can run
//! it as it is); usage errors stay 64.

mod host;
pub use host::{plugin_built_for, radius_wiring, RadiusWiring, PLUGIN_BUILD_MARKER};
mod state;

use std::cell::{OnceCell, RefCell, RefMut};
use std::path::{Path, PathBuf};

use postgres::Client;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::error::one_line;
use crate::mapping::Checked;

/// Version of `pppgate diag --json` (docs/schemas/diag.schema.json).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable identifier (docs/operations.md).
    pub id: &'static str,
    pub status: Status,
    /// One line: what was found.
    pub finding: String,
    /// The command to look deeper.
    pub hint: String,
    /// Structured facts behind the finding (check-specific; see the schema).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Check {
    pub fn new(id: &'static str, status: Status, finding: impl Into<String>, hint: impl Into<String>) -> Check {
        Check { id, status, finding: finding.into(), hint: hint.into(), details: Value::Null }
    }

    pub fn with(mut self, details: Value) -> Check {
        self.details = details;
        self
    }
}

/// Every check, in the order they run and print.
pub const CHECKS: [&str; 15] = [
    "config",
    "database",
    "pppd",
    "nft",
    "guard",
    "sysctl",
    "sessions",
    "unpoliced",
    "policy",
    "radacct",
    "locks",
    "spool",
    "runs",
    "timers",
    "freeradius",
];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub warn: usize,
    pub fail: usize,
}

/// What `pppgate diag` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub pppgate_version: &'static str,
    pub config: PathBuf,
    /// NAS identity from the configuration (absent when it does not load).
    pub nas_identity: Option<String>,
    /// RFC 3339, UTC.
    pub generated_at: String,
    /// The worst status of any check.
    pub status: Status,
    pub counts: Counts,
    pub checks: Vec<Check>,
    /// Checks that could not run: every check but `config` needs the configuration.
    pub not_checked: Vec<&'static str>,
}

impl Report {
    /// 0 all ok, 1 warnings only, 2 any failure.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
}

/// Which checks to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Check ids; empty: all.
    pub only: Vec<String>,
}

/// Unknown check ids in `only`.
pub fn unknown_checks(only: &[String]) -> Vec<String> {
    only.iter().filter(|c| !CHECKS.contains(&c.as_str())).cloned().collect()
}

/// The mapping files with their validity, and the malformed ones (one line each).
pub(crate) type Scan = (Vec<Checked>, Vec<String>);

/// Shared, lazily computed facts several checks use.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a Config,
    db: RefCell<Option<std::result::Result<Client, String>>>,
    scan: OnceCell<std::result::Result<Scan, String>>,
}

impl<'a> Ctx<'a> {
    fn new(cfg: &'a Config) -> Ctx<'a> {
        Ctx { cfg, db: RefCell::new(None), scan: OnceCell::new() }
    }

    /// One database connection for every check (opened on first use).
    pub fn db(&self) -> std::result::Result<RefMut<'_, Client>, String> {
        let mut slot = self.db.borrow_mut();
        if slot.is_none() {
            *slot = Some(crate::db::connect(&self.cfg.database).map_err(|e| one_line(&e)));
        }
        match slot.as_ref().expect("set above") {
            Err(e) => Err(e.clone()),
            Ok(_) => Ok(RefMut::map(slot, |s| s.as_mut().expect("set").as_mut().expect("ok"))),
        }
    }

    /// The mapping files with their validity, and the malformed ones (one scan for all checks).
    pub fn scan(&self) -> std::result::Result<&Scan, String> {
        self.scan
            .get_or_init(|| {
                crate::mapping::scan_checked(&self.cfg.paths.sessions_dir)
                    .map(|(ok, bad)| (ok, bad.iter().map(|e| one_line(e)).collect()))
                    .map_err(|e| one_line(&e))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Runs the checks against the configuration at `config_path`.
pub fn run(config_path: &Path, opts: &Options) -> Report {
    let wanted = |id: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == id);
    let loaded = Config::load(config_path);
    let mut checks = Vec::new();
    let mut not_checked = Vec::new();
    if wanted("config") {
        checks.push(host::config(config_path, loaded.as_ref()));
    }
    match &loaded {
        Ok(cfg) => {
            let ctx = Ctx::new(cfg);
            type CheckFn = fn(&Ctx) -> Check;
            let all: [(&str, CheckFn); 14] = [
                ("database", state::database),
                ("pppd", host::pppd),
                ("nft", state::nft),
                ("guard", host::guard),
                ("sysctl", state::sysctl),
                ("sessions", state::sessions),
                ("unpoliced", state::unpoliced),
                ("policy", state::policy),
                ("radacct", state::radacct),
                ("locks", state::locks),
                ("spool", state::spool),
                ("runs", state::runs),
                ("timers", host::timers),
                ("freeradius", host::freeradius),
            ];
            for (id, f) in all {
                if wanted(id) {
                    checks.push(f(&ctx));
                }
            }
        }
        Err(_) => not_checked = CHECKS.iter().skip(1).filter(|id| wanted(id)).copied().collect(),
    }
    let mut counts = Counts::default();
    for c in &checks {
        match c.status {
            Status::Ok => counts.ok += 1,
            Status::Warn => counts.warn += 1,
            Status::Fail => counts.fail += 1,
        }
    }
    Report {
        schema_version: SCHEMA_VERSION,
        pppgate_version: env!("CARGO_PKG_VERSION"),
        config: config_path.to_path_buf(),
        nas_identity: loaded.as_ref().ok().map(|c| c.nas.identity.clone()),
        generated_at: crate::audit::rfc3339(crate::lock::now_unix()),
        status: checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok),
        counts,
        checks,
        not_checked,
    }
}

/// "3 items: a, b, c" for findings, at most `max` named.
pub(crate) fn list(items: &[String], max: usize) -> String {
    let mut s = items.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(", … ({} more)", items.len() - max));
    }
    s
}

/// Seconds as a short human duration: 45s, 12m, 3h, 2d.
pub(crate) fn ago(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_worst_status() {
        let mk = |s: &[Status]| Report {
            schema_version: SCHEMA_VERSION,
            pppgate_version: "t",
            config: PathBuf::new(),
            nas_identity: None,
            generated_at: String::new(),
            status: s.iter().copied().max().unwrap_or(Status::Ok),
            counts: Counts::default(),
            checks: vec![],
            not_checked: vec![],
        };
        assert_eq!(mk(&[]).exit_code(), 0);
        assert_eq!(mk(&[Status::Ok, Status::Ok]).exit_code(), 0);
        assert_eq!(mk(&[Status::Ok, Status::Warn]).exit_code(), 1);
        assert_eq!(mk(&[Status::Fail, Status::Warn]).exit_code(), 2);
    }

    #[test]
    fn helpers() {
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(3 * 86_400), "3d");
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(list(&items, 2), "a, b, … (1 more)");
        assert_eq!(unknown_checks(&["nft".into(), "bogus".into()]), vec!["bogus".to_string()]);
    }
}

//! The one error type of policy-core. Each variant says what failed; `exit_code` maps it onto the
//! exit codes of DESIGN.md and `is_transient` tells callers whether a retry may succeed.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// Exit codes of the `pppgate` admin and timer verbs (DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    Usage = 64,
    DataErr = 65,
    /// TEMPFAIL_SQL.
    SqlUnavailable = 69,
    Internal = 70,
    /// TEMPFAIL_LOCKED.
    Locked = 75,
    Config = 78,
}

impl ExitCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Why a mapping file does not parse (`mapping::Mapping::parse`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("line {0} is not KEY=VALUE")]
    NotKeyValue(usize),
    #[error("key {0} appears twice")]
    Duplicate(String),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("{key} has an invalid value {value:?}")]
    BadValue { key: &'static str, value: String },
    #[error("PPP_IF {0:?} does not match the file name")]
    NameMismatch(String),
    #[error("file is not valid UTF-8")]
    NotUtf8,
}

/// Who holds a lock, as its holder wrote it into the lock file (`lock`: `pid= since= what=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    pub pid: u32,
    /// Unix seconds.
    pub since: i64,
    /// The verb holding it.
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every problem found in a configuration file, one per entry.
    #[error("invalid configuration {path}: {}", .problems.join("; "))]
    Config { path: PathBuf, problems: Vec<String> },

    /// A file root would read that fails the trust rule (`trust`): its path and what is wrong.
    #[error("refusing {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },

    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("malformed mapping file {path}: {reason}")]
    Mapping { path: PathBuf, reason: MappingError },

    /// A value given on the command line or from an external source that does not parse.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidInput { what: &'static str, value: String, reason: String },

    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },

    #[error("database unavailable")]
    SqlUnavailable(#[source] postgres::Error),

    #[error("database query failed")]
    Sql(#[source] postgres::Error),

    #[error("database schema version {found} is older than {needed}; run `pppgate db migrate`")]
    SchemaTooOld { found: i32, needed: i32 },

    #[error("database schema version {found} is newer than this pppgate ({known})")]
    SchemaTooNew { found: i32, known: i32 },

    #[error("lock {path} is held{}", holder_text(.holder))]
    Locked { path: PathBuf, holder: Option<LockHolder> },

    #[error("failed to lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("netlink {op} failed")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to run {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("{program} failed: {stderr}")]
    ExecFailed { program: String, stderr: String },

    /// A sealed key that does not open: altered, moved from another row, or the wrong master key.
    #[error("cannot open the {what}: {reason}")]
    Crypto { what: String, reason: String },

    #[error("kernel state does not match the plan after apply: {0}")]
    Verify(String),

    /// Removing a session's kernel state left something behind (each removal was tried; the
    /// next reconcile converges).
    #[error("cleanup of {ifname} incomplete: {}", .errors.join("; "))]
    Cleanup { ifname: String, errors: Vec<String> },

    #[error("spool record {path} is unusable: {reason}")]
    Spool { path: PathBuf, reason: String },

    #[error("system call {call} failed")]
    Sys {
        call: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn holder_text(h: &Option<LockHolder>) -> String {
    match h {
        Some(h) => format!(" by pid {} since {}", h.pid, h.since),
        None => String::new(),
    }
}

impl Error {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::SqlUnavailable(_) | Error::Locked { .. } => true,
            Error::Sql(e) => sql_is_transient(e),
            _ => false,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config { .. }
            | Error::Untrusted { .. }
            | Error::SchemaTooOld { .. }
            | Error::SchemaTooNew { .. } => ExitCode::Config,
            Error::Mapping { .. }
            | Error::InvalidInput { .. }
            | Error::NotFound { .. }
            | Error::Spool { .. }
            | Error::Crypto { .. } => ExitCode::DataErr,
            Error::SqlUnavailable(_) => ExitCode::SqlUnavailable,
            Error::Sql(e) if sql_is_transient(e) => ExitCode::SqlUnavailable,
            Error::Locked { .. } => ExitCode::Locked,
            _ => ExitCode::Internal,
        }
    }

    pub fn invalid(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { what, value: value.into(), reason: reason.into() }
    }

    /// Wraps a postgres error, classifying connection-level failures as "unavailable": a closed
    /// connection, an I/O error, and the server ending the session (SQLSTATE class 08, and
    /// 57P01/57P02/57P03/57P05: `pg_ctl restart -m fast`, `pg_terminate_backend`, a crash of
    /// another backend, a server still starting, an idle-session timeout).
    pub fn from_sql(e: postgres::Error) -> Self {
        if e.is_closed()
            || e.code().is_none() && e.as_db_error().is_none()
            || e.code().is_some_and(state_is_unavailable)
        {
            Error::SqlUnavailable(e)
        } else {
            Error::Sql(e)
        }
    }
}

/// SQLSTATEs that say the server ended (or would not start) the session, not that the query was
/// wrong.
fn state_is_unavailable(c: &postgres::error::SqlState) -> bool {
    let c = c.code();
    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "57P05")
}

fn sql_is_transient(e: &postgres::Error) -> bool {
    use postgres::error::SqlState;
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(c) => {
            *c == SqlState::QUERY_CANCELED
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::TOO_MANY_CONNECTIONS
        }
    }
}

/// Renders an error and its sources on one line: `a: b: c`.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let t = src.to_string();
        if !t.is_empty() && !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = src.source();
    }
    s.replace('\n', " ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! FreeRADIUS integration: the checkrad replacement, the rlm_exec Simultaneous-Use hook, and the
//! two encodings they depend on (rlm_exec's environment values, rlm_sql's user-name escaping).
//! docs/SESSIONS-RADIUS.md describes the wiring; packaging/freeradius/ ships the snippets.

pub mod env;
pub mod sqlname;

use std::net::IpAddr;

use postgres::Client;
use serde::Serialize;

use crate::config::Config;
use crate::db::radacct;
use crate::error::{Error, Result};
use crate::janitor::{self, CounterSource, Report, Rules, Scope, Verdict};

/// checkrad's answer (FreeRADIUS `rad_check_ts`): exit 0 = not online (stale), 1 = online;
/// 2 = error is every `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Stale,
    Online,
}

impl Presence {
    pub fn exit_code(self) -> u8 {
        match self {
            Presence::Stale => 0,
            Presence::Online => 1,
        }
    }
}

/// The arguments FreeRADIUS passes: `checkrad <nas_type> <nas_ip> <nas_port> <user> <session_id>`,
/// where user and session id are radacct's stored (escaped) values of the row in question.
#[derive(Debug, Clone)]
pub struct CheckradArgs {
    pub nas_type: String,
    pub nas_ip: String,
    pub nas_port: String,
    pub user: String,
    pub session_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckradReport {
    pub presence: Presence,
    pub this_nas: bool,
    /// The open rows the question is about, with their verdicts.
    pub rows: Vec<janitor::RowReport>,
    /// In the answer for this NAS: the janitor run for the user (stale rows closed).
    pub janitor: Option<Report>,
}

/// rlm_sql's stage alone, reversed (`sqlname::sql_unescape`); checkrad uses
/// `sqlname::user_name_from_stored`, which also reverses FreeRADIUS's quoting.
pub use sqlname::sql_unescape;

/// checkrad's `<nas_ip>` argument (FreeRADIUS passes the NAS's address; surrounding blanks are
/// ignored). The entry point of the `checkrad_args` fuzz target, with [`sql_unescape`].
pub fn parse_nas_ip(s: &str) -> Result<IpAddr> {
    s.trim().parse().map_err(|_| Error::invalid("NAS address", s, "is not an IP address"))
}

/// Answers FreeRADIUS's checkrad question (see docs/SESSIONS-RADIUS.md):
/// * this NAS: the on-demand janitor runs for the user (closing its stale rows here — the "zap");
///   the row is online when one of the rows it names is still open and claimed by a VALID
///   mapping (or too young to judge);
/// * another NAS: online while the heartbeat of one of the named rows is recent; nothing is
///   modified.
///
/// A row that no longer exists, or is already closed, is "not online".
pub fn checkrad<S: CounterSource>(
    cfg: &Config,
    client: &mut Client,
    args: &CheckradArgs,
    state: &S,
) -> Result<CheckradReport> {
    let nas_ip = parse_nas_ip(&args.nas_ip)?;
    let this_nas = nas_ip == IpAddr::V4(cfg.nas.ip);
    let named =
        |r: &radacct::OpenRow| r.nas_ip == nas_ip && r.acct_session_id == args.session_id && r.username == args.user;
    if this_nas {
        let Some(user_name) = sqlname::user_name_from_stored(&args.user) else {
            tracing::warn!(user = %args.user, "checkrad: user name is not one FreeRADIUS and rlm_sql write; answering not online");
            return Ok(CheckradReport { presence: Presence::Stale, this_nas, rows: vec![], janitor: None });
        };
        let report = janitor::run(cfg, client, &Scope::Login(user_name), state, false)?;
        let rows: Vec<janitor::RowReport> = report.rows.iter().filter(|r| named(&r.row)).cloned().collect();
        let online = rows.iter().any(|r| !r.closed && r.verdict.online());
        let presence = if online { Presence::Online } else { Presence::Stale };
        return Ok(CheckradReport { presence, this_nas, rows, janitor: Some(report) });
    }
    let rules = Rules::from_config(cfg);
    let db_now = radacct::now(client)?;
    let rows: Vec<janitor::RowReport> = radacct::open_rows_for_checkrad(client, nas_ip, &args.user, &args.session_id)?
        .into_iter()
        .map(|row| {
            let verdict = janitor::classify(&row, &[], &rules, db_now);
            janitor::RowReport { row, verdict, closed: false }
        })
        .collect();
    let online = rows.iter().any(|r| r.verdict == Verdict::OtherNasAlive);
    Ok(CheckradReport {
        presence: if online { Presence::Online } else { Presence::Stale },
        this_nas,
        rows,
        janitor: None,
    })
}

/// The hook's answer in rlm_exec's terms (mods-available/echo): exit 0 = ok, 1 = reject; every
/// `Err` is 2 = fail. Never ok without a database answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookVerdict {
    Ok,
    Reject,
}

impl HookVerdict {
    pub fn exit_code(self) -> u8 {
        match self {
            HookVerdict::Ok => 0,
            HookVerdict::Reject => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SimulReport {
    pub verdict: HookVerdict,
    /// Simultaneous-Use of the user, when FreeRADIUS passed it.
    pub max: Option<u32>,
    /// Sessions counted as online after the janitor ran.
    pub online: usize,
    pub janitor: Report,
}

/// `radius exec simultaneous-use`: runs the on-demand janitor for the User-Name, then — when the
/// user has a Simultaneous-Use limit — counts the sessions that are still online the way
/// checkrad would answer for each (this NAS: claimed by a VALID mapping or too young; other NAS:
/// recent heartbeat; rows from before a NAS's Accounting-On not counted) and rejects at the limit.
pub fn simultaneous_use<S: CounterSource>(
    cfg: &Config,
    client: &mut Client,
    login: &[u8],
    max: Option<u32>,
    state: &S,
) -> Result<SimulReport> {
    let report = janitor::run(cfg, client, &Scope::Login(login.to_vec()), state, false)?;
    let online = report.online_rows();
    let verdict = match max {
        Some(m) if online >= m as usize => HookVerdict::Reject,
        _ => HookVerdict::Ok,
    };
    Ok(SimulReport { verdict, max, online, janitor: report })
}

/// Parses the hook's `--max` value as FreeRADIUS expands `%{control:Simultaneous-Use}`: empty
/// when the user has no limit, else a decimal count.
pub fn parse_max(s: &str) -> Result<Option<u32>> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) || t.len() > 9 {
        return Err(Error::invalid("Simultaneous-Use", s, "is not a decimal count"));
    }
    Ok(Some(t.parse().expect("checked digits")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_parsing() {
        assert_eq!(parse_max("").unwrap(), None);
        assert_eq!(parse_max("  ").unwrap(), None);
        assert_eq!(parse_max("1").unwrap(), Some(1));
        assert_eq!(parse_max("0").unwrap(), Some(0));
        assert!(parse_max("-1").is_err());
        assert!(parse_max("1x").is_err());
        assert!(parse_max("9999999999").is_err());
    }
}

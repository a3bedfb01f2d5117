//! The stale-session janitor (R502–R504): closes this NAS's open radacct rows and open
//! pppgate_sessions rows that no live session stands behind, so Simultaneous-Use never locks a
//! user out because of a session that ended without an Accounting-Stop.
//!
//! # Which rows it touches
//! Only rows of this NAS: `radacct.nasipaddress = nas.ip` and `pppgate_sessions.nas_identity =
//! nas.identity`; the NAS condition is repeated inside the closing UPDATE. Rows of other NAS are
//! classified (for checkrad and the Simultaneous-Use hook) but never modified.
//!
//! # When a radacct row of this NAS belongs to a live session
//! radius.so's Acct-Session-Id is malformed and not unique (FINDINGS.md), so it is never used to
//! find a row. A row is **live** when some VALID mapping (the one definition, `mapping::validity`)
//! claims it:
//! * `radacct.username` equals the login of the mapping's connection
//!   (`vpn_connections.subaccount_login` of CONNECTION_ID) as FreeRADIUS stores it — after pppd's
//!   rendering, FreeRADIUS's quoting and rlm_sql's escaping (`radius::sqlname::sql_username`) —
//!   and
//! * `radacct.framedipaddress` equals the mapping's CLIENT_IP (a row without an address matches
//!   on the user name alone — the cautious side), and
//! * the row did not start before the mapping's pppd process existed:
//!   `acctstarttime >= START_TS - CLOCK_SKEW_S` (START_TS is pppd's process start; FreeRADIUS
//!   stamps acctstarttime from the NAS's Event-Timestamp or its own clock). This is what tells
//!   the stale row of a crashed session from the live row of the reconnect that got the same
//!   address from the pool.
//!
//! A row no VALID mapping claims is **stale** — unless it is younger than [`START_GRACE_S`]
//! (database clock): between radius.so's Acct-Start and pppgate.so writing the mapping lies a
//! short window (pppd runs ip-up notifiers in reverse load order), and a row in that window is
//! left alone. A young row counts as online for Simultaneous-Use: the error is on the safe side.
//!
//! # Other NAS: the heartbeat
//! A row of another NAS is alive while its heartbeat — the later of acctupdatetime and
//! acctstarttime — is at most `janitor.heartbeat_multiple × accounting.interim_interval` old
//! (3 × 300 s by default), by the database's clock; older (or neither time set) it is stale.
//! This needs interim updates: every NAS must send them (Acct-Interim-Interval in the reply).
//!
//! # Closing
//! `acctstoptime` is the database's now() — as FreeRADIUS's own Accounting-On bulk close does —
//! unless the accounting state knows when the session was last seen ([`CounterSource`]);
//! `acctsessiontime = stop - acctstarttime`; `acctterminatecause = janitor.terminate_cause`
//! (Lost-Carrier); octets from the accounting state when known, never lower than what interim
//! updates stored. The UPDATE only touches rows that are still open, so a real Stop that arrives
//! meanwhile wins.
//!
//! pppgate_sessions rows are live when a VALID mapping has the same PPP_IF, CLIENT_IP and
//! PPPD_PID; otherwise (after the same grace) they are closed the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use postgres::Client;
use serde::Serialize;

use crate::config::Config;
use crate::db;
use crate::db::radacct::{self, Close, CloseSession, OpenRow, OpenSession};
use crate::error::{one_line, Error, Result};
use crate::kernel::links::LinkSnapshot;
use crate::mapping::{self, Mapping};
use crate::radius::sqlname::{sql_username, stored_user_name};

/// A row of this NAS younger than this (database clock) is never closed.
pub const START_GRACE_S: i64 = 10;
/// Allowed difference between the NAS's clock (START_TS) and the clock that stamped acctstarttime.
pub const CLOCK_SKEW_S: i64 = 60;

// ---------------------------------------------------------------------------------------------
// The accounting state boundary

/// A session that ended without an Accounting-Stop, as the janitor knows it.
#[derive(Debug, Clone, Copy)]
pub struct EndedSession<'a> {
    pub nas_identity: &'a str,
    /// radacct.username (escaped) or pppgate_sessions.username.
    pub username: Option<&'a str>,
    pub framed_ip: Option<Ipv4Addr>,
    pub start: Option<i64>,
    pub acct_session_id: Option<&'a str>,
    pub session_key: Option<&'a str>,
    pub ppp_if: Option<&'a str>,
    pub pppd_pid: Option<u32>,
}

/// Last counters the accounting collector saw for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalUsage {
    /// Octets from the client (radacct acctinputoctets; pppgate_sessions bytes_in).
    pub input_octets: u64,
    /// Octets to the client.
    pub output_octets: u64,
    /// When the session was last seen alive (Unix s), if known.
    pub last_seen: Option<i64>,
}

/// Where final counters come from: the collector's state in /var/lib/vpn-accounting
/// (`accounting::LazyStateView`); [`NoAccountingState`] keeps what SQL already has.
pub trait CounterSource {
    fn final_counters(&self, session: &EndedSession<'_>) -> Option<FinalUsage>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct NoAccountingState;

impl CounterSource for NoAccountingState {
    fn final_counters(&self, _: &EndedSession<'_>) -> Option<FinalUsage> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Classification (pure)

/// A live session: a VALID mapping and the radacct user name of its connection's login
/// (`None` when the connection has no vpn_connections row any more).
#[derive(Debug, Clone)]
pub struct Live {
    pub mapping: Mapping,
    pub sql_username: Option<String>,
}

/// The decision rules, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub nas_ip: Ipv4Addr,
    pub grace: i64,
    pub skew: i64,
    /// heartbeat_multiple × interim interval, seconds.
    pub heartbeat_window: i64,
}

impl Rules {
    pub fn from_config(cfg: &Config) -> Rules {
        Rules {
            nas_ip: cfg.nas.ip,
            grace: START_GRACE_S,
            skew: CLOCK_SKEW_S,
            heartbeat_window: i64::from(cfg.janitor.heartbeat_multiple)
                * cfg.accounting.interim_interval.as_secs() as i64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    /// No VALID mapping of this login with this address.
    NoValidMapping,
    /// A VALID mapping of this login and address exists, but its pppd started after this row.
    StartedBeforeLiveSession,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// This NAS; claimed by a VALID mapping.
    Live { ppp_if: String, pppd_pid: u32, connection_id: i64 },
    /// This NAS; no VALID mapping, but too young to judge.
    TooYoung,
    /// This NAS; no live session behind it: closed.
    Stale { reason: StaleReason },
    /// Another NAS; heartbeat recent.
    OtherNasAlive,
    /// Another NAS; heartbeat too old (never closed here).
    OtherNasStale,
}

impl Verdict {
    /// Counts against Simultaneous-Use.
    pub fn online(&self) -> bool {
        matches!(self, Verdict::Live { .. } | Verdict::TooYoung | Verdict::OtherNasAlive)
    }
}

/// Classifies one open radacct row (see the module docs).
pub fn classify(row: &OpenRow, live: &[Live], rules: &Rules, db_now: i64) -> Verdict {
    if row.nas_ip != IpAddr::V4(rules.nas_ip) {
        let heartbeat = row.update.into_iter().chain(row.start).max();
        return match heartbeat {
            Some(t) if t >= db_now - rules.heartbeat_window => Verdict::OtherNasAlive,
            _ => Verdict::OtherNasStale,
        };
    }
    let mut same_user_and_ip = false;
    for l in live {
        if l.sql_username.as_deref() != Some(row.username.as_str()) {
            continue;
        }
        if row.framed_ip.is_some_and(|ip| ip != l.mapping.client_ip) {
            continue;
        }
        same_user_and_ip = true;
        if !matches!(row.start, Some(s) if s < l.mapping.start_ts - rules.skew) {
            return Verdict::Live {
                ppp_if: l.mapping.ppp_if.clone(),
                pppd_pid: l.mapping.pppd_pid,
                connection_id: l.mapping.connection_id,
            };
        }
    }
    if row.start.or(row.update).is_some_and(|t| t > db_now - rules.grace) {
        return Verdict::TooYoung;
    }
    Verdict::Stale {
        reason: if same_user_and_ip { StaleReason::StartedBeforeLiveSession } else { StaleReason::NoValidMapping },
    }
}

/// Classifies one open pppgate_sessions row of this NAS.
pub fn classify_session(s: &OpenSession, live: &[Mapping], rules: &Rules, db_now: i64) -> Verdict {
    for m in live {
        if m.ppp_if == s.ppp_if && Some(m.client_ip) == s.client_ip && i64::from(m.pppd_pid) == i64::from(s.pppd_pid) {
            return Verdict::Live { ppp_if: m.ppp_if.clone(), pppd_pid: m.pppd_pid, connection_id: m.connection_id };
        }
    }
    if s.start > db_now - rules.grace {
        return Verdict::TooYoung;
    }
    Verdict::Stale { reason: StaleReason::NoValidMapping }
}

// ---------------------------------------------------------------------------------------------
// Live sessions from the sessions directory

/// VALID mappings found by one scan.
#[derive(Debug, Clone, Default)]
pub struct Mappings {
    pub valid: Vec<Mapping>,
    /// Files that are malformed (never sessions; reported).
    pub malformed: Vec<String>,
}

/// Scans the sessions directory; with `only`, checks validity only for mappings of that
/// connection (the on-demand path). A file that cannot be *read* aborts the scan: deciding
/// "stale" without being able to see the mappings would close live sessions (e.g. FreeRADIUS's
/// user lacking the pppgate group).
pub fn live_mappings(dir: &Path, only: Option<i64>) -> Result<Mappings> {
    let mut out = Mappings::default();
    let mut candidates = Vec::new();
    for s in mapping::scan(dir)? {
        match s.mapping {
            Ok(m) => {
                if !matches!(only, Some(id) if id != m.connection_id) {
                    candidates.push(m);
                }
            }
            Err(e @ Error::Read { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(path = %s.path.display(), "{}", one_line(&e));
                out.malformed.push(one_line(&e));
            }
        }
    }
    if candidates.is_empty() {
        return Ok(out);
    }
    let links = LinkSnapshot::read_addresses()?;
    for m in candidates {
        let v = m.validity(&links);
        if v.is_valid() {
            out.valid.push(m);
        } else {
            tracing::debug!(ppp_if = %m.ppp_if, conn_id = m.connection_id, pid = m.pppd_pid, "mapping is not VALID: {}", v.reason());
        }
    }
    Ok(out)
}

/// The on-demand path's shortcut: the VALID mappings of connection `id` that could claim a row
/// with one of `ips`, or a pppgate_sessions row on one of `ifnames`, reading only the mapping
/// files of the interfaces that carry one of those addresses as peer (plus `ifnames`) instead of
/// every file. Same result as [`live_mappings`] for these rows: a VALID mapping's PPP_IF carries
/// its CLIENT_IP as peer, and its file is named after PPP_IF.
pub fn live_mappings_for(
    dir: &Path,
    id: i64,
    ips: &BTreeSet<Ipv4Addr>,
    ifnames: &BTreeSet<String>,
) -> Result<Mappings> {
    let mut out = Mappings::default();
    let links = LinkSnapshot::read_addresses()?;
    let mut names: BTreeSet<&str> = ifnames.iter().map(String::as_str).collect();
    for (name, link) in &links.by_name {
        if link.peers.iter().any(|p| ips.contains(p)) {
            names.insert(name);
        }
    }
    for name in names {
        if !mapping::valid_ifname(name) {
            continue;
        }
        let path = dir.join(Mapping::file_name(name));
        match Mapping::read(&path) {
            Ok(m) => {
                if m.connection_id == id && m.validity(&links).is_valid() {
                    out.valid.push(m);
                }
            }
            Err(Error::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e @ Error::Read { .. }) => return Err(e),
            Err(e) => {
                tracing::error!(path = %path.display(), "{}", one_line(&e));
                out.malformed.push(one_line(&e));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// One run

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every open row of this NAS (timer, boot).
    All,
    /// One User-Name as FreeRADIUS received it: pppd's rendering of the login
    /// (`radius::sqlname::pppd_user_name`; bytes, may be non-UTF-8). Callers holding a login
    /// render it first.
    Login(Vec<u8>),
}

#[derive(Debug, Clone, Serialize)]
pub struct RowReport {
    #[serde(flatten)]
    pub row: OpenRow,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub closed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    #[serde(flatten)]
    pub session: OpenSession,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub closed: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub live: usize,
    pub too_young: usize,
    pub stale: usize,
    pub closed: usize,
    pub other_nas_alive: usize,
    pub other_nas_stale: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nas_identity: String,
    pub nas_ip: Ipv4Addr,
    pub scope: &'static str,
    /// In login scope: the connection's login whose rendering is the User-Name, else the
    /// User-Name (lossy UTF-8).
    pub login: Option<String>,
    /// The login as radacct stores it.
    pub sql_username: Option<String>,
    pub connection_id: Option<i64>,
    pub dry_run: bool,
    pub db_now: i64,
    pub valid_mappings: usize,
    pub malformed_mappings: Vec<String>,
    pub radacct: Counts,
    /// Rows closed (or, in a dry run, that would be). In login scope: every open row of the user.
    pub rows: Vec<RowReport>,
    pub sessions: Counts,
    pub session_rows: Vec<SessionReport>,
}

impl Report {
    /// Open rows of the user that count against Simultaneous-Use after this run (login scope),
    /// as FreeRADIUS counts them: rows from before a NAS's Accounting-On are not counted.
    pub fn online_rows(&self) -> usize {
        self.rows.iter().filter(|r| !r.closed && r.verdict.online() && !r.row.before_reload).count()
    }
}

/// Runs the janitor once. The caller opened `client` (and handles an unreachable database).
pub fn run<S: CounterSource>(
    cfg: &Config,
    client: &mut Client,
    scope: &Scope,
    state: &S,
    dry_run: bool,
) -> Result<Report> {
    let rules = Rules::from_config(cfg);
    let nas_ip = IpAddr::V4(cfg.nas.ip);
    let (login, sql_user) = match scope {
        Scope::All => (None, None),
        Scope::Login(user_name) => {
            if user_name.is_empty() {
                return Err(Error::invalid("subaccount login", "", "is empty"));
            }
            (Some(user_name.as_slice()), Some(stored_user_name(user_name)))
        }
    };
    let resolved = match login {
        Some(u) => db::connections::login_for_user_name(client, u)?,
        None => None,
    };
    let login_str = resolved.as_deref();

    let (db_now, connection_id, rows, sessions) = match &sql_user {
        None => {
            let (db_now, _) = radacct::now_and_connection(client, None)?;
            let rows = radacct::open_rows_of_nas(client, nas_ip)?;
            (db_now, None, rows, radacct::open_sessions(client, &cfg.nas.identity, None)?)
        }
        Some(u) => {
            let st = radacct::login_state(client, login_str, u, &cfg.nas.identity)?;
            (st.db_now, st.connection_id, st.rows, st.sessions)
        }
    };

    let mappings = mappings_to_judge(cfg, scope, connection_id, &rows, &sessions)?;
    let live = live_sessions(client, scope, &mappings, sql_user.as_deref())?;
    let run = Judging { cfg, rules: &rules, db_now, state, scope, dry_run };
    let (counts, reports) = run.radacct(client, rows, &live)?;
    let (scounts, sreports) = run.sessions(client, sessions, &mappings.valid)?;

    Ok(Report {
        nas_identity: cfg.nas.identity.clone(),
        nas_ip: cfg.nas.ip,
        scope: if login.is_some() { "login" } else { "all" },
        login: resolved.clone().or_else(|| login.map(|l| String::from_utf8_lossy(l).into_owned())),
        sql_username: sql_user,
        connection_id,
        dry_run,
        db_now,
        valid_mappings: mappings.valid.len(),
        malformed_mappings: mappings.malformed,
        radacct: counts,
        rows: reports,
        sessions: scounts,
        session_rows: sreports,
    })
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The mappings a run judges rows against: none when no row of this NAS needs judging; for one
/// login, only that connection's (by its rows' addresses and sessions' interfaces when every row
/// has an address — the fast path — else by scanning for the connection).
fn mappings_to_judge(
    cfg: &Config,
    scope: &Scope,
    connection_id: Option<i64>,
    rows: &[OpenRow],
    sessions: &[OpenSession],
) -> Result<Mappings> {
    let nas_ip = IpAddr::V4(cfg.nas.ip);
    let needs_mappings = rows.iter().any(|r| r.nas_ip == nas_ip) || !sessions.is_empty();
    Ok(match (needs_mappings, scope, connection_id) {
        (false, _, _) => Mappings::default(),
        (true, Scope::All, _) => live_mappings(&cfg.paths.sessions_dir, None)?,
        (true, Scope::Login(_), Some(id)) => {
            let here: Vec<&OpenRow> = rows.iter().filter(|r| r.nas_ip == nas_ip).collect();
            if here.iter().all(|r| r.framed_ip.is_some()) {
                let ips: BTreeSet<Ipv4Addr> = here.iter().filter_map(|r| r.framed_ip).collect();
                let ifnames: BTreeSet<String> = sessions.iter().map(|s| s.ppp_if.clone()).collect();
                live_mappings_for(&cfg.paths.sessions_dir, id, &ips, &ifnames)?
            } else {
                live_mappings(&cfg.paths.sessions_dir, Some(id))?
            }
        }
        (true, Scope::Login(_), None) => Mappings::default(),
    })
}

/// The VALID mappings with the radacct user name each session's rows carry: the login's own for
/// one login, looked up per connection for a global run.
fn live_sessions(client: &mut Client, scope: &Scope, mappings: &Mappings, sql_user: Option<&str>) -> Result<Vec<Live>> {
    Ok(match scope {
        Scope::Login(_) => mappings
            .valid
            .iter()
            .map(|m| Live { mapping: m.clone(), sql_username: sql_user.map(str::to_string) })
            .collect(),
        Scope::All => {
            let ids: Vec<i64> = mappings.valid.iter().map(|m| m.connection_id).collect();
            let logins: BTreeMap<i64, String> = radacct::logins_of(client, &ids)?.into_iter().collect();
            mappings
                .valid
                .iter()
                .map(|m| Live {
                    mapping: m.clone(),
                    sql_username: logins.get(&m.connection_id).map(|l| sql_username(l.as_bytes())),
                })
                .collect()
        }
    })
}

/// One run's judging: its rules, the database's clock, where final counters come from.
struct Judging<'a, S> {
    cfg: &'a Config,
    rules: &'a Rules,
    db_now: i64,
    state: &'a S,
    scope: &'a Scope,
    dry_run: bool,
}

impl<S: CounterSource> Judging<'_, S> {
    /// radacct: each open row's verdict; stale rows of this NAS closed (unless a dry run). A
    /// global run reports only the stale rows.
    fn radacct(&self, client: &mut Client, rows: Vec<OpenRow>, live: &[Live]) -> Result<(Counts, Vec<RowReport>)> {
        let mut reports: Vec<RowReport> = Vec::with_capacity(rows.len());
        let mut counts = Counts::default();
        let mut closes = Vec::new();
        for row in rows {
            let verdict = classify(&row, live, self.rules, self.db_now);
            match &verdict {
                Verdict::Live { .. } => counts.live += 1,
                Verdict::TooYoung => counts.too_young += 1,
                Verdict::Stale { .. } => {
                    counts.stale += 1;
                    let usage = self.state.final_counters(&EndedSession {
                        nas_identity: &self.cfg.nas.identity,
                        username: Some(&row.username),
                        framed_ip: row.framed_ip,
                        start: row.start,
                        acct_session_id: Some(&row.acct_session_id),
                        session_key: None,
                        ppp_if: None,
                        pppd_pid: None,
                    });
                    closes.push(close_for(&row, usage, self.db_now));
                }
                Verdict::OtherNasAlive => counts.other_nas_alive += 1,
                Verdict::OtherNasStale => counts.other_nas_stale += 1,
            }
            reports.push(RowReport { row, verdict, closed: false });
        }
        let closed_ids = if self.dry_run {
            Vec::new()
        } else {
            radacct::close_rows(client, IpAddr::V4(self.cfg.nas.ip), &closes, &self.cfg.janitor.terminate_cause)?
        };
        counts.closed = closed_ids.len();
        for r in &mut reports {
            if closed_ids.binary_search(&r.row.radacctid).is_ok() {
                r.closed = true;
                tracing::info!(radacctid = r.row.radacctid, user = %r.row.username,
                    framed_ip = ?r.row.framed_ip, start = ?r.row.start, "stale radacct row closed");
            }
        }
        if matches!(self.scope, Scope::All) {
            reports.retain(|r| matches!(r.verdict, Verdict::Stale { .. }));
        }
        Ok((counts, reports))
    }

    /// pppgate_sessions: the same for pppgate's own session rows.
    fn sessions(
        &self,
        client: &mut Client,
        sessions: Vec<OpenSession>,
        valid: &[Mapping],
    ) -> Result<(Counts, Vec<SessionReport>)> {
        let mut scounts = Counts::default();
        let mut sreports = Vec::with_capacity(sessions.len());
        let mut scloses = Vec::new();
        for s in sessions {
            let verdict = classify_session(&s, valid, self.rules, self.db_now);
            match &verdict {
                Verdict::Live { .. } => scounts.live += 1,
                Verdict::TooYoung => scounts.too_young += 1,
                _ => {
                    scounts.stale += 1;
                    let usage = self.state.final_counters(&EndedSession {
                        nas_identity: &self.cfg.nas.identity,
                        username: s.username.as_deref(),
                        framed_ip: s.client_ip,
                        start: Some(s.start),
                        acct_session_id: None,
                        session_key: Some(&s.session_key),
                        ppp_if: Some(&s.ppp_if),
                        pppd_pid: u32::try_from(s.pppd_pid).ok(),
                    });
                    scloses.push(CloseSession {
                        session_key: s.session_key.clone(),
                        stop: usage.and_then(|u| u.last_seen).map(|t| t.clamp(s.start, self.db_now.max(s.start))),
                        bytes_in: usage.map(|u| clamp_i64(u.input_octets)),
                        bytes_out: usage.map(|u| clamp_i64(u.output_octets)),
                    });
                }
            }
            sreports.push(SessionReport { session: s, verdict, closed: false });
        }
        let closed_keys = if self.dry_run {
            Vec::new()
        } else {
            radacct::close_sessions(client, &self.cfg.nas.identity, &scloses, &self.cfg.janitor.terminate_cause)?
        };
        scounts.closed = closed_keys.len();
        for r in &mut sreports {
            if closed_keys.binary_search(&r.session.session_key).is_ok() {
                r.closed = true;
                tracing::info!(session_key = %r.session.session_key, ppp_if = %r.session.ppp_if, "stale pppgate session closed");
            }
        }
        if matches!(self.scope, Scope::All) {
            sreports.retain(|r| matches!(r.verdict, Verdict::Stale { .. }));
        }
        Ok((scounts, sreports))
    }
}

fn close_for(row: &OpenRow, usage: Option<FinalUsage>, db_now: i64) -> Close {
    let stop = usage.and_then(|u| u.last_seen).map(|t| {
        let lo = row.start.unwrap_or(t).min(db_now);
        t.clamp(lo, db_now)
    });
    Close {
        radacctid: row.radacctid,
        stop,
        input_octets: usage.map(|u| clamp_i64(u.input_octets)),
        output_octets: usage.map(|u| clamp_i64(u.output_octets)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const NAS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn rules() -> Rules {
        Rules { nas_ip: NAS, grace: START_GRACE_S, skew: CLOCK_SKEW_S, heartbeat_window: 900 }
    }

    fn row(user: &str, ip: [u8; 4], start: i64) -> OpenRow {
        OpenRow {
            radacctid: 1,
            username: user.into(),
            nas_ip: IpAddr::V4(NAS),
            framed_ip: Some(Ipv4Addr::from(ip)),
            acct_session_id: "=25lX6b01f7fd=25hX".into(),
            nas_port_id: Some("0".into()),
            start: Some(start),
            update: None,
            before_reload: false,
        }
    }

    fn live(user: &str, ip: [u8; 4], start_ts: i64) -> Live {
        Live {
            mapping: Mapping {
                connection_id: 7,
                ppp_if: "ppp0".into(),
                client_ip: Ipv4Addr::from(ip),
                start_ts,
                pppd_pid: 4242,
                session_id: None,
                up_ts: None,
                counters_base: None,
                process: None,
            },
            sql_username: Some(user.into()),
        }
    }

    #[test]
    fn mapped_row_is_live() {
        let l = [live("alice", [198, 51, 100, 10], NOW - 600)];
        let v = classify(&row("alice", [198, 51, 100, 10], NOW - 590), &l, &rules(), NOW);
        assert!(matches!(v, Verdict::Live { pppd_pid: 4242, .. }), "{v:?}");
        assert!(v.online());
    }

    #[test]
    fn other_user_or_address_is_stale() {
        let l = [live("alice", [198, 51, 100, 10], NOW - 600)];
        let v = classify(&row("bob", [198, 51, 100, 10], NOW - 590), &l, &rules(), NOW);
        assert_eq!(v, Verdict::Stale { reason: StaleReason::NoValidMapping });
        let v = classify(&row("alice", [198, 51, 100, 11], NOW - 590), &l, &rules(), NOW);
        assert_eq!(v, Verdict::Stale { reason: StaleReason::NoValidMapping });
        assert!(!v.online());
    }

    #[test]
    fn row_older_than_the_live_pppd_is_stale() {
        // Crash, reconnect, same address from the pool: the old row is stale, the new one live.
        let l = [live("alice", [198, 51, 100, 10], NOW - 100)];
        let old = classify(&row("alice", [198, 51, 100, 10], NOW - 3600), &l, &rules(), NOW);
        assert_eq!(old, Verdict::Stale { reason: StaleReason::StartedBeforeLiveSession });
        let new = classify(&row("alice", [198, 51, 100, 10], NOW - 95), &l, &rules(), NOW);
        assert!(matches!(new, Verdict::Live { .. }));
        // Within the clock skew allowance it is still claimed.
        let skewed = classify(&row("alice", [198, 51, 100, 10], NOW - 100 - CLOCK_SKEW_S), &l, &rules(), NOW);
        assert!(matches!(skewed, Verdict::Live { .. }));
    }

    #[test]
    fn young_unmapped_rows_are_left_alone_and_count() {
        let v = classify(&row("alice", [198, 51, 100, 10], NOW - 3), &[], &rules(), NOW);
        assert_eq!(v, Verdict::TooYoung);
        assert!(v.online());
        let v = classify(&row("alice", [198, 51, 100, 10], NOW - START_GRACE_S), &[], &rules(), NOW);
        assert!(matches!(v, Verdict::Stale { .. }));
    }

    #[test]
    fn row_without_address_matches_on_user() {
        let l = [live("alice", [198, 51, 100, 10], NOW - 600)];
        let mut r = row("alice", [0, 0, 0, 0], NOW - 500);
        r.framed_ip = None;
        assert!(matches!(classify(&r, &l, &rules(), NOW), Verdict::Live { .. }));
    }

    #[test]
    fn connection_without_login_claims_nothing() {
        let mut l = live("alice", [198, 51, 100, 10], NOW - 600);
        l.sql_username = None;
        let v = classify(&row("alice", [198, 51, 100, 10], NOW - 500), &[l], &rules(), NOW);
        assert!(matches!(v, Verdict::Stale { .. }));
    }

    #[test]
    fn other_nas_goes_by_heartbeat() {
        let mut r = row("alice", [198, 51, 100, 10], NOW - 5000);
        r.nas_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));
        // A live mapping on *this* NAS never claims another NAS's row.
        let l = [live("alice", [198, 51, 100, 10], NOW - 6000)];
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasStale);
        r.update = Some(NOW - 899);
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasAlive);
        r.update = Some(NOW - 900);
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasAlive);
        r.update = Some(NOW - 901);
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasStale);
        // Never updated: the start time is the heartbeat.
        r.update = None;
        r.start = Some(NOW - 10);
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasAlive);
        r.start = None;
        assert_eq!(classify(&r, &l, &rules(), NOW), Verdict::OtherNasStale);
    }

    #[test]
    fn sessions_match_on_interface_address_and_pid() {
        let m = live("alice", [198, 51, 100, 10], NOW - 600).mapping;
        let s = OpenSession {
            session_key: "k".into(),
            connection_id: Some(7),
            username: Some("alice".into()),
            ppp_if: "ppp0".into(),
            client_ip: Some(Ipv4Addr::new(198, 51, 100, 10)),
            pppd_pid: 4242,
            start: NOW - 590,
        };
        assert!(matches!(classify_session(&s, std::slice::from_ref(&m), &rules(), NOW), Verdict::Live { .. }));
        let other_pid = OpenSession { pppd_pid: 4243, ..s.clone() };
        assert!(matches!(classify_session(&other_pid, std::slice::from_ref(&m), &rules(), NOW), Verdict::Stale { .. }));
        let young = OpenSession { pppd_pid: 4243, start: NOW - 1, ..s };
        assert_eq!(classify_session(&young, &[m], &rules(), NOW), Verdict::TooYoung);
    }

    #[test]
    fn close_uses_last_seen_within_bounds() {
        let r = row("alice", [198, 51, 100, 10], NOW - 600);
        let u = FinalUsage { input_octets: 5, output_octets: 6, last_seen: Some(NOW - 100) };
        let c = close_for(&r, Some(u), NOW);
        assert_eq!(c.stop, Some(NOW - 100));
        assert_eq!((c.input_octets, c.output_octets), (Some(5), Some(6)));
        let c = close_for(&r, Some(FinalUsage { last_seen: Some(NOW + 50), ..u }), NOW);
        assert_eq!(c.stop, Some(NOW));
        let c = close_for(&r, Some(FinalUsage { last_seen: Some(NOW - 9999), ..u }), NOW);
        assert_eq!(c.stop, Some(NOW - 600));
        let c = close_for(&r, None, NOW);
        assert_eq!((c.stop, c.input_octets), (None, None));
    }
}

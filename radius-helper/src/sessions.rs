//! Verbs around sessions and FreeRADIUS: `janitor`, `radius checkrad`, `radius exec
//! simultaneous-use`, `session kill|list|show`. docs/SESSIONS-RADIUS.md describes them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use policy_core::accounting::LazyStateView;
use policy_core::config::{Config, Paths};
use policy_core::db::{self, radacct};
use policy_core::error::one_line;
use policy_core::janitor::{self, Scope};
use policy_core::journal;
use policy_core::kernel::Netlink;
use policy_core::lock::Lock;
use policy_core::mapping;
use policy_core::outage::{Outage, Transition};
use policy_core::policy::apply;
use policy_core::radius::env::RadiusEnv;
use policy_core::radius::{self, CheckradArgs};
use policy_core::runs::{Job, Run};
use policy_core::{audit, hardcut, Error, ExitCode};
use postgres::Client;
use serde::Serialize;

use crate::verb::{load_config, CmdResult, Failure, Global};

/// Connect and statement timeouts of the FreeRADIUS-facing verbs: they must answer well inside
/// rlm_exec's 10 s (and checkrad's wait), whatever the configuration says.
const HOOK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HOOK_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args, Debug)]
pub struct JanitorArgs {
    /// Only this User-Name (the on-demand path, e.g. FreeRADIUS before Simultaneous-Use).
    #[arg(long, value_name = "USER_NAME", allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
    pub subaccount_login: Option<OsString>,
    /// Sleep this long first (the boot janitor: lets ip-up rebuild /run/vpn-sessions), 0..=3600.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub boot_delay: Option<u64>,
    /// Classify and report; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum RadiusCmd {
    /// checkrad replacement for radiusd.conf (`checkrad = `): exit 0 = not online (stale),
    /// 1 = online, 2 = error.
    Checkrad {
        /// NAS type from clients.conf / the nas table (informational).
        #[arg(allow_hyphen_values = true)]
        nas_type: String,
        #[arg(allow_hyphen_values = true)]
        nas_ip: String,
        #[arg(allow_hyphen_values = true)]
        nas_port: String,
        /// radacct.username of the row (as stored).
        #[arg(allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
        user: OsString,
        /// radacct.acctsessionid of the row.
        #[arg(allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
        session_id: OsString,
    },
    /// rlm_exec hooks (exit codes as rlm_exec reads them: 0 ok, 1 reject, 2 fail).
    #[command(subcommand)]
    Exec(ExecCmd),
}

#[derive(Subcommand, Debug)]
pub enum ExecCmd {
    /// Reads USER_NAME from FreeRADIUS's environment, runs the on-demand janitor for it, and
    /// rejects when the user is at its Simultaneous-Use limit (`--max=%{control:Simultaneous-Use}`).
    SimultaneousUse {
        /// The user's Simultaneous-Use; empty or absent: no limit (janitor only).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        max: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// Ends every live session of a connection (kill first, then reconcile); audited.
    Kill {
        /// vpn_connection_id: a plain positive decimal integer.
        #[arg(allow_hyphen_values = true, value_parser = clap::value_parser!(OsString))]
        id: Option<OsString>,
        /// Seconds pppd gets to exit after SIGTERM before SIGKILL (1..=60).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
        timeout: u64,
    },
    /// Lists the session mappings with their validity.
    List,
    /// One connection: its mappings, and its open radacct / pppgate_sessions rows on this NAS.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Database access with outage bookkeeping (R705)

/// Runs `f` on a fresh connection. An unreachable database is logged once per outage (marker in
/// paths.run_dir) and its return to service once; repeated failures stay quiet.
fn with_db<T>(
    cfg: &Config,
    component: &str,
    timeouts: Option<(Duration, Duration)>,
    f: impl FnOnce(&mut Client) -> policy_core::Result<T>,
) -> policy_core::Result<T> {
    let outage = Outage::new(&cfg.paths.run_dir, component);
    let (ct, st) = timeouts.unwrap_or((cfg.database.connect_timeout, cfg.database.statement_timeout));
    let res = db::connect_with(&cfg.database, ct, st).and_then(|mut c| f(&mut c));
    match &res {
        Err(e) if e.exit_code() == ExitCode::SqlUnavailable => match outage.failed() {
            Transition::Began => {
                let entry = journal::Entry::new(
                    journal::Event::DbOutageBegin,
                    format!("database unavailable: {}; {component} skips until it is back", one_line(e)),
                )
                .field("component", component)
                .field("error", one_line(e));
                if !journal::alert(&entry) {
                    tracing::warn!(
                        component,
                        "database unavailable: {}; skipping until it is back (logged once per outage)",
                        one_line(e)
                    )
                }
            }
            _ => tracing::debug!(component, "database still unavailable"),
        },
        _ => {
            if let Transition::Ended { since } = outage.succeeded() {
                let outage_s = policy_core::lock::now_unix() - since;
                let entry = journal::Entry::new(
                    journal::Event::DbOutageEnd,
                    format!("database reachable again after {outage_s} s ({component})"),
                )
                .field("component", component)
                .field("outage_since", since)
                .field("outage_s", outage_s);
                if !journal::alert(&entry) {
                    tracing::info!(component, outage_s, "database reachable again");
                }
            }
        }
    }
    res
}

/// An error already logged by [`with_db`] (database unavailable): exit 69, no further message.
fn quiet_or_loud(e: Error) -> Failure {
    if e.exit_code() == ExitCode::SqlUnavailable {
        Failure { code: ExitCode::SqlUnavailable, message: String::new() }
    } else {
        Failure::from(e)
    }
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

// ---------------------------------------------------------------------------------------------
// janitor

pub fn janitor(g: &Global, a: &JanitorArgs) -> CmdResult {
    let cfg = load_config(g)?;
    if let Some(s) = a.boot_delay {
        tracing::info!(delay_s = s, "boot janitor: waiting before the global sweep");
        std::thread::sleep(Duration::from_secs(s));
    }
    let scope = match &a.subaccount_login {
        None => Scope::All,
        Some(l) if l.is_empty() => return Err(Error::invalid("subaccount login", "", "is empty").into()),
        // A login or the User-Name FreeRADIUS received: pppd's rendering of either is the
        // User-Name (the rendering of a rendering is itself).
        Some(l) => Scope::Login(radius::sqlname::pppd_user_name(l.as_bytes())),
    };
    // The timer's sweep is recorded (runs: diag and the metrics); a login's on-demand run is not.
    let mut run = (scope == Scope::All && !a.dry_run).then(|| Run::start(Job::Janitor));
    let t0 = Instant::now();
    let res = with_db(&cfg, "janitor", None, |c| janitor::run(&cfg, c, &scope, &LazyStateView::new(&cfg), a.dry_run));
    let report = match res {
        Ok(r) => r,
        Err(e) => {
            if let Some(mut run) = run {
                run.note(one_line(&e));
                crate::record::finish(&cfg, run, &Err(Failure { code: e.exit_code(), message: String::new() }));
            }
            return Err(quiet_or_loud(e));
        }
    };
    let elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(mut run) = run.take() {
        run.phase("total", t0.elapsed());
        run.figure("radacct_closed", report.radacct.closed as u64);
        run.figure("sessions_closed", report.sessions.closed as u64);
        run.figure("radacct_live", report.radacct.live as u64);
        run.figure("radacct_too_young", report.radacct.too_young as u64);
        crate::record::finish(&cfg, run, &Ok(()));
    }
    tracing::info!(
        scope = report.scope,
        closed = report.radacct.closed,
        sessions_closed = report.sessions.closed,
        live = report.radacct.live,
        too_young = report.radacct.too_young,
        elapsed_ms,
        "janitor done"
    );
    if g.json {
        print_json(&report);
    } else {
        let what = if report.dry_run { "would close" } else { "closed" };
        println!(
            "{what} {} stale radacct row(s) and {} pppgate session(s) of NAS {} ({}); {} live, {} too young to judge",
            if report.dry_run { report.radacct.stale } else { report.radacct.closed },
            if report.dry_run { report.sessions.stale } else { report.sessions.closed },
            report.nas_identity,
            report.nas_ip,
            report.radacct.live,
            report.radacct.too_young,
        );
        for r in report
            .rows
            .iter()
            .filter(|r| r.closed || (report.dry_run && matches!(r.verdict, janitor::Verdict::Stale { .. })))
        {
            println!(
                "  radacct {} user {} ip {} started {}",
                r.row.radacctid,
                r.row.username,
                r.row.framed_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                r.row.start.map(audit::rfc3339).unwrap_or_else(|| "-".into())
            );
        }
        for m in &report.malformed_mappings {
            println!("  malformed mapping: {m}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// radius

/// Exit code for a FreeRADIUS-facing failure (checkrad: 2 = error; rlm_exec: 2 = fail), also for
/// usage errors of those verbs.
pub const RADIUS_FAIL: u8 = 2;

/// Runs a FreeRADIUS-facing verb; returns its exit code (never the admin codes).
pub fn radius(g: &Global, cmd: &RadiusCmd) -> u8 {
    match cmd {
        RadiusCmd::Checkrad { nas_type, nas_ip, nas_port, user, session_id } => {
            let args = CheckradArgs {
                nas_type: nas_type.clone(),
                nas_ip: nas_ip.clone(),
                nas_port: nas_port.clone(),
                user: user.to_string_lossy().into_owned(),
                session_id: session_id.to_string_lossy().into_owned(),
            };
            checkrad(g, &args)
        }
        RadiusCmd::Exec(ExecCmd::SimultaneousUse { max }) => simultaneous_use(g, max.as_deref()),
    }
}

fn checkrad(g: &Global, args: &CheckradArgs) -> u8 {
    let cfg = match Config::load(&g.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("checkrad: {}", one_line(&e));
            return RADIUS_FAIL;
        }
    };
    let res = with_db(&cfg, "checkrad", Some((HOOK_CONNECT_TIMEOUT, HOOK_STATEMENT_TIMEOUT)), |c| {
        radius::checkrad(&cfg, c, args, &LazyStateView::new(&cfg))
    });
    match res {
        Ok(r) => {
            tracing::info!(nas_ip = %args.nas_ip, user = %args.user, session_id = %args.session_id,
                presence = ?r.presence, this_nas = r.this_nas, "checkrad answered");
            if g.json {
                print_json(&r);
            }
            r.presence.exit_code()
        }
        Err(e) => {
            if e.exit_code() != ExitCode::SqlUnavailable {
                tracing::error!(user = %args.user, "checkrad failed: {}", one_line(&e));
            }
            RADIUS_FAIL
        }
    }
}

fn simultaneous_use(g: &Global, max: Option<&str>) -> u8 {
    // stdout is FreeRADIUS's module failure message on fail/reject; keep it to one line.
    let fail = |msg: String| {
        println!("pppgate: {msg}");
        RADIUS_FAIL
    };
    let max = match radius::parse_max(max.unwrap_or("")) {
        Ok(m) => m,
        Err(e) => return fail(one_line(&e)),
    };
    let env = RadiusEnv::from_process();
    let login = match env.get("User-Name") {
        None => {
            return fail(
                "USER_NAME is not in the environment (rlm_exec needs input_pairs = request, shell_escape = yes)".into(),
            )
        }
        Some(Err(e)) => return fail(format!("USER_NAME is malformed: {e}")),
        Some(Ok(v)) if v.is_empty() => return fail("USER_NAME is empty".into()),
        Some(Ok(v)) => v.clone(),
    };
    let cfg = match Config::load(&g.config) {
        Ok(c) => c,
        Err(e) => return fail(one_line(&e)),
    };
    let res = with_db(&cfg, "radius-exec", Some((HOOK_CONNECT_TIMEOUT, HOOK_STATEMENT_TIMEOUT)), |c| {
        radius::simultaneous_use(&cfg, c, &login, max, &LazyStateView::new(&cfg))
    });
    match res {
        Ok(r) => {
            let user = String::from_utf8_lossy(&login);
            tracing::info!(user = %user, max = ?r.max, online = r.online, closed = r.janitor.radacct.closed,
                verdict = ?r.verdict, "simultaneous-use hook");
            if g.json {
                print_json(&r);
            } else if r.verdict == radius::HookVerdict::Reject {
                println!("pppgate: {} of {} allowed sessions online", r.online, r.max.unwrap_or(0));
            }
            r.verdict.exit_code()
        }
        Err(e) if e.exit_code() == ExitCode::SqlUnavailable => fail("database unavailable (fail closed)".into()),
        Err(e) => {
            tracing::error!("simultaneous-use hook failed: {}", one_line(&e));
            fail(one_line(&e))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// session

pub fn session(g: &Global, cmd: &SessionCmd) -> CmdResult {
    match cmd {
        SessionCmd::Kill { id, timeout } => session_kill(g, id.as_ref(), *timeout),
        SessionCmd::List => session_list(g),
        SessionCmd::Show { id } => session_show(g, id),
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "reconcile", rename_all = "snake_case")]
enum ReconcileOutcome {
    Done {
        steps: Vec<String>,
        /// SQL was unreachable: only state of sessions that no longer exist was removed.
        sql_unavailable: Option<String>,
    },
    Failed {
        error: String,
        #[serde(skip)]
        code: ExitCode,
    },
}

/// How long the kill waits for the apply lock before reporting it busy (exit 75).
const KILL_LOCK_WAIT: Duration = Duration::from_secs(10);

/// R602: after the kill, reconcile so nft/tc are deterministically right — under the
/// apply lock, with the real kernel backends. Without SQL the reconcile still removes the state
/// of sessions that no longer exist (exactly what a kill needs) and says so.
fn reconcile_after_kill(cfg: &Config) -> ReconcileOutcome {
    let res = Lock::acquire_within(&cfg.paths.apply_lock, "session-kill", KILL_LOCK_WAIT).and_then(|_lock| {
        let mut b = Netlink::recording_to(&cfg.paths.sessions_dir)?;
        apply::reconcile(cfg, &mut b, false)
    });
    match res {
        Ok(r) => ReconcileOutcome::Done { steps: r.outcome.steps, sql_unavailable: r.sql_unavailable },
        Err(e) => {
            tracing::error!("reconcile after session kill failed: {}", one_line(&e));
            ReconcileOutcome::Failed { error: one_line(&e), code: e.exit_code() }
        }
    }
}

#[derive(Debug, Serialize)]
struct KillResult {
    connection_id: i64,
    #[serde(flatten)]
    kill: hardcut::KillReport,
    mappings_removed: Vec<String>,
    reconcile: ReconcileOutcome,
    /// The on-demand janitor for the connection's login (rows whose Stop never came).
    janitor: Option<janitor::Report>,
    locks_removed: Option<u64>,
    warnings: Vec<String>,
}

/// Where a kill's audit record goes: the file always, `pppgate_audit` when the configuration
/// loaded (best effort).
struct KillAudit {
    path: std::path::PathBuf,
    nas: String,
    args: Vec<String>,
}

impl KillAudit {
    fn record(&self, result: String, code: ExitCode, cfg: Option<&Config>) {
        let rec = audit::Record::new(&self.nas, "session-kill", self.args.clone(), result, code.code());
        if let Err(e) = audit::append(&self.path, &rec) {
            tracing::error!("cannot write the audit log: {}", one_line(&e));
        }
        if let Some(cfg) = cfg {
            let r = db::connect_with(&cfg.database, HOOK_CONNECT_TIMEOUT, HOOK_STATEMENT_TIMEOUT)
                .and_then(|mut c| db::audit::insert(&mut c, &rec));
            if let Err(e) = r {
                tracing::warn!("audit row not written to pppgate_audit: {}", one_line(&e));
            }
        }
    }
}

/// The id argument, strictly (`hardcut::parse_connection_id`).
fn kill_target(raw: Option<&OsString>) -> policy_core::Result<i64> {
    match raw.map(|r| r.to_str()) {
        None => Err(Error::invalid("vpn_connection_id", "", "is missing")),
        Some(None) => Err(Error::invalid(
            "vpn_connection_id",
            raw.map(|r| r.to_string_lossy().into_owned()).unwrap_or_default(),
            "is not valid UTF-8",
        )),
        Some(Some(s)) => hardcut::parse_connection_id(s),
    }
}

/// Database follow-up, best effort: rows whose Stop never came (SIGKILL), pppgate_sessions, and
/// the spec's active_session_locks where a deployment has that table. Returns the janitor's
/// report, the lock rows removed, and a warning when the database could not be reached.
fn kill_follow_up(cfg: &Config, id: i64) -> (Option<janitor::Report>, Option<u64>, Vec<String>) {
    let follow = db::connect_with(&cfg.database, HOOK_CONNECT_TIMEOUT, HOOK_STATEMENT_TIMEOUT).and_then(|mut c| {
        let login = db::connections::login_of(&mut c, id)?;
        let report = match &login {
            Some(l) => {
                let scope = Scope::Login(radius::sqlname::pppd_user_name(l.as_bytes()));
                Some(janitor::run(cfg, &mut c, &scope, &LazyStateView::new(cfg), false)?)
            }
            None => None,
        };
        let locks = db::session_locks::remove_for_connection(&mut c, id)?;
        Ok((report, locks))
    });
    match follow {
        Ok((report, locks)) => (report, locks, Vec::new()),
        Err(e) => (None, None, vec![format!("database follow-up skipped: {}", one_line(&e))]),
    }
}

/// The one-line result of a kill and its exit code: 70 when a session did not end, else the
/// reconcile's failure code, else 0.
fn kill_summary(kill: &hardcut::KillReport, reconcile: &ReconcileOutcome) -> (String, ExitCode) {
    let ok = kill.all_ended();
    let reconcile_failed = match reconcile {
        ReconcileOutcome::Failed { error, code } => Some((error.clone(), *code)),
        ReconcileOutcome::Done { .. } => None,
    };
    let summary: Vec<String> = kill
        .sessions
        .iter()
        .map(|k| format!("{} pid {} {}", k.mapping.ppp_if, k.mapping.pppd_pid, outcome_text(&k.outcome)))
        .collect();
    let mut result = if kill.sessions.is_empty() {
        "no live session".to_string()
    } else if ok {
        format!("ended: {}", summary.join(", "))
    } else {
        format!("FAILED: {}", summary.join(", "))
    };
    if let Some((e, _)) = &reconcile_failed {
        result.push_str(&format!("; reconcile failed: {e}"));
    }
    let code = match (&reconcile_failed, ok) {
        (_, false) => ExitCode::Internal,
        (Some((_, c)), true) => *c,
        (None, true) => ExitCode::Ok,
    };
    (result, code)
}

fn session_kill(g: &Global, raw: Option<&OsString>, timeout: u64) -> CmdResult {
    let args: Vec<String> = raw.map(|r| r.to_string_lossy().into_owned()).into_iter().collect();
    let cfg = Config::load(&g.config);
    let audit = match &cfg {
        Ok(c) => KillAudit { path: c.paths.audit_log.clone(), nas: c.nas.identity.clone(), args },
        Err(_) => KillAudit { path: Paths::default().audit_log, nas: "unknown".to_string(), args },
    };

    let id = match kill_target(raw) {
        Ok(id) => id,
        Err(e) => {
            audit.record(format!("refused: {}", one_line(&e)), e.exit_code(), cfg.as_ref().ok());
            return Err(e.into());
        }
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            audit.record(format!("failed: {}", one_line(&e)), e.exit_code(), None);
            return Err(e.into());
        }
    };

    let opts = hardcut::KillOptions { term_timeout: Duration::from_secs(timeout), ..Default::default() };
    let kill = match hardcut::kill_connection(&cfg.paths.sessions_dir, id, &opts) {
        Ok(k) => k,
        Err(e) => {
            audit.record(format!("failed before killing: {}", one_line(&e)), e.exit_code(), Some(&cfg));
            return Err(e.into());
        }
    };
    let mappings_removed = hardcut::remove_dead_mappings(&cfg.paths.sessions_dir, id);
    let reconcile = reconcile_after_kill(&cfg);
    let (janitor_report, locks_removed, warnings) = kill_follow_up(&cfg, id);

    let (result, code) = kill_summary(&kill, &reconcile);
    tracing::info!(conn_id = id, sessions = kill.sessions.len(), ok = kill.all_ended(), "session kill: {result}");
    for k in &kill.sessions {
        if let hardcut::KillOutcome::Failed { error } = &k.outcome {
            journal::send(
                &journal::Entry::new(
                    journal::Event::KillFailed,
                    format!(
                        "session kill FAILED: connection {id}, {} pid {} not ended: {error}",
                        k.mapping.ppp_if, k.mapping.pppd_pid
                    ),
                )
                .field("conn_id", id)
                .field("ifname", &k.mapping.ppp_if)
                .field("pppd_pid", k.mapping.pppd_pid)
                .field("client_ip", k.mapping.client_ip)
                .field("error", error),
            );
        }
    }
    let out = KillResult {
        connection_id: id,
        kill,
        mappings_removed,
        reconcile,
        janitor: janitor_report,
        locks_removed,
        warnings,
    };
    audit.record(result.clone(), code, Some(&cfg));
    if g.json {
        print_json(&out);
    } else {
        println!("connection {id}: {result}");
        for w in &out.warnings {
            println!("  warning: {w}");
        }
    }
    if code == ExitCode::Ok {
        Ok(())
    } else {
        Err(Failure { code, message: format!("connection {id}: {result}") })
    }
}

fn outcome_text(o: &hardcut::KillOutcome) -> String {
    match o {
        hardcut::KillOutcome::Terminated { after_ms } => format!("terminated after {after_ms} ms"),
        hardcut::KillOutcome::Killed { after_ms } => {
            format!("killed with SIGKILL after {after_ms} ms (no Accounting-Stop)")
        }
        hardcut::KillOutcome::AlreadyGone => "already gone".into(),
        hardcut::KillOutcome::Failed { error } => format!("not ended: {error}"),
    }
}

#[derive(Debug, Serialize)]
struct ListedSession {
    #[serde(flatten)]
    mapping: mapping::Mapping,
    #[serde(flatten)]
    validity: mapping::Validity,
    login: Option<String>,
    since: String,
}

fn listed(checked: Vec<mapping::Checked>, logins: &std::collections::BTreeMap<i64, String>) -> Vec<ListedSession> {
    checked
        .into_iter()
        .map(|c| ListedSession {
            login: logins.get(&c.mapping.connection_id).cloned(),
            since: audit::rfc3339(c.mapping.up_ts.unwrap_or(c.mapping.start_ts)),
            mapping: c.mapping,
            validity: c.validity,
        })
        .collect()
}

fn session_list(g: &Global) -> CmdResult {
    let cfg = load_config(g)?;
    let (checked, bad) = mapping::scan_checked(&cfg.paths.sessions_dir)?;
    let ids: Vec<i64> = checked.iter().map(|c| c.mapping.connection_id).collect();
    let logins = db::connect_with(&cfg.database, HOOK_CONNECT_TIMEOUT, HOOK_STATEMENT_TIMEOUT)
        .and_then(|mut c| radacct::logins_of(&mut c, &ids))
        .map(|v| v.into_iter().collect())
        .unwrap_or_else(|e| {
            tracing::warn!("logins not shown: {}", one_line(&e));
            Default::default()
        });
    let sessions = listed(checked, &logins);
    let malformed: Vec<String> = bad.iter().map(|e| one_line(e)).collect();
    if g.json {
        print_json(&serde_json::json!({ "sessions": sessions, "malformed": malformed }));
    } else {
        for s in &sessions {
            println!(
                "{:<8} conn {:<8} {:<24} {:<15} pid {:<8} since {}  {}",
                s.mapping.ppp_if,
                s.mapping.connection_id,
                s.login.as_deref().unwrap_or("?"),
                s.mapping.client_ip,
                s.mapping.pppd_pid,
                s.since,
                if s.validity.is_valid() { "VALID".to_string() } else { format!("not valid: {}", s.validity.reason()) }
            );
        }
        for m in &malformed {
            println!("malformed: {m}");
        }
    }
    Ok(())
}

fn session_show(g: &Global, raw: &str) -> CmdResult {
    let id = hardcut::parse_connection_id(raw)?;
    let cfg = load_config(g)?;
    let mut b = Netlink::new()?;
    let v = policy_core::session_view::show(&cfg, &mut b, id)?;
    if g.json {
        print_json(&v);
    } else {
        print_show(&v);
    }
    Ok(())
}

fn kbit(v: Option<u32>) -> String {
    v.map(|k| format!("{k} kbit/s")).unwrap_or_else(|| "unlimited".into())
}

/// Bytes for people: exact below 10 kB, else with a decimal unit (the exact figure is in --json).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 10_000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn print_show(v: &policy_core::session_view::SessionShow) {
    use policy_core::session_view::Condition;
    let login = v.login.as_deref().unwrap_or("?");
    match (&v.facts, &v.policy) {
        (Some(f), Some(p)) => {
            println!(
                "connection {} login {login} status {}: policy {} ({}), down {}, up {}, {} route(s), pbr [{}]",
                v.connection_id,
                f.status.as_sql(),
                p.state,
                serde_json::to_value(p.reason).ok().and_then(|r| r.as_str().map(str::to_string)).unwrap_or_default(),
                kbit(p.speed.down_kbit),
                kbit(p.speed.up_kbit),
                p.routes.len(),
                p.pbr.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(",")
            );
            if let Some(e) = f.expires_at {
                println!("  expires   {}", audit::rfc3339(e));
            }
        }
        (None, Some(p)) if v.database_error.is_none() => {
            println!("connection {} has no row in vpn_connections: policy {}", v.connection_id, p.state)
        }
        _ => println!("connection {} login {login}", v.connection_id),
    }
    if let Some(u) = &v.usage {
        let period =
            serde_json::to_value(u.period).ok().and_then(|p| p.as_str().map(str::to_string)).unwrap_or_default();
        match u.quota_bytes {
            Some(q) => println!(
                "  usage     {} this {period} of a {} quota, {} left{}",
                bytes(u.used_bytes),
                bytes(q),
                bytes(u.remaining_bytes.unwrap_or(0)),
                if u.quota_reached { " (QUOTA REACHED)" } else { "" }
            ),
            None => println!("  usage     {} this {period}, no quota", bytes(u.used_bytes)),
        }
    }
    if v.sessions.is_empty() {
        println!("  no mapping file for this connection");
    }
    let cond = |name: &str, c: &Condition| format!("{name} {}: {}", if c.ok { "ok" } else { "FAILED" }, c.detail);
    for s in &v.sessions {
        let m = &s.mapping;
        println!(
            "session {} {} pid {} since {}: {}",
            m.ppp_if,
            m.client_ip,
            m.pppd_pid,
            s.since,
            if s.valid { "VALID".to_string() } else { format!("NOT VALID ({})", s.validity.reason()) }
        );
        let r = &s.valid_reasons;
        println!("  valid     {}", cond("process", &r.process));
        println!("            {}", cond("interface", &r.interface));
        println!("            {}", cond("peer", &r.peer));
        if let Some(g) = s.pppd_gone {
            println!("            pppd provably gone ({}): the next reconcile removes this file", g.reason());
        }
        let k = &s.kernel;
        println!(
            "  nft       {}",
            if k.nft_sets.is_empty() { "in no state set (traffic dropped)".to_string() } else { k.nft_sets.join(", ") }
        );
        println!("  shaping   down {}, up {}", kbit(k.shaping.down_kbit), kbit(k.shaping.up_kbit));
        for r in &k.routes {
            println!(
                "  route     {}{} dev {} table {}{}",
                r.dst,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                r.dev,
                r.table,
                r.metric.map(|m| format!(" metric {m}")).unwrap_or_default()
            );
        }
        for r in &k.rules {
            println!("  rule      from {} lookup {} priority {}", r.from, r.table, r.priority);
        }
        if let Some(c) = &k.counters {
            let mut line = format!(
                "  counters  rx {} ({} packets), tx {} ({} packets)",
                bytes(c.rx_bytes),
                c.rx_packets,
                bytes(c.tx_bytes),
                c.tx_packets
            );
            if let (Some(rx), Some(tx)) = (c.session_rx_bytes, c.session_tx_bytes) {
                line.push_str(&format!("; since IPCP up: from client {}, to client {}", bytes(rx), bytes(tx)));
            }
            println!("{line}");
        }
        for e in &k.errors {
            println!("  kernel    cannot read: {e}");
        }
    }
    match &v.pending_changes {
        Some(c) if c.is_empty() => println!("  in step   the kernel holds the policy (nothing to apply)"),
        Some(c) => {
            println!("  NOT IN STEP: `pppgate apply --connection-id {}` would:", v.connection_id);
            for step in c {
                println!("            {step}");
            }
        }
        None => {}
    }
    for r in &v.open_radacct {
        println!(
            "  radacct   row {} nas {} ip {} session {} started {} updated {}",
            r.radacctid,
            r.nas_ip,
            r.framed_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            r.acct_session_id,
            r.start.map(audit::rfc3339).unwrap_or_else(|| "-".into()),
            r.update.map(audit::rfc3339).unwrap_or_else(|| "-".into())
        );
    }
    for o in &v.open_pppgate_sessions {
        println!("  accounting {} {} pid {} started {}", o.session_key, o.ppp_if, o.pppd_pid, audit::rfc3339(o.start));
    }
    for m in &v.malformed {
        println!("  malformed mapping: {m}");
    }
    if let Some(e) = &v.database_error {
        println!("  database: {e}");
    }
}

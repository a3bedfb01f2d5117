//! `pppgate collect` (`vpn-accounting-collector`) and `pppgate final-flush`.

use std::io::IsTerminal;

use clap::Args;
use policy_core::accounting::{self, DbStatus, FinalCounters, QuotaChange, Step};
use policy_core::config::Config;
use policy_core::error::one_line;
use policy_core::kernel::links::LinkSnapshot;
use policy_core::kernel::Netlink;
use policy_core::lock::Lock;
use policy_core::mapping::Mapping;
use policy_core::policy::apply::{self, Target};
use policy_core::runs::{Job, Run};
use policy_core::{Error, ExitCode};

use crate::verb::{load_config, CmdResult, Failure, Global};

/// Test hook: `PPPGATE_TEST_CRASH_AT=<step>` makes this process SIGKILL itself when the run
/// reaches that step (after-read, after-spool, after-state, after-commit, replay-mid-delete,
/// final-after-marker). Read here, in the binary only; the library and the plugin never look.
fn crash_hook() -> impl Fn(Step) {
    let at = std::env::var("PPPGATE_TEST_CRASH_AT").ok().and_then(|s| Step::from_name(&s));
    move |step| {
        if Some(step) == at {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be caught; never continue past the crash point.
            std::process::abort();
        }
    }
}

pub fn collect(g: &Global) -> CmdResult {
    let cfg = load_config(g)?;
    let mut run = Run::start(Job::Collector);
    let res = collect_run(g, &cfg, &mut run);
    crate::record::finish(&cfg, run, &res);
    res
}

fn collect_run(g: &Global, cfg: &Config, run: &mut Run) -> CmdResult {
    let hook = crash_hook();
    let opts = accounting::Options { step: &hook, ..Default::default() };
    let report = accounting::collect(cfg, &opts)?;
    let t = &report.timings;
    for (phase, ms) in
        [("open", t.open_ms), ("read", t.read_ms), ("spool", t.spool_ms), ("sql", t.sql_ms), ("quota", t.quota_ms)]
    {
        run.phase(phase, std::time::Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    // The collector holds its lock for the whole run (taken without waiting).
    run.lock_taken(std::time::Duration::ZERO);
    run.figure("sessions_read", report.sessions.read as u64);
    run.figure("sessions_closed", (report.sessions.closed_final + report.sessions.closed_vanished) as u64);
    run.figure("records_committed", report.replay.records_applied as u64);
    run.figure("records_pending", report.replay.pending_after as u64);
    run.figure("quarantined", report.quarantined.len() as u64);
    if let Some(e) = &report.db_error {
        run.note(format!("database: {}", one_line(e)));
    }
    if g.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    } else if std::io::stdout().is_terminal() {
        let b = report.batch.as_ref();
        println!(
            "{} sessions read, {} closed, batch {} ({} entries, +{} rx / +{} tx octets), {} records committed, {} spooled, db {}",
            report.sessions.read,
            report.sessions.closed_final + report.sessions.closed_vanished,
            b.map(|b| b.seq.to_string()).unwrap_or_else(|| "-".into()),
            b.map(|b| b.entries).unwrap_or(0),
            b.map(|b| b.delta.rx).unwrap_or(0),
            b.map(|b| b.delta.tx).unwrap_or(0),
            report.replay.records_applied,
            report.replay.pending_after,
            serde_json::to_value(&report.db).ok().and_then(|v| v["status"].as_str().map(str::to_string)).unwrap_or_default(),
        );
    }
    spool_growing(cfg);
    let quota = reapply_quota_changes(cfg, &report.quota_changes);
    if let Some(e) = &report.db_error {
        return Err(match &report.db {
            // Logged by the collector when the outage began; later runs stay quiet.
            DbStatus::Unavailable { .. } => Failure { code: ExitCode::SqlUnavailable, message: String::new() },
            _ => Failure { code: e.exit_code(), message: one_line(e) },
        });
    }
    quota?;
    if !report.quarantined.is_empty() {
        return Err(Failure {
            code: ExitCode::DataErr,
            message: format!(
                "{} unreadable accounting file(s) moved to {}; intact records were committed",
                report.quarantined.len(),
                cfg.paths.accounting_dir.join("spool/bad").display()
            ),
        });
    }
    Ok(())
}

/// How long the collector waits for the apply lock to re-apply quota changes. It is not on the
/// connect path; if the lock stays busy, the next reconcile (which reads the same usage) converges.
const QUOTA_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Connections whose quota state changed in this run get their policy re-applied at once, under
/// the apply lock (RESTRICTED when over, back to their normal state when not): the same apply as
/// `pppgate apply --connection-id`, so the engine decides from SQL.
fn reapply_quota_changes(cfg: &Config, changes: &[QuotaChange]) -> Result<(), Failure> {
    if changes.is_empty() {
        return Ok(());
    }
    for c in changes {
        tracing::info!(conn_id = c.connection_id, over = c.over, used = c.used_bytes, quota = ?c.quota_bytes,
            "quota state changed; re-applying policy");
    }
    let lock = match Lock::acquire_within(&cfg.paths.apply_lock, "collect-quota", QUOTA_LOCK_WAIT) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("quota re-apply deferred to the next reconcile: {}", one_line(&e));
            return Err(e.into());
        }
    };
    let mut b = Netlink::recording_to(&cfg.paths.sessions_dir)?;
    let mut first_err: Option<Error> = None;
    for c in changes {
        match apply::apply(cfg, &mut b, &Target::Connection(c.connection_id), false) {
            Ok(r) => {
                for s in &r.outcome.sessions {
                    tracing::info!(conn_id = c.connection_id, ifname = %s.ifname, state = %s.state, "quota: policy applied");
                }
            }
            Err(e) => {
                tracing::error!(conn_id = c.connection_id, "quota re-apply failed: {}", one_line(&e));
                first_err.get_or_insert(e);
            }
        }
    }
    drop(lock);
    // Closing the nfnetlink socket waits for the kernel's deferred work; not under the lock.
    drop(b);
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct FinalFlushArgs {
    /// The session's interface; its mapping is read from the sessions directory.
    #[arg(long)]
    pub ppp_if: String,
    /// pppd's final octets received from the client, since IPCP came up (an ip-down script's
    /// BYTES_RCVD; default: the interface's counters now).
    #[arg(long, requires = "tx_bytes")]
    pub rx_bytes: Option<u64>,
    /// pppd's final octets sent to the client (BYTES_SENT).
    #[arg(long, requires = "rx_bytes")]
    pub tx_bytes: Option<u64>,
    /// The given counters are pppd 2.4's 32-bit link statistics.
    #[arg(long)]
    pub wraps_32: bool,
    /// Acct-Terminate-Cause (default User-Request).
    #[arg(long)]
    pub cause: Option<String>,
    /// Only reserve the space of the session's final record, as the plugin does at ip-up
    /// (shell ip-up hooks, tests).
    #[arg(long, conflicts_with_all = ["rx_bytes", "tx_bytes", "wraps_32", "cause"])]
    pub reserve: bool,
}

/// ip-down's final flush, as a command (shell hooks, tests): the same code the plugin calls.
pub fn final_flush(g: &Global, a: &FinalFlushArgs) -> CmdResult {
    let cfg = load_config(g)?;
    if !policy_core::mapping::valid_ifname(&a.ppp_if) {
        return Err(Error::invalid("interface name", a.ppp_if.clone(), "not a valid interface name").into());
    }
    let mapping = Mapping::read(&cfg.paths.sessions_dir.join(Mapping::file_name(&a.ppp_if)))?;
    if a.reserve {
        let path = accounting::reserve_final(&cfg, mapping.pppd_pid, mapping.start_ts, &mapping.ppp_if)?;
        if g.json {
            println!("{}", serde_json::json!({ "reserved": path }));
        } else {
            println!("reserved {}", path.display());
        }
        return Ok(());
    }
    // Given counters are pppd's figures (an ip-down script's BYTES_RCVD/BYTES_SENT); without
    // them the interface's own counters decide (the interface must still exist).
    let pppd = match (a.rx_bytes, a.tx_bytes) {
        (Some(rx), Some(tx)) => Some(accounting::Octets::new(rx, tx)),
        _ => {
            let links = LinkSnapshot::read()?;
            links
                .get(&a.ppp_if)
                .and_then(|l| l.counters)
                .ok_or_else(|| Error::NotFound { what: "interface counters of", id: a.ppp_if.clone() })?;
            None
        }
    };
    let hook = crash_hook();
    let counters = FinalCounters { pppd, wraps_32: a.wraps_32, terminate_cause: a.cause.clone() };
    let report = accounting::final_flush_with(&cfg, &mapping, counters, &hook)?;
    if g.json {
        println!("{}", serde_json::to_string(&report).expect("serializable"));
    } else {
        println!(
            "{}: {}",
            report.session_key,
            serde_json::to_value(&report.outcome)
                .ok()
                .and_then(|v| v["outcome"].as_str().map(str::to_string))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// After a run: batches older than 2 × the interim interval (diag's `spool` warning) are one
/// `spool_growing` journal entry per run while it lasts (the plain warning without a journal).
fn spool_growing(cfg: &Config) {
    let Ok(b) = accounting::spool::backlog(&cfg.paths.accounting_dir) else { return };
    let now = policy_core::lock::now_unix();
    let age = b.oldest_at.map(|t| now - t).unwrap_or(0);
    let limit = 2 * cfg.accounting.interim_interval.as_secs() as i64;
    if b.batches == 0 || age <= limit {
        return;
    }
    let entry = policy_core::journal::Entry::new(
        policy_core::journal::Event::SpoolGrowing,
        format!(
            "accounting spool growing: {} batch(es), {} bytes, oldest {age} s (over {limit} s){}",
            b.batches,
            b.bytes,
            if b.outage_since.is_some() { "; the database is unreachable" } else { "" }
        ),
    )
    .field("batches", b.batches)
    .field("bytes", b.bytes)
    .field("oldest_age_s", age)
    .field("limit_s", limit)
    .field("outage_since", b.outage_since.map(|t| t.to_string()).unwrap_or_default())
    .field("dir", cfg.paths.accounting_dir.display());
    if !policy_core::journal::alert(&entry) {
        tracing::warn!(batches = b.batches, bytes = b.bytes, oldest_age_s = age, "{}", entry.message);
    }
}

//! The admin hardcut (R601–R603): `vpn-session-kill <vpn_connection_id>` ends every live
//! session of one connection — kill first, then reconcile, then best-effort cleanup.
//!
//! * The id must be a plain positive decimal integer (`[1-9][0-9]*`, fitting i64): anything else
//!   (`1; rm -rf /`, `-1`, `0x10`, ``, `007`, 20 digits) is refused with exit 65 before anything
//!   is looked at.
//! * Sessions come from VALID mappings only; PPPD_PID comes from the mapping (no pgrep/ps).
//!   Right before each signal the PID's identity is compared with the mapping's again
//!   (START_TICKS + BOOT_ID, or START_TS in older mappings), so a PID that was reused by another
//!   process is never signalled.
//! * SIGTERM lets pppd end the link its normal way: LCP terminate, ip-down notifiers (pppgate.so
//!   removes its state, radius.so sends Accounting-Stop). After `term_timeout` a pppd still alive
//!   gets SIGKILL (reported: then no Stop was sent and the janitor closes the row).
//!
//! The remaining race — the PID exiting and being reused between the start-time check and
//! kill(2), within microseconds — is accepted (pidfd_open would close it; it needs `unsafe`).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::error::Result;
use crate::kernel::links::LinkSnapshot;
use crate::mapping::{self, Mapping};
use crate::procfs::{self, START_TS_TOLERANCE};

/// Parses a vpn_connection_id strictly (see [`crate::ids::parse_id`]).
pub fn parse_connection_id(s: &str) -> Result<i64> {
    crate::ids::parse_id("vpn_connection_id", s)
}

#[derive(Debug, Clone, Copy)]
pub struct KillOptions {
    /// How long pppd gets to exit after SIGTERM.
    pub term_timeout: Duration,
    /// How long to wait after SIGKILL.
    pub kill_timeout: Duration,
}

impl Default for KillOptions {
    fn default() -> Self {
        KillOptions { term_timeout: Duration::from_secs(10), kill_timeout: Duration::from_secs(3) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum KillOutcome {
    /// pppd exited after SIGTERM.
    Terminated { after_ms: u64 },
    /// pppd did not exit within the timeout and was killed with SIGKILL (no Accounting-Stop).
    Killed { after_ms: u64 },
    /// The PID no longer belonged to the session when it was re-checked; nothing was signalled.
    AlreadyGone,
    /// pppd is still there after SIGKILL, or signalling failed.
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Killed {
    #[serde(flatten)]
    pub mapping: Mapping,
    #[serde(flatten)]
    pub outcome: KillOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillReport {
    pub connection_id: i64,
    pub sessions: Vec<Killed>,
    /// Mapping files of this connection that are not VALID (left for the plugin/janitor).
    pub not_live: Vec<String>,
}

impl KillReport {
    pub fn all_ended(&self) -> bool {
        self.sessions.iter().all(|k| !matches!(k.outcome, KillOutcome::Failed { .. }))
    }
}

/// Whether `pid` is still the process that started at Unix time `start_ts` (a wall-clock step moves
/// this comparison; mappings are checked with [`Mapping::is_same_process`]).
pub fn same_process(pid: u32, start_ts: i64) -> bool {
    matches!(procfs::process_start_epoch(pid), Ok(Some(t)) if (t - start_ts).abs() <= START_TS_TOLERANCE)
}

/// Ends every VALID session of `connection_id` (signals all first, then waits for all, so the
/// total wait is bounded by the timeouts, not multiplied by the number of sessions).
pub fn kill_connection(sessions_dir: &Path, connection_id: i64, opts: &KillOptions) -> Result<KillReport> {
    let mut ours = Vec::new();
    let mut not_live = Vec::new();
    let scanned = mapping::scan(sessions_dir)?;
    let mine: Vec<Mapping> =
        scanned.into_iter().filter_map(|s| s.mapping.ok()).filter(|m| m.connection_id == connection_id).collect();
    if !mine.is_empty() {
        let links = LinkSnapshot::read()?;
        for m in mine {
            let v = m.validity(&links);
            if v.is_valid() {
                ours.push(m);
            } else {
                not_live.push(format!("{}: {}", m.ppp_if, v.reason()));
            }
        }
    }
    let started = Instant::now();
    let mut pending: Vec<(Mapping, bool)> = Vec::new();
    let mut done: Vec<Killed> = Vec::new();
    for m in ours {
        if !m.is_same_process() {
            done.push(Killed { mapping: m, outcome: KillOutcome::AlreadyGone });
            continue;
        }
        match kill(Pid::from_raw(m.pppd_pid as i32), Signal::SIGTERM) {
            Ok(()) => {
                tracing::info!(pid = m.pppd_pid, ppp_if = %m.ppp_if, conn_id = connection_id, "SIGTERM sent to pppd");
                pending.push((m, false));
            }
            Err(nix::Error::ESRCH) => done.push(Killed { mapping: m, outcome: KillOutcome::AlreadyGone }),
            Err(e) => {
                done.push(Killed { mapping: m, outcome: KillOutcome::Failed { error: format!("kill(SIGTERM): {e}") } })
            }
        }
    }
    let term_deadline = started + opts.term_timeout;
    let mut kill_deadline: Option<Instant> = None;
    while !pending.is_empty() {
        let now = Instant::now();
        pending.retain(|(m, killed)| {
            if m.is_same_process() {
                return true;
            }
            let after_ms = started.elapsed().as_millis() as u64;
            let outcome = if *killed { KillOutcome::Killed { after_ms } } else { KillOutcome::Terminated { after_ms } };
            done.push(Killed { mapping: m.clone(), outcome });
            false
        });
        if pending.is_empty() {
            break;
        }
        if kill_deadline.is_none() && now >= term_deadline {
            for (m, killed) in &mut pending {
                if m.is_same_process() {
                    tracing::warn!(pid = m.pppd_pid, ppp_if = %m.ppp_if, "pppd did not exit after SIGTERM; sending SIGKILL");
                    let _ = kill(Pid::from_raw(m.pppd_pid as i32), Signal::SIGKILL);
                    *killed = true;
                }
            }
            kill_deadline = Some(now + opts.kill_timeout);
        }
        if kill_deadline.is_some_and(|d| now >= d) {
            for (m, _) in pending.drain(..) {
                done.push(Killed {
                    mapping: m,
                    outcome: KillOutcome::Failed { error: "still running after SIGKILL".into() },
                });
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.sort_by(|a, b| a.mapping.ppp_if.cmp(&b.mapping.ppp_if));
    Ok(KillReport { connection_id, sessions: done, not_live })
}

/// Removes the mapping files a killed pppd could not remove itself (SIGKILL skips ip-down): only
/// files of this connection whose pppd is provably gone ([`mapping::remove_stale`], R511).
/// Returns their interface names.
pub fn remove_dead_mappings(sessions_dir: &Path, connection_id: i64) -> Vec<String> {
    match mapping::remove_stale(sessions_dir, Some(connection_id)) {
        Ok((removed, errors)) => {
            for e in &errors {
                tracing::warn!("mapping of a gone pppd not removed: {}", crate::error::one_line(e));
            }
            removed.into_iter().map(|r| r.ppp_if).collect()
        }
        Err(e) => {
            tracing::warn!("mappings of gone pppds not removed: {}", crate::error::one_line(&e));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_ids() {
        assert_eq!(parse_connection_id("1").unwrap(), 1);
        assert_eq!(parse_connection_id("42").unwrap(), 42);
        assert_eq!(parse_connection_id("9223372036854775807").unwrap(), i64::MAX);
        for bad in [
            "",
            "0",
            "007",
            "-1",
            "+1",
            "0x10",
            "1; rm -rf /",
            " 1",
            "1 ",
            "1\n",
            "1.0",
            "１",
            "9223372036854775808",
            "12345678901234567890",
            "$(id)",
            "1e3",
        ] {
            let e = parse_connection_id(bad).expect_err(bad);
            assert_eq!(e.exit_code(), crate::ExitCode::DataErr, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn only_canonical_decimals_parse(s in "\\PC{0,25}") {
            if let Ok(v) = parse_connection_id(&s) {
                proptest::prop_assert_eq!(v.to_string(), s);
                proptest::prop_assert!(v > 0);
            }
        }
    }

    #[test]
    fn dead_process_is_not_the_same() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!same_process(pid, crate::lock::now_unix()));
        let me = std::process::id();
        let start = procfs::own_start_epoch().unwrap();
        assert!(same_process(me, start));
        assert!(!same_process(me, start - 100));
    }
}

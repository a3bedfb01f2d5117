//! Accounting that loses nothing and counts nothing twice (docs/requirements.md R201, R401–R410).
//!
//! The pieces:
//! * [`counters`] — readings to deltas (new sessions, recreated interfaces, counters that go
//!   backwards, pppd 2.4's 32-bit final statistics);
//! * [`record`] — journal batches and final markers; [`codec`] — their versioned, checksummed
//!   container; [`spool`] — the accounting directory; [`state`] — per-session baselines;
//! * [`journal`] — write-ahead journal and replay, [`collector`] — `pppgate collect`,
//!   [`final_flush`] — ip-down, [`quota`] — quota crossings for the policy engine;
//! * SQL: [`crate::db::accounting`] (identity of the radacct row, idempotency).
//!
//! Order of one run, and why each crash point is harmless:
//! 1. read counters → crash: nothing durable changed; the next run reads again.
//! 2. append the batch to `spool/` (durable) → crash: the next run rolls the state forward
//!    from the record and replays it.
//! 3. advance and save the state, drop consumed final markers → crash: the record is replayed.
//! 4. commit the batch (batch id recorded in the same statement) → crash before the record is
//!    deleted: the replay finds the batch id and skips it; even without that, usage is derived
//!    from absolute session totals, so it cannot be added twice.
//! 5. delete the record.
//!
//! The session key is `<nas identity>:<PPP_IF>:<PPPD_PID>:<START_TS>`: a recreated interface
//! belongs to a new pppd (new PID and start) and is a new session. NAS identities contain no
//! `:`, and the last two fields are numbers, so the key parses back unambiguously.

pub mod codec;
pub mod collector;
pub mod counters;
pub(crate) mod journal;
pub mod quota;
pub mod record;
pub mod spool;
pub mod state;
pub mod view;

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

pub use collector::{collect, Options, Report};
pub use counters::Octets;
pub use journal::{DbStatus, Quarantined, ReplaySummary};
pub use quota::QuotaChange;
pub use view::{LazyStateView, StateView};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::{now_unix, Lock};
use crate::mapping::Mapping;
use journal::{Journal, ReplayLimits};
use record::{FinalMarker, KernelReading, SessionInfo, Stop};
use spool::AcctDir;

/// A session's identity in pppgate's tables and files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey(String);

impl SessionKey {
    pub fn new(nas_identity: &str, ppp_if: &str, pppd_pid: u32, start_ts: i64) -> SessionKey {
        SessionKey(format!("{nas_identity}:{ppp_if}:{pppd_pid}:{start_ts}"))
    }

    pub fn of(nas_identity: &str, m: &Mapping) -> SessionKey {
        SessionKey::new(nas_identity, &m.ppp_if, m.pppd_pid, m.start_ts)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// `radacct.acctuniqueid` of the row pppgate owns for this session.
    pub fn acct_unique_id(&self) -> String {
        format!("pppgate:{}", self.0)
    }

    /// Splits a key back into (nas identity, ppp_if, pid, start_ts).
    pub fn parse(s: &str) -> Option<(&str, &str, u32, i64)> {
        let (nas, rest) = s.split_once(':')?;
        let (rest, ts) = rest.rsplit_once(':')?;
        let (ifname, pid) = rest.rsplit_once(':')?;
        Some((nas, ifname, pid.parse().ok()?, ts.parse().ok()?))
    }
}

impl std::fmt::Display for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The points of a run where the binary's crash-injection test hook may fire
/// (`PPPGATE_TEST_CRASH_AT=<name>`; read only by the binary, never by the plugin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Counters read, nothing written.
    AfterRead,
    /// The batch is durable in the spool; the state is not advanced.
    AfterSpool,
    /// The state is advanced and saved; nothing committed.
    AfterState,
    /// A statement committed; its journal records not deleted yet.
    AfterCommit,
    /// During a replay of several records: the first of a committed chunk deleted, the rest not.
    ReplayMidDelete,
    /// ip-down: the final marker is durable; nothing else done.
    FinalAfterMarker,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::AfterRead,
        Step::AfterSpool,
        Step::AfterState,
        Step::AfterCommit,
        Step::ReplayMidDelete,
        Step::FinalAfterMarker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::AfterRead => "after-read",
            Step::AfterSpool => "after-spool",
            Step::AfterState => "after-state",
            Step::AfterCommit => "after-commit",
            Step::ReplayMidDelete => "replay-mid-delete",
            Step::FinalAfterMarker => "final-after-marker",
        }
    }

    pub fn from_name(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// ip-down's final counters. [`final_flush`] also reads the interface's 64-bit counters itself
/// while the interface exists (see [`record::FinalMarker::best_reading`] for which wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalCounters {
    /// pppd's own final link statistics (octets since IPCP came up; rx = received from the
    /// client = Acct-Input-Octets), when pppd has them.
    pub pppd: Option<Octets>,
    /// pppd 2.4's `link_stats` are 32 bits wide; they are extended against the interface.
    pub wraps_32: bool,
    /// RADIUS Acct-Terminate-Cause name; `User-Request` when pppd does not say.
    pub terminate_cause: Option<String>,
}

/// How long ip-down waits for the collector lock before leaving its marker for the collector.
pub const FINAL_LOCK_WAIT: Duration = Duration::from_millis(1500);
/// Database limits inside pppd.
pub const FINAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const FINAL_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time budget for replaying (ip-down commits older spooled records first, then its own).
pub const FINAL_REPLAY_BUDGET: Duration = Duration::from_secs(2);
/// Smaller statements inside pppd, so one stays well inside the statement timeout.
pub const FINAL_CHUNK_ENTRIES: usize = 5_000;

/// Where ip-down's last delta went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum FinalOutcome {
    /// In SQL; the session is closed there.
    Committed,
    /// In the journal; the next collector run commits it.
    Spooled { db: DbStatus },
    /// The collector lock was busy: the final marker (absolute counters) stays for the next
    /// collector run, which computes the delta against the baseline it holds then.
    Deferred,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinalReport {
    pub session_key: String,
    pub outcome: FinalOutcome,
    /// The last delta (known only when the lock was held).
    pub delta: Option<Octets>,
    pub elapsed_ms: f64,
}

/// ip-down's final flush, for the plugin inside pppd: no threads, no runtime left behind, the
/// database connection opened and closed inside the call, bounded time (≈ 1.5 s lock wait +
/// 1 s connect + 2 s replay budget + one statement).
///
/// 1. A final marker with the absolute final counters is written durably first, without the
///    lock. From here on nothing is lost, whatever happens next.
/// 2. The collector lock is taken within [`FINAL_LOCK_WAIT`]. If it is busy, the call returns
///    [`FinalOutcome::Deferred`]: the marker is not a delta, so it cannot be counted twice — the
///    running collector may count the session up to its own reading, and the next run counts
///    the rest against the baseline that run left.
/// 3. With the lock: markers become closing entries (delta against the current baseline),
///    the batch is journaled, the session leaves the state (a tombstone stays), the marker is
///    removed, and pending records are replayed oldest first within [`FINAL_REPLAY_BUDGET`].
///    The session is closed in `pppgate_sessions`; its radacct row only if pppgate owns it.
///
/// An error after step 1 still leaves the marker: the collector finishes the job.
pub fn final_flush(cfg: &Config, mapping: &Mapping, counters: FinalCounters) -> Result<FinalReport> {
    final_flush_with(cfg, mapping, counters, &|_| {})
}

/// [`final_flush`] with a step hook (the binary's crash-injection test hook).
pub fn final_flush_with(
    cfg: &Config,
    mapping: &Mapping,
    counters: FinalCounters,
    step: &dyn Fn(Step),
) -> Result<FinalReport> {
    let t0 = Instant::now();
    let now = now_unix();
    let session = SessionInfo::from_mapping(&cfg.nas.identity, mapping);
    let key = session.key.clone();
    let dir = AcctDir::open(&cfg.paths.accounting_dir)?;
    let marker = FinalMarker {
        session,
        pppd: counters.pppd,
        wraps_32: counters.wraps_32,
        kernel: kernel_reading(&mapping.ppp_if),
        stop: Stop { at: now, cause: counters.terminate_cause.unwrap_or_else(|| "User-Request".into()) },
    };
    dir.write_marker(&marker)?;
    step(Step::FinalAfterMarker);
    let elapsed = |t0: Instant| (t0.elapsed().as_secs_f64() * 1e6).round() / 1e3;

    let _lock = match Lock::acquire_within(&cfg.paths.collector_lock, "final-flush", FINAL_LOCK_WAIT) {
        Ok(l) => l,
        Err(Error::Locked { .. }) => {
            info!(session = %key, "collector busy; final counters left for its next run");
            return Ok(FinalReport {
                session_key: key,
                outcome: FinalOutcome::Deferred,
                delta: None,
                elapsed_ms: elapsed(t0),
            });
        }
        Err(e) => return Err(e),
    };
    let mut j = Journal::open(cfg, now)?;
    let entries = j.close_finals()?;
    let delta = entries.iter().find(|e| e.session.key == key).map(|e| e.delta);
    let appended = j.append(cfg, entries, now, step)?;
    let limits = ReplayLimits {
        connect_timeout: cfg.database.connect_timeout.min(FINAL_CONNECT_TIMEOUT),
        statement_timeout: cfg.database.statement_timeout.min(FINAL_STATEMENT_TIMEOUT),
        deadline: Some(Instant::now() + FINAL_REPLAY_BUDGET),
        chunk_entries: FINAL_CHUNK_ENTRIES,
    };
    let mut summary = ReplaySummary::default();
    let mut round_trips = 0;
    let out = j.replay(cfg, &limits, step, &mut summary, &mut round_trips, now);
    drop(out.client);
    let ours_pending = appended.is_some_and(|(seq, _)| j.pending.iter().any(|(_, b)| b.seq == seq));
    let outcome = if ours_pending {
        if let Some(e) = &out.error {
            if !matches!(out.status, DbStatus::Unavailable { first: false, .. }) {
                warn!(session = %key, error = %crate::error::one_line(e), "final accounting spooled");
            }
        }
        FinalOutcome::Spooled { db: out.status }
    } else {
        FinalOutcome::Committed
    };
    Ok(FinalReport { session_key: key, outcome, delta, elapsed_ms: elapsed(t0) })
}

/// ip-up: reserves the space of the session's final marker (R413), so ip-down's final figures
/// survive an accounting directory that filled up meanwhile. An error here means the directory
/// is full or unusable now: the plugin ends the session (fail closed, nothing to lose yet).
pub fn reserve_final(cfg: &Config, pppd_pid: u32, start_ts: i64, ppp_if: &str) -> Result<std::path::PathBuf> {
    AcctDir::open(&cfg.paths.accounting_dir)?.reserve_marker(pppd_pid, start_ts, ppp_if)
}

/// The interface's own 64-bit (rx, tx) octets, if it exists (one RTM_GETLINK, no dump): the
/// plugin's RX_BASE/TX_BASE at ip-up.
pub fn interface_octets(ppp_if: &str) -> Option<Octets> {
    kernel_reading(ppp_if).map(|k| k.octets)
}

/// The interface's own 64-bit counters, if it still exists (one RTM_GETLINK, no dump).
fn kernel_reading(ppp_if: &str) -> Option<KernelReading> {
    let mut sock = crate::kernel::netlink::Socket::open(crate::kernel::netlink::Family::Route).ok()?;
    let link = crate::kernel::links::get_link(&mut sock, ppp_if).ok()??;
    let c = link.counters?;
    Some(KernelReading { ifindex: link.index, octets: Octets::new(c.rx_bytes, c.tx_bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_parses_back_even_with_colons_in_the_interface_name() {
        let k = SessionKey::new("lns-1", "ppp0:1", 4242, 1_700_000_000);
        assert_eq!(k.as_str(), "lns-1:ppp0:1:4242:1700000000");
        assert_eq!(SessionKey::parse(k.as_str()), Some(("lns-1", "ppp0:1", 4242, 1_700_000_000)));
        assert_eq!(k.acct_unique_id(), "pppgate:lns-1:ppp0:1:4242:1700000000");
    }

    #[test]
    fn step_names_round_trip() {
        for s in Step::ALL {
            assert_eq!(Step::from_name(s.name()), Some(s));
        }
        assert_eq!(Step::from_name("nowhere"), None);
    }
}

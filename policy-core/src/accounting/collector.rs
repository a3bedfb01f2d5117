//! `pppgate collect` (`vpn-accounting-collector`): one run of the accounting collector.
//!
//! Under its own lock: open the journal (roll forward), turn final markers into closing entries,
//! read every VALID session's counters from one netlink snapshot, close sessions that vanished
//! without an ip-down, append the batch (durable) and advance the state, replay everything
//! pending into SQL, then report connections whose quota state changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::counters::{advance, Advance, Observation, Octets};
use super::journal::{DbStatus, Journal, Quarantined, ReplayLimits, ReplaySummary, CHUNK_ENTRIES};
use super::quota::{self, QuotaChange};
use super::record::{Entry, SessionInfo, Stop};
use super::{SessionKey, Step};
use crate::config::Config;
use crate::error::{one_line, Error, Result};
use crate::kernel::links::LinkSnapshot;
use crate::lock::{now_unix, Lock};
use crate::mapping::{self, Mapping, Validity};

/// A session not seen VALID for this long (and without a final marker) is closed as vanished:
/// its pppd ended without ip-down (crash, reboot). Long enough for an ip-down that is waiting for
/// the lock to leave its marker first.
pub fn vanish_grace(cfg: &Config) -> i64 {
    (cfg.accounting.interim_interval.as_secs() as i64 * 2).max(600)
}

/// What to do besides the normal run (tests and benchmarks).
pub struct Options<'a> {
    /// Called at each [`Step`]; the binary's crash-injection hook lives here.
    pub step: &'a dyn Fn(Step),
    /// Entries per SQL statement when replaying.
    pub chunk_entries: usize,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { step: &|_| {}, chunk_entries: CHUNK_ENTRIES }
    }
}

/// Counts of the sessions looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionCounts {
    /// VALID sessions whose counters were read.
    pub read: usize,
    /// Mapping files that are not VALID (process gone, interface gone, ...).
    pub not_valid: usize,
    pub malformed_mappings: usize,
    /// Sessions closed from ip-down's final markers.
    pub closed_final: usize,
    /// Sessions closed because they vanished without ip-down.
    pub closed_vanished: usize,
    pub new: usize,
    pub recreated: usize,
    pub backwards: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    pub seq: u64,
    pub entries: usize,
    /// Octets added in this run over all sessions.
    pub delta: Octets,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub open_ms: f64,
    pub read_ms: f64,
    /// Part of `read_ms`: the netlink dump of links and addresses.
    pub netlink_ms: f64,
    pub spool_ms: f64,
    pub sql_ms: f64,
    pub quota_ms: f64,
    pub total_ms: f64,
}

/// The collector's summary (`--json`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub nas_identity: String,
    pub sessions: SessionCounts,
    pub batch: Option<BatchSummary>,
    pub rolled_forward: usize,
    pub replay: ReplaySummary,
    pub db: DbStatus,
    pub quarantined: Vec<Quarantined>,
    /// Connections whose quota state changed (the policy engine re-applies them).
    pub quota_changes: Vec<QuotaChange>,
    /// SQL round trips after connecting (schema check, commits, quota).
    pub sql_round_trips: u32,
    pub timings: Timings,
    /// The database error behind `db`, for the exit code.
    #[serde(skip)]
    pub db_error: Option<Error>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One collector run. Errors: the lock is busy (75), a file from a newer pppgate is in the
/// accounting directory (65), the directory or netlink fails (70). Database problems are not
/// errors here: the batch is spooled and `db`/`db_error` say what happened.
pub fn collect(cfg: &Config, opts: &Options) -> Result<Report> {
    let t0 = Instant::now();
    let _lock = Lock::try_acquire(&cfg.paths.collector_lock, "collect")?;
    let now = now_unix();
    let mut j = Journal::open(cfg, now)?;
    let t_open = t0.elapsed();

    let mut counts = SessionCounts::default();
    let mut entries = j.close_finals()?;
    counts.closed_final = entries.len();
    let closing: BTreeSet<String> = entries.iter().map(|e| e.session.key.clone()).collect();
    let (live, seen, t_netlink) = read_live(cfg, &j, &closing, now, &mut counts)?;
    entries.extend(live);
    let vanished = close_vanished(cfg, &j, &seen, &closing, now);
    counts.closed_vanished = vanished.len();
    if !vanished.is_empty() {
        info!(sessions = vanished.len(), "closing sessions that ended without ip-down (last counters kept)");
    }
    entries.extend(vanished);
    (opts.step)(Step::AfterRead);
    let t_read = t0.elapsed();

    let delta = entries.iter().fold(Octets::default(), |a, e| a.saturating_add(e.delta));
    let n_entries = entries.len();
    let appended = j.append(cfg, entries, now, opts.step)?;
    drop_stale_reserves(cfg, &j, &seen);
    let batch = appended.map(|(seq, _)| BatchSummary { seq, entries: n_entries, delta });
    match j.compact(now) {
        Ok(0) => {}
        Ok(n) => info!(records = n, pending = j.pending.len(), "spooled accounting compacted per past hour"),
        Err(e) => warn!(error = %one_line(&e), "cannot compact the spool; records are kept as they are"),
    }
    let t_spool = t0.elapsed();

    let mut replay = ReplaySummary::default();
    let mut round_trips = 0;
    let active = j.active_connections();
    let mut db = DbStatus::NotNeeded;
    let mut db_error = None;
    let mut quota_changes = Vec::new();
    let mut t_sql = t_spool;
    let needs_db = !j.pending.is_empty() || !active.is_empty() || !quota::load_over(&j.dir).is_empty();
    if needs_db {
        let limits = ReplayLimits {
            connect_timeout: cfg.database.connect_timeout,
            statement_timeout: cfg.database.statement_timeout,
            deadline: None,
            chunk_entries: opts.chunk_entries,
        };
        let out = j.replay(cfg, &limits, opts.step, &mut replay, &mut round_trips, now);
        t_sql = t0.elapsed();
        db = out.status;
        db_error = out.error;
        if let (Some(mut client), None) = (out.client, &db_error) {
            round_trips += 1;
            match quota::changes(&mut client, &j.dir, &cfg.nas.identity, &active) {
                Ok(c) => quota_changes = c,
                Err(e) => warn!(error = %one_line(&e), "cannot check quotas after the commit"),
            }
        }
    }
    let total = t0.elapsed();
    Ok(Report {
        nas_identity: cfg.nas.identity.clone(),
        sessions: counts,
        batch,
        rolled_forward: j.rolled_forward,
        replay,
        db,
        quarantined: std::mem::take(&mut j.quarantined),
        quota_changes,
        sql_round_trips: round_trips,
        timings: Timings {
            open_ms: ms(t_open),
            read_ms: ms(t_read - t_open),
            netlink_ms: ms(t_netlink),
            spool_ms: ms(t_spool - t_read),
            sql_ms: ms(t_sql - t_spool),
            quota_ms: ms(total - t_sql),
            total_ms: ms(total),
        },
        db_error,
    })
}

/// Reads every VALID session from one snapshot of the interfaces.
fn read_live(
    cfg: &Config,
    j: &Journal,
    closing: &BTreeSet<String>,
    now: i64,
    counts: &mut SessionCounts,
) -> Result<(Vec<Entry>, BTreeSet<String>, Duration)> {
    let t = Instant::now();
    let links = LinkSnapshot::read_counters()?;
    let t_netlink = t.elapsed();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (path, checked) in checked_mappings(&cfg.paths.sessions_dir, &links)? {
        let (m, validity) = match checked {
            Ok(mv) => mv,
            Err(e) => {
                counts.malformed_mappings += 1;
                debug!(path = %path.display(), error = %one_line(&e), "malformed mapping file ignored");
                continue;
            }
        };
        if !validity.is_valid() {
            counts.not_valid += 1;
            debug!(ppp_if = %m.ppp_if, reason = validity.reason(), "mapping not VALID; not read");
            continue;
        }
        let info = SessionInfo::from_mapping(&cfg.nas.identity, &m);
        if closing.contains(&info.key) || j.state.closed.contains_key(&info.key) {
            continue;
        }
        let Some(link) = links.get(&m.ppp_if) else { continue };
        let Some(c) = link.counters else {
            warn!(ppp_if = %m.ppp_if, "interface reports no counters; session not read");
            continue;
        };
        let prev = j.state.sessions.get(&info.key);
        let reading = Octets::new(c.rx_bytes, c.tx_bytes);
        let a = match prev {
            Some(p) => advance(Some(p.previous()), reading, Some(link.index), false),
            // First sight: count from the counters at IPCP-up (the mapping's base) when known.
            None => match advance(info.first_previous(Some(link.index)), reading, Some(link.index), false) {
                a if a.observation == Observation::Backwards => {
                    warn!(session = %info.key, ppp_if = %m.ppp_if, rx = c.rx_bytes, tx = c.tx_bytes,
                        "interface counters are below the session's IPCP-up base (interface recreated?); counting all of them");
                    advance(None, reading, Some(link.index), false)
                }
                a => Advance { observation: Observation::New, ..a },
            },
        };
        match a.observation {
            Observation::New => counts.new += 1,
            Observation::Recreated => {
                counts.recreated += 1;
                info!(session = %info.key, ppp_if = %m.ppp_if, "interface recreated under the same session; counting from its new counters");
            }
            Observation::Backwards => {
                counts.backwards += 1;
                warn!(session = %info.key, ppp_if = %m.ppp_if,
                    rx = c.rx_bytes, tx = c.tx_bytes,
                    "interface counters went backwards; treated as a reset (new baseline, no negative usage)");
            }
            Observation::Normal => {}
        }
        let total = prev.map(|p| p.total).unwrap_or_default().saturating_add(a.delta);
        seen.insert(info.key.clone());
        out.push(Entry {
            session: info,
            at: now,
            ifindex: Some(link.index),
            baseline: a.baseline,
            delta: a.delta,
            total,
            stop: None,
        });
        counts.read += 1;
    }
    Ok((out, seen, t_netlink))
}

type CheckedMapping = (PathBuf, Result<(Mapping, Validity)>);

/// Every mapping file of `dir` (the files [`mapping::scan`] reads), parsed and checked for
/// VALID against `links` (the one definition, [`Mapping::validity`]), in path order. Reading
/// and checking 10,000 files is a third of a collector run, so it is spread over up to four
/// threads (the collector is its own process; nothing here runs inside pppd).
fn checked_mappings(dir: &Path, links: &LinkSnapshot) -> Result<Vec<CheckedMapping>> {
    let mut paths: Vec<PathBuf> = mapping::scan_paths(dir)?;
    paths.sort();
    let check = |p: &PathBuf| -> CheckedMapping {
        let r = Mapping::read(p).map(|m| {
            let v = m.validity(links);
            (m, v)
        });
        (p.clone(), r)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if threads < 2 || paths.len() < 256 {
        return Ok(paths.iter().map(check).collect());
    }
    let per = paths.len().div_ceil(threads);
    let parts: Vec<Vec<CheckedMapping>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            paths.chunks(per).map(|c| s.spawn(move || c.iter().map(check).collect::<Vec<_>>())).collect();
        handles.into_iter().map(|h| h.join().expect("mapping reader thread panicked")).collect()
    });
    Ok(parts.into_iter().flatten().collect())
}

/// Removes final-marker reservations (R413) of sessions not VALID now and older than
/// [`vanish_grace`]: their pppd ended without ip-down (SIGKILL), so nothing will write into
/// them. Best effort: a reservation left over costs 16 KiB until the next run.
fn drop_stale_reserves(cfg: &Config, j: &Journal, seen: &BTreeSet<String>) {
    let grace = vanish_grace(cfg).max(0) as u64;
    let Ok(reserves) = j.dir.reserves() else { return };
    for (path, marker, age) in reserves {
        let live = seen.iter().any(|k| {
            SessionKey::parse(k)
                .is_some_and(|(_, ppp_if, pid, start)| marker == super::spool::marker_file_name(pid, start, ppp_if))
        });
        if !live && age >= grace {
            debug!(path = %path.display(), "final-marker reservation of an ended session removed");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Closing entries for sessions in the state that are neither VALID now nor closing by marker,
/// and have not been seen for [`vanish_grace`].
fn close_vanished(
    cfg: &Config,
    j: &Journal,
    seen: &BTreeSet<String>,
    closing: &BTreeSet<String>,
    now: i64,
) -> Vec<Entry> {
    let grace = vanish_grace(cfg);
    j.state
        .sessions
        .iter()
        .filter(|(k, s)| !seen.contains(*k) && !closing.contains(*k) && now - s.last_seen >= grace)
        .map(|(_, s)| {
            debug!(session = %s.session.key, last_seen = s.last_seen, "session vanished without ip-down");
            Entry {
                session: s.session.clone(),
                at: s.last_seen,
                ifindex: s.ifindex,
                baseline: s.baseline,
                delta: Octets::default(),
                total: s.total,
                stop: Some(Stop { at: s.last_seen, cause: cfg.janitor.terminate_cause.clone() }),
            }
        })
        .collect()
}

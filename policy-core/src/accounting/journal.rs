//! The write-ahead journal as the lock holder drives it: open (scan, repair, roll forward), turn
//! final markers into entries, append a batch and advance the state, replay pending batches into
//! SQL. The collector and the ip-down final flush both run through here, always under the
//! collector lock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, error, info, warn};

#[cfg(test)]
use super::counters::Octets;
use super::counters::{advance, Observation};
use super::record::{Batch, Entry};
use super::spool::AcctDir;
use super::state::State;
use super::Step;
use crate::config::Config;
use crate::db;
use crate::error::{one_line, Error, Result};
use crate::outage::Transition;

/// Entries per SQL statement when replaying (several journal records are merged into one).
pub const CHUNK_ENTRIES: usize = 25_000;
/// Journal records per SQL statement at most.
pub const CHUNK_RECORDS: usize = 1_000;

/// A file moved to `spool/bad/`.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub path: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
}

/// What happened with the database in this run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum DbStatus {
    /// Nothing needed the database.
    NotNeeded,
    /// Every pending record is in SQL.
    Committed,
    /// Some records are in SQL, the rest stay spooled (the time budget ran out).
    Partial,
    /// Unreachable; everything stays spooled. `first`: this run started the outage (and logged it).
    Unavailable { since: i64, first: bool },
    /// Reachable, but the schema or a statement failed; everything not committed stays spooled.
    Failed { error: String },
}

/// Replay figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    /// Journal records whose batch was applied now.
    pub records_applied: usize,
    /// Journal records whose batch SQL already had (an earlier commit whose ack was lost).
    pub records_already_applied: usize,
    /// SQL statements (one round trip each) used for commits.
    pub commit_statements: usize,
    /// Records still spooled after this run.
    pub pending_after: usize,
    pub entries_applied: i64,
}

/// Bounds of one replay.
#[derive(Debug, Clone)]
pub struct ReplayLimits {
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    /// Stop starting statements after this instant.
    pub deadline: Option<Instant>,
    pub chunk_entries: usize,
}

pub(crate) struct ReplayOutcome {
    pub status: DbStatus,
    /// The connection, when the database is usable for further queries.
    pub client: Option<postgres::Client>,
    pub error: Option<Error>,
}

/// Pending records beyond this many are compacted per past hour ([`Journal::compact`]).
pub const COMPACT_AFTER: usize = 12;

fn hour(at: i64) -> i64 {
    at.div_euclid(3600)
}

/// The hour every entry of the record was read in, if they share one.
fn record_hour(b: &Batch) -> Option<i64> {
    let h = hour(b.entries.first()?.at);
    b.entries.iter().all(|e| hour(e.at) == h).then_some(h)
}

/// One record holding each session's last entry of `records` (in order), under a batch id no
/// original record has. Deltas are summed (they are informational).
fn merge(records: &[(PathBuf, Batch)]) -> Batch {
    let first = &records[0].1;
    let last = &records[records.len() - 1].1;
    let mut order: Vec<String> = Vec::new();
    let mut by_key: std::collections::HashMap<String, Entry> = std::collections::HashMap::new();
    for (_, b) in records {
        for e in &b.entries {
            match by_key.get_mut(&e.session.key) {
                Some(prev) => {
                    let delta = prev.delta.saturating_add(e.delta);
                    *prev = Entry { delta, ..e.clone() };
                }
                None => {
                    order.push(e.session.key.clone());
                    by_key.insert(e.session.key.clone(), e.clone());
                }
            }
        }
    }
    Batch {
        seq: last.seq,
        batch_id: format!("{}-{}", first.batch_id, last.seq),
        nas_identity: last.nas_identity.clone(),
        collected_at: last.collected_at,
        entries: order.into_iter().map(|k| by_key.remove(&k).expect("inserted")).collect(),
    }
}

/// Splits records into statements: consecutive records of one NAS identity, at most
/// `max_entries` entries (a record larger than that is a statement of its own) and
/// [`CHUNK_RECORDS`] records each.
fn chunk(records: Vec<(PathBuf, Batch)>, max_entries: usize) -> Vec<Vec<(PathBuf, Batch)>> {
    let mut out: Vec<Vec<(PathBuf, Batch)>> = Vec::new();
    let mut n = 0;
    for r in records {
        let fits = out.last().is_some_and(|c| {
            c[0].1.nas_identity == r.1.nas_identity && n + r.1.entries.len() <= max_entries && c.len() < CHUNK_RECORDS
        });
        if fits {
            n += r.1.entries.len();
            out.last_mut().expect("checked").push(r);
        } else {
            n = r.1.entries.len();
            out.push(vec![r]);
        }
    }
    out
}

pub(crate) struct Journal {
    pub dir: AcctDir,
    pub state: State,
    /// Readable records not yet known to be in SQL, in sequence order.
    pub pending: Vec<(PathBuf, Batch)>,
    /// Markers whose content is in `pending`/state once the next append is durable.
    markers_consumed: Vec<PathBuf>,
    pub quarantined: Vec<Quarantined>,
    pub rolled_forward: usize,
    state_dirty: bool,
}

fn quarantine(dir: &AcctDir, path: PathBuf, reason: String, out: &mut Vec<Quarantined>) -> Result<()> {
    let moved_to = dir.quarantine(&path)?;
    error!(path = %path.display(), moved_to = %moved_to.display(), reason = %reason,
        "unreadable accounting file moved aside; intact records are still replayed");
    out.push(Quarantined { path, moved_to, reason });
    Ok(())
}

impl Journal {
    /// Opens the accounting directory under the lock: reads everything first (a file from a newer
    /// pppgate fails here, before anything changed), then moves unreadable files aside, loads the
    /// state and rolls it forward over journal records it does not include yet.
    pub fn open(cfg: &Config, now: i64) -> Result<Journal> {
        let dir = AcctDir::open(&cfg.paths.accounting_dir)?;
        let scan = dir.scan()?;
        // Read-only check of the markers, so a newer-format marker also stops us before changes.
        dir.scan_markers()?;
        let mut quarantined = Vec::new();
        let mut max_seen_seq = 0;
        for u in scan.unreadable {
            if let Some(seq) = u
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".batch"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                max_seen_seq = max_seen_seq.max(seq);
            }
            quarantine(&dir, u.path, u.error.to_string(), &mut quarantined)?;
        }
        for p in scan.strays {
            quarantine(&dir, p, "not a journal record".into(), &mut quarantined)?;
        }
        let loaded = State::load(&dir, now)?;
        if let Some((moved_to, why)) = &loaded.replaced {
            error!(moved_to = %moved_to.display(), reason = %why,
                "accounting state unreadable, moved aside; starting a new state (SQL totals keep this from counting twice)");
            quarantined.push(Quarantined {
                path: dir.root.join(super::state::STATE_FILE),
                moved_to: moved_to.clone(),
                reason: why.to_string(),
            });
        }
        let mut state = loaded.state;
        let mut rolled_forward = 0;
        for (_, b) in &scan.records {
            max_seen_seq = max_seen_seq.max(b.seq);
            if state.apply(b) {
                rolled_forward += 1;
            }
        }
        state.reserve_past(max_seen_seq);
        if rolled_forward > 0 {
            info!(
                records = rolled_forward,
                applied_seq = state.applied_seq,
                "accounting state rolled forward over journal records it did not include"
            );
        }
        let state_dirty = rolled_forward > 0 || loaded.replaced.is_some();
        Ok(Journal {
            dir,
            state,
            pending: scan.records,
            markers_consumed: Vec::new(),
            quarantined,
            rolled_forward,
            state_dirty,
        })
    }

    /// Turns final markers into closing entries (against the baselines current now, so a
    /// collector run that read the session after ip-down read it is not counted twice).
    pub fn close_finals(&mut self) -> Result<Vec<Entry>> {
        let (markers, unreadable) = self.dir.scan_markers()?;
        for u in unreadable {
            quarantine(&self.dir, u.path, u.error.to_string(), &mut self.quarantined)?;
        }
        let mut out: Vec<Entry> = Vec::new();
        for (path, m) in markers {
            let key = &m.session.key;
            self.markers_consumed.push(path);
            if self.state.closed.contains_key(key) || out.iter().any(|e| &e.session.key == key) {
                debug!(session = %key, "final marker for a session already closed");
                continue;
            }
            let prev = self.state.sessions.get(key);
            // Never read by a collector: the last delta counts from the IPCP-up base, if known.
            let previous = prev.map(|p| p.previous()).or_else(|| m.session.first_previous(m.kernel.map(|k| k.ifindex)));
            let (reading, ifindex, wraps_32) = m.best_reading(previous);
            let a = advance(previous, reading, ifindex, wraps_32);
            if a.observation == Observation::Backwards {
                warn!(session = %key, ppp_if = %m.session.ppp_if, "final counters are below the last reading; no negative usage counted");
            }
            let total = prev.map(|p| p.total).unwrap_or_default().saturating_add(a.delta);
            out.push(Entry {
                session: prev.map(|p| p.session.clone()).unwrap_or_else(|| m.session.clone()),
                at: m.stop.at,
                ifindex: prev.and_then(|p| p.ifindex),
                baseline: a.baseline,
                delta: a.delta,
                total,
                stop: Some(m.stop.clone()),
            });
        }
        Ok(out)
    }

    /// Appends `entries` as one batch (durable), then advances and saves the state, then drops
    /// the markers the batch consumed.
    pub fn append(
        &mut self,
        cfg: &Config,
        entries: Vec<Entry>,
        now: i64,
        step: &dyn Fn(Step),
    ) -> Result<Option<(u64, PathBuf)>> {
        let expired = self.state.expire_closed(now);
        let mut appended = None;
        if !entries.is_empty() {
            let seq = self.state.next_seq;
            if seq == u64::MAX {
                // Only a damaged or forged record numbers this high; writing under this name
                // again would replace a record instead of adding one.
                return Err(Error::Spool {
                    path: self.dir.spool.join(super::spool::batch_file_name(seq)),
                    reason: "journal sequence numbers are exhausted; move the record aside".into(),
                });
            }
            let batch = Batch {
                seq,
                batch_id: self.state.batch_id(&cfg.nas.identity, seq),
                nas_identity: cfg.nas.identity.clone(),
                collected_at: now,
                entries,
            };
            let path = self.dir.append(&batch)?;
            step(Step::AfterSpool);
            self.state.apply(&batch);
            self.pending.push((path.clone(), batch));
            self.state_dirty = true;
            appended = Some((seq, path));
        }
        if self.state_dirty || expired > 0 {
            self.state.save(&self.dir)?;
            self.state_dirty = false;
        }
        if !self.markers_consumed.is_empty() {
            for p in self.markers_consumed.drain(..) {
                self.dir.remove_marker(&p)?;
            }
            self.dir.sync_finals()?;
        }
        step(Step::AfterState);
        Ok(appended)
    }

    /// Keeps a long outage's journal bounded: once more than [`COMPACT_AFTER`] records are
    /// pending, the records of each past hour (consecutive, one NAS identity, every entry read in
    /// that hour) are merged into one, keeping each session's last entry. Safe by construction:
    /// the merged record replaces the hour's last file atomically under a new batch id, then the
    /// others are deleted; until then both exist and replaying both counts nothing twice (SQL
    /// takes absolute totals). Usage stays on the right day: an hour never spans two days in a
    /// time zone with a whole-hour offset (elsewhere at most one hour's usage may land on the
    /// adjacent day). Returns how many records were folded away.
    pub fn compact(&mut self, now: i64) -> Result<usize> {
        if self.pending.len() <= COMPACT_AFTER {
            return Ok(0);
        }
        let current = hour(now);
        let pending = std::mem::take(&mut self.pending);
        let mut out: Vec<(PathBuf, Batch)> = Vec::with_capacity(pending.len());
        let mut folded = 0;
        let mut group: Vec<(PathBuf, Batch)> = Vec::new();
        let mut result = Ok(());
        for rec in pending {
            let joins = match (group.last(), record_hour(&rec.1)) {
                (Some(last), Some(h)) => {
                    h < current && record_hour(&last.1) == Some(h) && last.1.nas_identity == rec.1.nas_identity
                }
                _ => false,
            };
            if !joins {
                if result.is_ok() {
                    result = self.fold(&mut group, &mut out, &mut folded);
                } else {
                    out.append(&mut group);
                }
            }
            group.push(rec);
        }
        if result.is_ok() {
            result = self.fold(&mut group, &mut out, &mut folded);
        } else {
            out.append(&mut group);
        }
        self.pending = out;
        result.map(|_| folded)
    }

    /// Writes one merged record for `group` (when it has several) and moves it to `out`.
    fn fold(
        &self,
        group: &mut Vec<(PathBuf, Batch)>,
        out: &mut Vec<(PathBuf, Batch)>,
        folded: &mut usize,
    ) -> Result<()> {
        if group.len() < 2 {
            out.append(group);
            return Ok(());
        }
        let merged = merge(group);
        if let Err(e) = self.dir.append(&merged) {
            out.append(group);
            return Err(e);
        }
        let last_path = group.last().expect("two or more").0.clone();
        for (path, _) in &group[..group.len() - 1] {
            self.dir.remove(path)?;
        }
        self.dir.sync_spool()?;
        *folded += group.len() - 1;
        group.clear();
        out.push((last_path, merged));
        Ok(())
    }

    /// Replays pending records into SQL, oldest first, merged into as few statements as the
    /// chunk limits allow; each committed record is deleted. Stops at `deadline` (checked between
    /// statements). Records not committed stay spooled. A record that fails for a reason other
    /// than an unreachable database is retried alone, so it cannot hold the others back.
    pub fn replay(
        &mut self,
        cfg: &Config,
        how: &ReplayLimits,
        step: &dyn Fn(Step),
        summary: &mut ReplaySummary,
        round_trips: &mut u32,
        now: i64,
    ) -> ReplayOutcome {
        let mut client = match db::connect_with(&cfg.database, how.connect_timeout, how.statement_timeout) {
            Ok(c) => c,
            Err(e) => {
                summary.pending_after = self.pending.len();
                return ReplayOutcome { status: self.unavailable(&e, now), client: None, error: Some(e) };
            }
        };
        // require_current is a plain query: prepare + execute.
        *round_trips += 2;
        if let Err(e) = db::migrate::require_current(&mut client) {
            summary.pending_after = self.pending.len();
            let status = if matches!(e, Error::SqlUnavailable(_)) {
                self.unavailable(&e, now)
            } else {
                DbStatus::Failed { error: one_line(&e) }
            };
            return ReplayOutcome { status, client: None, error: Some(e) };
        }
        self.back_online(now);

        let chunks = chunk(std::mem::take(&mut self.pending), how.chunk_entries);
        let mut rest: Vec<(PathBuf, Batch)> = Vec::new();
        let mut unavailable: Option<Error> = None;
        let mut failed: Option<Error> = None;
        let mut out_of_time = false;
        for c in chunks {
            if unavailable.is_some() || how.deadline.is_some_and(|d| Instant::now() >= d) {
                out_of_time |= unavailable.is_none();
                rest.extend(c);
                continue;
            }
            match self.commit_chunk(&mut client, cfg, &c, step, summary, round_trips) {
                Ok(()) => {}
                Err(e @ Error::SqlUnavailable(_)) => {
                    unavailable = Some(e);
                    rest.extend(c);
                }
                Err(e) if c.len() > 1 => {
                    warn!(records = c.len(), error = %one_line(&e), "accounting commit failed; retrying record by record");
                    for rec in c {
                        if unavailable.is_some() {
                            rest.push(rec);
                            continue;
                        }
                        match self.commit_chunk(
                            &mut client,
                            cfg,
                            std::slice::from_ref(&rec),
                            step,
                            summary,
                            round_trips,
                        ) {
                            Ok(()) => {}
                            Err(e2 @ Error::SqlUnavailable(_)) => {
                                unavailable = Some(e2);
                                rest.push(rec);
                            }
                            Err(e2) => {
                                error!(path = %rec.0.display(), error = %one_line(&e2), "accounting record cannot be committed; it stays spooled");
                                failed.get_or_insert(e2);
                                rest.push(rec);
                            }
                        }
                    }
                }
                Err(e) => {
                    error!(path = %c[0].0.display(), error = %one_line(&e), "accounting record cannot be committed; it stays spooled");
                    failed.get_or_insert(e);
                    rest.extend(c);
                }
            }
        }
        self.pending = rest;
        summary.pending_after = self.pending.len();
        if let Some(e) = unavailable {
            return ReplayOutcome { status: self.unavailable(&e, now), client: None, error: Some(e) };
        }
        if let Some(e) = failed {
            return ReplayOutcome {
                status: DbStatus::Failed { error: one_line(&e) },
                client: Some(client),
                error: Some(e),
            };
        }
        let status = if out_of_time { DbStatus::Partial } else { DbStatus::Committed };
        ReplayOutcome { status, client: Some(client), error: None }
    }

    fn commit_chunk(
        &mut self,
        client: &mut postgres::Client,
        cfg: &Config,
        c: &[(PathBuf, Batch)],
        step: &dyn Fn(Step),
        summary: &mut ReplaySummary,
        round_trips: &mut u32,
    ) -> Result<()> {
        let batches: Vec<&Batch> = c.iter().map(|(_, b)| b).collect();
        *round_trips += 1;
        summary.commit_statements += 1;
        let counts = db::accounting::commit(client, cfg.nas.ip, cfg.accounting.radacct, &batches)?;
        step(Step::AfterCommit);
        let applied = counts.batches_applied.max(0) as usize;
        summary.records_applied += applied;
        summary.records_already_applied += c.len().saturating_sub(applied);
        summary.entries_applied += counts.entries_applied;
        debug!(
            records = c.len(),
            applied,
            entries = counts.entries_applied,
            radius_rows = counts.radius_rows_updated,
            own_rows = counts.own_rows_written,
            usage_rows = counts.usage_rows_written,
            "accounting committed"
        );
        for (k, (path, _)) in c.iter().enumerate() {
            if let Err(e) = self.dir.remove(path) {
                // Committed already: a record left behind is recognised as applied next time.
                warn!(path = %path.display(), error = %one_line(&e), "cannot delete a committed journal record");
            }
            if k == 0 && c.len() > 1 {
                step(Step::ReplayMidDelete);
            }
        }
        if let Err(e) = self.dir.sync_spool() {
            warn!(error = %one_line(&e), "cannot sync the spool directory");
        }
        Ok(())
    }

    /// Records (and logs once per outage) that the database is unreachable.
    fn unavailable(&self, e: &Error, now: i64) -> DbStatus {
        match self.dir.outage().failed() {
            Transition::Ongoing => {
                let since = self.dir.outage_since().unwrap_or(now);
                debug!(since, pending = self.pending.len(), "database still unavailable; accounting stays spooled");
                DbStatus::Unavailable { since, first: false }
            }
            _ => {
                let entry = crate::journal::Entry::new(
                    crate::journal::Event::DbOutageBegin,
                    format!("database unavailable: {}; accounting is spooled until it is back", one_line(e)),
                )
                .field("component", "accounting")
                .field("error", one_line(e))
                .field("pending", self.pending.len());
                if !crate::journal::alert(&entry) {
                    error!(pending = self.pending.len(), dir = %self.dir.root.display(), error = %one_line(e),
                        "database unavailable; accounting is spooled until it is back (logged once per outage)");
                }
                DbStatus::Unavailable { since: now, first: true }
            }
        }
    }

    fn back_online(&self, now: i64) {
        if let Transition::Ended { since } = self.dir.outage().succeeded() {
            let entry = crate::journal::Entry::new(
                crate::journal::Event::DbOutageEnd,
                format!("database reachable again after {} s; replaying spooled accounting", now - since),
            )
            .field("component", "accounting")
            .field("outage_since", since)
            .field("outage_s", now - since)
            .field("pending", self.pending.len());
            if !crate::journal::alert(&entry) {
                info!(
                    since,
                    seconds = now - since,
                    pending = self.pending.len(),
                    "database reachable again; replaying spooled accounting"
                );
            }
        }
    }

    /// Connection ids with a live session in the state.
    pub fn active_connections(&self) -> BTreeSet<i64> {
        self.state.sessions.values().map(|s| s.session.connection_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, nas: &str, entries: usize) -> (PathBuf, Batch) {
        let e = crate::accounting::spool::tests::entry("k", 1);
        (
            PathBuf::from(format!("/x/{seq}")),
            Batch {
                seq,
                batch_id: format!("{nas}:i:{seq}"),
                nas_identity: nas.into(),
                collected_at: 0,
                entries: vec![e; entries],
            },
        )
    }

    fn entry_at(key: &str, total: u64, at: i64) -> Entry {
        let mut e = crate::accounting::spool::tests::entry(key, total);
        e.at = at;
        e.delta = Octets::new(1, 0);
        e
    }

    #[test]
    fn compaction_folds_past_hours_and_keeps_each_sessions_last_entry() {
        let t = tempfile::tempdir().unwrap();
        let dir = AcctDir::open(t.path()).unwrap();
        let h0 = 1_800_000_000 / 3600 * 3600;
        let mut pending = Vec::new();
        // 10 records in hour h0, 5 in h0+1 (the current hour), a session closing in h0.
        for k in 0..15u64 {
            let at = if k < 10 { h0 + 60 * k as i64 } else { h0 + 3600 + 60 * k as i64 };
            let mut entries = vec![entry_at("a", 100 + k, at)];
            if k < 3 {
                entries.push(entry_at("b", 10 + k, at));
            }
            if k == 3 {
                let mut e = entry_at("b", 13, at);
                e.stop = Some(crate::accounting::record::Stop { at, cause: "User-Request".into() });
                entries.push(e);
            }
            let b = Batch {
                seq: k + 1,
                batch_id: format!("n:i:{}", k + 1),
                nas_identity: "n".into(),
                collected_at: at,
                entries,
            };
            pending.push((dir.append(&b).unwrap(), b));
        }
        let mut j = Journal {
            dir: dir.clone(),
            state: State::fresh(0),
            pending,
            markers_consumed: Vec::new(),
            quarantined: Vec::new(),
            rolled_forward: 0,
            state_dirty: false,
        };
        assert_eq!(j.compact(h0 + 3600 + 900).unwrap(), 9);
        assert_eq!(j.pending.len(), 6, "one record for the past hour, the current hour untouched");
        let m = &j.pending[0].1;
        assert_eq!((m.seq, m.batch_id.as_str()), (10, "n:i:1-10"));
        let a = m.entries.iter().find(|e| e.session.key == "a").unwrap();
        assert_eq!((a.total.rx, a.delta.rx), (109, 10));
        let b = m.entries.iter().find(|e| e.session.key == "b").unwrap();
        assert!(b.stop.is_some() && b.total.rx == 13, "the closing entry is kept");
        // On disk exactly what is pending, readable.
        let scan = dir.scan().unwrap();
        assert_eq!(
            scan.records.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>(),
            j.pending.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
        );
        assert_eq!(j.compact(h0 + 3600 + 900).unwrap(), 0, "below the threshold now");
    }

    #[test]
    fn chunks_merge_consecutive_records_within_limits() {
        let sizes = |c: &Vec<Vec<(PathBuf, Batch)>>| {
            c.iter().map(|c| c.iter().map(|r| r.1.seq).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        let c = chunk(vec![rec(1, "a", 4), rec(2, "a", 4), rec(3, "a", 4), rec(4, "b", 1), rec(5, "a", 20)], 10);
        assert_eq!(sizes(&c), vec![vec![1, 2], vec![3], vec![4], vec![5]]);
        let many: Vec<_> = (1..=(CHUNK_RECORDS as u64 + 1)).map(|s| rec(s, "a", 1)).collect();
        assert_eq!(chunk(many, usize::MAX).iter().map(Vec::len).collect::<Vec<_>>(), vec![CHUNK_RECORDS, 1]);
        assert!(chunk(Vec::new(), 10).is_empty());
    }
}

//! Connect outcomes from the plugin, cheaply and safely out of pppd.
//!
//! The plugin may not hold anything between pppd events nor start threads, so it does not keep
//! counters: each pppd appends one line per connect to `<run_dir>/connect-events.log` (a few
//! system calls: open O_APPEND, a shared flock taken without waiting, one write, close). The
//! collector folds the lines into running totals and histograms kept in
//! `<state_dir>/connect-stats.json`, and the metrics are rendered from those.
//!
//! Handing over without losing or double-counting a line:
//! * The merger renames the log to `connect-events.<seq>.merging` first, then takes an
//!   exclusive flock on the renamed file: a writer that opened the old file before the rename
//!   holds its shared lock while it writes, so once the merger has the exclusive lock every such
//!   write is complete. A writer never waits: if its shared lock is refused, or the file it
//!   locked is no longer the one at the log's path, it was renamed away, and the writer opens the
//!   path again (a new file).
//! * The totals record the highest `<seq>` merged. A crash after saving the totals but before
//!   deleting the merged file leaves a file whose seq is not above it: deleted unread next time.
//!   A crash before saving leaves it to be merged again (nothing was counted).
//! * The log is bounded ([`MAX_LOG_BYTES`]): when no collector runs, events beyond that are
//!   dropped rather than filling /run.
//!
//! Line format (version 1): `1 <unix s> <outcome> <latency µs> <lock wait µs> <lock held µs>
//! <sql µs> <mapping µs> <apply µs>`; fields a connect did not reach are 0.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const LOG_NAME: &str = "connect-events.log";
pub const STATS_NAME: &str = "connect-stats.json";
/// About 100,000 connects; the collector normally merges every 300 s.
pub const MAX_LOG_BYTES: u64 = 8 << 20;

/// How a connect ended (`pppgate_connects_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The policy was applied and the gate released.
    Applied,
    /// The lookup refused it: no usable vpn_connections row, several rows, not allowed online,
    /// or no authenticated name.
    RefusedLookup,
    /// The apply lock stayed busy for the whole window.
    EndedWindow,
    /// Anything else ended it (SQL unreachable, the gate, the mapping, the apply, ...).
    EndedError,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Applied, Outcome::RefusedLookup, Outcome::EndedWindow, Outcome::EndedError];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::RefusedLookup => "refused_lookup",
            Outcome::EndedWindow => "ended_window",
            Outcome::EndedError => "ended_error",
        }
    }

    fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == s)
    }
}

/// One connect, as the plugin saw it (microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectEvent {
    pub at: i64,
    pub outcome: Option<Outcome>,
    /// ip-up → gate released (applied), or → the session was ended.
    pub latency_us: u64,
    pub lock_wait_us: u64,
    pub lock_held_us: u64,
    pub sql_us: u64,
    pub mapping_us: u64,
    pub apply_us: u64,
}

impl ConnectEvent {
    pub fn line(&self) -> String {
        format!(
            "1 {} {} {} {} {} {} {} {}\n",
            self.at,
            self.outcome.unwrap_or(Outcome::EndedError).name(),
            self.latency_us,
            self.lock_wait_us,
            self.lock_held_us,
            self.sql_us,
            self.mapping_us,
            self.apply_us
        )
    }

    pub fn parse(line: &str) -> Option<ConnectEvent> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || f[0] != "1" {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        Some(ConnectEvent {
            at: f[1].parse().ok()?,
            outcome: Some(Outcome::parse(f[2])?),
            latency_us: n(3)?,
            lock_wait_us: n(4)?,
            lock_held_us: n(5)?,
            sql_us: n(6)?,
            mapping_us: n(7)?,
            apply_us: n(8)?,
        })
    }
}

/// Appends one event (the plugin, inside pppd). Never blocks; a log over [`MAX_LOG_BYTES`]
/// drops the event (`Ok(false)`).
pub fn record(run_dir: &Path, ev: &ConnectEvent) -> Result<bool> {
    let path = run_dir.join(LOG_NAME);
    let werr = |source: std::io::Error| Error::Write { path: path.clone(), source };
    for _ in 0..4 {
        let open = || OpenOptions::new().append(true).create(true).mode(0o640).open(&path);
        let f = match open() {
            // No tmpfiles.d entry ran (a box without the package's units): the plugin makes it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(run_dir).map_err(|source| Error::Write { path: run_dir.into(), source })?;
                open()
            }
            r => r,
        }
        .map_err(werr)?;
        let mut f = match Flock::lock(f, FlockArg::LockSharedNonblock) {
            Ok(l) => l,
            // The merger holds it: it was renamed away already.
            Err((_, nix::Error::EWOULDBLOCK)) => continue,
            Err((_, e)) => return Err(werr(std::io::Error::from(e))),
        };
        let mine = f.metadata().map_err(werr)?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == mine.ino() && now.dev() == mine.dev() => {}
            _ => continue,
        }
        if mine.len() >= MAX_LOG_BYTES {
            return Ok(false);
        }
        f.write_all(ev.line().as_bytes()).map_err(werr)?;
        return Ok(true);
    }
    Err(werr(std::io::Error::new(std::io::ErrorKind::WouldBlock, "the event log kept being renamed")))
}

/// Upper bounds (seconds) of the connect histograms: the connect path's budget is milliseconds,
/// the apply window at most 15 s.
pub const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0];

/// A histogram kept as counts per bucket (not cumulative), sum and count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histo {
    /// Observations per bucket of [`BUCKETS`] (index = first bound ≥ the value); the last
    /// element counts values above every bound.
    pub buckets: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

impl Histo {
    pub fn observe_us(&mut self, us: u64) {
        let s = us as f64 / 1e6;
        if self.buckets.len() != BUCKETS.len() + 1 {
            self.buckets.resize(BUCKETS.len() + 1, 0);
        }
        let i = BUCKETS.iter().position(|b| s <= *b).unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_s += s;
        self.count += 1;
    }

    /// Cumulative counts per bound of [`BUCKETS`].
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        BUCKETS
            .iter()
            .enumerate()
            .map(|(i, b)| {
                acc += self.buckets.get(i).copied().unwrap_or(0);
                (*b, acc)
            })
            .collect()
    }
}

/// Running totals of every merged connect event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectStats {
    pub version: u32,
    /// Highest merged file sequence.
    pub merged_seq: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// ip-up → gate released, applied connects.
    pub latency: Histo,
    pub lock_wait: Histo,
    pub lock_held: Histo,
    /// Connect-path phases of applied connects: sql, mapping, apply.
    pub phases: BTreeMap<String, Histo>,
    /// Lines that did not parse (a newer writer, a torn line).
    pub unreadable_lines: u64,
}

impl ConnectStats {
    pub fn add(&mut self, ev: &ConnectEvent) {
        let o = ev.outcome.unwrap_or(Outcome::EndedError);
        *self.outcomes.entry(o.name().to_string()).or_default() += 1;
        if o == Outcome::Applied {
            self.latency.observe_us(ev.latency_us);
            self.lock_wait.observe_us(ev.lock_wait_us);
            self.lock_held.observe_us(ev.lock_held_us);
            for (p, us) in [("sql", ev.sql_us), ("mapping", ev.mapping_us), ("apply", ev.apply_us)] {
                self.phases.entry(p.to_string()).or_default().observe_us(us);
            }
        }
    }

    /// Folds complete lines (`\n`-terminated; a torn last line is ignored).
    fn add_text(&mut self, text: &str) {
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines().filter(|l| !l.trim().is_empty()) {
            match ConnectEvent::parse(line) {
                Some(ev) => self.add(&ev),
                None => self.unreadable_lines += 1,
            }
        }
    }
}

fn stats_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATS_NAME)
}

fn load_stats(state_dir: &Path) -> Result<ConnectStats> {
    let path = stats_path(state_dir);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::invalid("connect statistics", path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConnectStats { version: 1, ..Default::default() }),
        Err(source) => Err(Error::Read { path, source }),
    }
}

/// `connect-events.<seq>.merging` files of `run_dir`, by sequence.
fn merging_files(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let rd = match fs::read_dir(run_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path: run_dir.into(), source }),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name
            .strip_prefix("connect-events.")
            .and_then(|r| r.strip_suffix(".merging"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_locked(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|source| Error::Read { path: path.into(), source })?;
    // Writers that opened it before the rename hold a shared lock while they write.
    let mut f = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::Lock { path: path.into(), source: std::io::Error::from(e) })?;
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(|source| Error::Read { path: path.into(), source })?;
    Ok(s)
}

/// Folds the plugin's events into the totals (the collector, under its lock). Returns them.
pub fn merge(run_dir: &Path, state_dir: &Path) -> Result<ConnectStats> {
    let mut stats = load_stats(state_dir)?;
    let mut pending = merging_files(run_dir)?;
    let log = run_dir.join(LOG_NAME);
    if log.exists() {
        let seq = pending.iter().map(|(s, _)| *s).max().unwrap_or(0).max(stats.merged_seq) + 1;
        let to = run_dir.join(format!("connect-events.{seq}.merging"));
        fs::rename(&log, &to).map_err(|source| Error::Write { path: log.clone(), source })?;
        pending.push((seq, to));
    }
    let mut changed = false;
    for (seq, path) in &pending {
        if *seq <= stats.merged_seq {
            continue;
        }
        stats.add_text(&read_locked(path)?);
        stats.merged_seq = *seq;
        changed = true;
    }
    if changed {
        stats.version = 1;
        fs::create_dir_all(state_dir).map_err(|source| Error::Write { path: state_dir.into(), source })?;
        let body = serde_json::to_vec(&stats).expect("connect statistics serialize");
        crate::runs::write_atomic(state_dir, STATS_NAME, &body)?;
    }
    for (_, path) in &pending {
        let _ = fs::remove_file(path);
    }
    Ok(stats)
}

/// The totals as they will be after the next merge, read without changing anything (`pppgate
/// metrics`).
pub fn view(run_dir: &Path, state_dir: &Path) -> Result<ConnectStats> {
    let mut stats = load_stats(state_dir)?;
    for (seq, path) in merging_files(run_dir)? {
        if seq > stats.merged_seq {
            if let Ok(t) = fs::read_to_string(&path) {
                stats.add_text(&t);
            }
        }
    }
    if let Ok(t) = fs::read_to_string(run_dir.join(LOG_NAME)) {
        stats.add_text(&t);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(o: Outcome, latency_us: u64) -> ConnectEvent {
        ConnectEvent { at: 1_700_000_000, outcome: Some(o), latency_us, lock_held_us: 4000, ..Default::default() }
    }

    #[test]
    fn lines_round_trip() {
        let e = ConnectEvent {
            at: 5,
            outcome: Some(Outcome::EndedWindow),
            latency_us: 1,
            lock_wait_us: 2,
            lock_held_us: 3,
            sql_us: 4,
            mapping_us: 5,
            apply_us: 6,
        };
        assert_eq!(ConnectEvent::parse(&e.line()), Some(e));
        assert_eq!(ConnectEvent::parse("2 5 applied 1 2 3 4 5 6"), None);
        assert_eq!(ConnectEvent::parse("1 5 nonsense 1 2 3 4 5 6"), None);
    }

    #[test]
    fn merge_counts_each_event_once_across_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let (run, state) = (dir.path().join("run"), dir.path().join("state"));
        fs::create_dir_all(&run).unwrap();
        record(&run, &ev(Outcome::Applied, 30_000)).unwrap();
        record(&run, &ev(Outcome::Applied, 700_000)).unwrap();
        record(&run, &ev(Outcome::RefusedLookup, 0)).unwrap();
        assert_eq!(view(&run, &state).unwrap().outcomes["applied"], 2);
        let s = merge(&run, &state).unwrap();
        assert_eq!(s.outcomes["applied"], 2);
        assert_eq!(s.outcomes["refused_lookup"], 1);
        assert_eq!(s.latency.count, 2);
        assert_eq!(s.latency.cumulative()[2], (0.025, 0));
        assert_eq!(s.latency.cumulative()[3], (0.05, 1));
        assert_eq!(s.latency.cumulative()[7], (1.0, 2));
        assert!((s.latency.sum_s - 0.73).abs() < 1e-9);
        assert!(!run.join(LOG_NAME).exists());
        // A merge that crashed after saving: its file is still there; it is not counted again.
        fs::write(run.join(format!("connect-events.{}.merging", s.merged_seq)), ev(Outcome::Applied, 1).line())
            .unwrap();
        // A merge that crashed before saving: a newer file, counted once.
        fs::write(run.join(format!("connect-events.{}.merging", s.merged_seq + 1)), ev(Outcome::EndedError, 1).line())
            .unwrap();
        record(&run, &ev(Outcome::EndedWindow, 15_000_000)).unwrap();
        let v = view(&run, &state).unwrap();
        let s = merge(&run, &state).unwrap();
        // The view counts what the merge counts (it does not advance merged_seq).
        assert_eq!(ConnectStats { merged_seq: s.merged_seq, ..v }, s, "the view is what the merge makes");
        assert_eq!(s.outcomes["applied"], 2);
        assert_eq!(s.outcomes["ended_error"], 1);
        assert_eq!(s.outcomes["ended_window"], 1);
        assert!(merging_files(&run).unwrap().is_empty());
        assert_eq!(merge(&run, &state).unwrap(), s, "nothing new: nothing changes");
    }

    #[test]
    fn torn_and_foreign_lines() {
        let mut s = ConnectStats::default();
        s.add_text(&format!("{}garbage line\n1 7 applied 1", ev(Outcome::Applied, 1).line()));
        assert_eq!(s.outcomes["applied"], 1);
        assert_eq!(s.unreadable_lines, 1);
    }

    #[test]
    fn a_missing_run_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run").join("pppgate");
        assert!(record(&run, &ev(Outcome::Applied, 1)).unwrap());
        assert_eq!(fs::read_to_string(run.join(LOG_NAME)).unwrap(), ev(Outcome::Applied, 1).line());
    }

    #[test]
    fn a_full_log_drops_events() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join(LOG_NAME)).unwrap();
        f.set_len(MAX_LOG_BYTES).unwrap();
        assert!(!record(dir.path(), &ev(Outcome::Applied, 1)).unwrap());
    }

    #[test]
    fn a_writer_never_waits_for_the_merger() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_NAME);
        record(dir.path(), &ev(Outcome::Applied, 1)).unwrap();
        // The merger renamed the log and holds it exclusively.
        let moved = dir.path().join("connect-events.1.merging");
        fs::rename(&log, &moved).unwrap();
        let _held = Flock::lock(File::open(&moved).unwrap(), FlockArg::LockExclusive).unwrap();
        assert!(record(dir.path(), &ev(Outcome::Applied, 2)).unwrap());
        assert_eq!(fs::read_to_string(&log).unwrap(), ev(Outcome::Applied, 2).line());
    }
}

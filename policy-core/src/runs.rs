//! Last-run records of the timer jobs (reconcile, collector, janitor): when each last ran, how it
//! ended, where its time went, and running totals, so `pppgate diag` and the metrics can say
//! "the collector last succeeded 40 minutes ago" without reading the journal.
//!
//! One JSON file per job, `<state_dir>/runs/<job>.json` (state_dir: /var/lib/pppgate), replaced
//! atomically (temp file, fsync, rename, fsync of the directory) at the end of every run. The
//! read-modify-write of the totals is serialised by a flock on `<state_dir>/runs/.lock`, held
//! only for that (a few file operations). A run that cannot write its record logs a warning and
//! keeps its own exit code: bookkeeping never fails a job. Only the timer's form of a job is
//! recorded (a janitor for one login, from FreeRADIUS, is not "the janitor's last run").

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ExitCode, Result};
use crate::lock::now_unix;

/// Format of the record files; a reader ignores fields it does not know.
pub const RECORD_VERSION: u32 = 1;

/// The jobs whose runs are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    Reconcile,
    Collector,
    Janitor,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Reconcile, Job::Collector, Job::Janitor];

    pub fn name(self) -> &'static str {
        match self {
            Job::Reconcile => "reconcile",
            Job::Collector => "collector",
            Job::Janitor => "janitor",
        }
    }

    /// The systemd timer that runs it (packaging/systemd).
    pub fn timer_unit(self) -> &'static str {
        match self {
            Job::Reconcile => "vpn-policy-reconcile.timer",
            Job::Collector => "vpn-accounting-collector.timer",
            Job::Janitor => "vpn-stale-session-janitor.timer",
        }
    }

    /// The interval its timer runs it at (packaging/systemd; a unit test keeps them in step).
    pub fn interval(self) -> Duration {
        Duration::from_secs(300)
    }
}

/// How a run ended, from its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Ok,
    /// Exit 69: the database was unreachable (the job did what it can without it).
    SqlUnavailable,
    /// Exit 75: the lock was busy; the next run retries.
    Locked,
    /// Any other exit code.
    Failed,
}

impl RunResult {
    pub const ALL: [RunResult; 4] = [RunResult::Ok, RunResult::SqlUnavailable, RunResult::Locked, RunResult::Failed];

    pub fn of(code: ExitCode) -> RunResult {
        match code {
            ExitCode::Ok => RunResult::Ok,
            ExitCode::SqlUnavailable => RunResult::SqlUnavailable,
            ExitCode::Locked => RunResult::Locked,
            _ => RunResult::Failed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunResult::Ok => "ok",
            RunResult::SqlUnavailable => "sql_unavailable",
            RunResult::Locked => "locked",
            RunResult::Failed => "failed",
        }
    }
}

/// Running totals over every recorded run of a job (since the state directory was created).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Runs by result name.
    #[serde(default)]
    pub runs: BTreeMap<String, u64>,
    /// Database outages this job saw begin (a run that found SQL unreachable after one that did
    /// not).
    #[serde(default)]
    pub database_outages: u64,
    /// Sums of the job's figures (e.g. `radacct_closed` of the janitor).
    #[serde(default)]
    pub figures: BTreeMap<String, u64>,
}

/// One job's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub version: u32,
    pub job: Job,
    /// Unix seconds.
    pub started_at: i64,
    pub finished_at: i64,
    pub duration_s: f64,
    pub exit_code: u8,
    pub result: RunResult,
    /// The error, one line, when the run did not succeed.
    #[serde(default)]
    pub message: Option<String>,
    /// Seconds per phase (job-specific names: `scan`, `sql`, `read`, `plan`, `apply`, ...).
    #[serde(default)]
    pub phases: BTreeMap<String, f64>,
    /// Seconds spent waiting for the job's lock, and holding it.
    #[serde(default)]
    pub lock_wait_s: Option<f64>,
    #[serde(default)]
    pub lock_held_s: Option<f64>,
    /// Job-specific figures of this run (counts).
    #[serde(default)]
    pub figures: BTreeMap<String, u64>,
    /// When the job last ended with result `ok` (this run or an earlier one).
    #[serde(default)]
    pub last_success_at: Option<i64>,
    #[serde(default)]
    pub totals: Totals,
}

/// A run being measured; [`Run::finish`] writes the record.
#[derive(Debug)]
pub struct Run {
    job: Job,
    started: Instant,
    started_at: i64,
    phases: BTreeMap<String, f64>,
    lock_wait: Option<Duration>,
    lock_held: Option<Duration>,
    lock_taken: Option<Instant>,
    figures: BTreeMap<String, u64>,
    note: Option<String>,
}

impl Run {
    pub fn start(job: Job) -> Run {
        Run {
            job,
            started: Instant::now(),
            started_at: now_unix(),
            phases: BTreeMap::new(),
            lock_wait: None,
            lock_held: None,
            lock_taken: None,
            figures: BTreeMap::new(),
            note: None,
        }
    }

    /// What went wrong, for a run whose error message is not printed (exit 69 after a logged
    /// outage); an explicit message given to [`Run::finish`] wins.
    pub fn note(&mut self, m: impl Into<String>) {
        self.note = Some(m.into());
    }

    pub fn job(&self) -> Job {
        self.job
    }

    /// Records a phase's duration (added to what the phase already has).
    pub fn phase(&mut self, name: &str, d: Duration) {
        *self.phases.entry(name.to_string()).or_default() += d.as_secs_f64();
    }

    /// Records a phase given in microseconds.
    pub fn phase_us(&mut self, name: &str, us: u64) {
        self.phase(name, Duration::from_micros(us));
    }

    pub fn figure(&mut self, name: &str, v: u64) {
        self.figures.insert(name.to_string(), v);
    }

    /// The lock was taken now, after waiting `waited`.
    pub fn lock_taken(&mut self, waited: Duration) {
        self.lock_wait = Some(waited);
        self.lock_taken = Some(Instant::now());
    }

    /// The lock was released now.
    pub fn lock_released(&mut self) {
        if let Some(t) = self.lock_taken.take() {
            self.lock_held = Some(t.elapsed());
        }
    }

    /// Writes the record: this run, the last success, the totals. Returns the record written.
    pub fn finish(mut self, state_dir: &Path, code: ExitCode, message: Option<String>) -> Result<RunRecord> {
        self.lock_released();
        let finished_at = now_unix();
        let duration_s = self.started.elapsed().as_secs_f64();
        let dir = runs_dir(state_dir);
        mkdir(&dir)?;
        let _guard = totals_lock(&dir)?;
        let prev = load(state_dir, self.job).ok().flatten();
        let result = RunResult::of(code);
        let mut totals = prev.as_ref().map(|p| p.totals.clone()).unwrap_or_default();
        *totals.runs.entry(result.name().to_string()).or_default() += 1;
        let prev_result = prev.as_ref().map(|p| p.result);
        if result == RunResult::SqlUnavailable && prev_result != Some(RunResult::SqlUnavailable) {
            totals.database_outages += 1;
        }
        for (k, v) in &self.figures {
            let t = totals.figures.entry(k.clone()).or_default();
            *t = t.saturating_add(*v);
        }
        let last_success_at =
            if result == RunResult::Ok { Some(finished_at) } else { prev.as_ref().and_then(|p| p.last_success_at) };
        let rec = RunRecord {
            version: RECORD_VERSION,
            job: self.job,
            started_at: self.started_at,
            finished_at,
            duration_s,
            exit_code: code.code(),
            result,
            message: message.filter(|m| !m.is_empty()).or(self.note),
            phases: self.phases,
            lock_wait_s: self.lock_wait.map(|d| d.as_secs_f64()),
            lock_held_s: self.lock_held.map(|d| d.as_secs_f64()),
            figures: self.figures,
            last_success_at,
            totals,
        };
        let body = serde_json::to_vec_pretty(&rec).expect("run records serialize");
        write_atomic(&dir, &format!("{}.json", self.job.name()), &body)?;
        Ok(rec)
    }
}

fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// The path of a job's record.
pub fn record_path(state_dir: &Path, job: Job) -> PathBuf {
    runs_dir(state_dir).join(format!("{}.json", job.name()))
}

/// Reads a job's record; `None` when the job never recorded a run.
pub fn load(state_dir: &Path, job: Job) -> Result<Option<RunRecord>> {
    let path = record_path(state_dir, job);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Read { path, source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::invalid("run record", path.display().to_string(), e.to_string()))
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| Error::Write { path: dir.into(), source })
}

fn totals_lock(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join(".lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&path)
        .map_err(|source| Error::Lock { path: path.clone(), source })?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Lock { path, source: std::io::Error::from(e) })
}

/// Writes `dir/name` atomically and durably (temp file 0640, fsync, rename, fsync of the dir).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(source) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Write { path, source });
    }
    crate::mapping::sync_dir(dir);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_accumulate_and_outages_count_once_per_outage() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Run::start(Job::Janitor);
        r.figure("radacct_closed", 2);
        let rec = r.finish(dir.path(), ExitCode::Ok, None).unwrap();
        assert_eq!(rec.result, RunResult::Ok);
        assert_eq!(rec.last_success_at, Some(rec.finished_at));
        for _ in 0..3 {
            Run::start(Job::Janitor).finish(dir.path(), ExitCode::SqlUnavailable, Some("down".into())).unwrap();
        }
        let mut r = Run::start(Job::Janitor);
        r.figure("radacct_closed", 5);
        r.finish(dir.path(), ExitCode::Ok, None).unwrap();
        Run::start(Job::Janitor).finish(dir.path(), ExitCode::SqlUnavailable, None).unwrap();
        let rec = load(dir.path(), Job::Janitor).unwrap().unwrap();
        assert_eq!(rec.result, RunResult::SqlUnavailable);
        assert_eq!(rec.exit_code, 69);
        assert_eq!(rec.totals.database_outages, 2);
        assert_eq!(rec.totals.runs["ok"], 2);
        assert_eq!(rec.totals.runs["sql_unavailable"], 4);
        assert_eq!(rec.totals.figures["radacct_closed"], 7);
        assert!(rec.last_success_at.is_some());
        assert!(load(dir.path(), Job::Collector).unwrap().is_none());
    }

    #[test]
    fn result_of_exit_codes() {
        assert_eq!(RunResult::of(ExitCode::Ok), RunResult::Ok);
        assert_eq!(RunResult::of(ExitCode::SqlUnavailable), RunResult::SqlUnavailable);
        assert_eq!(RunResult::of(ExitCode::Locked), RunResult::Locked);
        assert_eq!(RunResult::of(ExitCode::DataErr), RunResult::Failed);
        assert_eq!(RunResult::of(ExitCode::Internal), RunResult::Failed);
    }

    #[test]
    fn timer_units_and_intervals_match_the_packaging() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
        let mut timers: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".timer"))
            // WireGuard's reconcile timer runs only on concentrators that provision WireGuard
            // (its service is skipped until `wg init`); it is not a recorded job.
            .filter(|n| n != "pppgate-wg-reconcile.timer")
            .collect();
        timers.sort();
        let mut ours: Vec<String> = Job::ALL.iter().map(|j| j.timer_unit().to_string()).collect();
        ours.sort();
        assert_eq!(timers, ours, "packaging/systemd timers and runs::Job::timer_unit must agree");
        for j in Job::ALL {
            let text = fs::read_to_string(dir.join(j.timer_unit())).unwrap();
            let secs = text
                .lines()
                .find_map(|l| l.strip_prefix("OnUnitActiveSec="))
                .map(|v| match v.trim() {
                    v if v.ends_with("min") => v.trim_end_matches("min").parse::<u64>().unwrap() * 60,
                    v => v.trim_end_matches('s').parse::<u64>().unwrap(),
                })
                .unwrap();
            assert_eq!(j.interval(), Duration::from_secs(secs), "{}", j.timer_unit());
        }
    }

    #[test]
    fn unreadable_record_is_an_error_not_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(runs_dir(dir.path())).unwrap();
        fs::write(record_path(dir.path(), Job::Collector), b"{not json").unwrap();
        assert!(load(dir.path(), Job::Collector).is_err());
    }
}

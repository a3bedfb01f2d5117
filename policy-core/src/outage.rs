//! "Log sparingly" during a database outage (R705): best-effort components (janitor,
//! collector) and the FreeRADIUS hooks log ONE line when the database becomes unreachable and one
//! when it answers again, not one per run or per login.
//!
//! The state is a marker file per component, `<run_dir>/sql-outage.<component>` (run_dir is
//! /run/pppgate, a tmpfs: a reboot starts without markers). It holds `since=<unix s>`. Creating
//! it with O_EXCL makes "who logs the first line" race-free between concurrent runs. When the
//! marker cannot be written (no permission), every failure is logged: never silence an outage.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::lock::now_unix;

#[derive(Debug, Clone)]
pub struct Outage {
    path: PathBuf,
}

/// What a failure or success changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// First failure of an outage (or the marker cannot be kept): log it.
    Began,
    /// The outage was already recorded: stay quiet.
    Ongoing,
    /// The database answered after an outage that began at this time: log it.
    Ended { since: i64 },
    /// The database answered and there was no outage.
    Healthy,
}

impl Outage {
    pub fn new(run_dir: &Path, component: &str) -> Outage {
        debug_assert!(component.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        Outage { path: run_dir.join(format!("sql-outage.{component}")) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that the database was unreachable.
    pub fn failed(&self) -> Transition {
        if let Some(dir) = self.path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(&self.path) {
            Ok(mut f) => {
                let _ = writeln!(f, "since={}", now_unix());
                Transition::Began
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Transition::Ongoing,
            Err(_) => Transition::Began,
        }
    }

    /// Records that the database answered. One `stat` when there is no outage.
    pub fn succeeded(&self) -> Transition {
        if fs::symlink_metadata(&self.path).is_err() {
            return Transition::Healthy;
        }
        let since = fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().strip_prefix("since=").and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        match fs::remove_file(&self.path) {
            Ok(()) => Transition::Ended { since },
            // Another run removed it first and logged the recovery.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Transition::Healthy,
            Err(_) => Transition::Ended { since },
        }
    }

    /// Whether an outage is currently recorded.
    pub fn active(&self) -> bool {
        self.path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_begin_and_one_end_per_outage() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outage::new(&dir.path().join("run"), "janitor");
        assert_eq!(o.succeeded(), Transition::Healthy);
        assert_eq!(o.failed(), Transition::Began);
        assert!(o.active());
        for _ in 0..5 {
            assert_eq!(o.failed(), Transition::Ongoing);
        }
        match o.succeeded() {
            Transition::Ended { since } => assert!(since > 0),
            other => panic!("{other:?}"),
        }
        assert_eq!(o.succeeded(), Transition::Healthy);
        assert_eq!(o.failed(), Transition::Began);
    }

    #[test]
    fn components_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let a = Outage::new(dir.path(), "janitor");
        let b = Outage::new(dir.path(), "radius-exec");
        assert_eq!(a.failed(), Transition::Began);
        assert_eq!(b.failed(), Transition::Began);
        assert_eq!(a.failed(), Transition::Ongoing);
    }

    #[test]
    fn unwritable_marker_logs_every_time() {
        let o = Outage::new(Path::new("/proc/nonexistent-dir"), "janitor");
        assert_eq!(o.failed(), Transition::Began);
        assert_eq!(o.failed(), Transition::Began);
    }
}

//! The single-writer lock: `flock` on /run/vpn-policy-apply.lock (and the collector's own lock).
//!
//! Whoever holds the lock writes `pid=<pid> since=<unix seconds> what=<verb>` into the file, so a
//! busy lock can be reported with its holder, and a holder older than the TTL can be recognised as
//! stale. The kernel releases a flock when its holder dies, so a crashed writer never blocks
//! anyone; a *hung* writer is what `--break-stale-lock` is for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::error::{Error, Result};

pub use crate::error::LockHolder as Holder;

impl Holder {
    pub fn parse(text: &str) -> Option<Holder> {
        let mut pid = None;
        let mut since = None;
        let mut what = String::new();
        for field in text.split_whitespace() {
            match field.split_once('=') {
                Some(("pid", v)) => pid = v.parse().ok(),
                Some(("since", v)) => since = v.parse().ok(),
                Some(("what", v)) => what = v.to_string(),
                _ => {}
            }
        }
        Some(Holder { pid: pid?, since: since?, what })
    }

    pub fn age(&self) -> Duration {
        Duration::from_secs((now_unix() - self.since).max(0) as u64)
    }
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
    pub path: PathBuf,
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Never through a symbolic link, and only a file that is ours: the holder record is written
    // over the file's content, which must never be someone else's file (docs/security.md).
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| Error::Lock { path: path.into(), source })?;
    let md = f.metadata().map_err(|source| Error::Lock { path: path.into(), source })?;
    if let Err(why) = lock_file_is_ours(&md, &f) {
        let source = std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
        return Err(Error::Lock { path: path.into(), source });
    }
    Ok(f)
}

/// A lock file pppgate may write its holder record into: a regular file with one link, owned
/// by us (or root), empty or holding a record.
fn lock_file_is_ours(md: &std::fs::Metadata, f: &File) -> std::result::Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if !md.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if md.nlink() != 1 {
        return Err(format!("has {} hard links; refusing to write into it", md.nlink()));
    }
    if md.uid() != me && md.uid() != 0 {
        return Err(format!("owned by uid {}, not by us", md.uid()));
    }
    if md.len() > 0 {
        let mut head = [0u8; 4];
        let n = f.read_at(&mut head, 0).map_err(|e| e.to_string())?;
        // A holder rewrites its record (truncate, then write) while others look: what is read
        // may be empty or a part of "pid=" by then — busy, not foreign.
        if md.len() > 4096 || !b"pid=".starts_with(&head[..n]) {
            return Err("holds something else than a lock record; refusing to overwrite it".into());
        }
    }
    Ok(())
}

impl Lock {
    /// Takes the lock without waiting; `Error::Locked` (exit 75) with the holder when it is busy.
    pub fn try_acquire(path: &Path, what: &str) -> Result<Lock> {
        let file = open(path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut fl) => {
                let rec = format!("pid={} since={} what={}\n", std::process::id(), now_unix(), what);
                let w =
                    fl.set_len(0).and_then(|_| fl.seek(SeekFrom::Start(0))).and_then(|_| fl.write_all(rec.as_bytes()));
                if let Err(source) = w {
                    return Err(Error::Lock { path: path.into(), source });
                }
                Ok(Lock { _flock: fl, path: path.into() })
            }
            Err((_, nix::Error::EWOULDBLOCK)) => Err(Error::Locked { path: path.into(), holder: holder(path) }),
            Err((_, e)) => Err(Error::Lock { path: path.into(), source: std::io::Error::from(e) }),
        }
    }

    /// Polls for the lock for at most `max` (for callers that may block briefly, never pppd's
    /// connect path, which retries from pppd timers instead).
    pub fn acquire_within(path: &Path, what: &str, max: Duration) -> Result<Lock> {
        let deadline = Instant::now() + max;
        let mut pause = Duration::from_millis(5);
        loop {
            match Lock::try_acquire(path, what) {
                Err(Error::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }
}

/// Who holds the lock on `path`, as the kernel says (/proc/locks). The record in the file names
/// the holder only when that process really holds the lock: the file keeps the last pppgate
/// holder's record after it let go, and another program holding the lock (an operator's
/// flock(1), a shell hook) writes none. Such a holder is reported with its `comm` and, as
/// `since`, its start time (the lock was taken at or after it). When /proc/locks cannot be read,
/// the record is all there is.
pub fn holder(path: &Path) -> Option<Holder> {
    let mut s = String::new();
    let recorded =
        File::open(path).ok().and_then(|mut f| f.read_to_string(&mut s).ok()).and_then(|_| Holder::parse(&s));
    let meta = std::fs::metadata(path).ok()?;
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else { return recorded };
    let pids = flock_holders(&locks, dev_major(meta.dev()), dev_minor(meta.dev()), meta.ino());
    match recorded {
        Some(h) if pids.contains(&h.pid) => Some(h),
        _ => {
            let pid = *pids.first()?;
            let (since, what) = match crate::procfs::stat(pid) {
                Ok(Some(st)) => {
                    (crate::procfs::process_start_epoch(pid).ok().flatten().unwrap_or_else(now_unix), st.comm)
                }
                _ => (now_unix(), "unknown".to_string()),
            };
            Some(Holder { pid, since, what })
        }
    }
}

/// glibc's `major()`/`minor()` of a `st_dev`.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

fn dev_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// Pids holding a FLOCK on the file `major:minor:inode` according to /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 543 00:1d:9 0 EOF`; waiters, `1: -> FLOCK ...`, are skipped).
fn flock_holders(locks: &str, major: u64, minor: u64, ino: u64) -> Vec<u32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())).then(|| f.get(4)?.parse().ok()).flatten()
        })
        .collect()
}

/// What `--break-stale-lock` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum BreakOutcome {
    /// The lock was free; nothing to break.
    Free,
    /// The holder ended (signalled) and the lock is ours.
    Broken { holder: Holder },
}

/// Admin override: ends a holder that has held the lock longer than `ttl` and takes the lock.
/// A holder younger than the TTL is not stale: the lock is simply busy (`Error::Locked`, exit 75).
/// Refuses a holder whose pid does not match the lock file, and pppd itself (a session is ended with `session kill`, not by breaking a lock).
pub fn break_stale(path: &Path, what: &str, ttl: Duration) -> Result<(Lock, BreakOutcome)> {
    match Lock::try_acquire(path, what) {
        Ok(l) => return Ok((l, BreakOutcome::Free)),
        Err(Error::Locked { .. }) => {}
        Err(e) => return Err(e),
    }
    let Some(h) = holder(path) else {
        return Err(Error::invalid("lock holder", path.display().to_string(), "lock is held but records no holder"));
    };
    if h.age() < ttl {
        // Not stale, just busy: the same answer as without the override (exit 75, retry later).
        return Err(Error::Locked { path: path.into(), holder: Some(h) });
    }
    let comm = crate::procfs::stat(h.pid).ok().flatten().map(|s| s.comm).unwrap_or_default();
    if comm == "pppd" {
        return Err(Error::invalid(
            "lock holder",
            format!("pid {}", h.pid),
            "is pppd; end that session with `pppgate session kill` instead",
        ));
    }
    if h.pid == std::process::id() || h.pid <= 1 {
        return Err(Error::invalid("lock holder", format!("pid {}", h.pid), "refusing to signal this pid"));
    }
    tracing::error!(alert = true, pid = h.pid, since = h.since, what = %h.what, comm = %comm,
        "breaking stale lock {}: signalling its holder", path.display());
    let pid = nix::unistd::Pid::from_raw(h.pid as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    if let Ok(l) = Lock::acquire_within(path, what, Duration::from_secs(3)) {
        return Ok((l, BreakOutcome::Broken { holder: h }));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let l = Lock::acquire_within(path, what, Duration::from_secs(3))?;
    Ok((l, BreakOutcome::Broken { holder: h }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_writes_through_a_link_or_over_a_file_that_is_not_a_lock() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, "root:x:0:0\n").unwrap();
        let sym = dir.path().join("sym.lock");
        std::os::unix::fs::symlink(&victim, &sym).unwrap();
        assert!(matches!(Lock::try_acquire(&sym, "apply"), Err(Error::Lock { .. })));
        let hard = dir.path().join("hard.lock");
        std::fs::hard_link(&victim, &hard).unwrap();
        assert!(matches!(Lock::try_acquire(&hard, "apply"), Err(Error::Lock { .. })));
        let foreign = dir.path().join("foreign.lock");
        std::fs::write(&foreign, "something of root's\n").unwrap();
        assert!(matches!(Lock::try_acquire(&foreign, "apply"), Err(Error::Lock { .. })));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0:0\n");
        assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "something of root's\n");
        // Empty (flock(1) made it) or a record of ours: taken.
        let empty = dir.path().join("empty.lock");
        std::fs::write(&empty, "").unwrap();
        drop(Lock::try_acquire(&empty, "apply").unwrap());
        drop(Lock::try_acquire(&empty, "apply").unwrap());
    }

    /// Takers racing a holder that is writing its record: the file is truncated and rewritten
    /// while another taker checks it, which must read as busy, never as a file that is not a
    /// lock (that error ends a connecting session: 1 of 8 simultaneous first connects did).
    #[test]
    fn a_record_being_rewritten_is_still_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let takers: Vec<_> = (0..4)
            .map(|i| {
                let (p, stop) = (p.clone(), stop.clone());
                std::thread::spawn(move || {
                    let (mut taken, mut busy, mut failed) = (0u32, 0u32, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match Lock::try_acquire(&p, &format!("taker-{i}")) {
                            Ok(_) => taken += 1,
                            Err(Error::Locked { .. }) => busy += 1,
                            Err(e) => failed.push(format!("{e}: {:?}", std::error::Error::source(&e))),
                        }
                    }
                    (taken, busy, failed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut taken, mut busy, mut failed) = (0, 0, Vec::new());
        for t in takers {
            let (a, b, f) = t.join().unwrap();
            (taken, busy) = (taken + a, busy + b);
            failed.extend(f);
        }
        println!("taken {taken}, busy {busy}, failed {}", failed.len());
        assert!(taken > 100 && busy > 100, "the takers raced (taken {taken}, busy {busy})");
        assert!(failed.is_empty(), "{} of {} tries failed, e.g. {:?}", failed.len(), taken + busy, failed.first());
    }

    #[test]
    fn second_taker_sees_busy_with_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let l = Lock::try_acquire(&p, "apply").unwrap();
        // A second open file description in the same process conflicts, like another process.
        match Lock::try_acquire(&p, "reconcile") {
            Err(e @ Error::Locked { .. }) => {
                assert_eq!(e.exit_code(), crate::ExitCode::Locked);
                let Error::Locked { holder: Some(h), .. } = e else { panic!() };
                assert_eq!(h.pid, std::process::id());
                assert_eq!(h.what, "apply");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(l);
        Lock::try_acquire(&p, "reconcile").unwrap();
    }

    #[test]
    fn young_holder_is_not_broken() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let _l = Lock::try_acquire(&p, "apply").unwrap();
        let e = break_stale(&p, "admin", Duration::from_secs(60)).unwrap_err();
        assert!(matches!(&e, Error::Locked { holder: Some(h), .. } if h.what == "apply"), "{e}");
        assert_eq!(e.exit_code(), crate::ExitCode::Locked, "busy, not bad input");
    }

    #[test]
    fn a_stale_record_is_not_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        drop(Lock::try_acquire(&p, "apply").unwrap());
        // The file still says "pid=<us> what=apply"; nobody holds the lock.
        assert!(std::fs::read_to_string(&p).unwrap().contains("what=apply"));
        assert_eq!(holder(&p), None);
    }

    #[test]
    fn proc_locks_lines() {
        let t = "1: FLOCK  ADVISORY  WRITE 543 00:1d:9 0 EOF\n\
                 1: -> FLOCK  ADVISORY  WRITE 600 00:1d:9 0 EOF\n\
                 2: POSIX  ADVISORY  WRITE 700 00:1d:9 0 EOF\n\
                 3: FLOCK  ADVISORY  WRITE 800 fd:01:9 0 EOF\n";
        assert_eq!(flock_holders(t, 0, 0x1d, 9), vec![543]);
        assert_eq!(flock_holders(t, 0xfd, 1, 9), vec![800]);
        assert_eq!(flock_holders(t, 0, 0x1d, 10), Vec::<u32>::new());
        assert_eq!((dev_major(0xfd01), dev_minor(0xfd01)), (0xfd, 1));
    }

    #[test]
    fn holder_parse() {
        assert_eq!(
            Holder::parse("pid=12 since=100 what=apply\n"),
            Some(Holder { pid: 12, since: 100, what: "apply".into() })
        );
        assert_eq!(Holder::parse("garbage"), None);
    }
}

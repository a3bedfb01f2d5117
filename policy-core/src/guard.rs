//! `pppgate guard`: notices `inet pppgate` being deleted or altered and restores it at once
//! (docs/security.md, "Tamper detection and restore").
//!
//! A long-running process (`pppgate-guard.service`) subscribed to nftables' change events
//! (nfnetlink group `NFNLGRP_NFTABLES`). Any change to the structure of `inet pppgate` — the
//! table, a chain, a rule, a set deleted or created (`nft flush ruleset`, `nft delete table inet
//! pppgate`, a firewall reload, an inserted rule) — and any change of its set elements made by a
//! process that is not one of pppgate's writers triggers a check: under the apply lock
//! ([`GUARD_LOCK_WAIT`], then without it) [`restore::restore`] rebuilds the table and puts every
//! VALID session's member back into its recorded set, from local state only. Events the kernel
//! dropped (ENOBUFS) trigger the same check, and so does a timer (`--interval`), which also
//! repairs per-interface forwarding and membership changes that produce no event of ours.
//! Sessions without a record (connected before the record existed) are then decided by one
//! reconcile from SQL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{one_line, Error, Result};
use crate::kernel::netlink::{Events, Family, Socket};
use crate::kernel::nft::{classify_event, is_pppgate_writer, NftEvent, NFNLGRP_NFTABLES};
use crate::kernel::Netlink;
use crate::lock::Lock;
use crate::policy::apply;
use crate::policy::restore::{self, Restored};

/// How long a check waits for the apply lock before restoring without it: a connect holds it
/// for milliseconds; a long reconcile must not keep the table missing.
pub const GUARD_LOCK_WAIT: Duration = Duration::from_secs(1);

/// After an event of ours, how long to keep reading for the rest of the same burst (a flush
/// of a whole ruleset arrives as many messages) before checking once.
const SETTLE: Duration = Duration::from_millis(2);
/// The longest a burst is drained before the check runs anyway (a connect storm never ends).
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// Why a check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    /// An event of ours; the instant the first one of the burst arrived.
    Event(Instant),
    /// The kernel dropped events.
    Overrun,
    Interval,
}

impl Trigger {
    /// For the log.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Event(_) => "event",
            Trigger::Overrun => "events lost",
            Trigger::Interval => "interval",
        }
    }
}

/// One check: restore under the apply lock (or without it after [`GUARD_LOCK_WAIT`]); live
/// sessions without a record (connected before this version recorded memberships) are then
/// decided by a reconcile from SQL, which records them (best effort, logged).
pub fn check(cfg: &Config) -> Result<Restored> {
    let lock = match Lock::acquire_within(&cfg.paths.apply_lock, "guard", GUARD_LOCK_WAIT) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("guard: restoring without the apply lock: {}", one_line(&e));
            None
        }
    };
    let mut b = Netlink::recording_to(&cfg.paths.sessions_dir)?;
    let r = restore::restore(&mut b, cfg)?;
    if !r.unrecorded.is_empty() && lock.is_some() {
        match apply::reconcile(cfg, &mut b, false) {
            Ok(rep) => tracing::info!(
                unrecorded = r.unrecorded.len(),
                sql_unavailable = rep.sql_unavailable.is_some(),
                "guard: sessions without a record reconciled"
            ),
            Err(e) => tracing::error!("guard: reconcile of sessions without a record failed: {}", one_line(&e)),
        }
    }
    drop(lock);
    drop(b);
    Ok(r)
}

/// The guard's status file in `paths.run_dir` (tmpfs), replaced after every check: what
/// `pppgate diag` reads to say whether the guard runs, when it last looked and when it last had
/// to restore — observable with or without systemd.
pub const STATUS_FILE: &str = "guard.json";

/// Format of [`GuardStatus`]; a reader ignores fields it does not know.
pub const STATUS_VERSION: u32 = 1;

/// How the last check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing to do.
    Intact,
    /// The table was rebuilt or memberships repaired.
    Restored,
    /// The check or the restore failed (the links stay locked down).
    Failed,
}

/// The last restore the guard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreNote {
    /// Unix time.
    pub at: i64,
    /// [`Trigger::name`] of the check that restored.
    pub trigger: String,
    pub rebuilt: bool,
    pub locked_down: usize,
    pub added: usize,
    pub removed: usize,
    pub restore_us: u64,
    /// From the first event of the burst to the table restored (event triggers only).
    pub since_event_ms: Option<u64>,
}

/// `<run_dir>/guard.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardStatus {
    pub version: u32,
    pub pid: u32,
    /// The guard process's identity, so a reused pid is not taken for the guard.
    pub process: crate::procfs::ProcessIdentity,
    /// Unix times.
    pub started_at: i64,
    pub interval_s: u64,
    pub checks: u64,
    pub last_check_at: i64,
    pub last_trigger: String,
    pub last_outcome: Outcome,
    pub last_error: Option<String>,
    /// Checks that changed something, the first one (at start) included.
    pub restores: u64,
    pub last_restore: Option<RestoreNote>,
}

impl GuardStatus {
    fn new(interval: Duration) -> Result<GuardStatus> {
        let process =
            crate::procfs::own_identity().map_err(|source| Error::Read { path: "/proc/self/stat".into(), source })?;
        let now = crate::lock::now_unix();
        Ok(GuardStatus {
            version: STATUS_VERSION,
            pid: std::process::id(),
            process,
            started_at: now,
            interval_s: interval.as_secs(),
            checks: 0,
            last_check_at: now,
            last_trigger: Trigger::Start.name().into(),
            last_outcome: Outcome::Intact,
            last_error: None,
            restores: 0,
            last_restore: None,
        })
    }

    /// Counts one check's result.
    pub fn note(&mut self, trigger: Trigger, r: &Result<Restored>, now: i64) {
        self.checks += 1;
        self.last_check_at = now;
        self.last_trigger = trigger.name().into();
        match r {
            Err(e) => {
                self.last_outcome = Outcome::Failed;
                self.last_error = Some(one_line(e));
            }
            Ok(r) if r.changed() => {
                self.last_outcome = Outcome::Restored;
                self.last_error = None;
                self.restores += 1;
                self.last_restore = Some(RestoreNote {
                    at: now,
                    trigger: trigger.name().into(),
                    rebuilt: r.rebuilt,
                    locked_down: r.locked_down.len(),
                    added: r.added,
                    removed: r.removed,
                    restore_us: r.total_us,
                    since_event_ms: match trigger {
                        Trigger::Event(t) => Some(t.elapsed().as_millis() as u64),
                        _ => None,
                    },
                });
            }
            Ok(_) => {
                self.last_outcome = Outcome::Intact;
                self.last_error = None;
            }
        }
    }
}

/// The status file of the guard of this configuration.
pub fn status_path(cfg: &Config) -> PathBuf {
    cfg.paths.run_dir.join(STATUS_FILE)
}

/// Reads the guard's status file; `None` when there is none (no guard ever ran since boot).
pub fn load_status(path: &Path) -> Result<Option<GuardStatus>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })
}

fn write_status(dir: &Path, s: &GuardStatus) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|source| Error::Write { path: dir.to_path_buf(), source })?;
    crate::runs::write_atomic(dir, STATUS_FILE, &serde_json::to_vec_pretty(s).expect("serializable"))?;
    Ok(())
}

/// Watches nftables' events until an error; `report` is told what triggered each check and
/// its outcome. After every check the status file ([`STATUS_FILE`]) is replaced (a failed write
/// is logged: bookkeeping never stops the guard).
pub fn run(cfg: &Config, interval: Duration, mut report: impl FnMut(Trigger, &Result<Restored>)) -> Result<()> {
    let mut sock = Socket::open(Family::Netfilter)?;
    sock.subscribe(NFNLGRP_NFTABLES)?;
    let mut status = GuardStatus::new(interval)?;
    // Subscribed first, then the first check: nothing that happens in between goes unseen.
    let mut trigger = Some(Trigger::Start);
    let mut next_tick = Instant::now() + interval;
    let mut burst = Burst::default();
    loop {
        if let Some(t) = trigger.take() {
            let r = check(cfg);
            report(t, &r);
            status.note(t, &r, crate::lock::now_unix());
            if let Err(e) = write_status(&cfg.paths.run_dir, &status) {
                tracing::warn!("guard: cannot write its status: {}", one_line(&e));
            }
            next_tick = Instant::now() + interval;
        }
        let now = Instant::now();
        if now >= next_tick {
            trigger = Some(Trigger::Interval);
            continue;
        }
        // A zero timeval would mean "no timeout".
        sock.set_recv_timeout((next_tick - now).max(Duration::from_millis(1)))?;
        let first = match sock.recv_events()? {
            Events::TimedOut => continue,
            Events::Overrun => {
                trigger = Some(Trigger::Overrun);
                continue;
            }
            Events::Messages(msgs) => msgs,
        };
        let since = Instant::now();
        burst.feed(&first);
        if !burst.ours() {
            continue;
        }
        // Drain the rest of the burst, then check once.
        sock.set_recv_timeout(SETTLE)?;
        while since.elapsed() < SETTLE_MAX {
            match sock.recv_events()? {
                Events::Messages(more) => burst.feed(&more),
                Events::Overrun | Events::TimedOut => break,
            }
        }
        burst = Burst::default();
        trigger = Some(Trigger::Event(since));
    }
}

/// The events of one burst, as far as the guard cares.
#[derive(Debug, Default)]
struct Burst {
    structure: bool,
    /// Element changes of ours seen since the last end of a transaction.
    elements: bool,
    foreign_elements: bool,
}

impl Burst {
    fn feed(&mut self, msgs: &[(u16, Vec<u8>)]) {
        for (ty, payload) in msgs {
            match classify_event(*ty, payload) {
                NftEvent::Structure => self.structure = true,
                NftEvent::Elements => self.elements = true,
                NftEvent::EndOfTransaction { process } => {
                    if self.elements && !process.as_deref().is_some_and(is_pppgate_writer) {
                        self.foreign_elements = true;
                    }
                    self.elements = false;
                }
                NftEvent::Unrelated => {}
            }
        }
    }

    fn ours(&self) -> bool {
        self.structure || self.foreign_elements
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::{messages, MsgBuilder};

    fn msg(m: u16, family: u8, attrs: &[(u16, &str)]) -> (u16, Vec<u8>) {
        let mut b = MsgBuilder::new((10 << 8) | m, 0).bytes(&[family, 0, 0, 0]);
        for (t, v) in attrs {
            b = b.attr_str(*t, v);
        }
        let raw = b.finish(1);
        let parsed = messages(&raw);
        (parsed[0].ty, parsed[0].payload.to_vec())
    }

    #[test]
    fn a_burst_is_ours_when_the_table_changes_or_a_stranger_edits_its_sets() {
        let del_table = msg(2, 1, &[(1, "pppgate")]);
        let elem = msg(12, 1, &[(1, "pppgate")]);
        let newgen = |who: &str| msg(15, 0, &[(3, who)]);
        let mut b = Burst::default();
        b.feed(&[elem.clone(), newgen("pppd")]);
        assert!(!b.ours(), "a connect's own commit");
        b.feed(std::slice::from_ref(&elem));
        assert!(!b.ours(), "not yet: whose transaction is it?");
        b.feed(&[newgen("nft")]);
        assert!(b.ours(), "an element edited by nft(8) across two datagrams");
        let mut b = Burst::default();
        b.feed(&[msg(2, 1, &[(1, "filter")]), newgen("nft")]);
        assert!(!b.ours(), "another table");
        b.feed(&[del_table, newgen("pppgate")]);
        assert!(b.ours(), "the table went, whoever did it");
    }
}

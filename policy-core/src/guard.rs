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

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{one_line, Result};
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

/// Watches nftables' events until an error; `report` is told what triggered each check and
/// its outcome.
pub fn run(cfg: &Config, interval: Duration, mut report: impl FnMut(Trigger, &Result<Restored>)) -> Result<()> {
    let mut sock = Socket::open(Family::Netfilter)?;
    sock.subscribe(NFNLGRP_NFTABLES)?;
    // Subscribed first, then the first check: nothing that happens in between goes unseen.
    let mut trigger = Some(Trigger::Start);
    let mut next_tick = Instant::now() + interval;
    let mut burst = Burst::default();
    loop {
        if let Some(t) = trigger.take() {
            let r = check(cfg);
            report(t, &r);
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

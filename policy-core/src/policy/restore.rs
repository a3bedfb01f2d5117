//! Restoring `inet pppgate` from local state after someone deleted or altered it (`nft flush
//! ruleset`, `nft delete table inet pppgate`, a firewall reload, a changed chain): the table is
//! rebuilt (its layout and walled garden from the configuration) and every VALID session's
//! member is put back into the set the member record says it was in
//! ([`crate::kernel::members::MemberRecord`]) — no SQL, so a restore costs the same with the
//! database down, and a FULL session is never emptied. Used by `pppgate guard` (on the nftables
//! event) and by the connect path when it finds the table gone (docs/security.md, "Tamper
//! detection and restore").
//!
//! The caller holds the apply lock when it can (a rebuild must not race a writer's own
//! rebuild); a member's membership is only ever moved to its recorded set.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::error::{one_line, Error, Result};
use crate::kernel::links::LinkSnapshot;
use crate::kernel::members::MemberRecord;
use crate::kernel::{Backends, Member, Nft, NftSet, SetChange, Sysctl};
use crate::mapping;
use crate::policy::engine::micros;

/// What one restore found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restored {
    /// The table was missing or its layout damaged, and was rebuilt.
    pub rebuilt: bool,
    /// Session interfaces whose forwarding was off while the table was rebuilt (every `ppp*`
    /// interface not recorded FULL); on again once the table verified.
    pub locked_down: Vec<String>,
    /// VALID sessions seen.
    pub live: usize,
    /// Memberships added / removed to match the record.
    pub added: usize,
    pub removed: usize,
    /// VALID sessions with no record (connected before the record existed, or their first
    /// commit is under way): left as the kernel has them; reconcile decides them from SQL.
    pub unrecorded: Vec<String>,
    /// Microseconds from the start of the restore until forwarding was locked down (when the
    /// table was missing), and until the table verified with every member.
    pub lockdown_us: u64,
    pub total_us: u64,
}

impl Restored {
    pub fn changed(&self) -> bool {
        self.rebuilt || self.added > 0 || self.removed > 0
    }
}

/// The changes that put each recorded live member into its set and out of every other, given
/// what the kernel holds (`have`). Pure; unit-tested.
pub fn changes_for(want: &BTreeMap<Member, NftSet>, have: &BTreeMap<NftSet, BTreeSet<Member>>) -> Vec<SetChange> {
    let mut out = Vec::new();
    for (m, set) in want {
        if !have.get(set).is_some_and(|s| s.contains(m)) {
            out.push(SetChange::new(*set, *m, true));
        }
        for other in NftSet::ALL.into_iter().filter(|s| s != set) {
            if have.get(&other).is_some_and(|s| s.contains(m)) {
                out.push(SetChange::new(other, *m, false));
            }
        }
    }
    out
}

/// The session interfaces to lock down while the table is missing: every `ppp*` interface
/// (by name and index) whose index no member recorded FULL carries. Pure; unit-tested.
pub fn lockdown_targets(links: &BTreeMap<String, u32>, record: &BTreeMap<Member, NftSet>) -> Vec<String> {
    let full: BTreeSet<u32> = record.iter().filter(|(_, s)| **s == NftSet::Full).map(|(m, _)| m.ifindex).collect();
    links
        .iter()
        .filter(|(name, idx)| name.starts_with("ppp") && !full.contains(idx))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Checks `inet pppgate` against the configuration and the member record and repairs what
/// differs. A missing or damaged table: first every session interface that is not FULL stops
/// forwarding (per-interface IPv4 forwarding, microseconds per interface — the gap while nft is
/// rebuilt is then only FULL's, which loses nothing), then the table is rebuilt, every VALID
/// session's recorded member put back, the kernel read back and verified, and forwarding turned
/// on again. A table that verifies nothing for stays locked down (fail closed).
pub fn restore<B: Backends>(b: &mut B, cfg: &Config) -> Result<Restored> {
    let t0 = Instant::now();
    let mut out = Restored::default();
    let record = MemberRecord::in_sessions_dir(&cfg.paths.sessions_dir).read()?;
    let before = b.nft().read()?;
    if !before.base_ok {
        out.rebuilt = true;
        let links: BTreeMap<String, u32> =
            LinkSnapshot::read_lean()?.by_name.into_iter().map(|(n, l)| (n, l.index)).collect();
        for name in lockdown_targets(&links, &record) {
            b.sysctl().set_forwarding(&name, false)?;
            out.locked_down.push(name);
        }
        out.lockdown_us = micros(t0);
    }
    let (live, bad) = mapping::live_sessions_where(&cfg.paths.sessions_dir, |_| true)?;
    for e in &bad {
        tracing::warn!("restore: {}", one_line(e));
    }
    out.live = live.len();
    let mut want: BTreeMap<Member, NftSet> = BTreeMap::new();
    for l in &live {
        let m = Member::new(l.ifindex, l.mapping.client_ip);
        match record.get(&m) {
            Some(set) => {
                want.insert(m, *set);
            }
            None => out.unrecorded.push(l.mapping.ppp_if.clone()),
        }
    }
    // The layout and the garden: a missing table is created with every recorded member already
    // in its set — one transaction, so a FULL member is never in a table without it (members a
    // damaged table still holds are kept); an intact one costs a probe and a garden read.
    let placed = if before.base_ok { Vec::new() } else { changes_for(&want, &before.members) };
    b.nft().ensure_base_with(&cfg.policy.walled_garden, &want)?;
    // What is left to change: nothing after a rebuild, unless the table was built by someone
    // else meanwhile; an intact table's difference from the record otherwise.
    let have = if before.base_ok { before.members } else { b.nft().read()?.members };
    let changes = changes_for(&want, &have);
    out.added = placed.iter().chain(&changes).filter(|c| c.add).count();
    out.removed = placed.len() + changes.len() - out.added;
    if !changes.is_empty() {
        b.nft().commit(&changes)?;
    }
    // Read back: the layout, and every recorded live member in its set and only there.
    let after = b.nft().read()?;
    let left = changes_for(&want, &after.members);
    if !after.base_ok || !left.is_empty() {
        return Err(Error::Verify(format!(
            "restore of inet pppgate: layout {}, {} membership(s) still differ; {} interface(s) stay locked down",
            if after.base_ok { "ok" } else { "not the current one" },
            left.len(),
            out.locked_down.len()
        )));
    }
    // Forwarding on again: the interfaces locked down now, and any live session's left off by
    // an interrupted restore.
    let mut unlock: BTreeSet<&str> = out.locked_down.iter().map(String::as_str).collect();
    unlock.extend(live.iter().map(|l| l.mapping.ppp_if.as_str()));
    for name in unlock {
        b.sysctl().set_forwarding(name, true)?;
    }
    out.total_us = micros(t0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn m(i: u32) -> Member {
        Member::new(i, Ipv4Addr::new(100, 64, 0, i as u8))
    }

    #[test]
    fn every_recorded_member_goes_back_into_its_set_and_out_of_the_others() {
        let want = BTreeMap::from([(m(1), NftSet::Full), (m(2), NftSet::Blocked), (m(3), NftSet::Restricted)]);
        // An empty table (flushed): everything is added.
        let c = changes_for(&want, &BTreeMap::new());
        assert_eq!(
            c,
            vec![
                SetChange::new(NftSet::Full, m(1), true),
                SetChange::new(NftSet::Blocked, m(2), true),
                SetChange::new(NftSet::Restricted, m(3), true)
            ]
        );
        // Altered: m(2) was moved from blocked to full by someone else, m(1) is where it belongs,
        // m(9) (not recorded, not live) is left alone.
        let have = BTreeMap::from([
            (NftSet::Full, BTreeSet::from([m(1), m(2), m(9)])),
            (NftSet::Restricted, BTreeSet::from([m(3)])),
        ]);
        let c = changes_for(&want, &have);
        assert_eq!(c, vec![SetChange::new(NftSet::Blocked, m(2), true), SetChange::new(NftSet::Full, m(2), false)]);
    }

    #[test]
    fn every_session_interface_but_full_ones_is_locked_down() {
        let record = BTreeMap::from([(m(1), NftSet::Full), (m(2), NftSet::Blocked), (m(3), NftSet::Restricted)]);
        let links = BTreeMap::from([
            ("lo".to_string(), 1),
            ("ppp0".to_string(), 1),
            ("ppp1".to_string(), 2),
            ("ppp2".to_string(), 3),
            ("ppp7".to_string(), 7),
            ("eth0".to_string(), 9),
        ]);
        // ppp7: no record (a link pppgate never saw, or one still connecting).
        assert_eq!(lockdown_targets(&links, &record), vec!["ppp1", "ppp2", "ppp7"]);
    }
}

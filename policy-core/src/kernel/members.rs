//! The member record: which state set each member of `inet pppgate` is in, kept on the box
//! beside the session mappings, so that a table someone deleted or altered is restored from
//! local state — no SQL round trip per session, and a FULL session is never emptied
//! (docs/security.md, "Tamper detection and restore").
//!
//! One file per member, `<sessions_dir>/.members/<ifindex>-<ip>`, holding the set's name: the
//! connect path writes one small file per change on tmpfs (tens of µs), never a file of all
//! members. The real nft backend ([`super::NftNetlink`]) records every committed change after
//! the kernel accepted it, and reconcile rewrites the record from the desired state it just
//! verified (self-healing). A record of a member whose session is not VALID is ignored by
//! every reader (its interface index is never used again) and removed by reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Member, NftSet, SetChange};
use crate::error::{Error, Result};

/// The record's directory inside the sessions directory (hidden: mapping scans skip it).
pub const RECORD_DIR: &str = ".members";

/// The member record of one sessions directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    dir: PathBuf,
}

fn file_name(m: &Member) -> String {
    format!("{}-{}", m.ifindex, m.ip)
}

fn member_of_name(name: &str) -> Option<Member> {
    let (idx, ip) = name.split_once('-')?;
    if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Member { ifindex: idx.parse().ok()?, ip: ip.parse::<Ipv4Addr>().ok()? })
}

fn set_of_name(s: &str) -> Option<NftSet> {
    NftSet::ALL.into_iter().find(|set| set.name() == s.trim())
}

/// The set a member ends up in after one transaction: the most restrictive set it was added to
/// (a plan adds one; should two ever be added, the stricter one is the safe record).
fn strictest(sets: &BTreeSet<NftSet>) -> Option<NftSet> {
    [NftSet::Blocked, NftSet::Pending, NftSet::Restricted, NftSet::Full].into_iter().find(|s| sets.contains(s))
}

impl MemberRecord {
    /// The record kept in `sessions_dir` (`paths.sessions_dir`).
    pub fn in_sessions_dir(sessions_dir: &Path) -> MemberRecord {
        MemberRecord { dir: sessions_dir.join(RECORD_DIR) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<()> {
        // The sessions directory itself may not exist yet: the connect gate is recorded before
        // the first mapping is written (which creates it the same way), e.g. on a box without
        // the package's tmpfiles entry. The package creates it 2750 root:pppgate.
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent).map_err(|source| Error::Write { path: parent.into(), source })?;
        }
        match fs::DirBuilder::new().mode(0o750).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(Error::Write { path: self.dir.clone(), source }),
        }
    }

    fn write(&self, m: &Member, set: NftSet) -> Result<()> {
        let path = self.dir.join(file_name(m));
        let tmp = self.dir.join(format!(".tmp-{}-{}", std::process::id(), file_name(m)));
        let res = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o640)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(set.name().as_bytes())?;
            fs::rename(&tmp, &path)
        })();
        res.map_err(|source| {
            let _ = fs::remove_file(&tmp);
            Error::Write { path, source }
        })
    }

    fn remove(&self, m: &Member) -> Result<()> {
        let path = self.dir.join(file_name(m));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write { path, source }),
        }
    }

    fn get(&self, m: &Member) -> Option<NftSet> {
        fs::read_to_string(self.dir.join(file_name(m))).ok().and_then(|s| set_of_name(&s))
    }

    /// Records what one committed transaction did (the kernel accepted it). Per member the last
    /// change per set counts: added to a set → recorded in it; only removed → forgotten when it
    /// left the set recorded for it (or every set).
    pub fn record(&self, changes: &[SetChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut last: BTreeMap<Member, BTreeMap<NftSet, bool>> = BTreeMap::new();
        for c in changes {
            last.entry(c.member()).or_default().insert(c.set, c.add);
        }
        self.ensure_dir()?;
        for (m, sets) in last {
            let added: BTreeSet<NftSet> = sets.iter().filter(|(_, a)| **a).map(|(s, _)| *s).collect();
            if let Some(set) = strictest(&added) {
                self.write(&m, set)?;
                continue;
            }
            let removed: BTreeSet<NftSet> = sets.keys().copied().collect();
            if removed.len() == NftSet::ALL.len() || self.get(&m).is_none_or(|s| removed.contains(&s)) {
                self.remove(&m)?;
            }
        }
        Ok(())
    }

    /// Every member recorded, with its set. Files that are not records (temp files, names or
    /// contents of another form) are skipped.
    pub fn read(&self) -> Result<BTreeMap<Member, NftSet>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(Error::Read { path: self.dir.clone(), source }),
        };
        let mut out = BTreeMap::new();
        for entry in rd {
            let entry = entry.map_err(|source| Error::Read { path: self.dir.clone(), source })?;
            let Some(m) = entry.file_name().to_str().and_then(member_of_name) else { continue };
            if let Some(set) = self.get(&m) {
                out.insert(m, set);
            }
        }
        Ok(out)
    }

    /// Makes the record exactly `want` (reconcile, after verifying the kernel holds it): writes
    /// what differs, removes every other record.
    pub fn sync(&self, want: &BTreeMap<Member, NftSet>) -> Result<()> {
        let have = self.read()?;
        if want.is_empty() && have.is_empty() {
            return Ok(());
        }
        self.ensure_dir()?;
        for (m, set) in want {
            if have.get(m) != Some(set) {
                self.write(m, *set)?;
            }
        }
        for m in have.keys().filter(|m| !want.contains_key(m)) {
            self.remove(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u32, last: u8) -> Member {
        Member::new(i, Ipv4Addr::new(100, 64, 0, last))
    }

    /// The first connect on a box without the sessions directory (no tmpfiles entry, e.g. the
    /// lab): the gate's record creates it, as the mapping writer does; before this every connect
    /// there failed closed ("failed to write …/.members").
    #[test]
    fn the_first_record_creates_a_missing_sessions_directory() {
        let d = tempfile::tempdir().unwrap();
        let sessions = d.path().join("run/vpn-sessions");
        let r = MemberRecord::in_sessions_dir(&sessions);
        let a = m(3, 9);
        r.record(&[SetChange::new(NftSet::Pending, a, true)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Pending)]));
        assert!(sessions.is_dir());
    }

    #[test]
    fn a_connect_gates_then_opens_and_a_teardown_forgets() {
        let d = tempfile::tempdir().unwrap();
        let r = MemberRecord::in_sessions_dir(d.path());
        let a = m(7, 2);
        r.record(&[SetChange::new(NftSet::Pending, a, true)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Pending)]));
        // The plan's opening transaction: join full, leave the gate.
        r.record(&[SetChange::new(NftSet::Full, a, true), SetChange::new(NftSet::Pending, a, false)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Full)]));
        // A restricting one.
        r.record(&[SetChange::new(NftSet::Blocked, a, true), SetChange::new(NftSet::Full, a, false)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Blocked)]));
        // Leaving a set it is not recorded in changes nothing.
        r.record(&[SetChange::new(NftSet::Full, a, false)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Blocked)]));
        // Teardown: every set.
        let all: Vec<SetChange> = NftSet::ALL.iter().map(|s| SetChange::new(*s, a, false)).collect();
        r.record(&all).unwrap();
        assert!(r.read().unwrap().is_empty());
    }

    #[test]
    fn the_strictest_added_set_is_recorded_and_members_are_independent() {
        let d = tempfile::tempdir().unwrap();
        let r = MemberRecord::in_sessions_dir(d.path());
        let (a, b) = (m(3, 2), m(4, 2));
        r.record(&[SetChange::new(NftSet::Full, a, true), SetChange::new(NftSet::Blocked, a, true)]).unwrap();
        r.record(&[SetChange::new(NftSet::Restricted, b, true)]).unwrap();
        assert_eq!(r.read().unwrap(), BTreeMap::from([(a, NftSet::Blocked), (b, NftSet::Restricted)]));
    }

    #[test]
    fn sync_makes_the_record_exactly_what_is_wanted_and_junk_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let r = MemberRecord::in_sessions_dir(d.path());
        r.record(&[SetChange::new(NftSet::Full, m(1, 1), true), SetChange::new(NftSet::Full, m(2, 2), true)]).unwrap();
        fs::write(r.dir().join("junk"), "full_v4").unwrap();
        fs::write(r.dir().join("5-100.64.0.9"), "no_such_set").unwrap();
        let want = BTreeMap::from([(m(2, 2), NftSet::Restricted), (m(3, 3), NftSet::Full)]);
        r.sync(&want).unwrap();
        assert_eq!(r.read().unwrap(), want);
        assert_eq!(member_of_name("12-100.64.0.2"), Some(m(12, 2)));
        assert_eq!(member_of_name("-100.64.0.2"), None);
        assert_eq!(member_of_name("+1-100.64.0.2"), None);
    }
}

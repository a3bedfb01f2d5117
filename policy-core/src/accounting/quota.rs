//! Quotas that changed state: after a commit, the collector compares each active connection's
//! usage in its current period with its quota and reports those that crossed it (now over) or
//! un-crossed it (a new period began, or the quota was raised), so the policy engine re-applies
//! them. The set of connections last seen over quota is kept in `quota` in the accounting
//! directory, so a crossing is reported once, not on every run.

use std::collections::BTreeSet;

use postgres::Client;
use serde::{Deserialize, Serialize};

use super::spool::{decode_json, encode_json, read_opt, write_durable, AcctDir};
use crate::db::accounting::{quota_use, QuotaUse};
use crate::error::Result;

const QUOTA_MAGIC: &str = "pppgate-acct-quota";
const QUOTA_VERSION: u32 = 1;
const QUOTA_FILE: &str = "quota";

/// One connection whose quota state changed in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaChange {
    pub connection_id: i64,
    /// true: usage reached the quota (RESTRICTED); false: it is below it again.
    pub over: bool,
    pub used_bytes: i64,
    pub quota_bytes: Option<i64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverSet {
    over: BTreeSet<i64>,
}

/// The connections last seen over quota. An unreadable file is treated as empty: the worst
/// outcome is that connections already over quota are reported (and re-applied) once more.
pub fn load_over(dir: &AcctDir) -> BTreeSet<i64> {
    let path = dir.root.join(QUOTA_FILE);
    match read_opt(&path) {
        Ok(Some(bytes)) => match decode_json::<OverSet>(QUOTA_MAGIC, QUOTA_VERSION, &bytes) {
            Ok(s) => s.over,
            Err(e) => {
                tracing::warn!(path = %path.display(), reason = %e, "quota state unreadable; starting from empty");
                BTreeSet::new()
            }
        },
        _ => BTreeSet::new(),
    }
}

pub fn save_over(dir: &AcctDir, over: &BTreeSet<i64>) -> Result<()> {
    let v = OverSet { over: over.clone() };
    write_durable(&dir.root, QUOTA_FILE, &encode_json(QUOTA_MAGIC, QUOTA_VERSION, &v)).map(|_| ())
}

/// Pure part: the changes between what was over before and the usage read now. Only active
/// connections are kept in the new set (a connection without a session has nothing to re-apply;
/// its next session is applied at ip-up anyway).
pub fn diff(active: &BTreeSet<i64>, before: &BTreeSet<i64>, now: &[QuotaUse]) -> (Vec<QuotaChange>, BTreeSet<i64>) {
    let mut changes = Vec::new();
    let mut over_now = BTreeSet::new();
    for u in now {
        let over = u.over();
        let was = before.contains(&u.connection_id);
        if over != was {
            changes.push(QuotaChange {
                connection_id: u.connection_id,
                over,
                used_bytes: u.used_bytes,
                quota_bytes: u.quota_bytes,
            });
        }
        if over && active.contains(&u.connection_id) {
            over_now.insert(u.connection_id);
        }
    }
    (changes, over_now)
}

/// Reads usage for the active connections and those previously over, returns the changes and
/// records the new set. One SQL round trip.
pub fn changes(
    client: &mut Client,
    dir: &AcctDir,
    nas_identity: &str,
    active: &BTreeSet<i64>,
) -> Result<Vec<QuotaChange>> {
    let before = load_over(dir);
    let ids: Vec<i64> = active.union(&before).copied().collect();
    let was: Vec<i64> = before.iter().copied().collect();
    let now = quota_use(client, nas_identity, &ids, &was)?;
    let (changes, over_now) = diff(active, &before, &now);
    if over_now != before {
        save_over(dir, &over_now)?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: i64, quota: Option<i64>, used: i64) -> QuotaUse {
        QuotaUse { connection_id: id, quota_bytes: quota, used_bytes: used }
    }

    #[test]
    fn crossing_and_uncrossing_are_reported_once() {
        let active: BTreeSet<i64> = [1, 2, 3].into();
        let (c, s) = diff(&active, &BTreeSet::new(), &[u(1, Some(100), 100), u(2, Some(100), 99), u(3, None, 5)]);
        assert_eq!(c.iter().map(|c| (c.connection_id, c.over)).collect::<Vec<_>>(), vec![(1, true)]);
        assert_eq!(s, [1].into());
        // Same usage again: nothing to report.
        let (c, s2) = diff(&active, &s, &[u(1, Some(100), 150), u(2, Some(100), 99), u(3, None, 5)]);
        assert!(c.is_empty());
        assert_eq!(s2, s);
        // New period: usage back below quota.
        let (c, s3) = diff(&active, &s2, &[u(1, Some(100), 0), u(2, Some(100), 0), u(3, None, 0)]);
        assert_eq!(c.iter().map(|c| (c.connection_id, c.over)).collect::<Vec<_>>(), vec![(1, false)]);
        assert!(s3.is_empty());
    }

    #[test]
    fn over_set_survives_a_round_trip_and_garbage() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        assert!(load_over(&d).is_empty());
        save_over(&d, &[4, 9].into()).unwrap();
        assert_eq!(load_over(&d), [4, 9].into());
        std::fs::write(d.root.join(QUOTA_FILE), b"junk").unwrap();
        assert!(load_over(&d).is_empty());
    }
}

//! The durable per-session state: the last counter reading (baseline), the session's cumulative
//! total, and the journal position the state includes.
//!
//! The state is one file, rewritten atomically by the lock holder after each journal append.
//! `applied_seq` is the last journal record folded in; on startup every readable record with a
//! higher sequence number is folded in again ("roll forward"), which repairs a crash between the
//! journal append and the state write. Closed sessions stay as tombstones for
//! [`CLOSED_RETENTION_S`] so a late final marker or a stale mapping cannot open them again.

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::codec::DecodeError;
use super::counters::{Octets, Previous};
use super::record::{Batch, SessionInfo};
use super::spool::{decode_json, encode_json, read_opt, write_durable, AcctDir};
use crate::error::{Error, Result};

pub const STATE_MAGIC: &str = "pppgate-acct-state";
pub const STATE_VERSION: u32 = 2;
pub const STATE_FILE: &str = "state";

/// How long a closed session's tombstone is kept: far longer than a deferred final marker or a
/// mapping that outlives its ip-down can be late, short enough that a busy concentrator's state
/// file stays small. (SQL's absolute totals would keep even a re-opened session from counting
/// twice; the tombstone keeps it from being re-opened at all.)
pub const CLOSED_RETENTION_S: i64 = 6 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionState {
    pub session: SessionInfo,
    pub ifindex: Option<u32>,
    pub baseline: Octets,
    pub total: Octets,
    /// When the session was last read (Unix seconds).
    pub last_seen: i64,
}

impl SessionState {
    pub fn previous(&self) -> Previous {
        Previous { baseline: self.baseline, ifindex: self.ifindex }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Random, chosen when the state is created; part of every batch id, so a state that is
    /// lost and recreated never reuses an id of a batch that is already in SQL.
    pub instance: String,
    pub created_at: i64,
    pub next_seq: u64,
    /// The last journal record folded into this state.
    pub applied_seq: u64,
    pub sessions: BTreeMap<String, SessionState>,
    /// Closed sessions: key → when they closed.
    pub closed: BTreeMap<String, i64>,
}

/// The state as loaded, and what had to be repaired.
#[derive(Debug)]
pub struct Loaded {
    pub state: State,
    /// The state file was unreadable: where it was moved and why.
    pub replaced: Option<(std::path::PathBuf, DecodeError)>,
}

fn random_instance() -> String {
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok();
    if !ok {
        // Without /dev/urandom, time and pid still make a collision with an old instance absurd.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        b = ((t.as_nanos() as u64) ^ ((std::process::id() as u64) << 40)).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl State {
    pub fn fresh(now: i64) -> State {
        State {
            instance: random_instance(),
            created_at: now,
            next_seq: 1,
            applied_seq: 0,
            sessions: BTreeMap::new(),
            closed: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_json(STATE_MAGIC, STATE_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<State, DecodeError> {
        decode_json(STATE_MAGIC, STATE_VERSION, bytes)
    }

    /// Loads the state. A missing file gives a fresh state; an unreadable one is moved to
    /// `spool/bad/` and replaced by a fresh state (the journal and SQL's absolute totals keep
    /// that from counting anything twice); a newer format fails (exit 65) and changes nothing.
    pub fn load(dir: &AcctDir, now: i64) -> Result<Loaded> {
        let path = dir.root.join(STATE_FILE);
        let Some(bytes) = read_opt(&path)? else {
            return Ok(Loaded { state: State::fresh(now), replaced: None });
        };
        match State::decode(&bytes) {
            Ok(state) => Ok(Loaded { state, replaced: None }),
            Err(DecodeError::NewerVersion { found, known }) => Err(Error::Spool {
                path,
                reason: format!(
                    "format version {found} was written by a newer pppgate (this one reads {known}); \
                     nothing was changed: run the newer pppgate"
                ),
            }),
            Err(e) => {
                let moved = dir.quarantine(&path)?;
                Ok(Loaded { state: State::fresh(now), replaced: Some((moved, e)) })
            }
        }
    }

    pub fn save(&self, dir: &AcctDir) -> Result<()> {
        write_durable(&dir.root, STATE_FILE, &self.encode()).map(|_| ())
    }

    pub fn batch_id(&self, nas_identity: &str, seq: u64) -> String {
        format!("{nas_identity}:{}:{seq}", self.instance)
    }

    /// Folds a journal record in; records at or below `applied_seq` are already in.
    pub fn apply(&mut self, batch: &Batch) -> bool {
        if batch.seq <= self.applied_seq {
            return false;
        }
        for e in &batch.entries {
            let key = &e.session.key;
            match &e.stop {
                Some(stop) => {
                    self.sessions.remove(key);
                    self.closed.insert(key.clone(), stop.at);
                }
                None => {
                    self.sessions.insert(
                        key.clone(),
                        SessionState {
                            session: e.session.clone(),
                            ifindex: e.ifindex,
                            baseline: e.baseline,
                            total: e.total,
                            last_seen: e.at,
                        },
                    );
                }
            }
        }
        self.applied_seq = batch.seq;
        self.next_seq = self.next_seq.max(batch.seq.saturating_add(1));
        true
    }

    /// Makes sure new records are numbered after `seq` (journal files seen on disk).
    pub fn reserve_past(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// Drops tombstones older than the retention.
    pub fn expire_closed(&mut self, now: i64) -> usize {
        let before = self.closed.len();
        self.closed.retain(|_, at| now.saturating_sub(*at) < CLOSED_RETENTION_S);
        before - self.closed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::record::{Entry, Stop};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn info(key: &str) -> SessionInfo {
        SessionInfo {
            key: key.into(),
            connection_id: 1,
            ppp_if: "ppp0".into(),
            client_ip: Ipv4Addr::new(10, 0, 0, 2),
            pppd_pid: 100,
            start_ts: 1000,
            up_ts: None,
            base: None,
        }
    }

    fn entry(key: &str, reading: u64, stop: bool) -> Entry {
        Entry {
            session: info(key),
            at: 2000,
            ifindex: Some(3),
            baseline: Octets::new(reading, reading),
            delta: Octets::default(),
            total: Octets::new(reading, reading),
            stop: stop.then(|| Stop { at: 2000, cause: "User-Request".into() }),
        }
    }

    #[test]
    fn apply_is_ordered_and_idempotent() {
        let mut s = State::fresh(1);
        let b1 = Batch {
            seq: 1,
            batch_id: "x".into(),
            nas_identity: "n".into(),
            collected_at: 2000,
            entries: vec![entry("a", 10, false), entry("b", 20, false)],
        };
        let b2 = Batch { seq: 2, entries: vec![entry("a", 15, false), entry("b", 25, true)], ..b1.clone() };
        assert!(s.apply(&b1));
        assert!(s.apply(&b2));
        assert!(!s.apply(&b1), "an older record is already in");
        assert_eq!(s.sessions["a"].baseline, Octets::new(15, 15));
        assert!(!s.sessions.contains_key("b"));
        assert_eq!(s.closed.get("b"), Some(&2000));
        assert_eq!((s.applied_seq, s.next_seq), (2, 3));
        assert_eq!(s.expire_closed(2000 + CLOSED_RETENTION_S), 1);
    }

    #[test]
    fn load_save_and_repair() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        let l = State::load(&d, 5).unwrap();
        assert!(l.replaced.is_none());
        let mut s = l.state;
        s.apply(&Batch {
            seq: 1,
            batch_id: "x".into(),
            nas_identity: "n".into(),
            collected_at: 2000,
            entries: vec![entry("a", 10, false)],
        });
        s.save(&d).unwrap();
        assert_eq!(State::load(&d, 6).unwrap().state, s);
        // Corrupt: moved aside, a fresh state with a new instance id.
        std::fs::write(d.root.join(STATE_FILE), b"pppgate-acct-state v1 len=5 crc32=00000000\nhello").unwrap();
        let l = State::load(&d, 7).unwrap();
        assert!(matches!(l.replaced, Some((_, DecodeError::Checksum))));
        assert_ne!(l.state.instance, s.instance);
        assert!(l.state.sessions.is_empty());
        assert_eq!(std::fs::read_dir(&d.bad).unwrap().count(), 1);
        // Newer: refused, untouched.
        let newer = crate::accounting::codec::encode(STATE_MAGIC, STATE_VERSION + 1, b"{}");
        std::fs::write(d.root.join(STATE_FILE), &newer).unwrap();
        let e = State::load(&d, 8).unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::DataErr);
        assert_eq!(std::fs::read(d.root.join(STATE_FILE)).unwrap(), newer);
    }

    proptest! {
        #[test]
        fn state_round_trips(n in 0usize..30, seq in 0u64..1_000_000) {
            let mut s = State::fresh(3);
            s.applied_seq = seq;
            s.next_seq = seq + 1;
            for i in 0..n {
                let e = entry(&format!("k{i}"), i as u64 * 7, false);
                s.sessions.insert(e.session.key.clone(), SessionState { session: e.session, ifindex: e.ifindex,
                    baseline: e.baseline, total: e.total, last_seen: e.at });
            }
            prop_assert_eq!(State::decode(&s.encode()).unwrap(), s);
        }

        #[test]
        fn state_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let _ = State::decode(&bytes);
        }
    }
}

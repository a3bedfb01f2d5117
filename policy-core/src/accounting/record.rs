//! What the journal holds: batches of per-session entries, and the final markers ip-down leaves.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::counters::Octets;
use super::SessionKey;
use crate::mapping::Mapping;

/// The session a line of accounting belongs to, as its mapping described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInfo {
    pub key: String,
    pub connection_id: i64,
    pub ppp_if: String,
    pub client_ip: Ipv4Addr,
    pub pppd_pid: u32,
    pub start_ts: i64,
    pub up_ts: Option<i64>,
}

impl SessionInfo {
    pub fn from_mapping(nas_identity: &str, m: &Mapping) -> Self {
        SessionInfo {
            key: SessionKey::of(nas_identity, m).into_string(),
            connection_id: m.connection_id,
            ppp_if: m.ppp_if.clone(),
            client_ip: m.client_ip,
            pppd_pid: m.pppd_pid,
            start_ts: m.start_ts,
            up_ts: m.up_ts,
        }
    }

    /// When the session started for accounting purposes (IPCP up when known, else pppd start).
    pub fn session_start(&self) -> i64 {
        self.up_ts.unwrap_or(self.start_ts)
    }
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stop {
    /// Unix seconds.
    pub at: i64,
    /// RADIUS Acct-Terminate-Cause name (e.g. `User-Request`, `Lost-Carrier`).
    pub cause: String,
}

/// One session's line in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub session: SessionInfo,
    /// When the reading was taken (Unix seconds); the usage day is derived from it.
    pub at: i64,
    /// Interface index the reading came from (None: pppd's own final statistics).
    pub ifindex: Option<u32>,
    /// The counter reading, which becomes the session's baseline.
    pub baseline: Octets,
    /// Octets since the previous reading (informational: SQL derives usage from `total`).
    pub delta: Octets,
    /// The session's cumulative octets after this reading (absolute, monotonic).
    pub total: Octets,
    /// Set on the session's last entry.
    pub stop: Option<Stop>,
}

/// One journal record: everything one collector run (or one final flush) measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    pub seq: u64,
    /// `<nas identity>:<state instance>:<seq>`: unique across state resets and NASes.
    pub batch_id: String,
    pub nas_identity: String,
    pub collected_at: i64,
    pub entries: Vec<Entry>,
}

/// Left in `final/` by ip-down: the session's last counters, absolute, so whoever holds the
/// collector lock can compute the last delta against the baseline current at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalMarker {
    pub session: SessionInfo,
    pub reading: Octets,
    /// The reading is pppd 2.4's 32-bit link statistics (extended against the baseline).
    pub wraps_32: bool,
    pub stop: Stop,
}

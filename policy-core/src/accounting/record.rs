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

/// A reading of the interface's own 64-bit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelReading {
    pub ifindex: u32,
    pub octets: Octets,
}

/// Left in `final/` by ip-down: the session's last counters, absolute, so whoever holds the
/// collector lock can compute the last delta against the baseline current at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalMarker {
    pub session: SessionInfo,
    /// pppd's own link statistics.
    pub reading: Octets,
    /// `reading` is pppd 2.4's 32-bit link statistics (extended against the baseline).
    pub wraps_32: bool,
    /// The interface's 64-bit counters at ip-down, when it still existed: the same source as
    /// the collector's readings, so preferred whenever it is the session's interface.
    #[serde(default)]
    pub kernel: Option<KernelReading>,
    pub stop: Stop,
}

impl FinalMarker {
    /// The reading to use against the previous state: the kernel's when it comes from the
    /// interface the session was read on (or the session was never read), else pppd's.
    pub fn best_reading(&self, prev_ifindex: Option<u32>) -> (Octets, Option<u32>, bool) {
        match (self.kernel, prev_ifindex) {
            (Some(k), None) => (k.octets, Some(k.ifindex), false),
            (Some(k), Some(i)) if i == k.ifindex => (k.octets, Some(k.ifindex), false),
            _ => (self.reading, None, self.wraps_32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_marker_prefers_the_sessions_own_interface() {
        let m = FinalMarker {
            session: SessionInfo { key: "k".into(), connection_id: 1, ppp_if: "ppp0".into(),
                                   client_ip: Ipv4Addr::new(10, 0, 0, 2), pppd_pid: 9, start_ts: 1, up_ts: None },
            reading: Octets::new(5, 6),
            wraps_32: true,
            kernel: Some(KernelReading { ifindex: 4, octets: Octets::new(50, 60) }),
            stop: Stop { at: 2, cause: "User-Request".into() },
        };
        assert_eq!(m.best_reading(None), (Octets::new(50, 60), Some(4), false));
        assert_eq!(m.best_reading(Some(4)), (Octets::new(50, 60), Some(4), false));
        assert_eq!(m.best_reading(Some(7)), (Octets::new(5, 6), None, true), "another interface: pppd's figures");
        let gone = FinalMarker { kernel: None, ..m };
        assert_eq!(gone.best_reading(Some(4)), (Octets::new(5, 6), None, true));
    }
}

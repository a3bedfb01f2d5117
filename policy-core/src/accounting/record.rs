//! What the journal holds: batches of per-session entries, and the final markers ip-down leaves.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::counters::{extend_32, nearest_32, Octets, Previous};
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
    /// The interface's counters when IPCP came up (the mapping's RX_BASE/TX_BASE): the
    /// session's octets are counted from here, like pppd's own link statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Octets>,
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
            base: m.counters_base.map(|(rx, tx)| Octets::new(rx, tx)),
        }
    }

    /// The baseline of a session no reading has been taken of yet: the counters at IPCP-up on
    /// the interface `ifindex` (None: counting starts from 0, as before RX_BASE existed).
    pub fn first_previous(&self, ifindex: Option<u32>) -> Option<Previous> {
        self.base.map(|b| Previous { baseline: b, ifindex })
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

/// Left in `final/` by ip-down: the session's last counters, so whoever holds the collector
/// lock can compute the last delta against the baseline current at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinalMarker {
    pub session: SessionInfo,
    /// pppd's own final link statistics (octets since IPCP came up), when pppd had them.
    /// (Format 1 called it `reading` and always had it.)
    #[serde(alias = "reading")]
    pub pppd: Option<Octets>,
    /// `pppd` is pppd 2.4's 32-bit link statistics (extended against the interface's counters).
    pub wraps_32: bool,
    /// The interface's 64-bit counters at ip-down, when it still existed: the same source as
    /// the collector's readings, so preferred whenever it is the session's interface.
    #[serde(default)]
    pub kernel: Option<KernelReading>,
    pub stop: Stop,
}

impl FinalMarker {
    /// The final reading, on the collector's scale (the interface's absolute counters), to use
    /// against `prev` (the state's entry, or [`SessionInfo::first_previous`]). Returns (reading,
    /// ifindex, reading is 32 bits wide).
    ///
    /// * A session with a base (IPCP-up counters) and pppd's statistics: pppd's figure is the
    ///   truth (it is what pppd logs and radius.so reports), placed on the interface's scale as
    ///   base + figure. pppd 2.4's 32-bit figure is extended to the value nearest the interface's
    ///   own counters at ip-down (exact whatever the session moved), or, with the interface
    ///   gone, to the smallest value at or above the last reading.
    /// * Otherwise the interface's counters when they come from the session's interface, else
    ///   pppd's figure (sessions without a base count from 0 on both scales), else nothing new.
    pub fn best_reading(&self, prev: Option<Previous>) -> (Octets, Option<u32>, bool) {
        let prev_ifindex = prev.and_then(|p| p.ifindex);
        let own_kernel = self.kernel.filter(|k| prev_ifindex.is_none_or(|i| i == k.ifindex));
        match (self.session.base, self.pppd) {
            (Some(base), Some(p)) => {
                let rel = |figure: u64, base: u64, kernel: Option<u64>, last: Option<u64>| -> u64 {
                    let figure = if !self.wraps_32 {
                        figure
                    } else if let Some(k) = kernel {
                        nearest_32(figure, k.saturating_sub(base))
                    } else {
                        extend_32(figure, last.unwrap_or(base).saturating_sub(base))
                    };
                    base.saturating_add(figure)
                };
                let k = own_kernel.map(|k| k.octets);
                let last = prev.map(|p| p.baseline);
                let reading = Octets::new(
                    rel(p.rx, base.rx, k.map(|k| k.rx), last.map(|l| l.rx)),
                    rel(p.tx, base.tx, k.map(|k| k.tx), last.map(|l| l.tx)),
                );
                (reading, own_kernel.map(|k| k.ifindex).or(prev_ifindex), false)
            }
            (base, pppd) => match (own_kernel, pppd, prev) {
                (Some(k), _, _) => (k.octets, Some(k.ifindex), false),
                (None, Some(p), _) if base.is_none() => (p, None, self.wraps_32),
                (None, _, Some(prev)) => (prev.baseline, prev.ifindex, false),
                (None, _, None) => (base.unwrap_or_default(), None, false),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(base: Option<Octets>) -> SessionInfo {
        SessionInfo {
            key: "k".into(),
            connection_id: 1,
            ppp_if: "ppp0".into(),
            client_ip: Ipv4Addr::new(10, 0, 0, 2),
            pppd_pid: 9,
            start_ts: 1,
            up_ts: None,
            base,
        }
    }

    fn prev(rx: u64, tx: u64, ifindex: u32) -> Option<Previous> {
        Some(Previous { baseline: Octets::new(rx, tx), ifindex: Some(ifindex) })
    }

    #[test]
    fn without_a_base_the_marker_prefers_the_sessions_own_interface() {
        let m = FinalMarker {
            session: info(None),
            pppd: Some(Octets::new(5, 6)),
            wraps_32: true,
            kernel: Some(KernelReading { ifindex: 4, octets: Octets::new(50, 60) }),
            stop: Stop { at: 2, cause: "User-Request".into() },
        };
        assert_eq!(m.best_reading(None), (Octets::new(50, 60), Some(4), false));
        assert_eq!(m.best_reading(prev(40, 40, 4)), (Octets::new(50, 60), Some(4), false));
        assert_eq!(m.best_reading(prev(1, 1, 7)), (Octets::new(5, 6), None, true), "another interface: pppd's figures");
        let gone = FinalMarker { kernel: None, ..m.clone() };
        assert_eq!(gone.best_reading(prev(1, 1, 4)), (Octets::new(5, 6), None, true));
        let nothing = FinalMarker { kernel: None, pppd: None, ..m };
        assert_eq!(
            nothing.best_reading(prev(40, 41, 4)),
            (Octets::new(40, 41), Some(4), false),
            "no new reading: no delta"
        );
    }

    #[test]
    fn with_a_base_pppds_figure_is_the_truth_on_the_interfaces_scale() {
        let m = FinalMarker {
            session: info(Some(Octets::new(100, 200))),
            pppd: Some(Octets::new(5_000, 7_000)),
            wraps_32: false,
            // A packet landed after pppd took its statistics: the interface is 52 bytes ahead.
            kernel: Some(KernelReading { ifindex: 4, octets: Octets::new(5_152, 7_200) }),
            stop: Stop { at: 2, cause: "User-Request".into() },
        };
        assert_eq!(m.best_reading(None), (Octets::new(5_100, 7_200), Some(4), false));
        assert_eq!(m.best_reading(prev(3_000, 3_000, 4)), (Octets::new(5_100, 7_200), Some(4), false));
        let gone = FinalMarker { kernel: None, ..m.clone() };
        assert_eq!(gone.best_reading(prev(3_000, 3_000, 4)), (Octets::new(5_100, 7_200), Some(4), false));
        let no_pppd = FinalMarker { pppd: None, ..m.clone() };
        assert_eq!(no_pppd.best_reading(prev(3_000, 3_000, 4)), (Octets::new(5_152, 7_200), Some(4), false));
        let neither = FinalMarker { pppd: None, kernel: None, ..m };
        assert_eq!(neither.best_reading(None), (Octets::new(100, 200), None, false), "nothing past the base");
    }

    #[test]
    fn a_32_bit_figure_is_extended_against_the_interface_even_past_4_gib() {
        const G4: u64 = 1 << 32;
        let base = Octets::new(300, 300);
        let true_rx = 3 * G4 + 17; // 12 GiB moved since the last reading
        let m = FinalMarker {
            session: info(Some(base)),
            pppd: Some(Octets::new(true_rx % G4, 9)),
            wraps_32: true,
            kernel: Some(KernelReading { ifindex: 4, octets: Octets::new(300 + true_rx + 40, 300 + 9) }),
            stop: Stop { at: 2, cause: "User-Request".into() },
        };
        assert_eq!(m.best_reading(prev(1_000, 309, 4)), (Octets::new(300 + true_rx, 309), Some(4), false));
        // Interface gone: extended against the last reading (exact while < 4 GiB passed since).
        let gone = FinalMarker { kernel: None, ..m };
        assert_eq!(
            gone.best_reading(prev(300 + true_rx - 1_000, 309, 4)),
            (Octets::new(300 + true_rx, 309), Some(4), false)
        );
    }

    #[test]
    fn format_1_markers_still_decode() {
        let v1 = r#"{"session":{"key":"k","connection_id":1,"ppp_if":"ppp0","client_ip":"10.0.0.2","pppd_pid":9,"start_ts":1,"up_ts":null},"reading":{"rx":5,"tx":6},"wraps_32":true,"kernel":null,"stop":{"at":2,"cause":"User-Request"}}"#;
        let m: FinalMarker = serde_json::from_str(v1).unwrap();
        assert_eq!(m.pppd, Some(Octets::new(5, 6)));
        assert_eq!(m.session.base, None);
    }
}

//! Turning counter readings into deltas, one direction at a time.
//!
//! The rules (docs/accounting.md, "Counter edge cases"):
//! * a session the state has never seen starts from a baseline of 0: the interface was created
//!   with the session, so all its bytes are the session's. (If the state was lost, SQL derives
//!   usage from the growth of the session's total over what it already holds, so nothing is
//!   counted twice; see db::accounting.)
//! * the same session on a different ifindex (the interface was recreated under the same pppd):
//!   the new interface's counters started at 0, so the whole reading is new;
//! * a reading below the baseline on the same interface is a counter reset we cannot explain:
//!   logged by the caller, no negative usage, the new baseline is the reading (bytes between the
//!   reset and the reading are not counted — never over-count);
//! * pppd 2.4's own link statistics are 32 bits wide: a final reading flagged as such is extended
//!   to the smallest 64-bit value at or above the baseline with the same low 32 bits (exact as
//!   long as less than 4 GiB passed since the last reading).

use serde::{Deserialize, Serialize};

/// rx/tx octets of an interface. rx = received from the client = Acct-Input-Octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Octets {
    pub rx: u64,
    pub tx: u64,
}

impl Octets {
    pub fn new(rx: u64, tx: u64) -> Self {
        Octets { rx, tx }
    }
    pub fn saturating_add(self, o: Octets) -> Octets {
        Octets { rx: self.rx.saturating_add(o.rx), tx: self.tx.saturating_add(o.tx) }
    }
    pub fn is_zero(self) -> bool {
        self.rx == 0 && self.tx == 0
    }
}

/// What happened between the baseline and the reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observation {
    Normal,
    /// First reading of a session (baseline 0).
    New,
    /// The session's interface has a new ifindex.
    Recreated,
    /// At least one counter went backwards on the same interface.
    Backwards,
}

/// Result of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub delta: Octets,
    /// The new baseline (the reading, after 32-bit extension).
    pub baseline: Octets,
    pub observation: Observation,
}

/// The previous reading of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous {
    pub baseline: Octets,
    pub ifindex: Option<u32>,
}

/// Extends a 32-bit reading against a 64-bit baseline (see the module docs).
pub fn extend_32(reading: u64, baseline: u64) -> u64 {
    if reading > u32::MAX as u64 || reading >= baseline {
        return reading;
    }
    let high = baseline & !0xFFFF_FFFFu64;
    let cand = high | reading;
    if cand >= baseline {
        cand
    } else {
        cand.saturating_add(1 << 32)
    }
}

/// The value with `reading`'s low 32 bits nearest to `estimate` (pppd 2.4's 32-bit figure placed
/// next to the interface's 64-bit counters, which differ from it by a few packets at most).
pub fn nearest_32(reading: u64, estimate: u64) -> u64 {
    if reading > u32::MAX as u64 {
        return reading;
    }
    let low = reading & 0xFFFF_FFFF;
    let cand = (estimate & !0xFFFF_FFFFu64) | low;
    let half = 1u64 << 31;
    if cand > estimate && cand - estimate > half && cand >= 1 << 32 {
        cand - (1 << 32)
    } else if cand < estimate && estimate - cand > half {
        cand.saturating_add(1 << 32)
    } else {
        cand
    }
}

/// Computes the delta of one reading.
///
/// `prev`: the state's entry, if any. `ifindex`: the interface's index now (None when the reading
/// does not come from the kernel, e.g. pppd's final statistics). `wraps_32`: the reading is
/// 32 bits wide.
pub fn advance(prev: Option<Previous>, reading: Octets, ifindex: Option<u32>, wraps_32: bool) -> Advance {
    let Some(p) = prev else {
        return Advance { delta: reading, baseline: reading, observation: Observation::New };
    };
    if let (Some(old), Some(new)) = (p.ifindex, ifindex) {
        if old != new {
            return Advance { delta: reading, baseline: reading, observation: Observation::Recreated };
        }
    }
    let reading = if wraps_32 {
        Octets { rx: extend_32(reading.rx, p.baseline.rx), tx: extend_32(reading.tx, p.baseline.tx) }
    } else {
        reading
    };
    let mut observation = Observation::Normal;
    let mut one = |now: u64, base: u64| {
        if now >= base {
            now - base
        } else {
            observation = Observation::Backwards;
            0
        }
    };
    let delta = Octets { rx: one(reading.rx, p.baseline.rx), tx: one(reading.tx, p.baseline.tx) };
    Advance { delta, baseline: reading, observation }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prev(rx: u64, tx: u64, ifindex: u32) -> Option<Previous> {
        Some(Previous { baseline: Octets::new(rx, tx), ifindex: Some(ifindex) })
    }

    #[test]
    fn normal_new_recreated_backwards() {
        let a = advance(prev(100, 50, 7), Octets::new(150, 80), Some(7), false);
        assert_eq!((a.delta, a.observation), (Octets::new(50, 30), Observation::Normal));
        let a = advance(None, Octets::new(150, 80), Some(7), false);
        assert_eq!((a.delta, a.observation), (Octets::new(150, 80), Observation::New));
        let a = advance(prev(100, 50, 7), Octets::new(10, 5), Some(9), false);
        assert_eq!((a.delta, a.observation), (Octets::new(10, 5), Observation::Recreated));
        let a = advance(prev(100, 50, 7), Octets::new(10, 60), Some(7), false);
        assert_eq!(
            (a.delta, a.baseline, a.observation),
            (Octets::new(0, 10), Octets::new(10, 60), Observation::Backwards)
        );
    }

    #[test]
    fn thirty_two_bit_final_readings_are_extended() {
        let base = (5u64 << 32) + 4_000_000_000;
        // Wrapped past 2^32 since the baseline: low bits small again.
        let a = advance(
            Some(Previous { baseline: Octets::new(base, 10), ifindex: Some(1) }),
            Octets::new(100, 20),
            None,
            true,
        );
        assert_eq!(a.delta.rx, (1u64 << 32) - 4_000_000_000 + 100);
        assert_eq!(a.delta.tx, 10);
        assert_eq!(extend_32(7, 3), 7);
        assert_eq!(extend_32(1 << 40, 3), 1 << 40);
        assert_eq!(extend_32(5, (1 << 32) + 5), (1 << 32) + 5);
    }

    proptest! {
        #[test]
        fn deltas_are_never_negative_and_sum_to_the_reading(steps in proptest::collection::vec(0u64..1_000_000, 1..20)) {
            // Monotonic readings on one interface: the deltas sum to the last reading.
            let mut p: Option<Previous> = None;
            let mut reading = 0u64;
            let mut sum = 0u64;
            for s in steps {
                reading += s;
                let a = advance(p, Octets::new(reading, reading / 2), Some(3), false);
                sum += a.delta.rx;
                p = Some(Previous { baseline: a.baseline, ifindex: Some(3) });
            }
            prop_assert_eq!(sum, reading);
        }

        #[test]
        fn extension_is_congruent_and_not_below_the_baseline(low in any::<u32>(), base in 0u64..(1u64 << 60)) {
            let v = extend_32(low as u64, base);
            prop_assert_eq!(v & 0xFFFF_FFFF, low as u64);
            prop_assert!(v >= base);
            prop_assert!(v - base < (1u64 << 32));
        }

        #[test]
        fn nearest_32_finds_the_true_value_a_few_packets_away(truth in 0u64..(1u64 << 50), off in -100_000i64..100_000) {
            let estimate = (truth as i64 + off).max(0) as u64;
            prop_assert_eq!(nearest_32(truth & 0xFFFF_FFFF, estimate), truth);
        }
    }
}

//! A read-only view of the collector's durable state, for the janitor: when it closes a stale row
//! it takes the session's last counters and last-seen time from here (the collector saw the
//! interface last; a dead session's interface is gone). Reading never repairs or moves anything:
//! an unreadable state file gives an empty view (the janitor then keeps what SQL has).

use std::net::Ipv4Addr;

use crate::accounting::state::{SessionState, State, STATE_FILE};
use crate::config::Config;
use crate::janitor::{CounterSource, EndedSession, FinalUsage};

/// How far apart a radacct row's start and the session's IPCP-up may be to be the same session.
const START_WINDOW_S: i64 = 120;

#[derive(Debug, Default)]
pub struct StateView {
    sessions: Vec<SessionState>,
}

/// The view, read from disk only when the janitor first asks (the on-demand path per login
/// usually closes nothing and should not pay for reading the state).
#[derive(Debug)]
pub struct LazyStateView<'a> {
    cfg: &'a Config,
    view: std::cell::OnceCell<StateView>,
}

impl<'a> LazyStateView<'a> {
    pub fn new(cfg: &'a Config) -> Self {
        LazyStateView { cfg, view: std::cell::OnceCell::new() }
    }
}

impl CounterSource for LazyStateView<'_> {
    fn final_counters(&self, s: &EndedSession<'_>) -> Option<FinalUsage> {
        self.view.get_or_init(|| StateView::load(self.cfg)).final_counters(s)
    }
}

impl StateView {
    pub fn load(cfg: &Config) -> StateView {
        let path = cfg.paths.accounting_dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return StateView::default(),
        };
        match State::decode(&bytes) {
            Ok(s) => StateView { sessions: s.sessions.into_values().collect() },
            Err(e) => {
                tracing::warn!(
                    "accounting state {} unreadable ({e:?}); closing rows with SQL's counters",
                    path.display()
                );
                StateView::default()
            }
        }
    }

    fn find(&self, s: &EndedSession<'_>) -> Option<&SessionState> {
        if let Some(k) = s.session_key {
            return self.sessions.iter().find(|x| x.session.key == k);
        }
        if let (Some(ifn), Some(pid)) = (s.ppp_if, s.pppd_pid) {
            if let Some(x) = self.sessions.iter().find(|x| x.session.ppp_if == ifn && x.session.pppd_pid == pid) {
                return Some(x);
            }
        }
        let ip: Ipv4Addr = s.framed_ip?;
        let start = s.start?;
        let mut hits = self.sessions.iter().filter(|x| {
            let began = x.session.up_ts.unwrap_or(x.session.start_ts);
            x.session.client_ip == ip && (began - start).abs() <= START_WINDOW_S
        });
        let first = hits.next()?;
        // Two candidates cannot be told apart: take neither.
        hits.next().is_none().then_some(first)
    }
}

impl CounterSource for StateView {
    fn final_counters(&self, s: &EndedSession<'_>) -> Option<FinalUsage> {
        let x = self.find(s)?;
        Some(FinalUsage { input_octets: x.total.rx, output_octets: x.total.tx, last_seen: Some(x.last_seen) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::record::SessionInfo;
    use crate::accounting::Octets;

    #[allow(clippy::too_many_arguments)]
    fn st(key: &str, ifn: &str, pid: u32, ip: [u8; 4], up: i64, rx: u64, tx: u64, seen: i64) -> SessionState {
        SessionState {
            session: SessionInfo {
                key: key.into(),
                connection_id: 1,
                ppp_if: ifn.into(),
                client_ip: Ipv4Addr::from(ip),
                pppd_pid: pid,
                start_ts: up - 2,
                up_ts: Some(up),
                base: None,
            },
            ifindex: Some(7),
            baseline: Octets::new(0, 0),
            total: Octets::new(rx, tx),
            last_seen: seen,
        }
    }

    fn ended<'a>(key: Option<&'a str>, ip: Option<[u8; 4]>, start: Option<i64>) -> EndedSession<'a> {
        EndedSession {
            nas_identity: "lns-1",
            username: Some("alice"),
            framed_ip: ip.map(Ipv4Addr::from),
            start,
            acct_session_id: None,
            session_key: key,
            ppp_if: None,
            pppd_pid: None,
        }
    }

    #[test]
    fn finds_by_key_then_by_address_and_start() {
        let v = StateView {
            sessions: vec![
                st("lns-1:ppp0:100:1000", "ppp0", 100, [10, 0, 0, 2], 1002, 5000, 7000, 1300),
                st("lns-1:ppp1:101:5000", "ppp1", 101, [10, 0, 0, 2], 5002, 1, 2, 5100),
            ],
        };
        let u = v.final_counters(&ended(Some("lns-1:ppp0:100:1000"), None, None)).unwrap();
        assert_eq!((u.input_octets, u.output_octets, u.last_seen), (5000, 7000, Some(1300)));
        // A radacct row: framed IP and a start near the session's IPCP-up pick the right one of
        // two sessions that had the same address.
        let u = v.final_counters(&ended(None, Some([10, 0, 0, 2]), Some(5010))).unwrap();
        assert_eq!(u.input_octets, 1);
        assert!(v.final_counters(&ended(None, Some([10, 0, 0, 2]), Some(3000))).is_none(), "no session started then");
        assert!(v.final_counters(&ended(None, Some([10, 0, 0, 9]), Some(1002))).is_none());
        assert!(v.final_counters(&ended(Some("unknown"), None, None)).is_none());
    }

    #[test]
    fn ambiguous_address_matches_nothing() {
        let v = StateView {
            sessions: vec![
                st("a", "ppp0", 100, [10, 0, 0, 2], 1000, 1, 1, 1),
                st("b", "ppp1", 101, [10, 0, 0, 2], 1030, 2, 2, 2),
            ],
        };
        assert!(v.final_counters(&ended(None, Some([10, 0, 0, 2]), Some(1015))).is_none());
    }
}

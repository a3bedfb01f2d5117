//! `pppgate session show ID`: everything about one connection's sessions in one place (R512,
//! issue 12) — each mapping and why it is or is not VALID, the policy SQL decides, what the kernel
//! holds for the session (read back: nft set membership, shaping rates, routes, rules, interface
//! counters) and whether that is in step with the policy (a dry-run apply: the plan for this
//! connection, empty when in step), the open radacct and pppgate_sessions rows, usage and quota.
//!
//! Read-only: no lock, nothing written. SQL through `db` only; without the database the mapping
//! and kernel half is still shown and `database_error` says why the rest is missing.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::db::{self, radacct};
use crate::error::{one_line, Result};
use crate::kernel::links::{Counters, LinkSnapshot};
use crate::kernel::{Backends, Member, Nft, OwnedRoute, OwnedRule, Routes, Rules, Shaping, Tc};
use crate::mapping::{self, Mapping, Validity};
use crate::policy::apply::{self, Target};
use crate::policy::model::{self, ConnectionFacts, Policy, QuotaPeriod};
use crate::procfs::{self, Liveness};

/// `schema_version` of the JSON (docs/schemas/session-show.schema.json): changes when a field is
/// removed or changes meaning; new fields may appear in any version.
pub const SCHEMA_VERSION: u32 = 1;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Serialize)]
pub struct SessionShow {
    pub schema_version: u32,
    pub connection_id: i64,
    pub login: Option<String>,
    /// What SQL says about the connection (`null`: no such row, or the database is down).
    pub facts: Option<ConnectionFacts>,
    /// The policy those facts give (the state table in docs/ARCHITECTURE.md).
    pub policy: Option<Policy>,
    pub usage: Option<Usage>,
    /// Every mapping file of this connection, VALID or not.
    pub sessions: Vec<SessionDetail>,
    /// Mapping files that do not parse (they might be this connection's; never sessions).
    pub malformed: Vec<String>,
    /// Differences between the kernel and the policy for this connection's VALID sessions: what
    /// `pppgate apply --connection-id ID` would do (empty: in step). `null` when not known.
    pub pending_changes: Option<Vec<String>>,
    /// Open radacct rows of the connection's login (any NAS).
    pub open_radacct: Vec<radacct::OpenRow>,
    /// Open pppgate_sessions rows of this NAS for the connection.
    pub open_pppgate_sessions: Vec<radacct::OpenSession>,
    pub database_error: Option<String>,
}

/// Usage in the current quota period against the quota.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub period: QuotaPeriod,
    pub used_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub remaining_bytes: Option<u64>,
    pub quota_reached: bool,
}

/// One of the three conditions of VALID (DESIGN.md), with what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidReasons {
    /// PPPD_PID alive and the mapping's process (START_TICKS + BOOT_ID, or START_TS).
    pub process: Condition,
    /// PPP_IF exists.
    pub interface: Condition,
    /// PPP_IF carries CLIENT_IP as its peer.
    pub peer: Condition,
}

/// What the kernel holds for one session, read back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelState {
    pub ifindex: Option<u32>,
    /// State sets holding the session's member (`ifindex . client_ip`).
    pub nft_sets: Vec<String>,
    /// Shaping rates on the interface (down) and its IFB (up), kbit/s (TBF, or the HTB layout of
    /// earlier versions until a reconcile rewrites it).
    pub shaping: Shaping,
    /// pppgate's routes on the interface, and the default routes of the tables its rules use.
    pub routes: Vec<OwnedRoute>,
    /// pppgate's rules from the client address.
    pub rules: Vec<OwnedRule>,
    /// The interface's counters now.
    pub counters: Option<CounterView>,
    /// What could not be read.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct CounterView {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Octets since IPCP came up (the counters minus the mapping's RX_BASE/TX_BASE): what
    /// accounting counts for the session.
    pub session_rx_bytes: Option<u64>,
    pub session_tx_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub mapping: Mapping,
    pub since: String,
    /// `validity`: `valid`, `process_gone`, `pid_reused` (with `actual_start`),
    /// `interface_gone`, `peer_mismatch`.
    #[serde(flatten)]
    pub validity: Validity,
    pub valid: bool,
    pub valid_reasons: ValidReasons,
    /// Set when the pppd is provably gone: the next reconcile removes this file (R511).
    pub pppd_gone: Option<mapping::Gone>,
    pub kernel: KernelState,
}

fn counters_view(c: Counters, base: Option<(u64, u64)>) -> CounterView {
    CounterView {
        rx_bytes: c.rx_bytes,
        tx_bytes: c.tx_bytes,
        rx_packets: c.rx_packets,
        tx_packets: c.tx_packets,
        session_rx_bytes: base.map(|(rx, _)| c.rx_bytes.saturating_sub(rx)),
        session_tx_bytes: base.map(|(_, tx)| c.tx_bytes.saturating_sub(tx)),
    }
}

fn valid_reasons(m: &Mapping, links: &LinkSnapshot, boot: i64) -> ValidReasons {
    let how = if m.process.is_some() { "START_TICKS and BOOT_ID" } else { "START_TS" };
    let process = match m.liveness(boot) {
        Ok(Liveness::Same) => {
            Condition { ok: true, detail: format!("pid {} is the mapping's pppd ({how} match)", m.pppd_pid) }
        }
        Ok(Liveness::Gone) => Condition { ok: false, detail: format!("no process has pid {}", m.pppd_pid) },
        Ok(Liveness::Other { actual_start }) => Condition {
            ok: false,
            detail: format!(
                "pid {} belongs to another process (started {}; {how} differ)",
                m.pppd_pid,
                crate::audit::rfc3339(actual_start)
            ),
        },
        Err(e) => Condition { ok: false, detail: format!("cannot read /proc/{}: {e}", m.pppd_pid) },
    };
    let (interface, peer) = match links.get(&m.ppp_if) {
        None => (
            Condition { ok: false, detail: format!("{} does not exist (or has no IPv4 address)", m.ppp_if) },
            Condition { ok: false, detail: format!("{} does not exist", m.ppp_if) },
        ),
        Some(l) => (
            Condition { ok: true, detail: format!("{} exists (index {})", m.ppp_if, l.index) },
            if l.peers.contains(&m.client_ip) {
                Condition { ok: true, detail: format!("{} carries {} as its peer", m.ppp_if, m.client_ip) }
            } else {
                let peers: Vec<String> = l.peers.iter().map(Ipv4Addr::to_string).collect();
                Condition {
                    ok: false,
                    detail: format!("{} has peer(s) [{}], not {}", m.ppp_if, peers.join(", "), m.client_ip),
                }
            },
        ),
    };
    ValidReasons { process, interface, peer }
}

/// Reads the kernel's state for one session (`ifindex` from the same link snapshot).
fn kernel_state<B: Backends>(
    b: &mut B,
    m: &Mapping,
    links: &LinkSnapshot,
    routes: &std::result::Result<Vec<OwnedRoute>, String>,
    rules: &std::result::Result<Vec<OwnedRule>, String>,
) -> KernelState {
    let mut k = KernelState::default();
    let link = links.get(&m.ppp_if);
    k.ifindex = link.map(|l| l.index);
    k.counters = link.and_then(|l| l.counters).map(|c| counters_view(c, m.counters_base));
    if let Some(idx) = k.ifindex {
        match b.nft().sets_of(Member::new(idx, m.client_ip)) {
            Ok(sets) => k.nft_sets = sets.into_iter().map(|s| s.name().to_string()).collect(),
            Err(e) => k.errors.push(format!("nft: {}", one_line(&e))),
        }
        match b.tc().read_one(&m.ppp_if) {
            Ok(s) => k.shaping = s,
            Err(e) => k.errors.push(format!("tc: {}", one_line(&e))),
        }
    }
    match rules {
        Ok(all) => {
            k.rules =
                all.iter().filter(|r| r.from.prefix_len() == 32 && r.from.addr() == m.client_ip).cloned().collect()
        }
        Err(e) => k.errors.push(format!("rules: {e}")),
    }
    match routes {
        Ok(all) => {
            let tables: Vec<u32> = k.rules.iter().map(|r| r.table).collect();
            k.routes = all
                .iter()
                .filter(|r| r.dev == m.ppp_if || (tables.contains(&r.table) && r.dst.prefix_len() == 0))
                .cloned()
                .collect();
        }
        Err(e) => k.errors.push(format!("routes: {e}")),
    }
    k
}

/// Gathers the view of connection `id`.
pub fn show<B: Backends>(cfg: &Config, b: &mut B, id: i64) -> Result<SessionShow> {
    let dir = &cfg.paths.sessions_dir;
    let scanned = mapping::scan(dir)?;
    let mut mine = Vec::new();
    let mut malformed = Vec::new();
    for s in scanned {
        match s.mapping {
            Ok(m) if m.connection_id == id => mine.push(m),
            Ok(_) => {}
            Err(e) => malformed.push(one_line(&e)),
        }
    }
    let links = LinkSnapshot::read()?;
    let boot = procfs::boot_time().map_err(|source| crate::Error::Read { path: "/proc/stat".into(), source })?;
    let routes = b.routes().read().map_err(|e| one_line(&e));
    let rules = b.rules().read().map_err(|e| one_line(&e));
    let sessions: Vec<SessionDetail> = mine
        .into_iter()
        .map(|m| {
            let validity = m.validity_since(&links, boot);
            SessionDetail {
                since: crate::audit::rfc3339(m.up_ts.unwrap_or(m.start_ts)),
                validity,
                valid: validity.is_valid(),
                valid_reasons: valid_reasons(&m, &links, boot),
                pppd_gone: m.pppd_gone(),
                kernel: kernel_state(b, &m, &links, &routes, &rules),
                mapping: m,
            }
        })
        .collect();

    let sql = db::connect_with(&cfg.database, CONNECT_TIMEOUT, STATEMENT_TIMEOUT).and_then(|mut c| {
        let facts = db::connections::facts_by_ids(&mut c, &[id])?.into_iter().next();
        let login = match &facts {
            Some(f) => Some(f.login.clone()),
            None => db::connections::login_of(&mut c, id)?,
        };
        let rows = match &login {
            Some(l) => radacct::open_rows_of_user(&mut c, &crate::radius::sqlname::sql_username(l.as_bytes()))?,
            None => vec![],
        };
        let open = radacct::open_sessions(&mut c, &cfg.nas.identity, Some((Some(id), login.as_deref())))?;
        Ok((facts, login, rows, open))
    });
    let mut out = SessionShow {
        schema_version: SCHEMA_VERSION,
        connection_id: id,
        login: None,
        facts: None,
        policy: None,
        usage: None,
        sessions,
        malformed,
        pending_changes: None,
        open_radacct: vec![],
        open_pppgate_sessions: vec![],
        database_error: None,
    };
    match sql {
        Ok((facts, login, rows, open)) => {
            out.login = login;
            out.open_radacct = rows;
            out.open_pppgate_sessions = open;
            if let Some(f) = facts {
                out.usage = Some(Usage {
                    period: f.quota_period,
                    used_bytes: f.used_bytes,
                    quota_bytes: f.quota_bytes,
                    remaining_bytes: f.quota_bytes.map(|q| q.saturating_sub(f.used_bytes)),
                    quota_reached: model::quota_reached(f.quota_bytes, f.used_bytes),
                });
                out.policy = Some(model::decide(Some(&f)));
                out.facts = Some(f);
                // The plan a real apply would carry out, computed the same way (dry run, no lock).
                match apply::apply(cfg, b, &Target::Connection(id), true) {
                    Ok(r) => out.pending_changes = Some(r.outcome.steps),
                    Err(e) => out.database_error = Some(format!("cannot plan: {}", one_line(&e))),
                }
            } else {
                out.policy = Some(model::decide(None));
            }
        }
        Err(e) => out.database_error = Some(one_line(&e)),
    }
    Ok(out)
}

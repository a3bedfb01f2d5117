//! `pppgate apply` and `reconcile`: SQL facts + VALID mappings → desired state → converge.
//! The caller holds the apply lock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::db;
use crate::error::{one_line, Error, Result};
use crate::input;
use crate::kernel::{Backends, Member, Nft, NftSet};
use crate::mapping::{self, LiveSession};
use crate::policy::engine::{self, micros, Outcome};
use crate::policy::planner::{Desired, DesiredSession, Scope};

/// What `apply` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Connection(i64),
    Customer(i64),
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Malformed mapping files found (never treated as sessions).
    pub malformed: Vec<String>,
    /// Connections asked for that have no live session.
    pub not_live: Vec<i64>,
    /// Set when SQL was unreachable: only state of sessions that no longer exist was removed.
    pub sql_unavailable: Option<String>,
    /// Reconcile: mapping files whose pppd is provably gone, removed (R511; with `dry_run`: the
    /// ones that would be).
    pub removed_mappings: Vec<mapping::Removed>,
    /// Reconcile: mapping files of gone pppds that could not be removed.
    pub mapping_errors: Vec<String>,
    /// Whether the run converged (R811): the kernel holds the policy of every VALID session in
    /// scope, read back and verified, and no state of a gone session or mapping file of a gone
    /// pppd is left. `false` when SQL was unreachable (only the gone half was done) or a stale
    /// mapping file could not be removed; with `dry_run`, whether there was nothing to do.
    /// Malformed mapping files do not make it false: they are no sessions, their state is removed
    /// (fail closed) and they are reported.
    pub converged: bool,
}

/// Checks what SQL asks for before anything is applied, by the rules the CLI uses
/// ([`crate::input`]): absurd rates and unusable routes refuse the whole apply (exit 65, nothing
/// applied), and so do routing tables the CLI refuses (a per-user route in `local`, policy routing
/// into `default`/`main`/`local`, whose default route would replace the box's own). A route via
/// the client itself is the same as a route on the point-to-point link and is normalised to that.
pub fn validate(cfg: &Config, desired: &mut Desired) -> Result<()> {
    for s in &mut desired.sessions {
        let p = &mut s.policy;
        for (dir, rate) in [("download", p.speed.down_kbit), ("upload", p.speed.up_kbit)] {
            if let Some(r) = rate {
                if !input::rate_ok(r, cfg.policy.max_rate_kbit) {
                    return Err(Error::invalid(
                        "rate",
                        format!("{r}kbit"),
                        format!(
                            "{dir} rate of connection {} is outside {}..={} kbit/s",
                            s.connection_id,
                            input::MIN_RATE_KBIT,
                            cfg.policy.max_rate_kbit
                        ),
                    ));
                }
            }
        }
        for r in &mut p.routes {
            if r.gateway == Some(s.client_ip) {
                r.gateway = None;
            }
            if let Some(g) = r.gateway {
                return Err(Error::invalid(
                    "route gateway",
                    g.to_string(),
                    format!(
                        "not reachable over {} (a point-to-point link reaches only its peer {})",
                        s.ifname, s.client_ip
                    ),
                ));
            }
            if let Some(t) = r.table {
                input::route_table(&t.to_string(), t)?;
            }
        }
        for pbr in &p.pbr {
            input::pbr_table(&pbr.table.to_string(), pbr.table)?;
        }
    }
    for pbr in &desired.subnet_pbr {
        input::pbr_table(&pbr.table.to_string(), pbr.table)?;
    }
    Ok(())
}

fn malformed_names(bad: &[Error]) -> Vec<String> {
    bad.iter().map(|e| one_line(e)).collect()
}

/// Applies the policy of some connections to their live sessions.
pub fn apply<B: Backends>(cfg: &Config, b: &mut B, target: &Target, dry_run: bool) -> Result<Report> {
    let t_sql = Instant::now();
    let mut client = db::connect(&cfg.database)?;
    let ids = match target {
        Target::Connection(id) => {
            if !db::connections::exists(&mut client, *id)? {
                return Err(Error::NotFound { what: "connection", id: id.to_string() });
            }
            vec![*id]
        }
        Target::Customer(id) => {
            if !db::connections::customer_exists(&mut client, *id)? {
                return Err(Error::NotFound { what: "customer", id: id.to_string() });
            }
            db::connections::ids_of_customer(&mut client, *id)?
        }
    };
    let mut sql_us = micros(t_sql);
    let t0 = Instant::now();
    let (live, bad) = mapping::live_sessions_where(&cfg.paths.sessions_dir, |m| ids.contains(&m.connection_id))?;
    let live_ids: BTreeSet<i64> = live.iter().map(|l| l.mapping.connection_id).collect();
    let scan_us = micros(t0);
    let t0 = Instant::now();
    let facts = db::connections::facts_by_ids(&mut client, &live_ids.iter().copied().collect::<Vec<_>>())?;
    drop(client);
    sql_us += micros(t0);
    let mut desired = Desired { sessions: engine::desired_sessions(&live, &facts), subnet_pbr: vec![] };
    validate(cfg, &mut desired)?;
    let mut report = Report {
        malformed: malformed_names(&bad),
        not_live: ids.iter().copied().filter(|i| !live_ids.contains(i)).collect(),
        converged: true,
        ..Default::default()
    };
    if desired.sessions.is_empty() {
        return Ok(report);
    }
    let scope = Scope::of(&desired.sessions);
    report.outcome = engine::converge(b, cfg, &desired, &scope, dry_run)?;
    report.outcome.timings.scan_us = scan_us;
    report.outcome.timings.sql_us = sql_us;
    report.converged = !dry_run || report.outcome.plan.is_empty();
    Ok(report)
}

/// Reconciles everything: live sessions get their policy, state of sessions that no longer exist
/// is removed, and so are the mapping files of pppds that are provably gone (R511: a SIGKILLed
/// pppd never ran ip-down). With SQL unreachable only the kernel-side half runs (no guessing
/// policies without SQL) and the report says so; the caller exits 69.
pub fn reconcile<B: Backends>(cfg: &Config, b: &mut B, dry_run: bool) -> Result<Report> {
    let t0 = Instant::now();
    let (valid, bad) = mapping::live_sessions_where(&cfg.paths.sessions_dir, |_| true)?;
    let scan_us = micros(t0);
    let mut report = Report { malformed: malformed_names(&bad), ..Default::default() };
    for e in &bad {
        tracing::error!("{}", one_line(e));
    }
    let t0 = Instant::now();
    let sql = db::connect(&cfg.database).and_then(|mut c| {
        let ids: Vec<i64> =
            valid.iter().map(|l| l.mapping.connection_id).collect::<BTreeSet<_>>().into_iter().collect();
        let facts = db::connections::facts_by_ids(&mut c, &ids)?;
        let subnet = db::pbr::subnet_rules(&mut c)?;
        Ok((facts, subnet))
    });
    let sql_us = micros(t0);
    match sql {
        Ok((facts, subnet_pbr)) => {
            let mut desired = Desired { sessions: engine::desired_sessions(&valid, &facts), subnet_pbr };
            validate(cfg, &mut desired)?;
            report.outcome = engine::converge(b, cfg, &desired, &Scope::All, dry_run)?;
            if !dry_run {
                // The member record becomes exactly what was just verified (self-healing after a
                // crash between a commit and its record; records of gone sessions go).
                let want: BTreeMap<Member, NftSet> =
                    desired.sessions.iter().map(|s| (s.member(), NftSet::for_state(s.policy.state))).collect();
                b.nft().sync_record(&want)?;
            }
        }
        Err(e) if e.is_transient() => {
            report.sql_unavailable = Some(one_line(&e));
            report.outcome = remove_gone_sessions(cfg, b, &valid, dry_run)?;
        }
        Err(e) => return Err(e),
    }
    report.outcome.timings.scan_us = scan_us;
    report.outcome.timings.sql_us = sql_us;
    // After the kernel: the session's state is gone before its file is (a failed converge above
    // leaves both for the next run).
    stale_mappings(cfg, dry_run, &mut report)?;
    report.converged = report.sql_unavailable.is_none()
        && report.mapping_errors.is_empty()
        && (!dry_run || (report.outcome.plan.is_empty() && report.removed_mappings.is_empty()));
    Ok(report)
}

/// R511: removes (with `dry_run`: lists) the mapping files whose pppd is provably gone.
fn stale_mappings(cfg: &Config, dry_run: bool, report: &mut Report) -> Result<()> {
    let dir = &cfg.paths.sessions_dir;
    if dry_run {
        for s in mapping::scan(dir)? {
            let Ok(m) = s.mapping else { continue };
            if let Some(gone) = m.pppd_gone() {
                report.removed_mappings.push(mapping::Removed {
                    ppp_if: m.ppp_if,
                    connection_id: m.connection_id,
                    pppd_pid: m.pppd_pid,
                    client_ip: m.client_ip,
                    gone,
                });
            }
        }
        return Ok(());
    }
    let (removed, errors) = mapping::remove_stale(dir, None)?;
    for r in &removed {
        tracing::info!(ppp_if = %r.ppp_if, conn_id = r.connection_id, pid = r.pppd_pid, client_ip = %r.client_ip,
            reason = r.gone.reason(), "mapping of a gone pppd removed");
    }
    for e in &errors {
        tracing::error!("mapping of a gone pppd not removed: {}", one_line(e));
    }
    report.removed_mappings = removed;
    report.mapping_errors = errors.iter().map(|e| one_line(e)).collect();
    Ok(())
}

/// Kernel-only cleanup: removes pppgate's state for members, addresses and interfaces that
/// belong to no VALID session; live sessions are left exactly as they are.
pub fn remove_gone_sessions<B: Backends>(
    cfg: &Config,
    b: &mut B,
    valid: &[LiveSession],
    dry_run: bool,
) -> Result<Outcome> {
    let view = engine::read_view(b, &Scope::All, &Desired::default())?;
    let live_ifs: BTreeSet<&str> = valid.iter().map(|l| l.mapping.ppp_if.as_str()).collect();
    let live_ips: BTreeSet<Ipv4Addr> = valid.iter().map(|l| l.mapping.client_ip).collect();
    let live_members: BTreeSet<Member> = valid.iter().map(|l| Member::new(l.ifindex, l.mapping.client_ip)).collect();
    let mut ifnames: BTreeSet<String> = BTreeSet::new();
    let mut members: BTreeSet<Member> = BTreeSet::new();
    let mut ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for m in view.nft.all_members() {
        if !live_members.contains(&m) {
            members.insert(m);
        }
    }
    for ifname in view.tc.shaping.keys() {
        if !live_ifs.contains(ifname.as_str()) {
            ifnames.insert(ifname.clone());
        }
    }
    for ifb in &view.tc.ifbs {
        let owner = crate::kernel::ifb_owner(ifb);
        if !live_ifs.contains(owner) {
            ifnames.insert(owner.to_string());
        }
    }
    for r in &view.routes {
        let table_default = r.table != crate::policy::planner::MAIN_TABLE && r.dst == ipnet::Ipv4Net::default();
        if !table_default && !live_ifs.contains(r.dev.as_str()) {
            ifnames.insert(r.dev.clone());
        }
    }
    for u in &view.rules {
        if u.from.prefix_len() == 32 && !live_ips.contains(&u.from.addr()) {
            ips.insert(u.from.addr());
        }
    }
    // By member, not by address: a live session's member is not touched, whatever dead members
    // share its address. `ips` holds only addresses no live session has (rules are per /32).
    ips.extend(members.iter().map(|m| m.ip).filter(|ip| !live_ips.contains(ip)));
    let scope = Scope::Sessions { ifnames, ips, members };
    let out = engine::converge(b, cfg, &Desired::default(), &scope, dry_run)?;
    if !dry_run {
        // Records of gone sessions go; live sessions keep theirs, as the kernel keeps them.
        let record = crate::kernel::members::MemberRecord::in_sessions_dir(&cfg.paths.sessions_dir).read()?;
        let want: BTreeMap<Member, NftSet> = record.into_iter().filter(|(m, _)| live_members.contains(m)).collect();
        b.nft().sync_record(&want)?;
    }
    Ok(out)
}

/// Desired sessions for one connect (the plugin's path).
pub fn session_for_connect(
    ifname: &str,
    ifindex: u32,
    client_ip: Ipv4Addr,
    pid: u32,
    facts: &crate::policy::model::ConnectionFacts,
) -> DesiredSession {
    DesiredSession {
        ifname: ifname.to_string(),
        ifindex,
        client_ip,
        connection_id: facts.id,
        pppd_pid: Some(pid),
        policy: crate::policy::model::decide(Some(facts)),
    }
}

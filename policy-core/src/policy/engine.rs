//! The engine: read the kernel, plan, apply, read back and verify. The caller holds the
//! single-writer lock (`/run/vpn-policy-apply.lock`) around every function here that changes
//! the kernel, except [`gate`], which only ever adds an address to `connect_pending_v4`.
//!
//! Used by the CLI (`pppgate apply`, `reconcile`) and in-process by the plugin (connect and
//! disconnect), always with the same planner.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::connect::{self, TableStep};
use crate::error::{Error, Result};
use crate::kernel::links::LinkSnapshot;
use crate::kernel::{
    Backends, Member, Netlink, Nft, NftSet, NftState, OwnedRoute, Routes, Rules, SetChange, Sysctl, Tc, TcState,
};
use crate::mapping::LiveSession;
use crate::policy::model::{decide, ConnectionFacts, PolicyState};
use crate::policy::planner::{self, Desired, DesiredSession, KernelView, Op, Plan, Scope};
use crate::policy::restore::{self, Restored};

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub plan: Plan,
    /// Human-readable plan lines.
    pub steps: Vec<String>,
    pub applied: bool,
    pub sessions: Vec<SessionReport>,
    /// Sessions whose pppd was signalled because SQL says they must end.
    pub terminated: Vec<String>,
    /// Where the time went (microseconds per phase).
    pub timings: Timings,
}

/// Time per phase of one run, in microseconds. `scan` (mapping files and VALID) and `sql`
/// (connect and facts) are filled by the callers in `apply`; the engine fills the rest. `verify`
/// is 0 when there was nothing to apply (the view just read is the view after).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub scan_us: u64,
    pub sql_us: u64,
    /// `ensure_base` and reading what pppgate owns.
    pub read_us: u64,
    pub plan_us: u64,
    /// Sysctls and the plan's changes.
    pub apply_us: u64,
    /// Reading back and re-planning.
    pub verify_us: u64,
}

impl Timings {
    pub fn total_us(&self) -> u64 {
        self.scan_us + self.sql_us + self.read_us + self.plan_us + self.apply_us + self.verify_us
    }
}

pub(crate) fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros().min(u128::from(u64::MAX)) as u64
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub ifname: String,
    pub client_ip: Ipv4Addr,
    pub connection_id: i64,
    pub state: PolicyState,
    pub reason: crate::policy::model::Reason,
    pub down_kbit: Option<u32>,
    pub up_kbit: Option<u32>,
    pub routes: usize,
    pub pbr: Vec<String>,
}

impl SessionReport {
    pub fn of(s: &DesiredSession) -> SessionReport {
        SessionReport {
            ifname: s.ifname.clone(),
            client_ip: s.client_ip,
            connection_id: s.connection_id,
            state: s.policy.state,
            reason: s.policy.reason,
            down_kbit: s.policy.speed.down_kbit,
            up_kbit: s.policy.speed.up_kbit,
            routes: s.policy.routes.len(),
            pbr: s.policy.pbr.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

/// Reads what pppgate owns; in session scope only what a plan for `desired` in that scope can
/// touch (targeted gets and kernel-filtered dumps: the cost does not grow with the box).
pub fn read_view<B: Backends>(b: &mut B, scope: &Scope, desired: &Desired) -> Result<KernelView> {
    match scope {
        Scope::All => Ok(KernelView {
            nft: b.nft().read()?,
            tc: b.tc().read()?,
            routes: b.routes().read()?,
            rules: b.rules().read()?,
        }),
        Scope::Sessions { ifnames, members, .. } => {
            let mut nft = NftState { base_ok: true, ..Default::default() };
            for m in members {
                let sets = match b.nft().sets_of(*m) {
                    Ok(s) => s,
                    Err(e) => {
                        // No table at all (a dry run before the first apply) reads as empty;
                        // anything else is a real error.
                        let whole = b.nft().read()?;
                        if whole.base_ok || !whole.members.is_empty() {
                            return Err(e);
                        }
                        nft.base_ok = false;
                        continue;
                    }
                };
                for set in sets {
                    nft.members.entry(set).or_default().insert(*m);
                }
            }
            let mut tc = TcState::default();
            for ifname in ifnames {
                let s = b.tc().read_one(ifname)?;
                if s.down_kbit.is_some() || s.up_kbit.is_some() {
                    if s.up_kbit.is_some() {
                        tc.ifbs.insert(crate::kernel::ifb_name(ifname));
                    }
                    tc.shaping.insert(ifname.clone(), s);
                }
            }
            let rules = b.rules().read()?;
            let routes = b.routes().read_scoped(&planner::route_query(desired, scope, &rules))?;
            Ok(KernelView { nft, tc, routes, rules })
        }
    }
}

/// Applies a plan in order; stops at the first error (the plan is ordered so that whatever has
/// been applied by then is at least as restrictive as before). With `held` (session scope) a
/// route is added only when no other interface's route of pppgate holds its key, and each such
/// holder is pushed to `held` (the plan was made without reading them: see
/// `planner::route_query`).
pub fn apply_plan<B: Backends>(
    b: &mut B,
    plan: &Plan,
    terminated: &mut Vec<String>,
    mut held: Option<&mut Vec<OwnedRoute>>,
) -> Result<()> {
    for op in &plan.ops {
        match op {
            Op::NftTransaction { changes } => b.nft().commit(changes)?,
            Op::RouteDel { route } => b.routes().del(route)?,
            Op::RouteAdd { route } => match held.as_deref_mut() {
                None => b.routes().add(route)?,
                Some(held) => {
                    if let Some(h) = b.routes().add_unless_held(route)? {
                        tracing::info!(dst = %route.dst, table = route.table, dev = %route.dev, holder = %h.dev,
                            "route left with the interface that holds it");
                        held.push(h);
                    }
                }
            },
            Op::RuleDel { rule } => b.rules().del(rule)?,
            Op::RuleAdd { rule } => b.rules().add(rule)?,
            Op::TcSet { ifname, shaping } => b.tc().set(ifname, shaping)?,
            Op::TcClear { ifname } => b.tc().clear(ifname)?,
            Op::IfbRemove { ifb } => b.tc().remove_ifb(ifb)?,
            Op::Terminate { ifname, connection_id, pppd_pid } => {
                if let Some(pid) = pppd_pid {
                    if terminate_pppd(*pid) {
                        tracing::warn!(ifname = %ifname, conn_id = connection_id, pid, "session terminated: SQL says it must end");
                        terminated.push(ifname.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Asks pppd to end its session (SIGTERM: pppd runs its normal down path, radius.so sends its
/// Acct-Stop). Returns whether the signal was delivered.
fn terminate_pppd(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    if p <= 1 || pid == std::process::id() {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGTERM).is_ok()
}

/// Plans, applies and verifies `desired` within `scope`. In a dry run nothing is changed.
pub fn converge<B: Backends>(
    b: &mut B,
    cfg: &Config,
    desired: &Desired,
    scope: &Scope,
    dry_run: bool,
) -> Result<Outcome> {
    let mut t = Timings::default();
    let t0 = Instant::now();
    if !dry_run {
        // An apply that finds the table gone builds it with every VALID session's recorded
        // membership in the same transaction (docs/security.md, "Tamper detection and
        // restore"): a session-scope apply (a connect, `apply --connection-id`) must not build
        // it with its own sessions only, and a reconcile must not build it empty and add the
        // members from SQL in a second commit — FULL sessions would lose packets in between.
        // The plan then corrects whatever SQL says differently.
        if !b.nft().table_present()? {
            let r = restore::restore(b, cfg)?;
            if r.live == 0 {
                // A first build (the boot reconcile): nothing was lost, nothing to warn about.
                tracing::info!("inet pppgate built");
            } else {
                tracing::warn!(
                    live = r.live,
                    added = r.added,
                    unrecorded = r.unrecorded.len(),
                    "inet pppgate was missing: rebuilt and every session's membership restored"
                );
            }
        }
        b.nft().ensure_base(&cfg.policy.walled_garden)?;
    }
    let view = read_view(b, scope, desired)?;
    t.read_us = micros(t0);
    let t0 = Instant::now();
    let plan = planner::plan(desired, &view, scope);
    let mut out = Outcome {
        steps: plan.describe(),
        sessions: desired.sessions.iter().map(SessionReport::of).collect(),
        ..Default::default()
    };
    out.plan = plan;
    t.plan_us = micros(t0);
    if dry_run {
        out.timings = t;
        return Ok(out);
    }
    let t0 = Instant::now();
    let ifnames: Vec<String> = desired.sessions.iter().map(|s| s.ifname.clone()).collect();
    b.sysctl().ensure(&ifnames)?;
    let mut held: Vec<OwnedRoute> = Vec::new();
    let session_scope = matches!(scope, Scope::Sessions { .. });
    apply_plan(b, &out.plan, &mut out.terminated, session_scope.then_some(&mut held))?;
    out.applied = true;
    t.apply_us = micros(t0);
    // Nothing applied: the view just read is the view after, and re-planning it gives the same
    // empty plan. Otherwise read back and re-plan; anything left is a verification error. Routes
    // found held by another interface while adding are part of what was read.
    if !out.plan.is_empty() {
        let t0 = Instant::now();
        let mut after = read_view(b, scope, desired)?;
        after.routes.extend(held);
        after.routes.sort();
        after.routes.dedup();
        let residue = planner::residue(desired, &after, scope);
        t.verify_us = micros(t0);
        if !residue.is_empty() {
            return Err(Error::Verify(residue.describe().join("; ")));
        }
    }
    out.timings = t;
    Ok(out)
}

/// What [`table_or_restore`] found.
#[derive(Debug, Clone)]
pub enum TableOutcome {
    /// The table was there (or another writer built it while we waited).
    Present,
    /// This caller built it, restoring every VALID session's recorded membership.
    Restored(Restored),
}

/// Makes sure `inet pppgate` exists, for the connect path (the plugin's phase notifier and the
/// gate). `present` says whether it does (a probe, or the gate's own commit). When it does not,
/// whoever takes the apply lock first builds it — restoring **every** VALID session's membership
/// from the member record ([`restore::restore`]), not only its own — and every other connect
/// waits for that build, looking again with a backoff until the connect window
/// (`connect.apply_window_fallback`) is used up ([`connect::on_table_missing`]): simultaneous
/// first connects after boot wait for the one building the table instead of ending (issue 10).
pub fn table_or_restore<B: Backends>(
    b: &mut B,
    cfg: &Config,
    holder: &str,
    mut present: impl FnMut(&mut B) -> Result<bool>,
) -> Result<TableOutcome> {
    let deadline = Instant::now() + cfg.connect.apply_window_fallback;
    let mut attempts = 0u32;
    loop {
        if present(b)? {
            return Ok(TableOutcome::Present);
        }
        attempts += 1;
        let (lock, busy) = match crate::lock::Lock::try_acquire(&cfg.paths.apply_lock, holder) {
            Ok(l) => (Some(l), None),
            Err(Error::Locked { path, holder }) => (None, Some(Error::Locked { path, holder })),
            Err(e) => return Err(e),
        };
        match connect::on_table_missing(lock.is_some(), Instant::now(), deadline, attempts) {
            TableStep::Build => {
                // Someone may have finished building it between our look and the lock.
                if present(b)? {
                    return Ok(TableOutcome::Present);
                }
                let r = restore::restore(b, cfg)?;
                tracing::warn!(
                    live = r.live,
                    added = r.added,
                    unrecorded = r.unrecorded.len(),
                    us = r.total_us,
                    "inet pppgate was missing: rebuilt and every session's membership restored"
                );
                drop(lock);
                return Ok(TableOutcome::Restored(r));
            }
            TableStep::LookAgainAfter(pause) => std::thread::sleep(pause),
            TableStep::Exhausted => return Err(busy.expect("exhausted only while the lock is busy")),
        }
    }
}

/// The connect gate: adds the member (the client address on its interface) to
/// `connect_pending_v4`. Needs no lock when the table exists (it only ever adds a drop); when it
/// does not (first connect after boot, or the table was removed), [`table_or_restore`] builds it
/// with everyone's membership or waits for whoever does.
pub fn gate<B: Backends>(b: &mut B, cfg: &Config, m: Member) -> Result<()> {
    let add = [SetChange::new(NftSet::Pending, m, true)];
    match table_or_restore(b, cfg, "pppd-gate", |b| Ok(b.nft().commit(&add).is_ok()))? {
        TableOutcome::Present => Ok(()),
        TableOutcome::Restored(_) => b.nft().commit(&add),
    }
}

/// Makes sure `inet pppgate` exists before a session's network phase (the plugin; see
/// docs/ARCHITECTURE.md, connect path step 0): one netlink probe when it does; when it does not,
/// [`table_or_restore`]. `holder` names the lock holder.
pub fn ensure_table(b: &mut Netlink, cfg: &Config, holder: &str) -> Result<TableOutcome> {
    table_or_restore(b, cfg, holder, |b| Ok(b.nft.probe()?.table))
}

/// Removes a member from every state set, the gate included (an address whose session never
/// came up on a known interface).
pub fn ungate<B: Backends>(b: &mut B, m: Member) -> Result<()> {
    let all: Vec<SetChange> = NftSet::ALL.iter().map(|set| SetChange::new(*set, m, false)).collect();
    b.nft().commit(&all)
}

/// What one pppd leaves behind when its link goes (ip-down, or exit as a backstop): every member
/// it gated and its session (interface + client member), removed with [`disconnect`] or
/// [`ungate`]. Members are bound to our interface, so another session's state is never touched;
/// when another interface now carries the client address as its peer (a newer session's), only
/// our membership goes, not the address's rules. Collects errors and keeps going (removals only,
/// idempotent).
pub fn teardown_link<B: Backends>(
    b: &mut B,
    ifname: Option<&str>,
    client: Option<Member>,
    gated: &BTreeSet<Member>,
) -> Vec<String> {
    let mut errors = Vec::new();
    // Which interface carries which peer: the address dump is enough (a full link dump with
    // counters cost ip-down ~10x more on a box with 10,000 sessions and their IFBs).
    let links = LinkSnapshot::read_addresses().ok();
    let owned_elsewhere = |ip: Ipv4Addr| {
        links
            .as_ref()
            .is_some_and(|s| s.by_name.values().any(|l| Some(l.name.as_str()) != ifname && l.peers.contains(&ip)))
    };
    let mut members: BTreeSet<Member> = gated.clone();
    members.extend(client);
    for m in members {
        let full_cleanup = Some(m) == client && !owned_elsewhere(m.ip);
        if Some(m) == client && !full_cleanup {
            tracing::warn!(client_ip = %m.ip, "address now belongs to another session; removing only our membership");
        }
        let res = match ifname.filter(|_| full_cleanup) {
            Some(ifn) => disconnect(b, ifn, m).map(|_| ()),
            None => ungate(b, m),
        };
        if let Err(e) = res {
            errors.push(crate::error::one_line(&e));
        }
    }
    // An interface whose peer address was never known: its shaping, if any.
    if let (None, Some(ifn)) = (client, ifname) {
        if let Err(e) = b.tc().clear(ifn) {
            errors.push(crate::error::one_line(&e));
        }
    }
    errors
}

/// Removes everything of one session: memberships (the gate too), shaping and its IFB, routes on
/// its interface, rules from its address. Collects errors and keeps going.
pub fn disconnect<B: Backends>(b: &mut B, ifname: &str, m: Member) -> Result<Outcome> {
    let scope = Scope::of_members(BTreeSet::from([ifname.to_string()]), BTreeSet::from([m]));
    let mut errors: Vec<String> = Vec::new();
    let mut out = Outcome::default();
    let view = read_view(b, &scope, &Desired::default())?;
    let plan = planner::plan(&Desired::default(), &view, &scope);
    out.steps = plan.describe();
    for op in &plan.ops {
        let single = Plan { ops: vec![op.clone()] };
        if let Err(e) = apply_plan(b, &single, &mut out.terminated, None) {
            errors.push(crate::error::one_line(&e));
        }
    }
    // Shaping state that could not be read (a half-created IFB) is cleared regardless.
    if let Err(e) = b.tc().clear(ifname) {
        errors.push(crate::error::one_line(&e));
    }
    out.plan = plan;
    out.applied = true;
    if !errors.is_empty() {
        return Err(Error::Cleanup { ifname: ifname.to_string(), errors });
    }
    Ok(out)
}

/// Builds desired sessions from live sessions and their facts (`None` facts: the row is gone).
pub fn desired_sessions(live: &[LiveSession], facts: &[ConnectionFacts]) -> Vec<DesiredSession> {
    let by_id: BTreeMap<i64, &ConnectionFacts> = facts.iter().map(|f| (f.id, f)).collect();
    let mut seen_ip: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = Vec::new();
    for LiveSession { mapping: m, ifindex } in live {
        // Two VALID mappings claiming one address cannot both be right: the first wins, the
        // other is left to the kernel's default drop.
        if !seen_ip.insert(m.client_ip) {
            tracing::error!(ifname = %m.ppp_if, client_ip = %m.client_ip, "two sessions claim the same client address");
            continue;
        }
        out.push(DesiredSession {
            ifname: m.ppp_if.clone(),
            ifindex: *ifindex,
            client_ip: m.client_ip,
            connection_id: m.connection_id,
            pppd_pid: Some(m.pppd_pid),
            policy: decide(by_id.get(&m.connection_id).copied()),
        });
    }
    out
}

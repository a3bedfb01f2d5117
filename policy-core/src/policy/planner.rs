//! The planner: `diff(desired, kernel as read back) → Plan`, a pure function.
//!
//! Ordering keeps every session fail-closed while a plan is applied:
//! 1. one nft transaction with every change that makes a session *more* restricted (into
//!    blocked/pending, FULL → RESTRICTED, or leaving a set for good), so nothing passes longer than
//!    its new policy allows;
//! 2. removal of rules, then routes, that are no longer wanted;
//! 3. tc changes (shaping installed before the session is opened);
//! 4. new routes and rules;
//! 5. one nft transaction with every change that *opens* a session (pending → FULL/RESTRICTED,
//!    RESTRICTED → FULL). Releasing the connect gate is part of this last transaction: the gate
//!    goes only after everything else is in place.
//!
//! Each session's membership change (leave the old set, join the new one) is in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::kernel::{
    ifb_name, ifb_owner, Member, NftSet, NftState, OwnedRoute, OwnedRule, RouteQuery, SetChange, Shaping, TcState,
};
use crate::policy::model::{PbrSpec, Policy, PolicyState};

/// Main routing table id.
pub const MAIN_TABLE: u32 = 254;

/// One session's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredSession {
    pub ifname: String,
    /// The session interface's index: nft membership is bound to it ([`Member`]).
    pub ifindex: u32,
    pub client_ip: Ipv4Addr,
    pub connection_id: i64,
    pub pppd_pid: Option<u32>,
    pub policy: Policy,
}

/// A policy-routing rule for a whole source subnet (not tied to a session).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SubnetPbr {
    pub name: String,
    pub from: Ipv4Net,
    pub table: u32,
    pub via: Ipv4Addr,
    pub dev: String,
    pub priority: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub sessions: Vec<DesiredSession>,
    pub subnet_pbr: Vec<SubnetPbr>,
}

/// Everything pppgate owns in the kernel, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelView {
    pub nft: NftState,
    pub tc: TcState,
    pub routes: Vec<OwnedRoute>,
    pub rules: Vec<OwnedRule>,
}

impl DesiredSession {
    /// The session's nft member: its address bound to its interface.
    pub fn member(&self) -> Member {
        Member { ifindex: self.ifindex, ip: self.client_ip }
    }
}

/// What a plan may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Reconcile: everything pppgate owns; whatever is not desired is removed.
    All,
    /// Apply for some sessions: only objects of these interfaces / client addresses. Shared
    /// objects (policy-routing tables' default routes) are added when missing, never removed.
    /// `members` are the nft members a session-scope read looks up (point lookups, no dump); a
    /// member of the kernel view is in scope when it is one of them or its address is in `ips`.
    Sessions { ifnames: BTreeSet<String>, ips: BTreeSet<Ipv4Addr>, members: BTreeSet<Member> },
}

impl Scope {
    pub fn of(sessions: &[DesiredSession]) -> Scope {
        Scope::Sessions {
            ifnames: sessions.iter().map(|s| s.ifname.clone()).collect(),
            ips: sessions.iter().map(|s| s.client_ip).collect(),
            members: sessions.iter().map(DesiredSession::member).collect(),
        }
    }

    /// The scope of some members (and their interfaces), e.g. to remove them.
    pub fn of_members(ifnames: BTreeSet<String>, members: BTreeSet<Member>) -> Scope {
        Scope::Sessions { ifnames, ips: members.iter().map(|m| m.ip).collect(), members }
    }
    /// A kernel member is in scope when the scope names it, or its address.
    fn has_member(&self, m: &Member) -> bool {
        match self {
            Scope::All => true,
            Scope::Sessions { members, ips, .. } => members.contains(m) || ips.contains(&m.ip),
        }
    }
    fn has_if(&self, ifname: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Sessions { ifnames, .. } => ifnames.contains(ifname),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// One atomic nft transaction.
    NftTransaction {
        changes: Vec<SetChange>,
    },
    RouteDel {
        route: OwnedRoute,
    },
    RuleDel {
        rule: OwnedRule,
    },
    TcSet {
        ifname: String,
        shaping: Shaping,
    },
    TcClear {
        ifname: String,
    },
    IfbRemove {
        ifb: String,
    },
    RouteAdd {
        route: OwnedRoute,
    },
    RuleAdd {
        rule: OwnedRule,
    },
    /// SQL says the session must end (pppd is signalled; it stays blocked until gone).
    Terminate {
        ifname: String,
        connection_id: i64,
        pppd_pid: Option<u32>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub ops: Vec<Op>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// One line per operation, for `--dry-run` and logs.
    pub fn describe(&self) -> Vec<String> {
        self.ops
            .iter()
            .map(|op| match op {
                Op::NftTransaction { changes } => format!(
                    "nft transaction: {}",
                    changes
                        .iter()
                        .map(|c| format!("{} {} {}", if c.add { "add" } else { "del" }, c.member(), c.set.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Op::RouteDel { route } => format!("route del {}", route_text(route)),
                Op::RouteAdd { route } => format!("route add {}", route_text(route)),
                Op::RuleDel { rule } => format!("rule del {}", rule_text(rule)),
                Op::RuleAdd { rule } => format!("rule add {}", rule_text(rule)),
                Op::TcSet { ifname, shaping } => {
                    format!("tc set {ifname} down {} up {}", rate_text(shaping.down_kbit), rate_text(shaping.up_kbit))
                }
                Op::TcClear { ifname } => format!("tc clear {ifname}"),
                Op::IfbRemove { ifb } => format!("ifb remove {ifb}"),
                Op::Terminate { ifname, connection_id, .. } => {
                    format!("terminate session on {ifname} (connection {connection_id})")
                }
            })
            .collect()
    }
}

fn rate_text(r: Option<u32>) -> String {
    r.map(|k| format!("{k}kbit")).unwrap_or_else(|| "unlimited".into())
}

pub fn route_text(r: &OwnedRoute) -> String {
    let mut s = r.dst.to_string();
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    s.push_str(&format!(" dev {}", r.dev));
    if r.table != MAIN_TABLE {
        s.push_str(&format!(" table {}", r.table));
    }
    if let Some(m) = r.metric {
        s.push_str(&format!(" metric {m}"));
    }
    s
}

pub fn rule_text(r: &OwnedRule) -> String {
    format!("from {} lookup {} priority {}", r.from, r.table, r.priority)
}

/// How open a set is: higher passes more. A session moving to a lower rank is restricted first.
fn openness(set: Option<NftSet>) -> u8 {
    match set {
        None | Some(NftSet::Pending) | Some(NftSet::Blocked) => 0,
        Some(NftSet::Restricted) => 1,
        Some(NftSet::Full) => 2,
    }
}

/// The table default route a policy-routing spec needs.
fn table_route(table: u32, via: Ipv4Addr, dev: &str) -> OwnedRoute {
    OwnedRoute { dst: Ipv4Net::default(), gateway: Some(via), dev: dev.to_string(), table, metric: None }
}

/// What the kernel identifies an IPv4 route by (a metric of 0 is no metric).
type RouteKey = (Ipv4Net, u32, Option<u32>);

fn route_key(r: &OwnedRoute) -> RouteKey {
    r.key()
}

/// Kernel objects one session wants.
fn session_objects(s: &DesiredSession) -> (Vec<OwnedRoute>, Vec<OwnedRule>, Vec<OwnedRoute>) {
    let mut routes = Vec::new();
    let mut rules = Vec::new();
    let mut table_routes = Vec::new();
    if s.policy.state == PolicyState::Full {
        for r in &s.policy.routes {
            routes.push(OwnedRoute {
                dst: r.dst,
                gateway: r.gateway,
                dev: s.ifname.clone(),
                table: r.table.unwrap_or(MAIN_TABLE),
                // The kernel reports priority 0 as no priority at all.
                metric: r.metric.filter(|m| *m != 0),
            });
        }
        for PbrSpec { table, via, dev, priority, .. } in &s.policy.pbr {
            rules.push(OwnedRule {
                from: Ipv4Net::new(s.client_ip, 32).expect("32 is a valid prefix"),
                table: *table,
                priority: *priority,
            });
            table_routes.push(table_route(*table, *via, dev));
        }
    }
    (routes, rules, table_routes)
}

/// The routes a plan for `desired` in session scope can look at: those on the scope's interfaces
/// and the default routes of the policy-routing tables the sessions want or that a rule of
/// theirs (`rules`, as read) points at. Reading only these keeps a session-scope apply
/// independent of how many sessions the box has.
/// (A table default whose rules all went away outside this scope is reconcile's to remove.)
pub fn route_query(desired: &Desired, scope: &Scope, rules: &[OwnedRule]) -> RouteQuery {
    let mut q = RouteQuery::default();
    let Scope::Sessions { ifnames, ips, .. } = scope else { return q };
    q.ifnames = ifnames.clone();
    // Not the routes to the destinations the sessions want: a dump of their table would grow
    // with every route pppgate has there. Whether another interface holds one is found when it
    // is added (`Routes::add_unless_held`), and `engine::converge` tells verification.
    for s in &desired.sessions {
        let (_, _, table_routes) = session_objects(s);
        q.table_defaults.extend(table_routes.iter().map(|r| r.table));
    }
    for u in rules {
        if u.from.prefix_len() == 32 && ips.contains(&u.from.addr()) {
            q.table_defaults.insert(u.table);
        }
    }
    q
}

/// Computes the plan that turns `actual` into `desired` within `scope`.
pub fn plan(desired: &Desired, actual: &KernelView, scope: &Scope) -> Plan {
    let (restrict, open) = plan_membership(desired, actual, scope);
    let tc_ops = plan_shaping(desired, actual, scope);
    let wanted = wanted_routing(desired, actual, scope);
    let routing = plan_routing(&wanted, actual, scope);
    let terminate = plan_terminations(desired);

    let mut ops = Vec::new();
    if !restrict.is_empty() {
        ops.push(Op::NftTransaction { changes: restrict });
    }
    // Rules before routes: a rule never points at a table whose default route is already gone.
    ops.extend(routing.rule_dels);
    ops.extend(routing.route_dels);
    ops.extend(tc_ops);
    ops.extend(routing.route_adds);
    ops.extend(routing.rule_adds);
    if !open.is_empty() {
        ops.push(Op::NftTransaction { changes: open });
    }
    ops.extend(terminate);
    Plan { ops }
}

/// nft membership: the set changes that make a session more restricted (first transaction) and
/// those that open one (last transaction).
fn plan_membership(desired: &Desired, actual: &KernelView, scope: &Scope) -> (Vec<SetChange>, Vec<SetChange>) {
    let mut restrict: Vec<SetChange> = Vec::new();
    let mut open: Vec<SetChange> = Vec::new();
    // A member is a session's address bound to its interface. A member of the kernel that no
    // session wants (an interface that is gone, an address it no longer carries) is removed in
    // the first, restricting transaction.
    let mut want_set: BTreeMap<Member, NftSet> = BTreeMap::new();
    for s in &desired.sessions {
        want_set.insert(s.member(), NftSet::for_state(s.policy.state));
    }
    let mut members: BTreeSet<Member> = want_set.keys().copied().collect();
    for m in actual.nft.members.values() {
        members.extend(m.iter().copied().filter(|m| scope.has_member(m)));
    }
    for m in members {
        let have = actual.nft.sets_of(m);
        let want = want_set.get(&m).copied();
        let mut changes: Vec<SetChange> = Vec::new();
        for set in &have {
            if Some(*set) != want {
                changes.push(SetChange::new(*set, m, false));
            }
        }
        if let Some(w) = want {
            if !have.contains(&w) {
                changes.push(SetChange::new(w, m, true));
            }
        }
        if changes.is_empty() {
            continue;
        }
        // The most open set the address is in now vs. the one it will be in.
        let now_open = have.iter().map(|s| openness(Some(*s))).max().unwrap_or(0);
        // Being in several sets at once: the drop rules win, so any pending/blocked membership
        // means the address passes nothing now.
        let now_open = if have.iter().any(|s| openness(Some(*s)) == 0) { 0 } else { now_open };
        if openness(want) < now_open || want.is_none() {
            restrict.extend(changes);
        } else {
            open.extend(changes);
        }
    }
    (restrict, open)
}

/// tc: shaping to set or clear, and IFBs whose session is gone.
fn plan_shaping(desired: &Desired, actual: &KernelView, scope: &Scope) -> Vec<Op> {
    let mut tc_ops = Vec::new();
    let mut want_tc: BTreeMap<&str, Shaping> = BTreeMap::new();
    for s in &desired.sessions {
        if matches!(s.policy.state, PolicyState::Full | PolicyState::Restricted) && !s.policy.speed.is_unlimited() {
            want_tc.insert(&s.ifname, s.policy.speed.into());
        }
    }
    let desired_ifs: BTreeSet<&str> = desired.sessions.iter().map(|s| s.ifname.as_str()).collect();
    for (ifname, shaping) in &want_tc {
        // Shaping in the HTB layout of earlier versions is rewritten even at the same rates.
        if actual.tc.shaping.get(*ifname) != Some(shaping) || actual.tc.legacy.contains(*ifname) {
            tc_ops.push(Op::TcSet { ifname: ifname.to_string(), shaping: *shaping });
        }
    }
    for ifname in actual.tc.shaping.keys() {
        if scope.has_if(ifname) && !want_tc.contains_key(ifname.as_str()) {
            tc_ops.push(Op::TcClear { ifname: ifname.clone() });
        }
    }
    // IFBs whose session is gone (and whose shaping entry did not already clear them).
    let cleared: BTreeSet<String> = tc_ops
        .iter()
        .filter_map(|op| match op {
            Op::TcClear { ifname } => Some(ifb_name(ifname)),
            _ => None,
        })
        .collect();
    for ifb in &actual.tc.ifbs {
        let owner = ifb_owner(ifb);
        let wanted_up = want_tc.get(owner).is_some_and(|s| s.up_kbit.is_some());
        if scope.has_if(owner) && !wanted_up && !cleared.contains(ifb) {
            let owner_has_entry = actual.tc.shaping.contains_key(owner);
            if !owner_has_entry || !desired_ifs.contains(owner) {
                tc_ops.push(Op::IfbRemove { ifb: ifb.clone() });
            }
        }
    }
    tc_ops
}

/// Routes and rules the desired state wants: per-session routes (one owner per kernel route
/// key), rules, and the shared per-table default routes of policy routing.
struct WantedRouting {
    routes: BTreeSet<OwnedRoute>,
    rules: BTreeSet<OwnedRule>,
    shared: BTreeSet<OwnedRoute>,
}

fn wanted_routing(desired: &Desired, actual: &KernelView, scope: &Scope) -> WantedRouting {
    // The kernel keeps one route per (destination, table, metric): adding a second replaces the
    // first. Two sessions wanting the same destination (one login online twice, or two users
    // given the same subnet) would take it from each other on every run and never verify, so
    // the first session in desired order keeps it; in session scope, a route that an interface
    // outside the scope holds stays where it is.
    let mut by_key: BTreeMap<RouteKey, OwnedRoute> = BTreeMap::new();
    let mut want_rules: BTreeSet<OwnedRule> = BTreeSet::new();
    let mut shared_routes: BTreeSet<OwnedRoute> = BTreeSet::new();
    for s in &desired.sessions {
        let (r, u, t) = session_objects(s);
        for route in r {
            by_key.entry(route_key(&route)).or_insert(route);
        }
        want_rules.extend(u);
        shared_routes.extend(t);
    }
    if let Scope::Sessions { .. } = scope {
        by_key.retain(|k, want| {
            !actual.routes.iter().any(|a| route_key(a) == *k && a.dev != want.dev && !scope.has_if(&a.dev))
        });
    }
    let want_routes: BTreeSet<OwnedRoute> = by_key.into_values().collect();
    if *scope == Scope::All {
        for p in &desired.subnet_pbr {
            want_rules.insert(OwnedRule { from: p.from, table: p.table, priority: p.priority });
            shared_routes.insert(table_route(p.table, p.via, &p.dev));
        }
    }
    // One default route per table: the first spec wins (pbr add refuses conflicting ones).
    let mut per_table: BTreeMap<u32, OwnedRoute> = BTreeMap::new();
    for r in shared_routes {
        per_table.entry(r.table).or_insert(r);
    }
    let shared: BTreeSet<OwnedRoute> = per_table.into_values().collect();
    WantedRouting { routes: want_routes, rules: want_rules, shared }
}

/// The route and rule changes, in the order they are applied.
struct RoutingOps {
    rule_dels: Vec<Op>,
    route_dels: Vec<Op>,
    route_adds: Vec<Op>,
    rule_adds: Vec<Op>,
}

fn plan_routing(wanted: &WantedRouting, actual: &KernelView, scope: &Scope) -> RoutingOps {
    let (want_routes, want_rules, shared) = (&wanted.routes, &wanted.rules, &wanted.shared);
    let mut route_dels = Vec::new();
    let mut rule_dels = Vec::new();
    let mut route_adds = Vec::new();
    let mut rule_adds = Vec::new();
    let actual_routes: BTreeSet<&OwnedRoute> = actual.routes.iter().collect();
    let actual_rules: BTreeSet<&OwnedRule> = actual.rules.iter().collect();

    for r in want_routes.iter().chain(shared.iter()) {
        if !actual_routes.contains(r) {
            route_adds.push(Op::RouteAdd { route: r.clone() });
        }
    }
    for u in want_rules {
        if !actual_rules.contains(u) {
            rule_adds.push(Op::RuleAdd { rule: u.clone() });
        }
    }
    // Tables some rule still points at once this plan is applied.
    let mut tables_in_use: BTreeSet<u32> = want_rules.iter().map(|u| u.table).collect();
    for u in &actual.rules {
        if want_rules.contains(u) {
            continue;
        }
        let in_scope = match scope {
            Scope::All => true,
            Scope::Sessions { ips, .. } => u.from.prefix_len() == 32 && ips.contains(&u.from.addr()),
        };
        if in_scope {
            rule_dels.push(Op::RuleDel { rule: u.clone() });
        } else {
            tables_in_use.insert(u.table);
        }
    }
    let shared_tables: BTreeSet<u32> = shared.iter().map(|r| r.table).collect();
    for r in &actual.routes {
        if want_routes.contains(r) || shared.contains(r) {
            continue;
        }
        let is_table_default = r.dst == Ipv4Net::default() && r.gateway.is_some() && r.table != MAIN_TABLE;
        let in_scope = match scope {
            Scope::All => true,
            // A table's default route belongs to policy routing, shared by sessions and subnet
            // rules: in session scope it is replaced when a wanted one for the same table
            // differs, and removed once no rule points at the table any more.
            Scope::Sessions { .. } if is_table_default => {
                shared_tables.contains(&r.table) || !tables_in_use.contains(&r.table)
            }
            Scope::Sessions { .. } => scope.has_if(&r.dev),
        };
        if in_scope {
            route_dels.push(Op::RouteDel { route: r.clone() });
        }
    }
    RoutingOps { rule_dels, route_dels, route_adds, rule_adds }
}

/// Sessions whose pppd is to be signalled.
fn plan_terminations(desired: &Desired) -> Vec<Op> {
    let mut terminate = Vec::new();
    for s in &desired.sessions {
        if s.policy.state == PolicyState::Terminate {
            terminate.push(Op::Terminate {
                ifname: s.ifname.clone(),
                connection_id: s.connection_id,
                pppd_pid: s.pppd_pid,
            });
        }
    }
    terminate
}

/// A plan is verified when re-planning against the kernel read back after applying it finds
/// nothing left to do (terminations excepted: they complete asynchronously).
pub fn residue(desired: &Desired, after: &KernelView, scope: &Scope) -> Plan {
    let mut p = plan(desired, after, scope);
    p.ops.retain(|op| !matches!(op, Op::Terminate { .. }));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{decide, tests::facts, Reason, RouteSpec, Speed};

    fn sess(n: u8, state_facts: impl FnOnce(&mut crate::policy::model::ConnectionFacts)) -> DesiredSession {
        let mut f = facts(n as i64);
        state_facts(&mut f);
        DesiredSession {
            ifname: format!("ppp{n}"),
            ifindex: 100 + u32::from(n),
            client_ip: Ipv4Addr::new(198, 51, 100, 10 + n),
            connection_id: n as i64,
            pppd_pid: Some(1000 + n as u32),
            policy: decide(Some(&f)),
        }
    }

    /// Applies a plan to a view the way the kernel would (the recording backend in miniature),
    /// so tests can check that applying a plan converges.
    fn simulate(view: &KernelView, plan: &Plan) -> KernelView {
        let mut v = view.clone();
        for op in &plan.ops {
            match op {
                Op::NftTransaction { changes } => {
                    for c in changes {
                        let m = v.nft.members.entry(c.set).or_default();
                        if c.add {
                            m.insert(c.member());
                        } else {
                            m.remove(&c.member());
                        }
                    }
                }
                Op::RouteAdd { route } => v.routes.push(route.clone()),
                Op::RouteDel { route } => v.routes.retain(|r| r != route),
                Op::RuleAdd { rule } => v.rules.push(rule.clone()),
                Op::RuleDel { rule } => v.rules.retain(|r| r != rule),
                Op::TcSet { ifname, shaping } => {
                    v.tc.shaping.insert(ifname.clone(), *shaping);
                    v.tc.legacy.remove(ifname);
                    if shaping.up_kbit.is_some() {
                        v.tc.ifbs.insert(ifb_name(ifname));
                    } else {
                        v.tc.ifbs.remove(&ifb_name(ifname));
                    }
                }
                Op::TcClear { ifname } => {
                    v.tc.shaping.remove(ifname);
                    v.tc.legacy.remove(ifname);
                    v.tc.ifbs.remove(&ifb_name(ifname));
                }
                Op::IfbRemove { ifb } => {
                    v.tc.ifbs.remove(ifb);
                }
                Op::Terminate { .. } => {}
            }
        }
        v.nft.members.retain(|_, m| !m.is_empty());
        v
    }

    fn converge(desired: &Desired, view: &KernelView, scope: &Scope) -> KernelView {
        let p = plan(desired, view, scope);
        let after = simulate(view, &p);
        assert!(residue(desired, &after, scope).is_empty(), "plan did not converge: {:?}", p.describe());
        after
    }

    fn gated(m: Member) -> KernelView {
        let mut v = KernelView::default();
        v.nft.members.entry(NftSet::Pending).or_default().insert(m);
        v
    }

    #[test]
    fn connect_releases_the_gate_last_in_one_transaction() {
        let s = sess(1, |_| {});
        let desired = Desired { sessions: vec![s.clone()], subnet_pbr: vec![] };
        let p = plan(&desired, &gated(s.member()), &Scope::of(&desired.sessions));
        let d = p.describe();
        assert_eq!(d.first().unwrap(), "tc set ppp1 down 8000kbit up 2000kbit");
        assert_eq!(d[1], "route add 192.168.50.0/24 dev ppp1");
        assert_eq!(
            d.last().unwrap(),
            "nft transaction: del 198.51.100.11 (if 101) connect_pending_v4, add 198.51.100.11 (if 101) full_v4"
        );
        assert_eq!(p.ops.len(), 3);
    }

    #[test]
    fn nothing_to_do_when_converged() {
        let desired =
            Desired { sessions: vec![sess(1, |_| {}), sess(2, |f| f.manual_block = true)], subnet_pbr: vec![] };
        let after = converge(&desired, &KernelView::default(), &Scope::All);
        assert!(plan(&desired, &after, &Scope::All).is_empty());
        assert!(plan(&desired, &after, &Scope::of(&desired.sessions)).is_empty());
    }

    #[test]
    fn every_state_transition_converges_and_restricts_first() {
        type Edit = fn(&mut crate::policy::model::ConnectionFacts);
        let states: Vec<(&str, Edit)> = vec![
            ("full", |_| {}),
            ("restricted", |f| f.status = crate::policy::model::Status::Preprovisioned),
            ("blocked", |f| f.manual_block = true),
            ("terminate", |f| f.status = crate::policy::model::Status::Disabled),
        ];
        for (from_name, from) in &states {
            for (to_name, to) in &states {
                let a = sess(1, *from);
                let b = sess(1, *to);
                let start = converge(
                    &Desired { sessions: vec![a.clone()], subnet_pbr: vec![] },
                    &gated(a.member()),
                    &Scope::All,
                );
                let desired = Desired { sessions: vec![b.clone()], subnet_pbr: vec![] };
                let p = plan(&desired, &start, &Scope::of(&desired.sessions));
                let after = converge(&desired, &start, &Scope::of(&desired.sessions));
                let want = NftSet::for_state(b.policy.state);
                assert_eq!(after.nft.sets_of(b.member()), BTreeSet::from([want]), "{from_name}->{to_name}");
                // A transition to a more restrictive state puts its nft change first.
                let restricting = openness(Some(want)) < openness(Some(NftSet::for_state(a.policy.state)));
                if restricting {
                    assert!(
                        matches!(p.ops.first(), Some(Op::NftTransaction { .. })),
                        "{from_name}->{to_name}: {:?}",
                        p.describe()
                    );
                }
                let has_routes = after.routes.iter().any(|r| r.dev == "ppp1");
                assert_eq!(has_routes, b.policy.state == PolicyState::Full, "{from_name}->{to_name}");
                let shaped = after.tc.shaping.contains_key("ppp1");
                assert_eq!(
                    shaped,
                    matches!(b.policy.state, PolicyState::Full | PolicyState::Restricted),
                    "{from_name}->{to_name}"
                );
                let terminates = p.ops.iter().any(|o| matches!(o, Op::Terminate { .. }));
                assert_eq!(terminates, *to_name == "terminate");
            }
        }
    }

    #[test]
    fn speed_change_is_one_tc_set() {
        let s = sess(1, |_| {});
        let desired = Desired { sessions: vec![s.clone()], subnet_pbr: vec![] };
        let start = converge(&desired, &gated(s.member()), &Scope::All);
        let faster = sess(1, |f| f.rate_down_kbit = Some(20_000));
        let p = plan(&Desired { sessions: vec![faster], subnet_pbr: vec![] }, &start, &Scope::All);
        assert_eq!(p.describe(), vec!["tc set ppp1 down 20000kbit up 2000kbit"]);
        let unlimited = sess(1, |f| {
            f.rate_down_kbit = None;
            f.rate_up_kbit = None
        });
        let p = plan(&Desired { sessions: vec![unlimited], subnet_pbr: vec![] }, &start, &Scope::All);
        assert_eq!(p.describe(), vec!["tc clear ppp1"]);
    }

    #[test]
    fn shaping_in_the_htb_layout_of_earlier_versions_is_rewritten_once() {
        let s = sess(1, |_| {});
        let desired = Desired { sessions: vec![s.clone()], subnet_pbr: vec![] };
        let mut start = converge(&desired, &gated(s.member()), &Scope::All);
        start.tc.legacy.insert("ppp1".into());
        let p = plan(&desired, &start, &Scope::All);
        assert_eq!(p.describe(), vec!["tc set ppp1 down 8000kbit up 2000kbit"], "same rates, rewritten");
        let after = converge(&desired, &start, &Scope::All);
        assert!(after.tc.legacy.is_empty());
        assert!(plan(&desired, &after, &Scope::All).is_empty());
        // A legacy session whose shaping is no longer wanted is cleared.
        let unlimited = sess(1, |f| {
            f.rate_down_kbit = None;
            f.rate_up_kbit = None
        });
        let p = plan(&Desired { sessions: vec![unlimited], subnet_pbr: vec![] }, &start, &Scope::All);
        assert_eq!(p.describe(), vec!["tc clear ppp1"]);
    }

    #[test]
    fn reconcile_removes_state_of_gone_sessions_only_in_scope_all() {
        let a = sess(1, |_| {});
        let b = sess(2, |f| f.pbr = vec![pbr()]);
        let both = Desired { sessions: vec![a.clone(), b.clone()], subnet_pbr: vec![] };
        let start = converge(&both, &KernelView::default(), &Scope::All);
        assert!(start.rules.len() == 1 && start.routes.iter().any(|r| r.table == 100));
        let only_a = Desired { sessions: vec![a.clone()], subnet_pbr: vec![] };
        // Applying for session a does not touch b.
        assert!(plan(&only_a, &start, &Scope::of(&only_a.sessions)).is_empty());
        // Reconcile removes everything of b: membership, tc, IFB, routes, rule, table route.
        let after = converge(&only_a, &start, &Scope::All);
        assert!(after.nft.sets_of(b.member()).is_empty());
        assert!(!after.tc.shaping.contains_key("ppp2"));
        assert!(!after.tc.ifbs.contains("pgi-ppp2"));
        assert!(after.routes.iter().all(|r| r.dev != "ppp2" && r.table != 100));
        assert!(after.rules.is_empty());
    }

    #[test]
    fn table_route_goes_with_the_last_rule_pointing_at_it() {
        let a = sess(1, |f| f.pbr = vec![pbr()]);
        let b = sess(2, |f| f.pbr = vec![pbr()]);
        let both = Desired { sessions: vec![a.clone(), b.clone()], subnet_pbr: vec![] };
        let start = converge(&both, &KernelView::default(), &Scope::All);
        // a loses its policy routing: its rule goes, the table route stays (b still uses it).
        let a_plain = sess(1, |_| {});
        let only = Desired { sessions: vec![a_plain.clone()], subnet_pbr: vec![] };
        let after = converge(&only, &start, &Scope::of(&only.sessions));
        assert_eq!(after.rules.len(), 1);
        assert!(after.routes.iter().any(|r| r.table == 100));
        // b loses it too: the last rule and the table's default route go.
        let b_plain = sess(2, |_| {});
        let only = Desired { sessions: vec![b_plain.clone()], subnet_pbr: vec![] };
        let after = converge(&only, &after, &Scope::of(&only.sessions));
        assert!(after.rules.is_empty());
        assert!(after.routes.iter().all(|r| r.table != 100), "{:?}", after.routes);
    }

    fn pbr() -> PbrSpec {
        PbrSpec { name: "ktn".into(), table: 100, via: Ipv4Addr::new(10, 100, 0, 40), dev: "wg0".into(), priority: 100 }
    }

    #[test]
    fn drift_is_restored() {
        let a = sess(1, |f| f.pbr = vec![pbr()]);
        let desired = Desired { sessions: vec![a.clone()], subnet_pbr: vec![] };
        let good = converge(&desired, &KernelView::default(), &Scope::All);
        let mut drift = good.clone();
        drift.nft.members.clear();
        drift.tc.shaping.clear();
        drift.routes.clear();
        drift.rules.clear();
        let after = converge(&desired, &drift, &Scope::All);
        assert_eq!(after.nft, good.nft);
        assert_eq!(after.tc, good.tc);
        let sorted = |mut v: Vec<OwnedRoute>| {
            v.sort();
            v
        };
        assert_eq!(sorted(after.routes.clone()), sorted(good.routes.clone()));
        assert_eq!(after.rules, good.rules);
    }

    #[test]
    fn stray_memberships_and_double_membership_are_fixed() {
        let a = sess(1, |_| {});
        let mut v = KernelView::default();
        let stray = Member::new(7, Ipv4Addr::new(10, 9, 9, 9));
        // The same address bound to another (gone) interface: a dead session's member.
        let dead = Member::new(5, a.client_ip);
        v.nft.members.entry(NftSet::Full).or_default().extend([a.member(), dead]);
        v.nft.members.entry(NftSet::Blocked).or_default().insert(a.member());
        v.nft.members.entry(NftSet::Pending).or_default().insert(stray);
        let desired = Desired { sessions: vec![a.clone()], subnet_pbr: vec![] };
        let p = plan(&desired, &v, &Scope::All);
        let after = converge(&desired, &v, &Scope::All);
        assert_eq!(after.nft.sets_of(a.member()), BTreeSet::from([NftSet::Full]));
        assert!(after.nft.sets_of(stray).is_empty());
        assert!(after.nft.sets_of(dead).is_empty(), "the dead session's member goes");
        // Removing members is restricting: it is in the first transaction.
        let Some(Op::NftTransaction { changes }) = p.ops.first() else { panic!("{:?}", p.describe()) };
        assert!(changes.iter().any(|c| c.member() == dead && !c.add), "{:?}", p.describe());
    }

    #[test]
    fn subnet_pbr_only_in_reconcile() {
        let desired = Desired {
            sessions: vec![],
            subnet_pbr: vec![SubnetPbr {
                name: "ktn".into(),
                from: "10.200.0.0/24".parse().unwrap(),
                table: 100,
                via: Ipv4Addr::new(10, 100, 0, 40),
                dev: "wg0".into(),
                priority: 100,
            }],
        };
        let p = plan(&desired, &KernelView::default(), &Scope::All);
        assert_eq!(
            p.describe(),
            vec![
                "route add 0.0.0.0/0 via 10.100.0.40 dev wg0 table 100",
                "rule add from 10.200.0.0/24 lookup 100 priority 100"
            ]
        );
        let empty = Scope::of(&[]);
        assert!(plan(&desired, &KernelView::default(), &empty).is_empty());
    }

    #[test]
    fn route_change_replaces_old_route() {
        let a = sess(1, |_| {});
        let desired = Desired { sessions: vec![a.clone()], subnet_pbr: vec![] };
        let start = converge(&desired, &gated(a.member()), &Scope::All);
        let moved = sess(1, |f| {
            f.routes = vec![RouteSpec {
                dst: "192.168.60.0/24".parse().unwrap(),
                gateway: None,
                table: Some(200),
                metric: Some(5),
            }]
        });
        let p = plan(&Desired { sessions: vec![moved.clone()], subnet_pbr: vec![] }, &start, &Scope::of(&[moved]));
        assert_eq!(
            p.describe(),
            vec!["route del 192.168.50.0/24 dev ppp1", "route add 192.168.60.0/24 dev ppp1 table 200 metric 5"]
        );
    }

    #[test]
    fn one_route_per_kernel_key() {
        let route = RouteSpec { dst: "10.10.0.0/24".parse().unwrap(), gateway: None, table: None, metric: Some(0) };
        let a = sess(1, |f| f.routes = vec![route.clone()]);
        let mut b = sess(2, |f| f.routes = vec![route.clone()]);
        b.connection_id = 1;
        let desired = Desired { sessions: vec![a.clone(), b.clone()], subnet_pbr: vec![] };
        let after = converge(&desired, &KernelView::default(), &Scope::All);
        let r: Vec<&OwnedRoute> = after.routes.iter().filter(|r| r.dst.to_string() == "10.10.0.0/24").collect();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].dev.as_str(), r[0].metric), ("ppp1", None), "first session wins; metric 0 is none");
        // Applying for the second session alone does not take the route from the first.
        let only_b = Desired { sessions: vec![b.clone()], subnet_pbr: vec![] };
        assert!(plan(&only_b, &after, &Scope::of(&only_b.sessions))
            .ops
            .iter()
            .all(|o| !matches!(o, Op::RouteAdd { .. })));
        // When the first session is gone, the second gets it.
        let mut gone = after.clone();
        gone.routes.retain(|r| r.dev != "ppp1");
        let after = converge(&only_b, &gone, &Scope::All);
        assert!(after.routes.iter().any(|r| r.dev == "ppp2" && r.dst.to_string() == "10.10.0.0/24"));
    }

    #[test]
    fn gated_policy_keeps_the_gate_and_nothing_else() {
        let mut s = sess(1, |_| {});
        s.policy = Policy::gated();
        assert_eq!(s.policy.reason, Reason::Pending);
        assert_eq!(s.policy.speed, Speed::default());
        let desired = Desired { sessions: vec![s.clone()], subnet_pbr: vec![] };
        assert!(plan(&desired, &gated(s.member()), &Scope::All).is_empty());
    }
}

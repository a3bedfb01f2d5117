//! The recording backend: every trait of [`super`] implemented against an in-memory fake kernel,
//! with every call recorded, so planner and engine tests are pure (no root, no namespaces).
//!
//! The fake follows the real backends' contracts, as the kernel tests pin them down:
//! * nft: `commit` is all-or-nothing and the last change per (set, member) wins; removing an
//!   absent member is fine; `sets_of` without a table is an error; `ensure_base` keeps members
//!   and stores the garden normalized ([`normalize_garden`]).
//! * tc: `set` on an interface that does not exist is an error, `clear` of one is not; an
//!   unlimited direction removes that side (and the IFB with the upload side).
//! * routes: `add` replaces a route with the same (dst, table, metric) key and needs the
//!   device; `del` of an absent route is fine. Rules: `add` twice leaves one rule.
//! * sysctl: strict (1) becomes loose (2); 0 and 2 stay.
//!
//! Faults are injected with [`Recording::fail_when`]: a matching call is recorded, changes
//! nothing and returns an error. [`Recording::drop_when`] makes matching changes vanish silently
//! (recorded, no effect, `Ok`): a kernel that acknowledges and does not do, which only the
//! engine's read-back verification can catch.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::nft::normalize_garden;
use super::tc::ifb_for;
use super::{
    Backends, Member, Nft, NftSet, NftState, OwnedRoute, OwnedRule, Routes, Rules, SetChange, Shaping, Sysctl,
    SysctlReport, Tc, TcState,
};
use crate::config::GardenEntry;
use crate::error::{Error, Result};

/// One call a backend received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Call {
    NftEnsureBase(Vec<GardenEntry>),
    NftRead,
    NftSetsOf(Member),
    NftCommit(Vec<SetChange>),
    TcRead,
    TcReadOne(String),
    TcSet(String, Shaping),
    TcClear(String),
    TcRemoveIfb(String),
    RoutesRead,
    RouteAdd(OwnedRoute),
    RouteDel(OwnedRoute),
    RulesRead,
    RuleAdd(OwnedRule),
    RuleDel(OwnedRule),
    SysctlRead(Vec<String>),
    SysctlEnsure(Vec<String>),
}

impl Call {
    /// Whether the call changes kernel state (reads do not).
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Call::NftRead
                | Call::NftSetsOf(_)
                | Call::TcRead
                | Call::TcReadOne(_)
                | Call::RoutesRead
                | Call::RulesRead
                | Call::SysctlRead(_)
        )
    }
}

/// Forwarding sysctls of the fake kernel, as the files hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeSysctl {
    pub ip_forward: bool,
    pub rp_all: u8,
    pub rp_default: u8,
    /// Each interface's own value (interfaces not listed read as `rp_default`).
    pub rp_if: BTreeMap<String, u8>,
}

impl Default for FakeSysctl {
    /// A box not yet prepared: forwarding off, strict rp_filter on `default` (as many
    /// distributions set it), so new interfaces start strict.
    fn default() -> Self {
        FakeSysctl { ip_forward: false, rp_all: 0, rp_default: 1, rp_if: BTreeMap::new() }
    }
}

/// The fake kernel's state. Tests set it up directly and inspect it after the calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FakeKernel {
    /// Whether `inet pppgate` exists at all (`nft.base_ok` says whether its layout is current).
    pub nft_table: bool,
    pub nft: NftState,
    pub tc: TcState,
    pub routes: BTreeSet<OwnedRoute>,
    pub rules: BTreeSet<OwnedRule>,
    pub sysctl: FakeSysctl,
    /// Network interfaces that exist.
    pub interfaces: BTreeSet<String>,
}

type FaultFn = Box<dyn FnMut(&Call) -> bool>;

/// All backends at once, against a [`FakeKernel`].
#[derive(Default)]
pub struct Recording {
    pub kernel: FakeKernel,
    pub calls: Vec<Call>,
    faults: Vec<FaultFn>,
    drops: Vec<FaultFn>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("kernel", &self.kernel).field("calls", &self.calls).finish_non_exhaustive()
    }
}

fn injected(call: &Call) -> Error {
    Error::Netlink {
        op: format!("recording backend: injected failure of {call:?}"),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

impl Recording {
    pub fn new() -> Recording {
        Recording::default()
    }

    /// A fake kernel with these interfaces (session interfaces must exist for tc and routes).
    pub fn with_interfaces<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Recording {
        let mut r = Recording::new();
        for n in names {
            r.add_interface(n);
        }
        r
    }

    /// An interface appears (a session comes up).
    pub fn add_interface(&mut self, name: impl Into<String>) {
        let name = name.into();
        let d = self.kernel.sysctl.rp_default;
        self.kernel.sysctl.rp_if.entry(name.clone()).or_insert(d);
        self.kernel.interfaces.insert(name);
    }

    /// An interface vanishes (pppd exited): its qdiscs and routes go with it; its IFB stays.
    pub fn remove_interface(&mut self, name: &str) {
        self.kernel.interfaces.remove(name);
        self.kernel.tc.shaping.remove(name);
        self.kernel.routes.retain(|r| r.dev != name);
        self.kernel.sysctl.rp_if.remove(name);
    }

    /// Calls for which `pred` is true fail (recorded, no effect) from now on.
    pub fn fail_when(&mut self, pred: impl FnMut(&Call) -> bool + 'static) {
        self.faults.push(Box::new(pred));
    }

    /// Changes for which `pred` is true are acknowledged but have no effect from now on (reads
    /// are never dropped).
    pub fn drop_when(&mut self, pred: impl FnMut(&Call) -> bool + 'static) {
        self.drops.push(Box::new(pred));
    }

    /// Removes every fault and every drop.
    pub fn heal(&mut self) {
        self.faults.clear();
        self.drops.clear();
    }

    /// The calls that changed (or tried to change) something.
    pub fn mutations(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.is_mutation()).collect()
    }

    pub fn clear_calls(&mut self) {
        self.calls.clear();
    }

    /// Records a call; `Err` for an injected failure, `Ok(false)` when the change is to be
    /// dropped silently, `Ok(true)` when it takes effect.
    fn record(&mut self, call: Call) -> Result<bool> {
        let fail = self.faults.iter_mut().any(|f| f(&call));
        let dropped = !fail && call.is_mutation() && self.drops.iter_mut().any(|f| f(&call));
        let err = fail.then(|| injected(&call));
        self.calls.push(call);
        match err {
            Some(e) => Err(e),
            None => Ok(!dropped),
        }
    }

    fn table_missing() -> Error {
        Error::NotFound { what: "nft table", id: "inet pppgate".into() }
    }
}

impl Nft for Recording {
    fn ensure_base_with(&mut self, garden: &[GardenEntry], with: &BTreeMap<Member, NftSet>) -> Result<()> {
        if !self.record(Call::NftEnsureBase(garden.to_vec()))? {
            return Ok(());
        }
        let k = &mut self.kernel;
        let rebuild = !(k.nft_table && k.nft.base_ok);
        k.nft_table = true;
        k.nft.base_ok = true;
        k.nft.garden = normalize_garden(garden);
        for s in NftSet::ALL {
            k.nft.members.entry(s).or_default();
        }
        if rebuild {
            for (m, set) in with {
                for s in k.nft.members.values_mut() {
                    s.remove(m);
                }
                k.nft.members.entry(*set).or_default().insert(*m);
            }
        }
        Ok(())
    }

    fn table_present(&mut self) -> Result<bool> {
        Ok(self.kernel.nft_table)
    }

    fn read(&mut self) -> Result<NftState> {
        self.record(Call::NftRead)?;
        if !self.kernel.nft_table {
            return Ok(NftState::default());
        }
        let mut st = self.kernel.nft.clone();
        for s in NftSet::ALL {
            st.members.entry(s).or_default();
        }
        Ok(st)
    }

    fn sets_of(&mut self, m: Member) -> Result<BTreeSet<NftSet>> {
        self.record(Call::NftSetsOf(m))?;
        if !self.kernel.nft_table {
            return Err(Self::table_missing());
        }
        Ok(self.kernel.nft.sets_of(m))
    }

    fn commit(&mut self, changes: &[SetChange]) -> Result<()> {
        if !self.record(Call::NftCommit(changes.to_vec()))? {
            return Ok(());
        }
        if changes.is_empty() {
            return Ok(());
        }
        if !self.kernel.nft_table {
            return Err(Self::table_missing());
        }
        for c in changes {
            let m = self.kernel.nft.members.entry(c.set).or_default();
            if c.add {
                m.insert(c.member());
            } else {
                m.remove(&c.member());
            }
        }
        Ok(())
    }
}

impl Tc for Recording {
    fn read(&mut self) -> Result<TcState> {
        self.record(Call::TcRead)?;
        Ok(self.kernel.tc.clone())
    }

    fn read_one(&mut self, ifname: &str) -> Result<Shaping> {
        self.record(Call::TcReadOne(ifname.into()))?;
        Ok(self.kernel.tc.shaping.get(ifname).copied().unwrap_or_default())
    }

    fn set(&mut self, ifname: &str, shaping: &Shaping) -> Result<()> {
        if !self.record(Call::TcSet(ifname.into(), *shaping))? {
            return Ok(());
        }
        if !self.kernel.interfaces.contains(ifname) {
            return Err(Error::NotFound { what: "interface", id: ifname.into() });
        }
        let ifb = ifb_for(ifname);
        if shaping.up_kbit.is_some() && ifb.is_none() {
            return Err(Error::invalid("interface name", ifname, "too long for an ifb name"));
        }
        let tc = &mut self.kernel.tc;
        if *shaping == Shaping::default() {
            tc.shaping.remove(ifname);
        } else {
            tc.shaping.insert(ifname.into(), *shaping);
        }
        if let Some(ifb) = ifb {
            if shaping.up_kbit.is_some() {
                tc.ifbs.insert(ifb);
            } else {
                tc.ifbs.remove(&ifb);
            }
        }
        Ok(())
    }

    fn clear(&mut self, ifname: &str) -> Result<()> {
        if !self.record(Call::TcClear(ifname.into()))? {
            return Ok(());
        }
        self.kernel.tc.shaping.remove(ifname);
        if let Some(ifb) = ifb_for(ifname) {
            self.kernel.tc.ifbs.remove(&ifb);
        }
        Ok(())
    }

    fn remove_ifb(&mut self, ifb: &str) -> Result<()> {
        if !self.record(Call::TcRemoveIfb(ifb.into()))? {
            return Ok(());
        }
        if !ifb.starts_with(super::IFB_PREFIX) {
            return Err(Error::invalid("ifb device", ifb, "not a pppgate ifb (pgi-*)"));
        }
        self.kernel.tc.ifbs.remove(ifb);
        Ok(())
    }
}

impl Routes for Recording {
    fn read(&mut self) -> Result<Vec<OwnedRoute>> {
        self.record(Call::RoutesRead)?;
        Ok(self.kernel.routes.iter().cloned().collect())
    }

    fn add(&mut self, r: &OwnedRoute) -> Result<()> {
        if !self.record(Call::RouteAdd(r.clone()))? {
            return Ok(());
        }
        if !self.kernel.interfaces.contains(&r.dev) {
            return Err(Error::NotFound { what: "interface", id: r.dev.clone() });
        }
        // The kernel's key: destination, table, metric (0 = none).
        let metric = r.metric.filter(|m| *m != 0);
        self.kernel.routes.retain(|x| !(x.dst == r.dst && x.table == r.table && x.metric == metric));
        self.kernel.routes.insert(OwnedRoute { metric, ..r.clone() });
        Ok(())
    }

    fn del(&mut self, r: &OwnedRoute) -> Result<()> {
        if !self.record(Call::RouteDel(r.clone()))? {
            return Ok(());
        }
        let metric = r.metric.filter(|m| *m != 0);
        let victim = self.kernel.routes.iter().find(|x| {
            x.dst == r.dst
                && x.table == r.table
                && x.dev == r.dev
                && (r.gateway.is_none() || x.gateway == r.gateway)
                && (metric.is_none() || x.metric == metric)
        });
        if let Some(v) = victim.cloned() {
            self.kernel.routes.remove(&v);
        }
        Ok(())
    }
}

impl Rules for Recording {
    fn read(&mut self) -> Result<Vec<OwnedRule>> {
        self.record(Call::RulesRead)?;
        Ok(self.kernel.rules.iter().cloned().collect())
    }

    fn add(&mut self, r: &OwnedRule) -> Result<()> {
        if !self.record(Call::RuleAdd(r.clone()))? {
            return Ok(());
        }
        self.kernel.rules.insert(r.clone());
        Ok(())
    }

    fn del(&mut self, r: &OwnedRule) -> Result<()> {
        if !self.record(Call::RuleDel(r.clone()))? {
            return Ok(());
        }
        self.kernel.rules.remove(r);
        Ok(())
    }
}

impl Sysctl for Recording {
    fn read(&mut self, ifnames: &[String]) -> Result<SysctlReport> {
        self.record(Call::SysctlRead(ifnames.to_vec()))?;
        let s = &self.kernel.sysctl;
        Ok(SysctlReport {
            ip_forward: s.ip_forward,
            rp_filter_all: s.rp_all,
            rp_filter_default: s.rp_default,
            rp_filter: ifnames
                .iter()
                .filter_map(|n| s.rp_if.get(n).map(|own| (n.clone(), (*own).max(s.rp_all))))
                .collect(),
        })
    }

    fn ensure(&mut self, ifnames: &[String]) -> Result<()> {
        if !self.record(Call::SysctlEnsure(ifnames.to_vec()))? {
            return Ok(());
        }
        let s = &mut self.kernel.sysctl;
        let loosen = |v: &mut u8| {
            if *v == 1 {
                *v = 2
            }
        };
        s.ip_forward = true;
        loosen(&mut s.rp_all);
        loosen(&mut s.rp_default);
        for n in ifnames {
            if let Some(v) = s.rp_if.get_mut(n) {
                loosen(v);
            }
        }
        Ok(())
    }
}

impl Backends for Recording {
    type N = Recording;
    type T = Recording;
    type R = Recording;
    type U = Recording;
    type S = Recording;
    fn nft(&mut self) -> &mut Recording {
        self
    }
    fn tc(&mut self) -> &mut Recording {
        self
    }
    fn routes(&mut self) -> &mut Recording {
        self
    }
    fn rules(&mut self) -> &mut Recording {
        self
    }
    fn sysctl(&mut self) -> &mut Recording {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn nft_contract() {
        let mut r = Recording::new();
        let a = Member::new(3, ip("100.64.0.2"));
        assert!(r.sets_of(a).is_err(), "no table");
        r.ensure_base(&["10.0.0.0/8".parse().unwrap(), "10.1.0.0/16".parse().unwrap()]).unwrap();
        assert_eq!(r.kernel.nft.garden.len(), 1, "normalized");
        r.commit(&[
            SetChange::new(NftSet::Pending, a, true),
            SetChange::new(NftSet::Pending, a, false),
            SetChange::new(NftSet::Full, a, true),
            SetChange::new(NftSet::Blocked, a, false),
        ])
        .unwrap();
        assert_eq!(r.sets_of(a).unwrap(), [NftSet::Full].into_iter().collect());
        assert!(r.sets_of(Member::new(4, a.ip)).unwrap().is_empty(), "bound to its interface");
        r.fail_when(|c| matches!(c, Call::NftCommit(_)));
        assert!(r.commit(&[SetChange::new(NftSet::Full, a, false)]).is_err());
        assert_eq!(r.sets_of(a).unwrap(), [NftSet::Full].into_iter().collect(), "a failed commit changes nothing");
        r.heal();
        let st = Nft::read(&mut r).unwrap();
        assert!(st.base_ok && st.members.len() == 4);
        assert_eq!(r.mutations().len(), 3);
    }

    #[test]
    fn tc_routes_rules_sysctl_contracts() {
        let mut r = Recording::with_interfaces(["ppp0"]);
        assert!(r.set("ppp1", &Shaping { down_kbit: Some(1), up_kbit: None }).is_err());
        r.set("ppp0", &Shaping { down_kbit: Some(1000), up_kbit: Some(500) }).unwrap();
        assert!(r.kernel.tc.ifbs.contains("pgi-ppp0"));
        r.set("ppp0", &Shaping { down_kbit: Some(1000), up_kbit: None }).unwrap();
        assert!(r.kernel.tc.ifbs.is_empty());
        r.clear("ppp9").unwrap();

        let route = OwnedRoute {
            dst: "192.168.50.0/24".parse().unwrap(),
            gateway: None,
            dev: "ppp0".into(),
            table: 254,
            metric: None,
        };
        Routes::add(&mut r, &route).unwrap();
        Routes::add(&mut r, &OwnedRoute { dev: "ppp0".into(), ..route.clone() }).unwrap();
        assert_eq!(Routes::read(&mut r).unwrap().len(), 1);
        assert!(Routes::add(&mut r, &OwnedRoute { dev: "ppp7".into(), ..route.clone() }).is_err());
        Routes::del(&mut r, &route).unwrap();
        Routes::del(&mut r, &route).unwrap();
        assert!(r.kernel.routes.is_empty());

        let rule = OwnedRule { from: "100.64.0.2/32".parse().unwrap(), table: 100, priority: 1000 };
        Rules::add(&mut r, &rule).unwrap();
        Rules::add(&mut r, &rule).unwrap();
        assert_eq!(Rules::read(&mut r).unwrap(), vec![rule.clone()]);

        let names = vec!["ppp0".to_string()];
        assert!(!Sysctl::read(&mut r, &names).unwrap().ok());
        r.ensure(&names).unwrap();
        let rep = Sysctl::read(&mut r, &names).unwrap();
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.rp_filter["ppp0"], 2);

        r.remove_interface("ppp0");
        assert!(r.kernel.tc.shaping.is_empty());
    }
}

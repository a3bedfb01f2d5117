//! Kernel objects pppgate owns, one module per kind, behind traits so the planner can be tested
//! against the recording backend ([`recording`]) and run against the real one ([`Netlink`]).
//!
//! Ownership, so reconcile removes only what is ours:
//! * nftables: the whole table `inet pppgate` (sets per state, chains, rules);
//! * tc: the root TBF qdisc (and the root HTB of earlier versions) and the ingress qdisc on
//!   session interfaces, and the IFB devices named `pgi-<ppp_if>`;
//! * routes and rules: those with protocol [`RTPROT_PPPGATE`].

pub mod links;
pub mod lookup;
pub mod members;
pub mod netlink;
pub mod nft;
pub mod nft_counters;
pub mod recording;
pub mod route;
pub mod rule;
pub mod sysctl;
pub mod tc;
pub mod wg;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

pub use nft::NftNetlink;
pub use route::RoutesNetlink;
pub use rule::RulesNetlink;
pub use sysctl::SysctlProc;
pub use tc::TcNetlink;

use crate::config::GardenEntry;
use crate::error::Result;
use crate::policy::model::{PolicyState, Speed};

/// Route/rule protocol number marking pppgate's routes and rules (`ip route ... proto 77`);
/// packaging ships /etc/iproute2/rt_protos.d/pppgate.conf naming it.
pub const RTPROT_PPPGATE: u8 = 77;

/// The nft table pppgate owns.
pub const NFT_TABLE: &str = "pppgate";

/// The per-state address sets of `inet pppgate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum NftSet {
    /// `connect_pending_v4`: the connect gate, drops all forwarding.
    Pending,
    /// `full_v4`: forwarded.
    Full,
    /// `restricted_v4`: walled garden only.
    Restricted,
    /// `blocked_v4`: drops all forwarding.
    Blocked,
}

impl NftSet {
    pub const ALL: [NftSet; 4] = [NftSet::Pending, NftSet::Full, NftSet::Restricted, NftSet::Blocked];

    pub fn name(self) -> &'static str {
        match self {
            NftSet::Pending => "connect_pending_v4",
            NftSet::Full => "full_v4",
            NftSet::Restricted => "restricted_v4",
            NftSet::Blocked => "blocked_v4",
        }
    }

    /// The set a session in `state` belongs in (TERMINATE stays blocked until it is gone).
    pub fn for_state(state: PolicyState) -> NftSet {
        match state {
            PolicyState::Gated => NftSet::Pending,
            PolicyState::Full => NftSet::Full,
            PolicyState::Restricted => NftSet::Restricted,
            PolicyState::Blocked | PolicyState::Terminate => NftSet::Blocked,
        }
    }
}

/// One member of a state set: a session's address bound to the interface it arrives on
/// (`iface_index . ipv4_addr`). A packet from a session is policed by the member of the interface
/// it came in on, so a source address borrowed from another session (or from a session whose
/// pppd died: its interface index is never used again) matches nothing and meets the default
/// drop. docs/security.md, "Address bound to its link".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Member {
    /// The session interface's index (`ip link` shows it; the kernel never reuses one while the
    /// namespace lives, short of 2^31 interfaces later).
    pub ifindex: u32,
    pub ip: Ipv4Addr,
}

impl Member {
    pub fn new(ifindex: u32, ip: Ipv4Addr) -> Member {
        Member { ifindex, ip }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (if {})", self.ip, self.ifindex)
    }
}

/// One element change inside an nft transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SetChange {
    pub set: NftSet,
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    /// true: add; false: remove (idempotent both ways).
    pub add: bool,
}

impl SetChange {
    pub fn new(set: NftSet, m: Member, add: bool) -> SetChange {
        SetChange { set, ifindex: m.ifindex, ip: m.ip, add }
    }
    pub fn member(&self) -> Member {
        Member { ifindex: self.ifindex, ip: self.ip }
    }
}

/// What `inet pppgate` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NftState {
    /// The table exists with pppgate's current chains/rules/sets layout.
    pub base_ok: bool,
    pub members: BTreeMap<NftSet, BTreeSet<Member>>,
    pub garden: BTreeSet<GardenEntry>,
}

impl NftState {
    /// Every set `m` is in.
    pub fn sets_of(&self, m: Member) -> BTreeSet<NftSet> {
        self.members.iter().filter(|(_, s)| s.contains(&m)).map(|(s, _)| *s).collect()
    }

    /// Every member, whichever set it is in.
    pub fn all_members(&self) -> BTreeSet<Member> {
        self.members.values().flatten().copied().collect()
    }
}

pub trait Nft {
    /// Creates `inet pppgate` (sets, chains, rules, the walled garden) when it is missing or its
    /// layout is not the current one; set members survive a layout upgrade. Idempotent.
    fn ensure_base(&mut self, garden: &[GardenEntry]) -> Result<()> {
        self.ensure_base_with(garden, &BTreeMap::new())
    }
    /// [`Nft::ensure_base`], and when the table has to be (re)built, every member of `members`
    /// goes into its set (and out of every other) **in the same transaction** that creates the
    /// table: a restore never shows the kernel a table without its FULL members, whose packets
    /// would meet `unpoliced_from` until a second commit (docs/security.md, "Tamper detection
    /// and restore"). An intact table is left as it is; the caller commits the difference.
    fn ensure_base_with(&mut self, garden: &[GardenEntry], members: &BTreeMap<Member, NftSet>) -> Result<()>;
    /// Reads the whole table back.
    fn read(&mut self) -> Result<NftState>;
    /// Reads which sets one member is in (cheap; the connect path uses this).
    fn sets_of(&mut self, m: Member) -> Result<BTreeSet<NftSet>>;
    /// Applies all changes as one atomic transaction: all or nothing.
    fn commit(&mut self, changes: &[SetChange]) -> Result<()>;
    /// Whether `inet pppgate` exists at all (whatever its layout). Cheap: the engine asks before
    /// every session-scope apply, so that one finding the table gone restores everyone's
    /// membership instead of building it with its own sessions only.
    fn table_present(&mut self) -> Result<bool> {
        let st = self.read()?;
        Ok(st.base_ok || st.members.values().any(|m| !m.is_empty()))
    }
    /// Makes the member record (docs/security.md, "Tamper detection and restore") exactly `want`,
    /// for a backend that keeps one; reconcile calls it with the state it just verified.
    fn sync_record(&mut self, _want: &BTreeMap<Member, NftSet>) -> Result<()> {
        Ok(())
    }
}

/// Shaping installed on one session interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Shaping {
    /// Shaping rate on the interface's egress (to the client), kbit/s.
    pub down_kbit: Option<u32>,
    /// Shaping rate on the session IFB's egress (from the client), kbit/s.
    pub up_kbit: Option<u32>,
}

impl From<Speed> for Shaping {
    fn from(s: Speed) -> Self {
        Shaping { down_kbit: s.down_kbit, up_kbit: s.up_kbit }
    }
}

/// Prefix of the IFB devices carrying sessions' upload (`pgi-<ppp_if>`): the one definition.
pub const IFB_PREFIX: &str = "pgi-";

/// Name of the IFB device carrying a session's upload.
pub fn ifb_name(ppp_if: &str) -> String {
    let n = format!("{IFB_PREFIX}{ppp_if}");
    debug_assert!(n.len() <= 15);
    n
}

/// The session interface an IFB name belongs to (the name itself when it has no IFB prefix).
pub fn ifb_owner(ifb: &str) -> &str {
    ifb.strip_prefix(IFB_PREFIX).unwrap_or(ifb)
}

/// tc state pppgate owns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcState {
    /// Shaping per interface that carries any pppgate qdisc (unlimited entries are omitted).
    pub shaping: BTreeMap<String, Shaping>,
    /// `pgi-*` devices present.
    pub ifbs: BTreeSet<String>,
    /// Interfaces whose shaping (read with its rates) still has the HTB layout of earlier
    /// versions: a plan that keeps their shaping rewrites it as TBF (kernel::tc).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub legacy: BTreeSet<String>,
}

pub trait Tc {
    /// Reads shaping for every interface (reconcile) .
    fn read(&mut self) -> Result<TcState>;
    /// Reads shaping for one interface (connect path).
    fn read_one(&mut self, ifname: &str) -> Result<Shaping>;
    /// Installs or replaces shaping on `ifname`; an unlimited direction removes that side.
    fn set(&mut self, ifname: &str, shaping: &Shaping) -> Result<()>;
    /// Removes pppgate's qdiscs from `ifname` (if it still exists) and deletes its IFB.
    fn clear(&mut self, ifname: &str) -> Result<()>;
    /// Deletes an IFB whose session interface is gone.
    fn remove_ifb(&mut self, ifb: &str) -> Result<()>;
}

/// A route owned by pppgate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OwnedRoute {
    pub dst: Ipv4Net,
    /// Next hop; `None` is a device route (on a ppp link that reaches the peer).
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    /// Routing table id (254 = main).
    pub table: u32,
    pub metric: Option<u32>,
}

impl OwnedRoute {
    /// What the kernel identifies an IPv4 route by: destination, table and metric (a metric of
    /// 0 is no metric). Adding a second route with the same key replaces the first.
    pub fn key(&self) -> (Ipv4Net, u32, Option<u32>) {
        (self.dst, self.table, self.metric.filter(|m| *m != 0))
    }
}

/// Which of pppgate's routes a session-scope read needs (not the whole box): what a plan for some
/// sessions may add, replace or remove, and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteQuery {
    /// Every route through these interfaces, in any table.
    pub ifnames: BTreeSet<String>,
    /// Routes to these (destination, table) keys through any device (the kernel backend dumps
    /// each table named here). The engine's session-scope reads leave it empty: a route another
    /// interface holds is found when adding ([`Routes::add_unless_held`]).
    pub dsts: BTreeSet<(Ipv4Net, u32)>,
    /// The default route of these tables (policy routing's next hop).
    pub table_defaults: BTreeSet<u32>,
}

impl RouteQuery {
    /// Whether `r` is one the query asks for.
    pub fn wants(&self, r: &OwnedRoute) -> bool {
        self.ifnames.contains(&r.dev)
            || self.dsts.contains(&(r.dst, r.table))
            || (r.dst.prefix_len() == 0 && self.table_defaults.contains(&r.table))
    }

    /// The tables a filtered read has to look into (besides the interfaces' own routes).
    pub fn tables(&self) -> BTreeSet<u32> {
        self.dsts.iter().map(|(_, t)| *t).chain(self.table_defaults.iter().copied()).collect()
    }
}

pub trait Routes {
    fn read(&mut self) -> Result<Vec<OwnedRoute>>;
    /// The routes `q` asks for (session scope). The kernel backend asks the kernel for exactly
    /// those (filtered dumps); the default reads everything and filters.
    fn read_scoped(&mut self, q: &RouteQuery) -> Result<Vec<OwnedRoute>> {
        Ok(self.read()?.into_iter().filter(|r| q.wants(r)).collect())
    }
    /// Adds (or replaces the same key) idempotently.
    fn add(&mut self, r: &OwnedRoute) -> Result<()>;
    /// Adds `r` unless a route of pppgate through another interface holds its key
    /// ([`OwnedRoute::key`]): that one stays where it is and is returned (session scope: a
    /// route one session holds is not taken by another). A foreign route with the key is
    /// replaced, as [`Routes::add`] does. The default reads the routes to that destination
    /// first; the kernel backend asks the kernel to refuse an existing key (`NLM_F_EXCL`) and
    /// reads the table only when it does, so the usual case costs no dump.
    fn add_unless_held(&mut self, r: &OwnedRoute) -> Result<Option<OwnedRoute>> {
        let q = RouteQuery { dsts: BTreeSet::from([(r.dst, r.table)]), ..Default::default() };
        if let Some(h) = self.read_scoped(&q)?.into_iter().find(|h| h.key() == r.key() && h.dev != r.dev) {
            return Ok(Some(h));
        }
        self.add(r).map(|()| None)
    }
    /// Deletes; a route that is already gone is fine.
    fn del(&mut self, r: &OwnedRoute) -> Result<()>;
}

/// An `ip rule` owned by pppgate: `from <from> lookup <table> priority <priority>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OwnedRule {
    pub from: Ipv4Net,
    pub table: u32,
    pub priority: u32,
}

pub trait Rules {
    fn read(&mut self) -> Result<Vec<OwnedRule>>;
    fn add(&mut self, r: &OwnedRule) -> Result<()>;
    fn del(&mut self, r: &OwnedRule) -> Result<()>;
}

/// Forwarding sysctls, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SysctlReport {
    pub ip_forward: bool,
    /// `net.ipv4.conf.all.rp_filter`.
    pub rp_filter_all: u8,
    /// `net.ipv4.conf.default.rp_filter` (what new ppp interfaces inherit).
    pub rp_filter_default: u8,
    /// Effective rp_filter per session interface (max of all and the interface's own).
    pub rp_filter: BTreeMap<String, u8>,
}

impl SysctlReport {
    /// Interfaces whose effective rp_filter is strict (1).
    pub fn strict_interfaces(&self) -> Vec<String> {
        self.rp_filter.iter().filter(|(_, v)| **v == 1).map(|(k, _)| k.clone()).collect()
    }
    pub fn ok(&self) -> bool {
        self.ip_forward && self.rp_filter_all != 1 && self.strict_interfaces().is_empty()
    }
}

pub trait Sysctl {
    fn read(&mut self, ifnames: &[String]) -> Result<SysctlReport>;
    /// ip_forward = 1; rp_filter strict (1) becomes loose (2) on all, default and each ifname;
    /// 0 and 2 stay as they are (never stricter). Interfaces that are gone are skipped.
    fn ensure(&mut self, ifnames: &[String]) -> Result<()>;
    /// Per-interface IPv4 forwarding (`net.ipv4.conf.<if>.forwarding`, checked on input: a packet
    /// arriving on an interface with it off is not forwarded, whatever nft says). A restore of a
    /// missing table turns it off on every session interface that is not FULL until the table
    /// is back (docs/security.md, "Defense in depth"). Written only when it differs; an
    /// interface that is gone is skipped.
    fn set_forwarding(&mut self, _ifname: &str, _on: bool) -> Result<()> {
        Ok(())
    }
}

/// All backends the engine drives.
pub trait Backends {
    type N: Nft;
    type T: Tc;
    type R: Routes;
    type U: Rules;
    type S: Sysctl;
    fn nft(&mut self) -> &mut Self::N;
    fn tc(&mut self) -> &mut Self::T;
    fn routes(&mut self) -> &mut Self::R;
    fn rules(&mut self) -> &mut Self::U;
    fn sysctl(&mut self) -> &mut Self::S;
}

/// The real backends: nfnetlink, rtnetlink and /proc, all in the caller's network namespace (the
/// sockets are bound to the namespace current when [`Netlink::new`] runs).
#[derive(Debug)]
pub struct Netlink {
    pub nft: NftNetlink,
    pub tc: TcNetlink,
    pub routes: RoutesNetlink,
    pub rules: RulesNetlink,
    pub sysctl: SysctlProc,
}

impl Netlink {
    pub fn new() -> Result<Netlink> {
        Ok(Netlink {
            nft: NftNetlink::new()?,
            tc: TcNetlink::new()?,
            routes: RoutesNetlink::new()?,
            rules: RulesNetlink::new()?,
            sysctl: SysctlProc::new(),
        })
    }

    /// The backends of a writer of the sessions in `sessions_dir`: nft commits are recorded in
    /// its member record ([`members::MemberRecord`]).
    pub fn recording_to(sessions_dir: &std::path::Path) -> Result<Netlink> {
        let mut b = Netlink::new()?;
        b.nft = b.nft.recording_to(sessions_dir);
        Ok(b)
    }
}

impl Backends for Netlink {
    type N = NftNetlink;
    type T = TcNetlink;
    type R = RoutesNetlink;
    type U = RulesNetlink;
    type S = SysctlProc;
    fn nft(&mut self) -> &mut NftNetlink {
        &mut self.nft
    }
    fn tc(&mut self) -> &mut TcNetlink {
        &mut self.tc
    }
    fn routes(&mut self) -> &mut RoutesNetlink {
        &mut self.routes
    }
    fn rules(&mut self) -> &mut RulesNetlink {
        &mut self.rules
    }
    fn sysctl(&mut self) -> &mut SysctlProc {
        &mut self.sysctl
    }
}

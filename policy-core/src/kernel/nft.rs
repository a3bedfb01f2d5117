//! `inet pppgate`: the nftables table pppgate owns, driven over nfnetlink.
//!
//! The hot path — [`Nft::commit`] and [`Nft::sets_of`] — is in-process nfnetlink: one
//! NFNL_MSG_BATCH_BEGIN…END batch of NEWSETELEM/DELSETELEM messages (the kernel applies a batch as
//! one transaction, all or nothing) and pipelined GETSETELEM gets (one round trip for all sets).
//! No process is spawned there: the connect path has a budget of a few milliseconds.
//!
//! The static layout (sets, chains, rules) is written rarely, by [`Nft::ensure_base`] through
//! `nft -f -` (one atomic transaction too). Its version is the table's comment
//! ([`LAYOUT_COMMENT`]); [`NftNetlink::probe`] checks it together with the set names and the
//! number of rules per chain, three small netlink requests, so an unchanged layout costs no spawn.
//! A rebuild reads the members of the state sets first and writes them back in the same
//! transaction that recreates the table.
//!
//! Removal is idempotent without the kernel's DESTROY (6.3+; the lab's Debian kernel is 6.1): a
//! removal is sent as "add X; delete X" in the same batch, which leaves X absent whether or not it
//! was there.
//!
//! Forwarding policy (see [`layout`]): the state sets hold [`Member`]s, a session's address bound
//! to its interface (`iface_index . ipv4_addr`). Traffic from a `ppp*` interface is looked up by
//! the interface it arrived on and its source address (`iif . ip saddr`), traffic to one by the
//! interface it leaves on and its destination (`oif . ip daddr`). It is dropped when that member
//! is in `blocked_v4` or `connect_pending_v4`, passes when it is in `full_v4`, reaches only the
//! walled garden (and the garden's replies of established flows come back) when it is in
//! `restricted_v4`, and is dropped when it is in no set — a session the plugin never saw passes
//! nothing, and neither does a packet whose source address belongs to another session's link or
//! to a session whose pppd died (its interface index is never used again). IPv6 from or to `ppp*` is dropped (the sets are IPv4 only). Both
//! directions are checked on every packet, so a conntrack entry created while a session was FULL
//! gives it nothing once it is RESTRICTED: no conntrack flush is needed on a state change.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv4Subnets};

use super::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP};
use super::{Member, Nft, NftSet, NftState, SetChange, NFT_TABLE};
use crate::config::{GardenEntry, L4Proto};
use crate::error::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
/// libnftnl's userdata TLV type for a table comment.
const NFTNL_UDATA_TABLE_COMMENT: u8 = 0;

const NFPROTO_INET: u8 = 1;

/// Elements per NEWSETELEM/DELSETELEM message: an attribute nest is limited to 64 KiB and an
/// element takes 16 bytes.
const ELEMS_PER_MSG: usize = 2000;

/// The layout version marker, the table's comment. Bump it whenever [`layout`] changes, so every
/// running box rebuilds its table (keeping the members) on its next `ensure_base`.
pub const LAYOUT_COMMENT: &str = "pppgate layout 2";

/// Walled-garden destinations without protocol (`ipv4_addr`, interval).
pub const GARDEN_NET_SET: &str = "garden_net_v4";
/// Walled-garden destinations with a protocol and no port (`ipv4_addr . inet_proto`, interval).
pub const GARDEN_PROTO_SET: &str = "garden_proto_v4";
/// Walled-garden destinations with protocol and port (`ipv4_addr . inet_proto . inet_service`).
pub const GARDEN_SVC_SET: &str = "garden_svc_v4";

/// Every set of the layout with its key length in bytes (concatenated fields are padded to 4).
const SETS: [(&str, u32); 7] = [
    ("connect_pending_v4", 8),
    ("full_v4", 8),
    ("restricted_v4", 8),
    ("blocked_v4", 8),
    (GARDEN_NET_SET, 4),
    (GARDEN_PROTO_SET, 8),
    (GARDEN_SVC_SET, 12),
];

/// Number of rules per chain in [`layout`] (a unit test keeps the two in step).
const CHAIN_RULES: [(&str, usize); 5] =
    [("forward", 2), ("from_session", 5), ("garden", 4), ("to_session", 5), ("garden_reply", 4)];

/// The static layout of `inet pppgate`, without set members.
///
/// Verdicts that let a packet pass are `return`, not `accept`: the packet then still meets the
/// other direction's checks (a FULL session sending to a BLOCKED one is dropped on the way in).
/// Drop rules carry counters and comments, which tests and `pppgate diag` read. A packet whose
/// source is another session's address, or one no session owns, counts under `unpoliced_from`.
pub fn layout() -> String {
    format!(
        r#"table inet {NFT_TABLE} {{
	comment "{LAYOUT_COMMENT}"
	set connect_pending_v4 {{ type iface_index . ipv4_addr; }}
	set full_v4 {{ type iface_index . ipv4_addr; }}
	set restricted_v4 {{ type iface_index . ipv4_addr; }}
	set blocked_v4 {{ type iface_index . ipv4_addr; }}
	set {GARDEN_NET_SET} {{ type ipv4_addr; flags interval; }}
	set {GARDEN_PROTO_SET} {{ type ipv4_addr . inet_proto; flags interval; }}
	set {GARDEN_SVC_SET} {{ type ipv4_addr . inet_proto . inet_service; flags interval; }}
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname "ppp*" jump from_session
		oifname "ppp*" jump to_session
	}}
	chain from_session {{
		iif . ip saddr @blocked_v4 counter drop comment "blocked_from"
		iif . ip saddr @connect_pending_v4 counter drop comment "pending_from"
		iif . ip saddr @full_v4 return
		iif . ip saddr @restricted_v4 goto garden
		counter drop comment "unpoliced_from"
	}}
	chain garden {{
		ip daddr @{GARDEN_NET_SET} return
		ip daddr . meta l4proto @{GARDEN_PROTO_SET} return
		ip daddr . meta l4proto . th dport @{GARDEN_SVC_SET} return
		counter drop comment "restricted_from"
	}}
	chain to_session {{
		oif . ip daddr @blocked_v4 counter drop comment "blocked_to"
		oif . ip daddr @connect_pending_v4 counter drop comment "pending_to"
		oif . ip daddr @full_v4 return
		oif . ip daddr @restricted_v4 ct state established,related goto garden_reply
		counter drop comment "unpoliced_to"
	}}
	chain garden_reply {{
		ip saddr @{GARDEN_NET_SET} return
		ip saddr . meta l4proto @{GARDEN_PROTO_SET} return
		ip saddr . meta l4proto . th sport @{GARDEN_SVC_SET} return
		counter drop comment "restricted_to"
	}}
}}
"#
    )
}

/// The walled garden as pppgate stores it. Interval sets refuse overlapping elements, so an entry
/// another entry already covers is dropped (CIDRs either nest or are disjoint, so covering is the
/// only overlap within one set). [`Nft::read`] returns this form; compare against it.
pub fn normalize_garden(entries: &[GardenEntry]) -> BTreeSet<GardenEntry> {
    let all: BTreeSet<GardenEntry> = entries.iter().copied().collect();
    all.iter().filter(|b| !all.iter().any(|a| a != *b && covers(a, b))).copied().collect()
}

fn covers(a: &GardenEntry, b: &GardenEntry) -> bool {
    if !a.net.contains(&b.net) {
        return false;
    }
    match (a.proto, a.port) {
        (None, _) => true,
        (Some(p), None) => b.proto == Some(p),
        (Some(p), Some(q)) => b.proto == Some(p) && b.port == Some(q),
    }
}

/// What [`NftNetlink::probe`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    pub table: bool,
    pub comment: Option<String>,
    /// The set names present with the key length each has.
    pub sets: BTreeMap<String, u32>,
    pub rules_per_chain: BTreeMap<String, usize>,
}

impl Probe {
    /// The table holds the current layout: marker, sets with their key lengths, rule counts.
    pub fn layout_ok(&self) -> bool {
        self.table
            && self.comment.as_deref() == Some(LAYOUT_COMMENT)
            && SETS.iter().all(|(n, len)| self.sets.get(*n) == Some(len))
            && CHAIN_RULES.iter().all(|(c, n)| self.rules_per_chain.get(*c) == Some(n))
            && self.rules_per_chain.len() == CHAIN_RULES.len()
    }
}

/// The nfnetlink multicast group of nftables' change events (`NFNLGRP_NFTABLES`).
pub const NFNLGRP_NFTABLES: u32 = 7;

const NFT_MSG_NEWGEN: u16 = 15;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// What one nftables event means to the guard (`pppgate guard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftEvent {
    /// A table, chain, rule, set, object or flowtable of `inet pppgate` was created, changed or
    /// deleted (`nft flush ruleset` and `nft delete table inet pppgate` say DELTABLE).
    Structure,
    /// Elements of one of `inet pppgate`'s sets changed.
    Elements,
    /// The end of one transaction (NEWGEN), with the name of the process that committed it.
    EndOfTransaction { process: Option<String> },
    /// Anything else (other tables, other families).
    Unrelated,
}

/// Classifies one nfnetlink message received on [`NFNLGRP_NFTABLES`]. Every object message
/// carries its table's name as attribute 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
/// NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
pub fn classify_event(ty: u16, payload: &[u8]) -> NftEvent {
    if ty >> 8 != NFNL_SUBSYS_NFTABLES {
        return NftEvent::Unrelated;
    }
    let m = ty & 0xff;
    let body = payload.get(4..).unwrap_or_default();
    if m == NFT_MSG_NEWGEN {
        let process = attrs(body).find(|(t, _)| *t == NFTA_GEN_PROC_NAME).map(|(_, d)| netlink::attr_str(d));
        return NftEvent::EndOfTransaction { process };
    }
    if payload.first() != Some(&NFPROTO_INET) {
        return NftEvent::Unrelated;
    }
    let table = attrs(body).find(|(t, _)| *t == 1).map(|(_, d)| netlink::attr_str(d));
    if table.as_deref() != Some(NFT_TABLE) {
        return NftEvent::Unrelated;
    }
    match m {
        NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM => NftEvent::Elements,
        // NEWTABLE 0, DELTABLE 2, NEWCHAIN 3, DELCHAIN 5, NEWRULE 6, DELRULE 8, NEWSET 9, DELSET 11,
        // NEWOBJ 18, DELOBJ 20, NEWFLOWTABLE 22, DELFLOWTABLE 24, and the DESTROY forms (26..).
        0 | 2 | 3 | 5 | 6 | 8 | 9 | 11 | 18 | 20 | 22 | 24 | 26..=32 => NftEvent::Structure,
        _ => NftEvent::Unrelated,
    }
}

/// Whether a transaction's committing process is one of pppgate's writers (pppd with the
/// plugin, the `pppgate` binary under any of its names; the kernel keeps 15 bytes of a name).
pub fn is_pppgate_writer(process: &str) -> bool {
    matches!(process, "pppd" | "pppgate") || process.starts_with("vpn-")
}

/// The real nftables backend.
pub struct NftNetlink {
    sock: Socket,
    nft: PathBuf,
    /// Where committed memberships are recorded (docs/security.md, "Tamper detection and
    /// restore"); `None`: not recorded (readers, benchmarks).
    record: Option<super::members::MemberRecord>,
}

impl std::fmt::Debug for NftNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftNetlink").field("nft", &self.nft).finish()
    }
}

fn msg_type(m: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m
}

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

fn nft_msg(m: u16, flags: u16) -> MsgBuilder {
    MsgBuilder::new(msg_type(m), flags).bytes(&nfgenmsg(NFPROTO_INET, 0))
}

fn invalid_reply(what: &str) -> Error {
    Error::Netlink {
        op: "read nftables".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed {what} from the kernel")),
    }
}

fn errno(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Finds the `nft` binary: pppd runs hooks with a minimal PATH, so look in the usual places.
pub(crate) fn find_nft() -> PathBuf {
    for p in ["/usr/sbin/nft", "/sbin/nft", "/usr/local/sbin/nft"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "nft".into()
}

/// One element as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Elem {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    flags: u32,
}

fn parse_data(nest: &[u8]) -> Option<Vec<u8>> {
    attrs(nest).find(|(t, _)| *t == NFTA_DATA_VALUE).map(|(_, d)| d.to_vec())
}

fn parse_elems(payload: &[u8], out: &mut Vec<Elem>) {
    let Some(body) = payload.get(4..) else { return };
    for (t, list) in attrs(body) {
        if t != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (t, e) in attrs(list) {
            if t != NFTA_LIST_ELEM {
                continue;
            }
            let mut elem = Elem { key: Vec::new(), key_end: None, flags: 0 };
            for (t, d) in attrs(e) {
                match t {
                    NFTA_SET_ELEM_KEY => elem.key = parse_data(d).unwrap_or_default(),
                    NFTA_SET_ELEM_KEY_END => elem.key_end = parse_data(d),
                    NFTA_SET_ELEM_FLAGS => elem.flags = netlink::attr_u32_be(d).unwrap_or(0),
                    _ => {}
                }
            }
            out.push(elem);
        }
    }
}

fn ip_at(b: &[u8], off: usize) -> Option<Ipv4Addr> {
    b.get(off..off + 4).map(|s| Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// The key of a state-set element: `iface_index` (host byte order) then the address, each field
/// 4 bytes.
fn member_key(m: &Member) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&m.ifindex.to_ne_bytes());
    k[4..].copy_from_slice(&m.ip.octets());
    k
}

fn member_of_key(k: &[u8]) -> Option<Member> {
    if k.len() != 8 {
        return None;
    }
    let ifindex = u32::from_ne_bytes(k[..4].try_into().ok()?);
    Some(Member { ifindex, ip: ip_at(k, 4)? })
}

/// Inclusive address ranges of a single-field interval set (rbtree: a start element, then an
/// element flagged INTERVAL_END whose key is one past the end; an open last interval ends at
/// 255.255.255.255). Elements carrying KEY_END are taken as they are.
fn rbtree_ranges(elems: &[Elem]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut marks: Vec<(u32, bool)> = Vec::new();
    let mut out = Vec::new();
    for e in elems {
        let Some(k) = ip_at(&e.key, 0) else { continue };
        if let Some(end) = e.key_end.as_deref().and_then(|b| ip_at(b, 0)) {
            out.push((k, end));
        } else {
            marks.push((u32::from(k), e.flags & NFT_SET_ELEM_INTERVAL_END != 0));
        }
    }
    marks.sort();
    let mut open: Option<u32> = None;
    for (k, is_end) in marks {
        match (is_end, open) {
            (false, None) => open = Some(k),
            (false, Some(s)) => {
                // Two starts in a row: the first was a single address.
                out.push((Ipv4Addr::from(s), Ipv4Addr::from(s)));
                open = Some(k);
            }
            (true, Some(s)) if k > s => {
                out.push((Ipv4Addr::from(s), Ipv4Addr::from(k - 1)));
                open = None;
            }
            (true, _) => {}
        }
    }
    if let Some(s) = open {
        out.push((Ipv4Addr::from(s), Ipv4Addr::BROADCAST));
    }
    out
}

fn cidrs(start: Ipv4Addr, end: Ipv4Addr) -> Vec<Ipv4Net> {
    Ipv4Subnets::new(start, end, 0).collect()
}

fn proto_of(n: u8) -> Option<L4Proto> {
    match n {
        6 => Some(L4Proto::Tcp),
        17 => Some(L4Proto::Udp),
        _ => None,
    }
}

/// Garden entries from a concatenated set (`ip . proto` or `ip . proto . port`) whose elements
/// carry KEY and KEY_END. Ranges pppgate never writes are left out, so a comparison with the
/// wanted garden sees the difference and rewrites it.
fn concat_entries(elems: &[Elem], with_port: bool) -> Vec<GardenEntry> {
    let mut out = Vec::new();
    for e in elems {
        let end = e.key_end.as_deref().unwrap_or(&e.key);
        let (Some(a), Some(b)) = (ip_at(&e.key, 0), ip_at(end, 0)) else { continue };
        let (Some(p0), Some(p1)) = (e.key.get(4), end.get(4)) else { continue };
        if p0 != p1 {
            continue;
        }
        let Some(proto) = proto_of(*p0) else { continue };
        let port = if with_port {
            let (Some(q0), Some(q1)) = (e.key.get(8..10), end.get(8..10)) else { continue };
            let (q0, q1) = (u16::from_be_bytes([q0[0], q0[1]]), u16::from_be_bytes([q1[0], q1[1]]));
            if q0 != q1 || q0 == 0 {
                continue;
            }
            Some(q0)
        } else {
            None
        };
        for net in cidrs(a, b) {
            out.push(GardenEntry { net, proto: Some(proto), port });
        }
    }
    out
}

/// The nft text of one garden element.
fn garden_elem_text(g: &GardenEntry) -> String {
    match (g.proto, g.port) {
        (None, _) => g.net.to_string(),
        (Some(p), None) => format!("{} . {}", g.net, p.name()),
        (Some(p), Some(q)) => format!("{} . {} . {q}", g.net, p.name()),
    }
}

fn garden_set_of(g: &GardenEntry) -> &'static str {
    match (g.proto, g.port) {
        (None, _) => GARDEN_NET_SET,
        (Some(_), None) => GARDEN_PROTO_SET,
        (Some(_), Some(_)) => GARDEN_SVC_SET,
    }
}

fn push_elements<I: IntoIterator<Item = String>>(script: &mut String, set: &str, items: I) {
    let items: Vec<String> = items.into_iter().collect();
    for chunk in items.chunks(1000) {
        script.push_str(&format!("add element inet {NFT_TABLE} {set} {{ {} }}\n", chunk.join(", ")));
    }
}

fn validate_garden(garden: &[GardenEntry]) -> Result<()> {
    for g in garden {
        if g.proto.is_none() && g.port.is_some() {
            return Err(Error::invalid("walled-garden entry", g.to_string(), "a port needs a protocol"));
        }
        if g.port == Some(0) {
            return Err(Error::invalid("walled-garden entry", g.to_string(), "port 0"));
        }
    }
    Ok(())
}

impl NftNetlink {
    pub fn new() -> Result<NftNetlink> {
        Ok(NftNetlink { sock: Socket::open(Family::Netfilter)?, nft: find_nft(), record: None })
    }

    /// Records every committed membership in the member record of `sessions_dir`
    /// ([`super::members::MemberRecord`]): every writer of a box's sessions does.
    pub fn recording_to(mut self, sessions_dir: &std::path::Path) -> Self {
        self.record = Some(super::members::MemberRecord::in_sessions_dir(sessions_dir));
        self
    }

    /// The member record this backend writes, if any.
    pub fn record(&self) -> Option<&super::members::MemberRecord> {
        self.record.as_ref()
    }

    /// Uses `nft` at `path` for layout writes.
    pub fn with_nft_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.nft = path.into();
        self
    }

    /// Reads the table's marker, its sets and its rule counts (three netlink requests).
    pub fn probe(&mut self) -> Result<Probe> {
        let mut p = Probe::default();
        let get = nft_msg(NFT_MSG_GETTABLE, 0).attr_str(NFTA_TABLE_NAME, NFT_TABLE);
        let answer = self.sock.transact("get nft table", vec![get])?.pop().expect("one answer");
        let msgs = match answer {
            Ok(m) => m,
            Err(e) if errno(&e) == Some(libc::ENOENT) => return Ok(p),
            Err(source) => return Err(Error::Netlink { op: "get nft table".into(), source }),
        };
        p.table = true;
        for (ty, payload) in &msgs {
            if *ty != msg_type(NFT_MSG_NEWTABLE) {
                continue;
            }
            for (t, d) in attrs(payload.get(4..).unwrap_or_default()) {
                if t == NFTA_TABLE_USERDATA {
                    p.comment = udata_comment(d);
                }
            }
        }
        let req = nft_msg(NFT_MSG_GETSET, NLM_F_DUMP).attr_str(NFTA_SET_TABLE, NFT_TABLE);
        for (ty, payload) in self.sock.dump("dump nft sets", req)? {
            if ty != msg_type(NFT_MSG_NEWSET) {
                continue;
            }
            let (mut name, mut klen) = (None, 0);
            for (t, d) in attrs(payload.get(4..).unwrap_or_default()) {
                match t {
                    NFTA_SET_NAME => name = Some(netlink::attr_str(d)),
                    NFTA_SET_KEY_LEN => klen = netlink::attr_u32_be(d).unwrap_or(0),
                    _ => {}
                }
            }
            if let Some(n) = name {
                p.sets.insert(n, klen);
            }
        }
        let req = nft_msg(NFT_MSG_GETRULE, NLM_F_DUMP).attr_str(NFTA_RULE_TABLE, NFT_TABLE);
        for (ty, payload) in self.sock.dump("dump nft rules", req)? {
            if ty != msg_type(NFT_MSG_NEWRULE) {
                continue;
            }
            if let Some((_, d)) = attrs(payload.get(4..).unwrap_or_default()).find(|(t, _)| *t == NFTA_RULE_CHAIN) {
                *p.rules_per_chain.entry(netlink::attr_str(d)).or_default() += 1;
            }
        }
        Ok(p)
    }

    /// Dumps the elements of one set; a missing set is `None`.
    fn dump_set(&mut self, set: &str) -> Result<Option<Vec<Elem>>> {
        let req = nft_msg(NFT_MSG_GETSETELEM, NLM_F_DUMP)
            .attr_str(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE)
            .attr_str(NFTA_SET_ELEM_LIST_SET, set);
        let msgs = match self.sock.dump("dump nft set elements", req) {
            Ok(m) => m,
            Err(e) if netlink::errno_of(&e) == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut elems = Vec::new();
        for (ty, payload) in &msgs {
            if *ty == msg_type(NFT_MSG_NEWSETELEM) {
                parse_elems(payload, &mut elems);
            }
        }
        Ok(Some(elems))
    }

    fn read_members(&mut self) -> Result<BTreeMap<NftSet, BTreeSet<Member>>> {
        let mut members = BTreeMap::new();
        for s in NftSet::ALL {
            let mut m = BTreeSet::new();
            for e in self.dump_set(s.name())?.unwrap_or_default() {
                m.insert(member_of_key(&e.key).ok_or_else(|| invalid_reply("set element"))?);
            }
            members.insert(s, m);
        }
        Ok(members)
    }

    /// The members of a table being rebuilt (an older layout, or a damaged one), to keep them.
    /// Members of the current form are kept as they are; bare addresses (layout 1 and older)
    /// are bound to the interface carrying them as its peer — an address no interface, or more
    /// than one, carries is dropped (a live session's next apply or the next reconcile puts it
    /// back; until then it passes nothing).
    fn read_members_for_rebuild(&mut self) -> Result<BTreeMap<NftSet, BTreeSet<Member>>> {
        let mut raw = BTreeMap::new();
        for s in NftSet::ALL {
            raw.insert(s, self.dump_set(s.name())?.unwrap_or_default());
        }
        let bare = raw.values().flatten().any(|e| e.key.len() == 4);
        let links = if bare { Some(super::links::LinkSnapshot::read_addresses()?) } else { None };
        let mut members = BTreeMap::new();
        for (s, elems) in raw {
            let mut m = BTreeSet::new();
            for e in elems {
                if let Some(member) = member_of_key(&e.key) {
                    m.insert(member);
                    continue;
                }
                let (Some(ip), Some(links)) = (ip_at(&e.key, 0).filter(|_| e.key.len() == 4), links.as_ref()) else {
                    continue;
                };
                let owners: Vec<u32> =
                    links.by_name.values().filter(|l| l.peers.contains(&ip)).map(|l| l.index).collect();
                if let [ifindex] = owners[..] {
                    m.insert(Member { ifindex, ip });
                }
            }
            members.insert(s, m);
        }
        Ok(members)
    }

    /// Reads the walled garden back from its three sets.
    pub fn read_garden(&mut self) -> Result<BTreeSet<GardenEntry>> {
        let mut out = BTreeSet::new();
        let net = self.dump_set(GARDEN_NET_SET)?.unwrap_or_default();
        for (a, b) in rbtree_ranges(&net) {
            out.extend(cidrs(a, b).into_iter().map(|net| GardenEntry { net, proto: None, port: None }));
        }
        let proto = self.dump_set(GARDEN_PROTO_SET)?.unwrap_or_default();
        out.extend(concat_entries(&proto, false));
        let svc = self.dump_set(GARDEN_SVC_SET)?.unwrap_or_default();
        out.extend(concat_entries(&svc, true));
        Ok(out)
    }

    /// Runs `nft -f -` with `script` (one atomic transaction).
    fn nft_script(&self, script: &str) -> Result<()> {
        let program = self.nft.display().to_string();
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Exec { program: program.clone(), source })?;
        let write = child.stdin.take().expect("piped stdin").write_all(script.as_bytes());
        let out = child.wait_with_output().map_err(|source| Error::Exec { program: program.clone(), source })?;
        if !out.status.success() {
            return Err(Error::ExecFailed { program, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        write.map_err(|source| Error::Exec { program, source })
    }

    fn garden_script(garden: &BTreeSet<GardenEntry>, flush: bool) -> String {
        let mut s = String::new();
        for set in [GARDEN_NET_SET, GARDEN_PROTO_SET, GARDEN_SVC_SET] {
            if flush {
                s.push_str(&format!("flush set inet {NFT_TABLE} {set}\n"));
            }
            push_elements(&mut s, set, garden.iter().filter(|g| garden_set_of(g) == set).map(garden_elem_text));
        }
        s
    }
}

/// The comment in a table's userdata TLVs (type u8, length u8, value).
fn udata_comment(d: &[u8]) -> Option<String> {
    let mut off = 0;
    while off + 2 <= d.len() {
        let (ty, len) = (d[off], d[off + 1] as usize);
        let v = d.get(off + 2..off + 2 + len)?;
        if ty == NFTNL_UDATA_TABLE_COMMENT {
            return Some(netlink::attr_str(v));
        }
        off += 2 + len;
    }
    None
}

/// Puts each member of `with` into its set and out of every other, over what a rebuild keeps.
fn place_members(members: &mut BTreeMap<NftSet, BTreeSet<Member>>, with: &BTreeMap<Member, NftSet>) {
    for (m, set) in with {
        for s in members.values_mut() {
            s.remove(m);
        }
        members.entry(*set).or_default().insert(*m);
    }
}

/// Builds NEWSETELEM or DELSETELEM messages for `members` of `set`, chunked.
fn elem_msgs(m: u16, set: &str, members: &[Member], out: &mut Vec<MsgBuilder>) {
    for chunk in members.chunks(ELEMS_PER_MSG) {
        let flags = if m == NFT_MSG_NEWSETELEM { NLM_F_CREATE | NLM_F_ACK } else { NLM_F_ACK };
        let mut b = nft_msg(m, flags)
            .attr_str(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE)
            .attr_str(NFTA_SET_ELEM_LIST_SET, set)
            .nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
        for member in chunk {
            b = b
                .nest_start(NFTA_LIST_ELEM)
                .nest_start(NFTA_SET_ELEM_KEY)
                .attr(NFTA_DATA_VALUE, &member_key(member))
                .nest_end()
                .nest_end();
        }
        out.push(b.nest_end());
    }
}

/// The messages of one commit, between BATCH_BEGIN and BATCH_END. The last change for a
/// (set, member) wins; a removal is "add, then delete" so it is idempotent.
fn commit_msgs(changes: &[SetChange]) -> Vec<MsgBuilder> {
    let mut last: BTreeMap<(NftSet, Member), bool> = BTreeMap::new();
    for c in changes {
        last.insert((c.set, c.member()), c.add);
    }
    let mut msgs =
        vec![MsgBuilder::new(NFNL_MSG_BATCH_BEGIN, 0).bytes(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES))];
    for set in NftSet::ALL {
        let touched: Vec<Member> = last.iter().filter(|((s, _), _)| *s == set).map(|((_, m), _)| *m).collect();
        if touched.is_empty() {
            continue;
        }
        let removed: Vec<Member> =
            last.iter().filter(|((s, _), add)| *s == set && !**add).map(|((_, m), _)| *m).collect();
        elem_msgs(NFT_MSG_NEWSETELEM, set.name(), &touched, &mut msgs);
        elem_msgs(NFT_MSG_DELSETELEM, set.name(), &removed, &mut msgs);
    }
    msgs.push(MsgBuilder::new(NFNL_MSG_BATCH_END, 0).bytes(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES)));
    msgs
}

impl Nft for NftNetlink {
    fn ensure_base_with(&mut self, garden: &[GardenEntry], with: &BTreeMap<Member, NftSet>) -> Result<()> {
        validate_garden(garden)?;
        let want = normalize_garden(garden);
        let probe = self.probe()?;
        if probe.layout_ok() {
            if self.read_garden()? == want {
                return Ok(());
            }
            tracing::info!(entries = want.len(), "rewriting the walled garden");
            return self.nft_script(&Self::garden_script(&want, true));
        }
        let mut members = if probe.table { self.read_members_for_rebuild()? } else { BTreeMap::new() };
        place_members(&mut members, with);
        tracing::info!(
            found = probe.comment.as_deref().unwrap_or(if probe.table { "unknown layout" } else { "no table" }),
            want = LAYOUT_COMMENT,
            kept = members.values().map(BTreeSet::len).sum::<usize>(),
            "building nft table inet pppgate"
        );
        let mut s = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
        s.push_str(&layout());
        for (set, m) in &members {
            push_elements(&mut s, set.name(), m.iter().map(|m| format!("{} . {}", m.ifindex, m.ip)));
        }
        s.push_str(&Self::garden_script(&want, false));
        self.nft_script(&s)
    }

    fn read(&mut self) -> Result<NftState> {
        let probe = self.probe()?;
        if !probe.table {
            return Ok(NftState::default());
        }
        // An older or damaged layout reads as what a rebuild would keep (bare addresses bound to
        // the interface carrying them), not as an error: the caller rebuilds it.
        let members = if probe.layout_ok() { self.read_members()? } else { self.read_members_for_rebuild()? };
        Ok(NftState { base_ok: probe.layout_ok(), members, garden: self.read_garden()? })
    }

    fn sets_of(&mut self, m: Member) -> Result<BTreeSet<NftSet>> {
        let mut reqs = vec![nft_msg(NFT_MSG_GETTABLE, 0).attr_str(NFTA_TABLE_NAME, NFT_TABLE)];
        for s in NftSet::ALL {
            reqs.push(
                nft_msg(NFT_MSG_GETSETELEM, 0)
                    .attr_str(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE)
                    .attr_str(NFTA_SET_ELEM_LIST_SET, s.name())
                    .nest_start(NFTA_SET_ELEM_LIST_ELEMENTS)
                    .nest_start(NFTA_LIST_ELEM)
                    .nest_start(NFTA_SET_ELEM_KEY)
                    .attr(NFTA_DATA_VALUE, &member_key(&m))
                    .nest_end()
                    .nest_end()
                    .nest_end(),
            );
        }
        let mut answers = self.sock.transact("get nft set elements", reqs)?.into_iter();
        match answers.next().expect("one answer per request") {
            Ok(_) => {}
            Err(e) if errno(&e) == Some(libc::ENOENT) => {
                return Err(Error::NotFound { what: "nft table", id: format!("inet {NFT_TABLE}") })
            }
            Err(source) => return Err(Error::Netlink { op: "get nft table".into(), source }),
        }
        let mut out = BTreeSet::new();
        for (s, a) in NftSet::ALL.into_iter().zip(answers) {
            match a {
                Ok(msgs) if msgs.iter().any(|(ty, _)| *ty == msg_type(NFT_MSG_NEWSETELEM)) => {
                    out.insert(s);
                }
                Ok(_) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(source) => return Err(Error::Netlink { op: format!("get element of {}", s.name()), source }),
            }
        }
        Ok(out)
    }

    fn commit(&mut self, changes: &[SetChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.sock.batch("commit nft set changes", commit_msgs(changes))?;
        // After the kernel accepted it: the record never holds what the kernel refused. An
        // error fails the caller (fail closed: a restore must never reopen what was closed).
        match &self.record {
            Some(r) => r.record(changes),
            None => Ok(()),
        }
    }

    fn table_present(&mut self) -> Result<bool> {
        Ok(self.probe()?.table)
    }

    fn sync_record(&mut self, want: &BTreeMap<Member, NftSet>) -> Result<()> {
        match &self.record {
            Some(r) => r.sync(want),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> GardenEntry {
        s.parse().unwrap()
    }

    #[test]
    fn chain_rule_counts_match_the_layout() {
        let text = layout();
        let mut counts = BTreeMap::new();
        let mut chain: Option<String> = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("chain ") {
                chain = Some(rest.trim_end_matches(" {").to_string());
            } else if line == "}" {
                chain = None;
            } else if let Some(c) = &chain {
                if !line.is_empty() && !line.starts_with("type ") {
                    *counts.entry(c.clone()).or_insert(0usize) += 1;
                }
            }
        }
        let want: BTreeMap<String, usize> = CHAIN_RULES.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        assert_eq!(counts, want);
        for (set, _) in SETS {
            assert!(text.contains(&format!("set {set} {{")), "{set} in layout");
        }
        assert!(text.contains(LAYOUT_COMMENT));
    }

    #[test]
    fn garden_normalization_drops_covered_entries() {
        let n = normalize_garden(&[
            g("10.0.0.0/24"),
            g("10.0.0.53/32"),
            g("10.0.0.0/24:udp:53"),
            g("192.0.2.0/24:tcp"),
            g("192.0.2.1/32:tcp:443"),
            g("192.0.2.1/32:udp:443"),
            g("198.51.100.0/24:tcp:80"),
            g("198.51.100.7/32:tcp:80"),
            g("198.51.100.7/32:tcp:81"),
            g("198.51.100.7/32:tcp:81"),
        ]);
        let want: BTreeSet<GardenEntry> = [
            "10.0.0.0/24",
            "192.0.2.0/24:tcp",
            "192.0.2.1/32:udp:443",
            "198.51.100.0/24:tcp:80",
            "198.51.100.7/32:tcp:81",
        ]
        .into_iter()
        .map(g)
        .collect();
        assert_eq!(n, want);
    }

    #[test]
    fn rbtree_decoding() {
        let e = |ip: [u8; 4], end: bool| Elem { key: ip.to_vec(), key_end: None, flags: if end { 1 } else { 0 } };
        // 10.0.0.0/24, 10.0.2.7/32 (listed in reverse, as the kernel does), open end at the top.
        let elems = vec![
            e([255, 0, 0, 0], false),
            e([10, 0, 2, 8], true),
            e([10, 0, 2, 7], false),
            e([10, 0, 1, 0], true),
            e([10, 0, 0, 0], false),
            e([0, 0, 0, 0], true),
        ];
        let r = rbtree_ranges(&elems);
        assert_eq!(
            r,
            vec![
                (Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 255)),
                (Ipv4Addr::new(10, 0, 2, 7), Ipv4Addr::new(10, 0, 2, 7)),
                (Ipv4Addr::new(255, 0, 0, 0), Ipv4Addr::BROADCAST)
            ]
        );
    }

    #[test]
    fn concat_decoding() {
        let el = Elem {
            key: vec![10, 0, 0, 0, 6, 0, 0, 0, 0, 53, 0, 0],
            key_end: Some(vec![10, 0, 0, 255, 6, 0, 0, 0, 0, 53, 0, 0]),
            flags: 0,
        };
        assert_eq!(concat_entries(&[el], true), vec![g("10.0.0.0/24:tcp:53")]);
        let el = Elem { key: vec![10, 0, 0, 9, 17, 0, 0, 0], key_end: Some(vec![10, 0, 0, 9, 17, 0, 0, 0]), flags: 0 };
        assert_eq!(concat_entries(&[el], false), vec![g("10.0.0.9/32:udp")]);
    }

    #[test]
    fn removal_is_add_then_delete_and_last_change_wins() {
        let m = Member::new(7, Ipv4Addr::new(100, 64, 0, 2));
        let msgs = commit_msgs(&[
            SetChange::new(NftSet::Pending, m, true),
            SetChange::new(NftSet::Full, m, true),
            SetChange::new(NftSet::Pending, m, false),
        ]);
        let types: Vec<u16> = msgs.iter().map(|m| m.msg_type()).collect();
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                msg_type(NFT_MSG_NEWSETELEM), // pending: add (for the removal)
                msg_type(NFT_MSG_DELSETELEM), // pending: delete
                msg_type(NFT_MSG_NEWSETELEM), // full: add
                NFNL_MSG_BATCH_END
            ]
        );
    }

    fn event(m: u16, family: u8, table: &str) -> (u16, Vec<u8>) {
        let msg = MsgBuilder::new(msg_type(m), 0).bytes(&nfgenmsg(family, 0)).attr_str(1, table).finish(1);
        let parsed = netlink::messages(&msg);
        (parsed[0].ty, parsed[0].payload.to_vec())
    }

    #[test]
    fn events_of_our_table_are_told_apart_from_everything_else() {
        let c = |(ty, p): (u16, Vec<u8>)| classify_event(ty, &p);
        assert_eq!(c(event(2, NFPROTO_INET, "pppgate")), NftEvent::Structure, "DELTABLE");
        assert_eq!(c(event(8, NFPROTO_INET, "pppgate")), NftEvent::Structure, "DELRULE");
        assert_eq!(c(event(6, NFPROTO_INET, "pppgate")), NftEvent::Structure, "NEWRULE");
        assert_eq!(c(event(14, NFPROTO_INET, "pppgate")), NftEvent::Elements);
        assert_eq!(c(event(2, NFPROTO_INET, "other")), NftEvent::Unrelated);
        assert_eq!(c(event(2, 2, "pppgate")), NftEvent::Unrelated, "ip pppgate is not ours");
        assert_eq!(c(event(1, NFPROTO_INET, "pppgate")), NftEvent::Unrelated, "a get is no change");
        let newgen = MsgBuilder::new(msg_type(NFT_MSG_NEWGEN), 0)
            .bytes(&nfgenmsg(0, 0))
            .attr_u32_be(1, 7)
            .attr_u32_be(2, 42)
            .attr_str(NFTA_GEN_PROC_NAME, "nft")
            .finish(1);
        let g = &netlink::messages(&newgen)[0];
        assert_eq!(classify_event(g.ty, g.payload), NftEvent::EndOfTransaction { process: Some("nft".into()) });
        assert_eq!(classify_event(0x0201, &[1, 0, 0, 0]), NftEvent::Unrelated, "another subsystem");
        assert!(is_pppgate_writer("pppd") && is_pppgate_writer("vpn-policy-appl") && !is_pppgate_writer("nft"));
    }

    #[test]
    fn member_keys_are_index_then_address() {
        let m = Member::new(0x0102_0304, Ipv4Addr::new(198, 51, 100, 7));
        let k = member_key(&m);
        assert_eq!(&k[..4], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&k[4..], &[198, 51, 100, 7]);
        assert_eq!(member_of_key(&k), Some(m));
        assert_eq!(member_of_key(&k[..4]), None);
    }

    #[test]
    fn bad_garden_entries_are_refused() {
        let bad = GardenEntry { net: "10.0.0.0/8".parse().unwrap(), proto: None, port: Some(53) };
        assert!(validate_garden(&[bad]).is_err());
        assert!(validate_garden(&[g("10.0.0.0/8:udp:53")]).is_ok());
    }
}

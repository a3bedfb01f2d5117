//! One snapshot of the network interfaces (rtnetlink link + address dumps): names, indexes,
//! kinds, IPv4 peer/local addresses and 64-bit counters. Used by the VALID check, reconcile and
//! the accounting collector; one pair of dumps serves any number of sessions.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_DUMP};
use crate::error::Result;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_STATS64: u16 = 23;
pub const IFLA_INFO_KIND: u16 = 1;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;

pub const IFF_UP: u32 = 0x1;

/// 64-bit interface counters as the kernel keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    /// `IFLA_INFO_KIND` (e.g. "ifb", "veth", "tun"); ppp devices have none.
    pub kind: Option<String>,
    pub counters: Option<Counters>,
    /// IPv4 peer addresses (point-to-point `IFA_ADDRESS` differing from `IFA_LOCAL`).
    pub peers: Vec<Ipv4Addr>,
    pub locals: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default)]
pub struct LinkSnapshot {
    pub by_name: BTreeMap<String, Link>,
}

/// Builds an `ifinfomsg` header.
pub fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = family;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// The first four fields of `struct rtnl_link_stats64`.
fn parse_stats64(data: &[u8]) -> Option<Counters> {
    if data.len() < 32 {
        return None;
    }
    let f = |i: usize| netlink::attr_u64(&data[i * 8..]).unwrap_or(0);
    Some(Counters { rx_packets: f(0), tx_packets: f(1), rx_bytes: f(2), tx_bytes: f(3) })
}

const RTM_NEWSTATS: u16 = 92;
const RTM_GETSTATS: u16 = 94;
const IFLA_STATS_LINK_64: u16 = 1;
const IFLA_STATS_FILTER_LINK_64: u32 = 1 << (IFLA_STATS_LINK_64 - 1);

pub fn parse_link(payload: &[u8]) -> Option<Link> {
    let hdr = payload.get(..16)?;
    let index = i32::from_ne_bytes(hdr[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(hdr[8..12].try_into().ok()?);
    let mut link = Link { index, flags, ..Default::default() };
    for (ty, data) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => link.name = netlink::attr_str(data),
            IFLA_LINKINFO => {
                for (t, d) in attrs(data) {
                    if t == IFLA_INFO_KIND {
                        link.kind = Some(netlink::attr_str(d));
                    }
                }
            }
            IFLA_STATS64 => link.counters = parse_stats64(data).or(link.counters),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

/// One IPv4 address message (RTM_NEWADDR, AF_INET) of an address dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub index: u32,
    pub address: Option<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
    pub label: Option<String>,
}

/// Parses an address dump message; `None` for another family or a short message.
pub(crate) fn parse_ifaddr(ty: u16, payload: &[u8]) -> Option<IfAddr> {
    if ty != RTM_NEWADDR || payload.len() < 8 || payload[0] != libc::AF_INET as u8 {
        return None;
    }
    let index = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let mut a = IfAddr { index, address: None, local: None, label: None };
    for (t, d) in attrs(&payload[8..]) {
        let ip = d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        match t {
            IFA_ADDRESS => a.address = ip,
            IFA_LOCAL => a.local = ip,
            IFA_LABEL => a.label = Some(netlink::attr_str(d)),
            _ => {}
        }
    }
    Some(a)
}

/// An RTM_GETADDR dump request for IPv4.
pub(crate) fn ifaddr_dump_request() -> MsgBuilder {
    ifaddr_dump_of(0)
}

/// An RTM_GETADDR dump request for the IPv4 addresses of one interface (0: all). The kernel
/// honours the index only with `NETLINK_GET_STRICT_CHK`; readers filter the answer themselves too.
fn ifaddr_dump_of(index: u32) -> MsgBuilder {
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    ifa[4..8].copy_from_slice(&index.to_ne_bytes());
    MsgBuilder::new(RTM_GETADDR, NLM_F_DUMP).bytes(&ifa)
}

impl Link {
    /// Records an IPv4 address: the local one, and the peer of a point-to-point address.
    pub(crate) fn add_ifaddr(&mut self, a: &IfAddr) {
        if let Some(l) = a.local {
            self.locals.push(l);
        }
        if let (Some(p), Some(l)) = (a.address, a.local) {
            if p != l {
                self.peers.push(p);
            }
        }
    }
}

impl LinkSnapshot {
    /// Dumps links and IPv4 addresses of the current network namespace.
    pub fn read() -> Result<LinkSnapshot> {
        let mut sock = Socket::open(Family::Route)?;
        Self::read_with(&mut sock)
    }

    pub fn read_with(sock: &mut Socket) -> Result<LinkSnapshot> {
        Self::read_inner(sock, false)
    }

    /// Like [`LinkSnapshot::read`] without the counters (`counters` is `None`): the kernel skips
    /// the statistics blocks, which are most of a link dump's size (VALID checks need names and
    /// addresses only).
    pub fn read_lean() -> Result<LinkSnapshot> {
        let mut sock = Socket::open(Family::Route)?;
        Self::read_inner(&mut sock, true)
    }

    /// What the accounting collector needs: interfaces with IPv4 addresses (as
    /// [`LinkSnapshot::read_addresses`]) and their 64-bit counters from one RTM_GETSTATS dump
    /// (`IFLA_STATS_LINK_64` only: ~200 bytes per device, where a link dump sends every device's
    /// per-family configuration too — with 10,000 sessions and their upload IFBs that dump is
    /// most of the collector's time). No kind or flags.
    pub fn read_counters() -> Result<LinkSnapshot> {
        let mut snap = Self::read_addresses()?;
        let mut sock = Socket::open(Family::Route)?;
        let mut by_index: BTreeMap<u32, Counters> = BTreeMap::new();
        let mut req = [0u8; 12];
        req[8..12].copy_from_slice(&IFLA_STATS_FILTER_LINK_64.to_ne_bytes());
        for (ty, p) in sock.dump("dump link statistics", MsgBuilder::new(RTM_GETSTATS, NLM_F_DUMP).bytes(&req))? {
            if ty != RTM_NEWSTATS || p.len() < 12 {
                continue;
            }
            let index = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes"));
            for (t, d) in attrs(&p[12..]) {
                if t == IFLA_STATS_LINK_64 {
                    if let Some(c) = parse_stats64(d) {
                        by_index.insert(index, c);
                    }
                }
            }
        }
        for link in snap.by_name.values_mut() {
            link.counters = by_index.get(&link.index).copied();
        }
        Ok(snap)
    }

    /// Interfaces as their IPv4 addresses describe them: one address dump (small messages, no
    /// link dump), names from `IFA_LABEL`, no kind, flags or counters. An interface without any
    /// IPv4 address is absent here — what VALID needs (`Mapping::validity`), since such an
    /// interface cannot carry CLIENT_IP as its peer either. On a box with 10,000 sessions (and
    /// their IFBs) this is ~10× cheaper than a link dump; the on-demand janitor runs it per login.
    ///
    /// A label that is not the device name (an `ip addr add … label ppp0:x` alias), or none,
    /// cannot be mapped back without the link dump: then the full [`LinkSnapshot::read`].
    pub fn read_addresses() -> Result<LinkSnapshot> {
        let mut sock = Socket::open(Family::Route)?;
        let mut snap = LinkSnapshot::default();
        for (ty, payload) in sock.dump("dump addresses", ifaddr_dump_request())? {
            let Some(a) = parse_ifaddr(ty, &payload) else { continue };
            let Some(name) = a.label.clone().filter(|n| !n.is_empty() && !n.contains(':')) else {
                return LinkSnapshot::read();
            };
            let link =
                snap.by_name.entry(name.clone()).or_insert_with(|| Link { index: a.index, name, ..Default::default() });
            if link.index != a.index {
                return LinkSnapshot::read();
            }
            link.add_ifaddr(&a);
        }
        Ok(snap)
    }

    fn read_inner(sock: &mut Socket, lean: bool) -> Result<LinkSnapshot> {
        let mut snap = LinkSnapshot::default();
        let mut by_index: BTreeMap<u32, String> = BTreeMap::new();
        let mut req = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP).bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0));
        if lean {
            req = req.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        }
        for (ty, payload) in sock.dump("dump links", req)? {
            if ty != RTM_NEWLINK {
                continue;
            }
            if let Some(l) = parse_link(&payload) {
                by_index.insert(l.index, l.name.clone());
                snap.by_name.insert(l.name.clone(), l);
            }
        }
        for (ty, payload) in sock.dump("dump addresses", ifaddr_dump_request())? {
            let Some(a) = parse_ifaddr(ty, &payload) else { continue };
            let Some(name) = by_index.get(&a.index) else { continue };
            if let Some(link) = snap.by_name.get_mut(name) {
                link.add_ifaddr(&a);
            }
        }
        Ok(snap)
    }

    /// The named interfaces only (index, flags, kind, IPv4 addresses; no counters): one link get
    /// and one address dump filtered by the kernel to that interface each, so the cost does not
    /// grow with the number of interfaces on the box. Names that do not exist are absent. Without
    /// strict dump checking (Linux < 4.20) this is [`LinkSnapshot::read_addresses`].
    pub fn read_named<S: AsRef<str>>(names: &[S]) -> Result<LinkSnapshot> {
        let mut sock = Socket::open(Family::Route)?;
        if !sock.strict() {
            return Self::read_addresses();
        }
        let mut snap = LinkSnapshot::default();
        for name in names {
            let Some(mut link) = get_link(&mut sock, name.as_ref())? else { continue };
            for (ty, payload) in sock.dump("dump addresses", ifaddr_dump_of(link.index))? {
                let Some(a) = parse_ifaddr(ty, &payload) else { continue };
                if a.index == link.index {
                    link.add_ifaddr(&a);
                }
            }
            snap.by_name.insert(link.name.clone(), link);
        }
        Ok(snap)
    }

    /// The peer addresses of interface `name`, or `None` when it does not exist.
    pub fn peer_of(&self, name: &str) -> Option<&[Ipv4Addr]> {
        self.by_name.get(name).map(|l| l.peers.as_slice())
    }

    pub fn get(&self, name: &str) -> Option<&Link> {
        self.by_name.get(name)
    }
}

/// The index of interface `name`, `None` when there is none (one ioctl, no dump).
pub fn ifindex(name: &str) -> Result<Option<u32>> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(i) => Ok(Some(i)),
        Err(nix::errno::Errno::ENODEV) => Ok(None),
        Err(source) => Err(crate::error::Error::Sys { call: "if_nametoindex", source }),
    }
}

/// One link looked up by name: index, flags and kind.
pub fn get_link(sock: &mut Socket, name: &str) -> Result<Option<Link>> {
    let req = get_link_msg(name);
    match sock.transact("get link", vec![req])?.pop().expect("one answer") {
        Ok(msgs) => Ok(msgs.iter().filter(|(ty, _)| *ty == RTM_NEWLINK).find_map(|(_, p)| parse_link(p))),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
        Err(source) => Err(crate::error::Error::Netlink { op: format!("get link {name}"), source }),
    }
}

/// An RTM_GETLINK request for one interface by name (for [`Socket::transact`]).
pub fn get_link_msg(name: &str) -> MsgBuilder {
    MsgBuilder::new(RTM_GETLINK, 0)
        .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        // Skip the per-VF and stats blobs: only index, flags and kind are wanted.
        .attr_u32(IFLA_EXT_MASK, 0)
}

const IFLA_EXT_MASK: u16 = 29;
/// `IFLA_EXT_MASK` flag: leave the statistics out of link messages.
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

/// Every link of the current namespace (one dump, without counters: `counters` is `None`).
pub fn dump_links(sock: &mut Socket) -> Result<Vec<Link>> {
    let req = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP)
        .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0))
        .attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    Ok(sock
        .dump("dump links", req)?
        .iter()
        .filter(|(ty, _)| *ty == RTM_NEWLINK)
        .filter_map(|(_, p)| parse_link(p))
        .collect())
}

/// The links of one kind (`IFLA_INFO_KIND`, e.g. "ifb"), without counters. The kernel filters by
/// kind only with `NETLINK_GET_STRICT_CHK` (the caller's socket); the answer is filtered here too.
pub fn dump_links_of_kind(sock: &mut Socket, kind: &str) -> Result<Vec<Link>> {
    let req = MsgBuilder::new(RTM_GETLINK, NLM_F_DUMP)
        .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0))
        .attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        .nest_start(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, kind)
        .nest_end();
    Ok(sock
        .dump("dump links", req)?
        .iter()
        .filter(|(ty, _)| *ty == RTM_NEWLINK)
        .filter_map(|(_, p)| parse_link(p))
        .filter(|l| l.kind.as_deref() == Some(kind))
        .collect())
}

/// Names of the links with these indexes (one round trip; gone ones are left out).
pub fn names_of(sock: &mut Socket, indexes: &[u32]) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for chunk in indexes.chunks(96) {
        let reqs = chunk
            .iter()
            .map(|i| {
                MsgBuilder::new(RTM_GETLINK, 0)
                    .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, *i as i32, 0, 0))
                    .attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
            })
            .collect();
        for (i, a) in chunk.iter().zip(sock.transact("get links", reqs)?) {
            match a {
                Ok(msgs) => {
                    if let Some(l) = msgs.iter().filter(|(t, _)| *t == RTM_NEWLINK).find_map(|(_, p)| parse_link(p)) {
                        out.insert(*i, l.name);
                    }
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => {}
                Err(source) => return Err(crate::error::Error::Netlink { op: format!("get link {i}"), source }),
            }
        }
    }
    Ok(out)
}

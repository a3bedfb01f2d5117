//! Routes pppgate owns: IPv4 routes marked with protocol [`RTPROT_PPPGATE`], over rtnetlink.
//! Only routes carrying that protocol are read back or deleted, so the operator's routes (and the
//! kernel's own) are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::links::{self, get_link};
use super::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use super::{OwnedRoute, RouteQuery, Routes, RTPROT_PPPGATE};
use crate::error::{Error, Result};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;

const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
/// In a delete: match any scope.
const RT_SCOPE_NOWHERE: u8 = 255;

/// `rtmsg`. Tables above 255 do not fit its u8 field: it then says RT_TABLE_UNSPEC and the real
/// id travels in RTA_TABLE (which is always sent).
fn rtmsg(dst_len: u8, table: u32, scope: u8, ty: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = libc::AF_INET as u8;
    b[1] = dst_len;
    b[4] = if table < 256 { table as u8 } else { 0 };
    b[5] = RTPROT_PPPGATE;
    b[6] = scope;
    b[7] = ty;
    b
}

/// The real routes backend.
pub struct RoutesNetlink {
    sock: Socket,
}

impl std::fmt::Debug for RoutesNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutesNetlink").finish_non_exhaustive()
    }
}

impl RoutesNetlink {
    pub fn new() -> Result<RoutesNetlink> {
        Ok(RoutesNetlink { sock: Socket::open(Family::Route)? })
    }

    fn route_msg(ty: u16, flags: u16, r: &OwnedRoute, ifindex: u32, scope: u8, rtype: u8) -> MsgBuilder {
        let mut m = MsgBuilder::new(ty, flags)
            .bytes(&rtmsg(r.dst.prefix_len(), r.table, scope, rtype))
            .attr(RTA_DST, &r.dst.network().octets())
            .attr_u32(RTA_TABLE, r.table)
            .attr_u32(RTA_OIF, ifindex);
        if let Some(gw) = r.gateway {
            m = m.attr(RTA_GATEWAY, &gw.octets());
        }
        if let Some(metric) = r.metric {
            m = m.attr_u32(RTA_PRIORITY, metric);
        }
        m
    }
}

fn parse_route(payload: &[u8], names: &BTreeMap<u32, String>) -> Option<OwnedRoute> {
    let hdr = payload.get(..12)?;
    if hdr[0] != libc::AF_INET as u8 || hdr[5] != RTPROT_PPPGATE || hdr[7] != RTN_UNICAST {
        return None;
    }
    let mut table = u32::from(hdr[4]);
    let (mut dst, mut gateway, mut oif, mut metric) = (Ipv4Addr::UNSPECIFIED, None, None, None);
    for (t, d) in attrs(&payload[12..]) {
        let ip = || d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        match t {
            RTA_DST => dst = ip()?,
            RTA_GATEWAY => gateway = ip(),
            RTA_OIF => oif = netlink::attr_u32(d),
            RTA_PRIORITY => metric = netlink::attr_u32(d).filter(|m| *m != 0),
            RTA_TABLE => table = netlink::attr_u32(d)?,
            _ => {}
        }
    }
    let dev = oif.map(|i| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"))).unwrap_or_default();
    Some(OwnedRoute { dst: Ipv4Net::new(dst, hdr[1]).ok()?, gateway, dev, table, metric })
}

fn oif_of(payload: &[u8]) -> Option<u32> {
    attrs(payload.get(12..)?).find(|(t, _)| *t == RTA_OIF).and_then(|(_, d)| netlink::attr_u32(d))
}

fn table_of(payload: &[u8]) -> Option<u32> {
    let hdr = payload.get(..12)?;
    let table = attrs(&payload[12..]).find(|(t, _)| *t == RTA_TABLE).and_then(|(_, d)| netlink::attr_u32(d));
    Some(table.unwrap_or(u32::from(hdr[4])))
}

/// A route dump request for our IPv4 unicast routes. With `NETLINK_GET_STRICT_CHK` the kernel
/// sends only routes with protocol 77, of `table` (0: all tables) through `oif` (if given); without
/// it, everything (the caller filters anyway).
fn dump_request(table: u32, oif: Option<u32>) -> MsgBuilder {
    let mut hdr = [0u8; 12];
    hdr[0] = libc::AF_INET as u8;
    hdr[5] = RTPROT_PPPGATE;
    hdr[7] = RTN_UNICAST;
    let mut m = MsgBuilder::new(RTM_GETROUTE, NLM_F_DUMP).bytes(&hdr);
    if table != 0 {
        m = m.attr_u32(RTA_TABLE, table);
    }
    if let Some(i) = oif {
        m = m.attr_u32(RTA_OIF, i);
    }
    m
}

impl RoutesNetlink {
    /// Our routes (protocol 77) of one filtered dump, as raw payloads filtered again here.
    fn dump_ours(&mut self, table: u32, oif: Option<u32>) -> Result<Vec<Vec<u8>>> {
        self.sock.strict();
        let op = match oif {
            Some(i) => format!("dump routes via ifindex {i}"),
            None => format!("dump routes of table {table}"),
        };
        let msgs = match self.sock.dump(&op, dump_request(table, oif)) {
            Ok(m) => m,
            // A table that does not exist (yet) holds no routes; a device gone has none either.
            Err(e) if matches!(netlink::errno_of(&e), Some(libc::ENOENT) | Some(libc::ENODEV)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(msgs
            .into_iter()
            .filter(|(ty, p)| *ty == RTM_NEWROUTE && p.get(5) == Some(&RTPROT_PPPGATE))
            .filter(|(_, p)| table == 0 || table_of(p) == Some(table))
            .filter(|(_, p)| oif.is_none() || oif_of(p) == oif)
            .map(|(_, p)| p)
            .collect())
    }
}

impl Routes for RoutesNetlink {
    /// Every IPv4 route with protocol 77, from all tables. A metric of 0 reads back as `None`
    /// (the kernel does not report priority 0).
    fn read(&mut self) -> Result<Vec<OwnedRoute>> {
        // Filtered by the kernel to protocol 77 (strict checking), so the kernel's own routes for
        // every session's peer are not sent at all.
        let ours = self.dump_ours(0, None)?;
        // Names only for the devices our routes use (not a dump of every link on the box).
        let mut indexes: Vec<u32> = ours.iter().filter_map(|p| oif_of(p)).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let names = links::names_of(&mut self.sock, &indexes)?;
        let mut out: Vec<OwnedRoute> = ours.iter().filter_map(|p| parse_route(p, &names)).collect();
        out.sort();
        Ok(out)
    }

    /// Filtered dumps: one per interface (its routes in every table) and one per table the query
    /// names (our routes in it, kept when they match a wanted destination or are the table's
    /// default). Names are looked up only for the devices of what is kept.
    fn read_scoped(&mut self, q: &RouteQuery) -> Result<Vec<OwnedRoute>> {
        let mut names: BTreeMap<u32, String> = BTreeMap::new();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for ifname in &q.ifnames {
            let Some(link) = get_link(&mut self.sock, ifname)? else { continue };
            names.insert(link.index, link.name.clone());
            payloads.extend(self.dump_ours(0, Some(link.index))?);
        }
        for table in q.tables() {
            let none = BTreeMap::new();
            for p in self.dump_ours(table, None)? {
                // Keep only what the query asks for (the device name does not matter here).
                let Some(r) = parse_route(&p, &none) else { continue };
                if q.dsts.contains(&(r.dst, r.table))
                    || (r.dst.prefix_len() == 0 && q.table_defaults.contains(&r.table))
                {
                    payloads.push(p);
                }
            }
        }
        let mut missing: Vec<u32> =
            payloads.iter().filter_map(|p| oif_of(p)).filter(|i| !names.contains_key(i)).collect();
        missing.sort_unstable();
        missing.dedup();
        names.extend(links::names_of(&mut self.sock, &missing)?);
        let out: BTreeSet<OwnedRoute> = payloads.iter().filter_map(|p| parse_route(p, &names)).collect();
        Ok(out.into_iter().filter(|r| q.wants(r)).collect())
    }

    fn add(&mut self, r: &OwnedRoute) -> Result<()> {
        if r.dst.trunc() != r.dst {
            return Err(Error::invalid("route destination", r.dst.to_string(), "host bits set"));
        }
        let dev = get_link(&mut self.sock, &r.dev)?
            .ok_or_else(|| Error::NotFound { what: "interface", id: r.dev.clone() })?;
        let scope = if r.gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        let m = Self::route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, r, dev.index, scope, RTN_UNICAST);
        self.sock.request(&format!("add route {} dev {} table {}", r.dst, r.dev, r.table), m)
    }

    /// `NLM_F_CREATE|NLM_F_EXCL` first: the kernel answers EEXIST when any route has the key
    /// (same destination, table and priority), and only then is the table dumped for the
    /// holder. Without the holder being ours through another interface, the route is added as
    /// [`Routes::add`] does (replacing a foreign one).
    fn add_unless_held(&mut self, r: &OwnedRoute) -> Result<Option<OwnedRoute>> {
        if r.dst.trunc() != r.dst {
            return Err(Error::invalid("route destination", r.dst.to_string(), "host bits set"));
        }
        let dev = get_link(&mut self.sock, &r.dev)?
            .ok_or_else(|| Error::NotFound { what: "interface", id: r.dev.clone() })?;
        let scope = if r.gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        let m = Self::route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, r, dev.index, scope, RTN_UNICAST);
        match self.sock.request(&format!("add route {} dev {} table {}", r.dst, r.dev, r.table), m) {
            Ok(()) => return Ok(None),
            Err(e) if netlink::errno_of(&e) == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        let q = RouteQuery { dsts: BTreeSet::from([(r.dst, r.table)]), ..Default::default() };
        if let Some(h) = self.read_scoped(&q)?.into_iter().find(|h| h.key() == r.key() && h.dev != r.dev) {
            return Ok(Some(h));
        }
        self.add(r).map(|()| None)
    }

    fn del(&mut self, r: &OwnedRoute) -> Result<()> {
        // A route through a device that is gone went with the device.
        let Some(dev) = get_link(&mut self.sock, &r.dev)? else { return Ok(()) };
        let m = Self::route_msg(RTM_DELROUTE, 0, r, dev.index, RT_SCOPE_NOWHERE, 0);
        match self.sock.request(&format!("delete route {} dev {} table {}", r.dst, r.dev, r.table), m) {
            Err(e) if matches!(netlink::errno_of(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            other => other,
        }
    }
}

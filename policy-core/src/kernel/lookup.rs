//! Asks the kernel which route a packet takes (`ip route get <dst> from <src> iif <if>`), for
//! `pppgate pbr check`: the answer comes from the kernel's own FIB lookup, rules included.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::links::LinkSnapshot;
use super::netlink::{attr_u32, attrs, Family, MsgBuilder, Socket};
use crate::error::{Error, Result};

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_IIF: u16 = 3;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RTM_F_LOOKUP_TABLE: u32 = 0x1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteLookup {
    pub dst: Ipv4Addr,
    pub src: Option<Ipv4Addr>,
    pub iif: Option<String>,
    pub table: u32,
    pub gateway: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub prefsrc: Option<Ipv4Addr>,
}

fn ip4(d: &[u8]) -> Option<Ipv4Addr> {
    d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// The kernel's route for a packet to `dst`, optionally from `src` arriving on `iif`.
pub fn route_get(dst: Ipv4Addr, src: Option<Ipv4Addr>, iif: Option<&str>) -> Result<RouteLookup> {
    let mut sock = Socket::open(Family::Route)?;
    let links = LinkSnapshot::read_with(&mut sock)?;
    let iif_index = match iif {
        Some(name) => {
            Some(links.get(name).map(|l| l.index).ok_or_else(|| Error::invalid("interface", name, "does not exist"))?)
        }
        None => None,
    };
    let mut rtm = [0u8; 12];
    rtm[0] = libc::AF_INET as u8;
    rtm[1] = 32;
    rtm[2] = if src.is_some() { 32 } else { 0 };
    rtm[8..12].copy_from_slice(&RTM_F_LOOKUP_TABLE.to_ne_bytes());
    let mut req = MsgBuilder::new(RTM_GETROUTE, 0).bytes(&rtm).attr(RTA_DST, &dst.octets());
    if let Some(s) = src {
        req = req.attr(RTA_SRC, &s.octets());
    }
    if let Some(i) = iif_index {
        req = req.attr_u32(RTA_IIF, i);
    }
    let replies = sock.dump_single("route lookup", req)?;
    let (_, payload) = replies
        .into_iter()
        .find(|(ty, _)| *ty == RTM_NEWROUTE)
        .ok_or_else(|| Error::Netlink { op: "route lookup".into(), source: std::io::Error::other("no answer") })?;
    let mut out = RouteLookup {
        dst,
        src,
        iif: iif.map(str::to_string),
        table: payload.get(4).copied().unwrap_or(0) as u32,
        gateway: None,
        dev: None,
        prefsrc: None,
    };
    for (ty, data) in attrs(payload.get(12..).unwrap_or(&[])) {
        match ty {
            RTA_TABLE => out.table = attr_u32(data).unwrap_or(out.table),
            RTA_GATEWAY => out.gateway = ip4(data),
            RTA_PREFSRC => out.prefsrc = ip4(data),
            RTA_OIF => {
                let idx = attr_u32(data).unwrap_or(0);
                out.dev = links.by_name.values().find(|l| l.index == idx).map(|l| l.name.clone());
            }
            _ => {}
        }
    }
    Ok(out)
}

impl std::fmt::Display for RouteLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(s) = self.src {
            write!(f, " from {s}")?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        write!(f, " table {}", self.table)?;
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        Ok(())
    }
}

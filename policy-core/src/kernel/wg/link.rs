//! The WireGuard interface's link, IPv4 addresses and pppgate's WireGuard routes (protocol
//! [`RTPROT_PPPGATE_WG`]), over rtnetlink. The interface is pppgate's own: every IPv4 address on
//! it is managed (the gateways 10.X.0.1/16 of the tenants it serves).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{L3State, RTPROT_PPPGATE_WG};
use crate::error::{Error, Result};
use crate::kernel::links::{
    get_link, ifinfomsg, Link, IFF_UP, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO, RTM_DELLINK, RTM_NEWLINK,
};
use crate::kernel::netlink::{
    self, attrs, Family, MsgBuilder, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

fn sock() -> Result<Socket> {
    Socket::open(Family::Route)
}

pub fn get(ifname: &str) -> Result<Option<Link>> {
    get_link(&mut sock()?, ifname)
}

/// `ip link add <ifname> type wireguard`.
pub fn create_wireguard(ifname: &str) -> Result<()> {
    let m = MsgBuilder::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
        .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0))
        .attr_str(IFLA_IFNAME, ifname)
        .nest_start(IFLA_LINKINFO)
        .attr_str(IFLA_INFO_KIND, "wireguard")
        .nest_end();
    sock()?.request(&format!("create wireguard interface {ifname}"), m)
}

pub fn delete(ifname: &str) -> Result<()> {
    let mut s = sock()?;
    let Some(l) = get_link(&mut s, ifname)? else { return Ok(()) };
    let m = MsgBuilder::new(RTM_DELLINK, 0).bytes(&ifinfomsg(libc::AF_UNSPEC as u8, l.index as i32, 0, 0));
    s.request(&format!("delete interface {ifname}"), m)
}

fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = libc::AF_INET as u8;
    b[1] = prefix;
    b[3] = RT_SCOPE_UNIVERSE;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

fn rtmsg(dst_len: u8, scope: u8, ty: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = libc::AF_INET as u8;
    b[1] = dst_len;
    b[4] = RT_TABLE_MAIN as u8;
    b[5] = RTPROT_PPPGATE_WG;
    b[6] = scope;
    b[7] = ty;
    b
}

/// The link state, its IPv4 addresses and our routes through it.
pub fn read(ifname: &str) -> Result<Option<L3State>> {
    let mut s = sock()?;
    let Some(l) = get_link(&mut s, ifname)? else { return Ok(None) };
    let mut st = L3State { up: l.flags & IFF_UP != 0, ..Default::default() };
    let mut hdr = [0u8; 8];
    hdr[0] = libc::AF_INET as u8;
    for (ty, p) in s.dump("dump addresses", MsgBuilder::new(RTM_GETADDR, NLM_F_DUMP).bytes(&hdr))? {
        if ty != RTM_NEWADDR || p.len() < 8 {
            continue;
        }
        let index = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes"));
        if index != l.index || p[0] != libc::AF_INET as u8 {
            continue;
        }
        let mut local = None;
        for (t, d) in attrs(&p[8..]) {
            if t == IFA_LOCAL || (t == IFA_ADDRESS && local.is_none()) {
                local = d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            }
        }
        if let Some(a) = local {
            st.addresses.push(Ipv4Net::new(a, p[1]).map_err(|_| Error::invalid("prefix", p[1].to_string(), "bad"))?);
        }
    }
    let mut rhdr = [0u8; 12];
    rhdr[0] = libc::AF_INET as u8;
    for (ty, p) in s.dump("dump routes", MsgBuilder::new(RTM_GETROUTE, NLM_F_DUMP).bytes(&rhdr))? {
        if ty != RTM_NEWROUTE || p.len() < 12 || p[5] != RTPROT_PPPGATE_WG {
            continue;
        }
        let (mut dst, mut oif) = (Ipv4Addr::UNSPECIFIED, None);
        for (t, d) in attrs(&p[12..]) {
            match t {
                RTA_DST => dst = d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3])).unwrap_or(dst),
                RTA_OIF => oif = netlink::attr_u32(d),
                _ => {}
            }
        }
        if oif == Some(l.index) {
            if let Ok(n) = Ipv4Net::new(dst, p[1]) {
                st.routes.push(n);
            }
        }
    }
    st.addresses.sort();
    st.routes.sort();
    Ok(Some(st))
}

pub fn set_up(ifname: &str) -> Result<()> {
    let mut s = sock()?;
    let l = get_link(&mut s, ifname)?.ok_or_else(|| Error::NotFound { what: "interface", id: ifname.into() })?;
    let m = MsgBuilder::new(RTM_NEWLINK, 0).bytes(&ifinfomsg(libc::AF_UNSPEC as u8, l.index as i32, IFF_UP, IFF_UP));
    s.request(&format!("set {ifname} up"), m)
}

fn index(s: &mut Socket, ifname: &str) -> Result<u32> {
    Ok(get_link(s, ifname)?.ok_or_else(|| Error::NotFound { what: "interface", id: ifname.into() })?.index)
}

pub fn add_address(ifname: &str, a: Ipv4Net) -> Result<()> {
    let mut s = sock()?;
    let i = index(&mut s, ifname)?;
    let m = MsgBuilder::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)
        .bytes(&ifaddrmsg(a.prefix_len(), i))
        .attr(IFA_LOCAL, &a.addr().octets())
        .attr(IFA_ADDRESS, &a.addr().octets());
    s.request(&format!("add address {a} to {ifname}"), m)
}

pub fn del_address(ifname: &str, a: Ipv4Net) -> Result<()> {
    let mut s = sock()?;
    let i = index(&mut s, ifname)?;
    let m = MsgBuilder::new(RTM_DELADDR, 0)
        .bytes(&ifaddrmsg(a.prefix_len(), i))
        .attr(IFA_LOCAL, &a.addr().octets())
        .attr(IFA_ADDRESS, &a.addr().octets());
    match s.request(&format!("delete address {a} from {ifname}"), m) {
        Err(e) if matches!(netlink::errno_of(&e), Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT)) => Ok(()),
        other => other,
    }
}

fn route_msg(ty: u16, flags: u16, dst: Ipv4Net, index: u32) -> MsgBuilder {
    MsgBuilder::new(ty, flags)
        .bytes(&rtmsg(
            dst.prefix_len(),
            if ty == RTM_DELROUTE { 255 } else { RT_SCOPE_LINK },
            if ty == RTM_DELROUTE { 0 } else { RTN_UNICAST },
        ))
        .attr(RTA_DST, &dst.network().octets())
        .attr_u32(RTA_TABLE, RT_TABLE_MAIN)
        .attr_u32(RTA_OIF, index)
}

pub fn add_route(ifname: &str, dst: Ipv4Net) -> Result<()> {
    let mut s = sock()?;
    let i = index(&mut s, ifname)?;
    s.request(&format!("add route {dst} dev {ifname}"), route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, dst, i))
}

pub fn del_route(ifname: &str, dst: Ipv4Net) -> Result<()> {
    let mut s = sock()?;
    let i = index(&mut s, ifname)?;
    match s.request(&format!("delete route {dst} dev {ifname}"), route_msg(RTM_DELROUTE, 0, dst, i)) {
        Err(e) if matches!(netlink::errno_of(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
        other => other,
    }
}

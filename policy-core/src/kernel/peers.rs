//! The interfaces' IPv4 addresses from one RTM_GETADDR dump, without the link dump.
//!
//! Enough for the VALID check (`Mapping::validity`): a mapping is VALID only when PPP_IF carries
//! CLIENT_IP as its peer, and an interface carrying an address is an interface that exists. With
//! a thousand sessions this is several times cheaper than [`LinkSnapshot::read`], which also
//! dumps every link with its statistics; the on-demand janitor runs it per login.
//!
//! IPv4 addresses carry the interface name as their label. A label that is not the device name
//! (an `ip addr add … label ppp0:x` alias) cannot be mapped back without the link dump; then the
//! full [`LinkSnapshot::read`] is used instead.

use std::net::Ipv4Addr;

use super::links::{Link, LinkSnapshot};
use super::netlink::{attrs, attr_str, Family, MsgBuilder, Socket, NLM_F_DUMP};
use crate::error::Result;

const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;

/// Interfaces with IPv4 addresses, keyed by name, with peers and local addresses filled in.
pub fn address_snapshot() -> Result<LinkSnapshot> {
    let mut sock = Socket::open(Family::Route)?;
    let mut ifa = [0u8; 8];
    ifa[0] = libc::AF_INET as u8;
    let req = MsgBuilder::new(RTM_GETADDR, NLM_F_DUMP).bytes(&ifa);
    let mut snap = LinkSnapshot::default();
    for (ty, payload) in sock.dump("dump addresses", req)? {
        if ty != RTM_NEWADDR || payload.len() < 8 || payload[0] != libc::AF_INET as u8 {
            continue;
        }
        let index = u32::from_ne_bytes(payload[4..8].try_into().expect("4 bytes"));
        let (mut address, mut local, mut label) = (None, None, None);
        for (t, d) in attrs(&payload[8..]) {
            let ip = d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            match t {
                IFA_ADDRESS => address = ip,
                IFA_LOCAL => local = ip,
                IFA_LABEL => label = Some(attr_str(d)),
                _ => {}
            }
        }
        let Some(name) = label else { return LinkSnapshot::read() };
        if name.contains(':') {
            return LinkSnapshot::read();
        }
        let link = snap.by_name.entry(name.clone()).or_insert_with(|| Link { index, name, ..Default::default() });
        if link.index != index {
            return LinkSnapshot::read();
        }
        if let Some(l) = local {
            link.locals.push(l);
        }
        if let (Some(a), Some(l)) = (address, local) {
            if a != l {
                link.peers.push(a);
            }
        }
    }
    Ok(snap)
}

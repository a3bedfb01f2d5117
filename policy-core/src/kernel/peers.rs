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

use super::links::{ifaddr_dump_request, parse_ifaddr, Link, LinkSnapshot};
use super::netlink::{Family, Socket};
use crate::error::Result;

/// Interfaces with IPv4 addresses, keyed by name, with peers and local addresses filled in.
pub fn address_snapshot() -> Result<LinkSnapshot> {
    let mut sock = Socket::open(Family::Route)?;
    let mut snap = LinkSnapshot::default();
    for (ty, payload) in sock.dump("dump addresses", ifaddr_dump_request())? {
        let Some(a) = parse_ifaddr(ty, &payload) else { continue };
        // An alias label (`ppp0:x`) or none cannot be mapped back to its device without the
        // link dump: then the full snapshot.
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

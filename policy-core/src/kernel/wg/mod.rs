//! The concentrator's WireGuard interface, behind one trait with two implementations:
//! * [`genl::Genl`]: the kernel module over generic netlink (family "wireguard"), in-process;
//! * [`uapi::Uapi`]: a userspace implementation (Debian's wireguard-go) through its UAPI socket
//!   `/var/run/wireguard/<if>.sock` (the text protocol `get=1` / `set=1` wg(8) speaks).
//!
//! Both are read back after every change (the reconcile in wg::reconcile re-reads the device and
//! re-plans; anything left is a verification error). The peer plan ([`plan_peers`]) is a pure
//! function of the desired peers and the device as read.

pub mod genl;
pub mod isolation;
pub mod link;
pub mod uapi;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::error::Result;
use crate::wg::keys::Key;

/// Route protocol of the routes pppgate's WireGuard reconcile owns (networks routed to routers),
/// distinct from the policy engine's 77 so neither removes the other's routes.
pub const RTPROT_PPPGATE_WG: u8 = 78;

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<Ipv4Net>,
    pub keepalive: u16,
    /// Unix seconds of the latest handshake; None: never.
    pub last_handshake: Option<i64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerState>,
}

/// A peer as SQL wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: Key,
    pub preshared_key: Key,
    pub allowed_ips: Vec<Ipv4Net>,
    pub keepalive: u16,
}

/// One change of a device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// Add the peer or bring it to exactly this (allowed IPs replaced).
    Set(PeerSpec),
    Remove(Key),
}

/// The device-level change: key and port (None: leave as is) and peer changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChange {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerChange>,
}

impl DeviceChange {
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none() && self.listen_port.is_none() && self.peers.is_empty()
    }
}

fn sorted(v: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// What must change so the device holds exactly `want` (key, port, peers): a pure function.
pub fn plan_device(private_key: &Key, listen_port: u16, want: &[PeerSpec], have: &DeviceState) -> DeviceChange {
    let mut c = DeviceChange::default();
    if have.private_key.as_ref() != Some(private_key) {
        c.private_key = Some(private_key.clone());
    }
    if have.listen_port != listen_port {
        c.listen_port = Some(listen_port);
    }
    c.peers = plan_peers(want, &have.peers);
    c
}

/// Peer changes: remove peers SQL does not have, set peers that are missing or differ.
pub fn plan_peers(want: &[PeerSpec], have: &[PeerState]) -> Vec<PeerChange> {
    let have: BTreeMap<[u8; 32], &PeerState> = have.iter().map(|p| (*p.public_key.as_bytes(), p)).collect();
    let wanted: BTreeMap<[u8; 32], &PeerSpec> = want.iter().map(|p| (*p.public_key.as_bytes(), p)).collect();
    let mut out = Vec::new();
    for (k, p) in &have {
        if !wanted.contains_key(k) {
            out.push(PeerChange::Remove(p.public_key.clone()));
        }
    }
    for (k, w) in &wanted {
        let same = have.get(k).is_some_and(|h| {
            h.preshared_key.as_ref() == Some(&w.preshared_key)
                && sorted(&h.allowed_ips) == sorted(&w.allowed_ips)
                && h.keepalive == w.keepalive
        });
        if !same {
            out.push(PeerChange::Set((*w).clone()));
        }
    }
    out
}

/// A WireGuard implementation driving one interface.
pub trait WgDevice {
    /// Which implementation this is ("kernel" or "userspace").
    fn kind(&self) -> &'static str;
    /// Creates the interface when it does not exist; true when it was created now.
    fn ensure_interface(&mut self, ifname: &str) -> Result<bool>;
    /// Reads the device; None when the interface does not exist.
    fn read(&mut self, ifname: &str) -> Result<Option<DeviceState>>;
    /// Applies a change.
    fn apply(&mut self, ifname: &str, change: &DeviceChange) -> Result<()>;
    /// Deletes the interface (tests, `wg reconcile` never does).
    fn delete_interface(&mut self, ifname: &str) -> Result<()>;
}

/// The interface's layer-3 side as read back: IPv4 addresses and pppgate's WireGuard routes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct L3State {
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
    pub routes: Vec<Ipv4Net>,
}

/// The interface's gateway addresses (10.X.0.1/16), as `Ipv4Net` with the host address kept.
pub fn host_net(a: Ipv4Addr, prefix: u8) -> Ipv4Net {
    Ipv4Net::new(a, prefix).expect("valid prefix")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::keys::{generate_private, generate_psk, public_of};

    fn spec(n: &str) -> PeerSpec {
        PeerSpec {
            public_key: public_of(&generate_private().unwrap()),
            preshared_key: generate_psk().unwrap(),
            allowed_ips: vec![n.parse().unwrap()],
            keepalive: 0,
        }
    }

    fn state(s: &PeerSpec) -> PeerState {
        PeerState {
            public_key: s.public_key.clone(),
            preshared_key: Some(s.preshared_key.clone()),
            endpoint: None,
            allowed_ips: s.allowed_ips.clone(),
            keepalive: s.keepalive,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }

    #[test]
    fn peer_plan_adds_removes_and_updates() {
        let a = spec("10.100.1.1/32");
        let b = spec("10.100.1.2/32");
        let c = spec("10.101.1.1/32");
        assert_eq!(plan_peers(&[a.clone(), b.clone()], &[state(&a), state(&b)]), vec![]);
        let stray = state(&c);
        let plan = plan_peers(&[a.clone(), b.clone()], &[state(&a), state(&b), stray.clone()]);
        assert_eq!(plan, vec![PeerChange::Remove(c.public_key.clone())]);
        let plan = plan_peers(&[a.clone(), b.clone()], &[state(&a), stray]);
        assert_eq!(plan, vec![PeerChange::Remove(c.public_key.clone()), PeerChange::Set(b.clone())]);
        let plan = plan_peers(&[a.clone(), b.clone()], &[state(&a)]);
        assert_eq!(plan, vec![PeerChange::Set(b.clone())]);
        // Allowed IPs, preshared key or keepalive differing: set again.
        let mut b2 = state(&b);
        b2.allowed_ips.push("10.200.0.0/24".parse().unwrap());
        assert_eq!(plan_peers(std::slice::from_ref(&b), &[b2]), vec![PeerChange::Set(b.clone())]);
        let mut b3 = state(&b);
        b3.preshared_key = None;
        assert_eq!(plan_peers(std::slice::from_ref(&b), &[b3]), vec![PeerChange::Set(b.clone())]);
        // Order of allowed IPs does not matter.
        let mut d = spec("10.100.1.3/32");
        d.allowed_ips.push("10.200.0.0/24".parse().unwrap());
        let mut ds = state(&d);
        ds.allowed_ips.reverse();
        assert_eq!(plan_peers(std::slice::from_ref(&d), &[ds]), vec![]);
    }

    #[test]
    fn device_plan_sets_key_and_port() {
        let k = generate_private().unwrap();
        let have = DeviceState { private_key: None, listen_port: 0, peers: vec![] };
        let c = plan_device(&k, 51820, &[], &have);
        assert_eq!(c.private_key.as_ref(), Some(&k));
        assert_eq!(c.listen_port, Some(51820));
        let have = DeviceState { private_key: Some(k.clone()), listen_port: 51820, peers: vec![] };
        assert!(plan_device(&k, 51820, &[], &have).is_empty());
    }
}

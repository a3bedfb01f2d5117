//! Kernel WireGuard over generic netlink (family "wireguard", include/uapi/linux/wireguard.h):
//! WG_CMD_GET_DEVICE (a dump; a device with many peers spans several messages, and one peer's
//! allowed IPs may continue in the next message) and WG_CMD_SET_DEVICE (peers sent in chunks: an
//! attribute nest holds at most 64 KiB). Synchronous, in-process, like every other backend.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{link, DeviceChange, DeviceState, PeerChange, PeerState, WgDevice};
use crate::error::{Error, Result};
use crate::kernel::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_DUMP};
use crate::wg::keys::Key;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const WG_GENL_VERSION: u8 = 1;
const WG_CMD_GET_DEVICE: u8 = 0;
const WG_CMD_SET_DEVICE: u8 = 1;

const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;

const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
const WGPEER_A_RX_BYTES: u16 = 7;
const WGPEER_A_TX_BYTES: u16 = 8;
const WGPEER_A_ALLOWEDIPS: u16 = 9;

const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;

const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// Estimated bytes of peers per SET_DEVICE message (the PEERS nest must stay below 64 KiB).
const CHUNK_BYTES: usize = 30_000;

fn genlmsghdr(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

pub struct Genl {
    sock: Socket,
    family: u16,
}

impl std::fmt::Debug for Genl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Genl").field("family", &self.family).finish()
    }
}

impl Genl {
    /// Opens a generic netlink socket and resolves the "wireguard" family; `Ok(None)` when the
    /// kernel has no WireGuard (module absent).
    pub fn open() -> Result<Option<Genl>> {
        let mut sock = Socket::open(Family::Generic)?;
        let m = MsgBuilder::new(GENL_ID_CTRL, 0)
            .bytes(&genlmsghdr(CTRL_CMD_GETFAMILY, 1))
            .attr_str(CTRL_ATTR_FAMILY_NAME, "wireguard");
        let answer = sock.transact("resolve genl family wireguard", vec![m])?.pop().expect("one answer");
        let msgs = match answer {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(source) => return Err(Error::Netlink { op: "resolve genl family wireguard".into(), source }),
        };
        for (_, p) in &msgs {
            for (t, d) in attrs(p.get(4..).unwrap_or_default()) {
                if t == CTRL_ATTR_FAMILY_ID {
                    if let Some(b) = d.get(..2) {
                        return Ok(Some(Genl { sock, family: u16::from_ne_bytes([b[0], b[1]]) }));
                    }
                }
            }
        }
        Ok(None)
    }

    fn msg(&self, cmd: u8, flags: u16) -> MsgBuilder {
        MsgBuilder::new(self.family, flags).bytes(&genlmsghdr(cmd, WG_GENL_VERSION))
    }
}

fn key_of(d: &[u8]) -> Option<Key> {
    let b: [u8; 32] = d.get(..32)?.try_into().ok()?;
    Some(Key::from_bytes(b)).filter(|k| !k.is_zero())
}

fn endpoint_of(d: &[u8]) -> Option<String> {
    let family = u16::from_ne_bytes(d.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(d.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET as u16 {
        let a = d.get(4..8)?;
        Some(format!("{}:{port}", Ipv4Addr::new(a[0], a[1], a[2], a[3])))
    } else if family == libc::AF_INET6 as u16 {
        let a: [u8; 16] = d.get(8..24)?.try_into().ok()?;
        Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(a)))
    } else {
        None
    }
}

fn parse_peer(nest: &[u8]) -> Option<PeerState> {
    let mut p = PeerState {
        public_key: Key::from_bytes([0; 32]),
        preshared_key: None,
        endpoint: None,
        allowed_ips: Vec::new(),
        keepalive: 0,
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
    };
    let mut have_key = false;
    for (t, d) in attrs(nest) {
        match t {
            WGPEER_A_PUBLIC_KEY => {
                p.public_key = Key::from_bytes(d.get(..32)?.try_into().ok()?);
                have_key = true;
            }
            WGPEER_A_PRESHARED_KEY => p.preshared_key = key_of(d),
            WGPEER_A_ENDPOINT => p.endpoint = endpoint_of(d),
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => {
                p.keepalive = d.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])).unwrap_or(0)
            }
            WGPEER_A_LAST_HANDSHAKE_TIME => {
                let sec = i64::from_ne_bytes(d.get(..8)?.try_into().ok()?);
                let nsec = i64::from_ne_bytes(d.get(8..16)?.try_into().ok()?);
                p.last_handshake = (sec != 0 || nsec != 0).then_some(sec);
            }
            WGPEER_A_RX_BYTES => p.rx_bytes = netlink::attr_u64(d).unwrap_or(0),
            WGPEER_A_TX_BYTES => p.tx_bytes = netlink::attr_u64(d).unwrap_or(0),
            WGPEER_A_ALLOWEDIPS => {
                for (_, ip) in attrs(d) {
                    let (mut fam, mut addr, mut mask) = (0u16, None, None);
                    for (t, v) in attrs(ip) {
                        match t {
                            WGALLOWEDIP_A_FAMILY => {
                                fam = v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])).unwrap_or(0)
                            }
                            WGALLOWEDIP_A_IPADDR => addr = v.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3])),
                            WGALLOWEDIP_A_CIDR_MASK => mask = v.first().copied(),
                            _ => {}
                        }
                    }
                    if fam == libc::AF_INET as u16 {
                        if let (Some(a), Some(m)) = (addr, mask) {
                            if let Ok(n) = Ipv4Net::new(a, m) {
                                p.allowed_ips.push(n);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    have_key.then_some(p)
}

/// Parses the messages of a GET_DEVICE dump into one device.
pub fn parse_device(msgs: &[(u16, Vec<u8>)]) -> DeviceState {
    let mut d = DeviceState::default();
    for (_, payload) in msgs {
        for (t, v) in attrs(payload.get(4..).unwrap_or_default()) {
            match t {
                WGDEVICE_A_PRIVATE_KEY => d.private_key = key_of(v),
                WGDEVICE_A_LISTEN_PORT => {
                    d.listen_port = v.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])).unwrap_or(0)
                }
                WGDEVICE_A_PEERS => {
                    for (_, nest) in attrs(v) {
                        let Some(p) = parse_peer(nest) else { continue };
                        // A peer whose allowed IPs did not fit continues in the next message.
                        match d.peers.last_mut() {
                            Some(last) if last.public_key == p.public_key => last.allowed_ips.extend(p.allowed_ips),
                            _ => d.peers.push(p),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    d
}

fn peer_size(c: &PeerChange) -> usize {
    match c {
        PeerChange::Remove(_) => 48,
        PeerChange::Set(p) => 120 + 32 * p.allowed_ips.len(),
    }
}

/// The SET_DEVICE messages of a change (device attributes in the first; peers chunked).
pub fn set_msgs(family: u16, ifname: &str, change: &DeviceChange) -> Vec<MsgBuilder> {
    let head = || {
        MsgBuilder::new(family, 0)
            .bytes(&genlmsghdr(WG_CMD_SET_DEVICE, WG_GENL_VERSION))
            .attr_str(WGDEVICE_A_IFNAME, ifname)
    };
    let mut first = head();
    if let Some(k) = &change.private_key {
        first = first.attr(WGDEVICE_A_PRIVATE_KEY, k.as_bytes());
    }
    if let Some(p) = change.listen_port {
        first = first.attr_u16(WGDEVICE_A_LISTEN_PORT, p);
    }
    let mut out = Vec::new();
    let mut cur = Some(first);
    let mut chunk: Vec<&PeerChange> = Vec::new();
    let mut size = 0;
    let flush = |cur: &mut Option<MsgBuilder>, chunk: &mut Vec<&PeerChange>, out: &mut Vec<MsgBuilder>| {
        let mut m = cur.take().unwrap_or_else(head);
        if !chunk.is_empty() {
            m = m.nest_start(WGDEVICE_A_PEERS);
            for (i, c) in chunk.iter().enumerate() {
                m = m.nest_start(i as u16);
                match c {
                    PeerChange::Remove(k) => {
                        m = m.attr(WGPEER_A_PUBLIC_KEY, k.as_bytes()).attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
                    }
                    PeerChange::Set(p) => {
                        m = m
                            .attr(WGPEER_A_PUBLIC_KEY, p.public_key.as_bytes())
                            .attr(WGPEER_A_PRESHARED_KEY, p.preshared_key.as_bytes())
                            .attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS)
                            .attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, p.keepalive)
                            .nest_start(WGPEER_A_ALLOWEDIPS);
                        for (j, n) in p.allowed_ips.iter().enumerate() {
                            m = m
                                .nest_start(j as u16)
                                .attr_u16(WGALLOWEDIP_A_FAMILY, libc::AF_INET as u16)
                                .attr(WGALLOWEDIP_A_IPADDR, &n.network().octets())
                                .attr_u8(WGALLOWEDIP_A_CIDR_MASK, n.prefix_len())
                                .nest_end();
                        }
                        m = m.nest_end();
                    }
                }
                m = m.nest_end();
            }
            m = m.nest_end();
        }
        chunk.clear();
        out.push(m);
    };
    for c in &change.peers {
        if size + peer_size(c) > CHUNK_BYTES && !chunk.is_empty() {
            flush(&mut cur, &mut chunk, &mut out);
            size = 0;
        }
        size += peer_size(c);
        chunk.push(c);
    }
    if !chunk.is_empty() || cur.is_some() {
        flush(&mut cur, &mut chunk, &mut out);
    }
    out
}

impl WgDevice for Genl {
    fn kind(&self) -> &'static str {
        "kernel"
    }

    fn ensure_interface(&mut self, ifname: &str) -> Result<bool> {
        if link::get(ifname)?.is_some() {
            return Ok(false);
        }
        link::create_wireguard(ifname)?;
        Ok(true)
    }

    fn read(&mut self, ifname: &str) -> Result<Option<DeviceState>> {
        if link::get(ifname)?.is_none() {
            return Ok(None);
        }
        let m = self.msg(WG_CMD_GET_DEVICE, NLM_F_DUMP).attr_str(WGDEVICE_A_IFNAME, ifname);
        let msgs = self.sock.dump(&format!("get wireguard device {ifname}"), m)?;
        Ok(Some(parse_device(&msgs)))
    }

    fn apply(&mut self, ifname: &str, change: &DeviceChange) -> Result<()> {
        if change.is_empty() {
            return Ok(());
        }
        for m in set_msgs(self.family, ifname, change) {
            self.sock.request(&format!("set wireguard device {ifname}"), m)?;
        }
        Ok(())
    }

    fn delete_interface(&mut self, ifname: &str) -> Result<()> {
        link::delete(ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::messages;
    use crate::kernel::wg::PeerSpec;
    use crate::wg::keys::{generate_private, generate_psk, public_of};

    /// SET messages, read as if the kernel echoed them in a GET dump, give back the peers.
    #[test]
    fn set_messages_round_trip_through_the_parser_and_chunk() {
        let peers: Vec<PeerSpec> = (0..600)
            .map(|i| PeerSpec {
                public_key: public_of(&generate_private().unwrap()),
                preshared_key: generate_psk().unwrap(),
                allowed_ips: vec![format!("10.100.{}.{}/32", 1 + i / 250, 1 + i % 250).parse().unwrap()],
                keepalive: 0,
            })
            .collect();
        let pk = generate_private().unwrap();
        let change = DeviceChange {
            private_key: Some(pk.clone()),
            listen_port: Some(51820),
            peers: peers.iter().cloned().map(PeerChange::Set).collect(),
        };
        let msgs = set_msgs(42, "wg0", &change);
        assert!(msgs.len() > 1, "600 peers need several messages");
        let raw: Vec<(u16, Vec<u8>)> = msgs
            .into_iter()
            .map(|m| {
                let b = m.finish(1);
                assert!(b.len() < 65_000);
                let m = messages(&b)[0];
                (m.ty, m.payload.to_vec())
            })
            .collect();
        let d = parse_device(&raw);
        assert_eq!(d.private_key.as_ref(), Some(&pk));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 600);
        for (a, b) in d.peers.iter().zip(&peers) {
            assert_eq!(a.public_key, b.public_key);
            assert_eq!(a.preshared_key.as_ref(), Some(&b.preshared_key));
            assert_eq!(a.allowed_ips, b.allowed_ips);
        }
    }
}

//! Brings the concentrator's WireGuard interface to what SQL says: private key and port of the
//! server row, one peer per router (preshared key, AllowedIPs = its address + its routed
//! networks), the gateway address 10.X.0.1/16 of every tenant it serves, the link up, and a
//! route (protocol 78) for each routed network. Then it reads everything back and plans again:
//! anything still to do is a verification error. Peers the device has and SQL does not are
//! removed (the interface is pppgate's).

use std::collections::BTreeSet;
use std::time::Instant;

use ipnet::Ipv4Net;
use postgres::Client;
use serde::Serialize;

use super::addr;
use super::keys::{public_of, Key};
use super::seal::{Binding, MasterKeys};
use super::{BackendKind, WgConfig};
use crate::db::wg::{self as dbwg, PeerStats, RouterRow, ServerRow};
use crate::error::{Error, Result};
use crate::kernel::wg::genl::Genl;
use crate::kernel::wg::isolation::{self, Drops, Isolation};
use crate::kernel::wg::uapi::Uapi;
use crate::kernel::wg::{self as kwg, link, DeviceChange, DeviceState, PeerChange, PeerSpec, WgDevice};

/// What the interface should be.
#[derive(Debug, Clone)]
pub struct Desired {
    pub ifname: String,
    pub private_key: Key,
    pub listen_port: u16,
    pub peers: Vec<PeerSpec>,
    pub addresses: Vec<Ipv4Net>,
    pub routes: Vec<Ipv4Net>,
    /// Tenant isolation in `inet pppgate_wg` ([`isolation`]).
    pub isolation: Isolation,
}

/// The server row of this NAS's interface, or a configuration error telling to run `wg init`.
pub fn server_row(client: &mut Client, cfg: &WgConfig, nas: &str) -> Result<ServerRow> {
    dbwg::server(client, nas, &cfg.interface)?.ok_or_else(|| Error::Config {
        path: cfg.master_key_file.clone(),
        problems: vec![format!(
            "no WireGuard server interface {} for NAS {nas} in the database; run `pppgate wg init`",
            cfg.interface
        )],
    })
}

/// Desired state from SQL (decrypts the server's private key and every router's preshared key).
pub fn desired(server: &ServerRow, routers: &[RouterRow], keys: &MasterKeys, cfg: &WgConfig) -> Result<Desired> {
    let private_key =
        keys.open(&server.private_key, &Binding::ServerPrivate { nas: &server.nas_identity, ifname: &server.ifname })?;
    if public_of(&private_key).to_base64() != server.public_key {
        return Err(Error::Crypto {
            what: format!("private key of server interface {}", server.ifname),
            reason: "does not match the stored public key".into(),
        });
    }
    let mut peers = Vec::with_capacity(routers.len());
    let mut octets = BTreeSet::new();
    let mut routes = BTreeSet::new();
    for r in routers {
        let psk = keys.open(&r.psk, &Binding::RouterPsk { tenant: r.tenant_id, router: r.router_id })?;
        peers.push(PeerSpec {
            public_key: Key::from_base64("router public key", &r.public_key)?,
            preshared_key: psk,
            allowed_ips: r.allowed_on_server(),
            // The routers keep the tunnel alive; the concentrator only answers.
            keepalive: 0,
        });
        octets.insert(r.octet);
        for n in &r.routed_networks {
            // A default route is for policy routing (pbr --dev wg0), never the main table's.
            if n.prefix_len() > 0 && !addr::subnet(r.octet).contains(n) {
                routes.insert(*n);
            }
        }
    }
    Ok(Desired {
        ifname: server.ifname.clone(),
        private_key,
        listen_port: server.listen_port,
        peers,
        addresses: octets.iter().map(|o| kwg::host_net(addr::gateway(*o), 16)).collect(),
        routes: routes.into_iter().collect(),
        isolation: Isolation {
            ifname: server.ifname.clone(),
            intra_tenant: cfg.intra_tenant,
            management: cfg.management_nets.iter().copied().collect(),
            routers: routers.iter().map(|r| (r.address, r.subnet)).collect(),
        },
    })
}

/// Opens the implementation for `ifname`: `auto` uses a userspace socket that already serves
/// the interface, else kernel WireGuard when the kernel has it, else wireguard-go.
pub fn open_backend(kind: BackendKind, ifname: &str) -> Result<Box<dyn WgDevice>> {
    match kind {
        BackendKind::Userspace => Ok(Box::new(Uapi::new())),
        BackendKind::Kernel => match Genl::open()? {
            Some(g) => Ok(Box::new(g)),
            None => Err(Error::NotFound { what: "kernel WireGuard (generic netlink family)", id: "wireguard".into() }),
        },
        BackendKind::Auto => {
            let u = Uapi::new();
            if u.serves(ifname) {
                return Ok(Box::new(u));
            }
            match Genl::open()? {
                Some(g) => Ok(Box::new(g)),
                None => Ok(Box::new(u)),
            }
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub interface: String,
    pub backend: String,
    pub created_interface: bool,
    pub key_or_port_set: bool,
    pub peers_set: usize,
    pub peers_removed: usize,
    pub addresses_added: Vec<Ipv4Net>,
    pub addresses_removed: Vec<Ipv4Net>,
    pub routes_added: Vec<Ipv4Net>,
    pub routes_removed: Vec<Ipv4Net>,
    pub link_set_up: bool,
    /// `inet pppgate_wg` was (re)written.
    pub isolation_written: bool,
    /// Its drop counters as read back (packets).
    pub isolation_drops: Drops,
    pub peers: usize,
    pub timings_us: Timings,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub read_us: u64,
    pub apply_us: u64,
    pub verify_us: u64,
}

fn l3_plan(want: &Desired, have: &kwg::L3State) -> (Vec<Ipv4Net>, Vec<Ipv4Net>, Vec<Ipv4Net>, Vec<Ipv4Net>) {
    let wa: BTreeSet<_> = want.addresses.iter().copied().collect();
    let ha: BTreeSet<_> = have.addresses.iter().copied().collect();
    let wr: BTreeSet<_> = want.routes.iter().copied().collect();
    let hr: BTreeSet<_> = have.routes.iter().copied().collect();
    (
        wa.difference(&ha).copied().collect(),
        ha.difference(&wa).copied().collect(),
        wr.difference(&hr).copied().collect(),
        hr.difference(&wr).copied().collect(),
    )
}

/// Applies `want` to the interface and verifies it by reading back.
pub fn apply(dev: &mut dyn WgDevice, want: &Desired) -> Result<(Report, DeviceState)> {
    let ifname = &want.ifname;
    let mut rep = Report { interface: ifname.clone(), backend: dev.kind().into(), ..Default::default() };
    let t0 = Instant::now();
    rep.created_interface = dev.ensure_interface(ifname)?;
    let have = dev.read(ifname)?.ok_or_else(|| Error::NotFound { what: "wireguard interface", id: ifname.clone() })?;
    let l3 = link::read(ifname)?.ok_or_else(|| Error::NotFound { what: "interface", id: ifname.clone() })?;
    rep.timings_us.read_us = t0.elapsed().as_micros() as u64;

    let t1 = Instant::now();
    let change = kwg::plan_device(&want.private_key, want.listen_port, &want.peers, &have);
    rep.key_or_port_set = change.private_key.is_some() || change.listen_port.is_some();
    rep.peers_set = change.peers.iter().filter(|c| matches!(c, PeerChange::Set(_))).count();
    rep.peers_removed = change.peers.len() - rep.peers_set;
    dev.apply(ifname, &change)?;
    if !l3.up {
        link::set_up(ifname)?;
        rep.link_set_up = true;
    }
    let (add_a, del_a, add_r, del_r) = l3_plan(want, &l3);
    for a in &add_a {
        link::add_address(ifname, *a)?;
    }
    for a in &del_a {
        link::del_address(ifname, *a)?;
    }
    for r in &add_r {
        link::add_route(ifname, *r)?;
    }
    for r in &del_r {
        link::del_route(ifname, *r)?;
    }
    (rep.addresses_added, rep.addresses_removed, rep.routes_added, rep.routes_removed) = (add_a, del_a, add_r, del_r);
    // Isolation after the peers: written and read back before anything is reported as done.
    (rep.isolation_written, rep.isolation_drops) = isolation::ensure(&want.isolation)?;
    rep.timings_us.apply_us = t1.elapsed().as_micros() as u64;

    let t2 = Instant::now();
    let (after, l3_after) = if change.is_empty()
        && !rep.link_set_up
        && rep.addresses_added.is_empty()
        && rep.addresses_removed.is_empty()
        && rep.routes_added.is_empty()
        && rep.routes_removed.is_empty()
    {
        (have, l3)
    } else {
        let d = dev.read(ifname)?.ok_or_else(|| Error::NotFound { what: "wireguard interface", id: ifname.clone() })?;
        let l = link::read(ifname)?.ok_or_else(|| Error::NotFound { what: "interface", id: ifname.clone() })?;
        (d, l)
    };
    let left = kwg::plan_device(&want.private_key, want.listen_port, &want.peers, &after);
    let (a1, a2, r1, r2) = l3_plan(want, &l3_after);
    if !(left.is_empty() && l3_after.up && a1.is_empty() && a2.is_empty() && r1.is_empty() && r2.is_empty()) {
        return Err(Error::Verify(format!(
            "wireguard interface {ifname}: {} peer change(s), key/port {}, link up {}, addresses +{a1:?} -{a2:?}, routes +{r1:?} -{r2:?} still differ after apply",
            left.peers.len(),
            if left.private_key.is_some() || left.listen_port.is_some() { "differ" } else { "ok" },
            l3_after.up
        )));
    }
    rep.timings_us.verify_us = t2.elapsed().as_micros() as u64;
    rep.peers = after.peers.len();
    Ok((rep, after))
}

/// The interface's per-peer figures in the form SQL stores.
pub fn stats_of(dev: &DeviceState) -> Vec<PeerStats> {
    dev.peers
        .iter()
        .map(|p| PeerStats {
            public_key: p.public_key.to_base64(),
            last_handshake: p.last_handshake,
            endpoint: p.endpoint.clone(),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        })
        .collect()
}

/// A do-nothing change check for callers that want to know whether a device matches.
pub fn pending(want: &Desired, have: &DeviceState) -> DeviceChange {
    kwg::plan_device(&want.private_key, want.listen_port, &want.peers, have)
}

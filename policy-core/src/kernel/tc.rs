//! Per-session shaping with HTB, over rtnetlink.
//!
//! Why rtnetlink and not `tc -batch`: shaping is installed on the connect path, whose budget is a
//! few milliseconds. Spawning `tc` costs a process start (~2–5 ms each on the build machine) and a
//! second one to read the result back; the netlink messages themselves take tens of microseconds.
//!
//! What pppgate installs on a session interface `pppN`:
//! * download (to the client, the interface's egress): root HTB `1:` with default class `1:10`
//!   (rate = ceil = down), whose leaf is a `pfifo` `10:` sized for the rate;
//! * upload (from the client, the interface's ingress): an `ingress` qdisc `ffff:` with one u32
//!   match-all filter (prio 1, handle 800::800) whose mirred action redirects every packet to the
//!   egress of the IFB device `pgi-pppN`, which carries the same HTB layout with rate = up.
//!
//! The rate specs carry `linklayer ethernet`, which tells the kernel to compute transmit times
//! itself; no rate table (TCA_HTB_RTAB/CTAB) is sent. Burst and quantum are chosen in
//! [`htb_params`]. A rate change modifies class `1:10` in place, so the qdisc, its queue and
//! its counters survive.
//!
//! Ownership: the root HTB `1:` and the ingress qdisc on interfaces named `ppp*`, and the links
//! named `pgi-*`. Nothing else is read as pppgate's or touched.

use std::collections::BTreeMap;

use super::links::{
    self, get_link_msg, ifinfomsg, parse_link, Link, IFF_UP, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO,
};
use super::netlink::{
    self, attrs, Answer, Family, MsgBuilder, Socket, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
};
use super::{ifb_name, Shaping, Tc, TcState, IFB_PREFIX};
use crate::error::{Error, Result};

const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTCLASS: u16 = 40;
const RTM_GETTCLASS: u16 = 42;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_INGRESS: u32 = 0xFFFF_FFF1;
const INGRESS_HANDLE: u32 = 0xFFFF_0000;
const HTB_HANDLE: u32 = 0x0001_0000;
const HTB_CLASS: u32 = 0x0001_0010;
const LEAF_HANDLE: u32 = 0x0010_0000;
const FILTER_PRIO: u32 = 1;
/// u32 knode 800::800: the first node of the root hash table, given explicitly so a repeated
/// add changes the same filter instead of adding a second one.
const U32_HANDLE: u32 = 0x8000_0800;
const ETH_P_ALL: u16 = 0x0003;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const TC_U32_TERMINAL: u8 = 1;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
/// `PSCHED_SHIFT`: HTB's buffer is given in 64 ns ticks.
const PSCHED_SHIFT: u32 = 6;

/// Interfaces whose root HTB and ingress qdisc are pppgate's.
pub const SESSION_PREFIX: &str = "ppp";

/// HTB parameters for one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbParams {
    pub rate_bytes: u64,
    /// Bytes the class may send at line speed after idling (burst = cburst).
    pub burst_bytes: u64,
    /// DRR quantum; with one class per qdisc it only has to hold one full-size packet.
    pub quantum: u32,
    /// Leaf pfifo length in packets.
    pub queue_packets: u32,
}

/// Burst: 10 ms worth of the rate plus one MTU-sized packet. The kernel's HTB timer fires late
/// by up to a scheduler tick under load; a burst shorter than that makes the class lose
/// sending opportunities and run below its rate, a much longer one lets TCP overshoot after
/// every idle period. Queue: ~100 ms at the rate, at least 16 packets so a slow class still
/// absorbs a TCP window's burst (a PPP device's own txqueuelen is 3, far too short). Not more:
/// measured over real L2TP in the lab (one TCP flow, 6 s), a 32- or 100-packet tail-drop queue
/// at 1–2 Mbit/s let TCP run into loss bursts and recoveries that cost up to 21% of the rate in
/// some runs, while 8 and 16 packets stayed at the payload ratio (−4%) in every run.
pub fn htb_params(kbit: u32) -> HtbParams {
    let rate_bytes = u64::from(kbit.max(1)) * 125;
    let burst_bytes = rate_bytes / 100 + 1600;
    let quantum = (rate_bytes / 10).clamp(1600, 200_000) as u32;
    let queue_packets = (rate_bytes / 10 / 1500).clamp(16, 5000) as u32;
    HtbParams { rate_bytes, burst_bytes, quantum, queue_packets }
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

fn ratespec(rate_bytes: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[1] = TC_LINKLAYER_ETHERNET;
    b[8..12].copy_from_slice(&(rate_bytes.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    b
}

fn htb_opt(p: &HtbParams) -> Vec<u8> {
    let ticks = (p.burst_bytes.saturating_mul(1_000_000_000) / p.rate_bytes.max(1)) >> PSCHED_SHIFT;
    let ticks = ticks.min(u64::from(u32::MAX)) as u32;
    let mut b = Vec::with_capacity(44);
    b.extend_from_slice(&ratespec(p.rate_bytes));
    b.extend_from_slice(&ratespec(p.rate_bytes));
    b.extend_from_slice(&ticks.to_ne_bytes()); // buffer
    b.extend_from_slice(&ticks.to_ne_bytes()); // cbuffer
    b.extend_from_slice(&p.quantum.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // level
    b.extend_from_slice(&0u32.to_ne_bytes()); // prio
    b
}

fn root_htb_msg(ifindex: u32) -> MsgBuilder {
    let mut glob = Vec::with_capacity(20);
    for v in [3u32, 10, HTB_CLASS & 0xFFFF, 0, 0] {
        // version 3, rate2quantum (unused: quantum is explicit), default class 0x10
        glob.extend_from_slice(&v.to_ne_bytes());
    }
    MsgBuilder::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE)
        .bytes(&tcmsg(ifindex, HTB_HANDLE, TC_H_ROOT, 0))
        .attr_str(TCA_KIND, "htb")
        .nest_start(TCA_OPTIONS)
        .attr(TCA_HTB_INIT, &glob)
        .nest_end()
}

fn class_msg(ifindex: u32, p: &HtbParams) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWTCLASS, NLM_F_CREATE)
        .bytes(&tcmsg(ifindex, HTB_CLASS, HTB_HANDLE, 0))
        .attr_str(TCA_KIND, "htb")
        .nest_start(TCA_OPTIONS)
        .attr(TCA_HTB_PARMS, &htb_opt(p));
    if p.rate_bytes > u64::from(u32::MAX) {
        m = m.attr(TCA_HTB_RATE64, &p.rate_bytes.to_ne_bytes()).attr(TCA_HTB_CEIL64, &p.rate_bytes.to_ne_bytes());
    }
    m.nest_end()
}

fn leaf_msg(ifindex: u32, p: &HtbParams) -> MsgBuilder {
    MsgBuilder::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE)
        .bytes(&tcmsg(ifindex, LEAF_HANDLE, HTB_CLASS, 0))
        .attr_str(TCA_KIND, "pfifo")
        .attr(TCA_OPTIONS, &p.queue_packets.to_ne_bytes())
}

fn ingress_msg(ifindex: u32) -> MsgBuilder {
    MsgBuilder::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL)
        .bytes(&tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS, 0))
        .attr_str(TCA_KIND, "ingress")
}

fn filter_info() -> u32 {
    (FILTER_PRIO << 16) | u32::from(ETH_P_ALL.to_be())
}

fn redirect_filter_msg(ifindex: u32, ifb_index: u32) -> MsgBuilder {
    // tc_u32_sel with one all-zero key: match every packet, terminal.
    let mut sel = vec![0u8; 16 + 16];
    sel[0] = TC_U32_TERMINAL;
    sel[2] = 1; // nkeys
    let mut mirred = Vec::with_capacity(28);
    for v in [0i32, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, ifb_index as i32] {
        // index, capab, action, refcnt, bindcnt, eaction, ifindex
        mirred.extend_from_slice(&v.to_ne_bytes());
    }
    MsgBuilder::new(RTM_NEWTFILTER, NLM_F_CREATE)
        .bytes(&tcmsg(ifindex, U32_HANDLE, INGRESS_HANDLE, filter_info()))
        .attr_str(TCA_KIND, "u32")
        .nest_start(TCA_OPTIONS)
        .attr(TCA_U32_SEL, &sel)
        .nest_start(TCA_U32_ACT)
        .nest_start(1)
        .attr_str(TCA_ACT_KIND, "mirred")
        .nest_start(TCA_ACT_OPTIONS)
        .attr(TCA_MIRRED_PARMS, &mirred)
        .nest_end()
        .nest_end()
        .nest_end()
        .nest_end()
}

fn del_qdisc_msg(ifindex: u32, handle: u32, parent: u32) -> MsgBuilder {
    MsgBuilder::new(RTM_DELQDISC, 0).bytes(&tcmsg(ifindex, handle, parent, 0))
}

// A qdisc or class get answers through the TC notification path, which unicasts the object to
// the requester only with NLM_F_ECHO (without it the answer goes to the multicast group alone).
fn get_qdisc_msg(ifindex: u32, parent: u32) -> MsgBuilder {
    MsgBuilder::new(RTM_GETQDISC, NLM_F_ECHO).bytes(&tcmsg(ifindex, 0, parent, 0))
}

fn get_class_msg(ifindex: u32) -> MsgBuilder {
    MsgBuilder::new(RTM_GETTCLASS, NLM_F_ECHO).bytes(&tcmsg(ifindex, HTB_CLASS, 0, 0))
}

fn get_filter_msg(ifindex: u32) -> MsgBuilder {
    MsgBuilder::new(RTM_GETTFILTER, 0)
        .bytes(&tcmsg(ifindex, U32_HANDLE, INGRESS_HANDLE, filter_info()))
        .attr_str(TCA_KIND, "u32")
}

/// A get that found nothing: no such qdisc, class, filter or parent.
fn absent(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(libc::ENODEV))
}

fn answer_msgs(op: &str, a: Answer) -> Result<Vec<(u16, Vec<u8>)>> {
    match a {
        Ok(m) => Ok(m),
        Err(e) if absent(&e) => Ok(Vec::new()),
        Err(source) => Err(Error::Netlink { op: op.into(), source }),
    }
}

/// (handle, kind) of a qdisc reply.
fn parse_qdisc(msgs: &[(u16, Vec<u8>)]) -> Option<(u32, String)> {
    let (_, p) = msgs.iter().find(|(ty, _)| *ty == RTM_NEWQDISC)?;
    let handle = u32::from_ne_bytes(p.get(8..12)?.try_into().ok()?);
    let kind = attrs(p.get(20..)?).find(|(t, _)| *t == TCA_KIND).map(|(_, d)| netlink::attr_str(d))?;
    Some((handle, kind))
}

/// The rate (bytes/s) of an HTB class reply.
fn parse_htb_class(msgs: &[(u16, Vec<u8>)]) -> Option<u64> {
    let (_, p) = msgs.iter().find(|(ty, _)| *ty == RTM_NEWTCLASS)?;
    let body = p.get(20..)?;
    if attrs(body).find(|(t, _)| *t == TCA_KIND).map(|(_, d)| netlink::attr_str(d)).as_deref() != Some("htb") {
        return None;
    }
    let opts = attrs(body).find(|(t, _)| *t == TCA_OPTIONS)?.1;
    let mut rate = None;
    let mut rate64 = None;
    for (t, d) in attrs(opts) {
        match t {
            TCA_HTB_PARMS => rate = d.get(8..12).map(|b| u64::from(u32::from_ne_bytes(b.try_into().unwrap()))),
            TCA_HTB_RATE64 => rate64 = netlink::attr_u64(d),
            _ => {}
        }
    }
    rate64.or(rate)
}

/// The target ifindex of the mirred egress redirect in a u32 filter reply.
fn parse_redirect(msgs: &[(u16, Vec<u8>)]) -> Option<u32> {
    for (ty, p) in msgs {
        if *ty != RTM_NEWTFILTER {
            continue;
        }
        let Some(body) = p.get(20..) else { continue };
        let Some((_, opts)) = attrs(body).find(|(t, _)| *t == TCA_OPTIONS) else { continue };
        let Some((_, acts)) = attrs(opts).find(|(t, _)| *t == TCA_U32_ACT) else { continue };
        for (_, act) in attrs(acts) {
            let kind = attrs(act).find(|(t, _)| *t == TCA_ACT_KIND).map(|(_, d)| netlink::attr_str(d));
            if kind.as_deref() != Some("mirred") {
                continue;
            }
            let Some((_, o)) = attrs(act).find(|(t, _)| *t == TCA_ACT_OPTIONS) else { continue };
            let Some((_, parms)) = attrs(o).find(|(t, _)| *t == TCA_MIRRED_PARMS) else { continue };
            let eaction = i32::from_ne_bytes(parms.get(20..24)?.try_into().ok()?);
            let ifindex = u32::from_ne_bytes(parms.get(24..28)?.try_into().ok()?);
            if eaction == TCA_EGRESS_REDIR {
                return Some(ifindex);
            }
        }
    }
    None
}

fn kbit_of(rate_bytes: u64) -> u32 {
    (rate_bytes / 125).min(u64::from(u32::MAX)) as u32
}

/// What one interface (and its IFB) carries now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Root qdisc is pppgate's HTB `1:`.
    pub root_htb: bool,
    /// Rate of class 1:10 on the interface, bytes/s.
    pub down_rate: Option<u64>,
    pub ingress: bool,
    /// Where the ingress filter redirects to.
    pub redirect_to: Option<u32>,
    pub ifb: Option<Link>,
    pub ifb_root_htb: bool,
    pub ifb_rate: Option<u64>,
}

impl Installed {
    /// The shaping in effect: a direction counts only when every piece of it is in place.
    pub fn shaping(&self) -> Shaping {
        let down_kbit = if self.root_htb { self.down_rate.map(kbit_of) } else { None };
        let up_kbit = match &self.ifb {
            Some(ifb)
                if self.ingress
                    && self.redirect_to == Some(ifb.index)
                    && ifb.flags & IFF_UP != 0
                    && self.ifb_root_htb =>
            {
                self.ifb_rate.map(kbit_of)
            }
            _ => None,
        };
        Shaping { down_kbit, up_kbit }
    }
}

/// The real tc backend.
pub struct TcNetlink {
    sock: Socket,
}

impl std::fmt::Debug for TcNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcNetlink").finish_non_exhaustive()
    }
}

/// Requests per datagram when inspecting many interfaces: the answers must fit the socket's
/// receive buffer.
const GETS_PER_ROUND: usize = 192;

impl TcNetlink {
    pub fn new() -> Result<TcNetlink> {
        Ok(TcNetlink { sock: Socket::open(Family::Route)? })
    }

    fn links(&mut self, names: &[&str]) -> Result<Vec<Option<Link>>> {
        let answers = self.sock.transact("get links", names.iter().map(|n| get_link_msg(n)).collect())?;
        names
            .iter()
            .zip(answers)
            .map(|(n, a)| match a {
                Ok(m) => Ok(m.iter().filter(|(t, _)| *t == links::RTM_NEWLINK).find_map(|(_, p)| parse_link(p))),
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
                Err(source) => Err(Error::Netlink { op: format!("get link {n}"), source }),
            })
            .collect()
    }

    /// Reads what is installed for several (interface index, its IFB) pairs, in few round trips.
    fn inspect_many(&mut self, items: &[(u32, Option<Link>)]) -> Result<Vec<Installed>> {
        let mut reqs = Vec::new();
        for (idx, ifb) in items {
            reqs.push(get_qdisc_msg(*idx, TC_H_ROOT));
            reqs.push(get_class_msg(*idx));
            reqs.push(get_qdisc_msg(*idx, TC_H_INGRESS));
            reqs.push(get_filter_msg(*idx));
            if let Some(ifb) = ifb {
                reqs.push(get_qdisc_msg(ifb.index, TC_H_ROOT));
                reqs.push(get_class_msg(ifb.index));
            }
        }
        let mut answers = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let round: Vec<MsgBuilder> = reqs.by_ref().take(GETS_PER_ROUND).collect();
            answers.extend(self.sock.transact("read tc", round)?);
        }
        let mut answers = answers.into_iter();
        let mut next = || answer_msgs("read tc", answers.next().expect("one answer per request"));
        let mut out = Vec::with_capacity(items.len());
        for (_, ifb) in items {
            let root = parse_qdisc(&next()?);
            let class = parse_htb_class(&next()?);
            let ingress = parse_qdisc(&next()?);
            let filter = parse_redirect(&next()?);
            let mut inst = Installed {
                root_htb: root.as_ref().is_some_and(|(h, k)| *h == HTB_HANDLE && k == "htb"),
                down_rate: class,
                ingress: ingress.is_some_and(|(_, k)| k == "ingress"),
                redirect_to: filter,
                ifb: ifb.clone(),
                ..Default::default()
            };
            if ifb.is_some() {
                let r = parse_qdisc(&next()?);
                inst.ifb_root_htb = r.is_some_and(|(h, k)| h == HTB_HANDLE && k == "htb");
                inst.ifb_rate = parse_htb_class(&next()?);
            }
            out.push(inst);
        }
        Ok(out)
    }

    /// What is installed on `ifname` now (`None`: no such interface), with its IFB.
    pub fn inspect(&mut self, ifname: &str) -> Result<Option<(u32, Installed)>> {
        let (dev, ifb) = match ifb_for(ifname) {
            Some(ifb) => {
                let mut found = self.links(&[ifname, &ifb])?.into_iter();
                (found.next().flatten(), found.next().flatten())
            }
            None => (self.links(&[ifname])?.pop().flatten(), None),
        };
        let Some(dev) = dev else { return Ok(None) };
        let inst = self.inspect_many(&[(dev.index, ifb)])?.pop().expect("one result");
        Ok(Some((dev.index, inst)))
    }

    /// Installs HTB `1:` / `1:10` / pfifo `10:` at `kbit` on `ifindex`, changing the class in
    /// place when the qdisc is already there.
    fn install_htb(&mut self, ifindex: u32, root_present: bool, kbit: u32) -> Result<()> {
        let p = htb_params(kbit);
        let mut msgs = Vec::with_capacity(3);
        if !root_present {
            msgs.push(root_htb_msg(ifindex));
        }
        msgs.push(class_msg(ifindex, &p));
        msgs.push(leaf_msg(ifindex, &p));
        self.batch("install htb", msgs)
    }

    /// Sends messages in one datagram with acks (rtnetlink runs them in order).
    fn batch(&mut self, op: &str, msgs: Vec<MsgBuilder>) -> Result<()> {
        let answers = self.sock.transact(op, msgs)?;
        for a in answers {
            a.map_err(|source| Error::Netlink { op: op.into(), source })?;
        }
        Ok(())
    }

    /// Sends one request; the errnos in `ok` count as success (the object is already gone).
    fn request_tolerant(&mut self, op: &str, msg: MsgBuilder, ok: &[i32]) -> Result<()> {
        match self.sock.transact(op, vec![msg])?.pop().expect("one answer") {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error().is_some_and(|c| ok.contains(&c)) => Ok(()),
            Err(source) => Err(Error::Netlink { op: op.into(), source }),
        }
    }

    /// Creates the IFB `name` (up), or brings an existing one up; returns it.
    fn ensure_ifb(&mut self, name: &str, existing: Option<Link>) -> Result<Link> {
        if let Some(l) = &existing {
            if l.kind.as_deref() != Some("ifb") {
                return Err(Error::invalid("ifb device", name, "exists and is not an ifb"));
            }
            if l.flags & IFF_UP != 0 {
                return Ok(l.clone());
            }
            let up = MsgBuilder::new(links::RTM_NEWLINK, 0).bytes(&ifinfomsg(
                libc::AF_UNSPEC as u8,
                l.index as i32,
                IFF_UP,
                IFF_UP,
            ));
            self.batch(&format!("set {name} up"), vec![up])?;
        } else {
            // Created down, IPv6 off, then up: an IFB only turns packets around and needs no
            // addresses, while IPv6 on it (link-local, multicast route, DAD) makes the kernel walk
            // the whole IPv6 routing table at every device that comes up — with 10,000 sessions
            // that made creating one IFB cost 12–40 ms instead of well under one.
            let create = MsgBuilder::new(links::RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
                .bytes(&ifinfomsg(libc::AF_UNSPEC as u8, 0, 0, 0))
                .attr_str(IFLA_IFNAME, name)
                .nest_start(IFLA_LINKINFO)
                .attr_str(IFLA_INFO_KIND, "ifb")
                .nest_end();
            self.request_tolerant(&format!("create {name}"), create, &[libc::EEXIST])?;
            ipv6_off(name);
        }
        let l = self
            .links(&[name])?
            .pop()
            .flatten()
            .ok_or_else(|| Error::NotFound { what: "ifb device", id: name.into() })?;
        if l.flags & IFF_UP == 0 {
            let up = MsgBuilder::new(links::RTM_NEWLINK, 0).bytes(&ifinfomsg(
                libc::AF_UNSPEC as u8,
                l.index as i32,
                IFF_UP,
                IFF_UP,
            ));
            self.batch(&format!("set {name} up"), vec![up])?;
        }
        Ok(l)
    }

    fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        let msg = MsgBuilder::new(links::RTM_DELLINK, 0).bytes(&ifinfomsg(libc::AF_UNSPEC as u8, index as i32, 0, 0));
        self.request_tolerant(&format!("delete {name}"), msg, &[libc::ENODEV, libc::ENOENT])
    }

    fn remove_upload(&mut self, ifindex: Option<u32>, inst: &Installed, errors: &mut Vec<Error>) {
        if let (Some(idx), true) = (ifindex, inst.ingress) {
            let m = del_qdisc_msg(idx, INGRESS_HANDLE, TC_H_INGRESS);
            if let Err(e) =
                self.request_tolerant("delete ingress qdisc", m, &[libc::ENOENT, libc::EINVAL, libc::ENODEV])
            {
                errors.push(e);
            }
        }
        if let Some(ifb) = &inst.ifb {
            // A device that merely carries the IFB's name is not ours: never delete it.
            if ifb.kind.as_deref() != Some("ifb") {
                tracing::warn!(dev = %ifb.name, kind = ifb.kind.as_deref().unwrap_or("none"),
                    "leaving a device that has an upload IFB's name but is not an ifb");
            } else if let Err(e) = self.delete_link(ifb.index, &ifb.name) {
                errors.push(e);
            }
        }
    }
}

/// Turns IPv6 off on an IFB (its per-device sysctl, in the caller's network namespace). Best
/// effort: without IPv6 in the kernel the file does not exist, and an IFB with IPv6 works too.
fn ipv6_off(ifb: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{ifb}/disable_ipv6");
    match std::fs::write(&path, "1\n") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dev = ifb, "cannot turn IPv6 off on the upload ifb: {e}"),
    }
}

/// The IFB name for a session interface, or `None` when `pgi-<name>` would exceed the kernel's
/// 15-byte limit (such an interface cannot have upload shaping).
pub fn ifb_for(ifname: &str) -> Option<String> {
    (IFB_PREFIX.len() + ifname.len() <= 15).then(|| ifb_name(ifname))
}

fn first_error(errors: Vec<Error>) -> Result<()> {
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Tc for TcNetlink {
    /// Without dumping every qdisc or every link: the session interfaces are named by their
    /// IPv4 addresses (one small address dump), the IFBs come from a link dump the kernel
    /// filters to kind `ifb`, and each session interface is asked for exactly what counts — its
    /// HTB class `1:10` (present only under our root HTB `1:`, and carrying the rate) and its
    /// ingress redirect filter (present only on an ingress qdisc, and naming the IFB) — and each
    /// IFB for its class. A qdisc dump sends five messages per shaped session and a full link
    /// dump every device's per-family configuration; together they were most of this read with
    /// 10,000 sessions. An interface without an IPv4 address is no session interface and is not
    /// read (pppd adds the address before any policy is applied, and a ppp interface that lost
    /// it is on its way out, taking its qdiscs along).
    fn read(&mut self) -> Result<TcState> {
        let strict = self.sock.strict();
        let dumped =
            if strict { links::dump_links_of_kind(&mut self.sock, "ifb")? } else { links::dump_links(&mut self.sock)? };
        // Only real IFBs are ours; a foreign device that happens to be named pgi-* is neither
        // reported as state nor ever removed.
        let ifbs: BTreeMap<String, Link> = dumped
            .iter()
            .filter(|l| l.name.starts_with(IFB_PREFIX) && l.kind.as_deref() == Some("ifb"))
            .map(|l| (l.name.clone(), l.clone()))
            .collect();
        let sessions: Vec<(String, u32)> = links::LinkSnapshot::read_addresses()?
            .by_name
            .into_values()
            .filter(|l| l.name.starts_with(SESSION_PREFIX))
            .map(|l| (l.name, l.index))
            .collect();
        let mut items: Vec<(String, Installed)> = sessions
            .iter()
            .map(|(name, _)| {
                let ifb = ifb_for(name).and_then(|n| ifbs.get(&n).cloned());
                (name.clone(), Installed { ifb, ..Default::default() })
            })
            .collect();
        #[derive(Clone, Copy)]
        enum Ask {
            Class(usize),
            Filter(usize),
            IfbClass(usize),
        }
        let mut asks: Vec<(Ask, MsgBuilder)> = Vec::new();
        for (i, (_, idx)) in sessions.iter().enumerate() {
            asks.push((Ask::Class(i), get_class_msg(*idx)));
            asks.push((Ask::Filter(i), get_filter_msg(*idx)));
            if let Some(ifb) = &items[i].1.ifb {
                asks.push((Ask::IfbClass(i), get_class_msg(ifb.index)));
            }
        }
        let mut asks = asks.into_iter().peekable();
        while asks.peek().is_some() {
            let round: Vec<(Ask, MsgBuilder)> = asks.by_ref().take(GETS_PER_ROUND).collect();
            let (tags, msgs): (Vec<Ask>, Vec<MsgBuilder>) = round.into_iter().unzip();
            for (tag, answer) in tags.into_iter().zip(self.sock.transact("read tc", msgs)?) {
                let m = answer_msgs("read tc", answer)?;
                match tag {
                    Ask::Class(i) => {
                        let inst = &mut items[i].1;
                        inst.down_rate = parse_htb_class(&m);
                        inst.root_htb = inst.down_rate.is_some();
                    }
                    Ask::Filter(i) => {
                        let inst = &mut items[i].1;
                        inst.redirect_to = parse_redirect(&m);
                        inst.ingress = !m.is_empty();
                    }
                    Ask::IfbClass(i) => {
                        let inst = &mut items[i].1;
                        inst.ifb_rate = parse_htb_class(&m);
                        inst.ifb_root_htb = inst.ifb_rate.is_some();
                    }
                }
            }
        }
        let mut state = TcState { ifbs: ifbs.keys().cloned().collect(), ..Default::default() };
        for (name, inst) in items {
            let s = inst.shaping();
            if s != Shaping::default() {
                state.shaping.insert(name, s);
            }
        }
        Ok(state)
    }

    fn read_one(&mut self, ifname: &str) -> Result<Shaping> {
        Ok(self.inspect(ifname)?.map(|(_, i)| i.shaping()).unwrap_or_default())
    }

    fn set(&mut self, ifname: &str, shaping: &Shaping) -> Result<()> {
        if shaping.up_kbit.is_some() && ifb_for(ifname).is_none() {
            return Err(Error::invalid("interface name", ifname, "too long for an ifb name (pgi-<name> ≤ 15)"));
        }
        let Some((idx, inst)) = self.inspect(ifname)? else {
            return Err(Error::NotFound { what: "interface", id: ifname.into() });
        };
        let now = inst.shaping();
        match shaping.down_kbit {
            Some(k) if now.down_kbit == Some(k) => {}
            Some(k) => self.install_htb(idx, inst.root_htb, k)?,
            None if inst.root_htb => {
                let m = del_qdisc_msg(idx, HTB_HANDLE, TC_H_ROOT);
                self.request_tolerant("delete root qdisc", m, &[libc::ENOENT, libc::EINVAL])?;
            }
            None => {}
        }
        match shaping.up_kbit {
            Some(k) if now.up_kbit == Some(k) => {}
            Some(k) => {
                let name = ifb_for(ifname).expect("checked above");
                let ifb = self.ensure_ifb(&name, inst.ifb.clone())?;
                let ifb_root = inst.ifb.as_ref().is_some_and(|l| l.index == ifb.index) && inst.ifb_root_htb;
                self.install_htb(ifb.index, ifb_root, k)?;
                let mut msgs = Vec::new();
                if !inst.ingress {
                    msgs.push(ingress_msg(idx));
                }
                if inst.redirect_to != Some(ifb.index) {
                    msgs.push(redirect_filter_msg(idx, ifb.index));
                }
                if !msgs.is_empty() {
                    self.batch("install ingress redirect", msgs)?;
                }
            }
            None => {
                let mut errors = Vec::new();
                self.remove_upload(Some(idx), &inst, &mut errors);
                first_error(errors)?;
            }
        }
        Ok(())
    }

    fn clear(&mut self, ifname: &str) -> Result<()> {
        let mut errors = Vec::new();
        match self.inspect(ifname)? {
            Some((idx, inst)) => {
                if inst.root_htb {
                    let m = del_qdisc_msg(idx, HTB_HANDLE, TC_H_ROOT);
                    if let Err(e) =
                        self.request_tolerant("delete root qdisc", m, &[libc::ENOENT, libc::EINVAL, libc::ENODEV])
                    {
                        errors.push(e);
                    }
                }
                self.remove_upload(Some(idx), &inst, &mut errors);
            }
            // The session interface is gone and took its qdiscs along; only the IFB is left.
            None => {
                if let Some(ifb) = ifb_for(ifname) {
                    if let Err(e) = self.remove_ifb(&ifb) {
                        errors.push(e);
                    }
                }
            }
        }
        first_error(errors)
    }

    fn remove_ifb(&mut self, ifb: &str) -> Result<()> {
        if !ifb.starts_with(IFB_PREFIX) {
            return Err(Error::invalid("ifb device", ifb, "not a pppgate ifb (pgi-*)"));
        }
        match self.links(&[ifb])?.pop().flatten() {
            Some(l) if l.kind.as_deref() == Some("ifb") => self.delete_link(l.index, ifb),
            Some(_) => Err(Error::invalid("ifb device", ifb, "exists and is not an ifb")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htb_params_scale_with_rate() {
        let p = htb_params(1000);
        assert_eq!(p.rate_bytes, 125_000);
        assert_eq!(p.burst_bytes, 1250 + 1600);
        assert_eq!(p.quantum, 12_500);
        assert_eq!(p.queue_packets, 16);
        let p = htb_params(100_000);
        assert_eq!(p.burst_bytes, 125_000 + 1600);
        assert_eq!(p.quantum, 200_000);
        assert_eq!(p.queue_packets, 833);
        let p = htb_params(1);
        assert_eq!(p.quantum, 1600);
    }

    #[test]
    fn htb_opt_layout() {
        let p = htb_params(8000);
        let b = htb_opt(&p);
        assert_eq!(b.len(), 44);
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 1_000_000);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1_000_000);
        // buffer: 11600 bytes at 1 MB/s = 11.6 ms = 181250 ticks of 64 ns
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 181_250);
    }

    #[test]
    fn filter_info_is_prio_and_protocol() {
        assert_eq!(filter_info() >> 16, 1);
        assert_eq!((filter_info() & 0xFFFF) as u16, ETH_P_ALL.to_be());
    }
}

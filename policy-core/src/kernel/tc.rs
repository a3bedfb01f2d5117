//! Per-session shaping with TBF, over rtnetlink.
//!
//! Why rtnetlink and not `tc -batch`: shaping is installed on the connect path, whose budget is a
//! few milliseconds. Spawning `tc` costs a process start (~2–5 ms each on the build machine) and a
//! second one to read the result back; the netlink messages themselves take tens of microseconds.
//!
//! What pppgate installs on a session interface `pppN`:
//! * download (to the client, the interface's egress): root TBF `2:` at the rate, whose own
//!   byte-limited fifo (`2:1`, created by the kernel) is sized for the rate;
//! * upload (from the client, the interface's ingress): an `ingress` qdisc `ffff:` with one u32
//!   match-all filter (prio 1, handle 800::800) whose mirred action redirects every packet to the
//!   egress of the IFB device `pgi-pppN`, which carries a root TBF `2:` at rate = up.
//!
//! Why a classless TBF and not HTB (the layout of earlier versions: root HTB `1:`, class `1:10`,
//! pfifo leaf `10:`): every qdisc or class that binds a tc block on a device without hardware
//! offload joins one kernel-wide list that the kernel walks, under a global mutex, whenever a
//! block is bound or unbound. HTB bound five blocks per session (qdisc and class on both devices,
//! the ingress), TBF binds none, so only the ingress is left; at 10,000 sessions that list walk
//! was most of a connect's lock-held time (docs/ARCHITECTURE.md, "Run 5"). TBF shapes with the
//! same token bucket (rate, burst, no peak rate: the bucket drains at line speed, as HTB's
//! burst did with ceil = rate), and its rate is in the qdisc itself, so one qdisc dump reads the
//! rates of every session.
//!
//! The rate specs carry `linklayer ethernet`, which tells the kernel to compute transmit times
//! itself; no rate table (TCA_TBF_RTAB) is sent. Burst and queue limit are chosen in
//! [`tbf_params`]. A rate change changes TBF `2:` in place, so the qdisc, its queue and its
//! counters survive.
//!
//! Upgrades: a session shaped by an earlier version still has the HTB layout. It is read with its
//! rates (what it is shaped at, for `session show` and `diag`), and reported in
//! [`TcState::legacy`] so that a plan rewrites it; installing TBF `2:` at the root grafts it in
//! place of HTB `1:` in one kernel operation, so the session is never unshaped in between.
//!
//! Ownership: the root TBF `2:`, the root HTB `1:` (earlier versions) and the ingress qdisc on
//! interfaces named `ppp*`, and the links named `pgi-*`. Nothing else is read as pppgate's or
//! touched.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::links::{
    self, get_link_msg, ifinfomsg, parse_link, Link, IFF_UP, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO,
};
use super::netlink::{
    self, attrs, Answer, Family, MsgBuilder, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
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
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_RATE64: u16 = 6;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_INGRESS: u32 = 0xFFFF_FFF1;
const INGRESS_HANDLE: u32 = 0xFFFF_0000;
/// pppgate's root TBF. Not `1:`, the handle of the HTB of earlier versions: a root qdisc of
/// another kind under the same handle cannot be replaced (the kernel would try to change it),
/// under a new one it is grafted in its place in one operation.
const TBF_HANDLE: u32 = 0x0002_0000;
/// The root HTB `1:` and its class `1:10` of earlier versions (read and replaced on upgrade).
const HTB_HANDLE: u32 = 0x0001_0000;
const HTB_CLASS: u32 = 0x0001_0010;
const FILTER_PRIO: u32 = 1;
/// u32 knode 800::800: the first node of the root hash table, given explicitly so a repeated
/// add changes the same filter instead of adding a second one.
const U32_HANDLE: u32 = 0x8000_0800;
const ETH_P_ALL: u16 = 0x0003;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const TC_U32_TERMINAL: u8 = 1;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
/// `PSCHED_SHIFT`: TBF's buffer is given in 64 ns ticks.
const PSCHED_SHIFT: u32 = 6;
/// Bytes per packet the queue limit is counted in (a full-size packet).
const QUEUE_PACKET_BYTES: u32 = 1500;

/// Interfaces whose root qdisc and ingress qdisc are pppgate's.
pub const SESSION_PREFIX: &str = "ppp";

/// TBF parameters for one rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TbfParams {
    pub rate_bytes: u64,
    /// Bucket size: bytes the qdisc may send at line speed after idling.
    pub burst_bytes: u32,
    /// Queue length in packets (what the limit is sized from).
    pub queue_packets: u32,
    /// Limit of TBF's fifo in bytes (`queue_packets` full-size packets).
    pub limit_bytes: u32,
}

/// Burst: 10 ms worth of the rate plus one MTU-sized packet. The kernel's qdisc watchdog fires
/// late by up to a scheduler tick under load; a burst shorter than that makes the shaper lose
/// sending opportunities and run below its rate, a much longer one lets TCP overshoot after
/// every idle period (and TBF drops a packet larger than the bucket; 1,600 bytes hold any
/// packet of a PPP link). Queue: ~100 ms at the rate, at least 16 full-size packets so a slow
/// session still absorbs a TCP window's burst (a PPP device's own txqueuelen is 3, far too
/// short). Not more: measured over real L2TP in the lab (one TCP flow, 6 s), a 32- or
/// 100-packet tail-drop queue at 1–2 Mbit/s let TCP run into loss bursts and recoveries that
/// cost up to 21% of the rate in some runs, while 8 and 16 packets stayed at the payload ratio
/// (−4%) in every run. These are the values the HTB layout of earlier versions used (its leaf
/// pfifo counted the same 16 packets); TBF's fifo counts bytes, so the limit is that many
/// full-size packets (small packets, e.g. ACKs, fit more).
pub fn tbf_params(kbit: u32) -> TbfParams {
    let rate_bytes = u64::from(kbit.max(1)) * 125;
    let burst_bytes = (rate_bytes / 100 + 1600).min(u64::from(u32::MAX)) as u32;
    let queue_packets = (rate_bytes / 10 / 1500).clamp(16, 5000) as u32;
    TbfParams { rate_bytes, burst_bytes, queue_packets, limit_bytes: queue_packets * QUEUE_PACKET_BYTES }
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

/// `struct tc_tbf_qopt`: rate, peak rate (none), limit, buffer (ticks), mtu (peak rate only).
fn tbf_qopt(p: &TbfParams) -> Vec<u8> {
    let ticks = (u64::from(p.burst_bytes).saturating_mul(1_000_000_000) / p.rate_bytes.max(1)) >> PSCHED_SHIFT;
    let ticks = ticks.min(u64::from(u32::MAX)) as u32;
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(&ratespec(p.rate_bytes));
    b.extend_from_slice(&[0u8; 12]); // no peak rate
    b.extend_from_slice(&p.limit_bytes.to_ne_bytes());
    b.extend_from_slice(&ticks.to_ne_bytes()); // buffer
    b.extend_from_slice(&0u32.to_ne_bytes()); // mtu
    b
}

/// Root TBF `2:` on `ifindex`: created, changed in place when it is there, or grafted in place
/// of whatever root qdisc the device has (the HTB of earlier versions too).
fn root_tbf_msg(ifindex: u32, p: &TbfParams) -> MsgBuilder {
    let mut m = MsgBuilder::new(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE)
        .bytes(&tcmsg(ifindex, TBF_HANDLE, TC_H_ROOT, 0))
        .attr_str(TCA_KIND, "tbf")
        .nest_start(TCA_OPTIONS)
        .attr(TCA_TBF_PARMS, &tbf_qopt(p))
        .attr(TCA_TBF_BURST, &p.burst_bytes.to_ne_bytes());
    if p.rate_bytes > u64::from(u32::MAX) {
        m = m.attr(TCA_TBF_RATE64, &p.rate_bytes.to_ne_bytes());
    }
    m.nest_end()
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

/// One qdisc as the kernel reports it.
#[derive(Debug)]
struct QdiscMsg {
    ifindex: u32,
    handle: u32,
    parent: u32,
    kind: String,
    /// The rate (bytes/s) of a TBF.
    tbf_rate: Option<u64>,
}

fn parse_qdisc_msg(p: &[u8]) -> Option<QdiscMsg> {
    let ifindex = i32::from_ne_bytes(p.get(4..8)?.try_into().ok()?) as u32;
    let handle = u32::from_ne_bytes(p.get(8..12)?.try_into().ok()?);
    let parent = u32::from_ne_bytes(p.get(12..16)?.try_into().ok()?);
    let body = p.get(20..)?;
    let kind = attrs(body).find(|(t, _)| *t == TCA_KIND).map(|(_, d)| netlink::attr_str(d))?;
    let mut tbf_rate = None;
    if kind == "tbf" {
        if let Some((_, opts)) = attrs(body).find(|(t, _)| *t == TCA_OPTIONS) {
            let mut rate = None;
            let mut rate64 = None;
            for (t, d) in attrs(opts) {
                match t {
                    TCA_TBF_PARMS => rate = d.get(8..12).map(|b| u64::from(u32::from_ne_bytes(b.try_into().unwrap()))),
                    TCA_TBF_RATE64 => rate64 = netlink::attr_u64(d),
                    _ => {}
                }
            }
            tbf_rate = rate64.or(rate);
        }
    }
    Some(QdiscMsg { ifindex, handle, parent, kind, tbf_rate })
}

/// The first qdisc of a get's reply.
fn parse_qdisc(msgs: &[(u16, Vec<u8>)]) -> Option<QdiscMsg> {
    msgs.iter().filter(|(ty, _)| *ty == RTM_NEWQDISC).find_map(|(_, p)| parse_qdisc_msg(p))
}

/// The shaper at a device's root, as far as it is pppgate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Root {
    /// No root qdisc of pppgate's (none, or someone else's).
    #[default]
    Foreign,
    /// TBF `2:` at this rate (bytes/s): the layout pppgate installs.
    Tbf(u64),
    /// HTB `1:` of earlier versions, with the rate of its class `1:10` (`None`: no such class,
    /// or not read yet).
    Htb(Option<u64>),
}

impl Root {
    /// What a root qdisc is to pppgate.
    fn of(q: &QdiscMsg) -> Root {
        match (q.kind.as_str(), q.handle, q.tbf_rate) {
            ("tbf", TBF_HANDLE, Some(rate)) => Root::Tbf(rate),
            ("htb", HTB_HANDLE, _) => Root::Htb(None),
            _ => Root::Foreign,
        }
    }

    /// The rate it shapes at, bytes/s.
    pub fn rate(self) -> Option<u64> {
        match self {
            Root::Tbf(r) => Some(r),
            Root::Htb(r) => r,
            Root::Foreign => None,
        }
    }

    fn handle(self) -> Option<u32> {
        match self {
            Root::Tbf(_) => Some(TBF_HANDLE),
            Root::Htb(_) => Some(HTB_HANDLE),
            Root::Foreign => None,
        }
    }

    fn is_htb(self) -> bool {
        matches!(self, Root::Htb(_))
    }
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
    /// The interface's root shaper (download).
    pub root: Root,
    pub ingress: bool,
    /// Where the ingress filter redirects to.
    pub redirect_to: Option<u32>,
    pub ifb: Option<Link>,
    /// The IFB's root shaper (upload).
    pub ifb_root: Root,
}

impl Installed {
    /// The shaping in effect: a direction counts only when every piece of it is in place.
    pub fn shaping(&self) -> Shaping {
        let down_kbit = self.root.rate().map(kbit_of);
        let up_kbit = match &self.ifb {
            Some(ifb) if self.ingress && self.redirect_to == Some(ifb.index) && ifb.flags & IFF_UP != 0 => {
                self.ifb_root.rate().map(kbit_of)
            }
            _ => None,
        };
        Shaping { down_kbit, up_kbit }
    }

    /// Whether either direction still has the HTB layout of earlier versions.
    pub fn legacy(&self) -> bool {
        self.root.is_htb() || self.ifb_root.is_htb()
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
            reqs.push(get_qdisc_msg(*idx, TC_H_INGRESS));
            reqs.push(get_filter_msg(*idx));
            if let Some(ifb) = ifb {
                reqs.push(get_qdisc_msg(ifb.index, TC_H_ROOT));
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
            let root = parse_qdisc(&next()?).map(|q| Root::of(&q)).unwrap_or_default();
            let ingress = parse_qdisc(&next()?);
            let filter = parse_redirect(&next()?);
            let mut inst = Installed {
                root,
                ingress: ingress.is_some_and(|q| q.kind == "ingress"),
                redirect_to: filter,
                ifb: ifb.clone(),
                ..Default::default()
            };
            if ifb.is_some() {
                inst.ifb_root = parse_qdisc(&next()?).map(|q| Root::of(&q)).unwrap_or_default();
            }
            out.push(inst);
        }
        self.read_htb_rates(items.iter().map(|(idx, ifb)| (*idx, ifb.as_ref().map(|l| l.index))).zip(out.iter_mut()))?;
        Ok(out)
    }

    /// The class rates of the HTB layout of earlier versions, where a root is HTB `1:` (one class
    /// get each; none on a box without such sessions).
    fn read_htb_rates<'a>(
        &mut self,
        items: impl Iterator<Item = ((u32, Option<u32>), &'a mut Installed)>,
    ) -> Result<()> {
        let mut wants: Vec<(&'a mut Root, u32)> = Vec::new();
        for ((idx, ifb), inst) in items {
            if inst.root.is_htb() {
                wants.push((&mut inst.root, idx));
            }
            if let (Some(ifb), true) = (ifb, inst.ifb_root.is_htb()) {
                wants.push((&mut inst.ifb_root, ifb));
            }
        }
        let mut wants = wants.into_iter().peekable();
        while wants.peek().is_some() {
            let round: Vec<(&mut Root, u32)> = wants.by_ref().take(GETS_PER_ROUND).collect();
            let msgs = round.iter().map(|(_, idx)| get_class_msg(*idx)).collect();
            for ((root, _), answer) in round.into_iter().zip(self.sock.transact("read htb class", msgs)?) {
                *root = Root::Htb(parse_htb_class(&answer_msgs("read htb class", answer)?));
            }
        }
        Ok(())
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

    /// Installs TBF `2:` at `kbit` as `ifindex`'s root: changes it in place when it is there,
    /// replaces any other root qdisc (the HTB of earlier versions) in one operation otherwise.
    fn install_tbf(&mut self, ifindex: u32, kbit: u32) -> Result<()> {
        self.batch("install tbf", vec![root_tbf_msg(ifindex, &tbf_params(kbit))])
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
    /// Without a full link dump: the session interfaces are named by their IPv4 addresses (one
    /// small address dump), the IFBs come from a link dump the kernel filters to kind `ifb`, and
    /// one qdisc dump gives every root qdisc with its rate (TBF carries it in the qdisc; the
    /// dump sends two messages per shaped session, the roots, plus the ingress qdisc). Only the
    /// ingress redirect filter, which names the IFB, is asked per session that has an ingress
    /// qdisc (the kernel dumps filters per device only), and a class get per HTB root of
    /// earlier versions. An interface without an IPv4 address is no session interface and is
    /// not read (pppd adds the address before any policy is applied, and a ppp interface that
    /// lost it is on its way out, taking its qdiscs along).
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
        let mut roots: HashMap<u32, Root> = HashMap::new();
        let mut ingress: HashSet<u32> = HashSet::new();
        let dump = MsgBuilder::new(RTM_GETQDISC, NLM_F_DUMP).bytes(&tcmsg(0, 0, 0, 0));
        for (ty, p) in self.sock.dump("dump qdiscs", dump)? {
            let Some(q) = (ty == RTM_NEWQDISC).then(|| parse_qdisc_msg(&p)).flatten() else { continue };
            if q.parent == TC_H_ROOT {
                roots.insert(q.ifindex, Root::of(&q));
            } else if q.parent == TC_H_INGRESS && q.kind == "ingress" {
                ingress.insert(q.ifindex);
            }
        }
        let mut items: Vec<(String, Installed)> = sessions
            .iter()
            .map(|(name, idx)| {
                let ifb = ifb_for(name).and_then(|n| ifbs.get(&n).cloned());
                let ifb_root = ifb.as_ref().and_then(|l| roots.get(&l.index)).copied().unwrap_or_default();
                let inst = Installed {
                    root: roots.get(idx).copied().unwrap_or_default(),
                    ingress: ingress.contains(idx),
                    ifb,
                    ifb_root,
                    ..Default::default()
                };
                (name.clone(), inst)
            })
            .collect();
        let asks: Vec<(usize, MsgBuilder)> = sessions
            .iter()
            .enumerate()
            .filter(|(i, _)| items[*i].1.ingress)
            .map(|(i, (_, idx))| (i, get_filter_msg(*idx)))
            .collect();
        let mut asks = asks.into_iter().peekable();
        while asks.peek().is_some() {
            let round: Vec<(usize, MsgBuilder)> = asks.by_ref().take(GETS_PER_ROUND).collect();
            let (tags, msgs): (Vec<usize>, Vec<MsgBuilder>) = round.into_iter().unzip();
            for (i, answer) in tags.into_iter().zip(self.sock.transact("read tc", msgs)?) {
                items[i].1.redirect_to = parse_redirect(&answer_msgs("read tc", answer)?);
            }
        }
        let indices = sessions.iter().map(|(_, idx)| *idx);
        let ifb_indices: Vec<Option<u32>> = items.iter().map(|(_, i)| i.ifb.as_ref().map(|l| l.index)).collect();
        self.read_htb_rates(indices.zip(ifb_indices).zip(items.iter_mut().map(|(_, i)| i)))?;
        let mut state = TcState { ifbs: ifbs.keys().cloned().collect(), ..Default::default() };
        for (name, inst) in items {
            let s = inst.shaping();
            if inst.legacy() {
                state.legacy.insert(name.clone());
            }
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
            // The same rate in the HTB layout of earlier versions is rewritten as TBF.
            Some(k) if now.down_kbit == Some(k) && !inst.root.is_htb() => {}
            Some(k) => self.install_tbf(idx, k)?,
            None => {
                if let Some(handle) = inst.root.handle() {
                    let m = del_qdisc_msg(idx, handle, TC_H_ROOT);
                    self.request_tolerant("delete root qdisc", m, &[libc::ENOENT, libc::EINVAL])?;
                }
            }
        }
        match shaping.up_kbit {
            Some(k) if now.up_kbit == Some(k) && !inst.ifb_root.is_htb() => {}
            Some(k) => {
                let name = ifb_for(ifname).expect("checked above");
                let ifb = self.ensure_ifb(&name, inst.ifb.clone())?;
                self.install_tbf(ifb.index, k)?;
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
                if let Some(handle) = inst.root.handle() {
                    let m = del_qdisc_msg(idx, handle, TC_H_ROOT);
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
    fn tbf_params_scale_with_rate() {
        let p = tbf_params(1000);
        assert_eq!(p.rate_bytes, 125_000);
        assert_eq!(p.burst_bytes, 1250 + 1600);
        assert_eq!(p.queue_packets, 16);
        assert_eq!(p.limit_bytes, 16 * 1500);
        let p = tbf_params(100_000);
        assert_eq!(p.burst_bytes, 125_000 + 1600);
        assert_eq!(p.queue_packets, 833);
        assert_eq!(p.limit_bytes, 833 * 1500);
    }

    #[test]
    fn tbf_qopt_layout() {
        let p = tbf_params(8000);
        let b = tbf_qopt(&p);
        assert_eq!(b.len(), 36);
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 1_000_000);
        assert_eq!(&b[12..24], &[0u8; 12], "no peak rate");
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap()),
            66 * 1500,
            "100 ms at 1 MB/s: 66 full-size packets"
        );
        // buffer: 11600 bytes at 1 MB/s = 11.6 ms = 181250 ticks of 64 ns
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 181_250);
    }

    #[test]
    fn roots_are_ours_by_kind_and_handle() {
        let q = |kind: &str, handle, tbf_rate| QdiscMsg {
            ifindex: 1,
            handle,
            parent: TC_H_ROOT,
            kind: kind.into(),
            tbf_rate,
        };
        assert_eq!(Root::of(&q("tbf", TBF_HANDLE, Some(5))), Root::Tbf(5));
        assert_eq!(Root::of(&q("tbf", 0x0003_0000, Some(5))), Root::Foreign);
        assert_eq!(Root::of(&q("htb", HTB_HANDLE, None)), Root::Htb(None));
        assert_eq!(Root::of(&q("htb", 0x0005_0000, None)), Root::Foreign);
        assert_eq!(Root::of(&q("fq_codel", 0, None)), Root::Foreign);
    }

    #[test]
    fn filter_info_is_prio_and_protocol() {
        assert_eq!(filter_info() >> 16, 1);
        assert_eq!((filter_info() & 0xFFFF) as u16, ETH_P_ALL.to_be());
    }
}

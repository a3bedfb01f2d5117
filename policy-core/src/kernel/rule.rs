//! Policy-routing rules pppgate owns: `from <cidr> lookup <table> priority <n>` with protocol
//! [`RTPROT_PPPGATE`] (FRA_PROTOCOL), over rtnetlink. Only rules carrying that protocol are read
//! back or deleted.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use super::{OwnedRule, Rules, RTPROT_PPPGATE};
use crate::error::{Error, Result};

const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_GETRULE: u16 = 34;

const FRA_SRC: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;
const FRA_PROTOCOL: u16 = 21;
const FR_ACT_TO_TBL: u8 = 1;

/// `fib_rule_hdr`; the table id always travels in FRA_TABLE too (ids above 255).
fn rule_hdr(src_len: u8, table: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = libc::AF_INET as u8;
    b[2] = src_len;
    b[4] = if table < 256 { table as u8 } else { 0 };
    b[7] = FR_ACT_TO_TBL;
    b
}

fn rule_msg(ty: u16, flags: u16, r: &OwnedRule) -> MsgBuilder {
    let mut m = MsgBuilder::new(ty, flags).bytes(&rule_hdr(r.from.prefix_len(), r.table));
    if r.from.prefix_len() > 0 {
        m = m.attr(FRA_SRC, &r.from.network().octets());
    }
    m.attr_u32(FRA_PRIORITY, r.priority).attr_u32(FRA_TABLE, r.table).attr_u8(FRA_PROTOCOL, RTPROT_PPPGATE)
}

fn parse_rule(payload: &[u8]) -> Option<OwnedRule> {
    let hdr = payload.get(..12)?;
    if hdr[0] != libc::AF_INET as u8 || hdr[7] != FR_ACT_TO_TBL {
        return None;
    }
    let (mut src, mut priority, mut table, mut proto) = (Ipv4Addr::UNSPECIFIED, 0, u32::from(hdr[4]), 0u8);
    for (t, d) in attrs(&payload[12..]) {
        match t {
            FRA_SRC => src = d.get(..4).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))?,
            FRA_PRIORITY => priority = netlink::attr_u32(d)?,
            FRA_TABLE => table = netlink::attr_u32(d)?,
            FRA_PROTOCOL => proto = *d.first()?,
            _ => {}
        }
    }
    (proto == RTPROT_PPPGATE)
        .then(|| Some(OwnedRule { from: Ipv4Net::new(src, hdr[2]).ok()?, table, priority }))
        .flatten()
}

/// The real rules backend.
pub struct RulesNetlink {
    sock: Socket,
}

impl std::fmt::Debug for RulesNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesNetlink").finish_non_exhaustive()
    }
}

impl RulesNetlink {
    pub fn new() -> Result<RulesNetlink> {
        Ok(RulesNetlink { sock: Socket::open(Family::Route)? })
    }
}

impl Rules for RulesNetlink {
    fn read(&mut self) -> Result<Vec<OwnedRule>> {
        let mut hdr = [0u8; 12];
        hdr[0] = libc::AF_INET as u8;
        let req = MsgBuilder::new(RTM_GETRULE, NLM_F_DUMP).bytes(&hdr);
        let mut out: Vec<OwnedRule> = self
            .sock
            .dump("dump rules", req)?
            .iter()
            .filter(|(ty, _)| *ty == RTM_NEWRULE)
            .filter_map(|(_, p)| parse_rule(p))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Adds the rule; one that already exists is fine (rules, unlike routes, would otherwise
    /// duplicate, so this asks the kernel for NLM_F_EXCL and takes EEXIST as success).
    fn add(&mut self, r: &OwnedRule) -> Result<()> {
        if r.from.trunc() != r.from {
            return Err(Error::invalid("rule source", r.from.to_string(), "host bits set"));
        }
        let op = format!("add rule from {} lookup {} priority {}", r.from, r.table, r.priority);
        match self.sock.request(&op, rule_msg(RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, r)) {
            Err(e) if netlink::errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    fn del(&mut self, r: &OwnedRule) -> Result<()> {
        let op = format!("delete rule from {} lookup {} priority {}", r.from, r.table, r.priority);
        match self.sock.request(&op, rule_msg(RTM_DELRULE, 0, r)) {
            Err(e) if matches!(netlink::errno_of(&e), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            other => other,
        }
    }
}

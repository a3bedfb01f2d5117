//! Tenant isolation for the WireGuard interface: the table `inet pppgate_wg`, owned by `wg
//! reconcile` (R906: no cross-tenant routing, only management traffic through the VPN).
//!
//! Its own table, not a chain in `inet pppgate`: the session table is rebuilt by layout version
//! and restored by the tamper guard from the session state; the isolation rules follow SQL's
//! routers instead. A drop in any table's forward hook is final, so the two tables compose.
//!
//! The rules, in order (forwarded packets only; traffic from and to the concentrator itself —
//! management, the gateway pings — never meets them):
//! 1. `intra_tenant` only: wg → wg from a router's own address to its tenant's /16 passes. The
//!    set holds each router's /32, never the /16: WireGuard accepts a packet from a peer only when
//!    its source maps to that peer in the AllowedIPs table, and a router's /32 maps to it alone,
//!    so this source cannot be forged by another tenant's router (an unassigned address of the
//!    /16 could, through a router routing 0.0.0.0/0).
//! 2. wg → a management network, from the tenant pool: the routers' answers to the panel.
//! 3. another interface → the tenant pool, from a management network: the panel reaching routers.
//! 4. wg → the tenant pool: dropped, counted (`cross_tenant`): another tenant's router, or the
//!    same tenant's when `intra_tenant` is off, or a forged source.
//! 5. any other interface → the tenant pool: dropped, counted (`into_tenant`): PPP clients, LANs.
//! 6. wg → anywhere from the tenant pool: dropped, counted (`out_of_tenant`): tunnel addresses
//!    are for management only. Policy-routed traffic (R902: client subnets NATed by a router) carries
//!    other addresses and is not touched.
//!
//! The table is read back as `nft -j` JSON: the rule comments (the first carries the interface
//! and the `intra_tenant` flag) and the set elements must be exactly what was written. Written
//! through `nft -f -` (one transaction); this runs from the timer and from `wg router add
//! --apply`, not on a connect path, so the spawn costs nothing that matters.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::wg::addr;

pub const TABLE: &str = "pppgate_wg";
const MARKER: &str = "pppgate wg isolation 1";

/// What the table should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The concentrator's WireGuard interface.
    pub ifname: String,
    /// Routers of one tenant reach each other through the concentrator.
    pub intra_tenant: bool,
    /// Sources allowed to reach the routers through the concentrator (the panel), and that the
    /// routers' answers may reach.
    pub management: BTreeSet<Ipv4Net>,
    /// Each router's address with its tenant subnet.
    pub routers: BTreeSet<(Ipv4Addr, Ipv4Net)>,
}

/// The table as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub comments: Vec<String>,
    pub same_tenant: BTreeSet<(Ipv4Addr, Ipv4Net)>,
    pub management: BTreeSet<Ipv4Net>,
    pub drops: Drops,
}

/// The drop counters (packets) of rules 4-6.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    pub cross_tenant: u64,
    pub into_tenant: u64,
    pub out_of_tenant: u64,
}

fn pool() -> String {
    format!("{}-{}", Ipv4Addr::new(10, addr::FIRST_OCTET, 0, 0), last_pool_address())
}

fn last_pool_address() -> Ipv4Addr {
    Ipv4Addr::new(10, addr::LAST_OCTET, 255, 255)
}

/// Whether a network overlaps the tenant pool (10.100.0.0 - 10.254.255.255).
pub fn overlaps_pool(n: &Ipv4Net) -> bool {
    let first = u32::from(Ipv4Addr::new(10, addr::FIRST_OCTET, 0, 0));
    let last = u32::from(last_pool_address());
    u32::from(n.network()) <= last && u32::from(n.broadcast()) >= first
}

impl Isolation {
    /// The rule comments, in order: what [`Read::comments`] must equal.
    pub fn comments(&self) -> Vec<String> {
        let mut v = vec![format!("{MARKER} if={} intra={}", self.ifname, u8::from(self.intra_tenant))];
        if self.intra_tenant {
            v.push("same_tenant".into());
        }
        v.extend(["management_reply", "management", "cross_tenant", "into_tenant", "out_of_tenant"].map(String::from));
        v
    }

    fn elements_same_tenant(&self) -> Vec<String> {
        if !self.intra_tenant {
            return Vec::new();
        }
        self.routers.iter().map(|(a, n)| format!("{a} . {n}")).collect()
    }

    /// The whole table for `nft -f`, replacing whatever is there in one transaction.
    pub fn script(&self) -> String {
        let c = self.comments();
        let wg = &self.ifname;
        let pool = pool();
        let elems =
            |v: Vec<String>| if v.is_empty() { String::new() } else { format!(" elements = {{ {} }};", v.join(", ")) };
        let mut rules = Vec::new();
        let mut i = 0;
        let mut next = || {
            i += 1;
            &c[i - 1]
        };
        // The marker rides on the first rule, which is always there and matches nothing.
        rules.push(format!("meta l4proto 255 iifname \"{wg}\" oifname \"{wg}\" return comment \"{}\"", next()));
        if self.intra_tenant {
            rules.push(format!(
                "iifname \"{wg}\" oifname \"{wg}\" ip saddr . ip daddr @same_tenant return comment \"{}\"",
                next()
            ));
        }
        rules.push(format!("iifname \"{wg}\" ip saddr {pool} ip daddr @management return comment \"{}\"", next()));
        rules.push(format!("iifname != \"{wg}\" ip saddr @management ip daddr {pool} return comment \"{}\"", next()));
        rules.push(format!("iifname \"{wg}\" ip daddr {pool} counter drop comment \"{}\"", next()));
        rules.push(format!("ip daddr {pool} counter drop comment \"{}\"", next()));
        rules.push(format!("iifname \"{wg}\" ip saddr {pool} counter drop comment \"{}\"", next()));
        format!(
            "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n\
             \tset same_tenant {{ type ipv4_addr . ipv4_addr; flags interval;{} }}\n\
             \tset management {{ type ipv4_addr; flags interval;{} }}\n\
             \tchain forward {{\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t\t{}\n\t}}\n}}\n",
            elems(self.elements_same_tenant()),
            elems(self.management.iter().map(|n| n.to_string()).collect()),
            rules.join("\n\t\t"),
        )
    }

    /// Whether the table as read is this one.
    pub fn matches(&self, r: &Read) -> bool {
        let same: BTreeSet<_> = if self.intra_tenant { self.routers.clone() } else { BTreeSet::new() };
        r.comments == self.comments() && r.same_tenant == same && r.management == self.management
    }
}

fn parse_net(v: &Value) -> Option<Ipv4Net> {
    match v {
        Value::String(s) => s.parse::<Ipv4Addr>().ok().map(|a| Ipv4Net::new(a, 32).expect("32 is valid")),
        Value::Object(o) => {
            let p = o.get("prefix")?;
            let a: Ipv4Addr = p.get("addr")?.as_str()?.parse().ok()?;
            Ipv4Net::new(a, u8::try_from(p.get("len")?.as_u64()?).ok()?).ok()
        }
        _ => None,
    }
}

/// Parses `nft -j list table inet pppgate_wg`.
pub fn parse(json: &str) -> Result<Read> {
    let bad = |what: &str| Error::Netlink {
        op: format!("read table inet {TABLE}"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected nft JSON: {what}")),
    };
    let v: Value = serde_json::from_str(json).map_err(|_| bad("not JSON"))?;
    let items = v.get("nftables").and_then(Value::as_array).ok_or_else(|| bad("no nftables array"))?;
    let mut r = Read::default();
    for it in items {
        if let Some(s) = it.get("set") {
            let elems = s.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
            match s.get("name").and_then(Value::as_str) {
                Some("same_tenant") => {
                    for e in elems {
                        let c = e.get("concat").and_then(Value::as_array).ok_or_else(|| bad("same_tenant element"))?;
                        let (Some(a), Some(n)) = (c.first().and_then(parse_net), c.get(1).and_then(parse_net)) else {
                            return Err(bad("same_tenant element"));
                        };
                        r.same_tenant.insert((a.addr(), n));
                    }
                }
                Some("management") => {
                    for e in elems {
                        r.management.insert(parse_net(&e).ok_or_else(|| bad("management element"))?);
                    }
                }
                _ => {}
            }
        } else if let Some(rule) = it.get("rule") {
            let comment = rule.get("comment").and_then(Value::as_str).unwrap_or("").to_string();
            let packets = rule
                .get("expr")
                .and_then(Value::as_array)
                .and_then(|x| x.iter().find_map(|e| e.get("counter")?.get("packets")?.as_u64()))
                .unwrap_or(0);
            match comment.as_str() {
                "cross_tenant" => r.drops.cross_tenant = packets,
                "into_tenant" => r.drops.into_tenant = packets,
                "out_of_tenant" => r.drops.out_of_tenant = packets,
                _ => {}
            }
            r.comments.push(comment);
        }
    }
    Ok(r)
}

fn nft() -> Command {
    Command::new(crate::kernel::nft::find_nft())
}

/// Reads the table; `None` when it does not exist.
pub fn read() -> Result<Option<Read>> {
    let out = nft()
        .args(["-j", "list", "table", "inet", TABLE])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Netlink { op: format!("run nft to read table inet {TABLE}"), source })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(Error::Netlink {
            op: format!("read table inet {TABLE}"),
            source: std::io::Error::other(err.lines().next().unwrap_or("nft failed").to_string()),
        });
    }
    parse(&String::from_utf8_lossy(&out.stdout)).map(Some)
}

/// Writes the whole table in one transaction.
fn write(want: &Isolation) -> Result<()> {
    let mut child = nft()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Netlink { op: format!("run nft to write table inet {TABLE}"), source })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(want.script().as_bytes())
        .map_err(|source| Error::Netlink { op: format!("write table inet {TABLE}"), source })?;
    let out = child
        .wait_with_output()
        .map_err(|source| Error::Netlink { op: format!("write table inet {TABLE}"), source })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Netlink {
            op: format!("write table inet {TABLE}"),
            source: std::io::Error::other(err.lines().next().unwrap_or("nft failed").to_string()),
        });
    }
    Ok(())
}

/// Brings the table to `want` and verifies it by reading back; returns whether it was written
/// and the drop counters as read.
pub fn ensure(want: &Isolation) -> Result<(bool, Drops)> {
    if let Some(r) = read()? {
        if want.matches(&r) {
            return Ok((false, r.drops));
        }
    }
    write(want)?;
    let r = read()?.ok_or_else(|| Error::Verify(format!("table inet {TABLE} missing after it was written")))?;
    if !want.matches(&r) {
        return Err(Error::Verify(format!(
            "table inet {TABLE} differs after it was written: rules {:?}, {} router element(s), {} management network(s)",
            r.comments,
            r.same_tenant.len(),
            r.management.len()
        )));
    }
    Ok((true, r.drops))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(intra: bool) -> Isolation {
        Isolation {
            ifname: "wg0".into(),
            intra_tenant: intra,
            management: ["192.0.2.0/24".parse().unwrap()].into(),
            routers: [
                ("10.100.1.1".parse().unwrap(), addr::subnet(100)),
                ("10.101.1.2".parse().unwrap(), addr::subnet(101)),
            ]
            .into(),
        }
    }

    #[test]
    fn pool_bounds() {
        assert_eq!(pool(), "10.100.0.0-10.254.255.255");
        for (n, o) in [
            ("10.100.0.0/16", true),
            ("10.0.0.0/8", true),
            ("0.0.0.0/0", true),
            ("10.99.255.0/24", false),
            ("10.255.0.0/16", false),
            ("192.168.1.0/24", false),
        ] {
            assert_eq!(overlaps_pool(&n.parse().unwrap()), o, "{n}");
        }
    }

    #[test]
    fn script_names_every_rule_and_element() {
        let s = iso(true).script();
        assert!(s.contains("elements = { 10.100.1.1 . 10.100.0.0/16, 10.101.1.2 . 10.101.0.0/16 }"), "{s}");
        assert!(s.contains("comment \"pppgate wg isolation 1 if=wg0 intra=1\""), "{s}");
        assert_eq!(s.matches(" comment ").count(), iso(true).comments().len());
        let s = iso(false).script();
        assert!(!s.contains("@same_tenant") && !s.contains("10.100.1.1 ."), "{s}");
        assert_eq!(s.matches(" comment ").count(), iso(false).comments().len());
    }

    #[test]
    fn parse_reads_back_what_matches() {
        // The shape `nft -j list table` prints (nftables 1.0.6), trimmed to what parse reads.
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"inet","name":"pppgate_wg"}},
            {"set":{"name":"same_tenant","elem":[{"concat":["10.100.1.1",{"prefix":{"addr":"10.100.0.0","len":16}}]},
                {"concat":["10.101.1.2",{"prefix":{"addr":"10.101.0.0","len":16}}]}]}},
            {"set":{"name":"management","elem":[{"prefix":{"addr":"192.0.2.0","len":24}}]}},
            {"rule":{"comment":"pppgate wg isolation 1 if=wg0 intra=1","expr":[{"return":null}]}},
            {"rule":{"comment":"same_tenant","expr":[{"return":null}]}},
            {"rule":{"comment":"management_reply","expr":[{"return":null}]}},
            {"rule":{"comment":"management","expr":[{"return":null}]}},
            {"rule":{"comment":"cross_tenant","expr":[{"counter":{"packets":7,"bytes":588}},{"drop":null}]}},
            {"rule":{"comment":"into_tenant","expr":[{"counter":{"packets":2,"bytes":168}},{"drop":null}]}},
            {"rule":{"comment":"out_of_tenant","expr":[{"counter":{"packets":0,"bytes":0}},{"drop":null}]}}]}"#;
        let r = parse(json).unwrap();
        assert!(iso(true).matches(&r));
        assert!(!iso(false).matches(&r), "the intra flag is part of the layout");
        assert_eq!(r.drops, Drops { cross_tenant: 7, into_tenant: 2, out_of_tenant: 0 });
        let mut other = iso(true);
        other.routers.insert(("10.100.1.2".parse().unwrap(), addr::subnet(100)));
        assert!(!other.matches(&r), "a missing router element");
        assert!(parse("{}").is_err() && parse("x").is_err());
    }
}

//! Reading the kernel back with the real tools — never with the code under test.

use std::collections::{BTreeMap, BTreeSet};

use policy_core::kernel::{OwnedRoute, OwnedRule, Shaping};
use serde_json::Value;

use crate::netns::{json, output, run};

/// `nft -j list table inet pppgate` as a list of the objects in it (empty: no table).
pub fn nft_objects() -> Vec<Value> {
    let out = output(&["nft", "-j", "list", "table", "inet", "pppgate"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("nft -j prints JSON");
    v["nftables"].as_array().cloned().unwrap_or_default()
}

/// Whether `inet pppgate` exists.
pub fn nft_table_exists() -> bool {
    output(&["nft", "list", "table", "inet", "pppgate"]).status.success()
}

/// The members of one nft set as the nft tool prints them (addresses, prefixes, concatenations
/// rendered as text). Panics when the set is not there.
pub fn nft_set_elems(set: &str) -> Vec<String> {
    for o in nft_objects() {
        if let Some(s) = o.get("set") {
            if s["name"] == set {
                return s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(render_elem).collect())
                    .unwrap_or_default();
            }
        }
    }
    panic!("set {set} not in nft's listing");
}

/// Every state set's members: set name → members as nft lists them, `iface . address` (sets that
/// are empty are listed empty).
pub fn nft_members() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for o in nft_objects() {
        if let Some(s) = o.get("set") {
            let name = s["name"].as_str().unwrap_or_default().to_string();
            if ["connect_pending_v4", "full_v4", "restricted_v4", "blocked_v4"].contains(&name.as_str()) {
                let elems = s
                    .get("elem")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(render_elem).collect())
                    .unwrap_or_default();
                out.insert(name, elems);
            }
        }
    }
    out
}

/// Every state set's members: set name → members as nft lists them (`ppp0 . 100.64.0.2`: the
/// interface, by name while it exists and by index after, and the address).
pub fn nft_members_by_set() -> BTreeMap<String, BTreeSet<String>> {
    nft_members()
}

/// Whether a member as nft lists it (`ppp0 . 100.64.0.2`) is for address `ip`.
pub fn member_is(elem: &str, ip: &str) -> bool {
    elem == ip || elem.rsplit(" . ").next() == Some(ip)
}

/// The state sets `ip` is in (bound to whichever interface), by name (`full_v4`, …), as nft
/// lists them.
pub fn nft_sets_of(ip: &str) -> BTreeSet<String> {
    nft_members().into_iter().filter(|(_, m)| m.iter().any(|e| member_is(e, ip))).map(|(s, _)| s).collect()
}

/// The members of the state sets for address `ip`: (set, interface as nft lists it).
pub fn nft_bindings_of(ip: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (set, m) in nft_members() {
        for e in m.iter().filter(|e| member_is(e, ip)) {
            let iface = e.rsplit_once(" . ").map(|(i, _)| i.trim_matches('"').to_string()).unwrap_or_default();
            out.insert((set.clone(), iface));
        }
    }
    out
}

pub fn render_elem(e: &Value) -> String {
    match e {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                format!("{}/{}", p["addr"].as_str().unwrap(), p["len"])
            } else if let Some(r) = o.get("range") {
                format!("{}-{}", render_elem(&r[0]), render_elem(&r[1]))
            } else if let Some(c) = o.get("concat") {
                c.as_array().unwrap().iter().map(render_elem).collect::<Vec<_>>().join(" . ")
            } else if let Some(el) = o.get("elem") {
                render_elem(&el["val"])
            } else {
                e.to_string()
            }
        }
        _ => e.to_string(),
    }
}

/// Packet count of the rule in `inet pppgate` carrying `comment` (its counter).
pub fn nft_counter(comment: &str) -> u64 {
    counter_in(&nft_objects(), comment).unwrap_or_else(|| panic!("no counter rule with comment {comment}"))
}

/// Packet count of the rule with `comment` among `objects` (an `nft -j list` answer).
pub fn counter_in(objects: &[Value], comment: &str) -> Option<u64> {
    for o in objects {
        if let Some(r) = o.get("rule") {
            if r.get("comment").and_then(Value::as_str) == Some(comment) {
                for e in r["expr"].as_array()? {
                    if let Some(c) = e.get("counter") {
                        return c["packets"].as_u64();
                    }
                }
            }
        }
    }
    None
}

/// Parses a tc rate such as `10Mbit`, `512Kbit`, `1Gbit`, `800bit` into bit/s.
pub fn parse_tc_rate(s: &str) -> u64 {
    let (num, mult) = if let Some(n) = s.strip_suffix("Gbit") {
        (n, 1e9)
    } else if let Some(n) = s.strip_suffix("Mbit") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("Kbit") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix("bit") {
        (n, 1.0)
    } else {
        panic!("unknown tc rate {s:?}")
    };
    (num.parse::<f64>().unwrap_or_else(|_| panic!("bad tc rate {s:?}")) * mult).round() as u64
}

/// An HTB class as `tc -s -d class show` prints it (iproute2 6.1 prints HTB classes as text even
/// with -j).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcClass {
    pub classid: String,
    pub rate_bit: u64,
    pub ceil_bit: u64,
    pub linklayer: Option<String>,
    pub sent_bytes: u64,
    pub sent_packets: u64,
}

pub fn tc_classes(dev: &str) -> Vec<TcClass> {
    let text = run(&["tc", "-s", "-d", "class", "show", "dev", dev]);
    let mut out: Vec<TcClass> = Vec::new();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let after = |k: &str| toks.iter().position(|t| *t == k).and_then(|i| toks.get(i + 1)).copied();
        if toks.first() == Some(&"class") {
            out.push(TcClass {
                classid: toks[2].to_string(),
                rate_bit: after("rate").map(parse_tc_rate).unwrap_or(0),
                ceil_bit: after("ceil").map(parse_tc_rate).unwrap_or(0),
                linklayer: after("linklayer").map(str::to_string),
                sent_bytes: 0,
                sent_packets: 0,
            });
        } else if toks.first() == Some(&"Sent") {
            if let Some(c) = out.last_mut() {
                c.sent_bytes = toks[1].parse().unwrap();
                c.sent_packets = toks[3].parse().unwrap();
            }
        }
    }
    out
}

/// `tc -s -j qdisc show dev <dev>`.
pub fn tc_qdiscs(dev: &str) -> Vec<Value> {
    json(&["tc", "-s", "-j", "qdisc", "show", "dev", dev]).as_array().cloned().unwrap_or_default()
}

pub fn root_qdisc(dev: &str) -> Option<Value> {
    tc_qdiscs(dev).into_iter().find(|q| q["root"] == true)
}

pub fn has_ingress(dev: &str) -> bool {
    tc_qdiscs(dev).iter().any(|q| q["kind"] == "ingress")
}

/// Where the ingress filter on `dev` redirects to (mirred egress redirect), if anywhere.
pub fn redirect_target(dev: &str) -> Option<String> {
    let filters = json(&["tc", "-j", "filter", "show", "dev", dev, "ingress"]);
    filters.as_array()?.iter().find_map(|f| {
        f["options"]["actions"].as_array()?.iter().find_map(|a| {
            (a["kind"] == "mirred" && a["mirred_action"] == "redirect" && a["direction"] == "egress")
                .then(|| a["to_dev"].as_str().unwrap().to_string())
        })
    })
}

/// The rate (bit/s) of pppgate's root TBF `2:` on `dev`.
pub fn tbf_rate(dev: &str) -> Option<u64> {
    let root = root_qdisc(dev)?;
    if root["kind"] != "tbf" || root["handle"] != "2:" {
        return None;
    }
    // `tc -j` prints TBF's rate in bytes/s.
    root["options"]["rate"].as_u64().map(|b| b * 8)
}

/// The rate (bit/s) of class 1:10 under a root HTB 1: on `dev` (pppgate's layout before TBF, or
/// a foreign one).
pub fn htb_rate(dev: &str) -> Option<u64> {
    let root = root_qdisc(dev)?;
    if root["kind"] != "htb" || root["handle"] != "1:" {
        return None;
    }
    tc_classes(dev).into_iter().find(|c| c.classid == "1:10").map(|c| {
        assert_eq!(c.rate_bit, c.ceil_bit, "rate = ceil");
        assert_eq!(c.linklayer.as_deref(), Some("ethernet"));
        c.rate_bit
    })
}

pub fn ifb_up(name: &str) -> bool {
    let out = output(&["ip", "-j", "-d", "link", "show", name]);
    if !out.status.success() {
        return false;
    }
    let l: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let l = &l[0];
    l["linkinfo"]["info_kind"] == "ifb" && l["flags"].as_array().is_some_and(|f| f.iter().any(|f| f == "UP"))
}

/// What the tools say is installed on `dev`, as a Shaping (upload counts only when the ingress
/// redirect points at `pgi-<dev>`, which is up and carries the TBF).
pub fn tool_shaping(dev: &str) -> Shaping {
    let down_kbit = tbf_rate(dev).map(|b| (b / 1000) as u32);
    let ifb = format!("pgi-{dev}");
    let up_kbit = if has_ingress(dev) && redirect_target(dev).as_deref() == Some(ifb.as_str()) && ifb_up(&ifb) {
        tbf_rate(&ifb).map(|b| (b / 1000) as u32)
    } else {
        None
    };
    Shaping { down_kbit, up_kbit }
}

fn table_id(v: &Value) -> u32 {
    match v.get("table").and_then(Value::as_str) {
        None | Some("main") => 254,
        Some("local") => 255,
        Some("default") => 253,
        Some(n) => n.parse().unwrap_or_else(|_| panic!("routing table {n:?} has a name; tests use numbers")),
    }
}

/// `ip -j route show proto 77 table all`, as OwnedRoutes.
pub fn tool_routes() -> BTreeSet<OwnedRoute> {
    json(&["ip", "-j", "route", "show", "proto", "77", "table", "all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let dst = match r["dst"].as_str().unwrap() {
                "default" => "0.0.0.0/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d => format!("{d}/32"),
            };
            OwnedRoute {
                dst: dst.parse().unwrap(),
                gateway: r.get("gateway").map(|g| g.as_str().unwrap().parse().unwrap()),
                dev: r["dev"].as_str().unwrap().to_string(),
                table: table_id(r),
                metric: r.get("metric").map(|m| m.as_u64().unwrap() as u32),
            }
        })
        .collect()
}

/// `ip -j rule show` entries with protocol 77, as OwnedRules.
pub fn tool_rules() -> BTreeSet<OwnedRule> {
    json(&["ip", "-j", "-d", "rule", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == "77")
        .map(|r| {
            let src = r["src"].as_str().unwrap();
            let len = r.get("srclen").map(|l| l.as_u64().unwrap()).unwrap_or(if src == "all" { 0 } else { 32 });
            let src = if src == "all" { "0.0.0.0" } else { src };
            OwnedRule {
                from: format!("{src}/{len}").parse().unwrap(),
                table: table_id(r),
                priority: r["priority"].as_u64().unwrap() as u32,
            }
        })
        .collect()
}

/// Interface names present (`ip -j link show`).
pub fn link_names() -> Vec<String> {
    json(&["ip", "-j", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// Everything pppgate could own in the current namespace, as the tools print it: the nft table
/// (with handles, so a rebuild shows), every qdisc, the HTB classes and ingress filters of
/// `ppp*`/`pgi-*` devices, routes and rules of protocol 77, the link list and the forwarding
/// sysctls. Two equal dumps mean nothing pppgate owns changed.
pub fn kernel_dump() -> String {
    let mut s = String::new();
    let nft = output(&["nft", "-a", "list", "table", "inet", "pppgate"]);
    s.push_str("## nft\n");
    if nft.status.success() {
        // Counters move with traffic the test does not control (none here, but be exact only
        // about what pppgate writes).
        for line in String::from_utf8_lossy(&nft.stdout).lines() {
            s.push_str(&strip_counters(line));
            s.push('\n');
        }
    } else {
        s.push_str("(no table inet pppgate)\n");
    }
    s.push_str("## qdiscs\n");
    s.push_str(&run(&["tc", "qdisc", "show"]));
    let names = link_names();
    for dev in names.iter().filter(|n| n.starts_with("ppp") || n.starts_with("pgi-")) {
        s.push_str(&format!("## classes {dev}\n"));
        s.push_str(&run(&["tc", "-d", "class", "show", "dev", dev]));
        s.push_str(&format!("## ingress filters {dev}\n"));
        s.push_str(&run(&["tc", "filter", "show", "dev", dev, "ingress"]));
    }
    s.push_str("## routes proto 77\n");
    s.push_str(&run(&["ip", "route", "show", "proto", "77", "table", "all"]));
    s.push_str("## rules\n");
    s.push_str(&run(&["ip", "rule", "show"]));
    s.push_str("## links\n");
    s.push_str(&names.join(" "));
    s.push('\n');
    s.push_str("## sysctl\n");
    s.push_str(&run(&[
        "sysctl",
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ]));
    s
}

fn strip_counters(line: &str) -> String {
    match line.find("counter packets") {
        Some(i) => {
            let rest = &line[i..];
            // "counter packets N bytes M" → "counter"
            let toks: Vec<&str> = rest.split_whitespace().collect();
            let tail = toks.get(5..).map(|t| t.join(" ")).unwrap_or_default();
            format!("{}counter {}", &line[..i], tail)
        }
        None => line.to_string(),
    }
}

/// True when the namespace holds nothing of pppgate's for `ifname`/`ip`: no set membership, no
/// qdisc of ours, no IFB, no route on the interface and no rule from the address. Returns what
/// was found otherwise.
pub fn leftovers(ifname: &str, ip: &str) -> Vec<String> {
    let mut found = Vec::new();
    for set in nft_sets_of(ip) {
        found.push(format!("{ip} in {set}"));
    }
    if link_names().iter().any(|n| n == ifname) {
        if let Some(q) = root_qdisc(ifname) {
            if q["kind"] == "tbf" || q["kind"] == "htb" {
                found.push(format!("root {} on {ifname}", q["kind"].as_str().unwrap_or("")));
            }
        }
        if has_ingress(ifname) {
            found.push(format!("ingress qdisc on {ifname}"));
        }
    }
    let ifb = format!("pgi-{ifname}");
    if link_names().contains(&ifb) {
        found.push(format!("{ifb} exists"));
    }
    for r in tool_routes() {
        if r.dev == ifname {
            found.push(format!("route {} dev {} table {}", r.dst, r.dev, r.table));
        }
    }
    for r in tool_rules() {
        if r.from.to_string() == format!("{ip}/32") {
            found.push(format!("rule from {} lookup {}", r.from, r.table));
        }
    }
    found
}

/// `nft monitor` running in the calling thread's network namespace: every change event of every
/// table as nft(8) prints it, grouped into the transactions the kernel committed (each ends with
/// nft's `# new generation N by process P (name)` line). Reads the kernel's own account of what
/// was atomic, independently of the code under test. Killed on drop.
pub struct NftMonitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NftMonitor {
    /// Starts the monitor and returns once it is subscribed (a probe table it adds and deletes
    /// has been seen).
    pub fn start() -> NftMonitor {
        use std::io::BufRead;
        // Line-buffered: nft prints events with stdio, which a pipe would buffer by 4 KiB.
        let mut child = std::process::Command::new("stdbuf")
            .args(["-oL", "nft", "monitor"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nft monitor (coreutils stdbuf, nftables)");
        let stdout = child.stdout.take().expect("piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mon = NftMonitor { child, lines };
        let probe = format!("pgt_monitor_{}", std::process::id());
        let ready = crate::netns::wait_until(std::time::Duration::from_secs(10), || {
            run(&["nft", "add", "table", "inet", &probe]);
            run(&["nft", "delete", "table", "inet", &probe]);
            // Seen whole: the probe's deletion and the end of its transaction.
            crate::netns::wait_until(std::time::Duration::from_millis(200), || {
                let lines = mon.lines();
                let del = lines.iter().rposition(|l| l == &format!("delete table inet {probe}"));
                del.is_some_and(|i| lines[i..].iter().any(|l| l.starts_with("# new generation")))
            })
        });
        assert!(ready, "nft monitor printed nothing for a table added and deleted");
        mon
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The committed transactions so far: the event lines of each, then its generation line.
    pub fn transactions(&self) -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for l in self.lines() {
            if l.starts_with("# new generation") {
                out.push((std::mem::take(&mut cur), l));
            } else {
                cur.push(l);
            }
        }
        out
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_stripped() {
        assert_eq!(
            strip_counters(
                "\t\tip saddr @blocked_v4 counter packets 12 bytes 3456 drop comment \"blocked_from\" # handle 7"
            ),
            "\t\tip saddr @blocked_v4 counter drop comment \"blocked_from\" # handle 7"
        );
        assert_eq!(strip_counters("no counter here"), "no counter here");
    }

    #[test]
    fn tc_rates_parse() {
        assert_eq!(parse_tc_rate("10Mbit"), 10_000_000);
        assert_eq!(parse_tc_rate("512Kbit"), 512_000);
        assert_eq!(parse_tc_rate("800bit"), 800);
    }
}

//! Reading what `tests/lab/guest/connect.sh` leaves next to lib.sh's snapshots, for
//! tests/lab_connect.rs and benches/lab_connect_path.rs: srv's kernel state
//! (`snap/<name>/kernel/`: `nft -j` ruleset with sets and counters, `ip -j` links, routes, rules,
//! `tc -j` qdiscs and filters, tc classes as text, forwarding sysctls, the sessions directory's
//! names, the case's LNS pppd log), the UDP probe's logs (`traffic/`), and the plugin's
//! `key=value` log lines. Everything here reads raw
//! kernel output; nothing asks pppgate.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read lab output {}: {e}", p.display()))
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&read(p)).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

fn arr(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// srv's kernel state as `ksnap` (connect.sh) and `snap` (lib.sh) recorded it.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub links: Vec<Value>,
    pub qdiscs: Vec<Value>,
    pub routes: Vec<Value>,
    pub rules: Vec<Value>,
    /// `tc -s class show dev X` text by device.
    pub classes: BTreeMap<String, String>,
    /// `tc -j filter show dev X ingress` by device.
    pub filters: BTreeMap<String, Value>,
    /// `rp_filter <dev>` and `ip_forward` values.
    pub sysctl: BTreeMap<String, String>,
    /// `nft -j list ruleset` of srv.
    pub nft: Value,
    /// File names in /run/vpn-sessions.
    pub sessions: Vec<String>,
    /// The LNS pppd log of the case so far.
    pub lns_log: String,
}

impl Kernel {
    /// `snap_dir` is `<run>/snap/<name>` (ksnap's files are in its `kernel/`).
    #[track_caller]
    pub fn load(snap_dir: &Path) -> Kernel {
        let k = snap_dir.join("kernel");
        assert!(k.is_dir(), "{}: no kernel snapshot (ksnap was not run)", snap_dir.display());
        let mut classes = BTreeMap::new();
        let mut filters = BTreeMap::new();
        for e in fs::read_dir(&k).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(dev) = name.strip_prefix("class-").and_then(|n| n.strip_suffix(".txt")) {
                classes.insert(dev.to_string(), read(&e.path()));
            } else if let Some(dev) = name.strip_prefix("filter-").and_then(|n| n.strip_suffix(".json")) {
                filters.insert(dev.to_string(), json(&e.path()));
            }
        }
        let mut sysctl = BTreeMap::new();
        for line in read(&k.join("sysctl.txt")).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["ip_forward", v] => {
                    sysctl.insert("ip_forward".to_string(), v.to_string());
                }
                ["rp_filter", dev, v] => {
                    sysctl.insert(format!("rp_filter.{dev}"), v.to_string());
                }
                _ => {}
            }
        }
        let nft = json(&k.join("nft.json"));
        let sessions = read(&k.join("sessions.txt")).lines().map(String::from).collect();
        let lns_log = read(&k.join("pppd-lns.log"));
        Kernel {
            dir: snap_dir.to_path_buf(),
            links: arr(&json(&k.join("links.json"))),
            qdiscs: arr(&json(&k.join("qdisc.json"))),
            routes: arr(&json(&k.join("routes.json"))),
            rules: arr(&json(&k.join("rules.json"))),
            classes,
            filters,
            sysctl,
            nft,
            sessions,
            lns_log,
        }
    }

    pub fn link_names(&self) -> Vec<String> {
        self.links.iter().filter_map(|l| l["ifname"].as_str().map(String::from)).collect()
    }

    pub fn link(&self, name: &str) -> Option<&Value> {
        self.links.iter().find(|l| l["ifname"] == name)
    }

    pub fn link_kind(&self, name: &str) -> Option<String> {
        self.link(name)?["linkinfo"]["info_kind"].as_str().map(String::from)
    }

    pub fn link_up(&self, name: &str) -> bool {
        self.link(name).is_some_and(|l| arr(&l["flags"]).iter().any(|f| f == "UP"))
    }

    /// Devices named `pgi-*` (pppgate's upload IFBs, or whatever took such a name).
    pub fn pgi_devices(&self) -> Vec<String> {
        self.link_names().into_iter().filter(|n| n.starts_with("pgi-")).collect()
    }

    pub fn ppp_links(&self) -> Vec<String> {
        self.link_names().into_iter().filter(|n| n.starts_with("ppp")).collect()
    }

    pub fn qdiscs_of(&self, dev: &str) -> Vec<&Value> {
        self.qdiscs.iter().filter(|q| q["dev"] == dev).collect()
    }

    /// The root qdisc's (kind, handle) of `dev`.
    pub fn root_qdisc(&self, dev: &str) -> Option<(String, String)> {
        self.qdiscs_of(dev)
            .into_iter()
            .find(|q| q["root"] == true)
            .map(|q| (q["kind"].as_str().unwrap_or("").to_string(), q["handle"].as_str().unwrap_or("").to_string()))
    }

    /// pppgate's root TBF `2:` on `dev`.
    fn root_tbf(&self, dev: &str) -> Option<&Value> {
        self.qdiscs_of(dev).into_iter().find(|q| q["root"] == true && q["kind"] == "tbf" && q["handle"] == "2:")
    }

    pub fn has_root_tbf(&self, dev: &str) -> bool {
        self.root_tbf(dev).is_some()
    }

    /// Whether `dev`'s root qdisc is pppgate's TBF or the HTB `1:` of earlier versions.
    pub fn has_root_shaper(&self, dev: &str) -> bool {
        self.has_root_tbf(dev) || self.root_qdisc(dev) == Some(("htb".into(), "1:".into()))
    }

    pub fn has_ingress(&self, dev: &str) -> bool {
        self.qdiscs_of(dev).iter().any(|q| q["kind"] == "ingress")
    }

    /// Where `dev`'s ingress u32 filter redirects to (mirred egress redirect).
    pub fn redirect_target(&self, dev: &str) -> Option<String> {
        arr(self.filters.get(dev)?).iter().find_map(|f| {
            arr(&f["options"]["actions"]).iter().find_map(|a| {
                (a["kind"] == "mirred" && a["mirred_action"] == "redirect" && a["direction"] == "egress")
                    .then(|| a["to_dev"].as_str().unwrap_or("").to_string())
            })
        })
    }

    /// The rate of pppgate's root TBF on `dev`, in kbit/s (`tc -j` prints TBF's rate in bytes/s).
    pub fn tbf_rate_kbit(&self, dev: &str) -> Option<u64> {
        self.root_tbf(dev)?["options"]["rate"].as_u64().map(|b| b * 8 / 1000)
    }

    /// Packets pppgate's root TBF on `dev` sent (`tc -s`).
    pub fn tbf_sent_pkts(&self, dev: &str) -> Option<u64> {
        self.root_tbf(dev)?["packets"].as_u64()
    }

    /// Routes with protocol 77 (pppgate's).
    pub fn pppgate_routes(&self) -> Vec<&Value> {
        self.routes.iter().filter(|r| r["protocol"] == "77").collect()
    }

    pub fn pppgate_rules(&self) -> Vec<&Value> {
        self.rules.iter().filter(|r| r["protocol"] == "77").collect()
    }

    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctl.get(key).map(String::as_str)
    }

    /// The elements of set `name` in `inet pppgate`; `None` when the set does not exist.
    pub fn set_members(&self, name: &str) -> Option<Vec<String>> {
        let set = arr(&self.nft["nftables"]).into_iter().find_map(|o| {
            let s = &o["set"];
            (s["table"] == "pppgate" && s["family"] == "inet" && s["name"] == name).then(|| s.clone())
        })?;
        Some(arr(&set["elem"]).iter().map(crate::kernel::render_elem).collect())
    }

    /// The state sets holding `ip` (bound to whichever interface: members are `iface . address`).
    pub fn sets_of(&self, ip: Ipv4Addr) -> Vec<String> {
        let ip = ip.to_string();
        ["connect_pending_v4", "full_v4", "restricted_v4", "blocked_v4"]
            .iter()
            .filter(|s| self.set_members(s).unwrap_or_default().iter().any(|e| crate::kernel::member_is(e, &ip)))
            .map(|s| s.to_string())
            .collect()
    }

    /// The interfaces `ip` is bound to in the state sets: (set, interface as nft lists it).
    pub fn bindings_of(&self, ip: Ipv4Addr) -> Vec<(String, String)> {
        let ip = ip.to_string();
        let mut out = Vec::new();
        for s in ["connect_pending_v4", "full_v4", "restricted_v4", "blocked_v4"] {
            for e in self.set_members(s).unwrap_or_default() {
                if crate::kernel::member_is(&e, &ip) {
                    let iface = e.rsplit_once(" . ").map(|(i, _)| i.to_string()).unwrap_or_default();
                    out.push((s.to_string(), iface));
                }
            }
        }
        out
    }

    /// Packets counted by the commented counter rule `comment` of `inet pppgate`.
    pub fn counter(&self, comment: &str) -> Option<u64> {
        arr(&self.nft["nftables"]).iter().find_map(|o| {
            let r = &o["rule"];
            (r["table"] == "pppgate" && r["comment"] == comment)
                .then(|| arr(&r["expr"]).iter().find_map(|e| e["counter"]["packets"].as_u64()))
                .flatten()
        })
    }
}

/// `2Mbit`, `500Kbit`, `1500bit` → kbit/s.
pub fn parse_tc_rate_kbit(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let v: f64 = digits.parse().ok()?;
    let unit = &s[digits.len()..];
    let kbit = match unit {
        "bit" => v / 1000.0,
        "Kbit" => v,
        "Mbit" => v * 1000.0,
        "Gbit" => v * 1_000_000.0,
        _ => return None,
    };
    Some(kbit.round() as u64)
}

/// One datagram the far side received: `seq sent_us recv_us source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub seq: u64,
    pub sent_us: u64,
    pub recv_us: u64,
    pub src: String,
}

pub fn received(run_dir: &Path, tag: &str) -> Vec<Received> {
    let p = run_dir.join(format!("traffic/{tag}-recv.log"));
    read(&p)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| {
                f.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{}: bad line {l:?}", p.display()))
            };
            Received { seq: n(0), sent_us: n(1), recv_us: n(2), src: f.get(3).unwrap_or(&"").to_string() }
        })
        .collect()
}

/// `nft monitor` lines with their stamps (µs, CLOCK_MONOTONIC, read at or after the change).
pub fn monitor(run_dir: &Path, tag: &str) -> Vec<(u64, String)> {
    let p = run_dir.join(format!("traffic/{tag}-nft-monitor.log"));
    read(&p)
        .lines()
        .filter_map(|l| {
            let (t, rest) = l.split_once(' ')?;
            Some((t.parse().ok()?, rest.to_string()))
        })
        .collect()
}

/// One line pppd sent to syslog, as `syslog_start` (connect.sh) received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogLine {
    /// When the reader got it (µs, CLOCK_MONOTONIC: at or after pppd logged it).
    pub us: u64,
    pub pid: u32,
    /// The text after `pppd[pid]: `.
    pub text: String,
}

/// Every pppd line of `logs/pppd-syslog.log` (other programs' lines are left out).
pub fn pppd_syslog(run_dir: &Path) -> Vec<SyslogLine> {
    read(&run_dir.join("logs/pppd-syslog.log")).lines().filter_map(parse_syslog_line).collect()
}

/// `<us> <pri>date pppd[pid]: text`, the reader's stamp and the message as glibc sends it.
fn parse_syslog_line(l: &str) -> Option<SyslogLine> {
    let (us, msg) = l.split_once(' ')?;
    let at = msg.find(" pppd[")? + " pppd[".len();
    let (pid, text) = msg[at..].split_once("]: ")?;
    Some(SyslogLine { us: us.parse().ok()?, pid: pid.parse().ok()?, text: text.to_string() })
}

/// How a session the plugin ended came to its end, from the LNS pppd's own log lines as they
/// reached syslog (µs, the reader's clock):
/// * `ipcp_up`: pppd's `remote IP address` line. ipcp_up logs it just before it runs the ip-up
///   notifiers, where the plugin starts its window (R110).
/// * `ended`: the plugin's `ending session … (fail closed)` line, logged through pppd when it
///   asks pppd to end the link (R113). pppd closes LCP on its next loop iteration.
/// * `ip_down_done`: pppd's `Sent N bytes, received M bytes.` ipcp_down logs it after the ip-down
///   notifiers, that is after the plugin's final accounting and teardown (R201). Then pppd takes
///   the interface down, runs ip-down and sends LCP Terminate-Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnd {
    pub ipcp_up: u64,
    pub ended: u64,
    pub ip_down_done: u64,
}

impl SessionEnd {
    /// From the IPCP-up line to the plugin's decision (ms): its window as pppd saw it.
    pub fn window_ms(&self) -> i64 {
        (self.ended as i64 - self.ipcp_up as i64) / 1000
    }

    /// From the decision to the end of the ip-down notifiers (ms).
    pub fn ending_ms(&self) -> i64 {
        (self.ip_down_done as i64 - self.ended as i64) / 1000
    }
}

/// The [`SessionEnd`] of LNS pppd `pid`; panics naming what is missing.
pub fn session_end(lines: &[SyslogLine], pid: u32) -> SessionEnd {
    let first = |what: &str, f: &dyn Fn(&str) -> bool| {
        lines.iter().find(|l| l.pid == pid && f(&l.text)).map(|l| l.us).unwrap_or_else(|| {
            let own: Vec<&str> = lines.iter().filter(|l| l.pid == pid).map(|l| l.text.as_str()).collect();
            panic!("pppd {pid} sent no {what} line to syslog; its lines: {own:#?}")
        })
    };
    SessionEnd {
        ipcp_up: first("`remote IP address`", &|t| t.starts_with("remote IP address ")),
        ended: first("`pppgate: ending session`", &|t| t.contains("ending session") && t.contains("(fail closed)")),
        ip_down_done: first("`Sent N bytes, received M bytes.`", &|t| {
            t.starts_with("Sent ") && t.contains(" bytes, received ")
        }),
    }
}

/// The `key=value` fields of a plugin log line (values may be quoted).
pub fn fields(line: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for w in line.split_whitespace() {
        if let Some((k, v)) = w.split_once('=') {
            if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                m.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        }
    }
    m
}

/// The plugin's "policy applied, connect gate released" lines of a pppd log, as fields.
pub fn applied_lines(log: &str) -> Vec<BTreeMap<String, String>> {
    log.lines().filter(|l| l.starts_with("pppgate: policy applied, connect gate released")).map(fields).collect()
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_rates() {
        assert_eq!(parse_tc_rate_kbit("2Mbit"), Some(2000));
        assert_eq!(parse_tc_rate_kbit("500Kbit"), Some(500));
        assert_eq!(parse_tc_rate_kbit("1500bit"), Some(2));
        assert_eq!(parse_tc_rate_kbit("2.5Mbit"), Some(2500));
        assert_eq!(parse_tc_rate_kbit("fast"), None);
    }

    #[test]
    fn plugin_fields() {
        let f = fields(
            "pppgate: policy applied, connect gate released ifname=ppp0 conn_id=1 state=FULL sql_us=166190 x=\"a\"",
        );
        assert_eq!(f["ifname"], "ppp0");
        assert_eq!(f["sql_us"], "166190");
        assert_eq!(f["x"], "a");
    }

    #[test]
    fn syslog_lines_and_a_session_end() {
        let log = "\
1000000 <29>Dec  2 19:30:01 pppd[812]: remote IP address 100.64.0.2
1000500 <30>Dec  2 19:30:01 xl2tpd[77]: not pppd
1001000 <29>Dec  2 19:30:01 pppd[900]: remote IP address 100.64.0.3
4010000 <27>Dec  2 19:30:04 pppd[812]: pppgate: ending session on ppp0 (user \"alice\"): policy not applied (fail closed)
4600000 <30>Dec  2 19:30:04 pppd[812]: Sent 0 bytes, received 312 bytes.
garbage";
        let lines: Vec<SyslogLine> = log.lines().filter_map(parse_syslog_line).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], SyslogLine { us: 1_000_000, pid: 812, text: "remote IP address 100.64.0.2".into() });
        let end = session_end(&lines, 812);
        assert_eq!(end, SessionEnd { ipcp_up: 1_000_000, ended: 4_010_000, ip_down_done: 4_600_000 });
        assert_eq!((end.window_ms(), end.ending_ms()), (3010, 590));
    }

    #[test]
    #[should_panic(expected = "pppd 900 sent no `pppgate: ending session` line")]
    fn a_session_end_without_the_plugins_line_is_refused() {
        let lines = [SyslogLine { us: 1, pid: 900, text: "remote IP address 100.64.0.3".into() }];
        session_end(&lines, 900);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=50).collect();
        assert_eq!(percentile(&v, 50.0), 25);
        assert_eq!(percentile(&v, 99.0), 50);
        assert_eq!(percentile(&[7], 99.0), 7);
    }
}

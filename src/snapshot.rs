//! Snapshots the guest library's `snap NAME` takes into `/out/snap/NAME/`, read back in Rust so
//! the tests assert on raw kernel and /proc facts rather than on what pppgate says about itself:
//!
//! | file | source |
//! |---|---|
//! | `srv-addr.json`, `cli-addr.json`, `inet-addr.json` | `ip -n <ns> -j addr show` |
//! | `srv-nft.json` | `nft -j list ruleset` in srv (the LNS, where pppd and so the plugin run) |
//! | `netns/<ns>` | `readlink /proc/self/ns/net` inside the namespace |
//! | `procs/<pid>/{stat,cmdline,netns}` | raw copies of `/proc/<pid>/stat`, `cmdline`, `ns/net` link, for every pppd and xl2tpd |
//! | `sessions/<file>` | copies of `/run/vpn-sessions/*` (plus `sessions/.listed` so an empty dir is visible) |
//! | `db/vpn_connections.json` or `db/error` | `json_agg` of vpn_connections(id, subaccount_login, status) |
//! | `uptime_ms`, `btime`, `clk_tck` | the guest's uptime (ms), boot time (Unix s) and USER_HZ |
//! | `lns-events.log`, `lac-events.log` | the pppd witness lines so far (see [`Event`]) |
//! | `pppd-lns.log` | the LNS pppd log since the current case started (the whole log outside cases) |

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{LabError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifname: String,
    /// Our side's address.
    pub local: Option<Ipv4Addr>,
    /// The point-to-point peer's address (`peer` in `ip addr`), if any.
    pub peer: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Start time in clock ticks since boot (field 22 of /proc/<pid>/stat).
    pub start_ticks: u64,
    pub cmdline: Vec<String>,
    /// `net:[inode]`
    pub netns: String,
}

/// One line of a pppd witness script (the lab's ip-up/ip-down scripts), written by pppd's
/// script machinery, not by pppgate: `up|down ms=.. if=.. local=.. remote=.. peer=.. link=.. pid=..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub up: bool,
    pub ms: u64,
    pub ifname: String,
    pub local: Option<Ipv4Addr>,
    pub remote: Option<Ipv4Addr>,
    /// PEERNAME: the name the peer authenticated as (LNS side).
    pub peer: String,
    /// LINKNAME (the LAC side's client name).
    pub link: String,
    pub pid: u32,
}

pub fn parse_events(path: &Path, text: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| LabError::Malformed { path: path.to_path_buf(), line: i + 1, reason: why.to_string() };
        let mut words = line.split(' ');
        let up = match words.next() {
            Some("up") => true,
            Some("down") => false,
            _ => return Err(bad("neither up nor down")),
        };
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| bad("field is not key=value"))?;
            f.insert(k, v);
        }
        let get = |k: &str| f.get(k).copied().unwrap_or("");
        out.push(Event {
            up,
            ms: get("ms").parse().map_err(|_| bad("bad ms"))?,
            ifname: get("if").to_string(),
            local: get("local").parse().ok(),
            remote: get("remote").parse().ok(),
            peer: get("peer").to_string(),
            link: get("link").to_string(),
            pid: get("pid").parse().map_err(|_| bad("bad pid"))?,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DbConnection {
    pub id: i64,
    pub subaccount_login: String,
    pub status: String,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub links: BTreeMap<String, Vec<Link>>,
    pub netns: BTreeMap<String, String>,
    pub procs: Vec<Proc>,
    /// Mapping files by file name (`ppp0.env`), as raw KEY=VALUE maps.
    pub sessions: BTreeMap<String, BTreeMap<String, String>>,
    pub db_connections: std::result::Result<Vec<DbConnection>, String>,
    pub uptime_ms: u64,
    /// Boot time of the guest (Unix seconds) and clock ticks per second, to turn a process's
    /// start ticks into the Unix time a mapping's START_TS must carry.
    pub btime: u64,
    pub clk_tck: u64,
    pub lns_events: Vec<Event>,
    pub lac_events: Vec<Event>,
    pub lns_log: String,
    /// `nft -j list ruleset` of srv, if nft answered.
    pub srv_nft: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct IpAddrJson {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfoJson>,
}

#[derive(Deserialize)]
struct AddrInfoJson {
    family: String,
    local: Option<String>,
    address: Option<String>,
}

fn malformed(path: &Path, reason: impl Into<String>) -> LabError {
    LabError::Malformed { path: path.to_path_buf(), line: 0, reason: reason.into() }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(LabError::io("cannot read a lab snapshot file", path))
}

/// Parses `ip -j addr show` output into links with their first IPv4 local/peer addresses.
pub fn parse_links(path: &Path, json: &str) -> Result<Vec<Link>> {
    let raw: Vec<IpAddrJson> =
        serde_json::from_str(json).map_err(|e| malformed(path, format!("not ip -j addr output: {e}")))?;
    let mut links = Vec::new();
    for l in raw {
        let v4 = l.addr_info.iter().find(|a| a.family == "inet");
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Ipv4Addr>().ok());
        let (local, peer) = match v4 {
            Some(a) => (parse(&a.local), parse(&a.address)),
            None => (None, None),
        };
        links.push(Link { ifname: l.ifname, local, peer });
    }
    Ok(links)
}

/// Parses `/proc/<pid>/stat`: the comm field is parenthesised and may contain spaces.
pub fn parse_stat(path: &Path, stat: &str) -> Result<(u32, String, u32, u64)> {
    let open = stat.find('(').ok_or_else(|| malformed(path, "no '(' in stat"))?;
    let close = stat.rfind(')').ok_or_else(|| malformed(path, "no ')' in stat"))?;
    let pid = stat[..open].trim().parse().map_err(|_| malformed(path, "bad pid in stat"))?;
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    let ppid = rest.get(1).and_then(|s| s.parse().ok()).ok_or_else(|| malformed(path, "bad ppid in stat"))?;
    let start = rest.get(19).and_then(|s| s.parse().ok()).ok_or_else(|| malformed(path, "bad starttime in stat"))?;
    Ok((pid, comm, ppid, start))
}

/// Parses a mapping file as plain KEY=VALUE lines (deliberately not with pppgate's own parser).
pub fn parse_env(path: &Path, text: &str) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| LabError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
            reason: "not KEY=VALUE".into(),
        })?;
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(LabError::Malformed { path: path.to_path_buf(), line: i + 1, reason: format!("{k} twice") });
        }
    }
    Ok(m)
}

impl Snapshot {
    pub fn load(dir: &Path) -> Result<Snapshot> {
        if !dir.is_dir() {
            return Err(malformed(dir, "snapshot directory missing (the scenario did not take it)"));
        }
        let mut links = BTreeMap::new();
        for ns in ["srv", "cli", "inet"] {
            let p = dir.join(format!("{ns}-addr.json"));
            if p.is_file() {
                links.insert(ns.to_string(), parse_links(&p, &read(&p)?)?);
            }
        }
        let mut netns = BTreeMap::new();
        if let Ok(rd) = fs::read_dir(dir.join("netns")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                netns.insert(name, read(&e.path())?.trim().to_string());
            }
        }
        let mut procs = Vec::new();
        if let Ok(rd) = fs::read_dir(dir.join("procs")) {
            for e in rd.flatten() {
                let p = e.path();
                let stat_path = p.join("stat");
                let Ok(stat) = fs::read_to_string(&stat_path) else { continue };
                if stat.trim().is_empty() {
                    continue; // exited while the snapshot was taken
                }
                let (pid, comm, ppid, start_ticks) = parse_stat(&stat_path, &stat)?;
                let cmdline = fs::read(p.join("cmdline")).unwrap_or_default();
                let cmdline = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).to_string())
                    .collect();
                let netns = fs::read_to_string(p.join("netns")).unwrap_or_default().trim().to_string();
                procs.push(Proc { pid, ppid, comm, start_ticks, cmdline, netns });
            }
        }
        procs.sort_by_key(|p| p.pid);
        let sdir = dir.join("sessions");
        if !sdir.join(".listed").is_file() {
            return Err(malformed(&sdir, "the sessions directory was not listed"));
        }
        let mut sessions = BTreeMap::new();
        for e in fs::read_dir(&sdir).map_err(LabError::io("cannot list the snapshot's sessions", &sdir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            sessions.insert(name, parse_env(&p, &read(&p)?)?);
        }
        let db_connections = if dir.join("db/vpn_connections.json").is_file() {
            let p = dir.join("db/vpn_connections.json");
            let text = read(&p)?;
            Ok(serde_json::from_str(text.trim())
                .map_err(|e| malformed(&p, format!("not a JSON array of rows: {e}")))?)
        } else {
            Err(fs::read_to_string(dir.join("db/error")).unwrap_or_else(|_| "no database dump in the snapshot".into()))
        };
        let num = |name: &str| -> Result<u64> {
            let p = dir.join(name);
            read(&p)?.trim().parse().map_err(|_| malformed(&p, "not a number"))
        };
        let events = |name: &str| -> Result<Vec<Event>> {
            let p = dir.join(name);
            parse_events(&p, &read(&p)?)
        };
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            links,
            netns,
            procs,
            sessions,
            db_connections,
            uptime_ms: num("uptime_ms")?,
            btime: num("btime")?,
            clk_tck: num("clk_tck")?,
            lns_events: events("lns-events.log")?,
            lac_events: events("lac-events.log")?,
            lns_log: read(&dir.join("pppd-lns.log"))?,
            srv_nft: fs::read_to_string(dir.join("srv-nft.json")).ok().and_then(|t| serde_json::from_str(&t).ok()),
        })
    }

    /// A link in namespace `ns` by name.
    pub fn link(&self, ns: &str, ifname: &str) -> Option<&Link> {
        self.links.get(ns)?.iter().find(|l| l.ifname == ifname)
    }

    /// The `pppN` links of namespace `ns`.
    pub fn ppp_links(&self, ns: &str) -> Vec<&Link> {
        self.links.get(ns).map(|v| v.iter().filter(|l| l.ifname.starts_with("ppp")).collect()).unwrap_or_default()
    }

    /// Processes named `comm` that run in namespace `ns`.
    pub fn procs_in(&self, ns: &str, comm: &str) -> Vec<&Proc> {
        let Some(id) = self.netns.get(ns) else { return Vec::new() };
        self.procs.iter().filter(|p| p.comm == comm && &p.netns == id).collect()
    }

    /// The LNS-side pppd serving the client at `peer`: a pppd in `srv` whose parent is the LNS
    /// xl2tpd and whose command line carries xl2tpd's `local:remote` address pair ending in `peer`.
    pub fn lns_pppd_for_peer(&self, peer: Ipv4Addr) -> Vec<&Proc> {
        let lns: Vec<u32> = self.procs_in("srv", "xl2tpd").iter().map(|p| p.pid).collect();
        let suffix = format!(":{peer}");
        self.procs_in("srv", "pppd")
            .into_iter()
            .filter(|p| lns.contains(&p.ppid))
            .filter(|p| p.cmdline.iter().any(|a| a.ends_with(&suffix) && a.len() > suffix.len()))
            .collect()
    }

    /// The Unix time a process started (what a mapping's START_TS must say for its pppd).
    pub fn start_epoch(&self, p: &Proc) -> u64 {
        self.btime + p.start_ticks / self.clk_tck.max(1)
    }

    /// The newest LNS witness event of the user `peer`.
    pub fn last_lns_event(&self, peer: &str) -> Option<&Event> {
        self.lns_events.iter().rev().find(|e| e.peer == peer)
    }

    /// Lines of the LNS pppd log that pppgate wrote (`pppgate: ...`).
    pub fn plugin_log_lines(&self) -> Vec<&str> {
        self.lns_log.lines().filter(|l| l.starts_with("pppgate:")).collect()
    }

    /// The mapping file `/run/vpn-sessions/<ifname>.env`, if present.
    pub fn mapping(&self, ifname: &str) -> Option<&BTreeMap<String, String>> {
        self.sessions.get(&format!("{ifname}.env"))
    }

    /// The vpn_connections row of `login`; panics (for tests) if the dump is missing.
    #[track_caller]
    pub fn db_connection(&self, login: &str) -> Option<&DbConnection> {
        match &self.db_connections {
            Ok(rows) => rows.iter().find(|r| r.subaccount_login == login),
            Err(e) => panic!("snapshot {} has no database dump: {e}", self.dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json_with_peers() {
        let j = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":5,"ifname":"ppp0","addr_info":[{"family":"inet","local":"198.51.100.1","address":"198.51.100.10","prefixlen":32}]},
            {"ifindex":6,"ifname":"ppp1","addr_info":[]}]"#;
        let l = parse_links(Path::new("x"), j).unwrap();
        assert_eq!(l[0].peer, None);
        assert_eq!(l[1].peer, Some("198.51.100.10".parse().unwrap()));
        assert_eq!(l[1].local, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(l[2].local, None);
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let s = "123 (a) b (c)) S 45 123 123 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        let (pid, comm, ppid, start) = parse_stat(Path::new("x"), s).unwrap();
        assert_eq!((pid, comm.as_str(), ppid, start), (123, "a) b (c)", 45, 777));
    }

    #[test]
    fn parses_witness_events() {
        let t = "up ms=34560 if=ppp0 local=198.51.100.1 remote=198.51.100.10 peer=alice link= pid=282\n\
                 down ms=43970 if=ppp0 local= remote= peer= link=bob pid=7\n";
        let e = parse_events(Path::new("x"), t).unwrap();
        assert!(e[0].up && !e[1].up);
        assert_eq!((e[0].ms, e[0].pid, e[0].peer.as_str()), (34560, 282, "alice"));
        assert_eq!(e[0].remote, Some("198.51.100.10".parse().unwrap()));
        assert_eq!((e[1].remote, e[1].link.as_str()), (None, "bob"));
        assert!(parse_events(Path::new("x"), "sideways ms=1 pid=1\n").is_err());
    }

    #[test]
    fn env_parser_rejects_duplicates() {
        assert!(parse_env(Path::new("x"), "A=1\nA=2\n").is_err());
        assert_eq!(parse_env(Path::new("x"), "A=1\nB=x=y\n").unwrap()["B"], "x=y");
    }
}

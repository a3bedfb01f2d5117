//! Forwarding sysctls through /proc/sys/net/ipv4 (which shows the caller's network namespace).
//!
//! `ensure` turns forwarding on and relaxes strict reverse-path filtering (1) to loose (2) on
//! `all`, `default` and the given session interfaces: policy routing sends a session's traffic
//! out through other tables, which strict rp_filter would drop. It never makes a setting
//! stricter: 0 (off) and 2 (loose) stay as they are.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Sysctl, SysctlReport};
use crate::error::{Error, Result};

/// The real sysctl backend.
#[derive(Debug, Clone)]
pub struct SysctlProc {
    root: PathBuf,
}

const PROC_ROOT: &str = "/proc/sys/net/ipv4";

impl Default for SysctlProc {
    fn default() -> Self {
        SysctlProc { root: PROC_ROOT.into() }
    }
}

impl SysctlProc {
    pub fn new() -> SysctlProc {
        SysctlProc::default()
    }

    /// Reads a tree laid out like /proc/sys/net/ipv4 somewhere else (tests).
    pub fn with_root(root: impl Into<PathBuf>) -> SysctlProc {
        SysctlProc { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn rp_path(&self, scope: &str) -> PathBuf {
        self.path(&format!("conf/{scope}/rp_filter"))
    }
}

/// Reads an integer sysctl; `None` when the file does not exist (an interface that is gone).
fn read_int(path: &Path) -> Result<Option<u8>> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u8>().map(Some).map_err(|_| Error::Read {
            path: path.into(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a small integer"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read { path: path.into(), source }),
    }
}

fn write_int(path: &Path, v: u8) -> Result<()> {
    fs::write(path, format!("{v}\n")).map_err(|source| Error::Write { path: path.into(), source })
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= 15 && !name.contains('/') && name != "." && name != ".."
}

/// Above this many interfaces the per-interface values come from one RTM_GETNETCONF dump instead
/// of one /proc file each (10,000 files cost ~80 ms; the dump a few).
const NETCONF_FROM: usize = 32;

impl SysctlProc {
    /// The interfaces' own rp_filter values: from the kernel's netconf dump when this backend
    /// reads the real /proc and there are many, else (and for any name the dump cannot place)
    /// from their files. Interfaces that are gone are absent.
    fn rp_filters(&self, ifnames: &[String]) -> Result<BTreeMap<String, u8>> {
        let names: Vec<&String> = ifnames.iter().filter(|n| valid_ifname(n)).collect();
        let mut out = BTreeMap::new();
        let mut by_netlink: BTreeMap<String, u8> = BTreeMap::new();
        if names.len() >= NETCONF_FROM && self.root == Path::new(PROC_ROOT) {
            // Best effort: anything the dump does not answer is read from its file below.
            if let Ok(v) = netconf::rp_filters() {
                by_netlink = v;
            }
        }
        for name in names {
            let own = match by_netlink.get(name.as_str()) {
                Some(v) => Some(*v),
                None => read_int(&self.rp_path(name))?,
            };
            if let Some(own) = own {
                out.insert(name.clone(), own);
            }
        }
        Ok(out)
    }
}

impl Sysctl for SysctlProc {
    fn read(&mut self, ifnames: &[String]) -> Result<SysctlReport> {
        let fwd_path = self.path("ip_forward");
        let ip_forward = read_int(&fwd_path)?.ok_or_else(|| Error::Read {
            path: fwd_path.clone(),
            source: io::Error::new(io::ErrorKind::NotFound, "no ip_forward"),
        })? == 1;
        let rp_filter_all = read_int(&self.rp_path("all"))?.unwrap_or(0);
        let rp_filter_default = read_int(&self.rp_path("default"))?.unwrap_or(0);
        let mut report = SysctlReport { ip_forward, rp_filter_all, rp_filter_default, ..Default::default() };
        for (name, own) in self.rp_filters(ifnames)? {
            report.rp_filter.insert(name, own.max(rp_filter_all));
        }
        Ok(report)
    }

    fn ensure(&mut self, ifnames: &[String]) -> Result<()> {
        let fwd = self.path("ip_forward");
        if read_int(&fwd)? != Some(1) {
            write_int(&fwd, 1)?;
        }
        let mut strict: Vec<String> = Vec::new();
        for scope in ["all", "default"] {
            if read_int(&self.rp_path(scope))? == Some(1) {
                strict.push(scope.to_string());
            }
        }
        strict.extend(self.rp_filters(ifnames)?.into_iter().filter(|(_, v)| *v == 1).map(|(n, _)| n));
        for scope in strict {
            match write_int(&self.rp_path(&scope), 2) {
                // The interface went away between the read and the write.
                Err(Error::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn set_forwarding(&mut self, ifname: &str, on: bool) -> Result<()> {
        if !valid_ifname(ifname) || ifname == "all" || ifname == "default" {
            return Ok(());
        }
        let path = self.path(&format!("conf/{ifname}/forwarding"));
        let want = u8::from(on);
        match read_int(&path)? {
            None => Ok(()),
            Some(v) if v == want => Ok(()),
            Some(_) => match write_int(&path, want) {
                Err(Error::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        }
    }
}

/// rp_filter of every interface from one RTM_GETNETCONF dump (AF_INET), named through one
/// IPv4 address dump (session interfaces carry an address; others are not asked for).
mod netconf {
    use std::collections::BTreeMap;

    use crate::error::Result;
    use crate::kernel::links::LinkSnapshot;
    use crate::kernel::netlink::{self, attrs, Family, MsgBuilder, Socket, NLM_F_DUMP};

    const RTM_NEWNETCONF: u16 = 80;
    const RTM_GETNETCONF: u16 = 82;
    const NETCONFA_IFINDEX: u16 = 1;
    const NETCONFA_RP_FILTER: u16 = 3;

    pub(super) fn rp_filters() -> Result<BTreeMap<String, u8>> {
        let mut sock = Socket::open(Family::Route)?;
        sock.strict();
        let mut ncm = [0u8; 4];
        ncm[0] = libc::AF_INET as u8;
        let mut by_index: BTreeMap<i32, u8> = BTreeMap::new();
        for (ty, p) in sock.dump("dump netconf", MsgBuilder::new(RTM_GETNETCONF, NLM_F_DUMP).bytes(&ncm))? {
            if ty != RTM_NEWNETCONF || p.first() != Some(&(libc::AF_INET as u8)) {
                continue;
            }
            let (mut index, mut rp) = (None, None);
            for (t, d) in attrs(p.get(4..).unwrap_or(&[])) {
                match t {
                    NETCONFA_IFINDEX => index = netlink::attr_u32(d).map(|v| v as i32),
                    NETCONFA_RP_FILTER => rp = netlink::attr_u32(d),
                    _ => {}
                }
            }
            if let (Some(i), Some(v)) = (index, rp) {
                by_index.insert(i, v.min(u32::from(u8::MAX)) as u8);
            }
        }
        let names = LinkSnapshot::read_addresses()?;
        Ok(names.by_name.into_iter().filter_map(|(n, l)| by_index.get(&(l.index as i32)).map(|v| (n, *v))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(all: u8, default: u8, ifs: &[(&str, u8)], fwd: u8) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("ip_forward"), format!("{fwd}\n")).unwrap();
        for (s, v) in [("all", all), ("default", default)].into_iter().chain(ifs.iter().copied()) {
            fs::create_dir_all(d.path().join("conf").join(s)).unwrap();
            fs::write(d.path().join("conf").join(s).join("rp_filter"), format!("{v}\n")).unwrap();
        }
        d
    }

    #[test]
    fn strict_becomes_loose_and_off_stays_off() {
        let d = tree(1, 0, &[("ppp0", 1), ("ppp1", 0), ("ppp2", 2)], 0);
        let mut s = SysctlProc::with_root(d.path());
        let names: Vec<String> = ["ppp0", "ppp1", "ppp2", "ppp9"].iter().map(|s| s.to_string()).collect();
        let before = s.read(&names).unwrap();
        assert!(!before.ok());
        assert_eq!(before.strict_interfaces(), vec!["ppp0", "ppp1"]);
        s.ensure(&names).unwrap();
        let after = s.read(&names).unwrap();
        assert!(after.ip_forward && after.ok(), "{after:?}");
        assert_eq!((after.rp_filter_all, after.rp_filter_default), (2, 0));
        assert_eq!(after.rp_filter.get("ppp1"), Some(&2), "effective: max(all=2, own=0)");
        assert_eq!(fs::read_to_string(d.path().join("conf/ppp1/rp_filter")).unwrap().trim(), "0");
        assert!(!after.rp_filter.contains_key("ppp9"));
    }

    #[test]
    fn forwarding_per_interface_is_written_only_when_it_differs() {
        let d = tree(0, 0, &[("ppp0", 0)], 1);
        fs::write(d.path().join("conf/ppp0/forwarding"), "1\n").unwrap();
        let mut s = SysctlProc::with_root(d.path());
        s.set_forwarding("ppp0", false).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("conf/ppp0/forwarding")).unwrap().trim(), "0");
        s.set_forwarding("ppp0", true).unwrap();
        assert_eq!(fs::read_to_string(d.path().join("conf/ppp0/forwarding")).unwrap().trim(), "1");
        s.set_forwarding("ppp9", false).unwrap();
        s.set_forwarding("all", false).unwrap();
        s.set_forwarding("../x", false).unwrap();
        assert!(!d.path().join("conf/ppp9").exists() && !d.path().join("conf/all/forwarding").exists());
    }

    #[test]
    fn path_tricks_are_ignored() {
        let d = tree(0, 0, &[], 1);
        let mut s = SysctlProc::with_root(d.path());
        s.ensure(&["../../x".to_string(), "..".to_string()]).unwrap();
        assert!(s.read(&["..".to_string()]).unwrap().rp_filter.is_empty());
    }
}

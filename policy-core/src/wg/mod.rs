//! WireGuard for tenants' routers (seeds 001/002/003): one /16 per tenant ([`addr`]), keys
//! generated in-process ([`keys`]), private and preshared keys sealed under a master key kept
//! outside the database ([`seal`]), RouterOS and wg-quick configurations ([`render`]), the
//! concentrator's interface brought to what SQL says ([`reconcile`]). SQL lives in `db::wg`,
//! the kernel side in `kernel::wg`. Decisions: docs/wireguard.md.

pub mod addr;
pub mod keys;
pub mod reconcile;
pub mod render;
pub mod seal;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

pub const DEFAULT_MASTER_KEY_FILE: &str = "/etc/pppgate/wg-master.key";

/// Which WireGuard implementation drives the server interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Kernel WireGuard over generic netlink when the kernel has it, else wireguard-go.
    Auto,
    /// The kernel module (generic netlink family "wireguard").
    Kernel,
    /// A userspace implementation (wireguard-go) through its UAPI socket
    /// (`/var/run/wireguard/<if>.sock`).
    Userspace,
}

/// `[wireguard]`, validated.
#[derive(Debug, Clone)]
pub struct WgConfig {
    /// The concentrator's WireGuard interface.
    pub interface: String,
    /// Host (DNS name or IPv4 address) routers dial.
    pub endpoint_host: String,
    pub endpoint_port: u16,
    /// The server interface's UDP port.
    pub listen_port: u16,
    pub master_key_file: PathBuf,
    pub backend: BackendKind,
    /// Default name of the WireGuard interface on routers.
    pub router_interface: String,
    /// The routers' own UDP port (RouterOS's default 13231), opened by the script's firewall rule.
    pub router_listen_port: u16,
    /// Default persistent keepalive, seconds (0: off).
    pub keepalive: u16,
    /// DNS servers written into wg-quick configs.
    pub dns: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    /// A router is "up" when its latest handshake is younger than this.
    pub handshake_up: Duration,
    /// A released router address is not handed out again before this much time passed.
    pub address_quarantine: Duration,
    /// Routers of one tenant reach each other through the concentrator.
    pub intra_tenant: bool,
    /// Networks (the panel) allowed to reach routers through the concentrator; the routers'
    /// answers to them pass too. None of them may overlap the tenant pool.
    pub management_nets: Vec<ipnet::Ipv4Net>,
    /// Serialises WireGuard reconciles on this box.
    pub lock_file: PathBuf,
}

/// `[wireguard]` as read (config.rs keeps the serde side).
#[derive(Debug, Default)]
pub struct RawWgConfig {
    pub interface: Option<String>,
    pub endpoint: Option<String>,
    pub listen_port: Option<u32>,
    pub master_key_file: Option<PathBuf>,
    pub backend: Option<String>,
    pub router_interface: Option<String>,
    pub router_listen_port: Option<u32>,
    pub keepalive_s: Option<u32>,
    pub dns: Option<Vec<String>>,
    pub mtu: Option<u32>,
    pub handshake_up_s: Option<u64>,
    pub address_quarantine_s: Option<u64>,
    pub intra_tenant: Option<bool>,
    pub management_nets: Option<Vec<String>>,
    pub lock_file: Option<PathBuf>,
}

impl WgConfig {
    pub fn from_raw(r: RawWgConfig, problems: &mut Vec<String>) -> WgConfig {
        let mut p = |s: String| problems.push(format!("wireguard.{s}"));
        let interface = r.interface.unwrap_or_else(|| "wg0".into());
        if let Err(e) = check_ifname(&interface) {
            p(format!("interface: {e}"));
        }
        let (endpoint_host, endpoint_port) = match r.endpoint.as_deref() {
            None => {
                p("endpoint: missing (host:port the routers dial, e.g. \"vpn.example.com:51820\")".into());
                (String::new(), 0)
            }
            Some(e) => match parse_endpoint(e) {
                Ok(x) => x,
                Err(e) => {
                    p(format!("endpoint: {e}"));
                    (String::new(), 0)
                }
            },
        };
        let mut port = |name: &str, v: Option<u32>, default: u16| match v {
            None => default,
            Some(v) if (1..=65535).contains(&v) => v as u16,
            Some(v) => {
                p(format!("{name}: {v} is not a UDP port (1-65535)"));
                default
            }
        };
        let listen_port = port("listen_port", r.listen_port, 51820);
        let router_listen_port = port("router_listen_port", r.router_listen_port, 13231);
        let backend = match r.backend.as_deref().unwrap_or("auto") {
            "auto" => BackendKind::Auto,
            "kernel" => BackendKind::Kernel,
            "userspace" => BackendKind::Userspace,
            other => {
                p(format!("backend: {other:?} is not one of auto, kernel, userspace"));
                BackendKind::Auto
            }
        };
        let master_key_file = r.master_key_file.unwrap_or_else(|| DEFAULT_MASTER_KEY_FILE.into());
        if !master_key_file.is_absolute() {
            p(format!("master_key_file: {} is not an absolute path", master_key_file.display()));
        }
        let router_interface = r.router_interface.unwrap_or_else(|| "wg-pppgate".into());
        if let Err(e) = check_router_ifname(&router_interface) {
            p(format!("router_interface: {e}"));
        }
        let keepalive = match check_keepalive(r.keepalive_s.map(i64::from).unwrap_or(25)) {
            Ok(k) => k,
            Err(e) => {
                p(format!("keepalive_s: {e}"));
                25
            }
        };
        let mut dns = Vec::new();
        for (i, d) in r.dns.unwrap_or_default().iter().enumerate() {
            match d.parse::<Ipv4Addr>() {
                Ok(a) => dns.push(a),
                Err(_) => p(format!("dns[{i}]: {d:?} is not an IPv4 address")),
            }
        }
        let mtu = match r.mtu {
            None => None,
            Some(m) if (1280..=9000).contains(&m) => Some(m as u16),
            Some(m) => {
                p(format!("mtu: {m} is outside 1280-9000"));
                None
            }
        };
        let handshake_up = Duration::from_secs(r.handshake_up_s.unwrap_or(180));
        if handshake_up < Duration::from_secs(30) || handshake_up > Duration::from_secs(86400) {
            p("handshake_up_s: must be between 30 and 86400".into());
        }
        let address_quarantine = Duration::from_secs(r.address_quarantine_s.unwrap_or(86400));
        if address_quarantine > Duration::from_secs(365 * 86400) {
            p("address_quarantine_s: at most one year".into());
        }
        let mut management_nets = Vec::new();
        for (i, n) in r.management_nets.unwrap_or_default().iter().enumerate() {
            match n.parse::<ipnet::Ipv4Net>() {
                Ok(net) if crate::kernel::wg::isolation::overlaps_pool(&net) => {
                    p(format!("management_nets[{i}]: {n} overlaps the tenant pool 10.100.0.0-10.254.255.255"))
                }
                Ok(net) => management_nets.push(net.trunc()),
                Err(_) => p(format!("management_nets[{i}]: {n:?} is not an IPv4 network (a.b.c.d/len)")),
            }
        }
        let lock_file = r.lock_file.unwrap_or_else(|| "/run/pppgate/wg.lock".into());
        if !lock_file.is_absolute() {
            p(format!("lock_file: {} is not an absolute path", lock_file.display()));
        }
        WgConfig {
            interface,
            endpoint_host,
            endpoint_port,
            listen_port,
            master_key_file,
            backend,
            router_interface,
            router_listen_port,
            keepalive,
            dns,
            mtu,
            handshake_up,
            address_quarantine,
            intra_tenant: r.intra_tenant.unwrap_or(true),
            management_nets,
            lock_file,
        }
    }
}

/// A Linux interface name: 1-15 characters of `[A-Za-z0-9_.-]`.
pub fn check_ifname(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(format!("{s:?} is not an interface name (1-15 characters of A-Z a-z 0-9 _ . -)"));
    }
    Ok(())
}

/// The WireGuard interface name on a router (it goes into the RouterOS script unquoted).
pub fn check_router_ifname(s: &str) -> std::result::Result<(), String> {
    if s.is_empty()
        || s.len() > 32
        || !s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return Err(format!("{s:?} is not a router interface name (a letter, then up to 31 of A-Z a-z 0-9 _ -)"));
    }
    Ok(())
}

/// Persistent keepalive in seconds: 0 (off) or 1-3600.
pub fn check_keepalive(v: i64) -> std::result::Result<u16, String> {
    if (0..=3600).contains(&v) {
        Ok(v as u16)
    } else {
        Err(format!("{v} is not a keepalive in seconds (0 = off, up to 3600)"))
    }
}

/// A router's display name (panel text; shown in script comments): 1-64 printable characters,
/// no quotes, backslashes, `$` or control characters.
pub fn check_router_name(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.chars().count() <= 64
        && s.chars().all(|c| (c.is_alphanumeric() || " ._-:/()#@+,".contains(c)) && !c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("router name", s, "1-64 characters: letters, digits, space and . _ - : / ( ) # @ + ,"))
    }
}

/// `host:port`: a DNS name (RFC 1123 labels) or an IPv4 address, and a port 1-65535.
pub fn parse_endpoint(s: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: port {port:?} is not a UDP port (1-65535)"))?;
    check_host(host).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((host.to_ascii_lowercase(), port))
}

fn check_host(h: &str) -> std::result::Result<(), String> {
    if h.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if h.is_empty()
        || h.len() > 253
        || !h.split('.').all(label_ok)
        || h.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("host {h:?} is neither a DNS name nor an IPv4 address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("vpn.example.com:51820").unwrap(), ("vpn.example.com".into(), 51820));
        assert_eq!(parse_endpoint("203.0.113.10:1").unwrap(), ("203.0.113.10".into(), 1));
        for bad in [
            "a b:51820",
            "a b",
            "vpn.example.com",
            "vpn:70000",
            "vpn:0",
            ":51820",
            "-x.com:1",
            "1.2.3:5",
            "x..y:1",
            "a\"b:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_keepalive() {
        assert!(check_ifname("wg0").is_ok() && check_ifname("wg-tenants_1").is_ok());
        assert!(check_ifname("").is_err() && check_ifname("a b").is_err() && check_ifname("sixteen-chars-xx").is_err());
        assert!(check_router_ifname("wg-pppgate").is_ok());
        assert!(check_router_ifname("1wg").is_err() && check_router_ifname("wg\"x").is_err());
        assert_eq!(check_keepalive(25), Ok(25));
        assert!(check_keepalive(-1).is_err() && check_keepalive(3601).is_err());
        assert!(check_router_name("Branch office (Nairobi) #2").is_ok());
        for bad in ["", "a\"b", "a$b", "a\nb", "a\\b"] {
            assert!(check_router_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_defaults_and_problems() {
        let mut p = Vec::new();
        let c = WgConfig::from_raw(
            RawWgConfig { endpoint: Some("vpn.example.com:51820".into()), ..Default::default() },
            &mut p,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.interface, "wg0");
        assert_eq!(c.listen_port, 51820);
        assert_eq!(c.master_key_file, PathBuf::from(DEFAULT_MASTER_KEY_FILE));
        assert_eq!(c.keepalive, 25);
        let mut p = Vec::new();
        WgConfig::from_raw(
            RawWgConfig {
                endpoint: Some("a b".into()),
                listen_port: Some(70000),
                backend: Some("magic".into()),
                master_key_file: Some("rel/key".into()),
                management_nets: Some(vec!["192.0.2.0/24".into(), "10.150.0.0/24".into(), "panel".into()]),
                ..Default::default()
            },
            &mut p,
        );
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(p.iter().any(|x| x.contains("management_nets[1]: 10.150.0.0/24 overlaps the tenant pool")), "{p:?}");
    }
}

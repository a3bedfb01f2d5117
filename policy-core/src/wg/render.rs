//! The two configurations a router's operator downloads: a RouterOS v7 script and a wg-quick(8)
//! config. Rendering is the only place a router's private and preshared keys are decrypted
//! (`pppgate wg router config`).
//!
//! The RouterOS script is one `{ … }` block (the terminal reads it as one command, so its
//! version check stops everything and its locals live across lines). It is idempotent: each item
//! it owns (interface, address, peer, firewall rule) is found by its comment
//! `pppgate-wg tenant=T router=R`, added when missing and then set to the wanted values — never
//! addressed by row number — so pasting it twice changes nothing, and pasting a newer one (new
//! endpoint, rotated keys) updates in place. It needs RouterOS 7.1 or later (`/interface/wireguard`
//! appeared in v7; endpoint host names are resolved by v7's WireGuard).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::keys::Key;

/// The minimum RouterOS version the script needs (checked by the script itself).
pub const ROUTEROS_MIN: &str = "7.1";

/// Everything a router's configuration shows.
#[derive(Debug, Clone)]
pub struct RouterView<'a> {
    pub tenant: i64,
    pub router: i64,
    pub name: Option<&'a str>,
    /// The WireGuard interface's name on the router.
    pub interface: &'a str,
    pub address: Ipv4Addr,
    /// The tenant subnet (the address's prefix).
    pub subnet: Ipv4Net,
    pub listen_port: u16,
    pub private_key: &'a Key,
    pub preshared_key: &'a Key,
    pub server_public_key: &'a Key,
    pub endpoint_host: &'a str,
    pub endpoint_port: u16,
    /// What the router sends into the tunnel (its allowed-address for the server peer).
    pub allowed: &'a [Ipv4Net],
    pub keepalive: u16,
    pub dns: &'a [Ipv4Addr],
    pub mtu: Option<u16>,
}

impl RouterView<'_> {
    pub fn comment(&self) -> String {
        format!("pppgate-wg tenant={} router={}", self.tenant, self.router)
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.subnet.prefix_len())
    }

    fn allowed_text(&self, sep: &str) -> String {
        self.allowed.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(sep)
    }
}

/// The RouterOS v7 script.
pub fn routeros(v: &RouterView<'_>) -> String {
    let c = v.comment();
    let mut s = String::new();
    let _ = writeln!(s, "# pppgate WireGuard configuration for router {} of tenant {}", v.router, v.tenant);
    if let Some(n) = v.name {
        let _ = writeln!(s, "# Router name: {n}");
    }
    let _ = writeln!(
        s,
        "# Tunnel address {} on interface {}, server {}:{}",
        v.cidr(),
        v.interface,
        v.endpoint_host,
        v.endpoint_port
    );
    let _ = writeln!(
        s,
        "# Requires RouterOS {ROUTEROS_MIN} or later. Paste it whole into a terminal or run it with /import."
    );
    let _ = writeln!(s, "# Safe to run again: every item is found by its comment \"{c}\" and updated in place.");
    let _ = writeln!(s, "# Contains this router's private key: handle it like a password.");
    s.push_str("{\n");
    s.push_str(":local ver [/system/resource/get version]\n");
    let _ = writeln!(
        s,
        ":if ([:tonum [:pick $ver 0 [:find $ver \".\"]]] < 7) do={{ :error \"pppgate: this script needs RouterOS {ROUTEROS_MIN} or later (this router runs $ver)\" }}"
    );
    let _ = writeln!(s, ":local c \"{c}\"");
    let _ = writeln!(s, ":local ifn \"{}\"", v.interface);

    let mtu = v.mtu.map(|m| m.to_string()).unwrap_or_else(|| "auto".into());
    s.push_str(":if ([:len [/interface/wireguard/find where comment=$c]] = 0) do={ /interface/wireguard/add name=$ifn comment=$c }\n");
    let _ = writeln!(
        s,
        "/interface/wireguard/set [/interface/wireguard/find where comment=$c] name=$ifn listen-port={} mtu={mtu} private-key=\"{}\" disabled=no",
        v.listen_port,
        v.private_key.to_base64()
    );

    let _ = writeln!(
        s,
        ":if ([:len [/ip/address/find where comment=$c]] = 0) do={{ /ip/address/add address={} interface=$ifn comment=$c }}",
        v.cidr()
    );
    let _ = writeln!(
        s,
        "/ip/address/set [/ip/address/find where comment=$c] address={} interface=$ifn disabled=no",
        v.cidr()
    );

    let _ = writeln!(
        s,
        ":if ([:len [/interface/wireguard/peers/find where comment=$c]] = 0) do={{ /interface/wireguard/peers/add interface=$ifn public-key=\"{}\" allowed-address={} comment=$c }}",
        v.server_public_key.to_base64(),
        v.allowed_text(",")
    );
    let _ = writeln!(
        s,
        "/interface/wireguard/peers/set [/interface/wireguard/peers/find where comment=$c] interface=$ifn public-key=\"{}\" preshared-key=\"{}\" endpoint-address={} endpoint-port={} allowed-address={} persistent-keepalive={}s disabled=no",
        v.server_public_key.to_base64(),
        v.preshared_key.to_base64(),
        v.endpoint_host,
        v.endpoint_port,
        v.allowed_text(","),
        v.keepalive
    );

    let _ = writeln!(
        s,
        ":if ([:len [/ip/firewall/filter/find where comment=$c]] = 0) do={{ /ip/firewall/filter/add chain=input action=accept protocol=udp dst-port={} comment=$c }}",
        v.listen_port
    );
    let _ = writeln!(
        s,
        "/ip/firewall/filter/set [/ip/firewall/filter/find where comment=$c] chain=input action=accept protocol=udp dst-port={} disabled=no",
        v.listen_port
    );
    let _ = writeln!(
        s,
        ":put \"pppgate: WireGuard to {}:{} configured as {} on $ifn\"",
        v.endpoint_host,
        v.endpoint_port,
        v.cidr()
    );
    s.push_str("}\n");
    s
}

/// The wg-quick(8) configuration for the same router (a Linux box in its place).
pub fn wg_quick(v: &RouterView<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# pppgate WireGuard configuration for router {} of tenant {} (wg-quick)", v.router, v.tenant);
    if let Some(n) = v.name {
        let _ = writeln!(s, "# Router name: {n}");
    }
    s.push_str("# Contains this router's private key: handle it like a password.\n");
    s.push_str("[Interface]\n");
    let _ = writeln!(s, "PrivateKey = {}", v.private_key.to_base64());
    let _ = writeln!(s, "Address = {}", v.cidr());
    let _ = writeln!(s, "ListenPort = {}", v.listen_port);
    if !v.dns.is_empty() {
        let _ = writeln!(s, "DNS = {}", v.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    }
    if let Some(m) = v.mtu {
        let _ = writeln!(s, "MTU = {m}");
    }
    s.push_str("\n[Peer]\n");
    let _ = writeln!(s, "PublicKey = {}", v.server_public_key.to_base64());
    let _ = writeln!(s, "PresharedKey = {}", v.preshared_key.to_base64());
    let _ = writeln!(s, "Endpoint = {}:{}", v.endpoint_host, v.endpoint_port);
    let _ = writeln!(s, "AllowedIPs = {}", v.allowed_text(", "));
    if v.keepalive > 0 {
        let _ = writeln!(s, "PersistentKeepalive = {}", v.keepalive);
    }
    s
}

/// The wg-quick keys wg(8)'s `setconf` does not know (Address, DNS, MTU, …) removed: what
/// `wg-quick strip` prints. Tests load the result into a real interface with `wg setconf`.
pub fn strip_wg_quick(conf: &str) -> String {
    const QUICK: [&str; 8] = ["address", "dns", "mtu", "table", "preup", "postup", "predown", "postdown"];
    conf.lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !QUICK.contains(&key.as_str()) && !l.trim_start().starts_with("SaveConfig")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::keys::{generate_private, generate_psk, public_of};

    pub(crate) fn fixture<'a>(
        private: &'a Key,
        psk: &'a Key,
        server: &'a Key,
        allowed: &'a [Ipv4Net],
        dns: &'a [Ipv4Addr],
    ) -> RouterView<'a> {
        RouterView {
            tenant: 7,
            router: 42,
            name: Some("Branch office"),
            interface: "wg-pppgate",
            address: Ipv4Addr::new(10, 100, 1, 1),
            subnet: "10.100.0.0/16".parse().unwrap(),
            listen_port: 13231,
            private_key: private,
            preshared_key: psk,
            server_public_key: server,
            endpoint_host: "vpn.example.com",
            endpoint_port: 51820,
            allowed,
            keepalive: 25,
            dns,
            mtu: None,
        }
    }

    #[test]
    fn routeros_script_is_idempotent_by_comment() {
        let (p, k, srv) =
            (generate_private().unwrap(), generate_psk().unwrap(), public_of(&generate_private().unwrap()));
        let allowed: Vec<Ipv4Net> = vec!["10.100.0.0/16".parse().unwrap(), "192.168.200.0/24".parse().unwrap()];
        let v = fixture(&p, &k, &srv, &allowed, &[]);
        let s = routeros(&v);
        assert!(s.contains(":local c \"pppgate-wg tenant=7 router=42\""));
        // Every add is guarded by a find on the comment; no numbered item anywhere.
        let adds: Vec<&str> = s.lines().filter(|l| l.contains("/add ")).collect();
        assert_eq!(adds.len(), 4);
        for a in adds {
            assert!(a.starts_with(":if ([:len [") && a.contains("find where comment=$c]] = 0)"), "{a}");
        }
        assert!(!s.contains("numbers="));
        assert!(s.contains("allowed-address=10.100.0.0/16,192.168.200.0/24"));
        assert!(s.contains(&format!("private-key=\"{}\"", p.to_base64())));
        assert!(s.contains("persistent-keepalive=25s"));
        assert!(s.contains("RouterOS 7.1 or later"));
        assert!(s.starts_with("# pppgate") && s.ends_with("}\n"));
    }

    #[test]
    fn wg_quick_config_and_strip() {
        let (p, k, srv) =
            (generate_private().unwrap(), generate_psk().unwrap(), public_of(&generate_private().unwrap()));
        let allowed: Vec<Ipv4Net> = vec!["10.100.0.0/16".parse().unwrap()];
        let dns = [Ipv4Addr::new(10, 100, 0, 1)];
        let v = fixture(&p, &k, &srv, &allowed, &dns);
        let q = wg_quick(&v);
        assert!(q.contains("Address = 10.100.1.1/16\n"));
        assert!(q.contains("DNS = 10.100.0.1\n"));
        assert!(q.contains("Endpoint = vpn.example.com:51820\n"));
        assert!(q.contains("AllowedIPs = 10.100.0.0/16\n"));
        let stripped = strip_wg_quick(&q);
        assert!(!stripped.contains("Address") && !stripped.contains("DNS"));
        assert!(stripped.contains("PrivateKey = ") && stripped.contains("PresharedKey = "));
    }
}

//! Userspace WireGuard (wireguard-go) through its UAPI socket, `<dir>/<if>.sock` with
//! dir = /var/run/wireguard: the line protocol wg(8) itself speaks (`get=1`, `set=1`, keys in hex,
//! `errno=N` closing every answer). The interface is created by starting `wireguard-go <if>`,
//! which puts itself in the background and opens the socket.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::{link, DeviceChange, DeviceState, PeerChange, PeerState, WgDevice};
use crate::error::{Error, Result};
use crate::wg::keys::Key;

pub const SOCKET_DIR: &str = "/var/run/wireguard";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Uapi {
    dir: PathBuf,
    program: PathBuf,
}

fn hex(k: &Key) -> String {
    k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Key> {
    if s.len() != 64 {
        return None;
    }
    let mut b = [0u8; 32];
    for (i, out) in b.iter_mut().enumerate() {
        *out = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Key::from_bytes(b))
}

fn proto_err(op: &str, msg: impl Into<String>) -> Error {
    Error::Netlink { op: op.into(), source: std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into()) }
}

impl Default for Uapi {
    fn default() -> Self {
        Self::new()
    }
}

impl Uapi {
    pub fn new() -> Uapi {
        let program = ["/usr/bin/wireguard-go", "/usr/sbin/wireguard-go", "/usr/local/bin/wireguard-go"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| "wireguard-go".into());
        Uapi { dir: SOCKET_DIR.into(), program }
    }

    pub fn socket_path(&self, ifname: &str) -> PathBuf {
        self.dir.join(format!("{ifname}.sock"))
    }

    /// Whether a userspace implementation serves `ifname` (its socket answers).
    pub fn serves(&self, ifname: &str) -> bool {
        UnixStream::connect(self.socket_path(ifname)).is_ok()
    }

    fn connect(&self, ifname: &str) -> Result<Option<UnixStream>> {
        let path = self.socket_path(ifname);
        match UnixStream::connect(&path) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT)).ok();
                s.set_write_timeout(Some(IO_TIMEOUT)).ok();
                Ok(Some(s))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                Ok(None)
            }
            Err(source) => Err(Error::Netlink { op: format!("connect {}", path.display()), source }),
        }
    }

    /// Sends one request and returns the answer's lines (without the closing `errno=0`).
    fn exchange(&self, ifname: &str, request: &str) -> Result<Option<Vec<String>>> {
        let op = format!("wireguard uapi {ifname}");
        let Some(mut s) = self.connect(ifname)? else { return Ok(None) };
        s.write_all(request.as_bytes()).map_err(|source| Error::Netlink { op: op.clone(), source })?;
        let mut lines = Vec::new();
        let mut r = BufReader::new(s);
        loop {
            let mut l = String::new();
            let n = r.read_line(&mut l).map_err(|source| Error::Netlink { op: op.clone(), source })?;
            if n == 0 {
                return Err(proto_err(&op, "connection closed before errno"));
            }
            let l = l.trim_end().to_string();
            if l.is_empty() {
                continue;
            }
            if let Some(e) = l.strip_prefix("errno=") {
                let code: i32 = e.parse().map_err(|_| proto_err(&op, "malformed errno"))?;
                if code != 0 {
                    return Err(Error::Netlink { op, source: std::io::Error::from_raw_os_error(code) });
                }
                return Ok(Some(lines));
            }
            lines.push(l);
        }
    }

    /// Parses a `get=1` answer.
    pub fn parse_get(lines: &[String]) -> Result<DeviceState> {
        let op = "parse wireguard uapi";
        let mut d = DeviceState::default();
        let mut peer: Option<PeerState> = None;
        let mut hs_sec: i64 = 0;
        for l in lines {
            let (k, v) = l.split_once('=').ok_or_else(|| proto_err(op, "line without '='"))?;
            let bad = || proto_err(op, format!("bad value for {k}"));
            match (k, peer.as_mut()) {
                ("private_key", None) => d.private_key = Some(unhex(v).ok_or_else(bad)?).filter(|k| !k.is_zero()),
                ("listen_port", None) => d.listen_port = v.parse().map_err(|_| bad())?,
                ("public_key", _) => {
                    if let Some(p) = peer.take() {
                        d.peers.push(p);
                    }
                    hs_sec = 0;
                    peer = Some(PeerState {
                        public_key: unhex(v).ok_or_else(bad)?,
                        preshared_key: None,
                        endpoint: None,
                        allowed_ips: Vec::new(),
                        keepalive: 0,
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    });
                }
                ("preshared_key", Some(p)) => {
                    p.preshared_key = Some(unhex(v).ok_or_else(bad)?).filter(|k| !k.is_zero())
                }
                ("endpoint", Some(p)) => p.endpoint = Some(v.to_string()),
                ("allowed_ip", Some(p)) => {
                    if let Ok(n) = v.parse::<Ipv4Net>() {
                        p.allowed_ips.push(n);
                    }
                }
                ("persistent_keepalive_interval", Some(p)) => p.keepalive = v.parse().map_err(|_| bad())?,
                ("last_handshake_time_sec", Some(p)) => {
                    hs_sec = v.parse().map_err(|_| bad())?;
                    p.last_handshake = (hs_sec != 0).then_some(hs_sec);
                }
                ("last_handshake_time_nsec", Some(p)) => {
                    let ns: i64 = v.parse().map_err(|_| bad())?;
                    if hs_sec != 0 || ns != 0 {
                        p.last_handshake = Some(hs_sec);
                    }
                }
                ("rx_bytes", Some(p)) => p.rx_bytes = v.parse().map_err(|_| bad())?,
                ("tx_bytes", Some(p)) => p.tx_bytes = v.parse().map_err(|_| bad())?,
                _ => {}
            }
        }
        if let Some(p) = peer.take() {
            d.peers.push(p);
        }
        Ok(d)
    }

    /// The `set=1` request of a change.
    pub fn set_request(change: &DeviceChange) -> String {
        let mut s = String::from("set=1\n");
        if let Some(k) = &change.private_key {
            s.push_str(&format!("private_key={}\n", hex(k)));
        }
        if let Some(p) = change.listen_port {
            s.push_str(&format!("listen_port={p}\n"));
        }
        for c in &change.peers {
            match c {
                PeerChange::Remove(k) => s.push_str(&format!("public_key={}\nremove=true\n", hex(k))),
                PeerChange::Set(p) => {
                    s.push_str(&format!("public_key={}\n", hex(&p.public_key)));
                    s.push_str(&format!("preshared_key={}\n", hex(&p.preshared_key)));
                    s.push_str(&format!("persistent_keepalive_interval={}\n", p.keepalive));
                    s.push_str("replace_allowed_ips=true\n");
                    for n in &p.allowed_ips {
                        s.push_str(&format!("allowed_ip={n}\n"));
                    }
                }
            }
        }
        s.push('\n');
        s
    }
}

fn wait_for(path: &Path, within: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if UnixStream::connect(path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl WgDevice for Uapi {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn ensure_interface(&mut self, ifname: &str) -> Result<bool> {
        if self.serves(ifname) {
            return Ok(false);
        }
        let program = self.program.display().to_string();
        // wireguard-go forks itself into the background once the TUN device and socket exist.
        let out = Command::new(&self.program)
            .arg(ifname)
            .env_remove("WG_PROCESS_FOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| Error::Exec { program: program.clone(), source })?;
        if !out.status.success() {
            return Err(Error::ExecFailed { program, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
        }
        if !wait_for(&self.socket_path(ifname), Duration::from_secs(5)) {
            return Err(Error::ExecFailed { program, stderr: format!("no UAPI socket for {ifname} after 5 s") });
        }
        Ok(true)
    }

    fn read(&mut self, ifname: &str) -> Result<Option<DeviceState>> {
        match self.exchange(ifname, "get=1\n\n")? {
            None => Ok(None),
            Some(lines) => Self::parse_get(&lines).map(Some),
        }
    }

    fn apply(&mut self, ifname: &str, change: &DeviceChange) -> Result<()> {
        if change.is_empty() {
            return Ok(());
        }
        match self.exchange(ifname, &Self::set_request(change))? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound { what: "wireguard interface", id: ifname.into() }),
        }
    }

    fn delete_interface(&mut self, ifname: &str) -> Result<()> {
        // wireguard-go exits when its TUN device goes away.
        link::delete(ifname)
    }
}

/// The endpoint text as wg(8) prints it, for IPv4.
pub fn endpoint_text(a: Ipv4Addr, port: u16) -> String {
    format!("{a}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::wg::PeerSpec;
    use crate::wg::keys::{generate_private, generate_psk, public_of};

    #[test]
    fn get_answer_parses() {
        let pk = generate_private().unwrap();
        let peer = public_of(&generate_private().unwrap());
        let psk = generate_psk().unwrap();
        let lines: Vec<String> = [
            format!("private_key={}", hex(&pk)),
            "listen_port=51820".into(),
            format!("public_key={}", hex(&peer)),
            format!("preshared_key={}", hex(&psk)),
            "protocol_version=1".into(),
            "endpoint=192.0.2.9:4000".into(),
            "last_handshake_time_sec=1700000000".into(),
            "last_handshake_time_nsec=5".into(),
            "tx_bytes=92".into(),
            "rx_bytes=148".into(),
            "persistent_keepalive_interval=0".into(),
            "allowed_ip=10.100.1.1/32".into(),
            "allowed_ip=10.200.0.0/24".into(),
            format!("public_key={}", hex(&public_of(&generate_private().unwrap()))),
            format!("preshared_key={}", "0".repeat(64)),
            "last_handshake_time_sec=0".into(),
            "last_handshake_time_nsec=0".into(),
        ]
        .into();
        let d = Uapi::parse_get(&lines).unwrap();
        assert_eq!(d.private_key.as_ref(), Some(&pk));
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        let p = &d.peers[0];
        assert_eq!(p.public_key, peer);
        assert_eq!(p.preshared_key.as_ref(), Some(&psk));
        assert_eq!(p.endpoint.as_deref(), Some("192.0.2.9:4000"));
        assert_eq!(p.last_handshake, Some(1700000000));
        assert_eq!((p.rx_bytes, p.tx_bytes), (148, 92));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(d.peers[1].preshared_key, None);
        assert_eq!(d.peers[1].last_handshake, None);
    }

    #[test]
    fn set_request_text() {
        let k = public_of(&generate_private().unwrap());
        let spec = PeerSpec {
            public_key: k.clone(),
            preshared_key: generate_psk().unwrap(),
            allowed_ips: vec!["10.100.1.1/32".parse().unwrap()],
            keepalive: 0,
        };
        let c = DeviceChange {
            private_key: None,
            listen_port: Some(51820),
            peers: vec![PeerChange::Set(spec), PeerChange::Remove(k.clone())],
        };
        let s = Uapi::set_request(&c);
        assert!(s.starts_with("set=1\nlisten_port=51820\npublic_key="));
        assert!(s.contains("replace_allowed_ips=true\nallowed_ip=10.100.1.1/32\n"));
        assert!(s.ends_with(&format!("public_key={}\nremove=true\n\n", hex(&k))));
    }
}

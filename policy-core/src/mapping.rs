//! Session mapping files: `/run/vpn-sessions/<ppp_if>.env` (R106, R501).
//!
//! Format: one `KEY=VALUE` per line, written atomically (temp file, fsync, rename; mode 0640).
//! Required: CONNECTION_ID, PPP_IF, CLIENT_IP, START_TS, PPPD_PID. Optional: SESSION_ID, UP_TS,
//! RX_BASE + TX_BASE (both or neither), START_TICKS + BOOT_ID (both or neither).
//! * START_TS is the start time of the pppd process (Unix seconds): part of the session key and
//!   what a mapping written by an older pppgate (without START_TICKS) is checked by.
//! * START_TICKS + BOOT_ID identify the pppd process by values no wall-clock step moves (its
//!   start in clock ticks after boot, and the boot), so a PID reused by another process is
//!   recognised and a `date -s` does not make a live session look dead: see [`Mapping::validity`]
//!   and [`procfs::ProcessIdentity`].
//! * UP_TS is when the session's IPCP came up (Unix seconds), used for session time.
//! * RX_BASE/TX_BASE are the interface's octet counters when IPCP came up (the plugin reads them
//!   in its ip-up notifier, right after pppd reset its own link statistics): accounting counts
//!   from there, so its totals are pppd's own "Sent N bytes, received M bytes" (the IPCP/LCP
//!   frames before are not the user's traffic). Absent: accounting counts from 0.
//!
//! The parser is strict: a missing or duplicate required key, a value that does not parse, or a
//! line that is not `KEY=VALUE` makes the whole file malformed. Unknown keys are ignored so a
//! newer writer does not break an older reader.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::procfs::{self, Liveness, ProcessIdentity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mapping {
    pub connection_id: i64,
    pub ppp_if: String,
    pub client_ip: Ipv4Addr,
    pub start_ts: i64,
    pub pppd_pid: u32,
    /// SESSION_ID (optional, diagnostic): the session's accounting key
    /// (`accounting::SessionKey`, `<nas>:<PPP_IF>:<PPPD_PID>:<START_TS>`) when the plugin wrote it.
    pub session_id: Option<String>,
    pub up_ts: Option<i64>,
    /// The interface's (rx, tx) octets when IPCP came up.
    pub counters_base: Option<(u64, u64)>,
    /// START_TICKS + BOOT_ID; `None` in mappings written before they existed.
    #[serde(skip)]
    pub process: Option<ProcessIdentity>,
}

pub use crate::error::MappingError;

/// Interface names as the kernel accepts them (IFNAMSIZ - 1, no '/', no whitespace, not . or ..).
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b))
}

fn valid_session_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Mapping {
    pub fn file_name(ppp_if: &str) -> String {
        format!("{ppp_if}.env")
    }

    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(Self::file_name(&self.ppp_if))
    }

    /// Renders the file contents.
    pub fn render(&self) -> String {
        let mut s = format!(
            "CONNECTION_ID={}\nPPP_IF={}\nCLIENT_IP={}\nSTART_TS={}\nPPPD_PID={}\n",
            self.connection_id, self.ppp_if, self.client_ip, self.start_ts, self.pppd_pid
        );
        if let Some(id) = &self.session_id {
            s.push_str(&format!("SESSION_ID={id}\n"));
        }
        if let Some(t) = self.up_ts {
            s.push_str(&format!("UP_TS={t}\n"));
        }
        if let Some((rx, tx)) = self.counters_base {
            s.push_str(&format!("RX_BASE={rx}\nTX_BASE={tx}\n"));
        }
        if let Some(p) = &self.process {
            s.push_str(&format!("START_TICKS={}\nBOOT_ID={}\n", p.start_ticks, p.boot_id));
        }
        s
    }

    /// Parses file contents (strict; see the module docs).
    pub fn parse(text: &str) -> std::result::Result<Mapping, MappingError> {
        let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or(MappingError::NotKeyValue(i + 1))?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit()) {
                return Err(MappingError::NotKeyValue(i + 1));
            }
            if kv.insert(k, v).is_some() {
                return Err(MappingError::Duplicate(k.to_string()));
            }
        }
        fn get<'a>(kv: &BTreeMap<&str, &'a str>, k: &'static str) -> std::result::Result<&'a str, MappingError> {
            kv.get(k).copied().ok_or(MappingError::Missing(k))
        }
        fn bad(key: &'static str, value: &str) -> MappingError {
            MappingError::BadValue { key, value: value.to_string() }
        }
        let cid = get(&kv, "CONNECTION_ID")?;
        let connection_id = parse_positive_i64(cid).ok_or_else(|| bad("CONNECTION_ID", cid))?;
        let ppp_if = get(&kv, "PPP_IF")?;
        if !valid_ifname(ppp_if) {
            return Err(bad("PPP_IF", ppp_if));
        }
        let ip = get(&kv, "CLIENT_IP")?;
        let client_ip = Ipv4Addr::from_str(ip)
            .ok()
            .filter(|a| !a.is_unspecified() && !a.is_broadcast())
            .ok_or_else(|| bad("CLIENT_IP", ip))?;
        let ts = get(&kv, "START_TS")?;
        let start_ts = parse_positive_i64(ts).ok_or_else(|| bad("START_TS", ts))?;
        let pid = get(&kv, "PPPD_PID")?;
        let pppd_pid = parse_positive_i64(pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 1 && *p <= 4_194_304)
            .ok_or_else(|| bad("PPPD_PID", pid))?;
        let session_id = match kv.get("SESSION_ID") {
            None => None,
            Some(s) if valid_session_id(s) => Some(s.to_string()),
            Some(s) => return Err(bad("SESSION_ID", s)),
        };
        let up_ts = match kv.get("UP_TS") {
            None => None,
            Some(s) => Some(parse_positive_i64(s).ok_or_else(|| bad("UP_TS", s))?),
        };
        let counter = |k: &'static str| -> std::result::Result<Option<u64>, MappingError> {
            kv.get(k).map(|s| parse_u64(s).ok_or_else(|| bad(k, s))).transpose()
        };
        let counters_base = match (counter("RX_BASE")?, counter("TX_BASE")?) {
            (Some(rx), Some(tx)) => Some((rx, tx)),
            (None, None) => None,
            (Some(_), None) => return Err(MappingError::Missing("TX_BASE")),
            (None, Some(_)) => return Err(MappingError::Missing("RX_BASE")),
        };
        let process = match (counter("START_TICKS")?, kv.get("BOOT_ID")) {
            (Some(start_ticks), Some(b)) if procfs::valid_boot_id(b) => {
                Some(ProcessIdentity { start_ticks, boot_id: b.to_string() })
            }
            (Some(_), Some(b)) => return Err(bad("BOOT_ID", b)),
            (None, None) => None,
            (Some(_), None) => return Err(MappingError::Missing("BOOT_ID")),
            (None, Some(_)) => return Err(MappingError::Missing("START_TICKS")),
        };
        Ok(Mapping {
            connection_id,
            ppp_if: ppp_if.to_string(),
            client_ip,
            start_ts,
            pppd_pid,
            session_id,
            up_ts,
            counters_base,
            process,
        })
    }

    /// Parses a mapping file's bytes as [`Mapping::read`] does (UTF-8, then [`Mapping::parse`]);
    /// the entry point of the `mapping` fuzz target.
    pub fn parse_bytes(bytes: &[u8]) -> std::result::Result<Mapping, MappingError> {
        let text = std::str::from_utf8(bytes).map_err(|_| MappingError::NotUtf8)?;
        Mapping::parse(text)
    }

    /// Reads and parses one mapping file; the file name must match PPP_IF.
    pub fn read(path: &Path) -> Result<Mapping> {
        let bytes = fs::read(path).map_err(|source| Error::Read { path: path.into(), source })?;
        let m = Mapping::parse_bytes(&bytes).map_err(|reason| Error::Mapping { path: path.into(), reason })?;
        let expected = Mapping::file_name(&m.ppp_if);
        if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
            return Err(Error::Mapping { path: path.into(), reason: MappingError::NameMismatch(m.ppp_if) });
        }
        Ok(m)
    }

    /// Writes the mapping atomically into `dir`: temp file (0640) + fsync + rename + dir fsync.
    /// A reader sees either the old file, or the complete new one.
    pub fn write_atomic(&self, dir: &Path) -> Result<PathBuf> {
        assert!(valid_ifname(&self.ppp_if), "mapping with invalid interface name");
        fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.into(), source })?;
        let path = self.path_in(dir);
        let tmp = dir.join(format!(".{}.tmp.{}", Mapping::file_name(&self.ppp_if), std::process::id()));
        let werr = |source| Error::Write { path: tmp.clone(), source };
        let mut f =
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(&tmp).map_err(werr)?;
        // The umask may have narrowed the mode; the file must end up exactly 0640.
        f.set_permissions(fs::Permissions::from_mode(0o640)).map_err(werr)?;
        let res = f.write_all(self.render().as_bytes()).and_then(|_| f.sync_all());
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(werr(e));
        }
        drop(f);
        if let Err(source) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Write { path, source });
        }
        sync_dir(dir);
        Ok(path)
    }

    /// Removes `<dir>/<ppp_if>.env`; a missing file is fine (idempotent).
    pub fn remove(dir: &Path, ppp_if: &str) -> Result<bool> {
        let path = dir.join(Mapping::file_name(ppp_if));
        match fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(Error::Write { path, source }),
        }
    }

    /// Whether this mapping describes a live session (DESIGN.md): PPPD_PID is alive, that
    /// process started at START_TS, and PPP_IF exists carrying CLIENT_IP as its peer address.
    pub fn validity(&self, links: &crate::kernel::links::LinkSnapshot) -> Validity {
        match procfs::boot_time() {
            Ok(boot) => self.validity_since(links, boot),
            Err(_) => Validity::ProcessGone,
        }
    }

    /// [`Mapping::validity`] with the boot time already read (`procfs::boot_time`). With
    /// START_TICKS + BOOT_ID the process is compared by them, and `boot_time` (which the kernel
    /// moves with every wall-clock step) only dates another process holding the PID; mappings
    /// without them are compared by START_TS as before.
    pub fn validity_since(&self, links: &crate::kernel::links::LinkSnapshot, boot_time: i64) -> Validity {
        match self.liveness(boot_time) {
            Ok(Liveness::Same) => {}
            Ok(Liveness::Other { actual_start }) => return Validity::PidReused { actual_start },
            Ok(Liveness::Gone) | Err(_) => return Validity::ProcessGone,
        }
        match links.peer_of(&self.ppp_if) {
            None => Validity::InterfaceGone,
            Some(peers) if peers.contains(&self.client_ip) => Validity::Valid,
            Some(_) => Validity::PeerMismatch,
        }
    }
}

impl Mapping {
    /// Whether PPPD_PID is still the process this mapping was written for (see
    /// [`Mapping::validity_since`] for which values are compared).
    pub fn liveness(&self, boot_time: i64) -> std::io::Result<Liveness> {
        match &self.process {
            Some(id) => procfs::liveness_by_identity(self.pppd_pid, id, boot_time),
            None => procfs::liveness_by_start(self.pppd_pid, self.start_ts, boot_time),
        }
    }

    /// [`Mapping::liveness`] is `Same`, reading the boot time only when the mapping needs it.
    pub fn is_same_process(&self) -> bool {
        let boot = match &self.process {
            Some(_) => procfs::boot_time().unwrap_or(0),
            None => match procfs::boot_time() {
                Ok(b) => b,
                Err(_) => return false,
            },
        };
        matches!(self.liveness(boot), Ok(Liveness::Same))
    }
}

/// Result of checking a mapping against the live system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "validity")]
pub enum Validity {
    Valid,
    ProcessGone,
    PidReused { actual_start: i64 },
    InterfaceGone,
    PeerMismatch,
}

impl Validity {
    pub fn is_valid(self) -> bool {
        self == Validity::Valid
    }
    pub fn reason(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::ProcessGone => "pppd process is gone",
            Validity::PidReused { .. } => "PPPD_PID now belongs to another process",
            Validity::InterfaceGone => "PPP_IF no longer exists",
            Validity::PeerMismatch => "PPP_IF does not carry CLIENT_IP as its peer",
        }
    }
}

/// One entry of a sessions directory scan.
#[derive(Debug)]
pub struct Scanned {
    pub path: PathBuf,
    pub mapping: Result<Mapping>,
}

/// Reads every `*.env` in `dir` (a missing directory is empty). Malformed files are returned as
/// errors, never skipped silently and never treated as sessions.
pub fn scan(dir: &Path) -> Result<Vec<Scanned>> {
    let mut paths = scan_paths(dir)?;
    paths.sort();
    Ok(paths.into_iter().map(|path| Scanned { mapping: Mapping::read(&path), path }).collect())
}

/// The mapping files of `dir` (`*.env`, not hidden; temp files are hidden), unsorted.
pub fn scan_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path: dir.into(), source }),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| Error::Read { path: dir.into(), source })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".env") {
            continue;
        }
        out.push(entry.path());
    }
    Ok(out)
}

/// A mapping together with its validity against one snapshot of the system.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub mapping: Mapping,
    pub validity: Validity,
}

/// Scans `dir` and checks each parseable mapping. Returns (checked mappings, malformed files).
pub fn scan_checked(dir: &Path) -> Result<(Vec<Checked>, Vec<Error>)> {
    let links = crate::kernel::links::LinkSnapshot::read_addresses()?;
    let boot = procfs::boot_time().map_err(|source| Error::Read { path: "/proc/stat".into(), source })?;
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for s in scan(dir)? {
        match s.mapping {
            Ok(m) => {
                let validity = m.validity_since(&links, boot);
                ok.push(Checked { mapping: m, validity });
            }
            Err(e) => bad.push(e),
        }
    }
    Ok((ok, bad))
}

/// Up to this many mappings are checked against their own interfaces (targeted reads); more
/// against one address dump of the box.
const FEW_SESSIONS: usize = 16;

/// VALID mappings only (DESIGN.md): the one definition every component uses.
pub fn valid_sessions(dir: &Path) -> Result<(Vec<Mapping>, Vec<Error>)> {
    valid_sessions_where(dir, |_| true)
}

/// VALID mappings among those `want` selects; the others are parsed (malformed files are still
/// reported) but not checked, so an apply for one connection does not read /proc for every
/// session on the box.
pub fn valid_sessions_where(dir: &Path, want: impl Fn(&Mapping) -> bool) -> Result<(Vec<Mapping>, Vec<Error>)> {
    let (live, bad) = live_sessions_where(dir, want)?;
    Ok((live.into_iter().map(|l| l.mapping).collect(), bad))
}

/// A VALID mapping with the index of its interface, as the same VALID check read it (nft
/// membership is bound to the index: `kernel::Member`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveSession {
    pub mapping: Mapping,
    pub ifindex: u32,
}

/// [`valid_sessions_where`] with each session's interface index.
pub fn live_sessions_where(dir: &Path, want: impl Fn(&Mapping) -> bool) -> Result<(Vec<LiveSession>, Vec<Error>)> {
    let mut wanted = Vec::new();
    let mut bad = Vec::new();
    for s in scan(dir)? {
        match s.mapping {
            Ok(m) if want(&m) => wanted.push(m),
            Ok(_) => {}
            Err(e) => bad.push(e),
        }
    }
    if wanted.is_empty() {
        return Ok((Vec::new(), bad));
    }
    // A few sessions (an apply for one connection): their interfaces only, not an address dump
    // of the whole box.
    let links = if wanted.len() <= FEW_SESSIONS {
        let names: Vec<&str> = wanted.iter().map(|m| m.ppp_if.as_str()).collect();
        crate::kernel::links::LinkSnapshot::read_named(&names)?
    } else {
        crate::kernel::links::LinkSnapshot::read_addresses()?
    };
    let boot = procfs::boot_time().map_err(|source| Error::Read { path: "/proc/stat".into(), source })?;
    let live = wanted
        .into_iter()
        .filter(|m| m.validity_since(&links, boot).is_valid())
        .filter_map(|m| {
            let ifindex = links.get(&m.ppp_if)?.index;
            Some(LiveSession { mapping: m, ifindex })
        })
        .collect();
    Ok((live, bad))
}

/// Why the pppd a mapping names is provably gone (R511): the only cases in which pppgate removes
/// a mapping file it did not write itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gone {
    /// BOOT_ID is not this boot's: every process of that boot is gone.
    EarlierBoot,
    /// No process has PPPD_PID (or only a zombie).
    NoProcess,
    /// PPPD_PID belongs to a process with other START_TICKS: pppd's PID was reused.
    PidReused,
}

impl Gone {
    pub fn reason(self) -> &'static str {
        match self {
            Gone::EarlierBoot => "BOOT_ID is from an earlier boot",
            Gone::NoProcess => "no process has PPPD_PID",
            Gone::PidReused => "PPPD_PID belongs to another process (START_TICKS differ)",
        }
    }
}

impl Mapping {
    /// Whether the pppd this mapping names is provably gone: judged by process identity
    /// (START_TICKS + BOOT_ID), which no clock step moves. A mapping without them (older
    /// pppgate) is provably gone only when no process has its PID at all: START_TS alone cannot
    /// tell a reused PID from a clock step. `None` means alive, or not provable (an unreadable
    /// /proc counts as alive) — then the file stays.
    pub fn pppd_gone(&self) -> Option<Gone> {
        if let Some(id) = &self.process {
            match procfs::boot_id() {
                Ok(b) if b != id.boot_id => return Some(Gone::EarlierBoot),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        match procfs::stat(self.pppd_pid) {
            Ok(None) => Some(Gone::NoProcess),
            Ok(Some(s)) => match &self.process {
                Some(id) if s.start_ticks != id.start_ticks => Some(Gone::PidReused),
                _ => None,
            },
            Err(_) => None,
        }
    }
}

/// Removes `<dir>/<m.ppp_if>.env` when it still holds exactly `m` and `m`'s pppd is provably
/// gone ([`Mapping::pppd_gone`]): a pppd killed with SIGKILL never ran ip-down. Mapping files are
/// written without the apply lock, so a new pppd may put its own mapping under the same name at
/// any moment; the file is therefore renamed aside first (atomic), and if what was renamed is not
/// the inode that was judged, it is put back with RENAME_NOREPLACE (a file newer still wins).
/// Returns why it was removed, `None` when it was left alone.
pub fn remove_if_pppd_gone(dir: &Path, m: &Mapping) -> Result<Option<Gone>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let path = m.path_in(dir);
    let rerr = |source| Error::Read { path: path.clone(), source };
    let mut f = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(rerr(e)),
    };
    let meta = f.metadata().map_err(rerr)?;
    let mut text = String::new();
    if f.read_to_string(&mut text).is_err() || Mapping::parse(&text).ok().as_ref() != Some(m) {
        // Replaced since it was read: a new session's file is judged on the next run.
        return Ok(None);
    }
    drop(f);
    let Some(gone) = m.pppd_gone() else { return Ok(None) };
    let werr = |source| Error::Write { path: path.clone(), source };
    let aside_name = format!(".{}.gone.{}", Mapping::file_name(&m.ppp_if), std::process::id());
    let aside = dir.join(&aside_name);
    fs::rename(&path, &aside).map_err(werr)?;
    let taken = fs::symlink_metadata(&aside).map_err(werr)?;
    if taken.dev() == meta.dev() && taken.ino() == meta.ino() {
        fs::remove_file(&aside).map_err(werr)?;
        sync_dir(dir);
        return Ok(Some(gone));
    }
    // A new mapping arrived between the check and the rename: put it back unless a newer one is
    // already there.
    let d = fs::File::open(dir).map_err(werr)?;
    match nix::fcntl::renameat2(
        &d,
        aside_name.as_str(),
        &d,
        Mapping::file_name(&m.ppp_if).as_str(),
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => {}
        Err(nix::Error::EEXIST) => {
            let _ = fs::remove_file(&aside);
        }
        Err(e) => return Err(werr(std::io::Error::from(e))),
    }
    sync_dir(dir);
    Ok(None)
}

/// A mapping file [`remove_stale`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub ppp_if: String,
    pub connection_id: i64,
    pub pppd_pid: u32,
    pub client_ip: Ipv4Addr,
    pub gone: Gone,
}

/// Removes every mapping file in `dir` (of `connection_id`, when given) whose pppd is provably
/// gone ([`remove_if_pppd_gone`]); malformed files are left alone (they are reported, never
/// guessed at). Files that could not be removed are returned as errors.
pub fn remove_stale(dir: &Path, connection_id: Option<i64>) -> Result<(Vec<Removed>, Vec<Error>)> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for s in scan(dir)? {
        let Ok(m) = s.mapping else { continue };
        if connection_id.is_some_and(|c| c != m.connection_id) {
            continue;
        }
        match remove_if_pppd_gone(dir, &m) {
            Ok(Some(gone)) => removed.push(Removed {
                ppp_if: m.ppp_if,
                connection_id: m.connection_id,
                pppd_pid: m.pppd_pid,
                client_ip: m.client_ip,
                gone,
            }),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    Ok((removed, errors))
}

/// A decimal u64 without sign, spaces or leading zeros (0 itself is fine).
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse::<u64>().ok()
}

fn parse_positive_i64(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse::<i64>().ok().filter(|v| *v > 0)
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Mapping {
        Mapping {
            connection_id: 42,
            ppp_if: "ppp0".into(),
            client_ip: Ipv4Addr::new(198, 51, 100, 10),
            start_ts: 1_732_000_000,
            pppd_pid: 1234,
            session_id: Some("lns-1:ppp0:1732000000".into()),
            up_ts: Some(1_732_000_003),
            counters_base: Some((180, 0)),
            process: Some(ProcessIdentity {
                start_ticks: 1_234_567,
                boot_id: "0f3c2a9e-8d1b-4c6e-9a7f-123456789abc".into(),
            }),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        let path = m.write_atomic(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("ppp0.env"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(Mapping::read(&path).unwrap(), m);
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1);
        assert!(Mapping::remove(dir.path(), "ppp0").unwrap());
        assert!(!Mapping::remove(dir.path(), "ppp0").unwrap());
    }

    #[test]
    fn minimal_file_has_the_five_keys() {
        let m = Mapping { session_id: None, up_ts: None, counters_base: None, process: None, ..sample() };
        let text = m.render();
        for k in ["CONNECTION_ID=42", "PPP_IF=ppp0", "CLIENT_IP=198.51.100.10", "START_TS=1732000000", "PPPD_PID=1234"]
        {
            assert!(text.lines().any(|l| l == k), "{k} missing in {text}");
        }
        assert_eq!(Mapping::parse(&text).unwrap(), m);
    }

    #[test]
    fn malformed_files_are_rejected() {
        let good = sample().render();
        let cases: Vec<(String, &str)> = vec![
            (good.replace("CONNECTION_ID=42\n", ""), "missing CONNECTION_ID"),
            (good.replace("PPPD_PID=1234", "PPPD_PID=12x4"), "PPPD_PID"),
            (good.replace("PPPD_PID=1234", "PPPD_PID=-5"), "PPPD_PID"),
            (good.replace("PPPD_PID=1234", "PPPD_PID=1"), "PPPD_PID"),
            (good.replace("CONNECTION_ID=42", "CONNECTION_ID=042"), "CONNECTION_ID"),
            (good.replace("CONNECTION_ID=42", "CONNECTION_ID=1; rm -rf /"), "CONNECTION_ID"),
            (good.replace("CLIENT_IP=198.51.100.10", "CLIENT_IP=198.51.100.300"), "CLIENT_IP"),
            (good.replace("PPP_IF=ppp0", "PPP_IF=../../etc/x"), "PPP_IF"),
            (good.replace("PPP_IF=ppp0", "PPP_IF=ppp0123456789abcdef"), "PPP_IF"),
            (format!("{good}garbage line\n"), "not KEY=VALUE"),
            (format!("{good}PPP_IF=ppp1\n"), "twice"),
            (String::new(), "missing"),
            (good.replace("TX_BASE=0\n", ""), "missing TX_BASE"),
            (good.replace("RX_BASE=180\n", ""), "missing RX_BASE"),
            (good.replace("RX_BASE=180", "RX_BASE=-1"), "RX_BASE"),
            (good.replace("TX_BASE=0", "TX_BASE=00"), "TX_BASE"),
            (good.replace("RX_BASE=180", "RX_BASE=18446744073709551616"), "RX_BASE"),
            (good.replace("START_TICKS=1234567\n", ""), "missing START_TICKS"),
            (good.replace("BOOT_ID=0f3c2a9e-8d1b-4c6e-9a7f-123456789abc\n", ""), "missing BOOT_ID"),
            (good.replace("START_TICKS=1234567", "START_TICKS=-3"), "START_TICKS"),
            (good.replace("BOOT_ID=0f3c2a9e", "BOOT_ID=0f3c2a9"), "BOOT_ID"),
        ];
        for (text, expect) in cases {
            let e = Mapping::parse(&text).expect_err(&text);
            assert!(e.to_string().contains(expect), "{text:?}: {e} should mention {expect}");
        }
    }

    #[test]
    fn old_mappings_without_identity_still_parse() {
        let old = "CONNECTION_ID=42\nPPP_IF=ppp0\nCLIENT_IP=198.51.100.10\nSTART_TS=1732000000\nPPPD_PID=1234\n";
        assert_eq!(Mapping::parse(old).unwrap().process, None);
    }

    /// A wall-clock step moves the boot time the kernel reports (/proc/stat `btime` = now −
    /// uptime), so "boot time + start ticks" moves with it. Stepping the host's clock in a test is
    /// not acceptable (and a time namespace shifts ticks and btime together, so it cannot show
    /// this): instead the boot time is injected, shifted by an hour each way, for a live process
    /// with a peer address. A mapping with START_TICKS/BOOT_ID stays VALID; one without (START_TS
    /// only) does not — the defect this fixes. Proven: the VALID check of a mapping with identity
    /// reads nothing the wall clock moves; not proven here: the other consumers (lab test).
    #[test]
    fn validity_with_identity_ignores_a_stepped_boot_time() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let boot = procfs::boot_time().unwrap();
        let start_ts = procfs::process_start_epoch(pid).unwrap().unwrap();
        let ip = Ipv4Addr::new(198, 51, 100, 10);
        let mut links = crate::kernel::links::LinkSnapshot::default();
        links.by_name.insert(
            "ppp0".into(),
            crate::kernel::links::Link { name: "ppp0".into(), index: 9, peers: vec![ip], ..Default::default() },
        );
        let m = Mapping {
            pppd_pid: pid,
            start_ts,
            client_ip: ip,
            process: Some(procfs::identity(pid).unwrap().unwrap()),
            ..sample()
        };
        let legacy = Mapping { process: None, ..m.clone() };
        for step in [-3600, 0, 3600] {
            assert_eq!(m.validity_since(&links, boot + step), Validity::Valid, "step {step}");
        }
        assert_eq!(legacy.validity_since(&links, boot), Validity::Valid);
        assert!(matches!(legacy.validity_since(&links, boot - 3600), Validity::PidReused { .. }));
        assert!(matches!(legacy.validity_since(&links, boot + 3600), Validity::PidReused { .. }));
        assert!(m.is_same_process());
        // Another process's ticks under the same PID: reused, whatever the boot time.
        let other = Mapping {
            process: m.process.clone().map(|p| ProcessIdentity { start_ticks: p.start_ticks + 7, ..p }),
            ..m.clone()
        };
        assert!(matches!(other.validity_since(&links, boot), Validity::PidReused { .. }));
        assert!(!other.is_same_process());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(m.validity_since(&links, boot), Validity::ProcessGone);
        assert!(!m.is_same_process());
    }

    /// R511: a file is removed only when its pppd is provably gone by process identity, and only
    /// the file that was judged (a newer mapping under the same name stays).
    #[test]
    fn only_a_provably_gone_pppds_own_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start_ts = procfs::process_start_epoch(pid).unwrap().unwrap();
        let me = procfs::identity(pid).unwrap().unwrap();
        let m = Mapping { pppd_pid: pid, start_ts, process: Some(me.clone()), ..sample() };
        m.write_atomic(dir.path()).unwrap();
        assert_eq!(m.pppd_gone(), None, "alive");
        assert_eq!(remove_if_pppd_gone(dir.path(), &m).unwrap(), None);
        assert!(m.path_in(dir.path()).exists());
        // Same PID, other ticks: reused. Other boot: gone whatever the PID is now.
        let reused =
            Mapping { process: Some(ProcessIdentity { start_ticks: me.start_ticks + 7, ..me.clone() }), ..m.clone() };
        assert_eq!(reused.pppd_gone(), Some(Gone::PidReused));
        let earlier = Mapping {
            process: Some(ProcessIdentity { boot_id: "00000000-0000-4000-8000-000000000000".into(), ..me.clone() }),
            ..m.clone()
        };
        assert_eq!(earlier.pppd_gone(), Some(Gone::EarlierBoot));
        // An older pppgate's mapping naming a live process started at another time: a clock step
        // looks the same, so it is not provably gone.
        let legacy = Mapping { process: None, start_ts: start_ts - 3600, ..m.clone() };
        assert_eq!(legacy.pppd_gone(), None);
        assert!(remove_stale(dir.path(), None).unwrap().0.is_empty(), "nothing provably gone");

        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(m.pppd_gone(), Some(Gone::NoProcess));
        assert_eq!(Mapping { process: None, ..m.clone() }.pppd_gone(), Some(Gone::NoProcess));
        // The file now holds another session's mapping: not the one judged, left alone.
        let newer = Mapping { connection_id: 43, ..m.clone() };
        newer.write_atomic(dir.path()).unwrap();
        assert_eq!(remove_if_pppd_gone(dir.path(), &m).unwrap(), None);
        assert_eq!(Mapping::read(&m.path_in(dir.path())).unwrap(), newer);
        m.write_atomic(dir.path()).unwrap();
        // Malformed files are never removed; another connection's are not when one is asked for.
        fs::write(dir.path().join("ppp7.env"), "garbage").unwrap();
        assert!(remove_stale(dir.path(), Some(41)).unwrap().0.is_empty());
        let (removed, errors) = remove_stale(dir.path(), Some(42)).unwrap();
        assert!(errors.is_empty());
        assert_eq!(removed.len(), 1);
        assert_eq!((removed[0].ppp_if.as_str(), removed[0].gone), ("ppp0", Gone::NoProcess));
        assert!(!m.path_in(dir.path()).exists());
        assert!(dir.path().join("ppp7.env").exists());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no file set aside is left: {names:?}");
    }

    #[test]
    fn file_name_must_match_ppp_if() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ppp7.env");
        fs::write(&p, sample().render()).unwrap();
        assert!(matches!(Mapping::read(&p), Err(Error::Mapping { reason: MappingError::NameMismatch(_), .. })));
    }

    #[test]
    fn scan_reports_malformed_files_and_ignores_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        sample().write_atomic(dir.path()).unwrap();
        fs::write(dir.path().join("ppp1.env"), "nonsense").unwrap();
        fs::write(dir.path().join(".ppp2.env.tmp.1"), "partial").unwrap();
        let s = scan(dir.path()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s[0].mapping.is_ok());
        assert!(s[1].mapping.is_err());
        assert!(scan(&dir.path().join("missing")).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(cid in 1i64..i64::MAX, pid in 2u32..4_194_304, ts in 1i64..4_000_000_000,
                                   ip in any::<u32>().prop_filter("usable", |v| *v != 0 && *v != u32::MAX),
                                   unit in 0u32..100_000, base in proptest::option::of((any::<u64>(), any::<u64>()))) {
            let m = Mapping { connection_id: cid, ppp_if: format!("ppp{unit}"), client_ip: Ipv4Addr::from(ip),
                              start_ts: ts, pppd_pid: pid, session_id: None, up_ts: Some(ts), counters_base: base,
                              process: None };
            prop_assert_eq!(Mapping::parse(&m.render()).unwrap(), m);
        }

        #[test]
        fn parser_never_panics(text in ".{0,400}") {
            let _ = Mapping::parse(&text);
        }

        #[test]
        fn injected_lines_never_parse_as_another_value(junk in "[^\n\r]{1,40}") {
            // A value with trailing junk is either rejected or is a different number, never 1234.
            let text = sample().render().replace("PPPD_PID=1234", &format!("PPPD_PID=1234{junk}"));
            if let Ok(m) = Mapping::parse(&text) {
                prop_assert_ne!(m.pppd_pid, 1234);
            }
        }
    }
}

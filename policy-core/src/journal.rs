//! Structured journal entries for the events an operator alerts on (issue 12; the field table is
//! docs/operations.md "Journal fields"): a stable `MESSAGE_ID` per event kind, `PPPGATE_EVENT`,
//! and `PPPGATE_*` fields with the facts, sent with systemd's native journal protocol — one
//! datagram to `/run/systemd/journal/socket`, `KEY=value\n` per field, or `KEY\n` + 64-bit
//! little-endian length + value + `\n` for a value with a newline (systemd's "Native Journal
//! Protocol" document).
//!
//! Why not a crate: `tracing-journald` sends every tracing event (we want a handful of alerting
//! entries with stable ids, not a second copy of every line), keeps a socket per subscriber and
//! sends blocking — inside pppd a stalled journald must not hold up the connect path or a
//! session's end. Here the socket is opened per entry, non-blocking, and a full or missing journal
//! drops the entry (the plain log line stays where it always went: pppd's log, stderr, syslog).
//!
//! TEST HOOK: `PPPGATE_JOURNAL_SOCKET=<path>` sends the entries to another datagram socket (read
//! in every build, as the other test hooks: the tests run the release binary). It only moves
//! where this process's own log entries go.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

pub const SOCKET: &str = "/run/systemd/journal/socket";
pub const SOCKET_ENV: &str = "PPPGATE_JOURNAL_SOCKET";
/// `SYSLOG_IDENTIFIER` of every entry (the plugin's too: `journalctl -t pppgate`).
pub const IDENTIFIER: &str = "pppgate";

/// The events an operator alerts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// pppgate.so ended a session (fail closed).
    SessionFailClosed,
    /// `pppgate session kill` could not end a session (still running after SIGKILL, or kill failed).
    KillFailed,
    /// A lock holder older than `policy.lock_ttl_s` (found by a run, or broken by `--break-stale-lock`).
    LockStale,
    /// The accounting spool keeps batches older than 2 × the interim interval.
    SpoolGrowing,
    /// A component found the database unreachable (once per outage).
    DbOutageBegin,
    /// The database is reachable again (once per outage).
    DbOutageEnd,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::SessionFailClosed,
        Event::KillFailed,
        Event::LockStale,
        Event::SpoolGrowing,
        Event::DbOutageBegin,
        Event::DbOutageEnd,
    ];

    /// Stable for the life of the project (an alert rule's key): never reuse or change one.
    pub fn message_id(self) -> &'static str {
        match self {
            Event::SessionFailClosed => "c4676bf9763e4819b41113e863da01bc",
            Event::KillFailed => "26d4b525034547b09b29c19ac7b463d6",
            Event::LockStale => "0b124350c30548918e8f862171575a36",
            Event::SpoolGrowing => "322520e5c66244549c04bada8d5b799f",
            Event::DbOutageBegin => "9fc69114a67f4b8caf7c9d7b24bb308b",
            Event::DbOutageEnd => "bb151923d11449f2827c2385dff67024",
        }
    }

    /// `PPPGATE_EVENT`.
    pub fn name(self) -> &'static str {
        match self {
            Event::SessionFailClosed => "session_fail_closed",
            Event::KillFailed => "kill_failed",
            Event::LockStale => "lock_stale",
            Event::SpoolGrowing => "spool_growing",
            Event::DbOutageBegin => "db_outage_begin",
            Event::DbOutageEnd => "db_outage_end",
        }
    }

    /// syslog priority: 2 crit, 3 err, 4 warning, 5 notice.
    pub fn priority(self) -> u8 {
        match self {
            Event::KillFailed => 2,
            Event::SessionFailClosed | Event::LockStale | Event::DbOutageBegin => 3,
            Event::SpoolGrowing => 4,
            Event::DbOutageEnd => 5,
        }
    }
}

/// One journal entry: the event, a human message and `PPPGATE_<KEY>` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub event: Event,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn new(event: Event, message: impl Into<String>) -> Entry {
        Entry { event, message: message.into(), fields: Vec::new() }
    }

    /// Adds `PPPGATE_<KEY>` (the key upper-cased, anything but A-Z 0-9 `_` made `_`).
    pub fn field(mut self, key: &str, value: impl std::fmt::Display) -> Entry {
        let key: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
        self.fields.push((format!("PPPGATE_{key}"), value.to_string()));
        self
    }

    /// The datagram (native protocol).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut put = |k: &str, v: &str| {
            out.extend_from_slice(k.as_bytes());
            if v.contains('\n') {
                out.push(b'\n');
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                out.extend_from_slice(v.as_bytes());
            } else {
                out.push(b'=');
                out.extend_from_slice(v.as_bytes());
            }
            out.push(b'\n');
        };
        put("MESSAGE", &self.message);
        put("MESSAGE_ID", self.event.message_id());
        put("PRIORITY", &self.event.priority().to_string());
        put("SYSLOG_IDENTIFIER", IDENTIFIER);
        put("PPPGATE_EVENT", self.event.name());
        for (k, v) in &self.fields {
            put(k, v);
        }
        out
    }
}

/// Where entries go: the test hook's socket, else the journal's.
pub fn socket() -> PathBuf {
    std::env::var_os(SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(SOCKET))
}

/// Sends `entry` to `path` without waiting (a full socket buffer is an error, not a wait).
pub fn send_to(path: &Path, entry: &Entry) -> std::io::Result<()> {
    let s = UnixDatagram::unbound()?;
    s.set_nonblocking(true)?;
    s.send_to(&entry.encode(), path).map(|_| ())
}

/// Sends `entry` to the journal; whether it got there (no journal, a full buffer: false).
pub fn send(entry: &Entry) -> bool {
    send_to(&socket(), entry).is_ok()
}

/// Sends `entry` and says whether the caller's plain log line would only repeat it in the same
/// journal: the entry got there and this process's stderr is the journal (`JOURNAL_STREAM`, as
/// under a systemd unit) or goes nowhere (FreeRADIUS's hooks log to syslog, which is the journal
/// on a systemd box). Callers log their plain line when this is false — without a journal that
/// line is the fallback, as before.
pub fn alert(entry: &Entry) -> bool {
    send(entry) && (stderr_is_journal() || stderr_is_dev_null())
}

fn stderr_fd_id() -> Option<(u64, u64, u64)> {
    use std::os::fd::AsFd;
    let st = nix::sys::stat::fstat(std::io::stderr().as_fd()).ok()?;
    Some((st.st_dev, st.st_ino, st.st_rdev))
}

/// `JOURNAL_STREAM=<dev>:<inode>` names fd 2 (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    match (dev.parse::<u64>(), ino.parse::<u64>(), stderr_fd_id()) {
        (Ok(d), Ok(i), Some((sd, si, _))) => d == sd && i == si,
        _ => false,
    }
}

fn stderr_is_dev_null() -> bool {
    let Ok(null) = nix::sys::stat::stat("/dev/null") else { return false };
    stderr_fd_id().is_some_and(|(_, _, rdev)| rdev == null.st_rdev && null.st_rdev != 0)
}

/// Parses a datagram back into its fields (tests; the binary-safe form included).
pub fn decode(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let nl = b.iter().position(|c| *c == b'\n')?;
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|c| *c == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            b = &b[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8 + len)?;
            out.push((key, String::from_utf8_lossy(value).into_owned()));
            b = rest.get(8 + len + 1..)?;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let mut seen = std::collections::BTreeSet::new();
        for e in Event::ALL {
            let id = e.message_id();
            assert_eq!(id.len(), 32, "{e:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{e:?}");
            assert!(seen.insert(id), "{e:?} reuses {id}");
        }
    }

    #[test]
    fn entries_round_trip_through_a_socket_with_newlines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let e = Entry::new(Event::SessionFailClosed, "ending session on ppp0: no row\nsecond line")
            .field("ifname", "ppp0")
            .field("conn-id", 42);
        send_to(&path, &e).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        let f = decode(&buf[..n]).unwrap();
        let get = |k: &str| f.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MESSAGE"), Some("ending session on ppp0: no row\nsecond line"));
        assert_eq!(get("MESSAGE_ID"), Some("c4676bf9763e4819b41113e863da01bc"));
        assert_eq!(get("PRIORITY"), Some("3"));
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("pppgate"));
        assert_eq!(get("PPPGATE_EVENT"), Some("session_fail_closed"));
        assert_eq!(get("PPPGATE_IFNAME"), Some("ppp0"));
        assert_eq!(get("PPPGATE_CONN_ID"), Some("42"));
    }

    #[test]
    fn no_journal_is_not_an_error_that_waits() {
        let dir = tempfile::tempdir().unwrap();
        let e = Entry::new(Event::DbOutageEnd, "x");
        assert!(send_to(&dir.path().join("missing"), &e).is_err());
    }
}

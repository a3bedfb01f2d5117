//! Facts about processes from /proc: is a PID alive, and when did it start.

use std::fs;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What identifies a process for its whole life whatever the wall clock does: its start in clock
/// ticks after boot (`starttime` of /proc/<pid>/stat, counted on the boot clock, which a
/// `date -s` or an NTP step does not move) and the id of the boot it started in
/// (/proc/sys/kernel/random/boot_id), so ticks of an earlier boot never match. A Unix start time
/// ("boot time + ticks") is not such a value: the kernel moves the boot time it reports with every
/// step of the wall clock. Caveat: a reader in another time namespace (boottime offset) sees other
/// ticks; pppd and pppgate run in the host's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub start_ticks: u64,
    pub boot_id: String,
}

/// Whether `s` looks like a boot id (a UUID as the kernel prints it: 36 characters, lower-case
/// hex and four dashes).
pub fn valid_boot_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
            }
        })
}

/// This boot's id (/proc/sys/kernel/random/boot_id), read once per process: a process never
/// outlives its boot.
pub fn boot_id() -> std::io::Result<String> {
    static ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let id = text.trim().to_string();
    if !valid_boot_id(&id) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("boot_id {id:?} is not a UUID")));
    }
    Ok(ID.get_or_init(|| id).clone())
}

/// The identity of `pid`, or `None` when it is not running.
pub fn identity(pid: u32) -> std::io::Result<Option<ProcessIdentity>> {
    let Some(s) = stat(pid)? else { return Ok(None) };
    Ok(Some(ProcessIdentity { start_ticks: s.start_ticks, boot_id: boot_id()? }))
}

/// Our own identity (pppd's, when called inside the plugin).
pub fn own_identity() -> std::io::Result<ProcessIdentity> {
    identity(std::process::id())?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "own /proc entry missing"))
}

/// What became of a recorded process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The PID is the recorded process.
    Same,
    /// No process with this PID (or a zombie).
    Gone,
    /// The PID belongs to another process, which started at this Unix time (as far as the boot
    /// time says).
    Other { actual_start: i64 },
}

/// Whether `pid` is still the process recorded as `recorded`, compared by values no wall-clock
/// step moves (ticks and boot id); `boot_time` only dates the other process in the answer.
pub fn liveness_by_identity(pid: u32, recorded: &ProcessIdentity, boot_time: i64) -> std::io::Result<Liveness> {
    let Some(s) = stat(pid)? else { return Ok(Liveness::Gone) };
    let actual_start = boot_time + (s.start_ticks as i64) / clock_ticks();
    if boot_id()? != recorded.boot_id || s.start_ticks != recorded.start_ticks {
        return Ok(Liveness::Other { actual_start });
    }
    Ok(Liveness::Same)
}

/// Whether `pid` is still the process that started at Unix time `start_ts` (mappings written
/// before START_TICKS/BOOT_ID existed): the wall clock moves this comparison, see
/// [`ProcessIdentity`].
pub fn liveness_by_start(pid: u32, start_ts: i64, boot_time: i64) -> std::io::Result<Liveness> {
    match process_start_epoch_since(pid, boot_time)? {
        None => Ok(Liveness::Gone),
        Some(t) if (t - start_ts).abs() <= START_TS_TOLERANCE => Ok(Liveness::Same),
        Some(t) => Ok(Liveness::Other { actual_start: t }),
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn ticks_per_second() -> i64 {
    clock_ticks()
}

/// START_TS comparisons allow this many seconds of difference: the boot time the kernel reports
/// in /proc/stat can move by a second when the wall clock is adjusted.
pub const START_TS_TOLERANCE: i64 = 2;

fn clock_ticks() -> i64 {
    static TICKS: OnceLock<i64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|v| *v > 0).unwrap_or(100)
    })
}

/// Boot time in Unix seconds (`btime` in /proc/stat), re-read at most once a second: checking
/// 10,000 mappings would otherwise read /proc/stat 10,000 times (a third of a collector run).
pub fn boot_time() -> std::io::Result<i64> {
    static CACHE: Mutex<Option<(Instant, i64)>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, v)) = *cache {
        if at.elapsed() < Duration::from_secs(1) {
            return Ok(v);
        }
    }
    let stat = fs::read_to_string("/proc/stat")?;
    let v = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<i64>().ok()))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no btime in /proc/stat"))?;
    *cache = Some((Instant::now(), v));
    Ok(v)
}

/// Fields of /proc/<pid>/stat we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    pub state: char,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses /proc/<pid>/stat; `comm` may contain spaces and parentheses, so split at the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22 → rest[19].
    let state = rest.first()?.chars().next()?;
    let start_ticks = rest.get(19)?.parse().ok()?;
    Some(ProcStat { comm, state, start_ticks })
}

/// Reads /proc/<pid>/stat; `None` when the process does not exist or is a zombie.
pub fn stat(pid: u32) -> std::io::Result<Option<ProcStat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => Ok(parse_stat(&t).filter(|s| s.state != 'Z' && s.state != 'X')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The start time of `pid` in Unix seconds, or `None` when it is not running.
pub fn process_start_epoch(pid: u32) -> std::io::Result<Option<i64>> {
    process_start_epoch_since(pid, boot_time()?)
}

/// [`process_start_epoch`] with the boot time already read (a scan of many mappings reads
/// /proc/stat once, not once per session).
pub fn process_start_epoch_since(pid: u32, boot_time: i64) -> std::io::Result<Option<i64>> {
    let Some(s) = stat(pid)? else { return Ok(None) };
    Ok(Some(boot_time + (s.start_ticks as i64) / clock_ticks()))
}

/// Our own start time in Unix seconds (pppd's, when called inside the plugin).
pub fn own_start_epoch() -> std::io::Result<i64> {
    process_start_epoch(std::process::id())?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "own /proc entry missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let t = "123 (my (odd) prog) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4567 1000 10";
        let s = parse_stat(t).unwrap();
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_ticks, 4567);
    }

    #[test]
    fn own_start_is_recent_and_stable() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let a = own_start_epoch().unwrap();
        assert!(a <= now + 1 && a > now - 3600, "start {a} now {now}");
        assert!((own_start_epoch().unwrap() - a).abs() <= START_TS_TOLERANCE);
    }

    #[test]
    fn identity_is_stable_and_tells_processes_apart() {
        let me = own_identity().unwrap();
        assert!(valid_boot_id(&me.boot_id), "{}", me.boot_id);
        assert_eq!(own_identity().unwrap(), me);
        let boot = boot_time().unwrap();
        assert_eq!(liveness_by_identity(std::process::id(), &me, boot).unwrap(), Liveness::Same);
        // The answer does not depend on the boot time the kernel reports (a clock step moves it).
        assert_eq!(liveness_by_identity(std::process::id(), &me, boot + 3600).unwrap(), Liveness::Same);
        let other = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(matches!(liveness_by_identity(std::process::id(), &other, boot).unwrap(), Liveness::Other { .. }));
        let earlier_boot = ProcessIdentity { boot_id: "00000000-0000-4000-8000-000000000000".into(), ..me };
        assert!(matches!(
            liveness_by_identity(std::process::id(), &earlier_boot, boot).unwrap(),
            Liveness::Other { .. }
        ));
    }

    #[test]
    fn boot_ids_are_checked() {
        assert!(valid_boot_id("0f3c2a9e-8d1b-4c6e-9a7f-123456789abc"));
        for bad in [
            "",
            "0f3c2a9e8d1b4c6e9a7f123456789abc",
            "0F3C2A9E-8D1B-4C6E-9A7F-123456789ABC",
            "0f3c2a9e-8d1b-4c6e-9a7f-123456789ab\n",
        ] {
            assert!(!valid_boot_id(bad), "{bad}");
        }
    }

    #[test]
    fn dead_pid_is_none() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_start_epoch(pid).unwrap(), None);
    }
}

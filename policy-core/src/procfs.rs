//! Facts about processes from /proc: is a PID alive, and when did it start.

use std::fs;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    fn dead_pid_is_none() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_start_epoch(pid).unwrap(), None);
    }
}

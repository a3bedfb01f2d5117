//! The audit trail of admin actions (`session kill`, …): one JSON object per line appended to
//! `paths.audit_log` (/var/log/pppgate/audit.log, mode 0640), and best-effort one row in
//! `pppgate_audit` (`db::audit::insert`). The file is written first and always: it needs no
//! database.
//!
//! Who: the invoking user (`SUDO_USER` when run through sudo, as the panel does) and the real uid.
//! Arguments are recorded exactly as given (JSON-escaped), so an injection attempt such as
//! `1; rm -rf /` is visible in the trail as what it was.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::lock::now_unix;

#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    /// `SUDO_USER` when set (the human or service behind sudo), else the real user's name.
    pub name: String,
    pub uid: u32,
    pub sudo_user: Option<String>,
}

impl Actor {
    pub fn current() -> Actor {
        let uid = nix::unistd::getuid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name);
        let sudo_user = std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty() && s.len() <= 64);
        let name = sudo_user.clone().or(user).unwrap_or_else(|| format!("uid:{}", uid.as_raw()));
        Actor { name, uid: uid.as_raw(), sudo_user }
    }

    /// How the actor is shown in `pppgate_audit.actor`.
    pub fn label(&self) -> String {
        match &self.sudo_user {
            Some(s) => format!("{s} (sudo, uid {})", self.uid),
            None => format!("{} (uid {})", self.name, self.uid),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Unix seconds.
    pub at: i64,
    /// RFC 3339 UTC, for people reading the file.
    pub time: String,
    pub nas_identity: String,
    pub actor: Actor,
    pub verb: String,
    pub args: Vec<String>,
    pub result: String,
    pub exit_code: u8,
}

impl Record {
    pub fn new(nas_identity: &str, verb: &str, args: Vec<String>, result: String, exit_code: u8) -> Record {
        let at = now_unix();
        Record {
            at,
            time: rfc3339(at),
            nas_identity: nas_identity.to_string(),
            actor: Actor::current(),
            verb: verb.to_string(),
            args,
            result,
            exit_code,
        }
    }

    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("serializable") + "\n"
    }
}

/// Appends one line (a single write(2) on an O_APPEND file, so concurrent writers never
/// interleave within a line). Creates the directory (0750) and the file (0640) when missing.
pub fn append(path: &Path, record: &Record) -> Result<()> {
    let werr = |source| Error::Write { path: path.into(), source };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(werr)?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o750));
        }
    }
    // Never through a symbolic link, never into a file with other names (a hard link to a file
    // of root's elsewhere): the trail is appended to pppgate's own file only.
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(werr)?;
    let md = f.metadata().map_err(werr)?;
    if !md.file_type().is_file() || md.nlink() != 1 {
        return Err(werr(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not a regular file with one link; refusing to append to it",
        )));
    }
    f.write_all(record.line().as_bytes()).map_err(werr)?;
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (proleptic Gregorian, UTC).
pub fn rfc3339(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_only_to_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("shadow");
        fs::write(&victim, "root's\n").unwrap();
        let rec = Record::new("nas", "apply", vec![], "ok".into(), 0);
        let sym = dir.path().join("sym.log");
        std::os::unix::fs::symlink(&victim, &sym).unwrap();
        assert!(append(&sym, &rec).is_err());
        let hard = dir.path().join("hard.log");
        fs::hard_link(&victim, &hard).unwrap();
        assert!(append(&hard, &rec).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's\n");
        let own = dir.path().join("audit.log");
        append(&own, &rec).unwrap();
        append(&own, &rec).unwrap();
        assert_eq!(fs::read_to_string(&own).unwrap().lines().count(), 2);
    }

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_768_348_800), "2026-01-14T00:00:00Z");
        assert_eq!(rfc3339(1_732_000_000), "2024-11-19T07:06:40Z");
    }

    #[test]
    fn append_creates_0640_and_keeps_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/audit.log");
        let r = Record::new("lns-1", "session-kill", vec!["1; rm -rf /".into(), "a\nb".into()], "refused".into(), 65);
        append(&path, &r).unwrap();
        append(&path, &r).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["args"][0], "1; rm -rf /");
        assert_eq!(v["args"][1], "a\nb");
        assert_eq!(v["exit_code"], 65);
        assert_eq!(v["verb"], "session-kill");
    }
}

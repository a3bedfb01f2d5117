//! Checks of the host around pppgate: the configuration and its trust, pppd and the plugin,
//! systemd timers, FreeRADIUS wiring. Files only (and `pppd --version`, `systemctl is-*`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use super::{ago, list, Check, Ctx, Status};
use crate::config::{Config, SystemdMode};
use crate::error::{one_line, Error};
use crate::runs::Job;

/// The plugin carries this marker followed by ` pppd=<version> api=<api> version=<pppgate>;`
/// (pppd-plugin/src/lib.rs), so diag can tell which pppd a .so was built for.
pub const PLUGIN_BUILD_MARKER: &str = "pppgate-plugin-build:";

// ---------------------------------------------------------------------------------------------
// config

pub(super) fn config(path: &Path, loaded: Result<&Config, &Error>) -> Check {
    let hint = format!("pppgate --config {} config check", path.display());
    match loaded {
        // Loading goes through policy_core::trust: the file, its secrets file and every
        // directory above them passed (owner, modes, no symlink).
        Ok(cfg) => Check::new(
            "config",
            Status::Ok,
            format!(
                "{}: valid; it{} and every directory above owned by root, not writable by others",
                path.display(),
                if cfg.database.secrets_file.is_some() { ", its secrets file" } else { "" }
            ),
            hint,
        ),
        Err(Error::Config { problems, .. }) => Check::new(
            "config",
            Status::Fail,
            format!("{}: {} problem(s): {}", path.display(), problems.len(), list(problems, 2)),
            hint,
        )
        .with(json!({ "problems": problems })),
        Err(e @ Error::Untrusted { .. }) => Check::new(
            "config",
            Status::Fail,
            format!("not trusted: {}", one_line(e)),
            format!("ls -ld {} $(dirname {})", path.display(), path.display()),
        ),
        Err(e) => Check::new("config", Status::Fail, one_line(e), hint),
    }
}

// ---------------------------------------------------------------------------------------------
// pppd and the plugin

/// `pppd version 2.4.9` (stderr of `pppd --version`).
fn pppd_version(pppd: &Path) -> Result<String, String> {
    let out = Command::new(pppd)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", pppd.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("pppd version ").map(|v| v.trim().to_string()))
        .ok_or_else(|| format!("{} --version printed no version: {}", pppd.display(), text.trim()))
}

/// The words of a pppd options file, comments removed (`#` to the end of the line).
fn option_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .map(|l| l.split_whitespace().map(|w| w.trim_matches('"').to_string()).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The `pppoptfile` of every section of xl2tpd.conf (`;` starts a comment).
fn xl2tpd_option_files(text: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for l in text.lines() {
        let l = l.split(';').next().unwrap_or("").trim();
        if let Some((k, v)) = l.split_once('=') {
            if k.trim() == "pppoptfile" {
                let p = PathBuf::from(v.trim());
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The pppd version the plugin file says it was built for (`None`: no marker in the file).
pub fn plugin_built_for(bytes: &[u8]) -> Option<String> {
    let m = PLUGIN_BUILD_MARKER.as_bytes();
    let at = bytes.windows(m.len()).position(|w| w == m)?;
    let rest = &bytes[at + m.len()..];
    let end = rest.iter().position(|b| *b == b';' || *b == 0).unwrap_or(rest.len().min(128));
    let text = String::from_utf8_lossy(&rest[..end]).into_owned();
    text.split_whitespace().find_map(|w| w.strip_prefix("pppd=")).map(str::to_string)
}

pub(super) fn pppd(ctx: &Ctx) -> Check {
    let d = &ctx.cfg.diag;
    let hint = format!(
        "{} --version; grep -n plugin {}; ls -l /usr/lib/pppd/*/",
        d.pppd.display(),
        if d.pppd_options.is_empty() { "/etc/ppp/options.xl2tpd".to_string() } else { list_paths(&d.pppd_options) }
    );
    let version = match pppd_version(&d.pppd) {
        Ok(v) => v,
        Err(e) => return Check::new("pppd", Status::Fail, e, hint),
    };
    let plugin_dir = d.plugin_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/usr/lib/pppd/{version}")));
    let option_files = if d.pppd_options.is_empty() {
        match fs::read_to_string(&d.xl2tpd_conf) {
            Ok(t) => xl2tpd_option_files(&t),
            Err(e) => {
                return Check::new(
                    "pppd",
                    Status::Fail,
                    format!("pppd {version}; cannot read {}: {e}", d.xl2tpd_conf.display()),
                    hint,
                )
            }
        }
    } else {
        d.pppd_options.clone()
    };
    if option_files.is_empty() {
        return Check::new(
            "pppd",
            Status::Fail,
            format!("pppd {version}; {} names no pppoptfile: pppd runs without the plugin", d.xl2tpd_conf.display()),
            hint,
        );
    }
    let mut worst = Status::Ok;
    let mut notes = Vec::new();
    let mut files = Vec::new();
    for f in &option_files {
        let mut entry = json!({ "file": f });
        let text = match fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                worst = Status::Fail;
                notes.push(format!("cannot read {}: {e}", f.display()));
                files.push(entry);
                continue;
            }
        };
        let words = option_lines(&text);
        let plugin = words
            .iter()
            .find(|w| w.len() >= 2 && w[0] == "plugin" && w[1].rsplit('/').next().unwrap_or("").contains("pppgate"))
            .map(|w| w[1].clone());
        let cfg_opt = words.iter().find(|w| w.len() >= 2 && w[0] == "pppgate-config").map(|w| PathBuf::from(&w[1]));
        let Some(plugin) = plugin else {
            worst = Status::Fail;
            notes.push(format!("{} does not load pppgate.so (no `plugin pppgate.so`)", f.display()));
            files.push(entry);
            continue;
        };
        let path = if plugin.contains('/') { PathBuf::from(&plugin) } else { plugin_dir.join(&plugin) };
        entry["plugin"] = json!(plugin);
        entry["plugin_path"] = json!(path);
        entry["pppgate_config"] = json!(cfg_opt);
        match fs::read(&path) {
            Err(e) => {
                worst = Status::Fail;
                notes.push(format!("{} names {plugin}, but {}: {e}", f.display(), path.display()));
            }
            Ok(bytes) => match plugin_built_for(&bytes) {
                Some(v) if v == version => entry["built_for"] = json!(v),
                Some(v) => {
                    worst = Status::Fail;
                    entry["built_for"] = json!(v);
                    notes.push(format!(
                        "{} was built for pppd {v}, this is pppd {version}: pppd refuses it",
                        path.display()
                    ));
                }
                None => {
                    worst = worst.max(Status::Warn);
                    notes
                        .push(format!("{} carries no pppgate build marker (an old or foreign build?)", path.display()));
                }
            },
        }
        let effective = cfg_opt.clone().unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
        if effective != ctx.cfg.source {
            worst = worst.max(Status::Warn);
            notes.push(format!(
                "{}: the plugin reads {}, diag checked {}",
                f.display(),
                effective.display(),
                ctx.cfg.source.display()
            ));
        }
        files.push(entry);
    }
    let finding = if notes.is_empty() {
        format!("pppd {version}; pppgate.so built for it and loaded by {}", list_paths(&option_files))
    } else {
        format!("pppd {version}; {}", notes.join("; "))
    };
    Check::new("pppd", worst, finding, hint)
        .with(json!({ "pppd_version": version, "plugin_dir": plugin_dir, "option_files": files }))
}

fn list_paths(p: &[PathBuf]) -> String {
    p.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// timers

/// Whether systemd is the init system (sd_booted(3): /run/systemd/system exists).
fn systemd_booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(bin: &Path, verb: &str, unit: &str) -> String {
    match Command::new(bin).args([verb, unit]).stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("cannot run {}: {e}", bin.display()),
    }
}

pub(super) fn timers(ctx: &Ctx) -> Check {
    let d = &ctx.cfg.diag;
    let units: Vec<&str> = Job::ALL.iter().map(|j| j.timer_unit()).collect();
    let hint = format!("systemctl list-timers {}", units.join(" "));
    let check = match d.systemd {
        SystemdMode::Never => false,
        SystemdMode::Always => true,
        SystemdMode::Auto => systemd_booted(),
    };
    if !check {
        let pid1 = fs::read_to_string("/proc/1/comm").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
        return Check::new(
            "timers",
            Status::Ok,
            format!(
                "not under systemd (PID 1 is {pid1}): timers not checked; the runs check shows when each job last ran"
            ),
            "pppgate diag runs",
        )
        .with(json!({ "systemd": false }));
    }
    let mut bad = Vec::new();
    let mut states = Vec::new();
    for u in &units {
        let enabled = systemctl(&d.systemctl, "is-enabled", u);
        let active = systemctl(&d.systemctl, "is-active", u);
        if enabled != "enabled" || active != "active" {
            bad.push(format!("{u} is {enabled}/{active}"));
        }
        states.push(json!({ "unit": u, "enabled": enabled, "active": active }));
    }
    let details = json!({ "systemd": true, "timers": states });
    if bad.is_empty() {
        Check::new("timers", Status::Ok, format!("{} timers enabled and active", units.len()), hint).with(details)
    } else {
        Check::new("timers", Status::Fail, bad.join("; "), hint).with(details)
    }
}

// ---------------------------------------------------------------------------------------------
// guard

/// The unit that runs `pppgate guard` (packaging/systemd).
pub const GUARD_UNIT: &str = "pppgate-guard.service";

/// A restore by the guard this recent (not the one at its start) is a warning: someone deleted
/// or altered `inet pppgate` within the last hour.
const GUARD_RESTORE_RECENT_S: i64 = 3600;

/// `pppgate guard` is running and looking: its status file (`<run_dir>/guard.json`, written
/// after every check) names a live process — the same one, by its start ticks — whose last check
/// is not older than three intervals and did not fail; under systemd the unit is enabled and
/// active too. Without the guard a deleted or altered `inet pppgate` goes unnoticed until the
/// next reconcile (docs/security.md).
pub(super) fn guard(ctx: &Ctx) -> Check {
    use crate::guard::{load_status, status_path, Outcome};
    use crate::procfs::Liveness;
    let path = status_path(ctx.cfg);
    let hint = format!("systemctl status {GUARD_UNIT}; cat {}; journalctl -t pppgate | grep guard:", path.display());
    let d = &ctx.cfg.diag;
    let under_systemd = match d.systemd {
        SystemdMode::Never => false,
        SystemdMode::Always => true,
        SystemdMode::Auto => systemd_booted(),
    };
    let mut fail = Vec::new();
    let mut warn = Vec::new();
    let mut details = json!({ "status_file": path, "systemd": under_systemd });
    if under_systemd {
        let enabled = systemctl(&d.systemctl, "is-enabled", GUARD_UNIT);
        let active = systemctl(&d.systemctl, "is-active", GUARD_UNIT);
        if enabled != "enabled" || active != "active" {
            fail.push(format!("{GUARD_UNIT} is {enabled}/{active}"));
        }
        details["unit"] = json!({ "unit": GUARD_UNIT, "enabled": enabled, "active": active });
    }
    let now = crate::lock::now_unix();
    let mut ok_note = String::new();
    match load_status(&path) {
        Err(e) => fail.push(format!("unreadable guard status: {}", one_line(&e))),
        Ok(None) => fail.push(format!(
            "no guard status in {}: pppgate guard is not running, a deleted or altered inet pppgate goes unnoticed until the next reconcile",
            path.display()
        )),
        Ok(Some(s)) => {
            let boot_time = crate::procfs::boot_time().unwrap_or(0);
            let alive = matches!(crate::procfs::liveness_by_identity(s.pid, &s.process, boot_time), Ok(Liveness::Same));
            let age = now - s.last_check_at;
            details["guard"] = json!({ "pid": s.pid, "alive": alive, "started_at": s.started_at,
                "interval_s": s.interval_s, "checks": s.checks, "last_check_at": s.last_check_at,
                "last_check_age_s": age, "last_trigger": s.last_trigger, "last_outcome": s.last_outcome,
                "last_error": s.last_error, "restores": s.restores, "last_restore": s.last_restore });
            if !alive {
                fail.push(format!(
                    "pppgate guard (pid {}) is gone, its last check was {} ago: a deleted or altered inet pppgate goes unnoticed until the next reconcile",
                    s.pid,
                    ago(age)
                ));
            } else if age > 3 * s.interval_s as i64 + 2 {
                fail.push(format!(
                    "pppgate guard (pid {}) is alive but last checked {} ago (it checks every {}s): hung?",
                    s.pid,
                    ago(age),
                    s.interval_s
                ));
            }
            if s.last_outcome == Outcome::Failed {
                fail.push(format!(
                    "the guard's last check ({}, {} ago) failed: {}",
                    s.last_trigger,
                    ago(age),
                    s.last_error.as_deref().unwrap_or("?")
                ));
            }
            if let Some(r) = s.last_restore.as_ref().filter(|r| r.trigger != "start" && now - r.at < GUARD_RESTORE_RECENT_S) {
                warn.push(format!(
                    "inet pppgate was deleted or altered and restored by the guard {} ago ({}{}, {} restore(s) since it started)",
                    ago(now - r.at),
                    if r.rebuilt { "rebuilt" } else { "memberships repaired" },
                    r.since_event_ms.map(|ms| format!(" {ms} ms after the event")).unwrap_or_default(),
                    s.restores
                ));
            }
            ok_note = format!(
                "pppgate guard running (pid {}, since {} ago), last check {} ago: {}, {} restore(s)",
                s.pid,
                ago(now - s.started_at),
                ago(age),
                match s.last_outcome {
                    Outcome::Intact => "intact",
                    Outcome::Restored => "restored",
                    Outcome::Failed => "failed",
                },
                s.restores
            );
        }
    }
    if !fail.is_empty() {
        Check::new("guard", Status::Fail, fail.join("; "), hint).with(details)
    } else if !warn.is_empty() {
        Check::new("guard", Status::Warn, warn.join("; "), hint).with(details)
    } else {
        Check::new("guard", Status::Ok, ok_note, hint).with(details)
    }
}

// ---------------------------------------------------------------------------------------------
// FreeRADIUS

/// Uncommented lines of a FreeRADIUS configuration file.
fn radius_lines(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split('#').next().unwrap_or("").trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// The lines inside the first `<name> [instance] {` block (nested blocks included).
fn block<'a>(lines: &'a [String], name: &str) -> Option<&'a [String]> {
    // `name {` or `name instance {`.
    let start = lines.iter().position(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first() == Some(&name) && w.len() <= 3 && w.last().is_some_and(|b| *b == "{")
    })?;
    let mut depth = 0i32;
    for (i, l) in lines.iter().enumerate().skip(start) {
        depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
        if depth <= 0 && i > start {
            return Some(&lines[start + 1..i]);
        }
    }
    Some(&lines[start + 1..])
}

/// Files of a directory (following symlinks), sorted; a missing directory is empty.
fn dir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// What the FreeRADIUS wiring looks like (pure; tested with the shipped snippets).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RadiusWiring {
    pub checkrad: Option<String>,
    pub checkrad_is_pppgate: bool,
    pub exec_module: Option<PathBuf>,
    pub exec_problems: Vec<String>,
    /// Sites whose authorize section calls pppgate_simul, and whether after `sql`.
    pub sites: Vec<(PathBuf, bool)>,
    pub delete_stale_sessions: Option<String>,
}

pub fn radius_wiring(dir: &Path) -> std::io::Result<RadiusWiring> {
    let mut w = RadiusWiring::default();
    let conf = fs::read_to_string(dir.join("radiusd.conf"))?;
    let lines = radius_lines(&conf);
    // Top-level `name = value` assignments, for ${name} expansion (prefix, exec_prefix, sbindir).
    let vars: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .collect();
    let expand = |mut v: String| {
        for _ in 0..8 {
            if !v.contains("${") {
                break;
            }
            for (k, val) in &vars {
                v = v.replace(&format!("${{{k}}}"), val);
            }
        }
        v
    };
    w.checkrad = vars.iter().find(|(k, _)| k == "checkrad").map(|(_, v)| expand(v.clone()));
    if let Some(c) = &w.checkrad {
        let p = Path::new(c);
        let named = |p: &Path| p.file_name().is_some_and(|n| n == "pppgate");
        w.checkrad_is_pppgate = named(p) || fs::canonicalize(p).is_ok_and(|r| named(&r));
    }
    for f in dir_files(&dir.join("mods-enabled")) {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        let l = radius_lines(&text);
        if let Some(b) = block(&l, "exec").filter(|_| l.iter().any(|x| x.starts_with("exec pppgate_simul"))) {
            w.exec_module = Some(f.clone());
            let has = |k: &str, v: &str| {
                b.iter()
                    .any(|x| x.split_once('=').is_some_and(|(a, c)| a.trim() == k && c.trim().trim_matches('"') == v))
            };
            if !b.iter().any(|x| x.starts_with("program") && x.contains("radius exec simultaneous-use")) {
                w.exec_problems.push("its program is not `pppgate ... radius exec simultaneous-use`".into());
            }
            if !has("input_pairs", "request") {
                w.exec_problems.push("input_pairs is not request".into());
            }
            if !has("shell_escape", "yes") {
                w.exec_problems.push("shell_escape is not yes".into());
            }
            if !has("wait", "yes") {
                w.exec_problems.push("wait is not yes".into());
            }
        }
        if let Some(b) = block(&l, "sql") {
            if let Some(v) = b.iter().find_map(|x| {
                x.split_once('=')
                    .filter(|(a, _)| a.trim() == "delete_stale_sessions")
                    .map(|(_, v)| v.trim().to_string())
            }) {
                w.delete_stale_sessions = Some(v);
            }
        }
    }
    for f in dir_files(&dir.join("sites-enabled")) {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        let l = radius_lines(&text);
        let Some(server) = block(&l, "server").or(Some(&l[..])) else { continue };
        let Some(auth) = block(server, "authorize") else { continue };
        if let Some(at) = auth.iter().position(|x| x == "pppgate_simul") {
            let after_sql = auth[..at].iter().any(|x| x == "sql" || x == "-sql");
            w.sites.push((f.clone(), after_sql));
        }
    }
    Ok(w)
}

pub(super) fn freeradius(ctx: &Ctx) -> Check {
    let dir = &ctx.cfg.diag.freeradius_dir;
    let hint = "freeradius -XC; pppgate radius checkrad other <nas-ip> 0 <user> <session-id>".to_string();
    if !dir.join("radiusd.conf").exists() {
        return Check::new(
            "freeradius",
            Status::Warn,
            format!(
                "no FreeRADIUS configuration at {}: checkrad and the Simultaneous-Use hook are not wired on this host",
                dir.display()
            ),
            hint,
        );
    }
    let w = match radius_wiring(dir) {
        Ok(w) => w,
        Err(e) => return Check::new("freeradius", Status::Fail, format!("cannot read {}: {e}", dir.display()), hint),
    };
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    match (&w.checkrad, w.checkrad_is_pppgate) {
        (_, true) => {}
        (Some(c), false) => {
            status = Status::Fail;
            notes.push(format!(
                "radiusd.conf: checkrad = {c}, not pppgate (Simultaneous-Use cannot see this NAS's sessions)"
            ));
        }
        (None, false) => {
            status = Status::Fail;
            notes.push("radiusd.conf sets no checkrad".into());
        }
    }
    match &w.exec_module {
        None => {
            status = Status::Fail;
            notes.push("mods-enabled has no `exec pppgate_simul` module".into());
        }
        Some(f) if !w.exec_problems.is_empty() => {
            status = Status::Fail;
            notes.push(format!("{}: {}", f.display(), w.exec_problems.join(", ")));
        }
        Some(_) => {}
    }
    if w.sites.is_empty() {
        status = Status::Fail;
        notes.push("no enabled site calls pppgate_simul in authorize".into());
    } else if let Some((f, _)) = w.sites.iter().find(|(_, after)| !after) {
        status = status.max(Status::Warn);
        notes.push(format!("{}: pppgate_simul runs before sql (control:Simultaneous-Use unknown)", f.display()));
    }
    if w.delete_stale_sessions.as_deref() != Some("no") {
        status = status.max(Status::Warn);
        notes.push("sql: delete_stale_sessions is not `no` (FreeRADIUS would zap rows pppgate closes itself)".into());
    }
    let details = json!({
        "checkrad": w.checkrad,
        "exec_module": w.exec_module,
        "sites": w.sites.iter().map(|(f, a)| json!({ "file": f, "after_sql": a })).collect::<Vec<_>>(),
        "delete_stale_sessions": w.delete_stale_sessions,
    });
    let finding = if notes.is_empty() {
        "checkrad is pppgate; pppgate_simul enabled in authorize after sql; delete_stale_sessions = no".to_string()
    } else {
        notes.join("; ")
    };
    Check::new("freeradius", status, finding, hint).with(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_marker_is_found() {
        let mut so = vec![0u8; 100];
        so.extend_from_slice(b"pppgate-plugin-build: pppd=2.4.9 api=2.4 version=0.1.0;\0\0junk");
        assert_eq!(plugin_built_for(&so).as_deref(), Some("2.4.9"));
        assert_eq!(plugin_built_for(b"no marker here"), None);
    }

    #[test]
    fn option_and_xl2tpd_parsing() {
        let w = option_lines("# c\nplugin pppgate.so # loads us\n\npppgate-config \"/etc/pppgate/pppgate.toml\"\n");
        assert_eq!(w, vec![vec!["plugin", "pppgate.so"], vec!["pppgate-config", "/etc/pppgate/pppgate.toml"]]);
        let x = "[global]\n; pppoptfile = /x\n[lns default]\npppoptfile = /etc/ppp/options.xl2tpd\n\
                 [lns b]\npppoptfile=/etc/ppp/options.b ; other\n[lns c]\npppoptfile = /etc/ppp/options.xl2tpd\n";
        assert_eq!(
            xl2tpd_option_files(x),
            vec![PathBuf::from("/etc/ppp/options.xl2tpd"), PathBuf::from("/etc/ppp/options.b")]
        );
    }

    /// The shipped snippets, installed as their comments say, are recognised as wired.
    #[test]
    fn shipped_freeradius_snippets_are_wired() {
        let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/freeradius");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for s in ["mods-enabled", "sites-enabled"] {
            fs::create_dir_all(d.join(s)).unwrap();
        }
        fs::write(
            d.join("radiusd.conf"),
            format!(
                "prefix = /usr\nexec_prefix = ${{prefix}}\nsbindir = ${{exec_prefix}}/sbin\n{}\n",
                fs::read_to_string(pkg.join("radiusd-checkrad.conf")).unwrap()
            ),
        )
        .unwrap();
        fs::copy(pkg.join("mods-available/pppgate"), d.join("mods-enabled/pppgate")).unwrap();
        let site = fs::read_to_string(pkg.join("sites-snippets.conf")).unwrap();
        fs::write(d.join("sites-enabled/default"), &site).unwrap();
        let w = radius_wiring(d).unwrap();
        assert!(w.checkrad_is_pppgate, "{w:?}");
        assert!(w.exec_module.is_some() && w.exec_problems.is_empty(), "{w:?}");
        assert_eq!(w.sites.len(), 1);
        assert!(w.sites[0].1, "after sql");
        // The snippet's sql block (shown for mods-available/sql) sets delete_stale_sessions = no.
        fs::write(
            d.join("mods-enabled/sql"),
            "sql {\n\tdriver = \"rlm_sql_postgresql\"\n\tdelete_stale_sessions = no\n}\n",
        )
        .unwrap();
        assert_eq!(radius_wiring(d).unwrap().delete_stale_sessions.as_deref(), Some("no"));
        // pppgate_simul before sql.
        fs::write(d.join("sites-enabled/default"), "server default {\nauthorize {\n pppgate_simul\n sql\n}\n}\n")
            .unwrap();
        assert_eq!(radius_wiring(d).unwrap().sites, vec![(d.join("sites-enabled/default"), false)]);
        // Stock checkrad.
        fs::write(d.join("radiusd.conf"), "sbindir = /usr/sbin\ncheckrad = ${sbindir}/checkrad\n").unwrap();
        let w = radius_wiring(d).unwrap();
        assert_eq!(w.checkrad.as_deref(), Some("/usr/sbin/checkrad"));
        assert!(!w.checkrad_is_pppgate);
    }
}

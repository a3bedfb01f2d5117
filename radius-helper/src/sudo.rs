//! The sudo surface (docs/security.md, "The sudo surface"). The panel runs a few verbs as root
//! through sudo (packaging/etc/sudoers.pppgate). Whatever sudoers lets through, a caller who is
//! not root may not decide *what* root reads or writes: under sudo pppgate refuses another
//! configuration file (`--config`, `PPPGATE_CONFIG`) and every test hook (`PPPGATE_*` in the
//! environment but `PPPGATE_LOG`), before anything is read. Every invocation through sudo is
//! audited with `SUDO_USER` (refused ones too).

use std::path::Path;

use policy_core::audit;
use policy_core::config::{Config, Paths, DEFAULT_PATH};
use policy_core::error::one_line;
use policy_core::ExitCode;

use crate::verb::{Failure, Global};

/// Who ran us through sudo.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub user: String,
}

/// The caller when pppgate runs as root through sudo for someone who is not root: sudo sets
/// `SUDO_UID` and the caller cannot remove it. Not root ourselves: nothing to protect.
pub fn caller() -> Option<Caller> {
    if !nix::unistd::getuid().is_root() {
        return None;
    }
    let uid: u32 = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    let user = std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| format!("uid:{uid}"));
    Some(Caller { uid, user })
}

/// The environment variables pppgate would honour from a caller (the configuration and the test
/// hooks); `PPPGATE_LOG` only changes how much is logged.
fn overriding_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("PPPGATE_") && k != "PPPGATE_LOG")
        .collect()
}

/// Refuses a configuration or test-hook override from a caller through sudo (exit 64).
pub fn refuse_overrides(c: &Caller, g: &Global) -> Result<(), Failure> {
    let refuse = |what: String| Failure {
        code: ExitCode::Usage,
        message: format!(
            "run through sudo by {} (uid {}): {what} is not accepted; root's configuration is {DEFAULT_PATH}",
            c.user, c.uid
        ),
    };
    if g.config != Path::new(DEFAULT_PATH) {
        return Err(refuse(format!("--config {}", g.config.display())));
    }
    let env = overriding_env();
    if !env.is_empty() {
        return Err(refuse(format!("the environment's {}", env.join(", "))));
    }
    Ok(())
}

/// One audit record of an invocation through sudo (`session kill` writes its own when it runs).
pub fn audit(c: &Caller, argv: &[String], result: &Result<(), Failure>, refused: bool) {
    let args: Vec<String> = argv.iter().skip(1).cloned().collect();
    let is_kill =
        args.first().map(String::as_str) == Some("session") && args.get(1).map(String::as_str) == Some("kill");
    if is_kill && !refused {
        return;
    }
    let (outcome, code) = match result {
        Ok(()) => ("ok".to_string(), ExitCode::Ok),
        Err(f) => (f.message.clone(), f.code),
    };
    let verb: Vec<&str> = args.iter().take_while(|a| !a.starts_with('-')).take(2).map(String::as_str).collect();
    let verb = if verb.is_empty() { "pppgate".to_string() } else { verb.join(" ") };
    // Root's own configuration decides where the trail goes, never the caller's.
    let root_cfg = Config::load(Path::new(DEFAULT_PATH)).ok();
    let (path, nas) = match &root_cfg {
        Some(cfg) => (cfg.paths.audit_log.clone(), cfg.nas.identity.clone()),
        None => (Paths::default().audit_log, "unknown".to_string()),
    };
    let rec = audit::Record::new(&nas, &verb, args, outcome, code.code());
    if let Err(e) = audit::append(&path, &rec) {
        tracing::error!(sudo_user = %c.user, "cannot write the audit log: {}", one_line(&e));
    }
}

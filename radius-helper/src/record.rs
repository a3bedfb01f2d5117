//! The end of a timer job's run: its last-run record (policy-core's `runs`), written whatever
//! the outcome. Bookkeeping never changes the job's exit code.

use policy_core::config::Config;
use policy_core::error::one_line;
use policy_core::runs::Run;
use policy_core::ExitCode;

use crate::verb::CmdResult;

/// Records how the run ended.
pub fn finish(cfg: &Config, run: Run, res: &CmdResult) {
    let job = run.job();
    let (code, message) = match res {
        Ok(()) => (ExitCode::Ok, None),
        Err(f) => (f.code, Some(f.message.clone())),
    };
    if let Err(e) = run.finish(&cfg.paths.state_dir, code, message) {
        tracing::warn!(job = job.name(), "last-run record not written: {}", one_line(&e));
    }
}

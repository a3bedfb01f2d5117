//! The end of a timer job's run: its last-run record (policy-core's `runs`), written whatever
//! the outcome. Bookkeeping never changes the job's exit code.

use policy_core::config::Config;
use policy_core::error::one_line;
use policy_core::lock::Lock;
use policy_core::metrics::{self, events};
use policy_core::runs::{Job, Run};
use policy_core::ExitCode;

use crate::verb::CmdResult;

/// Records how the run ended, then writes the job's metrics textfile (when node_exporter's
/// textfile directory exists). The collector first folds the plugin's connect events into the
/// connect statistics, under its lock (taken without waiting; busy: the next run merges).
pub fn finish(cfg: &Config, run: Run, res: &CmdResult) {
    let job = run.job();
    let (code, message) = match res {
        Ok(()) => (ExitCode::Ok, None),
        Err(f) => (f.code, Some(f.message.clone())),
    };
    if let Err(e) = run.finish(&cfg.paths.state_dir, code, message) {
        tracing::warn!(job = job.name(), "last-run record not written: {}", one_line(&e));
    }
    let stats = match job {
        Job::Collector => match Lock::try_acquire(&cfg.paths.collector_lock, "collector-metrics") {
            Ok(_lock) => match events::merge(&cfg.paths.run_dir, &cfg.paths.state_dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(job = job.name(), "connect events not merged: {}", one_line(&e));
                    None
                }
            },
            Err(_) => None,
        },
        _ => None,
    };
    metrics::after_run(cfg, job, stats.as_ref());
}

//! `pppgate diag [CHECK...]`: the operator's one command (policy-core's `diag` does the checks;
//! this prints them). Exit 0 all ok, 1 warnings, 2 failures (docs/operations.md).

use clap::Args;
use policy_core::diag::{self, Options, Report, Status};
use policy_core::{Error, ExitCode};

use crate::verb::{Failure, Global};

#[derive(Args, Debug)]
pub struct DiagArgs {
    /// Only these checks (config, database, pppd, nft, sysctl, sessions, unpoliced, policy,
    /// radacct, locks, spool, runs, timers, freeradius).
    pub checks: Vec<String>,
    /// Also print the command to look deeper for checks that are ok.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

/// Runs the checks, prints them, and returns diag's own exit code.
pub fn diag(g: &Global, a: &DiagArgs) -> Result<u8, Failure> {
    let unknown = diag::unknown_checks(&a.checks);
    if !unknown.is_empty() {
        return Err(Failure {
            code: ExitCode::Usage,
            message: format!("unknown check(s): {} (known: {})", unknown.join(", "), diag::CHECKS.join(", ")),
        });
    }
    let report = diag::run(&g.config, &Options { only: a.checks.clone() });
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure::from(Error::invalid(
                "json",
                "",
                e.to_string()
            )))?
        );
    } else {
        print_human(&report, a.verbose);
    }
    Ok(report.exit_code())
}

fn print_human(r: &Report, verbose: bool) {
    let width = r.checks.iter().map(|c| c.id.len()).max().unwrap_or(6).max(6);
    println!(
        "pppgate {} diag — {} — {}",
        r.pppgate_version,
        r.nas_identity.as_deref().unwrap_or("(no configuration)"),
        r.generated_at
    );
    for c in &r.checks {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        println!("{status:<5} {:<width$}  {}", c.id, c.finding);
        if verbose || c.status != Status::Ok {
            println!("{:<5} {:<width$}  → {}", "", "", c.hint);
        }
    }
    if !r.not_checked.is_empty() {
        println!("not checked (they need the configuration): {}", r.not_checked.join(", "));
    }
    println!("{}: {} ok, {} warn, {} fail", r.status.name().to_uppercase(), r.counts.ok, r.counts.warn, r.counts.fail);
}

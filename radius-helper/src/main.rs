//! `pppgate`: one multi-call executable for every admin, timer and FreeRADIUS-facing verb.
//! Invoked as `vpn-policy-apply`, `vpn-accounting-collector`, `vpn-session-kill` or
//! `vpn-stale-session-janitor` (the canonical names, R707) it behaves as the matching verb.

#![forbid(unsafe_code)]

mod cli;
mod collect;
mod diag_cmd;
mod guard_cmd;
mod policy_cmd;
mod record;
mod sessions;
mod sudo;
mod syslog;
mod test_hook;
mod verb;
mod wg_cmd;

fn main() -> std::process::ExitCode {
    cli::main()
}

//! Command line: clap derive, shared option groups, `--json` wherever a panel reads output.

use std::process::ExitCode as ProcExit;

use clap::{Parser, Subcommand};
use policy_core::config::Config;
use policy_core::error::one_line;
use policy_core::{db, Error, ExitCode};

use crate::policy_cmd;
use crate::verb::{load_config, CmdResult, Failure, Global};

#[derive(Parser, Debug)]
#[command(name = "pppgate", version, about = "Per-user policy and accounting for xl2tpd/pppd concentrators")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Database schema.
    #[command(subcommand)]
    Db(DbCmd),
    /// Applies policy to live sessions (vpn-policy-apply).
    Apply(policy_cmd::ApplyArgs),
    /// Reconciles all kernel state with SQL and the live sessions.
    Reconcile(policy_cmd::ReconcileArgs),
    /// Per-user routes (SQL is the truth; live sessions are updated at once).
    #[command(subcommand)]
    Routes(policy_cmd::RoutesCmd),
    /// Policy routing rules.
    #[command(subcommand)]
    Pbr(policy_cmd::PbrCmd),
    /// vpn_connections policy facts (the panel's changes), applied at once.
    #[command(subcommand)]
    Connection(policy_cmd::ConnectionCmd),
    /// Forwarding sysctls.
    #[command(subcommand)]
    Sysctl(policy_cmd::SysctlCmd),
    /// Closes this NAS's stale radacct / pppgate_sessions rows (no VALID mapping behind them).
    Janitor(crate::sessions::JanitorArgs),
    /// FreeRADIUS hooks: checkrad and rlm_exec (their own exit codes).
    #[command(subcommand)]
    Radius(crate::sessions::RadiusCmd),
    /// Live sessions: kill (admin hardcut), list, show.
    #[command(subcommand)]
    Session(crate::sessions::SessionCmd),
    /// Accounting collector: read session counters, spool, commit to SQL (vpn-accounting-collector).
    Collect,
    /// ip-down's final accounting flush for one session.
    FinalFlush(crate::collect::FinalFlushArgs),
    /// Checks the whole box and says what is wrong (exit 0 ok, 1 warnings, 2 failures).
    Diag(crate::diag_cmd::DiagArgs),
    /// Watches the nft table inet pppgate and restores it at once when it is deleted or altered
    /// (pppgate-guard.service).
    Guard(crate::guard_cmd::GuardArgs),
    /// Prints the Prometheus metrics (text exposition format), read now; changes nothing.
    Metrics,
    /// Prints the shell completion script for SHELL (the package installs bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// WireGuard for tenants' routers: tenants, routers, configs, server interface, status.
    #[command(subcommand)]
    Wg(crate::wg_cmd::WgCmd),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validates the configuration; prints one line per problem.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum DbCmd {
    /// Creates or upgrades the schema (idempotent).
    Migrate,
    /// Shows the schema version.
    Status,
}

pub fn main() -> ProcExit {
    let argv: Vec<String> = std::env::args().collect();
    let argv = crate_multicall(argv);
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // FreeRADIUS reads checkrad/rlm_exec codes: a usage error there is "error"/"fail".
            let code = if argv.iter().skip(1).any(|a| a == "radius") {
                crate::sessions::RADIUS_FAIL
            } else {
                ExitCode::Usage.code()
            };
            return ProcExit::from(if usage { code } else { 0 });
        }
    };
    init_logging();
    if let Cmd::Radius(r) = &cli.cmd {
        return ProcExit::from(crate::sessions::radius(&cli.global, r));
    }
    let sudo = crate::sudo::caller();
    if let Some(caller) = &sudo {
        if let Err(f) = crate::sudo::refuse_overrides(caller, &cli.global) {
            let result = Err(f);
            crate::sudo::audit(caller, &argv, &result, true);
            let Err(f) = result else { unreachable!() };
            eprintln!("pppgate: {}", f.message);
            return ProcExit::from(f.code.code());
        }
    }
    if let Cmd::Diag(a) = &cli.cmd {
        return match crate::diag_cmd::diag(&cli.global, a) {
            Ok(code) => ProcExit::from(code),
            Err(f) => {
                eprintln!("pppgate: {}", f.message);
                ProcExit::from(f.code.code())
            }
        };
    }
    let result = run(&cli);
    if let Some(caller) = &sudo {
        crate::sudo::audit(caller, &argv, &result, false);
    }
    match result {
        Ok(()) => ProcExit::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("pppgate: {}", f.message);
            }
            ProcExit::from(f.code.code())
        }
    }
}

/// Maps the canonical program names onto verbs (R707).
fn crate_multicall(mut argv: Vec<String>) -> Vec<String> {
    let name = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    let verb: Option<&[&str]> = match name.as_str() {
        "vpn-policy-apply" => Some(&["apply"]),
        "vpn-accounting-collector" => Some(&["collect"]),
        "vpn-session-kill" => Some(&["session", "kill"]),
        "vpn-stale-session-janitor" => Some(&["janitor"]),
        // radiusd.conf `checkrad = ` execs with argv[0] "checkrad".
        "checkrad" => Some(&["radius", "checkrad"]),
        _ => None,
    };
    if let Some(v) = verb {
        let rest = argv.split_off(1);
        argv = vec!["pppgate".to_string()];
        argv.extend(v.iter().map(|s| s.to_string()));
        argv.extend(rest);
    }
    argv
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PPPGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if crate::syslog::stderr_is_dev_null() {
        // FreeRADIUS runs hooks with stderr on /dev/null (unless debugging): log to syslog.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(crate::syslog::Syslog)
            .with_target(false)
            .with_ansi(false)
            .without_time()
            .try_init();
        return;
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

fn run(cli: &Cli) -> CmdResult {
    match &cli.cmd {
        Cmd::Apply(a) => policy_cmd::apply_cmd(&cli.global, a),
        Cmd::Reconcile(a) => policy_cmd::reconcile_cmd(&cli.global, a),
        Cmd::Routes(c) => policy_cmd::routes_cmd(&cli.global, c),
        Cmd::Pbr(c) => policy_cmd::pbr_cmd(&cli.global, c),
        Cmd::Connection(c) => policy_cmd::connection_cmd(&cli.global, c),
        Cmd::Sysctl(c) => policy_cmd::sysctl_cmd(&cli.global, c),
        Cmd::Config(ConfigCmd::Check) => config_check(&cli.global),
        Cmd::Janitor(a) => crate::sessions::janitor(&cli.global, a),
        Cmd::Radius(_) | Cmd::Diag(_) => unreachable!("handled in main"),
        Cmd::Session(c) => crate::sessions::session(&cli.global, c),
        Cmd::Collect => crate::collect::collect(&cli.global),
        Cmd::Metrics => crate::diag_cmd::metrics(&cli.global),
        Cmd::Guard(a) => crate::guard_cmd::guard(&cli.global, a),
        Cmd::FinalFlush(a) => crate::collect::final_flush(&cli.global, a),
        Cmd::Wg(c) => crate::wg_cmd::wg(&cli.global, c),
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "pppgate", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Cmd::Db(DbCmd::Migrate) => {
            let cfg = load_config(&cli.global)?;
            let mut client = db::connect(&cfg.database)?;
            let applied = db::migrate::migrate(&mut client)?;
            if cli.global.json {
                println!("{}", serde_json::json!({ "applied": applied, "version": db::migrate::LATEST }));
            } else if applied.is_empty() {
                println!("schema is at version {}; nothing to do", db::migrate::LATEST);
            } else {
                for v in &applied {
                    let m = db::migrate::MIGRATIONS.iter().find(|m| m.version == *v).expect("known");
                    println!("applied migration {v}: {}", m.description);
                }
            }
            Ok(())
        }
        Cmd::Db(DbCmd::Status) => {
            let cfg = load_config(&cli.global)?;
            let mut client = db::connect(&cfg.database)?;
            let st = db::migrate::status(&mut client)?;
            if cli.global.json {
                println!("{}", serde_json::to_string_pretty(&st).expect("serializable"));
            } else {
                println!("schema version {} (this pppgate: {})", st.version, st.latest);
                for a in &st.applied {
                    println!("  {} {} ({})", a.version, a.description, a.applied_at);
                }
                for (t, present) in &st.freeradius_tables {
                    println!("  freeradius table {t}: {}", if *present { "present" } else { "MISSING" });
                }
            }
            if st.version < st.latest {
                return Err(Error::SchemaTooOld { found: st.version, needed: st.latest }.into());
            }
            Ok(())
        }
    }
}

fn config_check(g: &Global) -> CmdResult {
    match Config::load(&g.config) {
        Ok(c) => {
            if g.json {
                println!("{}", serde_json::json!({ "ok": true, "path": c.source }));
            } else {
                println!("{}: ok", c.source.display());
            }
            Ok(())
        }
        Err(Error::Config { path, problems }) => {
            if g.json {
                println!("{}", serde_json::json!({ "ok": false, "path": path, "problems": problems }));
            } else {
                for p in &problems {
                    println!("{}: {p}", path.display());
                }
            }
            Err(Failure { code: ExitCode::Config, message: String::new() })
        }
        Err(e) => Err(Failure { code: ExitCode::Config, message: one_line(&e) }),
    }
}

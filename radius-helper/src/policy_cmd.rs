//! `pppgate apply`, `reconcile`, `routes`, `pbr`, `connection`, `sysctl`: the policy engine's
//! verbs. Every change goes through SQL (the truth) and is applied at once to live sessions under
//! the single-writer lock; the panel never calls nft/tc/ip itself.

use std::net::Ipv4Addr;

use clap::{Args, Subcommand};
use policy_core::config::Config;
use policy_core::kernel::lookup::route_get;
use policy_core::kernel::{Backends, Netlink, Sysctl};
use policy_core::lock::{self, Lock};
use policy_core::policy::apply::{self, Report, Target};
use policy_core::runs::{Job, Run};
use policy_core::{db, input, mapping, rt_tables, Error, ExitCode};
use serde_json::json;

use crate::test_hook;
use crate::verb::{load_config, CmdResult, Failure, Global};

/// Parses an id the way every verb must: a plain positive decimal integer up to i64::MAX.
pub fn parse_id(what: &'static str, s: &str) -> Result<i64, Failure> {
    policy_core::ids::parse_id(what, s).map_err(Failure::from)
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Apply the policy of one vpn_connection to its live sessions.
    #[arg(long, value_name = "ID", allow_hyphen_values = true, conflicts_with_all = ["customer_id", "reconcile_all"])]
    pub connection_id: Option<String>,
    /// Apply the policy of every connection of a customer.
    #[arg(long, value_name = "ID", allow_hyphen_values = true, conflicts_with = "reconcile_all")]
    pub customer_id: Option<String>,
    /// Reconcile everything: live sessions get their policy, state of gone sessions is removed.
    #[arg(long)]
    pub reconcile_all: bool,
    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Args, Debug, Clone)]
pub struct RunOpts {
    /// Print the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Admin override: end a lock holder older than the TTL and take the lock (logged as alert).
    #[arg(long)]
    pub break_stale_lock: bool,
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Boot mode (after service start): also ensure sysctls; never fails the boot on SQL down.
    #[arg(long)]
    pub boot: bool,
    #[command(flatten)]
    pub run: RunOpts,
}

/// Takes the apply lock (exit 75 when busy, reporting a holder older than the TTL).
pub fn take_lock(cfg: &Config, what: &str, run: &RunOpts) -> Result<Lock, Failure> {
    if run.break_stale_lock {
        let (l, outcome) = match lock::break_stale(&cfg.paths.apply_lock, what, cfg.policy.lock_ttl) {
            Ok(x) => x,
            Err(Error::Locked { path, holder }) => {
                let who = holder
                    .map(|h| format!(" (held by pid {} '{}' for {}s)", h.pid, h.what, h.age().as_secs()))
                    .unwrap_or_default();
                return Err(Failure {
                    code: ExitCode::Locked,
                    message: format!(
                        "lock {} is busy{who}; the holder is not older than the TTL of {}s, so it is not broken",
                        path.display(),
                        cfg.policy.lock_ttl.as_secs()
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if let lock::BreakOutcome::Broken { holder } = outcome {
            stale_lock_entry(cfg, &holder, true);
            eprintln!(
                "pppgate: ALERT: broke stale apply lock held by pid {} ({}) since {}",
                holder.pid, holder.what, holder.since
            );
        }
        return Ok(l);
    }
    match Lock::try_acquire(&cfg.paths.apply_lock, what) {
        Ok(l) => Ok(l),
        Err(Error::Locked { path, holder }) => {
            let mut msg = format!("lock {} is busy", path.display());
            if let Some(h) = &holder {
                msg.push_str(&format!(" (held by pid {} '{}' for {}s)", h.pid, h.what, h.age().as_secs()));
                if h.age() > cfg.policy.lock_ttl {
                    stale_lock_entry(cfg, h, false);
                    msg.push_str(&format!(
                        "; the holder is older than the TTL of {}s (stale?) — use --break-stale-lock to end it",
                        cfg.policy.lock_ttl.as_secs()
                    ));
                }
            }
            Err(Failure { code: ExitCode::Locked, message: msg })
        }
        Err(e) => Err(e.into()),
    }
}

/// The journal entry for a stale apply lock holder (found busy, or broken).
fn stale_lock_entry(cfg: &Config, h: &lock::Holder, broken: bool) {
    let what = if broken { "broken" } else { "found" };
    policy_core::journal::send(
        &policy_core::journal::Entry::new(
            policy_core::journal::Event::LockStale,
            format!(
                "stale apply lock {what}: {} held by pid {} ({}) for {} s, TTL {} s",
                cfg.paths.apply_lock.display(),
                h.pid,
                h.what,
                h.age().as_secs(),
                cfg.policy.lock_ttl.as_secs()
            ),
        )
        .field("lock", cfg.paths.apply_lock.display())
        .field("holder_pid", h.pid)
        .field("holder", &h.what)
        .field("held_s", h.age().as_secs())
        .field("ttl_s", cfg.policy.lock_ttl.as_secs())
        .field("broken", broken),
    );
}

fn print_report(g: &Global, r: &Report, dry_run: bool) {
    if g.json {
        println!("{}", serde_json::to_string_pretty(r).expect("serializable"));
        return;
    }
    for m in &r.malformed {
        println!("malformed mapping (ignored, not a session): {m}");
    }
    for id in &r.not_live {
        println!("connection {id}: no live session");
    }
    for m in &r.removed_mappings {
        println!(
            "{}mapping {} (connection {}, pppd {}) of a gone pppd: {}",
            if dry_run { "would remove " } else { "removed " },
            m.ppp_if,
            m.connection_id,
            m.pppd_pid,
            m.gone.reason()
        );
    }
    for e in &r.mapping_errors {
        println!("mapping of a gone pppd not removed: {e}");
    }
    for s in &r.outcome.sessions {
        let rate = |v: Option<u32>| v.map(|k| format!("{k}kbit")).unwrap_or_else(|| "unlimited".into());
        println!(
            "{} {} connection {}: {} ({:?}) down {} up {} routes {} pbr [{}]",
            s.ifname,
            s.client_ip,
            s.connection_id,
            s.state,
            s.reason,
            rate(s.down_kbit),
            rate(s.up_kbit),
            s.routes,
            s.pbr.join(",")
        );
    }
    // Without SQL only the gone half ran: "nothing to do" would claim a converged box.
    if r.outcome.steps.is_empty() && r.sql_unavailable.is_none() {
        println!("nothing to do");
    }
    for step in &r.outcome.steps {
        println!("{}{step}", if dry_run { "would: " } else { "did: " });
    }
    for t in &r.outcome.terminated {
        println!("terminated session on {t}");
    }
    // One line for a database that is down (the boot and timer units log it each run).
    if let Some(e) = &r.sql_unavailable {
        println!("not converged: SQL unavailable ({e}); only state of sessions that no longer exist was removed");
    } else if !r.converged {
        println!("{}", if dry_run { "not converged: the changes above are pending" } else { "not converged" });
    }
}

pub fn apply_cmd(g: &Global, a: &ApplyArgs) -> CmdResult {
    let target = match (&a.connection_id, &a.customer_id, a.reconcile_all) {
        (Some(id), None, false) => Some(Target::Connection(parse_id("connection id", id)?)),
        (None, Some(id), false) => Some(Target::Customer(parse_id("customer id", id)?)),
        (None, None, true) => None,
        _ => {
            return Err(Failure {
                code: ExitCode::Usage,
                message: "give one of --connection-id, --customer-id, --reconcile-all".into(),
            })
        }
    };
    let cfg = load_config(g)?;
    match target {
        Some(t) => {
            // Backends first, so they are dropped after the lock: closing the nfnetlink socket
            // after a commit waits for an RCU grace period (8-16 ms), which need not hold the lock.
            let mut b = test_hook::kernel(&cfg.paths.sessions_dir)?;
            let _lock = if a.run.dry_run { None } else { Some(take_lock(&cfg, "apply", &a.run)?) };
            let r = apply::apply(&cfg, &mut b, &t, a.run.dry_run)?;
            print_report(g, &r, a.run.dry_run);
            Ok(())
        }
        None => reconcile_cmd(g, &ReconcileArgs { boot: false, run: a.run.clone() }),
    }
}

pub fn reconcile_cmd(g: &Global, a: &ReconcileArgs) -> CmdResult {
    let cfg = load_config(g)?;
    if a.run.dry_run {
        return reconcile_run(g, a, &cfg, None);
    }
    let mut run = Run::start(Job::Reconcile);
    let res = reconcile_run(g, a, &cfg, Some(&mut run));
    crate::record::finish(&cfg, run, &res);
    res
}

fn reconcile_run(g: &Global, a: &ReconcileArgs, cfg: &Config, mut run: Option<&mut Run>) -> CmdResult {
    let mut b = test_hook::kernel(&cfg.paths.sessions_dir)?;
    let t_lock = std::time::Instant::now();
    let lock = if a.run.dry_run { None } else { Some(take_lock(cfg, "reconcile", &a.run)?) };
    if let Some(r) = run.as_deref_mut() {
        r.lock_taken(t_lock.elapsed());
    }
    if a.boot && !a.run.dry_run {
        // Sessions interfaces inherit conf.default; make forwarding right before anything else.
        b.sysctl().ensure(&[])?;
    }
    let r = apply::reconcile(cfg, &mut b, a.run.dry_run)?;
    drop(lock);
    if let Some(run) = run {
        run.lock_released();
        let t = &r.outcome.timings;
        for (phase, us) in [
            ("scan", t.scan_us),
            ("sql", t.sql_us),
            ("read", t.read_us),
            ("plan", t.plan_us),
            ("apply", t.apply_us),
            ("verify", t.verify_us),
        ] {
            run.phase_us(phase, us);
        }
        run.figure("sessions", r.outcome.sessions.len() as u64);
        run.figure("changes", r.outcome.steps.len() as u64);
        run.figure("terminated", r.outcome.terminated.len() as u64);
        run.figure("malformed_mappings", r.malformed.len() as u64);
        run.figure("stale_mappings_removed", r.removed_mappings.len() as u64);
        if let Some(e) = &r.sql_unavailable {
            run.note(format!("database unavailable: {e}"));
        }
    }
    print_report(g, &r, a.run.dry_run);
    reconcile_exit(&r, a.boot)
}

/// Reconcile's exit code says whether it converged (R811, docs/operations.md "Reconcile's exit
/// codes"): 0 converged; 69 SQL unreachable, so only the state of gone sessions was removed (0
/// with `--boot`, which must not fail the boot; the report still says `converged: false`); 70 a
/// mapping file of a gone pppd could not be removed. Malformed mapping files are reported and
/// logged but leave a converged run at 0: they are no sessions and their state was removed.
/// Failures before or during the kernel transaction exit through the error (65 bad SQL facts,
/// 70 apply/verify failed, 75 lock busy, 78 configuration).
fn reconcile_exit(r: &Report, boot: bool) -> CmdResult {
    if r.sql_unavailable.is_some() {
        return if boot { Ok(()) } else { Err(Failure { code: ExitCode::SqlUnavailable, message: String::new() }) };
    }
    if !r.mapping_errors.is_empty() {
        return Err(Failure {
            code: ExitCode::Internal,
            message: format!("not converged: {} mapping file(s) of gone pppds not removed", r.mapping_errors.len()),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// routes
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum RoutesCmd {
    /// Adds a per-user route (stored in SQL, applied at once to a live session).
    Add(RouteAddArgs),
    /// Deletes a per-user route.
    Del(RouteDelArgs),
    /// Lists routes.
    List {
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        connection_id: Option<String>,
    },
    /// Applies routes to live sessions (one connection, or all).
    Apply {
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        connection_id: Option<String>,
        #[command(flatten)]
        run: RunOpts,
    },
}

#[derive(Args, Debug)]
pub struct RouteAddArgs {
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub connection_id: String,
    /// Destination network behind the client (CIDR).
    #[arg(long)]
    pub dst: String,
    /// Next hop; default and only reachable choice on a point-to-point link: the peer.
    #[arg(long)]
    pub gateway: Option<String>,
    /// Routing table (number or name from rt_tables); default main.
    #[arg(long)]
    pub table: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub metric: Option<String>,
    /// Store only; do not apply to a live session now.
    #[arg(long)]
    pub no_apply: bool,
}

#[derive(Args, Debug)]
pub struct RouteDelArgs {
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub connection_id: String,
    #[arg(long)]
    pub dst: String,
    #[arg(long)]
    pub table: Option<String>,
    #[arg(long)]
    pub no_apply: bool,
}

fn table_arg(cfg: &Config, t: Option<&str>) -> Result<Option<u32>, Failure> {
    match t {
        None => Ok(None),
        Some(t) => Ok(input::route_table(t, rt_tables::resolve(&cfg.paths.rt_tables, t)?)?),
    }
}

/// Applies the policy of one connection now when it has a live session (lock busy: exit 75,
/// the SQL change stays and the next apply/reconcile picks it up).
/// Applies one connection's policy at once. The report is printed as text, and with `--json`
/// only when it is the verb's whole output (`json_report`: `connection set`, `routes apply`,
/// `pbr add`/`del`; `routes add`/`del` print their own JSON first).
fn apply_now(g: &Global, cfg: &Config, conn: i64, run: &RunOpts, json_report: bool) -> CmdResult {
    let mut b = test_hook::kernel(&cfg.paths.sessions_dir)?;
    let _lock = if run.dry_run { None } else { Some(take_lock(cfg, "apply", run)?) };
    let r = apply::apply(cfg, &mut b, &Target::Connection(conn), run.dry_run)?;
    if !g.json || json_report {
        print_report(g, &r, run.dry_run);
    }
    Ok(())
}

pub fn routes_cmd(g: &Global, c: &RoutesCmd) -> CmdResult {
    let cfg = load_config(g)?;
    match c {
        RoutesCmd::Add(a) => {
            let conn = parse_id("connection id", &a.connection_id)?;
            let dst = input::parse_route_dst(&a.dst)?;
            let gw = a.gateway.as_deref().map(|s| input::parse_ipv4("gateway", s)).transpose()?;
            let table = table_arg(&cfg, a.table.as_deref())?;
            let metric = a.metric.as_deref().map(|m| input::parse_u32("metric", m, input::MAX_METRIC)).transpose()?;
            let mut client = db::connect(&cfg.database)?;
            if !db::connections::exists(&mut client, conn)? {
                return Err(Error::NotFound { what: "connection", id: conn.to_string() }.into());
            }
            if let Some(gw) = gw {
                check_gateway_reach(&cfg, conn, gw)?;
            }
            let others = db::routes::other_owners(&mut client, conn, dst, table)?;
            if let Some(other) = others.first() {
                return Err(Error::invalid(
                    "route",
                    dst.to_string(),
                    format!("connection {other} already routes this destination in this table"),
                )
                .into());
            }
            let changed = db::routes::add(&mut client, conn, dst, gw, table, metric)?;
            drop(client);
            if g.json {
                println!("{}", json!({"connection_id": conn, "dst": dst.to_string(), "changed": changed}));
            } else {
                println!("route {dst} for connection {conn}: {}", if changed { "stored" } else { "already present" });
            }
            if !a.no_apply {
                apply_now(g, &cfg, conn, &RunOpts { dry_run: false, break_stale_lock: false }, false)?;
            }
            Ok(())
        }
        RoutesCmd::Del(a) => {
            let conn = parse_id("connection id", &a.connection_id)?;
            let dst = input::parse_net(&a.dst)?;
            let table = table_arg(&cfg, a.table.as_deref())?;
            let mut client = db::connect(&cfg.database)?;
            let removed = db::routes::del(&mut client, conn, dst, table)?;
            drop(client);
            if g.json {
                println!("{}", json!({"connection_id": conn, "dst": dst.to_string(), "removed": removed}));
            } else {
                println!("route {dst} for connection {conn}: {}", if removed { "removed" } else { "was not there" });
            }
            if !a.no_apply {
                apply_now(g, &cfg, conn, &RunOpts { dry_run: false, break_stale_lock: false }, false)?;
            }
            Ok(())
        }
        RoutesCmd::List { connection_id } => {
            let conn = connection_id.as_deref().map(|s| parse_id("connection id", s)).transpose()?;
            let mut client = db::connect(&cfg.database)?;
            let rows = db::routes::list(&mut client, conn)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("serializable"));
            } else {
                for r in rows {
                    let mut line = format!("connection {} {}", r.connection_id, r.destination);
                    match r.gateway {
                        Some(gw) => line.push_str(&format!(" via {gw}")),
                        None => line.push_str(" via peer"),
                    }
                    if let Some(t) = r.table {
                        line.push_str(&format!(" table {t}"));
                    }
                    if let Some(m) = r.metric {
                        line.push_str(&format!(" metric {m}"));
                    }
                    println!("{line}");
                }
            }
            Ok(())
        }
        RoutesCmd::Apply { connection_id, run } => match connection_id {
            Some(id) => apply_now(g, &cfg, parse_id("connection id", id)?, run, true),
            None => reconcile_cmd(g, &ReconcileArgs { boot: false, run: run.clone() }),
        },
    }
}

/// A gateway on a point-to-point link is reachable only if it is the peer: the connection's live
/// session address.
fn check_gateway_reach(cfg: &Config, conn: i64, gw: Ipv4Addr) -> Result<(), Failure> {
    let (valid, _) = mapping::valid_sessions(&cfg.paths.sessions_dir)?;
    let peers: Vec<Ipv4Addr> = valid.iter().filter(|m| m.connection_id == conn).map(|m| m.client_ip).collect();
    if peers.contains(&gw) {
        return Ok(());
    }
    let why = if peers.is_empty() {
        "the connection has no live session whose peer it is; omit --gateway to route via the peer".to_string()
    } else {
        format!("not reachable over the session's point-to-point link (peer {})", peers[0])
    };
    Err(Error::invalid("gateway", gw.to_string(), why).into())
}

// ---------------------------------------------------------------------------------------------
// pbr
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum PbrCmd {
    /// Adds (or changes) a named policy-routing rule and applies it.
    Add(PbrAddArgs),
    /// Deletes a rule and removes it from the kernel.
    Del {
        name: String,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Lists rules.
    List,
    /// Shows the kernel's route lookup for traffic from an address (like `ip route get`).
    Check {
        /// Source address (a client or an address of a PBR subnet).
        ip: String,
        /// Destination to look up.
        #[arg(long, default_value = "192.0.2.200")]
        dst: String,
        /// Interface the traffic arrives on (default: the live session's interface for the address).
        #[arg(long)]
        iif: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct PbrAddArgs {
    /// Rule name ([A-Za-z0-9_.-], up to 64).
    pub name: String,
    /// Source subnet.
    #[arg(long, conflicts_with = "connection_id")]
    pub from: Option<String>,
    /// Or: the live sessions of one connection.
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub connection_id: Option<String>,
    /// Routing table (number or rt_tables name; not main/local/default).
    #[arg(long)]
    pub table: String,
    /// Next hop of the table's default route.
    #[arg(long)]
    pub via: String,
    /// Interface of the next hop.
    #[arg(long)]
    pub dev: String,
    /// `ip rule` priority (1..32765).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: String,
    #[command(flatten)]
    pub run: RunOpts,
}

pub fn pbr_cmd(g: &Global, c: &PbrCmd) -> CmdResult {
    let cfg = load_config(g)?;
    match c {
        PbrCmd::Add(a) => {
            input::check_rule_name(&a.name)?;
            let source = a.from.as_deref().map(input::parse_net).transpose()?;
            let connection_id = a.connection_id.as_deref().map(|s| parse_id("connection id", s)).transpose()?;
            if source.is_none() == connection_id.is_none() {
                return Err(Failure {
                    code: ExitCode::Usage,
                    message: "give exactly one of --from or --connection-id".into(),
                });
            }
            let table = input::pbr_table(&a.table, rt_tables::resolve(&cfg.paths.rt_tables, &a.table)?)?;
            let via = input::parse_ipv4("next hop", &a.via)?;
            input::check_ifname(&a.dev)?;
            let priority = input::parse_priority(&a.priority)?;
            let mut client = db::connect(&cfg.database)?;
            if let Some(c) = connection_id {
                if !db::connections::exists(&mut client, c)? {
                    return Err(Error::NotFound { what: "connection", id: c.to_string() }.into());
                }
            }
            let changed = db::pbr::upsert(
                &mut client,
                &db::pbr::NewPbr {
                    name: a.name.clone(),
                    source,
                    connection_id,
                    table,
                    via,
                    dev: a.dev.clone(),
                    priority,
                },
            )?;
            drop(client);
            if !g.json {
                println!("pbr rule {}: {}", a.name, if changed { "stored" } else { "unchanged" });
            }
            match connection_id {
                Some(c) => apply_now(g, &cfg, c, &a.run, true),
                None => reconcile_cmd(g, &ReconcileArgs { boot: false, run: a.run.clone() }),
            }
        }
        PbrCmd::Del { name, run } => {
            let mut client = db::connect(&cfg.database)?;
            let gone = db::pbr::delete(&mut client, name)?;
            drop(client);
            let Some(row) = gone else {
                if g.json {
                    println!("{}", json!({ "name": name, "removed": false }));
                } else {
                    println!("pbr rule {name}: was not there");
                }
                return Ok(());
            };
            if !g.json {
                println!("pbr rule {name}: removed");
            }
            match row.connection_id {
                Some(c) => apply_now(g, &cfg, c, run, true),
                None => reconcile_cmd(g, &ReconcileArgs { boot: false, run: run.clone() }),
            }
        }
        PbrCmd::List => {
            let mut client = db::connect(&cfg.database)?;
            let rows = db::pbr::list(&mut client)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&rows).expect("serializable"));
            } else {
                for r in rows {
                    let from = match (r.source, r.connection_id) {
                        (Some(s), _) => s.to_string(),
                        (None, Some(c)) => format!("connection {c}"),
                        _ => "?".into(),
                    };
                    println!(
                        "{} from {from} table {} via {} dev {} priority {}",
                        r.name, r.table, r.via, r.dev, r.priority
                    );
                }
            }
            Ok(())
        }
        PbrCmd::Check { ip, dst, iif } => {
            let src = input::parse_ipv4("address", ip)?;
            let dst = input::parse_ipv4("destination", dst)?;
            let iif = match iif {
                Some(i) => Some(i.clone()),
                None => {
                    let (valid, _) = mapping::valid_sessions(&cfg.paths.sessions_dir)?;
                    valid.into_iter().find(|m| m.client_ip == src).map(|m| m.ppp_if)
                }
            };
            let r = route_get(dst, Some(src), iif.as_deref())?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
            } else {
                println!("{r}");
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// connection (the panel's SQL changes, applied at once) and sysctl
// ---------------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum ConnectionCmd {
    /// Creates a vpn_connection (admin and lab use; panels usually write SQL themselves).
    Add(ConnAddArgs),
    /// Changes policy facts of a connection and applies them to its live session at once.
    Set(ConnSetArgs),
    /// Shows a connection's facts and the policy they give.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct ConnAddArgs {
    #[arg(long)]
    pub login: String,
    #[arg(long, default_value = "CLAIMED")]
    pub status: String,
    #[arg(long, value_name = "ID", allow_hyphen_values = true)]
    pub customer_id: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub down_kbit: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub up_kbit: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConnSetArgs {
    #[arg(allow_hyphen_values = true)]
    pub id: String,
    /// Download rate in kbit/s, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub down_kbit: Option<String>,
    /// Upload rate in kbit/s, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub up_kbit: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    /// Quota in bytes per period, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub quota_bytes: Option<String>,
    /// Expiry as Unix seconds, or `none`.
    #[arg(long, allow_hyphen_values = true)]
    pub expires_at: Option<String>,
    #[arg(long, conflicts_with = "unblock")]
    pub block: bool,
    #[arg(long)]
    pub unblock: bool,
    #[command(flatten)]
    pub run: RunOpts,
}

pub fn connection_cmd(g: &Global, c: &ConnectionCmd) -> CmdResult {
    let cfg = load_config(g)?;
    let max_rate = cfg.policy.max_rate_kbit;
    match c {
        ConnectionCmd::Add(a) => {
            input::check_login(&a.login)?;
            let new = db::connections::NewConnection {
                login: a.login.clone(),
                status: input::parse_status(&a.status)?,
                customer_id: a.customer_id.as_deref().map(|s| parse_id("customer id", s)).transpose()?,
                rate_down_kbit: a.down_kbit.as_deref().map(|s| input::parse_rate(s, max_rate)).transpose()?.flatten(),
                rate_up_kbit: a.up_kbit.as_deref().map(|s| input::parse_rate(s, max_rate)).transpose()?.flatten(),
            };
            let mut client = db::connect(&cfg.database)?;
            let id = db::connections::insert(&mut client, &new)?;
            if g.json {
                // What FreeRADIUS receives and stores for this login (radcheck.username).
                let user_name = policy_core::radius::sqlname::pppd_user_name(a.login.as_bytes());
                println!(
                    "{}",
                    json!({
                        "id": id,
                        "radius_user_name": String::from_utf8_lossy(&user_name),
                        "radcheck_username": policy_core::radius::sqlname::sql_username(a.login.as_bytes()),
                    })
                );
            } else {
                println!("{id}");
            }
            Ok(())
        }
        ConnectionCmd::Set(a) => {
            let id = parse_id("connection id", &a.id)?;
            let change = db::connections::ConnectionChange {
                rate_down_kbit: a.down_kbit.as_deref().map(|s| input::parse_rate(s, max_rate)).transpose()?,
                rate_up_kbit: a.up_kbit.as_deref().map(|s| input::parse_rate(s, max_rate)).transpose()?,
                status: a.status.as_deref().map(input::parse_status).transpose()?,
                quota_bytes: a.quota_bytes.as_deref().map(input::parse_quota).transpose()?,
                expires_at: a.expires_at.as_deref().map(input::parse_expiry).transpose()?,
                manual_block: (a.block || a.unblock).then_some(a.block),
            };
            if change.is_empty() {
                return Err(Failure { code: ExitCode::Usage, message: "nothing to change".into() });
            }
            let mut client = db::connect(&cfg.database)?;
            let found = db::connections::update(&mut client, id, &change)?;
            drop(client);
            if !found {
                return Err(Error::NotFound { what: "connection", id: id.to_string() }.into());
            }
            apply_now(g, &cfg, id, &a.run, true)
        }
        ConnectionCmd::Show { id } => {
            let id = parse_id("connection id", id)?;
            let mut client = db::connect(&cfg.database)?;
            let facts = db::connections::facts_by_ids(&mut client, &[id])?;
            let Some(f) = facts.into_iter().next() else {
                return Err(Error::NotFound { what: "connection", id: id.to_string() }.into());
            };
            let p = policy_core::policy::model::decide(Some(&f));
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "facts": f, "policy": p })).expect("serializable")
                );
            } else {
                println!("connection {} login {:?} status {:?}: {} ({:?})", f.id, f.login, f.status, p.state, p.reason);
            }
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SysctlCmd {
    /// Reports ip_forward and rp_filter (exit 70 when not as pppgate needs them).
    Check,
    /// Sets ip_forward=1 and loose rp_filter on live session interfaces.
    Ensure,
}

pub fn sysctl_cmd(g: &Global, c: &SysctlCmd) -> CmdResult {
    let cfg = load_config(g)?;
    let (valid, _) = mapping::valid_sessions(&cfg.paths.sessions_dir)?;
    let ifs: Vec<String> = valid.iter().map(|m| m.ppp_if.clone()).collect();
    let mut b = Netlink::new()?;
    if matches!(c, SysctlCmd::Ensure) {
        b.sysctl().ensure(&ifs)?;
    }
    let r = b.sysctl().read(&ifs)?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
    } else {
        println!("net.ipv4.ip_forward = {}", u8::from(r.ip_forward));
        println!("net.ipv4.conf.all.rp_filter = {}", r.rp_filter_all);
        println!("net.ipv4.conf.default.rp_filter = {}", r.rp_filter_default);
        for (i, v) in &r.rp_filter {
            println!("rp_filter {i} = {v}{}", if *v == 1 { " (strict: asymmetric routes drop)" } else { "" });
        }
    }
    if r.ok() {
        Ok(())
    } else {
        Err(Failure { code: ExitCode::Internal, message: "forwarding sysctls are not as pppgate needs them".into() })
    }
}

//! The session's life inside pppd (R101–R119, R201–R207; "no unpoliced window"):
//!
//! 0. **table** (phase notifier, before the network phase): `inet pppgate` exists, or the link ends.
//! 1. **address hook** (before the interface is up, before any SQL): the client address enters
//!    `connect_pending_v4`; if that fails the address is refused and the link never comes up.
//! 2. **ip-up**: authenticated name → SQL lookup → mapping → apply this session's policy under the
//!    single-writer lock; the gate is released in the same nft transaction that opens the session,
//!    only after shaping, routes and rules are in place. A busy lock is retried from pppd timers
//!    (never blocking pppd's loop) within a window read from SQL `settings` with a tight timeout
//!    (fallback 10 s, hard cap 15 s). Anything failing ends the session through pppd's own path.
//! 3. **ip-down** (and exit as a backstop when ip-down never ran): the final accounting flush,
//!    then everything of this session is removed (memberships including the gate, shaping and
//!    IFB, routes, rules), then the mapping.
//!
//! Where the link is between these events is a [`Phase`] (policy_core::connect); its transitions
//! return an [`Action`] that [`perform`] carries out.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use policy_core::accounting::SessionKey;
use policy_core::connect::{self, Action, Attempt, Phase};
use policy_core::db;
use policy_core::db::connections::LoginLookup;
use policy_core::error::one_line;
use policy_core::kernel::{Member, Netlink};
use policy_core::lock::Lock;
use policy_core::mapping::Mapping;
use policy_core::metrics::events::{self, ConnectEvent, Outcome};
use policy_core::policy::model::PolicyState;
use policy_core::policy::planner::{Desired, Scope};
use policy_core::policy::{apply, engine};
use policy_core::{procfs, Error};

use crate::config;

/// What the plugin knows about the link it serves, and where the link is
/// ([`policy_core::connect::Phase`]: the transitions and their decisions live there, pure and
/// unit-tested; this module performs what they return).
#[derive(Debug, Default)]
struct Link {
    /// `inet pppgate` was checked (or created) before the network phase.
    table_checked: bool,
    /// Members (address on our interface) this process put into connect_pending_v4.
    gated: BTreeSet<Member>,
    /// What pppd told ip-up (for the log and the cleanup).
    ifname: Option<String>,
    /// Our interface's index, as ip-up found it (the member nft binds the address to).
    ifindex: Option<u32>,
    client_ip: Option<Ipv4Addr>,
    login: Option<String>,
    /// The mapping file this process wrote (removed on ip-down / exit).
    mapping: Option<Mapping>,
    /// When ip-up began (the connect latency counts from here).
    ip_up_at: Option<Instant>,
    /// When the first apply attempt began (the lock wait counts from here).
    apply_since: Option<Instant>,
    /// The apply window, read at ip-up on the lookup's connection (or the fallback).
    window: Option<Duration>,
    phase: Phase<shim::TimerId>,
}

thread_local! {
    static LINK: RefCell<Link> = RefCell::new(Link::default());
}

fn with_link<T>(f: impl FnOnce(&mut Link) -> T) -> T {
    LINK.with(|l| f(&mut l.borrow_mut()))
}

/// Ends the session (fail closed) and logs the reason once.
pub(crate) fn fail_closed(reason: &str) {
    let action = with_link(|l| l.phase.fail(reason));
    perform(action);
}

/// Ends the session because the lookup refused the login (counted as `refused_lookup`).
fn refuse(reason: &str) {
    let action = with_link(|l| l.phase.refuse(reason));
    perform(action);
}

/// Appends this connect's outcome to the event log the collector folds into the metrics
/// (`policy_core::metrics::events`): a few system calls on /run after the decision is carried
/// out — no SQL, no waiting (a busy or full log drops the event). Fail-safe: a failure is one
/// warning and changes nothing about the session.
fn record_connect(ev: ConnectEvent) {
    let Some(cfg) = config() else { return };
    match events::record(&cfg.paths.run_dir, &ev) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            outcome = ev.outcome.map(Outcome::name).unwrap_or("-"),
            "connect event not recorded: {} is full (no collector merged it)",
            cfg.paths.run_dir.join(events::LOG_NAME).display()
        ),
        Err(e) => tracing::warn!(
            outcome = ev.outcome.map(Outcome::name).unwrap_or("-"),
            "connect event not recorded: {}",
            one_line(&e)
        ),
    }
}

/// The `session_fail_closed` journal entry (docs/operations.md "Journal fields"), after pppd was
/// asked to end the link; pppd's own log line stays as it is. Never waits: no journal, no entry.
fn journal_fail_closed(reason: &str, outcome: Option<Outcome>) {
    use policy_core::journal::{self, Entry, Event};
    let (ifname, login, client_ip, conn_id) =
        with_link(|l| (l.ifname.clone(), l.login.clone(), l.client_ip, l.mapping.as_ref().map(|m| m.connection_id)));
    let mut e = Entry::new(
        Event::SessionFailClosed,
        format!("pppgate ended the session on {}: {reason} (fail closed)", ifname.as_deref().unwrap_or("?")),
    )
    .field("reason", reason)
    .field("ifname", ifname.as_deref().unwrap_or(""))
    .field("user", login.as_deref().unwrap_or(""))
    .field("client_ip", client_ip.map(|i| i.to_string()).unwrap_or_default())
    .field("pppd_pid", shim::pppd_pid())
    .field("outcome", outcome.map(Outcome::name).unwrap_or("after_connect"));
    if let Some(id) = conn_id {
        e = e.field("conn_id", id);
    }
    journal::send(&e);
}

/// The figures of a connect that ended without being applied.
fn ended_connect(outcome: Outcome) -> ConnectEvent {
    let latency_us = with_link(|l| l.ip_up_at.map_or(0, |t| t.elapsed().as_micros() as u64));
    ConnectEvent { at: policy_core::lock::now_unix(), outcome: Some(outcome), latency_us, ..Default::default() }
}

/// Performs what a phase transition asked for.
fn perform(action: Action<shim::TimerId>) {
    match action {
        Action::Nothing => {}
        Action::Retry(wait) => {
            let t = shim::schedule(attempt_apply, 0, wait);
            with_link(|l| l.phase.retry_scheduled(t));
        }
        Action::Applied { .. } => {}
        Action::End { reason, log, cancel, outcome } => {
            if let Some(t) = cancel {
                shim::cancel(t);
            }
            if log {
                let (ifname, login) = with_link(|l| (l.ifname.clone(), l.login.clone()));
                shim::log(
                    shim::Level::Error,
                    &format!(
                        "ending session on {} (user {}): {reason} (fail closed)",
                        ifname.as_deref().unwrap_or("?"),
                        login.as_deref().map(|s| format!("{s:?}")).unwrap_or_else(|| "unknown".into()),
                    ),
                );
            }
            shim::end_link(shim::ExitCode::FatalError, &format!("pppgate: {reason}"));
            if log {
                journal_fail_closed(&reason, outcome);
            }
            if let Some(o) = outcome {
                record_connect(ended_connect(o));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 0. The table, before any network protocol can bring the interface up
// ---------------------------------------------------------------------------------------------

/// Makes sure `inet pppgate` exists before the network phase. Its forward chain drops what comes
/// from a ppp interface without a policed address; without the table nothing does, and IPv6CP
/// brings the interface up before IPCP asks for the address (where the gate would create the
/// table): the first session after boot forwarded IPv4 from whatever source the client picked
/// until then (seen in the lab, tests/lab_connect.rs). Present: one netlink probe. Missing: the
/// connect that takes the apply lock builds it with **every** VALID session's recorded membership
/// (not only its own: a connect right after `nft flush ruleset` must not cut everyone else off),
/// and every other connect waits for that build within the connect window instead of ending
/// (`engine::table_or_restore`, decision `connect::on_table_missing`); past the window the link
/// is ended.
pub(crate) fn ensure_table() {
    if with_link(|l| std::mem::replace(&mut l.table_checked, true)) {
        return;
    }
    let Some(cfg) = config() else {
        fail_closed("no configuration loaded");
        return;
    };
    let res = Netlink::recording_to(&cfg.paths.sessions_dir)
        .and_then(|mut b| engine::ensure_table(&mut b, &cfg, "pppd-table"));
    match res {
        Ok(engine::TableOutcome::Present) => {}
        Ok(engine::TableOutcome::Restored(r)) => shim::log(
            shim::Level::Warn,
            &format!(
                "pppgate: inet pppgate was missing: built it and restored {} membership(s) of {} live session(s) ({} unrecorded) in {} ms",
                r.added,
                r.live,
                r.unrecorded.len(),
                r.total_us / 1000
            ),
        ),
        Err(e) => fail_closed(&format!("the nft table inet pppgate cannot be created: {}", one_line(&e))),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The gate
// ---------------------------------------------------------------------------------------------

pub(crate) fn address_hook(peer: Ipv4Addr, previous: Option<shim::AddrVerdict>) -> shim::AddrVerdict {
    if previous == Some(shim::AddrVerdict::Refuse) {
        return shim::AddrVerdict::Refuse;
    }
    if with_link(|l| l.gated.iter().any(|m| m.ip == peer)) {
        return previous.unwrap_or(shim::AddrVerdict::NoOpinion);
    }
    match set_gate(peer) {
        Ok(()) => previous.unwrap_or(shim::AddrVerdict::NoOpinion),
        Err(e) => {
            shim::log(
                shim::Level::Error,
                &format!("refusing peer address {peer}: the connect gate cannot be set: {e} (fail closed)"),
            );
            shim::AddrVerdict::Refuse
        }
    }
}

/// Our interface's name and index (the gate binds the address to it).
fn our_interface() -> Result<(String, u32), String> {
    let ifname = shim::ifname().ok_or("pppd reports no interface name")?;
    let ifindex = policy_core::kernel::links::ifindex(&ifname)
        .map_err(|e| one_line(&e))?
        .ok_or_else(|| format!("interface {ifname} does not exist"))?;
    Ok((ifname, ifindex))
}

fn set_gate(ip: Ipv4Addr) -> Result<(), String> {
    let cfg = config().ok_or("no configuration loaded")?;
    let (ifname, ifindex) = our_interface()?;
    let member = Member::new(ifindex, ip);
    let mut b = Netlink::recording_to(&cfg.paths.sessions_dir).map_err(|e| one_line(&e))?;
    engine::gate(&mut b, &cfg, member).map_err(|e| one_line(&e))?;
    with_link(|l| l.gated.insert(member));
    tracing::info!(client_ip = %ip, ifname = %ifname, ifindex, "connect gate set (connect_pending_v4)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. ip-up
// ---------------------------------------------------------------------------------------------

pub(crate) fn ip_up() {
    let t0 = Instant::now();
    with_link(|l| l.ip_up_at = Some(t0));
    let Some(cfg) = config() else {
        fail_closed("no configuration loaded");
        return;
    };
    let Some(ifname) = shim::ifname() else {
        fail_closed("pppd reports no interface name");
        return;
    };
    // First thing: the interface's counters right after pppd reset its link statistics (np_up
    // runs just before this notifier). Accounting counts from here, as pppd does (RX_BASE).
    let counters_base = policy_core::accounting::interface_octets(&ifname).map(|o| (o.rx, o.tx));
    let peer = shim::peer_address();
    let login = shim::peer_authname();
    with_link(|l| {
        l.ifname = Some(ifname.clone());
        l.client_ip = peer;
        l.login = login.clone();
    });
    let Some(client_ip) = peer else {
        fail_closed("no peer IPv4 address negotiated");
        return;
    };
    // Normally the address hook gated the address before the interface came up. If another
    // plugin replaced the hook after our last check, gate now, before anything else.
    let ifindex = match policy_core::kernel::links::ifindex(&ifname) {
        Ok(Some(i)) => i,
        Ok(None) => {
            fail_closed(&format!("interface {ifname} does not exist"));
            return;
        }
        Err(e) => {
            fail_closed(&format!("cannot look up interface {ifname}: {}", one_line(&e)));
            return;
        }
    };
    with_link(|l| l.ifindex = Some(ifindex));
    if !with_link(|l| l.gated.contains(&Member::new(ifindex, client_ip))) {
        shim::log(shim::Level::Warn, "the address hook did not run for this peer; gating at ip-up");
        if let Err(e) = set_gate(client_ip) {
            fail_closed(&format!("the connect gate cannot be set: {e}"));
            return;
        }
    }
    // The name pppd authenticated is the only trustworthy identity: pppd's `user` option is our
    // own name towards the peer, so there is no fallback.
    let Some(login) = login else {
        refuse("the peer did not authenticate (no peer name); no mapping written, no policy applied");
        return;
    };
    if !policy_core::mapping::valid_ifname(&ifname) {
        fail_closed(&format!("interface name {ifname:?} is not usable"));
        return;
    }

    let t_sql = Instant::now();
    let mut client = match db::connect(&cfg.database) {
        Ok(c) => c,
        Err(e) => {
            fail_closed(&one_line(&e));
            return;
        }
    };
    let facts = match db::connections::lookup_login(&mut client, &login) {
        Ok(LoginLookup::Found(f)) => f,
        Ok(LoginLookup::NotFound) => {
            let why = db::connections::explain_login(&mut client, &login)
                .unwrap_or_else(|e| format!("no usable vpn_connections row ({})", one_line(&e)));
            refuse(&why);
            return;
        }
        Ok(LoginLookup::Ambiguous(n)) => {
            refuse(&format!("{n} vpn_connections rows match this login"));
            return;
        }
        Err(e) => {
            fail_closed(&format!("connection lookup failed: {}", one_line(&e)));
            return;
        }
    };
    // The apply window, on this connection while it is open (R111): under a login flood a second
    // connect for it (with the settings timeout) failed more often than not and the fallback
    // replaced the operator's window (the lab's eight simultaneous first connects, 5 of 6).
    let window = match db::settings::apply_window_on(&mut client, cfg.connect.settings_timeout) {
        Ok(w) => connect::apply_window(w, cfg.connect.apply_window_fallback),
        Err(e) => {
            tracing::info!("the apply window setting was not readable in time; the fallback applies: {}", one_line(&e));
            cfg.connect.apply_window_fallback
        }
    };
    drop(client);
    with_link(|l| l.window = Some(window));
    let sql_us = t_sql.elapsed().as_micros() as u64;
    let t_map = Instant::now();

    let start_ts = match procfs::own_start_epoch() {
        Ok(t) => t,
        Err(e) => {
            fail_closed(&format!("cannot read pppd's start time: {e}"));
            return;
        }
    };
    let process = match procfs::own_identity() {
        Ok(p) => p,
        Err(e) => {
            fail_closed(&format!("cannot read pppd's start ticks or the boot id: {e}"));
            return;
        }
    };
    let pid = shim::pppd_pid();
    let up_ts = policy_core::lock::now_unix();
    let mut mapping = Mapping {
        connection_id: facts.id,
        ppp_if: ifname.clone(),
        client_ip,
        start_ts,
        pppd_pid: pid,
        session_id: None,
        up_ts: Some(up_ts),
        counters_base,
        process: Some(process),
    };
    // SESSION_ID is the session's accounting key (pppgate_sessions.session_key): one name, one
    // meaning, for operators joining a mapping file to SQL.
    mapping.session_id = Some(SessionKey::of(&cfg.nas.identity, &mapping).into_string());
    // R413: the final marker's space, before anything of the session exists that ip-down would
    // have to account for.
    if let Err(e) = policy_core::accounting::reserve_final(&cfg, pid, start_ts, &ifname) {
        fail_closed(&format!("cannot reserve the final accounting record: {}", one_line(&e)));
        return;
    }
    note_replaced_mapping(&cfg.paths.sessions_dir, &ifname, pid);
    let mapping_us = match mapping.write_atomic(&cfg.paths.sessions_dir) {
        Ok(path) => {
            tracing::info!(ifname = %ifname, user = %login, conn_id = facts.id, client_ip = %client_ip, pid,
                "session mapped at {}", path.display());
            with_link(|l| l.mapping = Some(mapping));
            t_map.elapsed().as_micros() as u64
        }
        Err(e) => {
            fail_closed(&format!("cannot write the session mapping: {}", one_line(&e)));
            return;
        }
    };

    let desired = apply::session_for_connect(&ifname, ifindex, client_ip, pid, &facts);
    if desired.policy.state == PolicyState::Terminate {
        refuse(&format!("connection {} must not be online ({:?})", facts.id, desired.policy.reason));
        return;
    }
    with_link(|l| {
        l.phase.start_applying(desired, t0, sql_us, mapping_us);
        l.apply_since = Some(Instant::now());
    });
    attempt_apply(0);
}

/// A mapping file already present for our interface belongs to an earlier session on a reused
/// interface name (this pppd owns the interface now): it is replaced atomically, and what it was
/// is logged in one line, a malformed one with the reason it does not parse.
fn note_replaced_mapping(dir: &std::path::Path, ifname: &str, pid: u32) {
    let path = dir.join(Mapping::file_name(ifname));
    if !path.exists() {
        return;
    }
    match Mapping::read(&path) {
        Ok(old) if old.pppd_pid == pid => {}
        Ok(old) => tracing::warn!(ifname = %ifname, old_pid = old.pppd_pid, old_conn_id = old.connection_id,
            "replacing the stale mapping {} of an earlier session", path.display()),
        Err(e) => tracing::warn!(ifname = %ifname, "replacing a malformed mapping file: {}", one_line(&e)),
    }
}

/// One apply attempt; re-scheduled from a pppd timer while the lock is busy.
fn attempt_apply(_: usize) {
    let Some(desired) = with_link(|l| l.phase.begin_attempt()) else { return };
    let Some(cfg) = config() else {
        fail_closed("no configuration loaded");
        return;
    };
    let lock = match Lock::try_acquire(&cfg.paths.apply_lock, "pppd-connect") {
        Ok(l) => l,
        Err(Error::Locked { holder, .. }) => {
            let holder = holder.map(|h| format!("pid {} ({})", h.pid, h.what));
            let action = with_link(|l| {
                let w = l.window.unwrap_or(cfg.connect.apply_window_fallback);
                l.phase.attempted(Attempt::LockBusy { holder }, Instant::now(), || {
                    tracing::info!(window_ms = w.as_millis() as u64, "apply lock busy; retrying within the window");
                    w
                })
            });
            perform(action);
            return;
        }
        Err(e) => {
            let action = with_link(|l| {
                l.phase.attempted(
                    Attempt::Failed(format!("cannot take the apply lock: {}", one_line(&e))),
                    Instant::now(),
                    || cfg.connect.apply_window_fallback,
                )
            });
            perform(action);
            return;
        }
    };
    let t_apply = Instant::now();
    let lock_wait_us =
        with_link(|l| l.apply_since.map_or(0, |t| t_apply.saturating_duration_since(t).as_micros() as u64));
    let mut backends: Option<Netlink> = None;
    let result = (|| -> policy_core::Result<engine::Outcome> {
        let b = backends.insert(Netlink::recording_to(&cfg.paths.sessions_dir)?);
        let mut d = Desired { sessions: vec![desired.clone()], subnet_pbr: vec![] };
        apply::validate(&cfg, &mut d)?;
        let scope = Scope::of(&d.sessions);
        engine::converge(b, &cfg, &d, &scope, false)
    })();
    // The gate was released by the last nft transaction of the plan, inside converge.
    let now = Instant::now();
    let apply_us = now.duration_since(t_apply).as_micros() as u64;
    drop(lock);
    // Closing the nfnetlink socket after a commit waits for nf_tables' deferred destroy work (an
    // RCU grace period, 8-16 ms measured): done after the lock is released, not while holding it.
    drop(backends);
    let outcome = match &result {
        Ok(_) => Attempt::Applied,
        Err(e) => Attempt::Failed(format!("policy apply failed: {}", one_line(e))),
    };
    let action = with_link(|l| l.phase.attempted(outcome, now, || cfg.connect.apply_window_fallback));
    if let (Action::Applied { attempts, sql_us, mapping_us, since_up }, Ok(out)) = (&action, &result) {
        let p = &desired.policy;
        tracing::info!(
            ifname = %desired.ifname, conn_id = desired.connection_id, state = %p.state,
            down_kbit = p.speed.down_kbit.unwrap_or(0), up_kbit = p.speed.up_kbit.unwrap_or(0),
            routes = p.routes.len(), pbr = p.pbr.len(), attempts,
            steps = out.steps.len(), sql_us, mapping_us, apply_us,
            gate_released_us = since_up.as_micros() as u64,
            "policy applied, connect gate released"
        );
    }
    let applied = match &action {
        Action::Applied { sql_us, mapping_us, since_up, .. } => Some(ConnectEvent {
            at: policy_core::lock::now_unix(),
            outcome: Some(Outcome::Applied),
            latency_us: since_up.as_micros() as u64,
            lock_wait_us,
            lock_held_us: apply_us,
            sql_us: *sql_us,
            mapping_us: *mapping_us,
            apply_us,
        }),
        _ => None,
    };
    perform(action);
    if let Some(ev) = applied {
        record_connect(ev);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. ip-down and exit
// ---------------------------------------------------------------------------------------------

pub(crate) fn ip_down() {
    cleanup("ip-down");
}

pub(crate) fn on_exit(_status: i32) {
    // Backstop: die() skips ip-down notifiers; a session that never came up still has its gate.
    cleanup("exit");
}

fn cleanup(event: &str) {
    let Some(plan) = with_link(|l| l.phase.cleanup()) else { return };
    if let Some(t) = plan.cancel {
        shim::cancel(t);
    }
    let Some(cfg) = config() else { return };
    let t0 = Instant::now();
    let (ifname, client, gated, mapping) = with_link(|l| {
        let client = l.ifindex.zip(l.client_ip).map(|(i, ip)| Member::new(i, ip));
        (l.ifname.clone(), client, l.gated.clone(), l.mapping.clone())
    });
    if let Some(m) = &mapping {
        final_accounting(&cfg, m, event);
    }
    let t_teardown = Instant::now();
    let lock = match Lock::acquire_within(&cfg.paths.apply_lock, "pppd-disconnect", plan.lock_wait) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("cleaning up on {event} without the apply lock: {}", one_line(&e));
            None
        }
    };
    let mut backends = Netlink::recording_to(&cfg.paths.sessions_dir);
    let errors = match backends.as_mut() {
        Ok(b) => engine::teardown_link(b, ifname.as_deref(), client, &gated),
        Err(e) => vec![one_line(e)],
    };
    drop(lock);
    // See attempt_apply: the socket close waits for an RCU grace period; not under the lock.
    drop(backends);
    for e in &errors {
        tracing::error!(event, "cleanup: {e}");
    }
    if let (Some(m), Some(ifname)) = (mapping, ifname.as_deref()) {
        match Mapping::remove(&cfg.paths.sessions_dir, ifname) {
            Ok(_) => tracing::info!(ifname = %ifname, conn_id = m.connection_id, "session mapping removed on {event}"),
            Err(e) => {
                tracing::error!(ifname = %ifname, "cannot remove the session mapping on {event}: {}", one_line(&e))
            }
        }
    }
    if errors.is_empty() {
        // teardown_us: lock, kernel state and mapping (the work an ip-down hook does); down_us:
        // with the final accounting flush before it.
        tracing::info!(
            ifname = ifname.as_deref().unwrap_or("-"),
            teardown_us = t_teardown.elapsed().as_micros() as u64,
            down_us = t0.elapsed().as_micros() as u64,
            "session state removed on {event}"
        );
    }
}

/// R201: the final accounting flush, before the cleanup and before the mapping goes
/// (docs/accounting.md). Bounded; whatever happens, the final counters are on disk for the
/// collector once the marker is written.
fn final_accounting(cfg: &policy_core::config::Config, m: &Mapping, event: &str) {
    // pppd's octets since IPCP came up, what pppd logs as "Sent N bytes, received M bytes" and
    // radius.so reports (how each pppd API takes them: shim::link_stats).
    let stats = shim::link_stats();
    let counters = policy_core::accounting::FinalCounters {
        pppd: stats.as_ref().map(|s| policy_core::accounting::Octets::new(s.bytes_in, s.bytes_out)),
        // pppd 2.4's link_stats are 32 bits wide: extended against the interface's counters.
        wraps_32: stats.as_ref().is_some_and(|s| s.wraps_32),
        terminate_cause: None,
    };
    let (rx, tx) = stats.as_ref().map_or((0, 0), |s| (s.bytes_in, s.bytes_out));
    match policy_core::accounting::final_flush(cfg, m, counters) {
        Ok(r) => tracing::info!(session = %r.session_key, outcome = ?r.outcome, ms = r.elapsed_ms,
            "final accounting on {event}"),
        Err(e) => tracing::error!(ifname = %m.ppp_if, conn_id = m.connection_id, rx, tx,
            "final accounting failed on {event}: {}", one_line(&e)),
    }
}

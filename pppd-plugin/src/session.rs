//! The session's life inside pppd: lookup and mapping on ip-up, removal on ip-down, and the
//! fail-closed end through pppd's own path whenever anything is not right.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::time::Instant;

use policy_core::db;
use policy_core::db::connections::LoginLookup;
use policy_core::error::one_line;
use policy_core::mapping::Mapping;
use policy_core::procfs;

use crate::config;

/// What the plugin knows about the link it serves.
#[derive(Debug, Default)]
struct Link {
    ifname: Option<String>,
    client_ip: Option<Ipv4Addr>,
    login: Option<String>,
    connection_id: Option<i64>,
    /// The mapping file this process wrote (removed on ip-down / exit).
    mapping_written: bool,
    /// Reason the session is being ended, logged once.
    failed: Option<String>,
    ip_down_done: bool,
}

thread_local! {
    static LINK: RefCell<Link> = RefCell::new(Link::default());
}

fn with_link<T>(f: impl FnOnce(&mut Link) -> T) -> T {
    LINK.with(|l| f(&mut l.borrow_mut()))
}

/// Ends the session (fail closed) and logs the reason once.
pub(crate) fn fail_closed(reason: &str) {
    let first = with_link(|l| {
        if l.failed.is_some() {
            false
        } else {
            l.failed = Some(reason.to_string());
            true
        }
    });
    if first {
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
}

pub(crate) fn address_hook(_peer: Ipv4Addr, previous: Option<shim::AddrVerdict>) -> shim::AddrVerdict {
    previous.unwrap_or(shim::AddrVerdict::NoOpinion)
}

pub(crate) fn ip_up() {
    let t0 = Instant::now();
    let Some(cfg) = config() else {
        fail_closed("no configuration loaded");
        return;
    };
    let Some(ifname) = shim::ifname() else {
        fail_closed("pppd reports no interface name");
        return;
    };
    let peer = shim::peer_address();
    let login = shim::peer_authname();
    with_link(|l| {
        l.ifname = Some(ifname.clone());
        l.client_ip = peer;
        l.login = login.clone();
    });
    // The name pppd authenticated is the only trustworthy identity: pppd's `user` option is our
    // own name towards the peer, so there is no fallback.
    let Some(login) = login else {
        fail_closed("the peer did not authenticate (no peer name); no mapping written");
        return;
    };
    let Some(client_ip) = peer else {
        fail_closed("no peer IPv4 address negotiated");
        return;
    };
    if !policy_core::mapping::valid_ifname(&ifname) {
        fail_closed(&format!("interface name {ifname:?} is not usable"));
        return;
    }

    let mut client = match db::connect(&cfg.database) {
        Ok(c) => c,
        Err(e) => {
            fail_closed(&format!("database unavailable: {}", one_line(&e)));
            return;
        }
    };
    let facts = match db::connections::lookup_login(&mut client, &login) {
        Ok(LoginLookup::Found(f)) => f,
        Ok(LoginLookup::NotFound) => {
            let why = db::connections::explain_login(&mut client, &login)
                .unwrap_or_else(|e| format!("no usable vpn_connections row ({})", one_line(&e)));
            fail_closed(&why);
            return;
        }
        Ok(LoginLookup::Ambiguous(n)) => {
            fail_closed(&format!("{n} vpn_connections rows match this login"));
            return;
        }
        Err(e) => {
            fail_closed(&format!("connection lookup failed: {}", one_line(&e)));
            return;
        }
    };
    drop(client);
    with_link(|l| l.connection_id = Some(facts.id));

    let start_ts = match procfs::own_start_epoch() {
        Ok(t) => t,
        Err(e) => {
            fail_closed(&format!("cannot read pppd's start time: {e}"));
            return;
        }
    };
    let pid = shim::pppd_pid();
    let up_ts = policy_core::lock::now_unix();
    let mapping = Mapping {
        connection_id: facts.id,
        ppp_if: ifname.clone(),
        client_ip,
        start_ts,
        pppd_pid: pid,
        session_id: Some(format!("{}:{}:{}:{}", cfg.nas.identity, ifname, pid, up_ts)),
        up_ts: Some(up_ts),
    };
    match mapping.write_atomic(&cfg.paths.sessions_dir) {
        Ok(path) => {
            with_link(|l| l.mapping_written = true);
            tracing::info!(
                ifname = %ifname, user = %login, conn_id = facts.id, client_ip = %client_ip, pid,
                elapsed_us = t0.elapsed().as_micros() as u64,
                "session mapped at {}", path.display()
            );
        }
        Err(e) => fail_closed(&format!("cannot write the session mapping: {}", one_line(&e))),
    }
}

pub(crate) fn ip_down() {
    cleanup("ip-down");
    with_link(|l| l.ip_down_done = true);
}

pub(crate) fn on_exit(_status: i32) {
    // Backstop: die() skips ip-down notifiers.
    if !with_link(|l| l.ip_down_done) {
        cleanup("exit");
    }
}

fn cleanup(event: &str) {
    let (ifname, written) = with_link(|l| (l.ifname.clone(), l.mapping_written));
    let (Some(cfg), Some(ifname)) = (config(), ifname) else { return };
    if written {
        match Mapping::remove(&cfg.paths.sessions_dir, &ifname) {
            Ok(_) => tracing::info!(ifname = %ifname, "session mapping removed on {event}"),
            Err(e) => tracing::error!(ifname = %ifname, "cannot remove the session mapping on {event}: {}", one_line(&e)),
        }
        with_link(|l| l.mapping_written = false);
    }
}

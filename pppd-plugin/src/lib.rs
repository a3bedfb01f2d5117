//! `pppgate.so`: the pppd plugin. Thin glue from pppd's events (through the shim) to policy-core;
//! one pppd process serves one link, and this plugin does for it, in order:
//!
//! 0. **options and start**: `pppgate-config <path>` loads and validates the configuration
//!    (default /etc/pppgate/pppgate.toml, through policy-core's file-trust rules); a missing or
//!    invalid one makes pppd refuse to start. Before the network phase (phase notifier at
//!    Establish/Authenticate/Network) the nft table `inet pppgate` must exist — probed, or built
//!    under the apply lock with every live session's recorded membership (or waited for while
//!    another connect builds it, within the connect window) — or the link is ended: its forward
//!    chain drops anything from a ppp interface whose address is not policed.
//! 1. **connect gate** (the allowed-address hook, before the interface is up, before any SQL): the
//!    client address enters `connect_pending_v4`; if that fails the address is refused.
//! 2. **ip-up**: the interface's counters (accounting baseline), the authenticated peer name looked
//!    up in `vpn_connections` (one typed query), the session mapping
//!    `/run/vpn-sessions/<ppp_if>.env` written atomically, then this session's policy applied under
//!    the single-writer lock (nftables state sets, TBF shaping with its upload IFB, routes, policy
//!    rules), verified by reading the kernel back; the gate goes in the same nft transaction that
//!    opens the session. A busy lock is retried from pppd timers within a window from SQL
//!    `settings` (fallback from the config, cap 15 s). Anything failing ends the link through pppd
//!    (fail closed).
//! 3. **ip-down** (and exit as a backstop): the final accounting flush, then every kernel object of
//!    this session is removed (waiting a bounded time for the lock), then the mapping.
//!
//! The link's phases and the decisions between them (window, backoff, deadline, cleanup lock wait)
//! are `policy_core::connect`, pure and unit-tested; `session` performs them. Kernel work goes
//! through `policy_core::policy::engine` (gate, ensure_table, converge, teardown_link).
//!
//! No threads, no runtime left running, no database connection held between events: each event
//! opens what it needs and closes it before returning to pppd's loop.

#![forbid(unsafe_code)]

shim::pppd_plugin!(crate::init);

mod pppdlog;
mod session;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use policy_core::config::{Config, DEFAULT_PATH};
use policy_core::error::one_line;

thread_local! {
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

/// Which pppd this build is for, findable in the .so by `pppgate diag` (policy-core's
/// `diag::PLUGIN_BUILD_MARKER`, then ` pppd=<version> api=<api> version=<pppgate>;`).
static BUILD_MARKER: [u8; 96] = build_marker();

const fn build_marker() -> [u8; 96] {
    let parts: [&[u8]; 8] = [
        policy_core::diag::PLUGIN_BUILD_MARKER.as_bytes(),
        b" pppd=",
        shim::PPPD_VERSION.as_bytes(),
        b" api=",
        shim::PPPD_API.as_bytes(),
        b" version=",
        env!("CARGO_PKG_VERSION").as_bytes(),
        b";",
    ];
    let mut out = [0u8; 96];
    let (mut n, mut p) = (0, 0);
    while p < parts.len() {
        let s = parts[p];
        let mut i = 0;
        while i < s.len() && n < out.len() - 1 {
            out[n] = s[i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    out
}

fn init(r: &mut shim::Registrar) -> Result<(), String> {
    // Keeps the marker in the linked .so.
    std::hint::black_box(&BUILD_MARKER);
    pppdlog::install();
    r.string_option(c"pppgate-config", c"pppgate configuration file", on_config_option);
    r.address_hook(session::address_hook);
    r.on_ip_up(session::ip_up);
    r.on_ip_down(session::ip_down);
    r.on_exit(session::on_exit);
    r.on_phase(on_phase);
    shim::log(
        shim::Level::Info,
        &format!("pppgate {} loaded (pppd {} API {})", env!("CARGO_PKG_VERSION"), shim::PPPD_VERSION, shim::PPPD_API),
    );
    Ok(())
}

fn load(path: &Path) -> Result<Rc<Config>, String> {
    let cfg = Config::load(path).map_err(|e| one_line(&e))?;
    let cfg = Rc::new(cfg);
    CONFIG.with(|c| *c.borrow_mut() = Some(cfg.clone()));
    Ok(cfg)
}

fn on_config_option(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("needs a path".into());
    }
    load(&PathBuf::from(value)).map(|_| ())
}

/// Once the options are parsed (the first phase change), the default configuration is loaded if
/// no `pppgate-config` option was given; a missing or invalid one refuses the start.
fn on_phase(p: shim::Phase) {
    if matches!(p, shim::Phase::Dead | shim::Phase::Initialize) {
        return;
    }
    if CONFIG.with(|c| c.borrow().is_none()) {
        if let Err(e) = load(Path::new(DEFAULT_PATH)) {
            shim::fatal(&format!("pppgate: refusing to start: {e}"));
        }
    }
    // Before the network phase opens IPCP/IPv6CP (either may bring the interface up).
    if matches!(p, shim::Phase::Establish | shim::Phase::Authenticate | shim::Phase::Network) {
        session::ensure_table();
    }
}

/// The loaded configuration, if any.
pub(crate) fn config() -> Option<Rc<Config>> {
    CONFIG.with(|c| c.borrow().clone())
}

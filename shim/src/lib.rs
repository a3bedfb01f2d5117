//! The only crate of pppgate with `unsafe`: bindings generated from the installed pppd headers and a
//! safe API over them for `pppgate.so`.
//!
//! Two plugin APIs are supported, selected by the build script: pppd 2.4.x (global variables,
//! `add_notifier`, `timeout`) and pppd 2.5 (`ppp_add_notify`, `ppp_ifname()`, `ppp_timeout`), the
//! latter under `cfg(pppd_2_5)`. Everything public here is safe and behaves the same on both.
//!
//! Rules this crate enforces for its callers:
//! * every `extern "C"` entry point runs inside [`guard`]: a panic is caught, logged through pppd,
//!   and answered with the entry's fail-closed value (refuse the address, end the link);
//! * pppd is called only from pppd's own thread (the thread that ran `plugin_init`); a call from
//!   any other thread panics instead of touching pppd;
//! * hooks another plugin installed before us (radius.so's `allowed_address_hook`) are chained,
//!   never replaced, and re-chained if a later plugin overwrites ours.

#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::thread::ThreadId;
use std::time::Duration;

#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    improper_ctypes,
    unused_imports,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

include!(concat!(env!("OUT_DIR"), "/version.rs"));

/// The pppd version the plugin is built for (from the headers), e.g. `2.4.9`.
pub const PPPD_VERSION: &str = env!("PPPGATE_PPPD_VERSION");

/// Length of [`PPPD_VERSION_CSTR`], for the exported `pppd_version` array.
pub const PPPD_VERSION_LEN: usize = PPPD_VERSION_CSTR.len();

/// Which plugin API this build speaks.
pub const PPPD_API: &str = if cfg!(pppd_2_5) { "2.5" } else { "2.4" };

static PPPD_THREAD: OnceLock<ThreadId> = OnceLock::new();

fn assert_pppd_thread() {
    let me = std::thread::current().id();
    match PPPD_THREAD.get() {
        Some(t) if *t == me => {}
        Some(_) => panic!("pppd API called from a thread other than pppd's"),
        None => panic!("pppd API called before plugin_init"),
    }
}

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

/// Severity of a message written to pppd's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Notice,
    Warn,
    Error,
}

fn to_cstring(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).expect("NULs were replaced")
}

/// Writes one line to pppd's log (syslog and the `logfile`), prefixed with `pppgate: `.
pub fn log(level: Level, msg: &str) {
    assert_pppd_thread();
    let line = to_cstring(&format!("pppgate: {msg}"));
    let fmt = c"%s";
    // SAFETY: the pppd log functions are printf-like; we pass a constant "%s" format and one valid
    // NUL-terminated string argument, on pppd's thread.
    unsafe {
        let f = fmt.as_ptr() as *mut c_char;
        match level {
            Level::Debug => ffi::dbglog(f, line.as_ptr()),
            Level::Info => ffi::info(f, line.as_ptr()),
            Level::Notice => ffi::notice(f, line.as_ptr()),
            Level::Warn => ffi::warn(f, line.as_ptr()),
            Level::Error => ffi::error(f, line.as_ptr()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The panic guard
// ---------------------------------------------------------------------------------------------

/// Runs `f` as the body of an `extern "C"` entry point: a panic is caught and logged, and
/// `fail_closed` is returned instead; the link is then ended (fail closed) when `end_link` is set.
pub fn guard<T>(entry: &str, fail_closed: T, end_link_on_panic: bool, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            // Logging itself may panic (wrong thread); nothing more can be done then.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                log(Level::Error, &format!("internal error in {entry}: {what}; failing closed"));
                if end_link_on_panic {
                    end_link(ExitCode::FatalError, "pppgate internal error");
                }
            }));
            fail_closed
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// What the allowed-address hook answers pppd (`auth_ip_addr`): allow, refuse, or "no opinion"
/// (pppd's own checks decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrVerdict {
    Allow,
    Refuse,
    NoOpinion,
}

impl AddrVerdict {
    fn from_c(v: c_int) -> Self {
        match v {
            0 => AddrVerdict::Refuse,
            v if v > 0 => AddrVerdict::Allow,
            _ => AddrVerdict::NoOpinion,
        }
    }
    fn to_c(self) -> c_int {
        match self {
            AddrVerdict::Allow => 1,
            AddrVerdict::Refuse => 0,
            AddrVerdict::NoOpinion => -1,
        }
    }
}

/// The address hook: the peer's address and what the previously installed hook (another plugin's,
/// e.g. radius.so's) answered, if there was one.
pub type AddressHook = fn(peer: Ipv4Addr, previous: Option<AddrVerdict>) -> AddrVerdict;

/// Handler of a plugin option taking one string argument; `Err` makes pppd refuse the option.
pub type OptionHandler = fn(value: &str) -> Result<(), String>;

#[derive(Default, Clone, Copy)]
struct Callbacks {
    ip_up: Option<fn()>,
    ip_down: Option<fn()>,
    exit: Option<fn(i32)>,
    phase: Option<fn(Phase)>,
    address: Option<AddressHook>,
}

thread_local! {
    static CALLBACKS: Cell<Callbacks> = Cell::new(Callbacks::default());
    static PHASE: Cell<Phase> = const { Cell::new(Phase::Initialize) };
    static OPTIONS: RefCell<Vec<(CString, OptionHandler)>> = const { RefCell::new(Vec::new()) };
}

/// Given to the plugin's init function; the only way to register callbacks.
pub struct Registrar {
    callbacks: Callbacks,
    options: Vec<(&'static CStr, &'static CStr, OptionHandler)>,
}

impl Registrar {
    /// Called when IPCP is up (the interface is up and passes traffic).
    pub fn on_ip_up(&mut self, f: fn()) {
        self.callbacks.ip_up = Some(f);
    }
    /// Called when IPCP goes down; pppd's link stats are final at this point.
    pub fn on_ip_down(&mut self, f: fn()) {
        self.callbacks.ip_down = Some(f);
    }
    /// Called when pppd exits (also after `die()`, which skips ip-down).
    pub fn on_exit(&mut self, f: fn(i32)) {
        self.callbacks.exit = Some(f);
    }
    /// Called on every phase change.
    pub fn on_phase(&mut self, f: fn(Phase)) {
        self.callbacks.phase = Some(f);
    }
    /// Installs the allowed-address hook, chaining any hook set before (or after) us.
    pub fn address_hook(&mut self, f: AddressHook) {
        self.callbacks.address = Some(f);
    }
    /// Adds a plugin option `name <string>`.
    pub fn string_option(&mut self, name: &'static CStr, help: &'static CStr, f: OptionHandler) {
        self.options.push((name, help, f));
    }
}

#[doc(hidden)]
pub fn __plugin_init(init: fn(&mut Registrar) -> Result<(), String>) {
    let _ = PPPD_THREAD.set(std::thread::current().id());
    guard("plugin_init", (), false, || {
        let mut r = Registrar { callbacks: Callbacks::default(), options: Vec::new() };
        if let Err(e) = init(&mut r) {
            log(Level::Error, &format!("plugin initialisation failed: {e}"));
            fatal(&format!("pppgate: {e}"));
        }
        CALLBACKS.with(|c| c.set(r.callbacks));
        install_notifiers();
        install_address_hook();
        install_options(&r.options);
    });
}

/// Declares the pppd plugin: exports `plugin_init` and `pppd_version` (the version of the headers
/// this build used) and calls `$init` with a [`Registrar`] from `plugin_init`.
#[macro_export]
macro_rules! pppd_plugin {
    ($init:path) => {
        /// The pppd version this plugin was built for; pppd refuses a plugin whose string differs.
        #[no_mangle]
        pub static pppd_version: [u8; $crate::PPPD_VERSION_LEN] = $crate::PPPD_VERSION_CSTR;

        /// Entry point pppd calls after loading the plugin.
        #[no_mangle]
        pub extern "C" fn plugin_init() {
            $crate::__plugin_init($init)
        }
    };
}

fn callbacks() -> Callbacks {
    CALLBACKS.with(|c| c.get())
}

// ---------------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------------

/// pppd's link phase (same numbering in 2.4 and 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Dead,
    Initialize,
    SerialConn,
    Dormant,
    Establish,
    Authenticate,
    Callback,
    Network,
    Running,
    Terminate,
    Disconnect,
    Holdoff,
    Master,
    Unknown(i32),
}

impl Phase {
    fn from_c(v: c_int) -> Self {
        use Phase::*;
        match v {
            0 => Dead,
            1 => Initialize,
            2 => SerialConn,
            3 => Dormant,
            4 => Establish,
            5 => Authenticate,
            6 => Callback,
            7 => Network,
            8 => Running,
            9 => Terminate,
            10 => Disconnect,
            11 => Holdoff,
            12 => Master,
            other => Unknown(other),
        }
    }
    /// Whether the network layer may be passing traffic in this phase.
    pub fn link_up(self) -> bool {
        matches!(self, Phase::Network | Phase::Running)
    }
}

#[cfg(not(pppd_2_5))]
const _: () = {
    assert!(ffi::PHASE_DEAD == 0 && ffi::PHASE_NETWORK == 7 && ffi::PHASE_RUNNING == 8);
    assert!(ffi::PHASE_TERMINATE == 9 && ffi::PHASE_MASTER == 12);
};

#[cfg(pppd_2_5)]
const _: () = {
    assert!(ffi::ppp_phase_PHASE_DEAD == 0 && ffi::ppp_phase_PHASE_NETWORK == 7 && ffi::ppp_phase_PHASE_RUNNING == 8);
    assert!(ffi::ppp_phase_PHASE_TERMINATE == 9 && ffi::ppp_phase_PHASE_MASTER == 12);
};

/// The current phase, as last reported by pppd.
pub fn phase() -> Phase {
    PHASE.with(|p| p.get())
}

// ---------------------------------------------------------------------------------------------
// Notifiers
// ---------------------------------------------------------------------------------------------

extern "C" fn on_ip_up_c(_arg: *mut c_void, _val: c_int) {
    guard("ip-up notifier", (), true, || {
        if let Some(f) = callbacks().ip_up {
            f()
        }
    })
}

extern "C" fn on_ip_down_c(_arg: *mut c_void, _val: c_int) {
    guard("ip-down notifier", (), false, || {
        if let Some(f) = callbacks().ip_down {
            f()
        }
    })
}

extern "C" fn on_exit_c(_arg: *mut c_void, val: c_int) {
    guard("exit notifier", (), false, || {
        if let Some(f) = callbacks().exit {
            f(val)
        }
    })
}

extern "C" fn on_phase_c(_arg: *mut c_void, val: c_int) {
    guard("phase notifier", (), false, || {
        let p = Phase::from_c(val);
        PHASE.with(|c| c.set(p));
        // A plugin loaded after us may have replaced the address hook: chain it again before IPCP.
        install_address_hook();
        if let Some(f) = callbacks().phase {
            f(p)
        }
    })
}

#[cfg(not(pppd_2_5))]
fn install_notifiers() {
    // SAFETY: add_notifier takes the address of one of pppd's notifier list heads and a callback
    // with the `notify_func` signature; the lists are pppd globals and we are on pppd's thread.
    unsafe {
        ffi::add_notifier(&raw mut ffi::ip_up_notifier, Some(on_ip_up_c), std::ptr::null_mut());
        ffi::add_notifier(&raw mut ffi::ip_down_notifier, Some(on_ip_down_c), std::ptr::null_mut());
        ffi::add_notifier(&raw mut ffi::exitnotify, Some(on_exit_c), std::ptr::null_mut());
        ffi::add_notifier(&raw mut ffi::phasechange, Some(on_phase_c), std::ptr::null_mut());
    }
}

#[cfg(pppd_2_5)]
fn install_notifiers() {
    use ffi::ppp_notify_t as N;
    // SAFETY: ppp_add_notify registers a callback with the `ppp_notify_fn` signature for an
    // event type; we are on pppd's thread.
    unsafe {
        ffi::ppp_add_notify(N::NF_IP_UP, Some(on_ip_up_c), std::ptr::null_mut());
        ffi::ppp_add_notify(N::NF_IP_DOWN, Some(on_ip_down_c), std::ptr::null_mut());
        ffi::ppp_add_notify(N::NF_EXIT, Some(on_exit_c), std::ptr::null_mut());
        ffi::ppp_add_notify(N::NF_PHASE_CHANGE, Some(on_phase_c), std::ptr::null_mut());
    }
}

// ---------------------------------------------------------------------------------------------
// The allowed-address hook, chained
// ---------------------------------------------------------------------------------------------

type CAddrHook = unsafe extern "C" fn(u32) -> c_int;

thread_local! {
    static PREV_ADDR_HOOK: Cell<Option<CAddrHook>> = const { Cell::new(None) };
}

extern "C" fn address_hook_c(addr: u32) -> c_int {
    guard("allowed_address_hook", AddrVerdict::Refuse.to_c(), false, || {
        let prev = PREV_ADDR_HOOK.with(|p| p.get()).map(|h| {
            // SAFETY: `h` is the hook another plugin installed into pppd's allowed_address_hook
            // before us; pppd would have called it with the same argument on this thread.
            AddrVerdict::from_c(unsafe { h(addr) })
        });
        let peer = Ipv4Addr::from(u32::from_be(addr));
        match callbacks().address {
            Some(f) => f(peer, prev).to_c(),
            None => prev.unwrap_or(AddrVerdict::NoOpinion).to_c(),
        }
    })
}

fn install_address_hook() {
    if callbacks().address.is_none() {
        return;
    }
    let ours: CAddrHook = address_hook_c;
    // SAFETY: allowed_address_hook is a pppd global function pointer, read and written only on
    // pppd's thread (we are on it: notifiers and plugin_init run there).
    unsafe {
        let current = ffi::allowed_address_hook;
        if current.map(|f| f as usize) != Some(ours as usize) {
            // Whatever is installed now (radius.so's hook, or none) becomes the hook we chain.
            PREV_ADDR_HOOK.with(|p| p.set(current));
            ffi::allowed_address_hook = Some(ours);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

const MAX_OPTIONS: usize = 4;

macro_rules! option_trampoline {
    ($name:ident, $idx:expr) => {
        extern "C" fn $name(argv: *mut *mut c_char) -> c_int {
            guard("option handler", 0, false, || {
                // SAFETY: pppd calls an o_special option handler with argv pointing at the
                // option's (one) NUL-terminated argument.
                let value = unsafe {
                    if argv.is_null() || (*argv).is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(*argv).to_string_lossy().into_owned()
                    }
                };
                let entry = OPTIONS.with(|o| o.borrow().get($idx).map(|(n, f)| (n.clone(), *f)));
                let Some((name, handler)) = entry else { return 0 };
                match handler(&value) {
                    Ok(()) => 1,
                    Err(e) => {
                        option_error(&format!("{}: {e}", name.to_string_lossy()));
                        0
                    }
                }
            })
        }
    };
}
option_trampoline!(option_0, 0);
option_trampoline!(option_1, 1);
option_trampoline!(option_2, 2);
option_trampoline!(option_3, 3);
const TRAMPOLINES: [extern "C" fn(*mut *mut c_char) -> c_int; MAX_OPTIONS] = [option_0, option_1, option_2, option_3];

#[cfg(not(pppd_2_5))]
type COption = ffi::option_t;
#[cfg(pppd_2_5)]
type COption = ffi::option;

fn install_options(opts: &[(&'static CStr, &'static CStr, OptionHandler)]) {
    if opts.is_empty() {
        return;
    }
    assert!(opts.len() <= MAX_OPTIONS, "too many plugin options");
    let mut table: Vec<COption> = Vec::with_capacity(opts.len() + 1);
    for (i, (name, help, f)) in opts.iter().enumerate() {
        OPTIONS.with(|o| o.borrow_mut().push(((*name).into(), *f)));
        table.push(COption {
            name: name.as_ptr() as *mut c_char,
            type_: ffi::opt_type_o_special,
            addr: TRAMPOLINES[i] as *mut c_void,
            description: help.as_ptr() as *mut c_char,
            ..COption::default()
        });
    }
    table.push(COption::default()); // terminator: name == NULL
                                    // pppd keeps the pointer for its lifetime: the table is leaked on purpose.
    let table: &'static mut [COption] = Vec::leak(table);
    // SAFETY: add_options stores a pointer to a NULL-name-terminated option array that lives for
    // the rest of the process (leaked above); we are on pppd's thread.
    unsafe {
        #[cfg(not(pppd_2_5))]
        ffi::add_options(table.as_mut_ptr());
        #[cfg(pppd_2_5)]
        ffi::ppp_add_options(table.as_mut_ptr());
    }
}

mod extra {
    use std::ffi::c_char;
    #[cfg(not(pppd_2_5))]
    extern "C" {
        pub fn option_error(fmt: *mut c_char, ...);
        pub fn fatal(fmt: *mut c_char, ...);
    }
    #[cfg(pppd_2_5)]
    extern "C" {
        #[link_name = "ppp_option_error"]
        pub fn option_error(fmt: *mut c_char, ...);
        pub fn fatal(fmt: *const c_char, ...);
    }
}

fn option_error(msg: &str) {
    let m = to_cstring(msg);
    // SAFETY: printf-like pppd function called on pppd's thread with a constant "%s" format and
    // one valid NUL-terminated string.
    unsafe { extra::option_error(c"%s".as_ptr() as *mut c_char, m.as_ptr()) }
}

/// Logs `msg` and makes pppd exit (only for refusing to start, before any link exists).
pub fn fatal(msg: &str) -> ! {
    assert_pppd_thread();
    let m = to_cstring(msg);
    // SAFETY: pppd's fatal is printf-like; constant "%s" and one valid C string; it never returns.
    unsafe { extra::fatal(c"%s".as_ptr() as *mut c_char, m.as_ptr()) };
    #[allow(clippy::empty_loop)]
    loop {}
}

// ---------------------------------------------------------------------------------------------
// Session facts
// ---------------------------------------------------------------------------------------------

fn cstr_array_to_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: callers pass pointers to NUL-terminated strings owned by pppd.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    (!s.is_empty()).then_some(s)
}

/// The PPP interface name (e.g. `ppp0`), once pppd has created the unit.
pub fn ifname() -> Option<String> {
    assert_pppd_thread();
    // `ifname` is pppd's global NUL-terminated char array (taking its address needs no unsafe).
    #[cfg(not(pppd_2_5))]
    let p = (&raw const ffi::ifname) as *const c_char;
    #[cfg(pppd_2_5)]
    // SAFETY: ppp_ifname returns a pointer to pppd's NUL-terminated interface name.
    let p = unsafe { ffi::ppp_ifname() };
    cstr_array_to_string(p)
}

/// The name the peer authenticated with (PAP/CHAP/EAP), or `None` when it did not authenticate.
pub fn peer_authname() -> Option<String> {
    assert_pppd_thread();
    #[cfg(not(pppd_2_5))]
    {
        // `peer_authname` is pppd's global NUL-terminated char array.
        let p = (&raw const ffi::peer_authname) as *const c_char;
        cstr_array_to_string(p)
    }
    #[cfg(pppd_2_5)]
    {
        let mut buf = [0 as c_char; 256];
        // SAFETY: ppp_peer_authname copies at most bufsz bytes (NUL-terminated) into buf.
        let p = unsafe { ffi::ppp_peer_authname(buf.as_mut_ptr(), buf.len()) };
        cstr_array_to_string(if p.is_null() { p } else { buf.as_ptr() })
    }
}

/// The `ipparam` option's value (xl2tpd passes the LAC's address there).
pub fn ipparam() -> Option<String> {
    assert_pppd_thread();
    #[cfg(not(pppd_2_5))]
    // SAFETY: `ipparam` is a pppd global char pointer, NULL or a NUL-terminated string.
    let p = unsafe { ffi::ipparam as *const c_char };
    #[cfg(pppd_2_5)]
    // SAFETY: ppp_ipparam returns NULL or pppd's NUL-terminated string.
    let p = unsafe { ffi::ppp_ipparam() };
    cstr_array_to_string(p)
}

/// The peer's negotiated IPv4 address (IPCP "his address").
pub fn peer_address() -> Option<Ipv4Addr> {
    assert_pppd_thread();
    // SAFETY: ipcp_hisoptions is pppd's array of NUM_PPP (1) entries; we read unit 0 on pppd's thread.
    let raw = unsafe { (*(&raw const ffi::ipcp_hisoptions).cast::<ffi::ipcp_options>()).hisaddr };
    (raw != 0).then(|| Ipv4Addr::from(u32::from_be(raw)))
}

/// Our own address on the link (IPCP "our address").
pub fn local_address() -> Option<Ipv4Addr> {
    assert_pppd_thread();
    // SAFETY: as in peer_address, unit 0 of ipcp_gotoptions.
    let raw = unsafe { (*(&raw const ffi::ipcp_gotoptions).cast::<ffi::ipcp_options>()).ouraddr };
    (raw != 0).then(|| Ipv4Addr::from(u32::from_be(raw)))
}

/// Octets and packets pppd counted on the link since IPCP came up (final once ip-down runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Received from the peer (the client's upload; RADIUS Acct-Input-Octets).
    pub bytes_in: u64,
    /// Sent to the peer (the client's download; RADIUS Acct-Output-Octets).
    pub bytes_out: u64,
    pub pkts_in: u32,
    pub pkts_out: u32,
    /// The octet counts are only 32 bits wide and wrap every 4 GiB: pppd 2.4 keeps `link_stats`
    /// in `unsigned int`s (the kernel's PPPIOCGSTATS counters). pppd 2.5 reads the interface's
    /// 64-bit counters (RTM_GETSTATS) into `uint64_t`s: never set there.
    pub wraps_32: bool,
}

/// pppd's own link statistics, when valid.
///
/// * pppd 2.4: the `link_stats` global, which pppd filled in `ipcp_down` just before the ip-down
///   notifiers (32 bits wide: [`LinkStats::wraps_32`]).
/// * pppd 2.5: `ppp_get_link_stats`, which takes a *fresh* reading each call (64 bits) and also
///   becomes what pppd logs ("Sent N bytes, received M bytes") and puts into the ip-down script's
///   BYTES_SENT/BYTES_RCVD — pppd prints the last reading any caller took. Inside the ip-down
///   notifiers the interface is still up, so the figure can only exceed the one pppd took
///   before the notifiers by packets that arrived in between.
pub fn link_stats() -> Option<LinkStats> {
    assert_pppd_thread();
    #[cfg(not(pppd_2_5))]
    {
        // SAFETY: link_stats / link_stats_valid are pppd globals read on pppd's thread.
        let (valid, s) = unsafe { (ffi::link_stats_valid, ffi::link_stats) };
        (valid != 0).then_some(LinkStats {
            bytes_in: u64::from(s.bytes_in),
            bytes_out: u64::from(s.bytes_out),
            pkts_in: s.pkts_in,
            pkts_out: s.pkts_out,
            wraps_32: true,
        })
    }
    #[cfg(pppd_2_5)]
    {
        let mut s = ffi::ppp_link_stats_st::default();
        // SAFETY: ppp_get_link_stats fills the struct we pass by pointer.
        let ok = unsafe { ffi::ppp_get_link_stats(&mut s) };
        ok.then(|| LinkStats {
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            pkts_in: s.pkts_in,
            pkts_out: s.pkts_out,
            wraps_32: false,
        })
    }
}

/// pppd's own process id (the plugin runs inside pppd; never looked up with pgrep/ps).
pub fn pppd_pid() -> u32 {
    std::process::id()
}

// ---------------------------------------------------------------------------------------------
// Exit status, timers, ending the link
// ---------------------------------------------------------------------------------------------

/// pppd exit codes we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    FatalError,
    UserRequest,
    InitFailed,
    PeerAuthFailed,
}

impl ExitCode {
    fn raw(self) -> c_int {
        match self {
            ExitCode::FatalError => 1,
            ExitCode::UserRequest => 5,
            ExitCode::PeerAuthFailed => 11,
            ExitCode::InitFailed => 18,
        }
    }
}

#[cfg(not(pppd_2_5))]
const _: () = assert!(ffi::EXIT_FATAL_ERROR == 1 && ffi::EXIT_INIT_FAILED == 18 && ffi::EXIT_PEER_AUTH_FAILED == 11);
#[cfg(pppd_2_5)]
const _: () = assert!(
    ffi::ppp_exit_code_EXIT_FATAL_ERROR == 1
        && ffi::ppp_exit_code_EXIT_USER_REQUEST == 5
        && ffi::ppp_exit_code_EXIT_INIT_FAILED == 18
        && ffi::ppp_exit_code_EXIT_PEER_AUTH_FAILED == 11
);

/// Sets pppd's exit status.
pub fn set_status(code: ExitCode) {
    assert_pppd_thread();
    // SAFETY: writing pppd's exit status on pppd's thread.
    unsafe {
        #[cfg(not(pppd_2_5))]
        {
            ffi::status = code.raw();
        }
        #[cfg(pppd_2_5)]
        ffi::ppp_set_status(code.raw() as ffi::ppp_exit_code_t);
    }
}

/// A pending timer, for [`cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId(usize);

/// A scheduled callback and its token.
type Timer = (fn(usize), usize);

thread_local! {
    static TIMERS: RefCell<BTreeMap<usize, Timer>> = const { RefCell::new(BTreeMap::new()) };
    static NEXT_TIMER: Cell<usize> = const { Cell::new(1) };
}

extern "C" fn timer_c(arg: *mut c_void) {
    let id = arg as usize;
    let entry = TIMERS.with(|t| t.borrow_mut().remove(&id));
    if let Some((f, token)) = entry {
        guard("timer", (), true, || f(token));
    }
}

/// Runs `f(token)` from pppd's main loop after `after` (0 = on the next loop iteration).
/// Never blocks: this is how the plugin waits without stalling LCP.
pub fn schedule(f: fn(usize), token: usize, after: Duration) -> TimerId {
    assert_pppd_thread();
    let id = NEXT_TIMER.with(|n| {
        let v = n.get();
        n.set(v.wrapping_add(1).max(1));
        v
    });
    TIMERS.with(|t| t.borrow_mut().insert(id, (f, token)));
    let s = after.as_secs().min(i32::MAX as u64) as c_int;
    let us = after.subsec_micros() as c_int;
    // SAFETY: pppd's timeout stores (func, arg) and calls func(arg) later on its own thread; the
    // arg is an integer id, not a pointer that could dangle.
    unsafe {
        #[cfg(not(pppd_2_5))]
        ffi::timeout(Some(timer_c), id as *mut c_void, s, us);
        #[cfg(pppd_2_5)]
        ffi::ppp_timeout(Some(timer_c), id as *mut c_void, s, us);
    }
    TimerId(id)
}

/// Cancels a timer that has not fired yet (a fired or unknown id is ignored).
pub fn cancel(t: TimerId) {
    assert_pppd_thread();
    let existed = TIMERS.with(|m| m.borrow_mut().remove(&t.0).is_some());
    if existed {
        // SAFETY: removes the (func, arg) pair registered by `schedule`.
        unsafe {
            #[cfg(not(pppd_2_5))]
            ffi::untimeout(Some(timer_c), t.0 as *mut c_void);
            #[cfg(pppd_2_5)]
            ffi::ppp_untimeout(Some(timer_c), t.0 as *mut c_void);
        }
    }
}

thread_local! {
    static ENDING: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Seconds after `lcp_close` before the first fallback (SIGTERM to ourselves).
pub const END_FALLBACK_TERM: Duration = Duration::from_secs(3);
/// Seconds after the SIGTERM before the last resort (SIGKILL, logged as FATAL).
pub const END_FALLBACK_KILL: Duration = Duration::from_secs(3);

/// Ends the session through pppd's own path: sets the exit status, closes LCP from a timer on the
/// next loop iteration (never from inside a notifier, so the notifier chain completes and ip-down
/// notifiers run), and arms fallbacks in case the link is still up later. Idempotent.
pub fn end_link(code: ExitCode, reason: &str) {
    assert_pppd_thread();
    let first = ENDING.with(|e| {
        let mut e = e.borrow_mut();
        if e.is_some() {
            false
        } else {
            *e = Some(to_cstring(reason));
            true
        }
    });
    set_status(code);
    if !first {
        return;
    }
    schedule(close_lcp_now, 0, Duration::ZERO);
}

fn close_lcp_now(_: usize) {
    let reason = ENDING.with(|e| e.borrow().clone()).unwrap_or_else(|| c"pppgate".into());
    // SAFETY: lcp_close(unit, reason) on unit 0 from pppd's main loop (a timer callback); pppd
    // keeps the reason pointer, so it is leaked for the rest of the process.
    unsafe { ffi::lcp_close(0, reason.into_raw()) };
    schedule(end_fallback_term, 0, END_FALLBACK_TERM);
}

fn end_fallback_term(_: usize) {
    if !phase().link_up() {
        return;
    }
    log(Level::Error, "link still up after LCP close; sending SIGTERM to pppd");
    send_self(libc::SIGTERM);
    schedule(end_fallback_kill, 0, END_FALLBACK_KILL);
}

fn end_fallback_kill(_: usize) {
    if !phase().link_up() {
        return;
    }
    log(Level::Error, "FATAL: session could not be ended through pppd; killing pppd (SIGKILL)");
    send_self(libc::SIGKILL);
}

fn send_self(sig: c_int) {
    // SAFETY: kill(2) on our own pid with a valid signal number.
    let rc = unsafe { libc::kill(libc::getpid(), sig) };
    if rc != 0 {
        log(Level::Error, &format!("FATAL: kill(self, {sig}) failed: {}", std::io::Error::last_os_error()));
    }
}

/// Whether [`end_link`] has been called in this process.
pub fn ending() -> bool {
    ENDING.with(|e| e.borrow().is_some())
}

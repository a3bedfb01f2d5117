//! Where one connect's lock-held time goes on a box with N sessions: builds N TUN stand-ins named
//! pppN in a network namespace of its own with what reconcile installs for them (download +
//! upload shaping with an IFB on each, a route in `main` on every tenth, policy routing on every
//! hundredth), then connects fresh sessions one at a time the way the plugin does (gate, then
//! `engine::converge` in session scope) and times every backend call the engine makes, and the
//! disconnect. Figures only, for profiling; the benchmark with SQL and the plugin's whole path is
//! radius-helper/benches/policy_apply.rs.
//!
//! Needs root. `cargo run --release -p policy-core --example connect_probe -- [--sizes 100,1000,10000] [--iters 30]`
//! (`PROBE_SHAPING=none`: sessions without shaping, to see the rest without tc's cost). Under
//! `perf record -g` it shows where the kernel spends the time (docs/ARCHITECTURE.md, "Measured").

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use policy_core::config::{Config, GardenEntry};
use policy_core::error::Result;
use policy_core::kernel::{
    links, Backends, Member, Netlink, Nft, NftNetlink, NftSet, NftState, OwnedRoute, OwnedRule, RouteQuery, Routes,
    RoutesNetlink, Rules, RulesNetlink, SetChange, Shaping, Sysctl, SysctlProc, SysctlReport, Tc, TcNetlink, TcState,
};
use policy_core::policy::engine;
use policy_core::policy::model::{PbrSpec, Policy, PolicyState, Reason, RouteSpec, Speed};
use policy_core::policy::planner::{Desired, DesiredSession, Scope};
use pppgate_testkit::*;

type Log = Rc<RefCell<BTreeMap<&'static str, Vec<Duration>>>>;

fn timed<T>(log: &Log, what: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    log.borrow_mut().entry(what).or_default().push(t.elapsed());
    out
}

struct TNft(NftNetlink, Log);
struct TTc(TcNetlink, Log);
struct TRoutes(RoutesNetlink, Log);
struct TRules(RulesNetlink, Log);
struct TSysctl(SysctlProc, Log);
struct Timed {
    nft: TNft,
    tc: TTc,
    routes: TRoutes,
    rules: TRules,
    sysctl: TSysctl,
}

impl Nft for TNft {
    fn ensure_base_with(&mut self, garden: &[GardenEntry], members: &BTreeMap<Member, NftSet>) -> Result<()> {
        timed(&self.1, "nft.ensure_base", || self.0.ensure_base_with(garden, members))
    }
    fn read(&mut self) -> Result<NftState> {
        timed(&self.1, "nft.read", || self.0.read())
    }
    fn sets_of(&mut self, m: Member) -> Result<BTreeSet<NftSet>> {
        timed(&self.1, "nft.sets_of", || self.0.sets_of(m))
    }
    fn commit(&mut self, changes: &[SetChange]) -> Result<()> {
        timed(&self.1, "nft.commit", || self.0.commit(changes))
    }
    fn table_present(&mut self) -> Result<bool> {
        timed(&self.1, "nft.table_present", || self.0.table_present())
    }
}

impl Tc for TTc {
    fn read(&mut self) -> Result<TcState> {
        timed(&self.1, "tc.read", || self.0.read())
    }
    fn read_one(&mut self, ifname: &str) -> Result<Shaping> {
        timed(&self.1, "tc.read_one", || self.0.read_one(ifname))
    }
    fn set(&mut self, ifname: &str, shaping: &Shaping) -> Result<()> {
        timed(&self.1, "tc.set", || self.0.set(ifname, shaping))
    }
    fn clear(&mut self, ifname: &str) -> Result<()> {
        timed(&self.1, "tc.clear", || self.0.clear(ifname))
    }
    fn remove_ifb(&mut self, ifb: &str) -> Result<()> {
        timed(&self.1, "tc.remove_ifb", || self.0.remove_ifb(ifb))
    }
}

impl Routes for TRoutes {
    fn read(&mut self) -> Result<Vec<OwnedRoute>> {
        timed(&self.1, "routes.read", || self.0.read())
    }
    fn read_scoped(&mut self, q: &RouteQuery) -> Result<Vec<OwnedRoute>> {
        timed(&self.1, "routes.read_scoped", || self.0.read_scoped(q))
    }
    fn add(&mut self, r: &OwnedRoute) -> Result<()> {
        timed(&self.1, "routes.add", || self.0.add(r))
    }
    fn del(&mut self, r: &OwnedRoute) -> Result<()> {
        timed(&self.1, "routes.del", || self.0.del(r))
    }
    fn add_unless_held(&mut self, r: &OwnedRoute) -> Result<Option<OwnedRoute>> {
        timed(&self.1, "routes.add_unless_held", || self.0.add_unless_held(r))
    }
}

impl Rules for TRules {
    fn read(&mut self) -> Result<Vec<OwnedRule>> {
        timed(&self.1, "rules.read", || self.0.read())
    }
    fn add(&mut self, r: &OwnedRule) -> Result<()> {
        timed(&self.1, "rules.add", || self.0.add(r))
    }
    fn del(&mut self, r: &OwnedRule) -> Result<()> {
        timed(&self.1, "rules.del", || self.0.del(r))
    }
}

impl Sysctl for TSysctl {
    fn read(&mut self, ifnames: &[String]) -> Result<SysctlReport> {
        timed(&self.1, "sysctl.read", || self.0.read(ifnames))
    }
    fn ensure(&mut self, ifnames: &[String]) -> Result<()> {
        timed(&self.1, "sysctl.ensure", || self.0.ensure(ifnames))
    }
}

impl Backends for Timed {
    type N = TNft;
    type T = TTc;
    type R = TRoutes;
    type U = TRules;
    type S = TSysctl;
    fn nft(&mut self) -> &mut TNft {
        &mut self.nft
    }
    fn tc(&mut self) -> &mut TTc {
        &mut self.tc
    }
    fn routes(&mut self) -> &mut TRoutes {
        &mut self.routes
    }
    fn rules(&mut self) -> &mut TRules {
        &mut self.rules
    }
    fn sysctl(&mut self) -> &mut TSysctl {
        &mut self.sysctl
    }
}

fn timed_backends(log: &Log) -> Timed {
    let n = Netlink::new().expect("netlink");
    Timed {
        nft: TNft(n.nft, log.clone()),
        tc: TTc(n.tc, log.clone()),
        routes: TRoutes(n.routes, log.clone()),
        rules: TRules(n.rules, log.clone()),
        sysctl: TSysctl(n.sysctl, log.clone()),
    }
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 65, 0, 1)) + i as u32)
}

/// What reconcile would want for session `i` (the benchmark's mix). `PROBE_SHAPING=none`: no
/// shaping at all (to look at the rest without tc's cost).
fn session(i: usize, ifindex: u32) -> DesiredSession {
    let speed = if std::env::var("PROBE_SHAPING").as_deref() == Ok("none") {
        Speed::default()
    } else {
        Speed { down_kbit: Some(8000 + (i as u32 % 10) * 1000), up_kbit: Some(2000) }
    };
    let mut policy = Policy { state: PolicyState::Full, reason: Reason::Active, speed, routes: vec![], pbr: vec![] };
    if i.is_multiple_of(10) {
        let dst = format!("10.{}.{}.0/24", 110 + ((i >> 8) & 127), i & 255).parse().unwrap();
        policy.routes.push(RouteSpec { dst, gateway: None, table: None, metric: None });
    }
    if i % 100 == 7 {
        policy.pbr.push(PbrSpec {
            name: format!("bench{i}"),
            table: 100,
            via: "10.100.0.40".parse().unwrap(),
            dev: "wg0".into(),
            priority: 1000,
        });
    }
    DesiredSession {
        ifname: format!("ppp{i}"),
        ifindex,
        client_ip: client_ip(i),
        connection_id: i as i64 + 1,
        pppd_pid: None,
        policy,
    }
}

fn add_tuns(from: usize, to: usize) {
    let mut script = String::new();
    for i in from..to {
        script.push_str(&format!(
            "tuntap add dev ppp{i} mode tun\naddr add 100.64.0.1 peer {}/32 dev ppp{i}\nlink set ppp{i} up\n",
            client_ip(i)
        ));
    }
    ip_batch(&script);
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_log(log: &Log, iters: usize) {
    for (what, v) in log.borrow_mut().iter_mut() {
        let calls = v.len();
        let total: Duration = v.iter().sum();
        println!(
            "    {what:<20} {:>5.1} calls/connect   median {:>8.3} ms   total/connect {:>8.3} ms",
            calls as f64 / iters as f64,
            ms(median(v)),
            ms(total) / iters as f64
        );
    }
    log.borrow_mut().clear();
}

/// The two kinds of filtered route dump a session-scope read makes, timed alone.
fn route_pieces(n: usize) {
    let mut r = RoutesNetlink::new().unwrap();
    let i = n / 2;
    let mut time = |label: &str, q: RouteQuery| {
        let mut v: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                r.read_scoped(&q).unwrap();
                t.elapsed()
            })
            .collect();
        println!("    {label:<58} median {:>8.3} ms", ms(median(&mut v)));
    };
    time(
        "routes through one interface, all tables (oif dump)",
        RouteQuery { ifnames: BTreeSet::from([format!("ppp{i}")]), ..Default::default() },
    );
    time(
        "routes to one destination in main (table dump)",
        RouteQuery { dsts: BTreeSet::from([("192.168.250.0/24".parse().unwrap(), 254)]), ..Default::default() },
    );
    time(
        "default route of table 100 (table dump)",
        RouteQuery { table_defaults: BTreeSet::from([100]), ..Default::default() },
    );
}

fn main() {
    let a = bench_args(30);
    private_netns();
    println!("connect probe — kernel {}, load average {}", run(&["uname", "-r"]).trim(), loadavg());
    veth("wg0", "wg0p", None);
    run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
    let env = TestEnv::new("host=/nonexistent dbname=none");
    let cfg: Config = env.config();
    let mut have = 0usize;
    let mut fresh = 1_000_000usize;
    for &n in &a.sizes {
        let t = Instant::now();
        add_tuns(have, n);
        let mut b = Netlink::new().unwrap();
        let sessions: Vec<DesiredSession> =
            (have..n).map(|i| session(i, links::ifindex(&format!("ppp{i}")).unwrap().expect("created"))).collect();
        // Installed in slices, like a cold reconcile of the new sessions only.
        for chunk in sessions.chunks(500) {
            let d = Desired { sessions: chunk.to_vec(), subnet_pbr: vec![] };
            engine::converge(&mut b, &cfg, &d, &Scope::of(&d.sessions), false).expect("install");
        }
        drop(b);
        println!("\n=== {n} sessions (load average {}) ===", loadavg());
        println!(" setup: {} sessions installed in {:?}", n - have, t.elapsed());
        have = n;

        let log: Log = Rc::default();
        let (mut locked, mut down, mut create) = (vec![], vec![], vec![]);
        let (mut full_read, mut addr_read) = (vec![], vec![]);
        for k in 0..a.iters {
            let i = fresh + k;
            let t = Instant::now();
            add_tuns(i, i + 1);
            create.push(t.elapsed());
            let ifindex = links::ifindex(&format!("ppp{i}")).unwrap().unwrap();
            let mut s = session(i, ifindex);
            s.policy.routes = vec![RouteSpec {
                dst: format!("192.168.{}.0/24", k % 256).parse().unwrap(),
                gateway: None,
                table: None,
                metric: None,
            }];
            let mut gate = Netlink::new().unwrap();
            engine::gate(&mut gate, &cfg, s.member()).unwrap();
            drop(gate);
            let mut b = timed_backends(&log);
            let t = Instant::now();
            let d = Desired { sessions: vec![s.clone()], subnet_pbr: vec![] };
            engine::converge(&mut b, &cfg, &d, &Scope::of(&d.sessions), false).expect("connect");
            locked.push(t.elapsed());
            drop(b);
            // The peer check's two possible reads, then ip-down as the plugin does it.
            let t = Instant::now();
            links::LinkSnapshot::read().expect("link dump");
            full_read.push(t.elapsed());
            let t = Instant::now();
            links::LinkSnapshot::read_addresses().expect("address dump");
            addr_read.push(t.elapsed());
            let mut b = Netlink::new().unwrap();
            let t = Instant::now();
            let errors = engine::teardown_link(&mut b, Some(&s.ifname), Some(s.member()), &BTreeSet::new());
            assert!(errors.is_empty(), "ip-down: {errors:?}");
            down.push(t.elapsed());
            drop(b);
            run(&["ip", "link", "del", &s.ifname]);
        }
        fresh += a.iters;
        println!(
            " one connect (down+up shaping, 1 route): converge median {:.3} ms; ip-down (teardown_link) median {:.3} ms; TUN create (ip) {:.3} ms",
            ms(median(&mut locked)),
            ms(median(&mut down)),
            ms(median(&mut create))
        );
        println!(
            "  ip-down's peer check: link dump with counters {:.3} ms, address dump {:.3} ms (medians)",
            ms(median(&mut full_read)),
            ms(median(&mut addr_read))
        );
        println!("  backend calls inside converge:");
        print_log(&log, a.iters);
        route_pieces(n);
    }
}

//! Connect storm benchmark (issue 15, "Storms"): figures, printed, never asserted.
//!
//! `cargo bench -p pppgate --bench connect_storm [-- --sizes 100,10000 --storm 2000 --spread-ms 10000]`
//! (root: a network namespace of its own and a private PostgreSQL, see pppgate-testkit).
//!
//! On a box already carrying N sessions (a TUN farm with what reconcile installs, as
//! `policy_apply` builds it), STORM connects arrive evenly within SPREAD, each in a thread of its
//! own doing what pppd with pppgate.so does for one link: the gate (`engine::gate`), the SQL lookup
//! and the apply window on one fresh connection, the mapping, then the apply attempts driven by
//! the plugin's own state machine (`policy_core::connect::Phase`: try the apply lock; busy → its
//! backoff, 10 ms doubling to 250 ms, within the window counted from ip-up; taken → validate and
//! converge in session scope, backends closed after the lock). The TUN devices exist before the
//! storm (pppd creates its interface before ip-up). Printed per size: how many connects were
//! applied, how many the window ended and why any other ended, ip-up → gate released, the lock
//! wait and hold, attempts, connects per second through the lock, and how many storm addresses
//! are in full_v4 afterwards (read back with nft). Each storm runs twice: SQL direct (a backend
//! started per connect) and through a local pgbouncer (`pooler = true`) when it is installed. The
//! first size is the baseline of the run.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_core::config::Config;
use policy_core::connect::{self, Action, Attempt, Phase};
use policy_core::db;
use policy_core::db::connections::LoginLookup;
use policy_core::error::one_line;
use policy_core::kernel::{Member, Netlink};
use policy_core::lock::Lock;
use policy_core::mapping::Mapping;
use policy_core::policy::planner::{Desired, Scope};
use policy_core::policy::{apply, engine};
use policy_core::Error;
use pppgate_testkit::*;

struct Args {
    sizes: Vec<usize>,
    storm: usize,
    spread: Duration,
}

fn args() -> Args {
    let mut a = Args { sizes: vec![100, 10_000], storm: 2_000, spread: Duration::from_secs(10) };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = || argv.get(i + 1).unwrap_or_else(|| panic!("{} needs a value", argv[i]));
        match argv[i].as_str() {
            "--sizes" => a.sizes = next().split(',').map(|s| s.parse().expect("size")).collect(),
            "--storm" => a.storm = next().parse().expect("storm"),
            "--spread-ms" => a.spread = Duration::from_millis(next().parse().expect("spread-ms")),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// What one connect of the storm came to.
#[derive(Debug, Default, Clone)]
struct Connect {
    /// `None`: applied; otherwise why the link was ended.
    ended: Option<String>,
    by_window: bool,
    /// ip-up → gate released (applied) or → the end.
    latency: Duration,
    sql: Duration,
    lock_wait: Duration,
    lock_held: Duration,
    attempts: u32,
}

fn storm_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 70, (i >> 8) as u8, (i & 255) as u8)
}

fn storm_if(base: usize, i: usize) -> String {
    format!("ppp{}", base + i)
}

/// One link's connect, as pppd with pppgate.so runs it from its address hook to the gate's release.
fn one_connect(cfg: &Config, ifname: &str, ip: Ipv4Addr, login: &str, start_ts: i64) -> Connect {
    let up = Instant::now();
    let mut c = Connect::default();
    let end = |mut c: Connect, why: String| {
        c.latency = up.elapsed();
        c.ended = Some(why);
        c
    };
    // 1. The gate (the address hook, before the interface is up).
    let ifindex = match policy_core::kernel::links::ifindex(ifname) {
        Ok(Some(i)) => i,
        other => return end(c, format!("no interface {ifname}: {other:?}")),
    };
    let member = Member::new(ifindex, ip);
    if let Err(e) = Netlink::recording_to(&cfg.paths.sessions_dir).and_then(|mut b| engine::gate(&mut b, cfg, member)) {
        return end(c, format!("gate: {}", one_line(&e)));
    }
    // 2. ip-up: the lookup and the window on one fresh connection.
    let t_sql = Instant::now();
    let (facts, window) = match db::connect(&cfg.database).and_then(|mut client| {
        let f = db::connections::lookup_login(&mut client, login)?;
        let w = db::settings::apply_window_on(&mut client, cfg.connect.settings_timeout)
            .map(|w| connect::apply_window(w, cfg.connect.apply_window_fallback))
            .unwrap_or(cfg.connect.apply_window_fallback);
        Ok((f, w))
    }) {
        Ok((LoginLookup::Found(f), w)) => (f, w),
        Ok((other, _)) => return end(c, format!("lookup: {other:?}")),
        Err(e) => return end(c, format!("sql: {}", one_line(&e))),
    };
    c.sql = t_sql.elapsed();
    let t_map = Instant::now();
    let pid = std::process::id();
    let m = Mapping {
        connection_id: facts.id,
        ppp_if: ifname.to_string(),
        client_ip: ip,
        start_ts,
        pppd_pid: pid,
        session_id: None,
        up_ts: Some(policy_core::lock::now_unix()),
        counters_base: None,
        process: policy_core::procfs::identity(pid).ok().flatten(),
    };
    if let Err(e) = m.write_atomic(&cfg.paths.sessions_dir) {
        return end(c, format!("mapping: {}", one_line(&e)));
    }
    let mapping_us = t_map.elapsed().as_micros() as u64;
    // 3. The apply attempts, driven by the plugin's own state machine.
    let mut phase: Phase<()> = Phase::default();
    phase.start_applying(
        apply::session_for_connect(ifname, ifindex, ip, pid, &facts),
        up,
        c.sql.as_micros() as u64,
        mapping_us,
    );
    let since = Instant::now();
    loop {
        let Some(desired) = phase.begin_attempt() else { return end(c, "the phase left applying".into()) };
        c.attempts += 1;
        let outcome = match Lock::try_acquire(&cfg.paths.apply_lock, "pppd-connect") {
            Ok(lock) => {
                let t = Instant::now();
                c.lock_wait = t - since;
                let mut backends = None;
                let r = (|| {
                    let b = backends.insert(Netlink::recording_to(&cfg.paths.sessions_dir)?);
                    let mut d = Desired { sessions: vec![desired], subnet_pbr: vec![] };
                    apply::validate(cfg, &mut d)?;
                    let scope = Scope::of(&d.sessions);
                    engine::converge(b, cfg, &d, &scope, false)
                })();
                c.lock_held = t.elapsed();
                drop(lock);
                drop(backends);
                match r {
                    Ok(_) => Attempt::Applied,
                    Err(e) => Attempt::Failed(format!("policy apply failed: {}", one_line(&e))),
                }
            }
            Err(Error::Locked { .. }) => Attempt::LockBusy { holder: None },
            Err(e) => Attempt::Failed(format!("cannot take the apply lock: {}", one_line(&e))),
        };
        match phase.attempted(outcome, Instant::now(), || window) {
            Action::Retry(wait) => {
                std::thread::sleep(wait);
                phase.retry_scheduled(());
            }
            Action::Applied { since_up, .. } => {
                c.latency = since_up;
                return c;
            }
            Action::End { reason, outcome, .. } => {
                c.by_window = outcome == Some(policy_core::metrics::events::Outcome::EndedWindow);
                return end(c, reason);
            }
            Action::Nothing => return end(c, "nothing to do".into()),
        }
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn dist(label: &str, mut v: Vec<Duration>) {
    println!(
        "    {label:<36} median {:>9} ms   p90 {:>9} ms   p99 {:>9} ms   max {:>9} ms   (n={})",
        ms(pct(&mut v, 0.5)),
        ms(pct(&mut v, 0.9)),
        ms(pct(&mut v, 0.99)),
        ms(pct(&mut v, 1.0)),
        v.len()
    );
}

/// The figures of one storm, for the summary.
struct Figures {
    box_size: usize,
    sql: &'static str,
    applied: usize,
    by_window: usize,
    other_ended: usize,
    wall: Duration,
    held_median: Duration,
    latency_p99: Duration,
}

fn storm(pg: &PgServer, cfg: &Config, a: &Args, box_size: usize, round: usize, sql: &'static str) -> Figures {
    let base = 200_000 + round * 10_000;
    let n = a.storm;
    pg.psql(&format!(
        "INSERT INTO vpn_connections (subaccount_login, status, rate_down_kbit, rate_up_kbit)
         SELECT 'st{round}_' || g, 'CLAIMED', 8000, 2000 FROM generate_series(0, {}) g;",
        n - 1
    ));
    let t = Instant::now();
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!(
            "tuntap add dev {0} mode tun\naddr add 100.64.0.1 peer {1}/32 dev {0}\nlink set {0} up\n",
            storm_if(base, i),
            storm_ip(i)
        ));
    }
    ip_batch(&script);
    println!(" storm setup: {n} TUN devices and rows in {:?}", t.elapsed());
    let start_ts = policy_core::procfs::own_start_epoch().expect("own start time");
    let cfg = Arc::new(cfg.clone());
    let t0 = Instant::now() + Duration::from_millis(200);
    let load_before = loadavg();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let cfg = Arc::clone(&cfg);
            let at = t0 + a.spread.mul_f64(i as f64 / n as f64);
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || {
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    one_connect(&cfg, &storm_if(base, i), storm_ip(i), &format!("st{round}_{i}"), start_ts)
                })
                .expect("thread")
        })
        .collect();
    let results: Vec<Connect> = handles.into_iter().map(|h| h.join().expect("storm thread")).collect();
    let wall = t0.elapsed();
    let applied: Vec<&Connect> = results.iter().filter(|c| c.ended.is_none()).collect();
    let by_window = results.iter().filter(|c| c.by_window).count();
    let mut others: std::collections::BTreeMap<String, usize> = Default::default();
    for c in results.iter().filter(|c| c.ended.is_some() && !c.by_window) {
        *others.entry(c.ended.clone().unwrap_or_default()).or_default() += 1;
    }
    let full = nft_members().get("full_v4").cloned().unwrap_or_default();
    let policed = (0..n).filter(|i| full.iter().any(|e| member_is(e, &storm_ip(*i).to_string()))).count();
    println!(
        " storm of {n} connects within {:?} on a box with {box_size} sessions, SQL {sql} (load before {load_before}, after {}):",
        a.spread,
        loadavg()
    );
    println!(
        "    applied {} of {n}, ended by the window {by_window}, ended otherwise {}; storm addresses in full_v4 afterwards: {policed}",
        applied.len(),
        others.values().sum::<usize>()
    );
    for (why, k) in &others {
        println!("      {k} × {why}");
    }
    println!(
        "    last decision {:.1} s after the first arrival; {:.0} connects/s applied over that time",
        wall.as_secs_f64(),
        applied.len() as f64 / wall.as_secs_f64()
    );
    dist("ip-up → gate released (applied)", applied.iter().map(|c| c.latency).collect());
    dist("  sql (connect + lookup + window)", applied.iter().map(|c| c.sql).collect());
    dist("  waiting for the apply lock", applied.iter().map(|c| c.lock_wait).collect());
    dist("  lock held (validate + converge)", applied.iter().map(|c| c.lock_held).collect());
    dist("ip-up → end (ended by the window)", results.iter().filter(|c| c.by_window).map(|c| c.latency).collect());
    let mut att: Vec<u32> = applied.iter().map(|c| c.attempts).collect();
    att.sort_unstable();
    if let (Some(med), Some(max)) = (att.get(att.len() / 2), att.last()) {
        println!("    apply attempts per applied connect: median {med}, max {max}");
    }
    let mut held: Vec<Duration> = applied.iter().map(|c| c.lock_held).collect();
    let mut lat: Vec<Duration> = applied.iter().map(|c| c.latency).collect();
    let fig = Figures {
        box_size,
        sql,
        applied: applied.len(),
        by_window,
        other_ended: others.values().sum(),
        wall,
        held_median: pct(&mut held, 0.5),
        latency_p99: pct(&mut lat, 0.99),
    };

    // ip-down for every storm link (under the lock, as the plugin's cleanup), then the devices go.
    let t = Instant::now();
    for i in 0..n {
        let ifname = storm_if(base, i);
        let Ok(Some(ifindex)) = policy_core::kernel::links::ifindex(&ifname) else { continue };
        let mut b = Netlink::recording_to(&cfg.paths.sessions_dir).expect("netlink");
        let lock =
            Lock::acquire_within(&cfg.paths.apply_lock, "pppd-disconnect", Duration::from_secs(5)).expect("lock");
        let _ =
            engine::teardown_link(&mut b, Some(&ifname), Some(Member::new(ifindex, storm_ip(i))), &Default::default());
        drop(lock);
        let _ = Mapping::remove(&cfg.paths.sessions_dir, &ifname);
    }
    let mut script = String::new();
    for i in 0..n {
        script.push_str(&format!("link del {}\n", storm_if(base, i)));
    }
    ip_batch(&script);
    println!(" storm teardown (ip-down of every link, one after the other) in {:?}", t.elapsed());
    fig
}

fn main() {
    let a = args();
    private_netns();
    println!("pppgate connect storm benchmark — {}", machine());
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cfg = env.config();
    println!(
        "apply window {:?} (the fallback; no settings row), backoff {:?} doubling to {:?}",
        cfg.connect.apply_window_fallback,
        connect::BACKOFF_START,
        connect::BACKOFF_MAX
    );
    farm_uplink();
    // The same storms through a local pgbouncer (session pooling, docs/ARCHITECTURE.md "Warm SQL").
    let bouncer = start_bouncer(&pg);
    let mut farms = Vec::new();
    let mut have = 0;
    let mut figures = Vec::new();
    for (round, &size) in a.sizes.iter().enumerate() {
        println!("\n=== {size} sessions on the box ===");
        let t = Instant::now();
        farm_rows(&pg, have + 1, size);
        farms.push(tun_farm(&env.sessions_dir, have + 1, size - have, (have + 1) as i64, ((size - have) / 40).max(1)));
        have = size;
        let (_, ops) = reconcile_in_process(&cfg);
        println!(" setup: {size} sessions installed ({ops} operations) in {:?}", t.elapsed());
        figures.push(storm(&pg, &cfg, &a, size, 2 * round, "direct"));
        if let Some(b) = &bouncer {
            let mut pooled = cfg.clone();
            pooled.database.pg =
                format!("host={} port=6432 user=postgres dbname=postgres", b.dir.path().display()).parse().unwrap();
            pooled.database.pooler = true;
            figures.push(storm(&pg, &pooled, &a, size, 2 * round + 1, "through pgbouncer"));
        }
    }
    println!("\n=== storms: {} connects within {:?} ===", a.storm, a.spread);
    let first = &figures[0];
    for f in &figures {
        println!(
            "  {:>6} sessions, SQL {:<17}: applied {:>5}, ended by the window {:>5}, other ends {:>3}; lock held median {:>7} ms ({:.2}× the {}-session box); \
             gate released p99 {:>8} ms; done after {:.1} s (goal: every connect policed within its window, 0 ended: {})",
            f.box_size,
            f.sql,
            f.applied,
            f.by_window,
            f.other_ended,
            ms(f.held_median),
            f.held_median.as_secs_f64() / first.held_median.as_secs_f64().max(1e-9),
            first.box_size,
            ms(f.latency_p99),
            f.wall.as_secs_f64(),
            if f.by_window + f.other_ended == 0 { "met" } else { "NOT met" }
        );
    }
    drop(farms);
}

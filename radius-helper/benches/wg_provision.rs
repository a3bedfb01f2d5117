//! `cargo bench -p pppgate --bench wg_provision` — WireGuard provisioning and server reconcile
//! at scale (issue 13's benchmark). Printed, never asserted.
//!
//! * Provisioning as the panel does it: `pppgate wg router add` as one process per router, one
//!   after the other, over 1,000 routers (10 tenants, round robin, so the first router of every
//!   tenant also allocates its /16). Per call: process start, configuration and master key
//!   loaded under the trust rule, keys generated and sealed, one PostgreSQL connection and the
//!   allocating transaction. Median, p99 and the seeds' claim (~200 ms per provisioning).
//! * The same provisioning in one process (library calls on one connection) up to 10,000
//!   routers: the part of a call that is the work itself rather than process and connection.
//! * `pppgate wg reconcile` of a server interface with 10,000 peers: cold (the interface does
//!   not exist: created, keyed, 10,000 peers set, read back and verified) and steady (nothing to
//!   change: read, compare, verify). The server is Debian's wireguard-go in a network namespace
//!   (the build machines' kernel has no WireGuard; the kernel backend is proven in the lab VM).
//!
//! Needs root, PostgreSQL's server binaries, wireguard-go and wg, like radius-helper/tests/wg_host.rs.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use policy_core::config::Config;
use policy_core::db::wg::{self as dbwg, NewRouter};
use policy_core::wg::keys::{generate_private, generate_psk, public_of};
use policy_core::wg::reconcile;
use policy_core::wg::seal::{Binding, MasterKeys};
use pppgate_testkit::{Cli, DbEnv, NetNs};

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");
const CLI_ROUTERS: u32 = 1_000;
const TOTAL_ROUTERS: u32 = 10_000;
const TENANTS: u32 = 10;
/// The provisioning seeds' figure for one provisioning (R903).
const SEED_CLAIM_MS: f64 = 200.0;

fn wg_config(env: &DbEnv, ifname: &str) -> PathBuf {
    let path = env.config_path("lns-a", "192.0.2.1");
    let root = env.dir();
    let mut text = fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[wireguard]\ninterface = \"{ifname}\"\nendpoint = \"198.18.0.1:51820\"\nbackend = \"userspace\"\nmaster_key_file = \"{}\"\nlock_file = \"{}\"\n",
        root.join("etc/wg-master.key").display(),
        root.join("run/wg.lock").display(),
    ));
    fs::write(&path, text).unwrap();
    path
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sorted durations → (median, p99, mean, max) in ms.
fn stats(v: &mut [Duration]) -> (f64, f64, f64, f64) {
    v.sort();
    let n = v.len();
    let pct = |p: f64| ms(v[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]);
    let mean = ms(v.iter().sum::<Duration>()) / n as f64;
    (pct(0.5), pct(0.99), mean, ms(v[n - 1]))
}

fn tenant_of(i: u32) -> u32 {
    1 + i % TENANTS
}

/// Resident set size of the process (kB), from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn wireguard_go_pid(ifname: &str) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"wireguard-go")) && args.contains(&ifname.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !filter.is_empty() && !filter.iter().any(|f| "wg_provision".contains(f.as_str())) {
        return;
    }
    let env = DbEnv::new();
    let tag = std::process::id() % 10000;
    let sifname = format!("wgb{tag}");
    let cfg_path = wg_config(&env, &sifname);
    let srv = NetNs::new("wgbench");
    srv.run(&["ip", "address", "add", "198.18.0.1/32", "dev", "lo"]);
    let c = Cli { bin: BIN.into(), config: cfg_path.clone(), env: Vec::new(), netns: Some(srv.name.clone()) };
    c.ok(&["wg", "init"]);

    // 1. One process per provisioning, as the panel calls it.
    println!("wg_provision: {CLI_ROUTERS} x `pppgate wg router add` (one process each, {TENANTS} tenants round robin)");
    let mut cli_times = Vec::with_capacity(CLI_ROUTERS as usize);
    let t_all = Instant::now();
    for i in 0..CLI_ROUTERS {
        let t = Instant::now();
        c.ok(&["wg", "router", "add", "--tenant", &tenant_of(i).to_string(), "--router", &(i + 1).to_string()]);
        cli_times.push(t.elapsed());
    }
    let cli_wall = t_all.elapsed();
    let (med, p99, mean, max) = stats(&mut cli_times);
    println!(
        "  per call: median {med:.1} ms, p99 {p99:.1} ms, mean {mean:.1} ms, max {max:.1} ms; {CLI_ROUTERS} in {:.1} s",
        cli_wall.as_secs_f64()
    );
    println!(
        "  against the seeds' ~{SEED_CLAIM_MS:.0} ms per provisioning: median {:.1}x faster, p99 {:.1}x faster",
        SEED_CLAIM_MS / med,
        SEED_CLAIM_MS / p99
    );

    // The baseline for the reconcile figures, measured in this run: the same interface with
    // 1,000 peers, cold and steady; then the interface goes (wireguard-go exits with its TUN).
    let sock = PathBuf::from(format!("/var/run/wireguard/{sifname}.sock"));
    let (cold_1k, steady_1k) = reconcile_cold_steady(&c);
    println!(
        "wg_provision: reconcile with {CLI_ROUTERS} peers (baseline): cold {:.0} ms, steady median {:.0} ms",
        ms(cold_1k),
        ms(steady_1k)
    );
    srv.run(&["ip", "link", "del", &sifname]);
    let _ = fs::remove_file(&sock);

    // 2. The same work in one process, on one connection, up to TOTAL_ROUTERS.
    let cfg = Config::load(&cfg_path).expect("the bench configuration loads");
    let wgc = cfg.wireguard.clone().expect("[wireguard]");
    let keys = MasterKeys::load(&wgc.master_key_file).expect("master key");
    let mut client = policy_core::db::connect(&cfg.database).expect("connect");
    let server = reconcile::server_row(&mut client, &wgc, &cfg.nas.identity).expect("server row");
    let mut lib_times = Vec::with_capacity((TOTAL_ROUTERS - CLI_ROUTERS) as usize);
    let t_all = Instant::now();
    for i in CLI_ROUTERS..TOTAL_ROUTERS {
        let t = Instant::now();
        let (tenant, router) = (i64::from(tenant_of(i)), i64::from(i + 1));
        let private = generate_private().unwrap();
        let psk = generate_psk().unwrap();
        let new = NewRouter {
            router_id: router,
            tenant_id: tenant,
            tenant_name: None,
            server_id: server.id,
            name: None,
            public_key: public_of(&private).to_base64(),
            private_key: keys.seal(&private, &Binding::RouterPrivate { tenant, router }).unwrap(),
            psk: keys.seal(&psk, &Binding::RouterPsk { tenant, router }).unwrap(),
            interface_name: wgc.router_interface.clone(),
            listen_port: wgc.router_listen_port,
            keepalive: wgc.keepalive,
            routed_networks: Vec::new(),
            extra_allowed: Vec::new(),
            dns: wgc.dns.clone(),
            quarantine_s: wgc.address_quarantine.as_secs(),
        };
        dbwg::add_router(&mut client, &new).expect("add_router");
        lib_times.push(t.elapsed());
    }
    let lib_wall = t_all.elapsed();
    drop(client);
    let n = TOTAL_ROUTERS - CLI_ROUTERS;
    let (lmed, lp99, lmean, lmax) = stats(&mut lib_times);
    println!("wg_provision: {n} more in one process (keys, sealing, allocating transaction on one connection)");
    println!(
        "  per router: median {lmed:.2} ms, p99 {lp99:.2} ms, mean {lmean:.2} ms, max {lmax:.2} ms; {n} in {:.1} s",
        lib_wall.as_secs_f64()
    );
    println!(
        "  process + configuration + connection per CLI call: ~{:.1} ms of the {med:.1} ms median ({:.0}%)",
        med - lmed,
        100.0 * (med - lmed) / med
    );
    let count: String = env.db.psql("SELECT count(*) FROM wg_routers");
    println!("  routers in SQL: {count}");

    // 3. Reconcile with 10,000 peers: cold, then steady, against the 1,000-peer baseline.
    let _sock = SocketFile(sock);
    let (cold_t, smed) = reconcile_cold_steady(&c);
    let scale = f64::from(TOTAL_ROUTERS) / f64::from(CLI_ROUTERS);
    println!(
        "wg_provision: reconcile with {TOTAL_ROUTERS} peers: cold {:.2} s, steady median {:.0} ms; cold/steady {:.1}x",
        cold_t.as_secs_f64(),
        ms(smed),
        ms(cold_t) / ms(smed)
    );
    println!(
        "  against {CLI_ROUTERS} peers ({scale:.0}x the peers): cold {:.1}x, steady {:.1}x the time (linear would be {scale:.0}x)",
        ms(cold_t) / ms(cold_1k),
        ms(smed) / ms(steady_1k)
    );
    let dump = srv.run(&["wg", "show", &sifname, "dump"]);
    println!("  peers on the interface (wg show dump): {}", dump.lines().count().saturating_sub(1));
    if let Some(pid) = wireguard_go_pid(&sifname) {
        println!("  wireguard-go RSS with 10,000 peers: {} MiB", rss_kb(pid) / 1024);
    }
    // One router deleted and one added: the delta a panel makes between two timer runs.
    c.ok(&["wg", "router", "del", "1"]);
    c.ok(&["wg", "router", "add", "--tenant", "1", "--router", "100001"]);
    let t = Instant::now();
    let d = c.run(&["--json", "wg", "reconcile"]).ok();
    println!(
        "wg_provision: reconcile after one router deleted and one added: {:.0} ms (peers set {}, removed {})",
        ms(t.elapsed()),
        d["reconcile"]["peers_set"],
        d["reconcile"]["peers_removed"]
    );
    drop(srv);
}

/// `wg reconcile` on an interface that does not exist yet (cold: created, keyed, every peer set,
/// read back and verified), then five runs with nothing to change; (cold, median steady).
fn reconcile_cold_steady(c: &Cli) -> (Duration, Duration) {
    let t = Instant::now();
    let cold = c.run(&["--json", "wg", "reconcile"]).ok();
    let cold_t = t.elapsed();
    let r = &cold["reconcile"];
    assert_eq!(r["created_interface"], true, "cold reconcile created the interface: {cold}");
    println!("  cold: {} peers, {} set", r["peers"], r["peers_set"]);
    let mut steady = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = c.run(&["--json", "wg", "reconcile"]).ok();
        steady.push(t.elapsed());
        assert_eq!(s["reconcile"]["peers_set"], 0, "steady reconcile changed peers: {s}");
    }
    steady.sort();
    (cold_t, steady[2])
}

/// wireguard-go's UAPI socket file outlives the namespace teardown that SIGKILLs it.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

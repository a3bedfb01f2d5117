//! Policy engine benchmark: figures, printed, never asserted.
//!
//! `cargo bench -p pppgate --bench policy_apply [-- --sizes 100,1000,10000 --iters 200]` (root:
//! it runs in a network namespace of its own with a private PostgreSQL, see pppgate-testkit).
//!
//! 1. One session's apply:
//!    * connect path (what pppgate.so does at ip-up, in-process): gate; SQL connect + lookup;
//!      mapping write; then under the apply lock: backends, validate, converge (session scope)
//!      on a fresh interface. The lock-held part is what limits connects per second under the
//!      single writer. The ip-down half is timed separately.
//!    * CLI: `pppgate apply --connection-id N` as a process (a rate change each time).
//!    * the shell hook baseline (../shared/bench/shell-hook-baseline.sh), in the same run.
//! 2. Reconcile-all at each size (TUN sessions with mappings, one SQL row each; rates on all,
//!    a route on 10%, policy routing on 1%, 5% expired, 2% blocked): cold (everything to
//!    install), steady (nothing to do; per phase), one change, and the CLI process.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use policy_core::config::Config;
use policy_core::db;
use policy_core::db::connections::LoginLookup;
use policy_core::kernel::Netlink;
use policy_core::lock::Lock;
use policy_core::mapping::Mapping;
use policy_core::policy::apply;
use policy_core::policy::engine::{self, Timings};
use policy_core::policy::planner::{Desired, Scope};
use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(label: &str, v: &[Duration]) {
    let mut v = v.to_vec();
    let med = pct(&mut v, 0.5);
    let p99 = pct(&mut v, 0.99);
    let max = *v.last().unwrap();
    println!(
        "  {label:<44} median {:>8.3} ms   p99 {:>8.3} ms   max {:>8.3} ms   (n={})",
        ms(med),
        ms(p99),
        ms(max),
        v.len()
    );
}

fn phases(label: &str, t: &Timings) {
    let f = |us: u64| us as f64 / 1e3;
    println!(
        "  {label:<28} total {:>8.1} ms = scan+VALID {:>7.1} | SQL {:>7.1} | kernel read {:>7.1} | plan {:>6.1} | apply {:>8.1} | verify {:>7.1}",
        f(t.total_us()),
        f(t.scan_us),
        f(t.sql_us),
        f(t.read_us),
        f(t.plan_us),
        f(t.apply_us),
        f(t.verify_us)
    );
}

fn median_timings(v: &[Timings]) -> Timings {
    let med = |f: fn(&Timings) -> u64| {
        let mut x: Vec<u64> = v.iter().map(f).collect();
        x.sort();
        x[x.len() / 2]
    };
    Timings {
        scan_us: med(|t| t.scan_us),
        sql_us: med(|t| t.sql_us),
        read_us: med(|t| t.read_us),
        plan_us: med(|t| t.plan_us),
        apply_us: med(|t| t.apply_us),
        verify_us: med(|t| t.verify_us),
    }
}

/// Where a full read goes: each piece timed alone (median of 3).
fn read_breakdown(cfg: &Config) {
    use policy_core::kernel::{Nft, Routes, Rules, Tc};
    let mut k = Netlink::new().unwrap();
    let time = |label: &str, f: &mut dyn FnMut()| {
        let mut v: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        print!(" {label} {:.1}", ms(pct(&mut v, 0.5)));
    };
    print!(" breakdown (ms):");
    time("scan", &mut || {
        policy_core::mapping::scan(&cfg.paths.sessions_dir).unwrap();
    });
    time("| full link+addr dump (collector's)", &mut || {
        policy_core::kernel::links::LinkSnapshot::read().unwrap();
    });
    time("| valid_sessions", &mut || {
        policy_core::mapping::valid_sessions(&cfg.paths.sessions_dir).unwrap();
    });
    time("| nft.ensure_base", &mut || k.nft.ensure_base(&cfg.policy.walled_garden).unwrap());
    time("| nft.read", &mut || {
        k.nft.read().unwrap();
    });
    time("| tc.read", &mut || {
        k.tc.read().unwrap();
    });
    time("| routes.read", &mut || {
        k.routes.read().unwrap();
    });
    time("| rules.read", &mut || {
        k.rules.read().unwrap();
    });

    println!();
}

fn cli_json(cli: &Cli, args: &[&str]) -> (Duration, serde_json::Value) {
    let out = cli.run(args);
    assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
    (out.elapsed, out.json())
}

fn timings_of(v: &serde_json::Value) -> Timings {
    let g = |k: &str| v["timings"][k].as_u64().unwrap_or(0);
    Timings {
        scan_us: g("scan_us"),
        sql_us: g("sql_us"),
        read_us: g("read_us"),
        plan_us: g("plan_us"),
        apply_us: g("apply_us"),
        verify_us: g("verify_us"),
    }
}

/// The connect path of pppgate.so, in-process, `iters` times on fresh TUN interfaces.
fn connect_path(pg: &PgServer, env: &TestEnv, cfg: &Config, iters: usize, base: usize, with_upload: bool) -> Duration {
    let up = if with_upload { "2000" } else { "NULL" };
    pg.psql(&format!(
        "INSERT INTO vpn_connections (subaccount_login, status, rate_down_kbit, rate_up_kbit)
         SELECT 'cp' || g, 'CLAIMED', 8000, {up} FROM generate_series({base}, {}) g;
         INSERT INTO vpn_routes (connection_id, destination)
         SELECT c.id, ('192.168.' || (g % 256) || '.0/24')::cidr FROM generate_series({base}, {}) g
         JOIN vpn_connections c ON c.subaccount_login = 'cp' || g;",
        base + iters - 1,
        base + iters - 1
    ));
    let mut script = String::new();
    for i in 0..iters {
        let n = base + i;
        script.push_str(&format!(
            "tuntap add dev ppp{n} mode tun\naddr add 100.64.0.1 peer 100.66.{}.{}/32 dev ppp{n}\nlink set ppp{n} up\n",
            (n >> 8) & 255,
            n & 255
        ));
    }
    ip_batch(&script);
    let pid = std::process::id();
    let start_ts = policy_core::procfs::own_start_epoch().unwrap();
    let (mut gate, mut sql, mut map, mut locked, mut total, mut down) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut inner = Vec::new();
    let mut close = Vec::new();
    for i in 0..iters {
        let n = base + i;
        let ifname = format!("ppp{n}");
        let ip = format!("100.66.{}.{}", (n >> 8) & 255, n & 255).parse().unwrap();
        let t0 = Instant::now();
        // 1. address hook: the gate (the address bound to the interface's index, as the plugin does)
        let ifindex = policy_core::kernel::links::ifindex(&ifname).unwrap().expect("interface exists");
        let member = policy_core::kernel::Member::new(ifindex, ip);
        let mut k = Netlink::new().unwrap();
        engine::gate(&mut k, cfg, member).unwrap();
        let t1 = Instant::now();
        // 2. ip-up: SQL lookup (fresh connection, as the plugin holds none between events)
        let mut client = db::connect(&cfg.database).unwrap();
        let LoginLookup::Found(facts) = db::connections::lookup_login(&mut client, &format!("cp{n}")).unwrap() else {
            panic!("login cp{n}")
        };
        drop(client);
        let t2 = Instant::now();
        let m = Mapping {
            connection_id: facts.id,
            ppp_if: ifname.clone(),
            client_ip: ip,
            start_ts,
            pppd_pid: pid,
            session_id: None,
            up_ts: None,
            counters_base: None,
            process: policy_core::procfs::identity(pid).unwrap(),
        };
        m.write_atomic(&env.sessions_dir).unwrap();
        let t3 = Instant::now();
        // 3. apply under the single-writer lock (backends closed after it, as pppgate.so does)
        let mut b = Netlink::new().unwrap();
        {
            let _lock = Lock::try_acquire(&cfg.paths.apply_lock, "pppd-connect").unwrap();
            let mut d = Desired {
                sessions: vec![apply::session_for_connect(&ifname, ifindex, ip, pid, &facts)],
                subnet_pbr: vec![],
            };
            apply::validate(cfg, &mut d).unwrap();
            let scope = Scope::of(&d.sessions);
            inner.push(engine::converge(&mut b, cfg, &d, &scope, false).unwrap().timings);
        }
        let t4 = Instant::now();
        drop(b);
        close.push(t4.elapsed());
        gate.push(t1 - t0);
        sql.push(t2 - t1);
        map.push(t3 - t2);
        locked.push(t4 - t3);
        total.push(t4 - t0 + *close.last().unwrap());
        // ip-down
        let t5 = Instant::now();
        let mut b = Netlink::new().unwrap();
        {
            let _lock =
                Lock::acquire_within(&cfg.paths.apply_lock, "pppd-disconnect", Duration::from_millis(1500)).unwrap();
            engine::disconnect(&mut b, &ifname, member).unwrap();
        }
        drop(b);
        Mapping::remove(&env.sessions_dir, &ifname).unwrap();
        down.push(t5.elapsed());
    }
    let label = if with_upload { "down+up shaping (IFB), 1 route" } else { "down shaping only, 1 route" };
    println!(" connect path in-process, {label}:");
    stats("gate (address hook)", &gate);
    stats("SQL connect + lookup", &sql);
    stats("mapping write (fsync)", &map);
    stats("apply under the lock (lock, converge)", &locked);
    phases("  converge (median per phase)", &median_timings(&inner));
    let mut tot: Vec<Duration> = inner.iter().map(|t| Duration::from_micros(t.total_us())).collect();
    let mut app: Vec<Duration> = inner.iter().map(|t| Duration::from_micros(t.apply_us)).collect();
    println!(
        "    converge total median {:.3} ms p90 {:.3} ms; its apply phase p10 {:.3} median {:.3} p90 {:.3} ms",
        ms(pct(&mut tot, 0.5)),
        ms(pct(&mut tot, 0.9)),
        ms(pct(&mut app, 0.1)),
        ms(pct(&mut app, 0.5)),
        ms(pct(&mut app, 0.9))
    );
    stats("backends closed after the lock", &close);
    stats("total up", &total);
    stats("ip-down (lock, disconnect, mapping)", &down);
    let mut l = locked.clone();
    let med = pct(&mut l, 0.5);
    println!("  → single writer: {:.0} connects/s at the median lock-held time", 1.0 / med.as_secs_f64());
    let mut script = String::new();
    for i in 0..iters {
        script.push_str(&format!("link del ppp{}\n", base + i));
    }
    ip_batch(&script);
    med
}

/// `pppgate apply --connection-id N` as a process, a rate change each time.
fn cli_apply(pg: &PgServer, cli: &Cli, conn: usize, iters: usize) -> Duration {
    let mut wall = Vec::new();
    let mut inner = Vec::new();
    for i in 0..iters {
        pg.psql(&format!("UPDATE vpn_connections SET rate_down_kbit = {} WHERE id = {conn}", 8000 + (i % 2) * 1000));
        let (d, j) = cli_json(cli, &["--json", "apply", "--connection-id", &conn.to_string()]);
        assert_eq!(j["plan"]["ops"].as_array().map(|a| a.len()), Some(1), "{j}");
        wall.push(d);
        inner.push(timings_of(&j));
    }
    stats("CLI `pppgate apply --connection-id` (wall)", &wall);
    phases("  inside (median)", &median_timings(&inner));
    pct(&mut wall, 0.5)
}

fn shell_baseline(pg: &PgServer, iters: usize) {
    let script = std::env::var_os("PPPGATE_SHELL_BASELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench/shell-hook-baseline.sh"));
    if !script.exists() {
        println!(" shell hook baseline: {} not found (set PPPGATE_SHELL_BASELINE)", script.display());
        return;
    }
    pg.psql(
        "INSERT INTO vpn_connections (subaccount_login, status, rate_down_kbit) VALUES ('shell-user', 'CLAIMED', 8000)",
    );
    ip_batch("tuntap add dev pppsh0 mode tun\naddr add 100.64.0.1 peer 100.67.0.2/32 dev pppsh0\nlink set pppsh0 up\n");
    let psql_args = format!("-h {} -U postgres -d postgres", pg.socket_dir().display());
    let mut v = Vec::new();
    for _ in 0..iters {
        let t0 = Instant::now();
        // Its paths are /run/...: give it a private /run (mount namespace) so the host's stays untouched.
        let out = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && exec bash \"$0\" pppsh0 100.67.0.2 shell-user",
            ])
            .arg(&script)
            .env("PSQL_ARGS", &psql_args)
            .stdin(Stdio::null())
            .output()
            .expect("run baseline");
        v.push(t0.elapsed());
        if !out.status.success() {
            println!(" shell hook baseline failed: {}", String::from_utf8_lossy(&out.stderr));
            return;
        }
    }
    println!(" shell hook baseline ({}), same machine, same run:", script.display());
    stats("up + down, wall", &v);
    run(&["ip", "link", "del", "pppsh0"]);
}

/// The connect path's SQL part (connect + lookup, a fresh connection each time as pppd holds
/// none), directly against PostgreSQL and through pgbouncer, in the same run.
fn warm_sql(pg: &PgServer, cfg: &Config, iters: usize) {
    let Some(b) = start_bouncer(pg) else { return };
    let mut pooled_cfg = cfg.database.clone();
    pooled_cfg.pg = format!("host={} port=6432 user=postgres dbname=postgres", b.dir.path().display()).parse().unwrap();
    pooled_cfg.pooler = true;
    let run = |db: &policy_core::config::DatabaseConfig| -> Vec<Duration> {
        (0..iters)
            .map(|i| {
                let t = Instant::now();
                let mut c = db::connect(db).unwrap_or_else(|e| panic!("connect: {}", policy_core::error::one_line(&e)));
                let login = format!("bench{}", 1 + i % 50);
                let LoginLookup::Found(_) = db::connections::lookup_login(&mut c, &login).unwrap() else {
                    panic!("login {login}")
                };
                drop(c);
                t.elapsed()
            })
            .collect()
    };
    // Interleaved rounds, so load changes hit both alike.
    let (mut direct, mut pooled) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        direct.extend(run(&cfg.database));
        pooled.extend(run(&pooled_cfg));
    }
    println!(" warm SQL: the connect path's SQL connect + lookup, a new connection each time:");
    stats("direct to PostgreSQL (a backend started per connect)", &direct);
    stats("through pgbouncer (session pooling)", &pooled);
    let (d, p) = (pct(&mut direct, 0.5), pct(&mut pooled, 0.5));
    println!("  → pooled is {:.1}× faster at the median", d.as_secs_f64() / p.as_secs_f64().max(1e-9));
}

/// The figures at one size (medians).
struct SizeFigures {
    n: usize,
    locked_up: Duration,
    locked_down: Duration,
    cli_apply: Duration,
    steady_us: u64,
}

/// Every figure with its goal and its ratio to the smallest size of the same run.
fn print_goals(v: &[SizeFigures]) {
    println!("\n=== goals (ratios against the first size of this run; load average now {}) ===", loadavg());
    let Some(base) = v.first() else { return };
    println!(
        "  {:>7} | {:>26} | {:>26} | {:>22} | {:>24}",
        "sessions",
        "connect lock held, up+down",
        "connect lock held, down",
        "apply --connection-id",
        "reconcile-all steady"
    );
    for f in v {
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "  {:>8} | {:>9.2} ms  ({:>5.2}×)     | {:>9.2} ms  ({:>5.2}×)     | {:>9.2} ms ({:>5.2}×) | {:>9.1} ms",
            f.n,
            ms(f.locked_up),
            r(f.locked_up, base.locked_up),
            ms(f.locked_down),
            r(f.locked_down, base.locked_down),
            ms(f.cli_apply),
            r(f.cli_apply, base.cli_apply),
            f.steady_us as f64 / 1e3
        );
    }
    let last = v.last().expect("one size at least");
    let ratio = last.locked_up.as_secs_f64() / base.locked_up.as_secs_f64().max(1e-9);
    println!(
        "  O(1) connect: lock held at {} vs {} sessions {:.2}× (goal ≤ 2×): {}",
        last.n,
        base.n,
        ratio,
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );
    let get = |n: usize| v.iter().find(|f| f.n == n).map(|f| f.steady_us as f64);
    if let Some(t) = get(10_000) {
        println!(
            "  reconcile-all steady at 10,000: {:.0} ms (goal < 300 ms): {}",
            t / 1e3,
            if t < 300_000.0 { "met" } else { "NOT met" }
        );
        if let Some(k) = get(1_000) {
            println!(
                "  reconcile cost 10k/1k: {:.2} (goal ≤ 11): {}",
                t / k,
                if t / k <= 11.0 { "met" } else { "NOT met" }
            );
        }
    }
}

fn main() {
    let a = bench_args(200);
    private_netns();
    println!("pppgate policy benchmark — {}", machine());
    let t = Instant::now();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cfg = env.config();
    let cli = env.cli(BIN);
    println!("(PostgreSQL up in {:?}; binary {BIN})", t.elapsed());
    farm_uplink();

    let mut farms: Vec<TunFarm> = Vec::new();
    let mut have = 0usize;
    let mut steady_totals: Vec<(usize, u64)> = Vec::new();
    let mut summary: Vec<SizeFigures> = Vec::new();
    for (round, &n) in a.sizes.iter().enumerate() {
        println!("\n=== {n} sessions ===");
        let t = Instant::now();
        farm_rows(&pg, have + 1, n);
        farms.push(tun_farm(&env.sessions_dir, have + 1, n - have, (have + 1) as i64, ((n - have) / 40).max(1)));
        println!(" setup: {} more TUN sessions + rows in {:?}", n - have, t.elapsed());
        have = n;

        let t = Instant::now();
        let (cold, ops) = reconcile_in_process(&cfg);
        println!(" reconcile-all, in-process:");
        phases(&format!("cold ({ops} ops)"), &cold);
        let _ = t;
        let mut steady = Vec::new();
        for _ in 0..5 {
            let (tm, ops) = reconcile_in_process(&cfg);
            assert_eq!(ops, 0, "converged");
            steady.push(tm);
        }
        let st = median_timings(&steady);
        phases("steady (0 ops, median of 5)", &st);
        read_breakdown(&cfg);
        steady_totals.push((n, st.total_us()));
        let mut one = Vec::new();
        for i in 0..3 {
            pg.psql(&format!("UPDATE vpn_connections SET rate_down_kbit = {} WHERE id = 2", 5000 + i * 100));
            let (tm, ops) = reconcile_in_process(&cfg);
            assert_eq!(ops, 1);
            one.push(tm);
        }
        phases("one rate changed (median of 3)", &median_timings(&one));
        let mut wall = Vec::new();
        let mut inner = Vec::new();
        for _ in 0..3 {
            let (d, j) = cli_json(&cli, &["--json", "reconcile"]);
            wall.push(d);
            inner.push(timings_of(&j));
        }
        stats("CLI `pppgate reconcile` (wall, steady)", &wall);
        phases("  inside (median)", &median_timings(&inner));

        println!(" one session's apply with {n} sessions on the box:");
        let iters = if n >= 10_000 { a.iters / 2 } else { a.iters };
        let up = connect_path(&pg, &env, &cfg, iters, 50_000 + round * 1000, true);
        let down = connect_path(&pg, &env, &cfg, iters / 2, 60_000 + round * 1000, false);
        let cli_apply = cli_apply(&pg, &cli, 2, (iters / 4).max(10));
        summary.push(SizeFigures { n, locked_up: up, locked_down: down, cli_apply, steady_us: st.total_us() });
        if round == 0 {
            shell_baseline(&pg, 20);
            warm_sql(&pg, &cfg, 25);
        }
    }
    print_goals(&summary);
    println!("\n=== reconcile-all growth (steady state) ===");
    for (n, us) in &steady_totals {
        println!("  {n:>6} sessions: {:>8.1} ms  ({:.1} µs/session)", *us as f64 / 1e3, *us as f64 / *n as f64);
    }
    let get = |n: usize| steady_totals.iter().find(|(m, _)| *m == n).map(|(_, us)| *us as f64);
    if let (Some(a), Some(b)) = (get(1_000), get(10_000)) {
        println!("  cost ratio 10k/1k: {:.2} (linear: 10.0)", b / a);
    }
    drop(farms);
}

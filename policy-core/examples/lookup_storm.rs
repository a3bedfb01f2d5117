//! The connect path's SQL lookup in a connect storm on a starved CPU: N simultaneous connect +
//! lookup pairs (a fresh connection each, as the plugin's ip-up does) against a private
//! PostgreSQL whose postmaster — and so every backend it forks for a connect — is limited to a
//! share of one CPU with a cgroup (v1 `cpu` controller: `cpu.cfs_quota_us`). Shows what the lab's
//! `first8` case met (docs/security.md, "The connect-path lookup's statement timeout"): the
//! lookup waits for CPU, not for a lock, and its time grows as the CPU share shrinks until it
//! crosses the statement timeout. Figures only.
//!
//! Needs root and /sys/fs/cgroup/cpu. `cargo run --release -p policy-core --example lookup_storm
//! [N] [share% ...]` (default: 8 connects; 100, 20, 5, 2 and 1 % of one CPU).

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use policy_core::config::DatabaseConfig;
use policy_core::db::{self, connections::LoginLookup};
use policy_core::error::one_line;
use pppgate_testkit::PgServer;

const CGROUP: &str = "/sys/fs/cgroup/cpu/pppgate-lookup-storm";
const PERIOD_US: u64 = 100_000;

fn write(path: &str, v: &str) {
    std::fs::write(path, v).unwrap_or_else(|e| panic!("write {v} to {path}: {e}"));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(8);
    let shares: Vec<f64> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![100.0, 20.0, 5.0, 2.0, 1.0, 0.5]
    };
    let pg = PgServer::new();
    pg.psql(
        "INSERT INTO customers (id, name) VALUES (1, 'acme');
         INSERT INTO vpn_connections (id, subaccount_login, status, customer_id, quota_bytes, quota_period)
         SELECT g, 'user' || g, 'CLAIMED', 1, 1000000000, 'month' FROM generate_series(1, 256) g;
         INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out)
         SELECT g, current_date - d, 1000, 1000 FROM generate_series(1, 256) g, generate_series(0, 30) d;
         INSERT INTO vpn_routes (connection_id, destination) SELECT g, '10.99.0.0/24' FROM generate_series(1, 256) g;",
    );
    let pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    if !Path::new(CGROUP).exists() {
        std::fs::create_dir(CGROUP).unwrap_or_else(|e| panic!("create {CGROUP} (root, cgroup v1 cpu): {e}"));
    }
    write(&format!("{CGROUP}/cgroup.procs"), &pid);
    let db = DatabaseConfig {
        pg: pg.dsn().parse().unwrap(),
        connect_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(5),
        secrets_file: None,
        pooler: false,
    };
    println!(
        "{n} simultaneous connect + lookup pairs, statement_timeout 5 s; load average {}",
        pppgate_testkit::loadavg()
    );
    println!(
        "{:>10} | {:>6} | {:>14} | {:>14} | {:>14} | {:>9} | first error",
        "CPU share", "ok", "connect+lookup", "slowest", "lookup slowest", "throttled"
    );
    for share in shares {
        // The kernel's smallest quota is 1 ms: below 1 % the period grows instead (up to 1 s).
        let period = if share >= 1.0 { PERIOD_US } else { (PERIOD_US as f64 / share).min(1e6) as u64 };
        let quota = if share >= 100.0 { -1 } else { ((period as f64 * share / 100.0).round() as i64).max(1000) };
        write(&format!("{CGROUP}/cpu.cfs_quota_us"), "-1");
        write(&format!("{CGROUP}/cpu.cfs_period_us"), &period.to_string());
        write(&format!("{CGROUP}/cpu.cfs_quota_us"), &quota.to_string());
        let throttled = || {
            let s = std::fs::read_to_string(format!("{CGROUP}/cpu.stat")).unwrap_or_default();
            s.lines().find_map(|l| l.strip_prefix("nr_throttled ")).and_then(|v| v.trim().parse::<u64>().ok())
        };
        let th0 = throttled();
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let mut lookup = Duration::ZERO;
                    let r = db::connect(&db).and_then(|mut c| {
                        let t = Instant::now();
                        let r = db::connections::lookup_login(&mut c, &format!("user{}", 1 + i % 256));
                        lookup = t.elapsed();
                        r
                    });
                    let r = match r {
                        Ok(LoginLookup::Found(_)) => Ok(()),
                        Ok(_) => Err("not found".to_string()),
                        Err(e) => Err(one_line(&e)),
                    };
                    (r, t.elapsed(), lookup)
                })
            })
            .collect();
        let res: Vec<(Result<(), String>, Duration, Duration)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let cpu = match (th0, throttled()) {
            (Some(a), Some(b)) => (b - a).to_string(),
            _ => "-".into(),
        };
        let mut t: Vec<Duration> = res.iter().map(|(_, d, _)| *d).collect();
        t.sort();
        let mut l: Vec<Duration> = res.iter().map(|(_, _, d)| *d).collect();
        l.sort();
        let ok = res.iter().filter(|(r, _, _)| r.is_ok()).count();
        let err = res.iter().find_map(|(r, _, _)| r.as_ref().err().cloned()).unwrap_or_default();
        println!(
            "{:>9}% | {:>3}/{:<2} | {:>11.0} ms | {:>11.0} ms | {:>11.0} ms | {:>9} | {}",
            share,
            ok,
            n,
            t[n / 2].as_secs_f64() * 1e3,
            t[n - 1].as_secs_f64() * 1e3,
            l[n - 1].as_secs_f64() * 1e3,
            cpu,
            err
        );
    }
    // The postmaster back to the root group (it is stopped with the server anyway).
    write("/sys/fs/cgroup/cpu/cgroup.procs", &pid);
    let _ = std::fs::remove_dir(CGROUP);
}

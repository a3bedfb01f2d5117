//! Benchmark: pppgate.so's connect path against an equivalent ip-up.d shell hook, in the lab VM,
//! in the same run (`tests/lab/scenarios/connect-bench.sh`). Figures are printed, never asserted.
//!
//! * plugin: BENCH_CONNECTS real L2TP connects through pppgate.so, one at a time; per connect
//!   the plugin's own line gives ip-up notifier entry → gate released (`gate_released_us`) and
//!   its phases (`sql_us`: connection + lookup, `mapping_us`, `apply_us`: lock, nft, tc, routes,
//!   rules, read-back verify).
//! * hook: `tests/lab/guest/shell-hook.sh` (the shared baseline extended to the same work: gate,
//!   lock, psql lookup, mapping, nft, HTB both ways with IFB, route, policy routing, ungate),
//!   BENCH_CONNECTS times on a live L2TP session of a pppd without the plugin, from just before
//!   the hook process starts to its gate release; plus its whole up and down halves. Not counted
//!   for the hook: pppd's fork of /etc/ppp/ip-up and run-parts (so the ratio flatters the hook).
//! * idle: the LNS pppd's private memory (smaps_rollup Private_*) and threads with and without the
//!   plugin, and open database connections (pg_stat_activity) while sessions idle.
//! * PostgreSQL's side of the plugin's sql phase, from its own log (statement durations, session
//!   time from backend start to exit).
//! * storm: BENCH_STORM (20; `PPPGATE_BENCH_STORM`, 0 skips it) clients dial at once, directly
//!   and through pgbouncer: how many come up, stay up, are policed, and each connect's lock wait.
//!
//! Run (root; after `cargo build --release --workspace`):
//! `cargo bench --bench lab_connect_path` — 50 connects each (`PPPGATE_BENCH_CONNECTS` overrides).
//! Run any other way (e.g. `cargo test --benches`) it is a smoke run with 5.

use std::fmt::Write as _;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions};
use pppgate_testkit::lab_output::{applied_lines, percentile};

fn connects() -> usize {
    if let Some(n) = std::env::var("PPPGATE_BENCH_CONNECTS").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    if std::env::args().any(|a| a == "--bench") {
        50
    } else {
        5
    }
}

struct Stats {
    n: usize,
    median: u64,
    p99: u64,
    mean: u64,
    min: u64,
    max: u64,
}

fn stats(mut v: Vec<u64>) -> Stats {
    assert!(!v.is_empty(), "no samples");
    v.sort_unstable();
    let n = v.len();
    Stats {
        n,
        median: percentile(&v, 50.0),
        p99: percentile(&v, 99.0),
        mean: v.iter().sum::<u64>() / n as u64,
        min: v[0],
        max: v[n - 1],
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

fn line(out: &mut String, what: &str, s: &Stats) {
    let _ = writeln!(
        out,
        "  {what:<34} median {:>8} ms   p99 {:>8} ms   mean {:>8} ms   min {:>8} ms   max {:>8} ms   (n={})",
        ms(s.median),
        ms(s.p99),
        ms(s.mean),
        ms(s.min),
        ms(s.max),
        s.n
    );
}

/// From PostgreSQL's log of the plugin's sessions (`app=pppgate`): per backend, the sum of its
/// statement durations and its session time, in µs.
fn postgres_side(log: &str) -> (Vec<u64>, Vec<u64>) {
    use std::collections::BTreeMap;
    let mut stmt: BTreeMap<String, u64> = BTreeMap::new();
    let mut sessions = Vec::new();
    for l in log.lines().filter(|l| l.contains(" app=pppgate ")) {
        let Some(pid) = l.split('[').nth(1).and_then(|r| r.split(']').next()) else { continue };
        if let Some(d) =
            l.split("duration: ").nth(1).and_then(|r| r.split(" ms").next()).and_then(|v| v.parse::<f64>().ok())
        {
            *stmt.entry(pid.to_string()).or_default() += (d * 1000.0) as u64;
        }
        if let Some(t) = l.split("session time: ").nth(1).and_then(|r| r.split_whitespace().next()) {
            // H:MM:SS.mmm
            let p: Vec<&str> = t.split(':').collect();
            if let [h, m, s] = p.as_slice() {
                let secs = h.parse::<f64>().unwrap_or(0.0) * 3600.0
                    + m.parse::<f64>().unwrap_or(0.0) * 60.0
                    + s.parse::<f64>().unwrap_or(0.0);
                sessions.push((secs * 1e6) as u64);
            }
        }
    }
    (stmt.into_values().collect(), sessions)
}

fn main() {
    let n = connects();
    let opts = LabOptions::default()
        .timeout(Duration::from_secs(1200 + 20 * n as u64))
        .env("BENCH_CONNECTS", &n.to_string())
        .env("BENCH_STORM", &std::env::var("PPPGATE_BENCH_STORM").unwrap_or_else(|_| "20".into()));
    let run = Lab::run("connect-bench", &opts).unwrap_or_else(|e| panic!("the connect-bench lab run failed: {e}"));
    let f = &run.facts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "connect path benchmark, lab VM (qemu TCG, {} vCPUs), {n} connects each, run {}",
        f.expect("bench.guest_cpus"),
        run.dir.display()
    );

    // The plugin.
    let log = run.read("logs/bench-plugin-lns.log");
    let applied = applied_lines(&log);
    assert_eq!(applied.len(), n, "expected {n} `policy applied` lines in logs/bench-plugin-lns.log");
    let field = |k: &str| -> Vec<u64> {
        applied.iter().map(|a| a[k].parse().unwrap_or_else(|_| panic!("{k} in {a:?}"))).collect()
    };
    let total = stats(field("gate_released_us"));
    let _ = writeln!(
        out,
        "pppgate.so, ip-up notifier entry → gate released ({} ms wall for the {n} connects):",
        f.expect("bench.plugin_wall_ms")
    );
    line(&mut out, "gate_released", &total);
    line(&mut out, "  sql (connect + lookup)", &stats(field("sql_us")));
    line(&mut out, "  mapping", &stats(field("mapping_us")));
    line(&mut out, "  apply (lock, kernel, verify)", &stats(field("apply_us")));
    // ip-down: lock, kernel state and mapping (teardown_us: what the hook's down half does) and
    // with the final accounting flush before it (down_us).
    let removed: Vec<_> = log
        .lines()
        .filter(|l| l.starts_with("pppgate: session state removed on ip-down"))
        .map(pppgate_testkit::lab_output::fields)
        .filter(|f| f.contains_key("teardown_us"))
        .collect();
    let teardown = (!removed.is_empty()).then(|| {
        let v = |k: &str| -> Vec<u64> { removed.iter().map(|f| f[k].parse().unwrap_or(0)).collect() };
        let teardown = stats(v("teardown_us"));
        line(&mut out, "ip-down: teardown (lock, kernel, mapping)", &teardown);
        line(&mut out, "ip-down: with the final accounting", &stats(v("down_us")));
        teardown
    });
    let retried = applied.iter().filter(|a| a["attempts"] != "1").count();
    let _ = writeln!(out, "  connects that needed more than one apply attempt: {retried}");
    let (statements, sessions) = postgres_side(&run.read("logs/bench-plugin-postgres.log"));
    if !statements.is_empty() && !sessions.is_empty() {
        let _ = writeln!(out, "  PostgreSQL's side of the sql phase (its own log, app=pppgate):");
        line(&mut out, "    statements per session", &stats(statements));
        line(&mut out, "    backend session (start → exit)", &stats(sessions));
    }

    // The plugin through pgbouncer (session pooling).
    let pooled = if f.expect("bench.pooled") == "yes" {
        let log = run.read("logs/bench-plugin-pooled-lns.log");
        let applied = applied_lines(&log);
        assert_eq!(applied.len(), n, "expected {n} `policy applied` lines in logs/bench-plugin-pooled-lns.log");
        let field = |k: &str| -> Vec<u64> {
            applied.iter().map(|a| a[k].parse().unwrap_or_else(|_| panic!("{k} in {a:?}"))).collect()
        };
        let _ = writeln!(
            out,
            "pppgate.so through a local pgbouncer (session pooling, pooler = true; {} ms wall):",
            f.expect("bench.pooled_wall_ms")
        );
        let t = stats(field("gate_released_us"));
        line(&mut out, "gate_released", &t);
        line(&mut out, "  sql (connect + lookup)", &stats(field("sql_us")));
        line(&mut out, "  mapping", &stats(field("mapping_us")));
        line(&mut out, "  apply (lock, kernel, verify)", &stats(field("apply_us")));
        Some(t)
    } else {
        let _ = writeln!(out, "pppgate.so through pgbouncer: not run ({})", f.expect("bench.pooled"));
        None
    };
    // The storms: every client dials at once.
    let storm: usize = f.expect("bench.storm").parse().expect("bench.storm");
    if storm > 0 {
        let window = f.expect("bench.storm_window");
        let _ = writeln!(
            out,
            "storm: {storm} real L2TP clients of as many FULL connections (shaped both ways) dial at once; apply window {}:",
            if window == "unset" { "the fallback (no settings row)".to_string() } else { format!("{window} s (settings)") }
        );
        for tag in ["direct", "pooled"] {
            let Some(up) = f.get(&format!("storm.{tag}.up")) else { continue };
            let g = |k: &str| f.expect(&format!("storm.{tag}.{k}"));
            let _ = writeln!(
                out,
                "  {tag}: {up} of {storm} up, {} alive, {} policed, {} ended by the plugin{}; all up {} ms after the first dial",
                g("alive"),
                g("policed"),
                g("ended"),
                match g("why") {
                    "" => String::new(),
                    w => format!(" ({w})"),
                },
                g("all_up_ms"),
            );
            let applied = applied_lines(&run.read(&format!("logs/storm-{tag}-lns.log")));
            if applied.is_empty() {
                continue;
            }
            let field = |k: &str| -> Vec<u64> {
                applied.iter().map(|a| a[k].parse().unwrap_or_else(|_| panic!("{k} in {a:?}"))).collect()
            };
            let waited: Vec<u64> = applied
                .iter()
                .map(|a| {
                    let n = |k: &str| a[k].parse::<u64>().unwrap_or(0);
                    n("gate_released_us").saturating_sub(n("sql_us") + n("mapping_us") + n("apply_us"))
                })
                .collect();
            line(&mut out, "  gate_released", &stats(field("gate_released_us")));
            line(&mut out, "    sql (connect + lookup)", &stats(field("sql_us")));
            line(&mut out, "    waiting for the lock", &stats(waited));
            line(&mut out, "    apply (lock held)", &stats(field("apply_us")));
            let _ = writeln!(
                out,
                "    most apply attempts of one connect: {}",
                field("attempts").into_iter().max().unwrap_or(0)
            );
        }
    }

    // The shell hook.
    let _ = writeln!(
        out,
        "shell hook (psql + nft + tc + ip; check: {}; {} ms wall):",
        f.expect("bench.hook_check"),
        f.expect("bench.hook_wall_ms")
    );
    let tsv = run.read("bench/hook.tsv");
    let rows: Vec<Vec<f64>> = tsv
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), n, "expected {n} hook runs in bench/hook.tsv");
    let us = |a: f64, b: f64| ((b - a) * 1e6).round() as u64;
    let hook_gate = stats(rows.iter().map(|r| us(r[0], r[1])).collect());
    line(&mut out, "start → gate released", &hook_gate);
    line(&mut out, "up half, whole", &stats(rows.iter().map(|r| us(r[0], r[2])).collect()));
    line(&mut out, "down half, whole", &stats(rows.iter().map(|r| us(r[2], r[3])).collect()));
    let _ = writeln!(
        out,
        "ratio shell hook / pppgate.so (start → gate released): median {:.1}x, p99 {:.1}x",
        hook_gate.median as f64 / total.median as f64,
        hook_gate.p99 as f64 / total.p99 as f64
    );
    let hook_down = stats(rows.iter().map(|r| us(r[2], r[3])).collect());
    if let Some(td) = &teardown {
        // Up to the gate's release plus the teardown, each side: the same duties.
        let _ = writeln!(
            out,
            "ratio shell hook / pppgate.so, up (to the gate's release) + down (teardown), medians: {:.1}x \
             ({} ms vs {} ms)",
            (hook_gate.median + hook_down.median) as f64 / (total.median + td.median) as f64,
            ms(hook_gate.median + hook_down.median),
            ms(total.median + td.median)
        );
    } else {
        let _ = writeln!(out, "ratio up + down: the plugin's ip-down lines carry no teardown_us (older plugin)");
    }
    if let Some(p) = &pooled {
        let r = hook_gate.median as f64 / p.median as f64;
        let _ = writeln!(
            out,
            "ratio shell hook / pppgate.so through pgbouncer (start → gate released): median {r:.1}x, p99 {:.1}x \
             (goal ≥ 20x: {})",
            hook_gate.p99 as f64 / p.p99 as f64,
            if r >= 20.0 { "met" } else { "NOT met" }
        );
    }

    // Idle.
    let _ = writeln!(out, "LNS pppd at idle:");
    for (p, what) in [("idle.plugin", "with pppgate.so"), ("idle.noplugin", "without plugin")] {
        let _ = writeln!(
            out,
            "  {what:<16} private {:>6} kB   rss {:>6} kB   threads {}   sockets {}   database client connections open {}",
            f.expect(&format!("{p}.private_kb")),
            f.expect(&format!("{p}.rss_kb")),
            f.expect(&format!("{p}.threads")),
            f.expect(&format!("{p}.sockets")),
            f.expect(&format!("{p}.db_clients")),
        );
    }
    let _ = writeln!(out, "guest load average at the end: {}", f.expect("bench.loadavg"));
    print!("{out}");
    let _ = std::fs::write(run.dir.join("bench/summary.txt"), &out);
}

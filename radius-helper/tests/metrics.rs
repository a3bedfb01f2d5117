//! Prometheus metrics end to end: the real binary on a box with sessions in every state (a private
//! network namespace, a private PostgreSQL), its output checked by `promtool check metrics`
//! (Debian's prometheus package), served by a real `prometheus-node-exporter` with the textfile
//! collector (scraped with curl inside the namespace), and its figures compared with what the
//! kernel (`nft -j`), SQL and the spool directory say.
//!
//! Needs root. Without it every test fails (loudly), none is skipped.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

/// `name{b="1",a="2"}` → `name{a="2",b="1"}`: node_exporter sorts labels, pppgate need not.
fn normal(key: &str) -> String {
    match key.split_once('{') {
        None => key.to_string(),
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or(rest);
            let mut pairs: Vec<String> = inner.split("\",").map(|p| p.trim_end_matches('"').to_string()).collect();
            pairs.sort();
            format!("{name}{{{}}}", pairs.iter().map(|p| format!("{p}\"")).collect::<Vec<_>>().join(","))
        }
    }
}

/// Samples of an exposition: `name{labels}` (labels sorted) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {l:?}"));
            (normal(k), v.parse::<f64>().unwrap_or_else(|_| panic!("value of {l:?}")))
        })
        .collect()
}

fn has(s: &BTreeMap<String, f64>, key: &str) -> bool {
    s.contains_key(&normal(key))
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(&normal(key))
        .unwrap_or_else(|| panic!("no sample {key}; have:\n{}", s.keys().cloned().collect::<Vec<_>>().join("\n")))
}

/// `promtool check metrics` on `text`: no problem reported, exit 0.
fn promtool(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// VALID sessions whose address is in nft set `set`, read with nft(8).
/// How many of `ips` are members of `set`; members are `iface . address` (layout 2).
fn in_set(set: &str, ips: &[String]) -> f64 {
    let members = nft_set_elems(set);
    ips.iter().filter(|ip| members.iter().any(|m| m.rsplit(" . ").next() == Some(ip.as_str()))).count() as f64
}

struct World {
    pg: PgServer,
    env: TestEnv,
    cli: Cli,
    sessions: Vec<FakeSession>,
    conns: Vec<i64>,
}

fn world() -> World {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cli = env.cli(BIN);
    let mut sessions = Vec::new();
    let alice = add_connection(&pg, "alice", "CLAIMED", None, Some(2000), None);
    sessions.push(SessionBuilder::tun("ppp0", alice, "100.64.0.2").build(&env.sessions_dir));
    let bob = add_connection(&pg, "bob", "PREPROVISIONED", None, None, None);
    sessions.push(SessionBuilder::tun("ppp1", bob, "100.64.0.3").build(&env.sessions_dir));
    let dave = add_connection(&pg, "dave", "CLAIMED", None, None, None);
    pg.psql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {dave}"));
    sessions.push(SessionBuilder::veth("ppp3", dave, "100.64.0.9").build(&env.sessions_dir));
    // A network behind the box for the blocked session to send towards (its drops are counted).
    veth("far0", "far1", None);
    run(&["ip", "addr", "add", "203.0.113.254/24", "dev", "far0"]);
    run(&["ip", "link", "set", "far0", "up"]);
    run(&["ip", "link", "set", "far1", "up"]);
    cli.ok(&["reconcile"]);
    udp_burst(sessions[2].client(), "100.64.0.9", "203.0.113.1", 9, 7);
    cli.ok(&["collect"]);
    cli.ok(&["janitor"]);
    World { pg, env, cli, sessions, conns: vec![alice, bob, dave] }
}

impl World {
    fn metrics(&self) -> (String, BTreeMap<String, f64>) {
        let out = self.cli.ok(&["metrics"]);
        let s = samples(&out.stdout);
        (out.stdout, s)
    }

    fn ips(&self) -> Vec<String> {
        self.sessions.iter().map(|s| s.ip()).collect()
    }
}

#[test]
fn figures_equal_kernel_sql_and_spool_and_pass_promtool() {
    let w = world();
    let (text, s) = w.metrics();
    promtool(&text);
    // Sessions by state: what nft's state sets hold for the VALID sessions' addresses ...
    let ips = w.ips();
    assert_eq!(value(&s, "pppgate_sessions{state=\"full\"}"), in_set("full_v4", &ips), "{text}");
    assert_eq!(value(&s, "pppgate_sessions{state=\"restricted\"}"), in_set("restricted_v4", &ips));
    assert_eq!(value(&s, "pppgate_sessions{state=\"blocked\"}"), in_set("blocked_v4", &ips));
    assert_eq!(value(&s, "pppgate_sessions{state=\"gated\"}"), in_set("connect_pending_v4", &ips));
    assert_eq!(value(&s, "pppgate_sessions{state=\"unpoliced\"}"), 0.0);
    // ... and what SQL says about those connections.
    let sql = |q: &str| w.pg.psql(q).trim().parse::<f64>().unwrap();
    assert_eq!(
        value(&s, "pppgate_sessions{state=\"blocked\"}"),
        sql("SELECT count(*) FROM vpn_connections WHERE manual_block")
    );
    assert_eq!(
        value(&s, "pppgate_sessions{state=\"restricted\"}"),
        sql("SELECT count(*) FROM vpn_connections WHERE status = 'PREPROVISIONED'")
    );
    assert_eq!(
        value(&s, "pppgate_sessions{state=\"full\"}"),
        sql("SELECT count(*) FROM vpn_connections WHERE status = 'CLAIMED' AND NOT manual_block")
    );
    // Drop counters by reason: what nft's counters say.
    let blocked = nft_counter("blocked_from");
    assert!(blocked >= 7, "the blocked session's datagrams were dropped ({blocked})");
    for reason in ["blocked_from", "pending_from", "unpoliced_from", "restricted_from"] {
        assert_eq!(
            value(&s, &format!("pppgate_nft_dropped_packets_total{{reason=\"{reason}\"}}")),
            nft_counter(reason) as f64,
            "{reason}"
        );
    }
    // Nothing spooled; last runs recorded and ok.
    assert_eq!(value(&s, "pppgate_spool_batches"), 0.0);
    for job in ["reconcile", "collector", "janitor"] {
        assert!(value(&s, &format!("pppgate_{job}_last_success_timestamp_seconds")) > 1.7e9, "{job}");
        assert_eq!(value(&s, &format!("pppgate_{job}_runs_total{{result=\"ok\"}}")), 1.0, "{job}");
    }
    // Per-session bytes, one series per VALID session.
    for (name, conn) in ["ppp0", "ppp1", "ppp3"].iter().zip(&w.conns) {
        for dir in ["receive", "transmit"] {
            let key = format!("pppgate_session_{dir}_bytes_total{{ppp_if=\"{name}\",connection_id=\"{conn}\"}}");
            assert!(has(&s, &key), "{key}:\n{text}");
        }
    }
    assert_eq!(value(&s, "pppgate_session_series_suppressed"), 0.0);

    // The database goes away: the collector spools; the backlog is what the spool directory holds.
    w.pg.stop();
    w.cli.run(&["collect"]).expect_code(69);
    w.cli.run(&["collect"]).expect_code(69);
    let (text, s) = w.metrics();
    promtool(&text);
    let spool = w.env.accounting_dir.join("spool");
    let files: Vec<std::fs::Metadata> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".batch"))
        .map(|e| e.metadata().unwrap())
        .collect();
    assert!(!files.is_empty(), "the collector spooled while SQL was down");
    assert_eq!(value(&s, "pppgate_spool_batches"), files.len() as f64, "{text}");
    assert_eq!(value(&s, "pppgate_spool_bytes"), files.iter().map(|m| m.len()).sum::<u64>() as f64);
    assert!(value(&s, "pppgate_spool_oldest_age_seconds") >= 0.0);
    assert_eq!(value(&s, "pppgate_database_outage{component=\"accounting\"}"), 1.0, "{text}");
    assert_eq!(value(&s, "pppgate_collector_runs_total{result=\"sql_unavailable\"}"), 2.0);
    assert_eq!(value(&s, "pppgate_collector_database_outages_total"), 1.0, "one outage seen begin");
    w.pg.start();
    w.cli.ok(&["collect"]);
    let (_, s) = w.metrics();
    assert_eq!(value(&s, "pppgate_spool_batches"), 0.0);
    assert_eq!(value(&s, "pppgate_database_outage{component=\"accounting\"}"), 0.0);
}

#[test]
fn node_exporter_serves_the_textfiles_the_timer_jobs_write() {
    let w = world();
    // The policy textfile holds the figures of reconcile's last run (the drops came after it).
    w.cli.ok(&["reconcile"]);
    let dir = &w.env.metrics_dir;
    for f in ["pppgate_policy.prom", "pppgate_accounting.prom", "pppgate_janitor.prom"] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f} written by its job: {e}"));
        promtool(&text);
    }
    // No temp file left where node_exporter reads.
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        assert!(e.file_name().to_string_lossy().ends_with(".prom"), "{:?}", e.file_name());
    }
    let mut exporter = Command::new("prometheus-node-exporter")
        .args(["--collector.disable-defaults", "--collector.textfile", "--web.listen-address=127.0.0.1:19100"])
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prometheus-node-exporter runs");
    let scrape = || {
        Command::new("curl")
            .args(["-sf", "--max-time", "5", "http://127.0.0.1:19100/metrics"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut body = None;
    wait_until(Duration::from_secs(20), || {
        body = scrape();
        body.is_some()
    });
    let _ = exporter.kill();
    let out = exporter.wait_with_output().unwrap();
    let body = body.unwrap_or_else(|| panic!("node_exporter answered: {}", String::from_utf8_lossy(&out.stderr)));
    let scraped = samples(&body);
    assert_eq!(value(&scraped, "node_textfile_scrape_error"), 0.0, "{body}");
    // Every sample pppgate wrote is served, with the same value.
    let mut written = 0;
    for f in ["pppgate_policy.prom", "pppgate_accounting.prom", "pppgate_janitor.prom"] {
        for (k, v) in samples(&std::fs::read_to_string(dir.join(f)).unwrap()) {
            assert_eq!(value(&scraped, &k), v, "{k}");
            written += 1;
        }
    }
    assert!(written > 30, "{written} samples");
    let ips = w.ips();
    assert_eq!(value(&scraped, "pppgate_sessions{state=\"blocked\"}"), in_set("blocked_v4", &ips));
    assert_eq!(
        value(&scraped, "pppgate_nft_dropped_packets_total{reason=\"blocked_from\"}"),
        nft_counter("blocked_from") as f64
    );
}

#[test]
fn per_session_series_have_a_bound_and_a_switch() {
    let w = world();
    let cfg = std::fs::read_to_string(&w.env.config_path).unwrap();
    let with = |extra: &str| {
        let text = cfg.replace("[metrics]\n", &format!("[metrics]\n{extra}\n"));
        std::fs::write(&w.env.config_path, text).unwrap();
    };
    with("per_session_max = 2");
    let (text, s) = w.metrics();
    promtool(&text);
    assert_eq!(value(&s, "pppgate_session_series_suppressed"), 1.0, "3 sessions > 2");
    assert!(!text.contains("pppgate_session_transmit_bytes_total"), "{text}");
    with("per_session = false");
    let (text, s) = w.metrics();
    assert!(!text.contains("pppgate_session_"), "{text}");
    assert!(has(&s, "pppgate_sessions{state=\"full\"}"));
    with("per_session_max = 3");
    let (_, s) = w.metrics();
    assert_eq!(value(&s, "pppgate_session_series_suppressed"), 0.0);
}

#[test]
fn connect_events_of_the_plugin_become_counters_and_histograms() {
    use policy_core::metrics::events::{record, ConnectEvent, Outcome};
    let w = world();
    // /run/pppgate, as tmpfiles.d makes it on a concentrator.
    std::fs::create_dir_all(&w.env.run_dir).unwrap();
    let ev = |o, latency_us| ConnectEvent {
        at: policy_core::lock::now_unix(),
        outcome: Some(o),
        latency_us,
        lock_wait_us: 100,
        lock_held_us: 4000,
        sql_us: 9000,
        mapping_us: 80,
        apply_us: 4000,
    };
    // What pppgate.so appends per connect (policy_core::metrics::events).
    assert!(record(&w.env.run_dir, &ev(Outcome::Applied, 30_000)).unwrap());
    assert!(record(&w.env.run_dir, &ev(Outcome::Applied, 700_000)).unwrap());
    assert!(record(&w.env.run_dir, &ev(Outcome::RefusedLookup, 5_000)).unwrap());
    // `pppgate metrics` counts them before the collector merged them, without merging.
    let (text, s) = w.metrics();
    promtool(&text);
    assert_eq!(value(&s, "pppgate_connects_total{outcome=\"applied\"}"), 2.0, "{text}");
    assert!(w.env.run_dir.join("connect-events.log").exists(), "metrics changes nothing");
    w.cli.ok(&["collect"]);
    assert!(!w.env.run_dir.join("connect-events.log").exists(), "merged by the collector");
    let text = std::fs::read_to_string(w.env.metrics_dir.join("pppgate_accounting.prom")).unwrap();
    promtool(&text);
    let s = samples(&text);
    assert_eq!(value(&s, "pppgate_connects_total{outcome=\"applied\"}"), 2.0);
    assert_eq!(value(&s, "pppgate_connects_total{outcome=\"refused_lookup\"}"), 1.0);
    assert_eq!(value(&s, "pppgate_connects_total{outcome=\"ended_window\"}"), 0.0);
    assert_eq!(value(&s, "pppgate_connect_latency_seconds_count"), 2.0);
    assert_eq!(value(&s, "pppgate_connect_latency_seconds_bucket{le=\"0.05\"}"), 1.0);
    assert_eq!(value(&s, "pppgate_connect_latency_seconds_bucket{le=\"1\"}"), 2.0);
    assert_eq!(value(&s, "pppgate_connect_phase_seconds_count{phase=\"sql\"}"), 2.0);
    // Merged once: another collector run counts nothing twice.
    w.cli.ok(&["collect"]);
    let s = samples(&std::fs::read_to_string(w.env.metrics_dir.join("pppgate_accounting.prom")).unwrap());
    assert_eq!(value(&s, "pppgate_connects_total{outcome=\"applied\"}"), 2.0);
}

//! `pppgate diag` end to end: the real binary on a box built for it (a private network namespace,
//! a private PostgreSQL, fake VALID sessions, the FreeRADIUS and pppd configuration in a trusted
//! directory). A healthy box is all ok (exit 0); then each test creates one failure class and
//! checks that diag names it with the right status and exit code (1 warnings, 2 failures).
//!
//! Needs root. Without it every test fails (loudly), none is skipped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pppgate_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

/// A box pppgate runs on, healthy until a test breaks something.
struct World {
    pg: PgServer,
    env: TestEnv,
    /// A root-owned 0755 directory under /run: the configuration must pass the trust check,
    /// which /dev/shm (world-writable) would not.
    trusted: tempfile::TempDir,
    config: PathBuf,
    cli: Cli,
    sessions: Vec<FakeSession>,
    /// `pppgate guard`, as pppgate-guard.service runs it (stopped by tests that tamper).
    guard: Option<Child>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_guard();
    }
}

fn installed_pppd_version() -> String {
    let out = Command::new("/usr/sbin/pppd").arg("--version").output().expect("pppd is installed (ppp)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().find_map(|l| l.strip_prefix("pppd version ")).expect("pppd prints its version").trim().to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A plugin file carrying the build marker for `version` (what `pppgate diag` reads from a .so).
fn fake_plugin(path: &Path, version: &str) {
    let mut bytes = vec![0x7f, b'E', b'L', b'F'];
    bytes.extend_from_slice(&[0u8; 200]);
    bytes.extend_from_slice(format!("pppgate-plugin-build: pppd={version} api=2.4 version=test;\0").as_bytes());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// FreeRADIUS wired as packaging/freeradius says.
fn freeradius_conf(dir: &Path) {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/freeradius");
    let read = |p: &str| std::fs::read_to_string(pkg.join(p)).unwrap();
    write(
        &dir.join("radiusd.conf"),
        &format!(
            "prefix = /usr\nexec_prefix = ${{prefix}}\nsbindir = ${{exec_prefix}}/sbin\n{}",
            read("radiusd-checkrad.conf")
        ),
    );
    write(&dir.join("mods-enabled/pppgate"), &read("mods-available/pppgate"));
    write(&dir.join("sites-enabled/default"), &read("sites-snippets.conf"));
    write(&dir.join("mods-enabled/sql"), "sql {\n\tdriver = \"rlm_sql_postgresql\"\n\tdelete_stale_sessions = no\n}\n");
}

/// A systemctl stand-in answering from files `units/<unit>.<verb>`.
fn fake_systemctl(dir: &Path) -> PathBuf {
    let p = dir.join("systemctl");
    write(
        &p,
        "#!/bin/sh\nf=\"$(dirname \"$0\")/units/$2.$1\"\nif [ -f \"$f\" ]; then cat \"$f\"; else echo unknown; fi\n",
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn world() -> World {
    world_with(EnvOptions::default())
}

fn world_with(o: EnvOptions) -> World {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::with(&pg.dsn(), o);
    let trusted = tempfile::Builder::new().prefix("pppgate-diag-").tempdir_in("/run").expect("temp dir in /run");
    std::fs::set_permissions(trusted.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = trusted.path();
    let config = t.join("pppgate.toml");
    let plugin_dir = t.join("pppd");
    fake_plugin(&plugin_dir.join("pppgate.so"), &installed_pppd_version());
    let options = t.join("options.xl2tpd");
    write(&options, &format!("# xl2tpd's pppd options\nplugin pppgate.so\npppgate-config {}\n", config.display()));
    freeradius_conf(&t.join("freeradius"));
    let systemctl = fake_systemctl(t);
    for job in ["vpn-policy-reconcile", "vpn-accounting-collector", "vpn-stale-session-janitor"] {
        write(&t.join(format!("units/{job}.timer.is-enabled")), "enabled\n");
        write(&t.join(format!("units/{job}.timer.is-active")), "active\n");
    }
    write(&t.join("units/pppgate-guard.service.is-enabled"), "enabled\n");
    write(&t.join("units/pppgate-guard.service.is-active"), "active\n");
    // The box's state and runtime directories in the trusted directory too.
    let base: String = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("state_dir") && !l.starts_with("run_dir"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            "[paths]\n",
            &format!(
                "[paths]\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n",
                t.join("state").display(),
                t.join("run").display()
            ),
        );
    let text = format!(
        "{base}\n[diag]\npppd = \"/usr/sbin/pppd\"\nplugin_dir = \"{}\"\n\
         pppd_options = [\"{}\"]\nfreeradius_dir = \"{}\"\nsystemd = \"always\"\nsystemctl = \"{}\"\n",
        plugin_dir.display(),
        options.display(),
        t.join("freeradius").display(),
        systemctl.display()
    );
    write(&config, &text);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cli = env.cli(BIN);
    cli.config = config.clone();
    let mut w = World { pg, env, trusted, config, cli, sessions: Vec::new(), guard: None };
    let conn = add_connection(&w.pg, "alice", "CLAIMED", None, Some(2000), None);
    w.sessions.push(SessionBuilder::tun("ppp0", conn, "100.64.0.2").build(&w.env.sessions_dir));
    w.cli.ok(&["reconcile"]);
    w.cli.ok(&["collect"]);
    w.cli.ok(&["janitor"]);
    w.start_guard();
    w
}

impl World {
    fn t(&self) -> &Path {
        self.trusted.path()
    }

    fn guard_status_path(&self) -> PathBuf {
        self.t().join("run/guard.json")
    }

    fn guard_status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.guard_status_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Starts `pppgate guard` (interval 3600 s: only nftables events make it check) and waits
    /// for its first check's status.
    fn start_guard(&mut self) {
        let _ = std::fs::remove_file(self.guard_status_path());
        let child = self
            .cli
            .command(&["guard", "--interval", "3600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pppgate guard");
        let pid = child.id() as u64;
        self.guard = Some(child);
        wait_for(Duration::from_secs(20), "the guard's first check", || {
            self.guard_status().is_some_and(|s| s["pid"].as_u64() == Some(pid) && s["checks"].as_u64() >= Some(1))
        });
    }

    fn stop_guard(&mut self) {
        if let Some(mut c) = self.guard.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `pppgate diag --json` (exit code, report).
    fn diag(&self) -> (i32, Value) {
        let out = self.cli.run(&["--json", "diag"]);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("diag printed no JSON ({e}):\n{}\n{}", out.stdout, out.stderr));
        // Every report, healthy or naming a failure, matches docs/schemas/diag.schema.json.
        assert_schema("diag", &v);
        (out.code.expect("diag exited"), v)
    }

    /// Asserts the exit code and the status of check `id`; returns that check.
    fn expect(&self, code: i32, id: &str, status: &str) -> Value {
        let (c, v) = self.diag();
        let check = check(&v, id);
        assert_eq!(check["status"], status, "check {id}: {check:#}\nwhole report: {v:#}");
        assert_eq!(c, code, "exit code; report: {v:#}");
        check
    }
}

fn check(v: &Value, id: &str) -> Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap_or_else(|| panic!("no check {id}"))
}

fn finding(c: &Value) -> String {
    c["finding"].as_str().unwrap().to_string()
}

/// Every check other than `except` is ok.
fn others_ok(v: &Value, except: &[&str]) {
    for c in v["checks"].as_array().unwrap() {
        if !except.contains(&c["id"].as_str().unwrap()) {
            assert_eq!(c["status"], "ok", "{c:#}");
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn healthy_box_is_all_ok() {
    let w = world();
    let (code, v) = w.diag();
    others_ok(&v, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["counts"]["ok"], 15);
    assert!(finding(&check(&v, "sessions")).starts_with("1 VALID session"), "{v:#}");
    assert!(finding(&check(&v, "runs")).contains("reconcile ok"), "{v:#}");
    // Every check names a command to look deeper.
    for c in v["checks"].as_array().unwrap() {
        assert!(!c["hint"].as_str().unwrap().is_empty(), "{c:#}");
    }
    // Human output: one aligned line per check, then the summary; exit 0.
    let out = w.cli.run(&["diag"]).expect_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 15 + 1, "{}", out.stdout);
    // "ok    <id padded to the longest, freeradius>  <finding>"
    for l in &lines[1..16] {
        assert!(l.starts_with("ok    "), "{l}");
        let finding_at = 6 + "freeradius".len() + 2;
        assert!(l[6..finding_at].ends_with("  ") && !l[finding_at..].starts_with(' '), "aligned: {l}");
    }
    assert_eq!(lines[16], "OK: 15 ok, 0 warn, 0 fail");
    // One check by name; an unknown one is a usage error.
    let out = w.cli.run(&["--json", "diag", "nft", "locks"]).expect_code(0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["checks"].as_array().unwrap().len(), 2);
    w.cli.run(&["diag", "bogus"]).expect_code(64);
}

#[test]
fn config_not_trusted_or_invalid_fails() {
    let w = world();
    std::fs::set_permissions(&w.config, std::fs::Permissions::from_mode(0o664)).unwrap();
    let c = w.expect(2, "config", "fail");
    assert!(finding(&c).contains("refusing") && finding(&c).contains("0664"), "{c:#}");
    std::fs::set_permissions(&w.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(w.t(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let c = w.expect(2, "config", "fail");
    assert!(finding(&c).contains("directory has mode 0777"), "{c:#}");
    std::fs::set_permissions(w.t(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap();
    write(&w.config, &format!("{text}\n[bogus]\nx = 1\n"));
    let (code, v) = w.diag();
    assert_eq!(code, 2);
    assert_eq!(check(&v, "config")["status"], "fail");
    assert!(finding(&check(&v, "config")).contains("unknown field"), "{v:#}");
    assert_eq!(v["not_checked"].as_array().unwrap().len(), 14, "{v:#}");
}

#[test]
fn database_down_old_schema_and_missing_freeradius_tables_fail() {
    let w = world();
    let latest = policy_core::db::migrate::LATEST;
    w.pg.psql(&format!("DELETE FROM pppgate_schema WHERE version = {latest}"));
    let c = w.expect(2, "database", "fail");
    assert!(finding(&c).contains(&format!("older than {latest}")), "{c:#}");
    w.pg.psql(&format!("INSERT INTO pppgate_schema (version, description) VALUES ({latest}, 'back')"));
    w.pg.psql("DROP TABLE nasreload");
    let c = w.expect(2, "database", "fail");
    assert!(finding(&c).contains("nasreload"), "{c:#}");
    w.pg.stop();
    let (code, v) = w.diag();
    assert_eq!(code, 2);
    assert_eq!(check(&v, "database")["status"], "fail");
    assert!(finding(&check(&v, "database")).starts_with("unreachable"), "{v:#}");
    // Database-backed checks say they could not check.
    assert_eq!(check(&v, "radacct")["status"], "warn");
    assert!(finding(&check(&v, "policy")).contains("database unavailable"), "{v:#}");
}

#[test]
fn plugin_built_for_another_pppd_or_not_loaded_fails() {
    let w = world();
    fake_plugin(&w.t().join("pppd/pppgate.so"), "9.9.9");
    let c = w.expect(2, "pppd", "fail");
    assert!(finding(&c).contains("built for pppd 9.9.9"), "{c:#}");
    fake_plugin(&w.t().join("pppd/pppgate.so"), &installed_pppd_version());
    write(&w.t().join("options.xl2tpd"), "# plugin pppgate.so\nnoauth\n");
    let c = w.expect(2, "pppd", "fail");
    assert!(finding(&c).contains("does not load pppgate.so"), "{c:#}");
    std::fs::remove_file(w.t().join("pppd/pppgate.so")).unwrap();
    write(&w.t().join("options.xl2tpd"), "plugin pppgate.so\n");
    let c = w.expect(2, "pppd", "fail");
    assert!(finding(&c).contains("No such file"), "{c:#}");
}

#[test]
fn nft_table_missing_or_wrong_layout_fails_and_counters_match_the_kernel() {
    let mut w = world();
    // The guard would restore the table before diag looks.
    w.stop_guard();
    // Drops to count: a second session, blocked, sends towards a network the box routes.
    let conn = add_connection(&w.pg, "dave", "CLAIMED", None, None, None);
    w.pg.psql(&format!("UPDATE vpn_connections SET manual_block = true WHERE id = {conn}"));
    let s = SessionBuilder::veth("ppp3", conn, "100.64.0.9").build(&w.env.sessions_dir);
    veth("far0", "far1", None);
    run(&["ip", "addr", "add", "203.0.113.254/24", "dev", "far0"]);
    run(&["ip", "link", "set", "far0", "up"]);
    run(&["ip", "link", "set", "far1", "up"]);
    w.cli.ok(&["reconcile"]);
    udp_burst(s.client(), &s.ip(), "203.0.113.1", 9, 5);
    assert!(nft_counter("blocked_from") >= 5, "the blocked session's datagrams were dropped");
    let (_, v) = w.diag();
    let drops = &check(&v, "nft")["details"]["drops"];
    for reason in ["blocked_from", "pending_from", "unpoliced_from", "restricted_from"] {
        assert_eq!(drops[reason]["packets"].as_u64(), Some(nft_counter(reason)), "{reason}: {drops:#}");
    }
    run(&[
        "nft",
        "delete",
        "rule",
        "inet",
        "pppgate",
        "from_session",
        "handle",
        &rule_handle("from_session", "blocked_from"),
    ]);
    let c = w.expect(2, "nft", "fail");
    assert!(finding(&c).contains("current layout"), "{c:#}");
    run(&["nft", "delete", "table", "inet", "pppgate"]);
    let c = w.expect(2, "nft", "fail");
    assert!(finding(&c).contains("missing"), "{c:#}");
}

fn rule_handle(chain: &str, comment: &str) -> String {
    for o in nft_objects() {
        if let Some(r) = o.get("rule") {
            if r["chain"] == chain && r["comment"] == comment {
                return r["handle"].to_string();
            }
        }
    }
    panic!("no rule {comment} in {chain}");
}

#[test]
fn forwarding_off_fails_and_strict_rp_filter_warns() {
    let w = world();
    run(&["sysctl", "-qw", "net.ipv4.conf.ppp0.rp_filter=1"]);
    let c = w.expect(1, "sysctl", "warn");
    assert!(finding(&c).contains("ppp0"), "{c:#}");
    run(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    w.expect(2, "sysctl", "fail");
}

#[test]
fn stale_and_malformed_mapping_files_are_named() {
    let mut w = world();
    let conn = add_connection(&w.pg, "bob", "CLAIMED", None, None, None);
    let mut s = SessionBuilder::tun("ppp1", conn, "100.64.0.3").build(&w.env.sessions_dir);
    w.cli.ok(&["reconcile"]);
    // pppd died without its ip-down: process and interface gone, the mapping file left behind.
    s.kill();
    s.delete_interface();
    w.cli.ok(&["reconcile"]);
    // Reconcile removed the session's state and its file (R511); put the file back as it is
    // between the SIGKILL and the next reconcile.
    assert!(!s.mapping_path().exists(), "reconcile removes the mapping of a gone pppd");
    s.mapping.write_atomic(&w.env.sessions_dir).unwrap();
    let c = w.expect(1, "sessions", "warn");
    assert!(finding(&c).contains("ppp1 (pppd process is gone)"), "{c:#}");
    write(&w.env.sessions_dir.join("ppp7.env"), "CONNECTION_ID=x\n");
    let c = w.expect(2, "sessions", "fail");
    assert!(finding(&c).contains("malformed"), "{c:#}");
    w.sessions.clear();
}

#[test]
fn ppp_interface_without_mapping_fails_and_a_connecting_one_warns() {
    let w = world();
    run(&["ip", "tuntap", "add", "dev", "ppp5", "mode", "tun"]);
    run(&["ip", "addr", "add", "100.64.0.1", "peer", "100.64.0.50/32", "dev", "ppp5"]);
    run(&["ip", "link", "set", "ppp5", "up"]);
    run(&["nft", "add", "element", "inet", "pppgate", "connect_pending_v4", "{ \"ppp5\" . 100.64.0.50 }"]);
    let c = w.expect(1, "unpoliced", "warn");
    assert!(finding(&c).contains("ppp5 100.64.0.50 (gated)"), "{c:#}");
    run(&["nft", "delete", "element", "inet", "pppgate", "connect_pending_v4", "{ \"ppp5\" . 100.64.0.50 }"]);
    let (code, v) = w.diag();
    let c = check(&v, "unpoliced");
    assert_eq!(c["status"], "fail", "{v:#}");
    assert!(finding(&c).contains("ppp5 100.64.0.50"), "{c:#}");
    assert_eq!(code, 2);
}

#[test]
fn kernel_state_differing_from_policy_fails() {
    let w = world();
    w.pg.psql("UPDATE vpn_connections SET manual_block = true WHERE subaccount_login = 'alice'");
    let c = w.expect(2, "policy", "fail");
    assert!(finding(&c).contains("100.64.0.2"), "{c:#}");
    w.cli.ok(&["reconcile"]);
    let (code, v) = w.diag();
    others_ok(&v, &[]);
    assert_eq!(code, 0);
    // Shaping removed behind pppgate's back.
    w.pg.psql("UPDATE vpn_connections SET manual_block = false WHERE subaccount_login = 'alice'");
    w.cli.ok(&["reconcile"]);
    w.expect(0, "policy", "ok");
    run(&["tc", "qdisc", "del", "dev", "ppp0", "root"]);
    w.expect(2, "policy", "fail");
}

#[test]
fn open_radacct_row_without_session_warns() {
    let w = world();
    w.pg.psql(
        "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, framedipaddress, acctstarttime)
         VALUES ('x1', 'u1', 'carol', '192.0.2.1', '100.64.0.77', now() - interval '1 hour')",
    );
    let c = w.expect(1, "radacct", "warn");
    assert!(finding(&c).contains("user carol ip 100.64.0.77"), "{c:#}");
    assert!(finding(&c).contains("lockout"), "{c:#}");
    // Another NAS's row is not ours to judge.
    w.pg.psql("UPDATE radacct SET nasipaddress = '192.0.2.99'");
    w.expect(0, "radacct", "ok");
}

#[test]
fn stale_lock_fails() {
    let w = world_with(EnvOptions { lock_ttl_s: 60, ..Default::default() });
    let holder = hold_lock(&w.env.apply_lock);
    let c = w.expect(0, "locks", "ok");
    assert!(finding(&c).contains("apply held by pid"), "{c:#}");
    // The holder's own record says it took the lock an hour ago.
    std::fs::write(
        &w.env.apply_lock,
        format!("pid={} since={} what=reconcile\n", holder.0.id(), policy_core::lock::now_unix() - 3600),
    )
    .unwrap();
    let c = w.expect(2, "locks", "fail");
    assert!(finding(&c).contains("apply STALE"), "{c:#}");
    drop(holder);
}

#[test]
fn spool_backlog_warns_then_fails_with_age() {
    let w = world();
    let spool = w.env.accounting_dir.join("spool");
    let f = spool.join("00000000000000000042.batch");
    write(&f, "pretend batch");
    let age = |secs: i64| {
        let t = policy_core::lock::now_unix() - secs;
        run(&["touch", "-d", &format!("@{t}"), f.to_str().unwrap()]);
    };
    age(30 * 60);
    let c = w.expect(1, "spool", "warn");
    assert!(finding(&c).contains("1 batch(es), 13 bytes waiting, oldest 30m"), "{c:#}");
    age(2 * 86_400);
    w.expect(2, "spool", "fail");
    std::fs::remove_file(&f).unwrap();
    write(&spool.join("bad/00000000000000000001.batch.123"), "x");
    let c = w.expect(1, "spool", "warn");
    assert!(finding(&c).contains("quarantined"), "{c:#}");
}

#[test]
fn failed_and_missing_runs_are_named() {
    let w = world();
    // SQL down: the collector's last run is "sql_unavailable" (warn).
    w.pg.stop();
    w.cli.run(&["collect"]).expect_code(69);
    w.pg.start();
    let c = w.expect(1, "runs", "warn");
    assert!(finding(&c).contains("collector sql_unavailable"), "{c:#}");
    // A sessions directory that cannot be read makes reconcile fail (exit 70): a failed run.
    let dir = w.env.sessions_dir.clone();
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    write(&dir, "not a directory\n");
    w.cli.run(&["reconcile"]).expect_code(70);
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&aside, &dir).unwrap();
    let c = w.expect(2, "runs", "fail");
    assert!(finding(&c).contains("reconcile failed") && finding(&c).contains("exit 70"), "{c:#}");
    std::fs::remove_dir_all(w.t().join("state/runs")).unwrap();
    let c = w.expect(1, "runs", "warn");
    assert!(finding(&c).contains("janitor: no run recorded"), "{c:#}");
}

#[test]
fn timers_not_enabled_or_inactive_fail() {
    let w = world();
    write(&w.t().join("units/vpn-accounting-collector.timer.is-active"), "inactive\n");
    let c = w.expect(2, "timers", "fail");
    assert!(finding(&c).contains("vpn-accounting-collector.timer is enabled/inactive"), "{c:#}");
    // Without systemd the timers are not checked, and that is said plainly.
    let text = std::fs::read_to_string(&w.config).unwrap().replace("systemd = \"always\"", "systemd = \"never\"");
    write(&w.config, &text);
    let c = w.expect(0, "timers", "ok");
    assert!(finding(&c).starts_with("not under systemd"), "{c:#}");
}

#[test]
fn freeradius_hooks_not_wired_fail() {
    let w = world();
    let fr = w.t().join("freeradius");
    write(&fr.join("sites-enabled/default"), "server default {\nauthorize {\n\tsql\n}\n}\n");
    let c = w.expect(2, "freeradius", "fail");
    assert!(finding(&c).contains("no enabled site calls pppgate_simul"), "{c:#}");
    freeradius_conf(&fr);
    write(&fr.join("radiusd.conf"), "sbindir = /usr/sbin\ncheckrad = ${sbindir}/checkrad\n");
    let c = w.expect(2, "freeradius", "fail");
    assert!(finding(&c).contains("checkrad = /usr/sbin/checkrad"), "{c:#}");
}

#[track_caller]
fn wait_for(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(wait_until(limit, f), "timed out waiting for {what}");
}

/// Rewrites fields of the (stopped) guard's status file.
fn edit_status(w: &World, f: impl FnOnce(&mut Value)) {
    let mut v = w.guard_status().expect("a guard status");
    f(&mut v);
    write(&w.guard_status_path(), &serde_json::to_string(&v).unwrap());
}

#[test]
fn guard_not_running_hung_failed_or_restoring_is_named() {
    let mut w = world();
    let c = w.expect(0, "guard", "ok");
    assert!(finding(&c).starts_with("pppgate guard running (pid "), "{c:#}");
    assert_eq!(c["details"]["guard"]["alive"], true, "{c:#}");
    // Someone deletes the table: the guard restores it (nft is ok again) and diag warns for an
    // hour that it had to.
    run(&["nft", "delete", "table", "inet", "pppgate"]);
    wait_for(Duration::from_secs(20), "the guard's restore", || {
        w.guard_status().is_some_and(|s| s["last_restore"]["trigger"] == "event")
    });
    let (code, v) = w.diag();
    assert_eq!(check(&v, "nft")["status"], "ok", "{v:#}");
    let c = check(&v, "guard");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert_eq!(code, 1, "{v:#}");
    assert!(
        finding(&c).contains("deleted or altered and restored by the guard") && finding(&c).contains("rebuilt"),
        "{c:#}"
    );
    assert_eq!(c["details"]["guard"]["last_restore"]["rebuilt"], true, "{c:#}");
    // Under systemd the unit is checked too.
    write(&w.t().join("units/pppgate-guard.service.is-active"), "inactive\n");
    let c = w.expect(2, "guard", "fail");
    assert!(finding(&c).contains("pppgate-guard.service is enabled/inactive"), "{c:#}");
    write(&w.t().join("units/pppgate-guard.service.is-active"), "active\n");
    // Alive but no check for three intervals: hung. A failed last check fails too.
    let pid = w.guard.as_ref().unwrap().id().to_string();
    run(&["kill", "-STOP", &pid]);
    edit_status(&w, |v| {
        v["last_check_at"] = (policy_core::lock::now_unix() - 4 * 3600).into();
        v["last_outcome"] = "failed".into();
        v["last_error"] = "failed to write /proc/sys/net/ipv4/conf/ppp0/forwarding".into();
    });
    let c = w.expect(2, "guard", "fail");
    assert!(finding(&c).contains("is alive but last checked 4h ago") && finding(&c).contains("hung?"), "{c:#}");
    assert!(finding(&c).contains("failed: failed to write /proc/sys/net/ipv4/conf/ppp0/forwarding"), "{c:#}");
    run(&["kill", "-CONT", &pid]);
    // Gone: the recorded pid is not the guard any more.
    w.stop_guard();
    let c = w.expect(2, "guard", "fail");
    assert!(finding(&c).contains(&format!("pppgate guard (pid {pid}) is gone")), "{c:#}");
    // Never ran (no status file), with systemd out of the picture: still a failure.
    std::fs::remove_file(w.guard_status_path()).unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap().replace("systemd = \"always\"", "systemd = \"never\"");
    write(&w.config, &text);
    let c = w.expect(2, "guard", "fail");
    assert!(finding(&c).contains("pppgate guard is not running"), "{c:#}");
    assert_eq!(c["details"]["systemd"], false, "{c:#}");
    // And back: a fresh guard is ok again (its own start-up check is no tamper warning).
    w.start_guard();
    w.expect(0, "guard", "ok");
}

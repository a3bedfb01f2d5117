//! The `pppgate` binary's session and FreeRADIUS verbs end to end on the build machine: real
//! PostgreSQL, live stand-in pppd processes and TUN `pppN` links in a private network namespace,
//! the binary run as FreeRADIUS runs it (environment, argv[0]). Needs root; never skips.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use policy_core::radius::env::encode_value;
use pppgate_testkit::*;
use serde_json::Value;

const NAS_A: &str = "192.0.2.1";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pppgate"))
}

/// The binary under another name (multi-call), via a symlink in `dir`.
fn named(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() {
        std::os::unix::fs::symlink(bin(), &p).unwrap();
    }
    p
}

fn pppgate(program: &Path, cfg: &Path, args: &[&OsStr], env: &[(&str, &OsStr)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("PPPGATE_CONFIG", cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().unwrap()
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the hook as rlm_exec does: attributes in the environment, encoded by FreeRADIUS's rules.
fn hook(cfg: &Path, user: &[u8], max: &str) -> Output {
    let encoded = encode_value(user);
    let user_env = OsStr::from_bytes(&encoded);
    let max_arg = format!("--max={max}");
    pppgate(
        &bin(),
        cfg,
        &[os("radius"), os("exec"), os("simultaneous-use"), os(&max_arg)],
        &[
            ("USER_NAME", user_env),
            ("NAS_IP_ADDRESS", os("192.0.2.1")),
            ("SERVICE_TYPE", os("Framed-User")),
            ("CALLING_STATION_ID", os("\"192.0.2.2\"")),
        ],
    )
}

#[test]
fn simultaneous_use_hook_exit_codes_and_escaped_user_names() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    // A login with a space, a quote, '=', a backslash and non-ASCII.
    let login = "o'brien \"x\"=\\ü";
    let conn = env.db.connection(login);
    let stored = policy_core::radius::sqlname::sql_username(login.as_bytes());
    assert_eq!(stored, "o=27brien =5C=22x=5C=22=3D=5C=5CM-CM-=3C");
    // FreeRADIUS hands the hook the User-Name radius.so sent: pppd's rendering of the login.
    let user_name = policy_core::radius::sqlname::pppd_user_name(login.as_bytes());
    let login = user_name.as_slice();
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), conn, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row(&stored, NAS_A, Some("198.51.100.10"), 30, "=25lX6b01f7fd=25hX");

    let o = hook(&cfg, login, "1");
    assert_eq!(o.status.code(), Some(1), "live session: reject\n{}", text(&o));
    let o = hook(&cfg, login, "");
    assert_eq!(o.status.code(), Some(0), "no limit: ok\n{}", text(&o));
    assert!(o.stdout.is_empty(), "ok prints nothing (rlm_exec would parse it)\n{}", text(&o));
    let o = hook(&cfg, login, "2");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(env.db.is_open(row));

    drop(pppd);
    let o = hook(&cfg, login, "1");
    assert_eq!(o.status.code(), Some(0), "session gone: the hook closed the stale row and accepts\n{}", text(&o));
    assert!(!env.db.is_open(row));
}

#[test]
fn simultaneous_use_hook_fails_closed() {
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    // No USER_NAME, a malformed one, a bad --max: fail (2), never ok.
    let o = pppgate(&bin(), &cfg, &[os("radius"), os("exec"), os("simultaneous-use"), os("--max=1")], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pppgate(
        &bin(),
        &cfg,
        &[os("radius"), os("exec"), os("simultaneous-use")],
        &[("USER_NAME", os("\"unterminated"))],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pppgate(
        &bin(),
        &cfg,
        &[os("radius"), os("exec"), os("simultaneous-use"), os("--max=x")],
        &[("USER_NAME", os("\"a\""))],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = pppgate(&bin(), &cfg, &[os("radius"), os("exec"), os("nonsense")], &[("USER_NAME", os("\"a\""))]);
    assert_eq!(o.status.code(), Some(2), "usage errors of FreeRADIUS verbs are 'fail'\n{}", text(&o));
}

/// A configuration whose database is unreachable (no server behind the socket directory).
fn down_config(env: &DbEnv) -> PathBuf {
    let good = std::fs::read_to_string(env.config_path("lns-a", NAS_A)).unwrap();
    let dead = env.dir().join("no-server");
    std::fs::create_dir_all(&dead).unwrap();
    let text = good.replace(&env.db.dsn(), &format!("host={} dbname=x user=postgres", dead.display()));
    let p = env.dir().join("down.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn database_down_hooks_fail_closed_and_the_janitor_logs_once_per_outage() {
    let env = DbEnv::new();
    let down = down_config(&env);
    let up = env.config_path("lns-a", NAS_A);

    for _ in 0..3 {
        let o = hook(&down, b"alice", "1");
        assert_eq!(o.status.code(), Some(2), "SQL unreachable: fail, never ok\n{}", text(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("database unavailable"), "{}", text(&o));
    }
    let checkrad = named(env.dir(), "checkrad");
    let o = pppgate(&checkrad, &down, &[os("pppgate"), os(NAS_A), os("0"), os("alice"), os("sid")], &[]);
    assert_eq!(o.status.code(), Some(2), "checkrad: error\n{}", text(&o));

    // The janitor: exit 69, one log line for the whole outage, no error spam; one journal entry
    // at its begin and one at its end (issue 12), read from a socket standing in for journald's.
    let jdir = tempfile::tempdir().unwrap();
    let jsock = jdir.path().join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&jsock).unwrap();
    journal.set_nonblocking(true).unwrap();
    let jenv = [(policy_core::journal::SOCKET_ENV, jsock.as_os_str())];
    let entries = || {
        let mut v = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = journal.recv(&mut buf) {
            v.push(policy_core::journal::decode(&buf[..n]).expect("a native-protocol datagram"));
        }
        v
    };
    let field = |e: &Vec<(String, String)>, k: &str| e.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let mut logs = String::new();
    for _ in 0..4 {
        let o = pppgate(&bin(), &down, &[os("janitor")], &jenv);
        assert_eq!(o.status.code(), Some(69), "{}", text(&o));
        logs.push_str(&String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    let unavailable = logs.lines().filter(|l| l.contains("database unavailable")).count();
    assert_eq!(unavailable, 1, "one line per outage, got:\n{logs}");
    assert_eq!(logs.lines().count(), 1, "nothing else either:\n{logs}");
    assert!(env.env.run_dir.join("sql-outage.janitor").exists());
    let began = entries();
    assert_eq!(began.len(), 1, "one entry per outage: {began:#?}");
    assert_eq!(
        field(&began[0], "MESSAGE_ID").as_deref(),
        Some(policy_core::journal::Event::DbOutageBegin.message_id())
    );
    assert_eq!(field(&began[0], "PPPGATE_EVENT").as_deref(), Some("db_outage_begin"));
    assert_eq!(field(&began[0], "PPPGATE_COMPONENT").as_deref(), Some("janitor"));
    assert_eq!(field(&began[0], "PRIORITY").as_deref(), Some("3"));
    assert_eq!(field(&began[0], "SYSLOG_IDENTIFIER").as_deref(), Some("pppgate"));

    // Back: one recovery line, marker gone. (The "up" config shares run_dir with "down".)
    let o = pppgate(&bin(), &up, &[os("janitor")], &jenv);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("database reachable again").count(), 1, "{err}");
    let ended = entries();
    assert_eq!(ended.len(), 1, "{ended:#?}");
    assert_eq!(field(&ended[0], "PPPGATE_EVENT").as_deref(), Some("db_outage_end"));
    assert_eq!(field(&ended[0], "PPPGATE_COMPONENT").as_deref(), Some("janitor"));
    assert!(field(&ended[0], "PPPGATE_OUTAGE_S").unwrap().parse::<i64>().unwrap() >= 0);
    assert!(!env.env.run_dir.join("sql-outage.janitor").exists());
    let o = pppgate(&bin(), &up, &[os("janitor")], &[]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("reachable again"));
}

#[test]
fn checkrad_contract_via_argv0() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let checkrad = named(env.dir(), "checkrad");
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let live = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "sid-1");
    let stale = env.db.acct_row("alice", NAS_A, Some("198.51.100.44"), 600, "sid-2");
    let other = env.db.acct_row("alice", "192.0.2.2", Some("198.51.100.10"), 6000, "sid-3");
    env.db.set_update_age(other, 30);

    let run = |nas: &str, sid: &str| {
        let o = pppgate(&checkrad, &cfg, &[os("pppgate"), os(nas), os("0"), os("alice"), os(sid)], &[]);
        (o.status.code(), text(&o))
    };
    assert_eq!(run(NAS_A, "sid-1").0, Some(1), "live");
    let (code, out) = run(NAS_A, "sid-2");
    assert_eq!(code, Some(0), "stale\n{out}");
    assert!(!env.db.is_open(stale), "zapped");
    assert!(env.db.is_open(live));
    assert_eq!(run("192.0.2.2", "sid-3").0, Some(1), "other NAS, fresh heartbeat");
    env.db.set_update_age(other, 5000);
    assert_eq!(run("192.0.2.2", "sid-3").0, Some(0), "other NAS, no heartbeat");
    assert!(env.db.is_open(other), "never closed by this NAS");
    assert_eq!(run("not-an-ip", "x").0, Some(2));
    // Missing arguments: error, not a usage code FreeRADIUS cannot read.
    let o = pppgate(&checkrad, &cfg, &[os("pppgate")], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

fn audit_lines(env: &DbEnv) -> Vec<Value> {
    let p = &env.env.audit_log;
    std::fs::read_to_string(p).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn session_kill_refuses_anything_but_a_plain_positive_integer() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let kill = named(env.dir(), "vpn-session-kill");
    let conn = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), conn, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let twenty = "1".repeat(20);
    let bad = [
        format!("{conn}; rm -rf /"),
        "-1".into(),
        "0x10".into(),
        String::new(),
        twenty,
        format!("00{conn}"),
        format!(" {conn}"),
    ];
    for b in &bad {
        let o = pppgate(&kill, &cfg, &[os(b)], &[("SUDO_USER", os("www-data"))]);
        assert_eq!(o.status.code(), Some(65), "{b:?}\n{}", text(&o));
    }
    assert!(policy_core::hardcut::same_process(pppd.pid(), pppd.start_ts()), "nothing was killed");
    let lines = audit_lines(&env);
    assert_eq!(lines.len(), bad.len());
    for (l, b) in lines.iter().zip(&bad) {
        assert_eq!(l["args"][0], b.as_str());
        assert_eq!(l["exit_code"], 65);
        assert_eq!(l["actor"]["sudo_user"], "www-data");
        assert!(l["result"].as_str().unwrap().starts_with("refused"));
    }
    let rows: i64 =
        env.db.client().query_one("SELECT count(*) FROM pppgate_audit WHERE exit_code = 65", &[]).unwrap().get(0);
    assert_eq!(rows, bad.len() as i64, "audited in SQL too");
}

#[test]
fn session_kill_terminates_then_kills_and_audits() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let dir = env.sessions_dir();
    let alice = env.db.connection("alice");
    let bob = env.db.connection("bob");
    let polite = StandIn::sleeper();
    let hung = StandIn::term_ignorer();
    let bystander = StandIn::sleeper();
    let (polite_ts, hung_ts) = (polite.start_ts(), hung.start_ts());
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    ppp_link("ppp1", "10.255.0.1", "198.51.100.11");
    ppp_link("ppp2", "10.255.0.1", "198.51.100.12");
    write_mapping(&dir, alice, "ppp0", "198.51.100.10", polite.pid(), polite_ts);
    write_mapping(&dir, alice, "ppp1", "198.51.100.11", hung.pid(), hung_ts);
    write_mapping(&dir, bob, "ppp2", "198.51.100.12", bystander.pid(), bystander.start_ts());
    // alice's rows; the SIGKILLed session's Stop never comes, the kill's janitor closes it.
    let row_hung = env.db.acct_row("alice", NAS_A, Some("198.51.100.11"), 30, "s");
    let row_bob = env.db.acct_row("bob", NAS_A, Some("198.51.100.12"), 30, "s");

    // Policy applied to all three sessions first (the kernel state a kill must clean up).
    let o = pppgate(&bin(), &cfg, &[os("reconcile")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let nft = || run(&["nft", "-j", "list", "table", "inet", "pppgate"]);
    let before = nft();
    for ip in ["198.51.100.10", "198.51.100.11", "198.51.100.12"] {
        assert!(before.contains(ip), "{ip} not in nft before the kill: {before}");
    }

    let o = pppgate(
        &bin(),
        &cfg,
        &[os("--json"), os("session"), os("kill"), os("--timeout"), os("1"), os(&alice.to_string())],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Reconcile after the kill removed the killed sessions' state and kept the bystander's.
    let after = nft();
    assert!(!after.contains("198.51.100.10") && !after.contains("198.51.100.11"), "{after}");
    assert!(after.contains("198.51.100.12"), "{after}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let outcomes: Vec<(&str, &str)> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["ppp_if"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, vec![("ppp0", "terminated"), ("ppp1", "killed")], "{v:#}");
    assert!(!policy_core::hardcut::same_process(polite.pid(), polite_ts));
    assert!(!policy_core::hardcut::same_process(hung.pid(), hung_ts));
    assert!(policy_core::hardcut::same_process(bystander.pid(), bystander.start_ts()), "another connection's pppd");
    // Dead mappings removed, the bystander's kept.
    assert!(!dir.join("ppp0.env").exists() && !dir.join("ppp1.env").exists());
    assert!(dir.join("ppp2.env").exists());
    assert!(!env.db.is_open(row_hung), "janitor after the kill closed the row whose Stop never came");
    assert!(env.db.is_open(row_bob));
    assert_eq!(v["reconcile"]["reconcile"], "done", "{v:#}");

    let lines = audit_lines(&env);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["verb"], "session-kill");
    assert_eq!(lines[0]["exit_code"], 0);
    assert!(lines[0]["result"].as_str().unwrap().contains("SIGKILL"), "{}", lines[0]);
    let n: i64 = env
        .db
        .client()
        .query_one("SELECT count(*) FROM pppgate_audit WHERE verb = 'session-kill' AND exit_code = 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    // Again: nothing live any more; still audited, exit 0.
    let o = pppgate(&bin(), &cfg, &[os("session"), os("kill"), os(&alice.to_string())], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no live session"));
    assert_eq!(audit_lines(&env).len(), 2);
}

/// R707: the two names the panel's sudo grant uses run `apply` and `session kill`:
/// `vpn-policy-apply --connection-id` polices a live session, `vpn-policy-apply --reconcile-all`
/// converges the box, `vpn-session-kill ID` ends the session and cleans up after it. Each prints
/// its verb's JSON (validated against that verb's schema).
#[test]
fn policy_apply_and_session_kill_by_their_canonical_names() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let members = || {
        let o = Command::new("nft").args(["-j", "list", "table", "inet", "pppgate"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).contains("198.51.100.10")
    };
    assert!(!members(), "nothing policed before the first apply");

    let apply = named(env.dir(), "vpn-policy-apply");
    let id = alice.to_string();
    let o = pppgate(&apply, &cfg, &[os("--json"), os("--connection-id"), os(&id)], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_schema("apply", &v);
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(1), "{v:#}");
    assert!(members(), "vpn-policy-apply put the session's address into pppgate's sets");

    let o = pppgate(&apply, &cfg, &[os("--json"), os("--reconcile-all")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_schema("apply", &serde_json::from_slice(&o.stdout).unwrap());
    assert!(members(), "reconcile-all keeps the live session policed");

    let kill = named(env.dir(), "vpn-session-kill");
    let o = pppgate(&kill, &cfg, &[os("--json"), os("--timeout"), os("1"), os(&id)], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_schema("session-kill", &v);
    assert_eq!(v["connection_id"], alice, "{v:#}");
    let mut pppd = pppd;
    assert!(
        wait_until(std::time::Duration::from_secs(5), || matches!(pppd.child.try_wait(), Ok(Some(_)))),
        "vpn-session-kill ended the session's pppd"
    );
    assert!(!members(), "the killed session's address left pppgate's sets");

    // The apply name refuses what its verb refuses (the kill name's refusals:
    // session_kill_refuses_anything_but_a_plain_positive_integer).
    let o = pppgate(&apply, &cfg, &[os("--connection-id"), os("1; drop")], &[]);
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
}

#[test]
fn session_kill_never_signals_a_reused_pid() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let alice = env.db.connection("alice");
    let unrelated = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", unrelated.pid(), unrelated.start_ts() - 500);
    let o = pppgate(&bin(), &cfg, &[os("session"), os("kill"), os(&alice.to_string())], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        policy_core::hardcut::same_process(unrelated.pid(), unrelated.start_ts()),
        "a process that is not the session's pppd"
    );
}

#[test]
fn session_list_and_show() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    write_mapping(&env.sessions_dir(), alice, "ppp1", "198.51.100.11", dead_pid(), pppd.start_ts());
    env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "s");

    let o = pppgate(&bin(), &cfg, &[os("--json"), os("session"), os("list")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v["sessions"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["ppp_if"], "ppp0");
    assert_eq!(s[0]["validity"], "valid");
    assert_eq!(s[0]["login"], "alice");
    assert_eq!(s[0]["connection_id"], alice);
    assert_eq!(s[0]["pppd_pid"], pppd.pid());
    assert_eq!(s[1]["validity"], "process_gone");

    let o = pppgate(&bin(), &cfg, &[os("--json"), os("session"), os("show"), os(&alice.to_string())], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["login"], "alice");
    assert_eq!(v["open_radacct"].as_array().unwrap().len(), 1);
    let o = pppgate(&bin(), &cfg, &[os("session"), os("show"), os("1; drop")], &[]);
    assert_eq!(o.status.code(), Some(65));
}

#[test]
fn janitor_by_its_canonical_name_and_boot_delay() {
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 3600, "s");
    let janitor = named(env.dir(), "vpn-stale-session-janitor");
    let t0 = std::time::Instant::now();
    let o = pppgate(&janitor, &cfg, &[os("--boot-delay"), os("1"), os("--json")], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(t0.elapsed() >= std::time::Duration::from_secs(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["radacct"]["closed"], 1);
    assert!(!env.db.is_open(row));
    let o = pppgate(&janitor, &cfg, &[os("--boot-delay"), os("4000")], &[]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
}

#[test]
fn unreadable_mappings_fail_the_hook_instead_of_closing_live_sessions() {
    use std::os::unix::fs::PermissionsExt;
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-a", NAS_A);
    let alice = env.db.connection("alice");
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "s");
    // The configuration is readable by everyone; the mappings only by root (a deployment where
    // FreeRADIUS's user is not in the pppgate group).
    std::fs::set_permissions(env.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(env.sessions_dir(), std::fs::Permissions::from_mode(0o750)).unwrap();
    for f in std::fs::read_dir(env.sessions_dir()).unwrap() {
        std::fs::set_permissions(f.unwrap().path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(bin())
        .args([os("--config"), cfg.as_os_str(), os("radius"), os("exec"), os("simultaneous-use"), os("--max=1")])
        .env_clear()
        .env("USER_NAME", "\"alice\"")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "must fail, not decide without the mappings\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ppp0.env"), "{}", text(&out));
    assert!(env.db.is_open(row), "the live session's row was closed");
}

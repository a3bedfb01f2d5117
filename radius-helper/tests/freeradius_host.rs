//! A real FreeRADIUS 3.2 (rlm_sql postgresql, pppgate's packaging/freeradius snippets) on the
//! build machine, in a private network namespace, asked with radclient. Live sessions are real
//! processes with TUN `pppN` links; PPP itself needs the lab VM (tests/lab_radius.rs).
//! Needs root, freeradius and freeradius-postgresql; fails, never skips, without them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pppgate_testkit::*;

const NAS_A: &str = "192.0.2.1";
const NAS_B: &str = "192.0.2.2";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn replace_once(text: &str, from: &str, to: &str, file: &str) -> String {
    assert!(text.contains(from), "{file}: {from:?} not found (FreeRADIUS layout changed?)");
    text.replacen(from, to, 1)
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let t = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::write(path, f(t)).unwrap();
}

/// `radiusd -X` with a copy of /etc/freeradius/3.0, wired as packaging/freeradius describes.
struct FreeRadius {
    child: Child,
    log: PathBuf,
}

impl FreeRadius {
    fn start(env: &DbEnv, pppgate_cfg: &Path) -> FreeRadius {
        assert!(
            Path::new("/usr/sbin/freeradius").exists(),
            "freeradius is not installed (apt-get install freeradius freeradius-postgresql freeradius-utils)"
        );
        assert!(
            Path::new("/usr/lib/freeradius/rlm_sql_postgresql.so").exists(),
            "freeradius-postgresql is not installed"
        );
        let base = env.dir().join("fr");
        let raddb = base.join("raddb");
        // The detail module (accounting) writes under logdir/radacct/<client>/.
        fs::create_dir_all(base.join("log/radacct/127.0.0.1")).unwrap();
        fs::create_dir_all(base.join("run")).unwrap();
        run(&["cp", "-a", "/etc/freeradius/3.0", raddb.to_str().unwrap()]);
        let bin = env!("CARGO_BIN_EXE_pppgate");

        edit(&raddb.join("radiusd.conf"), |t| {
            let t = replace_once(
                &t,
                "logdir = /var/log/freeradius",
                &format!("logdir = {}", base.join("log").display()),
                "radiusd.conf",
            );
            let t = replace_once(
                &t,
                "run_dir = ${localstatedir}/run/${name}",
                &format!("run_dir = {}", base.join("run").display()),
                "radiusd.conf",
            );
            let t = replace_once(
                &t,
                "checkrad = ${sbindir}/checkrad",
                &fs::read_to_string(repo().join("packaging/freeradius/radiusd-checkrad.conf"))
                    .unwrap()
                    .lines()
                    .find(|l| l.starts_with("checkrad"))
                    .unwrap()
                    .replace("/usr/sbin/pppgate", bin),
                "radiusd.conf",
            );
            // Runs as root in this test (the lab VM runs it as freerad).
            let t = replace_once(&t, "\tuser = freerad", "#\tuser = freerad", "radiusd.conf");
            replace_once(&t, "\tgroup = freerad", "#\tgroup = freerad", "radiusd.conf")
        });
        edit(&raddb.join("mods-available/sql"), |t| {
            let t = replace_once(&t, "\tdialect = \"sqlite\"", "\tdialect = \"postgresql\"", "sql");
            let t = replace_once(&t, "\tdriver = \"rlm_sql_null\"", "\tdriver = \"rlm_sql_${dialect}\"", "sql");
            let t = replace_once(&t, "\tradius_db = \"radius\"", &format!("\tradius_db = \"{}\"", env.db.dsn()), "sql");
            replace_once(&t, "\tdelete_stale_sessions = yes", "\tdelete_stale_sessions = no", "sql")
        });
        std::os::unix::fs::symlink("../mods-available/sql", raddb.join("mods-enabled/sql")).unwrap();
        // pppgate's exec instance, exactly as shipped but for the paths.
        let module = fs::read_to_string(repo().join("packaging/freeradius/mods-available/pppgate"))
            .unwrap()
            .replace("/usr/sbin/pppgate", bin)
            .replace("/etc/pppgate/pppgate.toml", pppgate_cfg.to_str().unwrap());
        fs::write(raddb.join("mods-enabled/pppgate"), module).unwrap();
        edit(&raddb.join("sites-enabled/default"), |t| {
            let t = replace_once(&t, "\t-sql\n", "\tsql\n\tpppgate_simul\n", "default (authorize)");
            let t = t.replace("\t-sql\n", "\tsql\n");
            let t = replace_once(&t, "#\tsql\n}", "\tsql\n}", "default (session)");
            // Accounting goes to SQL only (the detail file is not what these tests look at).
            t.replace("\n\tdetail\n", "\n#\tdetail\n")
        });
        let mut clients = fs::OpenOptions::new().append(true).open(raddb.join("clients.conf")).unwrap();
        let nas = fs::read_to_string(repo().join("packaging/freeradius/clients.d/pppgate-nas.conf")).unwrap();
        writeln!(clients, "{nas}").unwrap();
        writeln!(clients, "client other-nas {{\n\tipaddr = {NAS_B}\n\tsecret = x\n\tnas_type = pppgate\n}}").unwrap();

        let log = base.join("radiusd.log");
        // checkrad inherits radiusd's environment (rlm_exec hooks do not: their path is in argv).
        let child = Command::new("freeradius")
            .env("PPPGATE_CONFIG", pppgate_cfg)
            .args(["-X", "-f", "-d"])
            .arg(&raddb)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut fr = FreeRadius { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !fr.log_text().contains("Ready to process requests") {
            assert!(Instant::now() < deadline, "FreeRADIUS did not start:\n{}", fr.log_text());
            if let Ok(Some(st)) = fr.child.try_wait() {
                panic!("FreeRADIUS exited ({st}):\n{}", fr.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fr
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// radclient with `pairs` to `port` (`auth` or `acct`); its whole output.
    fn send(&self, port: u16, kind: &str, pairs: &str) -> String {
        let mut c = Command::new("radclient")
            .args(["-x", "-r", "1", "-t", "15", &format!("127.0.0.1:{port}"), kind, "testing123"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(pairs.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Access-Request for `user`/`password` from NAS_A; true for Access-Accept.
    fn login(&self, user: &str, password: &str) -> bool {
        let mut c = Command::new("radclient")
            .args(["-x", "-r", "1", "-t", "15", "127.0.0.1:1812", "auth", "testing123"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(
            c.stdin.take().unwrap(),
            "User-Name = \"{user}\"\nUser-Password = \"{password}\"\nNAS-IP-Address = {NAS_A}\nNAS-Port = 0\nService-Type = Framed-User\nFramed-Protocol = PPP"
        )
        .unwrap();
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if text.contains("Received Access-Accept") {
            true
        } else if text.contains("Received Access-Reject") {
            false
        } else {
            panic!("no answer from FreeRADIUS: {text}\n--- radiusd:\n{}", self.log_text());
        }
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user(env: &DbEnv, login: &str, password: &str, simultaneous_use: Option<u32>) -> i64 {
    let mut c = env.db.client();
    c.execute(
        "INSERT INTO radcheck (username, attribute, op, value) VALUES ($1, 'Cleartext-Password', ':=', $2)",
        &[&login, &password],
    )
    .unwrap();
    if let Some(n) = simultaneous_use {
        c.execute(
            "INSERT INTO radcheck (username, attribute, op, value) VALUES ($1, 'Simultaneous-Use', ':=', $2)",
            &[&login, &n.to_string()],
        )
        .unwrap();
    }
    env.db.connection(login)
}

#[test]
fn freeradius_enforces_simultaneous_use_without_lockouts() {
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-1", NAS_A);
    let alice = user(&env, "alice", "secret", Some(1));
    user(&env, "bob", "pw", Some(1));
    user(&env, "carol", "pw", None);
    let fr = FreeRadius::start(&env, &cfg);

    // No session yet: accepted.
    assert!(fr.login("alice", "secret"));
    assert!(!fr.login("alice", "wrong"), "a wrong password is still rejected");

    // A live session on this NAS: a second login is rejected.
    let pppd = StandIn::sleeper();
    ppp_link("ppp0", "10.255.0.1", "198.51.100.10");
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", pppd.pid(), pppd.start_ts());
    let row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 30, "=25lX6b01f7fd=25hX");
    assert!(!fr.login("alice", "secret"), "second login while the first is live");
    assert!(env.db.is_open(row));
    assert!(fr.log_text().contains("pppgate: 1 of 1 allowed sessions online"), "{}", fr.log_text());

    // pppd killed with SIGKILL: no Accounting-Stop, the row stays open — and the next login is
    // accepted because the on-demand janitor closed it.
    drop(pppd);
    assert!(fr.login("alice", "secret"), "lockout after a crash:\n{}", fr.log_text());
    assert!(!env.db.is_open(row));

    // A ghost mapping (dead PID, interface still there) does not count.
    write_mapping(&env.sessions_dir(), alice, "ppp0", "198.51.100.10", dead_pid(), policy_core::lock::now_unix() - 60);
    let ghost_row = env.db.acct_row("alice", NAS_A, Some("198.51.100.10"), 60, "x");
    assert!(fr.login("alice", "secret"));
    assert!(!env.db.is_open(ghost_row));

    // Another NAS's row: counted while its heartbeat is fresh (checkrad answers online)...
    let other = env.db.acct_row("bob", NAS_B, Some("198.51.100.20"), 7200, "y");
    env.db.set_update_age(other, 60);
    assert!(!fr.login("bob", "pw"));
    // ...and not once the heartbeat is older than 3 × 300 s: FreeRADIUS's own count still sees
    // the open row, asks checkrad, which answers "stale"; the row itself is left to NAS B.
    env.db.set_update_age(other, 1000);
    assert!(fr.login("bob", "pw"), "{}", fr.log_text());
    assert!(env.db.is_open(other), "another NAS's row is never closed here");
    let log = fr.log_text();
    assert!(
        log.lines().any(|l| l.contains("checkrad answered") && l.contains("presence=Stale") && l.contains(NAS_B)),
        "FreeRADIUS asked pppgate's checkrad about NAS B's row:\n{log}"
    );

    // No limit: accepted whatever is open.
    env.db.acct_row("carol", NAS_A, Some("198.51.100.30"), 5, "z");
    assert!(fr.login("carol", "pw"));
}

#[test]
fn freeradius_rejects_when_the_hook_cannot_reach_the_database() {
    private_netns();
    let env = DbEnv::new();
    user(&env, "alice", "secret", Some(1));
    // FreeRADIUS's own sql works; pppgate's configuration points at a database that is down.
    let good = fs::read_to_string(env.config_path("lns-1", NAS_A)).unwrap();
    let dead = env.dir().join("no-server");
    fs::create_dir_all(&dead).unwrap();
    let down = env.dir().join("down.toml");
    fs::write(&down, good.replace(&env.db.dsn(), &format!("host={} dbname=x user=postgres", dead.display()))).unwrap();
    let fr = FreeRadius::start(&env, &down);
    assert!(!fr.login("alice", "secret"), "SQL unreachable must never be ok");
    assert!(fr.log_text().contains("pppgate: database unavailable (fail closed)"), "{}", fr.log_text());
}

/// A string value in radclient's input syntax.
fn quoted(v: &[u8]) -> String {
    let s = std::str::from_utf8(v).expect("pppd renders to ASCII");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// R513: the chain's stages 2–3 against the real FreeRADIUS 3.2 — for logins with quotes,
/// backslashes, `%`, `=`, `'` and three scripts, radius.so's User-Name (pppd's rendering) is
/// found in radcheck under `sql_username(login)` (login accepted), radius.so's Accounting-Start
/// is stored in radacct under exactly that name, and pppgate's Simultaneous-Use hook finds the
/// row by it (a second login is rejected while the row is young and therefore online).
#[test]
fn freeradius_stores_and_counts_each_login_as_sql_username_says() {
    use policy_core::radius::sqlname::{pppd_user_name, sql_username};
    private_netns();
    let env = DbEnv::new();
    let cfg = env.config_path("lns-1", NAS_A);
    let logins = [
        "plain.user",
        "o'brien",
        "x\"y",
        "back\\slash",
        "50%=half",
        "user@example.net",
        "jürgen",
        "Иван",
        "名前",
        "a!#$&()*+,/:;<>?[]^_`{|}~",
    ];
    for l in logins {
        assert_eq!(policy_core::input::login_refusal(l), None, "{l:?} is an accepted login");
        // radcheck holds the user as FreeRADIUS looks it up; vpn_connections the login itself.
        let stored = sql_username(l.as_bytes());
        let mut c = env.db.client();
        for (attr, value) in [("Cleartext-Password", "pw"), ("Simultaneous-Use", "1")] {
            c.execute(
                "INSERT INTO radcheck (username, attribute, op, value) VALUES ($1, $2, ':=', $3)",
                &[&stored, &attr, &value],
            )
            .unwrap();
        }
        env.db.connection(l);
    }
    let fr = FreeRadius::start(&env, &cfg);
    let mut c = env.db.client();
    for (i, l) in logins.iter().enumerate() {
        let name = quoted(&pppd_user_name(l.as_bytes()));
        let auth = format!(
            "User-Name = {name}\nUser-Password = \"pw\"\nNAS-IP-Address = {NAS_A}\nNAS-Port = 0\nService-Type = Framed-User\nFramed-Protocol = PPP\n"
        );
        let out = fr.send(1812, "auth", &auth);
        assert!(out.contains("Received Access-Accept"), "{l:?} as {name}: {out}\n--- radiusd:\n{}", fr.log_text());
        let ip = format!("198.51.100.{}", 100 + i);
        let acct = format!(
            "User-Name = {name}\nAcct-Status-Type = Start\nAcct-Session-Id = \"s{i}\"\nNAS-IP-Address = {NAS_A}\nNAS-Port = {i}\nFramed-IP-Address = {ip}\n"
        );
        let out = fr.send(1813, "acct", &acct);
        assert!(out.contains("Received Accounting-Response"), "{l:?}: {out}\n--- radiusd:\n{}", fr.log_text());
        let stored: String =
            c.query_one("SELECT username FROM radacct WHERE framedipaddress = $1::text::inet", &[&ip]).unwrap().get(0);
        assert_eq!(stored, sql_username(l.as_bytes()), "radacct.username of {l:?}");
        let out = fr.send(1812, "auth", &auth);
        assert!(out.contains("Received Access-Reject"), "second login of {l:?} must be rejected: {out}");
        eprintln!("{l:?}: User-Name {name}, stored {stored:?}: accepted, one row, second login rejected");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM radacct", &[]).unwrap().get(0);
    assert_eq!(n, logins.len() as i64, "one row per login");
}

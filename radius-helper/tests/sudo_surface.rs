//! The sudo surface (issue 10, docs/security.md "The sudo surface"): the real `sudo` with the
//! shipped sudoers rules, run by the real unprivileged user `www-data`.
//!
//! Everything happens in a private mount namespace (`unshare --mount`) whose `/etc` is an overlay
//! over the host's: the test's `/etc/sudoers` (the shipped rules with `/usr/sbin/` replaced by a
//! root-owned directory holding links to the built binary) and `/etc/pppgate/pppgate.toml` (the
//! test's configuration: private PostgreSQL, paths in the test's directory) exist only there; the
//! host's files are not touched. The network namespace is the test thread's own.
//!
//! Proven: `visudo -c` passes; every whitelisted invocation succeeds; at least 20 hostile ones
//! (extra flags, `--config`, `-c`, env overrides, other verbs, path tricks, a symlinked
//! configuration) are refused — by sudo's argument patterns, or, where a site's sudoers is
//! laxer (the old `*` patterns with `env_keep`), by pppgate itself (exit 64) — and root-only
//! canary files that a hostile configuration points `paths.apply_lock` and `paths.audit_log` at
//! keep their content; every pppgate run through sudo is in the audit trail with `SUDO_USER`.
//!
//! /etc and /var/lib, whole: inside the namespace both are overlays over the host's, so every
//! change a call makes to them — a written, created, removed, renamed, chmod'ed or chown'ed entry —
//! lands in the overlay's upper layer, where it is attributed to the calls, and the host's trees
//! are never touched. Before and after each batch of calls the test records a manifest of both
//! merged trees (sha256 of every regular file, symlink targets, type, mode, owner, group) and
//! compares them: every difference must be absent from the upper layers (then it is another
//! process on this shared machine changing the host's tree meanwhile, printed, e.g. apt's or
//! another test's files), and the upper layers must hold exactly what the test installed
//! (`/etc/sudoers`, `/etc/pppgate/pppgate.toml`). pppgate's own files (locks, audit trail,
//! mappings, accounting) are in the test's directory, outside both trees, so no exception is
//! needed for them.
//!
//! Needs root, sudo, util-linux (unshare, setpriv), python3 and the user www-data; fails without
//! them.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/etc/sudoers.pppgate");

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// One invocation: a name, `VAR=value` in the caller's environment, `VAR=value` given to sudo
/// before the command (which sudo accepts only with SETENV), the program (a name in the sbin
/// directory or a path) and its arguments.
struct Call {
    name: &'static str,
    caller_env: Vec<String>,
    env: Vec<String>,
    prog: String,
    args: Vec<String>,
}

fn call(name: &'static str, prog: &str, args: &[&str]) -> Call {
    Call {
        name,
        caller_env: vec![],
        env: vec![],
        prog: prog.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The trees whose every file the calls must leave as they were.
const TREES: [&str; 2] = ["/etc", "/var/lib"];

/// Prints one JSON line per entry of the trees given as arguments (not crossing into other
/// mounts): path, type, mode, owner, group, and the sha256 of a regular file's content or a
/// symlink's target.
const MANIFEST_PY: &str = r#"
import hashlib, json, os, stat, sys

def entry(p):
    try:
        st = os.lstat(p)
        e = {"path": p, "type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
             "uid": st.st_uid, "gid": st.st_gid}
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            e["sha256"] = h.hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
    except FileNotFoundError:
        return  # removed meanwhile: shows as a difference
    print(json.dumps(e, sort_keys=True))

for top in sys.argv[1:]:
    dev = os.lstat(top).st_dev
    for d, dirs, files in os.walk(top):
        entry(d)
        keep = []
        for x in dirs:
            p = os.path.join(d, x)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                keep.append(x)
            else:
                entry(p)  # a symlink to a directory, or another mount's root
        dirs[:] = keep
        for x in files:
            entry(os.path.join(d, x))
"#;

type Manifest = std::collections::BTreeMap<String, String>;

fn read_manifest(path: &Path) -> Manifest {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), l.to_string())
        })
        .collect()
}

/// Every path below `upper` (an overlay's upper layer), as the path it has in the merged tree
/// mounted at `top`.
fn upper_entries(upper: &Path, top: &str) -> std::collections::BTreeSet<String> {
    fn walk(dir: &Path, rel: &Path, out: &mut std::collections::BTreeSet<String>, top: &str) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = rel.join(e.file_name());
            out.insert(Path::new(top).join(&rel).display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &rel, out, top);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(upper, Path::new(""), &mut out, top);
    out
}

/// What one batch of calls did to /etc and /var/lib.
struct Trees {
    /// Entries in the manifests (before).
    entries: usize,
    /// Differences between the manifests that the calls made (in an upper layer).
    by_calls: Vec<String>,
    /// Differences made on the host meanwhile by other processes (not in an upper layer).
    by_host: Vec<String>,
    /// Entries of the upper layers beyond what the test installed.
    extra_upper: Vec<String>,
}

/// Runs `calls` as www-data through sudo inside the private mount namespace with `sudoers`
/// installed; returns each call's exit code and output, and what the calls did to /etc and
/// /var/lib.
fn run_as_panel(root: &Path, sbin: &Path, config: &Path, sudoers: &str, calls: &[Call]) -> (Vec<(i32, String)>, Trees) {
    let sudoers_file = root.join("sudoers");
    fs::write(&sudoers_file, format!("Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n{sudoers}")).unwrap();
    chmod(&sudoers_file, 0o440);
    let out = Command::new("visudo").args(["-cf", sudoers_file.to_str().unwrap()]).output().unwrap();
    assert!(
        out.status.success(),
        "visudo -c: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ov = root.join("overlay");
    let _ = fs::remove_dir_all(&ov);
    let manifest = root.join("manifest.py");
    fs::write(&manifest, MANIFEST_PY).unwrap();
    let mut script = String::from("set -u\n");
    for (i, top) in TREES.iter().enumerate() {
        let (u, w) = (ov.join(format!("upper{i}")), ov.join(format!("work{i}")));
        for d in [&u, &w] {
            fs::create_dir_all(d).unwrap();
        }
        let m = fs::metadata(top).unwrap();
        chmod(&u, std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
        script.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={top},upperdir={},workdir={} {top} || exit 99\n",
            u.display(),
            w.display()
        ));
    }
    script.push_str(&format!(
        "install -m 0440 {sf} /etc/sudoers || exit 99\nmkdir -p -m 0755 /etc/pppgate || exit 99\n\
         install -m 0644 {cfg} /etc/pppgate/pppgate.toml || exit 99\nout={root}/calls\nmkdir -p $out\n\
         python3 {manifest} {trees} > {root}/before.manifest || exit 98\n",
        sf = sudoers_file.display(),
        cfg = config.display(),
        root = root.display(),
        manifest = manifest.display(),
        trees = TREES.join(" "),
    ));
    for (i, c) in calls.iter().enumerate() {
        let prog = if c.prog.starts_with('/') { c.prog.clone() } else { sbin.join(&c.prog).display().to_string() };
        let words: Vec<String> =
            c.env.iter().chain(std::iter::once(&prog)).chain(c.args.iter()).map(|s| shell_quote(s)).collect();
        let caller: Vec<String> = c.caller_env.iter().map(|s| shell_quote(s)).collect();
        script.push_str(&format!(
            "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin {} setpriv --reuid=www-data --regid=www-data --clear-groups sudo -n {} > $out/{i}.out 2>&1 < /dev/null; echo $? > $out/{i}.rc\n",
            caller.join(" "),
            words.join(" ")
        ));
    }
    script.push_str(&format!(
        "python3 {} {} > {}/after.manifest || exit 98\n",
        manifest.display(),
        TREES.join(" "),
        root.display()
    ));
    let script_file = root.join("calls.sh");
    fs::write(&script_file, script).unwrap();
    let _ = fs::remove_dir_all(root.join("calls"));
    let st = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", script_file.to_str().unwrap()])
        .status()
        .expect("unshare (util-linux) runs");
    assert!(st.success(), "the mount namespace could not be prepared or its trees read (exit {st})");
    let results = (0..calls.len())
        .map(|i| {
            let rc = fs::read_to_string(root.join(format!("calls/{i}.rc"))).unwrap().trim().parse().unwrap();
            (rc, fs::read_to_string(root.join(format!("calls/{i}.out"))).unwrap())
        })
        .collect();

    let (before, after) = (read_manifest(&root.join("before.manifest")), read_manifest(&root.join("after.manifest")));
    let mut upper = std::collections::BTreeSet::new();
    for (i, top) in TREES.iter().enumerate() {
        upper.extend(upper_entries(&ov.join(format!("upper{i}")), top));
    }
    let installed = ["/etc/sudoers", "/etc/pppgate", "/etc/pppgate/pppgate.toml"];
    let mut trees = Trees {
        entries: before.len(),
        by_calls: vec![],
        by_host: vec![],
        extra_upper: upper.iter().filter(|p| !installed.contains(&p.as_str())).cloned().collect(),
    };
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for p in paths {
        let (b, a) = (before.get(p), after.get(p));
        if b == a {
            continue;
        }
        let what = match (b, a) {
            (None, Some(a)) => format!("created: {a}"),
            (Some(b), None) => format!("removed: {b}"),
            (Some(b), Some(a)) => format!("changed: {b} -> {a}"),
            (None, None) => unreachable!(),
        };
        if upper.contains(p.as_str()) {
            trees.by_calls.push(what);
        } else {
            trees.by_host.push(what);
        }
    }
    (results, trees)
}

/// Asserts that a batch of calls left every file of /etc and /var/lib as it was.
fn assert_trees_untouched(batch: &str, t: &Trees) {
    println!(
        "{batch}: /etc and /var/lib, {} entries checksummed before and after: {} differences made by the calls, {} made on the host by other processes meanwhile",
        t.entries,
        t.by_calls.len(),
        t.by_host.len()
    );
    for d in &t.by_host {
        println!("  changed on the host meanwhile (not through the namespace): {d}");
    }
    assert!(t.by_calls.is_empty(), "{batch}: the calls changed /etc or /var/lib:\n{}", t.by_calls.join("\n"));
    assert!(
        t.extra_upper.is_empty(),
        "{batch}: the calls wrote to /etc or /var/lib (overlay upper layer): {:?}",
        t.extra_upper
    );
}

#[test]
fn the_panel_runs_its_verbs_through_sudo_and_nothing_else() {
    private_netns();
    assert!(
        Command::new("id").arg("www-data").output().map(|o| o.status.success()).unwrap_or(false),
        "the user www-data is needed (Debian's base-passwd has it)"
    );
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let root = env.root().to_path_buf();
    let customer = add_customer(&pg, "acme");
    let a = add_connection(&pg, "alice", "CLAIMED", Some(customer), None, None);
    let (a_s, c_s) = (a.to_string(), customer.to_string());
    // A next hop for policy routing.
    run(&["ip", "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p"]);
    run(&["ip", "link", "set", "wg0p", "up"]);
    run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
    run(&["ip", "link", "set", "wg0", "up"]);
    run(&["ip", "route", "add", "default", "via", "10.100.0.2", "dev", "wg0"]);

    // The binary under the names sudoers grants, in a root-owned directory nobody else may write.
    let sbin = root.join("sbin");
    fs::create_dir_all(&sbin).unwrap();
    chmod(&sbin, 0o755);
    for name in ["pppgate", "vpn-policy-apply", "vpn-session-kill"] {
        symlink(BIN, sbin.join(name)).unwrap();
    }
    let shipped = fs::read_to_string(SHIPPED).unwrap();
    let out = Command::new("visudo").args(["-cf", SHIPPED]).output().unwrap();
    assert!(out.status.success(), "the shipped sudoers file fails visudo -c: {}", String::from_utf8_lossy(&out.stderr));
    let sudoers = shipped.replace("/usr/sbin/", &format!("{}/", sbin.display()));
    assert_ne!(sudoers, shipped, "the shipped rules name /usr/sbin/");

    // Root-only canaries, and a hostile configuration (nobody's, 0666, in /tmp) aiming at them.
    let canary_dir = root.join("root-only");
    fs::create_dir_all(&canary_dir).unwrap();
    chmod(&canary_dir, 0o700);
    let (lock_canary, audit_canary) = (canary_dir.join("shadow-lock"), canary_dir.join("shadow-audit"));
    for c in [&lock_canary, &audit_canary] {
        fs::write(c, "root's own content\n").unwrap();
        chmod(c, 0o600);
    }
    let evil_dir = tempfile::Builder::new().prefix("pppgate-evil").tempdir_in("/tmp").unwrap();
    let evil = evil_dir.path().join("evil.toml");
    let good_text = fs::read_to_string(&env.config_path).unwrap();
    let evil_text: String = good_text
        .lines()
        .map(|l| {
            if l.starts_with("apply_lock") {
                format!("apply_lock = {:?}", lock_canary.display().to_string())
            } else if l.starts_with("audit_log") {
                format!("audit_log = {:?}", audit_canary.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(evil_text.contains("shadow-lock") && evil_text.contains("shadow-audit"), "{evil_text}");
    fs::write(&evil, evil_text + "\n").unwrap();
    chmod(evil_dir.path(), 0o777);
    chmod(&evil, 0o666);
    let _ = nix::unistd::chown(&evil, Some(nix::unistd::Uid::from_raw(65534)), None);
    let link = evil_dir.path().join("link.toml");
    symlink(&env.config_path, &link).unwrap();
    let evil_s = evil.to_str().unwrap();
    let link_s = link.to_str().unwrap();
    let canaries = || (fs::read(&lock_canary).unwrap(), fs::read(&audit_canary).unwrap());
    let before = canaries();

    // 1. Every whitelisted invocation, in the shipped grammar.
    let allowed = vec![
        call("apply connection", "vpn-policy-apply", &["--connection-id", &a_s]),
        call("apply connection json", "vpn-policy-apply", &["--json", "--connection-id", &a_s]),
        call("apply customer", "vpn-policy-apply", &["--customer-id", &c_s]),
        call("routes add", "pppgate", &["routes", "add", "--connection-id", &a_s, "--dst", "192.168.50.0/24"]),
        call(
            "routes add all options",
            "pppgate",
            &[
                "routes",
                "add",
                "--connection-id",
                &a_s,
                "--dst",
                "192.168.51.0/24",
                "--table",
                "100",
                "--metric",
                "5",
                "--no-apply",
            ],
        ),
        call("routes list", "pppgate", &["--json", "routes", "list", "--connection-id", &a_s]),
        call("routes del", "pppgate", &["routes", "del", "--connection-id", &a_s, "--dst", "192.168.50.0/24"]),
        call(
            "pbr add",
            "pppgate",
            &[
                "pbr",
                "add",
                "ktn",
                "--from",
                "10.200.0.0/24",
                "--table",
                "100",
                "--via",
                "10.100.0.40",
                "--dev",
                "wg0",
                "--priority",
                "100",
            ],
        ),
        call("pbr list", "pppgate", &["--json", "pbr", "list"]),
        call("pbr check", "pppgate", &["pbr", "check", "10.100.0.1"]),
        call("pbr del", "pppgate", &["pbr", "del", "ktn"]),
        call("session list", "pppgate", &["--json", "session", "list"]),
        call("session show", "pppgate", &["session", "show", &a_s]),
        call("session kill", "vpn-session-kill", &[&a_s]),
    ];
    let (results, trees) = run_as_panel(&root, &sbin, &env.config_path, &sudoers, &allowed);
    assert_trees_untouched("whitelisted invocations", &trees);
    for (c, (rc, out)) in allowed.iter().zip(&results) {
        println!("allowed {:<24} exit {rc}", c.name);
        assert_eq!(*rc, 0, "{}: {} {:?} through sudo failed: {out}", c.name, c.prog, c.args);
    }

    // 2. Hostile invocations against the shipped rules: sudo refuses (exit 1, "a password is
    //    required": no rule matches) before pppgate runs.
    let foreign = root.join("foreign-link");
    symlink(BIN, &foreign).unwrap();
    let foreign_s = foreign.to_str().unwrap();
    let mut hostile = vec![
        call("--config after the id", "vpn-policy-apply", &["--connection-id", &a_s, "--config", evil_s]),
        call("--config before the id", "vpn-policy-apply", &["--config", evil_s, "--connection-id", &a_s]),
        call("-c", "vpn-policy-apply", &["--connection-id", &a_s, "-c", evil_s]),
        call("--config=", "vpn-policy-apply", &["--connection-id", &a_s, &format!("--config={evil_s}")]),
        call("symlinked config", "vpn-policy-apply", &["--connection-id", &a_s, "--config", link_s]),
        call("id and flag in one word", "vpn-policy-apply", &["--connection-id", &format!("{a} --config {evil_s}")]),
        call("--break-stale-lock", "vpn-policy-apply", &["--connection-id", &a_s, "--break-stale-lock"]),
        call("--reconcile-all", "vpn-policy-apply", &["--reconcile-all"]),
        call("--connection-id=", "vpn-policy-apply", &[&format!("--connection-id={a}")]),
        call("kill with --config", "vpn-session-kill", &[&a_s, "--config", evil_s]),
        call("kill, two ids", "vpn-session-kill", &[&a_s, &a_s]),
        call("global --config", "pppgate", &["--config", evil_s, "session", "list"]),
        call("trailing --config", "pppgate", &["session", "list", "--config", evil_s]),
        call("db migrate", "pppgate", &["db", "migrate"]),
        call("reconcile", "pppgate", &["reconcile"]),
        call("collect", "pppgate", &["collect"]),
        call("wg init", "pppgate", &["wg", "init"]),
        call("sysctl", "pppgate", &["sysctl", "ensure"]),
        call(
            "routes add --config",
            "pppgate",
            &["routes", "add", "--connection-id", &a_s, "--dst", "10.9.0.0/24", "--config", evil_s],
        ),
        call(
            "pbr dev path",
            "pppgate",
            &[
                "pbr",
                "add",
                "x",
                "--from",
                "10.0.0.0/8",
                "--table",
                "100",
                "--via",
                "10.100.0.40",
                "--dev",
                "../../etc",
                "--priority",
                "1",
            ],
        ),
        call("pbr del flag as name", "pppgate", &["pbr", "del", "--config"]),
        call("another path to the binary", foreign_s, &["apply", "--connection-id", &a_s]),
        call("plain pppgate apply", "pppgate", &["apply", "--connection-id", &a_s]),
    ];
    for (name, var) in [
        ("PPPGATE_CONFIG given to sudo", format!("PPPGATE_CONFIG={evil_s}")),
        ("test hook given to sudo", "PPPGATE_TEST_CRASH_AT=apply:after-nft".into()),
    ] {
        let mut c = call(name, "vpn-policy-apply", &["--connection-id", &a_s]);
        c.env = vec![var];
        hostile.push(c);
    }
    let (results, trees) = run_as_panel(&root, &sbin, &env.config_path, &sudoers, &hostile);
    assert_trees_untouched("hostile invocations, shipped rules", &trees);
    for (c, (rc, out)) in hostile.iter().zip(&results) {
        println!("refused by sudo {:<28} exit {rc}: {}", c.name, out.lines().next().unwrap_or(""));
        assert_ne!(*rc, 0, "{}: {} {:?} {:?} was let through: {out}", c.name, c.prog, c.env, c.args);
        assert!(out.contains("sudo:"), "{}: refused by sudo, not by pppgate: {out}", c.name);
    }
    let refused_by_sudo = hostile.len();

    // 3. A laxer site (the old `*` patterns, the caller's PPPGATE_* kept): pppgate refuses every
    //    override itself (64) before reading anything.
    let lax = format!(
        "Defaults env_keep += \"PPPGATE_CONFIG PPPGATE_TEST_CRASH_AT\"\n\
         www-data ALL=(root) NOPASSWD: {s}/vpn-policy-apply *, {s}/vpn-session-kill *, {s}/pppgate session *\n",
        s = sbin.display()
    );
    let mut lax_calls = vec![
        call("--config", "vpn-policy-apply", &["--connection-id", &a_s, "--config", evil_s]),
        call("-c", "vpn-policy-apply", &["--connection-id", &a_s, "-c", evil_s]),
        call("--config=", "vpn-policy-apply", &["--connection-id", &a_s, &format!("--config={evil_s}")]),
        call("symlinked config", "vpn-policy-apply", &["--connection-id", &a_s, "--config", link_s]),
        call("kill --config", "vpn-session-kill", &[&a_s, "--config", evil_s]),
        call("session list --config", "pppgate", &["session", "list", "--config", evil_s]),
    ];
    for (name, var) in [
        ("PPPGATE_CONFIG kept by sudo", format!("PPPGATE_CONFIG={evil_s}")),
        ("test hook kept by sudo", "PPPGATE_TEST_CRASH_AT=apply:after-nft".into()),
    ] {
        let mut c = call(name, "vpn-policy-apply", &["--connection-id", &a_s]);
        c.caller_env = vec![var];
        lax_calls.push(c);
    }
    let (results, trees) = run_as_panel(&root, &sbin, &env.config_path, &lax, &lax_calls);
    assert_trees_untouched("hostile invocations, lax rules", &trees);
    for (c, (rc, out)) in lax_calls.iter().zip(&results) {
        println!("refused by pppgate {:<24} exit {rc}: {}", c.name, out.lines().next().unwrap_or(""));
        assert_eq!(*rc, 64, "{}: pppgate did not refuse the override through sudo: {out}", c.name);
        assert!(out.contains("through sudo by www-data"), "{}: {out}", c.name);
    }
    println!(
        "{} whitelisted invocations ran; {} hostile ones refused by sudo's patterns, {} by pppgate itself",
        allowed.len(),
        refused_by_sudo,
        lax_calls.len()
    );
    assert!(refused_by_sudo + lax_calls.len() >= 20);

    // Nothing the hostile configuration aimed at was written.
    assert_eq!(canaries(), before, "a root-only file was written through sudo");
    // Every pppgate run through sudo is audited with SUDO_USER (session kill by itself).
    let trail = fs::read_to_string(&env.audit_log).unwrap_or_default();
    let records: Vec<serde_json::Value> = trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_panel = records.iter().filter(|r| r["actor"]["sudo_user"] == "www-data").count();
    println!("audit trail: {} records, {by_panel} by www-data through sudo", records.len());
    assert_eq!(by_panel, allowed.len() + lax_calls.len(), "every run through sudo is audited:\n{trail}");
    assert!(records.iter().any(|r| r["exit_code"] == 64 && r["actor"]["sudo_user"] == "www-data"));
}

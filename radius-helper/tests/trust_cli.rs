//! The trust boundary of the `pppgate` binary (issue 10): which configuration files it accepts
//! (the trust rule of `policy_core::trust`), what a missing configuration exits with, and that
//! every verb accepts the same ids (up to i64::MAX) and refuses the same ones.
//!
//! Needs root (files owned by other users, a private PostgreSQL). Without it the tests fail.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A runner for `config`.
fn cli_for(config: &Path) -> Cli {
    Cli { bin: BIN.into(), config: config.to_path_buf(), env: Vec::new(), netns: None }
}

/// A valid configuration file in its own 0755 directory under a fresh temp dir.
fn good_config(root: &Path, secrets: Option<&Path>) -> PathBuf {
    let dir = root.join("etc-pppgate");
    fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    let path = dir.join("pppgate.toml");
    let secrets = secrets.map(|s| format!("secrets_file = {:?}\n", s.display().to_string())).unwrap_or_default();
    fs::write(
        &path,
        format!(
            "[database]\ndsn = \"host=/nonexistent dbname=x user=y\"\n{secrets}\n[nas]\nidentity = \"lns-t\"\nip = \"192.0.2.1\"\n"
        ),
    )
    .unwrap();
    chmod(&path, 0o640);
    path
}

/// `config check` refuses `path` with exit 78 and one line naming `names` and `mode`.
fn refused(path: &Path, names: &Path, mode: &str) {
    let out = cli_for(path).run(&["config", "check"]).expect_code(78);
    let all = format!("{}{}", out.stdout, out.stderr);
    let line = all
        .lines()
        .find(|l| l.contains(&names.display().to_string()) && l.contains(mode))
        .unwrap_or_else(|| panic!("no line naming {} and {mode:?}:\n{all}", names.display()));
    println!("refused: {line}");
}

#[test]
fn config_and_secrets_must_pass_the_trust_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets.toml");
    fs::write(&secrets, "db_password = \"s3cret\"\n").unwrap();
    chmod(&secrets, 0o600);
    let cfg = good_config(tmp.path(), Some(&secrets));
    cli_for(&cfg).ok(&["config", "check"]);

    // A 0666 configuration.
    chmod(&cfg, 0o666);
    refused(&cfg, &cfg, "mode 0666");
    chmod(&cfg, 0o664);
    refused(&cfg, &cfg, "mode 0664");
    chmod(&cfg, 0o644);
    cli_for(&cfg).ok(&["config", "check"]);

    // A group-writable directory above it.
    let dir = cfg.parent().unwrap();
    chmod(dir, 0o775);
    refused(&cfg, dir, "mode 0775");
    chmod(dir, 0o755);

    // Owned by someone else.
    nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    refused(&cfg, &cfg, "owned by uid 65534");
    nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();

    // A symlink to a good configuration, and one to a world-writable one in /tmp.
    let link = tmp.path().join("link.toml");
    symlink(&cfg, &link).unwrap();
    refused(&link, &link, "symbolic link");
    let evil = tempfile::Builder::new().prefix("evil-").tempdir_in("/tmp").unwrap();
    let evil_cfg = good_config(evil.path(), None);
    chmod(&evil_cfg, 0o666);
    let link2 = tmp.path().join("link2.toml");
    symlink(&evil_cfg, &link2).unwrap();
    refused(&link2, &link2, "symbolic link");

    // The secrets file: readable by others, a symlink.
    chmod(&secrets, 0o644);
    refused(&cfg, &secrets, "mode 0644");
    chmod(&secrets, 0o600);
    let secrets_link = tmp.path().join("secrets-link.toml");
    symlink(&secrets, &secrets_link).unwrap();
    let cfg2 = good_config(&tmp.path().join("second"), Some(&secrets_link));
    refused(&cfg2, &secrets_link, "symbolic link");
    cli_for(&cfg).ok(&["config", "check"]);
}

// ---------------------------------------------------------------------------------------------
// Every verb, found from the binary's own help (so a verb added later without a line below fails
// these tests), and its arguments.

/// The leaf verbs of `pppgate` (`["wg", "router", "add"]`, ...), read from `--help` recursively.
fn leaf_verbs() -> Vec<Vec<String>> {
    fn walk(path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let help = help_of(path);
        let subs = section(&help, "Commands:")
            .into_iter()
            // Command lines are indented by exactly two spaces; wrapped descriptions by more.
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect::<Vec<_>>();
        if subs.is_empty() {
            out.push(path.clone());
        }
        for c in subs {
            path.push(c);
            walk(path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(&mut Vec::new(), &mut out);
    assert!(out.len() > 30, "too few verbs found in the help: {out:?}");
    out
}

fn help_of(path: &[String]) -> String {
    let out = std::process::Command::new(BIN).args(path).arg("--help").output().unwrap();
    assert!(out.status.success(), "pppgate {path:?} --help: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of one section of a help text (up to the next empty line; an argument without a
/// description is followed by a line of spaces in the long help, which does not end it).
fn section<'a>(help: &'a str, title: &str) -> Vec<&'a str> {
    help.lines().skip_while(|l| *l != title).skip(1).take_while(|l| !l.is_empty()).collect()
}

/// The id arguments of a verb, from its help: options and positionals whose value is an `ID`, a
/// `TENANT` or a `ROUTER` (positionals are named `positional`).
fn id_args(path: &[String]) -> BTreeSet<String> {
    let help = help_of(path);
    let is_id = |v: &str| matches!(v, "ID" | "TENANT" | "ROUTER");
    let mut out = BTreeSet::new();
    for l in section(&help, "Arguments:") {
        let t = l.trim_start();
        if l.len() - t.len() != 2 {
            continue;
        }
        let name = t.split_whitespace().next().unwrap().trim_matches(|c| "<>[].".contains(c));
        if is_id(name) {
            out.insert("positional".to_string());
        }
    }
    for l in section(&help, "Options:") {
        let t = l.trim_start();
        let t = t.strip_prefix("-").filter(|r| r.len() > 3 && &r[1..3] == ", ").map(|r| &r[3..]).unwrap_or(t);
        let Some(rest) = t.strip_prefix("--") else { continue };
        let mut words = rest.split_whitespace();
        let opt = words.next().unwrap();
        if let Some(v) = words.next().filter(|v| v.starts_with('<')) {
            if is_id(v.trim_matches(|c| c == '<' || c == '>')) {
                out.insert(format!("--{opt}"));
            }
        }
    }
    out
}

/// The leaf verb an argument vector runs.
fn verb_of(args: &[&str], leaves: &[Vec<String>]) -> Vec<String> {
    (1..=args.len())
        .map(|n| args[..n].iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .find(|p| leaves.contains(p))
        .unwrap_or_else(|| panic!("{args:?} runs no verb the help lists"))
}

/// Every verb with arguments that parse. Exceptions, checked below: `completions` reads no
/// configuration; `diag` reports a configuration that does not load as its `config` failure
/// (exit 2, docs/operations.md); the FreeRADIUS-facing `radius` verbs answer in FreeRADIUS's codes
/// (2 = fail / error).
const VERBS: &[&[&str]] = &[
    &["config", "check"],
    &["db", "migrate"],
    &["db", "status"],
    &["apply", "--connection-id", "1"],
    &["reconcile"],
    &["routes", "list"],
    &["routes", "add", "--connection-id", "1", "--dst", "10.9.0.0/24"],
    &["routes", "del", "--connection-id", "1", "--dst", "10.9.0.0/24"],
    &["routes", "apply"],
    &["pbr", "list"],
    &[
        "pbr",
        "add",
        "p",
        "--connection-id",
        "1",
        "--table",
        "100",
        "--via",
        "10.0.0.1",
        "--dev",
        "lo",
        "--priority",
        "100",
    ],
    &["pbr", "del", "x"],
    &["pbr", "check", "10.0.0.1"],
    &["connection", "show", "1"],
    &["connection", "set", "1", "--block"],
    &["connection", "add", "--login", "x"],
    &["sysctl", "check"],
    &["sysctl", "ensure"],
    &["janitor"],
    &["session", "kill", "1"],
    &["session", "list"],
    &["session", "show", "1"],
    &["collect"],
    &["final-flush", "--ppp-if", "ppp0"],
    &["metrics"],
    &["guard", "--once"],
    &["wg", "init"],
    &["wg", "tenant", "add", "1"],
    &["wg", "tenant", "show", "1"],
    &["wg", "tenant", "list"],
    &["wg", "tenant", "del", "1"],
    &["wg", "router", "add", "--tenant", "1", "--router", "1"],
    &["wg", "router", "show", "1"],
    &["wg", "router", "list"],
    &["wg", "router", "del", "1"],
    &["wg", "router", "config", "1", "--format", "routeros"],
    &["wg", "subnet", "info", "--tenant", "1"],
    &["wg", "status"],
    &["wg", "reconcile"],
    &["wg", "rotate-key"],
];

const OWN_CODES: &[&[&str]] = &[
    &["diag"],
    &["radius", "checkrad", "other", "192.0.2.1", "1", "u", "s"],
    &["radius", "exec", "simultaneous-use"],
    &["completions", "bash"],
];

/// Runs `cli` with `args` in a private mount namespace whose /var/log is `log_dir`: `session kill`
/// audits to the default log when the configuration does not load, and the host's log is not the
/// test's to write.
fn run_isolated(cli: &Cli, log_dir: &Path, args: &[&str]) -> CliOut {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", "mount --bind \"$0\" /var/log && exec \"$@\""])
        .arg(log_dir)
        .arg(&cli.bin)
        .arg("--config")
        .arg(&cli.config)
        .args(args)
        .env("PPPGATE_LOG", "warn")
        .env("USER_NAME", "bob")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().expect("run unshare");
    CliOut {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code(),
        signal: None,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: std::time::Duration::ZERO,
    }
}

/// Every leaf verb the help lists is in [`VERBS`] or [`OWN_CODES`], and nothing else is.
#[test]
fn the_verb_lists_cover_every_verb_the_binary_has() {
    let leaves = leaf_verbs();
    let listed: BTreeSet<Vec<String>> = VERBS.iter().chain(OWN_CODES).map(|a| verb_of(a, &leaves)).collect();
    let all: BTreeSet<Vec<String>> = leaves.iter().cloned().collect();
    assert_eq!(listed, all, "missing: {:?}", all.difference(&listed).collect::<Vec<_>>());
}

/// R805: a configuration that does not load — missing, or untrusted — is exit 78 in every admin
/// verb, with one line naming the path (and, untrusted, its mode); `diag` says so as its `config`
/// failure (2); FreeRADIUS's verbs answer fail/error (2).
#[test]
fn a_missing_configuration_is_a_configuration_error_in_every_verb() {
    let leaves = leaf_verbs();
    let tmp = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    let untrusted = good_config(tmp.path(), None);
    chmod(&untrusted, 0o666);
    for (cfg, needle) in [(&missing, "cannot read".to_string()), (&untrusted, "has mode 0666".to_string())] {
        let cli = cli_for(cfg);
        for v in VERBS {
            let out = run_isolated(&cli, log.path(), v).expect_code(78);
            let all = format!("{}{}", out.stdout, out.stderr);
            let line = all.lines().find(|l| l.contains(&cfg.display().to_string()) && l.contains(&needle));
            assert!(
                line.is_some(),
                "{v:?} ({:?}): no line naming {} and {needle:?}:\n{all}",
                verb_of(v, &leaves),
                cfg.display()
            );
        }
        let out = run_isolated(&cli, log.path(), &["diag"]).expect_code(2);
        assert!(out.stdout.lines().any(|l| l.starts_with("FAIL") && l.contains(&cfg.display().to_string())), "{out:?}");
        for v in &OWN_CODES[1..3] {
            run_isolated(&cli, log.path(), v).expect_code(2);
        }
        run_isolated(&cli, log.path(), &["completions", "bash"]).expect_code(0);
    }
    // The refused kills were audited (to the default log, here the private /var/log).
    let audit = fs::read_to_string(log.path().join("pppgate/audit.log")).unwrap();
    assert_eq!(audit.lines().filter(|l| l.contains("session-kill") && l.contains("failed")).count(), 2, "{audit}");
}

/// The id argument `args` gives `value` to: the option before it, or `positional`.
fn id_arg_of(args: &[&str], value: &str) -> String {
    let i = args.iter().position(|a| *a == value).unwrap_or_else(|| panic!("{args:?} does not give {value}"));
    match args[i - 1] {
        o if o.starts_with("--") => o.to_string(),
        _ => "positional".to_string(),
    }
}

/// R806: every id argument of every verb (found from the help: values named ID, TENANT, ROUTER)
/// takes ids up to i64::MAX and refuses i64::MAX + 1 with exit 65, naming the value.
#[test]
fn ids_up_to_i64_max_are_accepted_by_every_verb_and_larger_ones_by_none() {
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let interface = format!("wgi{}", std::process::id() % 100000);
    env.add_wireguard(
        &env.config_path,
        &WgSection { interface: &interface, endpoint: "vpn.example.com:51820", ..Default::default() },
    );
    let cli = env.cli(BIN);
    private_netns();
    cli.ok(&["wg", "init"]);
    let max = i64::MAX.to_string();
    pg.psql(&format!("INSERT INTO customers (id, name) VALUES ({max}, 'max')"));
    pg.psql(&format!(
        "INSERT INTO vpn_connections (id, subaccount_login, status, customer_id) VALUES ({max}, 'max', 'CLAIMED', {max})"
    ));
    let m = max.as_str();
    let accepted: Vec<Vec<&str>> = vec![
        vec!["apply", "--connection-id", m],
        vec!["apply", "--customer-id", m],
        vec!["routes", "add", "--connection-id", m, "--dst", "10.9.0.0/24"],
        vec!["routes", "list", "--connection-id", m],
        vec!["routes", "apply", "--connection-id", m],
        vec!["routes", "del", "--connection-id", m, "--dst", "10.9.0.0/24"],
        vec!["connection", "show", m],
        vec!["connection", "set", m, "--down-kbit", "1000"],
        vec!["connection", "add", "--login", "maxed", "--customer-id", m],
        vec![
            "pbr",
            "add",
            "p1",
            "--connection-id",
            m,
            "--table",
            "100",
            "--via",
            "10.0.0.1",
            "--dev",
            "lo",
            "--priority",
            "100",
        ],
        vec!["session", "show", m],
        vec!["session", "kill", m],
        vec!["wg", "tenant", "add", m],
        vec!["wg", "tenant", "show", m],
        vec!["wg", "router", "add", "--tenant", m, "--router", m],
        vec!["wg", "router", "show", m],
        vec!["wg", "router", "list", "--tenant", m],
        vec!["wg", "router", "config", m, "--format", "wg-quick"],
        vec!["wg", "subnet", "info", "--tenant", m],
        vec!["wg", "status", "--tenant", m],
        vec!["wg", "router", "del", m],
        vec!["wg", "tenant", "del", m],
    ];
    for a in &accepted {
        cli.run(a).expect_code(0);
    }
    let too_big = "9223372036854775808";
    let refused: Vec<Vec<&str>> = accepted
        .iter()
        .flat_map(|a| {
            // Each id argument of the accepted call on its own, the others left at i64::MAX.
            let ids: Vec<usize> = a.iter().enumerate().filter(|(_, v)| **v == m).map(|(i, _)| i).collect();
            ids.into_iter().map(move |i| {
                let mut r = a.clone();
                r[i] = too_big;
                r
            })
        })
        .collect();
    let before = pg.psql("SELECT count(*) FROM vpn_connections") + &pg.psql("SELECT count(*) FROM wg_tenants");
    for a in &refused {
        let out = cli.run(a).expect_code(65);
        assert!(out.stderr.contains(too_big), "{a:?}: the refusal names the value: {}", out.stderr);
    }
    let after = pg.psql("SELECT count(*) FROM vpn_connections") + &pg.psql("SELECT count(*) FROM wg_tenants");
    assert_eq!(before, after, "a refused id writes nothing");

    // Every id argument of every verb the binary has was walked.
    let leaves = leaf_verbs();
    let walked: BTreeSet<(Vec<String>, String)> =
        refused.iter().map(|a| (verb_of(a, &leaves), id_arg_of(a, too_big))).collect();
    let all: BTreeSet<(Vec<String>, String)> =
        leaves.iter().flat_map(|v| id_args(v).into_iter().map(move |a| (v.clone(), a))).collect();
    assert!(all.len() >= 20, "too few id arguments found in the help: {all:?}");
    assert_eq!(walked, all, "not walked: {:?}", all.difference(&walked).collect::<Vec<_>>());
}

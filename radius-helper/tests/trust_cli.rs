//! The trust boundary of the `pppgate` binary (issue 10): which configuration files it accepts
//! (the trust rule of `policy_core::trust`), what a missing configuration exits with, and that
//! every verb accepts the same ids (up to i64::MAX) and refuses the same ones.
//!
//! Needs root (files owned by other users, a private PostgreSQL). Without it the tests fail.

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

/// Every verb, with arguments that parse, that reads the configuration.
const VERBS: &[&[&str]] = &[
    &["config", "check"],
    &["db", "migrate"],
    &["db", "status"],
    &["apply", "--connection-id", "1"],
    &["apply", "--customer-id", "1"],
    &["apply", "--reconcile-all"],
    &["reconcile"],
    &["reconcile", "--boot"],
    &["routes", "list"],
    &["routes", "add", "--connection-id", "1", "--dst", "10.9.0.0/24"],
    &["routes", "del", "--connection-id", "1", "--dst", "10.9.0.0/24"],
    &["routes", "apply"],
    &["pbr", "list"],
    &["pbr", "del", "x"],
    &["pbr", "check", "10.0.0.1"],
    &["connection", "show", "1"],
    &["connection", "set", "1", "--block"],
    &["sysctl", "check"],
    &["janitor"],
    &["session", "list"],
    &["session", "show", "1"],
    // `session kill` too, but it audits to the default log when the configuration is unusable:
    // tests/sudo (private /var/log) covers it.
    &["collect"],
];

#[test]
fn a_missing_configuration_is_a_configuration_error_in_every_verb() {
    let tmp = tempfile::tempdir().unwrap();
    let cli = cli_for(&tmp.path().join("missing.toml"));
    for v in VERBS {
        let out = cli.run(v).expect_code(78);
        assert!(out.stderr.contains("missing.toml") || out.stdout.contains("missing.toml"), "{v:?}: {out:?}");
    }
    // The FreeRADIUS-facing verbs answer in FreeRADIUS's codes: 2 (fail / error).
    cli.run(&["radius", "checkrad", "other", "192.0.2.1", "1", "u", "s"]).expect_code(2);
    cli.run(&["radius", "exec", "simultaneous-use"]).expect_code(2);
}

#[test]
fn ids_up_to_i64_max_are_accepted_by_every_verb_and_larger_ones_by_none() {
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cli = env.cli(BIN);
    private_netns();
    let max = i64::MAX.to_string();
    pg.psql(&format!("INSERT INTO customers (id, name) VALUES ({max}, 'max')"));
    pg.psql(&format!(
        "INSERT INTO vpn_connections (id, subaccount_login, status, customer_id) VALUES ({max}, 'max', 'CLAIMED', {max})"
    ));
    let accepted: Vec<Vec<&str>> = vec![
        vec!["apply", "--connection-id", &max],
        vec!["apply", "--customer-id", &max],
        vec!["routes", "add", "--connection-id", &max, "--dst", "10.9.0.0/24"],
        vec!["routes", "list", "--connection-id", &max],
        vec!["routes", "apply", "--connection-id", &max],
        vec!["routes", "del", "--connection-id", &max, "--dst", "10.9.0.0/24"],
        vec!["connection", "show", &max],
        vec!["connection", "set", &max, "--down-kbit", "1000"],
        vec![
            "pbr",
            "add",
            "p1",
            "--connection-id",
            &max,
            "--table",
            "100",
            "--via",
            "10.0.0.1",
            "--dev",
            "lo",
            "--priority",
            "100",
        ],
        vec!["session", "show", &max],
        vec!["session", "kill", &max],
    ];
    for a in &accepted {
        cli.run(a).expect_code(0);
    }
    let too_big = "9223372036854775808";
    let refused: Vec<Vec<&str>> = vec![
        vec!["apply", "--connection-id", too_big],
        vec!["apply", "--customer-id", too_big],
        vec!["routes", "add", "--connection-id", too_big, "--dst", "10.9.0.0/24"],
        vec!["routes", "list", "--connection-id", too_big],
        vec!["routes", "apply", "--connection-id", too_big],
        vec!["routes", "del", "--connection-id", too_big, "--dst", "10.9.0.0/24"],
        vec!["connection", "show", too_big],
        vec!["connection", "set", too_big, "--down-kbit", "1000"],
        vec!["connection", "add", "--login", "x", "--customer-id", too_big],
        vec![
            "pbr",
            "add",
            "p2",
            "--connection-id",
            too_big,
            "--table",
            "100",
            "--via",
            "10.0.0.1",
            "--dev",
            "lo",
            "--priority",
            "100",
        ],
        vec!["session", "show", too_big],
        vec!["session", "kill", too_big],
    ];
    for a in &refused {
        let out = cli.run(a).expect_code(65);
        assert!(out.stderr.contains(too_big), "{a:?}: the refusal names the value: {}", out.stderr);
    }
}

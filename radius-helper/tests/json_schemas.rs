//! Every `--json` output has a versioned JSON Schema (docs/schemas/<verb>.schema.json, R712):
//! the verb list is the binary's own, every verb that prints JSON has its schema file, and one
//! environment runs every such verb once so each schema is checked against a real output. Beyond
//! this test, every test that reads a `--json` output validates it too (`CliOut::json` in the
//! testkit), so the schemas hold for every state the suite produces.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pppgate_testkit::schema::{schema_dir, schema_name, schema_path, verb_of, VERBS};
use pppgate_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

/// Verbs whose output is not JSON, and why.
const NO_JSON: &[(&str, &str)] = &[
    ("completions", "a shell completion script"),
    ("metrics", "the Prometheus text exposition format (promtool checks it, tests/metrics.rs)"),
    ("guard", "a service (pppgate-guard.service): what it finds and restores goes to the log"),
    ("radius checkrad", "FreeRADIUS's checkrad contract: the exit code"),
    ("radius exec simultaneous-use", "rlm_exec's contract: the exit code and attribute lines"),
];

/// Verbs that print nothing on success, `--json` or not: none any more (`connection set`,
/// `routes apply`, `pbr add` and `pbr del` print the apply report since issue 12). A verb added
/// here must say why its exit code is its whole result.
const SILENT: &[(&str, &str)] = &[];

fn json_verbs() -> Vec<&'static str> {
    VERBS
        .iter()
        .copied()
        .filter(|v| !NO_JSON.iter().any(|(n, _)| n == v) && !SILENT.iter().any(|(n, _)| n == v))
        .collect()
}

/// Leaf subcommands as `pppgate … --help` lists them.
fn help_walk(path: &mut Vec<String>, out: &mut Vec<String>) {
    let o = Command::new(BIN).args(path.iter()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let subs: Vec<String> = match text.split("\nCommands:\n").nth(1) {
        None => Vec::new(),
        Some(rest) => rest
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect(),
    };
    if subs.is_empty() {
        out.push(path.join(" "));
        return;
    }
    for s in subs {
        path.push(s);
        help_walk(path, out);
        path.pop();
    }
}

#[test]
fn the_verb_list_is_the_binarys_own() {
    let mut walked = Vec::new();
    help_walk(&mut Vec::new(), &mut walked);
    let walked: BTreeSet<String> = walked.into_iter().collect();
    let listed: BTreeSet<String> = VERBS.iter().map(|v| v.to_string()).collect();
    assert_eq!(walked, listed, "tests/testkit/src/schema.rs VERBS differs from `pppgate help`");
}

#[test]
fn every_json_verb_has_a_versioned_schema_and_every_schema_a_verb() {
    let mut names: BTreeSet<String> = json_verbs().iter().map(|v| schema_name(v)).collect();
    for v in json_verbs() {
        let p = schema_path(&schema_name(v));
        let text =
            fs::read_to_string(&p).unwrap_or_else(|e| panic!("`{v}` prints JSON but {} is missing: {e}", p.display()));
        let s: serde_json::Value = serde_json::from_str(&text).unwrap();
        let id = s["$id"].as_str().unwrap_or_default();
        let want = format!("https://example.invalid/pppgate/schemas/{}.schema.json", schema_name(v));
        assert_eq!(id, want, "{}: $id", p.display());
        // Versioned: by the output's own schema_version field, or the schema's annotation.
        assert!(
            s["x-pppgate-schema-version"].as_u64().is_some() || s["properties"]["schema_version"].is_object(),
            "{}: no version (x-pppgate-schema-version or a schema_version property)",
            p.display()
        );
    }
    for e in fs::read_dir(schema_dir()).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(n) = f.strip_suffix(".schema.json") {
            assert!(names.remove(n), "docs/schemas/{f} names no verb that prints JSON");
        }
    }
}

fn wg_section(env: &DbEnv, ifname: &str) -> PathBuf {
    let wg =
        WgSection { interface: ifname, endpoint: "198.18.0.1:51820", backend: Some("userspace"), ..Default::default() };
    env.env.add_wireguard(&env.config_path(NAS_IDENTITY, NAS_IP), &wg)
}

/// Runs `pppgate --json ARGS`, expects exit `code` (-1: 0, 1 or 2), validates the JSON against
/// the verb's schema and records the verb.
fn run_checked(cli: &Cli, seen: &mut BTreeSet<&'static str>, args: &[&str], code: i32) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = cli.run(&a);
    let out = if code < 0 {
        assert!(matches!(out.code, Some(0..=2)), "{a:?}: exit {:?}\n{}", out.code, out.stderr);
        out
    } else {
        out.expect_code(code)
    };
    let verb = verb_of(&out.args).expect("a verb");
    if out.stdout.trim().is_empty() {
        assert!(SILENT.iter().any(|(v, _)| *v == verb), "`{verb}` printed nothing with --json (not in SILENT)");
        eprintln!("{verb}: prints nothing on success (exit code only)");
    } else {
        out.json(); // validates against the verb's schema
    }
    seen.insert(verb);
}

/// wireguard-go's UAPI socket file outlives the process the namespace teardown kills.
struct Socket(PathBuf);

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn every_json_verb_validates_against_its_schema() {
    private_netns();
    let env = DbEnv::new();
    let ifname = format!("wgj{}", std::process::id() % 100000);
    let _sock = Socket(Path::new("/var/run/wireguard").join(format!("{ifname}.sock")));
    let cfg = wg_section(&env, &ifname);
    let cli = Cli { bin: BIN.into(), config: cfg, env: Vec::new(), netns: None };
    let mut seen: BTreeSet<&'static str> = BTreeSet::new();
    run_checked(&cli, &mut seen, &["config", "check"], 0);
    run_checked(&cli, &mut seen, &["db", "migrate"], 0);
    run_checked(&cli, &mut seen, &["db", "status"], 0);
    let added =
        cli.ok(&["--json", "connection", "add", "--login", "alice", "--status", "CLAIMED", "--down-kbit", "4000"]);
    let alice = added.json()["id"].as_i64().expect("connection add --json prints the id").to_string();
    seen.insert("connection add");
    let mut check = |args: &[&str], code: i32| run_checked(&cli, &mut seen, args, code);
    check(&["connection", "set", &alice, "--up-kbit", "2000"], 0);
    check(&["connection", "show", &alice], 0);
    let _session = SessionBuilder::tun("ppp0", alice.parse().unwrap(), "100.64.0.2").build(&env.sessions_dir());
    check(&["sysctl", "ensure"], 0);
    check(&["sysctl", "check"], 0);
    check(&["routes", "add", "--connection-id", &alice, "--dst", "192.168.77.0/24"], 0);
    check(&["routes", "list"], 0);
    check(&["routes", "apply", "--connection-id", &alice], 0);
    check(
        &[
            "pbr",
            "add",
            "out",
            "--connection-id",
            &alice,
            "--table",
            "100",
            "--via",
            "100.64.0.1",
            "--dev",
            "ppp0",
            "--priority",
            "1000",
        ],
        0,
    );
    check(&["pbr", "list"], 0);
    check(&["pbr", "check", "100.64.0.2"], 0);
    check(&["apply", "--connection-id", &alice], 0);
    check(&["reconcile"], 0);
    // The same verbs where optional fields are empty: a connection without rates (null
    // down_kbit and up_kbit in every report).
    let added = cli.ok(&["--json", "connection", "add", "--login", "bob", "--status", "CLAIMED"]);
    let bob = added.json()["id"].as_i64().expect("connection add --json prints the id").to_string();
    let mut check = |args: &[&str], code: i32| run_checked(&cli, &mut seen, args, code);
    check(&["connection", "show", &bob], 0);
    let _bob_session = SessionBuilder::tun("ppp1", bob.parse().unwrap(), "100.64.0.3").build(&env.sessions_dir());
    check(&["apply", "--connection-id", &bob], 0);
    check(&["routes", "apply", "--connection-id", &bob], 0);
    check(
        &[
            "pbr",
            "add",
            "bob",
            "--connection-id",
            &bob,
            "--table",
            "101",
            "--via",
            "100.64.0.1",
            "--dev",
            "ppp1",
            "--priority",
            "1001",
        ],
        0,
    );
    check(&["pbr", "del", "bob"], 0);
    check(&["session", "list"], 0);
    check(&["session", "show", &alice], 0);
    check(&["collect"], 0);
    check(&["janitor"], 0);
    // diag's exit code says what it found (0, 1 or 2); its report is JSON in every case.
    check(&["diag"], -1);
    check(&["pbr", "del", "out"], 0);
    check(&["routes", "del", "--connection-id", &alice, "--dst", "192.168.77.0/24"], 0);
    check(&["final-flush", "--ppp-if", "ppp0", "--reserve"], 0);
    check(&["final-flush", "--ppp-if", "ppp0", "--rx-bytes", "1000", "--tx-bytes", "2000"], 0);
    check(&["session", "kill", &alice, "--timeout", "2"], 0);

    check(&["wg", "init"], 0);
    check(&["wg", "tenant", "add", "7"], 0);
    check(&["wg", "tenant", "show", "7"], 0);
    check(&["wg", "tenant", "list"], 0);
    check(&["wg", "router", "add", "--tenant", "7", "--router", "1", "--name", "site-a"], 0);
    check(&["wg", "router", "show", "1"], 0);
    // A router without a name (null name).
    check(&["wg", "router", "add", "--tenant", "7", "--router", "2"], 0);
    check(&["wg", "router", "show", "2"], 0);
    check(&["wg", "router", "del", "2"], 0);
    check(&["wg", "router", "list"], 0);
    check(&["wg", "router", "config", "1", "--format", "wg-quick"], 0);
    check(&["wg", "subnet", "info", "--tenant", "7"], 0);
    check(&["wg", "reconcile"], 0);
    check(&["wg", "status"], 0);
    check(&["wg", "rotate-key"], 0);
    check(&["wg", "router", "del", "1"], 0);
    check(&["wg", "tenant", "del", "7"], 0);

    let missing: Vec<&str> =
        json_verbs().into_iter().chain(SILENT.iter().map(|(v, _)| *v)).filter(|v| !seen.contains(v)).collect();
    assert!(missing.is_empty(), "verbs this test does not run: {missing:?}");
}

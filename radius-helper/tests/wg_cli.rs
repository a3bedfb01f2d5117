//! `pppgate wg …` against a real PostgreSQL: provisioning, idempotence, configuration downloads
//! checked by tools we did not write (routeros-lsp, wg(8)), bad input refused with nothing
//! written, a database dump that holds no private key, master-key rotation, and 50 concurrent
//! `wg router add` from two NAS identities.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pppgate_testkit::{Cli, DbEnv, WgSection};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A NAS configuration with a `[wireguard]` section; every path in the test's temp dir.
fn wg_config(env: &DbEnv, nas: &str, ip: &str, extra: &str) -> PathBuf {
    let interface = format!("wgt{}", std::process::id() % 100000);
    let lock = format!("wg-{nas}.lock");
    let wg = WgSection {
        interface: &interface,
        endpoint: "vpn.example.com:51820",
        lock: Some(&lock),
        extra,
        ..Default::default()
    };
    env.env.add_wireguard(&env.config_path(nas, ip), &wg)
}

fn cli(config: &Path) -> Cli {
    Cli { bin: BIN.into(), config: config.into(), env: Vec::new(), netns: None }
}

fn count(env: &DbEnv, table: &str) -> i64 {
    env.db.psql(&format!("SELECT count(*) FROM {table}")).parse().unwrap()
}

/// routeros-lsp from PyPI, installed into target/ by scripts/install-routeros-lsp.sh (which the
/// test runs itself when the tool is missing; it must not be skipped).
fn routeros_lsp() -> PathBuf {
    let bin = repo().join("target/routeros-lsp/bin/routeros-lsp");
    if !bin.exists() {
        let st = Command::new("bash").arg(repo().join("scripts/install-routeros-lsp.sh")).status().unwrap();
        assert!(st.success(), "cannot install routeros-lsp (scripts/install-routeros-lsp.sh)");
    }
    assert!(bin.exists(), "routeros-lsp missing at {}", bin.display());
    bin
}

fn check_routeros(script: &str, name: &str, dir: &Path) {
    let f = dir.join(format!("{name}.rsc"));
    fs::write(&f, script).unwrap();
    let out = Command::new(routeros_lsp()).args(["check", "--strict"]).arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "routeros-lsp check --strict {name}: {}{}\n{script}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one_line(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line: {stderr:?}");
}

#[test]
fn provisioning_configs_and_bad_input() {
    let env = DbEnv::new();
    let cfg = wg_config(&env, "lns-a", "192.0.2.1", "dns = [\"10.100.0.1\"]\n");
    let c = cli(&cfg);
    let key_file = env.dir().join("etc/wg-master.key");

    // Before init: no server interface is a configuration error.
    let out = c.run(&["wg", "router", "add", "--tenant", "7", "--router", "1"]).expect_code(78);
    assert!(out.stderr.contains("wg init"), "{}", out.stderr);

    let init = c.run(&["--json", "wg", "init"]).ok();
    assert_eq!(init["master_key_created"], true);
    assert_eq!(init["server_created"], true);
    assert_eq!(fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let again = c.run(&["--json", "wg", "init"]).ok();
    assert_eq!(again["master_key_created"], false);
    assert_eq!(again["server"]["public_key"], init["server"]["public_key"]);
    assert!(init["server"].get("private_key").is_none());

    let t = c.run(&["--json", "wg", "tenant", "add", "7", "--name", "Acme"]).ok();
    assert_eq!(t["tenant"]["subnet"], "10.100.0.0/16");
    let r =
        c.run(&["--json", "wg", "router", "add", "--tenant", "7", "--router", "1", "--name", "Branch (north)"]).ok();
    assert_eq!(r["created"], true);
    assert_eq!(r["router"]["address"], "10.100.1.1");
    let pubkey = r["router"]["public_key"].as_str().unwrap().to_string();
    // JSON never carries private material.
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("sealed") && !text.contains("private_key\""), "{text}");
    let r2 = c.run(&["--json", "wg", "router", "add", "--tenant", "7", "--router", "1"]).ok();
    assert_eq!(r2["created"], false);
    assert_eq!(r2["router"]["public_key"], pubkey.as_str());
    c.run(&["wg", "router", "add", "--tenant", "8", "--router", "1"]).expect_code(65);
    let r3 = c
        .run(&[
            "--json",
            "wg",
            "router",
            "add",
            "--tenant",
            "7",
            "--router",
            "2",
            "--route",
            "192.168.200.0/24",
            "--allow",
            "192.168.200.0/24",
            "--keepalive",
            "15",
            "--interface-name",
            "wg-mgmt",
        ])
        .ok();
    assert_eq!(r3["router"]["address"], "10.100.1.2");
    assert_eq!(r3["router"]["routed_networks"], serde_json::json!(["192.168.200.0/24"]));
    let t8 = c.run(&["--json", "wg", "router", "add", "--tenant", "8", "--router", "3"]).ok();
    assert_eq!(t8["router"]["address"], "10.101.1.1");

    let list = c.run(&["--json", "wg", "router", "list", "--tenant", "7"]).ok();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let info = c.run(&["--json", "wg", "subnet", "info", "--tenant", "7"]).ok();
    assert_eq!((info["allocated"].as_i64(), info["available"].as_i64()), (Some(2), Some(64768)));

    // Configurations: RouterOS checked by routeros-lsp, wg-quick parsed by wg(8) is in wg_host.rs.
    for (router, name) in [("1", "plain"), ("2", "routed"), ("3", "tenant8")] {
        let s = c.run(&["wg", "router", "config", router, "--format", "routeros"]).expect_code(0).stdout;
        assert!(s.contains("RouterOS 7.1 or later"));
        check_routeros(&s, name, env.dir());
        let q = c.run(&["wg", "router", "config", router, "--format", "wg-quick"]).expect_code(0).stdout;
        assert!(q.contains("[Interface]") && q.contains("PresharedKey = "));
    }
    let s2 = c.run(&["wg", "router", "config", "2", "--format", "routeros"]).expect_code(0).stdout;
    assert!(s2.contains("allowed-address=10.100.0.0/16,192.168.200.0/24"), "{s2}");
    assert!(s2.contains("persistent-keepalive=15s") && s2.contains(":local ifn \"wg-mgmt\""));
    // The private key in the download belongs to the public key in SQL.
    let q = c.run(&["wg", "router", "config", "1", "--format", "wg-quick"]).expect_code(0).stdout;
    let private = q.lines().find_map(|l| l.strip_prefix("PrivateKey = ")).unwrap();
    assert_eq!(wg_pubkey(private), pubkey);
    let j = c.run(&["--json", "wg", "router", "config", "1", "--format", "wg-quick"]).ok();
    assert_eq!(j["config"].as_str().unwrap(), q);

    // Bad input: 65 (or 78 for configuration), one line, nothing written.
    let before = (count(&env, "wg_tenants"), count(&env, "wg_routers"));
    for (args, code) in [
        (vec!["wg", "tenant", "add", "0"], 65),
        (vec!["wg", "tenant", "add", "abc"], 65),
        (vec!["wg", "tenant", "add", "-1"], 65),
        (vec!["wg", "router", "add", "--tenant", "0", "--router", "5"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "x5"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--keepalive", "99999"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--route", "10.0.0.1/8"], 65),
        // A routed network inside the tenant pool would take another tenant's addresses.
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--route", "10.101.7.0/24"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--route", "10.0.0.0/8"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--name", "a\"b"], 65),
        (vec!["wg", "router", "add", "--tenant", "7", "--router", "5", "--interface-name", "wg 0"], 65),
        (vec!["wg", "router", "config", "99", "--format", "routeros"], 65),
    ] {
        let out = c.run(&args).expect_code(code);
        one_line(&out.stderr);
    }
    for (extra, what) in [("endpoint = \"a b:51820\"\n", "endpoint"), ("listen_port = 70000\n", "listen_port")] {
        let path = wg_config(&env, "lns-bad", "192.0.2.9", extra);
        // The later key wins in no TOML: a duplicate key is itself an error, so rewrite the line.
        let text = fs::read_to_string(&path).unwrap().replace("endpoint = \"vpn.example.com:51820\"\n", "");
        let text = if what == "listen_port" { format!("{text}endpoint = \"vpn.example.com:1\"\n") } else { text };
        fs::write(&path, text).unwrap();
        let out = cli(&path).run(&["wg", "router", "add", "--tenant", "7", "--router", "5"]).expect_code(78);
        assert!(out.stderr.contains(what), "{}", out.stderr);
        one_line(&out.stderr);
    }
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = c.run(&["wg", "router", "add", "--tenant", "7", "--router", "5"]).expect_code(78);
    assert!(out.stderr.contains("0644"), "{}", out.stderr);
    one_line(&out.stderr);
    c.run(&["wg", "router", "config", "1", "--format", "routeros"]).expect_code(78);
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!((count(&env, "wg_tenants"), count(&env, "wg_routers")), before);

    // Delete: the address is quarantined, the tenant can go once it has no routers.
    c.run(&["wg", "tenant", "del", "8"]).expect_code(65);
    c.ok(&["wg", "router", "del", "3"]);
    c.ok(&["wg", "tenant", "del", "8"]);
    assert_eq!(env.db.psql("SELECT host(address) FROM wg_address_quarantine"), "10.101.1.1");
}

fn wg_pubkey(private: &str) -> String {
    use std::io::Write;
    let mut ch = Command::new("wg").arg("pubkey").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    ch.stdin.take().unwrap().write_all(format!("{private}\n").as_bytes()).unwrap();
    String::from_utf8(ch.wait_with_output().unwrap().stdout).unwrap().trim().to_string()
}

fn hex(b64: &str) -> String {
    use std::fmt::Write;
    // A tiny decoder: the tests must not trust the code under test for this.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for ch in b64.trim_end_matches('=').chars() {
        bits = (bits << 6) | alphabet.find(ch).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[test]
fn a_database_dump_holds_no_private_key_and_rotation_keeps_keys() {
    let env = DbEnv::new();
    let cfg = wg_config(&env, "lns-a", "192.0.2.1", "");
    let c = cli(&cfg);
    c.ok(&["wg", "init"]);
    let mut secrets = Vec::new();
    for r in 1..=3 {
        c.ok(&["wg", "router", "add", "--tenant", "5", "--router", &r.to_string()]);
        let q = c.ok(&["wg", "router", "config", &r.to_string(), "--format", "wg-quick"]).stdout;
        for k in ["PrivateKey = ", "PresharedKey = "] {
            secrets.push(q.lines().find_map(|l| l.strip_prefix(k)).unwrap().to_string());
        }
    }
    let before: Vec<String> =
        (1..=3).map(|r| c.ok(&["wg", "router", "config", &r.to_string(), "--format", "routeros"]).stdout).collect();
    let dump = Command::new(format!("{}/pg_dump", pppgate_testkit::pg::PG_BIN))
        .args(["-h", env.db.socket_dir().to_str().unwrap(), "-U", "postgres", "-d", "postgres"])
        .output()
        .unwrap();
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(text.contains("wg_routers"), "the dump has the table");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a key in base64 is in the dump");
        assert!(!text.contains(&hex(s)), "a key in hex is in the dump");
    }

    let ids_before = env.db.psql("SELECT DISTINCT key_id FROM wg_routers");
    let rot = c.run(&["--json", "wg", "rotate-key"]).ok();
    assert_eq!(rot["rows_resealed"], 4);
    let ids_after = env.db.psql("SELECT DISTINCT key_id FROM wg_routers");
    assert_ne!(ids_before, ids_after);
    assert_eq!(ids_after, rot["key_id"].to_string());
    let keyfile = fs::read_to_string(env.dir().join("etc/wg-master.key")).unwrap();
    assert_eq!(keyfile.lines().filter(|l| l.starts_with("v1 ")).count(), 1, "old key retired");
    let after: Vec<String> =
        (1..=3).map(|r| c.ok(&["wg", "router", "config", &r.to_string(), "--format", "routeros"]).stdout).collect();
    assert_eq!(before, after, "same keys after rotation");
}

#[test]
fn fifty_concurrent_adds_from_two_nas_get_fifty_addresses() {
    let env = DbEnv::new();
    let a = wg_config(&env, "lns-a", "192.0.2.1", "");
    let b = wg_config(&env, "lns-b", "192.0.2.2", "");
    cli(&a).ok(&["wg", "init"]);
    cli(&b).ok(&["wg", "init"]);
    let children: Vec<_> = (1..=50)
        .map(|r| {
            let cfg = if r % 2 == 0 { &a } else { &b };
            cli(cfg)
                .command(&["--json", "wg", "router", "add", "--tenant", "42", "--router", &r.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut addrs = std::collections::BTreeSet::new();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        assert!(out.status.success(), "router add failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["created"], true);
        addrs.insert(v["router"]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(addrs.len(), 50, "{addrs:?}");
    assert_eq!(env.db.psql("SELECT count(DISTINCT address) FROM wg_routers WHERE tenant_id = 42"), "50");
    assert_eq!(env.db.psql("SELECT count(*) FROM wg_tenants"), "1");
    assert_eq!(env.db.psql("SELECT count(DISTINCT server_id) FROM wg_routers"), "2");
    // The lowest 50 addresses, no gaps.
    assert_eq!(env.db.psql("SELECT host(max(address)) FROM wg_routers"), "10.100.1.50");
}

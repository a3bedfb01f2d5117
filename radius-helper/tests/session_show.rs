//! `pppgate session show ID` (R512, issue 12): one connection's whole story, checked against what
//! the kernel (`nft -j`, `tc`, `ip -j`, /sys counters) and SQL (psql) say, read by tools we did not
//! write; the `--json` output validates against docs/schemas/session-show.schema.json. Real
//! PostgreSQL, a private network namespace, fake sessions with live stand-in pppds.
//!
//! Needs root. Without it the test fails (loudly), it is never skipped.

use std::collections::BTreeSet;

use pppgate_testkit::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pppgate");

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// `ip -j -s link show IFNAME`: (ifindex, rx bytes, tx packets) as iproute2 reads them (the test's
/// namespace; /sys shows the host's).
fn ip_link(ifname: &str) -> (u64, u64, u64) {
    let v = json(&["ip", "-j", "-s", "link", "show", "dev", ifname]);
    let l = &v[0];
    let s = &l["stats64"];
    (l["ifindex"].as_u64().unwrap(), s["rx"]["bytes"].as_u64().unwrap(), s["tx"]["packets"].as_u64().unwrap())
}

#[test]
fn session_show_reads_the_kernel_and_sql_back() {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cli = env.cli(BIN);
    // The policy-routing next hop's link.
    run(&["ip", "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p"]);
    run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
    run(&["ip", "link", "set", "wg0", "up"]);
    run(&["ip", "link", "set", "wg0p", "up"]);

    let a = add_connection(&pg, "alice", "CLAIMED", None, Some(8000), Some(2000));
    pg.psql(&format!("UPDATE vpn_connections SET quota_bytes = 5000000, quota_period = 'month' WHERE id = {a}"));
    pg.psql(&format!(
        "INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out) VALUES ({a}, current_date, 600000, 400000)"
    ));
    add_route(&pg, a, "192.168.50.0/24", None);
    pg.psql(&format!(
        "INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority) VALUES ('ktn', {a}, 100, '10.100.0.40', 'wg0', 100)"
    ));
    let s = SessionBuilder::veth("ppp0", a, "100.64.0.2").build(&env.sessions_dir);
    cli.ok(&["reconcile"]);
    // Traffic through the session, so the counters are not all zero.
    udp_burst(s.client(), "100.64.0.2", "100.64.0.1", 9, 5);
    let row = pg.acct_row("alice", NAS_IP, Some("100.64.0.2"), 30, "sess-1");
    // A second mapping of the same connection whose pppd died (SIGKILL: the file stays).
    let dead = StandIn::sleeper();
    ppp_link("ppp1", "100.64.0.1", "100.64.0.3");
    write_mapping(&env.sessions_dir, a, "ppp1", "100.64.0.3", dead.pid(), dead.start_ts());
    drop(dead);

    let id = a.to_string();
    let v = cli.ok(&["--json", "session", "show", &id]).json();
    println!("{v:#}");
    assert_schema("session-show", &v);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["connection_id"], a);
    assert_eq!(v["login"], "alice");
    assert_eq!(v["database_error"], Value::Null);

    // SQL, read back with psql.
    let used: u64 =
        pg.psql(&format!("SELECT sum(bytes_in + bytes_out) FROM vpn_usage WHERE connection_id = {a}")).parse().unwrap();
    assert_eq!(v["usage"]["used_bytes"], used);
    assert_eq!(v["usage"]["quota_bytes"], 5_000_000);
    assert_eq!(v["usage"]["remaining_bytes"], 5_000_000 - used);
    assert_eq!(v["usage"]["quota_reached"], false);
    assert_eq!(v["usage"]["period"], "month");
    assert_eq!(v["facts"]["status"], "CLAIMED");
    assert_eq!(v["policy"]["state"], "FULL");
    assert_eq!(v["policy"]["reason"], "active");
    assert_eq!(v["policy"]["speed"]["down_kbit"], 8000);
    assert_eq!(v["open_radacct"].as_array().unwrap().len(), 1);
    assert_eq!(v["open_radacct"][0]["radacctid"], row);
    assert_eq!(v["open_radacct"][0]["framed_ip"], "100.64.0.2");

    // The live session: mapping, VALID reasons, and the kernel read back by the real tools.
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let live = &sessions[0];
    assert_eq!(live["ppp_if"], "ppp0");
    assert_eq!(live["pppd_pid"], s.pid());
    assert_eq!(live["valid"], true);
    assert_eq!(live["validity"], "valid");
    for c in ["process", "interface", "peer"] {
        assert_eq!(live["valid_reasons"][c]["ok"], true, "{c}");
    }
    assert_eq!(live["pppd_gone"], Value::Null);
    let k = &live["kernel"];
    let (index, _, _) = ip_link("ppp0");
    assert_eq!(k["ifindex"], index);
    assert_eq!(strings(&k["nft_sets"]), nft_sets_of("100.64.0.2"));
    assert_eq!(strings(&k["nft_sets"]), BTreeSet::from(["full_v4".to_string()]));
    let tc = tool_shaping("ppp0");
    assert_eq!(k["shaping"]["down_kbit"], tc.down_kbit.unwrap());
    assert_eq!(k["shaping"]["up_kbit"], tc.up_kbit.unwrap());
    let routes: BTreeSet<String> = k["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r["dst"].as_str().unwrap(), r["dev"].as_str().unwrap(), r["table"]))
        .collect();
    let tool: BTreeSet<String> = tool_routes()
        .iter()
        .filter(|r| r.dev == "ppp0" || r.table == 100)
        .map(|r| format!("{} {} {}", r.dst, r.dev, r.table))
        .collect();
    assert_eq!(routes, tool);
    assert_eq!(routes.len(), 2, "the per-user route and table 100's default: {routes:?}");
    let rules: BTreeSet<String> = k["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r["from"].as_str().unwrap(), r["table"], r["priority"]))
        .collect();
    let tool: BTreeSet<String> =
        tool_rules().iter().map(|r| format!("{} {} {}", r.from, r.table, r.priority)).collect();
    assert_eq!(rules, tool);
    // Counters: not above what iproute2 reads right after (the link may carry a stray packet in
    // between), and the five datagrams are in.
    let (_, rx_after, tx_packets_after) = ip_link("ppp0");
    let rx = k["counters"]["rx_bytes"].as_u64().unwrap();
    assert!(rx >= 5 * 29 && rx <= rx_after, "rx {rx}, ip {rx_after}");
    assert!(k["counters"]["tx_packets"].as_u64().unwrap() <= tx_packets_after);
    assert_eq!(v["pending_changes"], serde_json::json!([]), "in step");

    // The dead one: not VALID, and why; provably gone; nothing of it in the kernel.
    let gone = &sessions[1];
    assert_eq!(gone["ppp_if"], "ppp1");
    assert_eq!(gone["valid"], false);
    assert_eq!(gone["validity"], "process_gone");
    assert_eq!(gone["valid_reasons"]["process"]["ok"], false);
    assert_eq!(gone["valid_reasons"]["interface"]["ok"], true);
    assert_eq!(gone["pppd_gone"], "no_process");
    assert_eq!(gone["kernel"]["nft_sets"], serde_json::json!([]));

    // Drift: the kernel loses the session's download shaping; show names the difference.
    run(&["tc", "qdisc", "del", "dev", "ppp0", "root"]);
    let v = cli.ok(&["--json", "session", "show", &id]).json();
    assert_schema("session-show", &v);
    assert_eq!(v["sessions"][0]["kernel"]["shaping"]["down_kbit"], Value::Null);
    assert!(!v["pending_changes"].as_array().unwrap().is_empty(), "{v:#}");
    let human = cli.ok(&["session", "show", &id]).stdout;
    println!("{human}");
    for needle in [
        "login alice status CLAIMED: policy FULL (active)",
        "session ppp0 100.64.0.2",
        "VALID",
        "process ok",
        "full_v4",
        "NOT IN STEP",
        "session ppp1 100.64.0.3",
        "NOT VALID (pppd process is gone)",
        "pppd provably gone",
        "radacct   row",
    ] {
        assert!(human.contains(needle), "{needle:?} not in:\n{human}");
    }
    cli.ok(&["reconcile"]);
    let v = cli.ok(&["--json", "session", "show", &id]).json();
    assert_eq!(v["pending_changes"], serde_json::json!([]));
    assert_eq!(v["sessions"].as_array().unwrap().len(), 1, "reconcile removed the dead pppd's file");

    // The database down: the mapping and kernel half still shown, and why the rest is missing.
    pg.stop();
    let v = cli.ok(&["--json", "session", "show", &id]).json();
    assert_schema("session-show", &v);
    assert!(v["database_error"].is_string());
    assert_eq!(v["facts"], Value::Null);
    assert_eq!(v["sessions"][0]["kernel"]["nft_sets"], serde_json::json!(["full_v4"]));
    pg.start();

    // A connection without a row: TERMINATE (no_row), nothing else.
    let v = cli.ok(&["--json", "session", "show", "999999"]).json();
    assert_schema("session-show", &v);
    assert_eq!(v["policy"]["state"], "TERMINATE");
    assert_eq!(v["sessions"], serde_json::json!([]));
    drop(s);
}

//! Kernel tests of the nftables backend, each in its own network namespace; assertions read the
//! kernel back with `nft -j`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Instant;

use policy_core::config::GardenEntry;
use policy_core::kernel::nft::{normalize_garden, NftNetlink, LAYOUT_COMMENT};
use policy_core::kernel::{Member, Nft, NftSet, SetChange};
use pppgate_testkit::*;

fn garden() -> Vec<GardenEntry> {
    ["198.51.100.53/32:tcp:8080", "198.51.100.53/32:udp:53", "198.51.100.54/32", "203.0.113.0/24:tcp", "10.99.0.0/16"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The interface index the members of these tests are bound to (it need not exist).
const IDX: u32 = 7;

fn m(a: &str) -> Member {
    Member::new(IDX, ip(a))
}

fn add(set: NftSet, a: &str) -> SetChange {
    SetChange::new(set, m(a), true)
}

fn del(set: NftSet, a: &str) -> SetChange {
    SetChange::new(set, m(a), false)
}

/// A member as `nft` lists it (index not resolvable to a name here).
fn el(a: &str) -> String {
    format!("{IDX} . {a}")
}

fn els(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|a| el(a)).collect()
}

fn table_handle() -> u64 {
    nft_objects().iter().find_map(|o| o.get("table").map(|t| t["handle"].as_u64().unwrap())).unwrap()
}

fn members(set: NftSet) -> BTreeSet<String> {
    nft_set_elems(set.name()).into_iter().collect()
}

fn strs(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn base_is_created_once_and_read_back() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    assert!(!nft.read().unwrap().base_ok, "empty namespace has no table");
    nft.ensure_base(&garden()).unwrap();

    let text = run(&["nft", "list", "table", "inet", "pppgate"]);
    assert!(text.contains(&format!("comment \"{LAYOUT_COMMENT}\"")), "{text}");
    let objs = nft_objects();
    let chains: BTreeSet<String> =
        objs.iter().filter_map(|o| o.get("chain").map(|c| c["name"].as_str().unwrap().to_string())).collect();
    assert_eq!(chains, strs(&["forward", "from_session", "garden", "garden_reply", "to_session"]));
    let fwd = objs.iter().find_map(|o| o.get("chain").filter(|c| c["name"] == "forward")).unwrap();
    assert_eq!(fwd["hook"], "forward");
    assert_eq!(
        nft_set_elems("garden_net_v4").into_iter().collect::<BTreeSet<_>>(),
        strs(&["198.51.100.54", "10.99.0.0/16"])
    );
    assert_eq!(nft_set_elems("garden_proto_v4"), vec!["203.0.113.0/24 . tcp"]);
    assert_eq!(
        nft_set_elems("garden_svc_v4").into_iter().collect::<BTreeSet<_>>(),
        strs(&["198.51.100.53 . tcp . 8080", "198.51.100.53 . udp . 53"])
    );

    // Our read() agrees with the tool.
    let st = nft.read().unwrap();
    assert!(st.base_ok);
    assert_eq!(st.garden, normalize_garden(&garden()));
    assert!(st.members.values().all(|m| m.is_empty()));

    // Idempotent: a second ensure_base with the same garden rebuilds nothing.
    let h = table_handle();
    let rule_handles = run(&["nft", "-a", "list", "table", "inet", "pppgate"]);
    let t = Instant::now();
    nft.ensure_base(&garden()).unwrap();
    println!("ensure_base with the layout in place: {:?}", t.elapsed());
    assert_eq!(table_handle(), h);
    assert_eq!(run(&["nft", "-a", "list", "table", "inet", "pppgate"]), rule_handles);
}

#[test]
fn garden_change_rewrites_only_the_garden() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    nft.ensure_base(&garden()).unwrap();
    nft.commit(&[add(NftSet::Full, "100.64.0.2")]).unwrap();
    let h = table_handle();
    let new: Vec<GardenEntry> =
        ["192.0.2.0/24", "192.0.2.10/32:tcp:443", "198.51.100.1/32:udp"].iter().map(|s| s.parse().unwrap()).collect();
    nft.ensure_base(&new).unwrap();
    assert_eq!(table_handle(), h, "the table was not rebuilt");
    assert_eq!(nft_set_elems("garden_net_v4"), vec!["192.0.2.0/24"]);
    assert_eq!(nft_set_elems("garden_proto_v4"), vec!["198.51.100.1 . udp"]);
    assert!(nft_set_elems("garden_svc_v4").is_empty(), "covered by 192.0.2.0/24");
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    assert_eq!(nft.read().unwrap().garden, normalize_garden(&new));
    // Empty garden.
    nft.ensure_base(&[]).unwrap();
    assert!(nft.read().unwrap().garden.is_empty());
    assert!(nft_set_elems("garden_net_v4").is_empty());
}

#[test]
fn layout_rebuild_keeps_members() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    nft.ensure_base(&garden()).unwrap();
    nft.commit(&[
        add(NftSet::Full, "100.64.0.2"),
        add(NftSet::Blocked, "100.64.0.3"),
        add(NftSet::Pending, "100.64.0.4"),
    ])
    .unwrap();

    // Someone deletes a rule: the layout check notices and rebuilds, members survive.
    let listing = run(&["nft", "-a", "list", "chain", "inet", "pppgate", "from_session"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("unpoliced_from"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap()
        .trim()
        .to_string();
    run(&["nft", "delete", "rule", "inet", "pppgate", "from_session", "handle", &handle]);
    assert!(!nft.read().unwrap().base_ok, "a missing rule is not the current layout");
    let h = table_handle();
    nft.ensure_base(&garden()).unwrap();
    assert_ne!(table_handle(), h, "rebuilt");
    assert!(nft.read().unwrap().base_ok);
    assert_eq!(nft_counter("unpoliced_from"), 0);
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    assert_eq!(members(NftSet::Blocked), els(&["100.64.0.3"]));
    assert_eq!(members(NftSet::Pending), els(&["100.64.0.4"]));

    // An older layout (different comment, fewer sets, bare addresses) is replaced; its members
    // are kept, each bound to the interface that carries it as its peer (layout 1 and older had
    // no interface in the key). An address no interface carries is dropped.
    run(&["nft", "delete", "table", "inet", "pppgate"]);
    let mut idx = std::collections::BTreeMap::new();
    for (dev, peer) in [("ppp9", "100.64.0.9"), ("ppp10", "100.64.0.10"), ("ppp11", "100.64.0.11")] {
        run(&["ip", "tuntap", "add", "dev", dev, "mode", "tun"]);
        run(&["ip", "addr", "add", "100.64.0.1", "peer", &format!("{peer}/32"), "dev", dev]);
        let v = json(&["ip", "-j", "link", "show", "dev", dev]);
        idx.insert(peer, v[0]["ifindex"].as_u64().unwrap() as u32);
    }
    let old = "table inet pppgate {\n comment \"pppgate layout 1\"\n set full_v4 { type ipv4_addr; elements = { 100.64.0.9, 100.64.0.10, 100.64.0.12 } }\n set restricted_v4 { type ipv4_addr; elements = { 100.64.0.11 } }\n}\n";
    let file = std::env::temp_dir().join(format!("pgt-old-{}.nft", std::process::id()));
    std::fs::write(&file, old).unwrap();
    run(&["nft", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!nft.read().unwrap().base_ok);
    nft.ensure_base(&garden()).unwrap();
    let st = nft.read().unwrap();
    assert!(st.base_ok);
    assert_eq!(members(NftSet::Full), strs(&["ppp9 . 100.64.0.9", "ppp10 . 100.64.0.10"]));
    assert_eq!(members(NftSet::Restricted), strs(&["ppp11 . 100.64.0.11"]));
    assert_eq!(
        st.members[&NftSet::Full],
        [Member::new(idx["100.64.0.9"], ip("100.64.0.9")), Member::new(idx["100.64.0.10"], ip("100.64.0.10"))]
            .into_iter()
            .collect()
    );
}

#[test]
fn commit_moves_addresses_and_removal_is_idempotent() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    nft.ensure_base(&[]).unwrap();
    nft.commit(&[add(NftSet::Pending, "100.64.0.2"), add(NftSet::Pending, "100.64.0.3")]).unwrap();
    assert_eq!(members(NftSet::Pending), els(&["100.64.0.2", "100.64.0.3"]));
    // Gate → FULL in one transaction; removing an absent address and adding a present one are fine.
    nft.commit(&[
        del(NftSet::Pending, "100.64.0.2"),
        add(NftSet::Full, "100.64.0.2"),
        del(NftSet::Blocked, "100.64.0.2"),
        add(NftSet::Pending, "100.64.0.3"),
    ])
    .unwrap();
    assert_eq!(members(NftSet::Pending), els(&["100.64.0.3"]));
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    assert!(nft_set_elems("blocked_v4").is_empty());
    // The same removal again is still fine.
    nft.commit(&[del(NftSet::Pending, "100.64.0.2")]).unwrap();
    nft.commit(&[]).unwrap();
    // sets_of agrees with the tool's view.
    assert_eq!(nft.sets_of(m("100.64.0.2")).unwrap(), [NftSet::Full].into_iter().collect());
    assert_eq!(nft.sets_of(m("100.64.0.3")).unwrap(), [NftSet::Pending].into_iter().collect());
    assert!(nft.sets_of(m("100.64.0.99")).unwrap().is_empty());
    assert!(output(&["nft", "get", "element", "inet", "pppgate", "full_v4", "{ 7 . 100.64.0.2 }"]).status.success());
    // Bound to its interface: the same address on another interface is in no set.
    assert!(nft.sets_of(Member::new(IDX + 1, ip("100.64.0.2"))).unwrap().is_empty());
    // An address in two sets (a transition the planner should never leave behind) shows both.
    nft.commit(&[add(NftSet::Blocked, "100.64.0.2")]).unwrap();
    assert_eq!(nft.sets_of(m("100.64.0.2")).unwrap(), [NftSet::Full, NftSet::Blocked].into_iter().collect());
    let st = nft.read().unwrap();
    for set in NftSet::ALL {
        let tool: BTreeSet<String> = members(set);
        let ours: BTreeSet<String> = st.members[&set].iter().map(|m| format!("{} . {}", m.ifindex, m.ip)).collect();
        assert_eq!(ours, tool, "{set:?}");
    }
}

#[test]
fn sets_of_without_a_table_is_an_error() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    assert!(nft.sets_of(m("100.64.0.2")).is_err(), "no table must not read as 'in no set'");
}

#[test]
fn commit_is_all_or_nothing() {
    private_netns();
    // A table lacking blocked_v4 (an old layout): a commit touching it fails as a whole.
    run(&["nft", "add", "table", "inet", "pppgate"]);
    for s in ["connect_pending_v4", "full_v4", "restricted_v4"] {
        run(&["nft", "add", "set", "inet", "pppgate", s, "{ type iface_index . ipv4_addr; }"]);
    }
    run(&["nft", "add", "element", "inet", "pppgate", "connect_pending_v4", "{ 7 . 100.64.0.2 }"]);
    let mut nft = NftNetlink::new().unwrap();
    let err = nft
        .commit(&[
            del(NftSet::Pending, "100.64.0.2"),
            add(NftSet::Full, "100.64.0.2"),
            add(NftSet::Blocked, "100.64.0.5"),
        ])
        .unwrap_err();
    println!("expected failure: {}", policy_core::error::one_line(&err));
    assert_eq!(members(NftSet::Pending), els(&["100.64.0.2"]), "the removal was rolled back");
    assert!(nft_set_elems("full_v4").is_empty(), "the add was rolled back");
    // The socket stays usable after a failed batch.
    nft.commit(&[add(NftSet::Full, "100.64.0.7")]).unwrap();
    assert_eq!(members(NftSet::Full), els(&["100.64.0.7"]));
}

#[test]
fn large_commit_and_timing() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    nft.ensure_base(&garden()).unwrap();
    // 5000 sessions in one transaction (reconcile after a restart).
    let many: Vec<SetChange> = (0..5000u32)
        .map(|i| SetChange::new(NftSet::Full, Member::new(IDX, Ipv4Addr::from(0x6440_0000 + i)), true))
        .collect();
    let t = Instant::now();
    nft.commit(&many).unwrap();
    println!("commit of 5000 adds: {:?}", t.elapsed());
    assert_eq!(nft_set_elems("full_v4").len(), 5000);
    let t = Instant::now();
    let st = nft.read().unwrap();
    println!("read() with 5000 members: {:?}", t.elapsed());
    assert_eq!(st.members[&NftSet::Full].len(), 5000);

    // The connect path: gate, then move to FULL; and back.
    let n = 500;
    let client = m("100.65.0.2");
    let mut commit_ns = Vec::with_capacity(2 * n);
    let mut sets_of_ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        nft.commit(&[SetChange::new(NftSet::Pending, client, true)]).unwrap();
        commit_ns.push(t.elapsed().as_nanos());
        let t = Instant::now();
        let s = nft.sets_of(client).unwrap();
        sets_of_ns.push(t.elapsed().as_nanos());
        assert_eq!(s.len(), 1);
        let t = Instant::now();
        nft.commit(&[SetChange::new(NftSet::Pending, client, false), SetChange::new(NftSet::Full, client, true)])
            .unwrap();
        commit_ns.push(t.elapsed().as_nanos());
        nft.commit(&[SetChange::new(NftSet::Full, client, false)]).unwrap();
    }
    commit_ns.sort();
    sets_of_ns.sort();
    let pct = |v: &Vec<u128>, p: usize| v[v.len() * p / 100] as f64 / 1000.0;
    println!(
        "commit (1-2 changes): median {:.0} µs, p99 {:.0} µs; sets_of: median {:.0} µs, p99 {:.0} µs",
        pct(&commit_ns, 50),
        pct(&commit_ns, 99),
        pct(&sets_of_ns, 50),
        pct(&sets_of_ns, 99)
    );
    let t = Instant::now();
    for _ in 0..20 {
        run(&["nft", "add", "element", "inet", "pppgate", "connect_pending_v4", "{ 7 . 100.65.0.3 }"]);
    }
    println!("for comparison, one `nft add element` process: {:.0} µs", t.elapsed().as_micros() as f64 / 20.0);
}

/// A rebuild puts the members it is given into their sets in the transaction that creates the
/// table (docs/security.md, "Tamper detection and restore"): read from the kernel's own event
/// stream (`nft monitor`), the table's creation and every member's element are in one
/// generation. Before, a restore built the table empty and added the members in a second
/// transaction, and a FULL session's packets met `unpoliced_from` in between.
#[test]
fn a_rebuild_writes_the_given_members_in_the_transaction_that_creates_the_table() {
    private_netns();
    let mut nft = NftNetlink::new().unwrap();
    let with = std::collections::BTreeMap::from([
        (m("100.64.0.2"), NftSet::Full),
        (m("100.64.0.3"), NftSet::Blocked),
        (m("100.64.0.4"), NftSet::Restricted),
    ]);
    // A garden of addresses only: nft 1.0.6's monitor misrenders (reads past) interval elements
    // of concatenated sets, and sometimes dies of it.
    let garden: Vec<GardenEntry> = ["198.51.100.54/32", "10.99.0.0/16"].iter().map(|s| s.parse().unwrap()).collect();
    let mon = NftMonitor::start();
    let before = mon.transactions().len();
    nft.ensure_base_with(&garden, &with).unwrap();
    assert!(nft.read().unwrap().base_ok);
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    assert_eq!(members(NftSet::Blocked), els(&["100.64.0.3"]));
    assert_eq!(members(NftSet::Restricted), els(&["100.64.0.4"]));
    assert!(
        wait_until(std::time::Duration::from_secs(5), || mon.transactions().len() > before),
        "nft monitor saw no transaction"
    );
    let txs = mon.transactions();
    let (events, generation) = &txs[before];
    // (nft 1.0.6's monitor renders interval elements of concatenated sets as garbage: only
    // the table's and the state sets' lines are shown.)
    let shown: Vec<&String> = events
        .iter()
        .filter(|l| l.starts_with("add table") || (l.starts_with("add element") && !l.contains("garden")))
        .collect();
    println!("the rebuild's transaction ({generation}), {} events, among them:", events.len());
    for l in shown {
        println!("  {l}");
    }
    assert!(events.iter().any(|l| l.starts_with("add table inet pppgate")), "the table is created in it");
    for (set, a) in [("full_v4", "100.64.0.2"), ("blocked_v4", "100.64.0.3"), ("restricted_v4", "100.64.0.4")] {
        assert!(
            events.iter().any(|l| l.starts_with(&format!("add element inet pppgate {set} ")) && l.contains(a)),
            "{a} is added to {set} in the transaction that creates the table"
        );
    }
    assert_eq!(txs.len(), before + 1, "one transaction: {:?}", &txs[before..]);

    // A damaged table: the members it holds are kept, a given member is moved to its given set.
    nft.commit(&[add(NftSet::Pending, "100.64.0.9"), add(NftSet::Full, "100.64.0.3")]).unwrap();
    run(&["nft", "flush", "chain", "inet", "pppgate", "to_session"]);
    assert!(!nft.read().unwrap().base_ok);
    nft.ensure_base_with(&garden, &with).unwrap();
    assert!(nft.read().unwrap().base_ok);
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    assert_eq!(members(NftSet::Blocked), els(&["100.64.0.3"]));
    assert_eq!(members(NftSet::Pending), els(&["100.64.0.9"]));

    // An intact table is not rebuilt and its members are not touched: the caller commits the
    // difference.
    let h = table_handle();
    let n = mon.transactions().len();
    nft.ensure_base_with(&garden, &std::collections::BTreeMap::from([(m("100.64.0.5"), NftSet::Full)])).unwrap();
    assert_eq!(table_handle(), h);
    assert_eq!(members(NftSet::Full), els(&["100.64.0.2"]));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(mon.transactions().len(), n, "an intact table costs no transaction");
}

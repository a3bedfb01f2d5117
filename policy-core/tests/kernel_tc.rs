//! Kernel tests of the tc backend, each in its own network namespace; assertions read the kernel
//! back with `tc` and `ip`.

use std::time::Instant;

use policy_core::kernel::tc::TcNetlink;
use policy_core::kernel::{Shaping, Tc};
use pppgate_testkit::*;

/// A veth pair `name` ↔ `name`p, both up, with addresses so pings cross `name`'s egress.
fn veth(name: &str, n: u8) {
    let peer = format!("{name}p");
    run(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]);
    run(&["ip", "link", "set", name, "up"]);
    run(&["ip", "link", "set", &peer, "up"]);
    run(&["ip", "addr", "add", &format!("10.{n}.0.1/24"), "dev", name]);
}

#[test]
fn set_change_and_clear_one_interface() {
    private_netns();
    veth("ppp0", 0);
    let mut tc = TcNetlink::new().unwrap();
    assert_eq!(tc.read_one("ppp0").unwrap(), Shaping::default());

    let s = Shaping { down_kbit: Some(10_000), up_kbit: Some(2_000) };
    let t = Instant::now();
    tc.set("ppp0", &s).unwrap();
    println!("tc set (both directions, fresh, incl. ifb creation): {:?}", t.elapsed());
    assert_eq!(tool_shaping("ppp0"), s);
    assert_eq!(redirect_target("ppp0").as_deref(), Some("pgi-ppp0"));
    assert!(ifb_up("pgi-ppp0"));
    assert_eq!(tc.read_one("ppp0").unwrap(), s);
    // One root TBF `2:` with the bucket sized for the rate (10 ms + 1,600 bytes), and no HTB
    // class on either device (`tc class show` lists TBF's own fifo slot 2:1).
    let root = root_qdisc("ppp0").unwrap();
    assert_eq!((root["kind"].as_str(), root["handle"].as_str()), (Some("tbf"), Some("2:")), "{root}");
    assert_eq!(root["options"]["burst"], 1_250_000 / 100 + 1600, "{root}");
    for dev in ["ppp0", "pgi-ppp0"] {
        let classes = tc_classes(dev);
        assert!(classes.iter().all(|c| c.classid == "2:1"), "{dev}: {classes:?}");
    }

    // Push some packets through the qdisc, then change the rate: it keeps its counters, i.e.
    // it was changed in place, not replaced.
    // A static neighbour: the pings leave through ppp0's qdisc (nobody answers; that is fine).
    run(&["ip", "neigh", "replace", "10.0.0.2", "lladdr", "02:00:00:00:00:02", "dev", "ppp0"]);
    let _ = output(&["ping", "-c", "5", "-i", "0.01", "-W", "0.1", "-q", "10.0.0.2"]);
    let sent = || root_qdisc("ppp0").and_then(|q| q["packets"].as_u64()).unwrap();
    let before = sent();
    assert!(before >= 5, "{before}");
    let s2 = Shaping { down_kbit: Some(25_000), up_kbit: Some(3_000) };
    let t = Instant::now();
    tc.set("ppp0", &s2).unwrap();
    println!("tc set (rate change): {:?}", t.elapsed());
    let after = sent();
    assert!(after >= before, "counters survived: {before} → {after}");
    assert_eq!(tool_shaping("ppp0"), s2);
    assert_eq!(tc.read_one("ppp0").unwrap(), s2);

    // Idempotent.
    let qdiscs = tc_qdiscs("ppp0");
    tc.set("ppp0", &s2).unwrap();
    assert_eq!(tc_qdiscs("ppp0").len(), qdiscs.len());
    assert_eq!(json(&["tc", "-j", "filter", "show", "dev", "ppp0", "ingress"]).as_array().unwrap().len(), 3);

    // Upload unlimited: ingress and ifb go, download stays.
    tc.set("ppp0", &Shaping { down_kbit: Some(25_000), up_kbit: None }).unwrap();
    assert!(!has_ingress("ppp0"));
    assert!(!link_names().contains(&"pgi-ppp0".to_string()));
    assert_eq!(tool_shaping("ppp0"), Shaping { down_kbit: Some(25_000), up_kbit: None });
    // Download unlimited, upload limited.
    tc.set("ppp0", &Shaping { down_kbit: None, up_kbit: Some(1_000) }).unwrap();
    assert!(!matches!(root_qdisc("ppp0"), Some(q) if q["kind"] == "tbf"), "root tbf removed");
    assert_eq!(tool_shaping("ppp0"), Shaping { down_kbit: None, up_kbit: Some(1_000) });
    assert_eq!(tc.read_one("ppp0").unwrap(), Shaping { down_kbit: None, up_kbit: Some(1_000) });

    let t = Instant::now();
    tc.clear("ppp0").unwrap();
    println!("tc clear: {:?}", t.elapsed());
    assert_eq!(tool_shaping("ppp0"), Shaping::default());
    assert!(!has_ingress("ppp0"));
    assert!(!link_names().contains(&"pgi-ppp0".to_string()));
    tc.clear("ppp0").unwrap();
    assert_eq!(tc.read().unwrap(), Default::default());
}

/// A device that only has the upload IFB's name (here a veth) is not pppgate's: upload shaping
/// refuses it, and neither a change nor a clear deletes it (the lab's apply-failure case found
/// the clear deleting it).
#[test]
fn a_foreign_device_with_the_ifb_name_is_left_alone() {
    private_netns();
    veth("ppp0", 0);
    run(&["ip", "link", "add", "pgi-ppp0", "type", "veth", "peer", "name", "pgi-x"]);
    let mut tc = TcNetlink::new().unwrap();
    let e = tc.set("ppp0", &Shaping { down_kbit: Some(1_000), up_kbit: Some(500) }).unwrap_err();
    assert!(format!("{e}").contains("pgi-ppp0"), "{e}");
    tc.set("ppp0", &Shaping { down_kbit: Some(1_000), up_kbit: None }).unwrap();
    // Not read back as pppgate's IFB either, so reconcile never plans to remove it.
    assert!(tc.read().unwrap().ifbs.is_empty(), "a veth named pgi-ppp0 read as pppgate's ifb");
    tc.clear("ppp0").unwrap();
    assert_eq!(tool_shaping("ppp0"), Shaping::default());
    assert!(link_names().contains(&"pgi-ppp0".to_string()), "the foreign pgi-ppp0 was deleted: {:?}", link_names());
}

#[test]
fn several_interfaces_and_ifb_lifecycle() {
    private_netns();
    for i in 0..4u8 {
        veth(&format!("ppp{i}"), i);
    }
    // A foreign interface with its own HTB: never read as pppgate's.
    veth("eth9", 9);
    run(&["tc", "qdisc", "add", "dev", "eth9", "root", "handle", "1:", "htb", "default", "10"]);
    run(&["tc", "class", "add", "dev", "eth9", "parent", "1:", "classid", "1:10", "htb", "rate", "5mbit"]);

    let mut tc = TcNetlink::new().unwrap();
    let want = [
        ("ppp0", Shaping { down_kbit: Some(1_000), up_kbit: Some(512) }),
        ("ppp1", Shaping { down_kbit: Some(50_000), up_kbit: Some(10_000) }),
        ("ppp2", Shaping { down_kbit: Some(100_000), up_kbit: None }),
        ("ppp3", Shaping { down_kbit: None, up_kbit: Some(20_000) }),
    ];
    for (dev, s) in &want {
        tc.set(dev, s).unwrap();
    }
    for (dev, s) in &want {
        assert_eq!(&tool_shaping(dev), s, "{dev}");
    }
    let st = tc.read().unwrap();
    assert_eq!(st.shaping.len(), 4, "{st:?}");
    for (dev, s) in &want {
        assert_eq!(&st.shaping[*dev], s);
    }
    assert_eq!(st.ifbs, ["pgi-ppp0", "pgi-ppp1", "pgi-ppp3"].iter().map(|s| s.to_string()).collect());

    // Clearing one leaves the others alone.
    tc.clear("ppp1").unwrap();
    assert_eq!(tool_shaping("ppp1"), Shaping::default());
    assert_eq!(tool_shaping("ppp0"), want[0].1);
    assert_eq!(tool_shaping("ppp3"), want[3].1);
    assert_eq!(htb_rate("eth9"), Some(5_000_000), "foreign qdisc untouched");

    // A session interface vanishes (pppd exits): its qdiscs go with it, its IFB stays behind
    // until clear() or remove_ifb() deletes it.
    run(&["ip", "link", "del", "ppp0"]);
    let st = tc.read().unwrap();
    assert!(!st.shaping.contains_key("ppp0"));
    assert!(st.ifbs.contains("pgi-ppp0"), "{st:?}");
    tc.clear("ppp0").unwrap();
    assert!(!link_names().contains(&"pgi-ppp0".to_string()));
    run(&["ip", "link", "del", "ppp3"]);
    tc.remove_ifb("pgi-ppp3").unwrap();
    tc.remove_ifb("pgi-ppp3").unwrap();
    assert!(!link_names().iter().any(|n| n.starts_with("pgi-")));
    assert!(tc.remove_ifb("eth9").is_err(), "only pgi-* devices");

    // A session interface whose name leaves no room for `pgi-<name>`: download shaping works,
    // upload shaping is refused, reading never trips over it.
    veth("ppp-long-name0", 5);
    tc.set("ppp-long-name0", &Shaping { down_kbit: Some(3_000), up_kbit: None }).unwrap();
    assert!(tc.set("ppp-long-name0", &Shaping { down_kbit: Some(3_000), up_kbit: Some(1_000) }).is_err());
    assert_eq!(tc.read().unwrap().shaping["ppp-long-name0"], Shaping { down_kbit: Some(3_000), up_kbit: None });
    tc.clear("ppp-long-name0").unwrap();
    run(&["ip", "link", "del", "ppp-long-name0"]);

    // Setting shaping on a missing interface is an error, not a silent no-op.
    assert!(tc.set("ppp7", &Shaping { down_kbit: Some(1000), up_kbit: None }).is_err());
    assert_eq!(tc.read().unwrap().shaping.keys().collect::<Vec<_>>(), vec!["ppp2"]);
}

#[test]
fn repairs_partial_state() {
    private_netns();
    veth("ppp0", 0);
    let mut tc = TcNetlink::new().unwrap();
    let s = Shaping { down_kbit: Some(8_000), up_kbit: Some(4_000) };
    tc.set("ppp0", &s).unwrap();
    // Someone removes the redirect filter and downs the IFB: upload is no longer shaped.
    run(&["tc", "filter", "del", "dev", "ppp0", "ingress"]);
    run(&["ip", "link", "set", "pgi-ppp0", "down"]);
    assert_eq!(tc.read_one("ppp0").unwrap(), Shaping { down_kbit: Some(8_000), up_kbit: None });
    tc.set("ppp0", &s).unwrap();
    assert_eq!(tool_shaping("ppp0"), s);
    // Someone replaces the root qdisc.
    run(&["tc", "qdisc", "replace", "dev", "ppp0", "root", "pfifo"]);
    assert_eq!(tc.read_one("ppp0").unwrap().down_kbit, None);
    tc.set("ppp0", &s).unwrap();
    assert_eq!(tool_shaping("ppp0"), s);
    // An IFB name taken by something else is refused.
    run(&["ip", "link", "add", "pgi-ppp1", "type", "veth", "peer", "name", "pgx1"]);
    veth("ppp1", 1);
    assert!(tc.set("ppp1", &Shaping { down_kbit: None, up_kbit: Some(1000) }).is_err());
}

/// A session shaped by an earlier version (HTB `1:` with class `1:10` and a pfifo leaf on the
/// interface and on its IFB, the same ingress redirect) is read with its rates and reported as
/// legacy; a set at the same rates rewrites both directions as TBF, keeping the IFB and the
/// redirect, and the read after it reports nothing legacy.
#[test]
fn htb_layout_of_earlier_versions_is_read_and_rewritten_as_tbf() {
    private_netns();
    veth("ppp0", 0);
    let htb = |dev: &str, rate: &str| {
        run(&["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"]);
        run(&["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", rate, "ceil", rate]);
        run(&["tc", "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", "16"]);
    };
    htb("ppp0", "2mbit");
    run(&["ip", "link", "add", "pgi-ppp0", "type", "ifb"]);
    run(&["ip", "link", "set", "pgi-ppp0", "up"]);
    htb("pgi-ppp0", "1mbit");
    run(&["tc", "qdisc", "add", "dev", "ppp0", "handle", "ffff:", "ingress"]);
    run(&[
        "tc", "filter", "add", "dev", "ppp0", "parent", "ffff:", "protocol", "all", "prio", "1", "handle", "800::800",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "pgi-ppp0",
    ]);
    let ifb_index = || json(&["ip", "-j", "link", "show", "pgi-ppp0"])[0]["ifindex"].as_u64().unwrap();
    let ifb_before = ifb_index();

    let mut tc = TcNetlink::new().unwrap();
    let s = Shaping { down_kbit: Some(2_000), up_kbit: Some(1_000) };
    assert_eq!(tc.read_one("ppp0").unwrap(), s, "the rates it is shaped at");
    let st = tc.read().unwrap();
    assert_eq!(st.shaping["ppp0"], s);
    assert!(st.legacy.contains("ppp0"), "{st:?}");

    tc.set("ppp0", &s).unwrap();
    assert_eq!(tool_shaping("ppp0"), s, "both directions now TBF at the same rates");
    assert_eq!(htb_rate("ppp0"), None);
    assert_eq!(htb_rate("pgi-ppp0"), None);
    assert_eq!(ifb_index(), ifb_before, "the same IFB");
    assert_eq!(redirect_target("ppp0").as_deref(), Some("pgi-ppp0"));
    let st = tc.read().unwrap();
    assert_eq!(st.shaping["ppp0"], s);
    assert!(st.legacy.is_empty(), "{st:?}");

    // A legacy session whose shaping goes: clear removes the HTB root too.
    veth("ppp1", 1);
    htb("ppp1", "3mbit");
    assert_eq!(tc.read_one("ppp1").unwrap(), Shaping { down_kbit: Some(3_000), up_kbit: None });
    tc.clear("ppp1").unwrap();
    assert!(root_qdisc("ppp1").is_none_or(|q| q["kind"] != "htb"), "{:?}", root_qdisc("ppp1"));
    assert_eq!(tc.read_one("ppp1").unwrap(), Shaping::default());
}

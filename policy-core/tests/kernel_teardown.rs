//! ip-down's cleanup (`engine::teardown_link`, what pppgate.so runs on ip-down and exit) against
//! the kernel, in a network namespace of its own: when another interface already carries the
//! client address as its peer (a newer session of the same client), only our membership goes —
//! the newer session's membership and the address's policy-routing rule stay; when no other
//! interface carries it, the whole session goes, the rule included. Read back with the tools.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use policy_core::kernel::{links, Member, Netlink, Nft, NftNetlink, NftSet, SetChange};
use policy_core::policy::engine;
use pppgate_testkit::*;

const CLIENT: &str = "100.64.0.2";

fn client() -> Ipv4Addr {
    CLIENT.parse().unwrap()
}

fn member_of(ifname: &str) -> Member {
    Member::new(links::ifindex(ifname).unwrap().expect("interface"), client())
}

fn full() -> BTreeSet<String> {
    nft_members().remove("full_v4").unwrap_or_default()
}

fn rule_from_client() -> bool {
    run(&["ip", "rule", "show"]).contains(&format!("from {CLIENT} lookup 100"))
}

#[test]
fn a_newer_session_with_the_same_address_keeps_its_membership_and_rules() {
    private_netns();
    ppp_link("ppp0", "100.64.0.1", CLIENT);
    ppp_link("ppp1", "100.64.0.1", CLIENT);
    let (old, new) = (member_of("ppp0"), member_of("ppp1"));
    let mut nft = NftNetlink::new().unwrap();
    nft.ensure_base(&[]).unwrap();
    nft.commit(&[SetChange::new(NftSet::Full, old, true), SetChange::new(NftSet::Full, new, true)]).unwrap();
    run(&["ip", "rule", "add", "from", CLIENT, "lookup", "100", "priority", "1000", "protocol", "77"]);
    assert_eq!(full().len(), 2, "{:?}", full());

    // The old session's ip-down while ppp1 carries the address: only ppp0's member goes.
    let mut b = Netlink::new().unwrap();
    let errors = engine::teardown_link(&mut b, Some("ppp0"), Some(old), &BTreeSet::new());
    assert!(errors.is_empty(), "{errors:?}");
    let left = full();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left.iter().all(|e| e.starts_with("ppp1 ")), "the newer session's member went: {left:?}");
    assert!(rule_from_client(), "the address's rule went with the old session");

    // The newer session goes and nothing else carries the address: everything goes, the rule too.
    run(&["ip", "link", "del", "ppp0"]);
    let errors = engine::teardown_link(&mut b, Some("ppp1"), Some(new), &BTreeSet::new());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(full().is_empty(), "{:?}", full());
    assert!(!rule_from_client(), "the last session's ip-down left its address's rule");
}

//! The address plan (seeds 001/002): one /16 per tenant, `10.<octet>.0.0/16` with the octet from
//! 100 to 254 (155 tenants). In each tenant subnet:
//! * `10.<octet>.0.0/24` belongs to the concentrators: `.0.1` is the gateway (the server
//!   interface's address), the rest is reserved;
//! * routers get `10.<octet>.1.1` … `10.<octet>.255.254`, never an address whose last octet is 0 or
//!   255 (some stacks treat them as classful network/broadcast addresses): 255 × 254 = 64,770
//!   routers per tenant.
//!
//! Allocation itself happens in SQL (db::wg), under a lock and unique constraints; these pure
//! functions define which addresses are valid and in what order they are handed out, and the SQL
//! is tested against them.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub const FIRST_OCTET: u8 = 100;
pub const LAST_OCTET: u8 = 254;
/// 155 tenant subnets.
pub const TENANT_CAPACITY: usize = (LAST_OCTET - FIRST_OCTET) as usize + 1;
/// Host index (offset in the /16) of the first router address, 10.X.1.1.
pub const FIRST_ROUTER_INDEX: u32 = 257;
/// Host index of the last router address, 10.X.255.254.
pub const LAST_ROUTER_INDEX: u32 = 65534;
/// Router addresses per tenant.
pub const ROUTER_CAPACITY: usize = 255 * 254;

pub fn valid_octet(octet: i64) -> bool {
    (FIRST_OCTET as i64..=LAST_OCTET as i64).contains(&octet)
}

/// The tenant subnet of a second octet.
pub fn subnet(octet: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, octet, 0, 0), 16).expect("16 is a valid prefix")
}

/// The concentrator's address in a tenant subnet (`10.<octet>.0.1`).
pub fn gateway(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, octet, 0, 1)
}

/// Whether a host index (offset in the /16) may be given to a router.
pub fn valid_router_index(i: u32) -> bool {
    (FIRST_ROUTER_INDEX..=LAST_ROUTER_INDEX).contains(&i) && !matches!(i & 0xff, 0 | 255)
}

/// The next valid router index after `i` (None past the end).
pub fn next_router_index(i: u32) -> Option<u32> {
    let n = if i & 0xff >= 254 { (i | 0xff) + 2 } else { i + 1 };
    let n = n.max(FIRST_ROUTER_INDEX);
    (n <= LAST_ROUTER_INDEX).then_some(n)
}

pub fn address(octet: u8, index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, octet, 0, 0)) + index)
}

/// The tenant octet and host index of a router address, if it lies in the pool.
pub fn split(addr: Ipv4Addr) -> Option<(u8, u32)> {
    let o = addr.octets();
    (o[0] == 10 && valid_octet(o[1] as i64)).then(|| (o[1], u32::from(o[2]) << 8 | u32::from(o[3])))
}

/// The lowest free router index, given the taken ones (the model the SQL allocator follows).
pub fn lowest_free(taken: &std::collections::BTreeSet<u32>) -> Option<u32> {
    let mut i = FIRST_ROUTER_INDEX;
    loop {
        if !taken.contains(&i) {
            return Some(i);
        }
        i = next_router_index(i)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn tenant_range() {
        assert_eq!(TENANT_CAPACITY, 155);
        assert_eq!(subnet(FIRST_OCTET).to_string(), "10.100.0.0/16");
        assert_eq!(subnet(LAST_OCTET).to_string(), "10.254.0.0/16");
        assert!(!valid_octet(99) && !valid_octet(255) && valid_octet(100) && valid_octet(254));
        assert_eq!(gateway(100), Ipv4Addr::new(10, 100, 0, 1));
    }

    #[test]
    fn router_addresses_walk_the_pool() {
        let mut all = Vec::new();
        let mut i = Some(FIRST_ROUTER_INDEX);
        while let Some(x) = i {
            assert!(valid_router_index(x));
            all.push(x);
            i = next_router_index(x);
        }
        assert_eq!(all.len(), ROUTER_CAPACITY);
        assert_eq!(address(100, all[0]), Ipv4Addr::new(10, 100, 1, 1));
        assert_eq!(address(100, all[253]), Ipv4Addr::new(10, 100, 1, 254));
        assert_eq!(address(100, all[254]), Ipv4Addr::new(10, 100, 2, 1));
        assert_eq!(address(100, *all.last().unwrap()), Ipv4Addr::new(10, 100, 255, 254));
        for x in &all {
            let a = address(100, *x);
            assert!(!matches!(a.octets()[3], 0 | 255));
            assert_ne!(a, gateway(100));
            assert_eq!(split(a), Some((100, *x)));
        }
    }

    #[test]
    fn gateway_and_network_are_never_router_addresses() {
        for i in [0, 1, 255, 256, 65535] {
            assert!(!valid_router_index(i), "{i}");
        }
    }

    proptest! {
        #[test]
        fn lowest_free_is_valid_and_free(taken in proptest::collection::btree_set(0u32..2000, 0..400)) {
            let taken: BTreeSet<u32> = taken;
            let f = lowest_free(&taken).unwrap();
            prop_assert!(valid_router_index(f));
            prop_assert!(!taken.contains(&f));
            for j in FIRST_ROUTER_INDEX..f {
                prop_assert!(!valid_router_index(j) || taken.contains(&j));
            }
        }
    }
}

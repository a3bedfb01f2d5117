//! WireGuard allocation against a real PostgreSQL: tenant subnets 10.100–10.254 (the 156th is
//! refused), router addresses in order without .0/.255 and outside 10.X.0.0/24, exhaustion of a
//! tenant subnet, quarantine of released addresses, idempotent adds, the database's own
//! constraints, and key rotation in one transaction.

use std::path::Path;

use policy_core::db::wg::{self, Added, NewRouter};
use policy_core::wg::keys::{generate_private, generate_psk, public_of};
use policy_core::wg::seal::{Binding, MasterKey, MasterKeys};
use policy_core::{Error, ExitCode};
use pppgate_testkit::PgServer;

fn mk() -> MasterKeys {
    MasterKeys::from_keys(Path::new("/mem"), vec![MasterKey::generate().unwrap()])
}

fn server(c: &mut postgres::Client, mk: &MasterKeys) -> i64 {
    let k = generate_private().unwrap();
    let sealed = mk.seal(&k, &Binding::ServerPrivate { nas: "lns-1", ifname: "wg0" }).unwrap();
    let (row, created) =
        wg::ensure_server(c, "lns-1", "wg0", &public_of(&k).to_base64(), &sealed, 51820, "vpn.example.com:51820")
            .unwrap();
    assert!(created);
    row.id
}

fn new_router(mk: &MasterKeys, server_id: i64, tenant: i64, router: i64) -> NewRouter {
    let p = generate_private().unwrap();
    let psk = generate_psk().unwrap();
    NewRouter {
        router_id: router,
        tenant_id: tenant,
        tenant_name: None,
        server_id,
        name: None,
        public_key: public_of(&p).to_base64(),
        private_key: mk.seal(&p, &Binding::RouterPrivate { tenant, router }).unwrap(),
        psk: mk.seal(&psk, &Binding::RouterPsk { tenant, router }).unwrap(),
        interface_name: "wg-pppgate".into(),
        listen_port: 13231,
        keepalive: 25,
        routed_networks: vec![],
        extra_allowed: vec![],
        dns: vec![],
        quarantine_s: 86400,
    }
}

fn created(a: Added) -> wg::RouterRow {
    match a {
        Added::Created(r) => r,
        Added::Existing(r) => panic!("router {} existed", r.router_id),
    }
}

#[test]
fn tenant_subnets_from_100_to_254_then_refused() {
    let pg = PgServer::new();
    let mut c = pg.client();
    for t in 1..=155i64 {
        let (row, new) = wg::ensure_tenant(&mut c, t, None).unwrap();
        assert!(new);
        assert_eq!(row.octet as i64, 99 + t);
    }
    assert_eq!(wg::tenant(&mut c, 1).unwrap().unwrap().subnet.to_string(), "10.100.0.0/16");
    assert_eq!(wg::tenant(&mut c, 155).unwrap().unwrap().subnet.to_string(), "10.254.0.0/16");
    let e = wg::ensure_tenant(&mut c, 156, None).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::DataErr);
    assert!(e.to_string().contains("no tenant subnet left"), "{e}");
    // Idempotent for an existing tenant.
    let (row, new) = wg::ensure_tenant(&mut c, 7, Some("seven")).unwrap();
    assert!(!new);
    assert_eq!(row.octet, 106);
    assert_eq!(row.name.as_deref(), Some("seven"));
    // A deleted tenant's subnet is the lowest free one again.
    wg::delete_tenant(&mut c, 3).unwrap();
    assert_eq!(wg::ensure_tenant(&mut c, 500, None).unwrap().0.octet, 102);
    // The database refuses a duplicate octet whatever the code does.
    let e = c.execute("INSERT INTO wg_tenants (tenant_id, octet) VALUES (999, 100)", &[]).unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::UNIQUE_VIOLATION));
    let e = c.execute("INSERT INTO wg_tenants (tenant_id, octet) VALUES (999, 99)", &[]).unwrap_err();
    assert_eq!(e.code(), Some(&postgres::error::SqlState::CHECK_VIOLATION));
}

#[test]
fn router_addresses_in_order_idempotent_and_quarantined() {
    let pg = PgServer::new();
    let mut c = pg.client();
    let mk = mk();
    let sid = server(&mut c, &mk);
    let r1 = created(wg::add_router(&mut c, &new_router(&mk, sid, 7, 1)).unwrap());
    assert_eq!(r1.address.to_string(), "10.100.1.1");
    assert_eq!(r1.subnet.to_string(), "10.100.0.0/16");
    // Same router, same tenant: the existing row, nothing new.
    match wg::add_router(&mut c, &new_router(&mk, sid, 7, 1)).unwrap() {
        Added::Existing(r) => assert_eq!(r.public_key, r1.public_key),
        Added::Created(_) => panic!("created twice"),
    }
    // Same router id under another tenant: refused.
    let e = wg::add_router(&mut c, &new_router(&mk, sid, 8, 1)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::DataErr);
    for (i, want) in ["10.100.1.2", "10.100.1.3"].iter().enumerate() {
        let r = created(wg::add_router(&mut c, &new_router(&mk, sid, 7, 2 + i as i64)).unwrap());
        assert_eq!(r.address.to_string(), *want);
    }
    // A released address is quarantined: the next router gets a new one ...
    wg::delete_router(&mut c, 2).unwrap();
    let r = created(wg::add_router(&mut c, &new_router(&mk, sid, 7, 10)).unwrap());
    assert_eq!(r.address.to_string(), "10.100.1.4");
    // ... and after the quarantine it is the lowest free again.
    let mut nr = new_router(&mk, sid, 7, 11);
    nr.quarantine_s = 0;
    assert_eq!(created(wg::add_router(&mut c, &nr).unwrap()).address.to_string(), "10.100.1.2");
    // The schema refuses addresses outside the router range and a duplicate.
    for bad in ["10.100.0.5", "10.100.2.0", "10.100.2.255", "10.101.1.1", "10.100.1.1"] {
        let e = c
            .execute(
                "INSERT INTO wg_routers (router_id, tenant_id, octet, server_id, address, public_key, private_key_sealed,
                   psk_sealed, key_id, interface_name, listen_port, keepalive_s)
                 SELECT 900, 7, 100, $1, $2::text::inet, repeat('x', 44), '\\x00', '\\x00', 1, 'wg', 1, 0",
                &[&sid, &bad.to_string()],
            )
            .unwrap_err();
        assert!(e.code().is_some(), "{bad}: {e}");
    }
}

#[test]
fn a_full_tenant_subnet_is_exhausted_cleanly() {
    let pg = PgServer::new();
    let mut c = pg.client();
    let mk = mk();
    let sid = server(&mut c, &mk);
    created(wg::add_router(&mut c, &new_router(&mk, sid, 7, 1)).unwrap());
    // Fill every router address but the last one directly (64,768 rows).
    c.batch_execute(&format!(
        "INSERT INTO wg_routers (router_id, tenant_id, octet, server_id, address, public_key, private_key_sealed,
           psk_sealed, key_id, interface_name, listen_port, keepalive_s)
         SELECT 1000 + i, 7, 100, {sid}, '10.100.0.0'::inet + i, lpad(i::text, 44, 'k'), '\\x00', '\\x00', 1, 'wg', 1, 0
           FROM generate_series(258, 65533) i WHERE (i & 255) NOT IN (0, 255)"
    ))
    .unwrap();
    let r = created(wg::add_router(&mut c, &new_router(&mk, sid, 7, 2)).unwrap());
    assert_eq!(r.address.to_string(), "10.100.255.254");
    let e = wg::add_router(&mut c, &new_router(&mk, sid, 7, 3)).unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::DataErr);
    assert!(e.to_string().contains("exhausted"), "{e}");
    let info = wg::subnet_info(&mut c, 7, 86400).unwrap();
    assert_eq!(info.allocated, 64770);
    assert_eq!(info.available, 0);
    // Other tenants are unaffected.
    assert_eq!(created(wg::add_router(&mut c, &new_router(&mk, sid, 8, 4)).unwrap()).address.to_string(), "10.101.1.1");
}

#[test]
fn rotation_reseals_every_row_in_one_transaction() {
    let pg = PgServer::new();
    let mut c = pg.client();
    let mut mk = mk();
    let sid = server(&mut c, &mk);
    for r in 1..=5 {
        created(wg::add_router(&mut c, &new_router(&mk, sid, 1 + r % 2, r)).unwrap());
    }
    let old_id = mk.active().id;
    assert_eq!(wg::key_ids_in_use(&mut c).unwrap(), vec![(old_id, 6)]);
    let before = wg::router(&mut c, 3).unwrap().unwrap();
    let psk_before = mk.open(&before.psk, &Binding::RouterPsk { tenant: before.tenant_id, router: 3 }).unwrap();
    mk.push(MasterKey::generate().unwrap());
    let reseal = |mk: &MasterKeys, s: &wg::SealedRef| -> policy_core::Result<_> {
        Ok(match s {
            wg::SealedRef::Server { nas, ifname, private_key, .. } => {
                (mk.reseal(private_key, &Binding::ServerPrivate { nas, ifname })?, None)
            }
            wg::SealedRef::Router { router_id, tenant_id, private_key, psk } => (
                mk.reseal(private_key, &Binding::RouterPrivate { tenant: *tenant_id, router: *router_id })?,
                Some(mk.reseal(psk, &Binding::RouterPsk { tenant: *tenant_id, router: *router_id })?),
            ),
        })
    };
    // A failure half-way leaves every row as it was.
    let mut n = 0;
    let e = wg::reseal_all(&mut c, |s| {
        n += 1;
        if n == 4 {
            return Err(Error::invalid("test", "x", "injected"));
        }
        reseal(&mk, s)
    });
    assert!(e.is_err());
    assert_eq!(wg::key_ids_in_use(&mut c).unwrap(), vec![(old_id, 6)]);
    assert_eq!(wg::reseal_all(&mut c, |s| reseal(&mk, s)).unwrap(), 6);
    let new_id = mk.active().id;
    assert_eq!(wg::key_ids_in_use(&mut c).unwrap(), vec![(new_id, 6)]);
    mk.retire_old();
    let after = wg::router(&mut c, 3).unwrap().unwrap();
    assert_eq!(mk.open(&after.psk, &Binding::RouterPsk { tenant: after.tenant_id, router: 3 }).unwrap(), psk_before);
    assert_ne!(after.psk.blob, before.psk.blob);
}

#[test]
fn stats_set_status_from_handshake_age() {
    let pg = PgServer::new();
    let mut c = pg.client();
    let mk = mk();
    let sid = server(&mut c, &mk);
    let a = created(wg::add_router(&mut c, &new_router(&mk, sid, 1, 1)).unwrap());
    let b = created(wg::add_router(&mut c, &new_router(&mk, sid, 1, 2)).unwrap());
    let d = created(wg::add_router(&mut c, &new_router(&mk, sid, 1, 3)).unwrap());
    let now = policy_core::db::db_now(&mut c).unwrap();
    let stats = vec![
        wg::PeerStats {
            public_key: a.public_key.clone(),
            last_handshake: Some(now - 10),
            endpoint: Some("192.0.2.9:4000".into()),
            rx_bytes: 100,
            tx_bytes: 200,
        },
        wg::PeerStats {
            public_key: b.public_key.clone(),
            last_handshake: Some(now - 1000),
            endpoint: None,
            rx_bytes: 1,
            tx_bytes: 2,
        },
        wg::PeerStats {
            public_key: d.public_key.clone(),
            last_handshake: None,
            endpoint: None,
            rx_bytes: 0,
            tx_bytes: 0,
        },
    ];
    assert_eq!(wg::record_stats(&mut c, sid, &stats, 180).unwrap(), 3);
    let a = wg::router(&mut c, 1).unwrap().unwrap();
    assert_eq!((a.status.as_str(), a.rx_bytes, a.tx_bytes), ("up", 100, 200));
    assert_eq!(a.endpoint.as_deref(), Some("192.0.2.9:4000"));
    assert!(a.handshake_age_s.unwrap() >= 10);
    assert_eq!(wg::router(&mut c, 2).unwrap().unwrap().status, "down");
    assert_eq!(wg::router(&mut c, 3).unwrap().unwrap().status, "pending");
}

/// WireGuard maps a network to one peer of an interface: a network routed to one router of a
/// server is refused for another (65), whatever the tenant; a different prefix is fine.
#[test]
fn a_routed_network_belongs_to_one_router_per_server() {
    let pg = PgServer::new();
    let mut c = pg.client();
    let mk = mk();
    let sid = server(&mut c, &mk);
    let default: ipnet::Ipv4Net = "0.0.0.0/0".parse().unwrap();
    let lan: ipnet::Ipv4Net = "192.168.50.0/24".parse().unwrap();
    let mut a = new_router(&mk, sid, 1, 1);
    a.routed_networks = vec![default, lan];
    created(wg::add_router(&mut c, &a).unwrap());
    for (tenant, router, net) in [(1, 2, default), (2, 3, default), (2, 4, lan)] {
        let mut b = new_router(&mk, sid, tenant, router);
        b.routed_networks = vec![net];
        let e = wg::add_router(&mut c, &b).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::DataErr, "{e}");
        assert!(e.to_string().contains("already routed to router 1"), "{e}");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM wg_routers", &[]).unwrap().get(0);
    assert_eq!(n, 1, "nothing written for the refused routers");
    // A more specific network is another prefix: WireGuard's longest match keeps both.
    let mut d = new_router(&mk, sid, 2, 5);
    d.routed_networks = vec!["192.168.50.128/25".parse().unwrap()];
    created(wg::add_router(&mut c, &d).unwrap());
    // Deleted, the network is free again.
    wg::delete_router(&mut c, 1).unwrap();
    let mut e = new_router(&mk, sid, 2, 6);
    e.routed_networks = vec![default];
    created(wg::add_router(&mut c, &e).unwrap());
}

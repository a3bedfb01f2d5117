//! The testkit's own checks: a private PostgreSQL that stops and starts again, and fake sessions
//! that pppgate's VALID definition accepts — and stops accepting when they die.

use std::time::{Duration, Instant};

use pppgate_testkit::*;

#[test]
fn pg_server_is_migrated_stops_and_starts_again() {
    let t = Instant::now();
    let pg = PgServer::new();
    println!("PgServer::new (incl. the per-process template on first use): {:?}", t.elapsed());
    assert_eq!(pg.psql("SELECT count(*) FROM vpn_connections"), "0");
    assert_eq!(pg.psql("SELECT max(version) FROM pppgate_schema"), policy_core::db::migrate::LATEST.to_string());
    pg.psql("INSERT INTO vpn_connections (subaccount_login, status) VALUES ('a', 'CLAIMED')");
    pg.stop();
    assert!(pg.try_psql("SELECT 1").is_err(), "a stopped server answers nothing");
    pg.start();
    assert_eq!(pg.psql("SELECT subaccount_login FROM vpn_connections"), "a", "same data dir after restart");
    let t = Instant::now();
    let other = PgServer::new();
    println!("second PgServer::new (template copy + start): {:?}", t.elapsed());
    assert_eq!(other.psql("SELECT count(*) FROM vpn_connections"), "0", "servers are independent");
    let empty = PgServer::new_unmigrated();
    assert_eq!(empty.psql("SELECT to_regclass('vpn_connections') IS NULL"), "t");
}

#[test]
fn fake_sessions_are_valid_until_they_die() {
    private_netns();
    let pg = PgServer::new();
    let env = TestEnv::new(&pg.dsn());
    let cfg = env.config();
    assert_eq!(cfg.paths.sessions_dir, env.sessions_dir);
    assert!(cfg.paths.apply_lock.starts_with(env.root()));

    let mut a = SessionBuilder::veth("ppp0", 1, "100.64.0.2").build(&env.sessions_dir);
    let b = SessionBuilder::tun("ppp1", 2, "100.64.0.3").build(&env.sessions_dir);
    assert!(a.is_valid() && b.is_valid());
    // The client side is reachable over the point-to-point link.
    a.client().run(&["ping", "-c", "1", "-W", "2", "100.64.0.1"]);

    a.kill();
    assert!(!a.is_valid(), "process gone → not VALID");
    b.delete_interface();
    assert!(!b.is_valid(), "interface gone → not VALID");
    assert!(a.mapping_path().exists(), "the mapping file alone proves nothing");
}

#[test]
fn tun_farm_sessions_are_valid() {
    private_netns();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let farm = tun_farm(dir.path(), 10, 50, 1000, 4);
    println!("50 TUN sessions: {:?}", t.elapsed());
    let (valid, bad) = policy_core::mapping::valid_sessions(dir.path()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(valid.len(), 50);
    assert_eq!(farm.mappings.len(), 50);
    assert!(wait_until(Duration::from_secs(1), || link_names().iter().filter(|n| n.starts_with("ppp")).count() == 50));
}

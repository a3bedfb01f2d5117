//! A connect the database refuses only for a moment is retried within the connect timeout (R121),
//! against a real PostgreSQL: every connection slot taken ("too many clients") until one is given
//! back; a Unix socket whose listen backlog is full (the kernel answers EAGAIN — seen in the
//! connect-storm benchmark: 707 of 2,000 connects ended by it) until the server's socket is
//! there. A refusal that does not clear fails at the timeout; a server that is not there fails
//! at once, as before.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use policy_core::config::DatabaseConfig;
use policy_core::db;
use policy_core::error::one_line;
use pppgate_testkit::PgServer;

/// The error of a connect that must fail.
fn refused(r: policy_core::Result<postgres::Client>) -> policy_core::Error {
    match r {
        Ok(_) => panic!("the connect succeeded"),
        Err(e) => e,
    }
}

fn database(dsn: &str, connect_timeout: Duration) -> DatabaseConfig {
    DatabaseConfig {
        pg: dsn.parse().unwrap(),
        connect_timeout,
        statement_timeout: Duration::from_secs(5),
        secrets_file: None,
        pooler: false,
    }
}

/// Takes every connection slot the server has; returns the connections.
fn take_every_slot(pg: &PgServer) -> Vec<postgres::Client> {
    let mut held = Vec::new();
    loop {
        match db::connect(&database(&pg.dsn(), Duration::from_millis(50))) {
            Ok(c) => held.push(c),
            Err(policy_core::Error::SqlUnavailable(e)) if db::busy_refusal(&e) => break,
            Err(e) => panic!("connect {}: {}", held.len() + 1, one_line(&e)),
        }
        assert!(held.len() < 500, "the server never ran out of connection slots");
    }
    held
}

#[test]
fn too_many_clients_is_waited_out_within_the_connect_timeout() {
    let pg = PgServer::new();
    let mut held = take_every_slot(&pg);
    println!("{} connections hold every slot", held.len());

    // Nobody gives a slot back: the connect fails when its timeout is used up, not at once.
    let t = Instant::now();
    let e = refused(db::connect(&database(&pg.dsn(), Duration::from_millis(600))));
    let took = t.elapsed();
    println!("no slot: failed after {} ms: {}", took.as_millis(), one_line(&e));
    assert!(one_line(&e).contains("too many clients"), "{}", one_line(&e));
    assert!(took >= Duration::from_millis(450), "gave up after {took:?}, before its 600 ms");
    assert!(took < Duration::from_millis(1500), "took {took:?}: the timeout does not bound the retries");

    // A slot comes free after 400 ms: the connect gets it.
    let one = held.pop().unwrap();
    let giver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        drop(one);
    });
    let t = Instant::now();
    let mut c = db::connect(&database(&pg.dsn(), Duration::from_secs(3))).expect("a slot came free");
    let took = t.elapsed();
    println!("a slot freed after 400 ms: connected after {} ms", took.as_millis());
    assert!(took >= Duration::from_millis(350), "connected after {took:?}, before a slot was free");
    assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    giver.join().unwrap();
}

/// A listening Unix socket at `path` that never accepts, its backlog filled; returns the listener
/// and the connections that fill it.
fn full_listener(path: &Path) -> (OwnedFd, Vec<OwnedFd>) {
    let addr = UnixAddr::new(path).unwrap();
    let l = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&l), &addr).unwrap();
    socket::listen(&l, socket::Backlog::new(0).unwrap()).unwrap();
    let mut fill = Vec::new();
    loop {
        let s = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&s), &addr) {
            Ok(()) => fill.push(s),
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
        assert!(fill.len() < 64, "the backlog never filled");
    }
    (l, fill)
}

#[test]
fn a_full_socket_backlog_is_waited_out_within_the_connect_timeout() {
    let pg = PgServer::new();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join(".s.PGSQL.5432");
    let dsn = format!("host={} port=5432 user=postgres dbname=postgres", dir.path().display());

    // The backlog stays full: the connect fails at its timeout, with the kernel's EAGAIN.
    let (listener, fill) = full_listener(&sock);
    let t = Instant::now();
    let e = refused(db::connect(&database(&dsn, Duration::from_millis(600))));
    let took = t.elapsed();
    println!("full backlog: failed after {} ms: {}", took.as_millis(), one_line(&e));
    match &e {
        policy_core::Error::SqlUnavailable(pe) => assert!(db::busy_refusal(pe), "{pe:?}"),
        other => panic!("{other:?}"),
    }
    assert!(took >= Duration::from_millis(450), "gave up after {took:?}, before its 600 ms");
    assert!(took < Duration::from_millis(1500), "took {took:?}");

    // After 400 ms the socket path leads to the real server: the connect gets through.
    let real = pg.socket_dir().join(".s.PGSQL.5432");
    let sock2 = sock.clone();
    let swap = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        std::fs::remove_file(&sock2).unwrap();
        std::os::unix::fs::symlink(&real, &sock2).unwrap();
        drop(fill);
        drop(listener);
    });
    let t = Instant::now();
    let mut c = db::connect(&database(&dsn, Duration::from_secs(3))).expect("the server's socket came");
    let took = t.elapsed();
    println!("backlog full for 400 ms: connected after {} ms", took.as_millis());
    assert!(took >= Duration::from_millis(350), "connected after {took:?}");
    assert_eq!(c.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0), 1);
    swap.join().unwrap();
}

#[test]
fn a_server_that_is_not_there_fails_at_once() {
    let pg = PgServer::new();
    pg.stop();
    let t = Instant::now();
    let e = refused(db::connect(&database(&pg.dsn(), Duration::from_secs(3))));
    let took = t.elapsed();
    println!("stopped server: failed after {} ms: {}", took.as_millis(), one_line(&e));
    assert!(took < Duration::from_millis(500), "a refusal that does not clear was retried: {took:?}");
}

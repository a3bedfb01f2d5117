//! The connect path's SQL lookup under concurrent connects and writers' locks, against a real
//! PostgreSQL (issue 10; docs/security.md, "The connect-path lookup's statement timeout").
//!
//! The plugin opens a fresh connection per connect and runs one plain `SELECT`
//! (`db::connections::lookup_login`) with the configured statement timeout; it never writes and
//! takes no lock of its own but the `AccessShareLock` every `SELECT` takes. So it can wait only
//! for a lock that conflicts with that: `AccessExclusiveLock`, which DDL takes (a schema
//! migration's `ALTER TABLE`, `TRUNCATE`, `VACUUM FULL`, `LOCK TABLE`). Row locks — every writer
//! pppgate or a panel has (an `UPDATE` of a connection, the collector's usage upserts,
//! `FOR UPDATE` reads, advisory locks) — never block a `SELECT` (MVCC). Proven here: with all of
//! those held in an open transaction for longer than the lookups' statement timeout, 32
//! simultaneous connect + lookup pairs all succeed, and PostgreSQL's own `pg_stat_activity`,
//! sampled meanwhile, never shows one of them waiting on a lock; the control — the same lookups
//! while a transaction holds `ACCESS EXCLUSIVE` on one of the lookup's tables — shows them
//! waiting and ending on the statement timeout, so a lock wait cannot go unnoticed here.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use policy_core::config::DatabaseConfig;
use policy_core::db::{self, connections::LoginLookup};
use policy_core::error::one_line;
use pppgate_testkit::PgServer;

const CONNECTS: usize = 32;

fn database(pg: &PgServer, statement_timeout: Duration) -> DatabaseConfig {
    DatabaseConfig {
        pg: pg.dsn().parse().unwrap(),
        connect_timeout: Duration::from_secs(10),
        statement_timeout,
        secrets_file: None,
        pooler: false,
    }
}

/// `n` simultaneous connects, each as the plugin's ip-up does it: a fresh connection, the lookup,
/// the connection dropped. Returns each one's outcome and duration (connect + lookup).
fn storm(db: &DatabaseConfig, n: usize) -> Vec<(Result<(), String>, Duration)> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (db, barrier) = (db.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let t = Instant::now();
                let r =
                    db::connect(&db).and_then(|mut c| db::connections::lookup_login(&mut c, &format!("user{}", i + 1)));
                let r = match r {
                    Ok(LoginLookup::Found(_)) => Ok(()),
                    Ok(other) => Err(format!("not found: {}", matches!(other, LoginLookup::NotFound))),
                    Err(e) => Err(one_line(&e)),
                };
                (r, t.elapsed())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Samples `pg_stat_activity` every 5 ms until stopped: the most lookups (application
/// `pppgate`) seen waiting on a heavyweight lock at once.
fn lock_waits(pg: &PgServer, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let mut c = pg.client();
    std::thread::spawn(move || {
        let most = AtomicUsize::new(0);
        while !stop.load(Ordering::Relaxed) {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pppgate' AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            most.fetch_max(n as usize, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
        }
        most.into_inner()
    })
}

fn figures(what: &str, r: &[(Result<(), String>, Duration)]) {
    let mut t: Vec<Duration> = r.iter().map(|(_, d)| *d).collect();
    t.sort();
    let ok = r.iter().filter(|(r, _)| r.is_ok()).count();
    println!(
        "{what}: {ok} of {} succeeded; connect + lookup median {:.1} ms, slowest {:.1} ms",
        r.len(),
        t[t.len() / 2].as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3
    );
}

#[test]
fn simultaneous_connect_lookups_wait_for_no_writer_and_only_ddl_can_stall_them() {
    let pg = PgServer::new();
    pg.psql(
        "INSERT INTO customers (id, name) VALUES (1, 'acme');
         INSERT INTO vpn_connections (id, subaccount_login, status, customer_id, quota_bytes, quota_period)
         SELECT g, 'user' || g, 'CLAIMED', 1, 1000000000, 'month' FROM generate_series(1, 64) g;
         INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out)
         SELECT g, current_date - d, 1000, 1000 FROM generate_series(1, 64) g, generate_series(0, 30) d;
         INSERT INTO vpn_routes (connection_id, destination) SELECT g, '10.99.0.0/24' FROM generate_series(1, 64) g;
         INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority)
         SELECT 'p' || g, g, 100, '10.100.0.40', 'wg0', 1000 FROM generate_series(1, 64) g;",
    );
    let timeout = Duration::from_secs(1);
    let db = database(&pg, timeout);
    let quiet = storm(&db, CONNECTS);
    figures("no writer", &quiet);
    assert!(quiet.iter().all(|(r, _)| r.is_ok()), "{quiet:?}");

    // Every lock a writer takes on the lookup's tables, held in one open transaction for longer
    // than the lookups' statement timeout: a panel's UPDATE of every connection (`connection
    // set`), the collector's usage upsert, FOR UPDATE on every row of every table the lookup
    // reads, and an advisory lock (`wg`, `db migrate`).
    let mut writer = pg.client();
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute(
        "UPDATE vpn_connections SET manual_block = manual_block, rate_down_kbit = 8000;
         UPDATE customers SET blocked = blocked;
         INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out)
         SELECT g, current_date, 1, 1 FROM generate_series(1, 64) g
         ON CONFLICT (connection_id, day) DO UPDATE SET bytes_in = vpn_usage.bytes_in + 1;
         SELECT 1 FROM vpn_routes FOR UPDATE;
         SELECT 1 FROM pbr_rules FOR UPDATE;
         SELECT 1 FROM vpn_usage FOR UPDATE;
         SELECT pg_advisory_xact_lock(1);",
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = lock_waits(&pg, stop.clone());
    let locked = storm(&db, CONNECTS);
    stop.store(true, Ordering::Relaxed);
    let waited = sampler.join().unwrap();
    figures("every writer's row lock held", &locked);
    println!("  lookups seen waiting on a lock at once (pg_stat_activity): {waited}");
    assert!(locked.iter().all(|(r, _)| r.is_ok()), "a lookup failed while writers held row locks: {locked:?}");
    assert_eq!(waited, 0, "a lookup waited on a writer's lock");
    tx.rollback().unwrap();

    // The control: DDL's lock on one of the lookup's tables stalls every lookup until its
    // statement timeout — fail closed, and seen by the sampler.
    let mut ddl = pg.client();
    let mut tx = ddl.transaction().unwrap();
    tx.batch_execute("LOCK TABLE vpn_usage IN ACCESS EXCLUSIVE MODE").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = lock_waits(&pg, stop.clone());
    let stalled = storm(&db, 8);
    stop.store(true, Ordering::Relaxed);
    let waited = sampler.join().unwrap();
    tx.rollback().unwrap();
    figures("ACCESS EXCLUSIVE held on vpn_usage (DDL)", &stalled);
    println!("  lookups seen waiting on a lock at once: {waited}");
    for (r, d) in &stalled {
        let e = r.as_ref().expect_err("a lookup passed a table DDL held");
        assert!(e.contains("statement timeout"), "{e}");
        assert!(*d >= timeout, "ended after {d:?}, before its statement timeout");
    }
    assert!(waited >= 1, "the sampler saw no lookup waiting on the DDL's lock");
}

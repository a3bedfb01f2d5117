//! The connect path reads the apply window on the connection its lookup opened (R111), against a
//! real PostgreSQL: the operator's value is used; a settings table held by DDL makes the read give
//! up after the tight settings timeout, not the connection's statement timeout; and the tight
//! bound does not outlive the read on that connection (it is a `SET LOCAL`, so a pooler's server
//! connection keeps its own).

use std::time::{Duration, Instant};

use policy_core::config::DatabaseConfig;
use policy_core::db;
use pppgate_testkit::PgServer;

const STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);
const SETTINGS_TIMEOUT: Duration = Duration::from_millis(200);

fn database(pg: &PgServer) -> DatabaseConfig {
    DatabaseConfig {
        pg: pg.dsn().parse().unwrap(),
        connect_timeout: Duration::from_secs(10),
        statement_timeout: STATEMENT_TIMEOUT,
        secrets_file: None,
        pooler: false,
    }
}

fn statement_timeout_of(c: &mut postgres::Client) -> String {
    c.query_one("SHOW statement_timeout", &[]).unwrap().get(0)
}

#[test]
fn the_window_is_read_on_the_open_connection_within_the_settings_timeout() {
    let pg = PgServer::new();
    let db = database(&pg);

    // The migration's default (10 s), then an operator's value.
    let mut c = db::connect(&db).unwrap();
    assert_eq!(db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT).unwrap(), Some(Duration::from_secs(10)));
    pg.psql("UPDATE settings SET value = '12.5' WHERE key = 'connect_apply_window_s'");
    assert_eq!(db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT).unwrap(), Some(Duration::from_millis(12_500)));
    // The tight bound ended with the read: the connection's own timeout is back.
    assert_eq!(statement_timeout_of(&mut c), "20s");

    // Absent or unparsable: no window from SQL (the caller falls back), no error.
    pg.psql("UPDATE settings SET value = 'soon' WHERE key = 'connect_apply_window_s'");
    assert_eq!(db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT).unwrap(), None);
    pg.psql("DELETE FROM settings WHERE key = 'connect_apply_window_s'");
    assert_eq!(db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT).unwrap(), None);
    pg.psql("INSERT INTO settings (key, value) VALUES ('connect_apply_window_s', '7')");

    // DDL holds the table: the read gives up on the settings timeout, long before the
    // connection's 20 s statement timeout.
    let mut ddl = pg.client();
    let mut tx = ddl.transaction().unwrap();
    tx.batch_execute("LOCK TABLE settings IN ACCESS EXCLUSIVE MODE").unwrap();
    let t = Instant::now();
    let r = db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT);
    let took = t.elapsed();
    println!("settings held by DDL: the read ended after {} ms: {r:?}", took.as_millis());
    let e = r.expect_err("a read of a table held ACCESS EXCLUSIVE succeeded");
    assert!(policy_core::error::one_line(&e).contains("statement timeout"), "{e}");
    assert!(took < STATEMENT_TIMEOUT / 2, "the read waited {took:?}: not bounded by the settings timeout");
    tx.rollback().unwrap();

    // A fresh connection after the lock is gone reads the value (the failed read left nothing).
    let mut c = db::connect(&db).unwrap();
    assert_eq!(db::settings::apply_window_on(&mut c, SETTINGS_TIMEOUT).unwrap(), Some(Duration::from_secs(7)));
    assert_eq!(statement_timeout_of(&mut c), "20s");
}

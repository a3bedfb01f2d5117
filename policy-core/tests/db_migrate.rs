//! `pppgate db migrate` against a real PostgreSQL: versioned, idempotent, and FreeRADIUS 3.2's
//! standard tables exactly as FreeRADIUS ships them (compared with the installed schema.sql).

use policy_core::db::migrate;
use pppgate_testkit::PgServer;

const FREERADIUS_SCHEMA: &str = "/etc/freeradius/3.0/mods-config/sql/main/postgresql/schema.sql";

fn columns(c: &mut postgres::Client) -> Vec<String> {
    c.query(
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' ||
                COALESCE(column_default, '-') || ' ' || COALESCE(character_maximum_length::text, '-')
         FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = ANY($1) ORDER BY table_name, ordinal_position",
        &[&migrate::FREERADIUS_TABLES],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn indexes(c: &mut postgres::Client) -> Vec<String> {
    c.query(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1)
           AND indexname NOT LIKE 'pppgate\\_%' ORDER BY tablename, indexname",
        &[&migrate::FREERADIUS_TABLES],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn migrate_twice_is_a_no_op_the_second_time() {
    let pg = PgServer::new_unmigrated();
    let mut c = pg.client();
    assert_eq!(migrate::current_version(&mut c).unwrap(), 0);
    let first = migrate::migrate(&mut c).unwrap();
    assert_eq!(first, (1..=migrate::LATEST).collect::<Vec<_>>());
    let tables_before = pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
    let second = migrate::migrate(&mut c).unwrap();
    assert!(second.is_empty(), "second migrate applied {second:?}");
    assert_eq!(pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), tables_before);
    migrate::require_current(&mut c).unwrap();
    let st = migrate::status(&mut c).unwrap();
    assert_eq!(st.version, migrate::LATEST);
    assert_eq!(st.applied.len() as i32, migrate::LATEST);
    for (t, present) in &st.freeradius_tables {
        assert!(present, "FreeRADIUS table {t} missing after migrate");
    }
    // The UNIQUE login the connect path relies on.
    pg.psql("INSERT INTO vpn_connections (subaccount_login) VALUES ('alice')");
    let dup = pg.try_psql("INSERT INTO vpn_connections (subaccount_login) VALUES ('alice')");
    assert!(dup.unwrap_err().contains("duplicate key"), "a second row for one login was accepted");
}

#[test]
fn freeradius_tables_match_the_shipped_schema_and_migrate_keeps_an_existing_one() {
    let schema = std::fs::read_to_string(FREERADIUS_SCHEMA)
        .unwrap_or_else(|e| panic!("{FREERADIUS_SCHEMA}: {e} (install freeradius-postgresql)"));
    let pg = PgServer::new_unmigrated();
    pg.psql("CREATE DATABASE shipped");
    let dsn_shipped = format!("{} dbname=shipped", pg.dsn());
    let mut ours = pg.client();
    migrate::migrate(&mut ours).unwrap();
    let mut shipped = postgres::Client::connect(&dsn_shipped, postgres::NoTls).unwrap();
    shipped.batch_execute(&schema).unwrap();
    assert_eq!(columns(&mut ours), columns(&mut shipped), "columns differ from FreeRADIUS's schema.sql");
    assert_eq!(indexes(&mut ours), indexes(&mut shipped), "indexes differ from FreeRADIUS's schema.sql");
    assert_eq!(columns(&mut ours).len(), 29 + 5 + 5 + 5 + 5 + 4 + 8 + 9 + 2);

    // A database FreeRADIUS's own schema was loaded into: migrate adds pppgate's tables and
    // leaves FreeRADIUS's exactly as they were.
    shipped
        .batch_execute(
            "INSERT INTO radcheck (username, attribute, op, value) VALUES ('u', 'Cleartext-Password', ':=', 'p')",
        )
        .unwrap();
    let before = columns(&mut shipped);
    let applied = migrate::migrate(&mut shipped).unwrap();
    assert_eq!(applied, (1..=migrate::LATEST).collect::<Vec<_>>());
    assert_eq!(columns(&mut shipped), before);
    let n: i64 = shipped.query_one("SELECT count(*) FROM radcheck", &[]).unwrap().get(0);
    assert_eq!(n, 1, "migrate touched FreeRADIUS's data");
}

//! Rows tests need, written with plain SQL (what a panel would write).

use crate::pg::PgServer;

/// Inserts a customer; returns its id.
pub fn add_customer(pg: &PgServer, name: &str) -> i64 {
    pg.psql(&format!("INSERT INTO customers (name) VALUES ({}) RETURNING id", quote(name)))
        .parse()
        .expect("customer id")
}

/// Inserts a vpn_connection; returns its id. `down`/`up` in kbit/s (`None`: unlimited).
pub fn add_connection(
    pg: &PgServer,
    login: &str,
    status: &str,
    customer: Option<i64>,
    down: Option<u32>,
    up: Option<u32>,
) -> i64 {
    let n = |v: Option<String>| v.unwrap_or_else(|| "NULL".into());
    pg.psql(&format!(
        "INSERT INTO vpn_connections (subaccount_login, status, customer_id, rate_down_kbit, rate_up_kbit)
         VALUES ({}, {}, {}, {}, {}) RETURNING id",
        quote(login),
        quote(status),
        n(customer.map(|c| c.to_string())),
        n(down.map(|d| d.to_string())),
        n(up.map(|u| u.to_string())),
    ))
    .parse()
    .expect("connection id")
}

/// Adds a per-user route row (via the peer, main table unless `table`).
pub fn add_route(pg: &PgServer, conn: i64, dst: &str, table: Option<u32>) {
    pg.psql(&format!(
        "INSERT INTO vpn_routes (connection_id, destination, table_id) VALUES ({conn}, {}, {})",
        quote(dst),
        table.map(|t| t.to_string()).unwrap_or_else(|| "NULL".into())
    ));
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

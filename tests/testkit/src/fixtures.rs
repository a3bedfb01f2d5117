//! Rows tests need, written with plain SQL (what a panel would write).

use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Rows the session/RADIUS tests need (radacct as rlm_sql writes it, pppgate_sessions).
impl PgServer {
    /// A CLAIMED vpn_connections row; returns its id.
    pub fn connection(&self, login: &str) -> i64 {
        add_connection(self, login, "CLAIMED", None, None, None)
    }

    /// An open radacct row as rlm_sql writes it, started `age_s` before the database's now;
    /// returns its radacctid.
    pub fn acct_row(&self, user: &str, nas: &str, ip: Option<&str>, age_s: i64, session_id: &str) -> i64 {
        let unique = format!("u{}", ROW_COUNTER.fetch_add(1, Ordering::SeqCst));
        self.client()
            .query_one(
                "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, nasportid, framedipaddress,
                                      acctstarttime, acctupdatetime, acctinputoctets, acctoutputoctets, framedprotocol)
                 VALUES ($1, $2, $3, $4::text::inet, '0', $5::text::inet, now() - make_interval(secs => $6), NULL, 100, 200, 'PPP')
                 RETURNING radacctid",
                &[&session_id, &unique, &user, &nas, &ip, &(age_s as f64)],
            )
            .expect("insert radacct row")
            .get(0)
    }

    /// Sets a radacct row's last interim update to `age_s` before now.
    pub fn set_update_age(&self, radacctid: i64, age_s: i64) {
        self.client()
            .execute(
                "UPDATE radacct SET acctupdatetime = now() - make_interval(secs => $2) WHERE radacctid = $1",
                &[&radacctid, &(age_s as f64)],
            )
            .expect("update radacct row");
    }

    /// Whether the radacct row has no stop time.
    pub fn is_open(&self, radacctid: i64) -> bool {
        self.client()
            .query_one("SELECT acctstoptime IS NULL FROM radacct WHERE radacctid = $1", &[&radacctid])
            .expect("read radacct row")
            .get(0)
    }

    /// (terminate cause, session time, stop - start in s) of a closed radacct row.
    pub fn closed_fields(&self, radacctid: i64) -> (Option<String>, Option<i64>, Option<i64>) {
        let r = self
            .client()
            .query_one(
                "SELECT acctterminatecause, acctsessiontime,
                        extract(epoch FROM acctstoptime - acctstarttime)::bigint
                 FROM radacct WHERE radacctid = $1",
                &[&radacctid],
            )
            .expect("read radacct row");
        (r.get(0), r.get(1), r.get(2))
    }

    /// A pppgate_sessions row started `age_s` before now.
    #[allow(clippy::too_many_arguments)]
    pub fn pppgate_session(
        &self,
        key: &str,
        nas: &str,
        conn: i64,
        login: &str,
        ifname: &str,
        ip: &str,
        pid: u32,
        age_s: i64,
    ) {
        self.client()
            .execute(
                "INSERT INTO pppgate_sessions (session_key, nas_identity, connection_id, username, ppp_if, client_ip, pppd_pid, start_time)
                 VALUES ($1, $2, $3, $4, $5, $6::text::inet, $7, now() - make_interval(secs => $8))",
                &[&key, &nas, &conn, &login, &ifname, &ip, &(pid as i32), &(age_s as f64)],
            )
            .expect("insert pppgate_sessions row");
    }

    /// Whether the pppgate_sessions row has no stop time.
    pub fn session_open(&self, key: &str) -> bool {
        self.client()
            .query_one("SELECT stop_time IS NULL FROM pppgate_sessions WHERE session_key = $1", &[&key])
            .expect("read pppgate_sessions row")
            .get(0)
    }
}

static ROW_COUNTER: AtomicUsize = AtomicUsize::new(0);

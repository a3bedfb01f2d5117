//! FreeRADIUS's `radacct` as the janitor, checkrad and the Simultaneous-Use hook read and close
//! it, plus pppgate's own `pppgate_sessions`. Times are Unix seconds computed by PostgreSQL, so
//! every age comparison uses the database's clock (`db_now`), never the local one.

use std::net::{IpAddr, Ipv4Addr};

use postgres::types::Type;
use postgres::{Client, Row};
use serde::Serialize;

use crate::error::{Error, Result};

/// An open (`acctstoptime IS NULL`) radacct row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenRow {
    pub radacctid: i64,
    /// As stored (rlm_sql-escaped; see `radius::sqlname`).
    pub username: String,
    pub nas_ip: IpAddr,
    pub framed_ip: Option<Ipv4Addr>,
    pub acct_session_id: String,
    pub nas_port_id: Option<String>,
    /// acctstarttime (Unix s).
    pub start: Option<i64>,
    /// acctupdatetime (Unix s), the interim-update heartbeat.
    pub update: Option<i64>,
    /// Started before the NAS's last Accounting-On (`nasreload`): FreeRADIUS's own
    /// Simultaneous-Use queries do not count such rows.
    pub before_reload: bool,
}

const ROW_COLUMNS: &str = "a.radacctid, a.username, a.nasipaddress, a.framedipaddress, a.acctsessionid, a.nasportid,
       extract(epoch FROM a.acctstarttime)::bigint, extract(epoch FROM a.acctupdatetime)::bigint,
       NOT COALESCE(a.acctstarttime > n.reloadtime OR n.reloadtime IS NULL, false)";

fn open_row(r: &Row) -> OpenRow {
    let framed: Option<IpAddr> = r.get(3);
    OpenRow {
        radacctid: r.get(0),
        username: r.get::<_, Option<String>>(1).unwrap_or_default(),
        nas_ip: r.get(2),
        framed_ip: match framed {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        },
        acct_session_id: r.get(4),
        nas_port_id: r.get(5),
        start: r.get(6),
        update: r.get(7),
        before_reload: r.get(8),
    }
}

/// The database's clock (Unix s).
pub fn now(client: &mut Client) -> Result<i64> {
    let r = client.query_typed("SELECT extract(epoch FROM now())::bigint", &[]).map_err(Error::from_sql)?;
    Ok(r[0].get(0))
}

/// The database's clock and the vpn_connections id of a login (one round trip).
pub fn now_and_connection(client: &mut Client, login: Option<&str>) -> Result<(i64, Option<i64>)> {
    let r = client
        .query_typed(
            "SELECT extract(epoch FROM now())::bigint,
                    (SELECT id FROM vpn_connections WHERE subaccount_login = $1)",
            &[(&login, Type::TEXT)],
        )
        .map_err(Error::from_sql)?;
    Ok((r[0].get(0), r[0].get(1)))
}

/// Everything the on-demand path reads, in one round trip: the database's clock, the login's
/// vpn_connections id, the user's open radacct rows on every NAS (by the stored, escaped name),
/// and this NAS's open pppgate_sessions rows of that connection or login.
pub struct LoginState {
    pub db_now: i64,
    pub connection_id: Option<i64>,
    pub rows: Vec<OpenRow>,
    pub sessions: Vec<OpenSession>,
}

pub fn login_state(client: &mut Client, login: Option<&str>, username: &str, nas_identity: &str) -> Result<LoginState> {
    // One statement, three row kinds in shared columns (0: context, 1: radacct, 2: sessions).
    let rows = client
        .query_typed(
            "WITH ctx AS (SELECT extract(epoch FROM now())::bigint AS now,
                                 (SELECT id FROM vpn_connections WHERE subaccount_login = $1) AS conn)
             SELECT 0, ctx.now, ctx.conn, NULL::bigint, NULL::text, NULL::inet, NULL::inet, NULL::text,
                    NULL::text, NULL::bigint, NULL::bigint, NULL::bool, NULL::integer
             FROM ctx
             UNION ALL
             SELECT 1, NULL, NULL, a.radacctid, a.username, a.nasipaddress, a.framedipaddress, a.acctsessionid,
                    a.nasportid, extract(epoch FROM a.acctstarttime)::bigint,
                    extract(epoch FROM a.acctupdatetime)::bigint,
                    NOT COALESCE(a.acctstarttime > n.reloadtime OR n.reloadtime IS NULL, false), NULL
             FROM radacct a LEFT JOIN nasreload n ON n.nasipaddress = a.nasipaddress
             WHERE a.username = $2 AND a.acctstoptime IS NULL
             UNION ALL
             SELECT 2, NULL, p.connection_id, NULL, p.username, NULL, p.client_ip, p.session_key, p.ppp_if,
                    extract(epoch FROM p.start_time)::bigint, NULL, NULL, p.pppd_pid
             FROM pppgate_sessions p, ctx
             WHERE p.nas_identity = $3 AND p.stop_time IS NULL
               AND (p.connection_id = ctx.conn OR p.username = $1)",
            &[(&login, Type::TEXT), (&username, Type::TEXT), (&nas_identity, Type::TEXT)],
        )
        .map_err(Error::from_sql)?;
    let mut st = LoginState { db_now: 0, connection_id: None, rows: Vec::new(), sessions: Vec::new() };
    for r in &rows {
        match r.get::<_, i32>(0) {
            0 => {
                st.db_now = r.get(1);
                st.connection_id = r.get(2);
            }
            1 => {
                let framed: Option<IpAddr> = r.get(6);
                st.rows.push(OpenRow {
                    radacctid: r.get(3),
                    username: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    nas_ip: r.get(5),
                    framed_ip: match framed {
                        Some(IpAddr::V4(a)) => Some(a),
                        _ => None,
                    },
                    acct_session_id: r.get(7),
                    nas_port_id: r.get(8),
                    start: r.get(9),
                    update: r.get(10),
                    before_reload: r.get(11),
                });
            }
            _ => {
                let ip: Option<IpAddr> = r.get(6);
                st.sessions.push(OpenSession {
                    session_key: r.get(7),
                    connection_id: r.get(2),
                    username: r.get(4),
                    ppp_if: r.get(8),
                    client_ip: match ip {
                        Some(IpAddr::V4(a)) => Some(a),
                        _ => None,
                    },
                    pppd_pid: r.get(12),
                    start: r.get(9),
                });
            }
        }
    }
    st.rows.sort_by_key(|r| r.radacctid);
    st.sessions.sort_by(|a, b| a.session_key.cmp(&b.session_key));
    Ok(st)
}

/// Every open row of one NAS (uses FreeRADIUS's `radacct_bulk_close` index).
pub fn open_rows_of_nas(client: &mut Client, nas_ip: IpAddr) -> Result<Vec<OpenRow>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM radacct a LEFT JOIN nasreload n ON n.nasipaddress = a.nasipaddress
         WHERE a.nasipaddress = $1 AND a.acctstoptime IS NULL ORDER BY a.radacctid"
    );
    let rows = client.query_typed(&sql, &[(&nas_ip, Type::INET)]).map_err(Error::from_sql)?;
    Ok(rows.iter().map(open_row).collect())
}

/// Every open row of one user name as stored, on any NAS (uses `pppgate_radacct_open_user_idx`).
pub fn open_rows_of_user(client: &mut Client, username: &str) -> Result<Vec<OpenRow>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM radacct a LEFT JOIN nasreload n ON n.nasipaddress = a.nasipaddress
         WHERE a.username = $1 AND a.acctstoptime IS NULL ORDER BY a.radacctid"
    );
    let rows = client.query_typed(&sql, &[(&username, Type::TEXT)]).map_err(Error::from_sql)?;
    Ok(rows.iter().map(open_row).collect())
}

/// The open rows FreeRADIUS's checkrad call is about: user name as stored, NAS and
/// Acct-Session-Id (radius.so's ids are not unique, so this can be more than one row).
pub fn open_rows_for_checkrad(
    client: &mut Client,
    nas_ip: IpAddr,
    username: &str,
    acct_session_id: &str,
) -> Result<Vec<OpenRow>> {
    let sql = format!(
        "SELECT {ROW_COLUMNS} FROM radacct a LEFT JOIN nasreload n ON n.nasipaddress = a.nasipaddress
         WHERE a.username = $1 AND a.acctstoptime IS NULL AND a.nasipaddress = $2 AND a.acctsessionid = $3
         ORDER BY a.radacctid"
    );
    let rows = client
        .query_typed(&sql, &[(&username, Type::TEXT), (&nas_ip, Type::INET), (&acct_session_id, Type::TEXT)])
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(open_row).collect())
}

/// How one stale row is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub radacctid: i64,
    /// Stop time (Unix s); `None`: the database's now().
    pub stop: Option<i64>,
    /// Final counters when the accounting state knows them; `None` keeps what interim updates
    /// stored. Known counters never lower a stored value.
    pub input_octets: Option<i64>,
    pub output_octets: Option<i64>,
}

/// Closes rows of one NAS that are still open; returns the ids actually closed. A row a real
/// Accounting-Stop closed meanwhile is left alone, and the NAS condition is repeated in the
/// statement so a row of another NAS can never be touched, whatever the caller passed.
pub fn close_rows(client: &mut Client, nas_ip: IpAddr, closes: &[Close], cause: &str) -> Result<Vec<i64>> {
    if closes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = closes.iter().map(|c| c.radacctid).collect();
    let stops: Vec<Option<i64>> = closes.iter().map(|c| c.stop).collect();
    let ins: Vec<Option<i64>> = closes.iter().map(|c| c.input_octets).collect();
    let outs: Vec<Option<i64>> = closes.iter().map(|c| c.output_octets).collect();
    let rows = client
        .query_typed(
            "WITH s AS (
                SELECT id, COALESCE(stop, extract(epoch FROM now())::bigint) AS stop, inoct, outoct
                FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(id, stop, inoct, outoct))
             UPDATE radacct a SET
                acctstoptime = GREATEST(to_timestamp(s.stop), a.acctstarttime, a.acctupdatetime),
                acctupdatetime = GREATEST(to_timestamp(s.stop), a.acctstarttime, a.acctupdatetime),
                acctsessiontime = CASE WHEN a.acctstarttime IS NULL THEN a.acctsessiontime
                                  ELSE GREATEST(0, COALESCE(a.acctsessiontime, 0),
                                                extract(epoch FROM GREATEST(to_timestamp(s.stop), a.acctupdatetime))::bigint
                                                - extract(epoch FROM a.acctstarttime)::bigint) END,
                acctinputoctets = CASE WHEN s.inoct IS NULL THEN a.acctinputoctets
                                  ELSE GREATEST(COALESCE(a.acctinputoctets, 0), s.inoct) END,
                acctoutputoctets = CASE WHEN s.outoct IS NULL THEN a.acctoutputoctets
                                   ELSE GREATEST(COALESCE(a.acctoutputoctets, 0), s.outoct) END,
                acctterminatecause = $5
             FROM s
             WHERE a.radacctid = s.id AND a.acctstoptime IS NULL AND a.nasipaddress = $6
             RETURNING a.radacctid",
            &[
                (&ids, Type::INT8_ARRAY),
                (&stops, Type::INT8_ARRAY),
                (&ins, Type::INT8_ARRAY),
                (&outs, Type::INT8_ARRAY),
                (&cause, Type::TEXT),
                (&nas_ip, Type::INET),
            ],
        )
        .map_err(Error::from_sql)?;
    let mut closed: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    closed.sort_unstable();
    Ok(closed)
}

/// The subaccount_login of each connection id that has one.
pub fn logins_of(client: &mut Client, ids: &[i64]) -> Result<Vec<(i64, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query_typed("SELECT id, subaccount_login FROM vpn_connections WHERE id = ANY($1)", &[(&ids, Type::INT8_ARRAY)])
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// An open `pppgate_sessions` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenSession {
    pub session_key: String,
    pub connection_id: Option<i64>,
    pub username: Option<String>,
    pub ppp_if: String,
    pub client_ip: Option<Ipv4Addr>,
    pub pppd_pid: i32,
    pub start: i64,
}

fn open_session(r: &Row) -> OpenSession {
    let ip: IpAddr = r.get(4);
    OpenSession {
        session_key: r.get(0),
        connection_id: r.get(1),
        username: r.get(2),
        ppp_if: r.get(3),
        client_ip: match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        },
        pppd_pid: r.get(5),
        start: r.get(6),
    }
}

/// Open pppgate_sessions rows of this NAS; with `only`, those of one connection or login.
pub fn open_sessions(
    client: &mut Client,
    nas_identity: &str,
    only: Option<(Option<i64>, Option<&str>)>,
) -> Result<Vec<OpenSession>> {
    let base = "SELECT session_key, connection_id, username, ppp_if, client_ip, pppd_pid,
                       extract(epoch FROM start_time)::bigint
                FROM pppgate_sessions WHERE nas_identity = $1 AND stop_time IS NULL";
    let rows = match only {
        None => client.query_typed(&format!("{base} ORDER BY session_key"), &[(&nas_identity, Type::TEXT)]),
        Some((conn, login)) => client.query_typed(
            &format!("{base} AND (connection_id = $2 OR username = $3) ORDER BY session_key"),
            &[(&nas_identity, Type::TEXT), (&conn, Type::INT8), (&login, Type::TEXT)],
        ),
    }
    .map_err(Error::from_sql)?;
    Ok(rows.iter().map(open_session).collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseSession {
    pub session_key: String,
    pub stop: Option<i64>,
    pub bytes_in: Option<i64>,
    pub bytes_out: Option<i64>,
}

/// Closes open pppgate_sessions rows of this NAS; returns the keys actually closed.
pub fn close_sessions(
    client: &mut Client,
    nas_identity: &str,
    closes: &[CloseSession],
    cause: &str,
) -> Result<Vec<String>> {
    if closes.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<&str> = closes.iter().map(|c| c.session_key.as_str()).collect();
    let stops: Vec<Option<i64>> = closes.iter().map(|c| c.stop).collect();
    let ins: Vec<Option<i64>> = closes.iter().map(|c| c.bytes_in).collect();
    let outs: Vec<Option<i64>> = closes.iter().map(|c| c.bytes_out).collect();
    let rows = client
        .query_typed(
            "WITH s AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(k, stop, bin, bout))
             UPDATE pppgate_sessions p SET
                stop_time = GREATEST(COALESCE(to_timestamp(s.stop), now()), p.start_time, p.updated_at),
                terminate_cause = $5,
                bytes_in = GREATEST(p.bytes_in, COALESCE(s.bin, p.bytes_in)),
                bytes_out = GREATEST(p.bytes_out, COALESCE(s.bout, p.bytes_out)),
                updated_at = GREATEST(now(), p.updated_at)
             FROM s
             WHERE p.session_key = s.k AND p.stop_time IS NULL AND p.nas_identity = $6
             RETURNING p.session_key",
            &[
                (&keys, Type::TEXT_ARRAY),
                (&stops, Type::INT8_ARRAY),
                (&ins, Type::INT8_ARRAY),
                (&outs, Type::INT8_ARRAY),
                (&cause, Type::TEXT),
                (&nas_identity, Type::TEXT),
            ],
        )
        .map_err(Error::from_sql)?;
    let mut closed: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    closed.sort();
    Ok(closed)
}

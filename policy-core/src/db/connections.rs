//! `vpn_connections` and the facts the policy is computed from, fetched in one round trip.

use std::net::Ipv4Addr;
use std::str::FromStr;

use postgres::types::Type;
use postgres::Client;
use serde::{Deserialize, Serialize};

use crate::config::parse_ipv4_net;
use crate::error::{Error, Result};
use crate::policy::model::{ConnectionFacts, PbrSpec, QuotaPeriod, RouteSpec, Status};
use crate::radius::sqlname::pppd_user_name;

/// The columns of [`ConnectionFacts`], computed by the database in one statement.
const FACTS_SELECT: &str = concat!(
    r#"
SELECT c.id, c.customer_id, c.subaccount_login, c.status, c.rate_down_kbit, c.rate_up_kbit,
       c.quota_bytes, c.quota_period, extract(epoch FROM c.expires_at)::bigint,
       c.manual_block, COALESCE(cu.blocked, false),
       "#,
    usage_in_quota_period!(),
    r#",
       extract(epoch FROM now())::bigint,
       COALESCE((SELECT json_agg(json_build_object('dst', r.destination::text, 'gw', host(r.gateway),
                                                   'table', r.table_id, 'metric', r.metric) ORDER BY r.id)
                 FROM vpn_routes r WHERE r.connection_id = c.id), '[]'::json)::text,
       COALESCE((SELECT json_agg(json_build_object('name', p.name, 'table', p.table_id, 'via', host(p.next_hop),
                                                   'dev', p.dev, 'priority', p.priority) ORDER BY p.id)
                 FROM pbr_rules p WHERE p.connection_id = c.id), '[]'::json)::text
FROM vpn_connections c LEFT JOIN customers cu ON cu.id = c.customer_id
"#
);

#[derive(Deserialize)]
struct RouteJson {
    dst: String,
    gw: Option<String>,
    table: Option<i64>,
    metric: Option<i64>,
}

#[derive(Deserialize)]
struct PbrJson {
    name: String,
    table: i64,
    via: String,
    dev: String,
    priority: i64,
}

/// A number from SQL that must fit a `u32`; out of range is refused, never wrapped.
fn json_u32(what: &'static str, v: i64) -> std::result::Result<u32, (&'static str, String)> {
    u32::try_from(v).map_err(|_| (what, v.to_string()))
}

/// The per-user routes of a facts row (`json_agg` of `vpn_routes`, as text). An error names
/// the field and the value. The entry point of the `sql_facts` fuzz target.
pub fn routes_from_json(json: &str) -> std::result::Result<Vec<RouteSpec>, (&'static str, String)> {
    let routes: Vec<RouteJson> = serde_json::from_str(json).map_err(|e| ("routes", e.to_string()))?;
    routes
        .into_iter()
        .map(|r| {
            Ok(RouteSpec {
                dst: parse_ipv4_net(&r.dst).map_err(|e| ("route destination", e))?,
                gateway: r.gw.map(|g| Ipv4Addr::from_str(&g).map_err(|_| ("route gateway", g))).transpose()?,
                table: r.table.map(|t| json_u32("route table", t)).transpose()?,
                metric: r.metric.map(|m| json_u32("route metric", m)).transpose()?,
            })
        })
        .collect()
}

/// The policy-routing rules of a facts row (`json_agg` of `pbr_rules`, as text); see
/// [`routes_from_json`].
pub fn pbr_from_json(json: &str) -> std::result::Result<Vec<PbrSpec>, (&'static str, String)> {
    let pbr: Vec<PbrJson> = serde_json::from_str(json).map_err(|e| ("pbr rules", e.to_string()))?;
    pbr.into_iter()
        .map(|p| {
            Ok(PbrSpec {
                table: json_u32("pbr table", p.table)?,
                via: Ipv4Addr::from_str(&p.via).map_err(|_| ("pbr next hop", p.via.clone()))?,
                priority: json_u32("pbr priority", p.priority)?,
                name: p.name,
                dev: p.dev,
            })
        })
        .collect()
}

fn facts_from_row(row: &postgres::Row) -> Result<ConnectionFacts> {
    let id: i64 = row.get(0);
    let bad = |what: &'static str, v: String| Error::invalid(what, v, format!("in vpn_connections row {id}"));
    let status_s: String = row.get(3);
    let status = Status::from_str(&status_s).map_err(|_| bad("status", status_s.clone()))?;
    let period_s: String = row.get(7);
    let quota_period = QuotaPeriod::from_str(&period_s).map_err(|_| bad("quota_period", period_s.clone()))?;
    let routes_json: String = row.get(13);
    let pbr_json: String = row.get(14);
    let routes = routes_from_json(&routes_json).map_err(|(what, v)| bad(what, v))?;
    let pbr = pbr_from_json(&pbr_json).map_err(|(what, v)| bad(what, v))?;
    let rate = |v: Option<i32>| v.map(|x| x.max(0) as u32);
    Ok(ConnectionFacts {
        id,
        customer_id: row.get(1),
        login: row.get(2),
        status,
        rate_down_kbit: rate(row.get(4)),
        rate_up_kbit: rate(row.get(5)),
        quota_bytes: row.get::<_, Option<i64>>(6).map(|q| q.max(0) as u64),
        quota_period,
        expires_at: row.get(8),
        manual_block: row.get(9),
        customer_blocked: row.get(10),
        used_bytes: row.get::<_, i64>(11).max(0) as u64,
        db_now: row.get(12),
        routes,
        pbr,
    })
}

/// Result of the connect-path lookup by login.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LoginLookup {
    Found(Box<ConnectionFacts>),
    /// No row with this login in PREPROVISIONED/CLAIMED.
    NotFound,
    /// More than one row (impossible while subaccount_login is UNIQUE; still fails closed).
    Ambiguous(usize),
}

/// The connect-path lookup (R105): `subaccount_login = $1 AND status IN
/// ('PREPROVISIONED','CLAIMED')`, exactly one row, with the policy facts of that row.
/// One round trip (typed query, no separate prepare).
pub fn lookup_login(client: &mut Client, login: &str) -> Result<LoginLookup> {
    let sql = format!("{FACTS_SELECT} WHERE c.subaccount_login = $1 AND c.status IN ('PREPROVISIONED', 'CLAIMED')");
    let rows = client.query_typed(&sql, &[(&login, Type::TEXT)]).map_err(Error::from_sql)?;
    match rows.len() {
        0 => Ok(LoginLookup::NotFound),
        1 => Ok(LoginLookup::Found(Box::new(facts_from_row(&rows[0])?))),
        n => Ok(LoginLookup::Ambiguous(n)),
    }
}

/// Logins that are not printable ASCII (the only ones whose pppd rendering differs from
/// themselves), with `also` if it exists — the candidates for a rendering that contains `M-`.
fn logins_rendered_apart(client: &mut Client, also: &str) -> Result<Vec<String>> {
    let rows = client
        .query_typed(
            "SELECT subaccount_login FROM vpn_connections WHERE subaccount_login = $1 OR subaccount_login ~ '[^ -~]'",
            &[(&also, Type::TEXT)],
        )
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The login whose pppd rendering is `user_name` (the User-Name FreeRADIUS received), if it
/// could exist: a rendering without `M-` can only come from the printable-ASCII login equal to
/// it (no round trip; the caller's query finds out whether it exists); one with `M-` is looked
/// up among the logins that are not printable ASCII (and the ASCII login equal to it).
/// `connection add` keeps renderings unique (`check_rendering_free`).
pub fn login_for_user_name(client: &mut Client, user_name: &[u8]) -> Result<Option<String>> {
    let Ok(s) = std::str::from_utf8(user_name) else { return Ok(None) };
    if !s.contains("M-") {
        return Ok(Some(s.to_string()));
    }
    Ok(logins_rendered_apart(client, s)?.into_iter().find(|l| pppd_user_name(l.as_bytes()) == user_name))
}

/// Refuses `login` when another connection's login renders to the same User-Name in pppd
/// (`jM-CM-<rgen` typed in ASCII and `jürgen` reach FreeRADIUS as the same user).
pub fn check_rendering_free(client: &mut Client, login: &str) -> Result<()> {
    let mine = pppd_user_name(login.as_bytes());
    let Ok(rendered) = std::str::from_utf8(&mine) else { return Ok(()) };
    let clash = if rendered.contains("M-") {
        logins_rendered_apart(client, rendered)?
            .into_iter()
            .find(|l| l != login && pppd_user_name(l.as_bytes()) == mine)
    } else {
        // Only the ASCII login equal to the rendering itself can clash.
        let rows = client
            .query_typed(
                "SELECT subaccount_login FROM vpn_connections WHERE subaccount_login = $1",
                &[(&rendered, Type::TEXT)],
            )
            .map_err(Error::from_sql)?;
        rows.first().map(|r| r.get::<_, String>(0)).filter(|l| l != login)
    };
    match clash {
        Some(other) => Err(Error::invalid(
            "login",
            login,
            format!("reaches RADIUS as the same User-Name as the existing login {other:?} (pppd renders both as {rendered:?})"),
        )),
        None => Ok(()),
    }
}

/// Why a login did not match, for the log line (only called on the failure path).
pub fn explain_login(client: &mut Client, login: &str) -> Result<String> {
    let rows = client
        .query_typed("SELECT id, status FROM vpn_connections WHERE subaccount_login = $1", &[(&login, Type::TEXT)])
        .map_err(Error::from_sql)?;
    Ok(match rows.first() {
        None => "no vpn_connections row has this subaccount_login".to_string(),
        Some(r) => {
            let id: i64 = r.get(0);
            let status: String = r.get(1);
            format!("vpn_connections row {id} has status {status}, not PREPROVISIONED/CLAIMED")
        }
    })
}

/// The columns of [`FACTS_SELECT`] for many connections at once (reconcile): usage, routes and
/// policy-routing specs aggregated once per table and joined, instead of three subqueries per row
/// (measured at 10,000 connections: ~10 µs per row less).
const FACTS_BY_IDS: &str = concat!(
    r#"
WITH ids AS (SELECT DISTINCT unnest($1::int8[]) AS id),
     c AS (SELECT c.* FROM vpn_connections c JOIN ids ON ids.id = c.id),
     u AS (SELECT u.connection_id, sum("#,
    usage_octets!(),
    r#") AS used
           FROM vpn_usage u JOIN c ON c.id = u.connection_id
           WHERE u.day >= "#,
    quota_period_start!(),
    r#"
           GROUP BY u.connection_id),
     r AS (SELECT r.connection_id,
                  json_agg(json_build_object('dst', r.destination::text, 'gw', host(r.gateway),
                                             'table', r.table_id, 'metric', r.metric) ORDER BY r.id) AS routes
           FROM vpn_routes r JOIN ids ON ids.id = r.connection_id GROUP BY r.connection_id),
     p AS (SELECT p.connection_id,
                  json_agg(json_build_object('name', p.name, 'table', p.table_id, 'via', host(p.next_hop),
                                             'dev', p.dev, 'priority', p.priority) ORDER BY p.id) AS pbr
           FROM pbr_rules p JOIN ids ON ids.id = p.connection_id GROUP BY p.connection_id)
SELECT c.id, c.customer_id, c.subaccount_login, c.status, c.rate_down_kbit, c.rate_up_kbit,
       c.quota_bytes, c.quota_period, extract(epoch FROM c.expires_at)::bigint,
       c.manual_block, COALESCE(cu.blocked, false),
       COALESCE(u.used, 0)::bigint,
       extract(epoch FROM now())::bigint,
       COALESCE(r.routes, '[]'::json)::text,
       COALESCE(p.pbr, '[]'::json)::text
FROM c LEFT JOIN customers cu ON cu.id = c.customer_id
       LEFT JOIN u ON u.connection_id = c.id
       LEFT JOIN r ON r.connection_id = c.id
       LEFT JOIN p ON p.connection_id = c.id
ORDER BY c.id
"#
);

/// Facts for the given connection ids, whatever their status (reconcile and panel triggers).
pub fn facts_by_ids(client: &mut Client, ids: &[i64]) -> Result<Vec<ConnectionFacts>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    if ids.len() == 1 {
        let sql = format!("{FACTS_SELECT} WHERE c.id = $1");
        let rows = client.query_typed(&sql, &[(&ids[0], Type::INT8)]).map_err(Error::from_sql)?;
        return rows.iter().map(facts_from_row).collect();
    }
    let rows = client.query_typed(FACTS_BY_IDS, &[(&ids, Type::INT8_ARRAY)]).map_err(Error::from_sql)?;
    rows.iter().map(facts_from_row).collect()
}

/// Connection ids of a customer.
pub fn ids_of_customer(client: &mut Client, customer_id: i64) -> Result<Vec<i64>> {
    let rows = client
        .query_typed("SELECT id FROM vpn_connections WHERE customer_id = $1 ORDER BY id", &[(&customer_id, Type::INT8)])
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub fn exists(client: &mut Client, id: i64) -> Result<bool> {
    let rows = client
        .query_typed("SELECT 1 FROM vpn_connections WHERE id = $1", &[(&id, Type::INT8)])
        .map_err(Error::from_sql)?;
    Ok(!rows.is_empty())
}

pub fn customer_exists(client: &mut Client, id: i64) -> Result<bool> {
    let rows =
        client.query_typed("SELECT 1 FROM customers WHERE id = $1", &[(&id, Type::INT8)]).map_err(Error::from_sql)?;
    Ok(!rows.is_empty())
}

/// Login of a connection (for the janitor and diagnostics).
pub fn login_of(client: &mut Client, id: i64) -> Result<Option<String>> {
    let rows = client
        .query_typed("SELECT subaccount_login FROM vpn_connections WHERE id = $1", &[(&id, Type::INT8)])
        .map_err(Error::from_sql)?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// What `connection add` stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConnection {
    pub login: String,
    pub status: Status,
    pub customer_id: Option<i64>,
    pub rate_down_kbit: Option<u32>,
    pub rate_up_kbit: Option<u32>,
}

/// Inserts a connection; returns its id. A login that exists already is bad input.
/// The check for a login that renders like another one (`check_rendering_free`) and the insert
/// run under a lock on the table, so two concurrent adds cannot both pass it.
pub fn insert(client: &mut Client, c: &NewConnection) -> Result<i64> {
    client.batch_execute("BEGIN; LOCK TABLE vpn_connections IN SHARE ROW EXCLUSIVE MODE").map_err(Error::from_sql)?;
    let res = check_rendering_free(client, &c.login).and_then(|()| insert_row(client, c));
    let end = if res.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).map_err(Error::from_sql)?;
    res
}

fn insert_row(client: &mut Client, c: &NewConnection) -> Result<i64> {
    let rate = |v: Option<u32>| v.map(|x| x as i32);
    let row = client
        .query_one(
            "INSERT INTO vpn_connections (subaccount_login, status, customer_id, rate_down_kbit, rate_up_kbit)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[&c.login, &c.status.as_sql(), &c.customer_id, &rate(c.rate_down_kbit), &rate(c.rate_up_kbit)],
        )
        .map_err(|e| match e.code() {
            Some(code) if *code == postgres::error::SqlState::UNIQUE_VIOLATION => {
                Error::invalid("login", c.login.clone(), "already exists (subaccount_login is unique)")
            }
            _ => Error::from_sql(e),
        })?;
    Ok(row.get(0))
}

/// Policy facts `connection set` changes; `None` leaves a column as it is (`Some(None)` clears it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionChange {
    pub rate_down_kbit: Option<Option<u32>>,
    pub rate_up_kbit: Option<Option<u32>>,
    pub status: Option<Status>,
    pub quota_bytes: Option<Option<i64>>,
    /// Unix seconds.
    pub expires_at: Option<Option<i64>>,
    pub manual_block: Option<bool>,
}

impl ConnectionChange {
    pub fn is_empty(&self) -> bool {
        *self == ConnectionChange::default()
    }
}

/// Applies `ch` to connection `id` in one statement (and bumps `updated_at`); false when there
/// is no such connection. An empty change touches nothing.
pub fn update(client: &mut Client, id: i64, ch: &ConnectionChange) -> Result<bool> {
    if ch.is_empty() {
        return exists(client, id);
    }
    let mut sets: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn postgres::types::ToSql + Sync>> = Vec::new();
    let mut push = |col: &str, v: Box<dyn postgres::types::ToSql + Sync>| {
        params.push(v);
        sets.push(format!("{col} = ${}", params.len()));
    };
    if let Some(v) = ch.rate_down_kbit {
        push("rate_down_kbit", Box::new(v.map(|x| x as i32)));
    }
    if let Some(v) = ch.rate_up_kbit {
        push("rate_up_kbit", Box::new(v.map(|x| x as i32)));
    }
    if let Some(s) = ch.status {
        push("status", Box::new(s.as_sql()));
    }
    if let Some(v) = ch.quota_bytes {
        push("quota_bytes", Box::new(v));
    }
    if let Some(v) = ch.expires_at {
        params.push(Box::new(v.map(|t| t as f64)));
        sets.push(format!("expires_at = to_timestamp(${})", params.len()));
    }
    if let Some(b) = ch.manual_block {
        params.push(Box::new(b));
        sets.push(format!("manual_block = ${}", params.len()));
    }
    params.push(Box::new(id));
    let sql =
        format!("UPDATE vpn_connections SET {}, updated_at = now() WHERE id = ${}", sets.join(", "), params.len());
    let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
    let n = client.execute(&sql, &refs).map_err(Error::from_sql)?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_json_parses_exactly_or_not_at_all() {
        let r = routes_from_json(r#"[{"dst":"10.1.0.0/16","gw":"10.0.0.1","table":100,"metric":5},{"dst":"10.2.0.0/16","gw":null,"table":null,"metric":null}]"#).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].table, r[0].metric, r[1].gateway), (Some(100), Some(5), None));
        let p =
            pbr_from_json(r#"[{"name":"via-mt","table":200,"via":"10.9.0.1","dev":"wg0","priority":1000}]"#).unwrap();
        assert_eq!((p[0].table, p[0].priority), (200, 1000));
        assert_eq!(routes_from_json("[]").unwrap(), vec![]);
        // Out of u32's range: refused, never wrapped into another table (4294967550 would be 254).
        assert_eq!(
            routes_from_json(r#"[{"dst":"10.1.0.0/16","gw":null,"table":4294967550,"metric":null}]"#).unwrap_err().0,
            "route table"
        );
        assert_eq!(
            routes_from_json(r#"[{"dst":"10.1.0.0/16","gw":null,"table":null,"metric":-1}]"#).unwrap_err().0,
            "route metric"
        );
        assert_eq!(
            pbr_from_json(r#"[{"name":"x","table":-2,"via":"10.9.0.1","dev":"wg0","priority":1}]"#).unwrap_err().0,
            "pbr table"
        );
        assert_eq!(routes_from_json(r#"[{"dst":"10.1.0.1/16"}]"#).unwrap_err().0, "route destination");
        assert_eq!(routes_from_json("{").unwrap_err().0, "routes");
    }
}

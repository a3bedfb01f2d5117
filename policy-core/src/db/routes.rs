//! `vpn_routes`: per-user static routes (R901), SQL as the truth.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use postgres::types::Type;
use postgres::Client;
use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteRow {
    pub id: i64,
    pub connection_id: i64,
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub table: Option<u32>,
    pub metric: Option<u32>,
}

fn row(r: &postgres::Row) -> Result<RouteRow> {
    let dst: String = r.get(2);
    let gw: Option<String> = r.get(3);
    Ok(RouteRow {
        id: r.get(0),
        connection_id: r.get(1),
        destination: crate::config::parse_ipv4_net(&dst)
            .map_err(|e| Error::invalid("route destination", dst.clone(), e))?,
        gateway: gw
            .map(|g| g.parse().map_err(|_| Error::invalid("route gateway", g.clone(), "not IPv4")))
            .transpose()?,
        table: r.get::<_, Option<i32>>(4).map(|t| t as u32),
        metric: r.get::<_, Option<i32>>(5).map(|m| m as u32),
    })
}

const COLS: &str = "id, connection_id, destination::text, host(gateway), table_id, metric";

/// Adds a route; an identical one already present is not an error (idempotent) and returns
/// `false`.
pub fn add(
    client: &mut Client,
    conn: i64,
    dst: Ipv4Net,
    gw: Option<Ipv4Addr>,
    table: Option<u32>,
    metric: Option<u32>,
) -> Result<bool> {
    let dst_s = dst.to_string();
    let gw_s = gw.map(|g| g.to_string());
    let table_i = table.map(|t| t as i64);
    let metric_i = metric.map(|m| m as i64);
    let n = client
        .execute(
            "INSERT INTO vpn_routes (connection_id, destination, gateway, table_id, metric)
             VALUES ($1, $2::text::cidr, $3::text::inet, $4::bigint::integer, $5::bigint::integer)
             ON CONFLICT (connection_id, destination, COALESCE(table_id, 254)) DO UPDATE
               SET gateway = excluded.gateway, metric = excluded.metric
               WHERE vpn_routes.gateway IS DISTINCT FROM excluded.gateway
                  OR vpn_routes.metric IS DISTINCT FROM excluded.metric",
            &[&conn, &dst_s, &gw_s, &table_i, &metric_i],
        )
        .map_err(Error::from_sql)?;
    Ok(n > 0)
}

/// Other connections that already route `dst` in `table` (main when `None`). The kernel keeps
/// one route per destination and table, so a second owner could never be applied.
pub fn other_owners(client: &mut Client, conn: i64, dst: Ipv4Net, table: Option<u32>) -> Result<Vec<i64>> {
    let dst_s = dst.to_string();
    let table_i = table.map(|t| t as i64).unwrap_or(254);
    let rows = client
        .query(
            "SELECT DISTINCT connection_id FROM vpn_routes WHERE connection_id <> $1 AND destination = $2::text::cidr
               AND COALESCE(table_id, 254) = $3::bigint ORDER BY connection_id",
            &[&conn, &dst_s, &table_i],
        )
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes the route of `conn` to `dst` in `table` (main when `None`); `false` when absent.
pub fn del(client: &mut Client, conn: i64, dst: Ipv4Net, table: Option<u32>) -> Result<bool> {
    let dst_s = dst.to_string();
    let table_i = table.map(|t| t as i64).unwrap_or(254);
    let n = client
        .execute(
            "DELETE FROM vpn_routes WHERE connection_id = $1 AND destination = $2::text::cidr
               AND COALESCE(table_id, 254) = $3::bigint",
            &[&conn, &dst_s, &table_i],
        )
        .map_err(Error::from_sql)?;
    Ok(n > 0)
}

pub fn list(client: &mut Client, conn: Option<i64>) -> Result<Vec<RouteRow>> {
    let rows = match conn {
        Some(c) => client.query_typed(
            &format!("SELECT {COLS} FROM vpn_routes WHERE connection_id = $1 ORDER BY connection_id, id"),
            &[(&c, Type::INT8)],
        ),
        None => client.query_typed(&format!("SELECT {COLS} FROM vpn_routes ORDER BY connection_id, id"), &[]),
    }
    .map_err(Error::from_sql)?;
    rows.iter().map(row).collect()
}

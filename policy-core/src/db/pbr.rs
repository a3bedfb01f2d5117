//! `pbr_rules`: policy routing (R902), SQL as the truth.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use postgres::Client;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::policy::planner::SubnetPbr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PbrRow {
    pub id: i64,
    pub name: String,
    pub source: Option<Ipv4Net>,
    pub connection_id: Option<i64>,
    pub table: u32,
    pub via: Ipv4Addr,
    pub dev: String,
    pub priority: u32,
}

/// What `pbr add` stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPbr {
    pub name: String,
    pub source: Option<Ipv4Net>,
    pub connection_id: Option<i64>,
    pub table: u32,
    pub via: Ipv4Addr,
    pub dev: String,
    pub priority: u32,
}

const COLS: &str = "id, name, source::text, connection_id, table_id, host(next_hop), dev, priority";

fn row(r: &postgres::Row) -> Result<PbrRow> {
    let src: Option<String> = r.get(2);
    let via: String = r.get(5);
    Ok(PbrRow {
        id: r.get(0),
        name: r.get(1),
        source: src
            .map(|s| crate::config::parse_ipv4_net(&s).map_err(|e| Error::invalid("pbr source", s.clone(), e)))
            .transpose()?,
        connection_id: r.get(3),
        table: r.get::<_, i32>(4) as u32,
        via: via.parse().map_err(|_| Error::invalid("pbr next hop", via.clone(), "not IPv4"))?,
        dev: r.get(6),
        priority: r.get::<_, i32>(7) as u32,
    })
}

pub fn list(client: &mut Client) -> Result<Vec<PbrRow>> {
    let rows =
        client.query(&format!("SELECT {COLS} FROM pbr_rules ORDER BY priority, id"), &[]).map_err(Error::from_sql)?;
    rows.iter().map(row).collect()
}

pub fn get(client: &mut Client, name: &str) -> Result<Option<PbrRow>> {
    let rows =
        client.query(&format!("SELECT {COLS} FROM pbr_rules WHERE name = $1"), &[&name]).map_err(Error::from_sql)?;
    rows.first().map(row).transpose()
}

/// Inserts or updates the rule `name`. Refuses a second, different default route for a table
/// another rule already uses (one table has one default route). Returns whether anything changed.
pub fn upsert(client: &mut Client, r: &NewPbr) -> Result<bool> {
    let mut tx = client.transaction().map_err(Error::from_sql)?;
    let table = r.table as i64;
    let conflict = tx
        .query(
            "SELECT name, host(next_hop), dev FROM pbr_rules WHERE table_id = $1::bigint::integer AND name <> $2
               AND (host(next_hop) <> $3 OR dev <> $4)",
            &[&table, &r.name, &r.via.to_string(), &r.dev],
        )
        .map_err(Error::from_sql)?;
    if let Some(c) = conflict.first() {
        let other: String = c.get(0);
        let via: String = c.get(1);
        let dev: String = c.get(2);
        return Err(Error::invalid(
            "pbr rule",
            r.name.clone(),
            format!("table {} already routes via {via} dev {dev} for rule {other:?}", r.table),
        ));
    }
    let src = r.source.map(|s| s.to_string());
    let n = tx
        .execute(
            "INSERT INTO pbr_rules (name, source, connection_id, table_id, next_hop, dev, priority)
             VALUES ($1, $2::text::cidr, $3, $4::bigint::integer, $5::text::inet, $6, $7::bigint::integer)
             ON CONFLICT (name) DO UPDATE SET source = excluded.source, connection_id = excluded.connection_id,
               table_id = excluded.table_id, next_hop = excluded.next_hop, dev = excluded.dev, priority = excluded.priority
             WHERE (pbr_rules.source, pbr_rules.connection_id, pbr_rules.table_id, pbr_rules.next_hop, pbr_rules.dev, pbr_rules.priority)
               IS DISTINCT FROM (excluded.source, excluded.connection_id, excluded.table_id, excluded.next_hop, excluded.dev, excluded.priority)",
            &[&r.name, &src, &r.connection_id, &table, &r.via.to_string(), &r.dev, &(r.priority as i64)],
        )
        .map_err(Error::from_sql)?;
    tx.commit().map_err(Error::from_sql)?;
    Ok(n > 0)
}

pub fn delete(client: &mut Client, name: &str) -> Result<Option<PbrRow>> {
    let rows = client
        .query(&format!("DELETE FROM pbr_rules WHERE name = $1 RETURNING {COLS}"), &[&name])
        .map_err(Error::from_sql)?;
    rows.first().map(row).transpose()
}

/// The subnet policy-routing rules (those with a source), as the planner wants them.
pub fn subnet_rules(client: &mut Client) -> Result<Vec<SubnetPbr>> {
    let rows = client
        .query(
            "SELECT name, source::text, table_id, host(next_hop), dev, priority FROM pbr_rules
             WHERE source IS NOT NULL ORDER BY id",
            &[],
        )
        .map_err(Error::from_sql)?;
    rows.iter()
        .map(|r| {
            let src: String = r.get(1);
            let via: String = r.get(3);
            Ok(SubnetPbr {
                name: r.get(0),
                from: crate::config::parse_ipv4_net(&src).map_err(|e| Error::invalid("pbr source", src.clone(), e))?,
                table: r.get::<_, i32>(2) as u32,
                via: via.parse().map_err(|_| Error::invalid("pbr next hop", via.clone(), "not an IPv4 address"))?,
                dev: r.get(4),
                priority: r.get::<_, i32>(5) as u32,
            })
        })
        .collect()
}

//! `wg_servers`, `wg_tenants`, `wg_routers`, `wg_address_quarantine`: WireGuard for tenants.
//!
//! Allocation is race-free across processes and across concentrators sharing the database, and
//! the database enforces it: UNIQUE(octet) and UNIQUE(address) make a duplicate impossible, and a
//! transaction-scoped advisory lock (one for tenant subnets, one per tenant for its addresses)
//! serialises the "lowest free" search so concurrent calls do not fail on the constraint either.
//! Keys arrive sealed (wg::seal); nothing here sees a plaintext private or preshared key.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use postgres::{Client, Transaction};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::wg::addr;
use crate::wg::seal::Sealed;

/// Advisory-lock namespace (first key of the two-key form): "pgwg".
const LOCK_NS: i32 = 0x7067_7767;
/// Second key for tenant-subnet allocation; per-tenant address locks use the octet (100..254).
const LOCK_TENANTS: i32 = 0;
/// Advisory-lock namespace of routed networks per server interface ("pgwr"; second key: the
/// server id).
const LOCK_NS_ROUTES: i32 = 0x7067_7772;

fn sql(e: postgres::Error) -> Error {
    Error::from_sql(e)
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";

fn ts(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', {TS})")
}

// ---------------------------------------------------------------- servers

#[derive(Debug, Clone, Serialize)]
pub struct ServerRow {
    pub id: i64,
    pub nas_identity: String,
    pub ifname: String,
    pub public_key: String,
    #[serde(skip)]
    pub private_key: Sealed,
    pub listen_port: u16,
    pub endpoint: String,
    pub created_at: String,
}

fn server_cols() -> String {
    format!(
        "id, nas_identity, ifname, public_key, private_key_sealed, key_id, listen_port, endpoint, {}",
        ts("created_at")
    )
}

fn server_row(r: &postgres::Row) -> ServerRow {
    ServerRow {
        id: r.get(0),
        nas_identity: r.get(1),
        ifname: r.get(2),
        public_key: r.get(3),
        private_key: Sealed { blob: r.get(4), key_id: r.get(5) },
        listen_port: r.get::<_, i32>(6) as u16,
        endpoint: r.get(7),
        created_at: r.get(8),
    }
}

pub fn server(client: &mut Client, nas: &str, ifname: &str) -> Result<Option<ServerRow>> {
    let rows = client
        .query(
            &format!("SELECT {} FROM wg_servers WHERE nas_identity = $1 AND ifname = $2", server_cols()),
            &[&nas, &ifname],
        )
        .map_err(sql)?;
    Ok(rows.first().map(server_row))
}

pub fn servers(client: &mut Client) -> Result<Vec<ServerRow>> {
    let rows = client
        .query(&format!("SELECT {} FROM wg_servers ORDER BY nas_identity, ifname", server_cols()), &[])
        .map_err(sql)?;
    Ok(rows.iter().map(server_row).collect())
}

/// Inserts the server interface unless it exists; returns the row and whether it was created.
pub fn ensure_server(
    client: &mut Client,
    nas: &str,
    ifname: &str,
    public_key: &str,
    private_key: &Sealed,
    listen_port: u16,
    endpoint: &str,
) -> Result<(ServerRow, bool)> {
    let n = client
        .execute(
            "INSERT INTO wg_servers (nas_identity, ifname, public_key, private_key_sealed, key_id, listen_port, endpoint)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (nas_identity, ifname) DO NOTHING",
            &[&nas, &ifname, &public_key, &private_key.blob, &private_key.key_id, &(listen_port as i32), &endpoint],
        )
        .map_err(sql)?;
    let row =
        server(client, nas, ifname)?.ok_or_else(|| Error::NotFound { what: "wireguard server", id: ifname.into() })?;
    Ok((row, n > 0))
}

/// Updates the port and endpoint of a server row (configuration changed) ; true if changed.
pub fn update_server_endpoint(client: &mut Client, id: i64, listen_port: u16, endpoint: &str) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE wg_servers SET listen_port = $2, endpoint = $3, updated_at = now()
             WHERE id = $1 AND (listen_port, endpoint) IS DISTINCT FROM ($2, $3)",
            &[&id, &(listen_port as i32), &endpoint],
        )
        .map_err(sql)?;
    Ok(n > 0)
}

// ---------------------------------------------------------------- tenants

#[derive(Debug, Clone, Serialize)]
pub struct TenantRow {
    pub tenant_id: i64,
    pub octet: u8,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub name: Option<String>,
    pub routers: i64,
    pub created_at: String,
}

fn tenant_sql(filter: &str) -> String {
    format!(
        "SELECT t.tenant_id, t.octet, t.name, (SELECT count(*) FROM wg_routers r WHERE r.tenant_id = t.tenant_id), {}
         FROM wg_tenants t {filter} ORDER BY t.octet",
        ts("t.created_at")
    )
}

fn tenant_row(r: &postgres::Row) -> TenantRow {
    let octet = r.get::<_, i16>(1) as u8;
    TenantRow {
        tenant_id: r.get(0),
        octet,
        subnet: addr::subnet(octet),
        gateway: addr::gateway(octet),
        name: r.get(2),
        routers: r.get(3),
        created_at: r.get(4),
    }
}

pub fn tenant(client: &mut Client, tenant_id: i64) -> Result<Option<TenantRow>> {
    let rows = client.query(&tenant_sql("WHERE t.tenant_id = $1"), &[&tenant_id]).map_err(sql)?;
    Ok(rows.first().map(tenant_row))
}

pub fn tenants(client: &mut Client) -> Result<Vec<TenantRow>> {
    let rows = client.query(&tenant_sql(""), &[]).map_err(sql)?;
    Ok(rows.iter().map(tenant_row).collect())
}

/// The tenant's octet, allocating the lowest free subnet on first use. Returns (octet, created).
fn ensure_tenant_tx(tx: &mut Transaction<'_>, tenant_id: i64, name: Option<&str>) -> Result<(u8, bool)> {
    if let Some(r) = tx.query_opt("SELECT octet FROM wg_tenants WHERE tenant_id = $1", &[&tenant_id]).map_err(sql)? {
        return Ok((r.get::<_, i16>(0) as u8, false));
    }
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &LOCK_TENANTS]).map_err(sql)?;
    // Another transaction may have created it while we waited for the lock.
    if let Some(r) = tx.query_opt("SELECT octet FROM wg_tenants WHERE tenant_id = $1", &[&tenant_id]).map_err(sql)? {
        return Ok((r.get::<_, i16>(0) as u8, false));
    }
    let row = tx
        .query_opt(
            "INSERT INTO wg_tenants (tenant_id, octet, name)
             SELECT $1, o, $2 FROM generate_series($3::integer, $4::integer) o
             WHERE NOT EXISTS (SELECT 1 FROM wg_tenants t WHERE t.octet = o)
             ORDER BY o LIMIT 1
             RETURNING octet",
            &[&tenant_id, &name, &(addr::FIRST_OCTET as i32), &(addr::LAST_OCTET as i32)],
        )
        .map_err(sql)?;
    match row {
        Some(r) => Ok((r.get::<_, i16>(0) as u8, true)),
        None => Err(Error::invalid(
            "tenant",
            tenant_id.to_string(),
            format!(
                "no tenant subnet left: all {} subnets 10.{}.0.0/16-10.{}.0.0/16 are allocated",
                addr::TENANT_CAPACITY,
                addr::FIRST_OCTET,
                addr::LAST_OCTET
            ),
        )),
    }
}

/// `wg tenant add`: allocates the tenant's subnet (idempotent). Returns the row and whether it
/// was created now.
pub fn ensure_tenant(client: &mut Client, tenant_id: i64, name: Option<&str>) -> Result<(TenantRow, bool)> {
    let mut tx = client.transaction().map_err(sql)?;
    let (_, created) = ensure_tenant_tx(&mut tx, tenant_id, name)?;
    if !created {
        if let Some(n) = name {
            tx.execute(
                "UPDATE wg_tenants SET name = $2 WHERE tenant_id = $1 AND name IS DISTINCT FROM $2",
                &[&tenant_id, &n],
            )
            .map_err(sql)?;
        }
    }
    tx.commit().map_err(sql)?;
    let row =
        tenant(client, tenant_id)?.ok_or_else(|| Error::NotFound { what: "tenant", id: tenant_id.to_string() })?;
    Ok((row, created))
}

/// `wg tenant del`: only a tenant without routers; its subnet becomes free again (its former
/// router addresses stay in quarantine).
pub fn delete_tenant(client: &mut Client, tenant_id: i64) -> Result<TenantRow> {
    let mut tx = client.transaction().map_err(sql)?;
    let Some(row) = tx.query_opt(&tenant_sql("WHERE t.tenant_id = $1"), &[&tenant_id]).map_err(sql)? else {
        return Err(Error::NotFound { what: "tenant", id: tenant_id.to_string() });
    };
    let t = tenant_row(&row);
    if t.routers > 0 {
        return Err(Error::invalid(
            "tenant",
            tenant_id.to_string(),
            format!("has {} router(s); delete them first (wg router del)", t.routers),
        ));
    }
    tx.execute("DELETE FROM wg_tenants WHERE tenant_id = $1", &[&tenant_id]).map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(t)
}

// ---------------------------------------------------------------- routers

/// What `wg router add` stores (keys already sealed for this tenant and router).
#[derive(Debug, Clone)]
pub struct NewRouter {
    pub router_id: i64,
    pub tenant_id: i64,
    pub tenant_name: Option<String>,
    pub server_id: i64,
    pub name: Option<String>,
    pub public_key: String,
    pub private_key: Sealed,
    pub psk: Sealed,
    pub interface_name: String,
    pub listen_port: u16,
    pub keepalive: u16,
    pub routed_networks: Vec<Ipv4Net>,
    /// Router side allowed-address beyond its tenant subnet.
    pub extra_allowed: Vec<Ipv4Net>,
    pub dns: Vec<Ipv4Addr>,
    pub quarantine_s: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouterRow {
    pub router_id: i64,
    pub tenant_id: i64,
    pub octet: u8,
    pub server_id: i64,
    pub server_ifname: String,
    pub name: Option<String>,
    pub address: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub public_key: String,
    #[serde(skip)]
    pub private_key: Sealed,
    #[serde(skip)]
    pub psk: Sealed,
    pub interface_name: String,
    pub listen_port: u16,
    pub keepalive: u16,
    /// Networks the concentrator routes to this router (its AllowedIPs beyond its address).
    pub routed_networks: Vec<Ipv4Net>,
    /// What the router sends into the tunnel: its tenant subnet plus these.
    pub router_allowed: Vec<Ipv4Net>,
    pub dns: Vec<Ipv4Addr>,
    pub status: String,
    pub last_handshake: Option<String>,
    /// Seconds since the latest handshake (database clock).
    pub handshake_age_s: Option<i64>,
    pub endpoint: Option<String>,
    pub rx_bytes: i64,
    pub tx_bytes: i64,
    pub stats_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl RouterRow {
    /// The router side's allowed-address list: its tenant subnet first, then the extra networks.
    pub fn allowed_on_router(&self) -> Vec<Ipv4Net> {
        let mut v = vec![self.subnet];
        v.extend(self.router_allowed.iter().copied().filter(|n| *n != self.subnet));
        v
    }

    /// The server side's AllowedIPs for this router: its address, then its routed networks.
    pub fn allowed_on_server(&self) -> Vec<Ipv4Net> {
        let mut v = vec![Ipv4Net::new(self.address, 32).expect("32 is valid")];
        v.extend(self.routed_networks.iter().copied());
        v
    }
}

fn router_cols() -> String {
    format!(
        "r.router_id, r.tenant_id, r.octet, r.server_id, s.ifname, r.name, host(r.address), r.public_key,
         r.private_key_sealed, r.psk_sealed, r.key_id, r.interface_name, r.listen_port, r.keepalive_s,
         r.routed_networks::text[], r.router_allowed::text[], ARRAY(SELECT host(d) FROM unnest(r.dns) d),
         r.status, {}, extract(epoch FROM now() - r.last_handshake)::bigint, r.endpoint, r.rx_bytes, r.tx_bytes,
         {}, {}, {}",
        ts("r.last_handshake"),
        ts("r.stats_at"),
        ts("r.created_at"),
        ts("r.updated_at")
    )
}

fn nets(v: Vec<String>, what: &'static str) -> Result<Vec<Ipv4Net>> {
    v.into_iter().map(|s| crate::config::parse_ipv4_net(&s).map_err(|e| Error::invalid(what, s.clone(), e))).collect()
}

fn router_row(r: &postgres::Row) -> Result<RouterRow> {
    let octet = r.get::<_, i16>(2) as u8;
    let address: String = r.get(6);
    let key_id: i32 = r.get(10);
    Ok(RouterRow {
        router_id: r.get(0),
        tenant_id: r.get(1),
        octet,
        server_id: r.get(3),
        server_ifname: r.get(4),
        name: r.get(5),
        address: address.parse().map_err(|_| Error::invalid("router address", address.clone(), "not IPv4"))?,
        subnet: addr::subnet(octet),
        public_key: r.get(7),
        private_key: Sealed { blob: r.get(8), key_id },
        psk: Sealed { blob: r.get(9), key_id },
        interface_name: r.get(11),
        listen_port: r.get::<_, i32>(12) as u16,
        keepalive: r.get::<_, i32>(13) as u16,
        routed_networks: nets(r.get(14), "routed network")?,
        router_allowed: nets(r.get(15), "router allowed network")?,
        dns: r
            .get::<_, Vec<String>>(16)
            .into_iter()
            .map(|s| s.parse().map_err(|_| Error::invalid("dns", s.clone(), "not IPv4")))
            .collect::<Result<_>>()?,
        status: r.get(17),
        last_handshake: r.get(18),
        handshake_age_s: r.get(19),
        endpoint: r.get(20),
        rx_bytes: r.get(21),
        tx_bytes: r.get(22),
        stats_at: r.get(23),
        created_at: r.get(24),
        updated_at: r.get(25),
    })
}

fn router_query(filter: &str) -> String {
    format!("SELECT {} FROM wg_routers r JOIN wg_servers s ON s.id = r.server_id {filter}", router_cols())
}

pub fn router(client: &mut Client, router_id: i64) -> Result<Option<RouterRow>> {
    let rows = client.query(&router_query("WHERE r.router_id = $1"), &[&router_id]).map_err(sql)?;
    rows.first().map(router_row).transpose()
}

/// Routers, optionally of one tenant, ordered by address.
pub fn routers(client: &mut Client, tenant_id: Option<i64>) -> Result<Vec<RouterRow>> {
    let rows = client
        .query(&router_query("WHERE ($1::bigint IS NULL OR r.tenant_id = $1) ORDER BY r.address"), &[&tenant_id])
        .map_err(sql)?;
    rows.iter().map(router_row).collect()
}

/// Routers on one server interface (reconcile's desired peers).
pub fn routers_of_server(client: &mut Client, server_id: i64) -> Result<Vec<RouterRow>> {
    let rows = client.query(&router_query("WHERE r.server_id = $1 ORDER BY r.address"), &[&server_id]).map_err(sql)?;
    rows.iter().map(router_row).collect()
}

/// The lowest free router index of a tenant subnet (see wg::addr): not taken by a router, not in
/// quarantine. Called with the tenant's advisory lock held.
fn lowest_free_index(tx: &mut Transaction<'_>, octet: u8, quarantine_s: u64) -> Result<Option<u32>> {
    let row = tx
        .query_one(
            "WITH b AS (SELECT '10.0.0.0'::inet + ($1::bigint << 16) AS base),
             taken AS (
               SELECT r.address - b.base AS i FROM wg_routers r, b
                WHERE r.address BETWEEN b.base + 257 AND b.base + 65534
               UNION ALL
               SELECT q.address - b.base FROM wg_address_quarantine q, b
                WHERE q.address BETWEEN b.base + 257 AND b.base + 65534
                  AND q.released_at > now() - make_interval(secs => $2::bigint::double precision)
             ),
             cand AS (
               SELECT 257::bigint AS i
               UNION ALL
               SELECT CASE WHEN (i & 255) >= 254 THEN (i | 255) + 2 ELSE i + 1 END FROM taken
             )
             SELECT min(c.i) FROM cand c
              WHERE c.i <= 65534 AND (c.i & 255) NOT IN (0, 255)
                AND NOT EXISTS (SELECT 1 FROM taken t WHERE t.i = c.i)",
            &[&(octet as i64), &(quarantine_s as i64)],
        )
        .map_err(sql)?;
    Ok(row.get::<_, Option<i64>>(0).map(|i| i as u32))
}

/// The outcome of `wg router add`.
#[derive(Debug, Clone)]
pub enum Added {
    Created(RouterRow),
    /// The router existed already for this tenant: nothing changed.
    Existing(RouterRow),
}

/// `wg router add`: allocates the tenant subnet on first use and the lowest free address, in one
/// transaction. Idempotent for the same router and tenant; the same router id under another
/// tenant is refused.
pub fn add_router(client: &mut Client, r: &NewRouter) -> Result<Added> {
    if let Some(existing) = router(client, r.router_id)? {
        return same_tenant(existing, r.tenant_id).map(Added::Existing);
    }
    let mut tx = client.transaction().map_err(sql)?;
    let (octet, _) = ensure_tenant_tx(&mut tx, r.tenant_id, r.tenant_name.as_deref())?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS, &(octet as i32)]).map_err(sql)?;
    if tx.query_opt("SELECT 1 FROM wg_routers WHERE router_id = $1", &[&r.router_id]).map_err(sql)?.is_some() {
        // Added by a concurrent call while we waited.
        drop(tx);
        let existing = router(client, r.router_id)?
            .ok_or_else(|| Error::NotFound { what: "router", id: r.router_id.to_string() })?;
        return same_tenant(existing, r.tenant_id).map(Added::Existing);
    }
    let Some(index) = lowest_free_index(&mut tx, octet, r.quarantine_s)? else {
        let q: i64 = tx
            .query_one(
                "SELECT count(*) FROM wg_address_quarantine
                  WHERE address << $1::text::inet AND released_at > now() - make_interval(secs => $2::bigint::double precision)",
                &[&addr::subnet(octet).to_string(), &(r.quarantine_s as i64)],
            )
            .map_err(sql)?
            .get(0);
        return Err(Error::invalid(
            "tenant",
            r.tenant_id.to_string(),
            format!(
                "subnet {} is exhausted: all {} router addresses are taken ({q} of them in quarantine)",
                addr::subnet(octet),
                addr::ROUTER_CAPACITY
            ),
        ));
    };
    let address = addr::address(octet, index).to_string();
    let routed: Vec<String> = r.routed_networks.iter().map(|n| n.to_string()).collect();
    if !routed.is_empty() {
        // WireGuard maps a network to exactly one peer of an interface: a network another router
        // of this server already routes would silently move to the new peer, and reconcile would
        // never converge. Serialized per server interface (after the tenant's lock, in the same
        // order everywhere).
        tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_NS_ROUTES, &((r.server_id & 0x7fff_ffff) as i32)])
            .map_err(sql)?;
        if let Some(row) = tx
            .query_opt(
                "SELECT r.router_id, n::text FROM wg_routers r, unnest(r.routed_networks) n
                  WHERE r.server_id = $1 AND n = ANY($2::text[]::cidr[])
                  ORDER BY r.router_id LIMIT 1",
                &[&r.server_id, &routed],
            )
            .map_err(sql)?
        {
            let (other, net): (i64, String) = (row.get(0), row.get(1));
            return Err(Error::invalid(
                "route",
                net,
                format!("is already routed to router {other} on this server interface (WireGuard maps a network to one peer)"),
            ));
        }
    }
    let allowed: Vec<String> = r.extra_allowed.iter().map(|n| n.to_string()).collect();
    let dns: Vec<String> = r.dns.iter().map(|n| n.to_string()).collect();
    tx.execute(
        "INSERT INTO wg_routers (router_id, tenant_id, octet, server_id, name, address, public_key,
            private_key_sealed, psk_sealed, key_id, interface_name, listen_port, keepalive_s,
            routed_networks, router_allowed, dns)
         VALUES ($1, $2, $3, $4, $5, $6::text::inet, $7, $8, $9, $10, $11, $12, $13,
            $14::text[]::cidr[], $15::text[]::cidr[], $16::text[]::inet[])",
        &[
            &r.router_id,
            &r.tenant_id,
            &(octet as i16),
            &r.server_id,
            &r.name,
            &address,
            &r.public_key,
            &r.private_key.blob,
            &r.psk.blob,
            &r.private_key.key_id,
            &r.interface_name,
            &(r.listen_port as i32),
            &(r.keepalive as i32),
            &routed,
            &allowed,
            &dns,
        ],
    )
    .map_err(sql)?;
    tx.execute("DELETE FROM wg_address_quarantine WHERE address = $1::text::inet", &[&address]).map_err(sql)?;
    tx.commit().map_err(sql)?;
    let row =
        router(client, r.router_id)?.ok_or_else(|| Error::NotFound { what: "router", id: r.router_id.to_string() })?;
    Ok(Added::Created(row))
}

fn same_tenant(existing: RouterRow, tenant_id: i64) -> Result<RouterRow> {
    if existing.tenant_id != tenant_id {
        return Err(Error::invalid(
            "router",
            existing.router_id.to_string(),
            format!("belongs to tenant {}, not {tenant_id}", existing.tenant_id),
        ));
    }
    Ok(existing)
}

/// `wg router del`: removes the router; its address goes into quarantine.
pub fn delete_router(client: &mut Client, router_id: i64) -> Result<RouterRow> {
    let row =
        router(client, router_id)?.ok_or_else(|| Error::NotFound { what: "router", id: router_id.to_string() })?;
    let mut tx = client.transaction().map_err(sql)?;
    let n = tx.execute("DELETE FROM wg_routers WHERE router_id = $1", &[&router_id]).map_err(sql)?;
    if n == 0 {
        return Err(Error::NotFound { what: "router", id: router_id.to_string() });
    }
    tx.execute(
        "INSERT INTO wg_address_quarantine (address) VALUES ($1::text::inet)
         ON CONFLICT (address) DO UPDATE SET released_at = now()",
        &[&row.address.to_string()],
    )
    .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(row)
}

/// Drops quarantine entries older than `quarantine_s`; returns how many.
pub fn prune_quarantine(client: &mut Client, quarantine_s: u64) -> Result<u64> {
    client
        .execute(
            "DELETE FROM wg_address_quarantine WHERE released_at <= now() - make_interval(secs => $1::bigint::double precision)",
            &[&(quarantine_s as i64)],
        )
        .map_err(sql)
}

/// Tenant subnet usage (`wg subnet info`).
#[derive(Debug, Clone, Serialize)]
pub struct SubnetInfo {
    pub tenant_id: i64,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    pub capacity: usize,
    pub allocated: i64,
    pub quarantined: i64,
    pub available: i64,
}

pub fn subnet_info(client: &mut Client, tenant_id: i64, quarantine_s: u64) -> Result<SubnetInfo> {
    let t = tenant(client, tenant_id)?.ok_or_else(|| Error::NotFound { what: "tenant", id: tenant_id.to_string() })?;
    let q: i64 = client
        .query_one(
            "SELECT count(*) FROM wg_address_quarantine
              WHERE address << $1::text::inet AND released_at > now() - make_interval(secs => $2::bigint::double precision)",
            &[&t.subnet.to_string(), &(quarantine_s as i64)],
        )
        .map_err(sql)?
        .get(0);
    let cap = addr::ROUTER_CAPACITY;
    Ok(SubnetInfo {
        tenant_id,
        subnet: t.subnet,
        gateway: t.gateway,
        range_start: addr::address(t.octet, addr::FIRST_ROUTER_INDEX),
        range_end: addr::address(t.octet, addr::LAST_ROUTER_INDEX),
        capacity: cap,
        allocated: t.routers,
        quarantined: q,
        available: cap as i64 - t.routers - q,
    })
}

// ---------------------------------------------------------------- keys (rotation)

/// Every sealed value in the database, for `wg rotate-key`.
#[derive(Debug, Clone)]
pub enum SealedRef {
    Server { id: i64, nas: String, ifname: String, private_key: Sealed },
    Router { router_id: i64, tenant_id: i64, private_key: Sealed, psk: Sealed },
}

/// Re-seals every row in one transaction: `reseal` maps each stored value to its new form. Rows
/// are locked (FOR UPDATE) so a concurrent `router add` waits or is not seen half-way. Returns
/// how many rows were rewritten.
pub fn reseal_all(
    client: &mut Client,
    mut reseal: impl FnMut(&SealedRef) -> Result<(Sealed, Option<Sealed>)>,
) -> Result<usize> {
    let mut tx = client.transaction().map_err(sql)?;
    let mut n = 0;
    let servers = tx
        .query(
            "SELECT id, nas_identity, ifname, private_key_sealed, key_id FROM wg_servers ORDER BY id FOR UPDATE",
            &[],
        )
        .map_err(sql)?;
    for r in servers {
        let s = SealedRef::Server {
            id: r.get(0),
            nas: r.get(1),
            ifname: r.get(2),
            private_key: Sealed { blob: r.get(3), key_id: r.get(4) },
        };
        let (p, _) = reseal(&s)?;
        tx.execute(
            "UPDATE wg_servers SET private_key_sealed = $2, key_id = $3, updated_at = now() WHERE id = $1",
            &[&r.get::<_, i64>(0), &p.blob, &p.key_id],
        )
        .map_err(sql)?;
        n += 1;
    }
    let routers = tx
        .query(
            "SELECT router_id, tenant_id, private_key_sealed, psk_sealed, key_id FROM wg_routers ORDER BY router_id FOR UPDATE",
            &[],
        )
        .map_err(sql)?;
    for r in routers {
        let key_id: i32 = r.get(4);
        let s = SealedRef::Router {
            router_id: r.get(0),
            tenant_id: r.get(1),
            private_key: Sealed { blob: r.get(2), key_id },
            psk: Sealed { blob: r.get(3), key_id },
        };
        let (p, k) = reseal(&s)?;
        let k = k.ok_or_else(|| Error::invalid("reseal", "router", "no preshared key returned"))?;
        if p.key_id != k.key_id {
            return Err(Error::invalid("reseal", "router", "private and preshared key sealed with different keys"));
        }
        tx.execute(
            "UPDATE wg_routers SET private_key_sealed = $2, psk_sealed = $3, key_id = $4 WHERE router_id = $1",
            &[&r.get::<_, i64>(0), &p.blob, &k.blob, &p.key_id],
        )
        .map_err(sql)?;
        n += 1;
    }
    tx.commit().map_err(sql)?;
    Ok(n)
}

/// Which master key ids the database uses, with the number of rows each.
pub fn key_ids_in_use(client: &mut Client) -> Result<Vec<(i32, i64)>> {
    let rows = client
        .query(
            "SELECT key_id, count(*) FROM (SELECT key_id FROM wg_servers UNION ALL SELECT key_id FROM wg_routers) k
             GROUP BY key_id ORDER BY key_id",
            &[],
        )
        .map_err(sql)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

// ---------------------------------------------------------------- status

/// A peer's figures as the interface reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    pub public_key: String,
    /// Unix seconds of the latest handshake (None: never).
    pub last_handshake: Option<i64>,
    pub endpoint: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Records the interface's figures for the routers of `server_id` in one statement; status is
/// `up` when the handshake is younger than `up_s`, `down` after a handshake went stale, `pending`
/// while there never was one. Returns the number of rows updated.
pub fn record_stats(client: &mut Client, server_id: i64, stats: &[PeerStats], up_s: u64) -> Result<u64> {
    let keys: Vec<&str> = stats.iter().map(|s| s.public_key.as_str()).collect();
    let hs: Vec<Option<i64>> = stats.iter().map(|s| s.last_handshake).collect();
    let ep: Vec<Option<&str>> = stats.iter().map(|s| s.endpoint.as_deref()).collect();
    let rx: Vec<i64> = stats.iter().map(|s| s.rx_bytes.min(i64::MAX as u64) as i64).collect();
    let tx: Vec<i64> = stats.iter().map(|s| s.tx_bytes.min(i64::MAX as u64) as i64).collect();
    client
        .execute(
            "UPDATE wg_routers r SET
                last_handshake = CASE WHEN u.hs IS NULL THEN r.last_handshake ELSE to_timestamp(u.hs) END,
                endpoint = COALESCE(u.ep, r.endpoint),
                rx_bytes = u.rx, tx_bytes = u.tx, stats_at = now(),
                status = CASE
                    WHEN u.hs IS NOT NULL AND to_timestamp(u.hs) > now() - make_interval(secs => $7::bigint::double precision) THEN 'up'
                    WHEN u.hs IS NULL AND r.last_handshake IS NULL THEN 'pending'
                    ELSE 'down' END
             FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[]) AS u(pk, hs, ep, rx, tx)
             WHERE r.server_id = $1 AND r.public_key = u.pk",
            &[&server_id, &keys, &hs, &ep, &rx, &tx, &(up_s as i64)],
        )
        .map_err(sql)
}

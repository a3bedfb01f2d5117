//! Versioned, idempotent schema migrations (`pppgate db migrate`).
//!
//! Migration 1 creates FreeRADIUS 3.2's standard PostgreSQL tables where they are absent, with the
//! same columns, types and index names FreeRADIUS ships in
//! `mods-config/sql/main/postgresql/schema.sql`, so a stock rlm_sql works against the same
//! database (and a database FreeRADIUS's own schema was loaded into is left as it is).
//! Later migrations create pppgate's tables. Each migration runs in one transaction under an
//! advisory lock and records its version in `pppgate_schema`; running `migrate` again is a no-op.

use postgres::{Client, GenericClient};
use serde::Serialize;

use crate::error::{Error, Result};

pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// FreeRADIUS 3.2's standard PostgreSQL schema (tables and indexes), created where absent.
const FREERADIUS_32: &str = r#"
CREATE TABLE IF NOT EXISTS radacct (
	RadAcctId		bigserial PRIMARY KEY,
	AcctSessionId		text NOT NULL,
	AcctUniqueId		text NOT NULL UNIQUE,
	UserName		text,
	Realm			text,
	NASIPAddress		inet NOT NULL,
	NASPortId		text,
	NASPortType		text,
	AcctStartTime		timestamp with time zone,
	AcctUpdateTime		timestamp with time zone,
	AcctStopTime		timestamp with time zone,
	AcctInterval		bigint,
	AcctSessionTime		bigint,
	AcctAuthentic		text,
	ConnectInfo_start	text,
	ConnectInfo_stop	text,
	AcctInputOctets		bigint,
	AcctOutputOctets	bigint,
	CalledStationId		text,
	CallingStationId	text,
	AcctTerminateCause	text,
	ServiceType		text,
	FramedProtocol		text,
	FramedIPAddress		inet,
	FramedIPv6Address	inet,
	FramedIPv6Prefix	inet,
	FramedInterfaceId	text,
	DelegatedIPv6Prefix	inet,
	Class			text
);
CREATE INDEX IF NOT EXISTS radacct_active_session_idx ON radacct (AcctUniqueId) WHERE AcctStopTime IS NULL;
CREATE INDEX IF NOT EXISTS radacct_bulk_close ON radacct (NASIPAddress, AcctStartTime) WHERE AcctStopTime IS NULL;
CREATE INDEX IF NOT EXISTS radacct_start_user_idx ON radacct (AcctStartTime, UserName);
CREATE INDEX IF NOT EXISTS radacct_calss_idx ON radacct (Class);

CREATE TABLE IF NOT EXISTS radcheck (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '==',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS radcheck_UserName ON radcheck (UserName,Attribute);

CREATE TABLE IF NOT EXISTS radgroupcheck (
	id			serial PRIMARY KEY,
	GroupName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '==',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS radgroupcheck_GroupName ON radgroupcheck (GroupName,Attribute);

CREATE TABLE IF NOT EXISTS radgroupreply (
	id			serial PRIMARY KEY,
	GroupName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '=',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS radgroupreply_GroupName ON radgroupreply (GroupName,Attribute);

CREATE TABLE IF NOT EXISTS radreply (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	Attribute		text NOT NULL DEFAULT '',
	op			VARCHAR(2) NOT NULL DEFAULT '=',
	Value			text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS radreply_UserName ON radreply (UserName,Attribute);

CREATE TABLE IF NOT EXISTS radusergroup (
	id			serial PRIMARY KEY,
	UserName		text NOT NULL DEFAULT '',
	GroupName		text NOT NULL DEFAULT '',
	priority		integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS radusergroup_UserName ON radusergroup (UserName);

CREATE TABLE IF NOT EXISTS radpostauth (
	id			bigserial PRIMARY KEY,
	username		text NOT NULL,
	pass			text,
	reply			text,
	CalledStationId		text,
	CallingStationId	text,
	authdate		timestamp with time zone NOT NULL default now(),
	Class			text
);
CREATE INDEX IF NOT EXISTS radpostauth_username_idx ON radpostauth (username);
CREATE INDEX IF NOT EXISTS radpostauth_class_idx ON radpostauth (Class);

CREATE TABLE IF NOT EXISTS nas (
	id			serial PRIMARY KEY,
	nasname			text NOT NULL,
	shortname		text NOT NULL,
	type			text NOT NULL DEFAULT 'other',
	ports			integer,
	secret			text NOT NULL,
	server			text,
	community		text,
	description		text
);
CREATE INDEX IF NOT EXISTS nas_nasname ON nas (nasname);

CREATE TABLE IF NOT EXISTS nasreload (
	NASIPAddress		inet PRIMARY KEY,
	ReloadTime		timestamp with time zone NOT NULL
);
"#;

/// pppgate's own tables. Policy facts (see docs/ARCHITECTURE.md, "Which SQL facts give which
/// state") live on vpn_connections; usage is kept per connection and day.
const PPPGATE_CORE: &str = r#"
CREATE TABLE customers (
	id			bigserial PRIMARY KEY,
	name			text NOT NULL,
	email			text,
	blocked			boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE vpn_connections (
	id			bigserial PRIMARY KEY,
	customer_id		bigint REFERENCES customers(id) ON DELETE SET NULL,
	subaccount_login	text NOT NULL UNIQUE,
	status			text NOT NULL DEFAULT 'PREPROVISIONED'
				CHECK (status IN ('PREPROVISIONED', 'CLAIMED', 'SUSPENDED', 'UNCLAIMED', 'DISABLED', 'DELETED')),
	rate_down_kbit		integer CHECK (rate_down_kbit IS NULL OR rate_down_kbit > 0),
	rate_up_kbit		integer CHECK (rate_up_kbit IS NULL OR rate_up_kbit > 0),
	quota_bytes		bigint CHECK (quota_bytes IS NULL OR quota_bytes >= 0),
	quota_period		text NOT NULL DEFAULT 'month' CHECK (quota_period IN ('day', 'month', 'total')),
	expires_at		timestamptz,
	manual_block		boolean NOT NULL DEFAULT false,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vpn_connections_customer_idx ON vpn_connections (customer_id);

CREATE TABLE settings (
	key			text PRIMARY KEY,
	value			text NOT NULL,
	updated_at		timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings (key, value) VALUES ('connect_apply_window_s', '10') ON CONFLICT DO NOTHING;

-- Per-user static routes (seed 000): destination behind the client, via the peer by default.
CREATE TABLE vpn_routes (
	id			bigserial PRIMARY KEY,
	connection_id		bigint NOT NULL REFERENCES vpn_connections(id) ON DELETE CASCADE,
	destination		cidr NOT NULL CHECK (family(destination) = 4),
	gateway			inet CHECK (gateway IS NULL OR family(gateway) = 4),
	table_id		integer CHECK (table_id IS NULL OR (table_id > 0 AND table_id < 4294967295)),
	metric			integer CHECK (metric IS NULL OR metric >= 0),
	created_at		timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX vpn_routes_unique ON vpn_routes (connection_id, destination, COALESCE(table_id, 254));

-- Policy routing (seed 003): traffic from a subnet or from one connection's session goes through
-- a table whose default route points at a next hop.
CREATE TABLE pbr_rules (
	id			bigserial PRIMARY KEY,
	name			text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
	source			cidr CHECK (source IS NULL OR family(source) = 4),
	connection_id		bigint REFERENCES vpn_connections(id) ON DELETE CASCADE,
	table_id		integer NOT NULL CHECK (table_id > 0 AND table_id < 4294967295 AND table_id NOT IN (253, 254, 255)),
	next_hop		inet NOT NULL CHECK (family(next_hop) = 4),
	dev			text NOT NULL,
	priority		integer NOT NULL CHECK (priority > 0 AND priority < 32766),
	created_at		timestamptz NOT NULL DEFAULT now(),
	CHECK ((source IS NULL) <> (connection_id IS NULL))
);

-- Usage per connection and day (quota periods sum days); deltas are added by the collector.
CREATE TABLE vpn_usage (
	connection_id		bigint NOT NULL REFERENCES vpn_connections(id) ON DELETE CASCADE,
	day			date NOT NULL,
	bytes_in		bigint NOT NULL DEFAULT 0,
	bytes_out		bigint NOT NULL DEFAULT 0,
	updated_at		timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (connection_id, day)
);

-- Accounting batches already applied: a replayed batch is recognised and skipped.
CREATE TABLE pppgate_acct_batches (
	batch_id		text PRIMARY KEY,
	nas_identity		text NOT NULL,
	applied_at		timestamptz NOT NULL DEFAULT now()
);

-- pppgate's own record of each session it gated (one row per session).
CREATE TABLE pppgate_sessions (
	session_key		text PRIMARY KEY,
	nas_identity		text NOT NULL,
	connection_id		bigint,
	username		text,
	ppp_if			text NOT NULL,
	client_ip		inet NOT NULL,
	pppd_pid		integer NOT NULL,
	start_time		timestamptz NOT NULL,
	stop_time		timestamptz,
	terminate_cause		text,
	bytes_in		bigint NOT NULL DEFAULT 0,
	bytes_out		bigint NOT NULL DEFAULT 0,
	updated_at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pppgate_sessions_open_idx ON pppgate_sessions (nas_identity) WHERE stop_time IS NULL;

-- Audit trail of admin actions (session kill, lock breaks, routes/pbr changes).
CREATE TABLE pppgate_audit (
	id			bigserial PRIMARY KEY,
	at			timestamptz NOT NULL DEFAULT now(),
	nas_identity		text NOT NULL,
	actor			text NOT NULL,
	verb			text NOT NULL,
	args			text NOT NULL,
	result			text NOT NULL,
	exit_code		integer NOT NULL
);

-- Lookups the janitor and checkrad make per login.
CREATE INDEX IF NOT EXISTS pppgate_radacct_open_user_idx ON radacct (UserName) WHERE AcctStopTime IS NULL;
"#;

/// Accounting: the radacct row a session is bound to (see db::accounting), an index so old batch
/// ids can be pruned cheaply, and room on each page for the collector's per-run updates of
/// sessions and daily usage (HOT updates instead of new index entries).
const ACCOUNTING_BINDING: &str = r#"
ALTER TABLE pppgate_sessions
	ADD COLUMN IF NOT EXISTS radacct_owner	text CHECK (radacct_owner IN ('radius', 'pppgate')),
	ADD COLUMN IF NOT EXISTS radacct_id	bigint;
CREATE INDEX IF NOT EXISTS pppgate_sessions_radacct_idx ON pppgate_sessions (radacct_id) WHERE radacct_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS pppgate_acct_batches_age_idx ON pppgate_acct_batches (nas_identity, applied_at);
ALTER TABLE pppgate_sessions SET (fillfactor = 70);
ALTER TABLE vpn_usage SET (fillfactor = 80);
"#;

/// WireGuard for tenants (docs/wireguard.md): the concentrators' server interfaces, tenants with
/// their /16 (second octet 100..254, UNIQUE), routers with address (UNIQUE, inside the tenant's
/// subnet, never .0/.255, never in 10.X.0.0/24) and public key (UNIQUE), private and preshared
/// keys sealed (never plaintext), and released addresses in quarantine.
const WIREGUARD: &str = r#"
CREATE TABLE wg_servers (
	id			bigserial PRIMARY KEY,
	nas_identity		text NOT NULL,
	ifname			text NOT NULL CHECK (ifname ~ '^[A-Za-z0-9_.-]{1,15}$'),
	public_key		text NOT NULL UNIQUE CHECK (length(public_key) = 44),
	private_key_sealed	bytea NOT NULL,
	key_id			integer NOT NULL,
	listen_port		integer NOT NULL CHECK (listen_port BETWEEN 1 AND 65535),
	endpoint		text NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (nas_identity, ifname)
);

CREATE TABLE wg_tenants (
	tenant_id		bigint PRIMARY KEY CHECK (tenant_id > 0),
	octet			smallint NOT NULL UNIQUE CHECK (octet BETWEEN 100 AND 254),
	name			text,
	created_at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (tenant_id, octet)
);

CREATE TABLE wg_routers (
	router_id		bigint PRIMARY KEY CHECK (router_id > 0),
	tenant_id		bigint NOT NULL,
	octet			smallint NOT NULL,
	server_id		bigint NOT NULL REFERENCES wg_servers(id),
	name			text,
	address			inet NOT NULL UNIQUE CHECK (family(address) = 4 AND masklen(address) = 32),
	public_key		text NOT NULL UNIQUE CHECK (length(public_key) = 44),
	private_key_sealed	bytea NOT NULL,
	psk_sealed		bytea NOT NULL,
	key_id			integer NOT NULL,
	interface_name		text NOT NULL,
	listen_port		integer NOT NULL CHECK (listen_port BETWEEN 1 AND 65535),
	keepalive_s		integer NOT NULL CHECK (keepalive_s BETWEEN 0 AND 3600),
	routed_networks		cidr[] NOT NULL DEFAULT '{}',
	router_allowed		cidr[] NOT NULL DEFAULT '{}',
	dns			inet[] NOT NULL DEFAULT '{}',
	status			text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'up', 'down')),
	last_handshake		timestamptz,
	endpoint		text,
	rx_bytes		bigint NOT NULL DEFAULT 0,
	tx_bytes		bigint NOT NULL DEFAULT 0,
	stats_at		timestamptz,
	created_at		timestamptz NOT NULL DEFAULT now(),
	updated_at		timestamptz NOT NULL DEFAULT now(),
	FOREIGN KEY (tenant_id, octet) REFERENCES wg_tenants (tenant_id, octet),
	CHECK ((address - ('10.0.0.0'::inet + (octet::bigint << 16))) BETWEEN 257 AND 65534),
	CHECK (((address - '0.0.0.0'::inet) & 255) NOT IN (0, 255))
);
CREATE INDEX wg_routers_tenant_idx ON wg_routers (tenant_id);
CREATE INDEX wg_routers_server_idx ON wg_routers (server_id);

CREATE TABLE wg_address_quarantine (
	address			inet PRIMARY KEY,
	released_at		timestamptz NOT NULL DEFAULT now()
);
"#;

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, description: "FreeRADIUS 3.2 standard tables", sql: FREERADIUS_32 },
    Migration { version: 2, description: "pppgate core tables", sql: PPPGATE_CORE },
    Migration { version: 3, description: "accounting: radacct binding per session", sql: ACCOUNTING_BINDING },
    Migration { version: 4, description: "wireguard: servers, tenants, routers, address quarantine", sql: WIREGUARD },
];

/// The schema version this build needs and knows.
pub const LATEST: i32 = 4;

const ADVISORY_KEY: i64 = 0x0070_7070_6761_7465; // "pppgate"

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub version: i32,
    pub description: String,
    pub applied_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: i32,
    pub latest: i32,
    pub applied: Vec<Applied>,
    pub freeradius_tables: Vec<(String, bool)>,
}

pub const FREERADIUS_TABLES: &[&str] = &[
    "radacct",
    "radcheck",
    "radgroupcheck",
    "radgroupreply",
    "radreply",
    "radusergroup",
    "radpostauth",
    "nas",
    "nasreload",
];

fn ensure_version_table(client: &mut Client) -> Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS pppgate_schema (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .map_err(Error::from_sql)
}

/// Current version: the highest N such that every migration 1..=N is recorded (0 when pppgate's
/// schema was never migrated). A gap — a version missing below a recorded one — counts as not
/// migrated past it, and `migrate` applies what is missing.
pub fn current_version(client: &mut Client) -> Result<i32> {
    Ok(contiguous(&recorded_versions(client)?))
}

/// The versions recorded in `pppgate_schema`, ascending (empty when it does not exist).
fn recorded_versions(client: &mut impl GenericClient) -> Result<Vec<i32>> {
    // Two statements: PostgreSQL resolves table names when it parses, even in a CASE branch
    // that is never taken, so one query would fail on a database never migrated.
    let exists: bool =
        client.query_one("SELECT to_regclass('pppgate_schema') IS NOT NULL", &[]).map_err(Error::from_sql)?.get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client.query("SELECT version FROM pppgate_schema ORDER BY version", &[]).map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The highest N with 1..=N all in `versions` (ascending).
fn contiguous(versions: &[i32]) -> i32 {
    let mut n = 0;
    for &v in versions {
        if v == n + 1 {
            n = v;
        } else if v > n + 1 {
            break;
        }
    }
    n
}

/// Applies every missing migration; returns the versions applied now (empty: nothing to do).
pub fn migrate(client: &mut Client) -> Result<Vec<i32>> {
    ensure_version_table(client).or_else(|e| match &e {
        // Two migrators racing on CREATE TABLE IF NOT EXISTS: the other one created it.
        Error::Sql(pe) if pe.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => Ok(()),
        _ => Err(e),
    })?;
    let mut tx = client.transaction().map_err(Error::from_sql)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_KEY]).map_err(Error::from_sql)?;
    let have = recorded_versions(&mut tx)?;
    if let Some(&newest) = have.last().filter(|&&v| v > LATEST) {
        return Err(Error::SchemaTooNew { found: newest, known: LATEST });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !have.contains(&m.version)) {
        tx.batch_execute(m.sql).map_err(Error::from_sql)?;
        tx.execute("INSERT INTO pppgate_schema (version, description) VALUES ($1, $2)", &[&m.version, &m.description])
            .map_err(Error::from_sql)?;
        applied.push(m.version);
    }
    tx.commit().map_err(Error::from_sql)?;
    Ok(applied)
}

/// Fails with `SchemaTooOld`/`SchemaTooNew` unless the database is at [`LATEST`].
pub fn require_current(client: &mut Client) -> Result<()> {
    let versions = recorded_versions(client)?;
    if let Some(&newest) = versions.last().filter(|&&v| v > LATEST) {
        return Err(Error::SchemaTooNew { found: newest, known: LATEST });
    }
    let v = contiguous(&versions);
    if v < LATEST {
        return Err(Error::SchemaTooOld { found: v, needed: LATEST });
    }
    Ok(())
}

pub fn status(client: &mut Client) -> Result<Status> {
    let version = current_version(client)?;
    let mut applied = Vec::new();
    if version > 0 {
        for r in client
            .query(
                "SELECT version, description, to_char(applied_at, 'YYYY-MM-DD\"T\"HH24:MI:SSOF')
                 FROM pppgate_schema ORDER BY version",
                &[],
            )
            .map_err(Error::from_sql)?
        {
            applied.push(Applied { version: r.get(0), description: r.get(1), applied_at: r.get(2) });
        }
    }
    let mut freeradius_tables = Vec::new();
    for t in FREERADIUS_TABLES {
        let r = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[t]).map_err(Error::from_sql)?;
        freeradius_tables.push((t.to_string(), r.get(0)));
    }
    Ok(Status { version, latest: LATEST, applied, freeradius_tables })
}

#[cfg(test)]
mod tests {
    use super::contiguous;

    #[test]
    fn the_current_version_stops_at_the_first_gap() {
        assert_eq!(contiguous(&[]), 0);
        assert_eq!(contiguous(&[1, 2, 3, 4]), 4);
        assert_eq!(contiguous(&[1, 2, 4]), 2, "version 3 missing: not migrated past 2");
        assert_eq!(contiguous(&[2, 3]), 0);
        assert_eq!(contiguous(&[1, 2, 3, 7]), 3);
    }
}

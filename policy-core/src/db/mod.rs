//! PostgreSQL access: connections with hard timeouts, the schema migrations, and one module per
//! table group. Every query is parameterized. No connection outlives the operation that opened it
//! (the plugin holds none between pppd events).

// The current quota period and the usage in it, defined once for every statement that needs
// them (the connection facts the policy is decided from, and the collector's quota trigger):
// they must agree, or a connection would be re-applied as over quota and stay FULL, or the
// reverse. SQL fragments over `vpn_connections c` and `vpn_usage u`.

/// The first day of connection `c`'s current quota period: today for `day`, the first of the
/// month for `month`, the epoch for `total` (the database's clock and time zone).
macro_rules! quota_period_start {
    () => {
        "CASE c.quota_period WHEN 'day' THEN current_date \
         WHEN 'month' THEN date_trunc('month', current_date)::date ELSE DATE '1970-01-01' END"
    };
}

/// What one `vpn_usage` row `u` counts towards a quota: both directions.
macro_rules! usage_octets {
    () => {
        "u.bytes_in + u.bytes_out"
    };
}

/// Octets of connection `c` in its current quota period (0 when none), as one scalar.
macro_rules! usage_in_quota_period {
    () => {
        concat!(
            "COALESCE((SELECT sum(",
            usage_octets!(),
            ") FROM vpn_usage u WHERE u.connection_id = c.id AND u.day >= ",
            quota_period_start!(),
            "), 0)::bigint"
        )
    };
}

pub mod accounting;
pub mod audit;
pub mod connections;
pub mod migrate;
pub mod pbr;
pub mod radacct;
pub mod routes;
pub mod session_locks;
pub mod settings;
pub mod wg;

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, NoTls};

use crate::config::DatabaseConfig;
use crate::error::{Error, Result};

/// Opens a connection with the configured timeouts.
pub fn connect(cfg: &DatabaseConfig) -> Result<Client> {
    connect_with(cfg, cfg.connect_timeout, cfg.statement_timeout)
}

/// Opens a connection with explicit timeouts (the connect path uses tight ones).
///
/// Host names are resolved here, synchronously, and passed as `hostaddr`: the driver would
/// otherwise resolve them on a helper thread, and the plugin must not start threads in pppd.
pub fn connect_with(cfg: &DatabaseConfig, connect_timeout: Duration, statement_timeout: Duration) -> Result<Client> {
    let mut pg = cfg.pg.clone();
    pg.connect_timeout(connect_timeout);
    let ms = statement_timeout.as_millis().max(1);
    // jit=off: pppgate's statements run in milliseconds, but their row estimates can cross the
    // JIT cost thresholds, and compiling then costs 200-450 ms per statement (measured: the
    // collector's quota query at 10,000 sessions took 340 ms, 338 of them JIT).
    let own = format!("-c statement_timeout={ms} -c client_min_messages=warning -c jit=off");
    if !cfg.pooler {
        let opts = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {own}"),
            _ => own,
        };
        pg.options(&opts);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("pppgate");
    }
    if pg.get_hostaddrs().is_empty() {
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let mut addrs = Vec::new();
        let mut needs = false;
        for h in pg.get_hosts() {
            if let Host::Tcp(name) = h {
                if let Ok(ip) = name.parse::<IpAddr>() {
                    addrs.push(ip);
                } else {
                    needs = true;
                    let ip =
                        (name.as_str(), port).to_socket_addrs().ok().and_then(|mut it| it.next()).map(|sa| sa.ip());
                    match ip {
                        Some(ip) => addrs.push(ip),
                        None => return Err(Error::invalid("database host", name.clone(), "does not resolve")),
                    }
                }
            }
        }
        if needs && addrs.len() == pg.get_hosts().len() {
            for a in addrs {
                pg.hostaddr(a);
            }
        }
    }
    let mut client = connect_retrying(&mut pg, connect_timeout)?;
    if cfg.pooler {
        // A pooler does not forward startup options: the same settings, one round trip. In
        // session pooling the server connection is this client's until it disconnects, and the
        // pooler's reset query (DISCARD ALL) clears them for the next one.
        client
            .batch_execute(&format!("SET statement_timeout = {ms}; SET client_min_messages = warning; SET jit = off"))
            .map_err(Error::SqlUnavailable)?;
    }
    Ok(client)
}

/// First pause after a connect the server refused for a moment, doubling to [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_START: Duration = Duration::from_millis(5);
const BUSY_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Connects, retrying within `timeout` (counted from the first attempt) while the server refuses
/// for a moment only ([`busy_refusal`]): under a login storm PostgreSQL's Unix socket backlog fills
/// up (the kernel answers EAGAIN) or every connection slot is taken, and both clear within
/// milliseconds. Anything else fails at once, as before; the last attempt gets what is left of
/// `timeout`, so the bound stays `timeout` (R121).
fn connect_retrying(pg: &mut postgres::Config, timeout: Duration) -> Result<Client> {
    let start = std::time::Instant::now();
    let mut pause = BUSY_PAUSE_START;
    loop {
        let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(1));
        pg.connect_timeout(left);
        match pg.connect(NoTls) {
            Ok(c) => return Ok(c),
            Err(e) if busy_refusal(&e) && start.elapsed() + pause < timeout => {
                tracing::debug!("database busy ({e}); connecting again in {} ms", pause.as_millis());
                std::thread::sleep(pause);
                pause = (pause * 2).min(BUSY_PAUSE_MAX);
            }
            Err(e) => return Err(Error::SqlUnavailable(e)),
        }
    }
}

/// Whether a connect failed only because the server is busy this instant: its listen backlog was
/// full (EAGAIN on a Unix socket; a TCP backlog makes the client wait instead) or it had no
/// connection slot left (SQLSTATE 53300, "too many clients").
pub fn busy_refusal(e: &postgres::Error) -> bool {
    if e.code() == Some(&postgres::error::SqlState::TOO_MANY_CONNECTIONS) {
        return true;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::WouldBlock;
        }
        src = s.source();
    }
    false
}

/// Seconds since the Unix epoch as PostgreSQL computes it (`now()`), for consistent comparisons.
pub fn db_now(client: &mut Client) -> Result<i64> {
    let row = client.query_one("SELECT extract(epoch FROM now())::bigint", &[]).map_err(Error::from_sql)?;
    Ok(row.get(0))
}

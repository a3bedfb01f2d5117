//! Accounting writes: `pppgate_acct_batches`, `pppgate_sessions`, `vpn_usage` and `radacct`, all in
//! one statement per chunk of journal records (one round trip, atomic: data-modifying CTEs over
//! `unnest` of typed arrays, sent with `query_typed`, so there is no separate prepare).
//!
//! Idempotency, twice over (docs/accounting.md):
//! * the batch ids are inserted with `ON CONFLICT DO NOTHING`, and only entries of batches that
//!   were inserted now are applied: a replay whose earlier commit reached the database is a no-op;
//! * every write is absolute or derived from absolute values: session totals and radacct octets
//!   use GREATEST, stop times COALESCE, and the usage added to `vpn_usage` is the growth of the
//!   session's total over what `pppgate_sessions` already holds. Even a replay the batch table
//!   no longer remembers, or a state file that was lost, cannot count a byte twice.
//! * times are ordered whatever the wall clock did (it may be stepped back between a session's
//!   start and its readings): a stop time is never before the start nor before the last reading
//!   already stored (GREATEST with both), update times never go back (GREATEST with the last),
//!   durations are never negative and never shrink.
//!
//! radacct identity: a session is bound once, and the binding is kept in `pppgate_sessions`
//! (`radacct_owner`, `radacct_id`):
//! * `radius` — the row radius.so's accounting created: same NAS-IP-Address and
//!   Framed-IP-Address, started between the pppd start − 5 s and IPCP-up plus 30 s (or the
//!   reading, when IPCP-up is not known), not a pppgate row and not bound to another session.
//!   The user name is deliberately not compared: the name in radacct is the login after pppd's
//!   rendering, FreeRADIUS's xlat and rlm_sql's escaping (`jürgen` is stored as `jM-CM-=3Crgen`),
//!   and the address a live session holds on this NAS plus a start window bounded by this pppd's
//!   own start already name one row (docs/accounting.md). radius.so's Acct-Session-Id is never
//!   used (it is malformed, lab FINDINGS).
//!   Totals are written while the row is open; radius.so's own Stop closes it, never pppgate.
//! * `pppgate` — a row pppgate owns, `acctuniqueid = 'pppgate:<session key>'`, opened, updated and
//!   closed by pppgate. In mode `own` always; in mode `auto` only when no RADIUS row exists by the
//!   session's last entry or [`AUTO_OWN_GRACE_S`] after it came up (radius.so sends its Start
//!   synchronously at IPCP-up, so a row that is not there by then is not coming).

use std::net::{IpAddr, Ipv4Addr};

use postgres::types::{ToSql, Type};
use postgres::Client;
use serde::Serialize;

use crate::accounting::record::Batch;
use crate::config::RadacctMode;
use crate::error::{Error, Result};
use crate::policy::model::quota_reached;

/// In mode `auto`, how long after IPCP-up a session waits for radius.so's row before pppgate
/// writes its own.
pub const AUTO_OWN_GRACE_S: i64 = 60;

/// How long applied batch ids are remembered (replays older than this are refused).
pub const BATCH_RETENTION_DAYS: i32 = 400;

const COMMIT_SQL: &str = r#"
WITH nb AS (
    INSERT INTO pppgate_acct_batches (batch_id, nas_identity)
    SELECT b, $2 FROM unnest($1::text[]) AS b
    ON CONFLICT (batch_id) DO NOTHING
    RETURNING batch_id
), e AS (
    SELECT u.*
    FROM unnest($6::text[], $7::int8[], $8::text[], $9::int8[], $10::text[], $11::inet[], $12::int8[],
                $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int8[], $19::text[],
                $20::bool[])
         AS u(batch_id, seq, session_key, connection_id, ppp_if, client_ip, pppd_pid,
              start_ts, up_ts, at, t_in, t_out, stop_at, cause, may_own)
    WHERE u.batch_id IN (SELECT batch_id FROM nb)
), s AS (
    SELECT session_key, max(connection_id) AS connection_id, max(ppp_if) AS ppp_if,
           max(client_ip) AS client_ip, max(pppd_pid) AS pppd_pid, max(start_ts) AS start_ts,
           max(up_ts) AS up_ts, max(at) AS at, max(t_in) AS t_in, max(t_out) AS t_out,
           max(stop_at) AS stop_at, max(cause) AS cause, bool_or(may_own) AS may_own
    FROM e GROUP BY session_key
), sc AS (
    SELECT s.*, c.subaccount_login AS login, n.stored AS radius_username,
           ps.radacct_id AS bound_id, ps.radacct_owner AS bound_owner,
           COALESCE(ps.bytes_in, 0) AS had_in, COALESCE(ps.bytes_out, 0) AS had_out
    FROM s
    LEFT JOIN vpn_connections c ON c.id = s.connection_id
    LEFT JOIN unnest($21::int8[], $22::text[]) AS n(id, stored) ON n.id = s.connection_id
    LEFT JOIN pppgate_sessions ps ON ps.session_key = s.session_key
), found AS (
    SELECT DISTINCT ON (sc.session_key) sc.session_key, r.radacctid
    FROM sc JOIN radacct r
      ON r.nasipaddress = $3 AND r.framedipaddress = sc.client_ip
     AND r.acctstarttime >= to_timestamp(sc.start_ts - 5)
     AND r.acctstarttime <= to_timestamp(COALESCE(sc.up_ts + 30, sc.at))
     AND r.acctuniqueid NOT LIKE 'pppgate:%'
     AND NOT EXISTS (SELECT 1 FROM pppgate_sessions o
                     WHERE o.radacct_id = r.radacctid AND o.session_key <> sc.session_key)
    WHERE $4 AND $5 AND sc.bound_owner IS NULL AND sc.login IS NOT NULL
    ORDER BY sc.session_key, r.acctstarttime, r.radacctid
), b AS (
    SELECT sc.*,
           CASE WHEN NOT $5 THEN NULL
                WHEN sc.bound_owner IS NOT NULL THEN sc.bound_owner
                WHEN f.radacctid IS NOT NULL THEN 'radius'
                WHEN sc.may_own THEN 'pppgate' END AS owner,
           COALESCE(sc.bound_id, f.radacctid) AS radius_id
    FROM sc LEFT JOIN found f ON f.session_key = sc.session_key
), upd_radius AS (
    UPDATE radacct r SET
        acctinputoctets = GREATEST(COALESCE(r.acctinputoctets, 0), b.t_in),
        acctoutputoctets = GREATEST(COALESCE(r.acctoutputoctets, 0), b.t_out),
        acctupdatetime = GREATEST(r.acctupdatetime, to_timestamp(b.at)),
        acctsessiontime = GREATEST(COALESCE(r.acctsessiontime, 0),
                                   (b.at - extract(epoch FROM COALESCE(r.acctstarttime, to_timestamp(b.at))))::bigint)
    FROM b
    WHERE b.owner = 'radius' AND r.radacctid = b.radius_id AND r.acctstoptime IS NULL
    RETURNING r.radacctid
), own AS (
    INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, nasportid, nasporttype,
                         acctstarttime, acctupdatetime, acctstoptime, acctsessiontime,
                         acctinputoctets, acctoutputoctets, acctterminatecause, servicetype,
                         framedprotocol, framedipaddress)
    SELECT b.session_key, 'pppgate:' || b.session_key, COALESCE(b.radius_username, b.login), $3, b.ppp_if, 'Virtual',
           to_timestamp(COALESCE(b.up_ts, b.start_ts)), to_timestamp(GREATEST(b.at, COALESCE(b.up_ts, b.start_ts))),
           to_timestamp(CASE WHEN b.stop_at IS NOT NULL THEN GREATEST(b.stop_at, COALESCE(b.up_ts, b.start_ts)) END),
           GREATEST(0, COALESCE(b.stop_at, b.at) - COALESCE(b.up_ts, b.start_ts)),
           b.t_in, b.t_out, b.cause, 'Framed-User', 'PPP', b.client_ip
    FROM b WHERE b.owner = 'pppgate'
    ON CONFLICT (acctuniqueid) DO UPDATE SET
        acctinputoctets = GREATEST(COALESCE(radacct.acctinputoctets, 0), excluded.acctinputoctets),
        acctoutputoctets = GREATEST(COALESCE(radacct.acctoutputoctets, 0), excluded.acctoutputoctets),
        acctupdatetime = GREATEST(radacct.acctupdatetime, excluded.acctupdatetime),
        acctsessiontime = GREATEST(COALESCE(radacct.acctsessiontime, 0), excluded.acctsessiontime),
        acctstoptime = COALESCE(radacct.acctstoptime,
                                CASE WHEN excluded.acctstoptime IS NOT NULL
                                     THEN GREATEST(excluded.acctstoptime, radacct.acctupdatetime) END),
        acctterminatecause = COALESCE(radacct.acctterminatecause, excluded.acctterminatecause),
        username = COALESCE(radacct.username, excluded.username)
    RETURNING radacctid
), sess AS (
    INSERT INTO pppgate_sessions (session_key, nas_identity, connection_id, username, ppp_if, client_ip,
                                  pppd_pid, start_time, stop_time, terminate_cause, bytes_in, bytes_out,
                                  updated_at, radacct_id, radacct_owner)
    SELECT b.session_key, $2, b.connection_id, b.login, b.ppp_if, b.client_ip, b.pppd_pid,
           to_timestamp(COALESCE(b.up_ts, b.start_ts)),
           to_timestamp(CASE WHEN b.stop_at IS NOT NULL THEN GREATEST(b.stop_at, COALESCE(b.up_ts, b.start_ts)) END),
           b.cause, b.t_in, b.t_out, to_timestamp(b.at),
           CASE WHEN b.owner = 'radius' THEN b.radius_id END, b.owner
    FROM b
    ON CONFLICT (session_key) DO UPDATE SET
        bytes_in = GREATEST(pppgate_sessions.bytes_in, excluded.bytes_in),
        bytes_out = GREATEST(pppgate_sessions.bytes_out, excluded.bytes_out),
        stop_time = COALESCE(pppgate_sessions.stop_time,
                             CASE WHEN excluded.stop_time IS NOT NULL
                                  THEN GREATEST(excluded.stop_time, pppgate_sessions.updated_at) END),
        terminate_cause = COALESCE(pppgate_sessions.terminate_cause, excluded.terminate_cause),
        updated_at = GREATEST(pppgate_sessions.updated_at, excluded.updated_at),
        username = COALESCE(pppgate_sessions.username, excluded.username),
        radacct_id = COALESCE(pppgate_sessions.radacct_id, excluded.radacct_id),
        radacct_owner = COALESCE(pppgate_sessions.radacct_owner, excluded.radacct_owner)
    RETURNING 1
), growth AS (
    -- Each entry's usage is how far its total grew past everything committed before it: the
    -- session's committed total and the previous entry of the same session in this statement.
    SELECT e.connection_id, to_timestamp(e.at)::date AS day,
           GREATEST(0, e.t_in - GREATEST(sc.had_in, COALESCE(lag(e.t_in) OVER w, 0))) AS d_in,
           GREATEST(0, e.t_out - GREATEST(sc.had_out, COALESCE(lag(e.t_out) OVER w, 0))) AS d_out
    FROM e JOIN sc ON sc.session_key = e.session_key
    WINDOW w AS (PARTITION BY e.session_key ORDER BY e.seq, e.at)
), used AS (
    INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out, updated_at)
    SELECT g.connection_id, g.day, sum(g.d_in), sum(g.d_out), now()
    FROM growth g
    WHERE g.connection_id IN (SELECT id FROM vpn_connections)
    GROUP BY g.connection_id, g.day
    HAVING sum(g.d_in) > 0 OR sum(g.d_out) > 0
    ON CONFLICT (connection_id, day) DO UPDATE SET
        bytes_in = vpn_usage.bytes_in + excluded.bytes_in,
        bytes_out = vpn_usage.bytes_out + excluded.bytes_out,
        updated_at = now()
    RETURNING bytes_in
)
SELECT (SELECT count(*) FROM nb), (SELECT count(*) FROM e), (SELECT count(*) FROM upd_radius),
       (SELECT count(*) FROM own), (SELECT count(*) FROM sess), (SELECT count(*) FROM used)
"#;

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CommitCounts {
    /// Batches applied now (the others were already in SQL).
    pub batches_applied: i64,
    pub entries_applied: i64,
    pub radius_rows_updated: i64,
    pub own_rows_written: i64,
    pub sessions_written: i64,
    pub usage_rows_written: i64,
}

/// Whether a session may get a pppgate-owned radacct row now (see the module docs).
pub fn may_own(mode: RadacctMode, session_start: i64, at: i64, is_final: bool) -> bool {
    match mode {
        RadacctMode::Own => true,
        RadacctMode::Auto => is_final || at - session_start >= AUTO_OWN_GRACE_S,
        RadacctMode::Radius | RadacctMode::Off => false,
    }
}

/// Commits `batches` (same NAS identity) in one statement.
pub fn commit(client: &mut Client, nas_ip: Ipv4Addr, mode: RadacctMode, batches: &[&Batch]) -> Result<CommitCounts> {
    let Some(first) = batches.first() else { return Ok(CommitCounts::default()) };
    let nas_identity = first.nas_identity.as_str();
    debug_assert!(batches.iter().all(|b| b.nas_identity == nas_identity));
    let n: usize = batches.iter().map(|b| b.entries.len()).sum();
    let batch_ids: Vec<&str> = batches.iter().map(|b| b.batch_id.as_str()).collect();
    let mut e_batch = Vec::with_capacity(n);
    let mut e_seq = Vec::with_capacity(n);
    let mut e_key = Vec::with_capacity(n);
    let mut e_conn = Vec::with_capacity(n);
    let mut e_if = Vec::with_capacity(n);
    let mut e_ip = Vec::with_capacity(n);
    let mut e_pid = Vec::with_capacity(n);
    let mut e_start = Vec::with_capacity(n);
    let mut e_up: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut e_at = Vec::with_capacity(n);
    let mut e_tin = Vec::with_capacity(n);
    let mut e_tout = Vec::with_capacity(n);
    let mut e_stop: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut e_cause: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut e_own = Vec::with_capacity(n);
    for b in batches {
        for e in &b.entries {
            let s = &e.session;
            e_batch.push(b.batch_id.as_str());
            e_seq.push(clamp(b.seq));
            e_key.push(s.key.as_str());
            e_conn.push(s.connection_id);
            e_if.push(s.ppp_if.as_str());
            e_ip.push(IpAddr::V4(s.client_ip));
            e_pid.push(s.pppd_pid as i64);
            e_start.push(s.start_ts);
            e_up.push(s.up_ts);
            e_at.push(e.at);
            e_tin.push(clamp(e.total.rx));
            e_tout.push(clamp(e.total.tx));
            e_stop.push(e.stop.as_ref().map(|x| x.at));
            e_cause.push(e.stop.as_ref().map(|x| x.cause.as_str()));
            e_own.push(may_own(mode, s.session_start(), e.at, e.stop.is_some()));
        }
    }
    // pppgate's own radacct rows carry the user as FreeRADIUS stores and counts it (R513), so
    // Simultaneous-Use counts them like radius.so's; one more round trip, only when such a row
    // may be written.
    let (n_ids, n_stored) = if e_own.iter().any(|o| *o) {
        let mut ids: Vec<i64> = e_conn.clone();
        ids.sort_unstable();
        ids.dedup();
        let logins = crate::db::radacct::logins_of(client, &ids)?;
        let stored: Vec<String> =
            logins.iter().map(|(_, l)| crate::radius::sqlname::sql_username(l.as_bytes())).collect();
        (logins.into_iter().map(|(id, _)| id).collect::<Vec<i64>>(), stored)
    } else {
        (Vec::new(), Vec::new())
    };
    let nas_ip = IpAddr::V4(nas_ip);
    let allow_radius = matches!(mode, RadacctMode::Auto | RadacctMode::Radius);
    let radacct_on = mode != RadacctMode::Off;
    let params: [(&(dyn ToSql + Sync), Type); 22] = [
        (&batch_ids, Type::TEXT_ARRAY),
        (&nas_identity, Type::TEXT),
        (&nas_ip, Type::INET),
        (&allow_radius, Type::BOOL),
        (&radacct_on, Type::BOOL),
        (&e_batch, Type::TEXT_ARRAY),
        (&e_seq, Type::INT8_ARRAY),
        (&e_key, Type::TEXT_ARRAY),
        (&e_conn, Type::INT8_ARRAY),
        (&e_if, Type::TEXT_ARRAY),
        (&e_ip, Type::INET_ARRAY),
        (&e_pid, Type::INT8_ARRAY),
        (&e_start, Type::INT8_ARRAY),
        (&e_up, Type::INT8_ARRAY),
        (&e_at, Type::INT8_ARRAY),
        (&e_tin, Type::INT8_ARRAY),
        (&e_tout, Type::INT8_ARRAY),
        (&e_stop, Type::INT8_ARRAY),
        (&e_cause, Type::TEXT_ARRAY),
        (&e_own, Type::BOOL_ARRAY),
        (&n_ids, Type::INT8_ARRAY),
        (&n_stored, Type::TEXT_ARRAY),
    ];
    let row = client.query_typed_one(COMMIT_SQL, &params).map_err(Error::from_sql)?;
    Ok(CommitCounts {
        batches_applied: row.get(0),
        entries_applied: row.get(1),
        radius_rows_updated: row.get(2),
        own_rows_written: row.get(3),
        sessions_written: row.get(4),
        usage_rows_written: row.get(5),
    })
}

/// Octet counts are stored as bigint; 2^63 octets is not a real session.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One connection's usage in its current quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuotaUse {
    pub connection_id: i64,
    pub quota_bytes: Option<i64>,
    pub used_bytes: i64,
}

impl QuotaUse {
    /// The policy engine's rule ([`quota_reached`]), on the same figures the facts carry.
    pub fn over(&self) -> bool {
        quota_reached(self.quota_bytes.map(|q| q.max(0) as u64), self.used_bytes.max(0) as u64)
    }
}

const QUOTA_SQL: &str = concat!(
    r#"
WITH pruned AS (
    DELETE FROM pppgate_acct_batches
    WHERE nas_identity = $2 AND applied_at < now() - make_interval(days => $3)
    RETURNING 1
)
SELECT c.id, c.quota_bytes,
       "#,
    usage_in_quota_period!(),
    r#",
       (SELECT count(*) FROM pruned)
FROM unnest($1::int8[]) AS a(id)
JOIN vpn_connections c ON c.id = a.id
WHERE c.quota_bytes IS NOT NULL OR c.id = ANY($4)
ORDER BY c.id
"#
);

/// Usage in the current period for those of `ids` that have a quota, and for `was_over` whatever
/// their quota is now (one round trip), pruning this NAS's batch ids older than
/// [`BATCH_RETENTION_DAYS`] on the way.
pub fn quota_use(client: &mut Client, nas_identity: &str, ids: &[i64], was_over: &[i64]) -> Result<Vec<QuotaUse>> {
    let rows = client
        .query_typed(
            QUOTA_SQL,
            &[
                (&ids, Type::INT8_ARRAY),
                (&nas_identity, Type::TEXT),
                (&BATCH_RETENTION_DAYS, Type::INT4),
                (&was_over, Type::INT8_ARRAY),
            ],
        )
        .map_err(Error::from_sql)?;
    Ok(rows.iter().map(|r| QuotaUse { connection_id: r.get(0), quota_bytes: r.get(1), used_bytes: r.get(2) }).collect())
}

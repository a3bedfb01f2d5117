//! `active_session_locks`: a table some deployments have (not pppgate's schema); a session kill
//! removes the connection's rows from it when it exists.

use postgres::types::Type;
use postgres::Client;

use crate::error::{Error, Result};

/// R602 ("locks (active_session_locks) removed best effort, where present"): pppgate's
/// schema has no such table; a deployment that has one (keyed by `vpn_connection_id` or
/// `connection_id`) gets the connection's rows removed.
pub fn remove_for_connection(c: &mut Client, id: i64) -> Result<Option<u64>> {
    let col = c
        .query_typed(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_name = 'active_session_locks' AND table_schema = current_schema()
               AND column_name IN ('vpn_connection_id', 'connection_id') ORDER BY column_name DESC LIMIT 1",
            &[],
        )
        .map_err(Error::from_sql)?;
    let Some(col) = col.first().map(|r| r.get::<_, String>(0)) else { return Ok(None) };
    // The column name comes from the catalog and is one of two fixed identifiers.
    let sql = if col == "vpn_connection_id" {
        "DELETE FROM active_session_locks WHERE vpn_connection_id = $1"
    } else {
        "DELETE FROM active_session_locks WHERE connection_id = $1"
    };
    let n = c.execute_typed(sql, &[(&id, Type::INT8)]).map_err(Error::from_sql)?;
    Ok(Some(n))
}

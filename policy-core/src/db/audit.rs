//! `pppgate_audit`: the SQL copy of the audit trail (the file, `crate::audit`, is the primary).

use postgres::types::Type;
use postgres::Client;

use crate::audit::Record;
use crate::error::{Error, Result};

/// Inserts the record into `pppgate_audit`.
pub fn insert(client: &mut Client, record: &Record) -> Result<()> {
    let args = serde_json::to_string(&record.args).expect("serializable");
    let code = i32::from(record.exit_code);
    client
        .query_typed(
            "INSERT INTO pppgate_audit (at, nas_identity, actor, verb, args, result, exit_code)
             VALUES (to_timestamp($1), $2, $3, $4, $5, $6, $7)",
            &[
                (&(record.at as f64), Type::FLOAT8),
                (&record.nas_identity, Type::TEXT),
                (&record.actor.label(), Type::TEXT),
                (&record.verb, Type::TEXT),
                (&args, Type::TEXT),
                (&record.result, Type::TEXT),
                (&code, Type::INT4),
            ],
        )
        .map_err(Error::from_sql)?;
    Ok(())
}

//! The `settings` table (key/value): the apply window, read by the connect path with a tight timeout.

use std::time::Duration;

use postgres::{Client, SimpleQueryMessage};

use crate::config::APPLY_WINDOW_CAP;
use crate::error::{Error, Result};

pub const APPLY_WINDOW_KEY: &str = "connect_apply_window_s";

/// The apply window as SQL has it, read on a connection that is already open — the connect
/// path's own, right after its lookup, so that a login flood does not pay a second connect for
/// it (R111) — with the statement bounded by `timeout`. `SET LOCAL` inside one transaction, one
/// round trip: the bound ends with it, also behind a transaction-pooling pooler. `Ok(None)` when
/// the setting is absent or does not parse; an error when it could not be read within `timeout`.
pub fn apply_window_on(client: &mut Client, timeout: Duration) -> Result<Option<Duration>> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
    let sql = format!(
        "BEGIN; SET LOCAL statement_timeout = {ms}; SELECT value FROM settings WHERE key = '{APPLY_WINDOW_KEY}'; COMMIT"
    );
    let messages = client.simple_query(&sql).map_err(Error::from_sql)?;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    Ok(value.and_then(|v| parse_apply_window(&v)))
}

pub fn set(client: &mut Client, key: &str, value: &str) -> Result<()> {
    client
        .execute(
            "INSERT INTO settings (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = now()",
            &[&key, &value],
        )
        .map_err(Error::from_sql)?;
    Ok(())
}

/// Parses the apply window setting: whole seconds (fractions allowed), capped at 15 s.
/// `None` for a value that does not parse or is not positive (the caller falls back).
pub fn parse_apply_window(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    // Capped before the conversion: from_secs_f64 panics on values beyond Duration (`1e30`).
    // A value below a nanosecond is no window at all (`1e-33`): the fallback, not zero.
    Some(Duration::from_secs_f64(secs.min(APPLY_WINDOW_CAP.as_secs_f64()))).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_capped_and_validated() {
        assert_eq!(parse_apply_window("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_apply_window("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_apply_window("600"), Some(APPLY_WINDOW_CAP));
        assert_eq!(parse_apply_window("0"), None);
        assert_eq!(parse_apply_window("-3"), None);
        assert_eq!(parse_apply_window("ten"), None);
        assert_eq!(parse_apply_window("NaN"), None);
        // Found while writing the sql_facts fuzz target: beyond Duration's range panicked.
        assert_eq!(parse_apply_window("1e30"), Some(APPLY_WINDOW_CAP));
        assert_eq!(parse_apply_window("inf"), None);
        // Found by the sql_facts fuzz target: positive but below a nanosecond was a zero window.
        assert_eq!(parse_apply_window("1e-33"), None);
    }
}

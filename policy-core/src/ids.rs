//! Ids given from outside (command line, panel, FreeRADIUS): one parser for every verb, so an id
//! one verb accepts is accepted by all of them, and one it refuses is refused by all (exit 65).

use crate::error::{Error, Result};

/// A plain positive decimal integer up to `i64::MAX` (PostgreSQL's bigint): no sign, no leading
/// zero, no whitespace, no other digits than ASCII. Anything else is [`Error::InvalidInput`].
pub fn parse_id(what: &'static str, s: &str) -> Result<i64> {
    let bad = |why: &str| Error::invalid(what, s, why);
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be a plain positive decimal integer"));
    }
    if s.starts_with('0') {
        return Err(bad("must be a plain positive decimal integer without leading zeros"));
    }
    if s.len() > 19 {
        return Err(bad("is larger than 9223372036854775807"));
    }
    s.parse::<i64>().map_err(|_| bad("is larger than 9223372036854775807"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_bigint_range_and_nothing_else() {
        assert_eq!(parse_id("id", "1").unwrap(), 1);
        assert_eq!(parse_id("id", "9223372036854775807").unwrap(), i64::MAX);
        assert_eq!(parse_id("id", "1000000000000000000").unwrap(), 1_000_000_000_000_000_000);
        for bad in ["9223372036854775808", "99999999999999999999", "0", "-1", "+5", "01", " 1", "1 "] {
            let e = parse_id("id", bad).expect_err(bad);
            assert_eq!(e.exit_code(), crate::ExitCode::DataErr, "{bad:?}");
        }
    }
}

//! Input rules: what a value must look like before pppgate stores it in SQL or applies it. The
//! CLI parses its arguments with these functions, and apply's validation (`policy::apply`) holds
//! what SQL says to the same rules, so a value a panel wrote directly meets the same limits as one
//! given to `pppgate connection set`. Every failure is `Error::InvalidInput` (exit 65).

use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;

use crate::config::parse_ipv4_net;
use crate::error::{Error, Result};
use crate::policy::model::Status;

/// The smallest speed limit the shaper (TBF) holds to (kbit/s); the largest is `policy.max_rate_kbit`.
pub const MIN_RATE_KBIT: u32 = 8;
/// Highest `ip rule` priority pppgate uses (32766 is the main table's own rule).
pub const MAX_RULE_PRIORITY: u32 = 32765;
/// Largest route metric accepted.
pub const MAX_METRIC: u32 = 1_000_000;
/// The kernel's reserved routing tables: `default`, `main`, `local`.
pub const TABLE_DEFAULT: u32 = 253;
pub const TABLE_MAIN: u32 = 254;
pub const TABLE_LOCAL: u32 = 255;

/// Ids (connection, customer) have their own module; re-exported so every input rule is here.
pub use crate::ids::parse_id;

/// Whether `kbit` is a speed limit pppgate applies: `MIN_RATE_KBIT..=max_kbit`.
pub fn rate_ok(kbit: u32, max_kbit: u32) -> bool {
    (MIN_RATE_KBIT..=max_kbit).contains(&kbit)
}

/// A rate argument in kbit/s, or `none` (unlimited).
pub fn parse_rate(s: &str, max_kbit: u32) -> Result<Option<u32>> {
    if s == "none" {
        return Ok(None);
    }
    let v = parse_u32("rate", s, u32::MAX)?;
    if !rate_ok(v, max_kbit) {
        return Err(Error::invalid("rate", s, format!("must be between {MIN_RATE_KBIT} and {max_kbit} kbit/s")));
    }
    Ok(Some(v))
}

/// A plain decimal `0..=max`.
pub fn parse_u32(what: &'static str, s: &str, max: u32) -> Result<u32> {
    match s.parse::<u32>() {
        Ok(v) if s.bytes().all(|b| b.is_ascii_digit()) && v <= max => Ok(v),
        _ => Err(Error::invalid(what, s, format!("must be an integer between 0 and {max}"))),
    }
}

/// A usable unicast IPv4 address (not 0.0.0.0, broadcast or multicast).
pub fn parse_ipv4(what: &'static str, s: &str) -> Result<Ipv4Addr> {
    let a = Ipv4Addr::from_str(s.trim()).map_err(|_| Error::invalid(what, s, "not an IPv4 address"))?;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
        return Err(Error::invalid(what, s, "not a usable unicast address"));
    }
    Ok(a)
}

/// An IPv4 network in CIDR notation (host bits must be zero).
pub fn parse_net(s: &str) -> Result<Ipv4Net> {
    parse_ipv4_net(s).map_err(|e| Error::invalid("CIDR", s, e))
}

/// A per-user route's destination: any network but the default route (that is policy routing).
pub fn parse_route_dst(s: &str) -> Result<Ipv4Net> {
    let dst = parse_net(s)?;
    if dst.prefix_len() == 0 {
        return Err(Error::invalid("CIDR", s, "a default route per user is not allowed; use pbr"));
    }
    Ok(dst)
}

/// A login (`vpn_connections.subaccount_login`) that works end to end through pppd, radius.so,
/// FreeRADIUS's stock `default` site and rlm_sql (R514, docs/SESSIONS-RADIUS.md "Which logins
/// work"). `connection add` also refuses a login that renders like an existing one
/// (`db::connections::check_rendering_free`).
pub fn check_login(login: &str) -> Result<()> {
    match login_refusal(login) {
        Some(reason) => Err(Error::invalid("login", login, reason)),
        None => Ok(()),
    }
}

/// Why `login` cannot work end to end, or `None`. The rules are judged on what FreeRADIUS sees:
/// pppd's rendering of the login (`radius::sqlname::pppd_user_name`, e.g. `à` is `M-CM- `).
pub fn login_refusal(login: &str) -> Option<String> {
    use crate::radius::sqlname::{pppd_rendering, RADIUS_STRING_MAX};
    if login.is_empty() {
        return Some("is empty".into());
    }
    if let Some(c) = login.chars().find(|c| c.is_control()) {
        return Some(format!(
            "contains the control character U+{:04X} (pppd renders control characters as ^X, the same as a typed ^X, and clients cannot type them)",
            c as u32
        ));
    }
    let r = pppd_rendering(login.as_bytes());
    let seen = String::from_utf8_lossy(&r).into_owned();
    let shown = || if seen == login { String::new() } else { format!(" (pppd sends it as {seen:?})") };
    if r.len() > RADIUS_STRING_MAX {
        return Some(format!(
            "is {} bytes as pppd sends it (every byte above 127 becomes M-x); RADIUS carries at most {RADIUS_STRING_MAX}",
            r.len()
        ));
    }
    // FreeRADIUS's stock `filter_username` policy (authorize, sites-available/default).
    if seen.contains(' ') {
        return Some(format!("contains a space{}: FreeRADIUS's filter_username rejects it", shown()));
    }
    if seen.matches('@').count() > 1 {
        return Some(format!("contains more than one @{}: FreeRADIUS's filter_username rejects it", shown()));
    }
    if seen.contains("..") {
        return Some(format!("contains ..{}: FreeRADIUS's filter_username rejects it", shown()));
    }
    if seen.ends_with('.') {
        return Some(format!("ends with a dot{}: FreeRADIUS's filter_username rejects it", shown()));
    }
    if let Some(at) = seen.find('@') {
        let realm = &seen[at + 1..];
        if realm.starts_with('.') {
            return Some(format!(
                "has a realm that begins with a dot{}: FreeRADIUS's filter_username rejects it",
                shown()
            ));
        }
        // /@(.+)\.(.+)$/: a dot after the @ with at least one character either side.
        let dotted = realm.char_indices().any(|(i, ch)| ch == '.' && i >= 1 && i + 1 < realm.len());
        if !dotted {
            return Some(format!(
                "has an @ without a dotted realm after it (user@example.net){}: FreeRADIUS's filter_username rejects it",
                shown()
            ));
        }
    }
    // The stock preprocess hints strip these suffixes off User-Name before any lookup.
    if let Some(sfx) = [".ppp", ".slip", ".cslip"].into_iter().find(|s| seen.ends_with(s)) {
        return Some(format!(
            "ends with {sfx}{}: FreeRADIUS's stock preprocess hints strip it from User-Name",
            shown()
        ));
    }
    None
}

/// A connection status as SQL stores it.
pub fn parse_status(s: &str) -> Result<Status> {
    Status::from_str(s).map_err(|_| {
        Error::invalid("status", s, "not one of PREPROVISIONED CLAIMED SUSPENDED UNCLAIMED DISABLED DELETED")
    })
}

/// A policy-routing rule name: 1–64 characters of `[A-Za-z0-9_.-]`.
pub fn check_rule_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)) {
        return Err(Error::invalid("rule name", name, "must be 1-64 characters of [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// An interface name the kernel accepts.
pub fn check_ifname(name: &str) -> Result<()> {
    if !crate::mapping::valid_ifname(name) {
        return Err(Error::invalid("interface", name, "not a valid interface name"));
    }
    Ok(())
}

/// The table a per-user route may go into: any but `local`; `main` is stored as "no table".
/// `raw` is what the caller named it (for the message).
pub fn route_table(raw: &str, id: u32) -> Result<Option<u32>> {
    if id == TABLE_LOCAL {
        return Err(Error::invalid("routing table", raw, "the local table is not for per-user routes"));
    }
    Ok(if id == TABLE_MAIN { None } else { Some(id) })
}

/// The table a policy-routing rule may point at: none of `default`, `main`, `local`.
pub fn pbr_table(raw: &str, id: u32) -> Result<u32> {
    if [TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL].contains(&id) {
        return Err(Error::invalid("routing table", raw, "default/main/local cannot be used for policy routing"));
    }
    Ok(id)
}

/// An `ip rule` priority: `1..=MAX_RULE_PRIORITY`.
pub fn parse_priority(s: &str) -> Result<u32> {
    let p = parse_u32("priority", s, MAX_RULE_PRIORITY)?;
    if p == 0 {
        return Err(Error::invalid("priority", s, format!("must be between 1 and {MAX_RULE_PRIORITY}")));
    }
    Ok(p)
}

/// A quota in bytes (non-negative decimal), or `none`.
pub fn parse_quota(s: &str) -> Result<Option<i64>> {
    if s == "none" {
        return Ok(None);
    }
    s.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0 && s.bytes().all(|b| b.is_ascii_digit()))
        .map(Some)
        .ok_or_else(|| Error::invalid("quota", s, "bytes as a non-negative integer, or none"))
}

/// An expiry as Unix seconds, or `none`.
pub fn parse_expiry(s: &str) -> Result<Option<i64>> {
    if s == "none" {
        return Ok(None);
    }
    s.parse::<i64>().map(Some).map_err(|_| Error::invalid("expiry", s, "Unix seconds, or none"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_positive_decimals() {
        assert_eq!(parse_id("id", "1").unwrap(), 1);
        assert_eq!(parse_id("id", "9223372036854775807").unwrap(), i64::MAX);
        for bad in ["", "0", "-1", "+1", "01", " 1", "1 ", "0x10", "1; rm -rf /", "9223372036854775808", "1e3"] {
            assert!(matches!(parse_id("id", bad), Err(Error::InvalidInput { .. })), "{bad:?} accepted");
        }
        assert!(parse_id("id", &"1".repeat(20)).is_err());
    }

    #[test]
    fn rates() {
        assert!(!rate_ok(7, 1000) && rate_ok(8, 1000) && rate_ok(1000, 1000) && !rate_ok(1001, 1000));
        assert_eq!(parse_rate("none", 1000).unwrap(), None);
        assert_eq!(parse_rate("500", 1000).unwrap(), Some(500));
        for bad in ["7", "1001", "-5", "5k", "", " 500"] {
            assert!(parse_rate(bad, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn logins_names_and_tables() {
        assert!(check_login("o'brien\"x\"=\\ü%^~`").is_ok());
        assert!(check_login("").is_err() && check_login("a\nb").is_err() && check_login(&"a".repeat(254)).is_err());
        assert!(check_rule_name("ktn-1.a_b").is_ok());
        assert!(
            check_rule_name("a b").is_err()
                && check_rule_name("").is_err()
                && check_rule_name(&"a".repeat(65)).is_err()
        );
        assert_eq!(route_table("main", TABLE_MAIN).unwrap(), None);
        assert_eq!(route_table("100", 100).unwrap(), Some(100));
        assert!(route_table("local", TABLE_LOCAL).is_err());
        for t in [TABLE_DEFAULT, TABLE_MAIN, TABLE_LOCAL] {
            assert!(pbr_table("x", t).is_err());
        }
        assert_eq!(pbr_table("ktn", 100).unwrap(), 100);
    }

    /// R514: which logins work end to end; the refusal names the reason.
    #[test]
    fn logins_that_cannot_work_are_refused_with_the_reason() {
        let ok = [
            "alice",
            "o'brien",
            "x\"y",
            "back\\slash",
            "50%=half",
            "bob@example.net",
            "jürgen",
            "Ελένη",
            "Иван",
            "名前",
            "tab-less!#$&()*+,/:;<>?[]^_`{|}~",
            &"a".repeat(253) as &str,
            &"é".repeat(42) as &str,
        ];
        for l in ok {
            assert_eq!(login_refusal(l), None, "{l:?}");
        }
        let bad = [
            ("", "empty"),
            ("a\tb", "control character U+0009"),
            ("a\u{85}b", "control character U+0085"),
            (&"a".repeat(254) as &str, "at most 253"),
            (&"é".repeat(43) as &str, "at most 253"),
            ("a b", "space"),
            (" a", "space"),
            ("à", "pppd sends it as \"M-CM- \""),
            ("a@b@c.d", "more than one @"),
            ("a..b", "contains .."),
            ("®.", "contains .."),
            ("a.", "ends with a dot"),
            ("a®", "ends with a dot"),
            ("a@.b.c", "begins with a dot"),
            ("a@b", "dotted realm"),
            // р (U+0440) is D1 80; pppd renders the byte 0x80 as M-^@: the reason must say so
            // (the lab's name list: "has an @" alone puzzled, the login has none).
            ("Дмитрий", "dotted realm"),
            ("Дмитрий", "pppd sends it as \"M-PM-^TM-PM-<M-PM-8M-QM-^BM-QM-^@M-PM-8M-PM-9\""),
            ("рр@b.c", "more than one @ (pppd sends it as"),
            ("ü@.b", "begins with a dot (pppd sends it as"),
            ("a@b.", "ends with a dot"),
            ("dial.ppp", "ends with .ppp"),
            ("x.cslip", "ends with .cslip"),
        ];
        for (l, why) in bad {
            let r = login_refusal(l).unwrap_or_else(|| panic!("{l:?} accepted"));
            assert!(r.contains(why), "{l:?}: {r}");
            let e = check_login(l).unwrap_err();
            assert_eq!(e.exit_code(), crate::error::ExitCode::DataErr, "{l:?}");
            assert!(!e.to_string().contains('\n'), "one line");
        }
    }

    #[test]
    fn numbers_and_addresses() {
        assert_eq!(parse_priority("100").unwrap(), 100);
        assert!(parse_priority("0").is_err() && parse_priority("32766").is_err());
        assert_eq!(parse_quota("none").unwrap(), None);
        assert_eq!(parse_quota("0").unwrap(), Some(0));
        assert!(parse_quota("-1").is_err() && parse_quota("1.5").is_err());
        assert_eq!(parse_expiry("1700000000").unwrap(), Some(1_700_000_000));
        assert!(parse_expiry("soon").is_err());
        assert!(parse_ipv4("gw", "10.0.0.1").is_ok());
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "10.0.0", "x"] {
            assert!(parse_ipv4("gw", bad).is_err(), "{bad}");
        }
        assert!(parse_route_dst("0.0.0.0/0").is_err());
        assert!(parse_route_dst("192.168.50.0/24").is_ok());
        assert!(parse_status("CLAIMED").is_ok() && parse_status("claimed").is_err());
    }
}

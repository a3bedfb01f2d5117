//! The user as FreeRADIUS receives, stores and counts it — derived from the whole chain a PAP
//! login passes on a pppgate NAS (docs/SESSIONS-RADIUS.md, "One name through the chain"):
//!
//! 1. **pppd** (2.4.9 `check_passwd`, 2.5 the same) hands the authenticated name to `radius.so`'s
//!    PAP hook as `slprintf(user, 256, "%.*v", len, name)`: stops at a NUL; a byte ≥ 0x80 becomes
//!    `M-` followed by the rendering of the byte − 0x80; a control byte (< 0x20, DEL) becomes
//!    `^` + (byte ^ 0x40), TAB stays a TAB; at most 255 bytes. radius.so sends that string as
//!    User-Name in Access-Request and accounting ([`pppd_user_name`]; `jürgen` → `jM-CM-<rgen`).
//!    pppd's own `peer_authname` (what pppgate.so reads) keeps the raw bytes.
//! 2. **FreeRADIUS 3.2** sets `SQL-User-Name` from `sql_user_name = "%{User-Name}"`. An attribute
//!    expanded without an escape function is printed by `fr_prints` with `"` as the quote
//!    ([`xlat_quote`]): `"` → `\"`, `\` → `\\`, CR/LF/TAB → `\r` `\n` `\t`, every byte that
//!    does not start a printable UTF-8 character → `\ooo`.
//! 3. **rlm_sql** expands `%{SQL-User-Name}` in its queries through `sql_escape_func`
//!    ([`sql_escape`]): every byte outside `safe_characters` (default `@a-zA-Z0-9.-_: /`) and
//!    not starting a multi-byte UTF-8 character becomes `=XX`. So `x" y` is stored as
//!    `x=5C=22 y`, `o'brien` as `o=27brien`, `jürgen` as `jM-CM-=3Crgen`.
//!
//! [`sql_username`] is the composition for a login (what radacct.username holds, what
//! FreeRADIUS's Simultaneous-Use count compares, what an operator writes into
//! radcheck.username); [`stored_user_name`] is steps 2–3 for a User-Name as FreeRADIUS hands it
//! to the exec hook; [`user_name_from_stored`] reverses steps 2–3 for checkrad. Each step is
//! injective, so two logins that differ after pppd's rendering never share a stored name; pppd's
//! rendering itself is not (`jM-CM-<rgen` typed in ASCII renders like `jürgen`), which is why
//! `connection add` refuses a login whose rendering another login already has.
//!
//! Assumptions (docs/SESSIONS-RADIUS.md): `sql_user_name = "%{User-Name}"`, the default
//! `safe_characters`, `auto_escape = no`.

use super::env::utf8_char_len;

/// FreeRADIUS 3.2's default `safe_characters` of the sql module.
pub const DEFAULT_SAFE_CHARACTERS: &str = "@abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_: /";

/// pppd renders the name into `char user[256]`: at most 255 bytes survive.
pub const PPPD_USER_MAX: usize = 255;

/// The longest string a RADIUS attribute carries (radius.so's User-Name included).
pub const RADIUS_STRING_MAX: usize = 253;

/// pppd's `%v` rendering of one byte.
fn render_byte(b: u8, out: &mut Vec<u8>) {
    let mut c = b;
    if c >= 0x80 {
        out.extend_from_slice(b"M-");
        c -= 0x80;
    }
    if c < 0x20 || c == 0x7f {
        if c == b'\t' {
            out.push(c);
        } else {
            out.push(b'^');
            out.push(c ^ 0x40);
        }
    } else {
        out.push(c);
    }
}

/// The whole `%v` rendering of `login` (up to a NUL), not cut to pppd's buffer.
pub fn pppd_rendering(login: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(login.len());
    for &b in login.iter().take_while(|b| **b != 0) {
        render_byte(b, &mut out);
    }
    out
}

/// The User-Name radius.so sends for `login`: pppd's rendering, cut at [`PPPD_USER_MAX`] bytes
/// the way pppd's `OUTCHAR` cuts it (mid-sequence if need be).
pub fn pppd_user_name(login: &[u8]) -> Vec<u8> {
    let mut out = pppd_rendering(login);
    out.truncate(PPPD_USER_MAX);
    out
}

/// FreeRADIUS's `fr_prints(…, quote = '"')`: how `%{User-Name}` is expanded into SQL-User-Name.
pub fn xlat_quote(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        // fr_prints never prints a trailing NUL.
        if i + 1 == value.len() && b == 0 {
            break;
        }
        let sp = match b {
            b'"' => Some(b'"'),
            b'\r' => Some(b'r'),
            b'\n' => Some(b'n'),
            b'\t' => Some(b't'),
            b'\\' => Some(b'\\'),
            _ => None,
        };
        if let Some(s) = sp {
            out.extend_from_slice(&[b'\\', s]);
            i += 1;
            continue;
        }
        let n = utf8_char_len(&value[i..]);
        if n == 0 {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            i += 1;
        } else {
            out.extend_from_slice(&value[i..i + n]);
            i += n;
        }
    }
    out
}

/// Reverses [`xlat_quote`]; `None` when `s` is not something it writes.
pub fn xlat_unquote(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
            continue;
        }
        match *s.get(i + 1)? {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            d @ b'0'..=b'3' => {
                let (e, f) = (*s.get(i + 2)?, *s.get(i + 3)?);
                if !(b'0'..=b'7').contains(&e) || !(b'0'..=b'7').contains(&f) {
                    return None;
                }
                out.push((d - b'0') * 64 + (e - b'0') * 8 + (f - b'0'));
                i += 4;
                continue;
            }
            _ => return None,
        }
        i += 2;
    }
    (xlat_quote(&out) == s).then_some(out)
}

/// radacct.username (and radcheck.username) for a User-Name as FreeRADIUS received it.
pub fn stored_user_name(user_name: &[u8]) -> String {
    sql_escape(&xlat_quote(user_name), DEFAULT_SAFE_CHARACTERS.as_bytes())
}

/// The user as FreeRADIUS stores and counts it: radacct.username, radcheck.username and the
/// name Simultaneous-Use compares, for the login a client authenticates with.
pub fn sql_username(login: &[u8]) -> String {
    stored_user_name(&pppd_user_name(login))
}

/// The User-Name FreeRADIUS received, from radacct.username; `None` when `stored` is not
/// something FreeRADIUS + rlm_sql write.
pub fn user_name_from_stored(stored: &str) -> Option<Vec<u8>> {
    let quoted = sql_unescape(stored)?;
    let user_name = xlat_unquote(&quoted)?;
    (stored_user_name(&user_name) == stored).then_some(user_name)
}

/// Reverses rlm_sql's escaping; `None` when `stored` is not something it writes.
pub fn sql_unescape(stored: &str) -> Option<Vec<u8>> {
    let b = stored.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'=' => {
                let hex = stored.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'\\' => {
                out.push(match b.get(i + 1)? {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    _ => return None,
                });
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    (sql_escape(&out, DEFAULT_SAFE_CHARACTERS.as_bytes()) == stored).then_some(out)
}

/// rlm_sql's `sql_escape_func` (FreeRADIUS 3.2), including its quirk that the byte right after
/// an escaped CR/LF/TAB is judged by the safe-character rule only (so a multi-byte character
/// there is `=XX`-escaped byte by byte). The value is a C string to FreeRADIUS: it ends at a NUL.
pub fn sql_escape(input: &[u8], safe: &[u8]) -> String {
    let end = input.iter().position(|b| *b == 0).unwrap_or(input.len());
    let input = &input[..end];
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let n = utf8_char_len(&input[i..]);
        if n > 1 {
            out.push_str(std::str::from_utf8(&input[i..i + n]).expect("utf8_char_len checked it"));
            i += n;
            continue;
        }
        match input[i] {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            _ => {}
        }
        if matches!(input[i], b'\n' | b'\r' | b'\t') {
            i += 1;
            if i >= input.len() {
                break;
            }
        }
        let b = input[i];
        if !(32..0x80).contains(&b) || !safe.contains(&b) {
            out.push_str(&format!("={b:02X}"));
        } else {
            out.push(b as char);
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn esc(v: &[u8]) -> String {
        sql_escape(v, DEFAULT_SAFE_CHARACTERS.as_bytes())
    }

    #[test]
    fn ordinary_logins_are_unchanged() {
        for l in ["alice", "bob@example.net", "user_1.test-2", "a b:c/d"] {
            assert_eq!(sql_username(l.as_bytes()), l);
        }
    }

    /// The values the lab saw in radacct (issue 16) and FINDINGS.md.
    #[test]
    fn the_chain_gives_what_radacct_held_in_the_lab() {
        assert_eq!(pppd_user_name("jürgen".as_bytes()), b"jM-CM-<rgen");
        assert_eq!(sql_username("jürgen".as_bytes()), "jM-CM-=3Crgen");
        assert_eq!(sql_username(b"x\" y"), "x=5C=22 y");
        assert_eq!(esc(b"%lX6b01f7fd%hX"), "=25lX6b01f7fd=25hX");
    }

    #[test]
    fn pppd_renders_like_its_percent_v() {
        assert_eq!(pppd_rendering(b"a\x01b"), b"a^Ab");
        assert_eq!(pppd_rendering(b"a\x7fb"), b"a^?b");
        assert_eq!(pppd_rendering(b"a\tb"), b"a\tb");
        assert_eq!(pppd_rendering(b"\x81"), b"M-^A");
        assert_eq!(pppd_rendering(b"\x89"), b"M-\t");
        assert_eq!(pppd_rendering(b"\xff"), b"M-^?");
        assert_eq!(pppd_rendering(b"\xa0"), b"M- ");
        assert_eq!(pppd_rendering(b"ab\0cd"), b"ab");
        // 200 two-byte characters: 1200 bytes rendered, pppd keeps 255.
        let long = "é".repeat(200);
        assert_eq!(pppd_user_name(long.as_bytes()).len(), PPPD_USER_MAX);
    }

    #[test]
    fn freeradius_quotes_before_rlm_sql_escapes() {
        assert_eq!(xlat_quote(b"a\"b\\c"), b"a\\\"b\\\\c");
        assert_eq!(xlat_quote(b"a\tb\x01\x7f"), b"a\\tb\\001\\177");
        assert_eq!(xlat_quote("ü'%".as_bytes()), "ü'%".as_bytes());
        assert_eq!(sql_username(b"a\"b\\c"), "a=5C=22b=5C=5Cc");
        assert_eq!(sql_username(b"o'brien"), "o=27brien");
        assert_eq!(sql_username(b"a=b"), "a=3Db");
        assert_eq!(sql_username(b"x;drop"), "x=3Bdrop");
        assert_eq!(sql_username(b"50%"), "50=25");
        assert_eq!(sql_username(b"a\tb"), "a=5Ctb");
        assert_eq!(sql_username(b"a\x01b"), "a=5EAb");
    }

    #[test]
    fn rlm_sql_escape_keeps_its_quirks() {
        assert_eq!(esc("jürgen".as_bytes()), "jürgen");
        assert_eq!(esc(b"a\tb"), "a\\tb");
        assert_eq!(esc("a\nü".as_bytes()), "a\\n=C3=BC");
        assert_eq!(esc(b"a\n\nb"), "a\\n=0Ab");
        assert_eq!(esc(b"ab\0cd"), "ab");
        assert_eq!(esc(b"\x01\x7f\xff"), "=01=7F=FF");
    }

    #[test]
    fn stored_names_lead_back_to_the_user_name() {
        for u in [&b"alice"[..], b"x\\\" y", b"jM-CM-<rgen", b"a\tb", b"o'brien%=", "ü".as_bytes()] {
            let stored = stored_user_name(u);
            assert_eq!(user_name_from_stored(&stored).as_deref(), Some(u), "{stored}");
        }
        // Not FreeRADIUS's output: lowercase hex, a bare quote, '=' without hex, =41 for 'A',
        // a backslash rlm_sql would have escaped, a quote xlat would have escaped.
        for s in ["o=2fx", "o'brien", "a=b", "a=", "=41", "a\\tb", "a=22b"] {
            assert_eq!(user_name_from_stored(s), None, "{s}");
        }
    }

    proptest! {
        #[test]
        fn escaped_names_never_collide(a in proptest::collection::vec(1u8..=255, 0..40), b in proptest::collection::vec(1u8..=255, 0..40)) {
            // Steps 2–3 are injective on every User-Name.
            if a != b {
                prop_assert_ne!(stored_user_name(&a), stored_user_name(&b));
            }
        }

        #[test]
        fn stored_names_are_printable(a in proptest::collection::vec(any::<u8>(), 0..60)) {
            let s = sql_username(&a);
            prop_assert!(!s.bytes().any(|b| b < 0x20 || b == 0x7f));
            let s = stored_user_name(&a);
            prop_assert!(!s.bytes().any(|b| b < 0x20 || b == 0x7f));
        }

        #[test]
        fn user_name_round_trips(v in proptest::collection::vec(1u8..=255, 0..40)) {
            prop_assert_eq!(user_name_from_stored(&stored_user_name(&v)), Some(v));
        }

        #[test]
        fn pppd_output_is_printable_ascii_or_tab(v in proptest::collection::vec(any::<u8>(), 0..80)) {
            let r = pppd_user_name(&v);
            prop_assert!(r.len() <= PPPD_USER_MAX);
            prop_assert!(r.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t'));
        }
    }
}

//! How a RADIUS User-Name appears in `radacct.username`.
//!
//! rlm_sql (FreeRADIUS 3.2, `auto_escape = no`, the default) expands `%{SQL-User-Name}` through
//! its own escape function before it reaches the database: every byte that is not in
//! `safe_characters` (default `@a-zA-Z0-9.-_: /`) and does not start a multi-byte UTF-8 character
//! is written as `=XX` (uppercase hex); CR, LF and TAB become `\r`, `\n`, `\t`. So the login
//! `o'brien%x` is stored as `o=27brien=25x` (FINDINGS.md saw `%` stored as `=25`).
//!
//! Every radacct lookup by user name therefore compares against [`sql_username`] of the login,
//! never the raw login: the escaped forms of two different logins never collide (`=` itself is
//! not safe and is escaped), while a raw login can equal another login's escaped form.
//!
//! Assumptions, documented in docs/SESSIONS-RADIUS.md: `sql_user_name = "%{User-Name}"`, the
//! default `safe_characters`, and `auto_escape = no` in FreeRADIUS's sql module.

use super::env::utf8_char_len;

/// FreeRADIUS 3.2's default `safe_characters` of the sql module.
pub const DEFAULT_SAFE_CHARACTERS: &str = "@abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_: /";

/// The user name as rlm_sql writes it into radacct (see the module docs).
///
/// Faithful to rlm_sql's `sql_escape_func`, including its quirk that the byte right after an
/// escaped CR/LF/TAB is judged by the safe-character rule only (so a multi-byte character there
/// is `=XX`-escaped byte by byte). The value is a C string to FreeRADIUS: it ends at a NUL.
pub fn sql_username(login: &[u8]) -> String {
    sql_escape(login, DEFAULT_SAFE_CHARACTERS.as_bytes())
}

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

    #[test]
    fn ordinary_logins_are_unchanged() {
        for l in ["alice", "bob@example.net", "user_1.test-2", "a b:c/d"] {
            assert_eq!(sql_username(l.as_bytes()), l);
        }
    }

    #[test]
    fn unsafe_bytes_are_mime_escaped() {
        assert_eq!(sql_username(b"o'brien"), "o=27brien");
        assert_eq!(sql_username(b"%lX6b01f7fd%hX"), "=25lX6b01f7fd=25hX");
        assert_eq!(sql_username(b"a=b"), "a=3Db");
        assert_eq!(sql_username(b"x;drop"), "x=3Bdrop");
        assert_eq!(sql_username(b"\x01\x7f\xff"), "=01=7F=FF");
        assert_eq!(sql_username(b"a\"b\\c"), "a=22b=5Cc");
    }

    #[test]
    fn utf8_passes_and_controls_are_escaped() {
        assert_eq!(sql_username("jürgen".as_bytes()), "jürgen");
        assert_eq!(sql_username(b"a\tb"), "a\\tb");
        assert_eq!(sql_username(b"a\nb"), "a\\nb");
        // The quirk: the byte after an escaped control character skips the UTF-8 check.
        assert_eq!(sql_username("a\nü".as_bytes()), "a\\n=C3=BC");
        assert_eq!(sql_username(b"a\n\nb"), "a\\n=0Ab");
        assert_eq!(sql_username(b"ab\0cd"), "ab");
    }

    proptest! {
        #[test]
        fn escaped_names_never_collide(a in proptest::collection::vec(1u8..=255, 0..40), b in proptest::collection::vec(1u8..=255, 0..40)) {
            // Without CR/LF/TAB (whose quirk is outside any sane login) the escape is injective.
            let clean = |v: &Vec<u8>| !v.iter().any(|x| matches!(x, b'\n' | b'\r' | b'\t'));
            if a != b && clean(&a) && clean(&b) {
                prop_assert_ne!(sql_username(&a), sql_username(&b));
            }
        }

        #[test]
        fn escaped_names_are_printable(a in proptest::collection::vec(any::<u8>(), 0..60)) {
            let s = sql_username(&a);
            prop_assert!(!s.bytes().any(|b| b < 0x20 || b == 0x7f));
        }
    }
}

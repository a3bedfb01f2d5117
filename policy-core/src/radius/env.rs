//! The environment FreeRADIUS 3.2's rlm_exec gives a program (`shell_escape = yes`).
//!
//! How FreeRADIUS builds it (src/main/exec.c, `radius_start_program`): for every attribute of
//! `input_pairs` it writes `NAME=VALUE` where NAME is the attribute name with ASCII letters
//! uppercased and `-` turned into `_` (`User-Name` → `USER_NAME`), and VALUE is
//! `vp_prints_value(…, quote = '"')`:
//! * string attributes are wrapped in double quotes and escaped by `fr_prints`: the quote becomes
//!   `\"`, a backslash `\\`, CR/LF/TAB `\r` `\n` `\t`; every byte that does not start a valid
//!   printable UTF-8 character (bytes below 0x20, 0x7f, stray continuation bytes, invalid
//!   sequences) becomes a three-digit octal escape `\ooo`; valid multi-byte UTF-8 passes as is;
//! * other types (integers, enumerated names, addresses, dates in some versions) are printed bare.
//!
//! [`decode_value`] reverses this exactly: a value that starts with `"` must be one complete,
//! correctly escaped quoted string (anything else is malformed, never guessed at); a value that
//! does not start with `"` is taken literally. FreeRADIUS truncates an entry at 1023 bytes; a
//! truncated quoted value has no closing quote and is therefore rejected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Why a value is not what FreeRADIUS writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvValueError {
    #[error("quoted value has no closing quote")]
    Unterminated,
    #[error("text after the closing quote at byte {0}")]
    TrailingData(usize),
    #[error("unescaped quote inside the value at byte {0}")]
    BareQuote(usize),
    #[error("unknown escape sequence at byte {0}")]
    BadEscape(usize),
    #[error("octal escape out of range at byte {0}")]
    BadOctal(usize),
}

/// Decodes one environment value as FreeRADIUS wrote it (see the module docs).
pub fn decode_value(raw: &[u8]) -> Result<Vec<u8>, EnvValueError> {
    if raw.first() != Some(&b'"') {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 1;
    loop {
        let Some(&b) = raw.get(i) else { return Err(EnvValueError::Unterminated) };
        match b {
            b'"' => {
                if i + 1 != raw.len() {
                    return Err(EnvValueError::TrailingData(i + 1));
                }
                return Ok(out);
            }
            b'\\' => {
                let Some(&e) = raw.get(i + 1) else { return Err(EnvValueError::Unterminated) };
                match e {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'0'..=b'7' => {
                        let digits = raw.get(i + 1..i + 4).ok_or(EnvValueError::BadEscape(i))?;
                        if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                            return Err(EnvValueError::BadEscape(i));
                        }
                        let v = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                        let byte = u8::try_from(v).map_err(|_| EnvValueError::BadOctal(i))?;
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                    _ => return Err(EnvValueError::BadEscape(i)),
                }
                i += 2;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// Encodes bytes the way FreeRADIUS does for the environment (the inverse of [`decode_value`] for
/// string attributes; FreeRADIUS additionally drops one trailing NUL). Used by tests and by
/// anyone simulating rlm_exec.
pub fn encode_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'"');
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        let esc = match b {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'\r' => Some(b'r'),
            b'\n' => Some(b'n'),
            b'\t' => Some(b't'),
            _ => None,
        };
        if let Some(e) = esc {
            out.extend_from_slice(&[b'\\', e]);
            i += 1;
            continue;
        }
        match utf8_char_len(&value[i..]) {
            0 => {
                out.extend_from_slice(format!("\\{b:03o}").as_bytes());
                i += 1;
            }
            n => {
                out.extend_from_slice(&value[i..i + n]);
                i += n;
            }
        }
    }
    out.push(b'"');
    out
}

/// Length of the printable UTF-8 character at the start of `s`, or 0 when it is not one: the
/// same rule as FreeRADIUS's `fr_utf8_char` (which also refuses bytes below 0x20 and 0x7f).
pub fn utf8_char_len(s: &[u8]) -> usize {
    let Some(&b0) = s.first() else { return 0 };
    if b0 < 0x20 {
        return 0;
    }
    if b0 <= 0x7e {
        return 1;
    }
    if b0 <= 0xc1 {
        return 0;
    }
    let cont = |i: usize| s.get(i).is_some_and(|b| (0x80..=0xbf).contains(b));
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    if b0 <= 0xdf {
        return if cont(1) { 2 } else { 0 };
    }
    if s.len() < 3 {
        return 0;
    }
    let three = match b0 {
        0xe0 => (0xa0..=0xbf).contains(&at(1)) && cont(2),
        0xe1..=0xec | 0xee | 0xef => cont(1) && cont(2),
        0xed => (0x80..=0x9f).contains(&at(1)) && cont(2),
        _ => false,
    };
    if three {
        return 3;
    }
    if s.len() < 4 {
        return 0;
    }
    let four = match b0 {
        0xf0 => (0x90..=0xbf).contains(&at(1)) && cont(2) && cont(3),
        0xf1..=0xf3 => cont(1) && cont(2) && cont(3),
        0xf4 => (0x80..=0x8f).contains(&at(1)) && cont(2) && cont(3),
        _ => false,
    };
    if four {
        4
    } else {
        0
    }
}

/// The attributes FreeRADIUS passed, by environment name (`USER_NAME`), decoded.
#[derive(Debug, Clone, Default)]
pub struct RadiusEnv {
    vars: BTreeMap<String, Result<Vec<u8>, EnvValueError>>,
}

impl RadiusEnv {
    /// Reads the process environment. Names that are not `[A-Z0-9_]+` are not FreeRADIUS's and
    /// are ignored.
    pub fn from_process() -> RadiusEnv {
        Self::from_pairs(std::env::vars_os())
    }

    pub fn from_pairs<I: IntoIterator<Item = (OsString, OsString)>>(pairs: I) -> RadiusEnv {
        let mut vars = BTreeMap::new();
        for (k, v) in pairs {
            let Ok(k) = k.into_string() else { continue };
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                continue;
            }
            vars.insert(k, decode_value(&v.into_vec()));
        }
        RadiusEnv { vars }
    }

    /// The environment name FreeRADIUS uses for an attribute (`User-Name` → `USER_NAME`).
    pub fn env_name(attribute: &str) -> String {
        attribute.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }).collect()
    }

    /// The decoded value of an attribute; `None` when it was not passed.
    pub fn get(&self, attribute: &str) -> Option<&Result<Vec<u8>, EnvValueError>> {
        self.vars.get(&Self::env_name(attribute))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &[u8]) -> Result<Vec<u8>, EnvValueError> {
        decode_value(s)
    }

    #[test]
    fn plain_and_quoted() {
        assert_eq!(d(b"\"alice\"").unwrap(), b"alice");
        assert_eq!(d(b"\"\"").unwrap(), b"");
        // Bare (non-string attributes, or shell_escape = no): literal.
        assert_eq!(d(b"192.0.2.1").unwrap(), b"192.0.2.1");
        assert_eq!(d(b"Framed-User").unwrap(), b"Framed-User");
        assert_eq!(d(b"").unwrap(), b"");
    }

    #[test]
    fn spaces_equals_quotes_backslashes() {
        assert_eq!(d(br#""a b=c""#).unwrap(), b"a b=c");
        assert_eq!(d(br#""say \"hi\"""#).unwrap(), b"say \"hi\"");
        assert_eq!(d(br#""C:\\dir\\x""#).unwrap(), b"C:\\dir\\x");
        assert_eq!(d(br#""a\nb\rc\td""#).unwrap(), b"a\nb\rc\td");
        assert_eq!(d(br#""USER_NAME=\"x\"""#).unwrap(), b"USER_NAME=\"x\"");
    }

    #[test]
    fn octal_and_non_ascii() {
        assert_eq!(d(br#""\001\177\377""#).unwrap(), vec![1u8, 0x7f, 0xff]);
        assert_eq!(d("\"jürgen@bücher.de\"".as_bytes()).unwrap(), "jürgen@bücher.de".as_bytes());
        // Latin-1 ü (invalid UTF-8) arrives octal-escaped.
        assert_eq!(d(br#""j\374rgen""#).unwrap(), b"j\xfcrgen");
        assert_eq!(d(br#""\000""#).unwrap(), vec![0u8]);
    }

    #[test]
    fn malformed_is_refused() {
        assert_eq!(d(b"\"abc"), Err(EnvValueError::Unterminated));
        assert_eq!(d(b"\"abc\\\""), Err(EnvValueError::Unterminated));
        assert_eq!(d(b"\""), Err(EnvValueError::Unterminated));
        assert_eq!(d(b"\"a\"b\""), Err(EnvValueError::TrailingData(3)));
        assert_eq!(d(b"\"a\"\""), Err(EnvValueError::TrailingData(3)));
        assert_eq!(d(b"\"\\x41\""), Err(EnvValueError::BadEscape(1)));
        assert_eq!(d(b"\"\\18\""), Err(EnvValueError::BadEscape(1)));
        assert_eq!(d(b"\"\\12\""), Err(EnvValueError::BadEscape(1)));
        assert_eq!(d(b"\"\\400\""), Err(EnvValueError::BadOctal(1)));
    }

    #[test]
    fn encode_matches_freeradius_examples() {
        assert_eq!(encode_value(b"BobUser"), b"\"BobUser\"");
        assert_eq!(encode_value(b"a\"b\\c\nd"), br#""a\"b\\c\nd""#.to_vec());
        assert_eq!(encode_value(b"\x01\x7f"), br#""\001\177""#.to_vec());
        assert_eq!(encode_value("ü".as_bytes()), "\"ü\"".as_bytes());
        assert_eq!(encode_value(b"\xc3"), br#""\303""#.to_vec());
    }

    #[test]
    fn env_names() {
        assert_eq!(RadiusEnv::env_name("User-Name"), "USER_NAME");
        assert_eq!(RadiusEnv::env_name("NAS-IP-Address"), "NAS_IP_ADDRESS");
        let env = RadiusEnv::from_pairs(vec![
            (OsString::from("USER_NAME"), OsString::from("\"bob smith\"")),
            (OsString::from("NAS_PORT"), OsString::from("7")),
            (OsString::from("lowercase"), OsString::from("\"x\"")),
        ]);
        assert_eq!(env.get("User-Name").unwrap().as_ref().unwrap(), b"bob smith");
        assert_eq!(env.get("NAS-Port").unwrap().as_ref().unwrap(), b"7");
        assert!(env.get("lowercase").is_none());
        assert!(env.get("Calling-Station-Id").is_none());
    }

    #[test]
    fn utf8_rule_matches_freeradius() {
        assert_eq!(utf8_char_len(b"a"), 1);
        assert_eq!(utf8_char_len(b"\x1f"), 0);
        assert_eq!(utf8_char_len(b"\x7f"), 0);
        assert_eq!(utf8_char_len("é".as_bytes()), 2);
        assert_eq!(utf8_char_len("€".as_bytes()), 3);
        assert_eq!(utf8_char_len("😀".as_bytes()), 4);
        assert_eq!(utf8_char_len(b"\xed\xa0\x80"), 0); // surrogate
        assert_eq!(utf8_char_len(b"\xe0\x80\x80"), 0); // overlong
        assert_eq!(utf8_char_len(b"\xc0\xaf"), 0);
        assert_eq!(utf8_char_len(b"\xf4\x90\x80\x80"), 0); // > U+10FFFF
    }

    proptest! {
        #[test]
        fn round_trip_any_bytes(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(decode_value(&encode_value(&v)).unwrap(), v);
        }

        #[test]
        fn round_trip_any_string(s in "\\PC{0,80}") {
            prop_assert_eq!(decode_value(&encode_value(s.as_bytes())).unwrap(), s.as_bytes().to_vec());
        }

        #[test]
        fn encoded_values_are_printable_and_utf8(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let e = encode_value(&v);
            prop_assert!(std::str::from_utf8(&e).is_ok());
            prop_assert!(!e.iter().any(|b| *b < 0x20 || *b == 0x7f));
        }

        #[test]
        fn decoder_never_panics(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_value(&v);
        }

        #[test]
        fn truncated_quoted_values_are_refused(v in proptest::collection::vec(any::<u8>(), 1..100), cut in 1usize..100) {
            let e = encode_value(&v);
            let cut = cut.min(e.len() - 1);
            // Every proper prefix of an encoded value lacks its closing quote (or ends inside an
            // escape) and is refused; FreeRADIUS's 1023-byte truncation can never pass as a value.
            prop_assert!(decode_value(&e[..cut]).is_err());
        }

        #[test]
        fn decoding_is_unambiguous(a in proptest::collection::vec(any::<u8>(), 0..60), b in proptest::collection::vec(any::<u8>(), 0..60)) {
            if a != b {
                prop_assert_ne!(encode_value(&a), encode_value(&b));
            }
        }
    }
}

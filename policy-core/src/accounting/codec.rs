//! The on-disk container of every accounting file (state, spool records, final markers).
//!
//! ```text
//! <magic> v<version> len=<body bytes> crc32=<8 hex digits>\n
//! <body: JSON, exactly len bytes>
//! ```
//!
//! The header is read first and only as far as the version: a file written by a newer pppgate is
//! recognised as such (and left alone) even if its header grew other fields. For the versions
//! this build knows, the length and the CRC-32 make a truncated, extended or bit-flipped file a
//! [`DecodeError`], never a silently different value.

use std::fmt;

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not one of our files (wrong magic) or an unreadable header line.
    NotOurs,
    /// Written by a newer pppgate: this build reads up to `known`.
    NewerVersion {
        found: u32,
        known: u32,
    },
    /// The header is ours but malformed.
    BadHeader(String),
    /// Fewer body bytes than the header announces (an interrupted write).
    Truncated {
        expected: usize,
        found: usize,
    },
    /// More bytes than the header announces.
    TrailingBytes(usize),
    Checksum,
    /// The body passed the checksum but is not what this version writes.
    Body(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::NotOurs => write!(f, "not a pppgate accounting file of this kind"),
            DecodeError::NewerVersion { found, known } => {
                write!(f, "format version {found} is newer than this pppgate reads ({known})")
            }
            DecodeError::BadHeader(h) => write!(f, "malformed header {h:?}"),
            DecodeError::Truncated { expected, found } => {
                write!(f, "truncated: {found} of {expected} body bytes")
            }
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the body"),
            DecodeError::Checksum => write!(f, "checksum mismatch"),
            DecodeError::Body(e) => write!(f, "body does not parse: {e}"),
        }
    }
}

/// Frames `body` with the header.
pub fn encode(magic: &str, version: u32, body: &[u8]) -> Vec<u8> {
    let header = format!("{magic} v{version} len={} crc32={:08x}\n", body.len(), crc32(body));
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the frame and returns (version, body).
pub fn decode<'a>(magic: &str, known: u32, bytes: &'a [u8]) -> Result<(u32, &'a [u8]), DecodeError> {
    // A header is short; do not scan a large garbage file for a newline.
    let limit = bytes.len().min(256);
    let nl = bytes[..limit].iter().position(|b| *b == b'\n').ok_or(DecodeError::NotOurs)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| DecodeError::NotOurs)?;
    let mut fields = header.split(' ');
    if fields.next() != Some(magic) {
        return Err(DecodeError::NotOurs);
    }
    let bad = || DecodeError::BadHeader(header.to_string());
    let version: u32 = fields
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() <= 9)
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .ok_or_else(bad)?;
    if version > known {
        return Err(DecodeError::NewerVersion { found: version, known });
    }
    let len: usize = fields
        .next()
        .and_then(|f| f.strip_prefix("len="))
        .filter(|v| !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    let crc = fields
        .next()
        .and_then(|f| f.strip_prefix("crc32="))
        .filter(|v| v.len() == 8)
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .ok_or_else(bad)?;
    if fields.next().is_some() {
        return Err(bad());
    }
    let body = &bytes[nl + 1..];
    if body.len() < len {
        return Err(DecodeError::Truncated { expected: len, found: body.len() });
    }
    if body.len() > len {
        return Err(DecodeError::TrailingBytes(body.len() - len));
    }
    if crc32(body) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok((version, body))
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, the one zlib and `cksum -a crc32b` compute).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c = CRC_TABLE[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn round_trip_and_failures() {
        let f = encode("pppgate-test", 1, b"{\"a\":1}");
        assert_eq!(decode("pppgate-test", 1, &f).unwrap(), (1, &b"{\"a\":1}"[..]));
        assert_eq!(decode("pppgate-other", 1, &f), Err(DecodeError::NotOurs));
        assert!(matches!(decode("pppgate-test", 1, &f[..f.len() - 1]), Err(DecodeError::Truncated { .. })));
        let mut longer = f.clone();
        longer.push(b'\n');
        assert_eq!(decode("pppgate-test", 1, &longer), Err(DecodeError::TrailingBytes(1)));
        let mut flipped = f.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        assert_eq!(decode("pppgate-test", 1, &flipped), Err(DecodeError::Checksum));
        assert_eq!(decode("pppgate-test", 1, b""), Err(DecodeError::NotOurs));
        assert_eq!(decode("pppgate-test", 1, b"\x00\x01garbage\n"), Err(DecodeError::NotOurs));
    }

    #[test]
    fn newer_version_is_recognised_whatever_its_header_says() {
        let f = b"pppgate-test v7 something-new=1\nbody";
        assert_eq!(decode("pppgate-test", 1, f), Err(DecodeError::NewerVersion { found: 7, known: 1 }));
        let f = encode("pppgate-test", 2, b"{}");
        assert_eq!(decode("pppgate-test", 1, &f), Err(DecodeError::NewerVersion { found: 2, known: 1 }));
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode("pppgate-test", 1, &bytes);
        }

        #[test]
        fn any_truncation_is_detected(body in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
            let f = encode("pppgate-test", 1, &body);
            let cut = cut.min(f.len());
            if cut < f.len() {
                prop_assert!(decode("pppgate-test", 1, &f[..cut]).is_err());
            } else {
                prop_assert_eq!(decode("pppgate-test", 1, &f).unwrap().1, &body[..]);
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(body in proptest::collection::vec(any::<u8>(), 1..300),
                                           pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let f = encode("pppgate-test", 1, &body);
            let mut g = f.clone();
            let i = pos.index(g.len());
            g[i] ^= 1 << bit;
            // A flip in the version digit may turn v1 into a "newer" version, which is also an
            // error; what must never happen is a successful decode of different bytes.
            if let Ok((_, b)) = decode("pppgate-test", 1, &g) {
                prop_assert_eq!(b, &body[..]);
            }
        }
    }
}

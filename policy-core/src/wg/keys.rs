//! WireGuard keys: X25519 private keys clamped exactly as `wg genkey` writes them, public keys as
//! `wg pubkey` derives them, preshared keys as `wg genpsk` (32 random bytes), all in the standard
//! base64 form wg(8) reads and writes. A private key never appears in `Debug` output.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// 32 key bytes. Private and preshared keys are wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn from_bytes(b: [u8; 32]) -> Key {
        Key(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The base64 text wg(8) uses (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses the base64 text of a key; `what` names it in the error (never the value: it may be
    /// a private key).
    pub fn from_base64(what: &'static str, s: &str) -> Result<Key> {
        let s = s.trim();
        let mut v = STANDARD
            .decode(s)
            .map_err(|_| Error::invalid(what, "(redacted)", "not base64 of 32 bytes, as wg(8) writes keys"))?;
        if v.len() != 32 {
            v.zeroize();
            return Err(Error::invalid(what, "(redacted)", "not base64 of 32 bytes, as wg(8) writes keys"));
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&v);
        v.zeroize();
        Ok(Key(b))
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

/// A public key's base64 form as stored in SQL and shown to operators (44 characters, `=` at the
/// end). Checks the shape only.
pub fn check_public_base64(s: &str) -> Result<()> {
    Key::from_base64("public key", s).map(|_| ())
}

/// Random bytes from the kernel (getrandom(2)).
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Sys {
        call: "getrandom",
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    Ok(b)
}

/// Curve25519 clamping, as wg(8) applies it in `genkey` (curve25519_clamp_secret).
pub fn clamp(mut b: [u8; 32]) -> [u8; 32] {
    b[0] &= 248;
    b[31] = (b[31] & 127) | 64;
    b
}

/// A new private key: 32 random bytes, clamped (byte-identical in form to `wg genkey`).
pub fn generate_private() -> Result<Key> {
    Ok(Key(clamp(random_bytes::<32>()?)))
}

/// A new preshared key (`wg genpsk`: 32 random bytes, unclamped).
pub fn generate_psk() -> Result<Key> {
    Ok(Key(random_bytes::<32>()?))
}

/// The public key of a private key (`wg pubkey`: the private key is clamped first).
pub fn public_of(private: &Key) -> Key {
    let secret = x25519_dalek::StaticSecret::from(clamp(private.0));
    Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
}

/// A private key with its public key.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: Key,
    pub public: Key,
}

impl KeyPair {
    pub fn generate() -> Result<KeyPair> {
        let private = generate_private()?;
        let public = public_of(&private);
        Ok(KeyPair { private, public })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 §6.1: Alice's private and public key.
        let hex = |s: &str| -> [u8; 32] {
            let v: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect();
            v.try_into().unwrap()
        };
        let private = Key::from_bytes(hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
        let public = public_of(&private);
        assert_eq!(public.as_bytes(), &hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"));
    }

    #[test]
    fn generated_private_keys_are_clamped_and_distinct() {
        let a = generate_private().unwrap();
        let b = generate_private().unwrap();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert_eq!(k.as_bytes()[0] & 7, 0);
            assert_eq!(k.as_bytes()[31] & 0xc0, 0x40);
            assert_eq!(clamp(*k.as_bytes()), *k.as_bytes());
        }
    }

    #[test]
    fn base64_round_trip_and_refusals() {
        let k = generate_psk().unwrap();
        let t = k.to_base64();
        assert_eq!(t.len(), 44);
        assert_eq!(Key::from_base64("k", &t).unwrap(), k);
        for bad in ["", "abc", "AAAA", &t[..43], &format!("{t}AAAA")] {
            let e = Key::from_base64("k", bad).unwrap_err();
            assert!(!e.to_string().contains(&t), "error leaks the key");
        }
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = generate_private().unwrap();
        assert_eq!(format!("{k:?}"), "Key(..)");
        assert!(!format!("{:?}", KeyPair { public: public_of(&k), private: k.clone() }).contains(&k.to_base64()));
    }
}

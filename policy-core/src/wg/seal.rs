//! Private and preshared keys at rest: XChaCha20-Poly1305 under a master key that lives in a
//! root-only file outside the database (`[wireguard] master_key_file`,
//! /etc/pppgate/wg-master.key), never in SQL.
//!
//! A sealed value is `nonce (24 random bytes) || ciphertext || tag`, stored with the id of the
//! master key that sealed it. The associated data names what the value is and which row it
//! belongs to ([`Binding`]): a ciphertext copied into another row, or into the other key column
//! of the same row, does not open.
//!
//! The key file holds one or more keys, one per line (`v1 <id> <base64>`); the last line is the
//! active key (new values are sealed with it), every line can open. `pppgate wg rotate-key`
//! appends a new key, re-seals every row in one transaction, then drops the old lines — a crash
//! between those steps leaves a file that still opens every row.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroize;

use super::keys::{random_bytes, Key};
use crate::error::{Error, Result};
use crate::trust::{self, Sensitivity};

pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER: &str = "# pppgate WireGuard master key: keep it secret, back it up; it is never stored in the database";

/// What a sealed value is and the row it belongs to: the associated data of the AEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding<'a> {
    RouterPrivate { tenant: i64, router: i64 },
    RouterPsk { tenant: i64, router: i64 },
    ServerPrivate { nas: &'a str, ifname: &'a str },
}

impl Binding<'_> {
    pub fn aad(&self) -> Vec<u8> {
        match self {
            Binding::RouterPrivate { tenant, router } => {
                format!("pppgate-wg/v1/router-private/tenant={tenant}/router={router}")
            }
            Binding::RouterPsk { tenant, router } => {
                format!("pppgate-wg/v1/router-psk/tenant={tenant}/router={router}")
            }
            Binding::ServerPrivate { nas, ifname } => format!("pppgate-wg/v1/server-private/nas={nas}/if={ifname}"),
        }
        .into_bytes()
    }

    fn what(&self) -> String {
        match self {
            Binding::RouterPrivate { tenant, router } => format!("private key of router {router} (tenant {tenant})"),
            Binding::RouterPsk { tenant, router } => format!("preshared key of router {router} (tenant {tenant})"),
            Binding::ServerPrivate { nas, ifname } => format!("private key of server interface {ifname} on {nas}"),
        }
    }
}

/// A sealed value as stored: the master key id and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: i32,
    pub blob: Vec<u8>,
}

/// One master key.
#[derive(Clone)]
pub struct MasterKey {
    pub id: i32,
    key: Key,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A new random key with a random positive id.
    pub fn generate() -> Result<MasterKey> {
        let id = loop {
            let v = i32::from_ne_bytes(random_bytes::<4>()?) & i32::MAX;
            if v != 0 {
                break v;
            }
        };
        Ok(MasterKey { id, key: Key::from_bytes(random_bytes::<32>()?) })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.key.as_bytes()).into())
    }
}

/// The keys of the master key file; the last one is active.
#[derive(Debug, Clone)]
pub struct MasterKeys {
    pub path: PathBuf,
    keys: Vec<MasterKey>,
}

fn config_err(path: &Path, problem: String) -> Error {
    Error::Config { path: path.into(), problems: vec![problem] }
}

/// Reads the master key file through the shared trust rule ([`trust`], [`Sensitivity::Secret`]):
/// a regular file, no symlink anywhere on its path, owned by root (or the effective user), not
/// accessible by group or others, and no directory above it writable by anyone else. A missing
/// file is a configuration error that says how to create it.
fn read_key_file(path: &Path) -> Result<String> {
    trust::read_trusted_to_string(path, Sensitivity::Secret).map_err(|e| match e {
        Error::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => config_err(
            path,
            format!("wireguard.master_key_file: {} does not exist (run `pppgate wg init`)", path.display()),
        ),
        e => e,
    })
}

impl MasterKeys {
    /// Loads the key file (see [`read_key_file`] for what is refused).
    pub fn load(path: &Path) -> Result<MasterKeys> {
        let mut text = read_key_file(path)?;
        let parsed = Self::parse(path, &text);
        text.zeroize();
        parsed
    }

    fn parse(path: &Path, text: &str) -> Result<MasterKeys> {
        let mut keys: Vec<MasterKey> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad =
                || config_err(path, format!("wireguard.master_key_file: line {} is not `v1 <id> <base64 key>`", n + 1));
            let mut f = line.split_whitespace();
            if f.next() != Some("v1") {
                return Err(bad());
            }
            let id: i32 = f.next().and_then(|s| s.parse().ok()).filter(|v| *v > 0).ok_or_else(bad)?;
            let key = Key::from_base64("master key", f.next().ok_or_else(bad)?).map_err(|_| bad())?;
            if f.next().is_some() {
                return Err(bad());
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(config_err(path, format!("wireguard.master_key_file: key id {id} appears twice")));
            }
            keys.push(MasterKey { id, key });
        }
        if keys.is_empty() {
            return Err(config_err(path, format!("wireguard.master_key_file: {} holds no key", path.display())));
        }
        Ok(MasterKeys { path: path.into(), keys })
    }

    /// Keys in memory only (tests, benchmarks).
    pub fn from_keys(path: &Path, keys: Vec<MasterKey>) -> MasterKeys {
        assert!(!keys.is_empty());
        MasterKeys { path: path.into(), keys }
    }

    pub fn active(&self) -> &MasterKey {
        self.keys.last().expect("never empty")
    }

    pub fn ids(&self) -> Vec<i32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Adds `key` as the new active key.
    pub fn push(&mut self, key: MasterKey) {
        self.keys.retain(|k| k.id != key.id);
        self.keys.push(key);
    }

    /// Keeps only the active key.
    pub fn retire_old(&mut self) {
        let last = self.keys.pop().expect("never empty");
        self.keys = vec![last];
    }

    /// Writes the file atomically (temp file 0600 in the same directory, fsync, rename, directory
    /// fsync). `create_new`: refuse to replace an existing file. The directory must pass the trust
    /// rule first: a secret written where someone else can rename or replace entries is not ours.
    pub fn write(&self, create_new: bool) -> Result<()> {
        let path = &self.path;
        if create_new && fs::symlink_metadata(path).is_ok() {
            return Err(Error::invalid("master key file", path.display().to_string(), "exists already"));
        }
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        trust::check_trusted_dir(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|s| s.to_str()).unwrap_or("wg-master.key"),
            std::process::id()
        ));
        let werr = |source| Error::Write { path: tmp.clone(), source };
        let mut text = String::from(HEADER);
        text.push('\n');
        for k in &self.keys {
            text.push_str(&format!("v1 {} {}\n", k.id, k.key.to_base64()));
        }
        let res = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(werr)?;
            f.write_all(text.as_bytes()).map_err(werr)?;
            f.sync_all().map_err(werr)?;
            fs::rename(&tmp, path).map_err(|source| Error::Write { path: path.clone(), source })?;
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        text.zeroize();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn by_id(&self, id: i32) -> Result<&MasterKey> {
        self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            config_err(
                &self.path,
                format!(
                    "wireguard.master_key_file: {} has no key with id {id} (a value in the database was sealed with it)",
                    self.path.display()
                ),
            )
        })
    }

    /// Seals `plain` for `binding` with the active key.
    pub fn seal(&self, plain: &Key, binding: &Binding<'_>) -> Result<Sealed> {
        let mk = self.active();
        let nonce = random_bytes::<NONCE_LEN>()?;
        let aad = binding.aad();
        let ct = mk
            .cipher()
            .encrypt(&XNonce::from(nonce), Payload { msg: plain.as_bytes(), aad: &aad })
            .map_err(|_| Error::Crypto { what: binding.what(), reason: "encryption failed".into() })?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(Sealed { key_id: mk.id, blob })
    }

    /// Opens a sealed value; fails when the key id is unknown, the bytes were altered, or the
    /// value belongs to another row or column.
    pub fn open(&self, sealed: &Sealed, binding: &Binding<'_>) -> Result<Key> {
        let mk = self.by_id(sealed.key_id)?;
        if sealed.blob.len() != NONCE_LEN + 32 + TAG_LEN {
            return Err(Error::Crypto { what: binding.what(), reason: "stored value has the wrong length".into() });
        }
        let (nonce, ct) = sealed.blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let aad = binding.aad();
        let mut plain =
            mk.cipher().decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| Error::Crypto {
                what: binding.what(),
                reason: "authentication failed (altered, or moved from another row)".into(),
            })?;
        let mut b = [0u8; 32];
        b.copy_from_slice(&plain);
        plain.zeroize();
        Ok(Key::from_bytes(b))
    }

    /// Opens with whatever key sealed it and seals again with the active key (rotation).
    pub fn reseal(&self, sealed: &Sealed, binding: &Binding<'_>) -> Result<Sealed> {
        let k = self.open(sealed, binding)?;
        self.seal(&k, binding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::keys::generate_private;

    fn keys() -> MasterKeys {
        MasterKeys::from_keys(Path::new("/mem"), vec![MasterKey::generate().unwrap()])
    }

    #[test]
    fn round_trip() {
        let mk = keys();
        let k = generate_private().unwrap();
        let b = Binding::RouterPrivate { tenant: 7, router: 42 };
        let s = mk.seal(&k, &b).unwrap();
        assert_eq!(s.key_id, mk.active().id);
        assert_eq!(s.blob.len(), NONCE_LEN + 32 + TAG_LEN);
        assert!(!s.blob.windows(32).any(|w| w == k.as_bytes()), "plaintext visible in the blob");
        assert_eq!(mk.open(&s, &b).unwrap(), k);
        // Same plaintext twice: different nonces, different blobs.
        assert_ne!(mk.seal(&k, &b).unwrap().blob, s.blob);
    }

    #[test]
    fn moved_or_altered_ciphertext_does_not_open() {
        let mk = keys();
        let k = generate_private().unwrap();
        let b = Binding::RouterPrivate { tenant: 7, router: 42 };
        let s = mk.seal(&k, &b).unwrap();
        for other in [
            Binding::RouterPrivate { tenant: 7, router: 43 },
            Binding::RouterPrivate { tenant: 8, router: 42 },
            Binding::RouterPsk { tenant: 7, router: 42 },
            Binding::ServerPrivate { nas: "lns-1", ifname: "wg0" },
        ] {
            let e = mk.open(&s, &other).unwrap_err();
            assert!(matches!(e, Error::Crypto { .. }), "{e:?}");
        }
        for i in [0, NONCE_LEN, s.blob.len() - 1] {
            let mut t = s.clone();
            t.blob[i] ^= 1;
            assert!(mk.open(&t, &b).is_err(), "flipped byte {i}");
        }
        let mut t = s.clone();
        t.blob.truncate(40);
        assert!(mk.open(&t, &b).is_err());
        // Another master key with the same id does not open it either.
        let other = MasterKeys::from_keys(
            Path::new("/mem"),
            vec![MasterKey { id: s.key_id, ..MasterKey::generate().unwrap() }],
        );
        assert!(other.open(&s, &b).is_err());
        // An unknown key id is a configuration problem (78), not a tampering one.
        let mut t = s.clone();
        t.key_id += 1;
        assert!(matches!(mk.open(&t, &b).unwrap_err(), Error::Config { .. }));
    }

    #[test]
    fn rotation_keeps_old_values_open_until_resealed() {
        let mut mk = keys();
        let k = generate_private().unwrap();
        let b = Binding::RouterPsk { tenant: 1, router: 2 };
        let old = mk.seal(&k, &b).unwrap();
        mk.push(MasterKey::generate().unwrap());
        assert_eq!(mk.ids().len(), 2);
        let new = mk.reseal(&old, &b).unwrap();
        assert_eq!(new.key_id, mk.active().id);
        mk.retire_old();
        assert_eq!(mk.open(&new, &b).unwrap(), k);
        assert!(mk.open(&old, &b).is_err());
    }

    #[test]
    fn key_file_trust_and_format() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir(&etc).unwrap();
        chmod(&etc, 0o755);
        let path = etc.join("wg-master.key");
        let mk = MasterKeys::from_keys(&path, vec![MasterKey::generate().unwrap(), MasterKey::generate().unwrap()]);
        mk.write(true).unwrap();
        assert!(mk.write(true).is_err(), "create_new refuses an existing file");
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let back = MasterKeys::load(&path).unwrap();
        assert_eq!(back.ids(), mk.ids());
        assert_eq!(back.active().id, mk.active().id);

        // The shared trust rule (Secret): the file's mode, …
        for mode in [0o640, 0o604, 0o644, 0o620] {
            chmod(&path, mode);
            let e = MasterKeys::load(&path).unwrap_err();
            assert_eq!(e.exit_code(), crate::ExitCode::Config);
            assert!(matches!(e, Error::Untrusted { .. }), "{e:?}");
            assert!(e.to_string().contains(&format!("has mode {mode:04o}")), "{e}");
        }
        chmod(&path, 0o600);
        // … every directory above it (reading and writing) …
        chmod(&etc, 0o775);
        let e = MasterKeys::load(&path).unwrap_err();
        assert!(e.to_string().contains("directory has mode 0775: group may write"), "{e}");
        let e = mk.write(false).unwrap_err();
        assert!(matches!(e, Error::Untrusted { .. }), "writing into an untrusted directory: {e:?}");
        chmod(&etc, 0o755);
        // … and no symlink, for the file or a directory on the way.
        let link = etc.join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = MasterKeys::load(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let dirlink = dir.path().join("etc-link");
        std::os::unix::fs::symlink(&etc, &dirlink).unwrap();
        let e = MasterKeys::load(&dirlink.join("wg-master.key")).unwrap_err();
        assert!(e.to_string().contains("etc-link: is a symbolic link"), "{e}");
        // A missing file says how to create it.
        let e = MasterKeys::load(&etc.join("missing.key")).unwrap_err();
        assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("wg init"), "{e}");

        for bad in ["", "# only a comment\n", "v2 1 AAAA\n", "v1 0 x\n", "v1 1 AAAA\n"] {
            fs::write(&path, bad).unwrap();
            assert!(matches!(MasterKeys::load(&path), Err(Error::Config { .. })), "{bad:?}");
        }
    }
}

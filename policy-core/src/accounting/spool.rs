//! The accounting directory (default /var/lib/vpn-accounting):
//!
//! ```text
//! state                          per-session baselines (state.rs)
//! spool/<seq, 20 digits>.batch   journal records not yet known to be in SQL, replayed in order
//! spool/bad/                     records and markers that could not be read, kept for forensics
//! final/<pid>-<start>-<if>.final final markers written by ip-down (possibly without the lock)
//! sql-outage.accounting          present while the database is unreachable (crate::outage)
//! quota                          connections last seen over their quota
//! ```
//!
//! Every file is written durably: temp file, fsync, rename, fsync of the directory. Only the
//! holder of the collector lock writes `state`, `spool/` and `quota`, and deletes markers;
//! ip-down writes markers without the lock (each under its own name, atomically).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{self, DecodeError};
use super::record::{Batch, FinalMarker};
use crate::error::{Error, Result};

pub const BATCH_MAGIC: &str = "pppgate-acct-batch";
/// Format 2 (RX_BASE): `SessionInfo.base`, markers' `pppd` figure optional. Format 1 files
/// decode as format 2; a build that reads only format 1 leaves format 2 files alone.
pub const BATCH_VERSION: u32 = 2;
pub const MARKER_MAGIC: &str = "pppgate-acct-final";
pub const MARKER_VERSION: u32 = 2;

/// Temp files of markers younger than this may belong to an ip-down writing right now.
const MARKER_TMP_GRACE_S: u64 = 3600;

#[derive(Debug, Clone)]
pub struct AcctDir {
    pub root: PathBuf,
    pub spool: PathBuf,
    pub bad: PathBuf,
    pub finals: PathBuf,
}

/// A spool or marker file that could not be used.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub path: PathBuf,
    pub error: DecodeError,
}

/// What a scan of `spool/` found, in sequence order.
#[derive(Debug, Default)]
pub struct SpoolScan {
    pub records: Vec<(PathBuf, Batch)>,
    pub unreadable: Vec<Unreadable>,
    /// Files that are not spool records at all.
    pub strays: Vec<PathBuf>,
}

fn mkdir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| Error::Write { path: path.into(), source })
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| Error::Write { path: dir.into(), source })
}

/// Writes `bytes` as `dir/name`: temp file, fsync, rename, fsync dir.
pub(crate) fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let werr = |p: &Path, source| Error::Write { path: p.into(), source };
    let res = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(werr(&tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(werr(&path, e));
    }
    sync_dir(dir)?;
    Ok(path)
}

/// Reads a file that may be missing.
pub(crate) fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read { path: path.into(), source }),
    }
}

pub(crate) fn decode_json<T: DeserializeOwned>(magic: &str, known: u32, bytes: &[u8]) -> Result<T, DecodeError> {
    let (_, body) = codec::decode(magic, known, bytes)?;
    serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))
}

pub(crate) fn encode_json<T: Serialize>(magic: &str, version: u32, value: &T) -> Vec<u8> {
    let body = serde_json::to_vec(value).expect("accounting records serialize");
    codec::encode(magic, version, &body)
}

/// Readable markers (with their paths) and unreadable ones.
pub type MarkerScan = (Vec<(PathBuf, FinalMarker)>, Vec<Unreadable>);

pub fn batch_file_name(seq: u64) -> String {
    format!("{seq:020}.batch")
}

fn parse_batch_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".batch")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// Decodes one journal record as [`AcctDir::scan`] reads it: `seq` is the number its file name
/// carries, and a record holding another sequence is refused (a copy under another name must not
/// be replayed twice). The entry point of the `accounting_spool` fuzz target.
pub fn decode_record(seq: u64, bytes: &[u8]) -> std::result::Result<Batch, DecodeError> {
    let b = decode_json::<Batch>(BATCH_MAGIC, BATCH_VERSION, bytes)?;
    if b.seq != seq {
        return Err(DecodeError::Body(format!("holds sequence {} under the name of {seq}", b.seq)));
    }
    Ok(b)
}

/// A journal record's bytes, as [`AcctDir::append`] writes them.
pub fn encode_record(batch: &Batch) -> Vec<u8> {
    encode_json(BATCH_MAGIC, BATCH_VERSION, batch)
}

/// Decodes a final marker as [`AcctDir::scan_markers`] reads it.
pub fn decode_marker(bytes: &[u8]) -> std::result::Result<FinalMarker, DecodeError> {
    decode_json::<FinalMarker>(MARKER_MAGIC, MARKER_VERSION, bytes)
}

/// A final marker's bytes, as [`AcctDir::write_marker`] writes them.
pub fn encode_marker(m: &FinalMarker) -> Vec<u8> {
    encode_json(MARKER_MAGIC, MARKER_VERSION, m)
}

pub fn marker_file_name(pid: u32, start_ts: i64, ppp_if: &str) -> String {
    format!("{pid}-{start_ts}-{ppp_if}.final")
}

/// Space reserved per live session for its final marker; a marker is well under 2 KiB.
pub const MARKER_RESERVE_BYTES: u64 = 16 * 1024;

const RESERVE_PREFIX: &str = ".reserve.";

fn reserve_file_name(marker_name: &str) -> String {
    format!("{RESERVE_PREFIX}{marker_name}")
}

/// Overwrites the reservation in place (no new blocks), trims it to the record, syncs it and
/// renames it to the marker's name. `Ok(false)`: there is no reservation (or it is too small).
fn write_into_reserve(reserve: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = match fs::OpenOptions::new().write(true).open(reserve) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if f.metadata()?.len() < bytes.len() as u64 {
        return Ok(false);
    }
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    f.sync_all()?;
    fs::rename(reserve, path)?;
    Ok(true)
}

impl AcctDir {
    /// Opens (creating, mode 0700) the directory and its subdirectories.
    pub fn open(root: &Path) -> Result<AcctDir> {
        let d = AcctDir {
            root: root.into(),
            spool: root.join("spool"),
            bad: root.join("spool").join("bad"),
            finals: root.join("final"),
        };
        for p in [&d.root, &d.spool, &d.bad, &d.finals] {
            mkdir(p)?;
        }
        Ok(d)
    }

    /// Appends a batch to the journal (durable when this returns).
    pub fn append(&self, batch: &Batch) -> Result<PathBuf> {
        write_durable(&self.spool, &batch_file_name(batch.seq), &encode_record(batch))
    }

    /// Reads every journal record. A record from a newer pppgate fails the whole scan (exit 65)
    /// before anything is changed: this build must not replay, reorder or drop what it cannot
    /// read. Other unreadable files are returned for [`AcctDir::quarantine`].
    pub fn scan(&self) -> Result<SpoolScan> {
        let mut scan = SpoolScan::default();
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let rd = fs::read_dir(&self.spool).map_err(|source| Error::Read { path: self.spool.clone(), source })?;
        for entry in rd {
            let entry = entry.map_err(|source| Error::Read { path: self.spool.clone(), source })?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                scan.strays.push(path);
                continue;
            };
            if path.is_dir() {
                continue;
            }
            if name.starts_with('.') && name.contains(".tmp.") {
                // A write that never reached its rename: by construction not journal content.
                let _ = fs::remove_file(&path);
                continue;
            }
            match parse_batch_name(&name) {
                Some(seq) => found.push((seq, path)),
                None => scan.strays.push(path),
            }
        }
        found.sort();
        for (seq, path) in found {
            let bytes = fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
            match decode_record(seq, &bytes) {
                Ok(b) => scan.records.push((path, b)),
                Err(DecodeError::NewerVersion { found, known }) => {
                    return Err(Error::Spool {
                        path,
                        reason: format!(
                            "format version {found} was written by a newer pppgate (this one reads {known}); \
                             nothing was replayed or removed: run the newer pppgate"
                        ),
                    })
                }
                Err(error) => scan.unreadable.push(Unreadable { path, error }),
            }
        }
        Ok(scan)
    }

    /// Moves an unreadable file to `spool/bad/` (never deletes it).
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("unnamed");
        let mut dest = self.bad.join(format!("{name}.{}", crate::lock::now_unix()));
        let mut n = 1;
        while dest.exists() {
            dest = self.bad.join(format!("{name}.{}.{n}", crate::lock::now_unix()));
            n += 1;
        }
        fs::rename(path, &dest).map_err(|source| Error::Write { path: path.into(), source })?;
        sync_dir(&self.bad)?;
        sync_dir(path.parent().unwrap_or(&self.spool))?;
        Ok(dest)
    }

    /// Deletes a journal record whose batch is in SQL.
    pub fn remove(&self, path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Write { path: path.into(), source }),
        }
    }

    /// Syncs the spool directory after a run of removals (one fsync, not one per file).
    pub fn sync_spool(&self) -> Result<()> {
        sync_dir(&self.spool)
    }

    /// Writes a final marker (ip-down; safe without the lock). Into the space ip-up reserved for
    /// it when there is a reservation (R413: a full disk cannot lose the final figures), else
    /// through a new file.
    pub fn write_marker(&self, m: &FinalMarker) -> Result<PathBuf> {
        let s = &m.session;
        let name = marker_file_name(s.pppd_pid, s.start_ts, &s.ppp_if);
        let bytes = encode_marker(m);
        let reserve = self.finals.join(reserve_file_name(&name));
        match write_into_reserve(&reserve, &self.finals.join(&name), &bytes) {
            Ok(true) => {
                sync_dir(&self.finals)?;
                return Ok(self.finals.join(&name));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(path = %reserve.display(), error = %e, "cannot use the reserved final record; writing a new one")
            }
        }
        write_durable(&self.finals, &name, &bytes)
    }

    /// ip-up: reserves [`MARKER_RESERVE_BYTES`] of real blocks (fallocate) for the session's
    /// final marker, so ip-down overwrites allocated space instead of asking for new space.
    pub fn reserve_marker(&self, pppd_pid: u32, start_ts: i64, ppp_if: &str) -> Result<PathBuf> {
        let path = self.finals.join(reserve_file_name(&marker_file_name(pppd_pid, start_ts, ppp_if)));
        let werr = |source| Error::Write { path: path.clone(), source };
        let res = (|| {
            let f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
            match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, MARKER_RESERVE_BYTES as i64) {
                Ok(()) => {}
                // A file system without fallocate: written zeros are allocated blocks too.
                Err(nix::errno::Errno::EOPNOTSUPP) => (&f).write_all(&vec![0u8; MARKER_RESERVE_BYTES as usize])?,
                Err(e) => return Err(std::io::Error::from(e)),
            }
            f.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(werr(e));
        }
        sync_dir(&self.finals)?;
        Ok(path)
    }

    /// The reservations left in `final/`: (path, session key parts, age in seconds).
    pub fn reserves(&self) -> Result<Vec<(PathBuf, String, u64)>> {
        let rd = fs::read_dir(&self.finals).map_err(|source| Error::Read { path: self.finals.clone(), source })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(marker) = name.strip_prefix(RESERVE_PREFIX) else { continue };
            let age = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .map_or(0, |a| a.as_secs());
            out.push((entry.path(), marker.to_string(), age));
        }
        Ok(out)
    }

    /// Reads the final markers. Newer-version markers fail the scan like spool records do.
    pub fn scan_markers(&self) -> Result<MarkerScan> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let rd = fs::read_dir(&self.finals).map_err(|source| Error::Read { path: self.finals.clone(), source })?;
        let mut paths = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| Error::Read { path: self.finals.clone(), source })?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(RESERVE_PREFIX) {
                continue;
            }
            if name.starts_with('.') && name.contains(".tmp.") {
                let old = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > MARKER_TMP_GRACE_S);
                if old {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            paths.push(path);
        }
        paths.sort();
        for path in paths {
            let bytes = fs::read(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
            match decode_marker(&bytes) {
                Ok(m) => ok.push((path, m)),
                Err(DecodeError::NewerVersion { found, known }) => {
                    return Err(Error::Spool {
                        path,
                        reason: format!(
                            "final marker format version {found} was written by a newer pppgate \
                             (this one reads {known}); nothing was changed"
                        ),
                    })
                }
                Err(error) => bad.push(Unreadable { path, error }),
            }
        }
        Ok((ok, bad))
    }

    pub fn remove_marker(&self, path: &Path) -> Result<()> {
        self.remove(path)
    }

    pub fn sync_finals(&self) -> Result<()> {
        sync_dir(&self.finals)
    }

    /// The database-outage marker of accounting ([`crate::outage`], kept here in the
    /// accounting directory rather than /run: the spool it explains lives here too).
    pub fn outage(&self) -> crate::outage::Outage {
        crate::outage::Outage::new(&self.root, "accounting")
    }

    /// Since when the database has been unreachable, if an outage is recorded.
    pub fn outage_since(&self) -> Option<i64> {
        let text = fs::read_to_string(self.outage().path()).ok()?;
        text.lines().find_map(|l| l.strip_prefix("since=")).and_then(|v| v.trim().parse().ok()).or(Some(0))
    }
}

/// What waits in the accounting directory, read without changing anything (no directory is
/// created, no temp file removed, nothing decoded): for `pppgate diag` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Journal records not yet known to be in SQL.
    pub batches: u64,
    pub bytes: u64,
    /// Modification time (Unix s) of the oldest record: when it was spooled.
    pub oldest_at: Option<i64>,
    /// Final markers of ip-down waiting for the collector.
    pub final_markers: u64,
    /// Files moved to `spool/bad/` (kept for forensics).
    pub quarantined: u64,
    /// Since when the collector has found the database unreachable, if it has.
    pub outage_since: Option<i64>,
}

/// Reads the backlog of the accounting directory `root` (a missing directory is empty).
pub fn backlog(root: &Path) -> Result<Backlog> {
    let mut b = Backlog::default();
    let list = |dir: &Path| -> Result<Vec<(String, fs::Metadata)>> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Read { path: dir.into(), source }),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| Error::Read { path: dir.into(), source })?;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                out.push((entry.file_name().to_string_lossy().into_owned(), meta));
            }
        }
        Ok(out)
    };
    let mtime = |m: &fs::Metadata| {
        m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs() as i64)
    };
    for (name, meta) in list(&root.join("spool"))? {
        if parse_batch_name(&name).is_some() {
            b.batches += 1;
            b.bytes += meta.len();
            if let Some(t) = mtime(&meta) {
                b.oldest_at = Some(b.oldest_at.map_or(t, |o: i64| o.min(t)));
            }
        }
    }
    b.final_markers = list(&root.join("final"))?.iter().filter(|(n, _)| !n.starts_with('.')).count() as u64;
    b.quarantined = list(&root.join("spool").join("bad"))?.len() as u64;
    let outage = crate::outage::Outage::new(root, "accounting");
    if let Ok(text) = fs::read_to_string(outage.path()) {
        b.outage_since =
            text.lines().find_map(|l| l.strip_prefix("since=")).and_then(|v| v.trim().parse().ok()).or(Some(0));
    }
    Ok(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::accounting::counters::Octets;
    use crate::accounting::record::{Entry, SessionInfo, Stop};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    pub(crate) fn entry(key: &str, total: u64) -> Entry {
        Entry {
            session: SessionInfo {
                key: key.into(),
                connection_id: 7,
                ppp_if: "ppp0".into(),
                client_ip: Ipv4Addr::new(10, 0, 0, 2),
                pppd_pid: 4242,
                start_ts: 1_700_000_000,
                up_ts: Some(1_700_000_002),
                base: None,
            },
            at: 1_700_000_300,
            ifindex: Some(12),
            baseline: Octets::new(total, total / 2),
            delta: Octets::new(total, total / 2),
            total: Octets::new(total, total / 2),
            stop: None,
        }
    }

    fn batch(seq: u64, n: usize) -> Batch {
        Batch {
            seq,
            batch_id: format!("lns-1:abcd:{seq}"),
            nas_identity: "lns-1".into(),
            collected_at: 1_700_000_300,
            entries: (0..n).map(|i| entry(&format!("lns-1:ppp{i}:4242:1700000000"), i as u64 * 1000)).collect(),
        }
    }

    #[test]
    fn append_scan_remove_in_order() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        for seq in [3, 1, 2] {
            d.append(&batch(seq, 2)).unwrap();
        }
        let s = d.scan().unwrap();
        assert_eq!(s.records.iter().map(|(_, b)| b.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(s.records[0].1, batch(1, 2));
        d.remove(&s.records[0].0).unwrap();
        assert_eq!(d.scan().unwrap().records.len(), 2);
    }

    #[test]
    fn truncated_and_garbage_files_are_reported_and_quarantined() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        d.append(&batch(1, 3)).unwrap();
        let p2 = d.append(&batch(2, 3)).unwrap();
        let bytes = fs::read(&p2).unwrap();
        fs::write(&p2, &bytes[..bytes.len() - 7]).unwrap();
        fs::write(d.spool.join(batch_file_name(3)), b"\x00garbage").unwrap();
        fs::write(d.spool.join("notes.txt"), b"hello").unwrap();
        fs::write(d.spool.join(".00000000000000000004.batch.tmp.99"), b"partial").unwrap();
        let s = d.scan().unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.unreadable.len(), 2);
        assert!(matches!(s.unreadable[0].error, DecodeError::Truncated { .. }));
        assert_eq!(s.unreadable[1].error, DecodeError::NotOurs);
        assert_eq!(s.strays.len(), 1);
        for u in &s.unreadable {
            d.quarantine(&u.path).unwrap();
        }
        assert_eq!(fs::read_dir(&d.bad).unwrap().count(), 2);
        let s = d.scan().unwrap();
        assert_eq!((s.records.len(), s.unreadable.len()), (1, 0));
        // The temp file of an interrupted append is gone, not replayed.
        assert!(!d.spool.join(".00000000000000000004.batch.tmp.99").exists());
    }

    #[test]
    fn newer_version_fails_the_scan_and_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        d.append(&batch(1, 1)).unwrap();
        let newer = codec::encode(BATCH_MAGIC, BATCH_VERSION + 1, b"{\"future\":true}");
        fs::write(d.spool.join(batch_file_name(2)), &newer).unwrap();
        let e = d.scan().unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::DataErr);
        assert!(e.to_string().contains("newer pppgate"), "{e}");
        assert_eq!(fs::read(d.spool.join(batch_file_name(2))).unwrap(), newer);
        assert!(d.spool.join(batch_file_name(1)).exists());
    }

    #[test]
    fn markers_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        let m = FinalMarker {
            session: entry("lns-1:ppp0:4242:1700000000", 5).session,
            pppd: Some(Octets::new(10, 20)),
            wraps_32: true,
            kernel: None,
            stop: Stop { at: 1_700_000_900, cause: "User-Request".into() },
        };
        let p = d.write_marker(&m).unwrap();
        assert_eq!(p.file_name().unwrap(), "4242-1700000000-ppp0.final");
        let (ok, bad) = d.scan_markers().unwrap();
        assert!(bad.is_empty());
        assert_eq!(ok, vec![(p, m)]);
    }

    #[test]
    fn outage_marker_lives_in_the_accounting_directory() {
        let t = tempfile::tempdir().unwrap();
        let d = AcctDir::open(t.path()).unwrap();
        assert_eq!(d.outage_since(), None);
        assert_eq!(d.outage().failed(), crate::outage::Transition::Began);
        assert!(d.outage_since().is_some_and(|s| s > 0));
        assert_eq!(d.outage().path(), t.path().join("sql-outage.accounting"));
        assert!(matches!(d.outage().succeeded(), crate::outage::Transition::Ended { .. }));
        assert_eq!(d.outage_since(), None);
    }

    proptest! {
        #[test]
        fn batch_round_trips(seq in 1u64..u64::MAX / 2, totals in proptest::collection::vec(any::<u64>(), 0..20)) {
            let mut b = batch(seq, 0);
            b.entries = totals.iter().enumerate().map(|(i, t)| entry(&format!("k{i}"), *t)).collect();
            let bytes = encode_json(BATCH_MAGIC, BATCH_VERSION, &b);
            prop_assert_eq!(decode_json::<Batch>(BATCH_MAGIC, BATCH_VERSION, &bytes).unwrap(), b);
        }

        #[test]
        fn batch_decoder_never_panics_and_never_accepts_a_damaged_record(
            cut in 0usize..2000, flip in any::<prop::sample::Index>(), bit in 0u8..8, garbage in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let b = batch(9, 3);
            let bytes = encode_json(BATCH_MAGIC, BATCH_VERSION, &b);
            let cut = cut.min(bytes.len());
            if cut < bytes.len() {
                prop_assert!(decode_json::<Batch>(BATCH_MAGIC, BATCH_VERSION, &bytes[..cut]).is_err());
            }
            let mut g = bytes.clone();
            let i = flip.index(g.len());
            g[i] ^= 1 << bit;
            if let Ok(d) = decode_json::<Batch>(BATCH_MAGIC, BATCH_VERSION, &g) {
                prop_assert_eq!(d, b);
            }
            let _ = decode_json::<Batch>(BATCH_MAGIC, BATCH_VERSION, &garbage);
        }
    }
}

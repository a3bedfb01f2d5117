//! One trust rule for every file pppgate reads as root: the configuration, the secrets file, the
//! WireGuard master key, sudoers snippets — anything whose content decides what root does.
//!
//! A file is trusted when
//! * it is a regular file, owned by root or by the user pppgate runs as (the effective uid: a
//!   FreeRADIUS hook running as `freerad` may read a config and secrets file freerad owns; a
//!   process running as root trusts only root's files);
//! * it is not writable by group or others; a [`Sensitivity::Secret`] is not readable by them
//!   either;
//! * every directory above it, from `/` down, is owned by root or that user and not writable by
//!   group or others — except a sticky directory owned by root (`/tmp`), whose entries only their
//!   owners can rename or remove; the next component must then be ours, which is checked anyway;
//! * no component is a symbolic link (each is examined with `lstat`, the file is opened with
//!   `O_NOFOLLOW`, and the opened file must be the one examined). A relative path is taken from
//!   the current directory; `..` is refused.
//!
//! This is sshd's StrictModes applied to the whole path (and what sudo does for sudoers): whoever
//! can replace any directory above a file can replace the file. The checks need no lock against
//! races: once every directory is shown to be writable only by root or us, nobody else can swap
//! a component between the check and the open.
//!
//! Refusals are [`Error::Untrusted`] (exit 78), one line that names the path and what is wrong
//! with it, e.g. `refusing /etc/pppgate/pppgate.toml: has mode 0666: group and others may write
//! it (chmod go-w)`.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// How much of a file group and others may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitivity {
    /// Configuration: may be readable by group/others, never writable.
    Config,
    /// Secrets (database password, master keys): neither readable nor writable by group/others.
    Secret,
}

const S_ISVTX: u32 = 0o1000;

fn untrusted(path: &Path, reason: impl Into<String>) -> Error {
    Error::Untrusted { path: path.to_path_buf(), reason: reason.into() }
}

/// Who may own a trusted file or directory: root, or the user we run as.
fn owner_ok(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::Uid::effective().as_raw()
}

fn owner_problem(m: &Metadata) -> Option<String> {
    if owner_ok(m.uid()) {
        return None;
    }
    let euid = nix::unistd::Uid::effective().as_raw();
    Some(if euid == 0 {
        format!("owned by uid {}, not root", m.uid())
    } else {
        format!("owned by uid {}, neither root nor uid {euid} (this process)", m.uid())
    })
}

/// "group", "others" or "group and others" for the bits of `mode` in `mask` (a 0o070/0o007 pair).
fn who(mode: u32, group_bits: u32, other_bits: u32) -> &'static str {
    match (mode & group_bits != 0, mode & other_bits != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        _ => "others",
    }
}

/// Checks one directory above the file (`m` from `lstat`).
fn check_dir(path: &Path, m: &Metadata) -> Result<()> {
    if m.file_type().is_symlink() {
        return Err(untrusted(path, "is a symbolic link (symlinks are refused; use the real path)"));
    }
    if !m.is_dir() {
        return Err(untrusted(path, "is not a directory"));
    }
    if let Some(p) = owner_problem(m) {
        return Err(untrusted(path, format!("directory {p}")));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 && !(mode & S_ISVTX != 0 && m.uid() == 0) {
        return Err(untrusted(
            path,
            format!("directory has mode {mode:04o}: {} may write it (chmod go-w)", who(mode, 0o020, 0o002)),
        ));
    }
    Ok(())
}

/// Checks the file itself (`m` from `lstat` or `fstat`).
fn check_file(path: &Path, m: &Metadata, s: Sensitivity) -> Result<()> {
    if m.file_type().is_symlink() {
        return Err(untrusted(path, "is a symbolic link (symlinks are refused; use the real path)"));
    }
    if !m.is_file() {
        return Err(untrusted(path, "is not a regular file"));
    }
    if let Some(p) = owner_problem(m) {
        return Err(untrusted(path, p));
    }
    let mode = m.mode() & 0o7777;
    match s {
        Sensitivity::Config if mode & 0o022 != 0 => {
            Err(untrusted(path, format!("has mode {mode:04o}: {} may write it (chmod go-w)", who(mode, 0o020, 0o002))))
        }
        Sensitivity::Secret if mode & 0o077 != 0 => Err(untrusted(
            path,
            format!(
                "has mode {mode:04o}: {} may access it; a secret must be readable by its owner only (chmod 600)",
                who(mode, 0o070, 0o007)
            ),
        )),
        _ => Ok(()),
    }
}

/// The absolute form of `path` without resolving anything (`..` refused, `.` dropped).
fn absolute(path: &Path) -> Result<PathBuf> {
    let base = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().map_err(|source| Error::Read { path: path.into(), source })?
    };
    let mut out = base;
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(untrusted(path, "contains '..' (give the plain path)")),
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

fn lstat(path: &Path) -> Result<Metadata> {
    std::fs::symlink_metadata(path).map_err(|source| Error::Read { path: path.into(), source })
}

/// Checks every directory from `/` down to (and including) `dir`.
pub fn check_trusted_dir(dir: &Path) -> Result<()> {
    let abs = absolute(dir)?;
    let mut cur = PathBuf::from("/");
    check_dir(&cur, &lstat(&cur)?)?;
    for c in abs.components().skip(1) {
        cur.push(c);
        check_dir(&cur, &lstat(&cur)?)?;
    }
    Ok(())
}

/// Opens `path` for reading after checking the whole path against the trust rule (module doc).
/// The file returned is the one checked.
pub fn open_trusted(path: &Path, s: Sensitivity) -> Result<File> {
    let abs = absolute(path)?;
    let parent = abs.parent().ok_or_else(|| untrusted(path, "is not a file"))?;
    check_trusted_dir(parent)?;
    let before = lstat(&abs)?;
    check_file(&abs, &before, s)?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&abs)
        .map_err(|source| Error::Read { path: abs.clone(), source })?;
    let after = f.metadata().map_err(|source| Error::Read { path: abs.clone(), source })?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) {
        return Err(untrusted(&abs, "was replaced while it was being opened"));
    }
    check_file(&abs, &after, s)?;
    Ok(f)
}

/// Reads a trusted file (see [`open_trusted`]).
pub fn read_trusted(path: &Path, s: Sensitivity) -> Result<Vec<u8>> {
    let mut f = open_trusted(path, s)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|source| Error::Read { path: path.into(), source })?;
    Ok(buf)
}

/// Reads a trusted UTF-8 text file (see [`open_trusted`]).
pub fn read_trusted_to_string(path: &Path, s: Sensitivity) -> Result<String> {
    let bytes = read_trusted(path, s)?;
    String::from_utf8(bytes).map_err(|_| Error::Read {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refusal(p: &Path, s: Sensitivity) -> String {
        match open_trusted(p, s) {
            Err(e @ Error::Untrusted { .. }) => {
                assert_eq!(e.exit_code(), crate::ExitCode::Config);
                e.to_string()
            }
            other => panic!("expected a refusal for {}, got {other:?}", p.display()),
        }
    }

    /// A private directory (0700, ours) under the sticky /tmp, as tempfile makes it.
    fn setup() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("etc");
        fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o755);
        let f = sub.join("pppgate.toml");
        fs::write(&f, "x = 1\n").unwrap();
        chmod(&f, 0o640);
        (d, f)
    }

    #[test]
    fn a_proper_file_is_read() {
        let (_d, f) = setup();
        assert_eq!(read_trusted_to_string(&f, Sensitivity::Config).unwrap(), "x = 1\n");
        chmod(&f, 0o600);
        assert_eq!(read_trusted(&f, Sensitivity::Secret).unwrap(), b"x = 1\n");
        chmod(&f, 0o400);
        assert!(open_trusted(&f, Sensitivity::Secret).is_ok());
    }

    #[test]
    fn writable_files_and_readable_secrets_are_refused_naming_path_and_mode() {
        let (_d, f) = setup();
        chmod(&f, 0o666);
        let e = refusal(&f, Sensitivity::Config);
        assert!(e.contains(&f.display().to_string()) && e.contains("has mode 0666"), "{e}");
        assert!(e.contains("group and others may write"), "{e}");
        chmod(&f, 0o620);
        assert!(refusal(&f, Sensitivity::Config).contains("has mode 0620: group may write"));
        chmod(&f, 0o644);
        assert!(open_trusted(&f, Sensitivity::Config).is_ok());
        let e = refusal(&f, Sensitivity::Secret);
        assert!(e.contains("has mode 0644: group and others may access"), "{e}");
        chmod(&f, 0o604);
        assert!(refusal(&f, Sensitivity::Secret).contains("has mode 0604: others may access"));
    }

    #[test]
    fn writable_directories_above_are_refused() {
        let (_d, f) = setup();
        let dir = f.parent().unwrap();
        chmod(dir, 0o775);
        let e = refusal(&f, Sensitivity::Config);
        assert!(e.contains(&format!("refusing {}: directory has mode 0775: group may write", dir.display())), "{e}");
        // Sticky but group-writable and not root's own sticky dir: still refused (we are root in
        // CI; a sticky dir owned by root is allowed, like /tmp itself).
        chmod(dir, 0o1777);
        if nix::unistd::Uid::effective().is_root() {
            assert!(open_trusted(&f, Sensitivity::Config).is_ok(), "a root-owned sticky directory is like /tmp");
        }
        chmod(dir, 0o757);
        assert!(refusal(&f, Sensitivity::Config).contains("directory has mode 0757: others may write"));
    }

    #[test]
    fn symlinks_anywhere_are_refused() {
        let (d, f) = setup();
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = refusal(&link, Sensitivity::Config);
        assert!(e.contains("link.toml: is a symbolic link"), "{e}");
        let dirlink = d.path().join("etc-link");
        std::os::unix::fs::symlink(f.parent().unwrap(), &dirlink).unwrap();
        let e = refusal(&dirlink.join("pppgate.toml"), Sensitivity::Config);
        assert!(e.contains("etc-link: is a symbolic link"), "{e}");
    }

    #[test]
    fn dot_dot_and_non_files_are_refused() {
        let (_d, f) = setup();
        let dir = f.parent().unwrap();
        let e = refusal(&dir.join("..").join("etc").join("pppgate.toml"), Sensitivity::Config);
        assert!(e.contains("contains '..'"), "{e}");
        assert!(refusal(dir, Sensitivity::Config).contains("is not a regular file"));
        let missing = dir.join("missing.toml");
        assert!(matches!(open_trusted(&missing, Sensitivity::Config), Err(Error::Read { .. })));
    }
}

//! File trust as DESIGN.md states it, checked for reporting: a file root reads (configuration,
//! secrets) is owned by root, not writable by group or others — a secret not readable by them
//! either — nor is any directory above it, and it is not a symlink. `pppgate diag` reports every
//! problem; it refuses nothing itself.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Every trust problem of `path` (empty: trusted). `secret`: group/others must not read it.
pub fn problems(path: &Path, secret: bool) -> Vec<String> {
    let mut out = Vec::new();
    let me = nix::unistd::Uid::effective().as_raw();
    let owner_ok = |uid: u32| uid == 0 || uid == me;
    match std::fs::symlink_metadata(path) {
        Err(e) => {
            out.push(format!("{}: {e}", path.display()));
            return out;
        }
        Ok(m) if m.file_type().is_symlink() => out.push(format!("{} is a symlink", path.display())),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if !owner_ok(m.uid()) {
                out.push(format!("{} is owned by uid {}, not root", path.display(), m.uid()));
            }
            if mode & 0o022 != 0 {
                out.push(format!("{} has mode {mode:04o}: writable by group or others", path.display()));
            } else if secret && mode & 0o044 != 0 {
                out.push(format!("{} has mode {mode:04o}: readable by group or others", path.display()));
            }
        }
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        match std::fs::metadata(d) {
            Ok(m) => {
                let mode = m.permissions().mode() & 0o7777;
                if !owner_ok(m.uid()) {
                    out.push(format!("directory {} is owned by uid {}, not root", d.display(), m.uid()));
                }
                if mode & 0o022 != 0 {
                    out.push(format!("directory {} has mode {mode:04o}: writable by group or others", d.display()));
                }
            }
            Err(e) => out.push(format!("directory {}: {e}", d.display())),
        }
        dir = d.parent();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn modes_and_symlinks() {
        // Only problems naming our own directory count: /tmp above it is world-writable.
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.path().join("pppgate.toml");
        fs::write(&f, "x").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let own = |p: &[String]| p.iter().filter(|s| s.contains(dir.path().to_str().unwrap())).count();
        assert_eq!(own(&problems(&f, false)), 0, "{:?}", problems(&f, false));
        assert_eq!(own(&problems(&f, true)), 1, "a readable secret");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o664)).unwrap();
        assert!(problems(&f, false).iter().any(|p| p.contains("writable by group")));
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(problems(&f, true).iter().any(|p| p.starts_with("directory") && p.contains("0777")));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let l = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        assert!(problems(&l, false).iter().any(|p| p.contains("is a symlink")));
        assert!(problems(&dir.path().join("missing"), false)[0].contains("No such file"));
    }
}

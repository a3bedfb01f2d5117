//! Routing table names from /etc/iproute2/rt_tables (and rt_tables.d/*.conf), as `ip` reads them.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::error::{Error, Result};

/// Name → id, from `path` and the `<path>.d/*.conf` files next to it.
pub fn read(path: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let mut files = vec![path.to_path_buf()];
    let dir = path.with_extension("d");
    let dir = if dir.is_dir() { dir } else { path.parent().map(|p| p.join("rt_tables.d")).unwrap_or_default() };
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut extra: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "conf"))
            .collect();
        extra.sort();
        files.extend(extra);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut it = line.split_whitespace();
            if let (Some(id), Some(name)) = (it.next(), it.next()) {
                let id =
                    if let Some(h) = id.strip_prefix("0x") { u32::from_str_radix(h, 16).ok() } else { id.parse().ok() };
                if let Some(id) = id {
                    out.insert(name.to_string(), id);
                }
            }
        }
    }
    out
}

/// Resolves a table given as a number or a name; `main`, `local` and `default` are refused for
/// policy routing by the callers that need to.
pub fn resolve(path: &Path, table: &str) -> Result<u32> {
    let t = table.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<u32>() {
            Ok(v) if v > 0 && v < u32::MAX && !(t.len() > 1 && t.starts_with('0')) => Ok(v),
            _ => Err(Error::invalid("routing table", table, "must be a table id between 1 and 4294967294")),
        };
    }
    read(path).get(t).copied().ok_or_else(|| {
        Error::invalid("routing table", table, format!("is not a number and not named in {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_unknowns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rt_tables");
        fs::write(&p, "255\tlocal\n254 main\n# c\n100 ktn # tenant\n0x20 hex\n").unwrap();
        fs::create_dir(dir.path().join("rt_tables.d")).unwrap();
        fs::write(dir.path().join("rt_tables.d/x.conf"), "200 extra\n").unwrap();
        assert_eq!(resolve(&p, "ktn").unwrap(), 100);
        assert_eq!(resolve(&p, "hex").unwrap(), 32);
        assert_eq!(resolve(&p, "extra").unwrap(), 200);
        assert_eq!(resolve(&p, "100").unwrap(), 100);
        assert!(resolve(&p, "nope").is_err());
        assert!(resolve(&p, "0").is_err());
        assert!(resolve(&p, "0100").is_err());
        assert!(resolve(&p, "99999999999").is_err());
    }
}
